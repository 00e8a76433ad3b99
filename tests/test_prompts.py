"""Tests of box/point prompts against hand-computed values and mask properties."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy import ndimage

from samstudy.clicks import next_click
from samstudy.prompts import (
    DEFAULT_MODES, Prompt, PromptMode, extreme_points, extreme_points_box, interior_point,
    jitter_box, loose_box, make_prompt, parse_modes, tight_box,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ random masks
@st.composite
def masks(draw, max_side: int = 40) -> np.ndarray:
    """Non-empty ``bool (H, W)`` masks: unions of random rectangles and ellipses."""
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    rr, cc = np.indices((h, w))
    mask = np.zeros((h, w), bool)
    for _ in range(draw(st.integers(1, 3))):
        r0, c0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        r1, c1 = draw(st.integers(r0, h - 1)), draw(st.integers(c0, w - 1))
        if draw(st.booleans()):
            mask[r0:r1 + 1, c0:c1 + 1] = True
        else:
            cy, cx = (r0 + r1) / 2, (c0 + c1) / 2
            ry, rx = (r1 - r0) / 2 + 0.5, (c1 - c0) / 2 + 0.5
            mask |= ((rr - cy) / ry) ** 2 + ((cc - cx) / rx) ** 2 <= 1.0
    if not mask.any():  # a tiny ellipse can miss every pixel centre
        mask[draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))] = True
    return mask


def rect_mask(hw, rows, cols) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return m


# --------------------------------------------------------------------------------- tight box
@FAST
@given(masks())
def test_tight_box_contains_mask_and_touches_all_sides(mask):
    x0, y0, x1, y1 = tight_box(mask)
    rows, cols = np.nonzero(mask)
    assert tight_box(mask).dtype == np.float64
    assert rows.min() >= y0 and rows.max() < y1 and cols.min() >= x0 and cols.max() < x1
    x0, y0, x1, y1 = int(x0), int(y0), int(x1), int(y1)
    assert mask[:, x0].any() and mask[:, x1 - 1].any() and mask[y0, :].any() and mask[y1 - 1, :].any()


def test_tight_box_hand_values_and_one_pixel():
    m = rect_mask((20, 30), rows=(4, 9), cols=(7, 21))
    np.testing.assert_array_equal(tight_box(m), [7, 4, 22, 10])
    one = np.zeros((5, 6), bool)
    one[3, 2] = True
    np.testing.assert_array_equal(tight_box(one), [2, 3, 3, 4])  # 1 x 1 box


@pytest.mark.parametrize("fn", [tight_box, extreme_points, interior_point])
def test_empty_mask_raises(fn):
    with pytest.raises(ValueError, match="empty mask"):
        fn(np.zeros((4, 4), bool))


def test_make_prompt_empty_mask_raises():
    with pytest.raises(ValueError, match="empty mask"):
        make_prompt("tight_box", np.zeros((4, 4), bool), (4, 4))


# --------------------------------------------------------------------------------- loose box
@pytest.mark.parametrize("box, b, hw, expected", [
    ([10, 20, 30, 60], 0.2, (100, 100), [8, 16, 32, 64]),     # w=20 -> +2 each side; h=40 -> +4
    ([10, 20, 30, 60], 0.5, (100, 100), [5, 10, 35, 70]),
    ([10, 20, 30, 60], 0.0, (100, 100), [10, 20, 30, 60]),
    ([2, 0, 12, 5], 0.2, (5, 13), [1, 0, 13, 5]),              # clipped at top, bottom and right
    ([0, 0, 10, 10], 0.3, (10, 10), [0, 0, 10, 10]),           # whole image stays whole image
])
def test_loose_box_hand_values(box, b, hw, expected):
    np.testing.assert_allclose(loose_box(box, b, hw), expected)


@FAST
@given(masks(), st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.5, 1.0]))
def test_loose_box_properties(mask, b):
    hw = mask.shape
    tight = tight_box(mask)
    loose = loose_box(tight, b, hw)
    assert loose.shape == (4,) and loose.dtype == np.float64
    assert loose[0] <= tight[0] and loose[1] <= tight[1] and loose[2] >= tight[2] and loose[3] >= tight[3]
    assert loose[0] >= 0 and loose[1] >= 0 and loose[2] <= hw[1] and loose[3] <= hw[0]
    w, h = tight[2] - tight[0], tight[3] - tight[1]
    if loose[0] > 0 and loose[2] < hw[1]:  # not clipped horizontally
        assert np.isclose(loose[2] - loose[0], (1 + b) * w)
        assert np.isclose((loose[0] + loose[2]) / 2, (tight[0] + tight[2]) / 2)
    if loose[1] > 0 and loose[3] < hw[0]:
        assert np.isclose(loose[3] - loose[1], (1 + b) * h)
    if b == 0:
        np.testing.assert_array_equal(loose, tight)


def test_loose_box_rejects_bad_input():
    with pytest.raises(ValueError):
        loose_box([0, 0, 5, 5], -0.1, (10, 10))
    with pytest.raises(ValueError, match="xyxy"):
        loose_box([5, 0, 0, 5], 0.2, (10, 10))


# -------------------------------------------------------------------------------- jitter box
@FAST
@given(masks(), st.sampled_from([0.0, 0.1, 0.2, 0.4, 1.0, 2.0]), st.integers(0, 2**32 - 1))
def test_jitter_box_reproducible_and_in_bounds(mask, noise, seed):
    hw = mask.shape
    tight = tight_box(mask)
    a = jitter_box(tight, np.random.default_rng(seed), noise, hw)
    b = jitter_box(tight, np.random.default_rng(seed), noise, hw)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float64 and a.shape == (4,)
    assert a[0] >= 0 and a[1] >= 0 and a[2] <= hw[1] and a[3] <= hw[0]
    assert a[2] - a[0] >= 1 - 1e-9 and a[3] - a[1] >= 1 - 1e-9  # never degenerate
    if noise == 0:
        np.testing.assert_allclose(a, tight)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.1, 0.2, 0.4]))
def test_jitter_box_stays_within_noise_bounds_when_unclipped(seed, noise):
    # a box far from the image border: no clipping, so HQ-SAM's bounds hold exactly
    box = np.array([400.0, 300.0, 500.0, 350.0])  # w=100, h=50, centre (450, 325)
    j = jitter_box(box, np.random.default_rng(seed), noise, (1000, 1000))
    w, h = j[2] - j[0], j[3] - j[1]
    cx, cy = (j[0] + j[2]) / 2, (j[1] + j[3]) / 2
    assert abs(cx - 450) <= noise * 100 / 2 + 1e-9 and abs(cy - 325) <= noise * 50 / 2 + 1e-9
    assert (1 - noise) * 100 - 1e-9 <= w <= (1 + noise) * 100 + 1e-9
    assert (1 - noise) * 50 - 1e-9 <= h <= (1 + noise) * 50 + 1e-9


def test_jitter_box_varies_and_one_pixel_box_is_valid():
    box = np.array([400.0, 300.0, 500.0, 350.0])
    rng = np.random.default_rng(0)
    boxes = {tuple(jitter_box(box, rng, 0.2, (1000, 1000))) for _ in range(10)}
    assert len(boxes) == 10
    j = jitter_box([0, 0, 1, 1], np.random.default_rng(1), 2.0, (3, 3))
    assert j[2] - j[0] >= 1 - 1e-9 and j[3] - j[1] >= 1 - 1e-9 and j.min() >= 0 and j.max() <= 3


# ---------------------------------------------------------------------------- extreme points
@FAST
@given(masks())
def test_extreme_points_on_mask_at_extreme_coordinates(mask):
    pts = extreme_points(mask)
    assert pts.shape == (4, 2) and pts.dtype == np.float64
    rows, cols = np.nonzero(mask)
    xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert mask[ys, xs].all()
    assert xs[0] == cols.min() and xs[1] == cols.max() and ys[2] == rows.min() and ys[3] == rows.max()
    np.testing.assert_array_equal(extreme_points_box(pts), tight_box(mask))


def test_extreme_points_tie_break_is_median():
    m = np.zeros((12, 12), bool)
    m[2:7, 1] = True        # left column: rows 2..6 -> median row 4
    m[3:5, 1:9] = True      # body
    m[4:10, 8] = True       # right column: rows 4..9 -> lower median of 6 values = row 6
    pts = extreme_points(m)
    np.testing.assert_array_equal(pts[0], [1, 4])
    np.testing.assert_array_equal(pts[1], [8, 6])
    np.testing.assert_array_equal(pts[2], [1, 2])   # top row 2 holds only (1, 2)
    np.testing.assert_array_equal(pts[3], [8, 9])


def test_extreme_points_one_pixel():
    m = np.zeros((5, 5), bool)
    m[2, 3] = True
    np.testing.assert_array_equal(extreme_points(m), [[3, 2]] * 4)
    np.testing.assert_array_equal(extreme_points(m, np.random.default_rng(0), 3), [[3, 2]] * 4)


@FAST
@given(masks(), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_jittered_extreme_points_stay_on_mask_and_near(mask, jitter_px, seed):
    base = extreme_points(mask)
    pts = extreme_points(mask, np.random.default_rng(seed), jitter_px)
    np.testing.assert_array_equal(pts, extreme_points(mask, np.random.default_rng(seed), jitter_px))
    xs, ys = pts[:, 0].astype(int), pts[:, 1].astype(int)
    assert mask[ys, xs].all()
    assert np.abs(pts - base).max() <= jitter_px  # Chebyshev distance


def test_jittered_extreme_points_actually_move():
    m = rect_mask((40, 40), rows=(5, 30), cols=(8, 35))
    rng = np.random.default_rng(0)
    seen = {tuple(extreme_points(m, rng, 3)[0]) for _ in range(30)}
    assert len(seen) > 3


# ---------------------------------------------------------------------------- interior point
def test_interior_point_of_rectangle_is_centre():
    m = rect_mask((20, 30), rows=(3, 7), cols=(10, 16))   # 5 x 7: centre row 5, col 13
    np.testing.assert_array_equal(interior_point(m), [[13, 5]])
    sq = rect_mask((20, 30), rows=(0, 8), cols=(0, 8))    # at the image corner: border is boundary
    np.testing.assert_array_equal(interior_point(sq), [[4, 4]])
    strip = rect_mask((20, 120), rows=(10, 14), cols=(0, 100))  # long strip: its middle, not an end
    np.testing.assert_array_equal(interior_point(strip), [[50, 12]])
    even = rect_mask((20, 30), rows=(2, 5), cols=(4, 7))   # 4 x 4: lower-middle pixel
    np.testing.assert_array_equal(interior_point(even), [[5, 3]])


@FAST
@given(masks())
def test_interior_point_on_mask_and_as_deep_as_first_click(mask):
    p = interior_point(mask)
    assert p.shape == (1, 2) and p.dtype == np.float64
    x, y = int(p[0, 0]), int(p[0, 1])
    assert mask[y, x]
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    click = next_click(mask, np.zeros_like(mask))   # RITM's first click: same depth, other tie rule
    assert click.is_positive and depth[y, x] == depth.max() == depth[click.y, click.x]


# ------------------------------------------------------------------------- modes and prompts
def test_default_mode_keys():
    assert [m.key for m in DEFAULT_MODES] == [
        "tight_box", "loose_box[b=0]", "loose_box[b=0.1]", "loose_box[b=0.2]", "loose_box[b=0.3]",
        "loose_box[b=0.5]", "jitter_box[noise=0.2]", "extreme_points", "extreme_points_box",
        "center_point", "box_center_point", "clicks[start=click,max_clicks=20]"]


@pytest.mark.parametrize("mode", DEFAULT_MODES, ids=lambda m: m.key)
def test_key_round_trip(mode):
    assert parse_modes([mode.key]) == [mode]
    assert {mode: 1}[parse_modes([mode.key])[0]] == 1   # hashable, usable as a dict key


def test_parse_modes_forms():
    modes = parse_modes([
        "tight_box", {"name": "loose_box", "buffer": [0.1, 0.2]}, {"name": "loose_box", "b": 0.2},
        {"name": "clicks", "params": {"start": "box"}}, PromptMode("extreme_points", {"jitter_px": 3}),
    ])
    assert [m.key for m in modes] == ["tight_box", "loose_box[b=0.1]", "loose_box[b=0.2]",
                                      "clicks[start=box,max_clicks=20]", "extreme_points[jitter_px=3]"]
    assert modes[2].buffer == 0.2 and modes[0].buffer == 0.0 and modes[3].buffer is None
    assert modes[3].params_json() == '{"max_clicks": 20, "start": "box"}'
    for bad in ["nope", {"name": "loose_box", "noise": 0.1}, "loose_box[b=-1]", "clicks[start=x]"]:
        with pytest.raises(ValueError):
            parse_modes([bad])


@pytest.mark.parametrize("mode", DEFAULT_MODES, ids=lambda m: m.key)
def test_make_prompt_all_default_modes(mode):
    m = rect_mask((30, 40), rows=(5, 15), cols=(10, 30))
    p = make_prompt(mode, m, (30, 40), np.random.default_rng(0))
    assert isinstance(p, Prompt) and p.mode == mode.key and p.params == dict(mode.params)
    if p.box is not None:
        assert p.box.shape == (4,) and p.box.dtype == np.float64
    if p.points is not None:
        assert p.points.dtype == np.float64 and p.points.shape[1] == 2
        assert p.labels.dtype == np.int64 and p.labels.shape == (p.points.shape[0],)
        assert (p.labels == 1).all()
    expected = {"tight_box": (True, 0), "loose_box": (True, 0), "jitter_box": (True, 0),
                "extreme_points": (False, 4), "extreme_points_box": (True, 4),
                "center_point": (False, 1), "box_center_point": (True, 1), "clicks": (False, 1)}
    has_box, k = expected[mode.name]
    assert (p.box is not None) == has_box
    assert (0 if p.points is None else len(p.points)) == k


def test_make_prompt_values_and_errors():
    m = rect_mask((30, 40), rows=(5, 15), cols=(10, 30))   # box [10, 5, 31, 16]
    np.testing.assert_allclose(make_prompt("loose_box[b=0.2]", m, (30, 40)).box, [7.9, 3.9, 33.1, 17.1])
    np.testing.assert_array_equal(make_prompt("clicks[start=box]", m, (30, 40)).box, [10, 5, 31, 16])
    first = next_click(m, np.zeros_like(m))
    np.testing.assert_array_equal(make_prompt("clicks", m, (30, 40)).points, [[first.x, first.y]])
    np.testing.assert_array_equal(make_prompt("center_point", m, (30, 40)).points, [[20, 10]])
    with pytest.raises(ValueError, match="rng"):
        make_prompt("jitter_box", m, (30, 40))
    with pytest.raises(ValueError, match="image_hw"):
        make_prompt("tight_box", m, (31, 40))


def test_prompt_validation():
    with pytest.raises(ValueError):
        Prompt(mode="x")
    with pytest.raises(ValueError):
        Prompt(mode="x", points=np.zeros((2, 2)), labels=np.ones(3))
    with pytest.raises(ValueError):
        Prompt(mode="x", points=np.zeros((1, 2)), labels=[2])
