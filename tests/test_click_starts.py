"""Click sequences from every start (tight box, loose box, extreme points, a first click): prompt
modes, capability checks and the engine's click 0."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from samstudy import engine
from samstudy.models.base import check_model_modes
from samstudy.prompts import PromptMode, extreme_points, loose_box, make_prompt, parse_modes, tight_box

from test_engine import BoxFake, PointsOnlyFake, make_dataset


def test_start_keys_params_and_required_modes():
    loose = PromptMode("clicks", {"start": "loose_box"})
    assert loose.key == "clicks[start=loose_box,max_clicks=20,b=0.2]"
    assert parse_modes([loose.key])[0] == loose and parse_modes(["clicks[start=loose_box,b=0.3]"])[0].params["buffer"] == 0.3
    # the starts that existed before keep their keys and parameters (result rows and run identities unchanged)
    box = parse_modes(["clicks[start=box,max_clicks=20]"])[0]
    assert box.key == "clicks[start=box,max_clicks=20]" and box.params_json() == '{"max_clicks": 20, "start": "box"}'
    assert PromptMode("clicks").key == "clicks[start=click,max_clicks=20]"
    assert loose.required_modes == {"clicks", "loose_box"}
    assert PromptMode("clicks", {"start": "extreme_points"}).required_modes == {"clicks", "extreme_points"}
    assert PromptMode("clicks").required_modes == {"clicks", "center_point"}
    for bad in ("clicks[start=box,b=0.2]", "clicks[start=loose_box,b=-1]", "clicks[start=scribble]"):
        with pytest.raises(ValueError):
            parse_modes([bad])


def test_start_prompts_are_the_one_shot_prompts():
    m = np.zeros((30, 40), bool)
    m[5:16, 10:31] = True
    m[16:20, 12:14] = True
    p = make_prompt("clicks[start=loose_box,b=0.4]", m, (30, 40))
    np.testing.assert_array_equal(p.box, loose_box(tight_box(m), 0.4, (30, 40)))
    assert p.points is None
    p = make_prompt("clicks[start=extreme_points]", m, (30, 40))
    np.testing.assert_array_equal(p.points, extreme_points(m))
    assert p.box is None and (p.labels == 1).all() and len(p.labels) == 4


class RecordingFake(BoxFake):
    """BoxFake that keeps every prompt it decodes."""

    def __init__(self):
        super().__init__()
        self.prompts = []

    def decode(self, embedding, prompts, multimask=False, mask_inputs=None):
        self.prompts.append(list(prompts))
        return super().decode(embedding, prompts, multimask, mask_inputs)


def test_extreme_point_start_keeps_its_points_before_the_clicks(tmp_path):
    ds = make_dataset(tmp_path, 1)
    model = RecordingFake()
    mode = PromptMode("clicks", {"start": "extreme_points", "max_clicks": 2})
    rows, _ = engine.process_image(ds.images[1], ds.instances, model, [mode], None, click_multimask=["single"])
    df = pd.DataFrame(rows)
    assert sorted(df.click.unique()) == [0, 1, 2] and (df.status == "ok").all()
    first = model.prompts[0]
    for p, inst in zip(first, sorted(ds.instances, key=lambda t: t.ann_id)):
        np.testing.assert_array_equal(p.points, extreme_points(inst.mask()))
        assert p.box is None
    later = model.prompts[1][0]  # click 1 of the first object: 4 extreme points then 1 click
    assert len(later.points) == 5 and (later.labels[:4] == 1).all()
    np.testing.assert_array_equal(later.points[:4], first[0].points)


def test_loose_box_start_click_zero_is_the_loose_box(tmp_path):
    ds = make_dataset(tmp_path, 1)
    mode = PromptMode("clicks", {"start": "loose_box", "max_clicks": 1})
    rows, _ = engine.process_image(ds.images[1], ds.instances, BoxFake(), [mode], None, click_multimask=["single"])
    df = pd.DataFrame(rows)
    rect0 = df[(df.ann_id == 10) & (df.click == 0)].iloc[0]
    # the 16 x 26 rectangle (rows 5..20, cols 4..29) in its b = 0.2 box, filled by the fake to whole pixels:
    # rows floor(3.4)..ceil(22.6) = 20, cols floor(1.4)..ceil(32.6) = 32 -> IoU 416 / 640
    assert rect0.iou == pytest.approx(416 / 640)
    assert rect0.prompt_mode == "clicks[start=loose_box,max_clicks=1,b=0.2]"


class ClickingPointsFake(PointsOnlyFake):
    """Declares extreme points and click sequences, as an arm with corrective clicks would."""

    name = "clickingpoints"
    supported_modes = frozenset({"extreme_points", "clicks"})


def test_a_model_takes_only_the_starts_it_declares(tmp_path):
    ok = parse_modes(["clicks[start=extreme_points,max_clicks=2]"])
    check_model_modes(ClickingPointsFake, ok, ("single",), ("single",))
    for key in ("clicks[start=box]", "clicks[start=loose_box]", "clicks[start=click]"):
        with pytest.raises(ValueError, match="cannot start click sequence"):
            check_model_modes(ClickingPointsFake, parse_modes([key]), ("single",), ("single",))
    with pytest.raises(ValueError, match="does not support prompt mode"):  # no clicks at all
        check_model_modes(PointsOnlyFake, ok, ("single",), ("single",))
    ds = make_dataset(tmp_path, 1)
    df = engine.run_experiment(ds, ClickingPointsFake(), ok, tmp_path / "o", multimask=["single"],
                               click_multimask=["single"], progress=False)
    assert (df.status == "ok").all() and sorted(df.click.unique()) == [0, 1, 2]
