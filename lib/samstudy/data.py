"""COCO-format instance data: image and instance records, loading, validation, writing.

An :class:`Instance` is one object to segment: its mask is stored as a COCO RLE (see
:mod:`samstudy.masks` for every coordinate convention). A :class:`Dataset` holds images,
categories, instances and the *skips*: one row per input element that was not loaded, with its
reason, so that nothing is ever dropped silently. Elements that were loaded but altered or that
deserve a look (EXIF orientation, a dropped alpha channel, clipped ``bbox``, a dropped degenerate
polygon part) get a row in ``Dataset.notes`` with the same columns. :func:`check_skip_limit` stops a
stage that skipped more than its allowed share of images or objects, or has no object left.

Rules of :func:`load_coco` (each rule's reason code in brackets; see ``SKIP_REASONS`` and
``NOTE_REASONS``):

- Unreadable JSON, a top level that is not an object, or missing/non-list ``images``,
  ``annotations`` or ``categories``: :class:`DataError` naming the file.
- Category entries without an int ``id`` and str ``name`` [``bad_category``]; several entries
  sharing one id are all skipped [``duplicate_category_id``].
- Image entries without int ``id``, str ``file_name`` and positive int ``height``/``width``
  [``bad_image_record``]; entries sharing an id are all skipped [``duplicate_image_id``].
- With ``check_images=True`` every image file is **fully decoded** once: missing [``image_missing``],
  not an image [``image_unreadable``], truncated [``image_truncated``], size different from the
  JSON ``height``/``width`` [``image_size_mismatch``]. A JPEG is decoded by libjpeg-turbo in strict
  mode (``simplejpeg``), where any libjpeg warning is an error: a file cut short (even one that
  still ends with the ``FFD9`` end marker, which other decoders silently fill with grey) is
  ``image_truncated``, other corrupt entropy-coded data ``image_unreadable``. Other formats are
  decoded by PIL, which raises on truncation. An image with an alpha channel (RGBA, LA, palette
  with transparency) is loaded with a note [``alpha_dropped``]: :func:`read_image` drops alpha.
- **EXIF rule** (``exif`` argument, the config's ``data.exif``). COCO ``height``/``width`` and
  masks are in the *stored* pixel frame, as pycocotools, torchvision's ``CocoDetection``, OpenCV
  and scikit-image read images. ``exif="stored"`` (default): pixels are read as stored, the
  orientation tag is ignored, and a tag other than 1 is noted [``exif_orientation_ignored``].
  ``exif="apply"``: the image is shown upright -- pixels rotated/flipped per the tag -- and every
  mask (polygons and RLE rasterised in the stored frame, ``ignore_segmentation`` too) is
  transformed exactly as the pixels are, so the record's size is the displayed size; a tag other
  than 1 is noted [``exif_orientation_applied``]. Either way the JSON size must equal the stored
  size [``image_size_mismatch``, whose detail says when it equals the displayed size instead].
  An image entry written by :func:`write_coco` for an ``apply`` dataset carries ``"exif": "apply"``:
  its size and masks are already in the displayed frame and are not transformed again. With
  ``exif="apply"`` and ``check_images=False`` each image header is still read for its tag.
  The record's ``exif`` field tells :func:`read_record_image` which frame to read.
- Annotations: not an object / missing or ill-typed ``id``, ``image_id``, ``category_id``,
  ``segmentation``, ``iscrowd`` [``bad_annotation``]; shared ids, all skipped
  [``duplicate_ann_id``]; unknown image [``missing_image``]; image skipped above
  [``image_skipped``]; unknown category [``missing_category``]; category skipped above
  [``category_skipped``].
- Segmentation: polygons are rasterised by pycocotools (so masks are clipped to the image by
  construction); a polygon part with fewer than 3 points, an odd number of coordinates or
  non-finite values is dropped with a note [``degenerate_polygon_part``] when other parts remain,
  and the annotation is skipped when none remains [``degenerate_polygon``]; RLE whose ``size``
  differs from the image [``rle_size_mismatch``]; malformed RLE (counts that do not sum to H*W,
  invalid characters) or any other structure [``bad_segmentation``]; mask with no pixel
  [``empty_mask``].
- ``bbox`` (optional) is never used for the box, which is always the mask's tight box; it is only
  checked for consistency: not 4 finite numbers with ``w, h >= 0`` [``bad_bbox``]; no overlap with
  the image at all [``bbox_outside_image``] (skipped: the annotation contradicts itself);
  partially outside the image: kept, note [``bbox_clipped``].

Instances store the mask as compressed RLE (str counts), ``area`` = mask pixel count,
``box_xyxy`` = mask tight box, ``source_ann_ids = (ann_id,)`` unless the file says otherwise.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .masks import RLE, compress_rle, decode_rle, encode_rle, polygons_to_rle, rle_area, rle_box_xyxy

EXIF_ORIENTATION_TAG = 0x0112

SKIP_REASONS = (
    "bad_category", "duplicate_category_id",
    "bad_image_record", "duplicate_image_id", "image_missing", "image_unreadable",
    "image_truncated", "image_size_mismatch",
    "bad_annotation", "duplicate_ann_id", "missing_image", "image_skipped", "missing_category",
    "category_skipped", "degenerate_polygon", "rle_size_mismatch", "bad_segmentation",
    "empty_mask", "bad_bbox", "bbox_outside_image",
    # single-object benchmarks (samstudy.isegm)
    "mask_missing", "mask_unreadable", "image_ambiguous", "mask_ambiguous",
)
NOTE_REASONS = ("exif_orientation_ignored", "exif_orientation_applied", "alpha_dropped",
                "degenerate_polygon_part", "bbox_clipped", "mask_unexpected_values",
                "union_differs")  # isegm: a Berkeley union file that is not exactly its parts' union
# Skip reasons that remove a whole image (its objects get image_skipped rows or none at all).
IMAGE_SKIP_REASONS = ("bad_image_record", "duplicate_image_id", "image_missing", "image_unreadable",
                      "image_truncated", "image_size_mismatch", "image_ambiguous")
SKIP_COLUMNS = ("source", "image_id", "ann_id", "file", "reason", "detail")
EXIF_MODES = ("stored", "apply")


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the problem.

    ``reason`` is a short code (one of ``SKIP_REASONS``) when the error maps to a skip row.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``height``/``width`` are of the image in the record's ``exif`` frame.

    ``exif_orientation`` is the file's EXIF orientation tag (1 = none, or not checked).
    ``exif``: ``"stored"`` (pixels, size and masks as stored; the tag ignored) or ``"apply"``
    (all three rotated/flipped per the tag); :func:`read_record_image` reads the pixels so.
    """

    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    exif_orientation: int = 1
    exif: str = "stored"


@dataclass(frozen=True)
class Instance:
    """One object to segment.

    Attributes:
        image_id, ann_id: ids from the source annotation file (a merged object gets a new id and
            lists its members in ``source_ann_ids``).
        category_id, category: category id and name.
        rle: ground-truth mask, compressed COCO RLE of the image's ``(H, W)``.
        area: foreground pixel count of ``rle``.
        box_xyxy: tight box of the mask, ``(x0, y0, x1, y1)`` floats, exclusive right/bottom edges.
        iscrowd: COCO crowd flag.
        tags: free labels (e.g. synthetic failure mode ``"holes"``, ``"small"``).
        ignore_rle: optional mask of pixels ignored by metrics and click placement (GrabCut's
            uncertain band); ``None`` when every pixel counts.
        source_ann_ids: annotation ids this instance was built from (itself unless merged).
    """

    image_id: int
    ann_id: int
    category_id: int
    category: str
    rle: RLE
    area: int
    box_xyxy: tuple[float, float, float, float]
    iscrowd: bool = False
    tags: tuple[str, ...] = ()
    ignore_rle: RLE | None = None
    source_ann_ids: tuple[int, ...] = ()

    def mask(self) -> np.ndarray:
        """Ground-truth mask, ``bool (H, W)``."""
        return decode_rle(self.rle)

    def ignore_mask(self) -> np.ndarray | None:
        """Ignored pixels, ``bool (H, W)``, or ``None``."""
        return None if self.ignore_rle is None else decode_rle(self.ignore_rle)

    def with_(self, **changes: Any) -> "Instance":
        return replace(self, **changes)


@dataclass
class Dataset:
    """Images, categories and instances of one COCO-format source, plus what was skipped.

    ``skips`` rows: ``{"source", "image_id", "ann_id", "file", "reason", "detail"}`` (ids and file
    may be ``None``).
    ``notes`` rows: same columns, for elements that were loaded but altered or worth a look.
    ``policy_log`` rows: one dict per applied labeling-policy step (name, parameters, counts).
    """

    name: str
    images: dict[int, ImageRecord]
    categories: dict[int, str]
    instances: list[Instance]
    skips: list[dict[str, Any]] = field(default_factory=list)
    policy_log: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)

    def instances_by_image(self) -> dict[int, list[Instance]]:
        """Instances grouped by ``image_id``, in image-id order, each list in ``ann_id`` order."""
        out: dict[int, list[Instance]] = {i: [] for i in sorted(self.images)}
        for inst in sorted(self.instances, key=lambda t: (t.image_id, t.ann_id)):
            out.setdefault(inst.image_id, []).append(inst)
        return out

    def subset(self, image_ids: set[int] | list[int], name: str | None = None) -> "Dataset":
        """The dataset restricted to ``image_ids`` (skips, notes and policy log kept)."""
        ids = set(image_ids)
        return Dataset(
            name=name or self.name,
            images={i: r for i, r in self.images.items() if i in ids},
            categories=dict(self.categories),
            instances=[t for t in self.instances if t.image_id in ids],
            skips=list(self.skips),
            policy_log=list(self.policy_log),
            notes=list(self.notes),
        )


# ----------------------------------------------------------------------------------------------
# Images


def _to_rgb_uint8(im: Image.Image, path: Path) -> np.ndarray:
    """PIL image of any common mode -> ``uint8 (H, W, 3)`` RGB.

    16-bit grey is scaled with rounding (``round(v * 255 / 65535)``, so 65535 -> 255); alpha is
    discarded (colour channels kept as stored, like OpenCV's default); palette, 1-bit, grey, CMYK
    and YCbCr go through PIL's conversions.
    """
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"{path}: integer image with values outside 0..65535 is not supported",
                            reason="image_unreadable")
        grey = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "F":
        raise DataError(f"{path}: floating-point image (mode F) is not supported",
                        reason="image_unreadable")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # PIL asks palette transparency to go through RGBA
    if im.mode in ("LA", "La"):
        im = im.convert("L")
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except ValueError as e:
            raise DataError(f"{path}: cannot convert mode {mode} to RGB: {e}",
                            reason="image_unreadable") from e
    arr = np.asarray(im, dtype=np.uint8)
    return np.ascontiguousarray(arr)


def _classify_pil_error(path: Path, err: BaseException) -> DataError:
    msg = str(err)
    if isinstance(err, EOFError) or "truncat" in msg.lower():
        return DataError(f"{path}: image file is truncated ({msg or type(err).__name__})",
                         reason="image_truncated")
    return DataError(f"{path}: unreadable image ({type(err).__name__}: {msg})", reason="image_unreadable")


def _check_exif_mode(exif: str) -> None:
    if exif not in EXIF_MODES:
        raise ValueError(f"exif must be one of {EXIF_MODES}, got {exif!r}")


def read_image(path: str | Path, exif: str = "stored") -> np.ndarray:
    """Read an image file as ``uint8 (H, W, 3)`` RGB.

    exif: ``"stored"`` returns the pixels as stored (the EXIF orientation tag is ignored, as COCO
        tools do); ``"apply"`` rotates/flips them per the tag (the displayed image).

    Grey, grey+alpha, RGBA, palette, 1-bit, CMYK and 16-bit grey images are converted (see
    :func:`_to_rgb_uint8`). Raises :class:`DataError` naming the file when it is missing, not an
    image, or truncated: a JPEG's entropy-coded data is checked in strict mode first
    (:func:`_check_jpeg_data`; a cut file that still ends with ``FFD9`` is caught), every other
    format is decoded by PIL, which raises on truncation (this module never sets
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``).
    """
    _check_exif_mode(exif)
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found", reason="image_missing")
    _check_jpeg_data(path)
    try:
        with Image.open(path) as im:
            im.load()
            if exif == "apply":
                im = ImageOps.exif_transpose(im)
            return _to_rgb_uint8(im, path)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as e:
        raise _classify_pil_error(path, e) from e


def read_record_image(record: "ImageRecord") -> np.ndarray:
    """The pixels of ``record`` in its frame: :func:`read_image` of its path with its ``exif`` mode."""
    return read_image(record.path, exif=record.exif)


def _check_jpeg_data(path: Path) -> bool:
    """Decode a JPEG's entropy-coded data with libjpeg-turbo in strict mode; ``True`` when it decoded cleanly.

    libjpeg recovers from damaged data with a *warning* and invents the missing pixels (grey);
    strict mode turns the warning into an error. Decoding at 1/8 scale still reads every
    coefficient, so the check is complete and cheap. Raises :class:`DataError`:
    ``image_truncated`` when the data ends before the frame is filled ("premature end of data
    segment", also when an ``FFD9`` end marker was appended), ``image_unreadable`` for other
    warnings. A file libjpeg-turbo cannot decode at all (a header cut short, a chroma subsampling
    TurboJPEG does not know) is left to PIL to judge: PIL raises on a cut header, but a damaged
    scan in such a file is not caught. Returns ``False`` for other formats and those files.
    """
    import simplejpeg  # function-level: only JPEG files need it

    with open(path, "rb") as f:
        if f.read(3) != b"\xff\xd8\xff":
            return False
        f.seek(0)
        data = f.read()
    try:
        cs = simplejpeg.decode_jpeg_header(data, strict=False)[2]
    except (ValueError, KeyError):  # KeyError: a subsampling turbojpeg cannot name
        return False  # no usable header (e.g. cut inside its tables): PIL judges the file and names the problem
    kw = dict(colorspace="CMYK" if cs in ("CMYK", "YCCK") else "GRAY", min_height=1, min_width=1, min_factor=8)
    try:
        simplejpeg.decode_jpeg(data, strict=True, **kw)
    except ValueError as strict_error:
        try:
            simplejpeg.decode_jpeg(data, strict=False, **kw)
        except ValueError:
            return False  # not decodable by libjpeg-turbo at all: PIL decides (and names the problem)
        msg = str(strict_error)
        if "premature end" in msg.lower():
            raise DataError(f"{path}: image file is truncated (libjpeg: {msg})", reason="image_truncated") from None
        raise DataError(f"{path}: corrupt JPEG data (libjpeg: {msg})", reason="image_unreadable") from None
    return True


@dataclass(frozen=True)
class ImageProbe:
    """What :func:`probe_image` learns from a full decode.

    ``stored_hw`` is the pixel grid as stored, ``displayed_hw`` after EXIF orientation;
    ``alpha`` is ``None`` without an alpha channel, else ``(mode, pixels not fully opaque)``.
    """

    stored_hw: tuple[int, int]
    displayed_hw: tuple[int, int]
    orientation: int
    format: str
    alpha: tuple[str, int] | None = None


def _alpha_info(im: Image.Image) -> tuple[str, int] | None:
    """``(mode, non-opaque pixel count)`` of an image with an alpha channel or palette transparency."""
    mode = im.mode
    if mode == "P" and "transparency" in im.info or mode in ("PA", "LA", "La", "RGBA", "RGBa"):
        alpha = np.asarray(im.convert("RGBA" if mode.startswith("P") else mode).getchannel("A"))
        return mode + (" with transparency" if mode == "P" else ""), int((alpha < 255).sum())
    return None


def probe_image(path: str | Path) -> ImageProbe:
    """Fully decode an image file once: sizes, EXIF orientation, alpha channel.

    Raises :class:`DataError` (with ``reason`` ``image_missing``/``image_unreadable``/
    ``image_truncated``) naming the file, exactly as :func:`read_image` would.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found", reason="image_missing")
    jpeg_ok = _check_jpeg_data(path)  # a clean strict decode of every coefficient: no second decode needed
    try:
        with Image.open(path) as im:
            w, h = im.size
            fmt = im.format or ""
            orientation = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
            if not jpeg_ok:
                im.load()  # a full decode: PIL raises on truncation
            alpha = _alpha_info(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as e:
        raise _classify_pil_error(path, e) from e
    if orientation not in range(1, 9):
        orientation = 1  # invalid tag: PIL's exif_transpose ignores it too
    displayed = (w, h) if orientation >= 5 else (h, w)
    return ImageProbe(stored_hw=(h, w), displayed_hw=displayed, orientation=orientation, format=fmt,
                      alpha=alpha)


def exif_orientation(path: str | Path) -> int:
    """The EXIF orientation tag of an image file from its header only (1 when absent or invalid)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found", reason="image_missing")
    try:
        with Image.open(path) as im:
            o = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise _classify_pil_error(path, e) from e
    return o if o in range(1, 9) else 1


def note_alpha(log: "SkipLog", image_id: Any, path: Path, probe: ImageProbe) -> None:
    """The ``alpha_dropped`` note of an image with an alpha channel (no-op without one)."""
    if probe.alpha is not None:
        mode, n = probe.alpha
        total = probe.stored_hw[0] * probe.stored_hw[1]
        log.note(image_id, None, "alpha_dropped",
                 f"{path}: mode {mode}; alpha channel dropped, colour channels kept as stored "
                 f"({n} of {total} pixels not fully opaque)", file=path.name)


_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90,
}


def exif_transpose_mask(mask: np.ndarray, orientation: int) -> np.ndarray:
    """Apply to a ``bool (H, W)`` mask the same transform PIL's ``exif_transpose`` applies to pixels."""
    method = _EXIF_TRANSPOSE.get(int(orientation))
    if method is None:
        return np.asarray(mask, dtype=bool)
    im = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L").transpose(method)
    return np.asarray(im) > 127


# ----------------------------------------------------------------------------------------------
# COCO loading


class SkipLog:
    """Collects skip and note rows (columns ``SKIP_COLUMNS``) for one source file.

    ``file`` is the image file the row is about (relative name as in the source), ``None`` when
    the row concerns no image file (a category, an image entry without a file name).
    """

    def __init__(self, source: str):
        self.source = source
        self.skips: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []

    def _row(self, image_id: Any, ann_id: Any, reason: str, detail: str, file: str | None) -> dict[str, Any]:
        return {"source": self.source, "image_id": _int_or_none(image_id),
                "ann_id": _int_or_none(ann_id), "file": file, "reason": reason, "detail": detail}

    def skip(self, image_id: Any, ann_id: Any, reason: str, detail: str, file: str | None = None) -> None:
        assert reason in SKIP_REASONS, reason
        self.skips.append(self._row(image_id, ann_id, reason, detail, file))

    def note(self, image_id: Any, ann_id: Any, reason: str, detail: str, file: str | None = None) -> None:
        assert reason in NOTE_REASONS, reason
        self.notes.append(self._row(image_id, ann_id, reason, detail, file))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_or_none(v: Any) -> int | None:
    return int(v) if _is_int(v) else None


def _as_count(v: Any) -> int | None:
    """A positive image dimension: int, or float with an integral value (some writers emit 480.0)."""
    if _is_int(v) and v > 0:
        return int(v)
    if isinstance(v, float) and v.is_integer() and v > 0:
        return int(v)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"{path}: annotation file not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read annotation file ({e})") from e
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from e
    if not isinstance(raw, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {type(raw).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in raw]
    if missing:
        raise DataError(f"{path}: missing top-level key(s) {missing} of a COCO instances file")
    for k in ("images", "annotations", "categories"):
        if not isinstance(raw[k], list):
            raise DataError(f"{path}: top-level '{k}' must be a list, got {type(raw[k]).__name__}")
    return raw


def _duplicates(ids: Iterable[Any]) -> set[Any]:
    seen: set[Any] = set()
    dup: set[Any] = set()
    for i in ids:
        (dup if i in seen else seen).add(i)
    return dup


def _parse_categories(entries: list[Any], log: SkipLog) -> tuple[dict[int, str], set[int]]:
    """Returns ``(categories, skipped_ids)``."""
    valid = []
    for c in entries:
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)):
            log.skip(None, None, "bad_category", f"category entry needs int 'id' and str 'name': {c!r:.200}")
            continue
        valid.append(c)
    dup = _duplicates(c["id"] for c in valid)
    cats: dict[int, str] = {}
    for c in valid:
        if c["id"] in dup:
            log.skip(None, None, "duplicate_category_id", f"category id {c['id']} ('{c['name']}') appears more than once")
        else:
            cats[c["id"]] = c["name"]
    return dict(sorted(cats.items())), dup


@dataclass(frozen=True)
class _Frame:
    """Where an image's annotations live: JSON ``(H, W)``, the EXIF transform to apply to its masks
    (1 = none) and its file name."""

    json_hw: tuple[int, int]
    transpose_orientation: int
    file_name: str = ""


def _parse_images(entries: list[Any], image_dir: Path, check_images: bool, exif: str, log: SkipLog
                  ) -> tuple[dict[int, ImageRecord], dict[int, _Frame], dict[int, str]]:
    """Returns ``(records, frames, skipped)`` with ``skipped[image_id] = reason`` (EXIF rule: module docstring)."""
    valid = []
    for e in entries:
        if not isinstance(e, dict) or not _is_int(e.get("id")):
            log.skip(None, None, "bad_image_record", f"image entry without int 'id': {e!r:.200}")
            continue
        h, w = _as_count(e.get("height")), _as_count(e.get("width"))
        fn = e.get("file_name")
        if not (isinstance(fn, str) and fn) or h is None or w is None:
            log.skip(e["id"], None, "bad_image_record",
                     f"image {e['id']} needs str 'file_name' and positive int 'height'/'width': {e!r:.200}",
                     file=fn if isinstance(fn, str) and fn else None)
            continue
        written = e.get("exif") == "apply"  # written by write_coco for an `apply` dataset: displayed frame
        tag = e.get("exif_orientation") if _is_int(e.get("exif_orientation")) else 1
        valid.append((e["id"], fn, h, w, written, tag))
    dup = _duplicates(v[0] for v in valid)
    records: dict[int, ImageRecord] = {}
    frames: dict[int, _Frame] = {}
    skipped: dict[int, str] = {}

    def skip(image_id: int, fn: str, reason: str, detail: str) -> None:
        log.skip(image_id, None, reason, detail, file=fn)
        skipped[image_id] = reason

    for image_id, fn, h, w, written, tag in valid:
        path = image_dir / fn
        if image_id in dup:
            skip(image_id, fn, "duplicate_image_id", f"image id {image_id} appears more than once ({fn})")
            continue
        mode = "apply" if written else exif
        orientation, transpose, hw = (tag if written else 1), 1, (h, w)
        if check_images or (exif == "apply" and not written):
            try:
                probe = probe_image(path) if check_images else None
                orientation = probe.orientation if probe else exif_orientation(path)
            except DataError as err:
                skip(image_id, fn, err.reason or "image_unreadable", str(err))
                continue
            if probe is not None:
                expect = probe.displayed_hw if written else probe.stored_hw
                if expect != (h, w):
                    skip(image_id, fn, "image_size_mismatch", _size_mismatch_detail(path, (h, w), probe, written))
                    continue
                note_alpha(log, image_id, path, probe)
            if not written and orientation != 1:
                if exif == "apply":
                    transpose = orientation
                    hw = (w, h) if orientation >= 5 else (h, w)
                    log.note(image_id, None, "exif_orientation_applied",
                             f"{path}: EXIF orientation {orientation} applied to the pixels and to every mask "
                             f"(data.exif: apply); displayed size {hw[0]}x{hw[1]}", file=fn)
                else:
                    log.note(image_id, None, "exif_orientation_ignored",
                             f"{path}: EXIF orientation {orientation} ignored (data.exif: stored): pixels, size "
                             f"and masks are in the stored frame, as COCO's are; viewers that honour EXIF show "
                             f"the image rotated or flipped", file=fn)
        records[image_id] = ImageRecord(image_id=image_id, file_name=fn, path=path, height=hw[0], width=hw[1],
                                        exif_orientation=orientation, exif=mode)
        frames[image_id] = _Frame(json_hw=(h, w), transpose_orientation=transpose, file_name=fn)
    return dict(sorted(records.items())), frames, skipped


def _size_mismatch_detail(path: Path, json_hw: tuple[int, int], probe: ImageProbe, written: bool) -> str:
    frame = "displayed" if written else "stored"
    have = probe.displayed_hw if written else probe.stored_hw
    detail = f"{path}: JSON height x width {json_hw[0]}x{json_hw[1]} but the image is {have[0]}x{have[1]} as {frame}"
    if not written and probe.orientation != 1 and probe.displayed_hw == json_hw:
        detail += (f"; the JSON size is the EXIF-rotated (orientation {probe.orientation}) displayed size, "
                   f"but COCO sizes and masks are in the stored frame")
    return detail


def _decode_counts_string(s: str) -> list[int]:
    """Run lengths of a compressed COCO RLE string (LEB128-like 6-bit chars from '0', deltas after the 2nd).

    Raises ``ValueError`` on characters outside the alphabet or a string that ends mid-number.
    """
    counts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise ValueError("RLE string ends in the middle of a number")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid RLE character {s[p]!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _validated_rle(seg: dict[str, Any], hw: tuple[int, int]) -> tuple[RLE | None, str, str]:
    """Check an RLE dict against the image ``(H, W)``: ``(compressed_rle, "", "")`` or ``(None, reason, detail)``."""
    size, counts = seg.get("size"), seg.get("counts")
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        return None, "bad_segmentation", f"RLE 'size' must be [H, W] ints, got {size!r:.80}"
    if tuple(size) != hw:
        return None, "rle_size_mismatch", f"RLE size {size[0]}x{size[1]} but image is {hw[0]}x{hw[1]}"
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            return None, "bad_segmentation", "uncompressed RLE counts must be non-negative ints"
        runs = counts
    elif isinstance(counts, (str, bytes)):
        try:
            runs = _decode_counts_string(counts.decode("ascii") if isinstance(counts, bytes) else counts)
        except (ValueError, UnicodeDecodeError) as e:
            return None, "bad_segmentation", f"compressed RLE counts: {e}"
        if any(r < 0 for r in runs):
            return None, "bad_segmentation", "compressed RLE has a negative run length"
    else:
        return None, "bad_segmentation", f"RLE 'counts' must be a list or a string, got {type(counts).__name__}"
    total = sum(runs)
    if total != hw[0] * hw[1]:
        return None, "bad_segmentation", f"RLE run lengths sum to {total}, not H*W = {hw[0] * hw[1]}"
    return compress_rle({"size": list(size), "counts": counts}), "", ""


def _polygon_part_ok(p: Any) -> bool:
    return (isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p))


def _check_bbox(bbox: Any, hw: tuple[int, int]) -> tuple[str, str]:
    """``("", "")`` when fine, else ``(reason, detail)`` with reason a skip or the note ``bbox_clipped``."""
    if not (isinstance(bbox, list) and len(bbox) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        return "bad_bbox", f"'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r:.80}"
    x, y, w, h = map(float, bbox)
    H, W = hw
    if w < 0 or h < 0:
        return "bad_bbox", f"'bbox' {bbox} has a negative width or height"
    if x >= W or y >= H or x + w <= 0 or y + h <= 0:
        return "bbox_outside_image", f"'bbox' {bbox} does not overlap the {H}x{W} image"
    if x < 0 or y < 0 or x + w > W or y + h > H:
        return "bbox_clipped", f"'bbox' {bbox} extends beyond the {H}x{W} image (the box used is the mask's tight box)"
    return "", ""


def _parse_annotation(a: dict[str, Any], frame: _Frame, log: SkipLog) -> tuple[RLE | None, str, str]:
    """Rasterise one annotation's segmentation into a compressed RLE of the displayed frame."""
    hw = frame.json_hw
    seg = a["segmentation"]
    image_id, ann_id = a["image_id"], a["id"]
    if isinstance(seg, list):
        parts = [p for p in seg if _polygon_part_ok(p)]
        bad = len(seg) - len(parts)
        if not parts:
            return None, "degenerate_polygon", (f"no polygon with >= 3 points and finite coordinates "
                                                f"({len(seg)} part(s))")
        if bad:
            log.note(image_id, ann_id, "degenerate_polygon_part",
                     f"dropped {bad} of {len(seg)} polygon parts (< 3 points, odd length or non-finite)",
                     file=frame.file_name)
        rle = polygons_to_rle(parts, *hw)
    elif isinstance(seg, dict):
        rle, reason, detail = _validated_rle(seg, hw)
        if rle is None:
            return None, reason, detail
    else:
        return None, "bad_segmentation", f"segmentation must be a polygon list or an RLE dict, got {type(seg).__name__}"
    if frame.transpose_orientation != 1:
        rle = encode_rle(exif_transpose_mask(decode_rle(rle), frame.transpose_orientation))
    return rle, "", ""


def load_coco(annotation_json: str | Path, image_dir: str | Path, name: str | None = None,
              check_images: bool = True, exif: str = "stored") -> Dataset:
    """Load and validate a COCO instances file; see the module docstring for every rule.

    Args:
        annotation_json: path of the COCO JSON (``images``, ``annotations``, ``categories``).
        image_dir: folder that ``file_name`` is relative to.
        name: dataset name (default: ``info.samstudy.name`` if written by :func:`write_coco`,
            else the JSON file's stem).
        check_images: fully decode every image (size, EXIF orientation, truncation, alpha). When
            False, records take the JSON sizes on trust (and ``exif_orientation = 1`` unless the
            EXIF rule needs the tag).
        exif: ``"stored"`` or ``"apply"``: the EXIF rule of the module docstring.

    Returns:
        A :class:`Dataset` whose ``skips`` and ``notes`` list every element not loaded / altered.
        Instances are in ``ann_id`` order.

    Raises:
        DataError: unreadable/malformed JSON or missing top-level keys (message names the file).
    """
    _check_exif_mode(exif)
    path = Path(annotation_json)
    raw = _read_json(path)
    log = SkipLog(str(path))
    categories, bad_cats = _parse_categories(raw["categories"], log)
    records, frames, skipped_images = _parse_images(raw["images"], Path(image_dir), check_images, exif, log)
    file_names = {e["id"]: e["file_name"] for e in raw["images"]
                  if isinstance(e, dict) and _is_int(e.get("id")) and isinstance(e.get("file_name"), str)}
    json_image_ids = {e.get("id") for e in raw["images"] if isinstance(e, dict)}

    anns = raw["annotations"]
    ann_ok = [a for a in anns if isinstance(a, dict) and _is_int(a.get("id"))]
    dup_ann = _duplicates(a["id"] for a in ann_ok)
    instances: list[Instance] = []
    for a in anns:
        if not (isinstance(a, dict) and _is_int(a.get("id"))):
            log.skip(a.get("image_id") if isinstance(a, dict) else None, None, "bad_annotation",
                     f"annotation without int 'id': {a!r:.200}")
            continue
        inst = _annotation_to_instance(a, dup_ann, json_image_ids, skipped_images, frames,
                                       categories, bad_cats, log, file_names)
        if inst is not None:
            instances.append(inst)
    instances.sort(key=lambda t: t.ann_id)

    info = raw.get("info") if isinstance(raw.get("info"), dict) else {}
    meta = info.get("samstudy") if isinstance(info.get("samstudy"), dict) else {}
    policy_log = list(meta.get("policy_log", [])) if isinstance(meta.get("policy_log"), list) else []
    return Dataset(name=name or str(meta.get("name") or path.stem), images=records, categories=categories,
                   instances=instances, skips=log.skips, policy_log=policy_log, notes=log.notes)


def _annotation_to_instance(a: dict[str, Any], dup_ann: set[int], json_image_ids: set[Any],
                            skipped_images: dict[int, str], frames: dict[int, _Frame],
                            categories: dict[int, str], bad_cats: set[int], log: SkipLog,
                            file_names: Mapping[Any, str]) -> Instance | None:
    ann_id, image_id, cat_id = a["id"], a.get("image_id"), a.get("category_id")
    iscrowd = a.get("iscrowd", 0)
    fn = file_names.get(image_id) if isinstance(image_id, int) else None

    def skip(reason: str, detail: str) -> None:
        log.skip(image_id, ann_id, reason, detail, file=fn)

    problems = []
    if not _is_int(image_id):
        problems.append("int 'image_id'")
    if not _is_int(cat_id):
        problems.append("int 'category_id'")
    if "segmentation" not in a:
        problems.append("'segmentation'")
    if iscrowd not in (0, 1) or isinstance(iscrowd, float):
        problems.append("'iscrowd' in {0, 1}")
    if problems:
        skip("bad_annotation", f"annotation {ann_id} needs {', '.join(problems)}")
        return None
    if ann_id in dup_ann:
        skip("duplicate_ann_id", f"annotation id {ann_id} appears more than once")
        return None
    if image_id in skipped_images:
        skip("image_skipped", f"its image {image_id} was skipped ({skipped_images[image_id]})")
        return None
    if image_id not in frames:
        reason = "missing_image" if image_id not in json_image_ids else "image_skipped"
        skip(reason, f"image id {image_id} is not a loaded image of the file")
        return None
    if cat_id in bad_cats:
        skip("category_skipped", f"its category {cat_id} was skipped (duplicate id)")
        return None
    if cat_id not in categories:
        skip("missing_category", f"category id {cat_id} is not in 'categories'")
        return None
    frame = frames[image_id]
    if "bbox" in a:
        reason, detail = _check_bbox(a["bbox"], frame.json_hw)
        if reason == "bbox_clipped":
            log.note(image_id, ann_id, reason, detail, file=fn)
        elif reason:
            skip(reason, detail)
            return None
    rle, reason, detail = _parse_annotation(a, frame, log)
    if rle is None:
        skip(reason, detail)
        return None
    area = rle_area(rle)
    if area == 0:
        skip("empty_mask", "segmentation covers no pixel of the image")
        return None
    ignore_rle = None
    if isinstance(a.get("ignore_segmentation"), dict):
        ignore_rle, reason, detail = _validated_rle(a["ignore_segmentation"], frame.json_hw)
        if ignore_rle is None:
            skip(reason, "ignore_segmentation: " + detail)
            return None
        if frame.transpose_orientation != 1:
            ignore_rle = encode_rle(exif_transpose_mask(decode_rle(ignore_rle), frame.transpose_orientation))
    tags = a.get("tags")
    src = a.get("source_ann_ids")
    return Instance(
        image_id=image_id, ann_id=ann_id, category_id=cat_id, category=categories[cat_id], rle=rle,
        area=area, box_xyxy=tuple(float(v) for v in rle_box_xyxy(rle)), iscrowd=bool(iscrowd),
        tags=tuple(str(t) for t in tags) if isinstance(tags, list) else (),
        ignore_rle=ignore_rle,
        source_ann_ids=tuple(int(s) for s in src) if isinstance(src, list) and all(_is_int(s) for s in src) else (ann_id,),
    )


# ----------------------------------------------------------------------------------------------
# COCO writing and tables


def _json_safe(v: Any) -> Any:
    """numpy scalars/arrays and tuples -> plain JSON types (for policy-log parameters)."""
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return _json_safe(v.tolist())
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    return v


def coco_dict(dataset: Dataset) -> dict[str, Any]:
    """The COCO JSON object :func:`write_coco` writes (images, categories, annotations sorted by id).

    Images of the ``apply`` EXIF frame carry ``"exif": "apply"`` and their ``exif_orientation``
    (their size and masks are displayed-frame). Annotations carry ``segmentation`` as compressed RLE, ``bbox`` = tight box as xywh, ``area`` =
    pixel count, ``iscrowd``; and, when not default, ``tags``, ``source_ann_ids``,
    ``ignore_segmentation``. ``info.samstudy`` holds the dataset name and policy log.
    """
    images = [{"id": r.image_id, "file_name": r.file_name, "height": r.height, "width": r.width,
               **({"exif": "apply", "exif_orientation": r.exif_orientation} if r.exif == "apply" else {})}
              for _, r in sorted(dataset.images.items())]
    cats = [{"id": i, "name": n} for i, n in sorted(dataset.categories.items())]
    anns = []
    for t in sorted(dataset.instances, key=lambda t: t.ann_id):
        x0, y0, x1, y1 = (float(v) for v in t.box_xyxy)
        a = {"id": t.ann_id, "image_id": t.image_id, "category_id": t.category_id,
             "segmentation": compress_rle(t.rle), "area": int(t.area),
             "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": int(bool(t.iscrowd))}
        if t.tags:
            a["tags"] = list(t.tags)
        if t.source_ann_ids and tuple(t.source_ann_ids) != (t.ann_id,):
            a["source_ann_ids"] = [int(s) for s in t.source_ann_ids]
        if t.ignore_rle is not None:
            a["ignore_segmentation"] = compress_rle(t.ignore_rle)
        anns.append(a)
    info = {"description": f"samstudy dataset {dataset.name}",
            "samstudy": {"name": dataset.name, "policy_log": _json_safe(dataset.policy_log)}}
    return {"info": info, "images": images, "categories": cats, "annotations": anns}


def write_coco(dataset: Dataset, path: str | Path) -> Path:
    """Write ``dataset`` as a COCO instances JSON (deterministic: sorted ids and keys).

    :func:`load_coco` on the result (with the same ``image_dir``) gives back equal images,
    categories, instances and policy log. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(coco_dict(dataset), sort_keys=True, separators=(",", ":"))
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _rows_frame(rows: list[dict[str, Any]]):
    import pandas as pd

    df = pd.DataFrame(rows, columns=list(SKIP_COLUMNS))
    for c in ("image_id", "ann_id"):
        df[c] = df[c].astype("Int64")
    return df


def skips_table(dataset: Dataset, include_notes: bool = False):
    """Skip rows as a ``pandas.DataFrame`` with columns ``source, image_id, ann_id, file, reason, detail``
    (``file``: the image file the row is about, as named in the source; may be null).

    With ``include_notes=True`` the notes are appended and a ``kind`` column (``"skip"``/``"note"``)
    tells them apart.
    """
    import pandas as pd

    df = _rows_frame(dataset.skips)
    if not include_notes:
        return df
    notes = _rows_frame(dataset.notes)
    df.insert(0, "kind", "skip")
    notes.insert(0, "kind", "note")
    return pd.concat([df, notes], ignore_index=True) if len(notes) else df


# ----------------------------------------------------------------------------------------------
# The skip limit of a stage

_CATEGORY_SKIP_REASONS = ("bad_category", "duplicate_category_id")


class TooManySkips(DataError):
    """A stage lost more of its inputs than ``max_skip_fraction`` allows, or has no object left.

    ``summary`` is the dict :func:`check_skip_limit` builds; the message is its text form.
    """

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def check_skip_limit(skips, images_kept: int, objects_kept: int, max_fraction: float, where: str,
                     objects_left: int | None = None, n_examples: int = 3) -> dict[str, Any]:
    """Stop a stage whose inputs were mostly skipped: the one check of every stage that loads or scores data.

    Args:
        skips: tidy skip table, one row per skipped element, with columns ``image_id, ann_id,
            reason, detail`` and optionally ``file`` (:func:`skips_table`, or the engine's
            ``skip_table`` of result rows). A row whose reason is in ``IMAGE_SKIP_REASONS``
            removes an image (counted once per ``image_id``; a row without id counts alone); every
            other row except the category-level ones removes an object.
        images_kept, objects_kept: how many images / objects the stage goes on with; the stage
            was given ``kept + skipped`` of each.
        max_fraction: the largest allowed share of skipped images, and of skipped objects, in
            ``[0, 1]`` (the config's ``data.max_skip_fraction``).
        where: names the stage and the source in the message.
        objects_left: objects left for the stage's result (default ``objects_kept``), e.g. the
            test objects after the category filter, the policy and the split.

    Returns:
        The summary ``{"where", "images", "images_skipped", "objects", "objects_skipped",
        "objects_left", "max_skip_fraction", "by_reason": {reason: rows}, "examples": {reason:
        [file or detail, ...]}}`` (reasons by decreasing count, at most ``n_examples`` examples).

    Raises:
        TooManySkips: ``objects_left == 0``, or more than ``max_fraction`` of the images or of the
            objects skipped. The message holds the whole summary.
    """
    import pandas as pd

    if not 0.0 <= float(max_fraction) <= 1.0:
        raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
    df = pd.DataFrame(skips).reset_index(drop=True)
    for c in ("image_id", "ann_id", "reason", "detail", "file"):
        if c not in df.columns:
            df[c] = None
    level = df["reason"].map(lambda r: "image" if r in IMAGE_SKIP_REASONS
                             else "category" if r in _CATEGORY_SKIP_REASONS else "object")
    img = df[level == "image"]
    images_skipped = int(img["image_id"].dropna().nunique() + img["image_id"].isna().sum())
    objects_skipped = int(((level == "object") | df["ann_id"].notna()).sum())
    by_reason = df["reason"].value_counts()
    examples = {}
    for reason in by_reason.index:
        rows = df[df["reason"] == reason]
        names = [str(f) if f is not None and not (isinstance(f, float) and math.isnan(f)) else str(d)[:160]
                 for f, d in zip(rows["file"], rows["detail"])]
        examples[str(reason)] = list(dict.fromkeys(names))[:n_examples]
    summary = {"where": where, "images": int(images_kept) + images_skipped, "images_skipped": images_skipped,
               "objects": int(objects_kept) + objects_skipped, "objects_skipped": objects_skipped,
               "objects_left": int(objects_kept if objects_left is None else objects_left),
               "max_skip_fraction": float(max_fraction),
               "by_reason": {str(k): int(v) for k, v in by_reason.items()}, "examples": examples}
    problems = []
    if summary["objects_left"] == 0:
        problems.append("no object left to evaluate")
    for what in ("images", "objects"):
        n, k = summary[what], summary[f"{what}_skipped"]
        if n and k > max_fraction * n:
            problems.append(f"{k} of {n} {what} skipped ({k / n:.1%} > data.max_skip_fraction {max_fraction:g})")
    if problems:
        raise TooManySkips(f"{where}: {'; '.join(problems)}.\n{format_skip_summary(summary)}", summary)
    return summary


def format_skip_summary(summary: Mapping[str, Any]) -> str:
    """The summary of :func:`check_skip_limit` as a few lines of text (counts per reason, example files)."""
    lines = [f"  images: {summary['images']} given, {summary['images_skipped']} skipped; objects: "
             f"{summary['objects']} given, {summary['objects_skipped']} skipped, {summary['objects_left']} left"]
    for reason, n in summary["by_reason"].items():
        lines.append(f"  {reason}: {n} (e.g. {', '.join(summary['examples'].get(reason, []))})")
    if not summary["by_reason"]:
        lines.append("  no skip rows")
    return "\n".join(lines)
