"""Crash and concurrency behaviour of the engine, with real processes: ``kill -9`` mid-run, then resume;
a second writer on the same results folder.

A child process (``_child.py``, written here) runs :func:`samstudy.engine.run_experiment` on the tiny
dataset of ``test_engine`` with either the fake foundation model or a small randomly initialised
custom model loaded from a checkpoint. Its image loader SIGKILLs the child when asked to read image
k + 1, i.e. after exactly k images were written. The truth to compare with is an uninterrupted run
in this process; the number of images the rerun reads is counted by its image loader.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from samstudy import engine, results
from samstudy.custom.arm import CustomArm
from samstudy.custom.model import CustomConfig, build_custom_model, load_custom, model_payload, save_checkpoint
from samstudy.data import read_image
from samstudy.locks import FolderLocked

from test_engine import BoxFake, make_dataset

N_IMAGES = 4
MODES = {"foundation": ["tight_box", "jitter_box", "clicks[max_clicks=3]"], "custom": ["extreme_points"]}
MULTIMASK = {"foundation": ["single", "best_of_3"], "custom": ["single"]}
TINY_CUSTOM = dict(init="scratch", crop_size=32, widths1=(8, 8, 16, 16), widths2=(4, 4, 8, 8), num_threads=1)

CHILD = textwrap.dedent('''
    import os, signal, sys, time
    sys.path.insert(0, sys.argv[1])
    from pathlib import Path
    from samstudy import engine
    from samstudy.custom.arm import CustomArm
    from samstudy.custom.model import load_custom
    from samstudy.data import read_image
    from test_engine import BoxFake, make_dataset
    from test_resume import MODES, MULTIMASK, N_IMAGES

    kind, data, out, kill_after, pause = sys.argv[2], Path(sys.argv[3]), sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
    reads = []

    def loader(rec):
        if len(reads) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9 after exactly kill_after images were written
        reads.append(rec.image_id)
        time.sleep(pause)
        return read_image(rec.path)

    ds = make_dataset(data, N_IMAGES)
    model = BoxFake() if kind == "foundation" else CustomArm(load_custom(data / "custom.pt"), stage=2)
    engine.run_experiment(ds, model, MODES[kind], out, seed=1, multimask=MULTIMASK[kind], image_loader=loader,
                          progress=False)
''')


@pytest.fixture()
def world(tmp_path):
    """The dataset, a saved tiny custom model and the child script (all under ``tmp_path``)."""
    data = tmp_path / "data"
    data.mkdir()
    ds = make_dataset(data, N_IMAGES)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_custom_model(CustomConfig(**TINY_CUSTOM))
    save_checkpoint(data / "custom.pt", model_payload(model))
    child = tmp_path / "_child.py"
    child.write_text(CHILD)
    return ds, data, child


def _model(kind: str, data: Path):
    return BoxFake() if kind == "foundation" else CustomArm(load_custom(data / "custom.pt"), stage=2)


def _run_here(kind, ds, data, out, reads=None):
    def loader(rec):
        if reads is not None:
            reads.append(rec.image_id)
        return read_image(rec.path)
    return engine.run_experiment(ds, _model(kind, data), MODES[kind], out, seed=1, multimask=MULTIMASK[kind],
                                 image_loader=loader, progress=False)


def _child(child: Path, kind: str, data: Path, out: Path, kill_after: int = -1, pause: float = 0.0):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(child), str(Path(__file__).parent), kind, str(data), str(out),
                             str(kill_after), str(pause)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=list(results.TIMING_COLUMNS)).reset_index(drop=True)


@pytest.mark.parametrize("kind", ["foundation", "custom"])
@pytest.mark.parametrize("k", [1, 3])
def test_kill_9_after_k_images_then_rerun_decodes_exactly_the_rest(world, tmp_path, kind, k):
    ds, data, child = world
    truth = _run_here(kind, ds, data, tmp_path / "uninterrupted")
    truth_preds = results.read_results(tmp_path / "uninterrupted", predictions=True)

    out = tmp_path / "killed"
    proc = _child(child, kind, data, out, kill_after=k)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    written = sorted(int(p.name.split(".")[0]) for p in (out / "parts").glob("*.parquet") if ".pred" not in p.name)
    assert written == sorted(ds.images)[:k]
    assert not (out / "results.parquet").exists()

    reads: list[int] = []
    resumed = _run_here(kind, ds, data, out, reads)  # the killed run's lock was released by the kernel
    assert reads == sorted(ds.images)[k:]  # exactly the n - k remaining images are read and decoded
    assert resumed.attrs["computed_images"] == N_IMAGES - k and resumed.attrs["resumed_images"] == k
    pd.testing.assert_frame_equal(_comparable(truth), _comparable(resumed))
    pd.testing.assert_frame_equal(truth_preds, results.read_results(out, predictions=True))
    assert not list((out / "parts").glob(".tmp-*"))


def test_second_writer_fails_at_once_naming_the_first_which_finishes_correctly(world, tmp_path):
    ds, data, child = world
    truth = _run_here("foundation", ds, data, tmp_path / "truth")
    out = tmp_path / "shared"
    first = _child(child, "foundation", data, out, pause=1.0)  # ~4 s of work
    owner = out / ".samstudy.lock.json"
    deadline = time.monotonic() + 60
    while not owner.exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    t0 = time.monotonic()
    with pytest.raises(FolderLocked) as err:
        _run_here("foundation", ds, data, out)
    assert time.monotonic() - t0 < 5  # refused at once, not after waiting
    assert f"pid {first.pid}" in str(err.value) and "engine: boxfake on tiny" in str(err.value)
    assert json.loads(owner.read_text())["pid"] == first.pid
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr[-2000:]
    pd.testing.assert_frame_equal(_comparable(truth), _comparable(results.read_results(out)))
    assert not owner.exists()  # released on a normal exit


def test_looking_up_another_configs_training_folder_never_deletes_a_finished_one(tmp_path):
    # The folder of one (config, data) pair is a pure function of them; computing another config's
    # folder (a config switched, a learning-curve run) must leave a finished training in place.
    from samstudy.data_stage import training_dir

    data = tmp_path / "train.json"
    data.write_text('{"images": []}')
    a = training_dir(tmp_path / "t", {"epochs": 15}, data)
    a.mkdir(parents=True)
    (a / "best.pt").write_bytes(b"weights")
    b = training_dir(tmp_path / "t", {"epochs": 25}, data)
    assert b != a and b.parent == a.parent and b.name.startswith("training-")
    assert (a / "best.pt").read_bytes() == b"weights"
    assert training_dir(tmp_path / "t", {"epochs": 15}, data) == a  # and the first config finds it again
    data.write_text('{"images": [1]}')
    assert training_dir(tmp_path / "t", {"epochs": 15}, data) != a  # new training data: a new folder
