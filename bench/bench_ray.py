"""Ray executor throughput: 2 actors vs 1 actor (scaling), Ray 1 actor vs the local executor (overhead).

    PYTHONPATH=lib python bench/bench_ray.py [--images 12] [--model litemedsam]

The same run (synthetic probe set, LiteMedSAM, tight box, no embedding cache, so every image is
encoded) is done by the local executor (1 torch thread) and by Ray Data with 1 and 2 actors
(1 CPU = 1 thread each) on a local ``ray.init(num_cpus=2)``. Two throughputs per run:

- *steady*: images / s between the first and the last part written (``parts/*.parquet`` mtimes),
  i.e. without start-up (Ray workers importing torch and building the model);
- *end to end*: images / s of the whole ``run_experiment`` call, start-up included.

Printed ratios and their targets: scaling efficiency = thr(2 actors) / (2 thr(1 actor)) >= 0.8,
overhead = time(Ray, 1 actor) / time(local) <= 1.15. The load average is printed before and
after: on a shared machine the numbers are contended (2 actors need 2 idle cores to scale).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _throughput(out: Path, seconds: float, n: int) -> tuple[float, float]:
    """``(steady, end-to-end)`` images / s of a finished run in ``out``."""
    times = sorted(p.stat().st_mtime for p in (out / "parts").glob("*[0-9].parquet"))
    steady = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else float("nan")
    return steady, n / seconds


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=12)
    ap.add_argument("--model", default="litemedsam")
    args = ap.parse_args(argv)

    import ray

    from samstudy import engine
    from samstudy.compute import torch_settings
    from samstudy.data import load_coco
    from samstudy.models import build_model
    from samstudy.synthetic import SyntheticConfig, generate_probe_set

    print(f"load average before: {os.getloadavg()}  (cores: {os.cpu_count()})", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray-"))
    root = generate_probe_set(SyntheticConfig(n_images=args.images), tmp / "synthetic")
    ds = load_coco(root / "instances.json", root / "images", name="synthetic")
    model = build_model(args.model, num_threads=1)
    n = len(ds.images)
    runs: dict[str, tuple[float, float, float]] = {}

    def run(name: str, executor) -> None:
        out = tmp / name
        t0 = time.perf_counter()
        with torch_settings(1):
            engine.run_experiment(ds, model, ["tight_box"], out, cache=None, progress=False, executor=executor)
        dt = time.perf_counter() - t0
        steady, e2e = _throughput(out, dt, n)
        runs[name] = (dt, steady, e2e)
        print(f"{name:8s} {dt:7.1f} s  steady {steady:.3f} img/s  end-to-end {e2e:.3f} img/s", flush=True)

    run("local", "local")
    for attempt in range(3):  # Ray gives its daemons fixed start-up deadlines; a busy machine may need a retry
        try:
            ray.init(num_cpus=2, include_dashboard=False)
            break
        except Exception as e:  # noqa: BLE001
            print(f"ray.init failed ({type(e).__name__}); retrying", flush=True)
            ray.shutdown()
    else:
        print("could not start Ray on this machine", file=sys.stderr)
        return 1
    run("ray1", {"executor": "ray", "workers": 1})
    run("ray2", {"executor": "ray", "workers": 2})
    ray.shutdown()

    for what, i in (("steady", 1), ("end-to-end", 2)):
        eff = runs["ray2"][i] / (2 * runs["ray1"][i])
        over = runs["local"][i] / runs["ray1"][i]  # time ratio = inverse throughput ratio
        print(f"{what:10s}: scaling efficiency 2 actors / (2 x 1 actor) = {eff:.2f} (target >= 0.8); "
              f"overhead Ray 1 actor / local = {over:.2f}x (target <= 1.15)")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
