"""Tests of the RITM click simulator: hand-made cases and a full-image OpenCV reference."""
from __future__ import annotations


import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from samstudy.clicks import Click, ClickSimulator, next_click

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def box_mask(hw, rows, cols) -> np.ndarray:
    m = np.zeros(hw, bool)
    m[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return m


# ------------------------------------------------------------------------------- hand-made
def test_missing_region_gives_positive_click_at_its_centre():
    gt = box_mask((40, 60), rows=(5, 30), cols=(5, 50))
    pred = gt & ~box_mask((40, 60), rows=(12, 18), cols=(30, 36))   # 7 x 7 hole in the prediction
    assert next_click(gt, pred) == Click(x=33, y=15, is_positive=True)


def test_false_positive_blob_gives_negative_click_at_its_centre():
    gt = box_mask((40, 60), rows=(5, 20), cols=(5, 20))
    pred = gt | box_mask((40, 60), rows=(25, 33), cols=(40, 48))    # 9 x 9 blob outside
    assert next_click(gt, pred) == Click(x=44, y=29, is_positive=False)


def test_larger_error_wins_and_ties_are_negative():
    gt = box_mask((40, 60), rows=(0, 39), cols=(0, 29))
    pred = gt.copy()
    pred[5:10, 5:10] = False                 # fn 5 x 5: max distance 3
    pred[20:23, 40:43] = True                # fp 3 x 3: max distance 2
    assert next_click(gt, pred) == Click(7, 7, True)
    pred[20:25, 40:45] = True                # fp 5 x 5: tie at 3 -> negative
    assert next_click(gt, pred) == Click(42, 22, False)


def test_equal_maxima_pick_first_in_row_major_order():
    gt = np.zeros((30, 30), bool)
    gt[20:23, 2:5] = True                    # lower-left 3 x 3, centre (3, 21)
    gt[5:8, 25:28] = True                    # upper-right 3 x 3, centre (26, 6): smaller row wins
    assert next_click(gt, np.zeros_like(gt)) == Click(26, 6, True)


def test_perfect_prediction_gives_no_click():
    gt = box_mask((20, 20), rows=(3, 9), cols=(4, 12))
    assert next_click(gt, gt.copy()) is None
    assert next_click(np.zeros((5, 5), bool), np.zeros((5, 5), bool)) is None
    pred = gt.copy()
    pred[0, 0] = True                        # the only error is ignored
    ignore = np.zeros_like(gt)
    ignore[0, 0] = True
    assert next_click(gt, pred, ignore) is None


def test_ignore_moves_the_click_off_ignored_pixels():
    gt = box_mask((40, 40), rows=(5, 25), cols=(5, 25))   # centre (15, 15)
    ignore = box_mask((40, 40), rows=(12, 18), cols=(12, 18))
    click = next_click(gt, np.zeros_like(gt), ignore)
    assert click.is_positive and not ignore[click.y, click.x] and gt[click.y, click.x]


def test_padding_makes_image_border_a_boundary():
    gt = box_mask((10, 10), rows=(0, 2), cols=(0, 2))
    assert next_click(gt, np.zeros_like(gt), padding=True) == Click(1, 1, True)
    assert next_click(gt, np.zeros_like(gt), padding=False) == Click(0, 0, True)
    full = np.ones((4, 5), bool)             # no boundary inside the image at all
    c = next_click(full, np.zeros_like(full), padding=False)
    assert c.is_positive and 0 <= c.x < 5 and 0 <= c.y < 4


# ------------------------------------------------------------------------------ properties
def reference_distances(gt, pred, ignore, padding):
    """Full-image fn/fp distance maps with OpenCV's exact L2 transform (independent of scipy)."""
    fn, fp = gt & ~pred & ~ignore, pred & ~gt & ~ignore
    out = []
    for err in (fn, fp):
        e = np.pad(err, 1) if padding else err
        d = cv2.distanceTransform(e.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        out.append(d[1:-1, 1:-1] if padding else d)
    return out


@st.composite
def triples(draw):
    h, w = draw(st.integers(2, 30)), draw(st.integers(2, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)

    def blobs(n):
        m = np.zeros((h, w), bool)
        for _ in range(n):
            r0, c0 = rng.integers(h), rng.integers(w)
            m[r0:r0 + rng.integers(1, h + 1), c0:c0 + rng.integers(1, w + 1)] = True
        return m
    gt, pred = blobs(draw(st.integers(0, 3))), blobs(draw(st.integers(0, 3)))
    ignore = blobs(1) & (rng.random((h, w)) < 0.5) if draw(st.booleans()) else np.zeros((h, w), bool)
    return gt, pred, ignore


@FAST
@given(triples(), st.booleans())
def test_click_matches_full_image_reference(triple, padding):
    gt, pred, ignore = triple
    fn_d, fp_d = reference_distances(gt, pred, ignore, padding)
    if not padding and (fn_d.min() > 0 and (gt & ~pred & ~ignore).all()):
        return  # an error covering the whole image has no boundary without padding
    click = next_click(gt, pred, ignore, padding)
    if fn_d.max() == 0 and fp_d.max() == 0:
        assert click is None
        return
    assert click is not None and not ignore[click.y, click.x]
    if click.is_positive:
        assert gt[click.y, click.x] and not pred[click.y, click.x]
        assert fn_d.max() > fp_d.max() - 1e-4
        assert abs(fn_d[click.y, click.x] - fn_d.max()) < 1e-4
    else:
        assert pred[click.y, click.x] and not gt[click.y, click.x]
        assert fp_d.max() > fn_d.max() - 1e-4
        assert abs(fp_d[click.y, click.x] - fp_d.max()) < 1e-4


# ------------------------------------------------------------------------------- simulator
def test_simulator_session_arrays_and_no_repeat():
    gt = box_mask((40, 60), rows=(5, 30), cols=(5, 50))
    sim = ClickSimulator(gt)
    first = sim.next(np.zeros_like(gt))
    assert first.is_positive and gt[first.y, first.x]
    fp_pred = gt | box_mask((40, 60), rows=(33, 39), cols=(0, 59))   # a wide false-positive strip
    second = sim.next(fp_pred)
    assert not second.is_positive and not gt[second.y, second.x]
    third = sim.next(fp_pred)                 # same prediction: never the same pixel twice
    assert (third.x, third.y) != (second.x, second.y) and not third.is_positive
    assert sim.points.dtype == np.float64 and sim.points.shape == (3, 2)
    assert sim.labels.dtype == np.int64
    np.testing.assert_array_equal(sim.labels, [1, 0, 0])
    np.testing.assert_array_equal(sim.points[0], [first.x, first.y])
    assert sim.next(gt.copy()) is None and len(sim) == 3
    sim.reset()
    assert sim.points.shape == (0, 2) and sim.labels.shape == (0,)


def test_twenty_click_session_on_vga_converges():
    rr, cc = np.indices((480, 640))
    gt = ((rr - 240) / 150.0) ** 2 + ((cc - 320) / 200.0) ** 2 <= 1
    pred = np.zeros_like(gt)
    sim = ClickSimulator(gt)
    for _ in range(20):
        c = sim.next(pred)
        r = 40 if c.is_positive else 25
        pred[max(c.y - r, 0):c.y + r, max(c.x - r, 0):c.x + r] = c.is_positive  # crude "model"
    assert len(sim) == 20
    # every click lands on an error pixel of the prediction it answered: the sign matches the GT there
    assert all(bool(gt[int(y), int(x)]) == bool(l) for (x, y), l in zip(sim.points, sim.labels))
