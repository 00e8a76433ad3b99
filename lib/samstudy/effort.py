"""Annotator effort: **modelled** seconds per object to reach a target IoU, for every assistant.

The times are a model built on published per-action costs, not measured with annotators here
(costs, their defaults and sources: :class:`samstudy.config.EffortConfig`).

Definitions
-----------
- **Assistant**: one way of annotating an object with a model: a click sequence
  (``clicks[start=...]``: a start prompt, then corrective RITM clicks with the previous mask fed
  back; see :mod:`samstudy.engine`), or a one-shot prompt without corrections (e.g. the custom
  model's extreme points while it takes no clicks), per ``model_label`` and ``multimask``
  selection. Every arm with such rows is an assistant; none is a special case.
- **Seconds per object** for target ``t``::

      seconds = fixed_s + clicks * click_s + (not reached) * fallback_s

  ``fixed_s``: the start prompt's own cost -- tight box ``tight_box_s``, loose or jittered box
  ``loose_box_s``, extreme points (with or without their box) ``extreme_points_s``, 0 for a
  click start (its first click is counted in ``clicks``); ``box_center_point`` is a tight box
  plus one click, ``center_point`` one click.
  ``clicks``: every click the annotator makes. A click sequence stops at the first step whose
  IoU is ``>= t``: ``clicks = k`` for the first such click index ``k`` (0 when the start prompt
  alone reaches ``t``; for ``start=click`` the first click is click 1). Unreached within the
  limit ``L = min(max_clicks, sequence length)``: ``clicks = L`` (the annotator tried them all).
  ``fallback_s``: ``polygon_s`` (draw it from scratch) or ``edit_s`` (``fallback``).
- **Manual polygon**: ``polygon_s`` for every object (the baseline assistant).
- **Break-even**: an object on which an assistant is slower than drawing the polygon by hand
  (``seconds > polygon_s``).

Per-object table (:func:`effort_table`): one row per object x assistant x target with
``dataset, image_id, ann_id, category, size_bucket, area, assistant, model_label, prompt_mode,
multimask, target, click_limit, fixed_s, clicks, reached, seconds, slower_than_manual``.
Because ``seconds`` is linear in the costs, :func:`seconds` recomputes it for other costs
(:func:`sensitivity_table`) without the IoU rows.

Confidence intervals: 95% percentile bootstrap resampling images (objects of one image are not
independent; :func:`samstudy.stats.bootstrap_mean_ci` with ``groups``).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

from .config import EffortConfig
from .prompts import parse_modes
from .results import PRIMARY
from .stats import bootstrap_mean_ci

__all__ = ["MANUAL", "COST_SOURCES", "cost_table", "prompt_cost", "assistant_label", "effort_table", "seconds", "effort_summary",
           "done_curve", "break_even_table", "sensitivity_table"]

MANUAL = "manual polygon"
_OBJECT = ["dataset", "image_id", "ann_id"]
_INFO = ["category", "size_bucket", "area"]
_GROUP = ["model_label", "prompt_mode", "multimask"]
_START_NAMES = {"box": "tight box", "loose_box": "loose box", "extreme_points": "extreme points"}


# Where each default cost comes from (the report prints this beside the values in use).
COST_SOURCES = {
    "extreme_points_s": "Papadopoulos et al., ICCV 2017: extreme clicking 'only 7s per box'",
    "tight_box_s": "Papadopoulos et al., ICCV 2017: '35s for one high-quality box' (ILSVRC, Su et al. 2012)",
    "loose_box_s": "assumption (no published figure for a loose box): priced as extreme clicking's fast box",
    "click_s": "derived from Papadopoulos et al. 2017 (4 extreme clicks in 7 s); Benenson et al. 2019's "
               "per-click time was not verified here",
    "polygon_s": "Lin et al., ECCV 2014 (COCO): 22 worker-hours per 1,000 segmentations = 79.2 s",
    "edit_s": "no published figure: defaults to the polygon (editing never costs more than redrawing)",
}


def cost_table(costs: EffortConfig) -> pd.DataFrame:
    """``cost, seconds, default, source``: the costs in use beside their defaults and sources."""
    default = EffortConfig()
    return pd.DataFrame([{"cost": k, "seconds": float(getattr(costs, k)), "default": float(getattr(default, k)),
                          "source": src} for k, src in COST_SOURCES.items()])


def prompt_cost(mode_key: str, costs: EffortConfig) -> tuple[float, int]:
    """``(fixed seconds, clicks)`` of a prompt mode's start (module docstring); ``ValueError`` for a
    mode without a modelled cost."""
    mode = parse_modes([mode_key])[0]
    name = mode.name
    if name == "clicks":
        start = mode.params["start"]
        name = {"click": "center_point", "box": "tight_box", "loose_box": "loose_box",
                "extreme_points": "extreme_points"}[start]
        if start == "click":
            return 0.0, 0  # the first click is click 1 of the sequence, counted with the others
    table = {"tight_box": (costs.tight_box_s, 0), "loose_box": (costs.loose_box_s, 0),
             "jitter_box": (costs.loose_box_s, 0), "extreme_points": (costs.extreme_points_s, 0),
             "extreme_points_box": (costs.extreme_points_s, 0), "center_point": (0.0, 1),
             "box_center_point": (costs.tight_box_s, 1)}
    if name not in table:
        raise ValueError(f"no modelled annotation cost for prompt mode {mode_key!r}")
    s, k = table[name]
    return float(s), int(k)


def assistant_label(model_label: str, mode_key: str, multimask: str) -> str:
    """How tables name an assistant, e.g. ``"LiteMedSAM ..., tight box + clicks"``."""
    mode = parse_modes([mode_key])[0]
    if mode.name == "clicks":
        start = mode.params["start"]
        how = "clicks only" if start == "click" else f"{_START_NAMES[start]} + clicks"
        if start == "loose_box":
            how = f"loose box b={mode.params['buffer']:g} + clicks"
    else:
        shown = f"loose box b={mode.params['buffer']:g}" if mode.name == "loose_box" else mode.key.replace("_", " ")
        how = f"{shown} (no clicks)"
    mm = "" if multimask in ("single", "first_best_of_3") else f" [{multimask}]"
    return f"{model_label}, {how}{mm}"


def _first_hit(clicks: np.ndarray, ious: np.ndarray, target: float, limit: int) -> int | None:
    ok = (clicks <= limit) & (ious >= target)
    return int(clicks[ok].min()) if ok.any() else None


def effort_table(rows: pd.DataFrame, costs: EffortConfig, gt_variant: str = PRIMARY) -> pd.DataFrame:
    """Per object x assistant x target: clicks, reached and modelled seconds (module docstring).

    ``rows``: result rows (:mod:`samstudy.results` schema) of any arms. Used: status ``ok`` rows of
    ``gt_variant``; click sequences (every ``clicks[...]`` mode) and the one-shot modes in
    ``costs.one_shot_modes`` (``click == 0``). Only objects every assistant of their dataset scored
    are kept, so assistants are compared on the same objects; the manual polygon is added for them.
    """
    r = rows[(rows["status"] == "ok") & (rows["gt_variant"] == gt_variant)]
    one_shot = {m.key for m in parse_modes(list(costs.one_shot_modes))}
    is_click = r["prompt_mode"].str.startswith("clicks")
    r = r[is_click | (r["prompt_mode"].isin(one_shot) & (r["click"] == 0))]
    out = []
    for (label, mode, mm), g in r.groupby(_GROUP, sort=True):
        fixed, prompt_clicks = prompt_cost(mode, costs)
        seq = mode.startswith("clicks")
        name = assistant_label(label, mode, mm)
        for key, o in g.groupby(_OBJECT, sort=True):
            clicks_arr, ious = o["click"].to_numpy(int), o["iou"].to_numpy(float)
            limit = min(int(costs.max_clicks), int(clicks_arr.max())) if seq else 0
            info = o.iloc[0]
            for t in costs.targets:
                hit = _first_hit(clicks_arr, ious, float(t), limit)
                used = (limit if hit is None else hit) + prompt_clicks
                out.append({**dict(zip(_OBJECT, key)), **{c: info[c] for c in _INFO}, "assistant": name,
                            "model_label": label, "prompt_mode": mode, "multimask": mm, "target": float(t),
                            "click_limit": limit, "fixed_s": fixed, "clicks": used, "reached": hit is not None})
    df = pd.DataFrame(out)
    if df.empty:
        return df
    n_assist = df.groupby("dataset")["assistant"].nunique()
    per_obj = df.groupby(_OBJECT)["assistant"].nunique()
    full = per_obj[per_obj.to_numpy() == n_assist.reindex(per_obj.index.get_level_values("dataset")).to_numpy()]
    df = df.set_index(_OBJECT).loc[full.index].reset_index()
    manual = df.drop_duplicates(_OBJECT + ["target"])[_OBJECT + _INFO + ["target"]].assign(
        assistant=MANUAL, model_label="", prompt_mode="manual", multimask="", click_limit=0, fixed_s=0.0,
        clicks=0, reached=False)
    df = pd.concat([df, manual], ignore_index=True)
    df["seconds"] = seconds(df, costs)
    df["slower_than_manual"] = df["seconds"] > float(costs.polygon_s)
    return df


def seconds(table: pd.DataFrame, costs: EffortConfig) -> np.ndarray:
    """Modelled seconds of each row of :func:`effort_table` under ``costs`` (the manual rows take
    ``polygon_s``); float64 ``(len(table),)``."""
    fallback = float(costs.polygon_s if costs.fallback == "polygon" else costs.edit_s)
    s = (table["fixed_s"].to_numpy(float) + table["clicks"].to_numpy(float) * float(costs.click_s)
         + np.where(table["reached"].to_numpy(bool), 0.0, fallback))
    return np.where(table["assistant"].to_numpy() == MANUAL, float(costs.polygon_s), s)


def _ci(g: pd.DataFrame, value: str, rng: np.random.Generator, n_boot: int) -> tuple[float, float, float]:
    v = g[value].to_numpy(float)
    if len(v) < 2:
        return (float(v.mean()) if len(v) else float("nan")), float("nan"), float("nan")
    groups = (g["dataset"].astype(str) + ":" + g["image_id"].astype(str)).to_numpy()
    return bootstrap_mean_ci(v, rng, n_boot=n_boot, groups=groups)


def effort_summary(table: pd.DataFrame, rng: np.random.Generator, n_boot: int = 2000,
                   by: str | None = None) -> pd.DataFrame:
    """Mean modelled seconds per object per ``target, dataset, assistant`` (and ``by``, e.g.
    ``category`` or ``size_bucket``) with the 95% bootstrap CI over images: columns ``target,
    dataset, [by], assistant, n, seconds, lo, hi, reached (%), slower than manual (%), mean clicks``;
    sorted by target, dataset, group and seconds (the ranking)."""
    keys = ["target", "dataset"] + ([by] if by else []) + ["assistant"]
    out = []
    for key, g in table.groupby(keys, sort=True):
        mean, lo, hi = _ci(g, "seconds", rng, n_boot)
        out.append({**dict(zip(keys, key)), "n": len(g), "seconds": mean, "lo": lo, "hi": hi,
                    "reached (%)": 100.0 * float(g["reached"].mean()),
                    "slower than manual (%)": 100.0 * float(g["slower_than_manual"].mean()),
                    "mean clicks": float(g["clicks"].mean())})
    res = pd.DataFrame(out)
    return res.sort_values(keys[:-1] + ["seconds"], kind="stable").reset_index(drop=True) if len(res) else res


def done_curve(table: pd.DataFrame, target: float, grid: Sequence[float] | None = None) -> pd.DataFrame:
    """Share of objects done within ``s`` seconds each, per assistant (an empirical CDF):
    ``assistant, seconds, share`` on ``grid`` (default: every distinct seconds value and 0)."""
    t = table[np.isclose(table["target"], target)]
    xs = np.unique(np.concatenate([[0.0], t["seconds"].to_numpy(float)])) if grid is None else np.asarray(grid, float)
    out = []
    for name, g in t.groupby("assistant", sort=True):
        v = np.sort(g["seconds"].to_numpy(float))
        share = np.searchsorted(v, xs, side="right") / len(v)
        out.append(pd.DataFrame({"assistant": name, "seconds": xs, "share": share}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["assistant", "seconds", "share"])


def break_even_table(table: pd.DataFrame, target: float, by: str = "size_bucket") -> pd.DataFrame:
    """For which objects each assistant is slower than the manual polygon: per ``assistant`` and
    ``by``, ``n``, ``slower than manual (%)`` and ``seconds saved`` (mean of polygon time minus the
    assistant's; negative = the assistant costs time). Manual rows are left out."""
    t = table[np.isclose(table["target"], target) & (table["assistant"] != MANUAL)]
    manual = table[np.isclose(table["target"], target) & (table["assistant"] == MANUAL)].set_index(_OBJECT)["seconds"]
    t = t.assign(saved=manual.reindex(pd.MultiIndex.from_frame(t[_OBJECT])).to_numpy(float) - t["seconds"].to_numpy(float))
    g = t.groupby(["assistant", by], sort=True)
    return g.agg(n=("seconds", "size"), slower=("slower_than_manual", "mean"), saved=("saved", "mean")).reset_index() \
        .rename(columns={"slower": "slower than manual (%)", "saved": "seconds saved"}) \
        .assign(**{"slower than manual (%)": lambda d: 100.0 * d["slower than manual (%)"]})


def sensitivity_table(table: pd.DataFrame, costs: EffortConfig, target: float,
                      click_s_grid: Sequence[float] | None = None,
                      polygon_s_grid: Sequence[float] | None = None) -> pd.DataFrame:
    """How the ranking changes with the click and polygon times: one row per ``(click_s, polygon_s)``
    with ``ranking`` (assistants by mean modelled seconds, fastest first, with their means) and
    ``fastest``. Other costs stay as in ``costs``; the fallback follows ``costs.fallback`` (with
    ``polygon`` the fallback moves with ``polygon_s``)."""
    t = table[np.isclose(table["target"], target)]
    out = []
    for cs in (costs.click_s_grid if click_s_grid is None else click_s_grid):
        for ps in (costs.polygon_s_grid if polygon_s_grid is None else polygon_s_grid):
            c = dataclasses.replace(costs, click_s=float(cs), polygon_s=float(ps))
            means = t.assign(s=seconds(t, c)).groupby("assistant")["s"].mean().sort_values(kind="stable")
            out.append({"click_s": float(cs), "polygon_s": float(ps), "fastest": means.index[0] if len(means) else "",
                        "ranking": " < ".join(f"{a} ({v:.0f} s)" for a, v in means.items())})
    return pd.DataFrame(out)
