"""The comparison analysis: which arms are compared, on which objects, and the tables of numbers.

Every function takes the result rows of ``docs/ARCHITECTURE.md`` (one per object x prompt mode x
model x multimask x click x ``gt_variant``; schema in :mod:`samstudy.results`) or tables built from
them, and returns a DataFrame (or a small plain value). Nothing is displayed or written here: the
comparison, gallery and explorer notebooks call these and show the result.

- Arms: :class:`Arm`, :func:`headline_arms`; the pairs compared in paired differences:
  :func:`comparison_pairs`; the loose arm's buffer: :func:`loose_buffer`.
- Paired per-object matrix and means: :func:`arm_matrix`, :func:`mean_table`, :func:`headline_table`.
- Bootstrap tables: :func:`ci_table`, :func:`paired_diff_table`, :func:`buffer_sweep_table`.
- Clicks: :func:`click_rows`, :func:`click_curve_table`, :func:`noc_summary`.
- Labeling policy: :func:`policy_gap_table` (per category with ``by``), :func:`policy_effect_table`
  (does an arm fill what the policy fills and merge what it merges?), :func:`policy_changes`;
  data: :func:`dataset_stats`.
- The fine-tuned arm: :func:`finetuned_arms`, :func:`finetuned_base`, :func:`finetune_gain_table`.
- Our numbers under the keys of :data:`samstudy.published.PUBLISHED`: :func:`ours_for_published`.

This module imports neither :mod:`samstudy.report` nor :mod:`samstudy.pipeline`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .published import CUSTOM_KEY, NOC90_PREFIX
from .results import PRIMARY

if TYPE_CHECKING:  # heavy imports stay out of the CLI's start-up path
    import numpy as np
    import pandas as pd

__all__ = [
    "OBJECT_KEYS", "OBJECT_INFO", "Arm", "load_rows", "load_study_rows", "headline_arms", "comparison_pairs",
    "loose_buffer", "arm_matrix", "mean_table", "headline_table", "ci_table", "paired_diff_table",
    "buffer_sweep_table", "click_rows", "click_curve_table", "noc_summary", "policy_gap_table", "policy_changes", "policy_change",
    "dataset_stats", "split_image_counts", "ours_for_published", "published_key", "finetuned_arms", "finetuned_base",
    "policy_effect_table", "finetune_gain_table",
]

OBJECT_KEYS = ["dataset", "image_id", "ann_id"]
OBJECT_INFO = ["category", "size_bucket", "area", "tags"]
# Modes of PUBLISHED keys that come from the headline's paired box arms (the others are read from all
# one-shot foundation rows): a published box number sits beside the same objects as our headline.
_ARM_MODE_NAMES = ("tight_box", "loose_box")


@dataclass(frozen=True)
class Arm:
    """One compared regime: a model with one prompt mode (and multimask policy).

    kind: ``"custom"``, ``"tight"`` or ``"loose"`` (the headline's three regimes), ``"finetuned"``
    (a fine-tuned foundation model, :func:`finetuned_arms`) or ``"other"``.
    label: how tables and figures name it, built from the model's own ``model_label`` (so LiteMedSAM
    is never called SAM).
    """

    label: str
    model: str
    prompt_mode: str
    multimask: str | None
    kind: str


# -------------------------------------------------------------------------------------- loading
def load_rows(*dirs: str | os.PathLike | None, name: str = "rows.parquet") -> "pd.DataFrame":
    """Concatenate ``<dir>/rows.parquet`` of the given stage folders (``None``/empty/missing skipped)."""
    import pandas as pd

    frames = [pd.read_parquet(Path(d) / name) for d in dirs if d and (Path(d) / name).is_file()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_study_rows(foundation_dir: str | os.PathLike, evaluate_custom_dir: str | os.PathLike | None,
                    custom_enabled: bool = True) -> tuple["pd.DataFrame", "pd.DataFrame | None", "pd.DataFrame"]:
    """``(foundation rows, custom rows or None, all rows)`` of a run's foundation and custom stages.

    Custom rows are ``None`` when the custom model is disabled (no arm is built for it); otherwise
    they may be empty (the stage wrote nothing), and ``all rows`` is their concatenation.
    """
    import pandas as pd

    found = load_rows(foundation_dir)
    custom = load_rows(evaluate_custom_dir) if custom_enabled else None
    rows = pd.concat([found, custom], ignore_index=True) if custom is not None else found
    return found, custom, rows


# ----------------------------------------------------------------------------------------- arms
def _mode_label(mode: str) -> str:
    return (mode.replace("_", " ").replace("[b=", " (b=").replace("[noise=", " (noise=")
            .replace("[", " (").replace("]", ")"))


RANDOM_INIT_SHA256 = "random-init"  # models.release.RANDOM_INIT (compare does not import models)


def headline_arms(foundation: "pd.DataFrame", custom: "pd.DataFrame | None", tight_mode: str | None,
                  loose_mode: str | None, multimask: str = "single") -> list[Arm]:
    """The headline's arms: the custom model (if any; refined stage first), then per foundation model
    its tight and loose box.

    foundation / custom: result rows (columns ``model, model_label, prompt_mode, multimask, click``).
    Only arms with at least one one-shot result row (``click == 0``) are returned (``None`` modes are
    left out); the custom model's click sequences (``clicks[...]``) are not headline arms.
    """
    arms: list[Arm] = []
    if custom is not None and len(custom):
        # Custom rows may hold several stages (custom_stage1, custom_stage2): the last stage (the
        # full pipeline) comes first, so it is *the* custom arm wherever one is picked.
        # one-shot modes only: a click sequence's click 0 is its start, already an arm (the effort page
        # and the NoC table show the sequences)
        one = custom[(custom["click"] == 0) & ~custom["prompt_mode"].str.startswith("clicks[")]
        groups = sorted(one.groupby(["model", "prompt_mode", "model_label"]).groups, key=lambda k: k[0], reverse=True)
        for model, mode, label in groups:
            arms.append(Arm(f"{label}, {_mode_label(mode)}", model, mode, None, "custom"))
    if len(foundation) and "checkpoint_sha256" in foundation:
        # untrained weights ("random init, benchmark only") never enter a quality table
        foundation = foundation[foundation["checkpoint_sha256"] != RANDOM_INIT_SHA256]
    if len(foundation):
        one = foundation[(foundation["click"] == 0) & (foundation["multimask"] == multimask)]
        present = set(zip(one["model"], one["prompt_mode"]))
        for (model, label), _ in foundation.groupby(["model", "model_label"], sort=False):
            for mode, kind in ((tight_mode, "tight"), (loose_mode, "loose")):
                if mode and (model, mode) in present:
                    arms.append(Arm(f"{label}, {_mode_label(mode)}", model, mode, multimask, kind))
    return arms


def comparison_pairs(arms: Sequence[Arm]) -> list[tuple[str, str]]:
    """The ``(a, b)`` arm-label pairs whose paired difference ``a - b`` the comparison reports, in order:

    1. the custom arm (the first custom arm: :func:`headline_arms` puts the refined stage first)
       against every tight and every loose arm;
    2. each model's tight arm against the same model's loose arm (what the buffer costs);
    3. the custom arm against every other custom arm (what the refinement stage adds);
    4. each fine-tuned arm against the zero-shot arm of its base model with the same prompt mode
       (what fine-tuning adds), then the custom arm against each fine-tuned arm (what the custom
       design adds beyond a fine-tuned foundation model).

    No custom arm: only the pairs of rules 2 and 4 (without custom).
    """
    customs = [a for a in arms if a.kind == "custom"]
    boxes = [a for a in arms if a.kind in ("tight", "loose")]
    tuned = [a for a in arms if a.kind == "finetuned"]
    pairs = [(customs[0].label, b.label) for b in boxes] if customs else []
    pairs += [(t.label, l.label) for t in arms for l in arms
              if t.kind == "tight" and l.kind == "loose" and t.model == l.model]
    pairs += [(customs[0].label, c.label) for c in customs[1:]]
    pairs += [(f.label, b.label) for f in tuned for b in boxes
              if b.model == finetuned_base(f.model) and b.prompt_mode == f.prompt_mode]
    pairs += [(customs[0].label, f.label) for f in tuned] if customs else []
    return pairs


def finetuned_base(model: str) -> str | None:
    """The base model of a fine-tuned arm's ``model`` name (``"litemedsam_ft-box"`` -> ``"litemedsam"``;
    names from :func:`samstudy.finetune.build_finetuned`), ``None`` for another model."""
    return model.split("_ft-")[0] if "_ft-" in model else (model[:-3] if model.endswith("_ft") else None)


def finetuned_arms(rows: "pd.DataFrame", tight_mode: str | None, loose_mode: str | None,
                   multimask: str = "single") -> list[Arm]:
    """Arms of the fine-tuned stage's rows: per fine-tuned model its tight and loose box (kind
    ``"finetuned"``), for the modes it was scored with; same order and labels as :func:`headline_arms`."""
    if rows is None or not len(rows):
        return []
    arms = [Arm(a.label, a.model, a.prompt_mode, a.multimask, "finetuned")
            for a in headline_arms(rows, None, tight_mode, loose_mode, multimask)]
    return [a for a in arms if finetuned_base(a.model) is not None]


def loose_buffer(arms: Sequence[Arm]) -> float | None:
    """The box buffer b of the first loose arm (from its prompt mode key), ``None`` without a loose arm."""
    from .prompts import parse_modes

    loose = next((a for a in arms if a.kind == "loose"), None)
    return parse_modes([loose.prompt_mode])[0].buffer if loose is not None else None


def _arm_rows(rows: "pd.DataFrame", arm: Arm, gt_variant: str) -> "pd.DataFrame":
    m = ((rows["model"] == arm.model) & (rows["prompt_mode"] == arm.prompt_mode) & (rows["click"] == 0)
         & (rows["gt_variant"] == gt_variant) & (rows["status"] == "ok"))
    if arm.multimask is not None:
        m &= rows["multimask"] == arm.multimask
    return rows[m]


# --------------------------------------------------------------------------------- paired means
def arm_matrix(rows: "pd.DataFrame", arms: Sequence[Arm], metric: str = "iou",
               gt_variant: str = PRIMARY) -> "pd.DataFrame":
    """One row per object scored by *every* arm (paired), one column per arm label with ``metric``.

    Columns: ``dataset, image_id, ann_id, category, size_bucket, area, tags`` then the arm labels.
    Objects skipped by some arm are left out, so every arm is averaged over the same objects.
    """
    import pandas as pd

    out = None
    for arm in arms:
        r = _arm_rows(rows, arm, gt_variant)
        cols = OBJECT_KEYS + (OBJECT_INFO if out is None else [])
        part = r[cols + [metric]].rename(columns={metric: arm.label}).drop_duplicates(OBJECT_KEYS)
        out = part if out is None else out.merge(part, on=OBJECT_KEYS, how="inner")
    if out is None:
        return pd.DataFrame(columns=OBJECT_KEYS + OBJECT_INFO)
    return out.sort_values(OBJECT_KEYS).reset_index(drop=True)


def mean_table(matrix: "pd.DataFrame", labels: Sequence[str], by: str | None = "category",
               all_label: str = "all") -> "pd.DataFrame":
    """Mean of each arm column overall (first row, ``all_label``) and per ``by`` value, with ``n`` objects."""
    import pandas as pd

    rows = [{by or "group": all_label, "n": len(matrix), **{l: matrix[l].mean() for l in labels}}]
    if by is not None:
        for key, g in matrix.groupby(by, sort=True):
            rows.append({by: key, "n": len(g), **{l: g[l].mean() for l in labels}})
    return pd.DataFrame(rows)


def headline_table(matrix: "pd.DataFrame", arms: Sequence[Arm], rows: "pd.DataFrame") -> "pd.DataFrame":
    """The run's headline: mIoU per arm overall and per category (:func:`mean_table` of the paired
    ``matrix``), or, for a click-only run without one-shot arms (isegm), the NoC table
    (:func:`noc_summary` of ``rows``)."""
    if not arms:
        return noc_summary(rows)
    return mean_table(matrix, [a.label for a in arms], by="category")


# ------------------------------------------------------------------------------------ bootstrap
def _image_groups(df: "pd.DataFrame") -> "np.ndarray":
    return (df["dataset"].astype(str) + ":" + df["image_id"].astype(str)).to_numpy()


def _ci_flag(g: "pd.DataFrame") -> tuple[int, str | None]:
    """``(images, note)`` of a group: how many images its objects sit in, and why it gets no
    bootstrap interval (``None``: it gets one). The bootstrap resamples images, so a group in one
    image would get a zero-width interval (:func:`samstudy.stats.resampling_units`)."""
    from .stats import resampling_units

    images = resampling_units(len(g), _image_groups(g)) if len(g) else 0
    if len(g) < 2:
        return images, f"{len(g)} object" + ("" if len(g) == 1 else "s")
    if images < 2:
        return images, f"all {len(g)} objects in 1 image"
    return images, None


def ci_table(matrix: "pd.DataFrame", labels: Sequence[str], rng: "np.random.Generator", n_boot: int,
             by: str | None = None) -> "pd.DataFrame":
    """Long table ``[by], arm, n, images, mean, lo, hi, ci_note``: 95% percentile-bootstrap CI of
    each arm's mean.

    Resampling is by image (cluster bootstrap, ``stats.bootstrap_mean_ci(groups=image_id)``):
    objects of one image are not independent. A group with fewer than 2 objects or with every
    object in one image has no interval (``lo``/``hi`` NaN) and says why in ``ci_note``.
    """
    import pandas as pd

    from .stats import bootstrap_mean_ci

    groups = [("all", matrix)] if by is None else [("all", matrix), *matrix.groupby(by, sort=True)]
    out = []
    for key, g in groups:
        images, note = _ci_flag(g)
        for l in labels:
            if note is not None:
                mean, lo, hi = (float(g[l].mean()) if len(g) else float("nan"),) + (float("nan"),) * 2
            else:
                mean, lo, hi = bootstrap_mean_ci(g[l].to_numpy(float), rng, n_boot=n_boot,
                                                 groups=_image_groups(g))
            out.append({**({by: key} if by else {}), "arm": l, "n": len(g), "images": images,
                        "mean": mean, "lo": lo, "hi": hi, "ci_note": note})
    return pd.DataFrame(out)


def paired_diff_table(matrix: "pd.DataFrame", pairs: Sequence[tuple[str, str]], rng: "np.random.Generator",
                      n_boot: int, by: str | None = "category") -> "pd.DataFrame":
    """``comparison, [by], n, images, diff, lo, hi, ci_note``: paired bootstrap CI of ``mean(a - b)``
    per pair (by image); no interval (and a ``ci_note``) for a group of one object or one image."""
    import pandas as pd

    from .stats import bootstrap_paired_diff_ci

    groups = [("all", matrix)] if by is None else [("all", matrix), *matrix.groupby(by, sort=True)]
    out = []
    for a, b in pairs:
        for key, g in groups:
            images, note = _ci_flag(g)
            if note is None:
                d, lo, hi = bootstrap_paired_diff_ci(g[a].to_numpy(float), g[b].to_numpy(float), rng,
                                                     n_boot=n_boot, groups=_image_groups(g))
            else:
                d, lo, hi = (float((g[a] - g[b]).mean()) if len(g) else float("nan")), float("nan"), float("nan")
            out.append({"comparison": f"{a} − {b}", **({by: key} if by else {}), "n": len(g), "images": images,
                        "diff": d, "lo": lo, "hi": hi, "ci_note": note})
    return pd.DataFrame(out)


def buffer_sweep_table(rows: "pd.DataFrame", rng: "np.random.Generator", n_boot: int, multimask: str = "single",
                       gt_variant: str = PRIMARY) -> "pd.DataFrame":
    """``model_label, buffer, n, mean, lo, hi``: mIoU of loose boxes against the buffer b (tight box = 0).

    Per model, only objects scored at every b are used, so the curve compares like with like.
    """
    import pandas as pd

    r = rows[(rows["click"] == 0) & (rows["status"] == "ok") & (rows["gt_variant"] == gt_variant)
             & (rows["multimask"] == multimask) & rows["buffer"].notna()
             & rows["prompt_mode"].str.match(r"^(tight_box|loose_box)")]
    out = []
    for label, g in r.groupby("model_label", sort=False):
        wide = g.pivot_table(index=OBJECT_KEYS, columns="buffer", values="iou", aggfunc="first").dropna()
        for b in sorted(wide.columns):
            v = wide[b]
            grp = (wide.index.get_level_values("dataset").astype(str) + ":" +
                   wide.index.get_level_values("image_id").astype(str)).to_numpy()
            mean, lo, hi = _boot(v.to_numpy(float), rng, n_boot, grp)
            out.append({"model_label": label, "buffer": float(b), "n": len(v), "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(out, columns=["model_label", "buffer", "n", "mean", "lo", "hi"])


def _boot(v: "np.ndarray", rng: "np.random.Generator", n_boot: int, groups: "np.ndarray") -> tuple[float, float, float]:
    from .stats import bootstrap_mean_ci

    if len(v) < 2:
        return (float(v.mean()) if len(v) else float("nan")), float("nan"), float("nan")
    return bootstrap_mean_ci(v, rng, n_boot=n_boot, groups=groups)


# --------------------------------------------------------------------------------------- clicks
def click_rows(rows: "pd.DataFrame", gt_variant: str = PRIMARY) -> "pd.DataFrame":
    """The click-sequence rows (``click >= 1``, status ok) against one ground-truth variant."""
    return rows[(rows["click"] >= 1) & (rows["status"] == "ok") & (rows["gt_variant"] == gt_variant)]


def click_curve_table(rows: "pd.DataFrame", gt_variant: str = PRIMARY) -> "pd.DataFrame":
    """``dataset, model_label, prompt_mode, multimask, click, n, mean``: mIoU after each click, from
    click 0 (the start prompt: box, extreme points...) for sequences that have one."""
    import pandas as pd

    r = click_rows(rows, gt_variant)
    start = rows[(rows["click"] == 0) & (rows["status"] == "ok") & (rows["gt_variant"] == gt_variant)
                 & rows["prompt_mode"].isin(set(r["prompt_mode"]))]
    r = pd.concat([start, r], ignore_index=True)
    keys = ["dataset", "model_label", "prompt_mode", "multimask", "click"]
    return (r.groupby(keys, sort=True)["iou"].agg(n="size", mean="mean").reset_index())


def noc_summary(rows: "pd.DataFrame", thresholds: Sequence[float] = (0.85, 0.9),
                gt_variant: str = PRIMARY) -> "pd.DataFrame":
    """Mean NoC@85/NoC@90 (RITM, capped at the sequence length) and the share of objects reaching them.

    One row per ``dataset, model_label, prompt_mode, multimask`` with ``objects, max_clicks,
    NoC@85, reached@85 (%), NoC@90, reached@90 (%)``; NoC per object from
    :func:`samstudy.metrics.noc_table` with ``max_clicks`` = the sequence's number of clicks.
    Per threshold also two counts of objects: ``>=max@85`` -- RITM's ``>=20`` column, NoC equal to
    the click limit, which includes targets reached exactly at the last click -- and
    ``unreached@85``, objects that never reach the target (the ``>=`` count minus those reached at
    the last click). For start prompts (``click = 0`` rows) NoC counts the clicks after the start.
    """
    import pandas as pd

    from .metrics import noc_table

    r = click_rows(rows, gt_variant)
    out = []
    for (ds, label, mode, mm), g in r.groupby(["dataset", "model_label", "prompt_mode", "multimask"], sort=True):
        max_clicks = int(g["click"].max())
        t = noc_table(g, thresholds=thresholds, max_clicks=max_clicks)
        row = {"dataset": ds, "model_label": label, "prompt_mode": mode, "multimask": mm,
               "objects": len(t), "max_clicks": max_clicks}
        for th in thresholds:
            tag = f"{round(th * 100):d}"
            row[f"NoC@{tag}"] = float(t[f"noc_{tag}"].mean())
            row[f"reached@{tag} (%)"] = 100.0 * float(t[f"reached_{tag}"].mean())
            row[f">=max@{tag}"] = int((t[f"noc_{tag}"] == max_clicks).sum())  # RITM's >=20 count
            row[f"unreached@{tag}"] = int((~t[f"reached_{tag}"]).sum())
        out.append(row)
    return pd.DataFrame(out)


# ------------------------------------------------------------------------------ labeling policy
def policy_gap_table(rows: "pd.DataFrame", arms: Sequence[Arm], raw_variant: str = "raw",
                     by: str | None = None) -> "pd.DataFrame":
    """How much of each arm's score the labeling policy costs: mIoU against raw and policy ground truth.

    Same objects for both variants (those scored against both); arms without raw rows are left out.
    Columns: ``arm, n, mIoU raw GT,
    mIoU policy GT, lost to the policy``; with a custom arm also ``gap to custom (policy GT)``,
    ``of which policy`` and ``of which mask quality`` (= gap - policy share). A fine-tuned arm
    (kind ``"finetuned"``) with the zero-shot arm of its base model and mode among ``arms`` also gets
    ``zero-shot lost to the policy`` and ``policy loss recovered`` = 1 - (its loss / the zero-shot
    loss), both on the objects the two arms share (NaN unless the zero-shot loss is > 0: a model
    that already scores higher against the policy has no policy loss to recover).
    by: also one row per value of this object column (e.g. ``"category"``), after each arm's
    overall row (``by`` column ``"all"``).
    """
    import pandas as pd

    if by is not None:
        parts = [policy_gap_table(rows, arms, raw_variant).assign(**{by: "all"})]
        for key, g in rows.groupby(by, sort=True):
            t = policy_gap_table(g, arms, raw_variant)
            if len(t):
                parts.append(t.assign(**{by: key}))
        out = pd.concat(parts, ignore_index=True)
        order = {a.label: i for i, a in enumerate(arms)}
        out = out.sort_values(["arm", by], key=lambda c: c.map(order) if c.name == "arm" else c.ne("all").astype(int),
                              kind="stable")
        return out[[by] + [c for c in out.columns if c != by]].reset_index(drop=True)
    out = []
    custom = next((a for a in arms if a.kind == "custom"), None)
    cm = arm_matrix(rows, [custom], gt_variant=PRIMARY) if custom else None

    def both_variants(arm: Arm) -> "pd.DataFrame":
        p = _arm_rows(rows, arm, PRIMARY)[OBJECT_KEYS + ["iou"]].rename(columns={"iou": "policy"})
        r = _arm_rows(rows, arm, raw_variant)[OBJECT_KEYS + ["iou"]].rename(columns={"iou": "raw"})
        return p.merge(r, on=OBJECT_KEYS)

    for arm in arms:
        both = both_variants(arm)
        if not len(both):  # an arm scored against the policy only (the custom model, trained on it)
            continue
        row = {"arm": arm.label, "n": len(both), "mIoU raw GT": both["raw"].mean() if len(both) else float("nan"),
               "mIoU policy GT": both["policy"].mean() if len(both) else float("nan")}
        row["lost to the policy"] = row["mIoU raw GT"] - row["mIoU policy GT"]
        if cm is not None and arm.kind != "custom":
            j = both.merge(cm[OBJECT_KEYS + [custom.label]], on=OBJECT_KEYS)
            gap = float((j[custom.label] - j["policy"]).mean())
            share = float((j["raw"] - j["policy"]).mean())
            row.update({"gap to custom (policy GT)": gap, "of which policy": share,
                        "of which mask quality": gap - share})
        zero = next((a for a in arms if a.kind in ("tight", "loose") and a.prompt_mode == arm.prompt_mode
                     and a.model == finetuned_base(arm.model)), None) if arm.kind == "finetuned" else None
        if zero is not None:
            j = both.merge(both_variants(zero), on=OBJECT_KEYS, suffixes=("", "_zs"))
            zs_loss = float((j["raw_zs"] - j["policy_zs"]).mean()) if len(j) else float("nan")
            ft_loss = float((j["raw"] - j["policy"]).mean()) if len(j) else float("nan")
            row.update({"zero-shot lost to the policy": zs_loss,
                        "policy loss recovered": 1 - ft_loss / zs_loss if zs_loss > 0 else float("nan")})
        out.append(row)
    return pd.DataFrame(out)


def policy_change(tags: "pd.Series") -> "pd.Series":
    """What the labeling policy did to each object, from its ``tags``: ``merged`` (tag
    ``policies.MERGED_TAG``; a merged object may also have had holes filled), else ``filled``
    (``FILLED_TAG``), else ``unchanged``."""
    import numpy as np
    import pandas as pd

    from .policies import FILLED_TAG, MERGED_TAG

    t = tags.fillna("").astype(str)
    merged, filled = t.str.contains(MERGED_TAG, regex=False), t.str.contains(FILLED_TAG, regex=False)
    return pd.Series(np.where(merged, "merged", np.where(filled, "filled", "unchanged")), index=tags.index)


def policy_effect_table(rows: "pd.DataFrame", arms: Sequence[Arm], raw_variant: str = "raw") -> "pd.DataFrame":
    """Does an arm fill the holes the policy fills and merge the objects the policy merges?

    Per arm and policy change (``filled`` / ``merged`` objects, by the policy's tags
    ``policies.FILLED_TAG`` / ``MERGED_TAG``; ``unchanged`` for the rest), on the objects scored
    against both ground truths: ``n``, mean IoU against the policy and the raw ground truth, and
    ``follows the policy (%)`` = share of objects whose prediction is closer (higher IoU) to the
    policy's mask than to the raw one. A fine-tuned arm with its zero-shot arm (same base model and
    mode) among ``arms`` also gets ``shortfall recovered (%)`` = 100 x (its policy mIoU - the
    zero-shot policy mIoU) / (1 - the zero-shot policy mIoU) on the objects both scored: the share of
    the zero-shot model's IoU shortfall against the policy that fine-tuning removes. Columns: ``arm,
    change, n, mIoU policy GT, mIoU raw GT, follows the policy (%), shortfall recovered (%)``.
    """
    import pandas as pd

    def scored(arm: Arm) -> "pd.DataFrame":
        p = _arm_rows(rows, arm, PRIMARY)[OBJECT_KEYS + ["tags", "iou"]].rename(columns={"iou": "policy"})
        r = _arm_rows(rows, arm, raw_variant)[OBJECT_KEYS + ["iou"]].rename(columns={"iou": "raw"})
        both = p.merge(r, on=OBJECT_KEYS)
        both["change"] = policy_change(both["tags"])
        return both

    cols = ["arm", "change", "n", "mIoU policy GT", "mIoU raw GT", "follows the policy (%)", "shortfall recovered (%)"]
    out = []
    for arm in arms:
        both = scored(arm)
        zero = next((a for a in arms if a.kind in ("tight", "loose") and a.prompt_mode == arm.prompt_mode
                     and a.model == finetuned_base(arm.model)), None) if arm.kind == "finetuned" else None
        zs = scored(zero)[OBJECT_KEYS + ["policy"]].rename(columns={"policy": "zs"}) if zero is not None else None
        for name in ("filled", "merged", "unchanged"):
            g = both[both["change"] == name]
            if not len(g):
                continue
            row = {"arm": arm.label, "change": name, "n": len(g), "mIoU policy GT": g["policy"].mean(),
                   "mIoU raw GT": g["raw"].mean(),
                   "follows the policy (%)": 100.0 * float((g["policy"] > g["raw"]).mean()),
                   "shortfall recovered (%)": float("nan")}
            if zs is not None:
                j = g.merge(zs, on=OBJECT_KEYS)
                short = 1.0 - float(j["zs"].mean()) if len(j) else 0.0
                if short > 0:
                    row["shortfall recovered (%)"] = 100.0 * (float(j["policy"].mean()) - float(j["zs"].mean())) / short
            out.append(row)
    return pd.DataFrame(out, columns=cols)


def policy_changes(raw: Any, policy: Any) -> "pd.DataFrame":
    """Per category, what the labeling policy changed: objects before/after, merged, filled, pixels added.

    ``raw`` and ``policy``: ``data.Dataset`` of the same images before and after ``apply_policy``.
    A policy object is *merged* when it lists several ``source_ann_ids``, *filled* when it has more
    pixels than the union of its raw members.
    """
    import pandas as pd

    raw_by_id = {t.ann_id: t for t in raw.instances}
    rows = []
    for cid, name in sorted(raw.categories.items()):
        before = [t for t in raw.instances if t.category_id == cid]
        after = [t for t in policy.instances if t.category_id == cid]
        merged = [t for t in after if len(t.source_ann_ids or ()) > 1]
        members_area = [sum(raw_by_id[a].area for a in (t.source_ann_ids or (t.ann_id,)) if a in raw_by_id)
                        for t in after]
        added = [max(0, t.area - m) for t, m in zip(after, members_area)]
        rows.append({"category": name, "objects before": len(before), "objects after": len(after),
                     "merged objects": len(merged), "filled objects": sum(a > 0 for a in added),
                     "pixels added": int(sum(added)),
                     "pixels before": int(sum(t.area for t in before))})
    return pd.DataFrame(rows)


def dataset_stats(datasets: Mapping[str, Any]) -> "pd.DataFrame":
    """Per split and category: images, objects, size buckets, objects with holes (``tags`` 'holes' or not).

    ``datasets``: ``{split name: data.Dataset}``.
    """
    import pandas as pd

    from .metrics import size_bucket

    rows = []
    for split, ds in datasets.items():
        for t in ds.instances:
            rows.append({"split": split, "category": t.category, "image_id": t.image_id,
                         "size_bucket": size_bucket(t.area), "area": t.area})
    if not rows:
        return pd.DataFrame(columns=["split", "category", "images", "objects", "small", "medium", "large", "mean area"])
    df = pd.DataFrame(rows)
    g = df.groupby(["split", "category"], sort=True)
    out = g.agg(images=("image_id", "nunique"), objects=("area", "size"), **{"mean area": ("area", "mean")})
    buckets = pd.crosstab([df["split"], df["category"]], df["size_bucket"])
    out = out.join(buckets.reindex(columns=["small", "medium", "large"], fill_value=0)).reset_index()
    return out[["split", "category", "images", "objects", "small", "medium", "large", "mean area"]]


def split_image_counts(datasets: Mapping[str, Any]) -> dict[str, int]:
    """``{split name: number of images holding at least one object}``; ``datasets`` as in :func:`dataset_stats`."""
    return {split: len({t.image_id for t in ds.instances}) for split, ds in datasets.items()}


# ---------------------------------------------------------------------- beside published numbers
def published_key(arm: Arm) -> str:
    """The :data:`samstudy.published.PUBLISHED` key an arm's mIoU is filed under.

    ``"custom"`` for a custom arm, else the arm's own prompt-mode key. The key is never derived from
    the arm's kind, so a loose arm at b = 0.3 is filed as ``"loose_box[b=0.3]"``, which no published
    number has: it is not placed beside the published b = 0.2 box.
    """
    return CUSTOM_KEY if arm.kind == "custom" else arm.prompt_mode


def _put(ours: dict[str, float], how: dict[str, str], key: str, value: float, method: str) -> None:
    # The first source of a key wins (arms come in headline order: the refined custom model and
    # the first foundation model), so a later arm never overwrites the headline's number.
    if key not in ours:
        ours[key], how[key] = float(value), method


def ours_for_published(matrix: "pd.DataFrame", arms: Sequence[Arm], foundation: "pd.DataFrame",
                       noc: "pd.DataFrame", multimask: str, published_keys: Sequence[str] | None = None,
                       ) -> tuple[dict[str, float], dict[str, str]]:
    """Our numbers under the keys of :data:`samstudy.published.PUBLISHED`: ``(ours, how)``.

    ours: ``{key: value}``; how: ``{key: what produced it}`` (an arm label, or model label and mode).

    - ``custom`` / ``<mode>`` (:func:`published_key`): the paired mean of the arm's column of
      ``matrix`` (:func:`arm_matrix` of ``iou``, same objects for every arm);
    - ``<tight mode>/<bucket>``: the first tight arm's paired mean per ``size_bucket`` of ``matrix``;
    - other published prompt modes (``jitter_box[noise=0.2]``, ``extreme_points``; every key of
      ``published_keys`` that is a prompt-mode key and not a tight/loose box): the mean ``iou`` of
      the first foundation model (in row order) over its one-shot rows of that mode (``click == 0``,
      status ok, ``gt_variant`` primary, ``multimask``). ``foundation``: the foundation rows only,
      so ``extreme_points`` is the foundation model's, not the custom model's;
    - ``noc90/<dataset>``: ``NoC@90`` of the first row of ``noc`` (:func:`noc_summary`) per dataset.

    published_keys: the keys to look for (default: every key of ``PUBLISHED``).
    """
    from .published import PUBLISHED

    keys = list(dict.fromkeys(p.key for p in PUBLISHED)) if published_keys is None else list(published_keys)
    ours: dict[str, float] = {}
    how: dict[str, str] = {}
    for a in arms:
        _put(ours, how, published_key(a), matrix[a.label].mean(), a.label)
    tight = next((a for a in arms if a.kind == "tight"), None)
    if tight is not None:
        for bucket, g in matrix.groupby("size_bucket"):
            _put(ours, how, f"{published_key(tight)}/{bucket}", g[tight.label].mean(), tight.label)
    for key in _row_mode_keys(keys):
        found = _first_model_mean(foundation, key, multimask)
        if found is not None:
            _put(ours, how, key, found[1], f"{found[0]}, {key}")
    for _, r in noc.iterrows():
        if "NoC@90" in r:
            _put(ours, how, f"{NOC90_PREFIX}{r['dataset']}", r["NoC@90"], f"{r['model_label']}, {r['prompt_mode']}")
    return ours, how


def _row_mode_keys(keys: Sequence[str]) -> list[str]:
    """The published keys read from one-shot rows: prompt-mode keys (no ``/``, not ``custom``) whose
    mode is not a tight/loose box (those come from the headline's paired arms)."""
    return [k for k in keys if k != CUSTOM_KEY and "/" not in k and k.split("[")[0] not in _ARM_MODE_NAMES]


def _first_model_mean(foundation: "pd.DataFrame", mode: str, multimask: str) -> tuple[str, float] | None:
    """``(model_label, mean iou)`` of the first model (row order) with ok one-shot primary rows of ``mode``."""
    if not len(foundation):
        return None
    sel = foundation[(foundation["click"] == 0) & (foundation["status"] == "ok")
                     & (foundation["gt_variant"] == PRIMARY) & (foundation["multimask"] == multimask)
                     & (foundation["prompt_mode"] == mode)]
    if not len(sel):
        return None
    first = sel["model_label"].iloc[0]
    return first, float(sel.loc[sel["model_label"] == first, "iou"].mean())


def finetune_gain_table(foundation: "pd.DataFrame", tuned: "pd.DataFrame", rng: "np.random.Generator",
                        n_boot: int, multimask: str = "single") -> "pd.DataFrame":
    """What fine-tuning adds, per fine-tuned model and prompt mode it was scored with: the paired
    mIoU of the zero-shot base model and of the fine-tuned one on the same objects (primary ground
    truth, one-shot, ``multimask``), with the 95% image-bootstrap CI of the difference.

    Columns: ``model, prompt_mode, n, zero-shot, fine-tuned, diff, lo, hi``. A mode the base model
    was not scored with in ``foundation`` is left out.
    """
    import pandas as pd

    out = []
    if tuned is None or not len(tuned):
        return pd.DataFrame(columns=["model", "prompt_mode", "n", "zero-shot", "fine-tuned", "diff", "lo", "hi"])
    one = tuned[tuned["click"] == 0]
    for (model, label), g in one.groupby(["model", "model_label"], sort=True):
        base = finetuned_base(model)
        for mode in sorted(g["prompt_mode"].unique()):
            zs = foundation[(foundation["model"] == base) & (foundation["prompt_mode"] == mode)] if len(foundation) else foundation
            if not len(zs):
                continue
            a = Arm(f"{label}, {_mode_label(mode)}", model, mode, multimask, "finetuned")
            b = Arm(f"{zs['model_label'].iloc[0]}, {_mode_label(mode)}", base, mode, multimask, "tight")
            m = arm_matrix(pd.concat([zs, g], ignore_index=True), [a, b])
            if not len(m):
                continue
            d = paired_diff_table(m, [(a.label, b.label)], rng, n_boot, by=None).iloc[0]
            out.append({"model": model, "prompt_mode": mode, "n": len(m), "zero-shot": m[b.label].mean(),
                        "fine-tuned": m[a.label].mean(), "diff": d["diff"], "lo": d["lo"], "hi": d["hi"]})
    return pd.DataFrame(out, columns=["model", "prompt_mode", "n", "zero-shot", "fine-tuned", "diff", "lo", "hi"])
