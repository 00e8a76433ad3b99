"""One writer per results folder (``samstudy.locks``).

A holder is a separate Python process (``python -c``) that takes the lock, says so on stdout and
sleeps; the tests then try the same folder from this process, kill the holder with SIGKILL, and run
``samstudy run`` against a held results folder.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from samstudy import cli
from samstudy.locks import LOCK_NAME, OWNER_NAME, FolderLocked, folder_lock, pid_alive, read_owner
from samstudy.pipeline import hash_outputs

REPO = Path(__file__).resolve().parents[1]

_HOLDER = """
import sys, time
from pathlib import Path
from samstudy.locks import folder_lock
with folder_lock(Path(sys.argv[1]), "test holder"):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def hold():
    """``hold(folder)`` starts a process holding ``folder`` and returns it once the lock is held."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path) -> subprocess.Popen:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "lib"), os.environ.get("PYTHONPATH", "")])}
        p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
        procs.append(p)
        line = p.stdout.readline()  # the holder prints only after its owner record is written
        assert line.strip() == "held", p.stderr.read()
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _kill9(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait()  # reaped: no zombie left that could still look alive


def test_second_acquire_fails_at_once_naming_the_holder(tmp_path, hold):
    holder = hold(tmp_path / "run")
    t0 = time.perf_counter()
    with pytest.raises(FolderLocked) as e:
        with folder_lock(tmp_path / "run", "second"):
            pytest.fail("entered a held folder")
    assert time.perf_counter() - t0 < 2.0  # no waiting for the holder
    msg = str(e.value)
    assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and "'test holder'" in msg
    assert str(tmp_path / "run") in msg and "since " in msg and "-c" in msg  # its command line
    assert e.value.owner["pid"] == holder.pid and e.value.folder == tmp_path / "run"
    assert read_owner(tmp_path / "run")["pid"] == holder.pid  # the failed attempt left the record alone


def test_killed_holder_is_taken_over_with_a_warning(tmp_path, hold, caplog):
    holder = hold(tmp_path / "run")
    _kill9(holder)
    assert not pid_alive(holder.pid)
    assert read_owner(tmp_path / "run")["pid"] == holder.pid  # a kill -9 leaves its record behind
    with caplog.at_level(logging.WARNING, logger="samstudy.locks"):
        with folder_lock(tmp_path / "run", "successor"):
            owner = read_owner(tmp_path / "run")
            assert owner["pid"] == os.getpid() and owner["what"] == "successor"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and f"pid {holder.pid}" in warnings[0] and "no longer running" in warnings[0]
    assert read_owner(tmp_path / "run") is None


def test_release_removes_the_record_and_the_folder_can_be_taken_again(tmp_path, caplog):
    folder = tmp_path / "new" / "run"  # created when missing
    with folder_lock(folder, "first") as f:
        assert f == folder
        owner = read_owner(folder)
        assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
        assert owner["user"] and owner["command"] and owner["started"]
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()}"):  # no silent re-entry in one process
            with folder_lock(folder, "nested"):
                pass
    assert (folder / LOCK_NAME).is_file() and not (folder / OWNER_NAME).exists()
    with caplog.at_level(logging.WARNING, logger="samstudy.locks"):
        with folder_lock(folder, "second"):
            pass
    assert not caplog.records  # a clean release leaves nothing stale


def test_release_on_error(tmp_path):
    with pytest.raises(ValueError):
        with folder_lock(tmp_path, "failing"):
            raise ValueError("boom")
    with folder_lock(tmp_path, "after"):
        pass


def test_lock_files_are_not_stage_outputs(tmp_path):
    (tmp_path / "table.csv").write_text("a\n1\n")
    before = hash_outputs(tmp_path)
    with folder_lock(tmp_path, "engine"):
        assert hash_outputs(tmp_path) == before
    assert hash_outputs(tmp_path) == before


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cli_run_exits_3_when_the_results_folder_is_held(tmp_path, hold, capsys):
    results = tmp_path / "results"
    run_dir = results / "x"
    (run_dir / "stages").mkdir(parents=True)
    (run_dir / "manifest.json").write_text('{"status": "ok", "run": "x"}\n')
    (run_dir / "stages" / "data.json").write_text('{"status": "ok"}\n')
    holder = hold(run_dir)
    before = _snapshot(run_dir)
    code = cli.main(["run", "--config", str(REPO / "configs" / "tiny.yaml"), "--run", "x",
                     "--results", str(results), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert f"pid {holder.pid}" in err and str(run_dir) in err
    assert _snapshot(run_dir) == before  # nothing written, nothing touched


_STUDY = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from test_pipeline import _run
result = _run(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
print("ok" if result.ok else f"failed: {result.failure}", flush=True)
"""


@pytest.mark.slow
def test_a_second_study_run_exits_3_and_the_first_completes_correctly(tmp_path, capsys):
    """Two real `run_study` processes on one results folder (stand-in notebooks, ~7 kernels)."""
    from test_pipeline import _dummy_notebooks, _run, _statuses, _write_config

    cfg = _write_config(tmp_path)
    nb_dir = _dummy_notebooks(tmp_path, cfg)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "lib"), os.environ.get("PYTHONPATH", "")])}
    first = subprocess.Popen([sys.executable, "-c", _STUDY, str(Path(__file__).parent), str(tmp_path), str(cfg),
                              str(nb_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    owner = tmp_path / "results" / "x" / OWNER_NAME
    deadline = time.monotonic() + 120
    while not owner.exists():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
        time.sleep(0.05)
    code = cli.main(["run", "--config", str(cfg), "--run", "x", "--results", str(tmp_path / "results"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 3 and f"pid {first.pid}" in err, err
    out, stderr = first.communicate(timeout=600)
    assert out.strip() == "ok", stderr[-2000:]
    # the first run's results are complete: a third run finds every stage done and skips it
    again = _run(tmp_path, cfg, nb_dir)
    assert again.ok and set(_statuses(again).values()) == {"skipped"}
