"""ONNX Runtime vs PyTorch for each released architecture (random init, benchmark only), one run.

For every model, both runtimes through the segmenter's own interface (``encode`` / ``decode``): the
one-time export + session creation, the encoder time per image (preprocess included, best of
``--reps``), the decoder time per prompt (a box, single output, best of ``--reps``), the ratios
torch / onnx, and the largest difference of the embedding and of the low-res logits between the two.

    PYTHONPATH=lib python bench/bench_onnx.py [--models mobile_sam efficientvit_sam_l0 sam_hq_vit_b] [--threads 1]

Wall-clock on whatever else runs on the machine: the load average is printed before and after.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np
from samstudy.models import build_model
from samstudy.prompts import Prompt

DEFAULT = ["mobile_sam", "efficientvit_sam_l0", "sam_hq_vit_b"]


def _best(reps: int, fn, *args) -> tuple[float, object]:
    """Fastest of ``reps`` calls ``fn(*args)`` and its output."""
    best, out = float("inf"), None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=DEFAULT)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    prompt = Prompt(mode="tight_box", box=np.array([120.0, 90.0, 420.0, 330.0]))
    print(f"load average before: {os.getloadavg()}; {args.threads} thread(s); image 480x640")
    print(f"{'model':22s} {'first s':>8s} {'enc torch':>9s} {'enc onnx':>8s} {'ratio':>6s} "
          f"{'dec torch':>9s} {'dec onnx':>8s} {'ratio':>6s} {'max|d emb|':>10s} {'max|d logit|':>12s}")
    with tempfile.TemporaryDirectory() as onnx_dir, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.models:
            torch_m = build_model(name, random_init=True, num_threads=args.threads)
            ort_m = build_model(name, random_init=True, num_threads=args.threads, runtime="onnxruntime",
                                onnx_dir=onnx_dir)
            t0 = time.perf_counter()
            ort_m.encode(image)  # exports both parts, makes the sessions
            ort_m.decode(ort_m.encode(image), [prompt])
            export_s = time.perf_counter() - t0
            enc_t, emb_t = _best(args.reps, torch_m.encode, image)
            enc_o, emb_o = _best(args.reps, ort_m.encode, image)
            dec_t, out_t = _best(args.reps, torch_m.decode, emb_t, [prompt])
            dec_o, out_o = _best(args.reps, ort_m.decode, emb_o, [prompt])
            d_emb = float(np.abs(emb_t.features.numpy() - emb_o.features.numpy()).max())
            d_log = float(np.abs(out_t.low_res_logits - out_o.low_res_logits).max())
            print(f"{name:22s} {export_s:8.1f} {enc_t:9.3f} {enc_o:8.3f} {enc_t / enc_o:6.2f} "
                  f"{dec_t:9.4f} {dec_o:8.4f} {dec_t / dec_o:6.2f} {d_emb:10.1e} {d_log:12.1e}", flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
