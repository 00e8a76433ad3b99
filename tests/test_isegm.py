"""Tests of samstudy.isegm: GrabCut/Berkeley loaders on hand-made folders and on the shared data."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from samstudy.data import DataError, read_image
from samstudy.isegm import load_berkeley, load_grabcut, load_isegm, stable_id

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

    ds = load_berkeley(root)
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
        load_isegm(tmp_path, "davis")


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


def test_shared_berkeley(isegm_dir):
    ds = load_isegm(isegm_dir, "berkeley")
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
