"""Tests of samstudy.metrics (and of the hole definition it shares, samstudy.masks.hole_mask) against
hand-computed values, reference libraries (pycocotools, scipy) and properties."""
from __future__ import annotations


import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st
from pycocotools import mask as mask_utils
from scipy import ndimage

from samstudy import metrics as M
from samstudy.masks import count_holes, crop_holes, hole_mask

PROPS = settings(max_examples=60, deadline=None)


# ----------------------------------------------------------------------------- independent references
def naive_band(mask: np.ndarray, d: int) -> np.ndarray:
    """Full-image inner band via a chessboard distance transform of the zero-padded mask."""
    padded = np.pad(mask, 1, constant_values=False)
    dist = ndimage.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1]
    return mask & (dist <= d)


def api_style_band(mask: np.ndarray, ratio: float) -> np.ndarray:
    """Full-image band as boundary-iou-api builds it: 1-px zero border, d iterations of a 3x3 erosion."""
    h, w = mask.shape
    d = max(1, int(round(ratio * np.sqrt(h ** 2 + w ** 2))))
    m = mask.astype(np.uint8)
    padded = cv2.copyMakeBorder(m, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:h + 1, 1:w + 1]
    return (m - eroded).astype(bool)


def coco_iou(a, b, ignore=None):
    """IoU by pycocotools. With ``ignore`` X: |P ∩ G \\ X| / |(P ∪ G) \\ X| is the plain IoU of
    P \\ X and G \\ X. pycocotools says 0 for an empty union; the module's rule says 1.0."""
    if ignore is not None:
        a, b = a & ~ignore, b & ~ignore
    if not (a | b).any():
        return 1.0
    ra = mask_utils.encode(np.asfortranarray(a.astype(np.uint8)))
    rb = mask_utils.encode(np.asfortranarray(b.astype(np.uint8)))
    return float(mask_utils.iou([ra], [rb], [0])[0, 0])


def scipy_holes(mask: np.ndarray) -> tuple[int, int, np.ndarray]:
    """Reference holes by scipy: ``binary_fill_holes`` (cross structure) minus the mask, and the
    hole count by ``ndimage.label`` with the same cross structure."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    return int(ndimage.label(holes)[1]), int(holes.sum()), holes


def random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Union of random rectangles (often touching the border) minus a few, plus pixel noise."""
    m = np.zeros((h, w), bool)
    for k in range(rng.integers(0, 5)):
        r0, c0 = rng.integers(0, h), rng.integers(0, w)
        r1, c1 = rng.integers(r0, h), rng.integers(c0, w)
        # snap sides to the image border often: border-touching masks are the delicate case
        r0, c0 = (0 if rng.random() < 0.25 else r0), (0 if rng.random() < 0.25 else c0)
        r1, c1 = (h - 1 if rng.random() < 0.25 else r1), (w - 1 if rng.random() < 0.25 else c1)
        m[r0:r1 + 1, c0:c1 + 1] = k != 3  # the 4th rectangle carves (makes holes and notches)
    if rng.random() < 0.3:
        m ^= rng.random((h, w)) < 0.03
    return m


masks_pair = st.tuples(st.integers(0, 2 ** 32 - 1), st.integers(3, 48), st.integers(3, 48))


# ----------------------------------------------------------------------------- IoU
def test_iou_two_rectangles_by_hand():
    g = np.zeros((20, 30), bool)
    p = np.zeros((20, 30), bool)
    g[2:12, 3:13] = True   # 10x10 = 100
    p[7:17, 8:18] = True   # 10x10 = 100, overlap rows 7..11 x cols 8..12 = 5x5 = 25
    assert M.iou(p, g) == pytest.approx(25 / 175)
    assert M.iou(g, p) == pytest.approx(25 / 175)
    assert M.iou(g, g) == 1.0


def test_iou_ignore_by_hand():
    g = np.zeros((10, 10), bool)
    p = np.zeros((10, 10), bool)
    g[0:4, 0:4] = True      # 16
    p[0:4, 0:6] = True      # 24, overlap 16
    ignore = np.zeros((10, 10), bool)
    ignore[:, 4:6] = True   # removes exactly the 8 false-positive pixels
    assert M.iou(p, g) == pytest.approx(16 / 24)
    assert M.iou(p, g, ignore=ignore) == 1.0


def test_iou_empty_rules():
    z = np.zeros((5, 6), bool)
    o = z.copy()
    o[2, 3] = True
    assert M.iou(z, z) == 1.0
    assert M.iou(z, o) == 0.0 and M.iou(o, z) == 0.0
    assert M.boundary_iou(z, z) == 1.0 and M.boundary_iou(z, o) == 0.0


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        M.iou(np.zeros((3, 4), bool), np.zeros((4, 3), bool))
    with pytest.raises(ValueError):
        M.object_metrics(np.zeros((3, 4), bool), np.zeros((3, 4), bool), ignore=np.zeros((3, 3), bool))


@PROPS
@given(masks_pair)
def test_iou_equals_pycocotools(args):
    seed, h, w = args
    rng = np.random.default_rng(seed)
    p, g = random_mask(rng, h, w), random_mask(rng, h, w)
    p[rng.integers(h), rng.integers(w)] = True  # non-empty: pycocotools gives 0 for empty unions
    g[rng.integers(h), rng.integers(w)] = True
    rp = mask_utils.encode(np.asfortranarray(p.astype(np.uint8)))
    rg = mask_utils.encode(np.asfortranarray(g.astype(np.uint8)))
    ref = mask_utils.iou([rp], [rg], [0])[0, 0]
    assert M.iou(p, g) == pytest.approx(ref, abs=1e-12)


@PROPS
@given(masks_pair)
def test_iou_with_ignore_equals_pycocotools(args):
    seed, h, w = args
    rng = np.random.default_rng(seed)
    p, g, x = random_mask(rng, h, w), random_mask(rng, h, w), random_mask(rng, h, w)
    assert M.iou(p, g, ignore=x) == pytest.approx(coco_iou(p, g, x), abs=1e-12)


# ----------------------------------------------------------------------------- boundary IoU
def test_band_width():
    assert M.band_width((480, 640)) == 16            # 0.02 * 800
    assert M.band_width((100, 100)) == 3             # 2.83 -> 3
    assert M.band_width((10, 10)) == 1               # 0.28 -> at least 1
    assert M.band_width((100, 100), 0.1) == 14       # 14.1 -> 14


def test_boundary_iou_identical_is_one():
    rng = np.random.default_rng(0)
    m = random_mask(rng, 40, 50) | (np.arange(50)[None, :] < 10)
    assert M.boundary_iou(m, m) == 1.0


def test_full_image_band_is_border_frame():
    h, w = 48, 64                       # d = round(0.02 * 80) = 2
    full = np.ones((h, w), bool)
    band = M.boundary_band(full)
    assert band.sum() == h * w - (h - 4) * (w - 4)  # 432
    assert band[:2].all() and band[-2:].all() and band[:, :2].all() and band[:, -2:].all()
    assert not band[2:-2, 2:-2].any()


def test_shifted_square_band_counts_by_hand():
    # 100x100 image -> d = 3. Square 20x20; its band is a 3-px frame: 400 - 14*14 = 204 px.
    g = np.zeros((100, 100), bool)
    g[40:60, 40:60] = True
    p = np.zeros_like(g)
    p[40:60, 45:65] = True  # shifted right by 5
    assert M.boundary_band(g).sum() == 204 and M.boundary_band(p).sum() == 204
    # Overlap only in the top/bottom strips (6 rows) on cols 45..59 (15): 90 px.
    # The vertical strips (cols 40-42, 57-59 vs 45-47, 62-64) do not meet.
    assert M.boundary_iou(p, g) == pytest.approx(90 / (204 + 204 - 90))
    assert M.iou(p, g) == pytest.approx(300 / 500)


def test_square_touching_border_counts_border_as_contour():
    g = np.zeros((100, 100), bool)
    g[0:20, 0:20] = True  # top-left corner: the image border is contour, so the band is still a frame
    assert M.boundary_band(g).sum() == 204


@PROPS
@given(masks_pair, st.sampled_from([0.005, 0.02, 0.06, 0.15]))
def test_band_crop_equals_naive_full_image(args, ratio):
    seed, h, w = args
    m = random_mask(np.random.default_rng(seed), h, w)
    d = M.band_width(m.shape, ratio)
    expected = naive_band(m, d)
    np.testing.assert_array_equal(M.boundary_band(m, ratio), expected)
    np.testing.assert_array_equal(api_style_band(m, ratio), expected)


@PROPS
@given(masks_pair, st.sampled_from([0.02, 0.06, 0.15]))
def test_boundary_iou_crop_equals_naive(args, ratio):
    seed, h, w = args
    rng = np.random.default_rng(seed)
    p, g = random_mask(rng, h, w), random_mask(rng, h, w)
    x = random_mask(rng, h, w) if rng.random() < 0.3 else None
    d = M.band_width((h, w), ratio)
    ref = coco_iou(naive_band(p, d), naive_band(g, d), x)
    assert M.boundary_iou(p, g, ratio, ignore=x) == pytest.approx(ref, abs=1e-12)


def test_boundary_iou_small_objects_in_large_image():
    # Crops far from the border: no false contour from the crop edge.
    rng = np.random.default_rng(1)
    for _ in range(20):
        p = np.zeros((120, 160), bool)
        g = np.zeros((120, 160), bool)
        r, c = rng.integers(20, 90), rng.integers(20, 130)
        g[r:r + rng.integers(2, 25), c:c + rng.integers(2, 25)] = True
        p[r + 1:r + rng.integers(3, 25), c - 1:c + rng.integers(2, 25)] = True
        d = M.band_width(g.shape)
        assert M.boundary_iou(p, g) == pytest.approx(coco_iou(naive_band(p, d), naive_band(g, d)))


# ----------------------------------------------------------------------------- holes
def _square_ring(h=30, w=30):
    m = np.zeros((h, w), bool)
    m[5:25, 5:25] = True
    m[10:15, 12:18] = False  # 5 x 6 = 30 px hole
    return m


def test_ring_has_one_hole_of_known_area():
    assert M.hole_stats(_square_ring()) == (1, 30)


def test_round_ring():
    yy, xx = np.mgrid[:41, :41]
    r2 = (yy - 20) ** 2 + (xx - 20) ** 2
    ring = (r2 <= 15 ** 2) & (r2 > 6 ** 2)
    assert M.hole_stats(ring) == (1, int((r2 <= 36).sum()))


def test_disc_has_no_hole():
    yy, xx = np.mgrid[:41, :41]
    assert M.hole_stats((yy - 20) ** 2 + (xx - 20) ** 2 <= 225) == (0, 0)
    assert M.hole_stats(np.zeros((5, 5), bool)) == (0, 0)


def test_ring_cut_open_has_no_hole():
    m = _square_ring()
    m[12, 17:25] = False  # 4-connected channel from the hole to the outside
    assert M.hole_stats(m) == (0, 0)


def test_diagonal_gap_does_not_open_a_hole():
    # 1-px ring around (2, 2) with its corner (1, 1) removed: background is 4-connected, so the
    # hole touches the outside only diagonally and stays a hole.
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    m[2, 2] = False
    m[1, 1] = False
    assert M.hole_stats(m) == (1, 1)


def test_diagonally_touching_hole_pixels_are_two_holes():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    m[2, 2] = m[3, 3] = False
    assert M.hole_stats(m) == (2, 2)


def test_background_touching_image_border_is_not_a_hole():
    m = np.ones((10, 10), bool)
    m[0:5, 3:7] = False   # open to the top border
    assert M.hole_stats(m) == (0, 0)
    m = np.ones((10, 10), bool)
    m[3:7, 3:7] = False   # enclosed
    assert M.hole_stats(m) == (1, 16)
    m[3:7, 0:3] = False   # now reaching the left border
    assert M.hole_stats(m) == (0, 0)


def test_hole_mask_and_count_by_hand_distinguish_4_from_8_connected_background():
    # 5x5: a 1-px square ring around (2, 2) whose corner (1, 1) is background. With 4-connected
    # background (the definition) (2, 2) meets the outside only diagonally: one hole. With
    # 8-connected background it would leak out: no hole.
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    m[2, 2] = m[1, 1] = False
    want = np.zeros((5, 5), bool)
    want[2, 2] = True
    np.testing.assert_array_equal(hole_mask(m), want)
    assert count_holes(hole_mask(m)) == 1
    # The same ring opened by an edge-sharing gap at (1, 2): the hole is gone.
    m[1, 1], m[1, 2] = True, False
    assert not hole_mask(m).any()


def test_diagonal_crack_through_a_thick_wall_keeps_the_hole():
    # 8x8 square with a 2x2 hole at rows/cols 3..4 and a staircase of background (2, 2), (1, 1),
    # (0, 0) through its 2-px wall to the image corner: every step is diagonal, so the hole (and
    # the crack pixels (1, 1), (2, 2), which touch no background by an edge) stay enclosed.
    m = np.ones((8, 8), bool)
    m[3:5, 3:5] = False
    m[0, 0] = m[1, 1] = m[2, 2] = False
    want = np.zeros((8, 8), bool)
    want[3:5, 3:5] = True
    want[1, 1] = want[2, 2] = True   # (0, 0) is on the image border: not a hole
    np.testing.assert_array_equal(hole_mask(m), want)
    assert count_holes(hole_mask(m)) == 3  # (1, 1), (2, 2) and the 2x2 block: diagonal contacts only
    assert M.hole_stats(m) == (3, 6)


def test_background_on_the_image_border_is_never_a_hole():
    m = np.ones((4, 6), bool)
    m[0, 2] = False            # enclosed by the mask on its three in-image sides, but on the border
    m[3, 5] = False            # a corner pixel
    assert not hole_mask(m).any() and M.hole_stats(m) == (0, 0)
    m[2, 2] = False            # an interior background pixel is one
    assert M.hole_stats(m) == (1, 1)


def test_hole_mask_input_forms_and_crop_window():
    m = _square_ring(30, 40)
    want = hole_mask(m)
    assert want.dtype == bool and want.shape == (30, 40) and want.sum() == 30
    np.testing.assert_array_equal(hole_mask(m.astype(np.uint8) * 255), want)
    np.testing.assert_array_equal(hole_mask(np.asfortranarray(m)), want)
    for r0, r1, c0, c1 in ((5, 25, 5, 25), (0, 30, 0, 40), (2, 27, 4, 26)):  # windows containing the box
        holes, area = crop_holes(m[r0:r1, c0:c1])
        assert area == 30
        np.testing.assert_array_equal(holes, want[r0:r1, c0:c1])
    assert crop_holes(np.ones((3, 3), bool)) == (None, 0)
    assert not hole_mask(np.zeros((3, 3), bool)).any() and count_holes(np.zeros((3, 3), bool)) == 0


@PROPS
@given(masks_pair)
def test_holes_equal_scipy(args):
    seed, h, w = args
    m = random_mask(np.random.default_rng(seed), h, w)
    n, area, holes = scipy_holes(m)
    assert M.hole_stats(m) == (n, area)
    np.testing.assert_array_equal(M.hole_mask(m), holes)


@PROPS
@given(masks_pair)
def test_hole_properties(args):
    """Holes are background; filling them leaves none; filling one hole leaves exactly the others;
    a background frame added around the image changes nothing; flips and transposition commute
    with the definition; 8-connected-background holes (scipy, square structure) are a subset."""
    seed, h, w = args
    rng = np.random.default_rng(seed)
    # half the draws are dense pixel noise: many small holes, diagonal contacts everywhere
    m = random_mask(rng, h, w) if seed % 2 else rng.random((h, w)) < 0.65
    holes = hole_mask(m)
    assert not (holes & m).any()
    assert not hole_mask(m | holes).any() and M.hole_stats(m | holes) == (0, 0)
    labels, n = ndimage.label(holes)
    assert count_holes(holes) == n
    if n:
        first = labels == 1
        np.testing.assert_array_equal(hole_mask(m | first), holes & ~first)
    np.testing.assert_array_equal(hole_mask(np.pad(m, 1))[1:-1, 1:-1], holes)
    np.testing.assert_array_equal(hole_mask(m.T), holes.T)
    np.testing.assert_array_equal(hole_mask(m[::-1, ::-1]), holes[::-1, ::-1])
    eight = ndimage.binary_fill_holes(m, structure=np.ones((3, 3), bool)) & ~m
    assert not (eight & ~holes).any()


def test_hole_pair_agreement():
    g = _square_ring()
    filled = g.copy()
    filled[10:15, 12:18] = True
    s = M.hole_stats_pair(filled, g)   # prediction fills the GT hole
    assert s == {"gt_holes": 1, "pred_holes": 0, "gt_hole_area": 30, "pred_hole_area": 0,
                 "hole_fill_agreement": 0.0}
    assert M.hole_stats_pair(g, g)["hole_fill_agreement"] == 1.0
    assert M.hole_stats_pair(filled, filled)["hole_fill_agreement"] == 1.0  # no holes anywhere
    half = filled.copy()
    half[10:15, 12:15] = False         # pred hole = left half of the GT hole: IoU 15/30
    assert M.hole_stats_pair(half, g)["hole_fill_agreement"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- size buckets
def test_size_buckets_at_exact_thresholds():
    assert [M.size_bucket(a) for a in (0, 1023, 1024, 9215, 9216, 1e6)] == \
        ["small", "small", "medium", "medium", "large", "large"]
    assert M.size_bucket(1023.9) == "small"
    assert list(M.size_buckets([1023, 1024, 9215, 9216])) == ["small", "medium", "medium", "large"]


# ----------------------------------------------------------------------------- NoC
def test_noc_hand_curves():
    curve = [0.5, 0.8, 0.86, 0.89, 0.91, 0.95]
    assert M.noc(curve, 0.85) == 3 and M.reached(curve, 0.85)
    assert M.noc(curve, 0.90) == 5
    assert M.noc([0.9], 0.9) == 1                       # >= threshold counts
    never = [0.1] * 20
    assert M.noc(never, 0.85) == 20 and not M.reached(never, 0.85)
    assert M.noc([0.1] * 19 + [0.99], 0.85) == 20 and M.reached([0.1] * 19 + [0.99], 0.85)
    assert M.noc([0.1] * 25 + [0.99], 0.85) == 20       # clicks after max_clicks are ignored
    assert not M.reached([0.1] * 25 + [0.99], 0.85)
    assert M.noc([0.2, 0.6], 0.5, max_clicks=5) == 2
    assert M.noc([float("nan"), 0.95], 0.9) == 2


def test_noc_table():
    rows = []
    for ann, curve in {1: [0.5, 0.86, 0.92], 2: [0.3, 0.4], 3: [0.95]}.items():
        rows.append({"model": "m", "image_id": 7, "ann_id": ann, "click": 0, "iou": 0.99})  # one-shot
        rows += [{"model": "m", "image_id": 7, "ann_id": ann, "click": k + 1, "iou": v}
                 for k, v in enumerate(curve)]
    df = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter
    t = M.noc_table(df).set_index("ann_id")
    assert t.loc[1, "noc_85"] == 2 and t.loc[1, "noc_90"] == 3
    assert t.loc[2, "noc_85"] == 20 and not t.loc[2, "reached_85"]
    assert t.loc[3, "noc_90"] == 1 and t.loc[3, "reached_90"]
    assert t.loc[1, "n_clicks"] == 3 and t.loc[1, "final_iou"] == pytest.approx(0.92)
    with pytest.raises(ValueError):
        M.noc_table(df, by=["model"])


# ----------------------------------------------------------------------------- object_metrics
def test_object_metrics_keys_and_consistency():
    g = _square_ring(60, 80)
    p = np.zeros_like(g)
    p[6:26, 4:24] = True
    x = np.zeros_like(g)
    x[5:8, :] = True
    out = M.object_metrics(p, g, ignore=x)
    assert tuple(out) == M.METRIC_KEYS
    assert out["iou"] == M.iou(p, g, ignore=x)
    assert out["boundary_iou"] == M.boundary_iou(p, g, ignore=x)
    assert {k: out[k] for k in ("gt_holes", "pred_holes", "gt_hole_area", "pred_hole_area",
                                "hole_fill_agreement")} == M.hole_stats_pair(p, g)
    assert out["pred_area"] == 400


def test_object_metrics_empty_prediction():
    g = _square_ring()
    out = M.object_metrics(np.zeros_like(g), g)
    assert out["iou"] == 0.0 and out["boundary_iou"] == 0.0 and out["pred_area"] == 0
    assert out["gt_holes"] == 1 and out["hole_fill_agreement"] == 0.0
    both = M.object_metrics(np.zeros_like(g), np.zeros_like(g))
    assert tuple(both) == M.METRIC_KEYS and both["iou"] == 1.0


def test_object_metrics_accepts_uint8_and_noncontiguous():
    g = _square_ring(40, 40)
    p = np.roll(g, 2, axis=1)
    ref = M.object_metrics(p, g)
    assert M.object_metrics(p.astype(np.uint8) * 255, g.astype(np.uint8)) == ref
    assert M.object_metrics(np.asfortranarray(p), g.T.T) == ref
    big = np.zeros((40, 80), bool)
    big[:, ::2] = p  # strided view
    assert M.object_metrics(big[:, ::2], g) == ref
