"""The custom model as a :class:`~samstudy.models.base.PromptableSegmenter`: scored by the engine like every arm.

The custom model has no image encoder: its per-image state ("embedding") is the image itself, as
``uint8 (1, 3, H, W)``, and every prompt is cropped from it. Each stage is its own arm (its own
``model`` in the result rows), so the refinement's effect is a paired comparison of two arms:

- ``custom_stage1`` -- "Custom extreme points (stage 1)": crop, stage 1, paste-back;
- ``custom_stage2`` -- "Custom extreme points (stage 1+2 refined)": the whole two-stage pipeline.

Prompt modes: ``extreme_points`` only (4 positive points in the order left, right, top, bottom, as
:func:`samstudy.prompts.extreme_points` gives them; ``jitter_px`` allowed). One mask per prompt
(``multimask_outputs = 1``), no IoU head (``iou_pred`` NaN), no mask input (no click sequences
yet). Embeddings are not cached on disk (the image is re-read faster than a cache entry).

Built by name like the foundation models: ``build_model("custom", checkpoint=best_pt, stage=2)``.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch

from ..compute import torch_settings
from ..models.base import Decoded, Embedding, PromptableSegmenter, check_rgb_uint8
from ..models.registry import register_model
from .crops import paste_back
from .model import CustomSegmenter, load_custom

__all__ = ["CustomArm", "STAGE_MODELS", "build_custom", "custom_arms"]

STAGE_MODELS = {1: ("custom_stage1", "Custom extreme points (stage 1)"),
                2: ("custom_stage2", "Custom extreme points (stage 1+2 refined)")}


class CustomArm(PromptableSegmenter):
    """One stage (1, or 2 = refined) of a :class:`~samstudy.custom.model.CustomSegmenter`."""

    supported_modes = frozenset({"extreme_points"})
    multimask_outputs = 1
    cache_embeddings = False

    def __init__(self, segmenter: CustomSegmenter, stage: int = 2) -> None:
        if stage not in STAGE_MODELS:
            raise ValueError(f"custom model: stage must be 1 or 2, got {stage!r}")
        self.segmenter, self.stage = segmenter, int(stage)
        self.name, self.label = STAGE_MODELS[self.stage]
        self.checkpoint_sha256 = segmenter.checkpoint_sha256
        self.preprocess_id = f"custom-crop{segmenter.config.crop_size}-stage{self.stage}"
        self.device = torch.device(segmenter._device)

    def __repr__(self) -> str:
        return f"CustomArm(name={self.name!r}, sha256={self.checkpoint_sha256[:12]})"

    def encode(self, image: np.ndarray) -> Embedding:
        """The image itself as ``uint8 (1, 3, H, W)`` (the custom model crops per prompt)."""
        image = check_rgb_uint8(image, self.name)
        hw = (int(image.shape[0]), int(image.shape[1]))
        return Embedding(features=torch.from_numpy(image.copy()).permute(2, 0, 1)[None], original_hw=hw,
                         input_hw=hw, model_key=self.cache_key)

    def decode(self, embedding: Embedding, prompts: Sequence[Any], multimask: bool = False,
               mask_inputs: np.ndarray | None = None) -> Decoded:
        """Masks ``bool (N, 1, H, W)`` of this stage for ``N`` extreme-point prompts on one image."""
        if embedding.model_key != self.cache_key:
            raise ValueError(f"{self.name}: embedding was computed by {embedding.model_key!r}, not by this model")
        if multimask:
            raise ValueError(f"{self.name}: the custom model has one output per prompt (multimask=False only)")
        if mask_inputs is not None:
            raise ValueError(f"{self.name}: the custom model takes no mask input (no click sequences)")
        image = np.ascontiguousarray(embedding.features[0].permute(1, 2, 0).numpy())
        points = [_extreme_points(p, self.name) for p in prompts]
        n, (h, w) = len(points), embedding.original_hw
        masks = np.zeros((n, 1, h, w), dtype=bool)
        if n:
            for i, m in enumerate(self._masks(image, points)):
                masks[i, 0] = m
        return Decoded(masks=masks, iou_pred=np.full((n, 1), np.nan, np.float32), low_res_logits=None)

    def _masks(self, image: np.ndarray, points: list[np.ndarray]) -> list[np.ndarray]:
        seg = self.segmenter
        with _threads(seg):
            logits1, logits2, specs, _ = seg.predict_logits(image, points, refine=self.stage == 2)
        logits = logits1 if self.stage == 1 else logits2
        return [paste_back(lg, sp) for lg, sp in zip(logits, specs)]


def _threads(seg: CustomSegmenter) -> Any:
    return torch_settings(seg.config.num_threads if seg.num_threads is None else seg.num_threads)


def _extreme_points(prompt: Any, model: str) -> np.ndarray:
    """``float64 (4, 2)`` xy of a prompt of 4 positive points and no box, else ``ValueError``."""
    pts = None if prompt.points is None else np.asarray(prompt.points, dtype=np.float64)
    if pts is None or pts.shape != (4, 2) or prompt.box is not None or not np.all(np.asarray(prompt.labels) == 1):
        raise ValueError(f"{model}: expects 4 positive extreme points and no box, got prompt {prompt.mode!r}")
    return pts


def custom_arms(segmenter: CustomSegmenter) -> list[CustomArm]:
    """Both stages of a trained model as arms: ``[stage 1, stage 1+2 refined]``."""
    return [CustomArm(segmenter, 1), CustomArm(segmenter, 2)]


@register_model("custom", CustomArm)
def build_custom(checkpoint: str | os.PathLike | None = None, device: str = "cpu", stage: int = 2,
                 num_threads: int | None = None) -> CustomArm:
    """The custom model of a checkpoint written by :func:`samstudy.custom.train.train_custom`, one stage."""
    if checkpoint is None:
        raise ValueError("model 'custom' needs checkpoint: the best.pt written by the train_custom stage")
    return CustomArm(load_custom(checkpoint, device=device, num_threads=num_threads), stage)
