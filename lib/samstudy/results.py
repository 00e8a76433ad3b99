"""The result schema: the one tidy table every arm writes, its predictions table, and their readers.

Rows (``results.parquet``, :data:`ROW_SCHEMA`) are one object x prompt mode x model x multimask
selection x click x ground-truth variant; the engine (:mod:`samstudy.engine`) is their only writer,
for the foundation models, the fine-tuned ones and the custom model alike. The columns are
documented in :mod:`samstudy.engine` and ``docs/ARCHITECTURE.md``.

Predictions (``predictions.parquet``, :data:`PRED_SCHEMA`) hold each scored mask as compressed COCO
RLE JSON with the prompt that produced it (:func:`prediction_mask` decodes one).

Integer metric columns are null on skip rows and read back as pandas nullable ``Int64``
(:data:`NULLABLE_INT`). Tables are sorted by :data:`SORT_KEYS` / :data:`PRED_SORT_KEYS` (plus
``model`` when several models share a table), so two runs over the same inputs compare row by row.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from .files import write_parquet_atomic
from .masks import decode_rle

__all__ = [
    "PRIMARY", "ROW_SCHEMA", "ROW_COLUMNS", "PRED_SCHEMA", "PRED_COLUMNS", "SORT_KEYS", "PRED_SORT_KEYS",
    "NULLABLE_INT", "TIMING_COLUMNS", "RESULTS_FILE", "PREDICTIONS_FILE", "rows_table", "predictions_table",
    "to_pandas", "write_table", "read_results", "prediction_mask", "timing_tables",
]

PRIMARY = "primary"  # gt_variant of the dataset's own ground truth (after its labeling policy)
RESULTS_FILE = "results.parquet"
PREDICTIONS_FILE = "predictions.parquet"

# Arrow schemas fix column order and types, so parts with or without skips concatenate cleanly.
ROW_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("split", pa.string()), ("policy", pa.string()), ("gt_variant", pa.string()),
    ("image_id", pa.int64()), ("ann_id", pa.int64()), ("category_id", pa.int64()), ("category", pa.string()),
    ("iscrowd", pa.bool_()), ("area", pa.int64()), ("size_bucket", pa.string()), ("tags", pa.string()),
    ("model", pa.string()), ("model_label", pa.string()), ("checkpoint_sha256", pa.string()),
    ("prompt_mode", pa.string()), ("prompt_params", pa.string()), ("buffer", pa.float64()),
    ("multimask", pa.string()), ("click", pa.int64()),
    ("iou", pa.float64()), ("boundary_iou", pa.float64()), ("gt_holes", pa.int64()), ("pred_holes", pa.int64()),
    ("gt_hole_area", pa.int64()), ("pred_hole_area", pa.int64()), ("hole_fill_agreement", pa.float64()),
    ("pred_iou", pa.float64()), ("pred_area", pa.int64()),
    ("time_encode_s", pa.float64()), ("time_decode_s", pa.float64()), ("cached", pa.bool_()), ("seed", pa.int64()),
    ("status", pa.string()), ("skip_reason", pa.string()), ("skip_detail", pa.string()),
])
ROW_COLUMNS = tuple(ROW_SCHEMA.names)
SORT_KEYS = ("image_id", "ann_id", "prompt_mode", "multimask", "click", "gt_variant")
NULLABLE_INT = ("gt_holes", "pred_holes", "gt_hole_area", "pred_hole_area", "pred_area")
TIMING_COLUMNS = ("time_encode_s", "time_decode_s", "cached")  # differ between otherwise equal runs

PRED_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("split", pa.string()), ("policy", pa.string()),
    ("image_id", pa.int64()), ("ann_id", pa.int64()), ("model", pa.string()), ("prompt_mode", pa.string()),
    ("multimask", pa.string()), ("click", pa.int64()), ("pred_iou", pa.float64()), ("iou", pa.float64()),
    ("prompt", pa.string()), ("rle", pa.string()),
])
PRED_COLUMNS = tuple(PRED_SCHEMA.names)
PRED_SORT_KEYS = ("image_id", "ann_id", "prompt_mode", "multimask", "click")


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Result rows (dicts with the :data:`ROW_COLUMNS` keys) as an Arrow table of :data:`ROW_SCHEMA`."""
    return pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)


def predictions_table(preds: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Prediction records as an Arrow table of :data:`PRED_SCHEMA`."""
    return pa.Table.from_pylist(list(preds), schema=PRED_SCHEMA)


def sort_table(table: pa.Table, predictions: bool = False) -> pa.Table:
    """``table`` sorted by the schema's keys, then ``model`` (Arrow's sort is stable)."""
    keys = list(PRED_SORT_KEYS if predictions else SORT_KEYS) + ["model"]
    return table.sort_by([(k, "ascending") for k in keys])


def to_pandas(table: pa.Table, predictions: bool = False) -> pd.DataFrame:
    """A results (or predictions) table as a DataFrame with the schema's dtypes (nullable ints)."""
    df = table.to_pandas()
    return df if predictions else df.astype({c: "Int64" for c in NULLABLE_INT})


def write_table(table: pa.Table, out_dir: str | os.PathLike, predictions: bool = False) -> Path:
    """Write ``out_dir/results.parquet`` (or ``predictions.parquet``) atomically, metadata stripped."""
    name = PREDICTIONS_FILE if predictions else RESULTS_FILE
    return write_parquet_atomic(table.replace_schema_metadata(None), Path(out_dir) / name)


def read_results(out_dir: str | os.PathLike, predictions: bool = False) -> pd.DataFrame:
    """``out_dir/results.parquet`` (or ``predictions.parquet``) as a DataFrame with the schema's dtypes."""
    name = PREDICTIONS_FILE if predictions else RESULTS_FILE
    return to_pandas(pq.read_table(Path(out_dir) / name), predictions)


def prediction_mask(row: Mapping[str, Any]) -> np.ndarray:
    """The ``bool (H, W)`` mask of one predictions-table row."""
    return decode_rle(json.loads(row["rle"]))


def timing_tables(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Encoder time per model and decoder time per model x prompt mode, from ``ok`` result rows.

    Returns ``(encode, decode)``. ``encode`` has one row per ``model_label``: images scored, how many
    embeddings came from the cache, how many were encoded in this run, their total encoder seconds
    and the seconds per encoded image, NaN when every embedding was cached (a cached image's
    ``time_encode_s`` is 0, so a mean over all images would read as a free encoder). ``decode`` has
    the mean ``time_decode_s`` per object of each ``model_label`` x ``prompt_mode``.
    """
    ok = rows[rows["status"] == "ok"]
    images = ok.drop_duplicates(["dataset", "model", "image_id"])
    encoded = images[~images["cached"].astype(bool)]
    enc = pd.DataFrame({
        "images": images.groupby("model_label").size(),
        "cached": images.groupby("model_label")["cached"].sum().astype(int),
        "encoded": encoded.groupby("model_label").size(),
        "encode s (total)": encoded.groupby("model_label")["time_encode_s"].sum(),
    }).fillna({"encoded": 0, "encode s (total)": 0.0})
    enc["encoded"] = enc["encoded"].astype(int)
    enc["encode s / encoded image"] = (enc["encode s (total)"] / enc["encoded"]).where(enc["encoded"] > 0)
    dec = (ok.groupby(["model_label", "prompt_mode"])["time_decode_s"].mean()
           .rename("decode s / object").reset_index())
    return enc.rename_axis("model_label").reset_index(), dec
