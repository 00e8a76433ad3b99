"""Failure galleries and the interactive explorer.

A *case* is one test object shown as image crops: the image, the ground truth (filled green), then
each arm's prediction, each arm's crop with the ground-truth contour (green, dashed) and the arm's
mask (filled, its own colour) and prompt (box / points) overlaid; the caption gives each arm's IoU
and boundary IoU. Colours: seaborn's ``deep`` palette (:func:`samstudy.plots.palette`) without its
green, which is the ground truth's.

Cases are chosen by a stated rule (:data:`RULES`), never by hand:

- ``holes``: objects whose ground truth or some arm's prediction has a hole (``gt_holes > 0`` or
  ``pred_holes > 0``), largest IoU gap between arms first;
- ``small``: COCO-small objects (area < 32² px), largest IoU gap between arms first;
- ``boundary``: objects every arm found (IoU >= 0.5 for all), largest boundary-IoU gap between arms
  first (the object was found; its outline was not).
- ``policy``: objects the labeling policy changed (tagged ``policy:filled`` or ``policy:merged``
  by :mod:`samstudy.policies`), largest IoU gap between arms first.

The *IoU gap* of an object is ``max - min`` of its IoU over the arms (with a single arm:
``1 - IoU``). Ties are broken by ``(dataset, image_id, ann_id)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .policies import FILLED_TAG, MERGED_TAG
from .compare import OBJECT_KEYS, Arm, arm_matrix
from .plots import palette
from .report import figure_image

RULES: dict[str, str] = {
    "holes": "objects whose ground truth or some arm's prediction has a hole (gt_holes > 0 or pred_holes > 0), "
             "largest IoU gap between arms first",
    "small": "COCO-small objects (area < 32² px), largest IoU gap between arms first",
    "boundary": "objects every arm found (IoU ≥ 0.5 for all arms), largest boundary-IoU gap between arms first",
    "policy": "objects the labeling policy changed (holes filled or same-category objects merged), "
              "largest IoU gap between arms first",
}
POLICY_TAGS = (FILLED_TAG, MERGED_TAG)
GT_COLOUR = (0.1, 0.85, 0.2)
ARM_COLOURS = tuple(c for i, c in enumerate(palette(8)) if i != 2)  # deep without its green (the GT's)


def _gap(m: pd.DataFrame, labels: Sequence[str]) -> pd.Series:
    v = m[list(labels)]
    return (v.max(axis=1) - v.min(axis=1)) if len(labels) > 1 else 1.0 - v.iloc[:, 0]


def case_table(rows: pd.DataFrame, arms: Sequence[Arm]) -> pd.DataFrame:
    """Per object scored by every arm: ``iou|<arm>``, ``biou|<arm>``, ``pred_holes|<arm>``, ``gt_holes``,
    ``iou_gap`` and ``biou_gap`` (plus the object columns of :func:`compare.arm_matrix`)."""
    labels = [a.label for a in arms]
    m = arm_matrix(rows, arms, "iou").rename(columns={l: f"iou|{l}" for l in labels})
    for metric, short in (("boundary_iou", "biou"), ("pred_holes", "pred_holes"), ("gt_holes", "gt_holes")):
        part = arm_matrix(rows, arms, metric)[OBJECT_KEYS + labels]
        if metric == "gt_holes":  # a property of the ground truth: the same for every arm
            m = m.merge(part[OBJECT_KEYS].assign(gt_holes=part[labels[0]].to_numpy()), on=OBJECT_KEYS)
        else:
            m = m.merge(part.rename(columns={l: f"{short}|{l}" for l in labels}), on=OBJECT_KEYS)
    m["iou_gap"] = _gap(m, [f"iou|{l}" for l in labels])
    m["biou_gap"] = _gap(m, [f"biou|{l}" for l in labels])
    return m


def candidates(cases: pd.DataFrame, arms: Sequence[Arm], failure_mode: str) -> pd.DataFrame:
    """Every object of :func:`case_table` output that ``failure_mode``'s rule (:data:`RULES`) admits,
    in the rule's order: largest gap first (``iou_gap``; ``biou_gap`` for ``boundary``), ties by
    ``dataset, image_id, ann_id``."""
    labels = [a.label for a in arms]
    if failure_mode == "holes":
        holes = cases[[f"pred_holes|{l}" for l in labels]].fillna(0).astype(float).max(axis=1)
        pick, key = cases[(cases["gt_holes"].fillna(0).astype(float) > 0) | (holes > 0)], "iou_gap"
    elif failure_mode == "small":
        pick, key = cases[cases["size_bucket"] == "small"], "iou_gap"
    elif failure_mode == "policy":
        tags = cases["tags"].fillna("").astype(str).str.split(",")
        pick, key = cases[tags.map(lambda t: any(x in POLICY_TAGS for x in t))], "iou_gap"
    elif failure_mode == "boundary":
        found = (cases[[f"iou|{l}" for l in labels]] >= 0.5).all(axis=1)
        pick, key = cases[found], "biou_gap"
    else:
        raise ValueError(f"unknown failure mode {failure_mode!r}; known: {sorted(RULES)}")
    return pick.sort_values([key] + OBJECT_KEYS, ascending=[False, True, True, True], kind="stable")


def select_cases(cases: pd.DataFrame, arms: Sequence[Arm], failure_mode: str, n: int) -> pd.DataFrame:
    """The first ``n`` objects of :func:`candidates` (the ``n`` objects the gallery shows)."""
    return candidates(cases, arms, failure_mode).head(n)


def case_columns(cases: pd.DataFrame) -> list[str]:
    """The columns a gallery shows under its figure: ``dataset, image_id, ann_id, category, area,
    iou_gap, biou_gap`` then each arm's ``iou|<arm>`` and ``biou|<arm>``."""
    return (["dataset", "image_id", "ann_id", "category", "area", "iou_gap", "biou_gap"]
            + [c for c in cases.columns if c.startswith(("iou|", "biou|"))])


def case_display_table(cases: pd.DataFrame, arms: Sequence[Arm]) -> pd.DataFrame:
    """The table shown under a gallery, narrow enough for the page: one row per object with
    ``image, object, category, area (px), IoU gap, BIoU gap`` (``dataset`` first when there are
    several) and per arm one column ``<short label>: IoU / BIoU`` holding ``"0.91 / 0.85"``.
    The full-precision numbers stay in :func:`case_table` / :func:`case_columns`."""
    from .report import format_cell

    out = pd.DataFrame({"image": cases["image_id"].astype(int).to_numpy(), "object": cases["ann_id"].astype(int).to_numpy(),
                        "category": cases["category"].to_numpy(), "area (px)": cases["area"].astype(int).to_numpy(),
                        "IoU gap": cases["iou_gap"].to_numpy(float).round(3),
                        "BIoU gap": cases["biou_gap"].to_numpy(float).round(3)})
    if cases["dataset"].nunique() > 1:
        out.insert(0, "dataset", cases["dataset"].to_numpy())
    for arm, short in zip(arms, short_labels([a.label for a in arms])):
        iou, biou = cases[f"iou|{arm.label}"].to_numpy(float), cases[f"biou|{arm.label}"].to_numpy(float)
        name = short.replace("\n", ", ")
        out[f"{name}: IoU / BIoU"] = [f"{format_cell(a, 2)} / {format_cell(b, 2)}" for a, b in zip(iou, biou)]
    return out


# ------------------------------------------------------------------------------------------- data
@dataclass
class CaseSource:
    """Images, ground truth and predictions of the test objects, looked up by object.

    datasets: ``{dataset name: data.Dataset}`` (the evaluation sets of the data stage).
    predictions: the engine's predictions table (and the custom model's), columns of
        ``results.PRED_COLUMNS`` (``prompt`` and ``rle`` as JSON strings).
    Images read are kept in a small per-object cache (``max_images``).
    """

    datasets: Mapping[str, Any]
    predictions: pd.DataFrame
    max_images: int = 16
    _images: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, repr=False)
    _index: dict[tuple, int] | None = field(default=None, repr=False)

    def image(self, dataset: str, image_id: int) -> np.ndarray:
        from .data import read_record_image

        key = (dataset, int(image_id))
        if key not in self._images:
            if len(self._images) >= self.max_images:
                self._images.pop(next(iter(self._images)))
            self._images[key] = read_record_image(self.datasets[dataset].images[int(image_id)])
        return self._images[key]

    def gt(self, dataset: str, ann_id: int) -> Any:
        """The ground-truth ``data.Instance``."""
        return next(t for t in self.datasets[dataset].instances if t.ann_id == int(ann_id))

    def prediction(self, dataset: str, image_id: int, ann_id: int, arm: Arm) -> tuple[np.ndarray, dict] | None:
        """``(mask bool (H, W), prompt {"box", "points", "labels"})`` of an arm's one-shot prediction."""
        from .masks import decode_rle

        if self._index is None:
            p = self.predictions
            self._index = {}
            if len(p):
                p = p[p["click"] == 0]
                for i, k in enumerate(zip(p["dataset"], p["image_id"], p["ann_id"], p["model"],
                                          p["prompt_mode"], p["multimask"])):
                    self._index.setdefault(k, p.index[i])
                    self._index.setdefault(k[:5] + (None,), p.index[i])
        i = self._index.get((dataset, int(image_id), int(ann_id), arm.model, arm.prompt_mode, arm.multimask))
        if i is None:
            return None
        row = self.predictions.loc[i]
        return decode_rle(json.loads(row["rle"])), json.loads(row["prompt"])


# ---------------------------------------------------------------------------------------- drawing
def crop_box(box_xyxy: Sequence[float], hw: tuple[int, int], margin: float, min_side: int = 48) -> tuple[int, int, int, int]:
    """Integer crop ``(r0, r1, c0, c1)`` around a box grown by ``margin`` of its side (at least ``min_side`` px)."""
    x0, y0, x1, y1 = (float(v) for v in box_xyxy)
    h, w = hw
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side_x = max((x1 - x0) * (1 + 2 * margin), min_side)
    side_y = max((y1 - y0) * (1 + 2 * margin), min_side)
    c0, c1 = int(max(0, np.floor(cx - side_x / 2))), int(min(w, np.ceil(cx + side_x / 2)))
    r0, r1 = int(max(0, np.floor(cy - side_y / 2))), int(min(h, np.ceil(cy + side_y / 2)))
    return r0, r1, c0, c1


def _overlay(ax: Any, image: np.ndarray, gt: np.ndarray | None, pred: np.ndarray | None,
             prompt: Mapping[str, Any] | None, crop: tuple[int, int, int, int],
             colour: tuple[float, float, float]) -> None:
    """Draw the ``crop`` ``(r0, r1, c0, c1)`` of ``image`` with ``pred`` (bool ``(H, W)``) filled and
    outlined in ``colour``, the ground-truth contour ``gt`` dashed green, and the ``prompt``."""
    r0, r1, c0, c1 = crop
    ax.imshow(image[r0:r1, c0:c1], interpolation="nearest")
    if pred is not None:
        p = pred[r0:r1, c0:c1]
        rgba = np.zeros(p.shape + (4,))
        rgba[p] = (*colour, 0.45)
        ax.imshow(rgba, interpolation="nearest")
        if p.any() and not p.all():
            ax.contour(p.astype(float), levels=[0.5], colors=[colour], linewidths=1.2)
    g = gt[r0:r1, c0:c1] if gt is not None else np.zeros((0, 0), bool)
    if g.any() and not g.all():
        ax.contour(g.astype(float), levels=[0.5], colors=[GT_COLOUR], linewidths=1.0, linestyles="dashed")
    if prompt:
        if prompt.get("box"):
            x0, y0, x1, y1 = prompt["box"]
            ax.add_patch(_rect(x0 - c0 - 0.5, y0 - r0 - 0.5, x1 - x0, y1 - y0, colour))
        for (x, y), lab in zip(prompt.get("points") or [], prompt.get("labels") or []):
            ax.plot(x - c0, y - r0, marker="o" if lab else "x", ms=5, mec="white", mfc=colour, color=colour)
    ax.set_xlim(-0.5, c1 - c0 - 0.5)
    ax.set_ylim(r1 - r0 - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _rect(x: float, y: float, w: float, h: float, colour: tuple[float, float, float]) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, fill=False, ec=colour, lw=1.2, ls="-")


def short_label(label: str, keep_note: bool = False) -> str:
    """Arm label for a narrow panel title, ``"<model>\n<mode>"``: the model label without its
    parenthesised note (unless ``keep_note``), then the prompt mode on its own line."""
    model, _, mode = label.rpartition(", ")
    if not model:
        model, mode = mode, ""
    model = model if keep_note else model.split(" (")[0]
    return f"{model}\n{mode}" if mode else model


def short_labels(labels: Sequence[str]) -> list[str]:
    """:func:`short_label` of each label, keeping the parenthesised note where dropping it would make
    two arms look the same (the two custom stages differ only in their note)."""
    short = [short_label(l) for l in labels]
    return [short_label(l, keep_note=short.count(s) > 1) for l, s in zip(labels, short)]


def case_figure(cases: pd.DataFrame, arms: Sequence[Arm], source: CaseSource, margin: float = 0.3,
                title: str = "", panel: float = 2.3) -> Figure:
    """Grid of cases: one row per object, columns = the image, its ground truth, then each arm.

    Row captions (on the image): category, ids, area, IoU gap; panel captions: IoU and boundary IoU
    of the arm.
    """
    n_rows, n_cols = max(1, len(cases)), 2 + len(arms)
    fig = Figure(figsize=(panel * n_cols, panel * n_rows + 0.6), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    if not len(cases):
        for ax in axes.ravel():
            ax.axis("off")
        axes[0, 0].text(0, 0.5, "no object matches this rule", fontsize=10)
        fig.suptitle(title, fontsize=11)
        return fig
    titles = short_labels([a.label for a in arms])
    for r, (_, c) in enumerate(cases.iterrows()):  # iterrows: column names hold "|" (not identifiers)
        ds, img_id, ann_id = c["dataset"], int(c["image_id"]), int(c["ann_id"])
        image = source.image(ds, img_id)
        inst = source.gt(ds, ann_id)
        gt = inst.mask()
        crop = crop_box(inst.box_xyxy, gt.shape, margin)
        _overlay(axes[r, 0], image, None, None, None, crop, GT_COLOUR)
        axes[r, 0].set_title(f"{c['category']} · img {img_id} obj {ann_id}\narea {int(c['area'])} px · "
                             f"IoU gap {c['iou_gap']:.2f}", fontsize=7)
        _overlay(axes[r, 1], image, None, gt, None, crop, GT_COLOUR)
        axes[r, 1].set_title("ground truth", fontsize=7, color=(0.05, 0.5, 0.1))
        for j, arm in enumerate(arms):
            ax = axes[r, j + 2]
            got = source.prediction(ds, img_id, ann_id, arm)
            colour = ARM_COLOURS[j % len(ARM_COLOURS)]
            _overlay(ax, image, gt, got[0] if got else None, got[1] if got else None, crop, colour)
            iou, biou = c.get(f"iou|{arm.label}"), c.get(f"biou|{arm.label}")
            ax.set_title(f"{titles[j]}\nIoU {iou:.2f} · BIoU {biou:.2f}"
                         + ("" if got else " (no mask stored)"), fontsize=7, color=colour)
    fig.suptitle(title, fontsize=10)
    return fig


def gallery_caption(failure_mode: str, n_shown: int, n_candidates: int) -> str:
    """Markdown caption stating the selection rule and what the overlays mean."""
    return (f"**{failure_mode}**: {n_shown} of {n_candidates} candidate objects, chosen by rule: {RULES[failure_mode]}. "
            "Columns: the image, its ground truth (green), then each arm: coloured fill and line: the arm's "
            "mask; green dashed line: the ground-truth contour; rectangle / dots: the arm's prompt (box, "
            "positive points). IoU and boundary IoU (BIoU, band of 2% of the image diagonal) above each panel.")


# --------------------------------------------------------------------------------------- explorer
def explorer_table(rows: pd.DataFrame, reference: Arm, model: str, prompt_mode: str, multimask: str | None,
                   category: str | None = None) -> pd.DataFrame:
    """Objects sorted by IoU gap ``reference - (model, prompt_mode)``, largest first (optionally one category)."""
    label = f"{model} · {prompt_mode}"
    other = Arm(label, model, prompt_mode, multimask, "other")
    arms = [reference] if reference.label == label else [reference, other]
    m = arm_matrix(rows, arms, "iou")
    if reference.label == label:
        m[label] = m[reference.label]
    if category:
        m = m[m["category"] == category]
    m = m.assign(iou_gap=m[reference.label] - m[label])
    return m.sort_values(["iou_gap"] + OBJECT_KEYS, ascending=[False, True, True, True]).reset_index(drop=True)


def explorer_arms(arms: Sequence[Arm]) -> tuple[Arm | None, Arm | None]:
    """``(reference, contrast)`` of the explorer.

    reference: the custom arm when the custom model was trained (the first custom arm: the refined
    stage), else the first arm (the tight box); ``None`` without arms. contrast: the first arm of
    another kind than the reference (the static fallback's figure), ``None`` when there is none.
    """
    reference = next((a for a in arms if a.kind == "custom"), arms[0] if arms else None)
    if reference is None:
        return None, None
    return reference, next((a for a in arms if a.kind != reference.kind), None)


def largest_gap_cases(rows: pd.DataFrame, reference: Arm, other: Arm, n: int = 4) -> pd.DataFrame:
    """The :func:`case_table` rows of the ``n`` objects where ``reference`` beats ``other`` by most
    (signed IoU gap ``reference - other`` of :func:`explorer_table`), sorted by ``iou_gap``
    (here ``|reference - other|``), largest first."""
    t = explorer_table(rows, reference, other.model, other.prompt_mode, other.multimask)
    top = case_table(rows, [reference, other]).merge(t.head(n)[OBJECT_KEYS])
    return top.sort_values("iou_gap", ascending=False)


def explorer_start(rows: pd.DataFrame, reference: Arm, start: Arm | None = None) -> tuple[str, str, str | None]:
    """The explorer's opening selection ``(model, prompt_mode, multimask)``: ``start``'s when it has
    one-shot rows (the notebook passes the contrast arm of :func:`explorer_arms`), else the first
    (model, prompt mode) in sorted order other than the reference, else the reference itself."""
    one = rows[(rows["click"] == 0) & (rows["status"] == "ok")]
    pairs = sorted(set(zip(one["model"], one["prompt_mode"])))
    if start is not None and (start.model, start.prompt_mode) in pairs:
        model, mode = start.model, start.prompt_mode
    else:
        model, mode = next((p for p in pairs if p != (reference.model, reference.prompt_mode)),
                           (reference.model, reference.prompt_mode))
    return model, mode, _multimask_of(one, model, mode)


def _multimask_of(one: pd.DataFrame, model: str, mode: str) -> str | None:
    mm = one.loc[(one["model"] == model) & (one["prompt_mode"] == mode), "multimask"]
    return "single" if "single" in set(mm) else (mm.iloc[0] if len(mm) else None)


def _explorer_figure(rows: pd.DataFrame, reference: Arm, arm: Arm, table: pd.DataFrame, number: int,
                     source: CaseSource, margin: float) -> Figure:
    """The explorer's view of object ``number`` (1-based) of ``table`` (:func:`explorer_table`)."""
    arms = [reference] + ([arm] if arm.label != reference.label else [])
    number = min(max(1, number), len(table))
    key = table.iloc[[number - 1]][OBJECT_KEYS]
    return case_figure(case_table(rows, arms).merge(key, on=OBJECT_KEYS), arms, source, margin,
                       title=f"object {number} of {len(table)} (sorted by IoU gap)")


def explorer_opening_figure(rows: pd.DataFrame, reference: Arm, source: CaseSource, margin: float = 0.3,
                            start: Arm | None = None) -> Figure | None:
    """The figure the explorer opens on (:func:`explorer_start`, all categories, object 1): the
    notebook shows it as a static image under the widget, for readers without a running kernel
    (JupyterLab does not load saved widget state by default, and exported pages run no widget).
    ``None`` when the opening selection has no object."""
    model, mode, mm = explorer_start(rows, reference, start)
    table = explorer_table(rows, reference, model, mode, mm)
    if not len(table):
        return None
    return _explorer_figure(rows, reference, Arm(f"{model} · {mode}", model, mode, mm, "other"), table, 1,
                            source, margin)


def build_explorer(rows: pd.DataFrame, reference: Arm, source: CaseSource, margin: float = 0.3,
                   start: Arm | None = None) -> Any:
    """ipywidgets explorer: pick category, model and prompt mode; browse objects sorted by IoU gap.

    The gap is the reference arm's IoU minus the chosen (model, prompt mode)'s IoU on the same object.
    It opens on :func:`explorer_start` (every dropdown has a value: ipywidgets leaves ``value``
    ``None`` when options are set after construction, which showed "no object for this selection"),
    object 1. Returns an ``ipywidgets.VBox`` (live in a kernel only: show
    :func:`explorer_opening_figure` beside it for everyone else).
    """
    import ipywidgets as W

    one = rows[(rows["click"] == 0) & (rows["status"] == "ok")]
    models = sorted(one["model"].unique())
    first_model, first_mode, _ = explorer_start(rows, reference, start)

    def modes_for(m: str) -> list[str]:
        return sorted(one.loc[one["model"] == m, "prompt_mode"].unique())

    cat = W.Dropdown(options=["(all)"] + sorted(one["category"].unique()), value="(all)", description="category")
    model = W.Dropdown(options=models, value=first_model, description="model")
    mode = W.Dropdown(options=modes_for(first_model), value=first_mode, description="prompt mode")
    idx = W.IntSlider(min=1, max=1, value=1, description="object #")  # 1-based, as the figure's title
    # An Image widget, not an Output widget: capturing display() into an Output widget while
    # papermill/nbclient executes the notebook deadlocked the kernel now and then.
    image = W.Image(format="png")
    note = W.HTML()
    state: dict[str, Any] = {"table": pd.DataFrame()}

    def refresh_table(*_: Any) -> None:
        if mode.value is None or state.get("switching"):
            return
        mm_value = _multimask_of(one, model.value, mode.value)
        state["table"] = explorer_table(rows, reference, model.value, mode.value, mm_value,
                                        None if cat.value == "(all)" else cat.value)
        state["arm"] = Arm(f"{model.value} · {mode.value}", model.value, mode.value, mm_value, "other")
        idx.max = max(1, len(state["table"]))
        if idx.value == 1:
            show()
        idx.value = 1

    def show(*_: Any) -> None:
        if not len(state["table"]):
            note.value, image.layout.display = "no object for this selection", "none"
            return
        fig = _explorer_figure(rows, reference, state["arm"], state["table"], idx.value, source, margin)
        note.value, image.layout.display = "", None
        image.value = figure_image(fig).data

    def on_model(*_: Any) -> None:
        options = modes_for(model.value)
        keep = mode.value if mode.value in options else options[0]
        state["switching"] = True  # new options reset the mode: one refresh, after a valid value is set
        try:
            mode.options = options
            mode.value = keep
        finally:
            state["switching"] = False
        refresh_table()

    model.observe(on_model, names="value")
    mode.observe(refresh_table, names="value")
    cat.observe(refresh_table, names="value")
    idx.observe(show, names="value")
    refresh_table()
    return W.VBox([W.HBox([cat, model, mode]), idx, note, image])


def static_explorer(rows: pd.DataFrame, reference: Arm, per_category: int = 3) -> pd.DataFrame:
    """The explorer's static fallback: per category and (model, prompt mode), the objects with the
    largest IoU gap to the reference arm (``per_category`` each)."""
    one = rows[(rows["click"] == 0) & (rows["status"] == "ok")]
    out = []
    for (m, mode), g in one.groupby(["model", "prompt_mode"], sort=True):
        mm = "single" if "single" in set(g["multimask"]) else g["multimask"].iloc[0]
        if m == reference.model and mode == reference.prompt_mode:
            continue
        t = explorer_table(rows, reference, m, mode, mm)
        t = t.groupby("category", sort=True).head(per_category)
        out.append(t[OBJECT_KEYS + ["category", "size_bucket", reference.label, f"{m} · {mode}", "iou_gap"]]
                   .rename(columns={reference.label: "reference IoU", f"{m} · {mode}": "IoU"})
                   .assign(model=m, prompt_mode=mode))
    if not out:
        return pd.DataFrame()
    cols = ["category", "model", "prompt_mode", "dataset", "image_id", "ann_id", "size_bucket", "reference IoU",
            "IoU", "iou_gap"]
    t = pd.concat(out, ignore_index=True)[cols].sort_values(["category", "model", "prompt_mode", "iou_gap"],
                                                           ascending=[True, True, True, False])
    return t.round({"reference IoU": 3, "IoU": 3, "iou_gap": 3}).reset_index(drop=True)
