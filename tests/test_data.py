"""Tests of samstudy.data: image reading, COCO loading/validation, writing, skip tables.

Every expectation is set by construction (hand-made images, masks and JSON written here), or by
pycocotools' own ``COCO.annToMask`` on the real sample.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samstudy.data import (DataError, Dataset, ImageRecord, Instance, exif_transpose_mask, load_coco,
                           read_image, read_record_image, skips_table, write_coco)
from samstudy.masks import encode_rle

H, W = 20, 30


# ---------------------------------------------------------------- helpers

def _save_jpeg(path: Path, arr: np.ndarray, orientation: int | None = None) -> Path:
    im = Image.fromarray(arr)
    if orientation is None:
        im.save(path, quality=95)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        im.save(path, quality=95, exif=exif.tobytes())
    return path


def _gradient(h: int = H, w: int = W) -> np.ndarray:
    """A non-symmetric RGB picture: rows in red, cols in green, so any flip/rotation shows."""
    r = np.linspace(0, 255, h, dtype=np.float64)[:, None].repeat(w, 1)
    g = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    return np.stack([r, g, np.full((h, w), 60.0)], axis=2).astype(np.uint8)


def _square_poly(x0, y0, x1, y1):
    """Polygon of the pixel block cols x0..x1-1, rows y0..y1-1 (pycocotools rasterises the
    polygon through pixel centres' neighbourhood; these integer corners give exactly that block
    when drawn at ``x - 0.5``)."""
    return [x0 - 0.5, y0 - 0.5, x1 - 0.5, y0 - 0.5, x1 - 0.5, y1 - 0.5, x0 - 0.5, y1 - 0.5]


def _coco(tmp_path: Path, annotations, images=None, categories=None, make_files=True) -> Path:
    images = images if images is not None else [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}]
    categories = categories if categories is not None else [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}]
    if make_files:
        for im in images:
            if isinstance(im, dict) and isinstance(im.get("file_name"), str) and not (tmp_path / im["file_name"]).exists():
                _save_jpeg(tmp_path / im["file_name"], _gradient(im["height"], im["width"]))
    p = tmp_path / "ann.json"
    p.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return p


def _ann(id_, seg=None, image_id=1, category_id=1, **kw):
    a = {"id": id_, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
         "segmentation": seg if seg is not None else [_square_poly(2, 3, 7, 9)]}
    a.update(kw)
    return a


def _reasons(ds: Dataset) -> dict[int | None, str]:
    return {s["ann_id"] if s["ann_id"] is not None else ("img", s["image_id"]): s["reason"] for s in ds.skips}


# ---------------------------------------------------------------- read_image

def test_read_image_rgb_jpeg(tmp_path):
    arr = _gradient()
    out = read_image(_save_jpeg(tmp_path / "x.jpg", arr))
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    assert np.abs(out.astype(int) - arr.astype(int)).max() < 12  # JPEG loss only


@pytest.mark.parametrize("orientation, expect", [
    (1, lambda a: a),
    (3, lambda a: a[::-1, ::-1]),
    (6, lambda a: np.rot90(a, -1)),   # 6 = stored image must be rotated 90 deg clockwise to display
    (8, lambda a: np.rot90(a, 1)),
])
def test_read_image_exif_stored_by_default_applied_on_request(tmp_path, orientation, expect):
    arr = _gradient()
    path = _save_jpeg(tmp_path / "x.jpg", arr, orientation)
    for out, want in ((read_image(path), arr), (read_image(path, exif="apply"), expect(arr))):
        assert out.shape == want.shape
        assert np.abs(out.astype(int) - want.astype(int)).max() < 12
    with pytest.raises(ValueError, match="exif"):
        read_image(path, exif="displayed")


def test_read_image_grayscale_rgba_palette(tmp_path):
    g = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (H, W, 3) and (out == g[..., None]).all()

    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (H, W, 3) and (out == [10, 20, 30]).all()  # alpha dropped, colours kept

    p = Image.fromarray(g % 4, mode="P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (252 * 3))
    p.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    lut = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    assert (out == lut[g % 4]).all()


def test_read_image_16bit_png_scaled(tmp_path):
    vals = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # exact multiples of 257 -> 0,1,128,255
    Image.fromarray(vals).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.jpg.*not found"):
        read_image(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(DataError, match="junk.jpg.*unreadable"):
        read_image(tmp_path / "junk.jpg")
    good = _save_jpeg(tmp_path / "full.jpg", _gradient(64, 64)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(DataError, match="cut.jpg.*truncated"):
        read_image(tmp_path / "cut.jpg")
    Image.fromarray(_gradient(64, 64)).save(tmp_path / "full.png")
    png = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(DataError, match="cut.png.*truncated"):
        read_image(tmp_path / "cut.png")


def test_data_error_names_the_file_and_carries_the_skip_reason(tmp_path):
    """A bad image raises DataError starting with its path and carrying the reason code that the
    loader writes into the skip row for the same file; callers that catch ValueError catch it."""
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    for name, reason in (("junk.jpg", "image_unreadable"), ("absent.jpg", "image_missing")):
        with pytest.raises(ValueError) as e:
            read_image(tmp_path / name)
        assert isinstance(e.value, DataError) and e.value.reason == reason
        assert str(e.value).startswith(f"{tmp_path / name}: ")
    images = [{"id": 1, "file_name": "junk.jpg", "height": H, "width": W}]
    ds = load_coco(_coco(tmp_path, [_ann(1)], images=images, make_files=False), tmp_path)
    (row,) = [s for s in ds.skips if s["ann_id"] is None]
    assert row["reason"] == "image_unreadable" and "junk.jpg" in row["detail"]


# ---------------------------------------------------------------- load_coco: good input

def test_load_polygon_rle_and_crowd(tmp_path):
    block = np.zeros((H, W), bool)
    block[3:9, 2:7] = True
    other = np.zeros((H, W), bool)
    other[10:15, 20:28] = True
    other[12, 22] = False
    compressed = encode_rle(other)
    # uncompressed (crowd) RLE: column-major runs of `other`
    flat = other.flatten(order="F").astype(int)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    anns = [_ann(1), _ann(2, seg=compressed, category_id=2),
            _ann(3, seg={"size": [H, W], "counts": runs}, iscrowd=1)]
    ds = load_coco(_coco(tmp_path, anns), tmp_path)
    assert ds.skips == [] and ds.notes == []
    assert ds.categories == {1: "car", 2: "person"}
    assert ds.images[1] == ImageRecord(1, "a.jpg", tmp_path / "a.jpg", H, W, 1)
    by_id = {t.ann_id: t for t in ds.instances}
    assert (by_id[1].mask() == block).all() and by_id[1].area == 30
    assert by_id[1].box_xyxy == (2.0, 3.0, 7.0, 9.0)
    assert by_id[1].source_ann_ids == (1,) and by_id[1].iscrowd is False
    assert (by_id[2].mask() == other).all() and by_id[2].area == 39 and by_id[2].category == "person"
    assert (by_id[3].mask() == other).all() and by_id[3].iscrowd is True
    assert isinstance(by_id[3].rle["counts"], str)
    assert by_id[3].box_xyxy == (20.0, 10.0, 28.0, 15.0)


def test_polygon_partly_outside_is_clipped_by_rasterisation(tmp_path):
    poly = [-10.0, -10.0, 10.0, -10.0, 10.0, 10.0, -10.0, 10.0]
    ds = load_coco(_coco(tmp_path, [_ann(1, seg=[poly])]), tmp_path)
    (t,) = ds.instances
    assert t.box_xyxy[0] == 0 and t.box_xyxy[1] == 0 and t.mask().shape == (H, W)


def test_name_default_and_explicit(tmp_path):
    p = _coco(tmp_path, [_ann(1)])
    assert load_coco(p, tmp_path).name == "ann"
    assert load_coco(p, tmp_path, name="mine").name == "mine"


# ---------------------------------------------------------------- load_coco: fatal errors

@pytest.mark.parametrize("text, match", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "top level must be a JSON object"),
    (json.dumps({"images": [], "annotations": []}), r"missing top-level key.*categories"),
    (json.dumps({"images": {}, "annotations": [], "categories": []}), "'images' must be a list"),
])
def test_fatal_json_errors_name_the_file(tmp_path, text, match):
    p = tmp_path / "broken.json"
    p.write_text(text)
    with pytest.raises(DataError, match=match) as e:
        load_coco(p, tmp_path)
    assert "broken.json" in str(e.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="nope.json.*not found"):
        load_coco(tmp_path / "nope.json", tmp_path)


# ---------------------------------------------------------------- load_coco: skips

def test_annotation_level_skips(tmp_path):
    anns = [
        _ann(1),                                                    # fine
        _ann(2, image_id=99),                                       # missing_image
        _ann(3, category_id=42),                                    # missing_category
        _ann(4, seg=[[1.0, 1.0, 5.0, 5.0]]),                        # degenerate_polygon (2 points)
        _ann(5, seg=[]),                                            # degenerate_polygon (no part)
        _ann(6, seg=[[40.0, 1.0, 45.0, 1.0, 45.0, 5.0]]),           # empty_mask (outside image)
        _ann(7, seg={"size": [H + 1, W], "counts": encode_rle(np.ones((H + 1, W), bool))["counts"]}),
        _ann(8, seg={"size": [H, W], "counts": [5, 10]}),           # bad_segmentation (sum != H*W)
        _ann(9, seg={"size": [H, W], "counts": "~~~ not rle"}),     # bad_segmentation (bad chars)
        _ann(10, seg="a string"),                                   # bad_segmentation
        _ann(11, bbox=[100, 100, 5, 5]),                            # bbox_outside_image
        _ann(12, bbox=[0, 0, -3, 5]),                               # bad_bbox
        {"id": 13, "image_id": 1, "segmentation": [_square_poly(1, 1, 4, 4)]},  # bad_annotation
        {"image_id": 1, "category_id": 1},                          # bad_annotation (no id)
        _ann(14), _ann(14),                                         # duplicate_ann_id (both)
        _ann(15, iscrowd=2),                                        # bad_annotation
        _ann(16, seg={"size": [H, W], "counts": encode_rle(np.zeros((H, W), bool))["counts"]}),  # empty
    ]
    ds = load_coco(_coco(tmp_path, anns), tmp_path)
    assert [t.ann_id for t in ds.instances] == [1]
    got = [(s["ann_id"], s["reason"]) for s in ds.skips]
    assert sorted(got, key=str) == sorted([
        (2, "missing_image"), (3, "missing_category"), (4, "degenerate_polygon"),
        (5, "degenerate_polygon"), (6, "empty_mask"), (7, "rle_size_mismatch"),
        (8, "bad_segmentation"), (9, "bad_segmentation"), (10, "bad_segmentation"),
        (11, "bbox_outside_image"), (12, "bad_bbox"), (13, "bad_annotation"), (None, "bad_annotation"),
        (14, "duplicate_ann_id"), (14, "duplicate_ann_id"), (15, "bad_annotation"), (16, "empty_mask"),
    ], key=str)
    assert all(s["source"].endswith("ann.json") and s["detail"] for s in ds.skips)
    # every input annotation is either loaded or has a row
    assert len(ds.instances) + len(ds.skips) == len(anns)


def test_degenerate_part_dropped_with_note_and_bbox_clipped_note(tmp_path):
    seg = [_square_poly(2, 3, 7, 9), [1.0, 1.0, 2.0, 2.0]]
    ds = load_coco(_coco(tmp_path, [_ann(1, seg=seg, bbox=[-2, 0, 10, 10])]), tmp_path)
    (t,) = ds.instances
    assert t.area == 30
    assert sorted(n["reason"] for n in ds.notes) == ["bbox_clipped", "degenerate_polygon_part"]
    assert ds.skips == []
    table = skips_table(ds, include_notes=True)
    assert list(table["kind"]) == ["note", "note"]


def test_image_level_skips(tmp_path):
    images = [
        {"id": 1, "file_name": "ok.jpg", "height": H, "width": W},
        {"id": 2, "file_name": "gone.jpg", "height": H, "width": W},
        {"id": 3, "file_name": "junk.jpg", "height": H, "width": W},
        {"id": 4, "file_name": "cut.jpg", "height": 64, "width": 64},
        {"id": 5, "file_name": "size.jpg", "height": H, "width": W},
        {"id": 6, "file_name": "dup1.jpg", "height": H, "width": W},
        {"id": 6, "file_name": "dup2.jpg", "height": H, "width": W},
        {"id": 7, "file_name": "neg.jpg", "height": -1, "width": W},
        {"file_name": "noid.jpg", "height": H, "width": W},
    ]
    _save_jpeg(tmp_path / "ok.jpg", _gradient())
    (tmp_path / "junk.jpg").write_bytes(b"\x00" * 100)
    full = _save_jpeg(tmp_path / "full.jpg", _gradient(64, 64)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(full[: len(full) // 2])
    _save_jpeg(tmp_path / "size.jpg", _gradient(H + 2, W))
    for n in ("dup1.jpg", "dup2.jpg", "neg.jpg"):
        _save_jpeg(tmp_path / n, _gradient())
    anns = [_ann(i, image_id=i) for i in range(1, 8)]
    ds = load_coco(_coco(tmp_path, anns, images=images, make_files=False), tmp_path)
    assert list(ds.images) == [1]
    img_rows = sorted((s["image_id"], s["reason"]) for s in ds.skips if s["ann_id"] is None and s["image_id"] is not None)
    assert img_rows == [(2, "image_missing"), (3, "image_unreadable"), (4, "image_truncated"),
                        (5, "image_size_mismatch"), (6, "duplicate_image_id"), (6, "duplicate_image_id"),
                        (7, "bad_image_record")]
    assert sum(1 for s in ds.skips if s["image_id"] is None and s["reason"] == "bad_image_record") == 1
    ann_rows = {s["ann_id"]: s["reason"] for s in ds.skips if s["ann_id"] is not None}
    assert ann_rows == {i: "image_skipped" for i in range(2, 8)}
    detail = next(s["detail"] for s in ds.skips if s["image_id"] == 5 and s["ann_id"] is None)
    assert "size.jpg" in detail and f"{H + 2}x{W}" in detail


def test_check_images_false_trusts_json(tmp_path):
    p = _coco(tmp_path, [_ann(1)], images=[{"id": 1, "file_name": "absent.jpg", "height": H, "width": W}],
              make_files=False)
    ds = load_coco(p, tmp_path, check_images=False)
    assert len(ds.instances) == 1 and ds.skips == []


def test_category_skips(tmp_path):
    cats = [{"id": 1, "name": "car"}, {"id": 2, "name": "a"}, {"id": 2, "name": "b"}, {"id": "x"}]
    ds = load_coco(_coco(tmp_path, [_ann(1), _ann(2, category_id=2)], categories=cats), tmp_path)
    assert ds.categories == {1: "car"}
    reasons = sorted(s["reason"] for s in ds.skips)
    assert reasons == ["bad_category", "category_skipped", "duplicate_category_id", "duplicate_category_id"]


# ---------------------------------------------------------------- EXIF rule

def _stored_block() -> np.ndarray:
    m = np.zeros((H, W), bool)
    m[2:6, 3:12] = True  # asymmetric block in the stored frame
    return m


def test_exif_apply_transposes_masks_with_the_pixels(tmp_path):
    """JSON size = stored size, orientation 6, exif="apply": masks follow the pixels into the displayed frame."""
    _save_jpeg(tmp_path / "r.jpg", _gradient(), orientation=6)
    images = [{"id": 1, "file_name": "r.jpg", "height": H, "width": W}]
    ds = load_coco(_coco(tmp_path, [_ann(1, seg=encode_rle(_stored_block()))], images=images, make_files=False),
                   tmp_path, exif="apply")
    (t,) = ds.instances
    want = np.rot90(_stored_block(), -1)  # orientation 6 = rotate clockwise to display
    assert (t.mask() == want).all()
    rec = ds.images[1]
    assert (rec.height, rec.width) == (W, H) == read_record_image(rec).shape[:2]
    assert rec.exif_orientation == 6 and rec.exif == "apply"
    assert [n["reason"] for n in ds.notes] == ["exif_orientation_applied"]
    # pixels and mask moved together: the masked pixels' colours are the same as in the stored image
    stored = _gradient()
    shown = read_record_image(rec)
    assert np.abs(shown[t.mask()].astype(int).mean(0) - stored[_stored_block()].astype(int).mean(0)).max() < 6


def test_exif_stored_is_the_default_and_noted(tmp_path):
    _save_jpeg(tmp_path / "r.jpg", _gradient(), orientation=6)
    images = [{"id": 1, "file_name": "r.jpg", "height": H, "width": W}]
    ds = load_coco(_coco(tmp_path, [_ann(1, seg=encode_rle(_stored_block()))], images=images, make_files=False),
                   tmp_path)
    (t,) = ds.instances
    assert (t.mask() == _stored_block()).all()
    rec = ds.images[1]
    assert (rec.height, rec.width) == (H, W) == read_record_image(rec).shape[:2] and rec.exif == "stored"
    assert [n["reason"] for n in ds.notes] == ["exif_orientation_ignored"]


def test_exif_json_in_displayed_frame_is_a_size_mismatch(tmp_path):
    """COCO sizes are stored-frame: a JSON size equal only to the displayed size is skipped, and said so."""
    _save_jpeg(tmp_path / "r.jpg", _gradient(), orientation=8)
    images = [{"id": 1, "file_name": "r.jpg", "height": W, "width": H}]  # displayed size
    m = np.zeros((W, H), bool)
    m[1:4, 2:9] = True
    for exif in ("stored", "apply"):
        ds = load_coco(_coco(tmp_path, [_ann(1, seg=encode_rle(m))], images=images, make_files=False), tmp_path,
                       exif=exif)
        assert ds.instances == []
        (row,) = [r for r in ds.skips if r["ann_id"] is None]
        assert row["reason"] == "image_size_mismatch" and "displayed size" in row["detail"] and row["file"] == "r.jpg"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_transpose_mask_matches_pil_on_pixels(tmp_path, orientation):
    from PIL import ImageOps
    m = _stored_block()
    im = ImageOps.exif_transpose(_with_orientation(Image.fromarray(m.astype(np.uint8) * 255), orientation))
    assert (exif_transpose_mask(m, orientation) == (np.asarray(im) > 127)).all()


def _with_orientation(im: Image.Image, orientation: int) -> Image.Image:
    exif = im.getexif()
    exif[0x0112] = orientation
    im.info["exif"] = exif.tobytes()
    return im


# ---------------------------------------------------------------- write / read round trip

def test_write_read_round_trip(tmp_path):
    m1 = np.zeros((H, W), bool)
    m1[1:5, 1:8] = True
    m2 = np.zeros((H, W), bool)
    m2[6:18, 10:29] = True
    m2[9:12, 15:20] = False  # a hole
    ign = np.zeros((H, W), bool)
    ign[5:7, 10:29] = True
    _save_jpeg(tmp_path / "a.jpg", _gradient())

    def inst(ann_id, m, **kw):
        from samstudy.masks import mask_box_xyxy
        return Instance(image_id=1, ann_id=ann_id, category_id=3, category="bus", rle=encode_rle(m),
                        area=int(m.sum()), box_xyxy=tuple(mask_box_xyxy(m).tolist()), **kw)

    ds = Dataset(name="rt", images={1: ImageRecord(1, "a.jpg", tmp_path / "a.jpg", H, W)},
                 categories={3: "bus", 1: "car"},
                 instances=[inst(7, m2, iscrowd=True, tags=("holes",), ignore_rle=encode_rle(ign),
                                 source_ann_ids=(2, 5)),
                            inst(2, m1, source_ann_ids=(2,))],
                 policy_log=[{"name": "fill_holes", "params": {"connectivity": 4}, "changed": 1}])
    out = write_coco(ds, tmp_path / "out" / "rt.json")
    back = load_coco(out, tmp_path)
    assert back.name == "rt"
    assert back.images == ds.images
    assert back.categories == {1: "car", 3: "bus"}
    assert back.instances == sorted(ds.instances, key=lambda t: t.ann_id)
    assert back.policy_log == ds.policy_log
    assert back.skips == []
    # deterministic bytes
    again = write_coco(back, tmp_path / "again.json")
    assert again.read_bytes() == out.read_bytes()
    raw = json.loads(out.read_text())
    assert raw["annotations"][0]["bbox"] == [1.0, 1.0, 7.0, 4.0]  # xywh of the tight box
    assert raw["annotations"][1]["area"] == int(m2.sum())


def test_skips_table_columns_and_dtypes(tmp_path):
    ds = load_coco(_coco(tmp_path, [_ann(1), _ann(2, image_id=9)]), tmp_path)
    df = skips_table(ds)
    assert list(df.columns) == ["source", "image_id", "ann_id", "file", "reason", "detail"]
    assert df["ann_id"].tolist() == [2] and df["reason"].tolist() == ["missing_image"]
    assert df["file"].isna().all()  # image 9 is not in the file
    empty = skips_table(Dataset("e", {}, {}, []))
    assert list(empty.columns) == ["source", "image_id", "ann_id", "file", "reason", "detail"] and len(empty) == 0


# ---------------------------------------------------------------- real COCO sample

def test_real_coco_sample_matches_pycocotools(coco_sample_dir):
    from pycocotools.coco import COCO
    import contextlib
    import io

    ds = load_coco(coco_sample_dir / "instances.json", coco_sample_dir / "images")
    assert len(ds.images) == 341 and len(ds.instances) == 3079 and len(ds.categories) == 80
    assert ds.skips == []
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(coco_sample_dir / "instances.json"))
    rng = np.random.default_rng(0)
    picks = list(rng.choice(len(ds.instances), size=60, replace=False))
    picks += [i for i, t in enumerate(ds.instances) if t.iscrowd][:5]
    for i in picks:
        t = ds.instances[i]
        ref = coco.annToMask(coco.anns[t.ann_id]).astype(bool)
        assert (t.mask() == ref).all(), t.ann_id
        assert t.area == int(ref.sum())
        assert t.category == coco.cats[t.category_id]["name"]
    # images are readable and their size is the record's
    rec = ds.images[sorted(ds.images)[0]]
    assert read_image(rec.path).shape == (rec.height, rec.width, 3)


def test_read_image_more_modes_and_trailing_bytes(tmp_path):
    arr = _gradient()
    data = _save_jpeg(tmp_path / "t.jpg", arr).read_bytes()
    (tmp_path / "trail.jpg").write_bytes(data + b"trailing vendor data")  # valid JPEG, junk after EOI
    assert read_image(tmp_path / "trail.jpg").shape == (H, W, 3)
    Image.fromarray(arr).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (H, W, 3) and np.abs(out.astype(int) - arr.astype(int)).mean() < 12
    la = Image.fromarray(np.stack([np.full((H, W), 77, np.uint8), np.zeros((H, W), np.uint8)], 2), mode="LA")
    la.save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 77).all()
    Image.fromarray(np.eye(H, W, dtype=bool)).save(tmp_path / "b.png")  # 1-bit
    out = read_image(tmp_path / "b.png")
    assert (out[..., 0] == np.eye(H, W) * 255).all()
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="empty.jpg"):
        read_image(tmp_path / "empty.jpg")


def test_tight_crop_cuts_to_the_masks_box_and_refuses_an_empty_mask():
    from samstudy.masks import tight_crop

    m = np.zeros((6, 9), bool)
    m[2:4, 3:7] = True
    m[4, 5] = True
    crop, (x0, y0) = tight_crop(m)
    assert (x0, y0) == (3, 2) and crop.shape == (3, 4) and crop.flags["C_CONTIGUOUS"]
    assert np.array_equal(crop, m[2:5, 3:7]) and crop.sum() == m.sum()
    assert tight_crop(np.zeros((4, 4), bool)) is None
