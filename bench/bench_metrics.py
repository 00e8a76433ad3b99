"""Benchmark samstudy.metrics.object_metrics against a naive full-image implementation.

Usage:
    PYTHONPATH=lib .venv/bin/python bench/bench_metrics.py [--n 3000] [--naive-every 5]
        [--coco ../shared/data/coco-sample/instances.json] [--max-coco 0 (all)]

Two workloads, 640x480 images:
1. synthetic: ellipses of COCO-like sizes (log-uniform area), some with holes, some touching the
   image border; prediction = shifted, dilated/eroded copy, sometimes with holes filled;
2. coco-sample (when the annotation file exists): every annotation decoded with pycocotools,
   prediction = the same mask shifted by 1-3 px and dilated or eroded.
Only the metric calls are timed (mask generation/decoding is not), in wall time and in this
thread's CPU time (robust to a busy shared machine; cv2 is set to one thread). Two full-image
references run on every ``--naive-every``-th object: ``naive`` (numpy counts, the boundary-iou-api
style 16 x 3x3 erosion on the whole image, scipy ``binary_fill_holes`` + ``label``) and
``uncropped`` (object_metrics' own cv2 primitives on the whole image, i.e. the gain of cropping
alone). The script asserts all three give the same numbers and prints objects/s and the ratios.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from samstudy import metrics  # noqa: E402
from samstudy.masks import decode_rle, polygons_to_rle  # noqa: E402

H, W = 480, 640
CROSS = ndimage.generate_binary_structure(2, 1)


# ----------------------------------------------------------------------------- naive reference
def naive_object_metrics(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> dict:
    """Full-image version of object_metrics (no crops)."""
    def iou_(a, b):
        u = np.count_nonzero(a | b)
        return 1.0 if u == 0 else np.count_nonzero(a & b) / u

    def band(m):
        h, w = m.shape
        d = max(1, int(round(dilation_ratio * math.sqrt(h * h + w * w))))
        padded = cv2.copyMakeBorder(m.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=d)[1:-1, 1:-1]
        return m & (eroded == 0)

    def holes(m):
        h = ndimage.binary_fill_holes(m, structure=CROSS) & ~m
        return h, int(ndimage.label(h, structure=CROSS)[1]), int(h.sum())

    ph, pn, pa = holes(pred)
    gh, gn, ga = holes(gt)
    return {"iou": iou_(pred, gt), "boundary_iou": iou_(band(pred), band(gt)),
            "gt_holes": gn, "pred_holes": pn, "gt_hole_area": ga, "pred_hole_area": pa,
            "hole_fill_agreement": 1.0 if gn == pn == 0 else iou_(ph, gh),
            "pred_area": int(pred.sum())}


def uncropped_object_metrics(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> dict:
    """object_metrics' own cv2 primitives applied to the whole image: isolates the gain of cropping."""
    p, g = pred.view(np.uint8), gt.view(np.uint8)
    d = metrics.band_width(p.shape, dilation_ratio)
    out = {"iou": metrics._masked_iou(p, g, None),
           "boundary_iou": metrics._masked_iou(metrics._inner_band(p, d), metrics._inner_band(g, d), None)}
    out.update(metrics._hole_pair_in_crop(p, g))
    out["pred_area"] = cv2.countNonZero(p)
    return out


# ----------------------------------------------------------------------------- workloads
def _perturb(gt: np.ndarray, rng: np.random.Generator, fill_holes_p: float = 0.0) -> np.ndarray:
    dy, dx = rng.integers(-3, 4, size=2)
    m = np.roll(gt, (int(dy), int(dx)), axis=(0, 1)).astype(np.uint8)
    k = int(rng.integers(1, 4))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
    m = cv2.dilate(m, kernel) if rng.random() < 0.5 else cv2.erode(m, kernel)
    out = m.astype(bool)
    if rng.random() < fill_holes_p:
        out = ndimage.binary_fill_holes(out, structure=CROSS)
    return out


def synthetic_pairs(n: int, rng: np.random.Generator):
    for _ in range(n):
        area = math.exp(rng.uniform(math.log(40), math.log(120_000)))
        aspect = rng.uniform(0.3, 1.0)
        a = math.sqrt(area / (math.pi * aspect))
        axes = (max(1, int(a)), max(1, int(a * aspect)))
        near_border = rng.random() < 0.2
        cx = int(rng.integers(0, W)) if near_border else int(rng.integers(axes[0], max(axes[0] + 1, W - axes[0])))
        cy = int(rng.integers(0, H)) if near_border else int(rng.integers(axes[0], max(axes[0] + 1, H - axes[0])))
        angle = float(rng.uniform(0, 180))
        m = np.zeros((H, W), np.uint8)
        cv2.ellipse(m, (cx, cy), axes, angle, 0, 360, 1, -1)
        if rng.random() < 0.3 and min(axes) > 6:  # a hole
            cv2.ellipse(m, (cx, cy), (axes[0] // 3, axes[1] // 3), angle, 0, 360, 0, -1)
        gt = m.astype(bool)
        if not gt.any():
            continue
        yield gt, _perturb(gt, rng, fill_holes_p=0.3)


def coco_pairs(path: Path, rng: np.random.Generator, limit: int):
    data = json.loads(path.read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    anns = data["annotations"][:limit] if limit else data["annotations"]
    for ann in anns:
        h, w = sizes[ann["image_id"]]
        seg = ann["segmentation"]
        try:
            rle = polygons_to_rle(seg, h, w) if isinstance(seg, list) else seg
            gt = decode_rle(rle)
        except ValueError:
            continue
        if gt.any():
            yield gt, _perturb(gt, rng)


# ----------------------------------------------------------------------------- measurement
def _timed(fn, *args):
    """``(result, wall seconds, CPU seconds of this thread)``; CPU time is robust to a busy machine."""
    w0, c0 = time.perf_counter(), time.thread_time()
    out = fn(*args)
    return out, time.perf_counter() - w0, time.thread_time() - c0


def run(name: str, pairs, naive_every: int) -> None:
    refs = {"naive": naive_object_metrics, "uncropped": uncropped_object_metrics}
    n = n_sub = 0
    fast_t = np.zeros(2)                          # wall, cpu over all objects
    sub_t = {k: np.zeros(2) for k in ["fast", *refs]}  # on the every-k-th subset
    max_dev = 0.0
    for i, (gt, pred) in enumerate(pairs):
        fast, *dt = _timed(metrics.object_metrics, pred, gt)
        fast_t += dt
        n += 1
        if not naive_every or i % naive_every:
            continue
        n_sub += 1
        sub_t["fast"] += dt
        for ref_name, fn in refs.items():
            ref, *dr = _timed(fn, pred, gt)
            sub_t[ref_name] += dr
            for k in metrics.METRIC_KEYS:
                dev = abs(float(fast[k]) - float(ref[k]))
                max_dev = max(max_dev, dev)
                if dev > 1e-9:
                    raise AssertionError(f"{name} object {i}: {k} fast={fast[k]} {ref_name}={ref[k]}")
    print(f"[{name}] {n} objects: object_metrics wall {fast_t[0]:.2f} s = {n / fast_t[0]:,.0f} objects/s; "
          f"CPU {fast_t[1]:.2f} s = {n / fast_t[1]:,.0f} objects/s ({1e3 * fast_t[1] / n:.2f} ms/object)")
    for ref_name in refs if n_sub else ():
        ref_t, f_t = sub_t[ref_name], sub_t["fast"]
        print(f"[{name}]   {ref_name} full-image on {n_sub} of them: CPU {1e3 * ref_t[1] / n_sub:.2f} ms/object; "
              f"object_metrics is {ref_t[1] / f_t[1]:.1f}x faster (CPU), {ref_t[0] / f_t[0]:.1f}x (wall)")
    if n_sub:
        print(f"[{name}]   max |object_metrics - reference| over all metrics: {max_dev:.1e}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="synthetic objects")
    ap.add_argument("--naive-every", type=int, default=5, help="run the naive reference on every k-th object (0: never)")
    ap.add_argument("--coco", type=Path, default=REPO.parent / "shared" / "data" / "coco-sample" / "instances.json")
    ap.add_argument("--max-coco", type=int, default=0, help="limit COCO annotations (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cv2.setNumThreads(1)  # shared 2-core machine: measure single-threaded
    rng = np.random.default_rng(args.seed)
    run("synthetic 640x480", synthetic_pairs(args.n, rng), args.naive_every)
    if args.coco.exists():
        run(f"coco-sample {args.coco.parent.name}", coco_pairs(args.coco, rng, args.max_coco), args.naive_every)
    else:
        print(f"[coco-sample] skipped: {args.coco} not found")


if __name__ == "__main__":
    main()
