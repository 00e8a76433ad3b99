"""Encoder speed of each released architecture (random init, benchmark only), measured in one run.

For every model: FLOPs of one image-encoder forward at its native input (torch's FlopCounterMode),
the encoder's GFLOP/s as a fraction of the fp32 matmul rate measured here (1024^3 matmuls, same
thread count), and the cold wall time of ``EmbeddingCache.get_or_encode`` on an empty cache
(preprocess + encode + cache write) over the bare encoder forward time (target <= 1.10).

    PYTHONPATH=lib python bench/bench_models.py [--models mobile_sam efficientvit_sam_l0 ...] [--images 2] [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import warnings

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from samstudy.cache import EmbeddingCache
from samstudy.compute import matmul_gflops, torch_settings
from samstudy.models import build_model

DEFAULT = ["mobile_sam", "efficientvit_sam_l0", "efficientvit_sam_xl0", "sam_hq_vit_b", "sam2.1_hiera_t"]


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def encoder_forward(model, x: torch.Tensor):
    """The bare encoder forward: SAM 2's ``forward_image`` (Hiera + neck + the decoder's two 1x1 convs
    on the high-res maps, all of what its cached embedding needs), else ``image_encoder``."""
    with torch.inference_mode():
        net = model.model
        return net.forward_image(x) if hasattr(net, "forward_image") else net.image_encoder(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=DEFAULT)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with torch_settings(args.threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        peak = matmul_gflops(1024)
        print(f"fp32 matmul 1024^3, {args.threads} thread(s): {peak:.1f} GFLOP/s")
        print(f"{'model':24s} {'input':>6s} {'GFLOP':>8s} {'enc s':>7s} {'GFLOP/s':>8s} {'of matmul':>9s} {'cold/enc':>8s}")
        for name in args.models:
            m = build_model(name, random_init=True, num_threads=args.threads)
            images = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(args.images)]
            x = m.preprocess(images[0])
            with FlopCounterMode(display=False) as fc:
                encoder_forward(m, x)
            gflop = fc.get_total_flops() / 1e9
            enc, cold = [], []
            with tempfile.TemporaryDirectory() as tmp:
                cache = EmbeddingCache(tmp)
                for img in images:
                    cold.append(_timed(lambda: cache.get_or_encode(m, img)))
                    xi = m.preprocess(img)
                    enc.append(_timed(lambda: encoder_forward(m, xi)))
            e, c = float(np.median(enc)), float(np.median(cold))
            print(f"{name:24s} {x.shape[-1]:6d} {gflop:8.1f} {e:7.2f} {gflop / e:8.1f} {gflop / e / peak:9.2f} {c / e:8.3f}")


if __name__ == "__main__":
    main()
