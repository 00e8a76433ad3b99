"""Tests of samstudy.stats: determinism, coverage, pairing and the cluster bootstrap."""
from __future__ import annotations

import numpy as np
import pytest

from samstudy.stats import bootstrap_mean_ci, bootstrap_paired_diff_ci


def test_seeded_and_deterministic():
    v = np.random.default_rng(0).normal(size=50)
    r1 = bootstrap_mean_ci(v, np.random.default_rng(5))
    r2 = bootstrap_mean_ci(v, np.random.default_rng(5))
    assert r1 == r2
    mean, lo, hi = r1
    assert mean == pytest.approx(v.mean()) and lo < mean < hi


def test_chunking_does_not_change_the_result():
    v = np.random.default_rng(1).random(37)
    full = bootstrap_mean_ci(v, np.random.default_rng(2), n_boot=500)
    chunked = bootstrap_mean_ci(v, np.random.default_rng(2), n_boot=500, chunk_elems=37 * 7)
    assert full == pytest.approx(chunked)


def test_single_value_and_constant_values():
    assert bootstrap_mean_ci([0.7], np.random.default_rng(0)) == pytest.approx((0.7, 0.7, 0.7))
    assert bootstrap_mean_ci([0.5] * 10, np.random.default_rng(0)) == pytest.approx((0.5, 0.5, 0.5))


def test_input_validation():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([], rng)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([0.1, np.nan], rng)
    with pytest.raises(ValueError):
        bootstrap_paired_diff_ci([0.1, 0.2], [0.3], rng)
    with pytest.raises(ValueError):
        bootstrap_mean_ci([0.1, 0.2], rng, groups=[1])
    with pytest.raises(ValueError):
        bootstrap_mean_ci([0.1, 0.2], rng, alpha=1.5)


@pytest.mark.parametrize("dist", ["normal", "exponential"])
def test_coverage_near_nominal(dist):
    # 300 data sets of 40 draws from a known distribution (true mean 1.0); the 95% CI should
    # cover the true mean ~95% of the time (percentile bootstrap under-covers a little on
    # skewed small samples, hence the loose band).
    data_rng, boot_rng = np.random.default_rng(123), np.random.default_rng(456)
    hits = 0
    reps = 300
    for _ in range(reps):
        x = data_rng.normal(1.0, 1.0, 40) if dist == "normal" else data_rng.exponential(1.0, 40)
        _, lo, hi = bootstrap_mean_ci(x, boot_rng, n_boot=400)
        hits += lo <= 1.0 <= hi
    assert 0.88 <= hits / reps <= 0.99


def _unpaired_diff_ci(a, b, rng, n_boot=2000, alpha=0.05):
    """Reference: a and b resampled independently, ignoring that they share objects."""
    ia = rng.integers(0, a.size, size=(n_boot, a.size))
    ib = rng.integers(0, b.size, size=(n_boot, b.size))
    d = a[ia].mean(1) - b[ib].mean(1)
    return np.quantile(d, [alpha / 2, 1 - alpha / 2])


def test_paired_ci_narrower_than_unpaired_on_correlated_data():
    rng = np.random.default_rng(7)
    difficulty = rng.uniform(0.3, 0.95, 300)             # shared per-object effect
    a = difficulty + rng.normal(0.03, 0.02, 300)         # model A slightly better
    b = difficulty + rng.normal(0.0, 0.02, 300)
    diff, lo, hi = bootstrap_paired_diff_ci(a, b, np.random.default_rng(1))
    ulo, uhi = _unpaired_diff_ci(a, b, np.random.default_rng(1))
    assert diff == pytest.approx((a - b).mean())
    assert lo < diff < hi and lo > 0                    # the paired CI detects the 0.03 gain
    assert (hi - lo) < 0.25 * (uhi - ulo)
    assert ulo < 0                                      # the unpaired one cannot


def test_cluster_bootstrap_with_singleton_groups_equals_iid():
    v = np.random.default_rng(3).random(25)
    iid = bootstrap_mean_ci(v, np.random.default_rng(9), n_boot=300)
    clustered = bootstrap_mean_ci(v, np.random.default_rng(9), n_boot=300, groups=np.arange(25))
    assert iid == pytest.approx(clustered)


def test_cluster_bootstrap_equals_bootstrap_of_group_means_for_equal_groups():
    rng = np.random.default_rng(4)
    g_means = rng.random(12)
    values = np.repeat(g_means, 5) + np.tile(rng.normal(0, 0.1, 5), 12)   # each group: 5 objects
    labels = np.repeat([f"img{i:02d}" for i in range(12)], 5)              # string labels work
    per_group = values.reshape(12, 5).mean(1)
    ref = bootstrap_mean_ci(per_group, np.random.default_rng(11), n_boot=400)
    got = bootstrap_mean_ci(values, np.random.default_rng(11), n_boot=400, groups=labels)
    assert got == pytest.approx(ref)


def test_cluster_ci_wider_when_objects_in_an_image_are_correlated():
    rng = np.random.default_rng(5)
    image_effect = rng.normal(0, 0.2, 40)
    groups = np.repeat(np.arange(40), 10)
    values = 0.7 + image_effect[groups] + rng.normal(0, 0.02, groups.size)
    _, lo, hi = bootstrap_mean_ci(values, np.random.default_rng(0))
    _, clo, chi = bootstrap_mean_ci(values, np.random.default_rng(0), groups=groups)
    assert (chi - clo) > 2 * (hi - lo)
