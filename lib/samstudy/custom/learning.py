"""Learning curves of the custom model: test mIoU against the number of training objects.

:func:`subsample_train` draws a seeded share of the train split's *images* (a subset of a
smaller draw is not required: each (fraction, seed) is its own draw); :func:`fit_power_law` fits

    error(n) = 1 - mIoU(n) = a * n ** (-b)

by least squares in log-log space (``log error = log a - b log n``) and projects the mIoU at a
target ``n`` (e.g. the published training-set size) with a bootstrap interval over the measured
runs (rows resampled with replacement, seeded). An asymptote-free power law is the simplest curve
with diminishing returns; extrapolating it far beyond the measured range is optimistic when the
error has a floor, so the projection is stated with that caveat and the measured range.

The loop (the ``learning_curve`` stage, notebook 09, and ``bench/custom_learning_curve.py``):
:func:`run_learning_curve` trains one model per (fraction, seed) with :func:`learning_config`
(the train_custom stage's options), each into its own folder ``<out>/runs/f<fraction>-s<seed>/``
(a killed stage resumes: :func:`~samstudy.custom.train.train_custom` from ``last.pt``, scoring
per image through :func:`samstudy.engine.run_experiment`), selects the model on the validation
part ``train_custom`` carves from the subset (never on test), and scores the refined arm
(stage 2) with ``extreme_points`` on each test split. Tables from its result:
:func:`fraction_summary` (mean over seeds with an image bootstrap CI), :func:`fit_table`
(power law per test set), :func:`zero_shot_reference` (each zero-shot foundation model's tight-box
mIoU on the same objects) and :func:`crossing_table` (:func:`crossing_n`: where the fitted curve
reaches it).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ..data import Dataset
from ..results import PRIMARY
from ..stats import bootstrap_mean_ci

if TYPE_CHECKING:
    from .model import CustomConfig

__all__ = ["PowerLawFit", "fit_power_law", "subsample_train", "crossing_n", "learning_config", "run_folder",
           "LearningCurve", "run_learning_curve", "fraction_summary", "fit_table", "zero_shot_reference",
           "crossing_table", "LEARNING_MODE", "RUN_COLUMNS"]

LEARNING_MODE = "extreme_points"  # the published custom model's prompt; the refined arm (stage 2) is scored
RUN_COLUMNS = ["dataset", "fraction", "seed", "n_train_objects", "n_val_objects", "test_objects", "mIoU",
               "ci_lo", "ci_hi", "epochs_done", "budget_limited", "checkpoint"]


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


def run_folder(out_dir: str | Path, fraction: float, seed: int) -> Path:
    """``<out_dir>/runs/f<fraction>-s<seed>``: one run's training (``training-<key>/``) and scoring (``eval/``)."""
    return Path(out_dir) / "runs" / f"f{fraction:g}-s{seed}"


@dataclass(frozen=True)
class LearningCurve:
    """The loop's result. ``runs``: one row per (test set, fraction, seed), columns
    :data:`RUN_COLUMNS` (``mIoU`` float in [0, 1] with its image-bootstrap ``ci_lo``/``ci_hi``;
    ``n_train_objects`` int: the objects trained on, the validation part excluded). ``objects``:
    one row per scored test object and run: ``dataset, fraction, seed, image_id, ann_id, iou``."""

    runs: pd.DataFrame
    objects: pd.DataFrame


def _train_one(train: Dataset, fraction: float, seed: int, config: "CustomConfig", folder: Path,
               data_file: Path, progress: bool) -> tuple[Path, dict[str, Any]]:
    """Train one run into ``folder/training-<key>`` (key: config + training data, so a changed
    config starts afresh and an unchanged one resumes); returns ``(best.pt, train_meta)``."""
    from ..data_stage import training_dir
    from .train import train_custom

    sub = subsample_train(train, fraction, seed)
    tdir = training_dir(folder, {**config.to_dict(), "fraction": fraction}, data_file)
    best = train_custom(sub, config, tdir, progress=progress)  # validation carved from sub: never test
    return best, json.loads((tdir / "train_meta.json").read_text())


def _score_one(best: Path, tests: Sequence[Dataset], folder: Path, policy: str, max_skip_fraction: float | None,
               progress: bool) -> pd.DataFrame:
    """Result rows of the refined arm on every test set (``folder/eval/<test>``; resumed per image)."""
    from ..engine import run_experiment
    from .arm import CustomArm
    from .model import load_custom

    arm = CustomArm(load_custom(best, num_threads=1), stage=2)
    frames = [run_experiment(ds, arm, [LEARNING_MODE], folder / "eval" / ds.name, seed=0, split="test",
                             policy=policy, multimask=["single"], force=True,  # force: a retrained model's parts go
                             max_skip_fraction=max_skip_fraction, progress=progress)
              for ds in tests]
    return pd.concat(frames, ignore_index=True)


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    """Scored one-shot rows against the dataset's own ground truth."""
    return rows[(rows["status"] == "ok") & (rows["click"] == 0) & (rows["gt_variant"] == PRIMARY)]


def _miou_ci(ok: pd.DataFrame, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """``(mIoU, lo, hi)`` of ``ok`` rows, whole images resampled; NaNs when there is no row."""
    if not len(ok):
        return (math.nan,) * 3
    return bootstrap_mean_ci(ok["iou"].to_numpy(float), np.random.default_rng(seed), n_boot=n_boot,
                             groups=ok["image_id"].to_numpy())


def run_learning_curve(train: Dataset, tests: Sequence[Dataset], make_config: Callable[[int], "CustomConfig"],
                       fractions: Sequence[float], seeds: Sequence[int], out_dir: str | Path, data_file: str | Path,
                       *, policy: str = "raw", max_skip_fraction: float | None = None, n_boot: int = 2000,
                       progress: bool = False, log: Callable[[str], None] | None = None) -> LearningCurve:
    """Train and score one custom model per (fraction, seed); see the module docstring.

    make_config: ``seed -> CustomConfig`` of a run (e.g. ``lambda s: learning_config(options, s, ...)``).
    data_file: the file ``train`` was read from (its bytes key the training folders, so new
    training data starts afresh). policy, max_skip_fraction: as for the evaluate_custom stage.
    Runs go in ``fractions`` x ``seeds`` order; rerunning after a crash redoes only what is missing.
    """
    rows, objects = [], []
    for fraction in fractions:
        for seed in seeds:
            folder = run_folder(out_dir, float(fraction), int(seed))
            best, meta = _train_one(train, float(fraction), int(seed), make_config(int(seed)), folder,
                                    Path(data_file), progress)
            scored = _score_one(best, tests, folder, policy, max_skip_fraction, progress)
            for name, ok in _ok(scored).groupby("dataset", sort=False):
                m, lo, hi = _miou_ci(ok, n_boot)
                rows.append({"dataset": name, "fraction": float(fraction), "seed": int(seed),
                             "n_train_objects": int(meta["n_train_objects"]), "n_val_objects": int(meta["n_val_objects"]),
                             "test_objects": len(ok), "mIoU": m, "ci_lo": lo, "ci_hi": hi,
                             "epochs_done": int(meta.get("epochs_done", 0)),
                             "budget_limited": bool(meta.get("budget_limited", False)), "checkpoint": str(best)})
                objects.append(ok[["dataset", "image_id", "ann_id", "iou"]].assign(fraction=float(fraction), seed=int(seed)))
                if log:
                    log(f"fraction {fraction:g} seed {seed}: {rows[-1]['n_train_objects']} training objects, "
                        f"{name} mIoU {m:.3f} [{lo:.3f}, {hi:.3f}] ({len(ok)} test objects)")
    obj = (pd.concat(objects, ignore_index=True) if objects
           else pd.DataFrame(columns=["dataset", "image_id", "ann_id", "iou", "fraction", "seed"]))
    return LearningCurve(pd.DataFrame(rows, columns=RUN_COLUMNS),
                         obj[["dataset", "fraction", "seed", "image_id", "ann_id", "iou"]])


# ----------------------------------------------------------------------------------- tables
def fraction_summary(curve: LearningCurve, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (dataset, fraction): ``seeds`` (runs), ``n_train_objects`` (mean over seeds),
    ``test_objects`` (scored in every seed's run), ``mIoU`` and its 95% ``ci_lo``/``ci_hi``.

    The mean is over objects of the per-object IoU averaged over seeds; its interval resamples
    whole test images (the test-set uncertainty of the mean curve; the spread between seeds is
    the per-seed points of the figure).
    """
    out = []
    for (ds, frac), g in curve.objects.groupby(["dataset", "fraction"], sort=True):
        n_seeds = g["seed"].nunique()
        per_obj = g.groupby(["image_id", "ann_id"])["iou"].agg(["mean", "size"]).reset_index()
        per_obj = per_obj[per_obj["size"] == n_seeds]  # objects every run scored: the seeds are paired
        m, lo, hi = _miou_ci(per_obj.rename(columns={"mean": "iou"}), n_boot, seed)
        runs = curve.runs[(curve.runs["dataset"] == ds) & (curve.runs["fraction"] == frac)]
        out.append({"dataset": ds, "fraction": float(frac), "seeds": int(n_seeds),
                    "n_train_objects": float(runs["n_train_objects"].mean()), "test_objects": len(per_obj),
                    "mIoU": m, "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(out, columns=["dataset", "fraction", "seeds", "n_train_objects", "test_objects",
                                      "mIoU", "ci_lo", "ci_hi"])


FIT_COLUMNS = ["dataset", "a", "b", "target_n", "projection", "ci_lo", "ci_hi", "n_min", "n_max", "runs", "note"]


def fit_table(runs: pd.DataFrame, target_n: float, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """:func:`fit_power_law` per test set over its runs (one row each, columns ``FIT_COLUMNS``);
    a set the law cannot be fitted to (fewer than 2 distinct sizes, an mIoU of 0 or 1) gets NaNs
    and the reason in ``note``."""
    out = []
    for ds, g in runs.groupby("dataset", sort=False):
        row: dict[str, Any] = {"dataset": ds, "target_n": float(target_n), "runs": len(g), "note": None}
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
    """Per (dataset, reference model): the training objects at which the fitted curve reaches the
    model's zero-shot mIoU (:func:`crossing_n`) and where that lies (``where``)."""
    out = []
    for _, ref in references.iterrows():
        fit = fits[fits["dataset"] == ref["dataset"]]
        if not len(fit) or pd.isna(fit["a"].iloc[0]):
            continue
        f = fit.iloc[0]
        n = crossing_n(float(f["a"]), float(f["b"]), float(ref["mIoU"]))
        out.append({"dataset": ref["dataset"], "reference": ref["model_label"], "reference_mIoU": ref["mIoU"],
                    "crossing_n": math.nan if n is None else n,
                    "where": _where(n, float(f["n_min"]), float(f["n_max"]), float(f["target_n"]))})
    return pd.DataFrame(out, columns=["dataset", "reference", "reference_mIoU", "crossing_n", "where"])
