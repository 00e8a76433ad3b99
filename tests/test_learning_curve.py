"""The learning curve of the custom model and the fine-tuned foundation arm: the ``learning_curve``
config section and stage, the crossing point of the fitted power law with a zero-shot reference,
the tables (per arm), the figure, and the per-(fraction, seed) train + score loop on tiny synthetic
discs (the foundation arm: the tiny random SAM of ``test_finetune``).

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

from samstudy.cache import EmbeddingCache
from samstudy.config import ConfigError, load_config
from samstudy.custom.learning import (OBJECT_COLUMNS, RUN_COLUMNS, LearningCurve, crossing_n, crossing_table,
                                      finetune_learning_config, fit_power_law, fit_table, fraction_summary,
                                      learning_config, run_folder, run_learning_curve, subsample_train,
                                      zero_shot_reference)
from samstudy.data import Dataset, ImageRecord, Instance
from samstudy.masks import encode_rle, mask_box_xyxy
from samstudy.pipeline import stage_parameters, validate_parameters
from samstudy.results import PRIMARY
from samstudy.stages import STAGES, RunLayout, config_stages
from test_finetune import TINY_NAME, tiny_ckpt, tiny_config, tiny_registered  # noqa: F401 (fixtures)

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


def test_finetune_arm_without_the_finetune_section_is_an_error(tmp_path):
    path, msg = _error(tmp_path, "learning_curve: {enabled: true, finetune: true}\n")
    assert str(path) in msg and "learning_curve.finetune" in msg and "finetune.enabled" in msg
    _, off = _load(tmp_path, "learning_curve: {finetune: true}\n")  # the section off: nothing to check
    assert off.learning_curve.finetune and not off.learning_curve.enabled
    _, cfg = _load(tmp_path, "learning_curve: {enabled: true}\n")
    assert cfg.learning_curve.finetune is False  # off by default


def test_finetune_arm_parameters_are_the_finetune_sections(tmp_path):
    _, cfg = _load(tmp_path, "learning_curve: {enabled: true, finetune: true, seeds: [4]}\n"
                             "finetune: {enabled: true, models: [{name: litemedsam}], epochs: 2, minutes: 1.5, "
                             "options: {batch_size: 4, lr: 0.0003}}\n")
    stage = next(s for s in config_stages(cfg) if s.name == "learning_curve")
    p = stage_parameters(cfg, stage, RunLayout(tmp_path / "r"))
    assert p["finetune"] is True and p["finetune_models"] == [{"name": "litemedsam", "checkpoint": None, "options": {}}]
    assert (p["finetune_epochs"], p["finetune_minutes"], p["finetune_options"]) == (2, 1.5, {"batch_size": 4, "lr": 0.0003})
    assert p["device"] == "cpu" and p["cache_dir"] is None and p["minutes"] == 4.0  # the custom runs keep theirs
    validate_parameters(Path(__file__).parents[1] / "lib/samstudy/notebooks" / stage.notebook, p)  # all in its cell
    # notebook 09's construction: box prompts, the section's schedule, the run's seed
    ft = finetune_learning_config(p["finetune_models"][0], {**p["finetune_options"], "seed": 99}, 4, p["device"],
                                  p["finetune_minutes"], p["finetune_epochs"])
    assert (ft.model, ft.checkpoint, ft.prompt, ft.epochs, ft.max_minutes, ft.seed) == ("litemedsam", None, "box", 2, 1.5, 4)
    assert (ft.batch_size, ft.lr, ft.device) == (4, 0.0003, "cpu")
    # without the arm the notebook still gets every parameter (defined in its cell), switched off
    _, plain = _load(tmp_path, "learning_curve: {enabled: true}\n")
    assert stage_parameters(plain, stage, RunLayout(tmp_path / "r"))["finetune"] is False


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
    runs = pd.DataFrame({"dataset": "d", "arm": "custom_stage2", "n_train_objects": n, "mIoU": 1 - 2.0 * n ** -0.5})
    runs = pd.concat([runs, pd.DataFrame({"dataset": ["flat"] * 2, "arm": "custom_stage2", "n_train_objects": [50.0, 50.0],
                                          "mIoU": [0.5, 0.6]})])
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
    objects = pd.DataFrame({"dataset": "d", "arm": "c", "fraction": 0.5, "seed": [0, 0, 1, 1, 1],
                            "image_id": [1, 2, 1, 2, 3], "ann_id": [1, 2, 1, 2, 3], "iou": [0.2, 0.6, 0.4, 0.8, 0.1]})
    runs = pd.DataFrame({"dataset": "d", "arm": "c", "fraction": 0.5, "seed": [0, 1], "n_train_objects": [10, 14]})
    s = fraction_summary(LearningCurve(runs, objects), n_boot=200).iloc[0]
    # object 3 is scored by one seed only: left out; objects 1, 2 average to 0.3 and 0.7
    assert s["test_objects"] == 2 and s["mIoU"] == pytest.approx(0.5) and s["n_train_objects"] == 12
    assert s["ci_lo"] <= s["mIoU"] <= s["ci_hi"] and s["seeds"] == 2


def test_tables_per_arm_by_hand():
    """Two arms on one test set: one summary row per (arm, fraction), one power law per arm, and each
    arm's crossing with each zero-shot reference."""
    # fraction_summary: arm c, seeds 0/1 on objects 1, 2 -> (0.2+0.4)/2 = 0.3, (0.6+0.8)/2 = 0.7, mean 0.5;
    # arm f, seed 0 only -> mean(0.9, 0.5) = 0.7; every arm has its own n_train_objects
    objects = pd.DataFrame({"dataset": "d", "arm": ["c"] * 4 + ["f"] * 2, "fraction": 0.5, "seed": [0, 0, 1, 1, 0, 0],
                            "image_id": [1, 2, 1, 2, 1, 2], "ann_id": [1, 2, 1, 2, 1, 2],
                            "iou": [0.2, 0.6, 0.4, 0.8, 0.9, 0.5]})
    runs = pd.DataFrame({"dataset": "d", "arm": ["c", "c", "f"], "fraction": 0.5, "seed": [0, 1, 0],
                         "n_train_objects": [10, 14, 9]})
    s = fraction_summary(LearningCurve(runs, objects), n_boot=200).set_index("arm")
    assert list(s.index) == ["c", "f"] and list(s["seeds"]) == [2, 1] and list(s["test_objects"]) == [2, 2]
    assert s.loc["c", "mIoU"] == pytest.approx(0.5) and s.loc["f", "mIoU"] == pytest.approx(0.7)
    assert (s.loc["c", "n_train_objects"], s.loc["f", "n_train_objects"]) == (12.0, 9.0)
    # fit_table: arm c follows 1 - 2 n^-0.5, arm f 1 - 1/n exactly
    nc, nf = np.array([100.0, 400.0, 1600.0]), np.array([5.0, 20.0, 50.0])
    runs = pd.DataFrame({"dataset": "d", "arm": ["c"] * 3 + ["f"] * 3, "n_train_objects": np.r_[nc, nf],
                         "mIoU": np.r_[1 - 2.0 * nc ** -0.5, 1 - 1.0 / nf]})
    fits = fit_table(runs, target_n=10_000, n_boot=100)
    assert list(fits["arm"]) == ["c", "f"] and list(fits["runs"]) == [3, 3]
    f = fits.set_index("arm")
    assert (f.loc["c", "a"], f.loc["c", "b"]) == (pytest.approx(2.0), pytest.approx(0.5))
    assert (f.loc["f", "a"], f.loc["f", "b"]) == (pytest.approx(1.0), pytest.approx(1.0))
    assert f.loc["c", "projection"] == pytest.approx(0.98) and f.loc["f", "projection"] == pytest.approx(0.9999)
    assert (f.loc["f", "n_min"], f.loc["f", "n_max"]) == (5.0, 50.0)
    # crossings: c reaches 0.9 at (2 / 0.1)^2 = 400 and 0.99 at (2 / 0.01)^2 = 40,000; f at 1 / 0.1 = 10 and 100
    refs = pd.DataFrame({"dataset": "d", "model_label": ["A", "B"], "mIoU": [0.9, 0.99]})
    c = crossing_table(fits, refs).set_index(["arm", "reference"])
    assert len(c) == 4
    assert c.loc[("c", "A"), "crossing_n"] == pytest.approx(400.0) and c.loc[("c", "A"), "where"] == "within the measured range"
    assert c.loc[("c", "B"), "crossing_n"] == pytest.approx(40_000) and c.loc[("c", "B"), "where"] == "extrapolated, beyond target_n"
    assert c.loc[("f", "A"), "crossing_n"] == pytest.approx(10.0) and c.loc[("f", "A"), "where"] == "within the measured range"
    assert c.loc[("f", "B"), "crossing_n"] == pytest.approx(100.0) and c.loc[("f", "B"), "where"] == "extrapolated, within target_n"


def _figure_tables(arms):
    runs = pd.concat([pd.DataFrame({"arm": arm, "arm_label": arm.upper(), "prompt_mode": mode, "seed": [0, 1, 0, 1],
                                    "n_train_objects": [10, 11, 40, 41], "mIoU": np.array([0.5, 0.52, 0.7, 0.69]) + shift})
                      for arm, mode, shift in arms])
    summary = pd.concat([pd.DataFrame({"arm": arm, "n_train_objects": [10.5, 40.5], "mIoU": [0.51 + shift, 0.695 + shift],
                                       "ci_lo": [0.45 + shift, 0.65 + shift], "ci_hi": [0.55 + shift, 0.74 + shift]})
                         for arm, _, shift in arms])
    fits = pd.DataFrame([{"arm": arm, "a": 1.6 - shift, "b": 0.5, "n_min": 10, "n_max": 41, "target_n": 1000,
                          "projection": 0.95, "ci_lo": 0.9, "ci_hi": 0.97} for arm, _, shift in arms])
    return runs, summary, fits


def test_learning_curve_figure_one_colour_per_arm():
    from matplotlib.colors import to_rgb

    from samstudy import plots

    runs, summary, fits = _figure_tables([("custom_stage2", "extreme_points", 0.0), ("m_ft-box", "tight_box", 0.1)])
    refs = pd.DataFrame({"model_label": ["Z"], "prompt_mode": ["tight_box"], "mIoU": [0.8]})
    crossings = pd.DataFrame({"arm": ["custom_stage2", "m_ft-box"], "reference": ["Z", "Z"], "crossing_n": [64.0, 30.0]})
    fig = plots.learning_curve(runs, summary, fits, refs, crossings)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylim() == (0.0, 1.0) and ax.get_xlim()[1] >= 1000
    styles = [ln.get_linestyle() for ln in ax.get_lines()]
    assert "-" in styles and "--" in styles and "-." in styles and ":" in styles  # fit, extrapolation, reference, crossing
    blue, orange = (tuple(c) for c in plots.palette(2))
    # seeds: one scatter per arm, in its colour; the fit and the crossing line in the arm's colour too
    seeds = [tuple(to_rgb(c.get_facecolor()[0])) for c in ax.collections if len(c.get_offsets()) == 4]
    assert seeds == [pytest.approx(blue), pytest.approx(orange)]
    for colour in (blue, orange):
        mine = {ln.get_linestyle() for ln in ax.get_lines() if to_rgb(ln.get_color()) == pytest.approx(colour)}
        assert {"-", "--", ":"} <= mine
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("CUSTOM_STAGE2, extreme_points") for t in labels)
    assert any(t.startswith("M_FT-BOX, tight_box") for t in labels)
    assert sum("power law" in t for t in labels) == 2 and any("Z, zero-shot" in t for t in labels)
    # one arm, no fit, no reference: still a figure
    one, s1, _ = _figure_tables([("custom_stage2", "extreme_points", 0.0)])
    plots.learning_curve(one, s1)


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


def _world(tmp_path: Path) -> tuple[Dataset, Dataset, Path, Path]:
    """8 train and 3 test images of discs, a stand-in train file (its bytes key the training folders), the output folder."""
    data_file = tmp_path / "train.json"
    data_file.write_text("the train split")
    return (_discs(tmp_path / "train", "discs-train", 1, 8, seed=0), _discs(tmp_path / "test", "discs-test", 100, 3, seed=1),
            data_file, tmp_path / "learning_curve")


def _check_runs_score_their_subset(curve: LearningCurve, train: Dataset, test: Dataset) -> None:
    """Every run trained and validated on exactly its subset's objects, scored every test object, and its
    mIoU (inside its CI) is the mean of its own object rows."""
    for r in curve.runs.itertuples():
        assert r.n_train_objects + r.n_val_objects == len(subsample_train(train, r.fraction, r.seed).instances)
        assert r.test_objects == len(test.instances) and 0.0 <= r.ci_lo <= r.mIoU <= r.ci_hi <= 1.0
        o = curve.objects
        mine = o[(o["arm"] == r.arm) & (o["fraction"] == r.fraction) & (o["seed"] == r.seed)]
        assert r.mIoU == pytest.approx(mine["iou"].mean())


def test_loop_trains_each_run_in_its_folder_scores_test_and_resumes(tmp_path):
    train, test, data_file, out = _world(tmp_path)

    def make_config(seed):
        return learning_config(TINY, seed, "cpu", minutes=5.0, epochs=1)

    def run():
        return run_learning_curve(train, [test], make_config, [0.5, 1.0], [0], out, data_file, n_boot=200)

    curve = run()
    runs = curve.runs
    assert list(runs.columns) == RUN_COLUMNS and len(runs) == 2 and set(runs["fraction"]) == {0.5, 1.0}
    assert set(runs["arm"]) == {"custom_stage2"} and set(runs["prompt_mode"]) == {"extreme_points"}
    assert list(curve.objects.columns) == OBJECT_COLUMNS and set(curve.objects["arm"]) == {"custom_stage2"}
    assert not list(out.rglob("finetune"))  # no fine-tuned arm asked for: none trained
    _check_runs_score_their_subset(curve, train, test)  # nothing from outside the subset
    for r in runs.itertuples():
        sub = subsample_train(train, r.fraction, r.seed)
        meta = json.loads(next(run_folder(out, r.fraction, r.seed).glob("training-*/train_meta.json")).read_text())
        assert set(meta["val_image_ids"]) <= set(sub.images) and not set(meta["val_image_ids"]) & set(test.images)
        assert r.epochs_done == 1 and Path(r.checkpoint).parent.parent == run_folder(out, r.fraction, r.seed)
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


def test_loop_with_the_finetuned_arm_trains_both_on_the_same_subset(tmp_path, tiny_ckpt, tiny_registered):
    """Per (fraction, seed) the custom model and the fine-tuned foundation arm (tiny random SAM) train
    on the same subset, each with its validation part inside it, and are scored on the test split."""
    train, test, data_file, out = _world(tmp_path)

    def run(cache):
        return run_learning_curve(train, [test], lambda s: learning_config(TINY, s, "cpu", minutes=5.0, epochs=1),
                                  [0.5, 1.0], [0], out, data_file, n_boot=200,
                                  finetune_config=lambda s: tiny_config(tiny_ckpt, epochs=1, seed=s), cache=cache)

    cache = EmbeddingCache(tmp_path / "cache")
    curve = run(cache)
    runs, ft_arm = curve.runs, f"{TINY_NAME}_ft-box"
    assert list(runs.columns) == RUN_COLUMNS and list(curve.objects.columns) == OBJECT_COLUMNS
    # both arms' rows per (fraction, seed), each with its prompt
    assert sorted(zip(runs["arm"], runs["fraction"], runs["seed"])) == [
        ("custom_stage2", 0.5, 0), ("custom_stage2", 1.0, 0), (ft_arm, 0.5, 0), (ft_arm, 1.0, 0)]
    assert dict(zip(runs["arm"], runs["prompt_mode"])) == {"custom_stage2": "extreme_points", ft_arm: "tight_box"}
    assert runs[runs["arm"] == ft_arm]["arm_label"].nunique() == 1 and "sha256" not in runs["arm_label"].iloc[-1]
    _check_runs_score_their_subset(curve, train, test)  # the same subset for both arms
    for r in runs[runs["arm"] == ft_arm].itertuples():
        sub = subsample_train(train, r.fraction, r.seed)
        ckpt = Path(r.checkpoint)
        assert ckpt.name == "finetuned.pth" and run_folder(out, r.fraction, r.seed) / "finetune" in ckpt.parents
        meta = json.loads((ckpt.parent / "train_meta.json").read_text())
        val = set(meta["val_image_ids"])
        assert meta["dataset"] == sub.name and val and val <= set(sub.images) and not val & set(test.images)
        # trained on exactly the subset's objects minus its validation part (the objects on the validation images)
        assert r.n_val_objects == sum(i.image_id in val for i in sub.instances)
        assert r.n_train_objects == sum(i.image_id not in val for i in sub.instances)
        assert meta["n_train_images"] == len(sub.images) - len(val) and r.epochs_done == 1
    # every image encoded once over both runs' training and scoring: the 8 train and 3 test images
    assert cache.stats.misses == len(train.images) + len(test.images)
    fits = fit_table(runs, 1000, n_boot=100)
    assert list(zip(fits["arm"], fits["runs"])) == [("custom_stage2", 2), (ft_arm, 2)]
    assert set(fraction_summary(curve, n_boot=100)["arm"]) == {"custom_stage2", ft_arm}

    # a rerun trains, scores and encodes nothing again: same checkpoints, same table
    stamps = {p: p.stat().st_mtime_ns for p in [*out.rglob("*.pt"), *out.rglob("*.pth")]}
    assert sum(p.suffix == ".pth" for p in stamps) == 2
    again_cache = EmbeddingCache(tmp_path / "cache")
    again = run(again_cache)
    assert {p: p.stat().st_mtime_ns for p in [*out.rglob("*.pt"), *out.rglob("*.pth")]} == stamps
    assert again_cache.stats.misses == 0
    pd.testing.assert_frame_equal(again.runs, runs)
