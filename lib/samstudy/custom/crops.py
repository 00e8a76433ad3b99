"""Crop geometry of the custom extreme-point model: crop box, resampling, heatmaps, paste-back.

Conventions (see :mod:`samstudy.masks`): images ``uint8 (H, W, 3)`` RGB; masks ``bool (H, W)``;
points ``float64 (K, 2)`` as ``(x, y) = (col, row)`` of a pixel; boxes ``float64 (4,)`` xyxy in
continuous pixel-edge coordinates (pixel ``col`` covers ``[col, col + 1)``, its centre is
``col + 0.5``).

**Crop box** (:func:`crop_spec`). From the 4 extreme points (order left, right, top, bottom):

1. ``box`` = :func:`samstudy.prompts.extreme_points_box` (``[min x, min y, max x + 1, max y + 1]``,
   the tight box for un-jittered points).
2. Each side is pushed out by ``max(margin * side_length, min_margin_px)`` (``margin`` relative,
   default 0.15 of the width on the left and on the right, 0.15 of the height on top and bottom).
3. **Aspect rule**: if the long side exceeds ``max_aspect`` times the short side, the short side is
   grown about its centre to ``long / max_aspect`` (so a thin object is not stretched more than
   ``max_aspect`` : 1 by the square resize).
4. **Minimum-size rule** (tiny objects): a side shorter than ``min_side`` pixels is grown about its
   centre to ``min_side`` (default 16 px): below that a crop carries no usable context.
5. The box is **not** clipped to the image: pixels outside the image are read as zeros
   (**padding rule**; this also covers images smaller than the crop).

``CropSpec.rule`` records which rule fixed the box: ``"margin"`` (1-3 only), ``"min_side"`` (4 was
applied), ``"collapsed_points"`` (all four points on one pixel: a ``min_side`` square centred on it);
``"+padded"`` is appended when the box leaves the image. Result rows carry it as ``crop_rule``.

**Resampling**. A crop of size ``S`` maps crop pixel ``(j, i)`` (col, row) to the image point
``x = x0 + (j + 0.5) * sx`` with ``sx = (x1 - x0) / S`` (same for y); images are sampled bilinearly
at that point (area-averaged first by an integer factor when ``sx, sy >= 2`` to avoid aliasing).
:func:`paste_back` applies the inverse map: image pixel ``col`` reads crop coordinate
``(col + 0.5 - x0) / sx - 0.5``. At scale 1 with an integer box both maps are exact shifts, so a
mask cropped and pasted back is unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..prompts import extreme_points_box

__all__ = ["CropSpec", "crop_spec", "crop_matrix", "crop_image", "crop_mask", "points_to_crop",
           "box_to_crop", "crop_scale", "paste_back"]


@dataclass(frozen=True)
class CropSpec:
    """Where a crop sits in its image.

    box: ``float64 (4,)`` xyxy pixel edges of the crop in the image frame (may leave the image).
    points_box: ``float64 (4,)`` xyxy box spanned by the extreme points (before margin/rules).
    image_hw: ``(H, W)`` of the image.
    rule: ``"margin"``, ``"min_side"`` or ``"collapsed_points"``, plus ``"+padded"`` (module doc).
    """

    box: np.ndarray
    points_box: np.ndarray
    image_hw: tuple[int, int]
    rule: str

    @property
    def padded(self) -> bool:
        return self.rule.endswith("+padded")


def _grow_to(lo: float, hi: float, length: float) -> tuple[float, float]:
    """Grow the interval ``[lo, hi]`` about its centre to ``length`` (never shrink)."""
    if hi - lo >= length:
        return lo, hi
    c = 0.5 * (lo + hi)
    return c - 0.5 * length, c + 0.5 * length


def crop_spec(points: np.ndarray, image_hw: Sequence[int], margin: float | Sequence[float] = 0.15,
              min_margin_px: float = 2.0, min_side: float = 16.0, max_aspect: float = 2.0) -> CropSpec:
    """Crop box around 4 extreme points ``float64 (4, 2)`` xy (rules in the module docstring).

    ``margin``: one relative margin, or 4 per-side margins ``(left, top, right, bottom)`` (training
    draws them at random to augment). ``image_hw = (H, W)``. Never raises on degenerate input:
    collapsed points and tiny objects get the ``min_side`` square; off-image boxes are padded.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if pts.shape[0] < 1 or not np.isfinite(pts).all():
        raise ValueError(f"extreme points must be finite (K, 2) xy, got {pts.tolist()}")
    h_img, w_img = int(image_hw[0]), int(image_hw[1])
    pbox = extreme_points_box(pts)
    w, h = pbox[2] - pbox[0], pbox[3] - pbox[1]
    m = np.broadcast_to(np.asarray(margin, dtype=np.float64), (4,))
    x0 = pbox[0] - max(m[0] * w, min_margin_px)
    y0 = pbox[1] - max(m[1] * h, min_margin_px)
    x1 = pbox[2] + max(m[2] * w, min_margin_px)
    y1 = pbox[3] + max(m[3] * h, min_margin_px)
    long_side = max(x1 - x0, y1 - y0)
    x0, x1 = _grow_to(x0, x1, long_side / max_aspect)
    y0, y1 = _grow_to(y0, y1, long_side / max_aspect)
    collapsed = w <= 1.0 and h <= 1.0
    if collapsed:
        cx, cy = 0.5 * (pbox[0] + pbox[2]), 0.5 * (pbox[1] + pbox[3])
        x0, x1 = cx - 0.5 * min_side, cx + 0.5 * min_side
        y0, y1 = cy - 0.5 * min_side, cy + 0.5 * min_side
        rule = "collapsed_points"
    elif min(x1 - x0, y1 - y0) < min_side:
        x0, x1 = _grow_to(x0, x1, min_side)
        y0, y1 = _grow_to(y0, y1, min_side)
        rule = "min_side"
    else:
        rule = "margin"
    if x0 < 0 or y0 < 0 or x1 > w_img or y1 > h_img:
        rule += "+padded"
    return CropSpec(box=np.array([x0, y0, x1, y1], dtype=np.float64), points_box=pbox,
                    image_hw=(h_img, w_img), rule=rule)


def crop_matrix(spec: CropSpec, size: int) -> np.ndarray:
    """``float64 (2, 3)`` affine map from crop pixel indices ``(j, i)`` to image pixel indices.

    Pixel index coordinates: index ``k`` is the pixel centre ``k + 0.5`` in edge coordinates.
    """
    x0, y0, x1, y1 = spec.box
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    return np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5], [0.0, sy, y0 + 0.5 * sy - 0.5]])


def _warp(src: np.ndarray, spec: CropSpec, size: int) -> np.ndarray:
    """Sample ``src`` (``(H, W)`` or ``(H, W, C)``, uint8 or float32) on the crop grid; zeros outside."""
    mat = crop_matrix(spec, size)
    k = int(min(mat[0, 0], mat[1, 1]))
    if k >= 2:
        # Downscaling: area-average by the integer factor k first (bilinear alone would alias).
        h, w = src.shape[:2]
        x0, y0, x1, y1 = spec.box
        c0, r0 = max(0, int(math.floor(x0)) - k), max(0, int(math.floor(y0)) - k)
        c1, r1 = min(w, int(math.ceil(x1)) + k), min(h, int(math.ceil(y1)) + k)
        if c1 > c0 and r1 > r0:
            nw, nh = -(-(c1 - c0) // k), -(-(r1 - r0) // k)
            region = src[r0:r1, c0:c1]
            pad = ((0, nh * k - (r1 - r0)), (0, nw * k - (c1 - c0))) + ((0, 0),) * (src.ndim - 2)
            region = np.pad(region, pad, mode="edge")
            small = cv2.resize(region, (nw, nh), interpolation=cv2.INTER_AREA)
            # small pixel p covers region pixels [k p, k p + k): centre index k p + (k - 1) / 2.
            mat = mat.copy()
            mat[0, 2] = (mat[0, 2] - c0 - 0.5 * (k - 1)) / k
            mat[1, 2] = (mat[1, 2] - r0 - 0.5 * (k - 1)) / k
            mat[0, 0] /= k
            mat[1, 1] /= k
            src = small
    return cv2.warpAffine(src, mat, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_image(image: np.ndarray, spec: CropSpec, size: int) -> np.ndarray:
    """RGB crop ``uint8 (size, size, 3)`` of ``image`` ``uint8 (H, W, 3)`` (zeros outside the image)."""
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    return _warp(image, spec, size)


def crop_mask(mask: np.ndarray, spec: CropSpec, size: int, offset_xy: Sequence[int] = (0, 0)) -> np.ndarray:
    """Soft crop ``float32 (size, size)`` in [0, 1] of a ``bool (h, w)`` mask.

    ``offset_xy``: image position ``(col, row)`` of ``mask[0, 0]`` when ``mask`` is a window of the
    full-image mask (zero outside the window, e.g. the mask cut to its tight box): the result equals
    cropping the full mask.
    """
    ox, oy = int(offset_xy[0]), int(offset_xy[1])
    shifted = CropSpec(box=spec.box - np.array([ox, oy, ox, oy], dtype=np.float64),
                       points_box=spec.points_box, image_hw=spec.image_hw, rule=spec.rule)
    return _warp(np.asarray(mask, dtype=np.float32), shifted, size)


def points_to_crop(points: np.ndarray, spec: CropSpec, size: int) -> np.ndarray:
    """Image pixel points ``(K, 2)`` xy -> crop pixel-index coordinates ``float64 (K, 2)`` xy."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    x0, y0, x1, y1 = spec.box
    s = np.array([(x1 - x0) / size, (y1 - y0) / size])
    return (pts + 0.5 - np.array([x0, y0])) / s - 0.5


def paste_back(crop_logits: np.ndarray, spec: CropSpec, threshold: float = 0.0) -> np.ndarray:
    """Full-image mask ``bool (H, W)`` from crop logits ``float32 (S, S)`` (``> threshold``).

    Image pixels whose centre lies outside the crop box are background; inside, the logits are
    interpolated bilinearly at the pixel centre (inverse of :func:`crop_matrix`).
    """
    logits = np.asarray(crop_logits, dtype=np.float32)
    size = logits.shape[0]
    if logits.shape != (size, size):
        raise ValueError(f"crop logits must be square (S, S), got {logits.shape}")
    h, w = spec.image_hw
    x0, y0, x1, y1 = spec.box
    # Pixels with centre in [x0, x1): col in [ceil(x0 - 0.5), ceil(x1 - 0.5)).
    c0, c1 = max(0, math.ceil(x0 - 0.5)), min(w, math.ceil(x1 - 0.5))
    r0, r1 = max(0, math.ceil(y0 - 0.5)), min(h, math.ceil(y1 - 0.5))
    out = np.zeros((h, w), dtype=bool)
    if c1 <= c0 or r1 <= r0:
        return out
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    inv = np.array([[1.0 / sx, 0.0, (c0 + 0.5 - x0) / sx - 0.5],
                    [0.0, 1.0 / sy, (r0 + 0.5 - y0) / sy - 0.5]])
    region = cv2.warpAffine(logits, inv, (c1 - c0, r1 - r0),
                            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
    out[r0:r1, c0:c1] = region > threshold
    return out


def box_to_crop(box: np.ndarray, spec: CropSpec, size: int) -> np.ndarray:
    """Box ``(4,)`` xyxy in image edge coordinates -> crop edge coordinates ``float64 (4,)``."""
    x0, y0, x1, y1 = spec.box
    s = np.array([(x1 - x0) / size, (y1 - y0) / size] * 2)
    return (np.asarray(box, dtype=np.float64) - np.array([x0, y0, x0, y0])) / s


def crop_scale(spec: CropSpec, size: int) -> np.ndarray:
    """Crop pixels per image pixel, ``float64 (2,)`` in x, y, for a crop of ``size``."""
    x0, y0, x1, y1 = spec.box
    return np.array([size / (x1 - x0), size / (y1 - y0)])
