"""The comparison's decisions on hand-made result rows: arms, pairs, and our numbers under the published keys.

Every expected value is computed by hand from the tables below (the arithmetic is written out in
the assertions), not by re-running the code under test.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from samstudy import compare, published
from samstudy.compare import Arm

# Four objects on two images: (dataset, image_id, ann_id, category, size_bucket, area).
OBJECTS = [("d", 1, 1, "a", "small", 500), ("d", 1, 2, "a", "medium", 5000),
           ("d", 2, 3, "b", "large", 20000), ("d", 2, 4, "b", "small", 600)]
LMS, SAMB = "LMS (stand-in, not SAM)", "SAM-B"
C2, C1 = "Custom refined", "Custom stage 1"
# (model, model_label, prompt_mode, multimask) -> IoU of objects 1..4 (None: the object was skipped).
# Foundation rows come first, LMS before SAM-B: "first model" means LMS.
IOU = {
    ("litemedsam", LMS, "tight_box", "single"): [0.5, 0.9, 0.7, 0.3],
    ("litemedsam", LMS, "tight_box", "best_of_3"): [1.0, 1.0, 1.0, 1.0],  # another multimask: never used
    ("litemedsam", LMS, "loose_box[b=0.2]", "single"): [0.4, 0.6, 0.8, None],
    ("litemedsam", LMS, "loose_box[b=0.5]", "single"): [0.2, 0.4, 0.6, 0.2],
    ("litemedsam", LMS, "jitter_box[noise=0.2]", "single"): [0.3, 0.5, 0.7, 0.9],
    ("litemedsam", LMS, "extreme_points", "single"): [0.1, 0.2, 0.3, 0.4],
    ("sam_b", SAMB, "tight_box", "single"): [0.6, 0.6, 0.6, 0.6],
    ("sam_b", SAMB, "loose_box[b=0.2]", "single"): [0.5, 0.5, 0.5, 0.5],
    ("sam_b", SAMB, "jitter_box[noise=0.2]", "single"): [0.0, 0.0, 0.0, 0.0],
    ("custom_stage1", C1, "extreme_points", "single"): [0.8, 0.8, 0.6, 0.6],
    ("custom_stage2", C2, "extreme_points", "single"): [0.9, 0.8, 0.7, 0.6],
}
CUSTOM_MODELS = ("custom_stage1", "custom_stage2")


def _row(obj, model, label, mode, mm, iou, **kw) -> dict:
    ds, img, ann, cat, bucket, area = obj
    return {"dataset": ds, "image_id": img, "ann_id": ann, "category": cat, "size_bucket": bucket, "area": area,
            "tags": "", "model": model, "model_label": label, "prompt_mode": mode, "multimask": mm, "click": 0,
            "gt_variant": "primary", "status": "ok" if iou is not None else "skipped",
            "iou": np.nan if iou is None else iou, **kw}


def _tables() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(foundation rows, custom rows)."""
    rows = [_row(obj, *key, v[k]) for key, v in IOU.items() for k, obj in enumerate(OBJECTS)]
    jitter = ("litemedsam", LMS, "jitter_box[noise=0.2]", "single")
    rows.append(_row(OBJECTS[0], *jitter, 0.0, gt_variant="raw"))  # raw ground truth: not the primary number
    rows.append(_row(OBJECTS[0], *jitter, 0.0, click=1))           # a click row: not a one-shot number
    df = pd.DataFrame(rows)
    custom = df["model"].isin(CUSTOM_MODELS)
    return df[~custom].reset_index(drop=True), df[custom].reset_index(drop=True)


def _study(loose_mode: str = "loose_box[b=0.2]"):
    found, custom = _tables()
    arms = compare.headline_arms(found, custom, "tight_box", loose_mode, "single")
    rows = pd.concat([found, custom], ignore_index=True)
    return found, arms, compare.arm_matrix(rows, arms, "iou")


def _noc() -> pd.DataFrame:
    return pd.DataFrame([
        {"dataset": "grabcut", "model_label": LMS, "prompt_mode": "clicks[start=click,max_clicks=20]", "NoC@90": 3.5},
        {"dataset": "grabcut", "model_label": SAMB, "prompt_mode": "clicks[start=click,max_clicks=20]", "NoC@90": 2.0},
        {"dataset": "berkeley", "model_label": LMS, "prompt_mode": "clicks[start=click,max_clicks=20]", "NoC@90": 4.0},
    ])


# ------------------------------------------------------------------------------------ arms, pairs
def test_headline_arms_refined_custom_first_then_each_models_boxes():
    _, arms, m = _study()
    assert [(a.model, a.prompt_mode, a.kind) for a in arms] == [
        ("custom_stage2", "extreme_points", "custom"), ("custom_stage1", "extreme_points", "custom"),
        ("litemedsam", "tight_box", "tight"), ("litemedsam", "loose_box[b=0.2]", "loose"),
        ("sam_b", "tight_box", "tight"), ("sam_b", "loose_box[b=0.2]", "loose")]
    assert [a.label for a in arms[2:4]] == [f"{LMS}, tight box", f"{LMS}, loose box (b=0.2)"]
    # object 4 is skipped by the LMS loose box: every arm is averaged over objects 1..3
    assert list(m["ann_id"]) == [1, 2, 3]


def test_custom_click_sequences_are_not_headline_arms():
    """A custom click sequence's click 0 is its start (the one-shot arm again): with it in the rows the
    headline and the refined-custom-first order are unchanged."""
    found, custom = _tables()
    seq = "clicks[start=extreme_points,max_clicks=5]"
    extra = pd.DataFrame([_row(obj, "custom_stage2", C2, seq, "single", 0.9, click=c)
                          for obj in OBJECTS for c in (0, 1)])
    arms = compare.headline_arms(found, pd.concat([extra, custom], ignore_index=True), "tight_box",
                                 "loose_box[b=0.2]", "single")
    assert [a for a in arms if a.kind == "custom"] == [a for a in _study()[1] if a.kind == "custom"]


def test_comparison_pairs_follow_the_three_rules():
    _, arms, _ = _study()
    c2, c1, lt, ll, st, sl = (a.label for a in arms)
    assert compare.comparison_pairs(arms) == [
        (c2, lt), (c2, ll), (c2, st), (c2, sl),  # refined custom vs every box arm
        (lt, ll), (st, sl),                      # tight vs loose of the same model only
        (c2, c1),                                # what the refinement stage adds
    ]


def test_comparison_pairs_without_custom_or_without_loose():
    _, arms, _ = _study()
    boxes = [a for a in arms if a.kind != "custom"]
    lt, ll, st, sl = (a.label for a in boxes)
    assert compare.comparison_pairs(boxes) == [(lt, ll), (st, sl)]
    tight_only = [a for a in arms if a.kind != "loose"]
    assert compare.comparison_pairs(tight_only) == [(arms[0].label, lt), (arms[0].label, st),
                                                    (arms[0].label, arms[1].label)]
    assert compare.comparison_pairs([]) == []


def test_loose_buffer_comes_from_the_arms_mode():
    assert compare.loose_buffer(_study()[1]) == pytest.approx(0.2)
    assert compare.loose_buffer(_study("loose_box[b=0.5]")[1]) == pytest.approx(0.5)
    assert compare.loose_buffer([Arm("t", "m", "tight_box", "single", "tight")]) is None


def test_headline_table_is_the_noc_table_without_arms():
    found, arms, m = _study()
    h = compare.headline_table(m, arms, found)
    assert list(h.columns) == ["category", "n"] + [a.label for a in arms]
    assert h.iloc[0]["n"] == 3 and h.iloc[0][arms[0].label] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    # click-only run: 3 clicks on object 1, IoU 0.5, 0.95, 0.95 -> NoC@90 = 2
    clicks = pd.DataFrame([_row(OBJECTS[0], "litemedsam", LMS, "clicks[start=click,max_clicks=3]", "first_best_of_3",
                                v, click=c) for c, v in ((1, 0.5), (2, 0.95), (3, 0.95))])
    h = compare.headline_table(compare.arm_matrix(clicks, []), [], clicks)
    assert len(h) == 1 and h.iloc[0]["NoC@90"] == pytest.approx(2.0) and h.iloc[0]["max_clicks"] == 3


# ------------------------------------------------------------------------ beside published numbers
def test_ours_for_published_maps_each_key_by_hand():
    found, arms, m = _study()
    ours, how = compare.ours_for_published(m, arms, found, _noc(), "single")
    assert ours == pytest.approx({
        "custom": (0.9 + 0.8 + 0.7) / 3,           # refined custom, objects 1..3 (paired)
        "tight_box": (0.5 + 0.9 + 0.7) / 3,        # LMS, the first model (SAM-B's 0.6 does not overwrite)
        "loose_box[b=0.2]": (0.4 + 0.6 + 0.8) / 3,
        "tight_box/small": 0.5,                    # object 1 (object 4 is not in the paired matrix)
        "tight_box/medium": 0.9,
        "tight_box/large": 0.7,
        "jitter_box[noise=0.2]": (0.3 + 0.5 + 0.7 + 0.9) / 4,  # LMS one-shot primary rows; raw/click rows out
        "extreme_points": (0.1 + 0.2 + 0.3 + 0.4) / 4,         # the foundation model's, not the custom one's
        "noc90/grabcut": 3.5,                      # first row per dataset
        "noc90/berkeley": 4.0,
    })
    assert how["custom"] == arms[0].label and how["tight_box/small"] == arms[2].label
    assert how["jitter_box[noise=0.2]"] == f"{LMS}, jitter_box[noise=0.2]"
    assert how["noc90/grabcut"] == f"{LMS}, clicks[start=click,max_clicks=20]"


def test_a_loose_arm_at_another_buffer_is_not_placed_beside_the_published_b02_box():
    found, arms, m = _study("loose_box[b=0.5]")
    ours, how = compare.ours_for_published(m, arms, found, pd.DataFrame(), "single")
    assert "loose_box[b=0.2]" not in ours
    assert ours["loose_box[b=0.5]"] == pytest.approx((0.2 + 0.4 + 0.6 + 0.2) / 4)  # all 4 objects paired now
    assert ours["custom"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.6) / 4)
    t = published.beside_published(ours, "coco", "p", how).set_index("quantity")
    assert np.isnan(t.loc["mIoU, loose box (20% buffer)", "ours"])
    assert t.loc["mIoU, custom model (extreme points + refinement)", "ours"] == pytest.approx(0.75)


def test_ours_for_published_with_nothing_to_report():
    ours, how = compare.ours_for_published(compare.arm_matrix(pd.DataFrame(), []), [], pd.DataFrame(),
                                           pd.DataFrame(), "single")
    assert ours == {} and how == {}


def test_published_keys_are_canonical_prompt_mode_keys():
    from samstudy.prompts import parse_modes

    modes = {p.key.split("/")[0] for p in published.PUBLISHED
             if p.key != published.CUSTOM_KEY and not p.key.startswith(published.NOC90_PREFIX)}
    assert modes == {"tight_box", "loose_box[b=0.2]", "jitter_box[noise=0.2]", "extreme_points"}
    for key in modes:  # our rows carry PromptMode.key, so a published key must be one to ever match
        assert parse_modes([key])[0].key == key


def test_noc90_reference_and_empty_reference():
    ref = published.noc90_reference("isegm")
    assert list(ref["label"]) == ["RITM HRNet18 (COCO+LVIS), GrabCut", "RITM HRNet18 (COCO+LVIS), Berkeley",
                                  "SAM ViT-H, GrabCut", "SAM ViT-H, Berkeley"]
    assert list(ref["noc90"]) == [1.54, 2.26, 1.88, 2.09]
    assert len(published.noc90_reference("coco")) == 0
    assert len(published.beside_published({"custom": 0.5}, "none", "p")) == 0


def test_protocol_for_rows_names_models_and_multimask():
    found, _ = _tables()
    found = found.assign(checkpoint_sha256=found["model"].map({"litemedsam": "ab" * 32, "sam_b": None}))
    s = published.protocol_for_rows(found, [{"name": "demo"}, {"name": "grabcut"}], "fill_holes", "single",
                                    ["policy", "raw"])
    assert "on demo, grabcut;" in s and "single-mask output" in s and "labeling policy 'fill_holes'" in s
    assert f"{LMS} (a medical-image" in s and f"{SAMB} (a medical" not in s  # the note keys on the registry name
    assert "checkpoint sha256 abababababab" in s and SAMB in s and "policy and raw ground truth" in s
    assert "best of 3" in published.protocol_for_rows(found, [{"name": "demo"}], "none", "best_of_3", ["policy"])


# ------------------------------------------------------------------------------------- loading
def test_load_study_rows(tmp_path):
    found, custom = _tables()
    (tmp_path / "f").mkdir()
    (tmp_path / "c").mkdir()
    found.to_parquet(tmp_path / "f" / "rows.parquet")
    custom.to_parquet(tmp_path / "c" / "rows.parquet")
    f, c, rows = compare.load_study_rows(tmp_path / "f", tmp_path / "c")
    assert len(f) == len(found) and len(c) == len(custom) and len(rows) == len(found) + len(custom)
    f, c, rows = compare.load_study_rows(tmp_path / "f", tmp_path / "c", custom_enabled=False)
    assert c is None and len(rows) == len(found)
    assert compare.load_rows(tmp_path / "missing", None, "").empty


def test_analysis_modules_import_neither_report_nor_pipeline():
    code = ("import sys, samstudy.compare, samstudy.published; "
            "print(sorted(m for m in sys.modules if m in ('samstudy.report', 'samstudy.pipeline')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
