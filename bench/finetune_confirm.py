"""Score fine-tuned checkpoints on a run's test split they never saw (a script, not a test).

    PYTHONPATH=lib .venv/bin/python bench/finetune_confirm.py --run results/policy-synthetic-confirm \\
        --arm decoder=<...>/finetuned.pth --arm lora=<...>/finetuned.pth [--mode tight_box] \\
        [--categories frame ring letter] [--out results/summaries/policy-synthetic-confirm/finetune_confirm.csv]

For confirming a comparison decided elsewhere on a fresh sample (``configs/policy-synthetic-confirm.yaml``:
a new synthetic draw, only its data stage run). Scores the zero-shot base model (the run config's
first foundation model) and every ``--arm`` (``build_model("finetuned", checkpoint=...)``) through
the engine on every test set of ``<run>/data`` with ``--mode`` (``<run>/confirm/<name>/``,
resumable), then prints and writes, against the primary (policy) ground truth and per category
(``all`` first): each arm's mIoU and the paired difference of each later arm against the first
``--arm`` and against zero-shot, with 95% image-bootstrap CIs (2,000 resamples, seed 0).
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
from samstudy.cache import EmbeddingCache, embedding_dir  # noqa: E402
from samstudy.compare import Arm, arm_matrix, paired_diff_table  # noqa: E402
from samstudy.config import load_config  # noqa: E402
from samstudy.engine import run_experiment  # noqa: E402
from samstudy.models import build_model  # noqa: E402


def _arm(text: str) -> tuple[str, Path]:
    name, path = named(text, "--arm", "finetuned.pth")
    if not Path(path).is_file():
        raise SystemExit(f"--arm {name}: checkpoint file not found: {path}")
    return name, Path(path)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--arm", action="append", required=True, help="NAME=finetuned.pth (repeatable; the first is the reference)")
    ap.add_argument("--config", default=None, help="the run's config (default configs/<run name>.yaml)")
    ap.add_argument("--mode", default="tight_box")
    ap.add_argument("--categories", nargs="+", default=["frame", "ring", "letter"])
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    run = Path(args.run)
    cfg = load_config(args.config or REPO / "configs" / f"{run.name}.yaml")
    spec = cfg.foundation.models[0]
    arms = [("zero-shot", build_model(spec.name, spec.checkpoint, num_threads=args.threads, **dict(spec.options)))]
    arms += [(name, build_model("finetuned", checkpoint=path, num_threads=args.threads, **dict(spec.options)))
             for name, path in map(_arm, args.arm)]
    policy = data_stage.read_datasets_manifest(run / "data")["policy"]
    cache = EmbeddingCache(embedding_dir(args.cache_dir))
    frames = []
    for name, seg in arms:
        for ds in data_stage.load_test_sets(run / "data"):
            df = run_experiment(ds, seg, [args.mode], out_dir=run / "confirm" / name / ds.name, cache=cache,
                                seed=cfg.seed, split="test", policy=policy, multimask=("single",), progress=False,
                                force=False)
            frames.append(df.assign(model=f"{name}:{df['model'].iloc[0]}", model_label=name))
    rows = pd.concat(frames, ignore_index=True)
    compared = [Arm(name, f"{name}:{seg.name}", args.mode, "single", "other") for name, seg in arms]
    m = arm_matrix(rows, compared)
    if not len(m):
        raise SystemExit(f"{run}: no object was scored by every arm")
    pairs = [(a.label, compared[1].label) for a in compared[2:]] + [(a.label, "zero-shot") for a in compared[1:]]
    diffs = paired_diff_table(m, pairs, np.random.default_rng(0), args.n_boot, by="category")
    diffs = diffs[diffs["category"].isin(["all", *args.categories])]
    labels = [a.label for a in compared]
    groups = [("all", m), *((c, m[m["category"] == c]) for c in args.categories if (m["category"] == c).any())]
    means = pd.DataFrame([{"category": c, "n": len(g), **g[labels].mean().to_dict()} for c, g in groups])
    print(f"mIoU, {args.mode}, policy ground truth:")
    print(means.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\npaired differences (a - b), image-bootstrap 95% CI:")
    print(diffs.to_string(index=False, float_format=lambda v: f"{v:+.3f}"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        out = diffs.assign(table="paired difference")
        out = pd.concat([means.assign(table="mIoU"), out], ignore_index=True)
        out.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
