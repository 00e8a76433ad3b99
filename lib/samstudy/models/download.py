"""Checksums of weights files and downloads of the official SAM checkpoints and COCO 2017.

Hashes are hex SHA-256 strings of the whole file.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A file's SHA-256 (or MD5) differs from the published one; the message names file, expected, got."""


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of ``path``, cached in the sidecar ``<path>.sha256`` (JSON keyed by size + mtime_ns).

    A 2.5 GB ViT-H checkpoint takes ~10 s to hash; the sidecar makes later runs free. The cache is
    trusted only when size and mtime match the file exactly; a read-only folder just skips the write.
    """
    path = Path(path)
    st = path.stat()
    sidecar = path.with_name(path.name + ".sha256")
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    try:
        cached = json.loads(sidecar.read_text())
        if {k: cached.get(k) for k in key} == key and len(str(cached.get("sha256", ""))) == 64:
            return str(cached["sha256"])
    except (OSError, ValueError):
        pass
    digest = file_sha256(path)
    try:
        sidecar.write_text(json.dumps({**key, "sha256": digest}))
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
