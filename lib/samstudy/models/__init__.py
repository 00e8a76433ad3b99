"""Promptable segmenters (SAM, LiteMedSAM, ...) behind one interface, a registry and downloads.

``build_model(name, checkpoint=None, device="cpu")`` returns a :class:`PromptableSegmenter`;
``available_models()`` lists the names. Heavy modules (torch models) load on first build.
"""
from .base import CheckpointError, Decoded, Embedding, PromptableSegmenter
from .download import (COCO_FILES, SAM_CHECKPOINTS, ChecksumError, DownloadError, cached_file_sha256, download_coco,
                       download_file, download_sam_checkpoint)
from .registry import MODEL_CLASSES, MODEL_REGISTRY, available_models, build_model, model_class, register_model

__all__ = [
    "COCO_FILES", "CheckpointError", "ChecksumError", "Decoded", "DownloadError", "Embedding", "MODEL_REGISTRY",
    "PromptableSegmenter", "SAM_CHECKPOINTS", "available_models", "build_model", "cached_file_sha256",
    "download_coco", "download_file", "download_sam_checkpoint", "model_class", "register_model", "MODEL_CLASSES",
]
