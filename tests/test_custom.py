"""Tests of the custom extreme-point model: crop geometry, input encodings, degenerate-input rules,
training (loss goes down, resume is bit-identical), checkpoint errors, size limits, result rows.

Everything runs on tiny models and tiny synthetic images made here (seconds on a 2-core CPU).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from samstudy.custom.crops import CropSpec, crop_image, crop_mask, crop_spec, paste_back, points_to_crop
from samstudy.custom.model import (MAX_STAGE_BYTES, MAX_STAGE_PARAMS, CheckpointError, CustomConfig, CustomModel,
                                   CustomSegmenter, build_custom_model, load_custom, prepare_inputs, quad_mask,
                                   stage_stats)
from samstudy.custom.train import refine_windows, train_custom
from samstudy.custom.arm import STAGE_MODELS, CustomArm, custom_arms
from samstudy.data import Dataset, ImageRecord, Instance, read_image
from samstudy.engine import run_experiment
from samstudy.metrics import iou as ref_iou
from samstudy.results import ROW_COLUMNS, read_results
from samstudy.masks import encode_rle, mask_box_xyxy
from samstudy.prompts import extreme_points

TINY = dict(init="scratch", crop_size=32, widths1=(8, 8, 16, 16), widths2=(4, 4, 8, 8), batch_size=8, stage2_patch=32,
            lr=5e-3, num_threads=1)


def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


# ----------------------------------------------------------------------------- geometry
def test_crop_paste_round_trip_is_exact_at_scale_one():
    rng = np.random.default_rng(0)
    mask = np.zeros((40, 50), bool)
    mask[10:30, 12:35] = rng.random((20, 23)) > 0.4
    spec = CropSpec(box=np.array([6.0, 5.0, 38.0, 37.0]), points_box=np.array([12.0, 10.0, 35.0, 30.0]),
                    image_hw=(40, 50), rule="margin")
    crop = crop_mask(mask, spec, 32)
    assert np.array_equal(crop > 0.5, mask[5:37, 6:38])
    assert np.array_equal(paste_back(np.where(crop > 0.5, 1.0, -1.0).astype(np.float32), spec), mask)
    # crop pixel (j, i) is image pixel (j + x0, i + y0)
    assert np.allclose(points_to_crop(np.array([[12.0, 10.0]]), spec, 32), [[6.0, 5.0]])


def test_crop_paste_round_trip_up_to_resize_error():
    mask = _disc(120, 160, 80.3, 60.7, 33.0)
    pts = extreme_points(mask)
    spec = crop_spec(pts, mask.shape, margin=0.15)
    for size in (32, 64, 256):  # down- and upsampling
        crop = crop_mask(mask, spec, size)
        back = paste_back((crop - 0.5).astype(np.float32), spec)
        iou = (back & mask).sum() / (back | mask).sum()
        assert iou > (0.95 if size == 32 else 0.98), (size, iou)


def test_window_crop_equals_full_mask_crop():
    mask = _disc(60, 70, 30, 25, 12)
    box = mask_box_xyxy(mask).astype(int)
    window = mask[box[1]:box[3], box[0]:box[2]]
    spec = crop_spec(extreme_points(mask), mask.shape)
    np.testing.assert_allclose(crop_mask(window, spec, 48, (box[0], box[1])), crop_mask(mask, spec, 48), atol=1e-4)


def test_heatmap_peaks_at_the_extreme_points():
    cfg = CustomConfig(**TINY)
    s2 = 2 * cfg.crop_size
    points2 = torch.tensor([[[10.0, 30.0], [50.0, 31.0], [29.0, 8.0], [33.0, 55.0]]])
    pbox = torch.tensor([[10.0, 8.0, 51.0, 56.0]])
    inputs = prepare_inputs(torch.rand(1, 3, s2, s2), points2, pbox, cfg)
    heat2 = inputs["x2"][0, 3]  # channels: RGB, heatmap, quad, affinities
    for x, y in points2[0].long().tolist():
        assert heat2[y, x] == pytest.approx(1.0, abs=1e-6)
        assert heat2[y, x] >= heat2[max(0, y - 2):y + 3, max(0, x - 2):x + 3].max()
    heat1 = inputs["x1"][0, 3]
    for x, y in ((points2[0] + 0.5) / 2 - 0.5).round().long().tolist():
        assert heat1[y, x] > 0.85  # the S-grid point falls between pixels: near 1
    assert heat2[0, s2 - 1] < 1e-3


def test_quad_prior_contains_the_points_and_centre():
    pts = torch.tensor([[[2.0, 10.0], [28.0, 12.0], [14.0, 1.0], [16.0, 30.0]]])
    q = quad_mask(pts, 32)[0, 0]
    for x, y in pts[0].long().tolist():
        assert q[y, x] == 1
    assert q[15, 15] == 1 and q[0, 0] == 0 and q[31, 31] == 0


# ----------------------------------------------------------------------------- degenerate input
def test_collapsed_points_give_a_min_side_square():
    spec = crop_spec(np.full((4, 2), [20.0, 30.0]), (100, 100), min_side=16)
    assert spec.rule == "collapsed_points"
    x0, y0, x1, y1 = spec.box
    assert x1 - x0 == pytest.approx(16) and y1 - y0 == pytest.approx(16)
    assert (x0 + x1) / 2 == pytest.approx(20.5) and (y0 + y1) / 2 == pytest.approx(30.5)  # pixel centre


def test_tiny_object_gets_the_min_side_and_aspect_rules():
    pts = np.array([[10.0, 12.0], [12.0, 12.0], [11.0, 12.0], [11.0, 12.0]])  # 3 x 1 px object
    spec = crop_spec(pts, (50, 50), min_side=16)
    assert spec.rule == "min_side"
    assert spec.box[2] - spec.box[0] >= 16 and spec.box[3] - spec.box[1] >= 16
    thin = crop_spec(np.array([[0.0, 20.0], [99.0, 21.0], [50.0, 19.0], [50.0, 22.0]]), (60, 100), max_aspect=2.0)
    w, h = thin.box[2] - thin.box[0], thin.box[3] - thin.box[1]
    assert w / h <= 2.0 + 1e-9
    assert thin.rule == "margin+padded"


def test_image_smaller_than_crop_is_zero_padded():
    image = np.full((6, 5, 3), 200, np.uint8)
    spec = crop_spec(np.array([[1.0, 3.0], [3.0, 3.0], [2.0, 1.0], [2.0, 4.0]]), (6, 5), min_side=16)
    assert spec.padded and spec.rule.startswith("min_side")
    crop = crop_image(image, spec, 32)
    assert crop.shape == (32, 32, 3) and crop[0, 0].sum() == 0 and crop[16, 16].min() == 200


def test_segmenter_handles_degenerate_inputs_without_crashing():
    seg = CustomSegmenter(build_custom_model(CustomConfig(**TINY)))
    cases = [(np.zeros((40, 40, 3), np.uint8), np.full((4, 2), 7.0)),            # collapsed points
             (np.zeros((5, 7, 3), np.uint8), np.array([[0, 2], [6, 2], [3, 0], [3, 4]], float)),  # tiny image
             (np.zeros((30, 30, 3), np.uint8), np.array([[0, 0], [1, 0], [0, 0], [0, 1]], float))]  # corner
    for image, pts in cases:
        out = seg.predict(image, pts)
        assert out["stage1"].shape == image.shape[:2] and out["stage1"].dtype == bool
        assert out["stage2"].shape == image.shape[:2] and out["stage2"].dtype == bool
        assert out["crop_rule"] in {"collapsed_points+padded", "min_side+padded", "margin+padded",
                                    "collapsed_points", "min_side", "margin"}


def test_flip_tta_is_mirror_equivariant_and_honours_clicks():
    # With the flip average, segmenting the mirrored image with mirrored points and clicks gives the
    # mirrored logits (the two views swap roles); a random model has no symmetry of its own.
    seg = CustomSegmenter(build_custom_model(CustomConfig(**TINY, seed=4)), flip_tta=True)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3)).astype(np.uint8)
    pts = np.array([[10.0, 20.0], [41.0, 25.0], [22.0, 9.0], [30.0, 37.0]])
    clicks = np.array([[25.0, 22.0, 1.0], [15.0, 30.0, 0.0]])
    mirror = lambda p: np.column_stack([63 - p[:, 0], p[:, 1:]])  # noqa: E731  x -> W - 1 - x
    l1, l2, _, _ = seg.predict_logits(image, [pts], clicks_list=[clicks])
    m1, m2, _, _ = seg.predict_logits(image[:, ::-1].copy(), [mirror(pts)[[1, 0, 2, 3]]], clicks_list=[mirror(clicks)])
    np.testing.assert_allclose(m1[0], l1[0][:, ::-1], atol=1e-4)
    np.testing.assert_allclose(m2[0], l2[0][:, ::-1], atol=1e-4)
    plain = CustomSegmenter(seg.model)
    p1, _, _, _ = plain.predict_logits(image, [pts], clicks_list=[clicks])
    q1, _, _, _ = plain.predict_logits(image[:, ::-1].copy(), [mirror(pts)[[1, 0, 2, 3]]], clicks_list=[mirror(clicks)])
    assert np.abs(q1[0] - p1[0][:, ::-1]).max() > 1e-3  # without the average it is not
    np.testing.assert_allclose(l1[0], 0.5 * (p1[0] + q1[0][:, ::-1]), atol=1e-4)


# ----------------------------------------------------------------------------- data for training
def _disc_dataset(tmp: Path, n_images: int = 8, seed: int = 0) -> Dataset:
    """Bright discs on a dark noisy background: trivially learnable."""
    rng = np.random.default_rng(seed)
    images, instances = {}, []
    ann = 1
    for i in range(1, n_images + 1):
        h, w = 48, 64
        img = rng.integers(0, 40, (h, w, 3), dtype=np.uint8)
        for _ in range(2):
            m = _disc(h, w, rng.uniform(14, w - 14), rng.uniform(14, h - 14), rng.uniform(5, 11))
            img[m] = rng.integers(180, 256, 3)
            rle = encode_rle(m)
            instances.append(Instance(image_id=i, ann_id=ann, category_id=1, category="disc", rle=rle,
                                      area=int(m.sum()), box_xyxy=tuple(mask_box_xyxy(m)), tags=("disc",)))
            ann += 1
        path = tmp / f"{i:03d}.png"
        cv2.imwrite(str(path), img[:, :, ::-1])
        images[i] = ImageRecord(image_id=i, file_name=path.name, path=path, height=h, width=w)
    # later discs may cover earlier ones: recompute visible masks (one owner per pixel)
    owner = {}
    for inst in instances:
        owner.setdefault(inst.image_id, []).append(inst)
    fixed = []
    for image_id, insts in owner.items():
        cover = np.zeros((48, 64), bool)
        for inst in reversed(insts):
            m = inst.mask() & ~cover
            cover |= inst.mask()
            if m.any():
                fixed.append(inst.with_(rle=encode_rle(m), area=int(m.sum()), box_xyxy=tuple(mask_box_xyxy(m))))
    return Dataset(name="discs", images=images, categories={1: "disc"}, instances=sorted(fixed, key=lambda t: t.ann_id))


@pytest.fixture(scope="module")
def discs(tmp_path_factory) -> Dataset:
    return _disc_dataset(tmp_path_factory.mktemp("discs"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {f"{s}.{k}": v for s in ("stage1", "stage2") for k, v in state[s].items()}


# ----------------------------------------------------------------------------- training
def test_training_reduces_loss_and_resume_is_identical(discs, tmp_path):
    cfg = CustomConfig(**TINY, epochs=6, seed=3)
    full = tmp_path / "full"
    best = train_custom(discs, cfg, full, val_fraction=0.25, progress=False)
    curve = pd.read_csv(full / "curve.csv")
    assert list(curve.epoch) == [1, 2, 3, 4, 5, 6]
    assert curve.train_loss.iloc[-1] < 0.8 * curve.train_loss.iloc[0]
    assert best == full / "best.pt" and best.exists()

    killed = tmp_path / "killed"
    train_custom(discs, cfg, killed, val_fraction=0.25, progress=False, stop_after_epochs=2)  # "killed"
    assert len(pd.read_csv(killed / "curve.csv")) == 2
    train_custom(discs, cfg, killed, val_fraction=0.25, progress=False)  # resumes at epoch 3
    a, b = _weights(full / "last.pt"), _weights(killed / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed = pd.read_csv(killed / "curve.csv")
    pd.testing.assert_frame_equal(resumed.drop(columns="seconds"), curve.drop(columns="seconds"))

    # The flip average is chosen on validation once training is done: the plain score is the one the
    # training loop recorded for the best epoch, and loading follows the recorded choice.
    import json
    meta = torch.load(best, map_location="cpu", weights_only=True)["meta"]
    rec = meta["flip_tta"]
    assert rec == json.loads((full / "train_meta.json").read_text())["flip_tta"]
    assert rec["val_miou_stage2_plain"] == pytest.approx(meta["best"]["val_miou_stage2"], abs=1e-6)
    assert rec["chosen"] == (rec["val_miou_stage2_flip"] > rec["val_miou_stage2_plain"])
    assert load_custom(best).flip_tta == rec["chosen"] and not load_custom(best, flip_tta=False).flip_tta
    assert torch.load(killed / "best.pt", map_location="cpu", weights_only=True)["meta"]["flip_tta"] == rec


def test_refine_windows_sit_on_the_boundary_and_cut_the_target_where_the_logits_are():
    cfg = CustomConfig(**TINY, seed=0)  # R = 64, windows of 32
    model = build_custom_model(cfg).eval()
    r, b = cfg.refine_size, 3
    yy, xx = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    radii = torch.tensor([10.0, 18.0, 26.0])[:, None, None]
    target = (((yy - 30.0) ** 2 + (xx - 34.0) ** 2) < radii ** 2).float()[:, None]  # (3, 1, 64, 64) discs
    base1 = F.avg_pool2d(target, cfg.refine_scale) * 8 - 4  # stage 2's input agrees with the ground truth
    rgb = torch.rand(b, 3, r, r, generator=torch.Generator().manual_seed(0))
    pts = torch.tensor([[20.0, 30.0], [48.0, 30.0], [34.0, 16.0], [34.0, 44.0]]).expand(b, 4, 2)
    inputs = prepare_inputs(rgb, pts, torch.tensor([[16.0, 16.0, 52.0, 48.0]]).expand(b, 4), cfg)
    logits2, window = refine_windows(model, inputs, base1, target, np.random.default_rng(0))
    assert logits2.shape == window.shape == (b, 1, cfg.stage2_patch, cfg.stage2_patch)
    # each window is centred on a boundary pixel, so it holds object and background
    assert all(w.min() == 0 and w.max() == 1 for w in window)
    # logits and target are cut at the same place: an untrained stage 2 (zero head = identity) gives the
    # upsampled input logits, so some window position matches both
    up = F.interpolate(base1, size=(r, r), mode="bilinear", align_corners=False)
    p = cfg.stage2_patch
    for i in range(b):
        assert any(torch.equal(target[i, :, y:y + p, x:x + p], window[i]) and
                   torch.allclose(up[i, :, y:y + p, x:x + p], logits2[i].detach())
                   for y in range(r - p + 1) for x in range(r - p + 1))
    whole = CustomConfig(**{**TINY, "stage2_patch": 64})
    logits2, same = refine_windows(build_custom_model(whole).eval(), inputs, base1, target, np.random.default_rng(0))
    assert same is target and logits2.shape == target.shape


def test_stage2_trained_on_deformed_ground_truth_is_deterministic(discs, tmp_path):
    cfg = CustomConfig(**TINY, epochs=2, seed=1, stage2_perturb=0.5)
    a = _weights(train_custom(discs, cfg, tmp_path / "a", val_fraction=0.25, progress=False))
    b = _weights(train_custom(discs, cfg, tmp_path / "b", val_fraction=0.25, progress=False))
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = _weights(train_custom(discs, CustomConfig(**TINY, epochs=2, seed=1), tmp_path / "c",
                                  val_fraction=0.25, progress=False))
    assert not torch.equal(a["stage2.head.weight"], plain["stage2.head.weight"])
    with pytest.raises(ValueError, match="stage2_perturb"):
        CustomConfig(stage2_perturb=1.5)


def test_time_budget_stops_training_without_bending_the_schedule(discs, tmp_path, monkeypatch):
    """A budget-stopped run is the prefix of the unstopped one: same learning rates, same losses."""
    import json

    import samstudy.custom.train as train_mod

    cfg = CustomConfig(**TINY, epochs=4, seed=5)
    train_custom(discs, cfg, tmp_path / "full", val_fraction=0.25, progress=False)
    full = pd.read_csv(tmp_path / "full" / "curve.csv")
    spe = json.loads((tmp_path / "full" / "train_meta.json").read_text())["steps_per_epoch"]

    clock = {"t": 0.0}  # a fake clock: one second per training step, nothing else takes time
    real_step = train_mod._train_step

    def step_and_tick(*args, **kwargs):
        clock["t"] += 1.0
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_train_step", step_and_tick)
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock["t"])
    budget_s = 2 * spe + 0.5  # ends early in epoch 3
    train_custom(discs, CustomConfig(**{**TINY, "epochs": 4, "seed": 5, "max_minutes": budget_s / 60}),
                 tmp_path / "cut", val_fraction=0.25, progress=False)
    cut = pd.read_csv(tmp_path / "cut" / "curve.csv")
    assert len(cut) < len(full)
    cols = ["epoch", "step", "train_loss", "lr", "val_miou_stage1", "val_miou_stage2"]
    pd.testing.assert_frame_equal(cut[cols].iloc[:2], full[cols].iloc[:2])
    # the cut run is marked in its manifest and its checkpoint; the full one is not
    meta_cut = json.loads((tmp_path / "cut" / "train_meta.json").read_text())
    meta_full = json.loads((tmp_path / "full" / "train_meta.json").read_text())
    assert meta_cut["budget_limited"] is True and meta_full["budget_limited"] is False
    assert load_custom(tmp_path / "cut" / "best.pt").meta["budget_limited"] is True
    assert load_custom(tmp_path / "full" / "best.pt").meta["budget_limited"] is False


def test_budget_counts_training_steps_only_and_too_small_a_budget_gives_the_step_time(discs, tmp_path, monkeypatch):
    """Set-up (image decoding, model building) is outside the budget; a budget shorter than one
    epoch is an error that states the measured seconds per step, and leaves no half-written best.pt."""
    import json

    import samstudy.custom.train as train_mod

    clock = {"t": 0.0}
    real_collect, real_step = train_mod.collect_objects, train_mod._train_step

    def slow_setup(*args, **kwargs):  # set-up takes "an hour" of the fake clock
        clock["t"] += 3600.0
        return real_collect(*args, **kwargs)

    def step_and_tick(*args, **kwargs):
        clock["t"] += 2.0  # two seconds per training step
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "collect_objects", slow_setup)
    monkeypatch.setattr(train_mod, "_train_step", step_and_tick)
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock["t"])
    # a budget of 100 steps runs its 2 epochs despite the hour of set-up
    ok = train_custom(discs, CustomConfig(**{**TINY, "epochs": 2, "batch_size": 4, "max_minutes": 200 / 60}), tmp_path / "ok",
                      val_fraction=0.25, progress=False)
    meta = json.loads((tmp_path / "ok" / "train_meta.json").read_text())
    assert ok.exists() and meta["epochs_done"] == 2 and meta["budget_limited"] is False
    assert meta["setup_seconds"] >= 3600 and meta["train_seconds"] < 3600
    spe = meta["steps_per_epoch"]
    assert spe >= 2
    with pytest.raises(train_mod.BudgetTooSmallError, match=r"2\.000 s per training step") as err:
        train_custom(discs, CustomConfig(**{**TINY, "epochs": 2, "batch_size": 4, "max_minutes": (spe - 1) * 2.0 / 60}),
                     tmp_path / "small", val_fraction=0.25, progress=False)
    assert f"of {spe} steps ran" in str(err.value)
    assert not (tmp_path / "small" / "best.pt").exists()


def test_resume_with_another_config_names_the_file(discs, tmp_path):
    train_custom(discs, CustomConfig(**TINY, epochs=1), tmp_path, progress=False)
    with pytest.raises(ValueError, match="last.pt.*margin"):
        train_custom(discs, CustomConfig(**{**TINY, "margin": 0.3}, epochs=1), tmp_path, progress=False)


def test_custom_arms_are_scored_by_the_engine_like_every_model(discs, tmp_path):
    best = train_custom(discs, CustomConfig(**TINY, epochs=1), tmp_path / "t", progress=False)
    seg = load_custom(best)
    frames = [run_experiment(discs, arm, ["extreme_points"], tmp_path / arm.name, multimask=["single"],
                             progress=False) for arm in custom_arms(seg)]
    df = pd.concat(frames, ignore_index=True)
    assert tuple(df.columns) == ROW_COLUMNS
    assert set(df.model) == {m for m, _ in STAGE_MODELS.values()}
    assert set(df.prompt_mode) == {"extreme_points"} and (df.multimask == "single").all()
    assert len(df) == 2 * len(discs.instances) and (df.status == "ok").all()
    assert df.checkpoint_sha256.eq(seg.checkpoint_sha256).all() and df.pred_iou.isna().all()
    # each row's IoU is the IoU of the model's own prediction from the DEXTR points, at full resolution
    by_id = {t.ann_id: t for t in discs.instances}
    for r in df.sample(6, random_state=0).itertuples():
        gt = by_id[r.ann_id].mask()
        image = read_image(discs.images[r.image_id].path)
        pred = seg.predict(image, extreme_points(gt))["stage1" if r.model == "custom_stage1" else "stage2"]
        assert r.iou == pytest.approx(ref_iou(pred, gt), abs=1e-12)
    assert read_results(tmp_path / "custom_stage2", predictions=True).shape[0] == len(discs.instances)


def test_custom_arm_refuses_modes_and_selections_it_cannot_decode(discs, tmp_path):
    with torch.random.fork_rng(devices=[]):
        arm = CustomArm(CustomSegmenter(build_custom_model(CustomConfig(**TINY))), stage=2)
    for modes, multimask, what in ((["tight_box"], ["single"], "tight_box"),
                                   (["extreme_points"], ["single", "best_of_3"], "best_of_3")):
        with pytest.raises(ValueError, match=what):
            run_experiment(discs, arm, modes, tmp_path / "never", multimask=multimask, progress=False)
    assert not (tmp_path / "never").exists()  # refused before anything was read or written


# ----------------------------------------------------------------------------- checkpoints and size
def test_corrupt_or_mismatched_checkpoint_errors_name_the_file(discs, tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_custom(bad)
    with pytest.raises(CheckpointError, match="missing.pt"):
        load_custom(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt.*not a custom-model checkpoint"):
        load_custom(foreign)
    best = train_custom(discs, CustomConfig(**TINY, epochs=1), tmp_path / "t", progress=False)
    state = torch.load(best, map_location="cpu", weights_only=True)
    state["config"]["widths1"] = [8, 16, 16, 32]  # weights no longer fit the architecture
    mismatched = tmp_path / "mismatched.pt"
    torch.save(state, mismatched)
    with pytest.raises(CheckpointError, match="mismatched.pt.*stage1"):
        load_custom(mismatched)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(best.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_custom(truncated)


@pytest.mark.parametrize("init", ["scratch", "litemedsam_stem"])
def test_default_stages_fit_the_size_limits(init):
    with torch.random.fork_rng(devices=[]):
        model = CustomModel(CustomConfig(init=init))  # no pretrained file needed to count
    stats = stage_stats(model)
    for stage in ("stage1", "stage2"):
        assert stats[stage]["params"] <= MAX_STAGE_PARAMS
        assert stats[stage]["bytes"] <= MAX_STAGE_BYTES


def test_mirror_rule_is_one_for_numpy_and_torch_and_an_involution():
    # make_sample (numpy, training) and flip_views (torch, inference) share one mirror rule.
    from samstudy.custom.model import mirror_box, mirror_extreme_points, mirror_x
    pts = np.array([[3.0, 10.0], [20.0, 12.0], [9.0, 2.0], [11.0, 25.0]])  # left, right, top, bottom
    box = np.array([3.0, 2.0, 21.0, 26.0])  # edges
    clicks = np.array([[5.0, 6.0, 1.0], [30.0, 7.0, 0.0]])
    r = 32
    m = mirror_extreme_points(pts, r)
    np.testing.assert_array_equal(m, [[11.0, 12.0], [28.0, 10.0], [22.0, 2.0], [20.0, 25.0]])  # by hand
    np.testing.assert_array_equal(mirror_box(box, r), [11.0, 2.0, 29.0, 26.0])
    np.testing.assert_array_equal(mirror_x(clicks, r), [[26.0, 6.0, 1.0], [1.0, 7.0, 0.0]])
    for f, a in ((mirror_extreme_points, pts), (mirror_box, box), (mirror_x, clicks)):
        np.testing.assert_array_equal(f(f(a, r), r), a)  # mirroring twice is the identity
        np.testing.assert_array_equal(f(torch.from_numpy(a), r).numpy(), f(a, r))  # torch = numpy
    assert pts[0, 0] == 3.0 and box[0] == 3.0 and clicks[0, 0] == 5.0  # inputs untouched


def test_square_max_filter_equals_the_square_pool_and_scipy():
    # Two 1-D passes give the square window's max exactly (max is order-free), borders included.
    from scipy.ndimage import maximum_filter

    from samstudy.custom.model import square_max_filter
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 3, 37, 29)).astype(np.float32))
    for r in (1, 3, 8):
        got = square_max_filter(x, r)
        assert torch.equal(got, F.max_pool2d(x, 2 * r + 1, 1, r))
        ref = maximum_filter(x.numpy(), size=(1, 1, 2 * r + 1, 2 * r + 1), mode="constant", cval=-np.inf)
        np.testing.assert_array_equal(got.numpy(), ref)


def test_quad_prior_is_orientation_free():
    pts = torch.tensor([[[2.0, 10.0], [28.0, 12.0], [14.0, 1.0], [16.0, 30.0]]])
    mirrored = pts[:, [1, 0, 2, 3]].clone()  # left/right swapped (as after a flip without reorder)
    assert torch.equal(quad_mask(pts, 32), quad_mask(mirrored, 32))


def test_flipped_training_sample_keeps_point_order(discs):
    from samstudy.custom.train import collect_objects, make_sample

    objs, images, _ = collect_objects(discs)
    cfg = CustomConfig(**TINY)
    for seed in range(6):  # some draws flip
        s = make_sample(objs[0], images[objs[0].image_id], cfg, np.random.default_rng(seed))
        left, right, top, bottom = s["points"]
        assert left[0] <= right[0] and top[1] <= bottom[1]
        ys, xs = np.nonzero(s["mask"] > 0.5)
        tol = 0.25 * (xs.max() - xs.min())  # jitter moves points a few image px along the edge
        assert abs(left[0] - xs.min()) <= tol and abs(right[0] - xs.max()) <= tol


# ----------------------------------------------------------------------------- corrective clicks
def test_click_maps_peak_at_clicks_and_ignore_padding():
    from samstudy.custom.model import click_maps

    clicks = torch.tensor([[[10.0, 20.0, 1.0], [40.0, 5.0, 0.0], [0.0, 0.0, -1.0]]])  # pos, neg, padding
    maps = click_maps(clicks, 1, 64, 2.0, 1, clicks)
    assert maps.shape == (1, 2, 64, 64)
    assert maps[0, 0, 20, 10] == pytest.approx(1.0) and maps[0, 1, 5, 40] == pytest.approx(1.0)
    assert maps[0, 0, 0, 0] < 1e-6 and maps[0, 1, 0, 0] < 1e-6  # the padding row draws nothing
    assert maps[0, 0, 5, 40] < 1e-6 and maps[0, 1, 20, 10] < 1e-6  # each label in its own map
    assert torch.count_nonzero(click_maps(None, 2, 16, 2.0, 1, clicks)) == 0


def test_simulated_training_clicks_sit_on_errors_with_the_right_label(discs):
    from samstudy.custom.train import collect_objects, make_batch, make_sample, simulate_clicks

    cfg = CustomConfig(**TINY)
    objects, images, _ = collect_objects(discs)
    rng = np.random.default_rng(0)
    batch = make_batch([make_sample(o, images[o.image_id], cfg, rng) for o in objects[:6]], rng, torch.device("cpu"))
    model = build_custom_model(cfg).eval()
    clicks, prev, _ = simulate_clicks(model, batch, cfg, 1)
    assert clicks.shape == (6, 1, 3) and prev.shape == (6, 1, cfg.refine_size, cfg.refine_size)
    gt = batch["mask2"][:, 0] > 0.5
    pred = prev[:, 0] > 0
    placed = 0
    for i, (x, y, label) in enumerate(clicks[:, 0].tolist()):
        if label < 0:  # no error left
            assert torch.equal(gt[i], pred[i])
            continue
        placed += 1
        x, y = int(x), int(y)
        assert bool(gt[i, y, x]) == (label == 1.0) and bool(pred[i, y, x]) != bool(gt[i, y, x])
    assert placed > 0


def test_a_click_at_a_wrongly_predicted_pixel_flips_it(discs, tmp_path):
    """On a tiny trained model, each RITM click of a 3-click session (through the arm, with the
    previous logits as mask input, as the engine drives it) makes its pixel right."""
    from samstudy.clicks import ClickSimulator
    from samstudy.prompts import Prompt

    best = train_custom(discs, CustomConfig(**TINY, epochs=2), tmp_path / "t", progress=False)
    seg = load_custom(best)
    image_id = sorted(discs.images)[0]
    image = read_image(discs.images[image_id].path)
    inst = next(t for t in discs.instances if t.image_id == image_id)
    gt = inst.mask()
    ext = extreme_points(gt)
    for stage in (1, 2):
        arm = CustomArm(seg, stage)
        emb = arm.encode(image)
        dec = arm.decode(emb, [Prompt(mode="extreme_points", points=ext, labels=np.ones(4, np.int64))])
        r = seg.config.refine_size
        assert dec.low_res_logits.shape == (1, 1, r, r)
        sim, pred, low = ClickSimulator(gt), dec.masks[0, 0], dec.low_res_logits
        flipped = 0
        for _ in range(3):
            click = sim.next(pred)
            if click is None:
                break
            assert pred[click.y, click.x] != gt[click.y, click.x]
            prompt = Prompt(mode="clicks", points=np.concatenate([ext, sim.points]),
                            labels=np.concatenate([np.ones(4, np.int64), sim.labels]))
            dec = arm.decode(emb, [prompt], mask_inputs=low)
            pred, low = dec.masks[0, 0], dec.low_res_logits
            assert pred[click.y, click.x] == gt[click.y, click.x]
            flipped += 1
        assert flipped > 0 or (pred == gt).all()


def test_custom_arm_refuses_a_click_session_without_extreme_points(discs):
    from samstudy.prompts import Prompt

    with torch.random.fork_rng(devices=[]):
        arm = CustomArm(CustomSegmenter(build_custom_model(CustomConfig(**TINY))), stage=2)
    assert "clicks" in arm.supported_modes and "extreme_points" in arm.supported_modes
    image = read_image(discs.images[sorted(discs.images)[0]].path)
    with pytest.raises(ValueError, match="4 positive extreme points"):
        arm.decode(arm.encode(image), [Prompt(mode="clicks", points=np.array([[5.0, 5.0]]), labels=np.ones(1, np.int64))])


# ----------------------------------------------------------------------------- learning curve
def test_power_law_fit_recovers_a_known_curve_and_brackets_its_projection():
    from samstudy.custom.learning import fit_power_law

    n = np.repeat([200.0, 500.0, 1000.0, 2000.0], 3)
    exact = 1 - 0.9 * n ** -0.3
    fit = fit_power_law(n, exact, target_n=100_000, n_boot=200)
    assert fit.a == pytest.approx(0.9, rel=1e-9) and fit.b == pytest.approx(0.3, rel=1e-9)
    truth = 1 - 0.9 * 100_000 ** -0.3
    assert fit.projection == pytest.approx(truth, abs=1e-9) and fit.predict(1000.0) == pytest.approx(exact[6])
    noisy = exact + np.random.default_rng(1).normal(0, 0.005, n.size)
    fit2 = fit_power_law(noisy * 0 + n, noisy, target_n=100_000, n_boot=500, seed=2)
    assert fit2.ci[0] < truth < fit2.ci[1] and fit2.ci[1] - fit2.ci[0] > 0
    assert fit2.n_range == (200.0, 2000.0)
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law([100, 100], [0.5, 0.6], 1000)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        fit_power_law([100, 200], [0.5, 1.0], 1000)


def test_subsample_train_is_seeded_and_keeps_whole_images(discs):
    from samstudy.custom.learning import subsample_train

    a, b = subsample_train(discs, 0.5, seed=1), subsample_train(discs, 0.5, seed=1)
    assert sorted(a.images) == sorted(b.images) and len(a.images) == 4
    assert {t.ann_id for t in a.instances} == {t.ann_id for t in discs.instances if t.image_id in a.images}
    assert sorted(subsample_train(discs, 0.5, seed=2).images) != sorted(a.images) or len(discs.images) < 3
    assert len(subsample_train(discs, 1.0, seed=0).images) == len(discs.images)


def test_refinement_and_click_gain_tables_match_hand_computed_means():
    from samstudy.custom.evaluate import click_gain_table, refinement_gain_table

    base = dict(dataset="d", status="ok", gt_variant="primary")
    rows = []
    for ann, (img, i1, i2, b1, b2) in enumerate([(1, 0.5, 0.7, 0.3, 0.5), (1, 0.6, 0.6, 0.4, 0.4), (2, 0.8, 0.7, 0.6, 0.7)]):
        rows += [dict(base, image_id=img, ann_id=ann, model="custom_stage1", prompt_mode="extreme_points", click=0,
                      iou=i1, boundary_iou=b1),
                 dict(base, image_id=img, ann_id=ann, model="custom_stage2", prompt_mode="extreme_points", click=0,
                      iou=i2, boundary_iou=b2)]
        for k, v in enumerate([i2, i2 + 0.1, i2 + 0.15]):
            rows.append(dict(base, image_id=img, ann_id=ann, model="custom_stage2",
                             prompt_mode="clicks[start=extreme_points,max_clicks=2]", click=k, iou=v, boundary_iou=v))
    df = pd.DataFrame(rows)
    gain = refinement_gain_table(df, np.random.default_rng(0), n_boot=200).set_index("metric")
    assert gain.loc["iou", "diff"] == pytest.approx((0.2 + 0.0 - 0.1) / 3)
    assert gain.loc["boundary_iou", "diff"] == pytest.approx((0.2 + 0.0 + 0.1) / 3)
    assert gain.loc["iou", "better"] == pytest.approx(1 / 3) and gain.loc["iou", "worse"] == pytest.approx(1 / 3)
    assert gain.loc["iou", "ci_lo"] <= gain.loc["iou", "diff"] <= gain.loc["iou", "ci_hi"]
    clicks = click_gain_table(df, np.random.default_rng(0), n_boot=200, clicks=(1, 2, 3)).set_index("clicks")
    assert list(clicks.index) == [1, 2]  # no rows at click 3
    assert clicks.loc[1, "diff"] == pytest.approx(0.1) and clicks.loc[2, "diff"] == pytest.approx(0.15)


@pytest.mark.slow
def test_gpu_config_is_at_the_published_scale_and_trains_on_cpu_at_a_tiny_crop(discs, tmp_path):
    """configs/coco-gpu.yaml: ~9M parameters per stage (published scale, under the size limits),
    256 px crops; the exact same networks train one epoch on CPU with the crop shrunk to 32 px."""
    import yaml

    options = yaml.safe_load((Path(__file__).parents[1] / "configs" / "coco-gpu.yaml").read_text())["custom"]["options"]
    cfg = CustomConfig.from_dict(options)
    assert cfg.crop_size == 256 and cfg.refine_size == 512
    with torch.random.fork_rng(devices=[]):
        stats = stage_stats(build_custom_model(cfg))
    for stage in ("stage1", "stage2"):
        assert 8_000_000 <= stats[stage]["params"] <= MAX_STAGE_PARAMS
        assert stats[stage]["bytes"] <= MAX_STAGE_BYTES
    tiny = CustomConfig.from_dict({**options, "device": "cpu", "crop_size": 32, "stage2_patch": 32,
                                   "heatmap_sigma": 2.0, "batch_size": 4, "epochs": 1, "num_threads": 1})
    best = train_custom(discs, tiny, tmp_path, progress=False)
    seg = load_custom(best)
    assert stage_stats(seg.model) == stats  # sizes do not depend on the crop
    out = seg.predict(read_image(discs.images[1].path), extreme_points(discs.instances[0].mask()))
    assert out["stage2"].shape == discs.instances[0].mask().shape
