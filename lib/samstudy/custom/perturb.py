"""Synthetic stage-1 errors for training the refinement stage (in the manner of CascadePSP).

Why: stage 2 used to train only on stage 1's own predictions of the training batch. Stage 1 fits
its training objects closely, so those predictions carry far smaller errors than it makes on
unseen objects, and stage 2 learned to leave them alone (on 861 unseen COCO objects it changed
mIoU by +0.0001). Here stage 2 also trains on the ground truth deformed the way a coarse
segmenter errs: the boundary displaced by a smooth random field and the mask grown or shrunk, so
it learns to pull a wrong boundary back to the image's edge.

:func:`perturbed_logits` ``(target1, rng, max_shift_px, max_morph_px)``:

1. **Smooth displacement**: a ``4 x 4`` grid of random displacements, uniform in
   ``[-a, a]`` px with ``a`` drawn per object in ``[0, max_shift_px]``, upsampled bicubically to
   the mask's grid; the mask is resampled at the displaced positions (bilinear, zeros outside).
2. **Grow or shrink**: a square dilation (``r > 0``) or erosion (``r < 0``) of radius ``r``
   drawn per object in ``-max_morph_px .. max_morph_px``.
3. **Logits**: ``g * (m - 0.5)`` for the deformed soft mask ``m`` with a per-object confidence
   ``g`` in ``[4, 12]`` (the range of stage 1's logits away from its boundary).

All sizes are pixels of the grid given (stage 1's ``S``). Randomness comes only from ``rng``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .model import square_max_filter

__all__ = ["perturbed_logits", "mix_base_logits"]

_CONTROL = 4  # control points per side of the displacement field: low-frequency, object-scale errors


def perturbed_logits(target1: torch.Tensor, rng: np.random.Generator, max_shift_px: float,
                     max_morph_px: int) -> torch.Tensor:
    """``target1 float32 (B, 1, S, S)`` soft mask in ``[0, 1]`` -> deformed logits ``(B, 1, S, S)``.

    See the module docstring. ``max_shift_px = 0`` and ``max_morph_px = 0`` give
    ``g * (target1 - 0.5)``: the ground truth itself, at a random confidence.
    """
    b, _, h, w = target1.shape
    dev, dt = target1.device, target1.dtype
    amp = rng.uniform(0.0, max_shift_px, b)
    ctrl = rng.uniform(-1.0, 1.0, (b, 2, _CONTROL, _CONTROL)) * amp[:, None, None, None]
    disp = F.interpolate(torch.from_numpy(ctrl).to(dev, dt), size=(h, w), mode="bicubic", align_corners=True)
    # grid_sample's normalised coordinates (align_corners=False): pixel i <-> (2 i + 1) / n - 1.
    ys, xs = torch.meshgrid(torch.arange(h, device=dev, dtype=dt), torch.arange(w, device=dev, dtype=dt),
                            indexing="ij")
    gx = (2 * (xs[None] + disp[:, 0]) + 1) / w - 1
    gy = (2 * (ys[None] + disp[:, 1]) + 1) / h - 1
    m = F.grid_sample(target1, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="zeros",
                      align_corners=False)
    radii = rng.integers(-max_morph_px, max_morph_px + 1, b) if max_morph_px > 0 else np.zeros(b, dtype=int)
    m = torch.cat([_morph(m[i:i + 1], int(r)) for i, r in enumerate(radii)])
    gain = torch.from_numpy(rng.uniform(4.0, 12.0, b)).to(dev, dt)[:, None, None, None]
    return gain * (m - 0.5)


def _morph(m: torch.Tensor, r: int) -> torch.Tensor:
    """Square dilation (``r > 0``) or erosion (``r < 0``) of radius ``|r|`` of a soft mask ``(1, 1, h, w)``."""
    if r == 0:
        return m
    return square_max_filter(m, abs(r)) if r > 0 else -square_max_filter(-m, abs(r))


def mix_base_logits(logits1: torch.Tensor, target1: torch.Tensor, rng: np.random.Generator, prob: float,
                    max_shift_px: float, max_morph_px: int) -> torch.Tensor:
    """Stage 2's training input: per object, with probability ``prob`` the deformed ground truth
    (:func:`perturbed_logits`), else stage 1's own logits, detached. All ``(B, 1, S, S)``.

    ``prob = 0`` returns ``logits1.detach()`` and draws nothing from ``rng`` (earlier runs replay
    exactly).
    """
    if prob <= 0:
        return logits1.detach()
    pick = torch.from_numpy(rng.random(logits1.shape[0]) < prob).to(logits1.device)[:, None, None, None]
    fake = perturbed_logits(target1, rng, max_shift_px, max_morph_px)
    return torch.where(pick, fake, logits1.detach())
