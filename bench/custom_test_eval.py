"""Score a trained custom model on a run's test split through the engine (a script, not a test).

    PYTHONPATH=lib .venv/bin/python bench/custom_test_eval.py --run results/shared-coco-45min [--clicks 3]

Runs both arms (``custom_stage1``, ``custom_stage2``) with ``extreme_points`` and, with
``--clicks K``, ``clicks[start=extreme_points,max_clicks=K]`` (needs the engine's click starts) on
1 torch thread, and prints: mIoU and boundary IoU per arm, median seconds per object (``time_decode_s``
of the one-shot rows: crop, both stages for stage 2, paste-back), the paired refinement gain and
the gain of each corrective click, with image-bootstrap 95% CIs (:mod:`samstudy.custom.evaluate`),
and the training manifest's ``budget_limited`` / epochs. Results go to ``<run>/custom_test_eval``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "lib"))  # after PYTHONPATH: a caller may put another checkout first

from samstudy import data_stage, report  # noqa: E402
from samstudy.custom import custom_arms, load_custom  # noqa: E402
from samstudy.custom.evaluate import click_gain_table, refinement_gain_table  # noqa: E402
from samstudy.engine import run_experiment  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="a study run folder with data/ and train_custom/")
    ap.add_argument("--clicks", type=int, default=0, help="corrective clicks after the extreme points (0: none)")
    ap.add_argument("--stages", default="1,2", help="which arms: 1 (stage 1), 2 (stage 1+2), comma-separated")
    ap.add_argument("--no-one-shot", action="store_true", help="click sequences only (their click 0 is the start)")
    ap.add_argument("--checkpoint", default=None, help="default: the train_custom stage's recorded checkpoint")
    ap.add_argument("--out", default=None, help="results folder (default <run>/custom_test_eval)")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    run = Path(args.run)
    torch.set_num_threads(1)
    records = report.read_records(run / "train_custom")
    seg = load_custom(args.checkpoint or records["checkpoint"], num_threads=1)
    modes = ([] if args.no_one_shot else ["extreme_points"]) + (
        [f"clicks[start=extreme_points,max_clicks={args.clicks}]"] if args.clicks else [])
    stages = {int(s) for s in args.stages.split(",")}
    frames = []
    for arm in [a for a in custom_arms(seg) if a.stage in stages]:
        for ds in data_stage.load_test_sets(run / "data"):
            frames.append(run_experiment(ds, arm, modes, Path(args.out or run / "custom_test_eval") / f"{arm.name}-{ds.name}", seed=0,
                                         split="test", multimask=["single"], click_multimask=["single"],
                                         progress=False))
    rows = pd.concat(frames, ignore_index=True)
    ok = rows[(rows.status == "ok") & ((rows.prompt_mode == "extreme_points") |
                                       (rows.prompt_mode.str.startswith("clicks[") & (rows.click == 0)))]
    pd.set_option("display.width", 200)
    print("training:", json.dumps({k: records.get(k) for k in ("epochs", "budget_limited", "train_seconds", "setup_seconds")}))
    print(ok.groupby(["model", "prompt_mode"]).agg(objects=("iou", "size"), mIoU=("iou", "mean"), boundary_IoU=("boundary_iou", "mean"),
                                  median_s_per_object=("time_decode_s", "median")).to_string())
    if stages == {1, 2} and not args.no_one_shot:
        print("refinement gain (stage 1+2 minus stage 1):")
        print(refinement_gain_table(rows, np.random.default_rng(0), args.n_boot).to_string())
    if args.clicks:
        print("corrective clicks (after k clicks minus the extreme-point start):")
        print(click_gain_table(rows, np.random.default_rng(0), args.n_boot,
                               clicks=tuple(range(1, args.clicks + 1))).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
