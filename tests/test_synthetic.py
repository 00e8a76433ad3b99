"""Tests of the synthetic probe set: each failure mode is re-derived from the written masks with
independent tools (pycocotools, scipy.ndimage, scikit-image), not with the generator's helpers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from scipy import ndimage
from skimage.measure import perimeter
from skimage.morphology import convex_hull_image

from samstudy import synthetic as syn
from samstudy.data import load_coco
from samstudy.synthetic import SyntheticConfig, describe_probe_set, generate_probe_set

EIGHT = np.ones((3, 3), bool)
SMALL_CFG = SyntheticConfig(n_images=3, seed=7)


@pytest.fixture(scope="session")
def default_set(tmp_path_factory) -> Path:
    """The default probe set (60 images), generated once for the session."""
    return generate_probe_set(SyntheticConfig(), tmp_path_factory.mktemp("probe") / "default")


@pytest.fixture(scope="session")
def coco(default_set) -> COCO:
    return COCO(str(default_set / "instances.json"))


@pytest.fixture(scope="session")
def masks(coco) -> dict[int, np.ndarray]:
    """ann id -> mask decoded by pycocotools' annToMask (independent of samstudy.masks)."""
    return {aid: coco.annToMask(a).astype(bool) for aid, a in coco.anns.items()}


@pytest.fixture(scope="session")
def local(coco, masks) -> dict[int, np.ndarray]:
    """ann id -> its mask cropped to the bbox grown by 8 px (objects are >= 2 px off the border, so
    the crop may be clipped there; every per-object check below is unaffected by clipping)."""
    out = {}
    for aid, a in coco.anns.items():
        x, y, w, h = map(int, a["bbox"])
        out[aid] = masks[aid][max(y - 8, 0):y + h + 8, max(x - 8, 0):x + w + 8]
    return out


def anns_with(coco: COCO, tag: str) -> list[dict]:
    return [a for a in coco.anns.values() if tag in a["tags"]]


def files_of(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- determinism, files

def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = files_of(generate_probe_set(SMALL_CFG, tmp_path / "a"))
    b = files_of(generate_probe_set(SMALL_CFG, tmp_path / "b"))
    assert a == b
    assert set(a) == {"instances.json", "manifest.json", "images/000001.png", "images/000002.png",
                      "images/000003.png"}
    c = files_of(generate_probe_set(SyntheticConfig(n_images=3, seed=8), tmp_path / "c"))
    assert c["instances.json"] != a["instances.json"]
    assert all(c[f"images/00000{i}.png"] != a[f"images/00000{i}.png"] for i in (1, 2, 3))


def test_manifest_lists_sha256_of_every_file(default_set):
    import hashlib
    man = json.loads((default_set / "manifest.json").read_text())
    on_disk = {k for k in files_of(default_set) if k != "manifest.json"}
    assert set(man["files"]) == on_disk
    for rel, sha in man["files"].items():
        assert hashlib.sha256((default_set / rel).read_bytes()).hexdigest() == sha
    assert man["config"] == SyntheticConfig().to_dict()
    assert man["generator_version"] == syn.GENERATOR_VERSION
    assert man["dropped_slots"] == 0


def test_cache_skips_regeneration_and_repairs_tampering(tmp_path):
    out = generate_probe_set(SMALL_CFG, tmp_path / "set")
    before = files_of(out)
    stamp = (out / "instances.json").stat().st_mtime_ns
    generate_probe_set(SMALL_CFG, out)
    assert (out / "instances.json").stat().st_mtime_ns == stamp  # not rewritten
    (out / "images" / "000002.png").write_bytes(b"broken")
    assert not syn.probe_set_is_current(SMALL_CFG, out)
    generate_probe_set(SMALL_CFG, out)
    assert files_of(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["set"]  # no temporary folders left behind
    # A different config regenerates.
    generate_probe_set(SyntheticConfig(n_images=2, seed=7), out)
    assert len(list((out / "images").iterdir())) == 2


def test_interrupted_generation_leaves_previous_set_intact(tmp_path, monkeypatch):
    out = generate_probe_set(SMALL_CFG, tmp_path / "set")
    before = files_of(out)
    real = syn.render_image

    def failing(config, plan):
        if plan.index == 1:
            raise KeyboardInterrupt("simulated interruption")
        return real(config, plan)

    monkeypatch.setattr(syn, "render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_probe_set(SyntheticConfig(n_images=3, seed=9), out)
    assert files_of(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["set"]
    with pytest.raises(KeyboardInterrupt):
        generate_probe_set(SMALL_CFG, tmp_path / "fresh", force=True)
    assert not (tmp_path / "fresh").exists()


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    import os
    stale = tmp_path / ".set.tmp-killed"
    (stale / "set" / "images").mkdir(parents=True)
    live = tmp_path / ".set.tmp-live"  # a concurrent run's folder: recent, must stay
    live.mkdir()
    old = stale.stat().st_mtime - 2 * syn.STALE_TEMP_S
    os.utime(stale, (old, old))
    generate_probe_set(SyntheticConfig(n_images=1), tmp_path / "set")
    assert not stale.exists() and live.exists()


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_probe_set(SMALL_CFG, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_png_holds_the_rendered_image_exactly(default_set, coco):
    cfg = SyntheticConfig()
    plans = syn.plan_images(cfg)
    for plan in plans[:4]:
        image, objects, _ = syn.render_image(cfg, plan)
        img_id = plan.index + 1
        png = np.asarray(Image.open(default_set / "images" / coco.imgs[img_id]["file_name"]).convert("RGB"))
        assert png.dtype == np.uint8 and png.shape == (cfg.height, cfg.width, 3)
        np.testing.assert_array_equal(png, image)
        anns = sorted(coco.imgToAnns[img_id], key=lambda a: a["id"])
        assert len(anns) == len(objects)
        for a, obj in zip(anns, objects):
            np.testing.assert_array_equal(coco.annToMask(a).astype(bool), obj.mask)
            assert coco.cats[a["category_id"]]["name"] == obj.category


def test_cli_writes_a_set(tmp_path, capsys):
    assert syn.main(["--out", str(tmp_path / "cli"), "--n-images", "2", "--seed", "3"]) == 0
    man = json.loads((tmp_path / "cli" / "manifest.json").read_text())
    assert man["config"]["n_images"] == 2 and man["config"]["seed"] == 3
    assert "generated" in capsys.readouterr().out


def test_config_validation_and_category_subset(tmp_path):
    with pytest.raises(ValueError):
        SyntheticConfig(categories=("ring", "unicorn"))
    with pytest.raises(ValueError):
        SyntheticConfig(backgrounds=("plaid",))
    with pytest.raises(ValueError):
        SyntheticConfig(seed=-1)
    cfg = SyntheticConfig(n_images=2, categories=("ring",), backgrounds=("flat",), low_contrast_fraction=0)
    c = COCO(str(generate_probe_set(cfg, tmp_path / "rings") / "instances.json"))
    assert {c.cats[a["category_id"]]["name"] for a in c.anns.values()} == {"ring"}
    assert all(img["background"] == "flat" and not img["low_contrast"] for img in c.imgs.values())
    assert SyntheticConfig.from_dict(cfg.to_dict()) == cfg
    assert SyntheticConfig(seed=np.int64(4), objects_per_image=[2, 3]) == SyntheticConfig(seed=4, objects_per_image=(2, 3))


def test_project_loader_reads_the_set_without_skips(default_set, coco):
    ds = load_coco(default_set / "instances.json", default_set / "images")
    assert not ds.skips
    assert len(ds.images) == 60 and len(ds.instances) == len(coco.anns)
    by_id = {t.ann_id: t for t in ds.instances}
    for aid, a in coco.anns.items():
        assert by_id[aid].tags == tuple(a["tags"]) and by_id[aid].area == a["area"]
        x, y, w, h = a["bbox"]
        assert by_id[aid].box_xyxy == (x, y, x + w, y + h)


# ---------------------------------------------------------------------------- COCO validity

def test_coco_fields_area_and_tight_bbox(coco, masks):
    assert len(coco.anns) > 200
    for aid, a in coco.anns.items():
        m = masks[aid]
        img = coco.imgs[a["image_id"]]
        assert m.shape == (img["height"], img["width"])
        assert a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str)
        assert a["area"] == int(m.sum()) > 0
        rows, cols = np.nonzero(m)
        assert a["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        assert a["amodal_area"] >= a["area"]


def test_masks_are_disjoint_within_each_image(coco, masks):
    for img_id, anns in coco.imgToAnns.items():
        total = np.sum([masks[a["id"]] for a in anns], axis=0)
        assert total.max() == 1, f"image {img_id}: a pixel belongs to two instances"


def test_separate_objects_keep_a_gap_and_stay_off_the_border(coco, masks):
    cfg = SyntheticConfig()
    g = cfg.min_gap_px
    for anns in coco.imgToAnns.values():
        for a in anns:
            x, y, w, h = map(int, a["bbox"])
            assert x >= cfg.border_px and y >= cfg.border_px
            assert x + w <= cfg.width - cfg.border_px and y + h <= cfg.height - cfg.border_px
            # Dilate within the box grown by the gap (nothing farther can be within g px).
            window = (slice(max(y - g, 0), y + h + g), slice(max(x - g, 0), x + w + g))
            grown = ndimage.binary_dilation(masks[a["id"]][window], EIGHT, iterations=g)
            for b in anns:
                if b["group_id"] != a["group_id"]:
                    assert not (grown & masks[b["id"]][window]).any()


# ---------------------------------------------------------------------------- failure modes

def test_every_failure_mode_is_present_several_times(coco):
    counts = {}
    for a in coco.anns.values():
        for t in a["tags"]:
            counts[t] = counts.get(t, 0) + 1
    for tag in (*syn.FAILURE_MODE_TAGS, "control", "bg_flat", "bg_gradient"):
        assert counts.get(tag, 0) >= 5, (tag, counts.get(tag, 0))
    per_cat = {c: 0 for c in syn.CATEGORY_NAMES}
    for a in coco.anns.values():
        per_cat[coco.cats[a["category_id"]]["name"]] += 1
    assert min(per_cat.values()) >= 10, per_cat
    n_low = sum(img["low_contrast"] for img in coco.imgs.values())
    assert n_low == 15
    assert {img["background"] for img in coco.imgs.values()} == set(syn.BACKGROUNDS)


def test_holed_objects_have_holes_and_others_do_not(coco, local):
    for a in coco.anns.values():
        m = local[a["id"]]
        filled = ndimage.binary_fill_holes(m)
        if "holes" in a["tags"]:
            # The generator asks for a hole in the study's sense (4-connected background); its
            # shapes' strokes are >= 5 px, so the hole is closed even for 8-connected background:
            # the probe does not hinge on the connectivity convention.
            assert ndimage.binary_fill_holes(m, structure=EIGHT).sum() > m.sum()
            assert filled.sum() - m.sum() == a["hole_area"] > 0
        else:
            assert a["hole_area"] == 0
            assert (filled == m).all(), a["id"]


def test_ring_hole_is_one_enclosed_component(coco, local):
    rings = [a for a in coco.anns.values() if coco.cats[a["category_id"]]["name"] in ("ring", "frame")]
    for a in rings:
        m = local[a["id"]]
        holes = ndimage.binary_fill_holes(m) & ~m
        assert ndimage.label(holes)[1] == 1


def test_small_objects_are_in_the_coco_small_bucket(coco):
    small = anns_with(coco, "small")
    assert small
    for a in small:
        assert a["area"] < 32 * 32
        assert a["bbox"][2] < 32 and a["bbox"][3] < 32


def test_thin_objects_have_parts_at_most_4_px_wide(coco, local):
    for a in anns_with(coco, "thin"):
        m = np.pad(local[a["id"]], 6)
        # An opening with a 5x5 square deletes every band narrower than 5 px, at any angle.
        residue = m & ~ndimage.binary_opening(m, np.ones((5, 5), bool))
        lab, n = ndimage.label(residue, EIGHT)
        assert n and np.bincount(lab.ravel())[1:].max() >= 15, a["id"]
        # ... whereas a 2x2 opening keeps almost all of it: the parts are >= 2 px, not 1-px hairlines.
        assert ndimage.binary_opening(m, np.ones((2, 2), bool)).sum() > 0.9 * m.sum()


def test_every_instance_is_one_connected_piece(coco, local):
    for a in coco.anns.values():
        assert ndimage.label(local[a["id"]], EIGHT)[1] == 1, a["id"]


def test_fine_boundaries_are_long_and_controls_convex(coco, local):
    for a in anns_with(coco, "fine_boundary"):
        m = local[a["id"]]
        assert perimeter(m) > 1.15 * perimeter(convex_hull_image(m)), a["id"]
    for a in anns_with(coco, "control"):
        m = local[a["id"]]
        assert m.sum() >= 0.9 * convex_hull_image(m).sum(), a["id"]


def test_touching_instances_are_8_adjacent_same_category_neighbours(coco, masks):
    touching = anns_with(coco, "touching")
    assert touching
    for a in touching:
        grown = ndimage.binary_dilation(masks[a["id"]], EIGHT)
        partners = [b for b in coco.imgToAnns[a["image_id"]] if b["id"] != a["id"]
                    and b["category_id"] == a["category_id"] and (grown & masks[b["id"]]).any()]
        assert partners, a["id"]
        assert all(b["group_id"] == a["group_id"] for b in partners)


def test_overlapping_instances_were_occluded_by_a_front_member(coco, masks):
    occluded = anns_with(coco, "occluded")
    assert occluded
    for a in occluded:
        assert "overlapping" in a["tags"] and a["occluded_by"]
        assert a["amodal_area"] > a["area"]
        hull = convex_hull_image(masks[a["id"]])
        for bid in a["occluded_by"]:
            b = coco.anns[bid]
            assert b["image_id"] == a["image_id"] and b["category_id"] == a["category_id"]
            assert "overlapping" in b["tags"] and b["id"] > a["id"]  # in front = later in z-order
        # The hidden part shows as a bite: the front instance covers part of the occluded one's hull.
        front = np.any([masks[b] for b in a["occluded_by"]], axis=0)
        assert (hull & front).sum() >= 5, a["id"]
    # Every overlapping group has an occluded member.
    groups = {a["group_id"] for a in anns_with(coco, "overlapping")}
    assert groups == {a["group_id"] for a in occluded}


def test_low_contrast_objects_are_close_to_their_surroundings(default_set, coco, local):
    images = {i: np.asarray(Image.open(default_set / "images" / img["file_name"]), float)
              for i, img in coco.imgs.items()}

    def contrast(a):
        x, y, w, h = map(int, a["bbox"])
        img = images[a["image_id"]][max(y - 8, 0):y + h + 8, max(x - 8, 0):x + w + 8]
        m = local[a["id"]]
        inner = ndimage.binary_erosion(m, iterations=2)
        ring = ndimage.binary_dilation(m, iterations=4) & ~ndimage.binary_dilation(m, iterations=2)
        if inner.sum() < 5:
            inner = m
        return np.linalg.norm(img[inner].mean(0) - img[ring].mean(0))

    # Disc groups excluded: their surroundings include the other (similarly coloured) discs.
    sample = [a for a in coco.anns.values() if coco.cats[a["category_id"]]["name"] != "disc"]
    low = [contrast(a) for a in sample if "low_contrast" in a["tags"]]
    high = [contrast(a) for a in sample if "low_contrast" not in a["tags"]]
    assert np.median(low) < 30 < np.median(high)
    assert np.median(high) > 3 * np.median(low)


# ---------------------------------------------------------------------------- description

def test_describe_probe_set_counts(default_set, coco):
    df = describe_probe_set(default_set / "instances.json")
    assert list(df.columns) == ["category", "tag", "count", "mean_area", "small", "medium", "large"]
    total = df[(df.category == "*") & (df.tag == "*")].iloc[0]
    assert total["count"] == len(coco.anns) == total[["small", "medium", "large"]].sum()
    holes = df[(df.category == "*") & (df.tag == "holes")].iloc[0]
    assert holes["count"] == len(anns_with(coco, "holes"))
    small = df[(df.category == "small_shape") & (df.tag == "small")].iloc[0]
    assert small["small"] == small["count"] and small["medium"] == 0
    ring = df[(df.category == "ring") & (df.tag == "*")].iloc[0]
    ring_areas = [a["area"] for a in coco.anns.values() if coco.cats[a["category_id"]]["name"] == "ring"]
    assert ring["mean_area"] == pytest.approx(np.mean(ring_areas))
    # Same table from the folder and from the loaded dict.
    assert describe_probe_set(default_set).equals(df)
    assert describe_probe_set(json.loads((default_set / "instances.json").read_text())).equals(df)
