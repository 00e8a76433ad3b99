"""Bootstrap confidence intervals for per-object metric means and paired differences.

Method: **percentile bootstrap**. From ``n`` per-object values, draw ``n_boot`` resamples of size
``n`` with replacement, take each resample's mean, and report the ``alpha/2`` and ``1 - alpha/2``
quantiles of those means (``numpy.quantile``, linear interpolation) around the plain sample mean.

Paired differences (:func:`bootstrap_paired_diff_ci`): two metrics of the *same* objects (e.g. the
IoU of two models) are resampled jointly — each resample picks objects, and both values of a picked
object move together — which is the bootstrap of the per-object differences ``a - b``. Because
object difficulty is shared by the two columns, the interval is much narrower than one built from
two independent intervals.

Cluster bootstrap (``groups=``): objects of one image are correlated (same lighting, clutter,
annotator), so an i.i.d. object bootstrap understates the uncertainty. With ``groups`` (one label
per value, e.g. ``image_id``) whole groups are resampled with replacement (as many groups as there
are), and each resample's statistic is the object-level mean over the picked groups
(sum of their values / number of their objects). The point estimate stays the plain object mean.
With a single group every resample is that group, so the interval collapses onto the mean: it is
zero-width, not certain. :func:`resampling_units` counts what a bootstrap draws; callers flag an
interval built from fewer than 2 units instead of reporting it.

Randomness: every function takes an explicit ``numpy.random.Generator``; nothing uses global
state, so a seeded generator gives identical intervals. Resamples are drawn as ``(chunk, k)``
index matrices (``k`` objects or groups) and reduced with ``np.take``; chunks bound the memory to
about ``chunk_elems`` indices at a time.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_CHUNK_ELEMS = 1 << 22  # ~4M indices (32 MB of int64) per chunk


def _as_values(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds NaN/inf: drop skipped rows before bootstrapping")
    return v


def _group_codes(groups, n: int) -> np.ndarray:
    """``(n,)`` int codes 0..G-1 for any 1-D array-like of hashable group labels."""
    import pandas as pd  # factorize handles ints, strings and mixed labels alike

    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"groups must be 1-D with one label per value ({n}), got shape {g.shape}")
    codes, _ = pd.factorize(g, sort=True)
    if (codes < 0).any():
        raise ValueError("groups holds missing labels (NaN/None)")
    return codes


def resampling_units(n_values: int, groups=None) -> int:
    """How many units the bootstrap draws from: ``n_values`` values (i.i.d.), or the number of
    distinct ``groups`` labels (cluster bootstrap). Below 2 the interval is degenerate (zero width)."""
    if groups is None:
        return int(n_values)
    return int(_group_codes(groups, n_values).max()) + 1 if n_values else 0


def _boot_means(values: np.ndarray, rng: np.random.Generator, n_boot: int,
                groups=None, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> np.ndarray:
    """``(n_boot,)`` bootstrap means of ``values`` ``(n,)``, i.i.d. or cluster (by ``groups``)."""
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if groups is None:
        sums, counts = values, None
    else:
        codes = _group_codes(groups, values.size)
        sums = np.bincount(codes, weights=values)
        counts = np.bincount(codes).astype(np.float64)
    k = sums.size
    out = np.empty(n_boot, dtype=np.float64)
    rows = max(1, chunk_elems // k)
    for start in range(0, n_boot, rows):
        stop = min(n_boot, start + rows)
        idx = rng.integers(0, k, size=(stop - start, k))
        total = np.take(sums, idx).sum(axis=1)
        out[start:stop] = total / (k if counts is None else np.take(counts, idx).sum(axis=1))
    return out


def _percentile_ci(stat: float, boots: np.ndarray, alpha: float) -> tuple[float, float, float]:
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(stat), float(lo), float(hi)


def bootstrap_mean_ci(values: Sequence[float] | np.ndarray, rng: np.random.Generator,
                      n_boot: int = 2000, alpha: float = 0.05, groups=None,
                      chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> tuple[float, float, float]:
    """Percentile-bootstrap CI of the mean: ``(mean, lo, hi)``.

    ``values``: ``(n,)`` finite floats (one per object). ``rng``: ``numpy.random.Generator``.
    ``groups``: optional ``(n,)`` labels (e.g. ``image_id``) for the cluster bootstrap (module
    docstring). ``(1 - alpha)`` interval; ``mean`` is the plain sample mean.
    """
    v = _as_values(values, "values")
    return _percentile_ci(v.mean(), _boot_means(v, rng, n_boot, groups, chunk_elems), alpha)


def bootstrap_paired_diff_ci(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                             rng: np.random.Generator, n_boot: int = 2000, alpha: float = 0.05,
                             groups=None, chunk_elems: int = DEFAULT_CHUNK_ELEMS
                             ) -> tuple[float, float, float]:
    """Paired percentile-bootstrap CI of ``mean(a - b)``: ``(mean_diff, lo, hi)``.

    ``a``, ``b``: ``(n,)`` finite floats, entry ``i`` of both measured on the same object ``i``;
    objects (or, with ``groups``, whole groups) are resampled jointly (module docstring).
    """
    va, vb = _as_values(a, "a"), _as_values(b, "b")
    if va.shape != vb.shape:
        raise ValueError(f"a and b must be paired (same length), got {va.shape} and {vb.shape}")
    return bootstrap_mean_ci(va - vb, rng, n_boot=n_boot, alpha=alpha, groups=groups,
                             chunk_elems=chunk_elems)
