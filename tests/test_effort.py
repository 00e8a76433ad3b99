"""Tests of samstudy.effort against hand-computed seconds, and of the effort config section."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from samstudy import effort
from samstudy.config import ConfigError, EffortConfig, parse_config

COSTS = EffortConfig()  # tight box 35 s, extreme points 7 s, click 1.75 s, polygon 79.2 s
BOX = "clicks[start=box,max_clicks=3]"
CLICK = "clicks[start=click,max_clicks=3]"


def _rows() -> pd.DataFrame:
    """Three objects (two on image 1), three assistants; object (2, 21) is scored by one only."""
    ious = {
        ("M", BOX, "first_best_of_3"): {10: [0.80, 0.86, 0.91, 0.95], 11: [0.90] * 4, 20: [0.1, 0.2, 0.3, 0.4],
                                        21: [0.99] * 4},
        ("M", CLICK, "first_best_of_3"): {10: [0.5, 0.88, 0.92], 11: [0.86, 0.9, 0.9], 20: [0.1] * 3},
        ("C", "extreme_points", "single"): {10: [0.87], 11: [0.95], 20: [0.5]},
    }
    out = []
    for (label, mode, mm), per_obj in ious.items():
        first = 1 if mode == CLICK else 0
        for ann, seq in per_obj.items():
            for k, v in enumerate(seq):
                out.append({"dataset": "d", "image_id": ann // 10, "ann_id": ann, "category": "cat",
                            "size_bucket": "small" if ann == 20 else "large", "area": 100, "model_label": label,
                            "prompt_mode": mode, "multimask": mm, "click": k + first, "iou": v,
                            "gt_variant": "primary", "status": "ok"})
    out.append(dict(out[-1], prompt_mode="tight_box", iou=float("nan"), status="skipped"))  # ignored
    return pd.DataFrame(out)


def _seconds(table, assistant_part, ann, target):
    t = table[table["assistant"].str.contains(assistant_part, regex=False) & (table["ann_id"] == ann)
              & np.isclose(table["target"], target)]
    assert len(t) == 1
    return float(t["seconds"].iloc[0]), int(t["clicks"].iloc[0]), bool(t["reached"].iloc[0])


def test_seconds_by_hand():
    t = effort.effort_table(_rows(), COSTS)
    assert 21 not in set(t["ann_id"])  # not scored by every assistant
    # tight box + clicks: the box reaches 0.85 after 1 click (obj 10), at once (obj 11), never (obj 20)
    assert _seconds(t, "tight box + clicks", 10, 0.85) == pytest.approx((35 + 1.75, 1, True))
    assert _seconds(t, "tight box + clicks", 10, 0.9) == pytest.approx((35 + 2 * 1.75, 2, True))
    assert _seconds(t, "tight box + clicks", 11, 0.9) == pytest.approx((35.0, 0, True))
    assert _seconds(t, "tight box + clicks", 20, 0.85) == pytest.approx((35 + 3 * 1.75 + 79.2, 3, False))
    # clicks only: the first click is click 1 and costs a click; no start cost
    assert _seconds(t, "clicks only", 10, 0.85) == pytest.approx((2 * 1.75, 2, True))
    assert _seconds(t, "clicks only", 11, 0.85) == pytest.approx((1.75, 1, True))
    assert _seconds(t, "clicks only", 20, 0.9) == pytest.approx((3 * 1.75 + 79.2, 3, False))
    # one-shot extreme points (no clicks): 7 s, plus the polygon when below the target
    assert _seconds(t, "C, extreme points", 10, 0.85) == pytest.approx((7.0, 0, True))
    assert _seconds(t, "C, extreme points", 10, 0.9) == pytest.approx((7 + 79.2, 0, False))
    assert _seconds(t, effort.MANUAL, 20, 0.9)[0] == pytest.approx(79.2)
    slower = t[t["slower_than_manual"]]
    assert set(zip(slower["assistant"].str[:4], slower["ann_id"], slower["target"])) >= {("M, t", 20, 0.85)}


def test_click_limit_and_edit_fallback():
    costs = dataclasses.replace(COSTS, max_clicks=1, fallback="edit", edit_s=10.0)
    t = effort.effort_table(_rows(), costs)
    # with one click allowed, object 10 no longer reaches 0.9 from the box (it needed 2)
    assert _seconds(t, "tight box + clicks", 10, 0.9) == pytest.approx((35 + 1.75 + 10.0, 1, False))
    assert _seconds(t, "clicks only", 10, 0.85) == pytest.approx((1.75 + 10.0, 1, False))
    assert _seconds(t, effort.MANUAL, 10, 0.85)[0] == pytest.approx(79.2)  # manual stays the polygon


def test_summary_curve_break_even_and_sensitivity():
    t = effort.effort_table(_rows(), COSTS)
    s = effort.effort_summary(t, np.random.default_rng(0), n_boot=200)
    row = s[(s["target"] == 0.85) & s["assistant"].str.contains("tight box")].iloc[0]
    assert row["n"] == 3 and row["seconds"] == pytest.approx((36.75 + 35 + 119.45) / 3)
    assert row["lo"] <= row["seconds"] <= row["hi"] and row["reached (%)"] == pytest.approx(200 / 3)
    # ranking at 0.85: clicks only (3.5 + 1.75 + 84.45)/3 = 29.9 < extreme points 33.7 < tight 63.7 < manual 79.2
    order = list(s[s["target"] == 0.85]["assistant"])
    assert [o.split(", ")[-1] for o in order] == ["clicks only", "extreme points (no clicks)", "tight box + clicks",
                                                  effort.MANUAL]
    curve = effort.done_curve(t, 0.85, grid=[0.0, 36.75, 200.0])
    tb = curve[curve["assistant"].str.contains("tight box")]
    assert list(tb["share"]) == pytest.approx([0.0, 2 / 3, 1.0])
    be = effort.break_even_table(t, 0.85).set_index(["assistant", "size_bucket"])
    tight = next(a for a in be.index.get_level_values(0) if "tight box" in a)
    assert be.loc[(tight, "small"), "slower than manual (%)"] == pytest.approx(100.0)
    assert be.loc[(tight, "small"), "seconds saved"] == pytest.approx(79.2 - 119.45)
    assert be.loc[(tight, "large"), "slower than manual (%)"] == pytest.approx(0.0)
    sens = effort.sensitivity_table(t, COSTS, 0.85, click_s_grid=[0.0, 1.75], polygon_s_grid=[79.2, 10.0])
    assert len(sens) == 4
    # polygon at 10 s, click 1.75 s: clicks only (3.5 + 1.75 + 15.25)/3 = 6.8 < manual 10 < extreme points
    # (7 + 7 + 17)/3 = 10.3 < tight box (36.75 + 35 + 50.25)/3 = 40.7: the polygon now beats two assistants
    cheap = sens[(sens["click_s"] == 1.75) & (sens["polygon_s"] == 10.0)].iloc[0]["ranking"]
    assert [part.split(" (")[0].split(", ")[-1] for part in cheap.split(" < ")] == \
        ["clicks only", effort.MANUAL, "extreme points", "tight box + clicks"]
    # clicks free, polygon 79.2: clicks only costs (0 + 0 + 79.2)/3 = 26.4, extreme points 33.7
    free = sens[(sens["click_s"] == 0.0) & (sens["polygon_s"] == 79.2)].iloc[0]
    assert free["fastest"].endswith("clicks only") and "(26 s)" in free["ranking"]


def test_prompt_costs_and_labels():
    assert effort.prompt_cost("clicks[start=loose_box,max_clicks=20,b=0.2]", COSTS) == (7.0, 0)
    assert effort.prompt_cost("clicks[start=extreme_points,max_clicks=20]", COSTS) == (7.0, 0)
    assert effort.prompt_cost("box_center_point", COSTS) == (35.0, 1)
    assert effort.prompt_cost(CLICK, COSTS) == (0.0, 0) and effort.prompt_cost("center_point", COSTS) == (0.0, 1)
    assert effort.assistant_label("X", "clicks[start=loose_box,max_clicks=20,b=0.3]", "single") == \
        "X, loose box b=0.3 + clicks"


def _cfg(tmp_path: Path, effort_section: dict):
    (tmp_path / "pyproject.toml").write_text("")
    raw = {"name": "t", "custom": {"enabled": False}, "effort": effort_section}
    return parse_config(raw, tmp_path / "c.yaml")


def test_effort_config_section(tmp_path):
    cfg = _cfg(tmp_path, {"click_s": 3.0, "targets": [0.8]})
    assert cfg.effort.click_s == 3.0 and cfg.effort.targets == (0.8,) and cfg.effort.polygon_s == 79.2
    for bad, msg in [({"clik_s": 1}, "unknown key 'effort.clik_s'"), ({"fallback": "redo"}, "fallback"),
                     ({"targets": [1.5]}, "targets"), ({"click_s": -1}, "must be >= 0"),
                     ({"one_shot_modes": ["nope"]}, "one_shot_modes")]:
        with pytest.raises(ConfigError, match=msg):
            _cfg(tmp_path, bad)


def test_effort_figures_have_one_series_per_assistant():
    from samstudy import plots

    t = effort.effort_table(_rows(), COSTS)
    s = effort.effort_summary(t, np.random.default_rng(0), n_boot=100)
    fig = plots.effort_bars(s, COSTS.polygon_s)
    assert len(fig.axes) == 2 and all(len(ax.patches) == 4 for ax in fig.axes)  # 2 targets x 4 assistants
    fig = plots.done_curves(effort.done_curve(t, 0.9), COSTS.polygon_s, 0.9)
    assert len(fig.axes[0].get_lines()) == 4 + 1  # four curves and the polygon line
