"""Config validation at load time, configs outside the checkout, the cache root, file permissions and
the progress that reaches the command line.

Every bad input below is a real YAML file written by the test; the expected message is the file,
the dotted key, the expected type and the value given. The slow test runs the study's own notebooks
on ``configs/tiny.yaml`` copied into a folder outside the repository, through the command line.
"""
from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from pathlib import Path

import pyarrow as pa
import pytest

from samstudy import cli
from samstudy.config import ConfigError, load_config, model_options
from samstudy.files import CACHE_ENV, cache_root, write_json_atomic, write_parquet_atomic
from samstudy.pipeline import follow_progress
from samstudy.progress import PROGRESS_ENV, tqdm

REPO = Path(__file__).resolve().parents[1]

BASE = """\
name: t
data: {source: synthetic, limit_images: 4}
foundation:
  models: [{name: litemedsam}]
  modes: [tight_box, 'loose_box[b=0.2]']
custom: {enabled: false}
compare: {n_boot: 200}
"""


@pytest.fixture(autouse=True)
def _own_cache_root(tmp_path, monkeypatch):
    """Checksum records and the like go to this test's folder, not the user's cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache-root"))


def _cfg(folder: Path, text: str, name: str = "c.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(text)
    return p


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return str(e.value)


# -------------------------------------------------------------------------------------------- types
@pytest.mark.parametrize("yaml_text, key, expected, given", [
    (BASE.replace("n_boot: 200", "n_boot: two hundred"), "compare.n_boot", "int", "'two hundred'"),
    (BASE.replace("enabled: false", "enabled: false, minutes: fast"), "custom.minutes", "float", "'fast'"),
    (BASE + "seed: [1]\n", "seed", "int", "[1]"),
    (BASE.replace("limit_images: 4", "limit_images: 2.5"), "data.limit_images", "int | None", "2.5"),
    (BASE.replace("limit_images: 4", "limit_images: 4, split: {test_fraction: half}"),
     "data.split.test_fraction", "float", "'half'"),
    (BASE.replace("limit_images: 4", "limit_images: 4, synthetic: {n_images: many}"),
     "data.synthetic.n_images", "int", "'many'"),
])
def test_wrong_types_name_file_key_type_and_value(tmp_path, yaml_text, key, expected, given):
    p = _cfg(tmp_path, yaml_text)
    msg = _error(p)
    assert msg.startswith(f"{p}: {key}: expected {expected}, got {given}"), msg


def test_unknown_nested_key_lists_the_allowed_ones(tmp_path):
    msg = _error(_cfg(tmp_path, BASE.replace("limit_images: 4", "limit_images: 4, split: {sed: 1}")))
    assert "unknown key 'data.split.sed'" in msg and "['seed', 'test_fraction']" in msg


# ------------------------------------------------------------------------------------ model options
def test_unknown_model_option_fails_at_load_time(tmp_path):
    p = _cfg(tmp_path, BASE.replace("{name: litemedsam}", "{name: litemedsam, options: {runtim: onnxruntime}}"))
    msg = _error(p)
    assert "foundation.models[0].options: unknown option 'runtim'" in msg and "'runtime'" in msg
    ok = _cfg(tmp_path, BASE.replace("{name: litemedsam}", "{name: litemedsam, options: {runtime: onnxruntime, "
                                                             "intensity: div255, num_threads: 1}}"), "ok.yaml")
    assert dict(load_config(ok).foundation.models[0].options)["intensity"] == "div255"


def test_model_options_are_the_builder_and_class_keywords():
    # LiteMedSAM's class adds `intensity` to SamSegmenter's keywords; SAM has none of its own
    assert model_options("sam_vit_b") == {"channels_last", "decode_chunk", "num_threads", "runtime", "onnx_dir"}
    assert model_options("litemedsam") == model_options("sam_vit_b") | {"intensity"}
    assert model_options("custom") == {"stage", "num_threads"}


# -------------------------------------------------------------------------------------- checkpoints
def test_checkpoint_must_exist_and_match_its_sha256(tmp_path):
    weights = tmp_path / "weights" / "mine.pth"
    missing = _cfg(tmp_path, BASE.replace("{name: litemedsam}", "{name: litemedsam, checkpoint: weights/mine.pth}"))
    msg = _error(missing)
    assert "foundation.models[0].checkpoint: checkpoint file not found" in msg and str(weights) in msg
    weights.parent.mkdir()
    weights.write_bytes(b"not really weights")
    sha = hashlib.sha256(b"not really weights").hexdigest()
    good = _cfg(tmp_path, BASE.replace("{name: litemedsam}",
                                       f"{{name: litemedsam, checkpoint: weights/mine.pth, sha256: {sha}}}"), "good.yaml")
    assert load_config(good).foundation.models[0].sha256 == sha
    bad = _cfg(tmp_path, BASE.replace("{name: litemedsam}",
                                      f"{{name: litemedsam, checkpoint: weights/mine.pth, sha256: '{'0' * 64}'}}"), "bad.yaml")
    assert f"has SHA-256 {sha}, expected {'0' * 64}" in _error(bad)
    assert load_config(bad, check_files=False).foundation.models[0].checkpoint == "weights/mine.pth"


def test_official_sam_file_is_checked_against_the_published_sha256(tmp_path):
    from samstudy.models.download import SAM_CHECKPOINTS

    f = tmp_path / "sam_vit_b_01ec64.pth"
    f.write_bytes(b"truncated download")
    p = _cfg(tmp_path, BASE.replace("{name: litemedsam}", "{name: sam_vit_b, checkpoint: sam_vit_b_01ec64.pth}"))
    assert f"expected {SAM_CHECKPOINTS['vit_b'][1]}" in _error(p)


# ------------------------------------------------------------------------------------- prompt modes
def test_mode_keys_in_a_yaml_flow_list_point_to_the_mapping_form(tmp_path):
    flow = BASE.replace("[tight_box, 'loose_box[b=0.2]']", "[tight_box, loose_box[b=0.2]]")
    msg = _error(_cfg(tmp_path, flow))
    assert "not valid YAML" in msg and "{name: loose_box, b: 0.2}" in msg
    mapping = BASE.replace("[tight_box, 'loose_box[b=0.2]']", "[tight_box, {name: loose_box, b: 0.2}]")
    cfg = load_config(_cfg(tmp_path, mapping, "m.yaml"))
    assert cfg.compare.loose_mode == "loose_box[b=0.2]"  # the headline arm found among the mapping-form modes


# ----------------------------------------------------------------------------------- command line
def test_only_with_an_unknown_stage_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = _cfg(tmp_path, BASE)
    for extra in ([], ["--dry-run"]):
        assert cli.main(["run", "--config", str(p), "--only", "foundation,fundation", *extra]) == 2
        err = capsys.readouterr().err
        assert "unknown stage(s) ['fundation']" in err and "data, foundation, compare, gallery, explore" in err
    assert not (tmp_path / "results").exists()


def test_dry_run_of_a_config_outside_the_checkout(tmp_path, capsys, monkeypatch):
    """A config in the user's own folder: notebooks come from the package, relative paths hang off
    the config's folder, results go to ./results; errors are one line with exit code 2."""
    home = tmp_path / "user"
    monkeypatch.chdir(home.parent)
    images = home / "mydata" / "images"
    images.mkdir(parents=True)
    (home / "mydata" / "instances.json").write_text('{"images": [], "annotations": [], "categories": []}')
    p = _cfg(home, BASE.replace("{source: synthetic, limit_images: 4}",
                                "{source: coco, annotations: mydata/instances.json, images: mydata/images}"))
    cfg = load_config(p)
    assert cfg.resolve(cfg.data.images) == str(images)
    assert cli.main(["run", "--config", str(p), "--dry-run", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert f"run folder: {(home.parent / 'results' / 't').resolve()}" in out and "data             run: never run" in out
    bad = _cfg(home, BASE + "notebook_params: {compare: {n_bootz: 5}}\n", "bad.yaml")
    assert cli.main(["run", "--config", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "n_bootz" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (home.parent / "results").exists()  # a dry run writes nothing


# ------------------------------------------------------------------------------ cache root, files
def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert cache_root() == tmp_path / "home" / ".cache" / "samstudy"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "samstudy"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    from samstudy.cache import embedding_dir
    from samstudy.models.onnx_runtime import ONNX_DIR_ENV, default_onnx_dir

    monkeypatch.delenv(ONNX_DIR_ENV, raising=False)
    assert embedding_dir() == tmp_path / "env" / "embeddings" and default_onnx_dir() == tmp_path / "env" / "onnx"
    assert embedding_dir(tmp_path / "mine") == tmp_path / "mine"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_result_files_get_the_usual_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        j = write_json_atomic(tmp_path / "a.json", {"x": 1})
        q = write_parquet_atomic(pa.table({"x": [1]}), tmp_path / "a.parquet")
    finally:
        os.umask(old)
    assert stat.S_IMODE(j.stat().st_mode) == mode and stat.S_IMODE(q.stat().st_mode) == mode


# -------------------------------------------------------------------------------------- progress
def test_progress_bars_in_a_kernel_reach_the_runner(tmp_path, monkeypatch):
    """What the engine's bar writes (through ``progress.tqdm``) is printed by the follower: the
    latest states and the final line, with rate and remaining time."""
    path = tmp_path / "stage.progress"
    lines: list[str] = []
    with follow_progress(path, lines.append, "[foundation]", every=0.0, poll=0.05):
        monkeypatch.setenv(PROGRESS_ENV, str(path))
        bar = tqdm(total=3, unit="img", desc="litemedsam tiny", dynamic_ncols=True)
        for _ in range(3):
            time.sleep(0.15)
            bar.set_postfix(obj_s="2.0", refresh=False)
            bar.update(1)
        bar.close()
        time.sleep(0.2)
    assert lines and all(ln.startswith("[foundation] litemedsam tiny:") for ln in lines)
    assert "3/3" in lines[-1] and "img/s" in lines[-1] and "obj_s=2.0" in lines[-1]
    monkeypatch.delenv(PROGRESS_ENV)
    assert type(tqdm(total=1, disable=True)).__module__.startswith("tqdm")  # no file without the variable


@pytest.mark.slow
def test_tiny_run_from_outside_the_checkout(tmp_path, capsys, monkeypatch):
    """configs/tiny.yaml copied to a user folder, run through the command line: per-image and
    per-epoch progress on the terminal, a one-time ONNX export announced, nothing written outside
    the results folder and the cache root, result files 0644 under umask 022."""
    user, home = tmp_path / "user", tmp_path / "home"
    text = (REPO / "configs" / "tiny.yaml").read_text()
    # epochs: 2 bounds training; the longer wall-clock budget keeps a loaded machine from cutting it to 0 epochs
    cfg = _cfg(user, text.replace("minutes: 0.25", "minutes: 5"), "tiny.yaml")
    home.mkdir()
    monkeypatch.chdir(user)
    monkeypatch.setenv("HOME", str(home))
    for var in (CACHE_ENV, "XDG_CACHE_HOME", "SAMSTUDY_ONNX_DIR"):
        monkeypatch.delenv(var, raising=False)
    repo_before = _tree(REPO, skip={".git", "results", ".cache", ".pytest_cache"})
    old = os.umask(0o022)
    try:
        code = cli.main(["run", "--config", str(cfg), "--cache-dir", str(tmp_path / "cache")])
    finally:
        os.umask(old)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    assert f"cache: {tmp_path / 'cache'} (0.0 MiB)" in err
    # tqdm.write clears the stage bar first: the lines come after a carriage return / cursor-up
    engine = re.findall(r"\[foundation\] litemedsam tiny: [^\r\n]*", err)
    # tqdm shows the rate as img/s, or as s/img below 1 image per second (a loaded machine)
    assert engine and re.search(r"img/s|s/img", engine[-1]) and "obj_s=" in engine[-1] and "3/3" in engine[-1], err[-3000:]
    assert re.search(r"\[train_custom\] custom tiny-train: [^\r\n]*step/s", err)
    assert "to ONNX (one time)" in err and "exported " in err
    page = (user / "results" / "tiny" / "report" / "02_foundation_prompts.html").read_text()
    assert "to ONNX (one time)" not in page  # the CLI tells it; the report page has no log lines
    assert sorted(p.name for p in user.iterdir()) == ["results", "tiny.yaml"]
    # checksums/ holds the checkpoint's SHA-256 record when no `.sha256` sidecar sits beside it (a fresh machine)
    assert {p.name for p in (tmp_path / "cache").iterdir()} <= {"embeddings", "onnx", "checksums"}
    assert not (home / ".cache" / "samstudy").exists()
    assert _tree(REPO, skip={".git", "results", ".cache", ".pytest_cache"}) == repo_before
    result_files = [p for p in (user / "results" / "tiny").rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert result_files and {stat.S_IMODE(p.stat().st_mode) for p in result_files} == {0o644}


def _tree(root: Path, skip: set[str]) -> dict[str, int]:
    """``{relative path: mtime_ns}`` of the files under ``root`` outside the ``skip`` folders."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip and d != "__pycache__"]
        for f in filenames:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = p.stat().st_mtime_ns
    return out
