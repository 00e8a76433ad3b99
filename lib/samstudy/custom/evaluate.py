"""Tables of the custom model's evaluation (notebook 03): the refinement's paired gain and the
corrective clicks' gain, each with an image-bootstrap CI (:func:`samstudy.stats.bootstrap_paired_diff_ci`).

Both take result rows (:mod:`samstudy.results`, one row per object x prompt x model x click) of the
``custom_stage1`` / ``custom_stage2`` arms, ``status == "ok"``, primary ground truth.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..stats import bootstrap_paired_diff_ci

__all__ = ["refinement_gain_table", "click_gain_table"]


def _paired(rows: pd.DataFrame, a: pd.Series, b: pd.Series, metric: str, rng: np.random.Generator,
            n_boot: int) -> dict[str, float]:
    both = pd.concat([a.rename("a"), b.rename("b")], axis=1, join="inner").dropna()
    groups = both.index.get_level_values("image_id").to_numpy()
    d, lo, hi = bootstrap_paired_diff_ci(both["a"].to_numpy(), both["b"].to_numpy(), rng, n_boot=n_boot, groups=groups)
    return {"metric": metric, "objects": len(both), "a": float(both["a"].mean()), "b": float(both["b"].mean()),
            "diff": d, "ci_lo": lo, "ci_hi": hi, "better": float((both["a"] > both["b"]).mean()),
            "worse": float((both["a"] < both["b"]).mean())}


def _ok(rows: pd.DataFrame) -> pd.DataFrame:
    ok = rows[rows["status"] == "ok"]
    return ok[ok["gt_variant"] == "primary"] if "gt_variant" in ok else ok


def refinement_gain_table(rows: pd.DataFrame, rng: np.random.Generator, n_boot: int = 2000,
                          mode: str = "extreme_points", metrics: Sequence[str] = ("iou", "boundary_iou")
                          ) -> pd.DataFrame:
    """Stage 1+2 (``a``) minus stage 1 (``b``) per metric on the same objects of ``mode``: means,
    paired difference with its 95% image-bootstrap CI, and the shares of objects better / worse."""
    ok = _ok(rows)
    ok = ok[(ok["prompt_mode"] == mode) & (ok["click"] == 0)]
    key = ["dataset", "image_id", "ann_id"]
    by = {m: ok[ok["model"] == m].set_index(key) for m in ("custom_stage1", "custom_stage2")}
    return pd.DataFrame([_paired(ok, by["custom_stage2"][m], by["custom_stage1"][m], m, rng, n_boot)
                         for m in metrics])


def click_gain_table(rows: pd.DataFrame, rng: np.random.Generator, n_boot: int = 2000,
                     clicks: Sequence[int] = (1, 2, 3)) -> pd.DataFrame:
    """Per custom arm and ``k`` in ``clicks``: mIoU after ``k`` corrective clicks (``a``) minus the
    extreme-point start (``b``, the sequence's click 0) on the same objects, with its CI."""
    ok = _ok(rows)
    ok = ok[ok["prompt_mode"].str.startswith("clicks[")]
    key = ["dataset", "image_id", "ann_id"]
    out = []
    for model, g in ok.groupby("model"):
        start = g[g["click"] == 0].set_index(key)["iou"]
        for k in clicks:
            after = g[g["click"] == k].set_index(key)["iou"]
            if len(after):
                out.append({"model": model, "clicks": k, **_paired(g, after, start, "iou", rng, n_boot)})
    return pd.DataFrame(out)
