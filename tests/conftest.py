"""Shared fixtures: locations of the real data in ../shared/data (tests skip when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SAMSTUDY_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path} (set SAMSTUDY_SHARED_DATA to its folder to run this test)")
    return path


@pytest.fixture(scope="session")
def coco_sample_dir() -> Path:
    """Folder with instances.json and images/ of the 341-image real COCO sample."""
    return _require(SHARED_DATA / "coco-sample" / "instances.json", "coco-sample").parent


@pytest.fixture(scope="session")
def isegm_dir() -> Path:
    """Folder with GrabCut/ and Berkeley/ interactive benchmarks."""
    return _require(SHARED_DATA / "isegm", "isegm benchmarks")
