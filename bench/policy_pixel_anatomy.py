"""Where an arm's errors lie on the objects a fill-holes policy changed (a script, not a test).

    PYTHONPATH=lib .venv/bin/python bench/policy_pixel_anatomy.py --run results/policy-synthetic-large \\
        --arm zero-shot=results/policy-synthetic-large/foundation/predictions.parquet:litemedsam \\
        --arm fine-tuned=results/policy-synthetic-large/finetune/predictions.parquet [--mode tight_box] [--out CSV]

For every test object whose policy mask is larger than its raw mask (the policy filled a hole), the
arm's tight-box mask (``--mode``, ``single`` output) is split against both ground truths: the **drawn**
pixels (the raw mask: the outline of a frame or ring) and the **filled** pixels (policy mask minus
raw mask). Printed and written per arm: the share of the drawn and of the filled pixels the arm
misses, how the missed pixels divide between the two, and the pixels it adds outside the policy
mask. A model that learned the policy but cannot place a thin outline misses drawn pixels; one that
did not learn it misses filled ones. Pixel sums over all objects (large objects weigh more).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "lib"))  # after PYTHONPATH: a caller may put another checkout first

from _args import named  # noqa: E402  (bench/, the script's own folder)
from samstudy import data_stage  # noqa: E402
from samstudy.masks import decode_rle  # noqa: E402
from samstudy.results import prediction_mask  # noqa: E402


def _arm(text: str) -> tuple[str, Path, str | None]:
    name, rest = named(text, "--arm", "PREDICTIONS.parquet[:MODEL]")
    path, _, model = rest.partition(":")
    return name, Path(path), model or None


def anatomy(preds: pd.DataFrame, policy_masks: dict[int, np.ndarray], raw_masks: dict[int, np.ndarray]) -> dict:
    """Pixel sums over the filled objects of ``preds`` (one row per object: ``ann_id``, ``rle``)."""
    s = dict.fromkeys(("objects", "drawn", "filled", "missed_drawn", "missed_filled", "extra"), 0)
    for _, row in preds.iterrows():
        gt, raw = policy_masks.get(int(row.ann_id)), raw_masks.get(int(row.ann_id))
        if gt is None or raw is None or not (gt & ~raw).any():
            continue
        pred = prediction_mask(row)
        filled = gt & ~raw
        s["objects"] += 1
        s["drawn"] += int(raw.sum())
        s["filled"] += int(filled.sum())
        s["missed_drawn"] += int((raw & ~pred).sum())
        s["missed_filled"] += int((filled & ~pred).sum())
        s["extra"] += int((pred & ~gt).sum())
    missed = s["missed_drawn"] + s["missed_filled"]
    return {**s, "drawn_missed_share": s["missed_drawn"] / max(s["drawn"], 1),
            "filled_missed_share": s["missed_filled"] / max(s["filled"], 1),
            "missed_on_drawn": s["missed_drawn"] / max(missed, 1),
            "extra_share_of_errors": s["extra"] / max(missed + s["extra"], 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--arm", action="append", required=True, help="NAME=PREDICTIONS.parquet[:MODEL] (repeatable)")
    ap.add_argument("--mode", default="tight_box")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    data_dir = Path(args.run) / "data"
    rows = []
    for ds in data_stage.load_test_sets(data_dir):
        raw = data_stage.raw_gt_variant(data_dir, ds.name)
        if raw is None:
            raise SystemExit(f"{data_dir}: test set {ds.name} has no raw ground truth (a run without a policy?)")
        policy_masks = {i.ann_id: decode_rle(i.rle) for i in ds.instances}
        raw_masks = {int(k): decode_rle(v.rle) for k, v in raw.items()}
        for name, path, model in map(_arm, args.arm):
            p = pd.read_parquet(path)
            p = p[(p.prompt_mode == args.mode) & (p.multimask == "single") & (p.dataset == ds.name)]
            if model:
                p = p[p.model == model]
            if p.ann_id.duplicated().any():
                raise SystemExit(f"{path}: several predictions per object; name the model (NAME=FILE:MODEL)")
            rows.append({"arm": name, "test_set": ds.name, **anatomy(p, policy_masks, raw_masks)})
    table = pd.DataFrame(rows)
    if table.empty or (table.objects == 0).any():
        raise SystemExit("no filled object was scored for some arm: check --mode and the predictions files")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
