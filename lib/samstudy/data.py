"""COCO-format instance data: image and instance records, loading, validation, writing.

An :class:`Instance` is one object to segment: its mask is stored as a COCO RLE (see
:mod:`samstudy.masks` for every coordinate convention). A :class:`Dataset` holds images,
categories, instances and the *skips*: one row per input element that was not loaded, with its
reason, so that nothing is ever dropped silently. Elements that were loaded but altered or that
deserve a look (EXIF orientation, clipped ``bbox``, a dropped degenerate polygon part) get a row in
``Dataset.notes`` with the same columns.

Rules of :func:`load_coco` (each rule's reason code in brackets; see ``SKIP_REASONS`` and
``NOTE_REASONS``):

- Unreadable JSON, a top level that is not an object, or missing/non-list ``images``,
  ``annotations`` or ``categories``: :class:`DataError` naming the file.
- Category entries without an int ``id`` and str ``name`` [``bad_category``]; several entries
  sharing one id are all skipped [``duplicate_category_id``].
- Image entries without int ``id``, str ``file_name`` and positive int ``height``/``width``
  [``bad_image_record``]; entries sharing an id are all skipped [``duplicate_image_id``].
- With ``check_images=True`` each image file's header is opened: missing [``image_missing``],
  not an image [``image_unreadable``], truncated [``image_truncated``], size that matches neither
  the JSON ``height``/``width`` as displayed (EXIF orientation applied) nor as stored
  [``image_size_mismatch``]. Truncation is detected cheaply from the file's end marker
  (JPEG ``FFD9``, PNG ``IEND``); only when that marker is absent is the image fully decoded.
- **EXIF rule.** Records hold the *displayed* size (what :func:`read_image` returns). When the
  JSON size equals the displayed size the annotations are taken to be in the displayed frame; an
  orientation tag other than 1 is then noted [``exif_orientation_applied``] because for
  non-swapping orientations (2-4) the stored frame fits too and cannot be told apart. When the JSON
  size matches only the stored size (orientations 5-8 swap axes) the annotations were drawn on the
  stored pixels (as COCO's were, in browsers that ignored EXIF): masks are rasterised in the stored
  frame and then transformed exactly as the pixels are, and a note is written
  [``annotations_exif_transposed``].
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
from typing import Any, Iterable

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
NOTE_REASONS = ("exif_orientation_applied", "annotations_exif_transposed",
                "degenerate_polygon_part", "bbox_clipped", "mask_unexpected_values",
                "union_differs")  # isegm: a Berkeley union file that is not exactly its parts' union
SKIP_COLUMNS = ("source", "image_id", "ann_id", "reason", "detail")


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the problem.

    ``reason`` is a short code (one of ``SKIP_REASONS``) when the error maps to a skip row.
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``height``/``width`` are of the image as displayed (after EXIF orientation).

    ``exif_orientation`` is the file's EXIF orientation tag (1 = none, or not checked).
    """

    image_id: int
    file_name: str
    path: Path
    height: int
    width: int
    exif_orientation: int = 1


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

    ``skips`` rows: ``{"source", "image_id", "ann_id", "reason", "detail"}`` (ids may be ``None``).
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


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8 (H, W, 3)`` RGB with its EXIF orientation applied.

    Grey, grey+alpha, RGBA, palette, 1-bit, CMYK and 16-bit grey images are converted (see
    :func:`_to_rgb_uint8`). Raises :class:`DataError` naming the file when it is missing, not an
    image, or truncated. Truncation of JPEG/PNG is detected from the end marker when present and
    otherwise by PIL's decoder, which raises unless someone set
    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` (this module never does).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found", reason="image_missing")
    if _tail_complete(path) is False:
        raise DataError(f"{path}: image file is truncated (no end marker)", reason="image_truncated")
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb_uint8(im, path)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as e:
        raise _classify_pil_error(path, e) from e


_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _tail_complete(path: Path) -> bool | None:
    """Cheap truncation test from the file's last bytes.

    Returns ``True`` when the format's end marker is present, ``False`` when the format is known
    and a file that ends mid-stream is certain (an empty file), ``None`` when undecided (other
    formats, or JPEG/PNG with trailing bytes after the marker): the caller then decodes fully.
    """
    size = path.stat().st_size
    if size == 0:
        return False
    with open(path, "rb") as f:
        head = f.read(8)
        f.seek(max(0, size - 64))
        tail = f.read()
    if head[:2] == b"\xff\xd8":  # JPEG: EOI marker, possibly followed by zero padding
        return True if tail.rstrip(b"\x00").endswith(b"\xff\xd9") else None
    if head == b"\x89PNG\r\n\x1a\n":
        return True if tail.endswith(_PNG_IEND) else None
    return None


@dataclass(frozen=True)
class ImageProbe:
    """What :func:`probe_image` learns from a file header.

    ``stored_hw`` is the pixel grid as stored, ``displayed_hw`` after EXIF orientation.
    """

    stored_hw: tuple[int, int]
    displayed_hw: tuple[int, int]
    orientation: int
    format: str


def probe_image(path: str | Path) -> ImageProbe:
    """Open an image header (no full decode unless truncation cannot be ruled out cheaply).

    Raises :class:`DataError` (with ``reason`` ``image_missing``/``image_unreadable``/
    ``image_truncated``) naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file not found", reason="image_missing")
    complete = _tail_complete(path)
    if complete is False:
        raise DataError(f"{path}: image file is truncated (no end marker)", reason="image_truncated")
    try:
        with Image.open(path) as im:
            w, h = im.size
            fmt = im.format or ""
            orientation = int(im.getexif().get(EXIF_ORIENTATION_TAG, 1) or 1)
            if complete is None:
                im.load()  # undecided from the tail: a full decode raises on truncation
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError) as e:
        raise _classify_pil_error(path, e) from e
    if orientation not in range(1, 9):
        orientation = 1  # invalid tag: PIL's exif_transpose ignores it too
    displayed = (w, h) if orientation >= 5 else (h, w)
    return ImageProbe(stored_hw=(h, w), displayed_hw=displayed, orientation=orientation, format=fmt)


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
    """Collects skip and note rows (columns ``SKIP_COLUMNS``) for one source file."""

    def __init__(self, source: str):
        self.source = source
        self.skips: list[dict[str, Any]] = []
        self.notes: list[dict[str, Any]] = []

    def _row(self, image_id: Any, ann_id: Any, reason: str, detail: str) -> dict[str, Any]:
        return {"source": self.source, "image_id": _int_or_none(image_id),
                "ann_id": _int_or_none(ann_id), "reason": reason, "detail": detail}

    def skip(self, image_id: Any, ann_id: Any, reason: str, detail: str) -> None:
        assert reason in SKIP_REASONS, reason
        self.skips.append(self._row(image_id, ann_id, reason, detail))

    def note(self, image_id: Any, ann_id: Any, reason: str, detail: str) -> None:
        assert reason in NOTE_REASONS, reason
        self.notes.append(self._row(image_id, ann_id, reason, detail))


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
    """Where an image's annotations live: JSON ``(H, W)`` and the EXIF transform to apply."""

    json_hw: tuple[int, int]
    transpose_orientation: int  # 1 = none


def _parse_images(entries: list[Any], image_dir: Path, check_images: bool, log: SkipLog
                  ) -> tuple[dict[int, ImageRecord], dict[int, _Frame], dict[int, str]]:
    """Returns ``(records, frames, skipped)`` with ``skipped[image_id] = reason``."""
    valid = []
    for e in entries:
        if not isinstance(e, dict) or not _is_int(e.get("id")):
            log.skip(None, None, "bad_image_record", f"image entry without int 'id': {e!r:.200}")
            continue
        h, w = _as_count(e.get("height")), _as_count(e.get("width"))
        fn = e.get("file_name")
        if not (isinstance(fn, str) and fn) or h is None or w is None:
            log.skip(e["id"], None, "bad_image_record",
                     f"image {e['id']} needs str 'file_name' and positive int 'height'/'width': {e!r:.200}")
            continue
        valid.append((e["id"], fn, h, w))
    dup = _duplicates(v[0] for v in valid)
    records: dict[int, ImageRecord] = {}
    frames: dict[int, _Frame] = {}
    skipped: dict[int, str] = {}
    for image_id, fn, h, w in valid:
        path = image_dir / fn
        if image_id in dup:
            log.skip(image_id, None, "duplicate_image_id", f"image id {image_id} appears more than once ({fn})")
            skipped[image_id] = "duplicate_image_id"
            continue
        orientation, transpose = 1, 1
        if check_images:
            try:
                probe = probe_image(path)
            except DataError as err:
                log.skip(image_id, None, err.reason or "image_unreadable", str(err))
                skipped[image_id] = err.reason or "image_unreadable"
                continue
            orientation = probe.orientation
            if probe.displayed_hw == (h, w):
                if orientation != 1:
                    log.note(image_id, None, "exif_orientation_applied",
                             f"{path}: EXIF orientation {orientation}; annotations taken as drawn on the displayed image")
            elif probe.stored_hw == (h, w):
                transpose = orientation
                log.note(image_id, None, "annotations_exif_transposed",
                         f"{path}: JSON size {h}x{w} is the stored size; EXIF orientation {orientation} "
                         f"applied to the masks too (displayed size {probe.displayed_hw[0]}x{probe.displayed_hw[1]})")
            else:
                detail = (f"{path}: JSON height x width {h}x{w} but the image is {probe.displayed_hw[0]}x"
                          f"{probe.displayed_hw[1]} as displayed")
                if orientation != 1:
                    detail += f" ({probe.stored_hw[0]}x{probe.stored_hw[1]} as stored, EXIF orientation {orientation})"
                log.skip(image_id, None, "image_size_mismatch", detail)
                skipped[image_id] = "image_size_mismatch"
                continue
            dh, dw = probe.displayed_hw
        else:
            dh, dw = h, w
        records[image_id] = ImageRecord(image_id=image_id, file_name=fn, path=path, height=dh, width=dw,
                                        exif_orientation=orientation)
        frames[image_id] = _Frame(json_hw=(h, w), transpose_orientation=transpose)
    return dict(sorted(records.items())), frames, skipped


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
                     f"dropped {bad} of {len(seg)} polygon parts (< 3 points, odd length or non-finite)")
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
              check_images: bool = True) -> Dataset:
    """Load and validate a COCO instances file; see the module docstring for every rule.

    Args:
        annotation_json: path of the COCO JSON (``images``, ``annotations``, ``categories``).
        image_dir: folder that ``file_name`` is relative to.
        name: dataset name (default: ``info.samstudy.name`` if written by :func:`write_coco`,
            else the JSON file's stem).
        check_images: open every image header (size, EXIF orientation, truncation). When False,
            records take the JSON sizes and ``exif_orientation = 1`` on trust.

    Returns:
        A :class:`Dataset` whose ``skips`` and ``notes`` list every element not loaded / altered.
        Instances are in ``ann_id`` order.

    Raises:
        DataError: unreadable/malformed JSON or missing top-level keys (message names the file).
    """
    path = Path(annotation_json)
    raw = _read_json(path)
    log = SkipLog(str(path))
    categories, bad_cats = _parse_categories(raw["categories"], log)
    records, frames, skipped_images = _parse_images(raw["images"], Path(image_dir), check_images, log)
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
                                       categories, bad_cats, log)
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
                            categories: dict[int, str], bad_cats: set[int], log: SkipLog) -> Instance | None:
    ann_id, image_id, cat_id = a["id"], a.get("image_id"), a.get("category_id")
    iscrowd = a.get("iscrowd", 0)
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
        log.skip(image_id, ann_id, "bad_annotation", f"annotation {ann_id} needs {', '.join(problems)}")
        return None
    if ann_id in dup_ann:
        log.skip(image_id, ann_id, "duplicate_ann_id", f"annotation id {ann_id} appears more than once")
        return None
    if image_id in skipped_images:
        log.skip(image_id, ann_id, "image_skipped", f"its image {image_id} was skipped ({skipped_images[image_id]})")
        return None
    if image_id not in frames:
        reason = "missing_image" if image_id not in json_image_ids else "image_skipped"
        log.skip(image_id, ann_id, reason, f"image id {image_id} is not a loaded image of the file")
        return None
    if cat_id in bad_cats:
        log.skip(image_id, ann_id, "category_skipped", f"its category {cat_id} was skipped (duplicate id)")
        return None
    if cat_id not in categories:
        log.skip(image_id, ann_id, "missing_category", f"category id {cat_id} is not in 'categories'")
        return None
    frame = frames[image_id]
    if "bbox" in a:
        reason, detail = _check_bbox(a["bbox"], frame.json_hw)
        if reason == "bbox_clipped":
            log.note(image_id, ann_id, reason, detail)
        elif reason:
            log.skip(image_id, ann_id, reason, detail)
            return None
    rle, reason, detail = _parse_annotation(a, frame, log)
    if rle is None:
        log.skip(image_id, ann_id, reason, detail)
        return None
    area = rle_area(rle)
    if area == 0:
        log.skip(image_id, ann_id, "empty_mask", "segmentation covers no pixel of the image")
        return None
    ignore_rle = None
    if isinstance(a.get("ignore_segmentation"), dict):
        ignore_rle, reason, detail = _validated_rle(a["ignore_segmentation"], frame.json_hw)
        if ignore_rle is None:
            log.skip(image_id, ann_id, reason, "ignore_segmentation: " + detail)
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

    Annotations carry ``segmentation`` as compressed RLE, ``bbox`` = tight box as xywh, ``area`` =
    pixel count, ``iscrowd``; and, when not default, ``tags``, ``source_ann_ids``,
    ``ignore_segmentation``. ``info.samstudy`` holds the dataset name and policy log.
    """
    images = [{"id": r.image_id, "file_name": r.file_name, "height": r.height, "width": r.width}
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
    """Skip rows as a ``pandas.DataFrame`` with columns ``source, image_id, ann_id, reason, detail``.

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
