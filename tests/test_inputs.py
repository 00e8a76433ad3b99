"""Inputs that used to pass silently (issue 11, items 1-4), each on a real broken or edge-case file
made here: a mistyped data folder, a stage that skips too much or keeps no object, a truncated JPEG
that still ends with its FFD9 end marker, EXIF orientations 1-8, images with an alpha channel.

Truths are independent of the code under test: pycocotools' ``annToMask`` for masks, the EXIF
specification written out with numpy for the orientations, pixels that encode their own stored
coordinates, counts written by hand.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageOps

from samstudy import data_stage, engine
from samstudy.config import ConfigError, load_config
from samstudy.data import (DataError, TooManySkips, check_skip_limit, load_coco, probe_image, read_image,
                           read_record_image, skips_table)
from samstudy.report import record, write_index
from samstudy.stages import RunLayout, active_stages

H, W = 24, 40


# ------------------------------------------------------------------------------------------ helpers
def _picture(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.stack([*np.meshgrid(np.linspace(0, 200, w), np.linspace(0, 150, h)), np.full((h, w), 90.0)], 2)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _coco_file(folder: Path, images: list[dict], annotations: list[dict], name: str = "ann.json") -> Path:
    p = folder / name
    p.write_text(json.dumps({"images": images, "annotations": annotations,
                             "categories": [{"id": 1, "name": "thing"}]}))
    return p


def _box_poly(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _coco_set(folder: Path, n: int, h: int = H, w: int = W) -> Path:
    """``n`` JPEGs with one polygon object each; returns the annotation file."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(1, n + 1):
        Image.fromarray(_picture(h, w, i)).save(folder / "images" / f"{i}.jpg", quality=90)
        images.append({"id": i, "file_name": f"{i}.jpg", "height": h, "width": w})
        anns.append({"id": 100 + i, "image_id": i, "category_id": 1, "iscrowd": 0,
                     "segmentation": _box_poly(3, 4, 20, 15)})
    return _coco_file(folder, images, anns)


def _source_jpeg(coco_dir: Path | None, tmp: Path) -> bytes:
    """A real JPEG: the first image of the shared COCO sample when present, else a generated one."""
    if coco_dir is not None:
        return sorted((coco_dir / "images").glob("*.jpg"))[0].read_bytes()
    buf = io.BytesIO()
    Image.fromarray(_picture(240, 320)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def maybe_coco():
    from conftest import SHARED_DATA

    d = SHARED_DATA / "coco-sample"
    return d if (d / "images").is_dir() else None


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ======================================================== 1. a mistyped folder, a stage that skips too much
def _config(tmp: Path, data: dict) -> Path:
    (tmp / "pyproject.toml").touch()
    p = tmp / "configs" / "c.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump({"name": "c", "data": data, "custom": {"enabled": False, "modes": ["tight_box"]},
                                 "foundation": {"models": [{"name": "litemedsam"}], "modes": ["tight_box"],
                                                "buffer_sweep": []},
                                 "compare": {"n_boot": 200, "loose_mode": None}}))
    return p


@pytest.mark.parametrize("key", ["images", "annotations", "train_images", "train_annotations"])
def test_missing_coco_path_is_a_config_error_naming_key_file_and_path(tmp_path, key):
    ann = _coco_set(tmp_path / "d", 2)
    data = {"source": "coco", "annotations": str(ann), "images": str(tmp_path / "d" / "images"),
            "train_annotations": str(ann), "train_images": str(tmp_path / "d" / "images")}
    assert load_config(_config(tmp_path, data)).data.images == data["images"]  # all present: loads
    data[key] = "../d/imagse" if key.endswith("images") else "../d/ann.jsn"  # a typo, relative to the config's folder
    cfg_path = _config(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(cfg_path)
    msg = str(e.value)
    assert f"data.{key}" in msg and str(cfg_path) in msg and str((cfg_path.parent / data[key]).resolve()) in msg


def test_missing_isegm_folder_is_a_config_error(tmp_path):
    (tmp_path / "isegm" / "GrabCut").mkdir(parents=True)
    data = {"source": "isegm", "isegm_root": str(tmp_path / "isegm"), "isegm_datasets": ["grabcut"]}
    load_config(_config(tmp_path, data))
    with pytest.raises(ConfigError, match="data.isegm_root.*Berkeley"):
        load_config(_config(tmp_path, {**data, "isegm_datasets": ["grabcut", "berkeley"]}))
    with pytest.raises(ConfigError, match="data.isegm_root: folder not found"):
        load_config(_config(tmp_path, {**data, "isegm_root": str(tmp_path / "isgem")}))


def test_samstudy_run_exits_2_on_a_mistyped_images_folder(tmp_path, capsys):
    from samstudy.cli import main

    ann = _coco_set(tmp_path / "d", 2)
    cfg = _config(tmp_path, {"source": "coco", "annotations": str(ann), "images": str(tmp_path / "d" / "imgs")})
    assert main(["run", "--config", str(cfg), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert "data.images" in err and "imgs" in err
    assert not (tmp_path / "results").exists()  # nothing ran


@pytest.mark.parametrize("field, value", [("max_skip_fraction", 1.5), ("max_skip_fraction", "five percent"),
                                          ("exif", "rotate")])
def test_bad_new_data_fields_are_config_errors(tmp_path, field, value):
    with pytest.raises(ConfigError, match=f"data.{field}"):
        load_config(_config(tmp_path, {"source": "synthetic", field: value}))


def test_skip_limit_counts_by_hand_and_stops_past_the_fraction(tmp_path):
    """20 images; 1 missing = 5 % (allowed: not more than 5 %); 2 missing = 10 % stops, naming both files."""
    ann = _coco_set(tmp_path, 20)
    (tmp_path / "images" / "7.jpg").unlink()
    ds = load_coco(ann, tmp_path / "images")
    s = check_skip_limit(skips_table(ds), len(ds.images), len(ds.instances), 0.05, "here")
    assert (s["images"], s["images_skipped"], s["objects"], s["objects_skipped"], s["objects_left"]) == (20, 1, 20, 1, 19)
    assert s["by_reason"] == {"image_missing": 1, "image_skipped": 1} and s["examples"]["image_missing"] == ["7.jpg"]
    (tmp_path / "images" / "12.jpg").write_bytes(b"not a jpeg")
    ds = load_coco(ann, tmp_path / "images")
    with pytest.raises(TooManySkips) as e:
        check_skip_limit(skips_table(ds), len(ds.images), len(ds.instances), 0.05, "data stage, test source 'x'")
    msg = str(e.value)
    assert "2 of 20 images skipped (10.0% > data.max_skip_fraction 0.05)" in msg
    assert "image_missing: 1 (e.g. 7.jpg)" in msg and "image_unreadable: 1 (e.g. 12.jpg)" in msg
    assert e.value.summary["images_skipped"] == 2
    # the same skips pass a looser limit
    assert check_skip_limit(skips_table(ds), len(ds.images), len(ds.instances), 0.2, "x")["images_skipped"] == 2


def test_data_stage_stops_with_no_test_object_and_on_a_wrong_images_folder(tmp_path):
    ann = _coco_set(tmp_path, 6)
    sources, _ = data_stage.load_source("coco", tmp_path / "out", "s", annotations=str(ann),
                                        images=str(tmp_path / "images"))
    assert len(data_stage.check_inputs(sources, sources, None, 0.05)) == 1
    with pytest.raises(TooManySkips, match="no object left"):  # e.g. a category filter that matches nothing
        data_stage.check_inputs(sources, {"s": sources["s"].subset(set())}, None, 0.05)
    # the images folder exists but is the wrong one: every image is missing
    (tmp_path / "other").mkdir()
    sources, _ = data_stage.load_source("coco", tmp_path / "out", "s", annotations=str(ann),
                                        images=str(tmp_path / "other"))
    with pytest.raises(TooManySkips) as e:
        data_stage.check_inputs(sources, sources, None, 0.05)
    assert "6 of 6 images skipped" in str(e.value) and "image_missing: 6" in str(e.value)


def test_first_images_keeps_the_skips_of_its_id_range(tmp_path):
    ann = _coco_set(tmp_path, 10)
    for i in (2, 9):
        (tmp_path / "images" / f"{i}.jpg").unlink()
    ds = load_coco(ann, tmp_path / "images")
    sub = data_stage.first_images(ds, 4)  # ids 1, 3, 4, 5 loaded; 2 skipped inside the range, 9 outside
    assert sorted(sub.images) == [1, 3, 4, 5]
    assert sorted({r["image_id"] for r in sub.skips}) == [2]
    s = check_skip_limit(skips_table(sub), len(sub.images), len(sub.instances), 0.5, "x")
    assert (s["images"], s["images_skipped"]) == (5, 1)


def test_engine_stops_past_the_skip_fraction_after_writing_its_tables(tmp_path):
    from test_engine import BoxFake, make_dataset

    ds = make_dataset(tmp_path, n_images=4)
    df = engine.run_experiment(ds, BoxFake(), ["tight_box"], out_dir=tmp_path / "ok", progress=False,
                               max_skip_fraction=0.05)
    assert (df.status == "ok").all()
    # one of 4 images cut short after the data stage checked it: 25 % of the images are skipped
    png = ds.images[3].path.read_bytes()
    ds.images[3].path.write_bytes(png[: len(png) // 2])
    with pytest.raises(TooManySkips) as e:
        engine.run_experiment(ds, BoxFake(), ["tight_box"], out_dir=tmp_path / "cut", progress=False,
                              max_skip_fraction=0.05)
    assert "1 of 4 images skipped" in str(e.value) and "image_truncated: 4 (e.g. 3.png)" in str(e.value)
    assert (tmp_path / "cut" / "results.parquet").is_file()  # finished work is kept (a rerun resumes)
    rows = engine.run_experiment(ds, BoxFake(), ["tight_box"], out_dir=tmp_path / "cut", progress=False)
    table, images_kept, objects_kept = engine.skip_table(rows, ds)
    assert (images_kept, objects_kept) == (3, 9)
    assert table["reason"].tolist() == ["image_truncated"] * 4 and table["ann_id"].isna().sum() == 1
    # a dataset with no object at all stops too
    with pytest.raises(TooManySkips, match="no object left"):
        engine.run_experiment(ds.subset(set()), BoxFake(), ["tight_box"], out_dir=tmp_path / "empty",
                              progress=False, max_skip_fraction=0.05)


def test_index_shows_skip_and_note_counts_with_a_link(tmp_path):
    ann = _coco_set(tmp_path, 5)
    (tmp_path / "images" / "2.jpg").unlink()
    ds = load_coco(ann, tmp_path / "images")
    layout = RunLayout(tmp_path / "results" / "r")
    table = skips_table(ds, include_notes=True)
    out = layout.stage_dir("data")
    out.mkdir(parents=True)
    table.to_csv(out / f"{data_stage.SKIPS_TABLE}.csv", index=False)
    record(out, "skips_and_notes", data_stage.skip_counts(table))
    page = write_index(layout, active_stages(False), {"run": "r", "config": {"name": "r"}}).read_text()
    assert "<b>2</b> input elements skipped, <b>0</b> notes" in page  # image_missing + image_skipped
    assert "href='../data/skips_and_notes.csv'" in page
    assert (layout.report_dir / "../data/skips_and_notes.csv").resolve().is_file()


# ======================================================== 2. a truncated JPEG that still ends with FFD9
@pytest.mark.parametrize("cut", ["middle", "tail", "progressive"])
def test_truncated_jpeg_ending_with_ffd9_is_image_truncated(tmp_path, maybe_coco, cut):
    good = _source_jpeg(maybe_coco, tmp_path)
    if cut == "progressive":
        buf = io.BytesIO()
        Image.open(io.BytesIO(good)).save(buf, "JPEG", quality=90, progressive=True)
        good = buf.getvalue()
    n = len(good)
    bad = good[: n // 3] + good[2 * n // 3:] if cut == "middle" else good[: n // 2] + b"\xff\xd9"
    assert bad.endswith(b"\xff\xd9")
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "bad.jpg").write_bytes(bad)
    with Image.open(tmp_path / "bad.jpg") as im:
        im.load()  # PIL alone accepts it (grey fill): the case the tail check let through
    hw = read_image(tmp_path / "good.jpg").shape[:2]
    for fn in (read_image, probe_image):
        with pytest.raises(DataError, match="bad.jpg.*truncated") as e:
            fn(tmp_path / "bad.jpg")
        assert e.value.reason == "image_truncated"
    images = [{"id": i, "file_name": f, "height": hw[0], "width": hw[1]} for i, f in ((1, "good.jpg"), (2, "bad.jpg"))]
    anns = [{"id": 10 + i, "image_id": i, "category_id": 1, "iscrowd": 0, "segmentation": _box_poly(5, 5, 60, 50)}
            for i in (1, 2)]
    ds = load_coco(_coco_file(tmp_path, images, anns), tmp_path)
    assert list(ds.images) == [1]
    (row,) = [r for r in ds.skips if r["ann_id"] is None]
    assert (row["image_id"], row["reason"], row["file"]) == (2, "image_truncated", "bad.jpg")


def test_truncated_png_ending_with_iend_is_a_skip(tmp_path):
    Image.fromarray(_picture(120, 160)).save(tmp_path / "good.png")
    good = (tmp_path / "good.png").read_bytes()
    iend = good[-12:]
    assert iend[4:8] == b"IEND"
    (tmp_path / "head.png").write_bytes(good[: len(good) // 2] + iend)
    (tmp_path / "mid.png").write_bytes(good[: len(good) // 3] + good[2 * len(good) // 3:])
    with pytest.raises(DataError) as e:
        probe_image(tmp_path / "head.png")
    assert e.value.reason == "image_truncated"
    with pytest.raises(DataError) as e:
        read_image(tmp_path / "mid.png")
    assert e.value.reason in ("image_truncated", "image_unreadable")


def test_engine_records_a_jpeg_cut_after_loading_as_image_truncated(tmp_path, maybe_coco):
    from test_engine import BoxFake

    from samstudy.data import Dataset, ImageRecord, Instance
    from samstudy.masks import encode_rle

    good = _source_jpeg(maybe_coco, tmp_path)
    (tmp_path / "x.jpg").write_bytes(good[: len(good) // 2] + b"\xff\xd9")
    h, w = Image.open(io.BytesIO(good)).size[::-1]
    m = np.zeros((h, w), bool)
    m[10:40, 20:60] = True
    inst = Instance(1, 5, 1, "thing", encode_rle(m), int(m.sum()), (20.0, 10.0, 60.0, 40.0))
    ds = Dataset("t", {1: ImageRecord(1, "x.jpg", tmp_path / "x.jpg", h, w)}, {1: "thing"}, [inst])
    rows, _ = engine.process_image(ds.images[1], ds.instances, BoxFake(), ["tight_box"], multimask=["single"])
    assert [r["skip_reason"] for r in rows] == ["image_truncated"] and rows[0]["status"] == "skipped"


# ======================================================== 3. EXIF orientation: one rule, stored by default
# The EXIF specification: the transform that turns the stored pixels into the displayed ones.
DISPLAY = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.swapaxes(a[::-1], 0, 1),
           7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1), 8: lambda a: np.swapaxes(a, 0, 1)[::-1]}


def _coordinate_image(h: int, w: int) -> np.ndarray:
    """Pixels that name their own stored position: R = row, G = column, B = 7."""
    rr, cc = np.indices((h, w))
    return np.stack([rr, cc, np.full((h, w), 7)], 2).astype(np.uint8)


def _exif_set(tmp: Path, h: int, w: int) -> Path:
    """PNG images (lossless) with EXIF orientation 1..8, their COCO sizes and masks in the stored frame."""
    images, anns = [], []
    poly = [[2.5, 1.5, 14.5, 3.5, 9.5, 12.5, 3.5, 9.5]]  # asymmetric: any flip or turn shows
    block = np.zeros((h, w), np.uint8)
    block[h - 6:h - 2, 1:5] = 1
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(block))
    rle["counts"] = rle["counts"].decode()
    for k in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = k
        Image.fromarray(_coordinate_image(h, w)).save(tmp / f"o{k}.png", exif=exif.tobytes())
        images.append({"id": k, "file_name": f"o{k}.png", "height": h, "width": w})
        anns += [{"id": 10 * k, "image_id": k, "category_id": 1, "iscrowd": 0, "segmentation": poly},
                 {"id": 10 * k + 1, "image_id": k, "category_id": 1, "iscrowd": 0, "segmentation": rle}]
    return _coco_file(tmp, images, anns)


@pytest.mark.parametrize("h, w", [(20, 20), (18, 30)], ids=["square", "non-square"])
def test_exif_orientations_stored_and_apply_against_ann_to_mask(tmp_path, h, w):
    from pycocotools.coco import COCO

    ann = _exif_set(tmp_path, h, w)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann))
    stored = load_coco(ann, tmp_path)  # the default: exif="stored"
    applied = load_coco(ann, tmp_path, exif="apply")
    assert stored.skips == [] == applied.skips
    for k in range(1, 9):
        assert Image.open(tmp_path / f"o{k}.png").getexif()[0x0112] == k
        # stored: sizes, pixels and masks as pycocotools and PIL read them, the tag ignored
        rec = stored.images[k]
        assert (rec.height, rec.width, rec.exif, rec.exif_orientation) == (h, w, "stored", k)
        assert (read_record_image(rec) == np.asarray(Image.open(rec.path).convert("RGB"))).all()
        # apply: pixels upright (PIL's exif_transpose), masks moved exactly with them
        arec = applied.images[k]
        up = read_record_image(arec)
        assert (up == np.asarray(ImageOps.exif_transpose(Image.open(arec.path)).convert("RGB"))).all()
        assert (arec.height, arec.width) == up.shape[:2] == ((w, h) if k >= 5 else (h, w))
        for ann_id in (10 * k, 10 * k + 1):
            ref = coco.annToMask(coco.anns[ann_id]).astype(bool)  # stored frame
            s = next(t for t in stored.instances if t.ann_id == ann_id).mask()
            assert _iou(s, ref) == 1.0
            a = next(t for t in applied.instances if t.ann_id == ann_id).mask()
            assert _iou(a, DISPLAY[k](ref)) == 1.0
            # and the displayed mask covers exactly the pixels whose stored coordinates are in ref
            rows, cols = up[a][:, 0], up[a][:, 1]
            assert ref[rows, cols].all() and len(rows) == ref.sum()
    notes = {n["image_id"]: n["reason"] for n in stored.notes}
    assert notes == {k: "exif_orientation_ignored" for k in range(2, 9)}
    assert {n["image_id"]: n["reason"] for n in applied.notes} == {k: "exif_orientation_applied" for k in range(2, 9)}


def test_exif_apply_survives_the_data_stage_files(tmp_path):
    """The data stage writes COCO files that later stages load without checks: the frame must survive."""
    ann = _exif_set(tmp_path, 18, 30)
    applied = load_coco(ann, tmp_path, exif="apply")
    data_stage.write_stage_datasets(tmp_path / "out", {"t": applied}, None, None, "raw")
    (back,) = data_stage.load_test_sets(tmp_path / "out")
    assert back.images == applied.images
    assert [t.rle for t in back.instances] == [t.rle for t in applied.instances]
    # checked again, the written (displayed-frame) entries are not transformed twice
    again = load_coco(tmp_path / "out" / "test-t.json", tmp_path)
    assert again.skips == [] and [t.rle for t in again.instances] == [t.rle for t in applied.instances]
    # apply without image checks still reads each header for its tag
    trusting = load_coco(ann, tmp_path, check_images=False, exif="apply")
    assert [t.rle for t in trusting.instances] == [t.rle for t in applied.instances]


def test_exif_jpeg_on_the_real_sample_stored_and_applied(tmp_path, maybe_coco):
    """A real COCO image re-saved with orientation 6: stored frame = annToMask, applied = turned clockwise."""
    if maybe_coco is None:
        pytest.skip("shared COCO sample absent")
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(maybe_coco / "instances.json"))
    img = next(coco.imgs[i] for i in sorted(coco.imgs) if any(not a["iscrowd"] for a in coco.imgToAnns[i]))
    anns = [a for a in coco.imgToAnns[img["id"]] if not a["iscrowd"]][:3]
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(maybe_coco / "images" / img["file_name"]).save(tmp_path / img["file_name"], quality=95,
                                                             exif=exif.tobytes())
    p = tmp_path / "one.json"
    p.write_text(json.dumps({"images": [img], "annotations": anns, "categories": list(coco.cats.values())}))
    for mode, frame in (("stored", lambda m: m), ("apply", DISPLAY[6])):
        ds = load_coco(p, tmp_path, exif=mode)
        assert len(ds.instances) == len(anns)
        for t in ds.instances:
            assert _iou(t.mask(), frame(coco.annToMask(coco.anns[t.ann_id]).astype(bool))) == 1.0
        assert read_record_image(ds.images[img["id"]]).shape[:2] == ds.instances[0].mask().shape


# ======================================================== 4. an alpha channel is dropped with a note
def test_alpha_channels_are_noted_and_dropped(tmp_path):
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = _picture()
    rgba[..., 3] = 255
    rgba[:3, :5, 3] = 0     # 15 transparent pixels
    rgba[10, 10, 3] = 128   # + 1 half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    la = np.stack([np.full((H, W), 90, np.uint8), np.full((H, W), 255, np.uint8)], 2)
    la[0, :7, 1] = 0        # 7 transparent
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    pal = Image.fromarray((np.arange(H * W).reshape(H, W) % 3).astype(np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    pal.info["transparency"] = 2  # palette index 2 transparent: every third pixel
    pal.save(tmp_path / "pal.png", transparency=2)
    Image.fromarray(_picture()).save(tmp_path / "rgb.png")
    files = ["rgba.png", "la.png", "pal.png", "rgb.png"]
    images = [{"id": i, "file_name": f, "height": H, "width": W} for i, f in enumerate(files, 1)]
    anns = [{"id": 10 + i, "image_id": i, "category_id": 1, "iscrowd": 0, "segmentation": _box_poly(3, 3, 20, 15)}
            for i in range(1, 5)]
    ds = load_coco(_coco_file(tmp_path, images, anns), tmp_path)
    assert ds.skips == [] and len(ds.instances) == 4
    notes = {n["file"]: n for n in ds.notes}
    assert set(notes) == {"rgba.png", "la.png", "pal.png"} and {n["reason"] for n in notes.values()} == {"alpha_dropped"}
    n_pal = int((np.arange(H * W) % 3 == 2).sum())
    for f, k in (("rgba.png", 16), ("la.png", 7), ("pal.png", n_pal)):
        assert f"({k} of {H * W} pixels not fully opaque)" in notes[f]["detail"]
    table = skips_table(ds, include_notes=True)
    assert (table["kind"] == "note").sum() == 3 and data_stage.skip_counts(table)["notes"] == 3
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (H, W, 3) and (out == rgba[..., :3]).all()  # colours kept as stored


# ======================================================== the real data notebook stops (never exit 0)
@pytest.mark.slow
def test_data_stage_notebook_fails_with_the_skip_summary_and_the_index_links_the_table(tmp_path):
    """A real run of 00_data.ipynb on 10 images, 2 of them JPEGs cut short with FFD9 kept: the stage fails
    (``samstudy run`` exits 1) with the summary, and the index shows the counts and links the table."""
    from samstudy.pipeline import run_study

    ann = _coco_set(tmp_path / "d", 10, 120, 160)  # big enough for the cut to fall in the scan data
    for i in (4, 8):
        p = tmp_path / "d" / "images" / f"{i}.jpg"
        b = p.read_bytes()
        p.write_bytes(b[: len(b) // 2] + b"\xff\xd9")
    cfg = load_config(_config(tmp_path, {"source": "coco", "annotations": str(ann),
                                         "images": str(tmp_path / "d" / "images")}))
    result = run_study(cfg, "r", results_root=tmp_path / "results",
                       only=["data"], progress=False, log=lambda m: None)
    assert result.failure is not None and result.failure.stage == "data"
    msg = str(result.failure)
    assert "TooManySkips" in msg and "2 of 10 images skipped" in msg and "image_truncated: 2 (e.g. 4.jpg, 8.jpg)" in msg
    assert not (result.layout.stage_dir("data") / data_stage.DATASETS_FILE).exists()  # nothing for later stages
    page = result.layout.index.read_text()
    assert "<b>4</b> input elements skipped" in page  # 2 images + their 2 objects
    assert "href='../data/skips_and_notes.csv'" in page


def test_jpeg_cut_inside_its_header_is_still_a_skip(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_picture()).save(buf, "JPEG", quality=90)
    b = buf.getvalue()
    (tmp_path / "h.jpg").write_bytes(b[:200] + b"\xff\xd9")
    with pytest.raises(DataError) as e:
        probe_image(tmp_path / "h.jpg")
    assert e.value.reason in ("image_truncated", "image_unreadable") and "h.jpg" in str(e.value)
