"""RITM click simulator (Sofiiuk et al., 2022), our own implementation.

Definition (identical to ``docs/STUDY.md``): given the ground truth ``gt`` and the current
prediction ``pred`` (both ``bool (H, W)``),

- false negatives ``fn = gt & ~pred`` and false positives ``fp = pred & ~gt``; pixels where
  ``ignore`` is True are removed from both (they never receive clicks);
- each error mask is zero-padded by 1 pixel (``padding=True``, so the image border counts as the
  error region's boundary) and its Euclidean distance transform
  (``scipy.ndimage.distance_transform_edt``: distance to the nearest non-error pixel) is taken;
- pixels already clicked are given distance 0 (RITM's ``not_clicked_map``), so a click is never
  repeated on the same pixel;
- the click is **positive** if the largest false-negative distance is strictly greater than the
  largest false-positive distance; on a tie it is **negative** (RITM's ``fn_max > fp_max``);
- it goes to the pixel of maximal distance in the chosen error mask; among equal maxima, the first
  pixel in row-major order (smallest row, then smallest column);
- if there is no clickable error (prediction perfect outside ignored/clicked pixels), there is no
  click: :func:`next_click` returns ``None`` and the engine stops the click session.

Clicks are pixel coordinates ``(x, y) = (col, row)``. NoC is computed in :mod:`samstudy.metrics`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from scipy import ndimage

__all__ = ["Click", "next_click", "ClickSimulator"]


@dataclass(frozen=True)
class Click:
    """A simulated click at pixel ``(x, y) = (col, row)``; ``is_positive`` True = object, False = background."""

    x: int
    y: int
    is_positive: bool

    @property
    def label(self) -> int:
        """1 for a positive click, 0 for a negative one (SAM's point label convention)."""
        return int(self.is_positive)


def _check(name: str, a: np.ndarray | None, shape: tuple[int, ...] | None) -> np.ndarray | None:
    if a is None:
        return None
    a = np.asarray(a)
    if a.ndim != 2 or (shape is not None and a.shape != shape):
        raise ValueError(f"{name} must be a 2-D mask of shape {shape or '(H, W)'}, got {a.shape}")
    return a.astype(bool, copy=False)


def _max_distance(err: np.ndarray, padding: bool, blocked: list[tuple[int, int]]
                  ) -> tuple[float, int, int]:
    """Largest distance-to-boundary inside ``err`` (``bool (H, W)``) and its first row-major pixel.

    Returns ``(distance, row, col)``; distance 0 when ``err`` has no clickable pixel.
    Only the error's bounding box plus a 1-pixel ring is transformed: every pixel outside that box
    is non-error, so the ring already holds each pixel's nearest possible boundary, and row-major
    order inside the crop is the image's row-major order.
    """
    rows = np.flatnonzero(err.any(axis=1))
    if rows.size == 0:
        return 0.0, -1, -1
    cols = np.flatnonzero(err.any(axis=0))
    h, w = err.shape
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if padding:  # 1 px of zeros on every side, including beyond the image border
        crop = np.pad(err[r0:r1, c0:c1], 1)
        off_r, off_c = r0 - 1, c0 - 1
    else:  # zeros from the image only; the image border is not a boundary
        pr0, pr1, pc0, pc1 = max(r0 - 1, 0), min(r1 + 1, h), max(c0 - 1, 0), min(c1 + 1, w)
        crop = err[pr0:pr1, pc0:pc1]
        off_r, off_c = pr0, pc0
        if crop.all():  # no boundary at all (whole image is error): use the centre-most pixel
            return _no_boundary_fallback(crop.shape, off_r, off_c, blocked)
    dist = ndimage.distance_transform_edt(crop)
    for (r, c) in blocked:
        if 0 <= r - off_r < dist.shape[0] and 0 <= c - off_c < dist.shape[1]:
            dist[r - off_r, c - off_c] = 0.0
    flat = int(np.argmax(dist))  # first maximum in row-major order
    r, c = np.unravel_index(flat, dist.shape)
    return float(dist[r, c]), int(r + off_r), int(c + off_c)


def _no_boundary_fallback(shape: tuple[int, int], off_r: int, off_c: int,
                          blocked: list[tuple[int, int]]) -> tuple[float, int, int]:
    # Distance to the image border + 1 stands in for the undefined transform (padding=False only).
    rr, cc = np.indices(shape)
    dist = np.minimum(np.minimum(rr, shape[0] - 1 - rr), np.minimum(cc, shape[1] - 1 - cc)) + 1.0
    for (r, c) in blocked:
        if 0 <= r - off_r < shape[0] and 0 <= c - off_c < shape[1]:
            dist[r - off_r, c - off_c] = 0.0
    r, c = np.unravel_index(int(np.argmax(dist)), shape)
    return float(dist[r, c]), int(r + off_r), int(c + off_c)


def next_click(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None,
               padding: bool = True, clicked: Iterable[Click] = ()) -> Click | None:
    """Next RITM click for prediction ``pred`` against ground truth ``gt`` (both ``bool (H, W)``).

    ``ignore`` (``bool (H, W)``, True = ignored) removes pixels from both error masks; ``padding``
    zero-pads the error masks by 1 pixel so the image border is a boundary (RITM's default);
    ``clicked`` are earlier clicks, whose pixels are not chosen again. See the module docstring
    for the full rule (positive iff max fn distance > max fp distance; ties negative; first
    row-major pixel among maxima). Returns ``None`` when there is no clickable error pixel.
    """
    gt = _check("gt", gt, None)
    pred = _check("pred", pred, gt.shape)
    ignore = _check("ignore", ignore, gt.shape)
    fn = gt & ~pred
    fp = pred & ~gt
    if ignore is not None:
        fn &= ~ignore
        fp &= ~ignore
    blocked = [(c.y, c.x) for c in clicked]
    fn_d, fn_r, fn_c = _max_distance(fn, padding, blocked)
    fp_d, fp_r, fp_c = _max_distance(fp, padding, blocked)
    if fn_d == 0.0 and fp_d == 0.0:
        return None
    if fn_d > fp_d:
        return Click(x=fn_c, y=fn_r, is_positive=True)
    return Click(x=fp_c, y=fp_r, is_positive=False)


class ClickSimulator:
    """Click history of one object's interactive session.

    ``sim = ClickSimulator(gt, ignore)``; then per round ``click = sim.next(pred)`` (``pred`` is
    ``bool (H, W)``; use an all-False mask before the first model call) appends and returns the
    next click, or returns ``None`` when the prediction has no clickable error. ``sim.points``
    (``float64 (K, 2)`` of ``(x, y)``) and ``sim.labels`` (``int64 (K,)``, 1/0) are what the model
    takes. The caller enforces the click budget (e.g. 20).
    """

    def __init__(self, gt: np.ndarray, ignore: np.ndarray | None = None, padding: bool = True):
        self.gt = _check("gt", gt, None)
        self.ignore = _check("ignore", ignore, self.gt.shape)
        self.padding = padding
        self.clicks: list[Click] = []

    def next(self, pred: np.ndarray) -> Click | None:
        """Compute, record and return the next click for ``pred``; ``None`` if there is no error."""
        click = next_click(self.gt, pred, self.ignore, self.padding, clicked=self.clicks)
        if click is not None:
            self.clicks.append(click)
        return click

    def add(self, click: Click) -> None:
        """Record an externally chosen click (e.g. a replayed session)."""
        self.clicks.append(click)

    def reset(self) -> None:
        self.clicks.clear()

    def __len__(self) -> int:
        return len(self.clicks)

    @property
    def points(self) -> np.ndarray:
        """``float64 (K, 2)`` click coordinates ``(x, y)`` in click order."""
        return np.array([(c.x, c.y) for c in self.clicks], dtype=np.float64).reshape(-1, 2)

    @property
    def labels(self) -> np.ndarray:
        """``int64 (K,)`` click labels, 1 positive / 0 negative, in click order."""
        return np.array([c.label for c in self.clicks], dtype=np.int64)
