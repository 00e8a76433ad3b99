"""Learning curves of the custom model: test mIoU against the number of training objects.

:func:`subsample_train` draws a seeded share of the train split's *images* (a subset of a
smaller draw is not required: each (fraction, seed) is its own draw); :func:`fit_power_law` fits

    error(n) = 1 - mIoU(n) = a * n ** (-b)

by least squares in log-log space (``log error = log a - b log n``) and projects the mIoU at a
target ``n`` (e.g. the published training-set size) with a bootstrap interval over the measured
runs (rows resampled with replacement, seeded). An asymptote-free power law is the simplest curve
with diminishing returns; extrapolating it far beyond the measured range is optimistic when the
error has a floor, so the projection is stated with that caveat and the measured range.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data import Dataset

__all__ = ["PowerLawFit", "fit_power_law", "subsample_train"]


@dataclass(frozen=True)
class PowerLawFit:
    """``error = a * n ** -b``; ``projection`` = mIoU at ``target_n`` with its ``ci`` (2.5%, 97.5%)
    over ``n_boot`` bootstrap refits; ``n_range`` = the measured ``(min n, max n)``."""

    a: float
    b: float
    target_n: float
    projection: float
    ci: tuple[float, float]
    n_range: tuple[float, float]
    n_boot: int

    def predict(self, n: float | np.ndarray) -> np.ndarray:
        """mIoU the fit gives at ``n`` training objects."""
        return 1.0 - self.a * np.asarray(n, dtype=np.float64) ** (-self.b)


def _loglog(n: np.ndarray, miou: np.ndarray) -> tuple[float, float]:
    x, y = np.log(n), np.log(1.0 - miou)
    slope, intercept = np.polyfit(x, y, 1)
    return float(np.exp(intercept)), float(-slope)


def fit_power_law(n_objects: Sequence[float], miou: Sequence[float], target_n: float,
                  n_boot: int = 2000, seed: int = 0) -> PowerLawFit:
    """Fit ``1 - miou = a n^-b`` to runs ``(n_objects[i], miou[i])`` (one row per training run, e.g.
    per fraction x seed) and project the mIoU at ``target_n``.

    Needs at least 2 distinct ``n`` and every mIoU in ``(0, 1)``; raises ``ValueError`` otherwise.
    Bootstrap resamples that draw a single distinct ``n`` are redrawn.
    """
    n = np.asarray(n_objects, dtype=np.float64)
    m = np.asarray(miou, dtype=np.float64)
    if n.shape != m.shape or n.ndim != 1:
        raise ValueError(f"n_objects and miou must be 1-d of one length, got {n.shape} and {m.shape}")
    if len(np.unique(n)) < 2 or (n <= 0).any():
        raise ValueError(f"a power law needs >= 2 distinct positive training-set sizes, got {sorted(set(n.tolist()))}")
    if not ((m > 0) & (m < 1)).all():
        raise ValueError(f"mIoU values must lie in (0, 1), got {m.tolist()}")
    a, b = _loglog(n, m)
    rng = np.random.default_rng(seed)
    proj = []
    while len(proj) < n_boot:
        idx = rng.integers(0, len(n), len(n))
        if len(np.unique(n[idx])) < 2:
            continue
        ab, bb = _loglog(n[idx], m[idx])
        proj.append(1.0 - ab * target_n ** (-bb))
    lo, hi = np.percentile(proj, [2.5, 97.5])
    return PowerLawFit(a=a, b=b, target_n=float(target_n), projection=float(1.0 - a * target_n ** (-b)),
                       ci=(float(lo), float(hi)), n_range=(float(n.min()), float(n.max())), n_boot=int(n_boot))


def subsample_train(train: Dataset, fraction: float, seed: int) -> Dataset:
    """A seeded ``fraction`` of ``train``'s images (at least 2) with all their objects, named
    ``<name>-f<fraction>-s<seed>``. Sampling images, not objects, keeps each image's objects
    together, as the train/validation split does."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ids = sorted(train.images)
    k = max(2, int(round(fraction * len(ids))))
    pick = np.random.default_rng([seed, 16]).permutation(len(ids))[:k]
    return train.subset([ids[i] for i in sorted(pick)], name=f"{train.name}-f{fraction:g}-s{seed}")
