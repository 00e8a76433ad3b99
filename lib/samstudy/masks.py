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
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]


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


def rle_box_xyxy(rle: RLE) -> np.ndarray:
    """Tight box of an RLE mask (see :func:`mask_box_xyxy`), computed by pycocotools without decoding."""
    x, y, w, h = mask_utils.toBbox(_as_pycoco(rle)).tolist()
    if w <= 0 or h <= 0:
        raise ValueError("empty mask has no bounding box")
    return np.array([x, y, x + w, y + h], dtype=np.float64)
