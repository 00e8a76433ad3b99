"""Labeling policies: named, configurable transforms of a :class:`~samstudy.data.Dataset`'s masks.

A dataset's *labeling policy* decides what one object is. The automotive set of the study fills
holes and groups overlapping objects of one category into one object; COCO does neither. Each step
below returns a new ``Dataset`` (inputs are never modified) and appends one row to
``dataset.policy_log``::

    {"name": step, "params": {...}, "n_before": int, "n_after": int, "n_changed": int, ...}

``n_changed`` counts output instances whose mask differs from every input instance (filled or
merged objects); removed instances are ``n_before - n_after`` (for a merge, members minus groups).

Steps:

- :func:`keep_categories` keeps the named categories (and only those in ``dataset.categories``).
- :func:`drop_crowd` removes ``iscrowd`` instances.
- :func:`merge_same_category` merges instances of one category in one image that overlap (share a
  pixel) or, with ``touching=True``, touch: some pixel of one is an **8-neighbour** of a pixel of
  the other (diagonal contact counts). Groups are the connected components of this "overlaps or
  touches" graph, so chains merge transitively. A merged object gets a new ``ann_id`` (one above
  the largest id of the input, then counting up, in image/category/first-member order), its mask is
  the union, ``area``/``box_xyxy`` are recomputed, ``source_ann_ids`` lists every member's sources,
  ``tags`` is the sorted union plus ``"policy:merged"``, ``ignore_rle`` the union (or ``None``).
  Crowd instances are never merged (they already stand for groups).
- :func:`fill_holes` fills every **hole** = background component fully enclosed by the object
  mask, i.e. not connected to the image border, with **4-connected background** (the object is
  implicitly 8-connected: a diagonal gap does not open a hole). The holes are those of
  :func:`samstudy.masks.hole_mask`, the one implementation the metrics and the synthetic set use
  too (equal to ``scipy.ndimage.binary_fill_holes`` with its default cross structure).
  A filled instance gets the tag ``"policy:filled"``.
- :func:`min_area` removes instances with ``area < px``.

:func:`apply_policy` runs the enabled steps in this fixed order:
``keep_categories -> drop_crowd -> merge_same_category -> fill_holes -> min_area``.
Why: restricting first keeps merges within the kept categories; crowd regions are removed before
they could absorb objects; merging before filling fills holes that only appear when two objects
enclose background together; the area threshold applies to the final objects.

Presets (:data:`PRESETS`): ``"raw"`` (nothing), ``"automotive"`` (drop crowd, keep person,
bicycle, car, motorcycle, bus, truck, merge overlapping/touching same-category objects, fill
holes).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .data import Dataset, Instance
from .masks import HOLE_CONNECTIVITY, compress_rle, decode_rle, encode_rle, hole_mask, rle_area, rle_box_xyxy

AUTOMOTIVE_CATEGORIES = ("person", "bicycle", "car", "motorcycle", "bus", "truck")
_EIGHT = np.ones((3, 3), dtype=np.uint8)  # 8-neighbour structuring element for "touching"
# tags of the objects a policy changed (the galleries' "policy" cases; kept in the COCO JSON "tags")
MERGED_TAG, FILLED_TAG = "policy:merged", "policy:filled"


def _tagged(tags: Iterable[str], tag: str) -> tuple[str, ...]:
    return tuple(sorted(set(tags) | {tag}))


def _log_row(name: str, params: dict[str, Any], before: list[Instance], after: list[Instance],
             n_changed: int, **extra: Any) -> dict[str, Any]:
    row = {"name": name, "params": params, "n_before": len(before), "n_after": len(after),
           "n_changed": int(n_changed)}
    row.update(extra)
    return row


def _with(dataset: Dataset, instances: list[Instance], log_row: dict[str, Any],
          categories: dict[int, str] | None = None) -> Dataset:
    return Dataset(name=dataset.name, images=dict(dataset.images),
                   categories=dict(dataset.categories if categories is None else categories),
                   instances=sorted(instances, key=lambda t: t.ann_id), skips=list(dataset.skips),
                   policy_log=list(dataset.policy_log) + [log_row], notes=list(dataset.notes))


# ---------------------------------------------------------------------------------------------- steps

def drop_crowd(dataset: Dataset) -> Dataset:
    """Remove ``iscrowd`` instances."""
    kept = [t for t in dataset.instances if not t.iscrowd]
    return _with(dataset, kept, _log_row("drop_crowd", {}, dataset.instances, kept, 0))


def min_area(dataset: Dataset, px: int) -> Dataset:
    """Remove instances whose ``area`` (pixel count) is below ``px``."""
    if px < 0:
        raise ValueError(f"min_area px must be >= 0, got {px}")
    kept = [t for t in dataset.instances if t.area >= px]
    return _with(dataset, kept, _log_row("min_area", {"px": int(px)}, dataset.instances, kept, 0))


def keep_categories(dataset: Dataset, names: Iterable[str]) -> Dataset:
    """Keep only instances (and ``categories`` entries) whose category name is in ``names``.

    Names absent from the dataset are listed in the log row (``unknown_names``); if none of the
    names is present a ``ValueError`` is raised (an empty dataset is almost surely a typo).
    """
    wanted = tuple(sorted(set(names)))
    present = set(dataset.categories.values())
    unknown = [n for n in wanted if n not in present]
    if wanted and len(unknown) == len(wanted):
        raise ValueError(f"keep_categories: none of {list(wanted)} is a category of dataset "
                         f"'{dataset.name}' ({sorted(present)[:20]}...)")
    cats = {i: n for i, n in dataset.categories.items() if n in wanted}
    kept = [t for t in dataset.instances if t.category_id in cats]
    return _with(dataset, kept,
                 _log_row("keep_categories", {"names": list(wanted)}, dataset.instances, kept, 0,
                          unknown_names=unknown),
                 categories=cats)


def fill_hole_mask(mask: np.ndarray) -> np.ndarray:
    """``mask | holes``: ``bool (H, W)`` -> new ``bool (H, W)`` (holes as in the module docstring)."""
    return np.asarray(mask, dtype=bool) | hole_mask(mask)


def fill_holes(dataset: Dataset) -> Dataset:
    """Fill the holes of every instance mask; area and box are recomputed (the box cannot change)."""
    out: list[Instance] = []
    changed, added = 0, 0
    for t in dataset.instances:
        m = decode_rle(t.rle)
        holes = hole_mask(m)
        n_added = int(np.count_nonzero(holes))
        if n_added == 0:
            out.append(t)
            continue
        rle = encode_rle(m | holes)
        out.append(t.with_(rle=rle, area=rle_area(rle), box_xyxy=tuple(float(v) for v in rle_box_xyxy(rle)),
                           tags=_tagged(t.tags, FILLED_TAG)))
        changed += 1
        added += n_added
    return _with(dataset, out, _log_row("fill_holes", {"background_connectivity": HOLE_CONNECTIVITY},
                                        dataset.instances, out, changed, pixels_added=added))


def _boxes_near(a: tuple[float, ...], b: tuple[float, ...], margin: float) -> bool:
    """Do xyxy boxes ``a`` and ``b`` overlap once each is grown by ``margin`` pixels?"""
    return not (a[2] + margin <= b[0] or b[2] + margin <= a[0] or a[3] + margin <= b[1] or b[3] + margin <= a[1])


def _linked(ma: np.ndarray, mb: np.ndarray, touching: bool) -> bool:
    """Overlap (a shared pixel) or, if ``touching``, 8-neighbour contact of two ``bool`` masks."""
    if touching:
        grown = cv2.dilate(ma.astype(np.uint8), _EIGHT, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        return bool((grown.astype(bool) & mb).any())
    return bool((ma & mb).any())


def _groups(members: list[Instance], touching: bool) -> list[list[Instance]]:
    """Connected components of the overlap/touch graph of same-image, same-category instances."""
    n = len(members)
    if n < 2:
        return [members]
    margin = 1.0 if touching else 0.0
    masks: dict[int, np.ndarray] = {}
    rows, cols = [], []
    for i in range(n):
        for j in range(i + 1, n):
            a, b = members[i], members[j]
            if not _boxes_near(a.box_xyxy, b.box_xyxy, margin):
                continue
            # Compare within the union box grown by one pixel (enough for 8-neighbour contact).
            H, W = a.rle["size"]
            x0 = int(max(0, min(a.box_xyxy[0], b.box_xyxy[0]) - 1))
            y0 = int(max(0, min(a.box_xyxy[1], b.box_xyxy[1]) - 1))
            x1 = int(min(W, max(a.box_xyxy[2], b.box_xyxy[2]) + 1))
            y1 = int(min(H, max(a.box_xyxy[3], b.box_xyxy[3]) + 1))
            for k in (i, j):
                if k not in masks:
                    masks[k] = decode_rle(members[k].rle)
            if _linked(masks[i][y0:y1, x0:x1], masks[j][y0:y1, x0:x1], touching):
                rows.append(i)
                cols.append(j)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    out: dict[int, list[Instance]] = {}
    for inst, lab in zip(members, labels):
        out.setdefault(int(lab), []).append(inst)
    return sorted(out.values(), key=lambda g: min(t.ann_id for t in g))


def _merged(group: list[Instance], ann_id: int) -> Instance:
    rle = compress_rle(mask_utils.merge([_pyco(t.rle) for t in group]))
    ignores = [t.ignore_rle for t in group if t.ignore_rle is not None]
    ignore = compress_rle(mask_utils.merge([_pyco(r) for r in ignores])) if ignores else None
    sources = sorted({s for t in group for s in (t.source_ann_ids or (t.ann_id,))})
    first = group[0]
    return Instance(image_id=first.image_id, ann_id=ann_id, category_id=first.category_id,
                    category=first.category, rle=rle, area=rle_area(rle),
                    box_xyxy=tuple(float(v) for v in rle_box_xyxy(rle)), iscrowd=False,
                    tags=_tagged([g for t in group for g in t.tags], MERGED_TAG), ignore_rle=ignore,
                    source_ann_ids=tuple(sources))


def _pyco(rle: dict[str, Any]) -> dict[str, Any]:
    c = compress_rle(rle)
    return {"size": c["size"], "counts": c["counts"].encode("ascii")}


def merge_same_category(dataset: Dataset, touching: bool = True,
                        categories: Iterable[str] | None = None) -> Dataset:
    """Merge overlapping (and, if ``touching``, 8-neighbour-touching) same-category instances per image.

    Args:
        touching: also merge instances that only touch (8-neighbour adjacency), not just overlap.
        categories: category names to merge; ``None`` = all. Other categories pass unchanged.

    See the module docstring for ids, ``source_ann_ids`` and the treatment of crowd instances.
    """
    names = None if categories is None else tuple(sorted(set(categories)))
    next_id = max((t.ann_id for t in dataset.instances), default=0) + 1
    out: list[Instance] = []
    n_groups, n_members = 0, 0
    buckets: dict[tuple[int, int], list[Instance]] = {}
    for t in sorted(dataset.instances, key=lambda t: (t.image_id, t.category_id, t.ann_id)):
        if t.iscrowd or (names is not None and t.category not in names):
            out.append(t)
        else:
            buckets.setdefault((t.image_id, t.category_id), []).append(t)
    for key in sorted(buckets):
        for group in _groups(buckets[key], touching):
            if len(group) == 1:
                out.append(group[0])
                continue
            out.append(_merged(group, next_id))
            next_id += 1
            n_groups += 1
            n_members += len(group)
    params = {"touching": bool(touching), "categories": None if names is None else list(names)}
    return _with(dataset, out, _log_row("merge_same_category", params, dataset.instances, out, n_groups,
                                        n_groups=n_groups, n_members_merged=n_members))


# ---------------------------------------------------------------------------------------------- config

@dataclass(frozen=True)
class PolicyConfig:
    """Which policy steps to apply (see the module docstring for their order and definitions).

    Attributes:
        drop_crowd: remove ``iscrowd`` instances.
        min_area: remove instances with fewer pixels (0 = keep all).
        fill_holes: fill holes (4-connected background components not touching the border).
        merge_same_category: merge overlapping same-category instances per image.
        merge_touching: with ``merge_same_category``, also merge 8-neighbour-touching instances.
        categories: keep only these category names (``None`` = all).
    """

    drop_crowd: bool = False
    min_area: int = 0
    fill_holes: bool = False
    merge_same_category: bool = False
    merge_touching: bool = True
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.categories is not None:
            object.__setattr__(self, "categories", tuple(sorted(set(self.categories))))
        if int(self.min_area) != self.min_area or self.min_area < 0:
            raise ValueError(f"min_area must be a non-negative integer, got {self.min_area!r}")
        object.__setattr__(self, "min_area", int(self.min_area))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | str | None) -> "PolicyConfig":
        """Parse a config dict (e.g. from YAML) or a preset name.

        ``{"preset": "automotive", "min_area": 10}`` starts from a preset and overrides fields.
        Unknown keys raise ``ValueError`` (a misspelt key must not be ignored).
        """
        if d is None:
            return PRESETS["raw"]
        if isinstance(d, str):
            return preset(d)
        d = dict(d)
        base = preset(d.pop("preset")) if "preset" in d else cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown policy key(s) {unknown}; known: {sorted(known | {'preset'})}")
        values = asdict(base)
        values.update(d)
        for k in ("drop_crowd", "fill_holes", "merge_same_category", "merge_touching"):
            if not isinstance(values[k], (bool, np.bool_)):
                raise ValueError(f"policy key '{k}' must be true/false, got {values[k]!r}")
            values[k] = bool(values[k])
        cats = values["categories"]
        if isinstance(cats, str):
            raise ValueError("policy key 'categories' must be a list of names or null, not a string")
        values["categories"] = None if cats is None else tuple(cats)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON/YAML-friendly dict (inverse of :meth:`from_dict`)."""
        d = asdict(self)
        d["categories"] = None if self.categories is None else list(self.categories)
        return d


PRESETS: dict[str, PolicyConfig] = {
    "raw": PolicyConfig(),
    "automotive": PolicyConfig(drop_crowd=True, fill_holes=True, merge_same_category=True,
                               merge_touching=True, categories=AUTOMOTIVE_CATEGORIES),
}
PRESETS["none"] = PRESETS["raw"]


def preset(name: str) -> PolicyConfig:
    """A named preset (``"raw"``/``"none"``, ``"automotive"``)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown policy preset '{name}'; known: {sorted(PRESETS)}") from None


def policy_name(config: PolicyConfig) -> str:
    """Short stable id of a policy, recorded in every output row (``policy`` column).

    A preset's name when the config equals a preset (``"raw"``, ``"automotive"``); otherwise the
    enabled steps in application order joined by ``+``: ``cats<N>-<sha1[:6] of the sorted names>``,
    ``nocrowd``, ``merge`` (``merge-overlap`` when touching objects are not merged), ``fill``,
    ``min<px>``; e.g. ``"nocrowd+merge+fill"`` or ``"fill+min100"``.
    """
    for name in ("raw", "automotive"):
        if config == PRESETS[name]:
            return name
    parts = []
    if config.categories is not None:
        digest = hashlib.sha1("\n".join(config.categories).encode()).hexdigest()[:6]
        parts.append(f"cats{len(config.categories)}-{digest}")
    if config.drop_crowd:
        parts.append("nocrowd")
    if config.merge_same_category:
        parts.append("merge" if config.merge_touching else "merge-overlap")
    if config.fill_holes:
        parts.append("fill")
    if config.min_area:
        parts.append(f"min{config.min_area}")
    return "+".join(parts) or "raw"


def apply_policy(dataset: Dataset, config: PolicyConfig | Mapping[str, Any] | str) -> Dataset:
    """Apply the enabled steps of ``config`` in the fixed order of the module docstring.

    Returns a new ``Dataset``; its ``policy_log`` gains one row per applied step, each with
    ``"policy": policy_name(config)``, then a summary row ``{"name": "apply_policy", ...}``.
    """
    if not isinstance(config, PolicyConfig):
        config = PolicyConfig.from_dict(config)
    pname = policy_name(config)
    start = len(dataset.policy_log)
    ds = dataset
    if config.categories is not None:
        ds = keep_categories(ds, config.categories)
    if config.drop_crowd:
        ds = drop_crowd(ds)
    if config.merge_same_category:
        ds = merge_same_category(ds, touching=config.merge_touching)
    if config.fill_holes:
        ds = fill_holes(ds)
    if config.min_area:
        ds = min_area(ds, config.min_area)
    steps = ds.policy_log[start:]
    for row in steps:
        row["policy"] = pname
    summary = {"name": "apply_policy", "policy": pname, "params": config.to_dict(),
               "n_before": len(dataset.instances), "n_after": len(ds.instances),
               "n_changed": int(sum(r["n_changed"] for r in steps))}
    return Dataset(name=ds.name, images=ds.images, categories=ds.categories, instances=ds.instances,
                   skips=ds.skips, policy_log=ds.policy_log + [summary], notes=ds.notes)
