"""Custom-model variants chosen on validation only (a script, not a test): train, then score on the
validation images carved from the train split, never on test.

    PYTHONPATH=lib .venv/bin/python bench/custom_variants.py --run results/shared-coco \\
        --variant 'perturb={"stage2_perturb": 0.5, "refine_band": 12}' [--variant NAME=JSON ...] [--epochs 15]

Each variant = the run config's ``custom.options`` updated with the JSON, trained by
:func:`samstudy.custom.train.train_custom` on the run's train split into
``<run>/variants/<name>/train`` (resumable: rerunning skips finished variants). It is then scored
through the engine (``extreme_points``, both arms, 1 thread) on the validation images recorded in
its ``train_meta.json`` at full image resolution (``--flip-tta``: also with the flip average): mIoU and boundary IoU of stage 1 and stage 1+2,
the paired refinement gain with image-bootstrap CIs, the median seconds per object, parameters per
stage and training minutes. Writes ``<run>/variants/table.csv`` (one row per variant x stage).
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

from samstudy import data_stage  # noqa: E402
from _args import named  # noqa: E402  (bench/, the script's own folder)
from samstudy.config import load_config  # noqa: E402
from samstudy.custom import CustomConfig, custom_arms, load_custom, train_custom  # noqa: E402
from samstudy.custom.evaluate import refinement_gain_table  # noqa: E402
from samstudy.engine import run_experiment  # noqa: E402


def _variant(text: str) -> tuple[str, dict]:
    name, js = named(text, "--variant", "JSON")
    opts = json.loads(js)
    if not isinstance(opts, dict):
        raise SystemExit(f"--variant {name}: the JSON must be an object of CustomConfig fields")
    return name, opts


def score_variant(name: str, best: Path, train, out: Path, n_boot: int, flip_tta: bool = False) -> list[dict]:
    meta = json.loads((best.parent / "train_meta.json").read_text())
    val = train.subset(meta["val_image_ids"], name=f"{train.name}-val")
    seg = load_custom(best, num_threads=1, flip_tta=flip_tta)
    frames = [run_experiment(val, arm, ["extreme_points"], out / arm.name, seed=0, split="val",
                             multimask=["single"], progress=False) for arm in custom_arms(seg)]
    rows = pd.concat(frames, ignore_index=True)
    ok = rows[rows.status == "ok"]
    gain = refinement_gain_table(rows, np.random.default_rng(0), n_boot).set_index("metric")
    stats = meta["stages"]
    table = []
    for model, g in ok.groupby("model"):
        table.append({"variant": name, "arm": model, "flip_tta": flip_tta, "val_objects": len(g), "val_mIoU": g.iou.mean(),
                      "val_boundary_IoU": g.boundary_iou.mean(), "s_per_object": g.time_decode_s.median(),
                      "refine_gain_iou": gain.loc["iou", "diff"], "refine_gain_iou_lo": gain.loc["iou", "ci_lo"],
                      "refine_gain_iou_hi": gain.loc["iou", "ci_hi"],
                      "refine_gain_biou": gain.loc["boundary_iou", "diff"],
                      "refine_gain_biou_lo": gain.loc["boundary_iou", "ci_lo"],
                      "refine_gain_biou_hi": gain.loc["boundary_iou", "ci_hi"],
                      "params_stage1": stats["stage1"]["params"], "params_stage2": stats["stage2"]["params"],
                      "train_minutes": meta["train_seconds"] / 60, "epochs_done": meta["epochs_done"],
                      "budget_limited": meta["budget_limited"], "options": json.dumps(meta["config"], sort_keys=True)})
    return table


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--config", default=None, help="the run's config (default configs/<run name>.yaml)")
    ap.add_argument("--variant", action="append", required=True, help="NAME=JSON of CustomConfig fields")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=None, help="training budget (default: the config's)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--flip-tta", action="store_true", help="also score with the flip average (CustomSegmenter.flip_tta)")
    args = ap.parse_args()
    run = Path(args.run)
    cfg = load_config(args.config or REPO / "configs" / f"{run.name}.yaml")
    train = data_stage.load_train_set(run / "data")
    if train is None:
        raise SystemExit(f"{run}/data has no train split: run the data stage first")
    torch.set_num_threads(1)
    for name, opts in map(_variant, args.variant):
        options = {**dict(cfg.custom.options), **opts}
        if args.epochs:
            options["epochs"] = args.epochs
        config = CustomConfig.from_dict({"seed": cfg.seed, "device": "cpu", **options,
                                         "max_minutes": args.minutes or cfg.custom.minutes})
        out = run / "variants" / name
        best = train_custom(train, config, out / "train", progress=False)
        rows = score_variant(name, best, train, out / "val", args.n_boot)
        if args.flip_tta:
            rows += score_variant(name, best, train, out / "val-flip", args.n_boot, flip_tta=True)
        rows = pd.DataFrame(rows)
        rows.to_csv(out / "rows.csv", index=False)  # one file per variant: parallel calls do not collide
        print(rows.drop(columns=["options"]).to_string(), flush=True)
    path = run / "variants" / "table.csv"
    table = pd.concat([pd.read_csv(p) for p in sorted((run / "variants").glob("*/rows.csv"))], ignore_index=True)
    table.to_csv(path, index=False)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
