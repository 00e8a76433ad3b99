"""On-disk cache of image embeddings, shared by prompt modes, notebooks and reruns.

Key: ``model.cache_key`` (model name + checkpoint SHA-256 prefix + preprocessing id) and the image
content hash :func:`image_sha256` (SHA-256 of the decoded RGB array's shape, dtype and bytes, so a
re-encoded JPEG with identical pixels hits, a resized one misses).

The default root is ``<cache root>/embeddings`` (:func:`embedding_dir`, :func:`samstudy.files.cache_root`:
``--cache-dir``, ``$SAMSTUDY_CACHE_DIR`` or XDG), never a folder of the repository.

Layout: ``root/<cache_key>/<hash[:2]>/<hash>.pt``, one :func:`torch.save` file per image holding
``{"format", "cache_key", "image_sha256", "features", "original_hw", "input_hw", "extra"}`` (``extra``:
the further tensors some decoders need, e.g. SAM 2's high-resolution features; absent in older entries). Features are
kept float32 (exact: a cached rerun gives bit-identical masks); size per image is
``4 * C * h * w`` bytes: SAM ``(1, 256, 64, 64)`` = 4 MiB, LiteMedSAM the same
(its neck also outputs 256 x 64 x 64). 341 COCO images -> about 1.4 GB.

Writes are atomic (temporary file in the same folder + :func:`os.replace`), so a killed process
never leaves a half-written entry under the final name. A file that cannot be read or does not
match its key is logged, deleted and recomputed: the cache never makes a run fail.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .files import atomic_path, cache_root
from .models.base import Embedding, PromptableSegmenter

log = logging.getLogger(__name__)

CACHE_FORMAT = 1


def image_sha256(image: np.ndarray) -> str:
    """Hex SHA-256 of an image array: its shape, dtype and C-order bytes (RGB ``uint8 (H, W, 3)``)."""
    arr = np.ascontiguousarray(image)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype.str}|".encode("ascii"))
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def embedding_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir`` when given (``foundation.cache_dir``), else ``<cache root>/embeddings``."""
    return Path(cache_dir) if cache_dir else cache_root() / "embeddings"


def _safe(name: str) -> str:
    """Cache keys become folder names: keep ``[A-Za-z0-9._-]``, replace the rest."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


@dataclass
class CacheStats:
    """Counters of one :class:`EmbeddingCache` object (not persisted)."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    encode_s: float = 0.0  # summed encoder wall time of the misses


class EmbeddingCache:
    """Disk cache of :class:`~samstudy.models.base.Embedding` objects.

    ``EmbeddingCache(None)`` is a disabled cache (always encodes, never writes), for the naive
    baseline and for tests.
    """

    def __init__(self, root: str | os.PathLike | None):
        self.root = None if root is None else Path(root)
        self.stats = CacheStats()

    def path(self, cache_key: str, image_hash: str) -> Path:
        """File of one entry (may not exist)."""
        if self.root is None:
            raise ValueError("disabled cache has no paths")
        return self.root / _safe(cache_key) / image_hash[:2] / f"{image_hash}.pt"

    def load(self, cache_key: str, image_hash: str) -> Embedding | None:
        """The cached embedding, or ``None`` when absent or unreadable (an unreadable file is deleted)."""
        if self.root is None:
            return None
        p = self.path(cache_key, image_hash)
        if not p.exists():
            return None
        try:
            d = torch.load(p, map_location="cpu", weights_only=True)
            if (d.get("format") != CACHE_FORMAT or d.get("cache_key") != cache_key
                    or d.get("image_sha256") != image_hash):
                raise ValueError("entry does not match its key or format")
            feats = d["features"]
            if not isinstance(feats, torch.Tensor) or feats.dtype != torch.float32 or feats.ndim != 4:
                raise ValueError(f"bad features {type(feats)}")
            extra = d.get("extra", {})
            if not all(isinstance(v, torch.Tensor) and v.dtype == torch.float32 for v in extra.values()):
                raise ValueError("bad extra tensors")
            return Embedding(features=feats, original_hw=tuple(int(v) for v in d["original_hw"]),
                             input_hw=tuple(int(v) for v in d["input_hw"]), model_key=cache_key, extra=dict(extra))
        except Exception as e:  # noqa: BLE001 - any unreadable entry is recomputed, never fatal
            self.stats.corrupt += 1
            log.warning("embedding cache: unreadable entry %s (%s: %s); recomputing", p, type(e).__name__, e)
            p.unlink(missing_ok=True)
            return None

    def store(self, cache_key: str, image_hash: str, emb: Embedding) -> None:
        """Write one entry atomically. Failures (disk full...) are logged, not raised."""
        if self.root is None:
            return
        p = self.path(cache_key, image_hash)
        payload = {
            "format": CACHE_FORMAT, "cache_key": cache_key, "image_sha256": image_hash,
            "features": emb.features.detach().to("cpu", torch.float32).contiguous(),
            "original_hw": list(emb.original_hw), "input_hw": list(emb.input_hw),
            "extra": {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in emb.extra.items()},
        }
        try:
            with atomic_path(p) as tmp:
                torch.save(payload, tmp)
        except Exception as e:  # noqa: BLE001 - the run goes on without caching this image
            log.warning("embedding cache: could not write %s (%s: %s)", p, type(e).__name__, e)

    def get_or_encode(self, model: PromptableSegmenter, image: np.ndarray,
                      image_hash: str | None = None) -> tuple[Embedding, bool, float]:
        """Embedding of ``image`` for ``model``: from disk when cached, else encoded and stored.

        Returns ``(embedding, cached, encode_seconds)``; ``encode_seconds`` is 0.0 when cached
        (loading time is not encoder time).
        """
        key = model.cache_key
        if self.root is not None:
            image_hash = image_hash or image_sha256(image)
            emb = self.load(key, image_hash)
            if emb is not None:
                self.stats.hits += 1
                return emb, True, 0.0
        t0 = time.perf_counter()
        with torch.inference_mode():
            emb = model.encode(image)
        dt = time.perf_counter() - t0
        self.stats.misses += 1
        self.stats.encode_s += dt
        if self.root is not None:
            self.store(key, image_hash, emb)
        return emb, False, dt

    def size_bytes(self) -> int:
        """Total bytes of the cache entries on disk (0 for a disabled or empty cache)."""
        if self.root is None or not self.root.exists():
            return 0
        return sum(f.stat().st_size for f in self.root.rglob("*.pt") if f.is_file())

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.root)!r}, {self.stats})"
