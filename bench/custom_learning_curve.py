"""Learning curve of the custom model (a script, not a test): test mIoU against training objects.

    PYTHONPATH=lib .venv/bin/python bench/custom_learning_curve.py --run results/shared-coco-45min \\
        [--fractions 0.1,0.25,0.5,1.0] [--seeds 0,1,2] [--minutes 10] [--epochs 5] [--target-n 860001]

The same loop as the ``learning_curve`` stage (``learning_curve:`` in a config, notebook 09), run on
an existing run's data stage: :func:`samstudy.custom.learning.run_learning_curve` with the run's
custom options (:func:`~samstudy.custom.learning.learning_config`), then the power law per test set
(:func:`~samstudy.custom.learning.fit_table`) and its projection at ``--target-n`` training objects
(default: the 860,001 instance annotations of COCO train2017, the published model's training set).
Writes ``<run>/learning_curve/{runs,fit}.csv`` (the stage's own folder: a later stage run resumes
these trainings when its options match); ``runs.csv`` keeps an earlier call's other (fraction, seed)
rows, so calls with different ``--seeds`` add up and the fit covers them all. ``--reference
LABEL=MIOU`` (repeatable) also prints where the fitted curve reaches that mIoU
(:func:`~samstudy.custom.learning.crossing_table`; ``crossings.csv``), e.g. a zero-shot model's score
measured on the same test objects, or a published figure (then on another test set: an orientation only).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "lib"))  # after PYTHONPATH: a caller may put another checkout first

from samstudy import data_stage  # noqa: E402
from samstudy.config import COCO_TRAIN2017_INSTANCES, load_config  # noqa: E402
from samstudy.custom.learning import crossing_table, fit_table, learning_config, run_learning_curve  # noqa: E402


def merged_runs(path: Path, new: pd.DataFrame) -> pd.DataFrame:
    """The runs of ``path`` (an earlier call's ``runs.csv``, say with other seeds) with ``new``'s rows
    in place of theirs for the same (dataset, arm, fraction, seed): calls with different
    ``--seeds`` or ``--fractions`` add up instead of overwriting each other."""
    if not path.exists():
        return new
    old = pd.read_csv(path)
    key = ["dataset", "arm", "fraction", "seed"]
    stale = old[key].apply(tuple, axis=1).isin(set(new[key].apply(tuple, axis=1)))
    return pd.concat([old[~stale], new], ignore_index=True).sort_values(key, kind="stable", ignore_index=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--config", default=None, help="the run's config (default configs/<run name>.yaml)")
    ap.add_argument("--fractions", default="0.1,0.25,0.5,1.0")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--minutes", type=float, default=None, help="training budget per run (default: the config's)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--target-n", type=float, default=COCO_TRAIN2017_INSTANCES)
    ap.add_argument("--reference", action="append", default=[], help="LABEL=MIOU: where the curve reaches it")
    args = ap.parse_args()
    run = Path(args.run)
    cfg = load_config(args.config or REPO / "configs" / f"{run.name}.yaml")
    data_dir = run / "data"
    minutes = args.minutes or cfg.custom.minutes
    curve = run_learning_curve(
        data_stage.load_train_set(data_dir), data_stage.load_test_sets(data_dir),
        lambda seed: learning_config(cfg.custom.options, seed, "cpu", minutes, args.epochs),
        [float(f) for f in args.fractions.split(",")], [int(s) for s in args.seeds.split(",")],
        run / "learning_curve", data_stage.train_annotations_path(data_dir),
        policy=data_stage.read_datasets_manifest(data_dir)["policy"],
        max_skip_fraction=data_stage.max_skip_fraction(data_dir), log=lambda m: print(m, flush=True))
    out = run / "learning_curve"
    out.mkdir(parents=True, exist_ok=True)
    runs = merged_runs(out / "runs.csv", curve.runs)
    runs.to_csv(out / "runs.csv", index=False)
    fits = fit_table(runs, args.target_n)
    fits.to_csv(out / "fit.csv", index=False)
    print(runs.groupby(["dataset", "fraction"])[["n_train_objects", "mIoU"]].mean().to_string())
    for f in fits.itertuples():
        if f.note:
            print(f"{f.dataset}: no power law ({f.note})")
            continue
        print(f"{f.dataset}: power law 1 - mIoU = {f.a:.3f} n^-{f.b:.3f}; projected mIoU at {f.target_n:,.0f} objects: "
              f"{f.projection:.3f} [{f.ci_lo:.3f}, {f.ci_hi:.3f}] (measured n {f.n_min:.0f}-{f.n_max:.0f}; an "
              "extrapolation without an error floor, so optimistic)")
    if args.reference:
        refs = pd.DataFrame([{"dataset": ds, "model": label, "model_label": label, "prompt_mode": None, "objects": None,
                              "mIoU": float(level)} for label, _, level in (r.rpartition("=") for r in args.reference)
                             for ds in fits["dataset"].unique()])
        cross = crossing_table(fits, refs)
        cross.to_csv(out / "crossings.csv", index=False)
        print(cross.to_string(index=False, float_format=lambda v: f"{v:,.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
