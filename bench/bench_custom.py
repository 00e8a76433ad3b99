"""Benchmark of the custom extreme-point model (a script, not a test): prints measured figures.

    PYTHONPATH=lib .venv/bin/python bench/bench_custom.py [--skip-coco] [--coco-minutes 30]

1. Size: parameters and on-disk MB (``torch.save`` of the state dict) per stage, for each
   initialisation (limit: 9M params / 40 MB per stage).
2. Inference: median and p90 seconds per object for the whole pipeline (crop, stage 1, stage 2,
   paste-back to the full image) on 640 x 480 images, objects of every size, one object per call,
   CPU, with 2 threads (target median <= 0.25 s) and with 1 thread.
3. Synthetic probe set (the embedded default: 60 images, split 0.4 by image, seed 0, as
   ``configs/demo.yaml``): training wall time (target <= 3 min), test mIoU per stage and per
   category (target >= 0.95), and the holes category against LiteMedSAM with the tight box
   (``build_model("litemedsam")`` through the engine; must be beaten).
4. Real COCO images (``../shared/data/coco-sample``, crowd excluded, split 0.3 by image, seed 0, as
   ``configs/shared-coco.yaml``) when present: training on the train split within ``--coco-minutes``
   (target <= 30), test mIoU per stage, per size bucket and boundary IoU, against LiteMedSAM tight
   box on the same objects (target: custom >= LiteMedSAM + 0.15; published custom model 0.863).

mIoU protocol: mean over test instances of the per-instance IoU at full image resolution (one-shot,
single mask), objects with a tight box under 2 px skipped as in the engine. Every timing is
wall-clock on a shared 2-core machine: the load average is printed with each section.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from samstudy.custom import CustomConfig, custom_arms, load_custom, train_custom  # noqa: E402
from samstudy.engine import run_experiment  # noqa: E402
from samstudy.custom.model import CustomModel, CustomSegmenter, build_custom_model, stage_stats  # noqa: E402
from samstudy.data import Dataset, load_coco  # noqa: E402
from samstudy.prompts import extreme_points  # noqa: E402
from samstudy.splits import split_by_image  # noqa: E402

COCO_DIR = Path(os.environ.get("SAMSTUDY_SHARED_DATA", REPO.parent / "shared" / "data")) / "coco-sample"


def load_avg() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def section(title: str) -> None:
    print(f"\n== {title} ({load_avg()})", flush=True)


def sizes() -> dict:
    section("1. size per stage")
    out = {}
    for init in ("scratch", "litemedsam_stem"):
        with torch.random.fork_rng(devices=[]):
            stats = stage_stats(CustomModel(CustomConfig(init=init)))
        out[init] = stats
        for stage, s in stats.items():
            print(f"  {init:16s} {stage}: {s['params'] / 1e6:6.3f} M params, {s['bytes'] / 1e6:6.2f} MB on disk "
                  f"(limit 9 M / 40 MB)")
    return out


def inference(seg: CustomSegmenter, n_objects: int = 60, seed: int = 0) -> dict:
    """Per-object wall time of ``seg.predict`` on random 640 x 480 images with disc-like objects."""
    section("2. inference per object (crop + stage 1 + stage 2 + paste-back)")
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(n_objects):
        image = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
        r = float(np.exp(rng.uniform(np.log(3), np.log(200))))  # small to large objects
        cx, cy = rng.uniform(0, 640), rng.uniform(0, 480)
        yy, xx = np.mgrid[:480, :640]
        mask = (xx - cx) ** 2 / r ** 2 + (yy - cy) ** 2 / (0.7 * r) ** 2 <= 1
        if mask.any():
            cases.append((image, extreme_points(mask)))
    out = {}
    for threads in (1, 2):
        run = dataclasses.replace(seg, num_threads=threads)
        for image, pts in cases[:3]:  # warm-up
            run.predict(image, pts)
        times = []
        for image, pts in cases:
            t0 = time.perf_counter()
            run.predict(image, pts)
            times.append(time.perf_counter() - t0)
        med, p90 = float(np.median(times)), float(np.percentile(times, 90))
        out[f"threads{threads}"] = {"median_s": med, "p90_s": p90, "n": len(times)}
        shipped = " (as shipped: CustomConfig.num_threads)" if threads == seg.config.num_threads else ""
        print(f"  {threads} thread(s){shipped}: median {med:.4f} s, p90 {p90:.4f} s over {len(times)} objects "
              f"(target median <= 0.25 s; {load_avg()})")
    return out


def litemedsam_tight_box(test: Dataset, out_dir: Path) -> pd.DataFrame | None:
    """LiteMedSAM with the tight box through the engine, or ``None`` when it cannot be built."""
    try:
        from samstudy.models import build_model

        model = build_model("litemedsam")
    except Exception as e:  # noqa: BLE001 - the comparison is optional
        print(f"  LiteMedSAM unavailable ({type(e).__name__}: {e}); no tight-box comparison")
        return None
    df = run_experiment(test, model, modes=["tight_box"], out_dir=out_dir, multimask=["single"],
                        progress=False, store_predictions=False)
    return df[df.status == "ok"]


def evaluate_custom(test: Dataset, seg: CustomSegmenter, out_dir: Path) -> pd.DataFrame:
    """Both custom stages through the engine (extreme points), one table."""
    return pd.concat([run_experiment(test, arm, ["extreme_points"], out_dir / arm.name, multimask=["single"],
                                     progress=False, store_predictions=False) for arm in custom_arms(seg)],
                     ignore_index=True)


def summarise(df: pd.DataFrame, name: str) -> dict:
    ok = df[df.status == "ok"]
    out = {"n_objects": int(ok.ann_id.nunique()), "n_skipped_rows": int((df.status != "ok").sum())}
    for model, g in ok.groupby("model"):
        out[model] = {"miou": float(g.iou.mean()), "boundary_iou": float(g.boundary_iou.mean()),
                      "by_size": g.groupby("size_bucket").iou.agg(["mean", "size"]).round(4).to_dict("index")}
        print(f"  {name} {model}: mIoU {g.iou.mean():.4f}, boundary IoU {g.boundary_iou.mean():.4f}, "
              f"n = {len(g)}; by size: " + ", ".join(f"{k} {v['mean']:.3f} (n={v['size']})"
                                                     for k, v in out[model]["by_size"].items()))
    return out


def synthetic(work: Path, minutes: float, init: str) -> tuple[dict, CustomSegmenter]:
    from samstudy.synthetic import SyntheticConfig, generate_probe_set

    section(f"3. synthetic probe set (init {init})")
    syn = work / "synthetic"
    generate_probe_set(SyntheticConfig(n_images=60, seed=0), syn)
    ds = load_coco(syn / "instances.json", syn / "images")
    train_ids, test_ids = split_by_image(ds, 0.4, 0)
    train, test = ds.subset(train_ids, name="synthetic-train"), ds.subset(test_ids, name="synthetic-test")
    cfg = CustomConfig(epochs=1000, max_minutes=minutes, init=init)
    t0 = time.perf_counter()
    best = train_custom(train, cfg, work / f"syn-train-{init}", progress=False)
    train_s = time.perf_counter() - t0
    print(f"  training: {train_s:.1f} s wall for {len(train.instances)} objects "
          f"(budget {minutes} min; target <= 180 s); curve: {work / f'syn-train-{init}' / 'curve.csv'}")
    seg = load_custom(best)
    df = evaluate_custom(test, seg, work / f"syn-eval-{init}")
    res = {"train_s": train_s, **summarise(df, "synthetic")}
    ok = df[df.status == "ok"]
    cats = ok.pivot_table(index="category", columns="model", values="iou", aggfunc="mean")
    lms = litemedsam_tight_box(test, work / "syn-litemedsam")
    if lms is not None:
        cats["litemedsam_tight_box"] = lms.groupby("category").iou.mean()
        holes = ok[ok.tags.str.contains("holes")]
        lms_holes = lms[lms.tags.str.contains("holes")]
        res["holes"] = {"custom_stage2": float(holes[holes.model == "custom_stage2"].iou.mean()),
                        "custom_stage1": float(holes[holes.model == "custom_stage1"].iou.mean()),
                        "litemedsam_tight_box": float(lms_holes.iou.mean()), "n": int(len(lms_holes))}
        print(f"  holes (tag): custom stage 2 {res['holes']['custom_stage2']:.4f}, stage 1 "
              f"{res['holes']['custom_stage1']:.4f} vs LiteMedSAM tight box {res['holes']['litemedsam_tight_box']:.4f}"
              f" (n = {res['holes']['n']})")
        res["litemedsam_tight_box_miou"] = float(lms.iou.mean())
    print(cats.round(4).to_string())
    res["per_category"] = cats.round(4).to_dict()
    return res, seg


def coco(work: Path, minutes: float, init: str) -> dict:
    section(f"4. real COCO images ({COCO_DIR}, init {init})")
    ds = load_coco(COCO_DIR / "instances.json", COCO_DIR / "images")
    ds = dataclasses.replace(ds, instances=[t for t in ds.instances if not t.iscrowd])
    train_ids, test_ids = split_by_image(ds, 0.3, 0)
    train, test = ds.subset(train_ids, name="coco-sample-train"), ds.subset(test_ids, name="coco-sample-test")
    cfg = CustomConfig(epochs=1000, max_minutes=minutes, init=init)
    t0 = time.perf_counter()
    best = train_custom(train, cfg, work / f"coco-train-{init}", progress=False)
    train_s = time.perf_counter() - t0
    print(f"  training: {train_s / 60:.1f} min wall on {len(train.images)} images / {len(train.instances)} "
          f"objects (target <= 30 min)")
    seg = load_custom(best)
    df = evaluate_custom(test, seg, work / f"coco-eval-{init}")
    res = {"train_s": train_s, **summarise(df, "coco")}
    lms = litemedsam_tight_box(test, work / "coco-litemedsam")
    if lms is not None:
        res["litemedsam_tight_box"] = {"miou": float(lms.iou.mean()), "boundary_iou": float(lms.boundary_iou.mean()),
                                       "by_size": lms.groupby("size_bucket").iou.mean().round(4).to_dict()}
        print(f"  LiteMedSAM tight box (same objects): mIoU {lms.iou.mean():.4f}, boundary IoU "
              f"{lms.boundary_iou.mean():.4f}; by size {res['litemedsam_tight_box']['by_size']}")
        print(f"  target: custom >= {lms.iou.mean() + 0.15:.4f}; published custom model 0.863")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="output folder (default: a temporary one)")
    ap.add_argument("--syn-minutes", type=float, default=2.75, help="synthetic training budget")
    ap.add_argument("--coco-minutes", type=float, default=29.0, help="COCO training budget")
    ap.add_argument("--init", default=CustomConfig.init, choices=("scratch", "litemedsam_stem"))
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-coco", action="store_true")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-custom-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"bench_custom: work folder {work}; torch {torch.__version__}; {load_avg()}")
    summary = {"sizes": sizes()}
    seg = None
    if not args.skip_synthetic:
        summary["synthetic"], seg = synthetic(work, args.syn_minutes, args.init)
    summary["inference"] = inference(seg or CustomSegmenter(build_custom_model(CustomConfig())))
    if not args.skip_coco and (COCO_DIR / "instances.json").exists():
        summary["coco"] = coco(work, args.coco_minutes, args.init)
    elif not args.skip_coco:
        print(f"\n(no COCO sample at {COCO_DIR}: section 4 skipped)")
    (work / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nsummary: {work / 'summary.json'} ({load_avg()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
