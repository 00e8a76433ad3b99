"""Tests of samstudy.policies on hand-made masks whose expected result is known by construction."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from samstudy import metrics
from samstudy.data import Dataset, ImageRecord, Instance
from samstudy.masks import encode_rle, mask_box_xyxy
from samstudy.policies import (PRESETS, PolicyConfig, apply_policy, drop_crowd, fill_hole_mask, fill_holes,
                               keep_categories, merge_same_category, min_area, policy_name)

H, W = 40, 50
CATS = {1: "car", 2: "person", 3: "dog"}


def _inst(ann_id: int, m: np.ndarray, cat: int = 1, image_id: int = 1, **kw) -> Instance:
    return Instance(image_id=image_id, ann_id=ann_id, category_id=cat, category=CATS[cat], rle=encode_rle(m),
                    area=int(m.sum()), box_xyxy=tuple(mask_box_xyxy(m).tolist()),
                    source_ann_ids=(ann_id,), **kw)


def _ds(*instances: Instance) -> Dataset:
    images = {i: ImageRecord(i, f"{i}.jpg", Path(f"{i}.jpg"), H, W) for i in {t.image_id for t in instances} | {1}}
    return Dataset("t", images, dict(CATS), list(instances))


def _rect(r0, r1, c0, c1) -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def _disc(cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[:H, :W]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


# ------------------------------------------------------------------------------ fill_holes

def test_ring_becomes_disc():
    outer, inner = _disc(20, 25, 12), _disc(20, 25, 5)
    ring = outer & ~inner
    ds = fill_holes(_ds(_inst(1, ring)))
    (t,) = ds.instances
    assert (t.mask() == outer).all() and t.area == int(outer.sum())
    assert t.box_xyxy == tuple(mask_box_xyxy(outer).tolist())
    row = ds.policy_log[-1]
    assert row["name"] == "fill_holes" and row["n_changed"] == 1 and row["pixels_added"] == int(inner.sum())
    assert (row["n_before"], row["n_after"]) == (1, 1)


def test_square_frame_fills_to_square_and_solid_mask_unchanged():
    frame = _rect(5, 25, 5, 25) & ~_rect(11, 19, 11, 19)
    solid = _rect(30, 35, 30, 45)
    ds = fill_holes(_ds(_inst(1, frame), _inst(2, solid)))
    a, b = ds.instances
    assert a.area == 400 and b.area == 75
    assert (b.mask() == solid).all()
    assert ds.policy_log[-1]["n_changed"] == 1
    assert (a.tags, b.tags) == (("policy:filled",), ())  # only the changed object is tagged


def test_hole_connectivity_rule():
    """Background is 4-connected: a diagonal gap keeps the hole closed, a 4-connected gap opens it."""
    ring = _rect(10, 15, 10, 15) & ~_rect(11, 14, 11, 14)
    diag = ring.copy()
    diag[10, 10] = False          # hole pixel (11, 11) now meets the outside only diagonally
    want = _rect(10, 15, 10, 15)
    want[10, 10] = False
    assert (fill_hole_mask(diag) == want).all()
    gap = ring.copy()
    gap[10, 12] = False           # 4-connected opening
    assert (fill_hole_mask(gap) == gap).all()


def test_background_touching_image_border_is_not_a_hole():
    u = _rect(0, 10, 0, 10) & ~_rect(3, 7, 0, 6)   # pocket open on the image's left border
    assert (fill_hole_mask(u) == u).all()


# ------------------------------------------------------------------------------ merge_same_category

def test_overlapping_same_class_merge_to_union():
    a, b = _rect(0, 10, 0, 10), _rect(5, 15, 5, 15)
    ds = merge_same_category(_ds(_inst(4, a), _inst(9, b)))
    (m,) = ds.instances
    assert m.area == 175 and (m.mask() == (a | b)).all()
    assert m.ann_id == 10 and m.source_ann_ids == (4, 9)
    assert m.box_xyxy == (0.0, 0.0, 15.0, 15.0)
    row = ds.policy_log[-1]
    assert row["name"] == "merge_same_category" and row["n_groups"] == 1 and row["n_members_merged"] == 2
    assert (row["n_before"], row["n_after"], row["n_changed"]) == (2, 1, 1)


@pytest.mark.parametrize("b, touching, merged", [
    (_rect(0, 10, 10, 20), True, True),     # side contact (4-neighbours)
    (_rect(10, 20, 10, 20), True, True),    # corner contact (8-neighbours only)
    (_rect(0, 10, 11, 20), True, False),    # one-pixel gap
    (_rect(0, 10, 10, 20), False, False),   # touching but only overlaps merge
    (_rect(5, 10, 5, 20), False, True),     # overlap
])
def test_touching_rule(b, touching, merged):
    a = _rect(0, 10, 0, 10)
    ds = merge_same_category(_ds(_inst(1, a), _inst(2, b)), touching=touching)
    assert len(ds.instances) == (1 if merged else 2)
    if merged:
        assert ds.instances[0].area == int((a | b).sum())


def test_different_class_or_image_stay_separate():
    a, b = _rect(0, 10, 0, 10), _rect(5, 15, 5, 15)
    ds = merge_same_category(_ds(_inst(1, a, cat=1), _inst(2, b, cat=2), _inst(3, b, cat=1, image_id=2)))
    assert [t.ann_id for t in ds.instances] == [1, 2, 3]
    assert ds.policy_log[-1]["n_changed"] == 0


def test_chain_merges_transitively_and_categories_filter():
    a, b, c = _rect(0, 5, 0, 5), _rect(0, 5, 5, 10), _rect(0, 5, 10, 15)   # a-b-c touch in a row
    far = _rect(30, 35, 30, 35)
    dogs = [_inst(7, _rect(20, 25, 0, 5), cat=3), _inst(8, _rect(22, 27, 2, 7), cat=3)]
    ds = merge_same_category(_ds(_inst(1, a), _inst(2, b), _inst(3, c), _inst(4, far), *dogs))
    assert sorted(t.source_ann_ids for t in ds.instances) == [(1, 2, 3), (4,), (7, 8)]
    new_ids = sorted(t.ann_id for t in ds.instances if len(t.source_ann_ids) > 1)
    assert new_ids == [9, 10]  # above the largest input id, in image/category order
    only_cars = merge_same_category(_ds(_inst(1, a), _inst(2, b), *dogs), categories=["car"])
    assert sorted(t.source_ann_ids for t in only_cars.instances) == [(1, 2), (7,), (8,)]


def test_crowd_never_merged_and_merge_unions_tags_and_ignore():
    a, b = _rect(0, 10, 0, 10), _rect(5, 15, 5, 15)
    crowd = merge_same_category(_ds(_inst(1, a, iscrowd=True), _inst(2, b)))
    assert len(crowd.instances) == 2
    ig = _rect(20, 22, 0, 5)
    m = merge_same_category(_ds(_inst(1, a, tags=("x",)), _inst(2, b, tags=("a", "x"), ignore_rle=encode_rle(ig))))
    (t,) = m.instances
    assert t.tags == ("a", "policy:merged", "x") and (t.ignore_mask() == ig).all()


def test_merged_ids_unique_and_inputs_untouched():
    a, b = _rect(0, 10, 0, 10), _rect(5, 15, 5, 15)
    src = _ds(_inst(1, a), _inst(2, b))
    out = merge_same_category(src)
    assert len(src.instances) == 2 and src.policy_log == []
    ids = [t.ann_id for t in out.instances]
    assert len(ids) == len(set(ids))


# ------------------------------------------------------------------------------ other steps

def test_drop_crowd_min_area_keep_categories():
    ds = _ds(_inst(1, _rect(0, 2, 0, 2), iscrowd=True), _inst(2, _rect(0, 3, 0, 3)), _inst(3, _rect(0, 10, 0, 10), cat=2))
    assert [t.ann_id for t in drop_crowd(ds).instances] == [2, 3]
    assert [t.ann_id for t in min_area(ds, 9).instances] == [2, 3]
    assert [t.ann_id for t in min_area(ds, 10).instances] == [3]
    kept = keep_categories(ds, ["person", "bus"])
    assert [t.ann_id for t in kept.instances] == [3] and kept.categories == {2: "person"}
    assert kept.policy_log[-1]["unknown_names"] == ["bus"]
    with pytest.raises(ValueError, match="none of"):
        keep_categories(ds, ["bus"])
    log = min_area(ds, 10).policy_log[-1]
    assert log == {"name": "min_area", "params": {"px": 10}, "n_before": 3, "n_after": 1, "n_changed": 0}


# ------------------------------------------------------------------------------ config / apply

def test_config_parsing_and_names():
    cfg = PolicyConfig.from_dict({"drop_crowd": True, "min_area": 0, "fill_holes": False,
                                  "merge_same_category": False, "categories": None})
    assert cfg == PolicyConfig(drop_crowd=True)
    assert policy_name(cfg) == "nocrowd"
    assert policy_name(PolicyConfig()) == "raw" == policy_name(PolicyConfig.from_dict(None))
    assert policy_name(PolicyConfig.from_dict("automotive")) == "automotive"
    assert policy_name(PolicyConfig(fill_holes=True, merge_same_category=True)) == "merge+fill"
    assert policy_name(PolicyConfig(min_area=100, merge_same_category=True, merge_touching=False)) == "merge-overlap+min100"
    c1 = policy_name(PolicyConfig(categories=("car", "bus")))
    assert c1 == policy_name(PolicyConfig(categories=["bus", "car", "car"])) and c1.startswith("cats2-")
    over = PolicyConfig.from_dict({"preset": "automotive", "min_area": 10})
    assert over.fill_holes and over.min_area == 10 and policy_name(over) != "automotive"
    assert PolicyConfig.from_dict(over.to_dict()) == over
    assert PRESETS["automotive"].categories == tuple(sorted(["person", "bicycle", "car", "motorcycle", "bus", "truck"]))
    with pytest.raises(ValueError, match="unknown policy key"):
        PolicyConfig.from_dict({"fill_hole": True})
    with pytest.raises(ValueError, match="unknown policy preset"):
        PolicyConfig.from_dict("coco-ish")
    with pytest.raises(ValueError):
        PolicyConfig.from_dict({"min_area": -1})
    with pytest.raises(ValueError):
        PolicyConfig.from_dict({"fill_holes": "yes"})


def test_apply_policy_merges_before_filling():
    """Two same-class C shapes that together enclose background: merged, then the hole is filled."""
    square = _rect(5, 25, 5, 25)
    inner = _rect(10, 20, 10, 20)
    left = square & ~inner & (np.arange(W) < 15)[None, :]
    right = square & ~inner & (np.arange(W) >= 15)[None, :]
    assert not (left & right).any()
    person = _inst(3, _rect(30, 35, 0, 5), cat=2)
    dog = _inst(4, _rect(30, 35, 40, 45), cat=3)
    crowd = _inst(5, _rect(30, 33, 10, 13), iscrowd=True)
    ds = apply_policy(_ds(_inst(1, left), _inst(2, right), person, dog, crowd), "automotive")
    objs = {t.category: t for t in ds.instances}
    assert set(objs) == {"car", "person"}  # dog not an automotive category, crowd dropped
    car = objs["car"]
    assert car.area == 400 and car.source_ann_ids == (1, 2) and (car.mask() == square).all()
    names = [r["name"] for r in ds.policy_log]
    assert names == ["keep_categories", "drop_crowd", "merge_same_category", "fill_holes", "apply_policy"]
    assert all(r["policy"] == "automotive" for r in ds.policy_log)
    assert ds.policy_log[-1]["n_before"] == 5 and ds.policy_log[-1]["n_after"] == 2
    raw = apply_policy(_ds(_inst(1, left)), PolicyConfig())
    assert raw.instances == _ds(_inst(1, left)).instances and raw.policy_log[-1]["policy"] == "raw"


def test_policy_log_is_json_serialisable_through_write_coco(tmp_path):
    from samstudy.data import load_coco, write_coco
    ds = apply_policy(_ds(_inst(1, _rect(0, 10, 0, 10)), _inst(2, _rect(5, 15, 5, 15))),
                      {"merge_same_category": True, "fill_holes": True})
    back = load_coco(write_coco(ds, tmp_path / "p.json"), tmp_path, check_images=False)
    assert back.policy_log == ds.policy_log
    assert back.instances == ds.instances


# ------------------------------------------------------------------------------ properties

from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402
from scipy import ndimage  # noqa: E402


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_fill_hole_mask_equals_scipy_binary_fill_holes(m):
    assert (fill_hole_mask(m) == ndimage.binary_fill_holes(m)).all()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 40), st.integers(1, 12), st.integers(1, 12)),
                min_size=1, max_size=6))
def test_merge_groups_equal_8_connected_components_of_union(rects):
    """Non-overlapping/touching decomposition check: with touching=True, merged objects are exactly
    the 8-connected components of the union of same-class rectangles (rectangles are connected)."""
    insts = [_inst(i + 1, _rect(r, r + h, c, c + w)) for i, (r, c, h, w) in enumerate(rects)]
    out = merge_same_category(_ds(*insts))
    union = np.zeros((H, W), bool)
    for t in insts:
        union |= t.mask()
    labels, n = ndimage.label(union, structure=np.ones((3, 3)))
    assert len(out.instances) == n
    got = sorted(tuple(np.flatnonzero(t.mask())) for t in out.instances)
    want = sorted(tuple(np.flatnonzero(labels == k)) for k in range(1, n + 1))
    assert got == want
    assert sum(len(t.source_ann_ids) for t in out.instances) == len(insts)


@settings(max_examples=60, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_filled_mask_has_no_holes_by_the_metric(m):
    """The policy adds exactly the pixels the metric counts as holes, and none remain."""
    filled = fill_hole_mask(m)
    assert (filled >= m).all()
    assert metrics.hole_stats(filled) == (0, 0)
    assert int((filled & ~m).sum()) == metrics.hole_stats(m)[1]


def test_automotive_on_real_coco_sample(coco_sample_dir):
    """On real masks: no holes remain, no two same-category objects of an image overlap or touch."""
    from samstudy.data import load_coco
    full = load_coco(coco_sample_dir / "instances.json", coco_sample_dir / "images", check_images=False)
    ds = full.subset(sorted(full.images)[:60])
    out = apply_policy(ds, "automotive")
    assert {t.category for t in out.instances} <= set(PRESETS["automotive"].categories)
    assert not any(t.iscrowd for t in out.instances)
    for t in out.instances:
        m = t.mask()
        assert (ndimage.binary_fill_holes(m) == m).all()  # scipy: an independent hole check
    groups: dict[tuple[int, int], list] = {}
    for t in out.instances:
        groups.setdefault((t.image_id, t.category_id), []).append(t.mask())
    for masks in groups.values():
        for i in range(len(masks)):
            grown = ndimage.binary_dilation(masks[i], structure=np.ones((3, 3), bool))
            assert not any((grown & masks[j]).any() for j in range(len(masks)) if j != i)
    kept = [t for t in ds.instances if t.category in PRESETS["automotive"].categories and not t.iscrowd]
    assert sorted(s for t in out.instances for s in t.source_ann_ids) == sorted(t.ann_id for t in kept)
