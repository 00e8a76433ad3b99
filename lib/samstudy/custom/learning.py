"""Learning curves: test mIoU against the number of training objects, for the custom model and,
optionally, the fine-tuned foundation arm.

:func:`subsample_train` draws a seeded share of the train split's *images* (a subset of a
smaller draw is not required: each (fraction, seed) is its own draw); :func:`fit_power_law` fits

    error(n) = 1 - mIoU(n) = a * n ** (-b)

by least squares in log-log space (``log error = log a - b log n``) and projects the mIoU at a
target ``n`` (e.g. the published training-set size) with a bootstrap interval over the measured
runs (rows resampled with replacement, seeded). An asymptote-free power law is the simplest curve
with diminishing returns; extrapolating it far beyond the measured range is optimistic when the
error has a floor, so the projection is stated with that caveat and the measured range.

The loop (the ``learning_curve`` stage, notebook 09, and ``bench/custom_learning_curve.py``):
:func:`run_learning_curve` draws one subset per (fraction, seed) and trains on it

- **the custom model** (arm ``custom_stage2``) with :func:`learning_config` (the train_custom
  stage's options) into ``<out>/runs/f<fraction>-s<seed>/training-<key>/`` (a killed stage resumes:
  :func:`~samstudy.custom.train.train_custom` from ``last.pt``), model selection on the validation
  part ``train_custom`` carves from the subset (never on test); the refined arm (stage 2) is scored
  with ``extreme_points`` (:data:`LEARNING_MODE`) into ``.../eval/<test>/``;
- with ``finetune_config``, **the fine-tuned foundation arm** (arm ``<base>_ft-box``, see
  :mod:`samstudy.finetune`): the base model's prompt encoder and mask decoder fine-tuned on the
  *same* subset into ``.../finetune/train/<base>-<prompt>/training-<key>/``
  (:func:`samstudy.finetune.train_dir`; resumed from ``last.pt``, a finished run is not trained
  again), model selection on the validation part :func:`~samstudy.finetune.finetune` carves from
  the subset (never on test), image embeddings through one shared
  :class:`~samstudy.cache.EmbeddingCache`; scored with ``tight_box`` (:data:`FINETUNE_MODE`,
  single mask) into ``.../finetune/eval/<test>/``.

Scoring is per image through :func:`samstudy.engine.run_experiment` (resumed per image). Tables from
its result, one row group per (test set, arm): :func:`fraction_summary` (mean over seeds with an
image bootstrap CI), :func:`fit_table` (power law per test set and arm), :func:`zero_shot_reference`
(each zero-shot foundation model's tight-box mIoU on the same objects) and :func:`crossing_table`
(:func:`crossing_n`: where each arm's fitted curve reaches it).
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data import Dataset
from ..results import PRIMARY
from ..stats import bootstrap_mean_ci

if TYPE_CHECKING:
    from ..cache import EmbeddingCache
    from ..finetune import FinetuneConfig
    from ..models.base import PromptableSegmenter
    from .model import CustomConfig

__all__ = ["PowerLawFit", "fit_power_law", "subsample_train", "crossing_n", "learning_config",
           "finetune_learning_config", "run_folder", "LearningCurve", "run_learning_curve", "fraction_summary",
           "fit_table", "zero_shot_reference", "crossing_table", "LEARNING_MODE", "FINETUNE_MODE", "RUN_COLUMNS",
           "OBJECT_COLUMNS", "FIT_COLUMNS"]

LEARNING_MODE = "extreme_points"  # the published custom model's prompt; the refined arm (stage 2) is scored
FINETUNE_MODE = "tight_box"       # the fine-tuned arm (box prompts) is scored with the tight box, single mask
RUN_COLUMNS = ["dataset", "arm", "arm_label", "prompt_mode", "fraction", "seed", "n_train_objects", "n_val_objects",
               "test_objects", "mIoU", "ci_lo", "ci_hi", "epochs_done", "budget_limited", "checkpoint"]
OBJECT_COLUMNS = ["dataset", "arm", "fraction", "seed", "image_id", "ann_id", "iou"]


@dataclass(frozen=True)
class PowerLawFit:
    """``error = a * n ** -b``; ``projection`` = mIoU at ``target_n`` with its ``ci`` (2.5%, 97.5%)
    over ``n_boot`` bootstrap refits; ``n_range`` = the measured ``(min n, max n)``."""

    a: float
    b: float
    target_n: float
    projection: float
    ci: tuple[float, float]
    n_range: tuple[float, float]
    n_boot: int

    def predict(self, n: float | np.ndarray) -> np.ndarray:
        """mIoU the fit gives at ``n`` training objects."""
        return 1.0 - self.a * np.asarray(n, dtype=np.float64) ** (-self.b)


def _loglog(n: np.ndarray, miou: np.ndarray) -> tuple[float, float]:
    x, y = np.log(n), np.log(1.0 - miou)
    slope, intercept = np.polyfit(x, y, 1)
    return float(np.exp(intercept)), float(-slope)


def fit_power_law(n_objects: Sequence[float], miou: Sequence[float], target_n: float,
                  n_boot: int = 2000, seed: int = 0) -> PowerLawFit:
    """Fit ``1 - miou = a n^-b`` to runs ``(n_objects[i], miou[i])`` (one row per training run, e.g.
    per fraction x seed) and project the mIoU at ``target_n``.

    Needs at least 2 distinct ``n`` and every mIoU in ``(0, 1)``; raises ``ValueError`` otherwise.
    Bootstrap resamples that draw a single distinct ``n`` are redrawn.
    """
    n = np.asarray(n_objects, dtype=np.float64)
    m = np.asarray(miou, dtype=np.float64)
    if n.shape != m.shape or n.ndim != 1:
        raise ValueError(f"n_objects and miou must be 1-d of one length, got {n.shape} and {m.shape}")
    if len(np.unique(n)) < 2 or (n <= 0).any():
        raise ValueError(f"a power law needs >= 2 distinct positive training-set sizes, got {sorted(set(n.tolist()))}")
    if not ((m > 0) & (m < 1)).all():
        raise ValueError(f"mIoU values must lie in (0, 1), got {m.tolist()}")
    a, b = _loglog(n, m)
    rng = np.random.default_rng(seed)
    proj = []
    while len(proj) < n_boot:
        idx = rng.integers(0, len(n), len(n))
        if len(np.unique(n[idx])) < 2:
            continue
        ab, bb = _loglog(n[idx], m[idx])
        proj.append(1.0 - ab * target_n ** (-bb))
    lo, hi = np.percentile(proj, [2.5, 97.5])
    return PowerLawFit(a=a, b=b, target_n=float(target_n), projection=float(1.0 - a * target_n ** (-b)),
                       ci=(float(lo), float(hi)), n_range=(float(n.min()), float(n.max())), n_boot=int(n_boot))


def subsample_train(train: Dataset, fraction: float, seed: int) -> Dataset:
    """A seeded ``fraction`` of ``train``'s images (at least 2) with all their objects, named
    ``<name>-f<fraction>-s<seed>``. Sampling images, not objects, keeps each image's objects
    together, as the train/validation split does."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ids = sorted(train.images)
    k = max(2, int(round(fraction * len(ids))))
    pick = np.random.default_rng([seed, 16]).permutation(len(ids))[:k]
    return train.subset([ids[i] for i in sorted(pick)], name=f"{train.name}-f{fraction:g}-s{seed}")


# ------------------------------------------------------------------------------- crossing point
def crossing_n(a: float, b: float, level: float) -> float | None:
    """Training objects at which the fitted curve ``1 - a n^-b`` reaches mIoU ``level``:
    ``n = (a / (1 - level)) ** (1 / b)``.

    ``None`` when the fit never rises to it: ``b <= 0`` (no gain from data), ``a <= 0`` or
    ``level >= 1`` (the power law only tends to 1). The value may lie outside the measured range
    (below it: the fit is above ``level`` already at the smallest run); callers say so.
    """
    if not (b > 0 and a > 0 and level < 1):
        return None
    return float((a / (1.0 - level)) ** (1.0 / b))


# ------------------------------------------------------------------------------------ the loop
def learning_config(custom_options: Mapping[str, Any], seed: int, device: str, minutes: float,
                    epochs: int | None = None) -> "CustomConfig":
    """One run's :class:`CustomConfig`, built as the train_custom stage builds it (notebook 01:
    ``from_dict({"seed", "device", **custom_options, "max_minutes"})``), then with the run's
    ``seed`` (it varies per run, so it wins over ``custom_options``) and ``epochs`` when given."""
    from .model import CustomConfig

    d = {"seed": seed, "device": device, **dict(custom_options), "max_minutes": minutes}
    d["seed"] = int(seed)
    if epochs is not None:
        d["epochs"] = int(epochs)
    return CustomConfig.from_dict(d)


def finetune_learning_config(model: Mapping[str, Any], options: Mapping[str, Any], seed: int, device: str,
                             minutes: float | None, epochs: int, prompt: str = "box") -> "FinetuneConfig":
    """One fine-tuned run's :class:`~samstudy.finetune.FinetuneConfig`: the finetune stage's
    (:func:`samstudy.finetune.arm_config` with ``{"epochs": epochs, **options}``, as notebook 07
    passes them) for one ``finetune.models`` entry ``model``, ``prompt`` (box by default: the arm is
    scored with :data:`FINETUNE_MODE`) and the run's ``seed`` (it varies per run, so it wins over
    ``options``)."""
    from ..finetune import arm_config

    opts = {"epochs": epochs, **{k: v for k, v in dict(options).items() if k != "seed"}}
    return arm_config(model, prompt, opts, minutes, int(seed), device)


def run_folder(out_dir: str | Path, fraction: float, seed: int) -> Path:
    """``<out_dir>/runs/f<fraction>-s<seed>``: one run's custom training (``training-<key>/``) and
    scoring (``eval/``), and the fine-tuned arm's (``finetune/train/...``, ``finetune/eval/``)."""
    return Path(out_dir) / "runs" / f"f{fraction:g}-s{seed}"


@dataclass(frozen=True)
class LearningCurve:
    """The loop's result.

    ``runs``: one row per (test set, arm, fraction, seed), columns :data:`RUN_COLUMNS`: ``arm`` the
    scored model's name (``custom_stage2``; the fine-tuned arm ``<base>_ft-box``), ``arm_label`` its
    label without the per-run checkpoint hash (one label per arm), ``prompt_mode`` the mode it was
    scored with (``extreme_points``; ``tight_box``), ``n_train_objects`` int: the objects trained
    on (the validation part excluded), ``n_val_objects`` int: the validation part, ``test_objects``
    int: the test objects scored, ``mIoU`` float in [0, 1] with its image-bootstrap 95%
    ``ci_lo``/``ci_hi``, ``epochs_done`` int, ``budget_limited`` bool (the time budget stopped the
    training before its last epoch), ``checkpoint`` str (``best.pt``; ``finetuned.pth``).
    ``objects``: one row per scored test object and run, columns :data:`OBJECT_COLUMNS`
    (``dataset, arm, fraction, seed, image_id, ann_id, iou``).
    """

    runs: pd.DataFrame
    objects: pd.DataFrame


@dataclass(frozen=True)
class _Trained:
    """One arm trained on one subset: its checkpoint, training counts and scored test rows."""

    checkpoint: Path
    n_train_objects: int
    n_val_objects: int
    epochs_done: int
    budget_limited: bool
    scored: pd.DataFrame


def _score(arm: "PromptableSegmenter", mode: str, tests: Sequence[Dataset], eval_dir: Path,
           cache: "EmbeddingCache | None", policy: str, max_skip_fraction: float | None, progress: bool) -> pd.DataFrame:
    """Result rows of ``arm`` with ``mode`` (single mask) on every test set (``eval_dir/<test>``; resumed per image)."""
    from ..engine import run_experiment

    frames = [run_experiment(ds, arm, [mode], eval_dir / ds.name, cache=cache, seed=0, split="test", policy=policy,
                             multimask=["single"], force=True,  # force: a retrained model's parts go
                             max_skip_fraction=max_skip_fraction, progress=progress)
              for ds in tests]
    return pd.concat(frames, ignore_index=True)


def _custom_run(sub: Dataset, fraction: float, config: "CustomConfig", folder: Path, data_file: Path,
                tests: Sequence[Dataset], policy: str, max_skip_fraction: float | None, progress: bool) -> _Trained:
    """Train the custom model on ``sub`` into ``folder/training-<key>`` (key: config + training data,
    so a changed config starts afresh and an unchanged one resumes) and score its refined arm."""
    from ..data_stage import training_dir
    from .arm import CustomArm
    from .model import load_custom
    from .train import train_custom

    tdir = training_dir(folder, {**config.to_dict(), "fraction": fraction}, data_file)
    best = train_custom(sub, config, tdir, progress=progress)  # validation carved from sub: never test
    meta = json.loads((tdir / "train_meta.json").read_text())
    arm = CustomArm(load_custom(best, num_threads=1), stage=2)
    scored = _score(arm, LEARNING_MODE, tests, folder / "eval", None, policy, max_skip_fraction, progress)
    return _Trained(best, int(meta["n_train_objects"]), int(meta["n_val_objects"]), int(meta.get("epochs_done", 0)),
                    bool(meta.get("budget_limited", False)), scored)


def _finetuned_run(sub: Dataset, config: "FinetuneConfig", folder: Path, data_file: Path, tests: Sequence[Dataset],
                   cache: "EmbeddingCache", policy: str, max_skip_fraction: float | None, progress: bool) -> _Trained:
    """Fine-tune on ``sub`` into ``folder/finetune/train/<base>-<prompt>/training-<key>``
    (:func:`samstudy.finetune.train_dir`: resumed, a finished run returns at once) and score the
    fine-tuned arm with :data:`FINETUNE_MODE` into ``folder/finetune/eval``."""
    from ..files import read_json
    from ..finetune import finetune, finetuned_arm, train_dir

    path = finetune(sub, config, train_dir(folder / "finetune", config, data_file), cache, progress=progress)
    meta = read_json(path.parent / "train_meta.json") or {}
    arm = finetuned_arm(path, config)
    scored = _score(arm, FINETUNE_MODE, tests, folder / "finetune" / "eval", cache, policy, max_skip_fraction, progress)
    return _Trained(path, int(meta["n_train_objects"]), int(meta["n_val_objects"]), int(meta.get("epochs_done", 0)),
                    bool(meta.get("stopped_by_budget", False)), scored)


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    """Scored one-shot rows against the dataset's own ground truth."""
    return rows[(rows["status"] == "ok") & (rows["click"] == 0) & (rows["gt_variant"] == PRIMARY)]


def _miou_ci(ok: pd.DataFrame, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """``(mIoU, lo, hi)`` of ``ok`` rows, whole images resampled; NaNs when there is no row."""
    if not len(ok):
        return (math.nan,) * 3
    return bootstrap_mean_ci(ok["iou"].to_numpy(float), np.random.default_rng(seed), n_boot=n_boot,
                             groups=ok["image_id"].to_numpy())


def _arm_label(model_label: str) -> str:
    """An arm's ``model_label`` without a checkpoint hash (``, sha256 1a2b3c4d)`` -> ``)``): the
    fine-tuned arm's label names its per-run checkpoint, the curve's one label per arm must not."""
    return re.sub(r", sha256 [0-9a-f]+\)", ")", str(model_label))


def _run_tables(run: _Trained, fraction: float, seed: int, n_boot: int) -> list[tuple[dict[str, Any], pd.DataFrame]]:
    """``(runs row, objects rows)`` of one trained arm per test set it scored."""
    out = []
    for name, ok in _ok(run.scored).groupby("dataset", sort=False):
        m, lo, hi = _miou_ci(ok, n_boot)
        arm = str(ok["model"].iloc[0])
        row = {"dataset": name, "arm": arm, "arm_label": _arm_label(ok["model_label"].iloc[0]),
               "prompt_mode": str(ok["prompt_mode"].iloc[0]), "fraction": fraction, "seed": seed,
               "n_train_objects": run.n_train_objects, "n_val_objects": run.n_val_objects, "test_objects": len(ok),
               "mIoU": m, "ci_lo": lo, "ci_hi": hi, "epochs_done": run.epochs_done,
               "budget_limited": run.budget_limited, "checkpoint": str(run.checkpoint)}
        out.append((row, ok.assign(arm=arm, fraction=fraction, seed=seed)[OBJECT_COLUMNS]))
    return out


def run_learning_curve(train: Dataset, tests: Sequence[Dataset], make_config: Callable[[int], "CustomConfig"],
                       fractions: Sequence[float], seeds: Sequence[int], out_dir: str | Path, data_file: str | Path,
                       *, policy: str = "raw", max_skip_fraction: float | None = None, n_boot: int = 2000,
                       progress: bool = False, log: Callable[[str], None] | None = None,
                       finetune_config: Callable[[int], "FinetuneConfig"] | None = None,
                       cache: "EmbeddingCache | str | os.PathLike[str] | None" = None) -> LearningCurve:
    """Train and score one custom model (and, with ``finetune_config``, one fine-tuned foundation
    model) per (fraction, seed), both on the same :func:`subsample_train` subset; see the module docstring.

    make_config: ``seed -> CustomConfig`` of a run (e.g. ``lambda s: learning_config(options, s, ...)``).
    data_file: the file ``train`` was read from (its bytes key the training folders, so new
    training data starts afresh). policy, max_skip_fraction: as for the evaluate_custom stage.
    finetune_config: ``seed -> FinetuneConfig`` of a fine-tuning run (e.g. ``lambda s:
    finetune_learning_config(model, options, s, ...)``: box prompts); ``None`` (default): the
    custom model only. cache: the fine-tuned arm's embedding cache (an :class:`EmbeddingCache` or its
    folder, e.g. ``embedding_dir(foundation.cache_dir)``, so each image is encoded once for every run
    and the scoring; ``None``: no cache, every image encoded again in each run).
    Runs go in ``fractions`` x ``seeds`` order (custom, then fine-tuned); rerunning after a crash
    redoes only what is missing. Returns a :class:`LearningCurve` with one ``runs`` row per (test set,
    arm, fraction, seed).
    """
    if finetune_config is not None:
        from ..cache import EmbeddingCache

        cache = cache if isinstance(cache, EmbeddingCache) else EmbeddingCache(cache)
    rows, objects = [], []
    for fraction in map(float, fractions):
        for seed in map(int, seeds):
            folder = run_folder(out_dir, fraction, seed)
            sub = subsample_train(train, fraction, seed)  # the one subset every arm of this run trains on
            trained = [_custom_run(sub, fraction, make_config(seed), folder, Path(data_file), tests, policy,
                                   max_skip_fraction, progress)]
            if finetune_config is not None:
                trained.append(_finetuned_run(sub, finetune_config(seed), folder, Path(data_file), tests, cache,
                                              policy, max_skip_fraction, progress))
            for row, obj in (t for run in trained for t in _run_tables(run, fraction, seed, n_boot)):
                rows.append(row)
                objects.append(obj)
                if log:
                    log(f"{row['arm']} fraction {fraction:g} seed {seed}: {row['n_train_objects']} training objects, "
                        f"{row['dataset']} mIoU {row['mIoU']:.3f} [{row['ci_lo']:.3f}, {row['ci_hi']:.3f}] "
                        f"({row['test_objects']} test objects)")
    obj = pd.concat(objects, ignore_index=True) if objects else pd.DataFrame(columns=OBJECT_COLUMNS)
    return LearningCurve(pd.DataFrame(rows, columns=RUN_COLUMNS), obj)


# ----------------------------------------------------------------------------------- tables
def fraction_summary(curve: LearningCurve, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (dataset, arm, fraction), sorted by them: ``seeds`` (runs), ``n_train_objects``
    (mean over seeds), ``test_objects`` (scored in every seed's run), ``mIoU`` and its 95%
    ``ci_lo``/``ci_hi``.

    The mean is over objects of the per-object IoU averaged over seeds; its interval resamples
    whole test images (the test-set uncertainty of the mean curve; the spread between seeds is
    the per-seed points of the figure).
    """
    out = []
    for (ds, arm, frac), g in curve.objects.groupby(["dataset", "arm", "fraction"], sort=True):
        n_seeds = g["seed"].nunique()
        per_obj = g.groupby(["image_id", "ann_id"])["iou"].agg(["mean", "size"]).reset_index()
        per_obj = per_obj[per_obj["size"] == n_seeds]  # objects every run scored: the seeds are paired
        m, lo, hi = _miou_ci(per_obj.rename(columns={"mean": "iou"}), n_boot, seed)
        r = curve.runs
        runs = r[(r["dataset"] == ds) & (r["arm"] == arm) & (r["fraction"] == frac)]
        out.append({"dataset": ds, "arm": arm, "fraction": float(frac), "seeds": int(n_seeds),
                    "n_train_objects": float(runs["n_train_objects"].mean()), "test_objects": len(per_obj),
                    "mIoU": m, "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(out, columns=["dataset", "arm", "fraction", "seeds", "n_train_objects", "test_objects",
                                      "mIoU", "ci_lo", "ci_hi"])


FIT_COLUMNS = ["dataset", "arm", "a", "b", "target_n", "projection", "ci_lo", "ci_hi", "n_min", "n_max", "runs",
               "note"]


def fit_table(runs: pd.DataFrame, target_n: float, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """:func:`fit_power_law` per (test set, arm) over its runs (``runs``: :attr:`LearningCurve.runs`;
    one row each in order of appearance, columns :data:`FIT_COLUMNS`); a group the law cannot be
    fitted to (fewer than 2 distinct sizes, an mIoU of 0 or 1) gets NaNs and the reason in ``note``."""
    out = []
    for (ds, arm), g in runs.groupby(["dataset", "arm"], sort=False):
        row: dict[str, Any] = {"dataset": ds, "arm": arm, "target_n": float(target_n), "runs": len(g), "note": None}
        try:
            fit = fit_power_law(g["n_train_objects"].to_numpy(float), g["mIoU"].to_numpy(float), target_n,
                                n_boot=n_boot, seed=seed)
        except ValueError as e:
            row.update(a=math.nan, b=math.nan, projection=math.nan, ci_lo=math.nan, ci_hi=math.nan,
                       n_min=float(g["n_train_objects"].min()), n_max=float(g["n_train_objects"].max()), note=str(e))
        else:
            row.update(a=fit.a, b=fit.b, projection=fit.projection, ci_lo=fit.ci[0], ci_hi=fit.ci[1],
                       n_min=fit.n_range[0], n_max=fit.n_range[1])
        out.append(row)
    return pd.DataFrame(out, columns=FIT_COLUMNS)


def zero_shot_reference(foundation_rows: pd.DataFrame, objects: pd.DataFrame, tight_mode: str | None,
                        multimask: str = "single") -> pd.DataFrame:
    """Each zero-shot foundation model's ``tight_mode`` mIoU on the test objects the curve scored.

    foundation_rows: the foundation stage's result rows; objects: :attr:`LearningCurve.objects`
    (only their ``dataset, ann_id`` are used). One row per (dataset, model): ``model, model_label,
    prompt_mode, objects, mIoU``; empty without rows or mode (untrained benchmark weights left out,
    as in the headline: :func:`samstudy.compare.headline_arms`).
    """
    from ..compare import headline_arms

    cols = ["dataset", "model", "model_label", "prompt_mode", "objects", "mIoU"]
    if tight_mode is None or foundation_rows is None or not len(foundation_rows) or not len(objects):
        return pd.DataFrame(columns=cols)
    keep = objects[["dataset", "ann_id"]].drop_duplicates()
    out = []
    for arm in headline_arms(foundation_rows, None, tight_mode, None, multimask):
        r = _ok(foundation_rows)
        r = r[(r["model"] == arm.model) & (r["prompt_mode"] == arm.prompt_mode) & (r["multimask"] == multimask)]
        r = r.merge(keep, on=["dataset", "ann_id"])
        for ds, g in r.groupby("dataset", sort=False):
            out.append({"dataset": ds, "model": arm.model, "model_label": g["model_label"].iloc[0],
                        "prompt_mode": arm.prompt_mode, "objects": len(g), "mIoU": float(g["iou"].mean())})
    return pd.DataFrame(out, columns=cols)


def _where(n: float | None, n_min: float, n_max: float, target_n: float) -> str:
    if n is None:
        return "never (the fitted curve does not rise to it)"
    if n < n_min:
        return "below the measured range (the fit is above it at the smallest run)"
    if n <= n_max:
        return "within the measured range"
    return "extrapolated, within target_n" if n <= target_n else "extrapolated, beyond target_n"


def crossing_table(fits: pd.DataFrame, references: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, arm, reference model), in ``fits`` then ``references`` order: the training
    objects at which the arm's fitted curve (a :func:`fit_table` row) reaches the model's zero-shot
    mIoU (a :func:`zero_shot_reference` row; :func:`crossing_n`, NaN when never) and where that lies
    (``where``). An arm without a fit has no row."""
    out = []
    for _, f in fits[fits["a"].notna()].iterrows():
        for _, ref in references[references["dataset"] == f["dataset"]].iterrows():
            n = crossing_n(float(f["a"]), float(f["b"]), float(ref["mIoU"]))
            out.append({"dataset": f["dataset"], "arm": f["arm"], "reference": ref["model_label"],
                        "reference_mIoU": ref["mIoU"], "crossing_n": math.nan if n is None else n,
                        "where": _where(n, float(f["n_min"]), float(f["n_max"]), float(f["target_n"]))})
    return pd.DataFrame(out, columns=["dataset", "arm", "reference", "reference_mIoU", "crossing_n", "where"])
