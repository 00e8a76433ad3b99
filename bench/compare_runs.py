"""Compare two study runs table by table, leaving out timing columns: did a change move any number?

    python bench/compare_runs.py results/<run-a> results/<run-b>

Reads every CSV of the foundation, evaluate_custom, compare and gallery stages and both stages'
``rows.parquet`` (sorted by object x model x prompt x selection x click x gt variant) and prints
``identical`` or the first difference per table; exits 1 when any table differs. Timing columns
(``time_*``, ``*seconds*``, ``cached``) are not compared: they differ between any two runs.
Compare with the study at another commit: ``git worktree add /tmp/old <commit>``, then run
``PYTHONPATH=/tmp/old/lib python -m samstudy.cli run --config configs/demo.yaml`` inside it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

STAGES = ("foundation", "evaluate_custom", "compare", "gallery")
ROW_KEYS = ["model", "image_id", "ann_id", "prompt_mode", "multimask", "click", "gt_variant"]


def _timing(columns) -> list[str]:
    return [c for c in columns if c.startswith("time") or "second" in c or "s / " in c or c == "cached"]


def _same(name: str, x: pd.DataFrame, y: pd.DataFrame) -> bool:
    x, y = x.drop(columns=_timing(x.columns)), y.drop(columns=_timing(y.columns))
    try:
        pd.testing.assert_frame_equal(x.reset_index(drop=True), y.reset_index(drop=True), check_dtype=False,
                                      check_exact=False, rtol=0, atol=1e-12)
    except AssertionError as e:
        print(f"{name}: DIFFERS {str(e)[:400]}")
        return False
    print(f"{name}: identical ({len(x)} rows)")
    return True


def main(a: Path, b: Path) -> int:
    ok = True
    for stage in STAGES:
        for f in sorted((a / stage).glob("*.csv")):
            g = b / stage / f.name
            if not g.exists():
                print(f"{stage}/{f.name}: missing in {b}")
                ok = False
                continue
            ok &= _same(f"{stage}/{f.name}", pd.read_csv(f), pd.read_csv(g))
    for stage in ("foundation", "evaluate_custom"):
        if (a / stage / "rows.parquet").exists():
            x, y = (pd.read_parquet(r / stage / "rows.parquet").sort_values(ROW_KEYS) for r in (a, b))
            ok &= _same(f"{stage}/rows.parquet", x, y)
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
