"""What the data stage (``00_data.ipynb``) writes and how the later stages read it.

The data stage loads the config's source (:func:`load_source`), applies the labeling policy and the
split, and writes COCO files plus ``<data_dir>/datasets.json`` naming them
(:func:`write_stage_datasets`). Every later stage loads its data through :func:`load_test_sets`,
:func:`load_train_set` and :func:`raw_gt_variant`, so that no notebook hard-codes a file layout.

``datasets.json``::

    {"policy": "<policy name>",
     "test":  [{"name", "annotations", "images", "raw_annotations"}, ...],
     "train": {"name", "annotations", "images"} | null,
     "max_skip_fraction": 0.05}

``max_skip_fraction`` (the config's ``data.max_skip_fraction``) is the skip limit the engine-driven
stages apply to their own skips (:func:`max_skip_fraction`); the data stage applies it to the loaded
sources with :func:`check_inputs`. Both go through :func:`samstudy.data.check_skip_limit`.

Annotation paths are relative to the data folder (or absolute); ``images`` is the folder the COCO
``file_name``s are relative to.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .files import file_sha256, jsonable, read_json, write_json_atomic

__all__ = ["DATASETS_FILE", "SKIPS_TABLE", "write_datasets_manifest", "read_datasets_manifest", "load_test_sets",
           "load_train_set", "raw_gt_variant", "first_images", "load_source", "image_dir_of",
           "write_stage_datasets", "training_dir", "train_annotations_path", "max_skip_fraction", "check_inputs", "skip_counts"]

DATASETS_FILE = "datasets.json"
SKIPS_TABLE = "skips_and_notes"  # <data_dir>/skips_and_notes.{parquet,csv}: every skip and note of the sources
DEFAULT_MAX_SKIP_FRACTION = 0.05


# ----------------------------------------------------------------------------------- datasets.json
def write_datasets_manifest(data_dir: str | os.PathLike, test: Sequence[Mapping[str, Any]],
                            train: Mapping[str, Any] | None, policy: str,
                            max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION) -> Path:
    """Write ``<data_dir>/datasets.json`` (atomically) and return its path.

    test: one entry per evaluation set ``{"name", "annotations", "images", "raw_annotations"}``
        (``raw_annotations``: the same images before the labeling policy, or ``None`` when the
        policy changed nothing); train: ``{"name", "annotations", "images"}`` or ``None``.
        Annotation paths may be absolute or relative to ``data_dir``.
    """
    path = Path(data_dir) / DATASETS_FILE
    write_json_atomic(path, {"policy": policy, "test": [dict(t) for t in test],
                             "train": dict(train) if train else None, "max_skip_fraction": float(max_skip_fraction)})
    return path


def max_skip_fraction(data_dir: str | os.PathLike) -> float:
    """The skip limit the data stage wrote (the default for a ``datasets.json`` written without one)."""
    return float(read_datasets_manifest(data_dir).get("max_skip_fraction", DEFAULT_MAX_SKIP_FRACTION))


def read_datasets_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The content of ``<data_dir>/datasets.json``.

    Raises ``FileNotFoundError`` (naming the folder) when it is missing or not valid JSON: the data
    stage has not completed into that folder.
    """
    d = read_json(Path(data_dir) / DATASETS_FILE)
    if d is None:
        raise FileNotFoundError(f"{data_dir}: no readable {DATASETS_FILE}; run the data stage first")
    return d


def _abs(data_dir: Path, p: str | None) -> Path | None:
    return None if not p else (Path(p) if os.path.isabs(p) else data_dir / p)


def load_test_sets(data_dir: str | os.PathLike) -> list[Any]:
    """The evaluation ``Dataset``s written by the data stage (labeling policy applied), in file order."""
    from .data import load_coco

    data_dir = Path(data_dir)
    return [load_coco(_abs(data_dir, t["annotations"]), t["images"], name=t["name"], check_images=False)
            for t in read_datasets_manifest(data_dir)["test"]]


def load_train_set(data_dir: str | os.PathLike) -> Any | None:
    """The training ``Dataset`` written by the data stage, or ``None`` when there is none."""
    from .data import load_coco

    data_dir = Path(data_dir)
    t = read_datasets_manifest(data_dir)["train"]
    if not t:
        return None
    return load_coco(_abs(data_dir, t["annotations"]), t["images"], name=t["name"], check_images=False)


def train_annotations_path(data_dir: str | os.PathLike) -> Path:
    """The COCO file of the data stage's training set; ``ValueError`` when it wrote none."""
    t = read_datasets_manifest(data_dir)["train"]
    if not t:
        raise ValueError(f"{data_dir}: the data stage wrote no training set")
    return _abs(Path(data_dir), t["annotations"])


def raw_gt_variant(data_dir: str | os.PathLike, test_name: str) -> dict[int, Any] | None:
    """``{ann_id: Instance}``: for each policy object of ``test_name``, its ground truth *before* the policy.

    An object the policy kept or filled has its raw instance (same ``ann_id``). A merged object's raw
    counterpart is the union of its members' raw masks (no hole filled), so scoring one prediction
    against both variants separates what the policy costs from what mask quality costs.
    Returns ``None`` when the data stage wrote no raw annotations (the policy changed nothing).
    """
    from .data import load_coco
    from .masks import decode_rle, encode_rle, mask_box_xyxy

    data_dir = Path(data_dir)
    entry = next(t for t in read_datasets_manifest(data_dir)["test"] if t["name"] == test_name)
    if not entry.get("raw_annotations"):
        return None
    raw = {t.ann_id: t for t in load_coco(_abs(data_dir, entry["raw_annotations"]), entry["images"],
                                          check_images=False).instances}
    pol = load_coco(_abs(data_dir, entry["annotations"]), entry["images"], check_images=False)
    out: dict[int, Any] = {}
    for inst in pol.instances:
        members = [raw[a] for a in (inst.source_ann_ids or (inst.ann_id,)) if a in raw]
        if not members:
            continue
        if len(members) == 1:
            out[inst.ann_id] = members[0].with_(ann_id=inst.ann_id)
            continue
        mask = decode_rle(members[0].rle)
        for m in members[1:]:
            mask |= decode_rle(m.rle)
        out[inst.ann_id] = inst.with_(rle=encode_rle(mask), area=int(mask.sum()),
                                      box_xyxy=tuple(float(v) for v in mask_box_xyxy(mask)))
    return out


# ------------------------------------------------------------------------------- the data stage
def first_images(dataset: Any, n: int | None) -> Any:
    """The dataset restricted to its ``n`` smallest image ids (all when ``n`` is None): tiny runs.

    Skip and note rows about images beyond the last kept id are dropped too, so that the share of
    skipped images (:func:`check_inputs`) is that of the same id range; rows without an image id stay.
    """
    if n is None or n >= len(dataset.images):
        return dataset
    ids = sorted(dataset.images)[:n]
    sub = dataset.subset(ids)
    in_range = (lambda r: r.get("image_id") is None or r["image_id"] <= ids[-1])
    sub.skips = [r for r in sub.skips if in_range(r)]
    sub.notes = [r for r in sub.notes if in_range(r)]
    return sub


def load_source(source: str, out_dir: str | os.PathLike, name: str, synthetic: Mapping[str, Any] | None = None,
                annotations: str | None = None, images: str | None = None,
                train_annotations: str | None = None, train_images: str | None = None,
                isegm_root: str | None = None, isegm_datasets: Sequence[str] = ("grabcut", "berkeley"),
                limit_images: int | None = None, limit_train_images: int | None = None, exif: str = "stored"
                ) -> tuple[dict[str, Any], Any | None]:
    """Load the config's data source: ``({eval set name: Dataset}, separate train Dataset or None)``.

    synthetic: the probe set is generated into ``out_dir/probe_set`` (``synthetic.SyntheticConfig``
    fields in ``synthetic``); coco: ``annotations``/``images`` (+ ``train_*`` for a separate
    training set); isegm: ``isegm.load_isegm`` of each name (``isegm.BENCHMARKS``) under ``isegm_root``.
    ``limit_images`` keeps the first N images of each evaluation source (before any split),
    ``limit_train_images`` the first N of the separate training set. ``exif``: the EXIF rule of
    :func:`samstudy.data.load_coco` for COCO sources (``stored`` or ``apply``).
    """
    from .data import load_coco

    if source == "synthetic":
        from .synthetic import INSTANCES_FILE, SyntheticConfig, generate_probe_set

        probe = generate_probe_set(SyntheticConfig(**dict(synthetic or {})), Path(out_dir) / "probe_set")
        sets = {name: load_coco(probe / INSTANCES_FILE, probe / "images", name=name)}
        train = None
    elif source == "coco":
        sets = {name: load_coco(annotations, images, name=name, exif=exif)}
        train = (load_coco(train_annotations, train_images, name=f"{name}-train", check_images=False, exif=exif)
                 if train_annotations else None)
    elif source == "isegm":
        from . import isegm

        unknown = [d for d in isegm_datasets if d not in isegm.BENCHMARKS]
        if unknown:
            raise ValueError(f"unknown isegm dataset(s) {unknown}; known: {sorted(isegm.BENCHMARKS)}")
        sets = {d: isegm.load_isegm(isegm_root, d) for d in isegm_datasets}
        train = None
    else:
        raise ValueError(f"unknown data source {source!r}")
    sets = {k: first_images(v, limit_images) for k, v in sets.items()}
    return sets, (first_images(train, limit_train_images) if train is not None else None)


def skip_counts(table: Any) -> dict[str, Any]:
    """What the report's index shows of the data stage's skip table (``skips_table(..., include_notes=True)``
    rows of every source): ``{"skips", "notes", "by_reason": {kind: {reason: rows}}, "table"}``."""
    kinds = table["kind"] if len(table) else []
    by = {k: {str(r): int(n) for r, n in table[kinds == k]["reason"].value_counts().items()}
          for k in ("skip", "note")} if len(table) else {"skip": {}, "note": {}}
    return {"skips": int(sum(by["skip"].values())), "notes": int(sum(by["note"].values())),
            "by_reason": by, "table": f"{SKIPS_TABLE}.csv"}


def check_inputs(sources: Mapping[str, Any], test_sets: Mapping[str, Any], separate_train: Any | None,
                 max_fraction: float) -> list[dict[str, Any]]:
    """The data stage's skip limit: :func:`samstudy.data.check_skip_limit` on every loaded source.

    sources: ``{name: Dataset}`` as loaded (before categories, crowd, policy and split; their
    skips are the table's rows); test_sets: the evaluation sets of the same names, whose object
    count is what is left; separate_train: a training source loaded on its own (``None``: none; a
    training split of a source shares its skip rows and is covered by the source's check).
    Returns one summary per source; raises :class:`samstudy.data.TooManySkips` (the stage stops)
    when a source skipped more than ``max_fraction`` of its images or objects, or no test object is left.
    """
    from .data import check_skip_limit, skips_table

    out = []
    for name, ds in sources.items():
        left = len(test_sets[name].instances) if name in test_sets else 0
        out.append(check_skip_limit(skips_table(ds), len(ds.images), len(ds.instances), max_fraction,
                                    f"data stage, test source {name!r}", objects_left=left))
    if separate_train is not None:
        t = separate_train
        out.append(check_skip_limit(skips_table(t), len(t.images), len(t.instances), max_fraction,
                                    f"data stage, training source {t.name!r}"))
    return out


def image_dir_of(dataset: Any) -> str:
    """The folder a dataset's ``file_name``s are relative to (from its first image record)."""
    if not dataset.images:
        return ""
    rec = next(iter(dataset.images.values()))
    path = str(rec.path)
    return path[: len(path) - len(rec.file_name)].rstrip("/\\") or "."


def write_stage_datasets(out_dir: str | os.PathLike, test_sets: Mapping[str, Any], train: Any | None,
                         raw_sets: Mapping[str, Any] | None, policy: str,
                         max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION) -> Path:
    """Write the data stage's COCO files and ``datasets.json``; returns the latter's path.

    test_sets: ``{name: Dataset}`` with the policy applied (``test-<name>.json``); raw_sets: the
    same sources before the policy (restricted to the test images, ``test-<name>-raw.json``), or
    ``None`` when the policy is ``raw``; train: ``train.json`` or ``None``.
    """
    from .data import write_coco

    out = Path(out_dir)
    entries = []
    for name, ds in test_sets.items():
        ann = write_coco(ds, out / f"test-{name}.json")
        raw_ann = None
        if raw_sets is not None and policy != "raw":
            raw_ann = write_coco(raw_sets[name].subset(set(ds.images)), out / f"test-{name}-raw.json").name
        entries.append({"name": name, "annotations": ann.name, "images": image_dir_of(ds), "raw_annotations": raw_ann})
    tr = None
    if train is not None:
        tr = {"name": train.name, "annotations": write_coco(train, out / "train.json").name,
              "images": image_dir_of(train)}
    return write_datasets_manifest(out, entries, tr, policy, max_skip_fraction)


# ------------------------------------------------------------------------------ the training stage
def training_dir(out_dir: str | os.PathLike, config: Mapping[str, Any], data_file: str | os.PathLike) -> Path:
    """``<out_dir>/training-<key>`` for one (training config, training data) pair.

    key: the first 12 hex digits of SHA-256(``json.dumps(jsonable(config), sort_keys=True)`` +
    SHA-256 of ``data_file``'s bytes). The custom trainer resumes from its folder when the config
    matches: keying the folder by the training data too means a rerun after a failure resumes,
    while new data starts afresh. The folder itself is not created, and the folders of other
    configs are left alone: a finished training is never deleted (switching a config back reuses
    it; this function once removed them, and a mere lookup of another config's folder lost a
    25-minute training). Delete stale ``training-*`` folders by hand to free disk.
    """
    text = json.dumps(jsonable(dict(config)), sort_keys=True) + file_sha256(data_file)
    return Path(out_dir) / f"training-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
