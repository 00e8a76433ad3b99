"""Deterministic, stratified train/test split of a :class:`~samstudy.data.Dataset` by image.

Splitting is by image (all objects of one image go to the same side), so no test image is ever
seen in training. Algorithm of :func:`split_by_image` (all randomness from one
``numpy.random.default_rng(seed)``; the same seed and dataset give the same split):

1. Draw a random priority order of the image ids (a permutation of the sorted ids). Every "pick
   an image" below takes the first image in this order among the candidates.
2. **Stratify, rarest category first.** Categories with at least ``max(2,
   min_images_per_category)`` images are *eligible*; they are visited by increasing image count
   (ties by category id). For each one that has no image in the test side yet, pick one of its
   unassigned images for test; then likewise for the train side. If all its images are already
   assigned to the other side, move one of them when the move leaves every eligible category
   that was present on that side still present there; otherwise the category stays one-sided
   (this can be unavoidable: "each category on both sides" is a hypergraph 2-colouring problem,
   e.g. three images holding categories {A, C}, {A, B}, {B, C}) and it is reported by
   :func:`stratification_failures` and in the ``in_both`` column of ``split_summary.csv``.
3. **Fill.** The remaining unassigned images, in priority order, go to test until the test side
   holds ``round(test_fraction * n_images)`` images (at least 1 and at most ``n - 1``), then to
   train. When step 2 already put more images in test than that, the test side is larger than
   requested (the stratification wins); the actual fraction is in the summary.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from .data import Dataset, write_coco


def _category_images(dataset: Dataset) -> dict[int, set[int]]:
    """``category_id -> set of image ids`` holding at least one instance of it (loaded images only)."""
    out: dict[int, set[int]] = {}
    for t in dataset.instances:
        if t.image_id in dataset.images:
            out.setdefault(t.category_id, set()).add(t.image_id)
    return out


def _eligible(cat_images: dict[int, set[int]], min_images: int) -> list[int]:
    """Eligible category ids, rarest first (ties by id)."""
    need = max(2, int(min_images))
    return sorted((c for c, ims in cat_images.items() if len(ims) >= need), key=lambda c: (len(cat_images[c]), c))


def split_by_image(dataset: Dataset, test_fraction: float, seed: int,
                   min_images_per_category: int = 2) -> tuple[list[int], list[int]]:
    """Split the dataset's image ids into ``(train_ids, test_ids)``, both sorted ``list[int]``.

    See the module docstring for the algorithm. Raises ``ValueError`` when ``test_fraction`` is
    not in ``(0, 1)`` or the dataset has fewer than 2 images.
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ids = sorted(dataset.images)
    n = len(ids)
    if n < 2:
        raise ValueError(f"need at least 2 images to split, dataset '{dataset.name}' has {n}")
    rng = np.random.default_rng(seed)
    order = [ids[i] for i in rng.permutation(n)]
    rank = {image_id: r for r, image_id in enumerate(order)}

    cat_images = _category_images(dataset)
    image_cats: dict[int, set[int]] = {i: set() for i in ids}
    for c, ims in cat_images.items():
        for i in ims:
            image_cats[i].add(c)
    eligible = _eligible(cat_images, min_images_per_category)
    side: dict[int, str] = {}  # image id -> "train" | "test"

    def present(c: int, s: str) -> bool:
        return any(side.get(i) == s for i in cat_images[c])

    def movable(i: int, frm: str) -> bool:
        """Moving image ``i`` off side ``frm`` keeps every eligible category present there."""
        for c in image_cats[i]:
            if c in eligible_set and present(c, frm):
                if not any(side.get(j) == frm for j in cat_images[c] if j != i):
                    return False
        return True

    eligible_set = set(eligible)
    for c in eligible:
        for s, other in (("test", "train"), ("train", "test")):
            if present(c, s):
                continue
            free = [i for i in cat_images[c] if i not in side]
            if free:
                side[min(free, key=rank.__getitem__)] = s
                continue
            candidates = sorted((i for i in cat_images[c] if side[i] == other), key=rank.__getitem__)
            for i in candidates:
                if movable(i, other):
                    side[i] = s
                    break

    n_test = min(max(int(round(float(test_fraction) * n)), 1), n - 1)
    n_in_test = sum(1 for s in side.values() if s == "test")
    for i in order:
        if i in side:
            continue
        if n_in_test < n_test:
            side[i] = "test"
            n_in_test += 1
        else:
            side[i] = "train"
    train = sorted(i for i, s in side.items() if s == "train")
    test = sorted(i for i, s in side.items() if s == "test")
    return train, test


def stratification_failures(dataset: Dataset, train_ids: Iterable[int], test_ids: Iterable[int],
                            min_images_per_category: int = 2) -> list[str]:
    """Names of eligible categories (>= ``max(2, min_images_per_category)`` images) absent from a side."""
    train, test = set(train_ids), set(test_ids)
    cat_images = _category_images(dataset)
    return [dataset.categories.get(c, str(c)) for c in sorted(_eligible(cat_images, min_images_per_category))
            if not (cat_images[c] & train and cat_images[c] & test)]


def split_summary(dataset: Dataset, train_ids: Iterable[int], test_ids: Iterable[int]):
    """Per category ``pandas.DataFrame``: ``category_id, category, train_images, train_instances,
    test_images, test_instances, in_both`` (sorted by ``category_id``)."""
    import pandas as pd

    train, test = set(train_ids), set(test_ids)
    rows = []
    for cid, name in sorted(dataset.categories.items()):
        insts = [t for t in dataset.instances if t.category_id == cid]
        tr = [t for t in insts if t.image_id in train]
        te = [t for t in insts if t.image_id in test]
        rows.append({"category_id": cid, "category": name,
                     "train_images": len({t.image_id for t in tr}), "train_instances": len(tr),
                     "test_images": len({t.image_id for t in te}), "test_instances": len(te),
                     "in_both": bool(tr and te)})
    return pd.DataFrame(rows, columns=["category_id", "category", "train_images", "train_instances",
                                       "test_images", "test_instances", "in_both"])


def write_split(dataset: Dataset, train_ids: Iterable[int], test_ids: Iterable[int],
                out_dir: str | Path) -> dict[str, Path]:
    """Write ``train.json`` and ``test.json`` (COCO, via :func:`~samstudy.data.write_coco`; file
    names stay relative to the source image folder) and ``split_summary.csv``.

    Raises ``ValueError`` when the id lists overlap or name images not in the dataset.
    Returns ``{"train": path, "test": path, "summary": path}``. Output bytes depend only on the
    inputs, so the same seed gives identical files.
    """
    train, test = sorted(set(train_ids)), sorted(set(test_ids))
    both = set(train) & set(test)
    if both:
        raise ValueError(f"train and test share {len(both)} image id(s), e.g. {sorted(both)[:5]}")
    unknown = (set(train) | set(test)) - set(dataset.images)
    if unknown:
        raise ValueError(f"{len(unknown)} image id(s) not in dataset '{dataset.name}', e.g. {sorted(unknown)[:5]}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "train": write_coco(dataset.subset(train, name=f"{dataset.name}-train"), out / "train.json"),
        "test": write_coco(dataset.subset(test, name=f"{dataset.name}-test"), out / "test.json"),
        "summary": out / "split_summary.csv",
    }
    split_summary(dataset, train, test).to_csv(paths["summary"], index=False, lineterminator="\n")
    return paths
