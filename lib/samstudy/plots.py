"""Figures of the study. Every function is pure: a tidy DataFrame in, a matplotlib ``Figure`` out.

Drawn with seaborn (``barplot``, ``lineplot``, its ``deep`` palette and ``whitegrid`` style, applied
per figure through ``seaborn.axes_style``, never globally) on a ``Figure`` that pyplot does not
manage. Nothing is shown or saved here (the notebooks pass the figures to ``report.show_figure``).
Titles and legends use the arm / model labels found in the tables, which come from each model's own
``model_label`` (LiteMedSAM is never called SAM). IoU axes run from 0 to 1; error bars are the 95%
bootstrap intervals of the tables (``compare.ci_table`` etc.), never recomputed by seaborn
(``errorbar=None``): the tables' intervals resample images, seaborn's would resample objects.
"""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

STYLE = "whitegrid"
MAX_VERTICAL_GROUPS = 6  # more groups than this: horizontal bars (see grouped_bars)


def palette(n: int) -> list[tuple[float, float, float]]:
    """``n`` colours of seaborn's ``deep`` palette (cycled), as RGB tuples in [0, 1]."""
    return sns.color_palette("deep", max(1, n))


def _wrap(label: str, width: int = 28) -> str:
    return "\n".join(textwrap.wrap(str(label), width)) or str(label)


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, "object"]:
    """A constrained-layout figure with ``ncols`` axes in seaborn's style (axes only: one axes
    object for ``ncols == 1``, else a list)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    with sns.axes_style(STYLE):
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes[0] if ncols == 1 else axes


def _yerr(df: pd.DataFrame, value: str = "mean") -> np.ndarray | None:
    if not {"lo", "hi"} <= set(df.columns):
        return None
    lo = (df[value] - df["lo"]).clip(lower=0).fillna(0).to_numpy()
    hi = (df["hi"] - df[value]).clip(lower=0).fillna(0).to_numpy()
    return np.vstack([lo, hi])


def grouped_bars(table: pd.DataFrame, group: str, series: str = "arm", value: str = "mean",
                 title: str = "", ylabel: str = "mean IoU", ylim: tuple[float, float] | None = (0.0, 1.0),
                 group_order: Sequence[str] | None = None) -> Figure:
    """Bars of ``value`` per ``group`` and ``series`` (hue), with ``lo``/``hi`` error bars if present.

    ``table``: long format, one row per (group, series); an ``n`` column is written beside the groups
    (and ``1 image`` when an ``images`` column says every object of the group sits in one image:
    its interval is missing, not zero). Up to :data:`MAX_VERTICAL_GROUPS` groups stand on the x axis;
    more (COCO's 80 categories) lie on the y axis, so the figure grows in height at a fixed, readable
    width instead of shrinking its text to fit a page.
    """
    groups = list(group_order) if group_order is not None else list(dict.fromkeys(table[group]))
    names = list(dict.fromkeys(table[series]))
    horizontal = len(groups) > MAX_VERTICAL_GROUPS
    n_series = max(1, len(names))  # inches per group below: one bar per series
    size = ((10.0, (0.16 * n_series + 0.12) * len(groups) + 1.8) if horizontal
            else (max(6.0, (0.22 * n_series + 0.15) * len(groups) + 3.5), 4.2))
    fig, ax = _figure(*size)
    data = table.assign(**{group: table[group].astype(str), series: table[series].astype(str)})
    colours = dict(zip(names, palette(len(names))))
    xy = {"x": value, "y": group} if horizontal else {"x": group, "y": value}
    sns.barplot(data=data, **xy, hue=series, order=[str(g) for g in groups], orient="h" if horizontal else "v",
                hue_order=[str(n) for n in names], palette=colours, errorbar=None, ax=ax, width=0.8)
    if {"lo", "hi"} <= set(data.columns):  # the tables' intervals, drawn at the centre of each bar
        for name, bars in zip(names, list(ax.containers)):
            d = data[data[series] == str(name)].set_index(group)
            present = [str(g) for g in groups if str(g) in d.index and pd.notna(d.loc[str(g), value])]
            d = d.reindex(present).reset_index()
            if horizontal:
                pos = [r.get_y() + r.get_height() / 2 for r in bars][:len(present)]
                ax.errorbar(d[value].to_numpy(float), pos, xerr=_yerr(d, value), fmt="none", ecolor="black",
                            elinewidth=1, capsize=2)
            else:
                pos = [r.get_x() + r.get_width() / 2 for r in bars][:len(present)]
                ax.errorbar(pos, d[value].to_numpy(float), yerr=_yerr(d, value), fmt="none", ecolor="black",
                            elinewidth=1, capsize=2)
    ticks = [str(g) for g in groups]
    if "n" in table.columns:
        first = table.drop_duplicates(group).set_index(group)
        n = first["n"].reindex(groups)
        one = (first["images"].reindex(groups) == 1) if "images" in first.columns else pd.Series(False, index=groups)
        sep = " " if horizontal else "\n"
        ticks = [f"{g}{sep}(n={int(k)}{', 1 image' if o else ''})" if pd.notna(k) else str(g)
                 for g, k, o in zip(groups, n, one)]
    if horizontal:
        ax.set_yticks(range(len(groups)), ticks, fontsize=9)
        ax.set_ylabel("")
        ax.set_xlabel(ylabel)
        if ylim:
            ax.set_xlim(*ylim)
    else:
        ax.set_xticks(range(len(groups)), ticks, fontsize=9)
        ax.set_xlabel("")
        ax.set_ylabel(ylabel)
        if ylim:
            ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=11)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles, [_wrap(n, 40) for n in names], fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0),
              frameon=False)
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
    labels = list(dict.fromkeys(sweep["model_label"]))
    colours = dict(zip(labels, palette(len(labels))))
    sns.lineplot(data=sweep.sort_values("buffer"), x="buffer", y="mean", hue="model_label", hue_order=labels,
                 palette=colours, marker="o", errorbar=None, ax=ax)
    for label, d in sweep.groupby("model_label", sort=False):
        d = d.sort_values("buffer")
        if d[["lo", "hi"]].notna().all().all():
            ax.fill_between(d["buffer"], d["lo"], d["hi"], color=colours[label], alpha=0.2, lw=0)
    if marked_buffer is not None:
        ax.axvline(marked_buffer, color="grey", ls=":", lw=1)
        ax.text(marked_buffer, 0.02, f" b = {marked_buffer:g} (study's loose box)", fontsize=8, color="grey",
                transform=ax.get_xaxis_transform())
    ax.set_xlabel("box buffer b (width and height each grown by b)")
    ax.set_ylabel("mean IoU (per object)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=11)
    handles, names = ax.get_legend_handles_labels()
    ax.legend(handles, [_wrap(n, 40) for n in names], fontsize=8, frameon=False)
    return fig


def click_curves(curves: pd.DataFrame, title: str = "IoU against the number of simulated clicks (RITM protocol)",
                 reference: pd.DataFrame | None = None) -> Figure:
    """mIoU after each click per (dataset, model, click mode); ``curves``: ``compare.click_curve_table``.

    ``reference``: optional ``label, noc90`` rows drawn as markers at IoU 0.9 (published NoC@90).
    """
    fig, ax = _figure(10.0, 4.6)
    keys = ["dataset", "model_label", "prompt_mode", "multimask"]
    d = curves.assign(curve=[_wrap(f"{k[0]}: {k[1]}, {k[2]}", 48) for k in zip(*(curves[c] for c in keys))])
    names = sorted(dict.fromkeys(d["curve"]))
    n_ref = 0 if reference is None else len(reference)
    colours = palette(len(names) + n_ref)
    sns.lineplot(data=d, x="click", y="mean", hue="curve", hue_order=names, palette=colours[:len(names)],
                 marker="o", markersize=4, errorbar=None, ax=ax)
    for thr in (0.85, 0.9):
        ax.axhline(thr, color="grey", ls=":", lw=1)
    if reference is not None:
        for j, r in enumerate(reference.itertuples()):
            ax.plot([r.noc90], [0.9], marker="*", ms=11, ls="none", color=colours[len(names) + j],
                    label=_wrap(f"published NoC@90: {r.label}", 48))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("number of clicks")
    ax.set_ylabel("mean IoU (per object)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # beside, never on, the curves
    return fig


def paired_diff_plot(diffs: pd.DataFrame, by: str = "category",
                     title: str = "Paired differences of mIoU (95% bootstrap CI, resampled by image)") -> Figure:
    """Forest plot of ``compare.paired_diff_table``: one row per (comparison, group), 0 marked;
    a group without an interval (one object, or every object in one image) is marked ``no CI``."""
    d = diffs.reset_index(drop=True)
    fig, ax = _figure(7.5, max(2.5, 0.28 * len(d) + 1.2))
    y = np.arange(len(d))[::-1]
    comps = list(dict.fromkeys(d["comparison"]))
    for comp, colour in zip(comps, palette(len(comps))):
        m = (d["comparison"] == comp).to_numpy()
        ax.errorbar(d.loc[m, "diff"], y[m], xerr=_yerr(d[m], "diff"), fmt="o", ms=4, capsize=2,
                    color=colour, label=_wrap(comp, 60))
    ax.axvline(0, color="black", lw=0.8)
    no_ci = d["lo"].isna() | d["hi"].isna() if {"lo", "hi"} <= set(d.columns) else pd.Series(False, index=d.index)
    ax.set_yticks(y, [f"{g} (n={n}{', no CI' if f else ''})" for g, n, f in zip(d[by], d["n"], no_ci)], fontsize=7)
    ax.set_xlabel("difference of mean IoU (a − b)")
    ax.set_ylabel(f"{by} (objects)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", visible=False)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def policy_gap_bars(gap: pd.DataFrame, title: str = "What the labeling policy costs each arm") -> Figure:
    """mIoU against raw and policy ground truth per arm; ``gap``: ``compare.policy_gap_table``."""
    long = pd.concat([gap[["arm", "n"]].assign(series="raw ground truth", mean=gap["mIoU raw GT"]),
                      gap[["arm", "n"]].assign(series="policy ground truth", mean=gap["mIoU policy GT"])])
    return grouped_bars(long, "arm", series="series", title=title, ylabel="mean IoU (per object)")


def training_curve_columns(history: pd.DataFrame, x: str = "epoch") -> dict[str, list[str]]:
    """Which columns of a training history go on which axes: ``loss`` (names containing ``loss``),
    ``iou`` (validation metrics: names starting ``val_``, values in [0, 1]) and ``lr`` (``lr`` or
    names starting ``lr``). Counters and clocks (``step``, ``seconds``...) and ``x`` are not drawn."""
    num = [c for c in history.columns if c != x and pd.api.types.is_numeric_dtype(history[c])]
    return {"loss": [c for c in num if "loss" in c.lower()],
            "iou": [c for c in num if c.lower().startswith("val_") and "loss" not in c.lower()],
            "lr": [c for c in num if c.lower() == "lr" or c.lower().startswith("lr_")]}


def training_curves(history: pd.DataFrame, x: str = "epoch", title: str = "Custom model training") -> Figure:
    """Training losses, validation IoU (axis 0 to 1) and, when recorded, the learning rate (log
    axis) against ``x``, each on its own axes (:func:`training_curve_columns`)."""
    cols = training_curve_columns(history, x)
    panels = [(k, cols[k]) for k in ("loss", "iou", "lr") if cols[k] or k != "lr"]
    fig, axes = _figure(4.2 * len(panels), 3.6, ncols=len(panels))
    names = {"loss": ("training losses", "training loss"), "iou": ("validation IoU", "mean IoU (validation objects)"),
             "lr": ("learning rate", "learning rate (log scale)")}
    for ax, (kind, columns) in zip(axes, panels):
        if columns:
            long = history.melt(id_vars=[x], value_vars=columns, var_name="series", value_name="value").dropna()
            sns.lineplot(data=long, x=x, y="value", hue="series", hue_order=columns, palette=palette(len(columns)),
                         marker="o" if len(history) < 30 else None, markersize=4, errorbar=None, ax=ax)
            ax.legend(fontsize=8, frameon=False)
        ax.set_title(names[kind][0], fontsize=10)
        ax.set_ylabel(names[kind][1])
        ax.set_xlabel(x)
        if kind == "iou":
            ax.set_ylim(0, 1)
        if kind == "lr" and columns:
            ax.set_yscale("log")
    fig.suptitle(title, fontsize=11)
    return fig


def dataset_overview(stats: pd.DataFrame, title: str = "Objects per category and split",
                     images: Mapping[str, int] | None = None) -> Figure:
    """Stacked size-bucket counts per category, one panel per split; ``stats``: ``compare.dataset_stats``.

    ``images``: ``{split: images holding an object}`` (``compare.split_image_counts``) for the panel
    titles; the per-category table cannot give it, since one image holds several categories.
    """
    splits = list(dict.fromkeys(stats["split"]))
    fig, axes = _figure(max(6.0, 3.6 * len(splits) + 1.5), 3.8, ncols=max(1, len(splits)))
    axes = axes if isinstance(axes, list) else [axes]
    colours = palette(3)
    for i, (split, ax) in enumerate(zip(splits, axes)):
        d = stats[stats["split"] == split]
        bottom = np.zeros(len(d))
        for j, b in enumerate(("small", "medium", "large")):
            ax.bar(d["category"], d[b], bottom=bottom, label=b, color=colours[j])
            bottom += d[b].to_numpy(float)
        n_img = f", {images[split]} images" if images and split in images else ""
        ax.set_title(f"{split}: {int(d['objects'].sum())} objects{n_img}", fontsize=9)
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        ax.set_ylabel("objects")
        ax.set_xlabel("category")
    axes[-1].legend(fontsize=7, frameon=False, title="size", title_fontsize=7, loc="upper left",
                    bbox_to_anchor=(1.0, 1.0))  # beside the last panel: never on a bar
    fig.suptitle(title, fontsize=11)
    return fig


def effort_bars(summary: pd.DataFrame, polygon_s: float,
                title: str = "Modelled annotator seconds per object (95% CI, images resampled)") -> Figure:
    """Horizontal bars of mean modelled seconds per assistant, one panel per IoU target, the manual
    polygon time marked; ``summary``: ``effort.effort_summary`` (no ``by``)."""
    targets = sorted(summary["target"].unique())
    n = summary.groupby("target").size().max() if len(summary) else 1
    several = "dataset" in summary.columns and summary["dataset"].nunique() > 1
    bar = (summary["dataset"].astype(str) + ": " + summary["assistant"].astype(str)) if several else summary["assistant"]
    summary = summary.assign(bar=bar.to_numpy())  # with several datasets, a bar names its dataset
    colours = dict(zip(dict.fromkeys(summary["assistant"]), palette(summary["assistant"].nunique())))
    fig = Figure(figsize=(6.0 * max(1, len(targets)), 0.45 * n + 1.6), layout="constrained")
    for i, t in enumerate(targets):
        ax = fig.add_subplot(1, len(targets), i + 1)
        d = summary[summary["target"] == t].iloc[::-1]
        y = np.arange(len(d))
        err = _yerr(d, "seconds")
        ax.barh(y, d["seconds"].to_numpy(float), xerr=err, capsize=2,
                color=[colours[a] for a in d["assistant"]])  # one colour per assistant in every panel
        ax.set_yticks(y, [_wrap(a, 44) for a in d["bar"]], fontsize=7)
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
    groups = list(curve.groupby("assistant", sort=True))
    for (name, d), colour in zip(groups, palette(len(groups))):
        ax.step(d["seconds"], d["share"], where="post", color=colour, label=_wrap(name, 48))
    ax.axvline(polygon_s, color="grey", ls=":", lw=1)
    ax.set_xlabel("modelled seconds per object")
    ax.set_ylabel(f"share of objects at IoU >= {target:g}")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # beside, never on, the curves
    return fig


def _learning_arm_curve(ax: "object", label: str, colour: tuple[float, float, float], runs: pd.DataFrame,
                        summary: pd.DataFrame, fit: Mapping[str, float] | None) -> tuple[float, list["object"]]:
    """One arm of :func:`learning_curve` in ``colour``: its seeds' runs (small points), the mean per
    fraction with its interval, and the fit (solid over the measured range, dashed to ``target_n``,
    the projection with its interval). Returns the largest ``n`` drawn and the arm's legend handles
    (the mean, then the fit)."""
    ax.scatter(runs["n_train_objects"], runs["mIoU"], s=12, alpha=0.55, color=colour, lw=0, zorder=3)
    s = summary.sort_values("n_train_objects")
    handles = [ax.errorbar(s["n_train_objects"], s["mIoU"], fmt="o", color=colour, capsize=3, ms=6, zorder=4,
                           yerr=_yerr(s.rename(columns={"ci_lo": "lo", "ci_hi": "hi"}), "mIoU"),
                           label=_wrap(f"{label}: mean over seeds (95% CI)", 48))]
    x_hi = float(runs["n_train_objects"].max())
    if fit is None or not np.isfinite(fit.get("a", np.nan)):
        return x_hi, handles
    a, b, lo, hi, target = (float(fit[k]) for k in ("a", "b", "n_min", "n_max", "target_n"))
    inside = np.geomspace(lo, hi, 100)
    handles += ax.plot(inside, 1 - a * inside ** -b, color=colour, lw=1.5, label=f"  power law 1 - {a:.3g} n^-{b:.3g}")
    if target > hi:
        beyond = np.geomspace(hi, target, 100)
        ax.plot(beyond, 1 - a * beyond ** -b, color=colour, lw=1.2, ls="--")
    ax.errorbar([target], [fit["projection"]], yerr=[[max(0.0, fit["projection"] - fit["ci_lo"])],
                                                     [max(0.0, fit["ci_hi"] - fit["projection"])]],
                fmt="D", color=colour, mfc="white", capsize=3, zorder=4)
    return max(x_hi, target), handles


def learning_curve(runs: pd.DataFrame, summary: pd.DataFrame, fits: pd.DataFrame | None = None,
                   references: pd.DataFrame | None = None, crossings: pd.DataFrame | None = None,
                   title: str = "Test mIoU against training objects") -> Figure:
    """Test mIoU against training objects (log x) for one test set, one colour per arm (in order
    of appearance in ``runs``; legend beside the axes).

    runs: ``custom.learning`` run rows (``arm, arm_label, prompt_mode, seed, n_train_objects,
    mIoU``): each seed's run a small point. summary: ``fraction_summary`` rows (``arm,
    n_train_objects, mIoU, ci_lo, ci_hi``): the mean per fraction with its 95% interval. fits:
    ``fit_table`` rows (``arm, a, b, n_min, n_max, target_n, projection, ci_lo, ci_hi``; NaN ``a``:
    none drawn): the power law, solid over the measured range, dashed beyond it up to ``target_n``,
    and the projection (diamond) with its interval. references: ``zero_shot_reference`` rows
    (``model_label, prompt_mode, mIoU``): one horizontal line each. crossings: ``crossing_table``
    rows (``arm, reference, crossing_n``): a dotted vertical line in the arm's colour where its fitted
    curve reaches a reference (when that lies in the drawn range, which ends just beyond ``target_n``).
    """
    from matplotlib.lines import Line2D

    fig, ax = _figure(8.5, 4.6)
    arms = list(dict.fromkeys(runs["arm"]))
    colours = dict(zip(arms, palette(len(arms))))
    fits = fits if fits is not None else pd.DataFrame(columns=["arm"])
    x_hi, handles = 0.0, []
    for arm in arms:
        r = runs[runs["arm"] == arm]
        fit = fits[fits["arm"] == arm]
        x_arm, arm_handles = _learning_arm_curve(ax, f"{r['arm_label'].iloc[0]}, {r['prompt_mode'].iloc[0]}",
                                                 colours[arm], r, summary[summary["arm"] == arm],
                                                 fit.iloc[0].to_dict() if len(fit) else None)
        x_hi, handles = max(x_hi, x_arm), handles + arm_handles
    refs = references if references is not None else pd.DataFrame(columns=["model_label", "mIoU"])
    ref_colours = sns.color_palette("dark", len(refs) + 3)[3:]  # red onwards: apart from the arms' blue and orange
    for (_, ref), colour in zip(refs.iterrows(), ref_colours):
        handles.append(ax.axhline(ref["mIoU"], color=colour, ls="-.", lw=1, label=_wrap(
            f"{ref['model_label']}, zero-shot {ref.get('prompt_mode', 'tight_box')}: {ref['mIoU']:.3f}", 48)))
    x_lo = float(runs["n_train_objects"].min())
    for c in (crossings.itertuples() if crossings is not None else ()):
        if np.isfinite(c.crossing_n) and x_lo / 1.5 <= c.crossing_n <= x_hi * 1.5:  # others: the table says where
            colour = colours.get(c.arm, "grey")
            ax.axvline(c.crossing_n, color=colour, ls=":", lw=1)
            ax.annotate(f"n = {c.crossing_n:,.0f}", (c.crossing_n, 0.03), rotation=90, fontsize=7,
                        ha="right", va="bottom", color=colour)
    grey = "0.45"
    extra = [Line2D([], [], ls="", marker="o", ms=3.5, alpha=0.55, color=grey, label="small points: one run per seed")]
    if len(fits) and fits["a"].notna().any():
        targets = ", ".join(f"{t:,.0f}" for t in dict.fromkeys(fits.loc[fits["a"].notna(), "target_n"]))
        extra += [Line2D([], [], color=grey, lw=1.2, ls="--", label="extrapolated (no error floor)"),
                  Line2D([], [], ls="", marker="D", mfc="white", color=grey, label=f"projection at n = {targets} (95% CI)")]
    ax.set_xscale("log")
    ax.set_xlim(x_lo / 1.5, x_hi * 1.5)
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("training objects (log scale)")
    ax.set_ylabel("test mIoU (single mask)")
    ax.set_title(title, fontsize=11)
    ax.legend(handles=handles + extra, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig
