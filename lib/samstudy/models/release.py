"""Checkpoint resolution shared by the builders of the released families (HQ-SAM, MobileSAM,
EfficientViT-SAM, SAM 2.1): default path, the "how to get it" message, hash check, report label,
and the seeded random-init model for benchmarks.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, TypeVar

import torch

from .download import MODEL_CHECKPOINTS, ChecksumError, cached_file_sha256, official_checkpoint

WEIGHTS_DIR_ENV = "SAMSTUDY_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path("data") / "weights"
RANDOM_INIT = "random-init"
RANDOM_LABEL_SUFFIX = " (random init, benchmark only)"

T = TypeVar("T")


def default_checkpoint_path(name: str) -> Path:
    """``$SAMSTUDY_WEIGHTS_DIR/<official file name>`` (default ``data/weights/``) of registry model ``name``."""
    folder = Path(os.environ.get(WEIGHTS_DIR_ENV, DEFAULT_WEIGHTS_DIR))
    return folder / MODEL_CHECKPOINTS[name].filename


def missing_message(name: str, path: Path) -> str:
    spec = MODEL_CHECKPOINTS[name]
    return (f"{name}: checkpoint not found at {path}. Download it with `make weights MODEL={name}` "
            f"(or `samstudy download model --model {name} --dest {path.parent}`), or pass checkpoint=<path>. "
            f"Offline: fetch {spec.url} on a machine with internet and place it at {path}.")


def resolve_checkpoint(name: str, base_label: str, checkpoint: str | os.PathLike | None,
                       verify: bool = True) -> tuple[Path, str, str]:
    """``(path, sha256, label)`` of the weights of registry model ``name``.

    ``checkpoint=None`` takes :func:`default_checkpoint_path`. A file named like an official release
    file must match the published SHA-256, or the first-download record of its folder
    (:class:`ChecksumError` otherwise, with ``verify=True``); it is then labelled ``base_label``.
    Any other file (fine-tuned weights) is labelled ``base_label (checkpoint <file name>)``.
    """
    path = Path(checkpoint).expanduser() if checkpoint is not None else default_checkpoint_path(name)
    if not path.is_file():
        raise FileNotFoundError(missing_message(name, path))
    sha = cached_file_sha256(path)
    official = official_checkpoint(path)
    expected = official[1] if official is not None else None
    if verify and expected is not None and sha != expected:
        raise ChecksumError(f"{path}: SHA-256 {sha} differs from the published or first-download recorded "
                            f"{expected} of {path.name}; the file is corrupt or replaced, download it again")
    known = official is not None and official[0] == name and (expected is None or sha == expected)
    return path, sha, base_label if known else f"{base_label} (checkpoint {path.name})"


def seeded(build: Callable[[], T], seed: int = 0) -> T:
    """``build()`` under ``torch.manual_seed(seed)`` without touching the global RNG (same weights every run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_released(cls: type, name: str, base_label: str, factory: Callable[[], torch.nn.Module],
                   checkpoint: str | os.PathLike | None, device: str | torch.device, random_init: bool = False,
                   verify: bool = True, **kwargs):
    """A ``cls`` segmenter (e.g. :class:`~.sam.SamSegmenter`) of registry model ``name``.

    factory: builds the untrained module (the official architecture; tests pass a tiny one), into
        which the checkpoint is loaded strictly (:func:`~.sam.load_state_into`).
    random_init: untrained weights (seed 0) for speed benchmarks: named ``<name>_random``, labelled
        ``... (random init, benchmark only)``, ``checkpoint_sha256 = "random-init"``.
    """
    from .sam import load_state_into, read_state_dict

    if random_init:
        if checkpoint is not None:
            raise ValueError(f"{name}: give either checkpoint or random_init=True, not both")
        return cls(seeded(factory).eval(), name=f"{name}_random", label=base_label + RANDOM_LABEL_SUFFIX,
                   checkpoint_sha256=RANDOM_INIT, device=device, **kwargs)
    path, sha, label = resolve_checkpoint(name, base_label, checkpoint, verify)
    state = read_state_dict(path, base_label)
    module = factory()
    load_state_into(module, state, path, base_label)
    return cls(module.eval(), name=name, label=label, checkpoint_sha256=sha, device=device, **kwargs)
