"""The custom model's learning curve: the ``learning_curve`` config section and stage, the crossing
point of the fitted power law with a zero-shot reference, the tables, the figure, and the
per-(fraction, seed) train + score loop on tiny synthetic discs.

Expected values come from hand computation (``1 - 2 / sqrt(n) = 0.9`` at ``n = 400``) or from
properties the loop must keep (objects trained + validated = the subset's objects, validation
images inside the subset and never in test, a resumed loop trains nothing again).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from samstudy.config import ConfigError, load_config
from samstudy.custom.learning import (RUN_COLUMNS, LearningCurve, crossing_n, crossing_table, fit_power_law,
                                      fit_table, fraction_summary, learning_config, run_folder, run_learning_curve,
                                      subsample_train, zero_shot_reference)
from samstudy.data import Dataset, ImageRecord, Instance
from samstudy.masks import encode_rle, mask_box_xyxy
from samstudy.pipeline import stage_parameters
from samstudy.results import PRIMARY
from samstudy.stages import STAGES, RunLayout, config_stages

torch.set_num_threads(1)  # the machine is shared: one thread, as the custom trainer uses

BASE = """\
name: t
data: {source: synthetic, limit_images: 4}
foundation:
  models: [{name: litemedsam}]
  modes: [tight_box]
custom: {enabled: true, minutes: 4.0}
compare: {n_boot: 200}
"""


def _load(tmp_path: Path, extra: str, base: str = BASE) -> tuple[Path, object]:
    path = tmp_path / "study.yaml"
    path.write_text(base + extra)
    return path, load_config(path)


def _error(tmp_path: Path, extra: str, base: str = BASE) -> tuple[Path, str]:
    path = tmp_path / "study.yaml"
    path.write_text(base + extra)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return path, str(e.value)


# ---------------------------------------------------------------------------------------- config
def test_section_is_off_by_default_with_the_documented_defaults(tmp_path):
    _, cfg = _load(tmp_path, "")
    lc = cfg.learning_curve
    assert not lc.enabled and lc.fractions == (0.1, 0.25, 0.5, 1.0) and lc.seeds == (0, 1, 2)
    assert lc.epochs is None and lc.minutes is None and lc.target_n == 860_001
    assert "learning_curve" not in [s.name for s in config_stages(cfg)]


@pytest.mark.parametrize("section, key, words", [
    ("{fractions: [0.1, 1.5]}", "learning_curve.fractions", "(0, 1]"),
    ("{fractions: [0.0, 0.5]}", "learning_curve.fractions", "(0, 1]"),
    ("{fractions: [0.5]}", "learning_curve.fractions", "at least 2 distinct"),
    ("{fractions: [0.5, 0.5]}", "learning_curve.fractions", "at least 2 distinct"),
    ("{fractions: [0.1, half]}", "learning_curve.fractions[1]", "'half'"),
    ("{seeds: [0, 0]}", "learning_curve.seeds", "distinct"),
    ("{seeds: [-1]}", "learning_curve.seeds", ">= 0"),
    ("{epochs: 0}", "learning_curve.epochs", ">= 1"),
    ("{epochs: 2.5}", "learning_curve.epochs", "expected int"),
    ("{minutes: 0}", "learning_curve.minutes", "> 0"),
    ("{target_n: -5}", "learning_curve.target_n", "> 0"),
    ("{enabled: maybe}", "learning_curve.enabled", "'maybe'"),
    ("{epochz: 3}", "learning_curve.epochz", "unknown key"),
])
def test_bad_section_names_file_and_field(tmp_path, section, key, words):
    path, msg = _error(tmp_path, f"learning_curve: {section}\n")
    assert str(path) in msg and key in msg and words in msg, msg


def test_enabling_without_the_custom_model_is_an_error(tmp_path):
    path, msg = _error(tmp_path, "learning_curve: {enabled: true}\n", BASE.replace("enabled: true", "enabled: false"))
    assert str(path) in msg and "learning_curve.enabled" in msg and "custom.enabled" in msg


def test_enabled_stage_runs_after_data_with_the_custom_options(tmp_path):
    _, cfg = _load(tmp_path, "learning_curve: {enabled: true, fractions: [0.5, 1.0], seeds: [3]}\n")
    stage = next(s for s in config_stages(cfg) if s.name == "learning_curve")
    assert stage.deps == ("data",) and stage.needs_custom and stage.notebook == "09_learning_curve.ipynb"
    p = stage_parameters(cfg, stage, RunLayout(tmp_path / "r"))
    assert p["fractions"] == [0.5, 1.0] and p["seeds"] == [3] and p["epochs"] is None
    assert p["minutes"] == 4.0  # minutes: null -> custom.minutes
    assert p["foundation_dir"] == str(tmp_path / "r" / "foundation") and p["data_dir"] == str(tmp_path / "r" / "data")
    _, cfg2 = _load(tmp_path, "learning_curve: {enabled: true, minutes: 1.5, epochs: 2}\n")
    p2 = stage_parameters(cfg2, stage, RunLayout(tmp_path / "r"))
    assert p2["minutes"] == 1.5 and p2["epochs"] == 2
    # off: the stage is not planned, and the other stages keep their order
    _, off = _load(tmp_path, "")
    assert [s.name for s in config_stages(off)] == [s.name for s in config_stages(cfg) if s.name != "learning_curve"]


def test_run_config_is_the_train_custom_construction_with_the_run_seed():
    cfg = learning_config({"crop_size": 32, "seed": 99, "epochs": 7}, seed=2, device="cpu", minutes=1.5)
    assert (cfg.crop_size, cfg.seed, cfg.epochs, cfg.max_minutes, cfg.device) == (32, 2, 7, 1.5, "cpu")
    assert learning_config({"epochs": 7}, seed=0, device="cpu", minutes=1.0, epochs=3).epochs == 3


# ------------------------------------------------------------------------------ crossing point
def test_crossing_n_hand_computed():
    # 1 - 2 n^-0.5 = 0.9  <=>  sqrt(n) = 2 / 0.1 = 20  <=>  n = 400
    assert crossing_n(2.0, 0.5, 0.9) == pytest.approx(400.0)
    # 1 - 0.5 n^-1 = 0.75  <=>  n = 0.5 / 0.25 = 2
    assert crossing_n(0.5, 1.0, 0.75) == pytest.approx(2.0)
    assert crossing_n(2.0, 0.0, 0.9) is None and crossing_n(2.0, -0.1, 0.9) is None  # no gain from data
    assert crossing_n(2.0, 0.5, 1.0) is None  # the law only tends to 1


@pytest.mark.parametrize("a, b, level", [(0.8, 0.2, 0.5), (3.0, 0.35, 0.76), (0.4, 0.05, 0.7)])
def test_crossing_n_is_where_the_fit_reaches_the_level(a, b, level):
    n = crossing_n(a, b, level)
    assert 1 - a * n ** -b == pytest.approx(level)
    assert 1 - a * (0.99 * n) ** -b < level < 1 - a * (1.01 * n) ** -b  # below before, above after


def test_fit_on_exact_power_law_recovers_it_and_the_crossing():
    n = np.array([100.0, 400.0, 1600.0, 6400.0])
    fit = fit_power_law(n, 1 - 2.0 * n ** -0.5, target_n=10_000, n_boot=200)
    assert (fit.a, fit.b) == (pytest.approx(2.0), pytest.approx(0.5))
    assert fit.projection == pytest.approx(1 - 2.0 / 100) and fit.ci == (pytest.approx(0.98), pytest.approx(0.98))
    assert crossing_n(fit.a, fit.b, 0.9) == pytest.approx(400.0)


def test_fit_and_crossing_tables():
    n = np.array([100.0, 400.0, 1600.0])
    runs = pd.DataFrame({"dataset": "d", "n_train_objects": n, "mIoU": 1 - 2.0 * n ** -0.5})
    runs = pd.concat([runs, pd.DataFrame({"dataset": ["flat"] * 2, "n_train_objects": [50.0, 50.0], "mIoU": [0.5, 0.6]})])
    fits = fit_table(runs, target_n=10_000, n_boot=100)
    d, flat = fits.set_index("dataset").loc["d"], fits.set_index("dataset").loc["flat"]
    assert d["a"] == pytest.approx(2.0) and d["b"] == pytest.approx(0.5) and (d["n_min"], d["n_max"]) == (100, 1600)
    assert math.isnan(flat["a"]) and "distinct" in flat["note"]  # one size: no law, and says why
    refs = pd.DataFrame({"dataset": ["d", "d", "d", "d", "flat"], "model_label": ["A", "B", "C", "D", "E"],
                         "mIoU": [0.85, 0.9, 0.99, 0.995, 0.5]})
    c = crossing_table(fits, refs).set_index("reference")
    # 1 - 2/sqrt(n) = level  <=>  n = (2 / (1 - level))^2: 177.8, 400, 40000, 160000
    assert c.loc["A", "crossing_n"] == pytest.approx((2 / 0.15) ** 2) and c.loc["A", "where"] == "within the measured range"
    assert c.loc["B", "crossing_n"] == pytest.approx(400.0)
    assert c.loc["C", "crossing_n"] == pytest.approx(40_000) and c.loc["C", "where"] == "extrapolated, beyond target_n"
    assert c.loc["D", "where"] == "extrapolated, beyond target_n" and "E" not in c.index  # no fit: no crossing


def test_zero_shot_reference_uses_the_curves_objects_and_primary_tight_box():
    def row(model, ann, iou, mode="tight_box", gt=PRIMARY, status="ok"):
        return {"dataset": "d", "image_id": ann // 10, "ann_id": ann, "model": model, "model_label": model.upper(),
                "prompt_mode": mode, "multimask": "single", "click": 0, "gt_variant": gt, "status": status,
                "iou": iou, "checkpoint_sha256": "x"}
    found = pd.DataFrame([row("m", 10, 0.2), row("m", 11, 0.4), row("m", 20, 0.9),  # 20 is not a curve object
                          row("m", 10, 0.0, mode="loose_box[b=0.2]"), row("m", 11, 0.0, gt="raw"),
                          row("m", 12, 0.0, status="skipped"), row("n", 10, 0.5), row("n", 11, 0.7)])
    objects = pd.DataFrame({"dataset": "d", "fraction": 1.0, "seed": 0, "image_id": [1, 1, 1], "ann_id": [10, 11, 12],
                            "iou": 0.5})
    ref = zero_shot_reference(found, objects, "tight_box").set_index("model")
    assert ref.loc["m", "mIoU"] == pytest.approx(0.3) and ref.loc["m", "objects"] == 2
    assert ref.loc["n", "mIoU"] == pytest.approx(0.6)
    assert zero_shot_reference(found, objects, None).empty and zero_shot_reference(pd.DataFrame(), objects, "tight_box").empty


def test_fraction_summary_averages_seeds_per_object():
    objects = pd.DataFrame({"dataset": "d", "fraction": 0.5, "seed": [0, 0, 1, 1, 1],
                            "image_id": [1, 2, 1, 2, 3], "ann_id": [1, 2, 1, 2, 3], "iou": [0.2, 0.6, 0.4, 0.8, 0.1]})
    runs = pd.DataFrame({"dataset": "d", "fraction": 0.5, "seed": [0, 1], "n_train_objects": [10, 14]})
    s = fraction_summary(LearningCurve(runs, objects), n_boot=200).iloc[0]
    # object 3 is scored by one seed only: left out; objects 1, 2 average to 0.3 and 0.7
    assert s["test_objects"] == 2 and s["mIoU"] == pytest.approx(0.5) and s["n_train_objects"] == 12
    assert s["ci_lo"] <= s["mIoU"] <= s["ci_hi"] and s["seeds"] == 2


def test_learning_curve_figure():
    from samstudy import plots

    runs = pd.DataFrame({"seed": [0, 1, 0, 1], "n_train_objects": [10, 11, 40, 41], "mIoU": [0.5, 0.52, 0.7, 0.69]})
    summary = pd.DataFrame({"n_train_objects": [10.5, 40.5], "mIoU": [0.51, 0.695], "ci_lo": [0.45, 0.65], "ci_hi": [0.55, 0.74]})
    fit = {"a": 1.6, "b": 0.5, "n_min": 10, "n_max": 41, "target_n": 1000, "projection": 0.95, "ci_lo": 0.9, "ci_hi": 0.97}
    refs = pd.DataFrame({"model_label": ["Z"], "prompt_mode": ["tight_box"], "mIoU": [0.8]})
    fig = plots.learning_curve(runs, summary, fit, refs, pd.DataFrame({"reference": ["Z"], "crossing_n": [64.0]}))
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylim() == (0.0, 1.0) and ax.get_xlim()[1] >= 1000
    styles = [ln.get_linestyle() for ln in ax.get_lines()]
    assert "-" in styles and "--" in styles and "-." in styles and ":" in styles  # fit, extrapolation, reference, crossing
    plots.learning_curve(runs, summary)  # no fit, no reference: still a figure


# ------------------------------------------------------------------------------ the loop itself
def _disc(h: int, w: int, cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _discs(folder: Path, name: str, first_id: int, n_images: int, seed: int) -> Dataset:
    """Bright, non-overlapping discs (2 per image) on a dark noisy background: trivially learnable."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    images, instances = {}, []
    for i in range(first_id, first_id + n_images):
        img = rng.integers(0, 40, (48, 64, 3), dtype=np.uint8)
        for k, cx in enumerate((16.0, 46.0)):  # left and right half: never touching
            m = _disc(48, 64, cx + rng.uniform(-3, 3), 24 + rng.uniform(-8, 8), rng.uniform(5, 9))
            img[m] = rng.integers(180, 256, 3)
            instances.append(Instance(image_id=i, ann_id=10 * i + k, category_id=1, category="disc", rle=encode_rle(m),
                                      area=int(m.sum()), box_xyxy=tuple(mask_box_xyxy(m))))
        path = folder / f"{i:03d}.png"
        cv2.imwrite(str(path), img[:, :, ::-1])
        images[i] = ImageRecord(image_id=i, file_name=path.name, path=path, height=48, width=64)
    return Dataset(name=name, images=images, categories={1: "disc"}, instances=instances)


TINY = dict(init="scratch", crop_size=32, widths1=(8, 8, 16, 16), widths2=(4, 4, 8, 8), batch_size=8, stage2_patch=32,
            lr=5e-3, num_threads=1)


def test_loop_trains_each_run_in_its_folder_scores_test_and_resumes(tmp_path):
    train = _discs(tmp_path / "train", "discs-train", 1, 8, seed=0)
    test = _discs(tmp_path / "test", "discs-test", 100, 3, seed=1)
    data_file = tmp_path / "train.json"
    data_file.write_text("the train split")
    out = tmp_path / "learning_curve"

    def make_config(seed):
        return learning_config(TINY, seed, "cpu", minutes=5.0, epochs=1)

    def run():
        return run_learning_curve(train, [test], make_config, [0.5, 1.0], [0], out, data_file, n_boot=200)

    curve = run()
    runs = curve.runs
    assert list(runs.columns) == RUN_COLUMNS and len(runs) == 2 and set(runs["fraction"]) == {0.5, 1.0}
    for r in runs.itertuples():
        sub = subsample_train(train, r.fraction, r.seed)
        # trained + validation objects are the subset's objects: nothing from outside the subset
        assert r.n_train_objects + r.n_val_objects == len(sub.instances)
        meta = json.loads(next(run_folder(out, r.fraction, r.seed).glob("training-*/train_meta.json")).read_text())
        assert set(meta["val_image_ids"]) <= set(sub.images) and not set(meta["val_image_ids"]) & set(test.images)
        assert r.epochs_done == 1 and Path(r.checkpoint).parent.parent == run_folder(out, r.fraction, r.seed)
        assert r.test_objects == len(test.instances) and 0.0 <= r.ci_lo <= r.mIoU <= r.ci_hi <= 1.0
        mine = curve.objects[(curve.objects["fraction"] == r.fraction) & (curve.objects["seed"] == r.seed)]
        assert r.mIoU == pytest.approx(mine["iou"].mean())  # the run's mIoU is its objects' mean
    # half the images: about half the objects trained on
    assert runs.set_index("fraction").loc[0.5, "n_train_objects"] < runs.set_index("fraction").loc[1.0, "n_train_objects"]
    # one seed: the per-fraction mean is the run itself
    summary = fraction_summary(curve, n_boot=200)
    assert np.allclose(summary.sort_values("fraction")["mIoU"], runs.sort_values("fraction")["mIoU"])

    # a rerun (a stage restarted after a crash) trains and scores nothing again: same checkpoints, same table
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    again = run()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == stamps
    pd.testing.assert_frame_equal(again.runs, runs)
