"""The synthetic probe set: a COCO instance dataset the project generates itself (embedded default).

Every failure mode named in the study (``docs/STUDY.md``) is present with exact ground truth:

==================  =====================================================================  ==========================
category            what it is                                                             tags
==================  =====================================================================  ==========================
``ring``            elliptic annulus (one hole)                                            ``holes``
``frame``           rotated rectangular frame (one hole)                                   ``holes``
``letter``          a large letter O/A/D/B drawn with a Hershey font (1-2 holes)           ``holes``
``small_shape``     ellipse/rectangle/triangle, box <= 28 x 28 px (COCO "small")           ``small``
``thin_shape``      L/T shapes, stick figures, bugs with antennas: parts 2-4 px wide       ``thin``
``jagged_shape``    many-spiked stars and noisy-radius blobs                               ``fine_boundary``
``disc``            groups of 2-3 discs of one category that touch or overlap              ``touching`` or
                                                                                           ``overlapping`` (+
                                                                                           ``occluded`` if behind)
``ellipse``         plain ellipse (convex control; ~30% in COCO's "large" bucket)          ``control``
``rectangle``       plain rotated rectangle (convex control; ~30% "large")                 ``control``
==================  =====================================================================  ==========================

Each annotation's ``tags`` also name its image's background (``bg_flat``, ``bg_gradient``,
``bg_noise``, ``bg_stripes``, ``bg_checker``, ``bg_cluttered``; cluttered = non-annotated
distractor shapes) and ``low_contrast`` when the image's objects are coloured close to the
background under them.

Ground-truth conventions (same as :mod:`samstudy.masks`): masks are exact binary ``bool (H, W)``
(only the *image* is anti-aliased), stored as compressed RLE; ``bbox`` is COCO ``[x, y, w, h]`` of
the tight box (``x + w`` = last column + 1); ``area`` is the pixel count. Overlapping instances
follow a z-order (later = in front), so every pixel belongs to at most one instance, as in COCO.
Extra annotation fields: ``tags`` (list of str), ``group_id`` (the disc group, else the
annotation's own id), ``amodal_area`` (pixel count of the whole shape before occlusion),
``occluded_by`` (ids of instances in front of it) and ``hole_area`` (enclosed background pixels,
see :func:`hole_area`). Images get ``background`` and ``low_contrast``.

Shapes have fixed pixel sizes (tuned for the 320 x 240 default); larger images just hold them
with more room. Objects never touch the image border nor (except within a disc group) each other:
at least ``min_gap_px`` background pixels separate them, so "touching" is only where tagged.

Layout on disk (``generate_probe_set(config, out_dir)``)::

    out_dir/images/000001.png ...   RGB PNG, uint8
    out_dir/instances.json          COCO (images, categories, annotations)
    out_dir/manifest.json           config, generator version, library versions, sha256 per file

Determinism: everything derives from ``numpy.random.default_rng([seed, ...])``: the plan of all
images (:func:`plan_images`) from ``[seed, 1]``, then image ``i`` from its own stream
``[seed, 2, i]`` given its plan. Same config and
library versions -> byte-identical files.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
from scipy import ndimage

from .files import file_sha256
from .masks import encode_rle, hole_mask
from .metrics import size_bucket

GENERATOR = "samstudy.synthetic"
GENERATOR_VERSION = "1"

# Category name -> failure-mode tags carried by every instance. Order fixes the category ids (1..).
CATEGORY_TAGS: dict[str, tuple[str, ...]] = {
    "ring": ("holes",),
    "frame": ("holes",),
    "letter": ("holes",),
    "small_shape": ("small",),
    "thin_shape": ("thin",),
    "jagged_shape": ("fine_boundary",),
    "disc": (),  # "touching" / "overlapping" / "occluded" come from the group's geometry
    "ellipse": ("control",),
    "rectangle": ("control",),
}
CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORY_TAGS)
BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "noise", "stripes", "checker", "cluttered")
FAILURE_MODE_TAGS: tuple[str, ...] = (
    "holes", "small", "thin", "fine_boundary", "touching", "overlapping", "occluded", "low_contrast",
    "bg_noise", "bg_stripes", "bg_checker", "bg_cluttered")

SMALL_MAX_SIDE = 28   # small_shape boxes are at most this many px wide/high (< 32: COCO small)
THIN_WIDTHS = (2, 3, 4)  # widths of thin parts, px
THIN_OPEN = 5         # a morphological opening with a THIN_OPEN^2 square removes every thin part


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of the probe set. Every field is JSON-serialisable and enters the manifest.

    Attributes:
        n_images: number of images.
        width, height: image size in px (>= 96 each).
        seed: non-negative int; the only source of randomness.
        objects_per_image: inclusive ``(min, max)`` number of object *slots* per image; a disc
            group (2-3 instances) fills one slot.
        categories: category names to draw (subset of :data:`CATEGORY_NAMES`).
        category_weights: ``((name, weight), ...)``; a category appears ``weight`` times per cycle
            of the balanced category bag (default 1). Small objects get 2 by default.
        backgrounds: background kinds, assigned to images in equal numbers (subset of
            :data:`BACKGROUNDS`).
        low_contrast_fraction: share of images whose objects are coloured close to the background.
        low_contrast_delta: ``(min, max)`` RGB L2 distance of a low-contrast object's colour from
            the mean background under it.
        min_contrast: minimum RGB L2 distance of a normal object's colour from the background under it.
        antialias_sigma: Gaussian sigma (px) of the object edge blur in the image (masks stay exact).
        noise_sigma: std of the i.i.d. Gaussian pixel noise added to the final image.
        min_gap_px: background pixels kept between separate objects (groups excepted).
        border_px: background pixels kept between objects and the image border.
    """

    n_images: int = 60
    width: int = 320
    height: int = 240
    seed: int = 0
    objects_per_image: tuple[int, int] = (3, 6)
    categories: tuple[str, ...] = CATEGORY_NAMES
    category_weights: tuple[tuple[str, int], ...] = (("small_shape", 2),)
    backgrounds: tuple[str, ...] = BACKGROUNDS
    low_contrast_fraction: float = 0.25
    low_contrast_delta: tuple[float, float] = (12.0, 24.0)
    min_contrast: float = 80.0
    antialias_sigma: float = 0.6
    noise_sigma: float = 2.0
    min_gap_px: int = 3
    border_px: int = 2

    def __post_init__(self) -> None:
        # Normalise list inputs (e.g. from JSON/YAML) to tuples so the config stays hashable.
        for name in ("objects_per_image", "categories", "backgrounds", "low_contrast_delta"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "category_weights",
                           tuple((str(k), int(v)) for k, v in self.category_weights))
        if self.n_images < 1:
            raise ValueError(f"n_images must be >= 1, got {self.n_images}")
        if self.width < 96 or self.height < 96:
            raise ValueError(f"image size must be at least 96 x 96, got {self.width} x {self.height}")
        if isinstance(self.seed, (bool, float)) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))  # numpy ints -> int (JSON manifest)
        if self.min_gap_px < 1 or self.border_px < 0:
            raise ValueError("min_gap_px must be >= 1 (else separate objects may touch) and border_px >= 0")
        lo, hi = self.objects_per_image
        if not 1 <= lo <= hi:
            raise ValueError(f"objects_per_image must satisfy 1 <= min <= max, got {self.objects_per_image}")
        unknown = set(self.categories) - set(CATEGORY_NAMES)
        if unknown or not self.categories:
            raise ValueError(f"unknown or empty categories {sorted(unknown)}; known: {CATEGORY_NAMES}")
        unknown = set(self.backgrounds) - set(BACKGROUNDS)
        if unknown or not self.backgrounds:
            raise ValueError(f"unknown or empty backgrounds {sorted(unknown)}; known: {BACKGROUNDS}")
        if not 0.0 <= self.low_contrast_fraction <= 1.0:
            raise ValueError("low_contrast_fraction must be in [0, 1]")
        if any(w < 0 for _, w in self.category_weights):
            raise ValueError("category weights must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """JSON form (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SyntheticConfig":
        return cls(**d)


# ----------------------------------------------------------------------------------------------
# Shapes. Each maker returns amodal masks ``bool (h, w)`` on one patch, in z-order back -> front.
# ----------------------------------------------------------------------------------------------

@dataclass
class _Piece:
    """One slot's shapes: ``masks`` are amodal ``bool (h, w)`` on a common patch, back to front."""

    masks: list[np.ndarray]
    tags: list[list[str]] = field(default_factory=list)  # per member, geometry-derived tags


def _crop(mask: np.ndarray) -> np.ndarray:
    """Crop a ``bool``/``uint8 (h, w)`` patch to the tight box of its foreground, as ``bool``."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(bool)


def _fill_poly(patch: np.ndarray, pts_xy: np.ndarray, value: int = 1) -> None:
    """Fill polygon ``pts_xy`` ``(N, 2)`` float (x, y) into ``uint8`` patch, 1/16 px precision."""
    cv2.fillPoly(patch, [np.round(np.asarray(pts_xy) * 16).astype(np.int32)], value, cv2.LINE_8, 4)


def _rot(pts_xy: np.ndarray, angle: float) -> np.ndarray:
    """Rotate ``(N, 2)`` (x, y) points by ``angle`` radians about the origin."""
    c, s = np.cos(angle), np.sin(angle)
    return pts_xy @ np.array([[c, s], [-s, c]])


def _rect_pts(w: float, h: float, angle: float, cx: float, cy: float) -> np.ndarray:
    """Corners ``(4, 2)`` (x, y) of a ``w x h`` rectangle rotated by ``angle`` rad about (cx, cy)."""
    corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]], dtype=np.float64) / 2
    return _rot(corners, angle) + [cx, cy]


def _segment_pts(p0: Sequence[float], p1: Sequence[float], width: float) -> np.ndarray:
    """Corners ``(4, 2)`` of the band of perpendicular ``width`` px from ``p0`` to ``p1`` (x, y).

    Used instead of ``cv2.line`` whose thick lines are wider than the requested thickness.
    """
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    n = np.array([-d[1], d[0]]) / max(np.hypot(*d), 1e-9) * width / 2
    return np.array([p0 + n, p1 + n, p1 - n, p0 - n])


def _ellipse_mask(a: float, b: float, angle_deg: float) -> np.ndarray:
    """Filled ellipse with semi-axes ``a``, ``b`` px rotated by ``angle_deg``, cropped ``bool``."""
    r = int(np.ceil(max(a, b))) + 2
    patch = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
    cv2.ellipse(patch, (r * 16, r * 16), (int(round(a * 16)), int(round(b * 16))), angle_deg, 0, 360,
                1, -1, cv2.LINE_8, 4)
    return _crop(patch)


def _make_ring(rng: np.random.Generator) -> _Piece:
    a = rng.uniform(18, 48)
    b = a * rng.uniform(0.7, 1.0)
    width = rng.uniform(5, 0.5 * b)  # >= 5 px: a ring is a "holes" probe, not a "thin" one
    ang = rng.uniform(0, 180)
    r = int(np.ceil(a)) + 2
    patch = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
    c = (r * 16, r * 16)
    cv2.ellipse(patch, c, (int(a * 16), int(b * 16)), ang, 0, 360, 1, -1, cv2.LINE_8, 4)
    cv2.ellipse(patch, c, (int((a - width) * 16), int((b - width) * 16)), ang, 0, 360, 0, -1, cv2.LINE_8, 4)
    return _Piece([_crop(patch)])


def _make_frame(rng: np.random.Generator) -> _Piece:
    w, h = rng.uniform(30, 100), rng.uniform(30, 100)
    t = rng.uniform(5, min(w, h) / 4)
    ang = rng.uniform(0, np.pi / 2)
    r = int(np.hypot(w, h) / 2) + 3
    patch = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
    _fill_poly(patch, _rect_pts(w, h, ang, r, r), 1)
    _fill_poly(patch, _rect_pts(w - 2 * t, h - 2 * t, ang, r, r), 0)
    return _Piece([_crop(patch)])


_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX)


def _make_letter(rng: np.random.Generator) -> _Piece:
    ch = str(rng.choice(list("OADB")))
    font = int(rng.choice(_FONTS))
    scale = rng.uniform(2.2, 3.5)
    thick = int(rng.integers(5, 9))  # strokes >= 5 px: letters probe holes, not thin parts
    (tw, th), base = cv2.getTextSize(ch, font, scale, thick)
    pad = max(tw, th)  # room for the rotation below
    patch = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
    cv2.putText(patch, ch, (pad, pad + th), font, scale, 1, thick, cv2.LINE_8)
    angle = rng.uniform(-30, 30)
    if abs(angle) > 1:  # nearest-neighbour rotation keeps the mask binary
        hh, ww = patch.shape
        m = cv2.getRotationMatrix2D((ww / 2, hh / 2), angle, 1.0)
        patch = cv2.warpAffine(patch, m, (ww, hh), flags=cv2.INTER_NEAREST)
    return _Piece([_crop(patch)])


def _make_small(rng: np.random.Generator) -> _Piece:
    side = rng.uniform(8, SMALL_MAX_SIDE)
    kind = rng.choice(["ellipse", "rectangle", "triangle"])
    if kind == "ellipse":
        m = _ellipse_mask(side / 2, side / 2 * rng.uniform(0.5, 1.0), rng.uniform(0, 180))
    else:
        patch = np.zeros((3 * SMALL_MAX_SIDE, 3 * SMALL_MAX_SIDE), np.uint8)
        c = 1.5 * SMALL_MAX_SIDE
        if kind == "rectangle":
            pts = _rect_pts(side, side * rng.uniform(0.4, 1.0), rng.uniform(0, np.pi), c, c)
        else:
            ang = rng.uniform(0, 2 * np.pi) + np.array([0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
            pts = np.stack([np.cos(ang), np.sin(ang)], 1) * side / 2 + c
        _fill_poly(patch, pts)
        m = _crop(patch)
    return _Piece([m])  # a rotated box over SMALL_MAX_SIDE is rejected by _piece_ok and redrawn


def _thin_width(rng: np.random.Generator) -> int:
    return int(rng.choice(THIN_WIDTHS))


def _make_thin(rng: np.random.Generator) -> _Piece:
    kind = rng.choice(["L", "T", "stick", "bug"])
    if kind in ("L", "T"):
        w1 = _thin_width(rng)
        w2 = _thin_width(rng) if rng.random() < 0.3 else int(rng.integers(8, 19))  # one arm may be thick
        if rng.random() < 0.5:
            w1, w2 = w2, w1
        l1, l2 = int(rng.integers(35, 91)), int(rng.integers(30, 71))
        if kind == "L":  # vertical arm (width w1, height l1) + bottom arm (width w2, length l2)
            m = np.zeros((l1, max(l2, w1)), bool)
            m[:, :w1] = True
            m[l1 - w2:, :l2] = True
        else:  # top bar (height w1, length l1) + centred stem (width w2, length l2)
            m = np.zeros((w1 + l2, max(l1, w2)), bool)
            m[:w1, :l1] = True
            c0 = (m.shape[1] - w2) // 2
            m[w1:, c0:c0 + w2] = True
        m = np.rot90(m, int(rng.integers(4)))
        if rng.random() < 0.5:
            m = m[:, ::-1]
        return _Piece([_crop(np.ascontiguousarray(m))])
    # Stick figure or bug: filled body + thin limbs drawn as exact-width bands (axis-free angles).
    patch = np.zeros((150, 150), np.uint8)
    c = np.array([75.0, 75.0])
    limbs: list[tuple[np.ndarray, np.ndarray]] = []
    if kind == "stick":  # filled head on a thin body with two arms and two legs
        head_r, body = rng.uniform(7, 13), rng.uniform(22, 38)
        top, bottom = c - [0, body / 2], c + [0, body / 2]
        head = top - [0, head_r - 1]
        cv2.circle(patch, (int(head[0] * 16), int(head[1] * 16)), int(head_r * 16), 1, -1, cv2.LINE_8, 4)
        shoulder = top + [0, body / 3]
        limbs.append((top, bottom))
        for sx in (-1, 1):
            limbs.append((shoulder, shoulder + [sx * rng.uniform(10, 20), rng.uniform(-12, 10)]))
            limbs.append((bottom, bottom + [sx * rng.uniform(5, 14), rng.uniform(15, 25)]))
    else:  # bug: elliptic body, two antennas, 0-3 pairs of legs
        a, b = rng.uniform(16, 30), rng.uniform(9, 18)
        cv2.ellipse(patch, (int(c[0] * 16), int(c[1] * 16)), (int(a * 16), int(b * 16)), 0, 0, 360, 1, -1,
                    cv2.LINE_8, 4)
        for sx in (-1, 1):
            root = c + [sx * a * 0.5, -b * 0.6]
            limbs.append((root, root + [sx * rng.uniform(4, 14), -rng.uniform(14, 30)]))
        for x in np.linspace(-0.5, 0.5, int(rng.integers(0, 4))) * a:
            root = c + [x, b * 0.6]
            limbs.append((root, root + [rng.uniform(-6, 6), rng.uniform(10, 16)]))
    for p0, p1 in limbs:
        _fill_poly(patch, _segment_pts(p0, p1, _thin_width(rng)))
    m = _crop(patch)
    if rng.random() < 0.5:
        m = m[::-1]
    return _Piece([np.ascontiguousarray(m)])


def _make_jagged(rng: np.random.Generator) -> _Piece:
    R = rng.uniform(20, 50)
    if rng.random() < 0.5:  # star with many spikes
        n = int(rng.integers(9, 25))
        theta = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + rng.uniform(0, np.pi)
        radii = np.where(np.arange(2 * n) % 2 == 0, R, R * rng.uniform(0.45, 0.75))
        radii = radii * rng.uniform(0.93, 1.07, 2 * n)
    else:  # blob whose radius has smooth low-frequency shape plus per-vertex zig-zag noise
        n_v = int(rng.integers(60, 110))
        theta = np.linspace(0, 2 * np.pi, n_v, endpoint=False)
        k = np.arange(2, 7)[:, None]
        smooth = (rng.uniform(0, 0.12, (5, 1)) * np.cos(k * theta + rng.uniform(0, 2 * np.pi, (5, 1)))).sum(0)
        radii = R * np.clip(1 + smooth + rng.uniform(-0.18, 0.18, n_v), 0.35, None)
    r = int(np.ceil(radii.max())) + 3
    patch = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
    _fill_poly(patch, np.stack([np.cos(theta), np.sin(theta)], 1) * radii[:, None] + r)
    return _Piece([_crop(patch)])


def _disc(patch_size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Filled disc ``bool (patch_size, patch_size)`` centred at (cx, cy), radius r (1/16 px precision)."""
    m = np.zeros((patch_size, patch_size), np.uint8)
    cv2.circle(m, (int(round(cx * 16)), int(round(cy * 16))), int(round(r * 16)), 1, -1, cv2.LINE_8, 4)
    return m.astype(bool)


def _adjacent(a: np.ndarray, b: np.ndarray) -> bool:
    """True when some pixel of ``a`` is 8-adjacent to (or is) a pixel of ``b``."""
    return bool((cv2.dilate(a.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & b).any())


def _make_disc_group(rng: np.random.Generator) -> _Piece:
    """2-3 discs of one category, each touching (8-adjacent, no shared pixel) or overlapping the previous."""
    n = 2 if rng.random() < 0.6 else 3
    touching = bool(rng.random() < 0.5)
    radii = rng.uniform(12, 28, n)
    size = int(2 * radii.sum() + 2 * radii.max() + 8)
    centres = [np.array([size / 2, size / 2])]
    masks = [_disc(size, *centres[0], radii[0])]
    direction = rng.uniform(0, 2 * np.pi)
    for i in range(1, n):
        if i == 2:  # turn away from the first disc so the third one does not land on it
            direction += rng.choice([-1, 1]) * rng.uniform(np.pi / 3, np.pi / 2)
        u = np.array([np.cos(direction), np.sin(direction)])
        rsum = radii[i - 1] + radii[i]
        if touching:
            # Largest-to-smallest centre distance: first one whose raster is 8-adjacent, disjoint.
            for d in rsum + np.arange(2.0, -2.01, -0.25):
                m = _disc(size, *(centres[-1] + d * u), radii[i])
                if _adjacent(m, masks[-1]) and not any((m & o).any() for o in masks):
                    break
        else:
            d = rsum * rng.uniform(0.45, 0.75)
            m = _disc(size, *(centres[-1] + d * u), radii[i])
        centres.append(centres[-1] + d * u)
        masks.append(m)
    union = np.logical_or.reduce(masks)
    rows, cols = np.flatnonzero(union.any(1)), np.flatnonzero(union.any(0))
    masks = [m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] for m in masks]
    return _Piece(masks, _group_tags(masks))


def _visible(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each amodal mask given z-order back -> front (later masks hide earlier)."""
    out = []
    for i, m in enumerate(masks):
        front = np.logical_or.reduce(masks[i + 1:]) if i + 1 < len(masks) else np.zeros_like(m)
        out.append(m & ~front)
    return out


def _group_tags(masks: list[np.ndarray]) -> list[list[str]]:
    """Tags from geometry: ``overlapping`` = shares amodal pixels with a group member,
    ``occluded`` = some of its pixels are hidden by a member in front, ``touching`` = visibly
    8-adjacent to a member it does not overlap."""
    vis = _visible(masks)
    tags: list[list[str]] = []
    for i, m in enumerate(masks):
        t = []
        overlaps = [j for j in range(len(masks)) if j != i and (m & masks[j]).any()]
        touches = [j for j in range(len(masks)) if j != i and j not in overlaps and _adjacent(vis[i], vis[j])]
        if touches:
            t.append("touching")
        if overlaps:
            t.append("overlapping")
        if vis[i].sum() < m.sum():
            t.append("occluded")
        tags.append(t)
    return tags


LARGE_CONTROL_P = 0.3  # share of control shapes drawn in COCO's "large" bucket (>= 96^2 px)


def _make_ellipse(rng: np.random.Generator) -> _Piece:
    if rng.random() < LARGE_CONTROL_P:
        a = rng.uniform(60, 80)
        return _Piece([_ellipse_mask(a, a * rng.uniform(0.85, 1.0), rng.uniform(0, 180))])
    a = rng.uniform(12, 50)
    return _Piece([_ellipse_mask(a, a * rng.uniform(0.4, 1.0), rng.uniform(0, 180))])


def _make_rectangle(rng: np.random.Generator) -> _Piece:
    lo, hi = (100, 130) if rng.random() < LARGE_CONTROL_P else (20, 80)
    w, h = rng.uniform(lo, hi), rng.uniform(lo, hi)
    r = int(np.hypot(w, h) / 2) + 3
    patch = np.zeros((2 * r + 1, 2 * r + 1), np.uint8)
    _fill_poly(patch, _rect_pts(w, h, rng.uniform(0, np.pi / 2), r, r))
    return _Piece([_crop(patch)])


_MAKERS: dict[str, Callable[[np.random.Generator], _Piece]] = {
    "ring": _make_ring, "frame": _make_frame, "letter": _make_letter, "small_shape": _make_small,
    "thin_shape": _make_thin, "jagged_shape": _make_jagged, "disc": _make_disc_group,
    "ellipse": _make_ellipse, "rectangle": _make_rectangle,
}

# ----------------------------------------------------------------------------------------------
# Geometry checks (the tests re-derive the same facts with scipy/skimage, not with these)
# ----------------------------------------------------------------------------------------------

_EIGHT = np.ones((3, 3), bool)


def has_holes(mask: np.ndarray) -> bool:
    """True when ``mask`` (``bool (H, W)``) has a hole in the study's sense (:func:`samstudy.masks.hole_mask`:
    a 4-connected background component not touching the image border)."""
    return bool(hole_mask(mask).any())


def hole_area(mask: np.ndarray) -> int:
    """Number of hole pixels of ``mask`` (``bool (H, W)``), holes as in :func:`samstudy.masks.hole_mask`."""
    return int(np.count_nonzero(hole_mask(mask)))


def thin_part_size(mask: np.ndarray, width: int = THIN_OPEN) -> int:
    """Pixels of the largest 8-connected part that an opening with a ``width x width`` square
    removes from ``mask``: every band narrower than ``width`` px (any angle) is removed."""
    opened = ndimage.binary_opening(np.pad(mask, width), structure=np.ones((width, width), bool))
    residue = np.pad(mask, width) & ~opened
    lab, n = ndimage.label(residue, structure=_EIGHT)
    return int(np.bincount(lab.ravel())[1:].max()) if n else 0


def n_components(mask: np.ndarray) -> int:
    """Number of 8-connected foreground components."""
    return int(ndimage.label(mask, structure=_EIGHT)[1])


def boundary_excess(mask: np.ndarray) -> float:
    """Outer contour length over its convex hull's length (1.0 for convex shapes; jagged > 1).

    ``mask``: ``bool (H, W)`` with one component; lengths from OpenCV's 8-connected contour.
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(contours, key=len)
    return float(cv2.arcLength(c, True) / max(cv2.arcLength(cv2.convexHull(c), True), 1e-9))


def _piece_ok(category: str, piece: _Piece) -> bool:
    """Reject a random draw whose raster does not probe what its category promises."""
    vis = _visible(piece.masks)
    if any(v.sum() == 0 or n_components(v) != 1 for v in vis):
        return False
    tags = CATEGORY_TAGS[category]
    for m, v in zip(piece.masks, vis):
        if "holes" in tags:
            if not has_holes(m):
                return False
        elif has_holes(v):
            return False
        if "thin" in tags and thin_part_size(m) < 15:
            return False
        if "fine_boundary" in tags and boundary_excess(m) < 1.25:
            return False
        if "small" in tags and (max(m.shape) > SMALL_MAX_SIDE or m.sum() < 12):
            return False
        if v.sum() < 0.4 * m.sum():  # an instance mostly hidden is not a useful probe
            return False
    return True


def _make_piece(category: str, rng: np.random.Generator) -> _Piece:
    for _ in range(50):
        piece = _MAKERS[category](rng)
        if _piece_ok(category, piece):
            if not piece.tags:
                piece.tags = [[] for _ in piece.masks]
            return piece
    raise RuntimeError(f"could not draw a valid {category!r} shape in 50 tries")  # pragma: no cover

# ----------------------------------------------------------------------------------------------
# Backgrounds and rendering (float32 RGB in [0, 255] until the final rounding)
# ----------------------------------------------------------------------------------------------


def _colour(rng: np.random.Generator, lo: float = 25, hi: float = 230) -> np.ndarray:
    return rng.uniform(lo, hi, 3).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float, channels: int = 3) -> np.ndarray:
    """Zero-mean smooth noise ``float32 (h, w, channels)`` in about [-1, 1], feature size ``cell`` px."""
    gh, gw = max(2, int(h / cell) + 2), max(2, int(w / cell) + 2)
    g = rng.uniform(-1, 1, (gh, gw, channels)).astype(np.float32)
    out = cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _background(kind: str, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Background ``float32 (h, w, 3)`` RGB of the given kind (cluttered = flat/gradient + distractors)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "flat":
        return np.broadcast_to(_colour(rng), (h, w, 3)).copy()
    if kind in ("gradient", "cluttered"):
        c0, c1 = _colour(rng), _colour(rng)
        ang = rng.uniform(0, 2 * np.pi)
        t = np.cos(ang) * xx + np.sin(ang) * yy
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        bg = c0 + t[..., None] * (c1 - c0)
        if kind == "cluttered":
            _draw_distractors(bg, rng)
        return bg
    if kind == "noise":
        base = _colour(rng, 60, 200)
        return base + 45 * _smooth_noise(rng, h, w, rng.uniform(6, 24)) + rng.normal(0, 10, (h, w, 3)).astype(np.float32)
    c0, c1 = _colour(rng), _colour(rng)
    if kind == "stripes":
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(6, 20)
        t = np.cos(ang) * xx + np.sin(ang) * yy
        sel = (np.floor(t / (period / 2)) % 2)[..., None]
    elif kind == "checker":
        cell = rng.uniform(8, 24)
        sel = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2)[..., None]
    else:
        raise ValueError(f"unknown background kind {kind!r}")
    return (c0 + sel * (c1 - c0)).astype(np.float32)


def _composite(canvas: np.ndarray, mask: np.ndarray, y: int, x: int,
               layer_fn: Callable[[int, int], np.ndarray], sigma: float) -> None:
    """Blend an object onto ``canvas`` (``float32 (H, W, 3)``) in place.

    ``mask`` (``bool (h, w)``) goes at row ``y``, col ``x``; its alpha is the mask softened by a
    Gaussian of ``sigma`` px (image-only anti-aliasing; the ground truth stays ``mask``).
    ``layer_fn(h2, w2)`` returns the object's colour ``float32 (h2, w2, 3)`` over the mask's box
    grown by the blur radius on each side, so the soft rim gets the object's own colour.
    """
    h, w = mask.shape
    p = int(np.ceil(3 * sigma)) + 1 if sigma > 0 else 0
    H, W = canvas.shape[:2]
    alpha = np.zeros((h + 2 * p, w + 2 * p), np.float32)
    alpha[p:p + h, p:p + w] = mask
    if sigma > 0:
        alpha = cv2.GaussianBlur(alpha, (2 * p + 1, 2 * p + 1), sigma)
    layer = layer_fn(h + 2 * p, w + 2 * p)
    # Clip the grown box to the image.
    y0, x0 = y - p, x - p
    cy0, cx0 = max(y0, 0), max(x0, 0)
    cy1, cx1 = min(y0 + h + 2 * p, H), min(x0 + w + 2 * p, W)
    a = alpha[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0, None]
    lay = layer[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    region = canvas[cy0:cy1, cx0:cx1]
    region += a * (lay - region)


def _flat_layer(colour: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """Layer function of a uniform colour ``float32 (3,)``."""
    return lambda h, w: np.broadcast_to(colour, (h, w, 3)).astype(np.float32)


def _textured_layer(rng: np.random.Generator, colour: np.ndarray, amplitude: float
                    ) -> Callable[[int, int], np.ndarray]:
    """Layer function: ``colour`` varied by a linear ramp or smooth noise of about +-``amplitude``."""
    kind = rng.choice(["flat", "ramp", "noise"])
    ang = rng.uniform(0, 2 * np.pi)
    tint = rng.uniform(-1, 1, 3).astype(np.float32)
    sub = np.random.default_rng(rng.integers(2**63))  # the noise drawn later must not shift rng

    def fn(h: int, w: int) -> np.ndarray:
        out = np.broadcast_to(colour, (h, w, 3)).astype(np.float32)
        if kind == "ramp":
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            t = np.cos(ang) * xx + np.sin(ang) * yy
            t = 2 * (t - t.min()) / max(float(t.max() - t.min()), 1.0) - 1
            out = out + amplitude * t[..., None] * (0.5 + 0.5 * np.abs(tint))
        elif kind == "noise":
            out = out + amplitude * _smooth_noise(sub, h, w, 6.0)
        return out

    return fn


def _draw_distractors(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """Non-annotated clutter: 8-15 lines, triangles and arcs drawn into the background."""
    H, W = canvas.shape[:2]
    for _ in range(int(rng.integers(8, 16))):
        patch = np.zeros((H, W), np.uint8)
        kind = rng.choice(["line", "triangle", "arc"])
        cx, cy = rng.uniform(0, W), rng.uniform(0, H)
        if kind == "line":
            d = rng.uniform(-40, 40, 2)
            _fill_poly(patch, _segment_pts((cx, cy), (cx + d[0], cy + d[1]), rng.uniform(1.5, 5)))
        elif kind == "triangle":
            _fill_poly(patch, rng.uniform(-20, 20, (3, 2)) + [cx, cy])
        else:
            r = rng.uniform(8, 30)
            start = rng.uniform(0, 360)
            cv2.ellipse(patch, (int(cx), int(cy)), (int(r), int(r)), 0, start, start + rng.uniform(60, 240), 1,
                        int(rng.integers(1, 4)), cv2.LINE_8)
        m = patch.astype(bool)
        if m.any():
            ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            sub = m[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
            _composite(canvas, sub, int(ys[0]), int(xs[0]), _flat_layer(_colour(rng)), 0.6)


# ----------------------------------------------------------------------------------------------
# One image
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ImagePlan:
    """What image ``index`` (0-based) holds: its background kind, contrast and object slots."""

    index: int
    background: str
    low_contrast: bool
    slots: tuple[str, ...]  # category names; a "disc" slot becomes a group of 2-3 instances


@dataclass
class SyntheticObject:
    """One ground-truth instance of a rendered image.

    ``mask``: ``bool (H, W)`` visible pixels; ``amodal_area``: pixel count of the whole shape;
    ``group``: index (within the image) of the slot it came from; ``occluded_by``: indices (within
    the image's object list) of the instances in front of it.
    """

    category: str
    mask: np.ndarray
    tags: tuple[str, ...]
    group: int
    amodal_area: int
    occluded_by: tuple[int, ...] = ()


def plan_images(config: SyntheticConfig) -> list[ImagePlan]:
    """Balanced assignment of backgrounds, low contrast and categories to images.

    Backgrounds are cycled then shuffled (equal counts up to one); exactly
    ``round(low_contrast_fraction * n_images)`` images are low contrast; category slots are dealt
    from consecutive shuffled cycles of the weighted category list, so every category appears
    about equally often (times its weight) whatever the seed.
    """
    rng = np.random.default_rng([config.seed, 1])
    n = config.n_images
    bgs = [config.backgrounds[i % len(config.backgrounds)] for i in range(n)]
    bgs = [bgs[i] for i in rng.permutation(n)]
    low = np.zeros(n, bool)
    low[rng.permutation(n)[:int(round(config.low_contrast_fraction * n))]] = True
    weights = dict(config.category_weights)
    cycle = [c for c in config.categories for _ in range(weights.get(c, 1))]
    if not cycle:
        raise ValueError("all category weights are zero")
    lo, hi = config.objects_per_image
    counts = rng.integers(lo, hi + 1, size=n)
    bag: list[str] = []
    while len(bag) < counts.sum():
        bag.extend(cycle[i] for i in rng.permutation(len(cycle)))
    plans, k = [], 0
    for i in range(n):
        plans.append(ImagePlan(i, bgs[i], bool(low[i]), tuple(bag[k:k + counts[i]])))
        k += counts[i]
    return plans


def _find_position(blocked: np.ndarray, union: np.ndarray, border: int, rng: np.random.Generator
                   ) -> tuple[int, int] | None:
    """Random top-left ``(row, col)`` where ``union`` (``bool (h, w)``) covers no blocked pixel and
    stays ``border`` px inside the image; ``None`` when there is no such place."""
    H, W = blocked.shape
    h, w = union.shape
    ny, nx = H - h - 2 * border + 1, W - w - 2 * border + 1
    if ny <= 0 or nx <= 0:
        return None
    for _ in range(40):  # cheap random tries first; the exhaustive search below is ~100x dearer
        r, c = int(rng.integers(ny)) + border, int(rng.integers(nx)) + border
        if not (blocked[r:r + h, c:c + w].astype(bool) & union).any():
            return r, c
    # Correlation with anchor (0, 0): hits[r, c] = blocked pixels under the shape placed at (r, c).
    hits = cv2.filter2D(blocked.astype(np.float32), -1, union.astype(np.float32), anchor=(0, 0),
                        borderType=cv2.BORDER_CONSTANT)
    free = np.argwhere(hits[border:border + ny, border:border + nx] < 0.5)
    if len(free) == 0:
        return None
    r, c = free[rng.integers(len(free))]
    return int(r) + border, int(c) + border


def _pick_colour(rng: np.random.Generator, under: np.ndarray, low_contrast: bool,
                 config: SyntheticConfig) -> np.ndarray:
    """Object colour ``float32 (3,)`` RGB: near ``under`` (mean background colour under the object)
    when ``low_contrast``, else at least ``min_contrast`` away from it (best of 30 draws)."""
    if low_contrast:
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        c = under + direction * rng.uniform(*config.low_contrast_delta)
        return np.clip(c, 0, 255).astype(np.float32)
    best, best_d = None, -1.0
    for _ in range(30):
        c = _colour(rng, 10, 245)
        d = float(np.linalg.norm(c - under))
        if d > best_d:
            best, best_d = c, d
        if d >= config.min_contrast:
            break
    return best


def render_image(config: SyntheticConfig, plan: ImagePlan) -> tuple[np.ndarray, list[SyntheticObject], int]:
    """Render one image of the probe set.

    Returns ``(image, objects, dropped)``: ``image`` RGB ``uint8 (H, W, 3)``; ``objects`` in
    annotation order (slots in placement order, largest first; back to front within a disc
    group), masks pairwise disjoint;
    ``dropped`` = slots that found no free place even after 8 redraws (0 in the default config).
    """
    H, W = config.height, config.width
    rng = np.random.default_rng([config.seed, 2, plan.index])
    canvas = _background(plan.background, rng, H, W)
    pieces = [(cat, _make_piece(cat, rng)) for cat in plan.slots]
    # Largest first: they are the hardest to fit.
    order = sorted(range(len(pieces)), key=lambda i: -int(np.logical_or.reduce(pieces[i][1].masks).sum()))
    blocked = np.zeros((H, W), np.uint8)
    g = config.min_gap_px
    grow = np.ones((2 * g + 1, 2 * g + 1), np.uint8)
    objects: list[SyntheticObject] = []
    dropped = 0
    for group, i in enumerate(order):
        cat, piece = pieces[i]
        for _ in range(8):  # no room: redraw the shape (a new draw is often smaller)
            union = np.logical_or.reduce(piece.masks)
            pos = _find_position(blocked, union, config.border_px, rng)
            if pos is not None:
                break
            piece = _make_piece(cat, rng)
        if pos is None:
            dropped += 1
            continue
        y, x = pos
        h, w = union.shape
        grown = cv2.dilate(np.pad(union, g).astype(np.uint8), grow)
        y0, x0 = y - g, x - g  # >= 0 needs border_px >= min_gap_px, else clip
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y + h + g, H), min(x + w + g, W)
        blocked[cy0:cy1, cx0:cx1] |= grown[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]

        under = canvas[y:y + h, x:x + w][union].mean(axis=0)
        base = _pick_colour(rng, under, plan.low_contrast, config)
        amplitude = 4.0 if plan.low_contrast else 18.0
        first = len(objects)
        vis = _visible(piece.masks)
        for k, (m, v) in enumerate(zip(piece.masks, vis)):
            # Same-category group members get close colours: the boundary between them is faint.
            colour = np.clip(base + rng.normal(0, 4 if plan.low_contrast else 15, 3), 0, 255).astype(np.float32)
            _composite(canvas, m, y, x, _textured_layer(rng, colour, amplitude), config.antialias_sigma)
            full = np.zeros((H, W), bool)
            full[y:y + h, x:x + w] = v
            tags = [*CATEGORY_TAGS[cat], *piece.tags[k], f"bg_{plan.background}"]
            if plan.low_contrast:
                tags.append("low_contrast")
            behind = tuple(first + j for j in range(k + 1, len(piece.masks)) if (m & piece.masks[j]).any())
            objects.append(SyntheticObject(cat, full, tuple(tags), group, int(m.sum()), behind))
    if config.noise_sigma > 0:
        canvas += rng.normal(0, config.noise_sigma, canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, objects, dropped


# ----------------------------------------------------------------------------------------------
# The probe set on disk
# ----------------------------------------------------------------------------------------------

INSTANCES_FILE = "instances.json"
MANIFEST_FILE = "manifest.json"
IMAGES_DIR = "images"


# Source files whose code decides the output: this module and samstudy.masks (RLE encoding and
# hole_mask, which accepts or rejects drawn shapes).
_GENERATOR_SOURCES = (Path(__file__), Path(__file__).with_name("masks.py"))


@functools.lru_cache(maxsize=1)
def _source_sha256() -> str:
    """SHA-256 over the SHA-256s of :data:`_GENERATOR_SOURCES`, in that order."""
    return hashlib.sha256("".join(file_sha256(p) for p in _GENERATOR_SOURCES).encode("ascii")).hexdigest()


def _environment() -> dict[str, str]:
    """What can change the output besides the config: library versions and the generator's source
    (this module and :mod:`samstudy.masks`, so an edited generator never serves a stale cached
    set). Part of the cache key."""
    return {"numpy": np.__version__, "opencv": cv2.__version__,
            "generator_source_sha256": _source_sha256()}


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


def _png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG of an RGB ``uint8 (H, W, 3)`` image; no timestamp chunk, so deterministic."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def category_table() -> list[dict[str, Any]]:
    """COCO ``categories``: ids 1.. in :data:`CATEGORY_NAMES` order (fixed whatever the config)."""
    return [{"id": i + 1, "name": name, "supercategory": "synthetic", "tags": list(CATEGORY_TAGS[name])}
            for i, name in enumerate(CATEGORY_NAMES)]


def probe_set_is_current(config: SyntheticConfig, out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds a complete probe set of this config, generator version and
    library versions, and every listed file still has its recorded sha256."""
    out = Path(out_dir)
    try:
        man = json.loads((out / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return False
    if (man.get("generator") != GENERATOR or man.get("generator_version") != GENERATOR_VERSION
            or man.get("config") != config.to_dict() or man.get("environment") != _environment()):
        return False
    files = man.get("files") or {}
    if INSTANCES_FILE not in files:
        return False
    return all((out / rel).is_file() and file_sha256(out / rel) == sha for rel, sha in files.items())


def _write_set(config: SyntheticConfig, out: Path) -> dict[str, Any]:
    """Write images, instances.json and manifest.json (last) into the empty folder ``out``."""
    (out / IMAGES_DIR).mkdir(parents=True)
    images, annotations, files = [], [], {}
    cat_id = {name: i + 1 for i, name in enumerate(CATEGORY_NAMES)}
    dropped = 0
    for plan in plan_images(config):
        image, objects, n_drop = render_image(config, plan)
        dropped += n_drop
        image_id = plan.index + 1
        name = f"{image_id:06d}.png"
        data = _png_bytes(image)
        (out / IMAGES_DIR / name).write_bytes(data)
        files[f"{IMAGES_DIR}/{name}"] = hashlib.sha256(data).hexdigest()
        images.append({"id": image_id, "file_name": name, "height": config.height, "width": config.width,
                       "background": plan.background, "low_contrast": plan.low_contrast})
        first_id = len(annotations) + 1
        group_first: dict[int, int] = {}
        for k, obj in enumerate(objects):
            ann_id = first_id + k
            rows, cols = np.flatnonzero(obj.mask.any(1)), np.flatnonzero(obj.mask.any(0))
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": cat_id[obj.category],
                "segmentation": encode_rle(obj.mask), "area": int(obj.mask.sum()),
                "bbox": [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)],
                "iscrowd": 0, "tags": list(obj.tags),
                "group_id": group_first.setdefault(obj.group, ann_id),
                "amodal_area": obj.amodal_area, "occluded_by": [first_id + j for j in obj.occluded_by],
                "hole_area": hole_area(obj.mask),
            })
    coco = {
        "info": {"description": "samstudy synthetic probe set (every failure mode with exact ground truth)",
                 "generator": GENERATOR, "generator_version": GENERATOR_VERSION, "seed": config.seed},
        "licenses": [], "images": images, "annotations": annotations, "categories": category_table(),
    }
    data = _json_bytes(coco)
    (out / INSTANCES_FILE).write_bytes(data)
    files[INSTANCES_FILE] = hashlib.sha256(data).hexdigest()
    manifest = {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "config": config.to_dict(),
                "environment": _environment(), "n_images": len(images), "n_annotations": len(annotations),
                "dropped_slots": dropped, "files": dict(sorted(files.items()))}
    (out / MANIFEST_FILE).write_bytes(_json_bytes(manifest))
    return manifest


def _is_ours_or_empty(path: Path) -> bool:
    if not path.exists():
        return True
    if not path.is_dir():
        return False
    if not any(path.iterdir()):
        return True
    try:
        return json.loads((path / MANIFEST_FILE).read_text()).get("generator") == GENERATOR
    except (OSError, ValueError):
        return False


STALE_TEMP_S = 3600.0  # temporaries older than this were left by a killed run, not a live one


def _remove_stale_temporaries(out: Path) -> None:
    """Delete ``.<name>.tmp-*`` / ``.<name>.old-*`` siblings of ``out`` left by a killed run."""
    now = time.time()
    for p in out.parent.glob(f".{out.name}.*-*"):
        if p.name.startswith((f".{out.name}.tmp-", f".{out.name}.old-")) and p.is_dir():
            try:
                if now - p.stat().st_mtime > STALE_TEMP_S:
                    shutil.rmtree(p, ignore_errors=True)
            except OSError:
                pass


def generate_probe_set(config: SyntheticConfig | None = None, out_dir: str | os.PathLike = "data/synthetic",
                       *, force: bool = False) -> Path:
    """Generate the probe set into ``out_dir`` and return ``out_dir`` (a ``Path``).

    Files: ``out_dir/images/NNNNNN.png`` (RGB), ``out_dir/instances.json`` (COCO, see the module
    docstring), ``out_dir/manifest.json``. Cheap cache: when :func:`probe_set_is_current` holds
    (and not ``force``), nothing is written. Atomic: the set is built in a temporary sibling
    folder and renamed into place, so an interrupted run never leaves a half-valid set under
    ``out_dir``. ``out_dir`` is owned by the generator: an existing folder is replaced only if it
    is empty or a previous probe set (has our manifest); anything else raises ``FileExistsError``.
    """
    config = config or SyntheticConfig()
    out = Path(out_dir)
    if not force and probe_set_is_current(config, out):
        return out
    if not _is_ours_or_empty(out):
        raise FileExistsError(f"{out} exists and is not a samstudy probe set; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old: Path | None = None
    try:
        _write_set(config, tmp / "set")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "set")
        try:
            os.replace(tmp / "set", out)
        except OSError:
            # A concurrent generator got there first; its set is as good as ours if current.
            if not probe_set_is_current(config, out):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------
# Description
# ----------------------------------------------------------------------------------------------

def describe_probe_set(instances_json: str | os.PathLike | dict[str, Any]):
    """Counts per category and tag of a probe set (or any COCO file with ``tags``).

    ``instances_json``: path to ``instances.json``, its folder, or the loaded dict. Returns a
    ``pandas.DataFrame`` with columns ``category, tag, count, mean_area, small, medium, large``
    (size-bucket counts by ``area``); one row per (category, tag) plus one ``tag == "*"`` row per
    category (all its instances) and a final ``category == "*"`` row per tag over all categories.
    """
    import pandas as pd

    if isinstance(instances_json, dict):
        coco = instances_json
    else:
        p = Path(instances_json)
        coco = json.loads((p / INSTANCES_FILE if p.is_dir() else p).read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    rows = []
    for a in coco["annotations"]:
        for tag in ["*", *a.get("tags", [])]:
            for cat in (names[a["category_id"]], "*"):
                rows.append({"category": cat, "tag": tag, "area": float(a["area"]),
                             "bucket": size_bucket(a["area"])})
    cols = ["category", "tag", "count", "mean_area", "small", "medium", "large"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)
    out = df.groupby(["category", "tag"], sort=False).agg(count=("area", "size"), mean_area=("area", "mean"))
    buckets = pd.crosstab([df["category"], df["tag"]], df["bucket"])
    out = out.join(buckets).reindex(columns=cols[2:], fill_value=0).fillna(0)
    for b in ("small", "medium", "large"):
        out[b] = out[b].astype(int)
    out = out.reset_index()
    order = {c: i for i, c in enumerate([*names.values(), "*"])}
    out["_o"] = out["category"].map(order)
    out["_t"] = (out["tag"] != "*").astype(int)
    return out.sort_values(["_o", "_t", "tag"]).drop(columns=["_o", "_t"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """``python -m samstudy.synthetic --out DIR [--n-images N --seed S --width W --height H --force]``."""
    ap = argparse.ArgumentParser(prog="python -m samstudy.synthetic", description=main.__doc__)
    ap.add_argument("--out", required=True, help="output folder (created; replaced if a previous probe set)")
    ap.add_argument("--n-images", type=int, default=SyntheticConfig.n_images)
    ap.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    ap.add_argument("--width", type=int, default=SyntheticConfig.width)
    ap.add_argument("--height", type=int, default=SyntheticConfig.height)
    ap.add_argument("--force", action="store_true", help="regenerate even when the manifest matches")
    args = ap.parse_args(argv)
    cfg = SyntheticConfig(n_images=args.n_images, seed=args.seed, width=args.width, height=args.height)
    t0 = time.perf_counter()
    cached = not args.force and probe_set_is_current(cfg, args.out)
    out = generate_probe_set(cfg, args.out, force=args.force)
    dt = time.perf_counter() - t0
    man = json.loads((out / MANIFEST_FILE).read_text())
    print(f"{'up to date' if cached else 'generated'}: {out} ({man['n_images']} images, "
          f"{man['n_annotations']} annotations, {man['dropped_slots']} dropped slots) in {dt:.1f} s")
    df = describe_probe_set(out / INSTANCES_FILE)
    table = df[(df["tag"] == "*") | (df["category"] == "*")]  # per category, then per tag
    print(table.to_string(index=False, float_format=lambda v: f"{v:.0f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
