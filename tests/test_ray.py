"""The Ray executor gives the local executor's tables, survives a killed worker, and resumes.

One local Ray instance (``ray.init(num_cpus=2)``) is shared by the whole module (Ray starts
slowly); every run uses 2 actors. Truth: the same run with ``executor="local"``, compared on
every column but :data:`samstudy.results.TIMING_COLUMNS`.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from samstudy import engine, results
from samstudy.config import RunConfig
from samstudy.data import Dataset, ImageRecord, load_coco
from samstudy.executors import ExecutorSpec, worker_resources
from samstudy.files import TMP_PREFIX
from samstudy.models.base import Decoded, Embedding, PromptableSegmenter

ray = pytest.importorskip("ray")

RAY2 = {"executor": "ray", "workers": 2}


# --------------------------------------------------------------------------------- no Ray needed
def test_config_run_section_declares_the_executor_fields():
    assert [(f.name, f.default) for f in dataclasses.fields(RunConfig)] == \
        [(f.name, f.default) for f in dataclasses.fields(ExecutorSpec)]
    assert ExecutorSpec.of(RunConfig(executor="ray", workers=3)) == ExecutorSpec("ray", workers=3)


def test_worker_resources_follow_gpus_then_cpus():
    local = ExecutorSpec("ray")
    assert worker_resources(local, {"CPU": 8.0}) == (8, 1.0, 0.0)           # one actor per core
    assert worker_resources(local, {"CPU": 32.0, "GPU": 4.0}) == (4, 1.0, 1.0)  # one per GPU
    assert worker_resources(ExecutorSpec("ray", cpus_per_worker=4), {"CPU": 8.0}) == (2, 4.0, 0.0)
    assert worker_resources(ExecutorSpec("ray", workers=3), {"CPU": 2.0}) == (3, 1.0, 0.0)
    for bad in ({"executor": "dask"}, {"executor": "ray", "workers": 0}, {"ray_address": "auto"}):
        with pytest.raises(ValueError):
            ExecutorSpec(**bad)


def test_run_section_reaches_both_engine_stages_and_the_command_line_overrides_it(tmp_path, capsys):
    from samstudy import cli
    from samstudy.config import parse_config
    from samstudy.pipeline import stage_parameters
    from samstudy.stages import STAGES, RunLayout

    repo = Path(__file__).resolve().parents[1]
    cfg = parse_config({"name": "x", "run": {"executor": "ray", "workers": 4}}, repo / "configs" / "x.yaml")
    by_name = {s.name: s for s in STAGES}
    for stage in ("foundation", "evaluate_custom"):
        p = stage_parameters(cfg, by_name[stage], RunLayout(tmp_path / "x"))
        assert ExecutorSpec.of(p["executor"]) == ExecutorSpec("ray", workers=4)
    # --ray-address with --executor local is refused before anything runs (exit 2)
    assert cli.main(["run", "--config", str(repo / "configs" / "demo.yaml"), "--dry-run", "--executor", "local",
                     "--ray-address", "auto"]) == 2
    assert "ray_address" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ Ray session
@pytest.fixture(scope="module")
def ray_session():
    # Workers import this module's fake model by value (tests/ is not on their path).
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    for attempt in range(3):  # Ray gives its raylet 30 s to start; a busy machine can need a second try
        try:
            ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
            break
        except Exception:  # noqa: BLE001
            ray.shutdown()
            if attempt == 2:
                raise
    yield ray
    ray.shutdown()


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=list(results.TIMING_COLUMNS)).reset_index(drop=True)


def _assert_same(out_a: Path, out_b: Path) -> None:
    pd.testing.assert_frame_equal(_comparable(results.read_results(out_a)), _comparable(results.read_results(out_b)))
    pd.testing.assert_frame_equal(results.read_results(out_a, predictions=True),
                                  results.read_results(out_b, predictions=True))


def _synthetic(tmp_path: Path, n_images: int) -> Dataset:
    """The probe set's first images plus a record whose file is missing (a read-error skip)."""
    from samstudy.synthetic import SyntheticConfig, generate_probe_set

    root = generate_probe_set(SyntheticConfig(n_images=n_images, objects_per_image=(2, 3)), tmp_path / "synthetic")
    ds = load_coco(root / "instances.json", root / "images", name="synthetic")
    first = next(iter(ds.instances))
    ghost = ImageRecord(image_id=999, file_name="gone.png", path=root / "gone.png", height=first.rle["size"][0],
                        width=first.rle["size"][1])
    return dataclasses.replace(ds, images={**ds.images, 999: ghost},
                               instances=ds.instances + [dataclasses.replace(first, image_id=999, ann_id=99_999)])


@pytest.mark.slow
def test_ray_gives_the_local_tables_for_foundation_and_custom_arms(ray_session, tmp_path):
    from samstudy.custom import custom_arms
    from samstudy.custom.model import CustomConfig, CustomSegmenter, build_custom_model
    from samstudy.models import build_model

    ds = _synthetic(tmp_path, 3)
    sam = build_model("litemedsam", num_threads=1)  # rebuilt on each worker from its build_args
    modes = ["tight_box", "loose_box[b=0.2]", "clicks[start=click,max_clicks=2]"]
    raw = {i.ann_id: i for i in ds.instances}  # a second gt variant, so variant lookups travel too
    common = dict(modes=modes, seed=3, gt_variants={"raw": raw}, progress=False)
    local = engine.run_experiment(ds, sam, out_dir=tmp_path / "local", cache=tmp_path / "c1", **common)
    on_ray = engine.run_experiment(ds, sam, out_dir=tmp_path / "ray", cache=tmp_path / "c2", executor=RAY2,
                                   **common)
    assert on_ray.attrs["computed_images"] == len(ds.images)
    assert (local.skip_reason == "image_missing").sum() > 0
    _assert_same(tmp_path / "local", tmp_path / "ray")
    # the workers filled the cache folder they were given: a local run on it encodes nothing
    warm = engine.run_experiment(ds, sam, out_dir=tmp_path / "warm", cache=tmp_path / "c2", **common)
    assert warm[warm.status == "ok"].cached.all()

    # the custom arms (not built by name: the driver's model travels pickled)
    seg = CustomSegmenter(build_custom_model(CustomConfig(init="scratch", crop_size=32, widths1=(8, 8, 16, 16),
                                                          widths2=(4, 4, 8, 8), num_threads=1)))
    for arm in custom_arms(seg):
        kw = dict(modes=["extreme_points"], multimask=["single"], progress=False)
        engine.run_experiment(ds, arm, out_dir=tmp_path / f"{arm.name}-local", **kw)
        engine.run_experiment(ds, arm, out_dir=tmp_path / f"{arm.name}-ray", executor=RAY2, **kw)
        _assert_same(tmp_path / f"{arm.name}-local", tmp_path / f"{arm.name}-ray")


@pytest.mark.slow
@pytest.mark.shared_data
def test_ray_gives_the_local_tables_on_the_coco_sample(ray_session, coco_sample_dir, tmp_path):
    from samstudy.models import build_model

    full = load_coco(coco_sample_dir / "instances.json", coco_sample_dir / "images", check_images=False)
    ds = full.subset(sorted(full.images)[:3], name="coco-sample-3")
    sam = build_model("litemedsam", num_threads=1)
    common = dict(modes=["tight_box", "loose_box[b=0.2]"], progress=False)
    engine.run_experiment(ds, sam, out_dir=tmp_path / "local", **common)
    engine.run_experiment(ds, sam, out_dir=tmp_path / "ray", executor=RAY2, **common)
    _assert_same(tmp_path / "local", tmp_path / "ray")


# ------------------------------------------------------------------------------ a killed worker
class SlowBoxFake(PromptableSegmenter):
    """The pixels of the prompt's box, after ``delay`` s of "encoding"; each encode is logged as
    ``pid image-mean`` to ``log``, so the test knows the workers' processes and their work."""

    name, label, checkpoint_sha256, preprocess_id = "slowbox", "slow box fake (tests)", "s" * 64, "v1"
    cache_embeddings = False

    def __init__(self, log: Path, delay: float) -> None:
        self.device = torch.device("cpu")
        self.log, self.delay = log, delay

    def encode(self, image: np.ndarray) -> Embedding:
        with open(self.log, "a") as f:
            f.write(f"{os.getpid()} {image.mean():.6f}\n")
        time.sleep(self.delay)
        return Embedding(features=torch.zeros(1, 1, 1, 1), original_hw=image.shape[:2], input_hw=image.shape[:2],
                         model_key=self.cache_key)

    def decode(self, embedding, prompts, multimask=False, mask_inputs=None) -> Decoded:
        h, w = embedding.original_hw
        masks = np.zeros((len(prompts), 1, h, w), bool)
        for i, p in enumerate(prompts):
            x0, y0, x1, y1 = np.round(p.box).astype(int)
            masks[i, 0, y0:y1, x0:x1] = True
        return Decoded(masks=masks, iou_pred=np.ones((len(prompts), 1), np.float32), low_res_logits=None)


def _encodes(log: Path) -> list[tuple[int, str]]:
    if not log.exists():
        return []
    return [(int(p), m) for p, m in (line.split() for line in log.read_text().splitlines() if line)]


def test_killed_worker_loses_only_its_image_and_a_rerun_finishes(ray_session, tmp_path):
    ds = _synthetic(tmp_path, 8)
    ds = dataclasses.replace(ds, images={i: r for i, r in ds.images.items() if i != 999},
                             instances=[i for i in ds.instances if i.image_id != 999])
    n = len(ds.images)
    modes, out, log = ["tight_box", "loose_box[b=0.1]"], tmp_path / "ray", tmp_path / "encodes.log"
    engine.run_experiment(ds, SlowBoxFake(tmp_path / "local.log", 0.0), modes, tmp_path / "local", progress=False)

    errors: list[BaseException] = []

    def first_run() -> None:
        try:
            engine.run_experiment(ds, SlowBoxFake(log, 1.5), modes, out, executor=RAY2, progress=False)
        except BaseException as e:  # noqa: BLE001 - a failed first run is allowed; the rerun must finish
            errors.append(e)

    t = threading.Thread(target=first_run)
    t.start()
    deadline = time.time() + 300
    while len(list((out / "parts").glob("*[0-9].parquet"))) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert time.time() < deadline, "the workers wrote no parts within 5 minutes"
    written = {p.name: p.stat().st_mtime_ns for p in (out / "parts").glob("*.parquet")
               if not p.name.startswith(TMP_PREFIX)}
    victim = _encodes(log)[-1][0]  # the worker that started the latest image: it is busy on it
    os.kill(victim, signal.SIGKILL)
    t.join(timeout=600)
    assert not t.is_alive()

    again = engine.run_experiment(ds, SlowBoxFake(log, 0.0), modes, out, executor=RAY2, progress=False)
    _assert_same(tmp_path / "local", out)
    # parts written before the kill were neither recomputed by Ray's retry nor by the rerun ...
    assert {p: (out / "parts" / p).stat().st_mtime_ns for p in written} == written
    # ... and at most the killed worker's in-flight image was computed twice
    assert n <= len(_encodes(log)) <= n + 1, (_encodes(log), errors)
    assert again.attrs["computed_images"] + again.attrs["resumed_images"] == n
