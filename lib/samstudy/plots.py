"""Figures of the study. Every function is pure: a tidy DataFrame in, a matplotlib ``Figure`` out.

Nothing is shown or saved here (the notebooks pass the figures to ``report.show_figure``). Titles and
legends use the arm / model labels found in the tables, which come from each model's own
``model_label`` (LiteMedSAM is never called SAM). IoU axes run from 0 to 1; error bars are the 95%
bootstrap intervals of the tables (``compare.ci_table`` etc.).
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def _wrap(label: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(str(label), width)) or str(label)


def _figure(width: float, height: float) -> tuple[Figure, "object"]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def _yerr(df: pd.DataFrame, value: str = "mean") -> np.ndarray | None:
    if not {"lo", "hi"} <= set(df.columns):
        return None
    lo = (df[value] - df["lo"]).clip(lower=0).fillna(0).to_numpy()
    hi = (df["hi"] - df[value]).clip(lower=0).fillna(0).to_numpy()
    return np.vstack([lo, hi])


def grouped_bars(table: pd.DataFrame, group: str, series: str = "arm", value: str = "mean",
                 title: str = "", ylabel: str = "mean IoU", ylim: tuple[float, float] | None = (0.0, 1.0),
                 group_order: Sequence[str] | None = None) -> Figure:
    """Bars of ``value`` per ``group`` (x) and ``series`` (colour), with ``lo``/``hi`` error bars if present.

    ``table``: long format, one row per (group, series); an ``n`` column is written under the groups.
    """
    groups = list(group_order) if group_order is not None else list(dict.fromkeys(table[group]))
    names = list(dict.fromkeys(table[series]))
    fig, ax = _figure(max(6.0, 0.9 * len(groups) * max(1, len(names)) * 0.45 + 2), 4.2)
    width = 0.8 / max(1, len(names))
    x = np.arange(len(groups))
    for i, name in enumerate(names):
        d = table[table[series] == name].set_index(group).reindex(groups).reset_index()
        ax.bar(x + (i - (len(names) - 1) / 2) * width, d[value].to_numpy(float), width,
               yerr=_yerr(d, value), capsize=2, label=_wrap(name, 40), color=PALETTE[i % len(PALETTE)])
    ticks = groups
    if "n" in table.columns:
        n = table.drop_duplicates(group).set_index(group)["n"].reindex(groups)
        ticks = [f"{g}\n(n={int(k)})" if pd.notna(k) else str(g) for g, k in zip(groups, n)]
    ax.set_xticks(x, ticks, rotation=30 if len(groups) > 6 else 0, ha="right" if len(groups) > 6 else "center",
                  fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def category_bars(ci: pd.DataFrame, title: str = "mIoU per category") -> Figure:
    """Per-category mIoU bars for the arms; ``ci``: ``compare.ci_table(..., by="category")``."""
    return grouped_bars(ci, "category", title=title, ylabel="mean IoU (per object)")


def size_bucket_bars(ci: pd.DataFrame, title: str = "mIoU by COCO size bucket") -> Figure:
    """mIoU per size bucket (small < 32², medium < 96², large) per arm; ``ci`` by ``size_bucket``."""
    order = [b for b in ("all", "small", "medium", "large") if b in set(ci["size_bucket"])]
    return grouped_bars(ci, "size_bucket", title=title, ylabel="mean IoU (per object)", group_order=order)


def boundary_iou_bars(ci: pd.DataFrame, title: str = "Boundary IoU per category") -> Figure:
    """Boundary IoU (d = 2% of the image diagonal) per category per arm; ``ci`` by ``category``."""
    return grouped_bars(ci, "category", title=title, ylabel="mean boundary IoU (per object)")


def buffer_sweep_curve(sweep: pd.DataFrame, title: str = "Loose boxes: mIoU against the box buffer b",
                       marked_buffer: float | None = 0.2) -> Figure:
    """mIoU against the loose-box buffer b (0 = tight box) per model, with 95% bands.

    ``sweep``: ``compare.buffer_sweep_table`` (``model_label, buffer, n, mean, lo, hi``).
    ``marked_buffer``: the headline loose arm's b (``compare.loose_buffer``), marked by a dotted
    line; ``None``: no mark.
    """
    fig, ax = _figure(6.5, 4.0)
    for i, (label, d) in enumerate(sweep.groupby("model_label", sort=False)):
        d = d.sort_values("buffer")
        c = PALETTE[i % len(PALETTE)]
        ax.plot(d["buffer"], d["mean"], "o-", color=c, label=_wrap(label, 40))
        if d[["lo", "hi"]].notna().all().all():
            ax.fill_between(d["buffer"], d["lo"], d["hi"], color=c, alpha=0.2)
    if marked_buffer is not None:
        ax.axvline(marked_buffer, color="grey", ls=":", lw=1)
        ax.text(marked_buffer, 0.02, f" b = {marked_buffer:g} (study's loose box)", fontsize=8, color="grey",
                transform=ax.get_xaxis_transform())
    ax.set_xlabel("box buffer b (width and height each grown by b)")
    ax.set_ylabel("mean IoU (per object)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return fig


def click_curves(curves: pd.DataFrame, title: str = "IoU against the number of simulated clicks (RITM protocol)",
                 reference: pd.DataFrame | None = None) -> Figure:
    """mIoU after each click per (dataset, model, click mode); ``curves``: ``compare.click_curve_table``.

    ``reference``: optional ``label, noc90`` rows drawn as markers at IoU 0.9 (published NoC@90).
    """
    fig, ax = _figure(7.0, 4.2)
    keys = ["dataset", "model_label", "prompt_mode", "multimask"]
    for i, (k, d) in enumerate(curves.groupby(keys, sort=True)):
        ax.plot(d["click"], d["mean"], "o-", ms=3, color=PALETTE[i % len(PALETTE)],
                label=_wrap(f"{k[0]}: {k[1]}, {k[2]}", 48))
    for thr in (0.85, 0.9):
        ax.axhline(thr, color="grey", ls=":", lw=1)
    if reference is not None:
        for j, r in enumerate(reference.itertuples()):
            ax.plot([r.noc90], [0.9], marker="*", ms=11, ls="none", color=PALETTE[(j + 4) % len(PALETTE)],
                    label=_wrap(f"published NoC@90: {r.label}", 48))
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mean IoU (per object)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", frameon=False)
    return fig


def paired_diff_plot(diffs: pd.DataFrame, by: str = "category",
                     title: str = "Paired differences of mIoU (95% bootstrap CI, resampled by image)") -> Figure:
    """Forest plot of ``compare.paired_diff_table``: one row per (comparison, group), 0 marked."""
    d = diffs.reset_index(drop=True)
    fig, ax = _figure(7.5, max(2.5, 0.28 * len(d) + 1.2))
    y = np.arange(len(d))[::-1]
    comps = list(dict.fromkeys(d["comparison"]))
    for i, comp in enumerate(comps):
        m = (d["comparison"] == comp).to_numpy()
        ax.errorbar(d.loc[m, "diff"], y[m], xerr=_yerr(d[m], "diff"), fmt="o", ms=4, capsize=2,
                    color=PALETTE[i % len(PALETTE)], label=_wrap(comp, 60))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, [f"{g} (n={n})" for g, n in zip(d[by], d["n"])], fontsize=7)
    ax.set_xlabel("difference of mean IoU (a − b)")
    ax.set_ylabel(f"{by} (objects)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def policy_gap_bars(gap: pd.DataFrame, title: str = "What the labeling policy costs each arm") -> Figure:
    """mIoU against raw and policy ground truth per arm; ``gap``: ``compare.policy_gap_table``."""
    long = pd.concat([gap[["arm", "n"]].assign(series="raw ground truth", mean=gap["mIoU raw GT"]),
                      gap[["arm", "n"]].assign(series="policy ground truth", mean=gap["mIoU policy GT"])])
    return grouped_bars(long, "arm", series="series", title=title, ylabel="mean IoU (per object)")


def training_curves(history: pd.DataFrame, x: str = "epoch", title: str = "Custom model training") -> Figure:
    """Every numeric column of ``history`` (losses, validation IoU...) against ``x``: losses left, IoU right."""
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax_l, ax_r = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    num = [c for c in history.columns if c != x and pd.api.types.is_numeric_dtype(history[c])]
    for i, c in enumerate(num):
        ax = ax_l if "loss" in c.lower() else ax_r
        d = history[[x, c]].dropna()
        ax.plot(d[x], d[c], "o-" if len(d) < 30 else "-", ms=3, label=c, color=PALETTE[i % len(PALETTE)])
    ax_l.set_title("losses", fontsize=10)
    ax_l.set_ylabel("training loss")
    ax_r.set_title("other metrics (e.g. validation IoU)", fontsize=10)
    ax_r.set_ylabel("value (IoU in [0, 1])")
    for ax in (ax_l, ax_r):
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    return fig


def dataset_overview(stats: pd.DataFrame, title: str = "Objects per category and split") -> Figure:
    """Stacked size-bucket counts per category, one panel per split; ``stats``: ``compare.dataset_stats``."""
    splits = list(dict.fromkeys(stats["split"]))
    fig = Figure(figsize=(max(6.0, 3.2 * len(splits) + 2), 3.8), layout="constrained")
    for i, split in enumerate(splits):
        ax = fig.add_subplot(1, len(splits), i + 1)
        d = stats[stats["split"] == split]
        bottom = np.zeros(len(d))
        for j, b in enumerate(("small", "medium", "large")):
            ax.bar(d["category"], d[b], bottom=bottom, label=b, color=PALETTE[j])
            bottom += d[b].to_numpy(float)
        ax.set_title(f"{split}: {int(d['objects'].sum())} objects, {int(d['images'].max() if len(d) else 0)}+ images",
                     fontsize=9)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.set_ylabel("objects")
        ax.set_xlabel("category")
        if i == 0:
            ax.legend(fontsize=7, frameon=False, title="size", title_fontsize=7)
    fig.suptitle(title, fontsize=11)
    return fig


def effort_bars(summary: pd.DataFrame, polygon_s: float,
                title: str = "Modelled annotator seconds per object (95% CI, images resampled)") -> Figure:
    """Horizontal bars of mean modelled seconds per assistant, one panel per IoU target, the manual
    polygon time marked; ``summary``: ``effort.effort_summary`` (no ``by``)."""
    targets = sorted(summary["target"].unique())
    n = summary.groupby("target").size().max() if len(summary) else 1
    fig = Figure(figsize=(6.0 * max(1, len(targets)), 0.45 * n + 1.6), layout="constrained")
    for i, t in enumerate(targets):
        ax = fig.add_subplot(1, len(targets), i + 1)
        d = summary[summary["target"] == t].iloc[::-1]
        y = np.arange(len(d))
        err = _yerr(d, "seconds")
        ax.barh(y, d["seconds"].to_numpy(float), xerr=err, capsize=2,
                color=[PALETTE[j % len(PALETTE)] for j in range(len(d))][::-1])
        ax.set_yticks(y, [_wrap(a, 44) for a in d["assistant"]], fontsize=7)
        ax.axvline(polygon_s, color="grey", ls=":", lw=1)
        ax.set_xlabel("modelled seconds per object")
        ax.set_title(f"IoU target {t:g} (polygon by hand: {polygon_s:g} s)", fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    fig.suptitle(title, fontsize=11)
    return fig


def done_curves(curve: pd.DataFrame, polygon_s: float, target: float,
                title: str = "Share of objects done against modelled seconds per object") -> Figure:
    """Step curves of ``effort.done_curve`` (one per assistant), the polygon time marked."""
    fig, ax = _figure(7.0, 4.2)
    for i, (name, d) in enumerate(curve.groupby("assistant", sort=True)):
        ax.step(d["seconds"], d["share"], where="post", color=PALETTE[i % len(PALETTE)], label=_wrap(name, 48))
    ax.axvline(polygon_s, color="grey", ls=":", lw=1)
    ax.set_xlabel("modelled seconds per object")
    ax.set_ylabel(f"share of objects at IoU >= {target:g}")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right", frameon=False)
    return fig
