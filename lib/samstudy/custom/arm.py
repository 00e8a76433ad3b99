"""The custom model as a :class:`~samstudy.models.base.PromptableSegmenter`: scored by the engine like every arm.

The custom model has no image encoder: its per-image state ("embedding") is the image itself, as
``uint8 (1, 3, H, W)``, and every prompt is cropped from it. Each stage is its own arm (its own
``model`` in the result rows), so the refinement's effect is a paired comparison of two arms:

- ``custom_stage1`` -- "Custom extreme points (stage 1)": crop, stage 1, paste-back;
- ``custom_stage2`` -- "Custom extreme points (stage 1+2 refined)": the whole two-stage pipeline.

Prompt modes: ``extreme_points`` (4 positive points in the order left, right, top, bottom, as
:func:`samstudy.prompts.extreme_points` gives them; ``jitter_px`` allowed) and ``clicks`` started
from them (``clicks[start=extreme_points]``: the engine's prompt is the 4 extreme points followed by
the corrective clicks, positive or negative, with ``mask_inputs`` = the previous step's
``low_res_logits``). ``low_res_logits`` are this stage's crop-frame logits ``float32 (N, 1, R, R)``
(the crop depends only on the extreme points, so it is the same for every step of a sequence).
One mask per prompt (``multimask_outputs = 1``), no IoU head (``iou_pred`` NaN). Embeddings are
not cached on disk (the image is re-read faster than a cache entry).

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

    supported_modes = frozenset({"extreme_points", "clicks"})
    multimask_outputs = 1
    cache_embeddings = False

    def __init__(self, segmenter: CustomSegmenter, stage: int = 2) -> None:
        if stage not in STAGE_MODELS:
            raise ValueError(f"custom model: stage must be 1 or 2, got {stage!r}")
        self.segmenter, self.stage = segmenter, int(stage)
        self.name, self.label = STAGE_MODELS[self.stage]
        self.checkpoint_sha256 = segmenter.checkpoint_sha256
        # part of the run identity: the flip average changes the predictions, not the checkpoint
        self.preprocess_id = (f"custom-crop{segmenter.config.crop_size}-stage{self.stage}"
                              + ("-flip" if segmenter.flip_tta else ""))
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
        """Masks ``bool (N, 1, H, W)`` of this stage for ``N`` prompts on one image: 4 positive
        extreme points, then any corrective clicks (label 1/0); ``mask_inputs float32 (N, 1, R, R)``
        = a previous decode's ``low_res_logits``."""
        if embedding.model_key != self.cache_key:
            raise ValueError(f"{self.name}: embedding was computed by {embedding.model_key!r}, not by this model")
        if multimask:
            raise ValueError(f"{self.name}: the custom model has one output per prompt (multimask=False only)")
        image = np.ascontiguousarray(embedding.features[0].permute(1, 2, 0).numpy())
        parsed = [_split_prompt(p, self.name) for p in prompts]
        n, (h, w) = len(parsed), embedding.original_hw
        r = self.segmenter.config.refine_size
        masks = np.zeros((n, 1, h, w), dtype=bool)
        low = np.zeros((n, 1, r, r), dtype=np.float32)
        if n:
            points, clicks = [p for p, _ in parsed], [c for _, c in parsed]
            seg = self.segmenter
            with _threads(seg):
                logits1, logits2, specs, _ = seg.predict_logits(image, points, refine=self.stage == 2,
                                                                clicks_list=clicks, prev_logits=mask_inputs)
            if self.stage == 1:
                up = torch.nn.functional.interpolate(torch.from_numpy(logits1)[:, None], size=(r, r),
                                                     mode="bilinear", align_corners=False)
                low = up.numpy().astype(np.float32)
                logits = logits1
            else:
                low, logits = logits2[:, None].astype(np.float32), logits2
            for i, (lg, sp) in enumerate(zip(logits, specs)):
                masks[i, 0] = paste_back(lg, sp)
        return Decoded(masks=masks, iou_pred=np.full((n, 1), np.nan, np.float32), low_res_logits=low)


def _threads(seg: CustomSegmenter) -> Any:
    return torch_settings(seg.config.num_threads if seg.num_threads is None else seg.num_threads)


def _split_prompt(prompt: Any, model: str) -> tuple[np.ndarray, np.ndarray]:
    """``(extreme points float64 (4, 2) xy, clicks float64 (K, 3) (x, y, label))`` of a prompt whose
    first 4 points are positive extreme points, else ``ValueError``."""
    pts = None if prompt.points is None else np.asarray(prompt.points, dtype=np.float64).reshape(-1, 2)
    labels = None if prompt.labels is None else np.asarray(prompt.labels).reshape(-1)
    if (pts is None or len(pts) < 4 or prompt.box is not None or labels is None or len(labels) != len(pts)
            or not np.all(labels[:4] == 1)):
        raise ValueError(f"{model}: expects 4 positive extreme points (then optional corrective clicks) and "
                         f"no box, got prompt {prompt.mode!r}")
    return pts[:4], np.column_stack([pts[4:], labels[4:].astype(np.float64)])


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
