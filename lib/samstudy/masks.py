"""Binary masks and their COCO run-length encoding (RLE).

Conventions used everywhere in ``samstudy``:

- A mask in memory is a ``numpy.ndarray`` of dtype ``bool`` and shape ``(H, W)``, indexed
  ``mask[row, col]`` (``row`` = y, ``col`` = x).
- A stored mask is a COCO *compressed* RLE dict ``{"size": [H, W], "counts": str}`` as produced by
  ``pycocotools.mask.encode`` (column-major run lengths), with ``counts`` decoded to ``str`` so that
  it is JSON/Parquet friendly.
- A box is ``numpy.ndarray`` of shape ``(4,)``, dtype ``float64``, order ``x0, y0, x1, y1`` (xyxy,
  SAM's order) in continuous pixel-edge coordinates: a mask whose columns span ``c0..c1``
  (inclusive) has ``x0 = c0`` and ``x1 = c1 + 1``. This equals COCO's ``bbox`` ``[x, y, w, h]``
  from :func:`pycocotools.mask.toBbox` converted to ``[x, y, x + w, y + h]``, so widths equal pixel
  counts.
- A point is ``(x, y)`` = ``(col, row)`` of a pixel, as floats.
- **Holes** of a mask (the study's one definition, used by metrics, policies and the synthetic
  set): see :func:`hole_mask`.
"""
from __future__ import annotations

from typing import Any, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]
HOLE_CONNECTIVITY = 4  # background connectivity of holes (see hole_mask); recorded in policy logs


def encode_rle(mask: np.ndarray) -> RLE:
    """Encode a ``bool``/``uint8`` mask of shape ``(H, W)`` into a compressed COCO RLE with str counts."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_rle expects a 2-D mask (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def _as_pycoco(rle: RLE) -> RLE:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE (COCO crowd annotations)
        return mask_utils.frPyObjects(rle, *rle["size"])
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": list(rle["size"]), "counts": counts}


def decode_rle(rle: RLE) -> np.ndarray:
    """Decode a COCO RLE (compressed str/bytes counts or uncompressed list counts) to ``bool (H, W)``."""
    return mask_utils.decode(_as_pycoco(rle)).astype(bool)


def rle_area(rle: RLE) -> int:
    """Number of foreground pixels of an RLE mask."""
    return int(mask_utils.area(_as_pycoco(rle)))


def compress_rle(rle: RLE) -> RLE:
    """Return the compressed str-counts form of any COCO RLE."""
    r = _as_pycoco(rle)
    counts = r["counts"]
    return {"size": [int(r["size"][0]), int(r["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def polygons_to_rle(polygons: Sequence[Sequence[float]], height: int, width: int) -> RLE:
    """Rasterise COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` (pixel coordinates) into one RLE.

    Raises ``ValueError`` when a polygon has fewer than 3 points or an odd number of coordinates.
    """
    polys = [list(map(float, p)) for p in polygons]
    for i, p in enumerate(polys):
        if len(p) % 2 or len(p) < 6:
            raise ValueError(f"polygon {i} has {len(p)} coordinates; need an even number >= 6 (3 points)")
    rles = mask_utils.frPyObjects(polys, height, width)
    return compress_rle(mask_utils.merge(rles))


def mask_box_xyxy(mask: np.ndarray) -> np.ndarray:
    """Tight box of a non-empty mask: ``float64 (4,)`` xyxy with exclusive right/bottom edges.

    ``x0 = min col``, ``y0 = min row``, ``x1 = max col + 1``, ``y1 = max row + 1``.
    Raises ``ValueError`` on an empty mask (an empty object has no box).
    """
    mask = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("empty mask has no bounding box")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def tight_crop(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]] | None:
    """``bool (H, W)`` -> ``(mask[y0:y1, x0:x1] contiguous, (x0, y0))`` cut to the mask's tight box;
    ``None`` for an empty mask."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return np.ascontiguousarray(mask[y0:y1, x0:x1]), (int(x0), int(y0))


def rle_box_xyxy(rle: RLE) -> np.ndarray:
    """Tight box of an RLE mask (see :func:`mask_box_xyxy`), computed by pycocotools without decoding."""
    x, y, w, h = mask_utils.toBbox(_as_pycoco(rle)).tolist()
    if w <= 0 or h <= 0:
        raise ValueError("empty mask has no bounding box")
    return np.array([x, y, x + w, y + h], dtype=np.float64)


# ---------------------------------------------------------------------------------------- holes
def _as_u8(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` mask -> ``uint8 (H, W)`` whose non-zero pixels are the mask (cv2's reading).

    ``bool`` is viewed and ``uint8`` passed as is, without a copy or forced contiguity: cv2 reads
    strided views (crops) directly, and a copy would cost as much as the hole search itself.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask (H, W), got shape {m.shape}")
    if m.dtype == np.uint8:
        return m
    return m.view(np.uint8) if m.dtype == bool else (m != 0).view(np.uint8)


def hole_mask(mask: np.ndarray) -> np.ndarray:
    """Hole pixels of ``mask``: ``bool (H, W)`` (or ``uint8``, non-zero = mask) -> ``bool (H, W)``.

    Definition (``docs/STUDY.md``: background components fully enclosed by the object mask),
    exactly: a **hole** is a connected component of the background ``~mask`` under
    **4-connectivity** (two background pixels are connected when they share an edge; diagonal
    neighbours are *not* connected) that contains no pixel of the image border (first or last row
    or column). Background connected to the image border is never a hole, however narrow the
    opening. The object is thereby implicitly 8-connected: a ring broken only by a diagonal step
    keeps its hole closed; a ring broken by an edge-sharing gap of background loses it.
    The result equals ``scipy.ndimage.binary_fill_holes(mask) & ~mask`` (scipy's default cross
    structure), computed faster. Count holes with :func:`count_holes`.
    """
    m = _as_u8(mask)
    out = np.zeros(m.shape, bool)
    x, y, w, h = cv2.boundingRect(m)
    if w:  # an empty mask has no hole
        holes, _ = crop_holes(m[y:y + h, x:x + w])
        if holes is not None:
            out[y:y + h, x:x + w] = holes
    return out


def crop_holes(crop: np.ndarray) -> tuple[np.ndarray | None, int]:
    """Holes (as in :func:`hole_mask`) of a mask seen through ``crop``, any ``(h, w)`` window
    (``bool``, or ``uint8`` with non-zero = mask) of the image that contains the mask's whole
    bounding box.

    Returns ``(holes, hole_area)``: ``holes`` is ``bool (h, w)``, the hole pixels within the window,
    or ``None`` when ``hole_area == 0`` (the common case, which then costs no extra pass).

    How: the window is zero-padded by one pixel and the background 4-connected to that ring is
    flood-filled; what stays background is exactly the image's holes. The ring may stand for
    "outside" because every image pixel outside the mask's bounding box reaches the image border
    along a straight run of background (the rows above/below and the columns left/right of the box
    hold no mask pixel), and a path from inside the window to the border steps onto the ring
    when it leaves the window. A window side on the image border is the border itself.
    """
    filled = cv2.copyMakeBorder(_as_u8(crop), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(filled, None, (0, 0), 1, flags=HOLE_CONNECTIVITY)  # ~10x cheaper than labelling
    area = filled.size - cv2.countNonZero(filled)
    return (filled[1:-1, 1:-1] == 0 if area else None), int(area)


def count_holes(holes: np.ndarray) -> int:
    """Number of holes given the hole pixels ``holes`` (``bool (H, W)``, from :func:`hole_mask` or
    :func:`crop_holes`).

    Counts the 4-connected components of ``holes``: two different holes never share an edge (they
    would be one background component), so each component is exactly one hole; two hole pixels
    that touch only diagonally are two holes.
    """
    h = _as_u8(holes)
    x, y, w, hh = cv2.boundingRect(h)
    if w == 0:
        return 0
    n_labels = cv2.connectedComponents(h[y:y + hh, x:x + w], connectivity=HOLE_CONNECTIVITY)[0]
    return int(n_labels) - 1  # label 0 is everything that is not a hole
