"""MobileSAM (package ``mobilesam-mirror``, import ``mobile_sam``: the MobileSAM authors' code).

A TinyViT image encoder distilled from SAM ViT-H, with SAM's prompt encoder and mask decoder; the
same input pipeline as SAM (``ResizeLongestSide(1024)``, SAM's pixel mean/std, zero padding), so
it is a :class:`~.sam.SamSegmenter` as it is, ``runtime="onnxruntime"`` included (parity with
``mobile_sam.SamPredictor`` is tested for both runtimes). Random init, one thread, a busy 2-core
machine: ONNX Runtime encodes in 2.5 s vs 4.9 s and decodes a prompt in 0.18 s vs 0.35 s (``bench/bench_onnx.py``).
Registry name ``mobile_sam``; ``random_init=True`` gives the untrained benchmark model.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch

from .registry import register_model
from .release import build_released
from .sam import SamSegmenter

MOBILE_SAM_LABEL = "MobileSAM"


def mobile_sam_module() -> torch.nn.Module:
    """Untrained official MobileSAM (``mobile_sam.sam_model_registry["vit_t"]``)."""
    from mobile_sam import sam_model_registry

    return sam_model_registry["vit_t"](checkpoint=None).eval()


@register_model("mobile_sam", SamSegmenter)
def build_mobile_sam(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
                     random_init: bool = False, factory: Callable[[], torch.nn.Module] = mobile_sam_module,
                     **kwargs: Any) -> SamSegmenter:
    """MobileSAM from ``checkpoint`` (default ``data/weights/mobile_sam.pt``, `make weights MODEL=mobile_sam`)."""
    return build_released(SamSegmenter, "mobile_sam", MOBILE_SAM_LABEL, factory, checkpoint, device,
                          random_init, **kwargs)
