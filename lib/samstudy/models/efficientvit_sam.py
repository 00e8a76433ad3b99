"""EfficientViT-SAM (package ``efficientsam``: MIT HAN Lab's EfficientViT-SAM code, repackaged).

An EfficientViT image encoder with SAM's prompt encoder and mask decoder. Its preprocessing differs
from SAM's and is the model's own ``EfficientViTSam.transform``: resize the longest side to the
*encoder* size (512 for L0/L1/L2, 1024 for XL0/XL1; PIL bilinear, skipped when already that size),
``ToTensor`` (/255), normalise with SAM's mean/std divided by 255, zero-pad to a square. Prompts
and low-res logits still live in SAM's 1024 frame (``EfficientViTSamPredictor``: ``input_size`` =
longest side 1024), so coordinates map to the 1024 frame and masks are cropped there.

``runtime="onnxruntime"`` (SAM's ONNX path, :class:`.onnx_runtime.OrtSam`) exports the encoder at its own
input size. L0 random init, one thread, a 2-core machine: encoder 0.98 s vs 0.92 s in PyTorch (no gain),
decoder 0.071 s vs 0.129 s per prompt (``bench/bench_onnx.py``).

Registry names ``efficientvit_sam_l0/l1/l2/xl0/xl1``; ``random_init=True`` for benchmarks.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .registry import register_model
from .release import build_released
from .sam import SamSegmenter

VARIANTS = ("l0", "l1", "l2", "xl0", "xl1")


class EfficientVitSamSegmenter(SamSegmenter):
    """EfficientViT-SAM behind :class:`PromptableSegmenter` (see the module docstring)."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.encoder_size = int(model.image_size[1])
        self.preprocess_id = f"evitsam-rls{self.encoder_size}pil-totensor-meanstd-pad"

    @staticmethod
    def model_img_size(model: nn.Module) -> int:
        return int(model.image_size[0])  # the prompt/mask frame (1024), not the encoder input

    def encoder_input_size(self) -> int:
        return self.encoder_size

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``uint8 (H, W, 3)`` -> float32 ``(1, 3, s, s)`` with ``s`` = the encoder size (512 or 1024)."""
        return self.model.transform(image)[None].float()


def efficientvit_sam_module(variant: str) -> Callable[[], nn.Module]:
    """Factory of the untrained official EfficientViT-SAM ``variant`` (norm eps as the package's zoo)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EfficientViT-SAM variant {variant!r}; known: {VARIANTS}")

    def build() -> nn.Module:
        from efficientsam.sam_model_zoo import create_efficientvit_sam_model

        return create_efficientvit_sam_model(f"efficientvit-sam-{variant}", pretrained=False).eval()
    return build


def _register(variant: str) -> None:
    name = f"efficientvit_sam_{variant}"
    label = f"EfficientViT-SAM-{variant.upper()}"

    @register_model(name, EfficientVitSamSegmenter)
    def build(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
              random_init: bool = False, factory: Callable[[], nn.Module] | None = None,
              **kwargs: Any) -> EfficientVitSamSegmenter:
        return build_released(EfficientVitSamSegmenter, name, label, factory or efficientvit_sam_module(variant),
                              checkpoint, device, random_init, **kwargs)
    build.__qualname__ = f"build_{name}"
    build.__doc__ = f"{label} from ``checkpoint`` (default ``data/weights/{name}.pt``, `make weights MODEL={name}`)."


for _v in VARIANTS:
    _register(_v)
