"""Per-object metrics: IoU, boundary IoU, holes, size buckets, number of clicks (NoC).

This module is the one place where the study's metric definitions live (``docs/STUDY.md``).
Masks are ``bool`` arrays of shape ``(H, W)`` indexed ``mask[row, col]`` (see :mod:`samstudy.masks`);
``pred``, ``gt`` and ``ignore`` of one call must share the same shape.

Definitions
-----------
**IoU** (intersection over union)::

    IoU(P, G; X) = |P ∩ G \\ X| / |(P ∪ G) \\ X|

where ``X`` is the optional ``ignore`` mask (pixels excluded from both counts, e.g. GrabCut's
uncertain band). When the union is empty (both masks empty outside ``X``) the IoU is defined as
**1.0**: an empty prediction agrees perfectly with an empty target. (``pycocotools.mask.iou``
returns 0 in that case; on non-empty, non-crowd masks the two agree exactly.)

**Boundary IoU** (Cheng et al., 2021, "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation"): the *inner boundary band* ``B_d(M)`` of a mask ``M`` is the set of pixels of ``M``
that have a non-``M`` pixel within chessboard distance ``d`` (``max(|dy|, |dx|) <= d``), where every
pixel outside the image counts as non-``M`` (the image border counts as contour). Equivalently
``B_d(M) = M \\ erode(M, (2d+1)x(2d+1) square)`` with the image zero-padded, which is what the
reference ``boundary-iou-api`` computes with ``copyMakeBorder`` + ``d`` iterations of a 3x3 erosion.
``d = max(1, round(dilation_ratio * sqrt(H**2 + W**2)))`` with the full image's ``H, W``
(Python ``round``: half to even, as in the reference); ``dilation_ratio = 0.02`` (2% of the diagonal;
d = 16 px for 640x480). Boundary IoU = ``IoU(B_d(P), B_d(G); X)``, with the same empty -> 1.0 rule.

**Holes** (defined once, in :func:`samstudy.masks.hole_mask`): a hole of a mask ``M`` is a
connected component of the background ``~M`` that does not touch the image border, i.e. is fully
enclosed by ``M``. Background components use **4-connectivity** (so the object is implicitly
8-connected: a diagonal gap in a ring does not open the hole; a 4-connected gap does).
``n_holes`` is the number of such components, ``hole_area`` their total pixel count. For a
(pred, gt) pair, **hole_fill_agreement** = IoU between the GT hole pixel set and the predicted
hole pixel set (1.0 when neither mask has a hole): 1.0 means the prediction leaves exactly the
GT's holes open; 0.0 means e.g. the GT has holes and the prediction fills them all (or the
prediction cuts holes where the GT has none). Holes ignore the ``ignore`` mask: they are a
property of each mask's shape.

**Size bucket** (COCO): ``area < 32**2 = 1024`` -> ``"small"``, ``area < 96**2 = 9216`` ->
``"medium"``, else ``"large"``; ``area`` in pixels. (COCOeval's range test is inclusive at both ends,
so an area of exactly 1024 or 9216 falls in two of its ranges; here each area has one bucket.)

**NoC@t** (RITM, Sofiiuk et al., 2022): ``iou_per_click[k]`` is the IoU after click ``k + 1``;
NoC@t is the smallest click count ``k + 1`` with ``iou_per_click[k] >= t`` among the first
``max_clicks`` (20) clicks; if never reached it is ``max_clicks`` (RITM's convention), and
:func:`reached` / the ``reached_*`` columns of :func:`noc_table` say so, so that reports can state the
share of objects that never reach ``t``.

Speed: every function works on the crop given by the union bounding box of the masks involved
(found with ``cv2.boundingRect``), padded by one zero pixel; see :func:`_inner_band` for why this
gives exactly the full-image result.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import cv2
import numpy as np

from .masks import count_holes, crop_holes, hole_mask  # noqa: F401 (hole_mask: part of this API)

BBox = tuple[int, int, int, int]  # (r0, r1, c0, c1), half-open rows/cols

METRIC_KEYS = ("iou", "boundary_iou", "gt_holes", "pred_holes", "gt_hole_area", "pred_hole_area",
               "hole_fill_agreement", "pred_area")
SMALL_MAX_AREA = 32 ** 2   # area < 1024 -> small
MEDIUM_MAX_AREA = 96 ** 2  # area < 9216 -> medium
DEFAULT_DILATION_RATIO = 0.02
DEFAULT_MAX_CLICKS = 20


# ----------------------------------------------------------------------------- helpers
def _as_u8(mask: np.ndarray, name: str) -> np.ndarray:
    """``bool``/0-1 ``(H, W)`` -> ``uint8 (H, W)`` with values 0/1 (zero-copy for C-contiguous bool)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) mask, got shape {m.shape}")
    if m.dtype != bool:
        m = m != 0
    return np.ascontiguousarray(m).view(np.uint8)


def _check_same_shape(**masks: np.ndarray | None) -> tuple[int, int]:
    shapes = {k: np.shape(v) for k, v in masks.items() if v is not None}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"masks must share one (H, W) shape, got {shapes}")
    return next(iter(shapes.values()))  # type: ignore[return-value]


def _bbox(m: np.ndarray) -> BBox | None:
    """Half-open ``(r0, r1, c0, c1)`` of the non-zero pixels of ``uint8 (H, W)``; ``None`` if empty."""
    x, y, w, h = cv2.boundingRect(m)
    return None if w == 0 else (y, y + h, x, x + w)


def _union_bbox(*boxes: BBox | None) -> BBox | None:
    boxes_ = [b for b in boxes if b is not None]
    if not boxes_:
        return None
    return (min(b[0] for b in boxes_), max(b[1] for b in boxes_),
            min(b[2] for b in boxes_), max(b[3] for b in boxes_))


def _crop(m: np.ndarray | None, box: BBox) -> np.ndarray | None:
    return None if m is None else m[box[0]:box[1], box[2]:box[3]]


def _ratio(num: int, den: int) -> float:
    """``num / den`` with the module's empty rule: 0 / 0 -> 1.0."""
    return 1.0 if den == 0 else num / den


def _masked_iou(a: np.ndarray, b: np.ndarray, ignore: np.ndarray | None) -> float:
    """IoU of two same-shape ``uint8`` 0/1 arrays, not counting pixels where ``ignore`` (``uint8`` 0/1) is 1."""
    # cv2 bitwise ops take strided crops without copies and avoid numpy temporaries.
    inter, union = cv2.bitwise_and(a, b), cv2.bitwise_or(a, b)
    if ignore is not None:  # x & ~ignore == saturating x - ignore for 0/1 values
        inter, union = cv2.subtract(inter, ignore), cv2.subtract(union, ignore)
    return _ratio(cv2.countNonZero(inter), cv2.countNonZero(union))


def band_width(shape: Sequence[int], dilation_ratio: float = DEFAULT_DILATION_RATIO) -> int:
    """Boundary band width ``d = max(1, round(dilation_ratio * sqrt(H**2 + W**2)))`` in pixels."""
    h, w = int(shape[0]), int(shape[1])
    return max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))


def _inner_band(m: np.ndarray, d: int) -> np.ndarray:
    """Inner boundary band of a crop ``uint8 (h, w)`` that contains the mask's bounding box.

    Returns ``uint8 (h, w)`` 0/1. The crop is zero-padded by one pixel on every side, then eroded with a
    ``(2d+1)`` square whose out-of-array border never erodes (cv2's default border value).

    Why this equals the full-image definition: a mask pixel ``p`` is in the band iff its
    ``(2d+1)`` window holds a non-mask pixel (pixels outside the image count as non-mask). If the
    window stays inside the crop, crop and image agree. If it leaves the crop on some side, it
    contains the pixel just outside that side (the window is a square around ``p``), which is
    non-mask in the full image in every case: either it is outside the image (image-border side:
    border is contour) or it is an image pixel outside the mask's bounding box. The zero padding
    puts exactly that non-mask pixel there, so the verdict is the same; no extra margin is needed.
    """
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * d + 1, 2 * d + 1))
    eroded = cv2.erode(padded, kernel)[1:-1, 1:-1]
    return cv2.subtract(m, eroded)  # eroded ⊆ m, so m - eroded = m & ~eroded


def _holes(m: np.ndarray) -> tuple[np.ndarray | None, int, int]:
    """``(hole_pixels bool (h, w) or None, n_holes, hole_area)`` of a crop ``uint8 (h, w)`` that
    contains the mask's bounding box (exact on such a crop: :func:`samstudy.masks.crop_holes`)."""
    holes, area = crop_holes(m)
    return holes, (count_holes(holes) if area else 0), area


# ----------------------------------------------------------------------------- IoU
def iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """IoU of ``pred`` and ``gt``, ``bool (H, W)``, excluding ``ignore`` pixels (``bool (H, W)`` or ``None``).

    ``|P ∩ G \\ X| / |(P ∪ G) \\ X|``; 1.0 when the union is empty (module docstring).
    """
    _check_same_shape(pred=pred, gt=gt, ignore=ignore)
    p, g = _as_u8(pred, "pred"), _as_u8(gt, "gt")
    box = _union_bbox(_bbox(p), _bbox(g))
    if box is None:
        return 1.0
    x = None if ignore is None else _crop(_as_u8(ignore, "ignore"), box)
    return _masked_iou(_crop(p, box), _crop(g, box), x)


# ----------------------------------------------------------------------------- boundary IoU
def boundary_band(mask: np.ndarray, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> np.ndarray:
    """Inner boundary band ``B_d(mask)``, ``bool (H, W)``: mask pixels within chessboard distance
    ``d = band_width(mask.shape, dilation_ratio)`` of a non-mask pixel, the image border counting as
    contour (module docstring). Useful for figures; :func:`boundary_iou` does not build it full size.
    """
    m = _as_u8(mask, "mask")
    out = np.zeros(m.shape, bool)
    box = _bbox(m)
    if box is not None:
        band = _inner_band(_crop(m, box), band_width(m.shape, dilation_ratio))
        out[box[0]:box[1], box[2]:box[3]] = band.view(bool)
    return out


def boundary_iou(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = DEFAULT_DILATION_RATIO,
                 ignore: np.ndarray | None = None) -> float:
    """Boundary IoU (Cheng et al., 2021) of ``pred`` and ``gt``, ``bool (H, W)``.

    ``IoU(B_d(P), B_d(G))`` over pixels not in ``ignore``; ``B_d`` = inner band of width
    ``d = max(1, round(dilation_ratio * image diagonal))`` with the image border as contour
    (module docstring). 1.0 when both bands are empty.
    """
    _check_same_shape(pred=pred, gt=gt, ignore=ignore)
    p, g = _as_u8(pred, "pred"), _as_u8(gt, "gt")
    box = _union_bbox(_bbox(p), _bbox(g))
    if box is None:
        return 1.0
    d = band_width(p.shape, dilation_ratio)
    x = None if ignore is None else _crop(_as_u8(ignore, "ignore"), box)
    return _masked_iou(_inner_band(_crop(p, box), d), _inner_band(_crop(g, box), d), x)


# ----------------------------------------------------------------------------- holes
# ``hole_mask`` (imported from samstudy.masks, the one implementation) is part of this module's API.


def hole_stats(mask: np.ndarray) -> tuple[int, int]:
    """``(n_holes, hole_area)`` of ``mask``, ``bool (H, W)`` (definition in the module docstring)."""
    m = _as_u8(mask, "mask")
    box = _bbox(m)
    if box is None:
        return 0, 0
    _, n, area = _holes(_crop(m, box))
    return n, area


def _hole_pair_in_crop(p: np.ndarray, g: np.ndarray) -> dict[str, float | int]:
    """Hole columns of a (pred, gt) pair of ``uint8 (h, w)`` crops containing both masks' boxes."""
    p_holes, p_n, p_area = _holes(p)
    g_holes, g_n, g_area = _holes(g)
    if p_holes is None or g_holes is None:  # at most one side has holes: IoU is 0, or 1 if neither
        agreement = 1.0 if p_holes is g_holes else 0.0
    else:
        agreement = _masked_iou(p_holes.view(np.uint8), g_holes.view(np.uint8), None)
    return {"gt_holes": g_n, "pred_holes": p_n, "gt_hole_area": g_area, "pred_hole_area": p_area,
            "hole_fill_agreement": agreement}


def hole_stats_pair(pred: np.ndarray, gt: np.ndarray) -> dict[str, float | int]:
    """Hole statistics of a (pred, gt) pair of ``bool (H, W)`` masks.

    Returns ``{"gt_holes", "pred_holes", "gt_hole_area", "pred_hole_area", "hole_fill_agreement"}``
    where ``hole_fill_agreement`` = IoU(GT hole pixels, predicted hole pixels), 1.0 when neither
    mask has a hole (module docstring).
    """
    _check_same_shape(pred=pred, gt=gt)
    p, g = _as_u8(pred, "pred"), _as_u8(gt, "gt")
    box = _union_bbox(_bbox(p), _bbox(g))
    if box is None:
        return {"gt_holes": 0, "pred_holes": 0, "gt_hole_area": 0, "pred_hole_area": 0,
                "hole_fill_agreement": 1.0}
    # Hole detection is exact on any crop containing each mask's bounding box (see _holes).
    return _hole_pair_in_crop(_crop(p, box), _crop(g, box))


# ----------------------------------------------------------------------------- size buckets
def size_bucket(area: float) -> str:
    """COCO size bucket of an object of ``area`` pixels: ``"small"`` if ``area < 1024`` (32²),
    ``"medium"`` if ``area < 9216`` (96²), else ``"large"``."""
    if area < SMALL_MAX_AREA:
        return "small"
    if area < MEDIUM_MAX_AREA:
        return "medium"
    return "large"


def size_buckets(areas: Iterable[float] | np.ndarray) -> np.ndarray:
    """Vectorised :func:`size_bucket`: ``(N,)`` areas -> ``(N,)`` object array of bucket names."""
    a = np.asarray(areas, dtype=np.float64)
    return np.where(a < SMALL_MAX_AREA, "small",
                    np.where(a < MEDIUM_MAX_AREA, "medium", "large")).astype(object)


# ----------------------------------------------------------------------------- NoC
def _first_hit(iou_per_click: Sequence[float] | np.ndarray, threshold: float, max_clicks: int) -> int | None:
    v = np.asarray(iou_per_click, dtype=np.float64).ravel()[:max_clicks]
    hits = np.flatnonzero(v >= threshold)  # NaN (skipped click) never counts as a hit
    return int(hits[0]) + 1 if hits.size else None


def noc(iou_per_click: Sequence[float] | np.ndarray, threshold: float,
        max_clicks: int = DEFAULT_MAX_CLICKS) -> int:
    """Number of clicks to reach ``IoU >= threshold``; ``max_clicks`` if never reached (RITM).

    ``iou_per_click``: ``(K,)`` floats, entry ``k`` = IoU after click ``k + 1``; only the first
    ``max_clicks`` entries are used. Pair with :func:`reached` to tell "reached at the last click"
    from "never reached".
    """
    k = _first_hit(iou_per_click, threshold, max_clicks)
    return max_clicks if k is None else k


def reached(iou_per_click: Sequence[float] | np.ndarray, threshold: float,
            max_clicks: int = DEFAULT_MAX_CLICKS) -> bool:
    """Whether ``IoU >= threshold`` is reached within the first ``max_clicks`` clicks."""
    return _first_hit(iou_per_click, threshold, max_clicks) is not None


NOC_OBJECT_KEYS = ("dataset", "split", "policy", "gt_variant", "model", "prompt_mode", "multimask",
                   "image_id", "ann_id")


def _threshold_tag(t: float) -> str:
    pct = round(t * 100, 6)
    return str(int(pct)) if pct == int(pct) else str(pct).replace(".", "_")


def noc_table(df, thresholds: Sequence[float] = (0.85, 0.9), max_clicks: int = DEFAULT_MAX_CLICKS,
              by: Sequence[str] | None = None):
    """NoC per click sequence from result rows (``docs/ARCHITECTURE.md`` schema).

    ``df``: a ``pandas.DataFrame`` with columns ``click`` (1..20 for click sequences, 0 for one-shot
    prompts, which are ignored), ``iou`` and the grouping columns ``by`` (default: those of
    ``NOC_OBJECT_KEYS`` present in ``df``; ``prompt_params`` is not a key because it changes from
    click to click). Returns one row per sequence with the ``by`` columns, ``n_clicks`` (number of
    click rows), ``final_iou`` (IoU at the last click with a non-missing IoU) and, per threshold
    ``t`` (tag ``85`` for 0.85), ``noc_<tag>`` (int, :func:`noc`) and ``reached_<tag>`` (bool,
    :func:`reached`). Raises ``ValueError`` when a group holds the same click twice (grouping
    keys missing).
    """

    keys = [k for k in NOC_OBJECT_KEYS if k in df.columns] if by is None else list(by)
    if not keys:
        raise ValueError("noc_table needs grouping columns (by=...) identifying one click sequence")
    d = df.loc[(df["click"] >= 1) & (df["click"] <= max_clicks), keys + ["click", "iou"]]
    if d.duplicated(keys + ["click"]).any():
        raise ValueError(f"several rows share the same click within groups {keys}; pass by= with the "
                         "columns that identify one click sequence")
    d = d.sort_values(keys + ["click"], kind="stable")
    hit_cols = {f"_hit{i}": d["click"].where(d["iou"] >= t) for i, t in enumerate(thresholds)}
    g = d.assign(**hit_cols).groupby(keys, sort=True, dropna=False)
    out = g.agg(n_clicks=("click", "size"), final_iou=("iou", "last"),
                **{c: (c, "min") for c in hit_cols})
    for i, t in enumerate(thresholds):
        tag, first = _threshold_tag(t), out.pop(f"_hit{i}")
        out[f"noc_{tag}"] = first.fillna(max_clicks).astype(int)
        out[f"reached_{tag}"] = first.notna()
    return out.reset_index()


# ----------------------------------------------------------------------------- all per-object metrics
def object_metrics(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None,
                   dilation_ratio: float = DEFAULT_DILATION_RATIO) -> dict[str, float | int]:
    """All per-object metric columns of a result row for one prediction.

    ``pred``, ``gt``: ``bool (H, W)``; ``ignore``: ``bool (H, W)`` or ``None``.
    Returns exactly the keys of ``METRIC_KEYS``: ``iou`` (:func:`iou`), ``boundary_iou``
    (:func:`boundary_iou`), ``gt_holes``, ``pred_holes``, ``gt_hole_area``, ``pred_hole_area``,
    ``hole_fill_agreement`` (:func:`hole_stats_pair`) and ``pred_area`` (pixel count of ``pred``,
    ignore not applied). Everything is computed once on the union-bbox crop.
    """
    _check_same_shape(pred=pred, gt=gt, ignore=ignore)
    p, g = _as_u8(pred, "pred"), _as_u8(gt, "gt")
    pb = _bbox(p)
    box = _union_bbox(pb, _bbox(g))
    if box is None:
        return {"iou": 1.0, "boundary_iou": 1.0, "gt_holes": 0, "pred_holes": 0, "gt_hole_area": 0,
                "pred_hole_area": 0, "hole_fill_agreement": 1.0, "pred_area": 0}
    pc, gc = _crop(p, box), _crop(g, box)
    x = None if ignore is None else _crop(_as_u8(ignore, "ignore"), box)
    d = band_width(p.shape, dilation_ratio)
    out: dict[str, float | int] = {
        "iou": _masked_iou(pc, gc, x),
        "boundary_iou": _masked_iou(_inner_band(pc, d), _inner_band(gc, d), x),
    }
    out.update(_hole_pair_in_crop(pc, gc))
    out["pred_area"] = cv2.countNonZero(pc) if pb is not None else 0
    return {k: out[k] for k in METRIC_KEYS}
