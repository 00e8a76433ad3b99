"""Evaluation of the custom model on a test split: the engine's result rows, nothing else.

:func:`evaluate_custom` writes ``out_dir/results.parquet`` with exactly the engine's row schema
(:data:`samstudy.engine.ROW_SCHEMA`; ``docs/ARCHITECTURE.md``) and ``out_dir/predictions.parquet``
(:data:`samstudy.engine.PRED_SCHEMA`, masks as RLE JSON), so the comparison notebook concatenates
them with the foundation-model tables. Two rows per object:

- ``model = "custom_stage1"``, ``model_label = "Custom extreme points (stage 1)"``;
- ``model = "custom_stage2"``, ``model_label = "Custom extreme points (stage 1+2 refined)"``;

both with ``prompt_mode = "extreme_points"`` (the un-jittered DEXTR points of
:func:`samstudy.prompts.extreme_points`, identical to the engine's ``extreme_points`` mode),
``multimask = "single"``, ``click = 0``, ``gt_variant = "primary"``, ``buffer = NaN``,
``pred_iou = NaN`` (the model has no IoU head), ``time_encode_s = 0`` (no per-image encoder),
``time_decode_s`` = the object's share of the batched per-image call (stage 1 rows: cropping +
stage 1 + paste-back; stage 2 rows: the whole two-stage pipeline). ``prompt_params`` is JSON with
the mode's parameters plus ``stage``, ``crop_rule`` (see :mod:`samstudy.custom.crops`) and
``crop_size``. Metrics: :func:`samstudy.metrics.object_metrics` at full image resolution against
the dataset's mask (with its ``ignore_rle``).

Skips mirror the engine, so both score the same objects: unreadable image or size mismatch
(``image_unreadable``, ``image_size_mismatch``), ``empty_mask``, and ``degenerate_box`` for tight
boxes under ``min_box_side`` px (default 2, the engine's default; 0 scores every object through
the crop rules).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..data import Dataset, Instance, read_image
from ..engine import PRED_SCHEMA, PRED_SORT_KEYS, ROW_SCHEMA, SORT_KEYS
from ..masks import encode_rle
from ..metrics import METRIC_KEYS, object_metrics, size_bucket
from ..prompts import PromptMode, extreme_points, tight_box
from .model import CustomSegmenter, torch_settings

__all__ = ["STAGE_MODELS", "evaluate_custom"]

PROMPT_MODE = PromptMode("extreme_points")
STAGE_MODELS = {1: ("custom_stage1", "Custom extreme points (stage 1)"),
                2: ("custom_stage2", "Custom extreme points (stage 1+2 refined)")}
_NULLABLE_INT = ("gt_holes", "pred_holes", "gt_hole_area", "pred_hole_area", "pred_area")


def _base(inst: Instance, stage: int, dataset: str, split: str, policy: str, sha: str,
          params: dict[str, Any]) -> dict[str, Any]:
    model, label = STAGE_MODELS[stage]
    return {"dataset": dataset, "split": split, "policy": policy, "gt_variant": "primary",
            "image_id": int(inst.image_id), "ann_id": int(inst.ann_id), "category_id": int(inst.category_id),
            "category": inst.category, "iscrowd": bool(inst.iscrowd), "area": int(inst.area),
            "size_bucket": size_bucket(inst.area), "tags": ",".join(inst.tags), "model": model,
            "model_label": label, "checkpoint_sha256": sha, "prompt_mode": PROMPT_MODE.key,
            "prompt_params": json.dumps({**PROMPT_MODE.params, "stage": stage, **params}, sort_keys=True),
            "buffer": float("nan"), "multimask": "single", "click": 0, "pred_iou": float("nan"),
            "time_encode_s": 0.0, "cached": False, "seed": 0}


def _skip_rows(inst: Instance, reason: str, detail: str, **ctx: Any) -> list[dict[str, Any]]:
    rows = []
    for stage in (1, 2):
        r = _base(inst, stage, params={}, **ctx)
        r.update({k: None for k in METRIC_KEYS})
        r.update({"time_decode_s": 0.0, "status": "skipped", "skip_reason": reason, "skip_detail": detail})
        rows.append(r)
    return rows


def _prepare(inst: Instance, image_hw: tuple[int, int], min_box_side: float) -> tuple[np.ndarray, str, str]:
    """``(gt mask, "", "")`` or ``(None, reason, detail)``, with the engine's rules."""
    if tuple(inst.rle["size"]) != image_hw:
        return None, "image_size_mismatch", f"mask size {tuple(inst.rle['size'])} vs image {image_hw}"
    gt = inst.mask()
    if not gt.any():
        return None, "empty_mask", "ground-truth mask has no pixel"
    box = tight_box(gt)
    w, h = box[2] - box[0], box[3] - box[1]
    if min(w, h) < min_box_side:
        return None, "degenerate_box", f"tight box {w:g} x {h:g} px (minimum side {min_box_side})"
    return gt, "", ""


def evaluate_image(image: np.ndarray | None, instances: Sequence[Instance], segmenter: CustomSegmenter,
                   *, dataset: str, split: str, policy: str, min_box_side: float = 2,
                   read_error: str | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows and prediction records of one image's objects (``image`` RGB ``uint8 (H, W, 3)``)."""
    ctx = {"dataset": dataset, "split": split, "policy": policy, "sha": segmenter.checkpoint_sha256}
    rows: list[dict[str, Any]] = []
    preds: list[dict[str, Any]] = []
    if image is None:
        for inst in instances:
            rows += _skip_rows(inst, "image_unreadable", read_error or "", **ctx)
        return rows, preds
    hw = (int(image.shape[0]), int(image.shape[1]))
    ready, gts, points = [], [], []
    for inst in sorted(instances, key=lambda t: t.ann_id):
        gt, reason, detail = _prepare(inst, hw, min_box_side)
        if gt is None:
            rows += _skip_rows(inst, reason, detail, **ctx)
            continue
        ready.append(inst)
        gts.append(gt)
        points.append(extreme_points(gt))
    outs = segmenter.predict_many(image, points)
    for inst, gt, pts, out in zip(ready, gts, points, outs):
        ignore = inst.ignore_mask()
        params = {"crop_rule": out["crop_rule"], "crop_size": segmenter.config.crop_size}
        for stage, key, t in ((1, "stage1", out["time_stage1_s"]), (2, "stage2", out["time_s"])):
            pred = out[key]
            r = _base(inst, stage, params=params, **ctx)
            r.update(object_metrics(pred, gt, ignore))
            r.update({"time_decode_s": float(t), "status": "ok", "skip_reason": None, "skip_detail": None})
            rows.append(r)
            preds.append({"dataset": dataset, "split": split, "policy": policy, "image_id": int(inst.image_id),
                          "ann_id": int(inst.ann_id), "model": r["model"], "prompt_mode": PROMPT_MODE.key,
                          "multimask": "single", "click": 0, "pred_iou": float("nan"), "iou": r["iou"],
                          "prompt": json.dumps({"box": None, "points": pts.tolist(), "labels": [1, 1, 1, 1]}),
                          "rle": json.dumps(encode_rle(pred))})
    return rows, preds


def _write_parquet(table: pa.Table, path: Path) -> None:
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def evaluate_custom(dataset: Dataset, segmenter: CustomSegmenter, out_dir: str | os.PathLike,
                    split: str = "test", policy: str = "raw", min_box_side: float = 2,
                    progress: bool = True, store_predictions: bool = True, num_threads: int | None = None
                    ) -> pd.DataFrame:
    """Score ``segmenter`` on every object of ``dataset`` (already the test split under ``policy``).

    Writes ``out_dir/results.parquet`` (engine row schema, sorted like the engine's) and
    ``out_dir/predictions.parquet``; returns the rows as a DataFrame (nullable-int metric columns).
    ``num_threads``: CPU threads while evaluating (default the model config's ``num_threads``).
    """
    with torch_settings(segmenter.config.num_threads if num_threads is None else num_threads):
        rows, preds = _evaluate_all(dataset, segmenter, split, policy, min_box_side, progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA).sort_by([(k, "ascending") for k in SORT_KEYS + ["model"]])
    _write_parquet(table, out / "results.parquet")
    if store_predictions:
        ptable = pa.Table.from_pylist(preds, schema=PRED_SCHEMA).sort_by(
            [(k, "ascending") for k in PRED_SORT_KEYS + ["model"]])
        _write_parquet(ptable, out / "predictions.parquet")
    return table.to_pandas().astype({c: "Int64" for c in _NULLABLE_INT})


def _evaluate_all(dataset: Dataset, segmenter: CustomSegmenter, split: str, policy: str, min_box_side: float,
                  progress: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    preds: list[dict[str, Any]] = []
    by_image = dataset.instances_by_image()
    for image_id in tqdm(sorted(dataset.images), disable=not progress, unit="img", desc="custom eval"):
        insts = by_image.get(image_id, [])
        if not insts:
            continue
        image, err = None, None
        try:
            image = read_image(dataset.images[image_id].path)
        except Exception as e:  # noqa: BLE001 - an unreadable image is a recorded skip
            err = f"{type(e).__name__}: {e}"
        r, p = evaluate_image(image, insts, segmenter, dataset=dataset.name, split=split, policy=policy,
                              min_box_side=min_box_side, read_error=err)
        rows += r
        preds += p
    return rows, preds
