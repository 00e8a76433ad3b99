"""Checksums of weights files and downloads of the official SAM checkpoints and COCO 2017.

Hashes are lower-case hex digests of the whole file. Downloads are resumable (HTTP Range), verified
(size, SHA-256 and/or MD5) and atomic (``<dest>.part`` renamed when complete); without internet
they fail with a message saying which URL to fetch elsewhere and where to put the file.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from tqdm.auto import tqdm

from ..files import cache_root, file_sha256

_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A file's SHA-256 (or MD5) differs from the published one; the message names file, expected, got."""


def cached_file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of ``path``, cached as JSON keyed by size + mtime_ns: the sidecar ``<path>.sha256``
    a download wrote, else ``<cache root>/checksums/<sha1 of the absolute path>.json`` (written here:
    loading a checkpoint writes nothing beside it).

    A 2.5 GB ViT-H checkpoint takes ~10 s to hash; the cache makes later runs free. It is trusted
    only when size and mtime match the file exactly; an unwritable cache root just skips the write.
    """
    path = Path(path)
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    ours = cache_root() / "checksums" / f"{hashlib.sha1(str(path.resolve()).encode()).hexdigest()}.json"
    for sidecar in (path.with_name(path.name + ".sha256"), ours):
        try:
            cached = json.loads(sidecar.read_text())
            if {k: cached.get(k) for k in key} == key and len(str(cached.get("sha256", ""))) == 64:
                return str(cached["sha256"])
        except (OSError, ValueError):
            pass
    digest = file_sha256(path)
    try:
        ours.parent.mkdir(parents=True, exist_ok=True)
        ours.write_text(json.dumps({**key, "sha256": digest, "path": str(path.resolve())}))
    except OSError:
        pass
    return digest


# Official SAM release files (segment-anything README "Model Checkpoints"): url, SHA-256, bytes.
# The SHA-256 values are the ones published in micro-sam's model registry
# (computational-cell-analytics/micro-sam, micro_sam/util.py, verified by pooch on every download)
# and repeated identically by many independent repositories; the sizes likewise (e.g. Fooocus-based
# model lists). Note: the hex suffix in the file names (01ec64, 0b3195, 4b8939) is *not* a prefix
# of the SHA-256 (ec2df627..., 3adcc431..., a7bf3b02...), unlike torch hub's convention.
SAM_CHECKPOINTS: dict[str, tuple[str, str, int]] = {
    "vit_b": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
              "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912", 375042383),
    "vit_l": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
              "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622", 1249524607),
    "vit_h": ("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
              "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e", 2564550879),
}


@dataclass(frozen=True)
class RemoteFile:
    """A published file: URL, size in bytes and whatever checksums are published for it."""

    url: str
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# COCO 2017 (https://cocodataset.org/#download). Sizes and MD5s as published by many COCO loaders
# and download scripts (e.g. the `md5sum -c` lists of MLPerf-style COCO scripts, torch COCO dataset
# classes); COCO itself publishes no checksums. `dir` is the folder each zip extracts to.
COCO_FILES: dict[str, RemoteFile] = {
    "val2017": RemoteFile("http://images.cocodataset.org/zips/val2017.zip", 815585330,
                          md5="442b8da7639aecaf257c1dceb8ba8c80"),
    "train2017": RemoteFile("http://images.cocodataset.org/zips/train2017.zip", 19336861798,
                            md5="cced6f7f71b7629ddf16f17bbcfab6b2"),
    "annotations": RemoteFile("http://images.cocodataset.org/annotations/annotations_trainval2017.zip", 252907541,
                              md5="f4bbac642086de4f52a3fdda2de5fa2c"),
}
COCO_DIRS = {"val2017": "val2017", "train2017": "train2017", "annotations": "annotations"}


class DownloadError(RuntimeError):
    """The download could not complete (offline, HTTP error, connection cut); the message says what to do."""


def _offline_message(url: str, dest: Path, err: BaseException, sha256: str | None, md5: str | None,
                     size: int | None) -> str:
    host = urllib.parse.urlsplit(url).netloc
    checks = ", ".join(x for x in (f"{size} bytes" if size else "", f"sha256 {sha256}" if sha256 else "",
                                   f"md5 {md5}" if md5 else "") if x)
    return (f"cannot download {url}: {host} is unreachable ({type(err).__name__}: {err}). "
            f"If this machine is offline, download {url} on a machine with internet access and place it at "
            f"{dest}{f' ({checks})' if checks else ''}; running again then verifies it without downloading.")


def _verify(path: Path, dest: Path, sha256: str | None, md5: str | None, size: int | None) -> str | None:
    """Check ``path`` against the published size/checksums; returns its SHA-256 (``None`` if not computed)."""
    if size is not None and path.stat().st_size != size:
        raise ChecksumError(f"{dest}: size {path.stat().st_size} bytes, expected {size}")
    got_sha = None
    if sha256 is not None or md5 is not None:
        h_sha, h_md5 = hashlib.sha256(), hashlib.md5()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h_sha.update(chunk)
                if md5 is not None:
                    h_md5.update(chunk)
        got_sha = h_sha.hexdigest()
        if sha256 is not None and got_sha != sha256.lower():
            raise ChecksumError(f"{dest}: SHA-256 mismatch: expected {sha256.lower()}, got {got_sha}")
        if md5 is not None and h_md5.hexdigest() != md5.lower():
            raise ChecksumError(f"{dest}: MD5 mismatch: expected {md5.lower()}, got {h_md5.hexdigest()}")
    return got_sha


def _write_sidecar(path: Path, sha256: str) -> None:
    st = path.stat()
    try:
        path.with_name(path.name + ".sha256").write_text(
            json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}))
    except OSError:
        pass


def download_file(url: str, dest: str | os.PathLike, sha256: str | None = None, expected_size: int | None = None,
                  progress: bool = True, timeout: float = 60.0, md5: str | None = None) -> Path:
    """Download ``url`` to ``dest``: resumable, verified, atomic.

    Streams to ``<dest>.part``; when that file exists, asks for the rest with an HTTP ``Range``
    header (a server answering 200 instead of 206 ignores ranges: the part file is restarted).
    When complete, checks ``expected_size``, ``sha256`` and ``md5`` (each optional) and renames
    the part file to ``dest`` (atomic on one file system). An existing ``dest`` that verifies is
    returned without network access.

    Raises :class:`ChecksumError` (naming file, expected, got; the part file is deleted) on a
    mismatch, and :class:`DownloadError` when the host is unreachable (saying where to place a
    manually downloaded copy) or the transfer breaks (the part file is kept for resuming).
    """
    dest = Path(dest)
    if dest.exists():
        try:
            got = _verify(dest, dest, sha256, md5, expected_size)
        except ChecksumError as err:
            raise ChecksumError(f"{err}; the existing file is not the published one: delete it and run again") from None
        if got is not None:
            _write_sidecar(dest, got)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset > expected_size:  # not a prefix of this file
        part.unlink()
        offset = 0
    if expected_size is None or offset < expected_size:
        _fetch(url, part, offset, dest, sha256, md5, expected_size, progress, timeout)
    try:
        got = _verify(part, dest, sha256, md5, expected_size)
    except ChecksumError as err:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{err} (downloaded from {url}; the partial file was deleted, run again)") from None
    os.replace(part, dest)
    if got is not None:
        _write_sidecar(dest, got)
    return dest


def _fetch(url: str, part: Path, offset: int, dest: Path, sha256: str | None, md5: str | None,
           size: int | None, progress: bool, timeout: float) -> None:
    """Append the bytes after ``offset`` to ``part`` (or rewrite it when the server ignores Range)."""
    headers = {"User-Agent": "samstudy-download/1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # range past the end: the part file is already complete
            return
        raise DownloadError(f"cannot download {url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(_offline_message(url, dest, err, sha256, md5, size)) from err
    with resp:
        resumed = offset > 0 and resp.status == 206
        if resumed:
            content_range = resp.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise DownloadError(f"cannot resume {url}: server sent range {content_range!r} for bytes={offset}-")
        else:
            offset = 0  # fresh download, or the server ignored Range (200): restart the part file
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length is not None else size
        try:
            with open(part, "ab" if resumed else "wb") as fh, \
                    tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=dest.name, disable=not progress) as bar:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    fh.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise DownloadError(f"download of {url} broke off after {part.stat().st_size} bytes ({err}); "
                                f"the partial file {part} is kept: run again to resume") from err
    got = part.stat().st_size
    if total is not None and got < total:
        raise DownloadError(f"download of {url} ended early at {got} of {total} bytes; "
                            f"the partial file {part} is kept: run again to resume")


def download_sam_checkpoint(model: str = "vit_h", dest_dir: str | os.PathLike = "data/weights",
                            progress: bool = True) -> Path:
    """Download the official SAM checkpoint ``model`` (``vit_b``/``vit_l``/``vit_h``) into ``dest_dir``.

    Returns ``dest_dir/<official file name>`` after SHA-256 verification (sidecar hash written so
    loading does not hash the file again).
    """
    if model not in SAM_CHECKPOINTS:
        raise ValueError(f"unknown SAM checkpoint {model!r}; known: {', '.join(SAM_CHECKPOINTS)}")
    url, sha, size = SAM_CHECKPOINTS[model]
    return download_file(url, Path(dest_dir) / url.rsplit("/", 1)[-1], sha256=sha, expected_size=size,
                         progress=progress)


# Official checkpoints of the other families, keyed by registry name. None of these releases publishes
# a SHA-256 or a size (SAM 2.1: Meta's download script; HQ-SAM, EfficientViT-SAM: Hugging Face model
# repos; MobileSAM: the authors' GitHub repository), so the first download's size and SHA-256 are
# recorded in ``<dest>/FIRST_DOWNLOAD_RECORD`` with a warning, and every later download or load of
# that file name in the folder is checked against the record (trust on first use).
_SAM2 = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
_HQ = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
_EVIT = "https://huggingface.co/mit-han-lab/efficientvit-sam/resolve/main/"
MODEL_CHECKPOINTS: dict[str, RemoteFile] = {
    "sam2.1_hiera_t": RemoteFile(_SAM2 + "sam2.1_hiera_tiny.pt"),
    "sam2.1_hiera_s": RemoteFile(_SAM2 + "sam2.1_hiera_small.pt"),
    "sam2.1_hiera_b+": RemoteFile(_SAM2 + "sam2.1_hiera_base_plus.pt"),
    "sam2.1_hiera_l": RemoteFile(_SAM2 + "sam2.1_hiera_large.pt"),
    "sam_hq_vit_b": RemoteFile(_HQ + "sam_hq_vit_b.pth"),
    "sam_hq_vit_l": RemoteFile(_HQ + "sam_hq_vit_l.pth"),
    "sam_hq_vit_h": RemoteFile(_HQ + "sam_hq_vit_h.pth"),
    "mobile_sam": RemoteFile("https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt"),
    **{f"efficientvit_sam_{v}": RemoteFile(f"{_EVIT}efficientvit_sam_{v}.pt") for v in ("l0", "l1", "l2", "xl0", "xl1")},
}
FIRST_DOWNLOAD_RECORD = "first-download-sha256.json"


class UnverifiedDownloadWarning(UserWarning):
    """A checkpoint without a published checksum was downloaded; its hash was recorded, not verified."""


def recorded_checkpoint(path: str | os.PathLike) -> dict | None:
    """The first-download record ``{"url", "size", "sha256"}`` of ``path``'s file name in its folder, if any."""
    path = Path(path)
    try:
        return json.loads((path.parent / FIRST_DOWNLOAD_RECORD).read_text()).get(path.name)
    except (OSError, ValueError):
        return None


def official_checkpoint(path: str | os.PathLike) -> tuple[str, str | None, int | None] | None:
    """``(registry name, expected SHA-256, expected size)`` when ``path``'s file name is an official
    release file of :data:`MODEL_CHECKPOINTS`: the published hash, else the first-download record's
    (``None`` when neither exists). ``None`` for other file names (fine-tuned weights)."""
    path = Path(path)
    for name, spec in MODEL_CHECKPOINTS.items():
        if spec.filename == path.name:
            rec = recorded_checkpoint(path) or {}
            return name, spec.sha256 or rec.get("sha256"), spec.size or rec.get("size")
    return None


def download_model_checkpoint(name: str, dest_dir: str | os.PathLike = "data/weights", progress: bool = True,
                              files: Mapping[str, RemoteFile] | None = None, timeout: float = 60.0) -> Path:
    """Download the official checkpoint of registry model ``name`` into ``dest_dir`` (``make weights MODEL=name``).

    SAM v1 names (``sam_vit_b``... or ``vit_b``...) go to :func:`download_sam_checkpoint`. For the
    other families (:data:`MODEL_CHECKPOINTS`, or ``files``) the file is verified against the
    published SHA-256 when there is one, else against ``dest_dir/FIRST_DOWNLOAD_RECORD``; without
    either, the new file's size and SHA-256 are recorded there and an
    :class:`UnverifiedDownloadWarning` says so. Returns the file's path.
    """
    sam_v1 = name.removeprefix("sam_")
    if files is None and sam_v1 in SAM_CHECKPOINTS:
        return download_sam_checkpoint(sam_v1, dest_dir, progress=progress)
    table = MODEL_CHECKPOINTS if files is None else files
    if name not in table:
        known = [f"sam_{k}" for k in SAM_CHECKPOINTS] + list(table) if files is None else list(table)
        raise ValueError(f"unknown model checkpoint {name!r}; known: {', '.join(known)}")
    spec = table[name]
    dest = Path(dest_dir) / spec.filename
    rec = recorded_checkpoint(dest) or {}
    sha, size = spec.sha256 or rec.get("sha256"), spec.size or rec.get("size")
    path = download_file(spec.url, dest, sha256=sha, expected_size=size, progress=progress, timeout=timeout)
    if sha is None:
        got = cached_file_sha256(path)
        record_path = Path(dest_dir) / FIRST_DOWNLOAD_RECORD
        try:
            records = json.loads(record_path.read_text())
        except (OSError, ValueError):
            records = {}
        records[spec.filename] = {"url": spec.url, "size": path.stat().st_size, "sha256": got}
        record_path.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        warnings.warn(f"{spec.url} has no published checksum: recorded size {path.stat().st_size} bytes and "
                      f"SHA-256 {got} of this first download in {record_path}; later downloads and loads of "
                      f"{spec.filename} from {dest_dir} are checked against it", UnverifiedDownloadWarning,
                      stacklevel=2)
    return path


def _safe_members(zf: zipfile.ZipFile, archive: Path) -> list[zipfile.ZipInfo]:
    members = zf.infolist()
    for m in members:
        p = Path(m.filename)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError(f"{archive}: unsafe member path {m.filename!r}; refusing to extract")
    return members


def extract_zip_atomic(archive: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Extract ``archive`` into a temporary folder inside ``dest``, then move each top-level entry
    into ``dest`` with one rename (an interrupted extraction never leaves a half folder behind).

    Entries that already exist in ``dest`` are left untouched. Returns the top-level paths.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{archive.stem}.extracting-", dir=dest))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp, members=_safe_members(zf, archive))
        tops = []
        for entry in sorted(tmp.iterdir()):
            target = dest / entry.name
            if not target.exists():
                os.replace(entry, target)
            tops.append(target)
        return tops
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_coco(dest: str | os.PathLike = "data/coco", parts: Sequence[str] = ("val2017", "annotations"),
                  progress: bool = True, keep_zips: bool = True,
                  files: Mapping[str, RemoteFile] = COCO_FILES, *,
                  splits: Sequence[str] | None = None) -> dict[str, Path]:
    """Download and extract COCO 2017 ``parts`` into ``dest`` (``make data-coco``).

    ``splits`` (as the CLI's ``--splits val2017 train2017``) selects image splits and always adds
    ``"annotations"``; it replaces ``parts`` when given.

    Zips go to ``dest/zips/`` (verified by size and MD5, resumable); each extracts atomically to
    ``dest/<dir>`` (``val2017/``, ``train2017/``, ``annotations/``). Parts already extracted (marker
    ``dest/.<part>.done``) are skipped. Returns ``{part: extracted folder}``.
    """
    dest = Path(dest)
    if splits is not None:
        parts = [*dict.fromkeys([*splits, "annotations"])]
    unknown = [p for p in parts if p not in files]
    if unknown:
        raise ValueError(f"unknown COCO part(s) {unknown}; known: {', '.join(files)}")
    out = {}
    for part in parts:
        spec = files[part]
        folder = dest / COCO_DIRS.get(part, part)
        marker = dest / f".{part}.done"
        if not (marker.exists() and folder.exists()):
            archive = download_file(spec.url, dest / "zips" / spec.filename, sha256=spec.sha256,
                                    expected_size=spec.size, md5=spec.md5, progress=progress)
            extract_zip_atomic(archive, dest)
            if not folder.exists():
                raise DownloadError(f"{archive} did not contain the expected folder {folder.name}/")
            marker.write_text(spec.url + "\n")
            if not keep_zips:
                archive.unlink()
        out[part] = folder
    return out
