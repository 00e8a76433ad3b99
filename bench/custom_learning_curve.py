"""Learning curve of the custom model (a script, not a test): test mIoU against training objects.

    PYTHONPATH=lib .venv/bin/python bench/custom_learning_curve.py --run results/shared-coco-45min \\
        [--fractions 0.1,0.25,0.5,1.0] [--seeds 0,1,2] [--minutes 10] [--epochs 5] [--target-n 860001]

For each fraction x seed: :func:`samstudy.custom.learning.subsample_train` of the run's train split
(its data stage), :func:`samstudy.custom.train.train_custom` with the run's custom options (model
selection on the validation part carved from that subset, never on test), the refined arm scored
on the run's test split with ``extreme_points`` through the engine; then
:func:`samstudy.custom.learning.fit_power_law` and its projection at ``--target-n`` training
objects (default: the 860,001 instance annotations of COCO train2017, the published model's
training set) with a bootstrap interval over the runs. Writes ``<run>/learning_curve/{runs,fit}.csv``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "lib"))  # after PYTHONPATH: a caller may put another checkout first

from samstudy import data_stage  # noqa: E402
from samstudy.config import load_config  # noqa: E402
from samstudy.custom import CustomArm, CustomConfig, load_custom, train_custom  # noqa: E402
from samstudy.custom.learning import fit_power_law, subsample_train  # noqa: E402
from samstudy.engine import run_experiment  # noqa: E402
from samstudy.stats import bootstrap_mean_ci  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--config", default=None, help="the run's config (default configs/<run name>.yaml)")
    ap.add_argument("--fractions", default="0.1,0.25,0.5,1.0")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--minutes", type=float, default=None, help="training budget per run (default: the config's)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--target-n", type=float, default=860_001)
    args = ap.parse_args()
    run = Path(args.run)
    cfg = load_config(args.config or REPO / "configs" / f"{run.name}.yaml")
    options = dict(cfg.custom.options)
    if args.epochs:
        options["epochs"] = args.epochs
    train = data_stage.load_train_set(run / "data")
    tests = data_stage.load_test_sets(run / "data")
    out = run / "learning_curve"
    rows = []
    for frac in (float(f) for f in args.fractions.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            sub = subsample_train(train, frac, seed)
            config = CustomConfig.from_dict({**options, "seed": seed, "device": "cpu",
                                             "max_minutes": args.minutes or cfg.custom.minutes})
            best = train_custom(sub, config, out / f"f{frac:g}-s{seed}" / "train", progress=False)
            arm = CustomArm(load_custom(best, num_threads=1), stage=2)
            for ds in tests:
                df = run_experiment(ds, arm, ["extreme_points"], out / f"f{frac:g}-s{seed}" / "eval", seed=0,
                                    multimask=["single"], progress=False)
                ok = df[df.status == "ok"]
                m, lo, hi = bootstrap_mean_ci(ok.iou.to_numpy(), np.random.default_rng(0), groups=ok.image_id.to_numpy())
                n_obj = sum(1 for t in sub.instances if not t.iscrowd)
                rows.append({"fraction": frac, "seed": seed, "n_train_objects": n_obj, "test_objects": len(ok),
                             "mIoU": m, "ci_lo": lo, "ci_hi": hi, "checkpoint": str(best)})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "runs.csv", index=False)
    fit = fit_power_law(table.n_train_objects, table.mIoU, args.target_n)
    pd.DataFrame([{"a": fit.a, "b": fit.b, "target_n": fit.target_n, "projection": fit.projection,
                   "ci_lo": fit.ci[0], "ci_hi": fit.ci[1], "n_min": fit.n_range[0], "n_max": fit.n_range[1]}]
                 ).to_csv(out / "fit.csv", index=False)
    print(table.groupby("fraction")[["n_train_objects", "mIoU"]].mean().to_string())
    print(f"power law 1 - mIoU = {fit.a:.3f} n^-{fit.b:.3f}; projected mIoU at {fit.target_n:,.0f} objects: "
          f"{fit.projection:.3f} [{fit.ci[0]:.3f}, {fit.ci[1]:.3f}] (measured n {fit.n_range[0]:.0f}-{fit.n_range[1]:.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
