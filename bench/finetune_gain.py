"""What fine-tuning adds, for a run scored by ``python -m samstudy.finetune`` (a script, not a test).

    PYTHONPATH=lib .venv/bin/python bench/finetune_gain.py --run results/shared-coco \\
        --tuned results/shared-coco/finetune-full [--cache-dir DIR]

Scores the zero-shot base model (the run config's first foundation model) through the engine with
the prompt modes the fine-tuned rows carry, on the same test objects (``<tuned>/zero-shot/``,
resumable), then prints :func:`samstudy.compare.finetune_gain_table` (paired mIoU, image-bootstrap
95% CI) overall and by COCO size bucket, and writes ``<tuned>/gain.csv``. For runs without a
foundation stage (the shared-coco one takes an hour here); the pipeline's finetune stage writes
the same table from the foundation stage's rows.
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
from samstudy.cache import EmbeddingCache, embedding_dir  # noqa: E402
from samstudy.compare import finetune_gain_table  # noqa: E402
from samstudy.config import load_config  # noqa: E402
from samstudy.engine import run_experiment  # noqa: E402
from samstudy.models import build_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--tuned", required=True, help="the folder python -m samstudy.finetune wrote (rows.parquet)")
    ap.add_argument("--config", default=None, help="the run's config (default configs/<run name>.yaml)")
    ap.add_argument("--cache-dir", default=None, help="embedding cache (default: the cache root's)")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    run, tuned_dir = Path(args.run), Path(args.tuned)
    cfg = load_config(args.config or REPO / "configs" / f"{run.name}.yaml")
    tuned = pd.read_parquet(tuned_dir / "rows.parquet")
    if not len(tuned):
        raise SystemExit(f"{tuned_dir}/rows.parquet has no rows")
    spec = cfg.foundation.models[0]
    base = build_model(spec.name, spec.checkpoint, **dict(spec.options))
    modes = sorted(tuned["prompt_mode"].unique())
    policy = data_stage.read_datasets_manifest(run / "data")["policy"]
    cache = EmbeddingCache(embedding_dir(args.cache_dir))
    frames = [run_experiment(ds, base, modes, out_dir=tuned_dir / "zero-shot" / ds.name, cache=cache, seed=cfg.seed,
                             split="test", policy=policy, multimask=("single",), progress=False, force=False)
              for ds in data_stage.load_test_sets(run / "data")]
    zero = pd.concat(frames, ignore_index=True)
    tables = [finetune_gain_table(zero, tuned, np.random.default_rng(0), args.n_boot).assign(size="all")]
    for size, g in tuned.groupby("size_bucket"):
        tables.append(finetune_gain_table(zero, g, np.random.default_rng(0), args.n_boot).assign(size=size))
    table = pd.concat(tables, ignore_index=True)
    table.to_csv(tuned_dir / "gain.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
