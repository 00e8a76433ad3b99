"""Tests of the foundation-model engine with a fake segmenter whose answers are known exactly.

``BoxFake.decode`` returns, per prompt: the pixels inside the box (if any), started from the fed-back
mask input (if any), plus a (2r+1)^2 square at each positive point, minus one at each negative
point. With a tight box its IoU is ``area / box area``, an independent truth for the whole path.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from samstudy import engine, results
from samstudy.cache import EmbeddingCache
from samstudy.data import Dataset, ImageRecord, Instance
from samstudy.masks import encode_rle, mask_box_xyxy, rle_area
from samstudy.metrics import iou as ref_iou, noc_table
from samstudy.models.base import Decoded, Embedding, PromptableSegmenter
from samstudy.prompts import PromptMode, parse_modes

LOW = 256  # low-res logits side, as SAM


class BoxFake(PromptableSegmenter):
    name = "boxfake"
    label = "box fake (tests)"
    checkpoint_sha256 = "b" * 64
    preprocess_id = "fake-v1"

    def __init__(self, radius: int = 1, fail_on_encode: int | None = None):
        self.device = torch.device("cpu")
        self.radius = radius
        self.fail_on_encode = fail_on_encode  # raise on this (1-based) encode call: a "kill"
        self.encodes = 0
        self.calls: list[dict] = []

    def encode(self, image):
        self.encodes += 1
        if self.fail_on_encode is not None and self.encodes >= self.fail_on_encode:
            raise RuntimeError("injected crash")
        f = torch.from_numpy(image[::8, ::8].mean(-1).astype(np.float32))[None, None]
        return Embedding(features=f, original_hw=image.shape[:2], input_hw=image.shape[:2], model_key=self.cache_key)

    def _one(self, hw, p, mask_in):
        h, w = hw
        m = np.zeros(hw, bool) if mask_in is None else mask_in[:h, :w] > 0
        if p.box is not None and mask_in is None:
            x0, y0, x1, y1 = p.box
            m[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
        if p.points is not None:
            r = self.radius
            for (x, y), lab in zip(p.points.astype(int), p.labels):
                m[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1] = bool(lab)
        return m

    def decode(self, embedding, prompts, multimask=False, mask_inputs=None):
        assert embedding.model_key == self.cache_key
        self.calls.append({"n": len(prompts), "multimask": multimask, "mask_inputs": mask_inputs is not None,
                           "modes": {p.mode for p in prompts}})
        hw = embedding.original_hw
        assert max(hw) <= LOW
        n, k = len(prompts), 3 if multimask else 1
        masks = np.zeros((n, k, *hw), bool)
        for i, p in enumerate(prompts):
            m = self._one(hw, p, None if mask_inputs is None else mask_inputs[i, 0])
            # best of 3 must pick index 1 (the real mask); 0 is its complement, 2 empty
            masks[i] = np.stack([~m, m, np.zeros_like(m)]) if multimask else m[None]
        iou_pred = np.tile(np.array([0.2, 0.9, 0.5] if multimask else [0.8], np.float32), (n, 1))
        low = np.full((n, k, LOW, LOW), -10.0, np.float32)
        low[:, :, :hw[0], :hw[1]][masks] = 10.0
        return Decoded(masks=masks, iou_pred=iou_pred, low_res_logits=low)


# ------------------------------------------------------------------------------ a tiny dataset
H, W = 64, 96


def _rect(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1, c0:c1] = True
    return m


def _disc(cy, cx, rad, hole=0):
    rr, cc = np.indices((H, W))
    d2 = (rr - cy) ** 2 + (cc - cx) ** 2
    return (d2 <= rad ** 2) & ((d2 > hole ** 2) if hole else True)


def _inst(image_id, ann_id, mask, **kw) -> Instance:
    rle = encode_rle(mask)
    box = tuple(mask_box_xyxy(mask).tolist()) if mask.any() else (0.0, 0.0, 0.0, 0.0)
    return Instance(image_id=image_id, ann_id=ann_id, category_id=1, category="thing", rle=rle,
                    area=rle_area(rle), box_xyxy=box, **kw)


def make_dataset(tmp_path, n_images: int = 3, with_bad: bool = False) -> Dataset:
    """``n_images`` 64x96 PNGs with a rectangle, a disc and a ring each (+ bad cases)."""
    rng = np.random.default_rng(0)
    images, insts = {}, []
    for i in range(1, n_images + 1):
        img = rng.integers(0, 60, (H, W, 3), dtype=np.uint8)
        masks = [_rect(5, 20 + i, 4, 30), _disc(40, 30, 10 + i), _disc(30, 70, 15, hole=6)]
        for j, m in enumerate(masks):
            img[m] = 200 + 10 * j
            insts.append(_inst(i, 10 * i + j, m, tags=("holes",) if j == 2 else ()))
        path = tmp_path / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(path)
        images[i] = ImageRecord(image_id=i, file_name=path.name, path=path, height=H, width=W)
    if with_bad:
        insts.append(_inst(1, 100, np.zeros((H, W), bool)))  # empty mask
        one = np.zeros((H, W), bool)
        one[50, 50] = True
        insts.append(_inst(1, 101, one))  # 1-pixel object
        images[99] = ImageRecord(image_id=99, file_name="missing.png", path=tmp_path / "missing.png",
                                 height=H, width=W)
        insts.append(_inst(99, 990, _rect(1, 9, 1, 9)))
    return Dataset(name="tiny", images=images, categories={1: "thing"}, instances=insts)


MODES = parse_modes(["tight_box", "loose_box[b=0.2]", "jitter_box[noise=0.2]", "extreme_points",
                     "center_point", "clicks[start=click,max_clicks=4]", "clicks[start=box,max_clicks=3]"])


def _ok(df):
    return df[df.status == "ok"]


# ------------------------------------------------------------------------------ process_image
def test_tight_box_iou_equals_independent_truth(tmp_path):
    ds = make_dataset(tmp_path, 1)
    model = BoxFake()
    rows, preds = engine.process_image(ds.images[1], ds.instances, model, ["tight_box"], None, seed=0,
                                       dataset="tiny")
    df = pd.DataFrame(rows)
    assert set(df.columns) == set(results.ROW_COLUMNS)
    assert len(df) == 3 * 2 and (df.status == "ok").all()  # 3 objects x (single, best_of_3)
    for inst in ds.instances:
        m = inst.mask()
        ys, xs = np.nonzero(m)
        truth = m.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
        got = df[df.ann_id == inst.ann_id]
        np.testing.assert_allclose(got.iou, truth, rtol=0, atol=1e-12)
    assert df.loc[df.multimask == "best_of_3", "pred_iou"].eq(np.float32(0.9)).all()  # best of 3 chose index 1
    assert (df.buffer == 0.0).all() and (df.click == 0).all() and (df.gt_variant == "primary").all()
    # one decode call per policy for all objects of the image; one encode
    assert [(c["n"], c["multimask"]) for c in model.calls] == [(3, False), (3, True)] and model.encodes == 1
    assert len(preds) == 6
    pred = results.prediction_mask(preds[0])
    assert pred.shape == (H, W) and preds[0]["iou"] == pytest.approx(df.iou.iloc[0])


def test_prompts_are_deterministic_and_independent_of_mode_order(tmp_path):
    ds = make_dataset(tmp_path, 1)
    a, _ = engine.process_image(ds.images[1], ds.instances, BoxFake(), MODES, None, seed=3)
    b, _ = engine.process_image(ds.images[1], ds.instances[::-1], BoxFake(), MODES[::-1], None, seed=3)
    c, _ = engine.process_image(ds.images[1], ds.instances, BoxFake(), MODES, None, seed=4)
    key = list(results.SORT_KEYS)
    drop = ["time_encode_s", "time_decode_s"]
    da, db, dc = (pd.DataFrame(r).drop(columns=drop).sort_values(key).reset_index(drop=True) for r in (a, b, c))
    pd.testing.assert_frame_equal(da, db)
    jit = da.prompt_mode.str.startswith("jitter")
    assert not da[jit].iou.equals(dc[jit].iou)  # the seed moves jittered boxes ...
    assert da[~jit].iou.equals(dc[~jit].iou)  # ... and nothing else
    r1 = engine.prompt_rng(3, 1, 10, "jitter_box[noise=0.2]").uniform(size=4)
    r2 = engine.prompt_rng(3, 1, 10, "jitter_box[noise=0.2]").uniform(size=4)
    assert np.array_equal(r1, r2)


def test_click_sequence_feeds_back_logits_and_batches_over_objects(tmp_path):
    ds = make_dataset(tmp_path, 1)
    model = BoxFake()
    mode = PromptMode("clicks", {"start": "click", "max_clicks": 6})
    rows, preds = engine.process_image(ds.images[1], ds.instances, model, [mode], None,
                                       click_multimask=["first_best_of_3", "single"])
    df = pd.DataFrame(rows)
    assert (df.status == "ok").all()
    for pol in ("first_best_of_3", "single"):
        d = df[df.multimask == pol]
        assert sorted(d.click.unique()) == [1, 2, 3, 4, 5, 6]
        assert d.groupby("ann_id").click.count().eq(6).all()  # every click has a row per object
    calls = model.calls
    # policy first_best_of_3: click 1 multimask without mask input; later single with mask input
    assert calls[0] == {"n": 3, "multimask": True, "mask_inputs": False, "modes": {mode.key}}
    assert all(not c["multimask"] and c["mask_inputs"] for c in calls[1:6] if c["n"])
    assert all(c["n"] <= 3 for c in calls)
    # the fake adds 3x3 squares at positive clicks: IoU never drops on a rectangle
    rect = df[(df.ann_id == 10) & (df.multimask == "single")].sort_values("click")
    assert rect.iou.is_monotonic_increasing and rect.iou.iloc[-1] > rect.iou.iloc[0]
    # NoC table works on the rows as written
    nt = noc_table(df)
    assert len(nt) == 6 and set(nt.n_clicks) == {6}
    # predictions stored for real clicks only, each matching its row's IoU
    p = pd.DataFrame(preds)
    for _, r in p.sample(5, random_state=0).iterrows():
        row = df[(df.ann_id == r.ann_id) & (df.multimask == r.multimask) & (df.click == r.click)].iloc[0]
        assert ref_iou(results.prediction_mask(r), ds.instances[[10, 11, 12].index(r.ann_id)].mask()) == \
            pytest.approx(row.iou)
        assert json.loads(r.prompt)["points"] is not None


def test_box_start_click_sequence_has_click_zero_and_stops_when_perfect(tmp_path):
    ds = make_dataset(tmp_path, 1)
    mode = PromptMode("clicks", {"start": "box", "max_clicks": 3})
    rows, preds = engine.process_image(ds.images[1], ds.instances, BoxFake(), [mode], None,
                                       click_multimask=["single"])
    df = pd.DataFrame(rows)
    rect = df[df.ann_id == 10].sort_values("click")
    assert rect.click.tolist() == [0, 1, 2, 3]
    assert (rect.iou == 1.0).all()  # the box is perfect: no click is possible, results carry forward
    assert (rect.time_decode_s.iloc[1:] == 0).all()
    assert len([p for p in preds if p["ann_id"] == 10]) == 1  # only the real (box) prediction stored
    disc = df[df.ann_id == 11].sort_values("click")
    assert disc.click.tolist() == [0, 1, 2, 3] and disc.iou.iloc[0] < 1.0


def test_ignore_mask_reaches_metrics_and_clicker(tmp_path):
    ds = make_dataset(tmp_path, 1)
    inst = ds.instances[1]  # disc
    band = _disc(40, 30, 13) & ~_disc(40, 30, 9)
    inst = inst.with_(ignore_rle=encode_rle(band))
    rows, _ = engine.process_image(ds.images[1], [inst], BoxFake(), ["tight_box", "clicks[max_clicks=3]"],
                                   None, multimask=["single"])
    df = pd.DataFrame(rows)
    tb = df[df.prompt_mode == "tight_box"].iloc[0]
    x0, y0, x1, y1 = mask_box_xyxy(inst.mask()).astype(int)
    box_mask = _rect(y0, y1, x0, x1)
    assert tb.iou == pytest.approx(ref_iou(box_mask, inst.mask(), band))
    assert tb.iou != pytest.approx(ref_iou(box_mask, inst.mask()))
    # no click lands in the ignore band: the positive click squares are inside the disc core
    assert (df[df.prompt_mode.str.startswith("clicks")].status == "ok").all()


def test_skips_are_recorded_not_fatal(tmp_path):
    ds = make_dataset(tmp_path, 1, with_bad=True)
    model = BoxFake()
    out = engine.run_experiment(ds, model, ["tight_box", "clicks[max_clicks=2]"], tmp_path / "out",
                                           progress=False)
    skipped = out[out.status == "skipped"].groupby("ann_id").skip_reason.first().to_dict()
    assert skipped == {100: "empty_mask", 101: "degenerate_box", 990: "image_missing"}
    # one skip row per (mode, policy) of each skipped object: 2 one-shot policies + 1 click policy
    assert out[out.ann_id == 100].shape[0] == 3 and (out[out.status == "skipped"].click == 0).all()
    assert out[out.status == "skipped"].iou.isna().all() and out.gt_holes.dtype == "Int64"
    assert (_ok(out).ann_id < 100).all() and len(_ok(out)) == 3 * 2 + 3 * 2
    assert model.encodes == 1  # the unreadable image is never encoded


def test_gt_variants_give_one_row_per_variant(tmp_path):
    ds = make_dataset(tmp_path, 1)
    filled = {t.ann_id: t.with_(rle=encode_rle(_disc(30, 70, 15))) for t in ds.instances if t.ann_id == 12}
    rows, _ = engine.process_image(ds.images[1], ds.instances, BoxFake(), ["tight_box"], None,
                                   gt_variants={"filled": filled}, multimask=["single"])
    df = pd.DataFrame(rows)
    assert sorted(df.gt_variant.unique()) == ["filled", "primary"]
    ring = df[df.ann_id == 12].set_index("gt_variant")
    assert ring.loc["filled", "iou"] > ring.loc["primary", "iou"]
    assert ring.loc["primary", "gt_holes"] == 1 and ring.loc["filled", "gt_holes"] == 0
    miss = df[(df.gt_variant == "filled") & (df.ann_id != 12)]
    assert (miss.skip_reason == "missing_in_gt_variant").all() and len(miss) == 2


def test_image_read_failure_is_a_skip_row(tmp_path):
    ds = make_dataset(tmp_path, 1)
    (tmp_path / "images" / "1.png").write_bytes(b"not a png")
    rows, preds = engine.process_image(ds.images[1], ds.instances, BoxFake(), ["tight_box"], None)
    assert {r["skip_reason"] for r in rows} == {"image_unreadable"} and len(rows) == 6 and preds == []


# ------------------------------------------------------------------------------ resumable runs
def _comparable(df):
    return df.drop(columns=list(results.TIMING_COLUMNS))


def test_resume_after_kill_and_lost_parts_gives_identical_table(tmp_path):
    ds = make_dataset(tmp_path, 4)
    modes = ["tight_box", "jitter_box", "clicks[max_clicks=3]"]
    cache = EmbeddingCache(tmp_path / "cache")
    full = engine.run_experiment(ds, BoxFake(), modes, tmp_path / "full", cache, seed=1,
                                            progress=False)
    full_preds = results.read_results(tmp_path / "full", predictions=True)

    out = tmp_path / "resumed"
    with pytest.raises(RuntimeError, match="injected crash"):  # killed while encoding image 3
        engine.run_experiment(ds, BoxFake(fail_on_encode=3), modes, out, None, seed=1, progress=False)
    assert sorted(p.name for p in (out / "parts").glob("*.parquet")) == [
        "1.parquet", "1.pred.parquet", "2.parquet", "2.pred.parquet"]
    model = BoxFake()
    resumed = engine.run_experiment(ds, model, modes, out, None, seed=1, progress=False)
    assert model.encodes == 2  # images 1 and 2 were not recomputed
    pd.testing.assert_frame_equal(_comparable(full), _comparable(resumed))
    pd.testing.assert_frame_equal(full_preds, results.read_results(out, predictions=True))

    (out / "parts" / "3.parquet").unlink()  # lost rows part -> image 3 recomputed
    (out / "parts" / "1.pred.parquet").unlink()  # lost predictions part -> image 1 recomputed
    model = BoxFake()
    again = engine.run_experiment(ds, model, modes, out, None, seed=1, progress=False)
    assert model.encodes == 2
    pd.testing.assert_frame_equal(_comparable(full), _comparable(again))
    pd.testing.assert_frame_equal(_comparable(full), _comparable(results.read_results(out)))

    # a warm rerun with the shared cache encodes nothing and marks rows cached
    model = BoxFake()
    warm = engine.run_experiment(ds, model, modes, tmp_path / "warm", cache, seed=1, progress=False)
    assert model.encodes == 0 and warm.cached.all() and (warm.time_encode_s == 0).all()
    pd.testing.assert_frame_equal(_comparable(full), _comparable(warm))


def test_manifest_mismatch_refuses_to_mix_unless_forced(tmp_path):
    ds = make_dataset(tmp_path, 2)
    out = tmp_path / "out"
    engine.run_experiment(ds, BoxFake(), ["tight_box"], out, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["modes"] == ["tight_box"] and manifest["identity"]["model"] == "boxfake"
    assert "torch" in manifest["provenance"]["versions"]
    with pytest.raises(engine.ManifestMismatch, match="modes.*force"):
        engine.run_experiment(ds, BoxFake(), ["loose_box"], out, progress=False)
    with pytest.raises(engine.ManifestMismatch, match="seed"):
        engine.run_experiment(ds, BoxFake(), ["tight_box"], out, seed=5, progress=False)
    assert len(list((out / "parts").glob("*.parquet"))) == 4  # refusing touched nothing

    # force with the same identity keeps every part: nothing is decoded again
    model = BoxFake()
    same = engine.run_experiment(ds, model, ["tight_box"], out, progress=False, force=True)
    assert model.encodes == 0 and same.attrs["discarded_parts"] == 0 and same.attrs["resumed_images"] == 2

    # force with another identity discards exactly the old parts (2 images x rows + predictions) and says so
    model = BoxFake()
    df = engine.run_experiment(ds, model, ["loose_box"], out, progress=False, force=True)
    assert set(df.prompt_mode) == {"loose_box[b=0.2]"} and model.encodes == 2
    assert df.attrs["discarded_parts"] == 4 and df.attrs["computed_images"] == 2


class PointsOnlyFake(BoxFake):
    """A model that, like the custom model, decodes 4 extreme points only and has one output."""

    name = "pointsfake"
    supported_modes = frozenset({"extreme_points"})
    multimask_outputs = 1


def test_unsupported_modes_and_selections_fail_before_any_image_is_read(tmp_path):
    ds = make_dataset(tmp_path, 1)
    read = []
    loader = lambda rec: read.append(rec.image_id)  # noqa: E731 - counts image reads
    for modes, mm, what in ((["tight_box", "extreme_points"], ["single"], r"\['tight_box'\]"),
                            (["extreme_points"], ["best_of_3"], "best_of_3")):
        with pytest.raises(ValueError, match=what):
            engine.run_experiment(ds, PointsOnlyFake(), modes, tmp_path / "o", multimask=mm,
                                  image_loader=loader, progress=False)
        with pytest.raises(ValueError, match=what):
            engine.process_image(ds.images[1], ds.instances, PointsOnlyFake(), modes, multimask=mm,
                                 image_loader=loader)
    assert read == [] and not (tmp_path / "o").exists()
    ok = engine.run_experiment(ds, PointsOnlyFake(), ["extreme_points"], tmp_path / "o", multimask=["single"],
                               progress=False)
    assert (ok.status == "ok").all() and len(ok) == 3


def test_changed_annotations_invalidate_only_that_image(tmp_path):
    ds = make_dataset(tmp_path, 2)
    out = tmp_path / "out"
    engine.run_experiment(ds, BoxFake(), ["tight_box"], out, progress=False)
    insts = [t.with_(rle=encode_rle(_rect(5, 30, 4, 30))) if t.ann_id == 20 else t for t in ds.instances]
    ds2 = Dataset(name=ds.name, images=ds.images, categories=ds.categories, instances=insts)
    model = BoxFake()
    df = engine.run_experiment(ds2, model, ["tight_box"], out, progress=False)
    assert model.encodes == 1 and (df[df.ann_id == 20].iou == 1.0).all()


# ------------------------------------------------------------------------------ real model (slow)
@pytest.mark.slow
def test_litemedsam_end_to_end_on_one_tiny_image(tmp_path):
    from samstudy.models import build_model

    ds = make_dataset(tmp_path, 1)
    model = build_model("litemedsam")
    cache = EmbeddingCache(tmp_path / "cache")
    df = engine.run_experiment(ds, model, ["tight_box", "clicks[start=click,max_clicks=2]"],
                                          tmp_path / "out", cache, progress=False)
    assert (df.status == "ok").all() and df.model.eq("litemedsam").all()
    assert not df.model_label.str.fullmatch("SAM.*").any()
    assert df.iou.between(0, 1).all() and len(df) == 3 * 2 + 3 * 2
    assert cache.size_bytes() >= 256 * 64 * 64 * 4  # one float32 (1, 256, 64, 64) embedding
    warm = engine.run_experiment(ds, model, ["tight_box", "clicks[start=click,max_clicks=2]"],
                                            tmp_path / "out2", cache, progress=False)
    pd.testing.assert_frame_equal(_comparable(df), _comparable(warm))



class OneOutputClicker(BoxFake):
    """Like the custom arm: extreme points then corrective clicks, one output per prompt."""

    name = "oneclicker"
    supported_modes = frozenset({"extreme_points", "clicks"})
    multimask_outputs = 1


def test_click_sequences_of_a_one_output_model_default_to_single(tmp_path):
    """The config accepted the custom arm as a foundation model with clicks (one output: 'single'),
    then the engine refused it at run time with its own default, first_best_of_3: one rule now."""
    from samstudy.models.base import default_click_selections

    assert default_click_selections(OneOutputClicker) == ("single",)
    assert default_click_selections(BoxFake) == ("first_best_of_3",)
    ds = make_dataset(tmp_path, 1)
    df = engine.run_experiment(ds, OneOutputClicker(), ["clicks[start=extreme_points,max_clicks=2]"],
                               tmp_path / "o", multimask=["single"], progress=False)
    assert (df.status == "ok").all() and set(df.multimask) == {"single"} and set(df.click) == {0, 1, 2}
    boxed = engine.run_experiment(ds, BoxFake(), ["clicks[start=box,max_clicks=1]"], tmp_path / "b", progress=False)
    assert set(boxed.multimask) == {"first_best_of_3"}
