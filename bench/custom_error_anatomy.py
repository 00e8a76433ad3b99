"""Where the custom model's stage-1 errors lie, on validation (a script, not a test).

    PYTHONPATH=lib .venv/bin/python bench/custom_error_anatomy.py --checkpoint <training folder>/best.pt \\
        --run results/shared-coco [--bands 2,4,8,16]

A boundary refinement can only fix errors near stage 1's boundary. For the validation objects
recorded in the checkpoint's ``train_meta.json`` (carved from the train split; never test), in
the ``R`` crop frame (ground truth = soft target > 0.5), this prints the share of stage 1's wrong
pixels (false positives + false negatives) within ``d`` crop pixels of its predicted boundary for
each ``d`` of ``--bands``, the IoU an oracle would reach that fixes every error within ``d``
(and no other), and the same for stage 1+2, so the headroom of a band-limited refinement is
measured rather than assumed.

It also prints the **resolution ceiling** of each stage: the mIoU, at full image resolution, of the
ground truth itself resampled to the stage's crop grid (``S``, ``R`` and 2R; area average) and pasted
back like a prediction (:func:`samstudy.custom.crops.paste_back`). A refinement that only adds
resolution can gain at most the difference between the ``R`` and ``S`` ceilings; errors near the
boundary beyond that are misplaced boundaries, not pixels too coarse to draw them.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "lib"))  # after PYTHONPATH: a caller may put another checkout first

from samstudy import data_stage  # noqa: E402
from samstudy.custom.model import prepare_inputs, read_checkpoint  # noqa: E402
from samstudy.custom.crops import crop_mask, crop_spec, paste_back  # noqa: E402
from samstudy.custom.train import collect_objects, eval_batches  # noqa: E402
from samstudy.metrics import boundary_iou, iou  # noqa: E402
from samstudy.prompts import extreme_points  # noqa: E402


def distance_to_boundary(pred: np.ndarray) -> np.ndarray:
    """``float32 (h, w)``: each pixel's Euclidean distance (px) to the nearest pixel of the other
    label of ``pred`` (``bool (h, w)``); 0-distance pixels do not exist, a boundary pixel has 1."""
    p = pred.astype(np.uint8)
    inside = cv2.distanceTransform(p, cv2.DIST_L2, 5)  # inside pixels: distance to background
    outside = cv2.distanceTransform(1 - p, cv2.DIST_L2, 5)
    return np.where(pred, inside, outside)


def anatomy(pred: np.ndarray, gt: np.ndarray, bands: list[int]) -> dict[str, float]:
    err = pred != gt
    dist = distance_to_boundary(pred) if pred.any() and not pred.all() else np.full(pred.shape, np.inf)
    union = max(1, int((pred | gt).sum()))
    out = {"iou": float((pred & gt).sum()) / union, "err_px": int(err.sum())}
    for d in bands:
        fixed = np.where(err & (dist <= d), gt, pred)
        # objects without errors have no share (nan, left out of the mean)
        out[f"share_within_{d}"] = float((err & (dist <= d)).sum()) / err.sum() if err.any() else np.nan
        out[f"oracle_iou_{d}"] = float((fixed & gt).sum()) / max(1, int((fixed | gt).sum()))
    return out


def resolution_ceiling(objects, config, size: int) -> tuple[float, float]:
    """Full-resolution mIoU and mean boundary IoU of the ground truth resampled to a ``size`` crop
    grid and pasted back."""
    ious, bious = [], []
    for o in objects:
        pts = extreme_points(o.window) + np.asarray(o.offset, dtype=np.float64)
        spec = crop_spec(pts, o.image_hw, config.margin, config.min_margin_px, config.min_crop_px, config.max_aspect)
        soft = crop_mask(o.window, spec, size, o.offset)
        pred = paste_back(((soft - 0.5) * 8.0).astype(np.float32), spec)  # logit 0 at soft 0.5
        full = np.zeros(o.image_hw, dtype=bool)
        h, w = o.window.shape
        full[o.offset[1]:o.offset[1] + h, o.offset[0]:o.offset[0] + w] = o.window
        ious.append(iou(pred, full))
        bious.append(boundary_iou(pred, full))
    return float(np.mean(ious)), float(np.mean(bious))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--run", required=True, help="a run folder with data/ (its train split)")
    ap.add_argument("--bands", default="2,4,8,16", help="distances in R crop pixels")
    args = ap.parse_args()
    torch.set_num_threads(1)
    bands = [int(b) for b in args.bands.split(",")]
    ckpt = Path(args.checkpoint)
    model, _ = read_checkpoint(ckpt)
    config = model.config
    meta = json.loads((ckpt.parent / "train_meta.json").read_text())
    train = data_stage.load_train_set(Path(args.run) / "data")
    val = train.subset(meta["val_image_ids"])
    objects, images, _ = collect_objects(val)
    rows = {1: [], 2: []}
    with torch.no_grad():
        for b in eval_batches(objects, images, config, torch.device("cpu"), size=32):
            inputs = prepare_inputs(b["rgb2"], b["points2"], b["pbox2"], config, b["scale2"])
            logits1, logits2 = model(inputs)
            up1 = F.interpolate(logits1, size=logits2.shape[-2:], mode="bilinear", align_corners=False)
            gt = (b["mask2"][:, 0] > 0.5).numpy()
            for stage, logits in ((1, up1), (2, logits2)):
                for p, g in zip((logits[:, 0] > 0).numpy(), gt):
                    rows[stage].append(anatomy(p, g, bands))
    print(f"{len(objects)} validation objects, R = {config.refine_size} crop px, refine_band = {config.refine_band}")
    for stage, r in rows.items():
        keys = r[0].keys()
        mean = {k: float(np.nanmean([x[k] for x in r])) for k in keys}
        print(f"stage {'1' if stage == 1 else '1+2'}: crop-frame mIoU {mean['iou']:.4f}; "
              + "; ".join(f"within {d} px: {mean[f'share_within_{d}']:.1%} of errors, oracle mIoU "
                          f"{mean[f'oracle_iou_{d}']:.4f}" for d in bands))
    for size in (config.crop_size, config.refine_size, 2 * config.refine_size):
        m, b = resolution_ceiling(objects, config, size)
        print(f"resolution ceiling at {size} crop px: mIoU {m:.4f}, boundary IoU {b:.4f} "
              "(ground truth resampled to the crop grid, pasted back at full resolution)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
