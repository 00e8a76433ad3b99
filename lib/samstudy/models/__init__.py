"""Promptable segmenters (SAM, LiteMedSAM, ...) behind one interface, a registry and downloads.

``build_model(name, checkpoint=None, device="cpu")`` returns a :class:`PromptableSegmenter`;
``available_models()`` lists the names. Heavy modules (torch models) load on first build.
"""
from .base import CheckpointError, Decoded, Embedding, PromptableSegmenter
from .download import SAM_CHECKPOINTS, ChecksumError, cached_file_sha256, file_sha256
from .registry import MODEL_REGISTRY, available_models, build_model, register_model

__all__ = [
    "CheckpointError", "ChecksumError", "Decoded", "Embedding", "MODEL_REGISTRY", "PromptableSegmenter",
    "SAM_CHECKPOINTS", "available_models", "build_model", "cached_file_sha256", "file_sha256", "register_model",
]
