"""Files the study writes: one home for content hashes, atomic writes and JSON normalisation.

- :func:`file_sha256` -- hex SHA-256 of a file's bytes (read in 1 MiB chunks).
- :func:`atomic_path` -- a temporary name in the target's folder that becomes the target with
  :func:`os.replace` only when the block finishes: a killed process never leaves half a file under
  the final name, and a failed write leaves the old file untouched. The file gets the usual
  permissions (``0o666`` minus the umask: 0644 under umask 022), not ``mkstemp``'s private 0600.
- :func:`cache_root` -- the one folder the study writes outside a run's results (embedding cache,
  ONNX exports): ``--cache-dir``, else ``$SAMSTUDY_CACHE_DIR``, else ``$XDG_CACHE_HOME/samstudy``,
  else ``~/.cache/samstudy``; :func:`folder_bytes` is its size.
- :func:`write_json_atomic`, :func:`write_parquet_atomic` -- the two writers built on it.
- :func:`read_json` -- the tolerant reader of the study's JSON bookkeeping (manifests, owner records).
- :func:`jsonable` -- tuples, mappings, paths, numpy and pandas values -> plain JSON values
  (non-finite floats -> ``None``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

if TYPE_CHECKING:  # pyarrow is imported by the one writer that needs it
    import pyarrow as pa

__all__ = ["file_sha256", "atomic_path", "write_json_atomic", "write_parquet_atomic", "jsonable", "read_json", "TMP_PREFIX",
           "cache_root", "folder_bytes", "CACHE_ENV"]

CACHE_ENV = "SAMSTUDY_CACHE_DIR"

TMP_PREFIX = ".tmp-"  # temporary files of atomic writes start with this (ignored by readers)
_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of the bytes of ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is deleted.

    The parent folder is created. The temporary file lives in the same folder so that
    :func:`os.replace` is an atomic rename on every POSIX filesystem.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=suffix or path.suffix)
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process umask (read by setting and restoring it: POSIX has no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def cache_root(explicit: str | os.PathLike | None = None) -> Path:
    """The cache root: ``explicit`` (``--cache-dir``), else ``$SAMSTUDY_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/samstudy``, else ``~/.cache/samstudy`` (absolute, not created)."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return (Path(base).expanduser() / "samstudy").resolve()


def folder_bytes(path: str | os.PathLike) -> int:
    """Total bytes of the files under ``path`` (0 when it does not exist)."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if Path(path).is_dir() else 0


def write_json_atomic(path: str | os.PathLike, obj: Any, sort_keys: bool = False) -> Path:
    """Write ``jsonable(obj)`` as indented JSON, atomically (:func:`atomic_path`)."""
    path = Path(path)
    with atomic_path(path, ".json") as tmp:
        tmp.write_text(json.dumps(jsonable(obj), indent=2, sort_keys=sort_keys, default=str) + "\n")
    return path


def write_parquet_atomic(table: "pa.Table", path: str | os.PathLike,
                         metadata: Mapping[bytes, bytes] | None = None) -> Path:
    """Write an Arrow table as Parquet, atomically; ``metadata`` is merged into its schema metadata."""
    import pyarrow.parquet as pq

    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    path = Path(path)
    with atomic_path(path, ".parquet") as tmp:
        pq.write_table(table, tmp)
    return path


def read_json(path: str | os.PathLike) -> Any | None:
    """The parsed content of the JSON file ``path``, or ``None`` when it is missing, unreadable or
    not valid JSON (callers treat a corrupt manifest like a missing one: that stage has to run)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def jsonable(v: Any) -> Any:
    """Plain JSON form of ``v``: mappings -> dicts (str keys), sequences/sets -> lists, ``Path`` -> str,
    numpy scalars/arrays -> Python values/lists, DataFrames -> lists of row dicts, Series -> dicts,
    NaN and infinities -> ``None``. Other values are returned as they are."""
    if isinstance(v, Mapping):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if hasattr(v, "to_dict") and hasattr(v, "columns"):  # DataFrame
        return jsonable(v.to_dict(orient="records"))
    if hasattr(v, "to_dict") and hasattr(v, "index"):  # Series
        return jsonable(v.to_dict())
    if hasattr(v, "tolist") and hasattr(v, "dtype"):  # numpy array or scalar
        return jsonable(v.tolist())
    return v
