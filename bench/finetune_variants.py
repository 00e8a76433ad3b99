"""Fine-tuning variants side by side, chosen on validation (a script, not a test).

    PYTHONPATH=lib .venv/bin/python bench/finetune_variants.py \\
        --variant flips=results/policy-synthetic/finetune-flips [--variant NAME=DIR ...] \\
        [--categories frame ring letter] [--out results/summaries/policy-synthetic/finetune_variants.csv]

Each DIR is what ``python -m samstudy.finetune --out DIR`` wrote (``arms.json``, ``rows.parquet``, the
training folder's ``curve.csv``). One row per variant: the decision columns first -- the best
validation mIoU (the validation part of the train split, every box mode; the epoch the checkpoint
is from), the validation mIoU of each epoch -- then the test split's tight-box mIoU against the
primary (policy) ground truth, overall, for the objects the policy filled (and did not merge:
``compare.policy_change``) and per category, with
the training time. Pick on the validation columns; the test columns are reported, not selected on.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "lib"))  # after PYTHONPATH: a caller may put another checkout first

from _args import named  # noqa: E402  (bench/, the script's own folder)
from samstudy.compare import policy_change  # noqa: E402


def _variant(text: str) -> tuple[str, Path]:
    name, path = named(text, "--variant", "DIR")
    return name, Path(path)


def variant_row(name: str, folder: Path, categories: list[str]) -> dict:
    """The decision (validation) and reported (test) figures of one fine-tuning output folder."""
    arms = json.loads((folder / "arms.json").read_text())
    if len(arms) != 1:
        raise SystemExit(f"{folder}/arms.json: expected one arm, found {len(arms)}")
    arm = arms[0]
    curve = pd.read_csv(Path(arm["train_dir"]) / "curve.csv")
    rows = pd.read_parquet(folder / "rows.parquet")
    tight = rows[(rows.prompt_mode == "tight_box") & (rows.gt_variant == "primary") & (rows.status == "ok")]
    if tight.empty:
        raise SystemExit(f"{folder}/rows.parquet has no scored tight-box rows against the primary ground truth")
    filled = tight[policy_change(tight.tags) == "filled"]  # as policy_effect_table counts them
    by_cat = tight.groupby("category").iou.agg(["mean", "size"])
    row = {"variant": name, "val_best": arm["val_miou"], "best_epoch": arm["best_epoch"],
           "epochs": arm["epochs_done"], "val_by_epoch": " ".join(f"{v:.3f}" for v in curve.val_miou),
           "train_min": round(arm["train_seconds"] / 60, 1), "stopped_by_budget": arm["stopped_by_budget"],
           "test_all": tight.iou.mean(), "n_test": len(tight), "test_filled": filled.iou.mean(), "n_filled": len(filled)}
    for c in categories:
        row[f"test_{c}"] = by_cat["mean"].get(c, float("nan"))
        row[f"n_{c}"] = int(by_cat["size"].get(c, 0))
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True, help="NAME=DIR (repeatable)")
    ap.add_argument("--categories", nargs="+", default=["frame", "ring", "letter"])
    ap.add_argument("--out", default=None, help="also write the table here (CSV)")
    args = ap.parse_args()
    table = pd.DataFrame([variant_row(n, p, args.categories) for n, p in map(_variant, args.variant)])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    print(table.drop(columns="val_by_epoch").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\nvalidation mIoU by epoch:")
    for _, r in table.iterrows():
        print(f"  {r.variant}: {r.val_by_epoch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
