"""Single-object interactive-segmentation benchmarks (GrabCut, Berkeley, DAVIS, COCO_MVal) as :class:`Dataset`s.

The loaders follow RITM's evaluation protocol (Sofiiuk et al., 2022; its ``isegm/data/datasets``
readers, read here and re-implemented): one object per image, 20 clicks, NoC@85/90
(:func:`samstudy.compare.noc_summary`, whose ``>=20`` columns count NoC == 20 as RITM does).

Every loader returns the same :class:`~samstudy.data.Dataset` of :class:`~samstudy.data.Instance`
as :func:`~samstudy.data.load_coco`, with one category ``{1: "object"}``, so every experiment
runs on them unchanged. Instances carry ``tags=("grabcut",)`` or ``("berkeley",)``.

Layouts (``root`` is the benchmark's own folder, e.g. ``../shared/data/isegm/GrabCut``):

- **GrabCut**: images ``data_GT/<name>.<ext>`` (``.jpg``, ``.bmp``, ``.JPG``...), masks
  ``boundary_GT/<name>.bmp``. Mask value ``128`` is an uncertain band along the boundary: it goes
  to ``ignore_rle``; values above 128 (255) are the object; the rest is background. Mask pixels
  are the maximum over colour channels (grey and colour files read alike).
- **Berkeley** (``protocol="ritm"``, the default, as RITM evaluates it: 96 objects): images
  ``images/<id>.jpg``, one object per image: the mask ``masks/<id>.png`` named like the image
  (for ``189011``/``239007``, which also carry ``<id>a``/``<id>b``, that file is the union of the two
  parts); an image without it but with parts ``masks/<id>[a-z].png`` takes their union. Values as
  GrabCut's (RITM reads both alike): ``> 128`` object, ``128`` ignored. When both the union file and
  its parts exist and differ, a ``union_differs`` note gives the pixel count (the file is used, as RITM
  does; on the shared copy ``239007`` differs by 9 pixels).
  ``protocol="all_masks"`` (the earlier variant, 100 objects): every mask file is an object, the
  optional one-letter suffix marking several objects of one image (``189011a``/``189011b`` on
  ``189011.jpg``; ``189011.png`` itself is a third object, the union of the two); object =
  maximum over colour channels ``> 127``.
- **DAVIS** (345 images) and **COCO_MVal** (800 images), RITM's layout: images ``img/<name>.<ext>``,
  masks ``gt/<name>.<ext>`` (same stem); the mask's maximum over colour channels, every non-zero
  value is the one object (RITM's ``DavisDataset``); no ignore pixels.

Channels: RITM reads GrabCut/Berkeley masks as the first (blue) channel of OpenCV's BGR image; we
take the maximum over channels. The two agree on every shared GrabCut/Berkeley mask
(``tests/test_isegm.py``).

**Ids** (stable: they depend only on the file name, never on which other files are present):
``image_id`` = the image stem as an integer when it is all digits (the BSDS image number, so
GrabCut and Berkeley rows of one BSDS picture share it), else the CRC-32 of the UTF-8 stem masked
to 31 bits. ``ann_id`` = ``image_id`` for GrabCut (one object per image); for Berkeley
``image_id * 10 + k`` with ``k = 0`` without suffix (and for the RITM protocol's one object) and
``k = 1, 2, ...`` for ``a, b, ...``; DAVIS/COCO_MVal: ``ann_id = image_id``.
A collision raises :class:`~samstudy.data.DataError`.

Skips (``Dataset.skips`` rows, reason codes shared with :mod:`samstudy.data`): mask without image
[``image_missing``], image without mask [``mask_missing``], several image files for one stem
[``image_ambiguous``], image unreadable/truncated [``image_unreadable``/``image_truncated``],
mask unreadable [``mask_unreadable``], mask size different from the image's stored size (the EXIF
rule of :mod:`samstudy.data` with ``exif="stored"``: the benchmarks' masks were made on the stored
pixels) [``image_size_mismatch``], mask with no object pixel [``empty_mask``]. An image with an
alpha channel gets the note ``alpha_dropped``. A
GrabCut mask with values other than 0/128/255 is loaded with a note [``mask_unexpected_values``].
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .data import DataError, Dataset, ImageRecord, Instance, SkipLog, note_alpha, probe_image
from .masks import encode_rle, mask_box_xyxy

CATEGORIES = {1: "object"}
_IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def stable_id(stem: str) -> int:
    """``int(stem)`` when ``stem`` is all ASCII digits, else CRC-32 of its UTF-8 bytes & 0x7FFFFFFF."""
    if stem.isascii() and stem.isdigit():
        return int(stem)
    return zlib.crc32(stem.encode("utf-8")) & 0x7FFFFFFF


def _read_mask_values(path: Path) -> np.ndarray:
    """Mask file -> ``uint8 (H, W)``: the maximum over colour channels (alpha ignored)."""
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB")).max(axis=2)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise DataError(f"{path}: unreadable mask ({type(e).__name__}: {e})", reason="mask_unreadable") from e


def _images_by_stem(folder: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in _IMAGE_EXTS:
                out.setdefault(p.stem, []).append(p)
    return out


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{path}: {what} folder not found")


def _build(root: Path, name: str, tag: str, pairs: list[tuple[str, str, Path, Path, int]],
           value_rule, log: SkipLog) -> Dataset:
    """Shared loader body.

    ``pairs``: ``(image_stem, mask_stem, image_path, mask_path, ann_suffix_index)``.
    ``value_rule(values uint8 (H, W), mask_path, image_id, ann_id, log) -> (object bool (H, W),
    ignore bool (H, W) | None)``. Every image is fully decoded once (size, EXIF orientation,
    truncation, alpha).
    """
    images: dict[int, ImageRecord] = {}
    instances: list[Instance] = []
    names_of_image: dict[int, str] = {}
    ann_names: dict[int, str] = {}
    for image_stem, mask_stem, image_path, mask_path, k in pairs:
        image_id = stable_id(image_stem)
        ann_id = image_id * 10 + k if tag == "berkeley" else image_id
        mask_stem = mask_stem if isinstance(mask_stem, str) else "+".join(mask_stem)
        if names_of_image.setdefault(image_id, image_stem) != image_stem:
            raise DataError(f"{root}: image id {image_id} of '{image_stem}' collides with '{names_of_image[image_id]}'")
        if ann_names.setdefault(ann_id, mask_stem) != mask_stem:
            raise DataError(f"{root}: object id {ann_id} of '{mask_stem}' collides with '{ann_names[ann_id]}'")
        try:
            probe = probe_image(image_path)  # a full decode: truncation, size, alpha
        except DataError as e:
            log.skip(image_id, ann_id, e.reason or "image_unreadable", str(e))
            continue
        hw = probe.stored_hw
        try:  # several files (the union of a Berkeley image's parts): the pixelwise maximum
            paths = mask_path if isinstance(mask_path, tuple) else (mask_path,)
            values = _read_mask_values(paths[0])
            for extra in paths[1:]:
                more = _read_mask_values(extra)
                if more.shape != values.shape:
                    raise DataError(f"{extra}: size {more.shape} differs from {paths[0]} {values.shape}")
                values = np.maximum(values, more)
        except DataError as e:
            log.skip(image_id, ann_id, "mask_unreadable", str(e))
            continue
        mask_path = paths[0]
        if values.shape != hw:
            log.skip(image_id, ann_id, "image_size_mismatch",
                     f"{mask_path}: mask {values.shape[0]}x{values.shape[1]} but image {image_path} is "
                     f"{hw[0]}x{hw[1]} as stored")
            continue
        obj, ignore = value_rule(values, mask_path, image_id, ann_id, log)
        if not obj.any():
            log.skip(image_id, ann_id, "empty_mask", f"{mask_path}: no object pixel")
            continue
        rel = image_path.relative_to(root).as_posix()
        if image_id not in images:
            note_alpha(log, image_id, image_path, probe)
        images.setdefault(image_id, ImageRecord(image_id=image_id, file_name=rel, path=image_path,
                                                height=hw[0], width=hw[1],
                                                exif_orientation=probe.orientation))
        rle = encode_rle(obj)
        instances.append(Instance(
            image_id=image_id, ann_id=ann_id, category_id=1, category="object", rle=rle, area=int(obj.sum()),
            box_xyxy=tuple(float(v) for v in mask_box_xyxy(obj)), iscrowd=False, tags=(tag,),
            ignore_rle=encode_rle(ignore) if ignore is not None and ignore.any() else None,
            source_ann_ids=(ann_id,)))
    return Dataset(name=name, images=dict(sorted(images.items())), categories=dict(CATEGORIES),
                   instances=sorted(instances, key=lambda t: t.ann_id), skips=log.skips, notes=log.notes)


def _grabcut_rule(values: np.ndarray, path: Path, image_id: int, ann_id: int, log: SkipLog):
    odd = ~np.isin(values, (0, 128, 255))
    if odd.any():
        log.note(image_id, ann_id, "mask_unexpected_values",
                 f"{path}: {int(odd.sum())} pixels not in {{0, 128, 255}} (object = > 128, ignore = 128)")
    return values > 128, values == 128


def _berkeley_rule(values: np.ndarray, path: Path, image_id: int, ann_id: int, log: SkipLog):
    return values > 127, None


def _ritm_rule(values: np.ndarray, path: Path, image_id: int, ann_id: int, log: SkipLog):
    """RITM's GrabCut/Berkeley reading: 128 ignored, above 128 object."""
    return values > 128, values == 128


def _nonzero_rule(values: np.ndarray, path: Path, image_id: int, ann_id: int, log: SkipLog):
    """RITM's DAVIS/COCO_MVal reading: every non-zero value is the object."""
    return values > 0, None


def load_grabcut(root: str | Path) -> Dataset:
    """Load GrabCut from ``root`` (folder holding ``data_GT/`` and ``boundary_GT/``).

    Returns a ``Dataset`` named ``"grabcut"`` (50 objects on the standard release). ``ignore_rle``
    holds the 128-valued uncertain band. See the module docstring for ids and skip rules.
    Raises :class:`DataError` when a folder is missing.
    """
    root = Path(root)
    img_dir, mask_dir = root / "data_GT", root / "boundary_GT"
    _require_dir(img_dir, "GrabCut images (data_GT)")
    _require_dir(mask_dir, "GrabCut masks (boundary_GT)")
    log = SkipLog(str(root))
    by_stem = _images_by_stem(img_dir)
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.is_file() and p.suffix.lower() == ".bmp"}
    pairs = []
    for stem, mpath in masks.items():
        cands = by_stem.get(stem, [])
        sid = stable_id(stem)
        if not cands:
            log.skip(sid, sid, "image_missing", f"{mpath}: no image data_GT/{stem}.*")
        elif len(cands) > 1:
            log.skip(sid, sid, "image_ambiguous", f"{mpath}: several images {[c.name for c in cands]}")
        else:
            pairs.append((stem, stem, cands[0], mpath, 0))
    for stem, cands in by_stem.items():
        if stem not in masks:
            sid = stable_id(stem)
            log.skip(sid, None, "mask_missing", f"{cands[0]}: no mask boundary_GT/{stem}.bmp")
    return _build(root, "grabcut", "grabcut", pairs, _grabcut_rule, log)


_BERKELEY_MASK = re.compile(r"^(?P<image>.+?)(?P<suffix>[a-z]?)$")


BERKELEY_PROTOCOLS = ("ritm", "all_masks")


def load_berkeley(root: str | Path, protocol: str = "ritm") -> Dataset:
    """Load Berkeley from ``root`` (folder holding ``images/`` and ``masks/``).

    ``protocol="ritm"`` (default): a ``Dataset`` named ``"berkeley"`` with one object per image as
    RITM evaluates it (96 on the standard release). ``protocol="all_masks"``: named
    ``"berkeley_all"``, every mask file an object (100 on 96 images); a mask ``<stem><letter>.png``
    belongs to image ``<stem>.jpg`` when ``<stem><letter>.jpg`` does not exist. See the module
    docstring for values, ids and skip rules. Raises :class:`DataError` when a folder is missing,
    ``ValueError`` for an unknown protocol.
    """
    if protocol not in BERKELEY_PROTOCOLS:
        raise ValueError(f"unknown Berkeley protocol {protocol!r}; known: {BERKELEY_PROTOCOLS}")
    root = Path(root)
    img_dir, mask_dir = root / "images", root / "masks"
    _require_dir(img_dir, "Berkeley images")
    _require_dir(mask_dir, "Berkeley masks")
    log = SkipLog(str(root))
    by_stem = _images_by_stem(img_dir)
    if protocol == "ritm":
        return _load_berkeley_ritm(root, mask_dir, by_stem, log)
    used: set[str] = set()
    pairs = []
    for mpath in sorted(p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png"):
        mstem = mpath.stem
        if mstem in by_stem:
            istem, k = mstem, 0
        else:
            m = _BERKELEY_MASK.match(mstem)
            istem, suffix = m.group("image"), m.group("suffix")
            k = ord(suffix) - ord("a") + 1 if suffix else 0
            if not suffix or istem not in by_stem:
                sid = stable_id(mstem)
                log.skip(sid, sid * 10, "image_missing", f"{mpath}: no image images/{mstem}.* or images/{istem}.*")
                continue
            if k > 9:
                raise DataError(f"{mpath}: suffix '{suffix}' beyond 'i' does not fit the id rule")
        cands = by_stem[istem]
        if len(cands) > 1:
            sid = stable_id(istem)
            log.skip(sid, sid * 10 + k, "image_ambiguous", f"{mpath}: several images {[c.name for c in cands]}")
            continue
        used.add(istem)
        pairs.append((istem, mstem, cands[0], mpath, k))
    for stem, cands in by_stem.items():
        if stem not in used:
            log.skip(stable_id(stem), None, "mask_missing", f"{cands[0]}: no mask masks/{stem}[a-z].png")
    return _build(root, "berkeley_all", "berkeley", pairs, _berkeley_rule, log)


def _load_berkeley_ritm(root: Path, mask_dir: Path, by_stem: dict[str, list[Path]], log: SkipLog) -> Dataset:
    """One object per image: ``masks/<stem>.png``, else the union of ``masks/<stem>[a-z].png``."""
    masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.is_file() and p.suffix.lower() == ".png"}
    parts: dict[str, list[Path]] = {}
    for mstem, mpath in masks.items():
        m = _BERKELEY_MASK.match(mstem)
        if m.group("suffix") and m.group("image") in by_stem and mstem not in by_stem:
            parts.setdefault(m.group("image"), []).append(mpath)
    pairs = []
    for stem, cands in by_stem.items():
        sid = stable_id(stem)
        if len(cands) > 1:
            log.skip(sid, sid * 10, "image_ambiguous", f"{cands[0]}: several images {[c.name for c in cands]}")
        elif stem in masks:
            pairs.append((stem, stem, cands[0], masks[stem], 0))
            if stem in parts:
                _note_union(log, sid, masks[stem], parts[stem])
        elif stem in parts:
            pairs.append((stem, tuple(p.stem for p in parts[stem]), cands[0], tuple(parts[stem]), 0))
        else:
            log.skip(sid, None, "mask_missing", f"{cands[0]}: no mask masks/{stem}.png or masks/{stem}[a-z].png")
    used = set(by_stem) | {p.stem for ps in parts.values() for p in ps}
    for mstem, mpath in masks.items():
        if mstem not in used:
            sid = stable_id(mstem)
            log.skip(sid, sid * 10, "image_missing", f"{mpath}: no image images/{mstem}.*")
    return _build(root, "berkeley", "berkeley", pairs, _ritm_rule, log)


def _note_union(log: SkipLog, image_id: int, union_path: Path, part_paths: list[Path]) -> None:
    """Note when a Berkeley union file is not exactly the union of its parts (the file is used)."""
    try:
        union = _read_mask_values(union_path) > 128
        mine = np.zeros_like(union)
        for p in part_paths:
            v = _read_mask_values(p)
            if v.shape != union.shape:
                return
            mine |= v > 128
    except DataError:
        return  # the unreadable file is reported where it is loaded
    diff = int((union != mine).sum())
    if diff:
        log.note(image_id, image_id * 10, "union_differs",
                 f"{union_path}: {diff} pixels differ from the union of {[p.name for p in part_paths]} (file used)")


def load_davis_layout(root: str | Path, name: str) -> Dataset:
    """RITM's ``img/`` + ``gt/`` layout (DAVIS, COCO_MVal): one object per image, every non-zero
    value of the mask (maximum over channels) is the object. ``name`` names the ``Dataset`` and
    tags its instances. Raises :class:`DataError` when a folder is missing."""
    root = Path(root)
    img_dir, mask_dir = root / "img", root / "gt"
    _require_dir(img_dir, f"{name} images (img)")
    _require_dir(mask_dir, f"{name} masks (gt)")
    log = SkipLog(str(root))
    by_stem = _images_by_stem(img_dir)
    masks = _images_by_stem(mask_dir)
    pairs = []
    for stem, mpaths in masks.items():
        sid, cands = stable_id(stem), by_stem.get(stem, [])
        if len(mpaths) > 1:
            log.skip(sid, sid, "mask_ambiguous", f"{mpaths[0]}: several masks {[m.name for m in mpaths]}")
        elif not cands:
            log.skip(sid, sid, "image_missing", f"{mpaths[0]}: no image img/{stem}.*")
        elif len(cands) > 1:
            log.skip(sid, sid, "image_ambiguous", f"{mpaths[0]}: several images {[c.name for c in cands]}")
        else:
            pairs.append((stem, stem, cands[0], mpaths[0], 0))
    for stem, cands in by_stem.items():
        if stem not in masks:
            log.skip(stable_id(stem), None, "mask_missing", f"{cands[0]}: no mask gt/{stem}.*")
    return _build(root, name, name, pairs, _nonzero_rule, log)


def load_davis(root: str | Path) -> Dataset:
    """DAVIS as RITM evaluates it (345 images): :func:`load_davis_layout` named ``"davis"``."""
    return load_davis_layout(root, "davis")


def load_coco_mval(root: str | Path) -> Dataset:
    """COCO_MVal as RITM evaluates it (800 images): :func:`load_davis_layout` named ``"coco_mval"``."""
    return load_davis_layout(root, "coco_mval")


# benchmark name -> (folder under the isegm root, loader); "berkeley" is RITM's 96-object protocol
BENCHMARKS = {
    "grabcut": ("GrabCut", load_grabcut),
    "berkeley": ("Berkeley", load_berkeley),
    "berkeley_all": ("Berkeley", lambda root: load_berkeley(root, protocol="all_masks")),
    "davis": ("DAVIS", load_davis),
    "coco_mval": ("COCO_MVal", load_coco_mval),
}


def load_isegm(isegm_dir: str | Path, name: str) -> Dataset:
    """The benchmark ``name`` (:data:`BENCHMARKS`: ``grabcut``, ``berkeley`` (RITM, 96 objects),
    ``berkeley_all`` (100 masks), ``davis``, ``coco_mval``) from its folder under ``isegm_dir``."""
    key = name.lower()
    if key not in BENCHMARKS:
        raise ValueError(f"unknown isegm benchmark '{name}'; known: {sorted(BENCHMARKS)}")
    folder, fn = BENCHMARKS[key]
    return fn(Path(isegm_dir) / folder)
