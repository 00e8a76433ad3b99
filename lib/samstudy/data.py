"""COCO-format instance data: image and instance records, loading, validation, writing.

An :class:`Instance` is one object to segment: its mask is stored as a COCO RLE (see
:mod:`samstudy.masks` for every coordinate convention). A :class:`Dataset` holds images,
categories, instances and the *skips*: one row per input element that was not loaded, with its
reason, so that nothing is ever dropped silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .masks import RLE, decode_rle


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``height``/``width`` are of the image as displayed (after EXIF orientation)."""

    image_id: int
    file_name: str
    path: Path
    height: int
    width: int


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
    ``policy_log`` rows: one dict per applied labeling-policy step (name, parameters, counts).
    """

    name: str
    images: dict[int, ImageRecord]
    categories: dict[int, str]
    instances: list[Instance]
    skips: list[dict[str, Any]] = field(default_factory=list)
    policy_log: list[dict[str, Any]] = field(default_factory=list)

    def instances_by_image(self) -> dict[int, list[Instance]]:
        """Instances grouped by ``image_id``, in image-id order, each list in ``ann_id`` order."""
        out: dict[int, list[Instance]] = {i: [] for i in sorted(self.images)}
        for inst in sorted(self.instances, key=lambda t: (t.image_id, t.ann_id)):
            out.setdefault(inst.image_id, []).append(inst)
        return out

    def subset(self, image_ids: set[int] | list[int], name: str | None = None) -> "Dataset":
        """The dataset restricted to ``image_ids`` (skips and policy log kept)."""
        ids = set(image_ids)
        return Dataset(
            name=name or self.name,
            images={i: r for i, r in self.images.items() if i in ids},
            categories=dict(self.categories),
            instances=[t for t in self.instances if t.image_id in ids],
            skips=list(self.skips),
            policy_log=list(self.policy_log),
        )
