"""The evaluation engine of every arm: every test object x every prompt mode x model -> one tidy table.

Every arm is a :class:`~samstudy.models.base.PromptableSegmenter` -- the zero-shot foundation
models, fine-tuned ones and the custom model (:class:`samstudy.custom.CustomArm`) -- and this
module is the only writer of their result rows (schema: :mod:`samstudy.results`), with one image
check and one skip vocabulary for all of them.

API
---
- :func:`process_image` -- the pure per-image step ``(record, instances, model, modes, cache,
  seed, ...) -> (rows, predictions)``; no file I/O besides reading the image and the embedding
  cache, so a distributed engine can map it over images.
- :func:`run_experiment` -- the resumable loop over a :class:`~samstudy.data.Dataset`
  writing ``out_dir/results.parquet`` (rows) and ``out_dir/predictions.parquet`` (masks as RLE).
- :func:`samstudy.models.base.check_model_modes` -- the capability check (prompt modes, multimask
  selections) that :func:`run_experiment` runs before anything else, and configs run at load time.

A model decodes only the modes it declares (``supported_modes``); another mode is a ``ValueError``
before any image is read. Models with one output per prompt (``multimask_outputs = 1``, e.g. the
custom model) take only the ``single`` selection. Models with ``cache_embeddings = False`` bypass
the on-disk embedding cache.

Per image: the image is read once, encoded once (or its embedding loaded from the
:class:`~samstudy.cache.EmbeddingCache`), then every prompt mode is decoded in **one batched
decode call per mode and multimask selection** over all objects of the image (click sequences: one
call per click step over all objects still clicking). Predicted masks are compared with the ground
truth at full image resolution, encoded as RLE for the predictions table and dropped.

Prompts
-------
Prompt definitions live in :mod:`samstudy.prompts` (tight/loose/jittered box, extreme points,
centre point, ...). The random generator of each (object, mode) is
``numpy.random.default_rng([seed, image_id, ann_id, h(mode.key)])`` with ``h`` = the first 8 bytes
of SHA-256 of the key (ids taken modulo 2**64), so every model, every rerun and every processing
order sees identical prompts.

Multimask selections (``multimask`` column)
-------------------------------------------
How the mask of a prompt is chosen among the model's outputs ("policy" in this package means only
the labeling policy). One-shot modes run once per entry of ``multimask`` (default both):

- ``"single"``: ``decode(multimask=False)``, SAM's single output token;
- ``"best_of_3"``: ``decode(multimask=True)`` and the mask with the highest predicted IoU.

Click sequences run once per entry of ``click_multimask`` (default
:func:`samstudy.models.base.default_click_selections`: ``"first_best_of_3"``, or ``"single"`` for a
model with one output per prompt):

- ``"first_best_of_3"`` (SAM's interactive convention, our choice of default): the first decode
  of the sequence (the first click, or the box for ``start=box``) takes the best of 3 by predicted
  IoU -- one point is ambiguous -- and every later step uses the single output, which SAM trains
  for multi-point prompts;
- ``"single"`` / ``"best_of_3"``: that rule at every step.

The column holds the sequence's selection (constant over its clicks, so NoC groups stay whole).

Click sequences (``clicks[start=...,max_clicks=M]``)
----------------------------------------------------
RITM clicks from :class:`samstudy.clicks.ClickSimulator` on the *primary* ground truth with the
instance's ``ignore_rle`` (no clicks on ignored pixels). Step ``k`` (``click = k``, 1..M) decodes
the k clicks so far (plus the start prompt: the tight box for ``start=box``, the loose box for
``start=loose_box``, the 4 positive extreme points, given before the clicks, for
``start=extreme_points``) with ``mask_inputs`` = the previous step's selected low-res logits
``(N, 1, 256, 256)``, as SAM's interactive loop does. Every start but ``click`` also writes the
start-only prediction as ``click = 0`` (no mask input); so NoC counts the corrective clicks after
it. Which starts a model takes follows from its ``supported_modes`` (the start's one-shot mode,
:data:`samstudy.prompts.CLICK_START_MODES`), so no arm is a special case. When the simulator finds no
clickable error (the prediction is perfect outside ignored pixels) the annotator stops: later
click rows repeat the last result with ``time_decode_s = 0`` (so mIoU-per-click curves are over
all objects at every k) and no prediction is stored for them. NoC: :func:`samstudy.metrics.noc_table`.

Result rows (``results.parquet``; docs/ARCHITECTURE.md plus ``iscrowd``, ``cached``, ``seed``, ``skip_detail``)
--------------------------------------------------------------------------------------------------------
One row per object x prompt mode x multimask selection x click x ground-truth variant:

=====================  ======================================================================
dataset, split, policy labels given to the run (``split``/``policy`` name the data given; the
                       engine does not split or apply policies)
gt_variant             ``"primary"`` (the dataset's masks) or a key of ``gt_variants``
image_id, ann_id       ids; category_id, category, iscrowd, tags (comma-joined str)
area, size_bucket      of the *primary* instance (so buckets line up across variants)
model, model_label,    the model's identity (LiteMedSAM is never labelled SAM)
checkpoint_sha256
prompt_mode            ``PromptMode.key``, e.g. ``"loose_box[b=0.2]"``
prompt_params          JSON of the mode's parameters; buffer: b of loose boxes, 0 for tight, else NaN
multimask              selection above; click: 0 for one-shot prompts, 1..M for click steps
iou ... pred_area      :func:`samstudy.metrics.object_metrics` against this variant's mask
                       (with the variant instance's ``ignore_rle``)
pred_iou               the model's own IoU estimate of the selected mask
time_encode_s          encoder seconds of the row's *image* (repeated on each of its rows;
                       0 when ``cached``); sum over unique ``image_id`` for totals
time_decode_s          this object's share of the batched decode call (call time / N; one-shot modes
                       decode every multimask selection in one pass: time / (N x selections))
cached                 the embedding came from the cache
seed                   the run's prompt seed
status, skip_reason,   ``"ok"``, or ``"skipped"`` with a code (``image_unreadable``, ``image_missing``,
skip_detail            ``image_truncated`` (from :func:`samstudy.data.read_image`),
                       ``image_size_mismatch``, ``empty_mask``, ``degenerate_box``,
                       ``prompt_error``, ``no_clickable_pixel``, ``missing_in_gt_variant``,
                       ``variant_size_mismatch``) and a human-readable detail; metrics are
                       null and ``click`` is 0 (so NoC tables ignore them)
=====================  ======================================================================

Skips: an unreadable image gives a skip row per (object, mode, selection); an empty object or one
whose tight box is under ``min_box_side`` (2) pixels wide or high gives a skip row per (mode,
selection) for that object only (all modes, so every mode is scored on the same objects).

Predictions (``predictions.parquet``)
-------------------------------------
``dataset, split, policy, image_id, ann_id, model, prompt_mode, multimask, click, pred_iou,
iou`` (vs primary GT), ``prompt`` (JSON ``{"box": [4] | null, "points": [[x, y], ...] | null,
"labels": [...] | null}``) and ``rle`` (JSON of the compressed COCO RLE; :func:`prediction_mask`).

Resume and the one writer
-------------------------
``out_dir/manifest.json`` holds the run identity (dataset name, split, policy, model name/label,
checkpoint SHA-256, model cache key, mode keys, multimask selections, seed, gt-variant names,
engine version) and provenance (package versions, git commit, time). Each image is written
atomically to ``out_dir/parts/<image_id>.parquet`` (+ ``<image_id>.pred.parquet``, written first)
with the run identity hash and an image fingerprint (record + instances + variant masks) in the
Parquet metadata. On restart an image is skipped when both its parts exist and carry the same
identity and fingerprint (an image that could not be read is retried), so a run killed after k of
n images decodes only the n - k others. Parts of the same identity are always kept. A different
identity raises :class:`ManifestMismatch`; with ``force=True`` the other identity's parts are
discarded instead and their number is logged and returned in ``df.attrs["discarded_parts"]``.
Provenance differences are only logged.

One process writes an ``out_dir`` at a time: :func:`samstudy.locks.folder_lock` holds it for the
whole run, so a second run on the same folder fails at once naming the first (whose files it
never touches), and the lock of a killed run is taken over. The final tables are the parts of the
dataset's images concatenated and sorted by ``(image_id, ann_id, prompt_mode, multimask, click,
gt_variant)``, hence identical (except timing and ``cached``) to an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .cache import EmbeddingCache
from .clicks import ClickSimulator
from .data import IMAGE_SKIP_REASONS, Dataset, ImageRecord, Instance, check_skip_limit, read_record_image
from .executors import ExecutorSpec, run_distributed
from .files import TMP_PREFIX, write_json_atomic, write_parquet_atomic
from .locks import folder_lock
from .masks import encode_rle
from .metrics import METRIC_KEYS, object_metrics, size_bucket
from .models.base import (CLICK_SELECTIONS, ONE_SHOT_SELECTIONS, Decoded, Embedding, PromptableSegmenter,
                          check_model_modes, default_click_selections)
from .provenance import git_info, package_versions
from .prompts import DEFAULT_MODES, Prompt, PromptMode, make_prompt, parse_modes, tight_box
from .results import (PRED_SCHEMA, PRIMARY, ROW_SCHEMA, predictions_table, rows_table, sort_table, to_pandas,
                      write_table)

log = logging.getLogger(__name__)

__all__ = [
    "EmbeddingCache", "ENGINE_VERSION", "ONE_SHOT_SELECTIONS", "CLICK_SELECTIONS", "ManifestMismatch",
    "prompt_rng", "process_image", "run_experiment", "run_identity", "skip_table", "ImageStep", "ImageProgress",
]

ENGINE_VERSION = 1  # bump when rows change for identical inputs (part of the run identity)

_META_RUN = b"samstudy_run_id"
_META_IMAGE = b"samstudy_image_fingerprint"
_META_RETRY = b"samstudy_retry"  # "1": the image could not be read; try again on resume
_RETRY_REASONS = {"image_unreadable", "image_missing", "image_truncated"}

ImageLoader = Callable[[ImageRecord], np.ndarray]
GtVariants = Mapping[str, Mapping[int, Instance]]


class ManifestMismatch(ValueError):
    """``out_dir`` holds results of a different run identity (model, modes, seed, ...)."""


# =============================================================================== prompts & rng
def _u64(v: int) -> int:
    return int(v) % (1 << 64)


def _key_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")


def prompt_rng(seed: int, image_id: int, ann_id: int, mode_key: str) -> np.random.Generator:
    """The generator of one (object, mode): ``default_rng([seed, image_id, ann_id, h(mode_key)])``."""
    return np.random.default_rng([_u64(seed), _u64(image_id), _u64(ann_id), _key_int(mode_key)])


def _prompt_json(p: Prompt) -> str:
    return json.dumps({
        "box": None if p.box is None else [float(v) for v in p.box],
        "points": None if p.points is None else p.points.tolist(),
        "labels": None if p.labels is None else [int(v) for v in p.labels],
    })


# =============================================================================== per-image state
@dataclass
class _Object:
    """One object of the image being processed (masks are full-resolution ``bool (H, W)``)."""

    inst: Instance
    gt: np.ndarray
    ignore: np.ndarray | None
    # variant name -> (gt mask, ignore mask); "primary" first
    targets: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)


@dataclass
class _Ctx:
    """Everything constant over the rows of one image."""

    dataset: str
    split: str
    policy: str
    model: PromptableSegmenter
    seed: int
    variants: list[str]
    time_encode_s: float = 0.0
    cached: bool = False

    def base(self, inst: Instance, mode: PromptMode, selection: str, click: int) -> dict[str, Any]:
        buf = mode.buffer
        return {
            "dataset": self.dataset, "split": self.split, "policy": self.policy,
            "image_id": int(inst.image_id), "ann_id": int(inst.ann_id), "category_id": int(inst.category_id),
            "category": inst.category, "iscrowd": bool(inst.iscrowd), "area": int(inst.area),
            "size_bucket": size_bucket(inst.area), "tags": ",".join(inst.tags),
            "model": self.model.name, "model_label": self.model.label,
            "checkpoint_sha256": self.model.checkpoint_sha256,
            "prompt_mode": mode.key, "prompt_params": mode.params_json(),
            "buffer": float("nan") if buf is None else float(buf), "multimask": selection, "click": int(click),
            "seed": int(self.seed),
        }

    def skip_rows(self, inst: Instance, mode: PromptMode, selection: str, reason: str, detail: str,
                  variants: Iterable[str] | None = None, click: int = 0) -> list[dict[str, Any]]:
        rows = []
        for v in (self.variants if variants is None else variants):
            r = self.base(inst, mode, selection, click)
            r.update({"gt_variant": v, "pred_iou": float("nan"), "time_encode_s": 0.0, "time_decode_s": 0.0,
                      "cached": False, "status": "skipped", "skip_reason": reason, "skip_detail": detail})
            r.update({k: None for k in METRIC_KEYS})
            rows.append(r)
        return rows

    def ok_rows(self, obj: _Object, mode: PromptMode, selection: str, click: int, pred: np.ndarray,
                pred_iou: float, time_decode_s: float, first_step: bool = True) -> list[dict[str, Any]]:
        """Metric rows of one prediction, one per variant; unusable variants give one skip row
        (``click`` 0) on the sequence's first step only."""
        rows = []
        for v in self.variants:
            gt, ignore = obj.targets.get(v, (None, None))
            if gt is None or gt.shape != pred.shape:
                if first_step:
                    reason, detail = (("missing_in_gt_variant", f"ann_id {obj.inst.ann_id} not in gt variant {v!r}")
                                      if gt is None else
                                      ("variant_size_mismatch", f"variant mask {gt.shape} vs image {pred.shape}"))
                    rows.extend(self.skip_rows(obj.inst, mode, selection, reason, detail, [v]))
                continue
            r = self.base(obj.inst, mode, selection, click)
            r.update(object_metrics(pred, gt, ignore))
            r.update({"gt_variant": v, "pred_iou": float(pred_iou), "time_encode_s": self.time_encode_s,
                      "time_decode_s": float(time_decode_s), "cached": self.cached, "status": "ok",
                      "skip_reason": None, "skip_detail": None})
            rows.append(r)
        return rows


def _pred_record(ctx: _Ctx, inst: Instance, mode: PromptMode, selection: str, click: int, prompt: Prompt,
                 pred: np.ndarray, pred_iou: float, iou: float) -> dict[str, Any]:
    return {"dataset": ctx.dataset, "split": ctx.split, "policy": ctx.policy, "image_id": int(inst.image_id),
            "ann_id": int(inst.ann_id), "model": ctx.model.name, "prompt_mode": mode.key, "multimask": selection,
            "click": int(click), "pred_iou": float(pred_iou), "iou": float(iou),
            "prompt": _prompt_json(prompt), "rle": json.dumps(encode_rle(pred))}


def _select(dec: Decoded, i: int, best_of_3: bool) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Selected ``(mask bool (H, W), pred_iou, low-res logits (1, 256, 256) or None)`` of prompt ``i``."""
    k = int(np.argmax(dec.iou_pred[i])) if best_of_3 else 0
    low = None if dec.low_res_logits is None else dec.low_res_logits[i, k:k + 1]
    # copies: the (N, K, H, W) batch is freed once every object has taken its mask
    return dec.masks[i, k].copy(), float(dec.iou_pred[i, k]), low


def _timed_decode(model: PromptableSegmenter, emb: Embedding, prompts: list[Prompt], multimask: Sequence[bool],
                  mask_inputs: np.ndarray | None = None) -> tuple[list[Decoded], float]:
    """``model.decode_multimask`` (one decoder pass for every multimask flag) and its wall time."""
    t0 = time.perf_counter()
    decoded = model.decode_multimask(emb, prompts, list(multimask), mask_inputs)
    return decoded, time.perf_counter() - t0


# =============================================================================== mode runners
def _run_one_shot(ctx: _Ctx, objs: list[_Object], mode: PromptMode, selections: Sequence[str],
                  emb: Embedding, image_hw: tuple[int, int], rows: list, preds: list | None) -> None:
    """One-shot mode: prompts per object, one decoder pass over all objects for every selection."""
    prompts: list[Prompt] = []
    ready: list[_Object] = []
    for obj in objs:
        rng = prompt_rng(ctx.seed, obj.inst.image_id, obj.inst.ann_id, mode.key)
        try:
            p = make_prompt(mode, obj.gt, image_hw, rng)
        except ValueError as e:
            for sel in selections:
                rows.extend(ctx.skip_rows(obj.inst, mode, sel, "prompt_error", str(e)))
            continue
        prompts.append(p)
        ready.append(obj)
    if not ready:
        return
    # every selection from one decoder pass; each row carries an equal share of that pass's time
    decoded, dt = _timed_decode(ctx.model, emb, prompts, [sel == "best_of_3" for sel in selections])
    share = dt / (len(ready) * len(selections))
    for sel, dec in zip(selections, decoded):
        for i, obj in enumerate(ready):
            mask, piou, _ = _select(dec, i, sel == "best_of_3")
            new = ctx.ok_rows(obj, mode, sel, 0, mask, piou, share)
            rows.extend(new)
            if preds is not None:
                preds.append(_pred_record(ctx, obj.inst, mode, sel, 0, prompts[i], mask, piou, new[0]["iou"]))


def _click_best_of_3(selection: str, first: bool) -> bool:
    return selection == "best_of_3" or (selection == "first_best_of_3" and first)


def _run_clicks(ctx: _Ctx, objs: list[_Object], mode: PromptMode, selection: str, emb: Embedding,
                rows: list, preds: list | None) -> None:
    """A click sequence for every object, batched over objects at each click step.

    A start other than ``click`` (tight box, loose box, extreme points) is decoded first as click 0
    and stays in every later prompt: its box, and its points before the corrective clicks."""
    start_prompt = mode.params["start"] != "click"
    max_clicks = int(mode.params["max_clicks"])
    n = len(objs)
    sims = [ClickSimulator(o.gt, o.ignore) for o in objs]
    starts = [make_prompt(mode, o.gt, o.gt.shape) if start_prompt else None for o in objs]
    boxes = [None if p is None else p.box for p in starts]
    preds_now: list[np.ndarray] = [np.zeros_like(o.gt) for o in objs]
    last_rows: list[list[dict] | None] = [None] * n
    logits: np.ndarray | None = None  # (n, 1, 256, 256) selected low-res logits of the last step
    first = True

    def emit(i: int, click: int, prompt: Prompt, mask: np.ndarray, piou: float, share: float) -> None:
        new = ctx.ok_rows(objs[i], mode, selection, click, mask, piou, share, first_step=last_rows[i] is None)
        rows.extend(new)
        last_rows[i] = [r for r in new if r["status"] == "ok"]
        preds_now[i] = mask
        if preds is not None:
            preds.append(_pred_record(ctx, objs[i].inst, mode, selection, click, prompt, mask, piou, new[0]["iou"]))

    def step_prompt(i: int) -> Prompt:
        pts, lab = sims[i].points, sims[i].labels
        first = starts[i]
        if first is not None and first.points is not None:
            pts, lab = np.concatenate([first.points, pts]), np.concatenate([first.labels, lab])
        return Prompt(mode=mode.key, box=boxes[i], points=pts, labels=lab, params=dict(mode.params))

    if start_prompt:
        prompts = list(starts)
        (dec,), dt = _timed_decode(ctx.model, emb, prompts, [_click_best_of_3(selection, True)])
        logits = np.zeros((n, 1) + dec.low_res_logits.shape[2:], np.float32)
        for i in range(n):
            mask, piou, logits[i] = _select(dec, i, _click_best_of_3(selection, True))
            emit(i, 0, prompts[i], mask, piou, dt / n)
        first = False

    active = list(range(n))
    for click in range(1, max_clicks + 1):
        still: list[int] = []
        for i in active:
            if sims[i].next(preds_now[i]) is not None:
                still.append(i)
            elif last_rows[i] is None:  # no clickable pixel even on the empty prediction
                rows.extend(ctx.skip_rows(objs[i].inst, mode, selection, "no_clickable_pixel",
                                          "no error pixel outside the ignore mask"))
        active = still
        busy = set(active)
        for i in range(n):  # stopped annotators: repeat the last result at this click
            if i not in busy and last_rows[i] is not None:
                rows.extend(dict(r, click=click, time_decode_s=0.0) for r in last_rows[i])
        if not active:
            continue
        prompts = [step_prompt(i) for i in active]
        mask_in = None if logits is None else logits[active]
        bo3 = _click_best_of_3(selection, first)
        (dec,), dt = _timed_decode(ctx.model, emb, prompts, [bo3], mask_in)
        if logits is None:
            logits = np.zeros((n, 1) + dec.low_res_logits.shape[2:], np.float32)
        for j, i in enumerate(active):
            mask, piou, logits[i] = _select(dec, j, bo3)
            emit(i, click, prompts[j], mask, piou, dt / len(active))
        first = False


# =============================================================================== per-image step
def _read_record(record: ImageRecord) -> np.ndarray:
    return read_record_image(record)  # in the record's EXIF frame (data.load_coco's EXIF rule)


def _selections(mode: PromptMode, multimask: Sequence[str], click_multimask: Sequence[str]) -> Sequence[str]:
    return click_multimask if mode.is_interactive else multimask


def _skip_all(ctx: _Ctx, inst: Instance, modes: Sequence[PromptMode], multimask: Sequence[str],
              click_multimask: Sequence[str], reason: str, detail: str) -> list[dict[str, Any]]:
    """Skip rows of one object for every (mode, selection)."""
    rows: list[dict[str, Any]] = []
    for mode in modes:
        for sel in _selections(mode, multimask, click_multimask):
            rows.extend(ctx.skip_rows(inst, mode, sel, reason, detail))
    return rows


def _check_image(image: Any, record: ImageRecord) -> tuple[str, str] | None:
    """``(reason, detail)`` when the decoded image is unusable, else ``None``."""
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        return "image_unreadable", f"expected uint8 (H, W, 3), got {getattr(image, 'dtype', type(image))} " \
                                   f"{getattr(image, 'shape', '')}"
    if image.shape[:2] != (record.height, record.width):
        return "image_size_mismatch", f"image {image.shape[:2]} vs record {(record.height, record.width)}"
    return None


def _prepare(inst: Instance, image_hw: tuple[int, int], variants: GtVariants,
             min_box_side: int) -> _Object | tuple[str, str]:
    """The object's full-resolution masks, or ``(reason, detail)`` when it cannot be prompted."""
    if tuple(inst.rle["size"]) != image_hw:
        return "image_size_mismatch", f"mask size {tuple(inst.rle['size'])} vs image {image_hw}"
    gt = inst.mask()
    if not gt.any():
        return "empty_mask", "ground-truth mask has no pixel"
    box = tight_box(gt)
    w, h = box[2] - box[0], box[3] - box[1]
    if min(w, h) < min_box_side:
        return "degenerate_box", f"tight box {w:g} x {h:g} px (minimum side {min_box_side})"
    ignore = inst.ignore_mask()
    obj = _Object(inst=inst, gt=gt, ignore=ignore, targets={PRIMARY: (gt, ignore)})
    for name, lookup in variants.items():
        alt = lookup.get(inst.ann_id)
        if alt is not None:
            obj.targets[name] = (alt.mask(), alt.ignore_mask())
    return obj


def process_image(record: ImageRecord, instances: Sequence[Instance], model: PromptableSegmenter,
                  modes: Sequence[PromptMode | str] = DEFAULT_MODES, cache: EmbeddingCache | None = None,
                  seed: int = 0, *, dataset: str = "", split: str = "test", policy: str = "raw",
                  gt_variants: GtVariants | None = None, multimask: Sequence[str] = ONE_SHOT_SELECTIONS,
                  click_multimask: Sequence[str] | None = None, min_box_side: float = 2,
                  image: np.ndarray | None = None, image_loader: ImageLoader | None = None,
                  keep_predictions: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every prompt mode on every object of one image (see the module docstring for the rows).

    Args:
        record, instances: the image and its objects (any order; rows are sorted later).
        model: the segmenter; cache: embedding cache (``None`` = encode without caching).
        modes: prompt modes (``PromptMode`` or key strings); seed: prompt seed.
        gt_variants: ``{name: {ann_id: Instance}}`` alternative ground truths scored as extra rows.
        multimask / click_multimask: selections of one-shot modes / click sequences.
        min_box_side: objects whose tight box is narrower or lower (px) are skipped (``degenerate_box``).
        image: the decoded RGB ``uint8 (H, W, 3)`` (read with ``image_loader(record)`` when ``None``;
            default loader :func:`samstudy.data.read_record_image`).
        keep_predictions: also return prediction records (RLE masks).

    Returns:
        ``(rows, predictions)``: lists of dicts with the ``ROW_COLUMNS`` / ``PRED_COLUMNS`` keys.
        Read/format problems become skip rows; model errors propagate.
    """
    modes = parse_modes(modes)
    click_multimask = default_click_selections(model) if click_multimask is None else click_multimask
    check_model_modes(model, modes, multimask, click_multimask)
    variants = dict(gt_variants or {})
    ctx = _Ctx(dataset=dataset, split=split, policy=policy, model=model, seed=int(seed),
               variants=[PRIMARY] + sorted(variants))
    rows: list[dict[str, Any]] = []
    preds: list[dict[str, Any]] | None = [] if keep_predictions else None
    if not instances:
        return rows, preds or []
    if image is None:
        try:
            image = (image_loader or _read_record)(record)
        except Exception as e:  # noqa: BLE001 - any read failure is a recorded skip, not a crash
            reason = getattr(e, "reason", None) or "image_unreadable"
            detail = f"{type(e).__name__}: {e}"
            log.warning("image %s skipped: %s", record.image_id, detail)
            for inst in instances:
                rows.extend(_skip_all(ctx, inst, modes, multimask, click_multimask, reason, detail))
            return rows, preds or []
    bad = _check_image(image, record)
    if bad is not None:
        for inst in instances:
            rows.extend(_skip_all(ctx, inst, modes, multimask, click_multimask, *bad))
        return rows, preds or []

    image_hw = (int(image.shape[0]), int(image.shape[1]))
    objs: list[_Object] = []
    for inst in sorted(instances, key=lambda t: t.ann_id):
        prepared = _prepare(inst, image_hw, variants, min_box_side)
        if isinstance(prepared, _Object):
            objs.append(prepared)
        else:
            rows.extend(_skip_all(ctx, inst, modes, multimask, click_multimask, *prepared))
    if not objs:
        return rows, preds or []

    if cache is None or not model.cache_embeddings:
        cache = EmbeddingCache(None)
    emb, ctx.cached, ctx.time_encode_s = cache.get_or_encode(model, image)
    for mode in modes:
        if mode.is_interactive:
            for sel in click_multimask:
                _run_clicks(ctx, objs, mode, sel, emb, rows, preds)
        else:
            _run_one_shot(ctx, objs, mode, multimask, emb, image_hw, rows, preds)
    return rows, preds or []


# =============================================================================== run identity
def run_identity(dataset_name: str, split: str, policy: str, model: PromptableSegmenter,
                 modes: Sequence[PromptMode], multimask: Sequence[str], click_multimask: Sequence[str],
                 seed: int, variant_names: Sequence[str], min_box_side: float,
                 store_predictions: bool) -> dict[str, Any]:
    """The fields that must agree for two runs' part files to be mixed (JSON-serialisable)."""
    return {
        "engine_version": ENGINE_VERSION, "dataset": dataset_name, "split": split, "policy": policy,
        "model": model.name, "model_label": model.label, "checkpoint_sha256": model.checkpoint_sha256,
        "model_key": model.cache_key, "modes": [m.key for m in modes],  # weights + preprocessing + runtime
        "multimask": list(multimask), "click_multimask": list(click_multimask), "seed": int(seed),
        "gt_variants": sorted(variant_names), "min_box_side": float(min_box_side),
        "store_predictions": bool(store_predictions),
    }


def _run_id(identity: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


def _image_fingerprint(record: ImageRecord, instances: Sequence[Instance], variants: GtVariants) -> str:
    """Hash of what the image's rows depend on besides the run identity (record, masks, variants)."""
    h = hashlib.sha256(repr((record.image_id, record.file_name, record.height, record.width, record.exif_orientation)
                            + (() if record.exif == "stored" else (record.exif,))).encode())

    def add(inst: Instance | None) -> None:
        if inst is None:
            h.update(b"-")
            return
        h.update(repr((inst.ann_id, inst.category_id, inst.category, inst.area, bool(inst.iscrowd),
                       tuple(inst.tags), inst.rle["size"], inst.rle["counts"],
                       None if inst.ignore_rle is None else (inst.ignore_rle["size"], inst.ignore_rle["counts"])
                       )).encode())

    for inst in sorted(instances, key=lambda t: t.ann_id):
        add(inst)
        for name in sorted(variants):
            h.update(name.encode())
            add(variants[name].get(inst.ann_id))
    return h.hexdigest()[:20]


def _identity_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def _read_manifest(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("unreadable manifest %s (%s); rewriting it (parts are checked one by one)", path, e)
        return None


def _discard_results(out_dir: Path) -> int:
    """Delete the parts and final tables of ``out_dir``; returns the number of part files removed."""
    parts = list((out_dir / "parts").glob("*.parquet")) if (out_dir / "parts").exists() else []
    for f in parts:
        f.unlink()
    for name in ("manifest.json", "results.parquet", "predictions.parquet"):
        (out_dir / name).unlink(missing_ok=True)
    return len(parts)


def _prepare_out_dir(out_dir: Path, identity: dict[str, Any], force: bool) -> tuple[str, int]:
    """Validate ``out_dir`` against ``identity`` (see "Resume"); returns ``(run id, parts discarded)``.

    Called with the folder's lock held, so leftover temporary files are a killed run's and go.
    """
    manifest_path = out_dir / "manifest.json"
    old = _read_manifest(manifest_path)
    discarded = 0
    if old is not None and old.get("identity") != identity:
        diff = _identity_diff(old.get("identity") or {}, identity)
        if not force:
            raise ManifestMismatch(f"{out_dir} holds results of another run (differs in: {diff}). Use a new "
                                   "out_dir, or force=True (--force) to discard the existing results.")
        discarded = _discard_results(out_dir)
        log.warning("%s: discarded %d part files of another run identity (%s)", out_dir, discarded, diff)
        old = None
    parts = out_dir / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    for tmp in parts.glob(TMP_PREFIX + "*"):
        tmp.unlink(missing_ok=True)
    provenance = {"versions": package_versions(), "git_commit": git_info()["commit"],
                  "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if old is not None:
        for k in ("versions", "git_commit"):
            if old.get("provenance", {}).get(k) != provenance[k]:
                log.warning("resuming %s with different %s: %s -> %s", out_dir, k,
                            old.get("provenance", {}).get(k), provenance[k])
    run_id = _run_id(identity)
    created = (old or {}).get("created", provenance["updated"])
    write_json_atomic(manifest_path, {"run_id": run_id, "identity": identity, "provenance": provenance,
                                      "created": created}, sort_keys=True)
    return run_id, discarded


# =============================================================================== part files
def _part_paths(parts: Path, image_id: int) -> tuple[Path, Path]:
    return parts / f"{image_id}.parquet", parts / f"{image_id}.pred.parquet"


def _part_is_current(path: Path, run_id: str, fingerprint: str) -> bool:
    if not path.exists():
        return False
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as e:  # noqa: BLE001 - unreadable part: recompute it
        log.warning("unreadable part %s (%s); recomputing", path, e)
        return False
    return (meta.get(_META_RUN) == run_id.encode() and meta.get(_META_IMAGE) == fingerprint.encode()
            and meta.get(_META_RETRY) != b"1")


def _image_done(parts: Path, image_id: int, run_id: str, fingerprint: str, with_preds: bool) -> bool:
    rows_p, preds_p = _part_paths(parts, image_id)
    return _part_is_current(rows_p, run_id, fingerprint) and (
        not with_preds or _part_is_current(preds_p, run_id, fingerprint))


def _write_parts(parts: Path, image_id: int, rows: list[dict[str, Any]], preds: list[dict[str, Any]] | None,
                 run_id: str, fingerprint: str) -> None:
    """Write one image's parts; predictions first, so the rows part marks the image complete."""
    retry = any(r["skip_reason"] in _RETRY_REASONS for r in rows)
    meta = {_META_RUN: run_id.encode(), _META_IMAGE: fingerprint.encode(), _META_RETRY: b"1" if retry else b"0"}
    rows_p, preds_p = _part_paths(parts, image_id)
    if preds is not None:
        write_parquet_atomic(predictions_table(preds), preds_p, meta)
    write_parquet_atomic(rows_table(rows), rows_p, meta)


def _concat_parts(parts: Path, image_ids: Sequence[int], suffix: str, schema: pa.Schema) -> pa.Table:
    tables = [pq.read_table(parts / f"{i}{suffix}", schema=schema) for i in image_ids]
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return sort_table(table.replace_schema_metadata(None), predictions=schema is PRED_SCHEMA)


# =============================================================================== the run
def run_experiment(dataset: Dataset, model: PromptableSegmenter, modes: Sequence[PromptMode | str] | None = None,
                   out_dir: str | os.PathLike = "results/experiment",
                   cache: EmbeddingCache | str | os.PathLike | None = None, seed: int = 0,
                   split: str = "test", policy: str = "raw", gt_variants: GtVariants | None = None,
                   progress: bool = True, *, multimask: Sequence[str] = ONE_SHOT_SELECTIONS,
                   click_multimask: Sequence[str] | None = None, min_box_side: float = 2,
                   force: bool = False, image_loader: ImageLoader | None = None,
                   store_predictions: bool = True, max_skip_fraction: float | None = None,
                   executor: Any = None) -> pd.DataFrame:
    """Run ``model`` (any arm) with every prompt mode on every object of ``dataset``; resumable.

    Args:
        dataset: the images and objects to evaluate (already the wanted split and policy).
        model: a :class:`PromptableSegmenter` (``build_model("litemedsam")``, a ``CustomArm``...).
        modes: prompt modes (default :data:`samstudy.prompts.DEFAULT_MODES`); each must be supported.
        out_dir: where ``manifest.json``, ``parts/``, ``results.parquet`` and ``predictions.parquet`` go.
        cache: an :class:`EmbeddingCache`, a cache folder, or ``None`` (no embedding cache).
        seed: prompt seed (jittered boxes...). split, policy: labels written in every row.
        gt_variants: ``{name: {ann_id: Instance}}`` extra ground truths (rows with ``gt_variant = name``).
        progress: show a tqdm bar (images/s and objects/s in its postfix).
        multimask, click_multimask, min_box_side, image_loader: see :func:`process_image`.
        force: discard results in ``out_dir`` of another run identity instead of refusing (parts of
            this identity are kept either way); the number discarded is in ``df.attrs["discarded_parts"]``.
        store_predictions: also write ``predictions.parquet``.
        max_skip_fraction: when given, :func:`samstudy.data.check_skip_limit` on the finished rows
            (:func:`skip_table`): more than this share of the images or objects skipped, or no
            object scored, raises ``TooManySkips`` -- after the tables are written, so a rerun
            resumes. ``None``: no limit (the caller judges the skips).
        executor: where the per-image step runs: ``None`` / ``"local"`` (this process, in image id
            order), ``"ray"``, or a :class:`samstudy.executors.ExecutorSpec` (or its mapping, e.g. the
            config's ``run`` section): Ray Data workers that build the model once each and write the
            parts themselves (:mod:`samstudy.executors`). Rows are the same whichever runs them.

    Returns:
        The results table (also at ``out_dir/results.parquet``), sorted by
        ``(image_id, ann_id, prompt_mode, multimask, click, gt_variant)``; ``df.attrs`` holds
        ``computed_images``, ``resumed_images`` and ``discarded_parts``.

    Raises:
        ValueError: a mode or selection the model does not support (before anything is read).
        ManifestMismatch: ``out_dir`` holds another run's results and ``force`` is False.
        samstudy.locks.FolderLocked: another process is writing ``out_dir``.
        samstudy.data.TooManySkips: the skip limit above.
    """
    modes = parse_modes(DEFAULT_MODES if modes is None else modes)
    click_multimask = default_click_selections(model) if click_multimask is None else click_multimask
    check_model_modes(model, modes, multimask, click_multimask)
    if not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)
    variants = dict(gt_variants or {})
    out = Path(out_dir)
    identity = run_identity(dataset.name, split, policy, model, modes, multimask, click_multimask, seed,
                            list(variants), min_box_side, store_predictions)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, f"engine: {model.name} on {dataset.name}"):
        run_id, discarded = _prepare_out_dir(out, identity, force)
        todo = _todo_images(dataset, out / "parts", run_id, variants, store_predictions)
        step = ImageStep(modes=tuple(modes), parts=out / "parts", run_id=run_id, store_predictions=store_predictions,
                         image_loader=image_loader,
                         options=dict(seed=seed, dataset=dataset.name, split=split, policy=policy,
                                      multimask=tuple(multimask), click_multimask=tuple(click_multimask),
                                      min_box_side=min_box_side))
        spec = ExecutorSpec.of(executor)
        n = len(dataset.images)
        bar = ImageProgress(n, n - len(todo), f"{model.name} {dataset.name}", progress)
        try:
            if spec.executor == "local":
                _run_images(dataset, model, cache, todo, step, variants, bar)
            else:  # the one seam to a distributed engine; the lock above stays with this (driver) process
                run_distributed(spec, dataset, model, cache, todo, step, variants, bar)
        finally:
            bar.close()
        df = _finish(dataset, out, store_predictions)
    df.attrs.update(computed_images=len(todo), resumed_images=len(dataset.images) - len(todo),
                    discarded_parts=discarded)
    if max_skip_fraction is not None:
        skips, images_kept, objects_kept = skip_table(df, dataset)
        check_skip_limit(skips, images_kept, objects_kept, max_skip_fraction,
                         f"{model.name} on {dataset.name} ({out})")
    return df


def skip_table(rows: pd.DataFrame, dataset: Dataset) -> tuple[pd.DataFrame, int, int]:
    """What the engine skipped, as :func:`samstudy.data.check_skip_limit` takes it.

    rows: result rows of ``dataset`` (primary ground truth counts). An object is skipped when none
    of its rows is ``ok``; an image is skipped when its objects' rows carry an image-level reason
    (``samstudy.data.IMAGE_SKIP_REASONS``: unreadable, missing, truncated, size mismatch). Images
    without objects give no rows and are not counted. Returns ``(table, images_kept,
    objects_kept)``: one row ``(image_id, ann_id, file, reason, detail)`` per skipped image
    (``ann_id`` null) and per skipped object (its first skip reason), and the numbers kept.
    """
    cols = ["image_id", "ann_id", "file", "reason", "detail"]
    prim = rows[rows["gt_variant"] == PRIMARY] if len(rows) else rows
    if not len(prim):
        return pd.DataFrame(columns=cols), 0, 0
    ok = prim.groupby(["image_id", "ann_id"])["status"].agg(lambda s: bool((s == "ok").any()))
    first = prim[prim["status"] != "ok"].groupby(["image_id", "ann_id"])[["skip_reason", "skip_detail"]].first()
    name = {i: r.file_name for i, r in dataset.images.items()}
    out = []
    for image_id, per_obj in ok.groupby(level=0):
        bad = [(ann_id, *first.loc[(image_id, ann_id)]) for (_, ann_id), good in per_obj.items() if not good]
        if len(bad) == len(per_obj) and bad[0][1] in IMAGE_SKIP_REASONS:
            out.append((image_id, None, name.get(image_id), bad[0][1], bad[0][2]))
        out += [(image_id, ann_id, name.get(image_id), reason, detail) for ann_id, reason, detail in bad]
    n_images = int(ok.index.get_level_values(0).nunique())
    images_kept = n_images - sum(1 for r in out if r[1] is None)
    return pd.DataFrame(out, columns=cols), images_kept, int(ok.sum())


def _todo_images(dataset: Dataset, parts: Path, run_id: str, variants: GtVariants,
                 with_preds: bool) -> list[tuple[int, str]]:
    """``(image_id, fingerprint)`` of the images whose parts are missing or stale, in id order."""
    by_image = dataset.instances_by_image()
    todo = []
    for i in sorted(dataset.images):
        fp = _image_fingerprint(dataset.images[i], by_image.get(i, []), variants)
        if not _image_done(parts, i, run_id, fp, with_preds):
            todo.append((i, fp))
    if len(todo) < len(dataset.images):
        log.info("%s: %d of %d images already done, resuming", parts.parent, len(dataset.images) - len(todo),
                 len(dataset.images))
    return todo


@dataclass(frozen=True)
class ImageStep:
    """The unit of work of every executor: one image through :func:`process_image`, its parts
    written by :func:`_write_parts` (the one writer). Picklable, so Ray workers run the same step."""

    modes: tuple[PromptMode, ...]
    parts: Path
    run_id: str
    store_predictions: bool
    image_loader: ImageLoader | None
    options: Mapping[str, Any]  # the remaining keywords of process_image (seed, labels, selections...)

    def read(self, record: ImageRecord) -> np.ndarray:
        """The decoded image, exactly as :func:`process_image` would read it (exceptions included)."""
        return (self.image_loader or _read_record)(record)

    def __call__(self, model: PromptableSegmenter, cache: EmbeddingCache, record: ImageRecord,
                 instances: Sequence[Instance], variants: GtVariants, fingerprint: str,
                 image: np.ndarray | None = None, image_loader: ImageLoader | None = None) -> None:
        """Evaluate and write one image. ``variants`` may be restricted to the image's own objects."""
        rows, preds = process_image(record, instances, model, self.modes, cache, gt_variants=variants,
                                    image=image, image_loader=image_loader or self.image_loader,
                                    keep_predictions=self.store_predictions, **self.options)
        _write_parts(self.parts, record.image_id, rows, preds if self.store_predictions else None, self.run_id,
                     fingerprint)


class ImageProgress:
    """The study's progress bar of a run (images, images/s, objects/s, cache hits), for every executor."""

    def __init__(self, total: int, done: int, desc: str, enabled: bool) -> None:
        from .progress import tqdm  # plain-text lines the CLI follows inside a study run

        self.bar = tqdm(total=total, initial=done, unit="img", disable=not enabled, desc=desc, dynamic_ncols=True)
        self.t0, self.images, self.objects, self.hits = time.perf_counter(), 0, 0, 0

    def image_done(self, n_objects: int, cache_hits: int) -> None:
        """One more image finished; ``cache_hits``: embedding-cache hits of the run so far."""
        self.images, self.objects, self.hits = self.images + 1, self.objects + n_objects, cache_hits
        dt = max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(img_s=f"{self.images / dt:.2f}", obj_s=f"{self.objects / dt:.1f}", cached=self.hits,
                             refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _run_images(dataset: Dataset, model: PromptableSegmenter, cache: EmbeddingCache,
                todo: Sequence[tuple[int, str]], step: ImageStep, variants: GtVariants, bar: ImageProgress) -> None:
    """The local executor: ``step`` over ``todo`` in this process, each image's parts written as soon as it is done."""
    by_image = dataset.instances_by_image()
    for image_id, fp in todo:
        insts = by_image.get(image_id, [])
        step(model, cache, dataset.images[image_id], insts, variants, fp)
        bar.image_done(len(insts), cache.stats.hits)


def _finish(dataset: Dataset, out: Path, with_preds: bool) -> pd.DataFrame:
    """Concatenate the parts of ``dataset``'s images into the final tables; returns the rows."""
    image_ids = sorted(dataset.images)
    table = _concat_parts(out / "parts", image_ids, ".parquet", ROW_SCHEMA)
    write_table(table, out)
    if with_preds:
        write_table(_concat_parts(out / "parts", image_ids, ".pred.parquet", PRED_SCHEMA), out, predictions=True)
    df = to_pandas(table)
    n_skip = int((df["status"] == "skipped").sum()) if len(df) else 0
    if n_skip:
        log.warning("%s: %d of %d rows skipped (%s)", out, n_skip, len(df),
                    df.loc[df["status"] == "skipped", "skip_reason"].value_counts().to_dict())
    return df
