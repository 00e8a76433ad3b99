"""Tests of samstudy.isegm: GrabCut/Berkeley/DAVIS/COCO_MVal loaders (RITM protocol) on folders the
tests make, on the shared data, and RITM's NoC counts."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from samstudy.data import DataError, read_image
from samstudy import compare
from samstudy.isegm import load_berkeley, load_coco_mval, load_davis, load_grabcut, load_isegm, stable_id

H, W = 12, 16


def _img(path: Path, h: int = H, w: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(path)


def _mask(path: Path, values: np.ndarray, rgb: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.repeat(values[..., None], 3, axis=2) if rgb else values
    Image.fromarray(arr.astype(np.uint8)).save(path)


def _grabcut_values() -> np.ndarray:
    v = np.zeros((H, W), np.uint8)
    v[2:10, 3:13] = 128     # uncertain band ...
    v[3:9, 4:12] = 255      # ... around the object
    return v


def test_stable_id_rule():
    assert stable_id("189011") == 189011
    assert stable_id("banana1") == zlib.crc32(b"banana1") & 0x7FFFFFFF
    assert stable_id("banana1") == stable_id("banana1") < 2**31


def test_grabcut_values_ids_and_skips(tmp_path):
    root = tmp_path / "GrabCut"
    _img(root / "data_GT" / "banana1.bmp")
    _mask(root / "boundary_GT" / "banana1.bmp", _grabcut_values())
    _img(root / "data_GT" / "21077.JPG")
    _mask(root / "boundary_GT" / "21077.bmp", _grabcut_values(), rgb=True)
    _mask(root / "boundary_GT" / "orphan.bmp", _grabcut_values())               # image_missing
    _img(root / "data_GT" / "lonely.jpg")                                        # mask_missing
    _img(root / "data_GT" / "big.jpg", H + 1, W)                                 # image_size_mismatch
    _mask(root / "boundary_GT" / "big.bmp", _grabcut_values())
    _img(root / "data_GT" / "blank.jpg")                                         # empty_mask
    _mask(root / "boundary_GT" / "blank.bmp", np.where(_grabcut_values() == 255, 128, _grabcut_values()))
    (root / "data_GT" / "broken.jpg").write_bytes(b"not an image")               # image_unreadable
    _mask(root / "boundary_GT" / "broken.bmp", _grabcut_values())
    _img(root / "data_GT" / "twin.jpg")                                          # image_ambiguous
    _img(root / "data_GT" / "twin.png")
    _mask(root / "boundary_GT" / "twin.bmp", _grabcut_values())
    _img(root / "data_GT" / "badmask.jpg")                                       # mask_unreadable
    (root / "boundary_GT" / "badmask.bmp").write_bytes(b"BM garbage")

    ds = load_grabcut(root)
    assert ds.name == "grabcut" and ds.categories == {1: "object"}
    by_id = {t.ann_id: t for t in ds.instances}
    assert sorted(by_id) == sorted([21077, stable_id("banana1")])
    t = by_id[stable_id("banana1")]
    v = _grabcut_values()
    assert (t.mask() == (v == 255)).all() and t.area == 48
    assert (t.ignore_mask() == (v == 128)).all()
    assert t.box_xyxy == (4.0, 3.0, 12.0, 9.0)
    assert t.tags == ("grabcut",) and t.image_id == t.ann_id and t.category == "object"
    rec = ds.images[21077]
    assert rec.file_name == "data_GT/21077.JPG" and read_image(rec.path).shape == (rec.height, rec.width, 3)
    assert (by_id[21077].mask() == (v == 255)).all()  # colour mask file read as its channel maximum
    reasons = sorted((s["reason"], s["image_id"]) for s in ds.skips)
    assert reasons == sorted([
        ("image_missing", stable_id("orphan")), ("mask_missing", stable_id("lonely")),
        ("image_size_mismatch", stable_id("big")), ("empty_mask", stable_id("blank")),
        ("image_unreadable", stable_id("broken")), ("image_ambiguous", stable_id("twin")),
        ("mask_unreadable", stable_id("badmask")),
    ])
    assert all(s["detail"] for s in ds.skips)


def test_grabcut_unexpected_values_noted(tmp_path):
    root = tmp_path / "GrabCut"
    v = _grabcut_values()
    v[0, 0] = 200
    _img(root / "data_GT" / "x.jpg")
    _mask(root / "boundary_GT" / "x.bmp", v)
    ds = load_grabcut(root)
    assert len(ds.instances) == 1 and [n["reason"] for n in ds.notes] == ["mask_unexpected_values"]
    assert ds.instances[0].area == 49  # 200 > 128 counts as object


def test_berkeley_suffixes_threshold_and_skips(tmp_path):
    root = tmp_path / "Berkeley"
    _img(root / "images" / "189011.jpg")
    a = np.zeros((H, W), np.uint8)
    a[1:5, 1:5] = 255
    b = np.zeros((H, W), np.uint8)
    b[6:11, 8:15] = 200
    b[6, 8] = 127          # not above the threshold
    _mask(root / "masks" / "189011a.png", a, rgb=True)
    _mask(root / "masks" / "189011b.png", b)
    _mask(root / "masks" / "189011.png", np.maximum(a, b))
    magenta = np.zeros((H, W, 3), np.uint8)
    magenta[2:4, 2:4] = [255, 0, 255]
    _img(root / "images" / "3096.jpg")
    Image.fromarray(magenta).save(root / "masks" / "3096.png")
    _mask(root / "masks" / "777.png", a)                                        # image_missing
    _img(root / "images" / "555.jpg")                                           # mask_missing
    _img(root / "images" / "444.jpg", W, H)                                     # image_size_mismatch
    _mask(root / "masks" / "444.png", a)

    ds = load_berkeley(root, protocol="all_masks")
    assert ds.name == "berkeley_all"
    ids = sorted(t.ann_id for t in ds.instances)
    assert ids == [30960, 1890110, 1890111, 1890112]
    by_id = {t.ann_id: t for t in ds.instances}
    assert (by_id[1890111].mask() == (a > 127)).all() and by_id[1890111].area == 16
    assert by_id[1890112].area == 34 and not by_id[1890112].mask()[6, 8]
    assert by_id[1890110].area == 16 + 34
    assert by_id[30960].area == 4  # channel maximum: magenta is object
    assert all(t.image_id == 189011 for t in ds.instances if t.ann_id != 30960)
    assert all(t.ignore_rle is None and t.tags == ("berkeley",) for t in ds.instances)
    assert sorted(ds.images) == [3096, 189011]
    assert sorted(s["reason"] for s in ds.skips) == ["image_missing", "image_size_mismatch", "mask_missing"]


def test_berkeley_exif_rotated_image_compared_as_stored(tmp_path):
    """The one EXIF rule (samstudy.data): masks and sizes are in the stored frame, the tag is ignored."""
    root = tmp_path / "Berkeley"
    (root / "images").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((W, H, 3), np.uint8)).save(root / "images" / "1.jpg", exif=exif.tobytes())  # stored W x H
    Image.fromarray(np.zeros((W, H, 3), np.uint8)).save(root / "images" / "2.jpg", exif=exif.tobytes())
    m = np.zeros((W, H), np.uint8)
    m[2:5, 2:9] = 255
    _mask(root / "masks" / "1.png", m)    # stored W x H: loaded
    _mask(root / "masks" / "2.png", m.T)  # displayed H x W: a size mismatch
    ds = load_berkeley(root)
    assert len(ds.instances) == 1 and ds.images[1].exif_orientation == 6
    assert read_image(ds.images[1].path).shape[:2] == (W, H) == (ds.images[1].height, ds.images[1].width)
    assert [s["reason"] for s in ds.skips] == ["image_size_mismatch"]


def test_missing_folders_raise(tmp_path):
    with pytest.raises(DataError, match="data_GT"):
        load_grabcut(tmp_path)
    with pytest.raises(DataError, match="images"):
        load_berkeley(tmp_path)
    with pytest.raises(ValueError, match="unknown isegm"):
        load_isegm(tmp_path, "sbd")
    with pytest.raises(DataError, match="img"):
        load_isegm(tmp_path, "davis")
    with pytest.raises(ValueError, match="protocol"):
        load_berkeley(tmp_path, protocol="mine")


def test_shared_grabcut(isegm_dir):
    ds = load_isegm(isegm_dir, "grabcut")
    assert len(ds.instances) == 50 and len(ds.images) == 50 and ds.skips == []
    assert len({t.ann_id for t in ds.instances}) == 50
    assert sum(t.ignore_rle is not None for t in ds.instances) >= 40  # most masks have the 128 band
    t = next(t for t in ds.instances if t.image_id == stable_id("banana1"))
    raw = np.asarray(Image.open(isegm_dir / "GrabCut" / "boundary_GT" / "banana1.bmp").convert("L"))
    assert (t.mask() == (raw == 255)).all() and (t.ignore_mask() == (raw == 128)).all()
    rec = ds.images[t.image_id]
    assert read_image(rec.path).shape == (rec.height, rec.width, 3)


def test_shared_berkeley_ritm_protocol(isegm_dir):
    ds = load_isegm(isegm_dir, "berkeley")
    assert ds.name == "berkeley" and len(ds.instances) == 96 and len(ds.images) == 96 and ds.skips == []
    assert {t.ann_id for t in ds.instances} == {i * 10 for i in ds.images}  # one object per image
    t = next(t for t in ds.instances if t.image_id == 189011)
    parts = [np.asarray(Image.open(isegm_dir / "Berkeley" / "masks" / f"189011{x}.png").convert("RGB")).max(axis=2)
             for x in "ab"]
    assert (t.mask() == ((parts[0] > 128) | (parts[1] > 128))).all()  # the union of the two objects
    assert [n["image_id"] for n in ds.notes if n["reason"] == "union_differs"] == [239007]


def test_shared_masks_channel_max_is_ritm_blue_channel(isegm_dir):
    """RITM reads the first channel of OpenCV's BGR image (blue); our channel maximum agrees on every mask."""
    files = sorted((isegm_dir / "GrabCut" / "boundary_GT").glob("*.bmp")) + \
        sorted((isegm_dir / "Berkeley" / "masks").glob("*.png"))
    assert len(files) == 150
    for f in files:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        assert ((rgb.max(axis=2) > 128) == (rgb[..., 2] > 128)).all(), f.name
        assert ((rgb.max(axis=2) == 128) == (rgb[..., 2] == 128)).all(), f.name


def test_shared_berkeley_all_masks(isegm_dir):
    ds = load_isegm(isegm_dir, "berkeley_all")
    assert len(ds.instances) == 100 and len(ds.images) == 96 and ds.skips == []
    on_189011 = sorted(t.ann_id for t in ds.instances if t.image_id == 189011)
    assert on_189011 == [1890110, 1890111, 1890112]
    t = next(t for t in ds.instances if t.ann_id == 1890111)
    raw = np.asarray(Image.open(isegm_dir / "Berkeley" / "masks" / "189011a.png").convert("RGB")).max(axis=2)
    assert (t.mask() == (raw > 127)).all()


def test_grabcut_round_trips_through_coco(tmp_path):
    root = tmp_path / "GrabCut"
    _img(root / "data_GT" / "banana1.bmp")
    _mask(root / "boundary_GT" / "banana1.bmp", _grabcut_values())
    from samstudy.data import load_coco, write_coco
    ds = load_grabcut(root)
    back = load_coco(write_coco(ds, tmp_path / "gc.json"), root)
    assert back.instances == ds.instances and back.images == ds.images and back.categories == ds.categories


def test_berkeley_ritm_protocol_one_object_per_image(tmp_path):
    root = tmp_path / "Berkeley"
    a = np.zeros((H, W), np.uint8)
    a[1:5, 1:5] = 255
    b = np.zeros((H, W), np.uint8)
    b[6:11, 8:15] = 255
    b[6, 8:10] = 128                                      # ignored, as RITM does
    for stem in ("100", "200", "300"):
        _img(root / "images" / f"{stem}.jpg")
    _mask(root / "masks" / "100a.png", a)                   # parts only: their union
    _mask(root / "masks" / "100b.png", b)
    _mask(root / "masks" / "200.png", np.maximum(a, b))     # the union file, and parts that differ from it
    _mask(root / "masks" / "200a.png", a)
    _mask(root / "masks" / "200b.png", np.zeros_like(b))
    _mask(root / "masks" / "300.png", a, rgb=True)
    _img(root / "images" / "400.jpg")                      # mask_missing
    _mask(root / "masks" / "500.png", a)                    # image_missing
    ds = load_berkeley(root)
    assert ds.name == "berkeley" and sorted(t.ann_id for t in ds.instances) == [1000, 2000, 3000]
    by = {t.image_id: t for t in ds.instances}
    assert by[100].area == 16 + 35 - 2 and not by[100].mask()[6, 8] and by[100].ignore_mask()[6, 8]
    assert by[200].area == by[100].area  # the file is used, not the (different) union of its parts
    assert [(n["image_id"], n["reason"]) for n in ds.notes] == [(200, "union_differs")]
    assert "33 pixels" in ds.notes[0]["detail"]  # b's 35 pixels minus its 2 ignored ones
    assert by[300].area == 16
    assert sorted((s["image_id"], s["reason"]) for s in ds.skips) == [(400, "mask_missing"), (500, "image_missing")]


@pytest.mark.parametrize("loader, folder, name", [(load_davis, "DAVIS", "davis"), (load_coco_mval, "COCO_MVal", "coco_mval")])
def test_davis_layout_every_nonzero_value_is_the_object(tmp_path, loader, folder, name):
    root = tmp_path / folder
    v = np.zeros((H, W, 3), np.uint8)
    v[2:6, 3:9, 0] = 1        # a low label value in one channel is object
    v[7:9, 3:5] = [0, 0, 200]
    _img(root / "img" / "bear_00.jpg")
    (root / "gt").mkdir(parents=True)
    Image.fromarray(v).save(root / "gt" / "bear_00.png")
    _img(root / "img" / "cat.jpg")
    _mask(root / "gt" / "cat.png", np.zeros((H, W), np.uint8))   # empty_mask
    _img(root / "img" / "dog.jpg")                               # mask_missing
    _mask(root / "gt" / "eel.png", np.full((H, W), 3, np.uint8))   # image_missing
    ds = loader(root)
    assert ds.name == name and len(ds.instances) == 1
    t = ds.instances[0]
    assert t.ann_id == t.image_id == stable_id("bear_00") and t.area == 24 + 4 and t.tags == (name,)
    assert t.ignore_rle is None
    assert sorted(s["reason"] for s in ds.skips) == ["empty_mask", "image_missing", "mask_missing"]
    again = load_isegm(tmp_path, name)
    assert again.instances == ds.instances


def _click_rows(ious_by_object, max_click):
    rows = []
    for ann, seq in ious_by_object.items():
        for k, v in enumerate(seq, start=1):
            rows.append({"dataset": "d", "split": "test", "policy": "raw", "gt_variant": "primary", "model": "m",
                         "model_label": "M", "prompt_mode": f"clicks[start=click,max_clicks={max_click}]",
                         "multimask": "single", "image_id": ann, "ann_id": ann, "click": k, "iou": v,
                         "status": "ok"})
    return pd.DataFrame(rows)


def test_noc_counts_as_ritm():
    """RITM's >=20 column counts NoC == 20, including a target reached exactly at click 20."""
    seq_reached_last = [0.5] * 19 + [0.95]
    seq_never = [0.5] * 20
    seq_fast = [0.86, 0.91] + [0.95] * 18
    noc = compare.noc_summary(_click_rows({1: seq_reached_last, 2: seq_never, 3: seq_fast}, 20)).iloc[0]
    assert noc["NoC@90"] == pytest.approx((20 + 20 + 2) / 3) and noc["NoC@85"] == pytest.approx((20 + 20 + 1) / 3)
    assert noc[">=max@90"] == 2 and noc["unreached@90"] == 1
    assert noc[">=max@85"] == 2 and noc["unreached@85"] == 1
    assert noc["reached@90 (%)"] == pytest.approx(200 / 3)
