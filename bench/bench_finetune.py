"""Benchmark of decoder fine-tuning (a script, not a test): prints measured figures and ratios.

    PYTHONPATH=lib .venv/bin/python bench/bench_finetune.py [--steps 20] [--batch-size 8] [--threads 1]

On LiteMedSAM (the shipped checkpoint; image encoder frozen, embeddings computed once here):

1. training throughput: objects/s of :func:`samstudy.finetune.train_step` (prompt encoder + mask
   decoder forward, loss, backward, AdamW step) over ``--steps`` steps of ``--batch-size`` objects
   drawn from 4 images (1-2 objects per image decode as one batch), box prompts, median step time;
2. the FLOPs of one such step (forward + backward, counted by ``torch.utils.flop_counter``) and the
   machine's fp32 matmul rate measured in the same run with the same thread count
   (2048^3 ``torch.mm``, best of 5): ``ratio = step wall time / (step FLOPs / matmul rate)``
   (target <= 2);
3. ``--chunk N``: also the training path with ``FinetuneConfig.decoder_chunk = N`` (eager and compiled);
4. the same with ``FinetuneConfig.compile`` (the decoder's training pass through ``torch.compile``,
   inductor; compilation time printed separately, FLOPs those of the eager pass). ``--no-compile``
   skips it.

Timings are wall-clock on a shared machine: the load average is printed.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "lib"))

from samstudy.compute import matmul_gflops, torch_settings  # noqa: E402
from samstudy.data import Dataset, ImageRecord, Instance  # noqa: E402
from samstudy.cache import EmbeddingCache  # noqa: E402
from samstudy.finetune import (_train_mode, _trainable, batches_across_images, collect_objects,  # noqa: E402
                               compiled_decoder, sample_prompt, train_step)
from samstudy.masks import encode_rle, mask_box_xyxy  # noqa: E402
from samstudy.models import build_model  # noqa: E402


def load_avg() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def bench_world(n_images: int = 4, size: int = 320) -> tuple[Dataset, dict[int, np.ndarray]]:
    """Textured images with 2 discs each (in memory; no file is read)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    images, recs, insts = {}, {}, []
    ann = 1
    for i in range(1, n_images + 1):
        img = rng.normal(60, 20, (size, size, 3))
        for cx, cy, r in ((0.3, 0.35, 0.15), (0.7, 0.65, 0.2)):
            m = np.hypot(xx - cx * size, yy - cy * size) <= r * size
            img[m] = rng.uniform(120, 230, 3)
            insts.append(Instance(i, ann, 1, "disc", encode_rle(m), int(m.sum()),
                                  tuple(float(v) for v in mask_box_xyxy(m))))
            ann += 1
        images[i] = img.clip(0, 255).astype(np.uint8)
        recs[i] = ImageRecord(i, f"{i}.png", Path(f"{i}.png"), size, size)
    return Dataset("bench", recs, {1: "disc"}, insts), images


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    ap.add_argument("--chunk", type=int, default=None,
                    help="also measure training's decoder_chunk (objects per decoder call), eager and compiled")
    args = ap.parse_args()
    print(f"== setup ({load_avg()}, torch {torch.__version__}, {args.threads} thread(s))", flush=True)
    seg = build_model("litemedsam", num_threads=args.threads)
    ds, images = bench_world()
    with torch_settings(args.threads):
        objs, embs, _ = collect_objects(ds, seg, EmbeddingCache(None), images)
        params = _trainable(seg)
        _train_mode(seg)
        opt = torch.optim.AdamW(params, lr=1e-5)
        rng = np.random.default_rng(0)

        def batch():
            idx = rng.choice(len(objs), args.batch_size, replace=len(objs) < args.batch_size)
            b = [objs[i] for i in idx]
            return b, [sample_prompt("box", o, rng) for o in b]

        b0, p0 = batch()
        across_ok = batches_across_images(seg, [embs[o.key] for o in b0[:2]], p0[:2])
        rate = matmul_gflops()
        results = []

        def measure(across: bool, block, chunk: int | None) -> tuple[float, float, float]:
            t0 = time.perf_counter()
            with block():
                for _ in range(2):  # warm-up (and compilation)
                    train_step(seg, opt, *batch(), embs, across, chunk)
                warm = time.perf_counter() - t0
                times = []
                for _ in range(args.steps):
                    b, p = batch()
                    t0 = time.perf_counter()
                    train_step(seg, opt, b, p, embs, across, chunk)
                    times.append(time.perf_counter() - t0)
            return float(np.median(times)), float(np.percentile(times, 90)), warm

        from torch.utils.flop_counter import FlopCounterMode

        variants = [("eager", a, contextlib.nullcontext, None) for a in ([False, True] if across_ok else [False])]
        if not args.no_compile:
            variants.append(("torch.compile", across_ok, compiled_decoder(seg), None))
        if args.chunk:
            variants.append(("eager", across_ok, contextlib.nullcontext, args.chunk))
            if not args.no_compile:
                variants.append(("torch.compile", across_ok, compiled_decoder(seg), args.chunk))
        for how, across, block, chunk in variants:
            step_s, p90, warm = measure(across, block, chunk)
            b, p = batch()
            with FlopCounterMode(display=False) as fc:  # eager: the compiled graphs do the same math
                train_step(seg, opt, b, p, embs, across, chunk)
            results.append((how, across, chunk, step_s, p90, warm, fc.get_total_flops() / 1e9))
        rate = max(rate, matmul_gflops())  # best of two measurements, before and after the steps
    print(f"== results ({load_avg()})")
    print(f"  trainable parameters        {sum(q.numel() for q in params):,}")
    print(f"  fp32 matmul rate            {rate:.1f} GFLOP/s (2048^3 torch.mm, {args.threads} thread(s), best of 2x5)")
    for how, across, chunk, step_s, p90, warm, gflop in results:
        calls = "one decoder call for all images" if across else "one decoder call per image"
        if chunk:
            calls += f", at most {chunk} objects per call (decoder_chunk)"
        ideal = gflop / rate
        print(f"  [{how}, {calls}] {args.batch_size} objects/step, median of {args.steps} steps {step_s:.3f} s "
              f"(p90 {p90:.3f} s; 2 warm-up steps incl. compilation {warm:.1f} s)")
        print(f"    training throughput       {args.batch_size / step_s:.1f} objects/s")
        print(f"    step FLOPs (fwd+bwd)      {gflop:.2f} GFLOP ({gflop / args.batch_size:.3f} per object)")
        print(f"    FLOP time at matmul rate  {ideal:.3f} s")
        print(f"    ratio wall / FLOP time    {step_s / ideal:.2f}x (target <= 2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
