"""Tests of samstudy.splits: determinism, disjointness, coverage, stratification, written files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from samstudy.data import Dataset, ImageRecord, Instance, load_coco
from samstudy.masks import encode_rle
from samstudy.splits import split_by_image, split_summary, stratification_failures, write_split

_MASK = np.zeros((4, 4), bool)
_MASK[1:3, 1:3] = True
_RLE = encode_rle(_MASK)


def _dataset(image_cats: list[list[int]], n_cats: int | None = None) -> Dataset:
    """One image per entry; image i holds one instance of each category listed (tiny 4x4 masks)."""
    n_cats = n_cats or max([c for cs in image_cats for c in cs], default=0) + 1
    images = {i: ImageRecord(i, f"{i}.jpg", Path(f"{i}.jpg"), 4, 4) for i in range(len(image_cats))}
    insts, ann = [], 0
    for i, cats in enumerate(image_cats):
        for c in cats:
            ann += 1
            insts.append(Instance(i, ann, c, f"c{c}", _RLE, 4, (1.0, 1.0, 3.0, 3.0), source_ann_ids=(ann,)))
    return Dataset("toy", images, {c: f"c{c}" for c in range(n_cats)}, insts)


def _rng_dataset(seed: int, n_images: int = 60, n_cats: int = 8) -> Dataset:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.ones(n_cats))  # skewed category frequencies: some are rare
    return _dataset([sorted(set(rng.choice(n_cats, size=rng.integers(0, 4), p=p).tolist())) for _ in range(n_images)],
                    n_cats)


def test_deterministic_disjoint_covering():
    ds = _rng_dataset(1)
    a = split_by_image(ds, 0.25, seed=7)
    assert a == split_by_image(ds, 0.25, seed=7)
    assert a != split_by_image(ds, 0.25, seed=8)
    train, test = a
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(ds.images)
    assert train == sorted(train) and test == sorted(test)


def test_fraction_respected_without_categories():
    ds = _dataset([[] for _ in range(40)])
    train, test = split_by_image(ds, 0.3, seed=0)
    assert (len(train), len(test)) == (28, 12)
    train, test = split_by_image(_dataset([[], []]), 0.01, seed=0)
    assert len(train) == 1 and len(test) == 1  # at least one image per side


def test_rare_category_in_both_sides():
    # category 1 appears in exactly two images: it must be split across the sides whatever the seed
    ds = _dataset([[0]] * 30 + [[1, 0], [1]])
    for seed in range(20):
        train, test = split_by_image(ds, 0.1, seed=seed)
        assert {30, 31} & set(train) and {30, 31} & set(test)
        assert stratification_failures(ds, train, test) == []


def test_min_images_per_category_threshold():
    ds = _dataset([[0]] * 20 + [[1], [1], [1]])
    for seed in range(10):
        train, test = split_by_image(ds, 0.1, seed=seed, min_images_per_category=4)
        assert stratification_failures(ds, train, test, min_images_per_category=4) == []
    # with the threshold at 4, category 1 (3 images) is not forced: some seed puts all 3 on one side
    sides = [set(split_by_image(ds, 0.1, seed=s, min_images_per_category=4)[1]) & {20, 21, 22} for s in range(30)]
    assert any(not x for x in sides)


def test_stratification_failures_by_hand():
    # images: 0 {c0, c1}, 1 {c0}, 2 {c1, c2}, 3 {c0, c3}, 4 {c4}; c2 and c4 have one image each
    ds = _dataset([[0, 1], [0], [1, 2], [0, 3], [4]])
    assert stratification_failures(ds, [0, 1], [2, 3, 4]) == []       # c0: 0,1 | 3; c1: 0 | 2
    assert stratification_failures(ds, [0, 1, 3], [2, 4]) == ["c0"]   # c0 only in train
    assert stratification_failures(ds, [2, 4], [0, 1, 3]) == ["c0"]   # ... or only in test
    assert stratification_failures(ds, [1, 3], [0, 2, 4]) == ["c1"]   # c1's images 0, 2 both in test
    assert stratification_failures(ds, [4], [0, 1, 2, 3]) == ["c0", "c1"]
    # with the threshold at 3 only c0 (3 images) is eligible
    assert stratification_failures(ds, [1, 3], [0, 2, 4], min_images_per_category=3) == []
    assert stratification_failures(ds, [4], [0, 1, 2, 3], min_images_per_category=3) == ["c0"]


def test_unsatisfiable_case_is_reported():
    # {A,C}, {A,B}, {B,C}: no 2-colouring puts A, B and C on both sides
    ds = _dataset([[0, 2], [0, 1], [1, 2]])
    train, test = split_by_image(ds, 0.5, seed=0)
    assert len(stratification_failures(ds, train, test)) >= 1
    assert not split_summary(ds, train, test)["in_both"].all()


def test_invalid_arguments():
    ds = _dataset([[0], [0]])
    for f in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="test_fraction"):
            split_by_image(ds, f, seed=0)
    with pytest.raises(ValueError, match="at least 2 images"):
        split_by_image(_dataset([[0]]), 0.5, seed=0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), data_seed=st.integers(0, 10_000), frac=st.floats(0.05, 0.6))
def test_properties_on_random_datasets(seed, data_seed, frac):
    ds = _rng_dataset(data_seed, n_images=40)
    train, test = split_by_image(ds, frac, seed=seed)
    assert not set(train) & set(test) and sorted(train + test) == sorted(ds.images)
    # fill step: test is the requested size unless stratification alone needed more
    per_cat: dict[int, set[int]] = {}
    for t in ds.instances:
        per_cat.setdefault(t.category_id, set()).add(t.image_id)
    target = min(max(round(frac * 40), 1), 39)
    n_eligible = sum(1 for ims in per_cat.values() if len(ims) >= 2)
    if len(test) > target:   # only stratification picks (at most one per eligible category) are in test
        assert len(test) <= n_eligible
    if len(test) < target:   # unassigned images ran out: train holds only stratification picks
        assert len(train) <= n_eligible


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=2, max_size=50), st.integers(0, 1000), st.floats(0.05, 0.95))
def test_single_category_images_always_stratified(cats, seed, frac):
    """When every image holds one category, every category with >= 2 images is always on both sides,
    and the test size is exactly the requested one whenever the categories leave room for it."""
    ds = _dataset([[c] for c in cats])
    train, test = split_by_image(ds, frac, seed=seed)
    assert stratification_failures(ds, train, test) == []
    n_eligible = len({c for c in cats if cats.count(c) >= 2})
    target = min(max(round(frac * len(cats)), 1), len(cats) - 1)
    if n_eligible <= target and n_eligible <= len(cats) - target:
        assert len(test) == target


def test_write_split_files_identical_for_same_seed(tmp_path):
    ds = _rng_dataset(3)
    for out in ("a", "b"):
        write_split(ds, *split_by_image(ds, 0.2, seed=11), tmp_path / out)
    for f in ("train.json", "test.json", "split_summary.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    train, test = split_by_image(ds, 0.2, seed=11)
    back_train = load_coco(tmp_path / "a" / "train.json", tmp_path, check_images=False)
    back_test = load_coco(tmp_path / "a" / "test.json", tmp_path, check_images=False)
    assert sorted(back_train.images) == train and sorted(back_test.images) == test
    assert len(back_train.instances) + len(back_test.instances) == len(ds.instances)
    summary = pd.read_csv(tmp_path / "a" / "split_summary.csv")
    pd.testing.assert_frame_equal(summary, split_summary(ds, train, test), check_dtype=False)
    with pytest.raises(ValueError, match="share"):
        write_split(ds, [0, 1], [1, 2], tmp_path / "c")
    with pytest.raises(ValueError, match="not in dataset"):
        write_split(ds, [0], [999], tmp_path / "c")


def test_split_summary_by_hand():
    # images 0 {c0, c0'}, 1 {c0, c1}, 2 {c1}, 3 {c0}: two instances of c0 in image 0
    base = _dataset([[0], [0, 1], [1], [0]])
    extra = Instance(0, 99, 0, "c0", _RLE, 4, (1.0, 1.0, 3.0, 3.0), source_ann_ids=(99,))
    ds = Dataset(base.name, base.images, base.categories, base.instances + [extra])
    df = split_summary(ds, [0, 2], [1, 3])
    assert list(df.columns) == ["category_id", "category", "train_images", "train_instances",
                                "test_images", "test_instances", "in_both"]
    assert df.values.tolist() == [[0, "c0", 1, 2, 2, 2, True],
                                  [1, "c1", 1, 1, 1, 1, True]]
    df = split_summary(ds, [1, 2], [0, 3])
    assert df.values.tolist() == [[0, "c0", 1, 1, 2, 3, True],
                                  [1, "c1", 2, 2, 0, 0, False]]


def test_real_coco_sample_split(coco_sample_dir):
    ds = load_coco(coco_sample_dir / "instances.json", coco_sample_dir / "images", check_images=False)
    train, test = split_by_image(ds, 0.2, seed=0)
    assert len(train) + len(test) == 341
    assert stratification_failures(ds, train, test) == []
    assert 0.18 <= len(test) / 341 <= 0.3
