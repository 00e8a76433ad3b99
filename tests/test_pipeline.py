"""Orchestration: config validation, parameter checking, skip-by-hash, failure and resume, report.

The orchestration tests run the real DAG and parameter plumbing on tiny stand-in notebooks written
into ``tmp_path`` (each declares exactly the parameters its stage receives and writes a small
output); ``test_real_notebooks_tiny`` runs the study's own notebooks on a tiny synthetic config.
Also here: the notebooks' parameter defaults against the config defaults, and the package's
import graph (no module imports one that imports it back).
"""
from __future__ import annotations

import ast
import functools
import json
import math
from pathlib import Path

import nbformat
import pytest
import yaml

from samstudy import cli
from samstudy.config import ConfigError, load_config, parse_config
from samstudy.pipeline import (MISSING, ParameterError, RunResult, aligned_parameters_source, defined_names,
                               notebook_defaults, package_notebooks, parameter_mismatches, parameters_cell_values, run_study,
                               stage_input_hash, stage_parameters, validate_parameters)
from samstudy.report import read_records
from samstudy.files import read_json
from samstudy.stages import STAGES, RunLayout, active_stages

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = package_notebooks()


# ------------------------------------------------------------------------------------------ helpers
def _write_config(tmp: Path, extra: dict | None = None, name: str = "tiny") -> Path:
    cfg = {"name": name, "description": "orchestration test", "seed": 0,
           "data": {"source": "synthetic", "limit_images": 4, "split": {"test_fraction": 0.5, "seed": 1}},
           "foundation": {"models": [{"name": "litemedsam"}], "modes": ["tight_box", "loose_box[b=0.2]"]},
           "custom": {"enabled": True, "minutes": 0.1},
           "compare": {"n_boot": 200}}
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    path = tmp / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


_BODY = '''
import json, pathlib
out = pathlib.Path(out_dir); out.mkdir(parents=True, exist_ok=True)
from samstudy.report import record
(out / "params.json").write_text(json.dumps({"stage": STAGE, "marker": marker}, sort_keys=True))
record(out_dir, "stage", STAGE)
print("SECRET_CODE_LINE")
'''
_COMPARE = '''
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display
head = pd.DataFrame({"arm": ["custom", "tight box", "loose box"], "mIoU": [0.8, 0.7, 0.6]})
head.to_csv(out / "headline.csv", index=False)
record(out_dir, "protocol", "Protocol: per-object mIoU (test).")
from samstudy.report import show_figure
fig, ax = plt.subplots(figsize=(2, 2)); ax.bar(head.arm, head.mIoU); display(show_figure(fig, out, "bars"))
display(head)
'''


def _dummy_notebook(path: Path, stage: str, param_names: list[str]) -> None:
    """A stand-in notebook: parameters cell declaring ``param_names`` (+ marker, fail), a body, a failing cell."""
    nb = nbformat.v4.new_notebook()
    params = "\n".join(f"{n} = None" for n in param_names) + "\nmarker = 0\nfail = False\n"
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {stage}"),
                nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(f"STAGE = {stage!r}\n" + _BODY)]
    if stage == "compare":
        nb.cells.append(nbformat.v4.new_code_cell(_COMPARE))
    nb.cells.append(nbformat.v4.new_code_cell("# the failing cell\nif fail:\n    raise RuntimeError('boom in ' + STAGE)"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _dummy_notebooks(tmp: Path, cfg_path: Path) -> Path:
    cfg = load_config(cfg_path)
    layout = RunLayout(tmp / "results" / "x")
    nb_dir = tmp / "notebooks"
    nb_dir.mkdir(exist_ok=True)
    for s in STAGES:
        _dummy_notebook(nb_dir / s.notebook, s.name, sorted(stage_parameters(cfg, s, layout)))
    return nb_dir


def _run(tmp: Path, cfg_path: Path, nb_dir: Path, **kw):
    return run_study(load_config(cfg_path), "x", results_root=tmp / "results", notebooks_dir=nb_dir,
                     progress=False, log=lambda m: None, **kw)


def _statuses(result) -> dict[str, str]:
    return {o.stage: o.status for o in result.outcomes}


# ------------------------------------------------------------------------------------------- config
def test_config_unknown_key_names_key_and_file(tmp_path):
    p = _write_config(tmp_path, {"data": {"sourse": "coco"}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "sourse" in str(e.value) and str(p) in str(e.value)
    p = _write_config(tmp_path, {"bogus_section": 1})
    with pytest.raises(ConfigError, match="bogus_section"):
        load_config(p)
    p = _write_config(tmp_path, {"foundation": {"models": [{"name": "litemedsam", "chekpoint": "x"}]}})
    with pytest.raises(ConfigError, match="chekpoint"):
        load_config(p)
    p = _write_config(tmp_path, {"notebook_params": {"no_such_stage": {"a": 1}}})
    with pytest.raises(ConfigError, match="no_such_stage"):
        load_config(p)
    p = _write_config(tmp_path, {"foundation": {"models": [{"name": "litemedsam", "options": ["onnxruntime"]}]}})
    with pytest.raises(ConfigError, match=r"models\[0\]\.options: expected Mapping.*got \['onnxruntime'\]"):
        load_config(p)
    p = _write_config(tmp_path, {"foundation": {"models": [{"name": "litemedsam", "options": {"runtime": "onnxruntime"}}]}})
    assert dict(load_config(p).foundation.models[0].options) == {"runtime": "onnxruntime"}


def test_config_refuses_models_and_modes_at_load_time(tmp_path):
    """Unknown models and modes a model cannot decode fail when the config is read, naming both."""
    p = _write_config(tmp_path, {"foundation": {"models": [{"name": "sam_vit_q"}]}})
    with pytest.raises(ConfigError, match=r"foundation\.models\[0\].*unknown model 'sam_vit_q'.*litemedsam"):
        load_config(p)
    p = _write_config(tmp_path, {"custom": {"modes": ["extreme_points", "tight_box"]}})
    with pytest.raises(ConfigError, match=r"custom\.modes.*'custom' does not support.*\['tight_box'\]") as e:
        load_config(p)
    assert str(p) in str(e.value)
    p = _write_config(tmp_path, {"custom": {"modes": ["clicks[max_clicks=3]"]}})
    with pytest.raises(ConfigError, match="clicks"):
        load_config(p)
    # a disabled custom model is not checked; SAM-family models take every mode, buffer sweep included
    cfg = load_config(_write_config(tmp_path, {"custom": {"enabled": False, "modes": ["tight_box"]},
                                               "foundation": {"modes": ["tight_box", "extreme_points", "clicks"],
                                                              "buffer_sweep": [0.0, 0.3]},
                                               "compare": {"loose_mode": "loose_box[b=0.3]"}}))
    assert list(cfg.foundation.modes) == ["tight_box", "extreme_points", "clicks"]


def test_config_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    p = _write_config(tmp_path, {"data": {"source": "coco", "annotations": "../shared/data/coco-sample/instances.json",
                                          "images": "../shared/data/coco-sample/images"}})
    monkeypatch.chdir(REPO)  # the working directory plays no part
    cfg = load_config(p, check_files=False)  # resolution only; existence: tests/test_inputs.py
    assert cfg.repo_root == (tmp_path / "configs").resolve()
    assert cfg.resolve(cfg.data.annotations) == str((tmp_path / "shared/data/coco-sample/instances.json").resolve())
    with pytest.raises(ConfigError, match="annotations"):
        load_config(_write_config(tmp_path, {"data": {"source": "coco", "annotations": None, "images": None}}))


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    cfg = load_config(REPO / "configs" / name, check_files=False)  # coco.yaml's data and checkpoint are downloaded on demand
    assert cfg.repo_root == REPO / "configs"
    for s in active_stages(cfg.custom.enabled, finetune_enabled=cfg.finetune.enabled):  # every parameter a shipped config passes exists in its notebook
        validate_parameters(NOTEBOOKS / s.notebook, stage_parameters(cfg, s, RunLayout(REPO / "results" / "t")))


def test_custom_disabled_drops_custom_stages(tmp_path):
    cfg = load_config(_write_config(tmp_path, {"custom": {"enabled": False}}))
    names = [s.name for s in active_stages(cfg.custom.enabled)]
    assert names == ["data", "foundation", "compare", "gallery", "explore", "effort"]
    compare = next(s for s in active_stages(cfg.custom.enabled) if s.name == "compare")
    params = stage_parameters(cfg, compare, RunLayout(tmp_path / "r"))
    assert params["evaluate_custom_dir"] == "" and params["custom_enabled"] is False


# ------------------------------------------------------------------------------------- parameters
def test_defined_names():
    src = "a = 1\nb: int = 2\nc, (d, e) = 3, (4, 5)\n# f = 6\nif True:\n    g = 7\n"
    assert defined_names(src) == {"a", "b", "c", "d", "e"}


def test_unknown_parameter_is_an_error(tmp_path):
    nb = tmp_path / "n.ipynb"
    _dummy_notebook(nb, "data", ["out_dir"])
    validate_parameters(nb, {"out_dir": "x", "marker": 1})
    with pytest.raises(ParameterError, match="typo_param"):
        validate_parameters(nb, {"out_dir": "x", "typo_param": 1})


def test_unknown_notebook_param_fails_before_anything_runs(tmp_path):
    nb_dir = _dummy_notebooks(tmp_path, _write_config(tmp_path))
    cfg_path = _write_config(tmp_path, {"notebook_params": {"compare": {"n_bootz": 5}}})
    with pytest.raises(ParameterError, match="n_bootz"):
        _run(tmp_path, cfg_path, nb_dir)
    assert not (tmp_path / "results" / "x" / "stages").exists()


# ------------------------------------------------------------------------- run, skip, rerun, report
@pytest.mark.slow
def test_run_skip_rerun_and_report(tmp_path):
    cfg_path = _write_config(tmp_path)
    nb_dir = _dummy_notebooks(tmp_path, cfg_path)
    layout = RunLayout(tmp_path / "results" / "x")

    r1 = _run(tmp_path, cfg_path, nb_dir)
    assert r1.ok and set(_statuses(r1).values()) == {"ran"}
    ran = [s for s in STAGES if s.name in _statuses(r1)]
    # the fine-tuned arm and the learning curve are off by default
    assert [s.name for s in ran] == [s.name for s in STAGES if not (s.needs_finetune or s.needs_learning_curve)]
    for s in ran:
        m = read_json(layout.stage_manifest(s.name))
        assert m["status"] == "ok" and m["outputs"] and m["parameters"]["out_dir"] == str(layout.stage_dir(s.name))
        assert layout.notebook(s).is_file() and layout.html(s).is_file()
        assert read_records(layout.stage_dir(s.name))["stage"] == s.name
    run_m = read_json(layout.manifest)
    assert run_m["status"] == "ok" and run_m["packages"]["papermill"] and "commit" in run_m["git"]
    assert run_m["config"]["name"] == "tiny" and all(v["seconds"] is not None for v in run_m["stages"].values())
    compare_html = layout.html(next(s for s in STAGES if s.name == "compare")).read_text()
    assert "SECRET_CODE_LINE" in compare_html  # printed output is shown...
    assert "print(&quot;SECRET_CODE_LINE&quot;)" not in compare_html and 'print("SECRET' not in compare_html  # ...code is not
    assert "data:image/png;base64," in compare_html
    assert "cdnjs" not in compare_html and "unpkg" not in compare_html  # nothing fetched from the internet
    index = layout.index.read_text()
    assert "headline-table" in index and "loose box" in index and "Protocol: per-object" in index
    for s in ran:
        assert f'href="{layout.html(s).name}"' in index

    r2 = _run(tmp_path, cfg_path, nb_dir)  # nothing changed: everything skipped
    assert set(_statuses(r2).values()) == {"skipped"}

    # a compare-only parameter reruns compare alone (its siblings and upstream are unchanged)
    cfg_path = _write_config(tmp_path, {"notebook_params": {"compare": {"marker": 1}}})
    r3 = _run(tmp_path, cfg_path, nb_dir)
    assert [k for k, v in _statuses(r3).items() if v == "ran"] == ["compare"]

    # a data parameter changes data's outputs, so every downstream stage reruns
    cfg_path = _write_config(tmp_path, {"notebook_params": {"compare": {"marker": 1}, "data": {"marker": 2}}})
    r4 = _run(tmp_path, cfg_path, nb_dir)
    assert set(_statuses(r4).values()) == {"ran"}

    # --only selects, --force reruns even when unchanged
    r5 = _run(tmp_path, cfg_path, nb_dir, only=["gallery"])
    assert _statuses(r5)["gallery"] == "skipped" and _statuses(r5)["data"] == "not selected"
    r6 = _run(tmp_path, cfg_path, nb_dir, only=["gallery"], force=True)
    assert _statuses(r6)["gallery"] == "ran"

    # outputs tampered with on disk: the stage reruns
    (layout.stage_dir("explore") / "params.json").write_text("{}")
    r7 = _run(tmp_path, cfg_path, nb_dir)
    assert [k for k, v in _statuses(r7).items() if v == "ran"] == ["explore"]


@pytest.mark.slow
def test_failure_names_stage_and_cell_then_resumes(tmp_path, capsys, monkeypatch):
    nb_dir = _dummy_notebooks(tmp_path, _write_config(tmp_path))
    monkeypatch.setattr("samstudy.pipeline.package_notebooks", lambda: nb_dir)  # the CLI runs the stand-ins
    monkeypatch.chdir(tmp_path)  # into ./results
    cfg_path = _write_config(tmp_path, {"custom": {"enabled": False},
                                        "notebook_params": {"gallery": {"fail": True}}})
    layout = RunLayout(tmp_path / "results" / "x")
    # through the CLI: exit code 1, the stage and the cell named on stderr
    assert cli.main(["run", "--config", str(cfg_path), "--run", "x", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "'gallery' failed" in err and "# the failing cell" in err and "boom in gallery" in err
    r1 = _run(tmp_path, cfg_path, nb_dir)  # same failure through the API (earlier stages now skipped)
    assert not r1.ok
    f = r1.failure
    assert f.stage == "gallery" and f.cell_first_line == "# the failing cell" and "boom in gallery" in f.error
    assert "gallery" in str(f) and "# the failing cell" in str(f)
    st = _statuses(r1)
    assert st == {"data": "skipped", "foundation": "skipped", "compare": "skipped", "gallery": "failed"}
    partial = nbformat.read(layout.notebook(next(s for s in STAGES if s.name == "gallery")), as_version=4)
    assert any(o.get("ename") == "RuntimeError" for c in partial.cells if c.cell_type == "code"
               for o in c.get("outputs", []))
    m = read_json(layout.stage_manifest("gallery"))
    assert m["status"] == "failed" and m["error"]["cell_first_line"] == "# the failing cell"
    assert "failure" in layout.index.read_text() and read_json(layout.manifest)["status"] == "failed"

    cfg_path = _write_config(tmp_path, {"custom": {"enabled": False}})  # fixed: resume at gallery
    r2 = _run(tmp_path, cfg_path, nb_dir)
    assert r2.ok and _statuses(r2) == {"data": "skipped", "foundation": "skipped", "compare": "skipped",
                                       "gallery": "ran", "explore": "ran", "effort": "ran"}


@pytest.mark.slow
def test_cli_exit_codes(tmp_path, capsys):
    bad = _write_config(tmp_path, {"typo": 1}, name="bad")
    assert cli.main(["run", "--config", str(bad), "--quiet"]) == 2
    assert "typo" in capsys.readouterr().err


# ------------------------------------------------------------------------ the real notebooks, tiny
def _run_tiny(root: Path) -> RunResult:
    return run_study(load_config(REPO / "configs" / "tiny.yaml"), "tiny", results_root=root,
                     progress=False, log=lambda m: None)


@functools.cache
def _first_tiny_run(root: Path) -> RunResult:
    """The first run of the tiny study into ``root`` in this session. The browser test imports the
    ``tiny_run`` fixture, which makes it a second fixture instance: both get this one result."""
    return _run_tiny(root)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The study's own notebooks on ``configs/tiny.yaml``, run once per session into a fresh folder."""
    result = _first_tiny_run(tmp_path_factory.getbasetemp() / "tiny-run")
    assert result.ok, str(result.failure)
    return result


def _executed(notebook: Path, params: dict) -> bool:
    """Papermill executed ``notebook`` with ``params``: it recorded them, and every code cell ran."""
    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    return (nb.metadata.get("papermill", {}).get("parameters") == params
            and all(c.get("execution_count") for c in code))


@pytest.mark.slow
def test_real_notebooks_tiny(tiny_run):
    import pandas as pd

    from samstudy.prompts import parse_modes

    layout, cfg = tiny_run.layout, load_config(REPO / "configs" / "tiny.yaml")
    stages = active_stages(cfg.custom.enabled)
    # the first run ran every stage: executed notebooks, manifests and pages are this run's own
    assert {o.stage: o.status for o in tiny_run.outcomes} == {s.name: "ran" for s in stages}
    for s in stages:
        m = read_json(layout.stage_manifest(s.name))
        assert m["status"] == "ok" and m["outputs"]
        assert _executed(layout.notebook(s), m["parameters"]), s.notebook
        page = layout.html(s).read_text()  # styles live in the shared report.css, not in the page
        assert len(page) > 3_000 and 'href="report.css"' in page
    assert (layout.report_dir / "report.css").stat().st_size > 100_000
    # a second run finds every stage unchanged: all skipped, nothing executed again
    before = {s.name: (layout.notebook(s).stat().st_mtime_ns, layout.stage_manifest(s.name).read_bytes())
              for s in stages}
    again = _run_tiny(layout.root.parent)
    assert again.ok and {o.stage: o.status for o in again.outcomes} == {s.name: "skipped" for s in stages}
    assert {s.name: (layout.notebook(s).stat().st_mtime_ns, layout.stage_manifest(s.name).read_bytes())
            for s in stages} == before

    # rows = objects x prompts x models (one-shot) and objects x clicks (click sequences)
    test = json.loads((layout.stage_dir("data") / "records.json").read_text())["test_sets"]
    n_obj = sum(v["objects"] for v in test.values())
    assert n_obj > 0
    rows = pd.read_parquet(layout.stage_dir("foundation") / "rows.parquet")
    modes = parse_modes(list(cfg.foundation.modes) + [{"name": "loose_box", "buffer": [b for b in cfg.foundation.buffer_sweep if b > 0]}])
    one_shot = [m for m in modes if not m.is_interactive]
    n_models, n_mm = len(cfg.foundation.models), len(cfg.foundation.multimask)
    assert len(rows[rows["click"] == 0]) == n_obj * len(one_shot) * n_mm * n_models
    for m in (m for m in modes if m.is_interactive):
        assert len(rows[rows["prompt_mode"] == m.key]) == n_obj * m.params["max_clicks"] * n_models
    assert rows.drop_duplicates(["dataset", "ann_id"]).shape[0] == n_obj
    assert (rows["model_label"].str.contains("not SAM")).all()  # LiteMedSAM is never called SAM
    custom = pd.read_parquet(layout.stage_dir("evaluate_custom") / "rows.parquet")
    assert len(custom) == n_obj * custom["model"].nunique() and custom["model"].nunique() == 2

    # the headline: every arm, the 'all' row over every object, means recomputed from the rows
    head = pd.read_csv(layout.stage_dir("compare") / "headline.csv")
    assert head.iloc[0]["category"] == "all" and head.iloc[0]["n"] == n_obj
    assert head.iloc[1:]["n"].sum() == n_obj
    ok = rows[(rows["status"] == "ok") & (rows["multimask"] == "single") & (rows["gt_variant"] == "primary")]
    tight = next(c for c in head.columns if c.endswith("tight box"))
    assert head.iloc[0][tight] == pytest.approx(ok[ok["prompt_mode"] == "tight_box"]["iou"].mean())
    refined = next(c for c in head.columns if "1+2" in c)
    assert head.iloc[0][refined] == pytest.approx(custom[custom["model"] == "custom_stage2"]["iou"].mean())
    ci = pd.read_csv(layout.stage_dir("compare") / "headline_ci.csv")
    assert ((ci["lo"] <= ci["mean"]) & (ci["mean"] <= ci["hi"])).all()
    diffs = pd.read_csv(layout.stage_dir("compare") / "paired_differences.csv")
    assert len(diffs) and diffs["diff"].notna().all()

    # figures present
    figs = {p.stem for d in ("data", "train_custom", "compare", "gallery", "explore")
            for p in (layout.stage_dir(d) / "figures").glob("*.png")}
    assert {"objects_per_category", "training_curves", "miou_by_category", "miou_by_size", "buffer_sweep",
            "boundary_iou", "click_curves", "paired_differences", "gallery_holes", "gallery_small",
            "gallery_boundary", "largest_gaps"} <= figs
    for s in ("compare", "gallery"):
        assert layout.html(next(x for x in stages if x.name == s)).read_text().count("data:image/png;base64,") >= 3
    index = layout.index.read_text()
    assert "headline-table" in index and "published-table" in index and "Protocol:" in index
    assert "checkpoint sha256" in index and "not SAM" in index
    run_m = read_json(layout.manifest)
    assert any(m.get("checkpoint_sha256") for m in run_m["models"])


# ------------------------------------------------------------------------ notebook parameter defaults
@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_notebook_parameter_defaults_are_the_config_defaults(stage):
    """Each parameters cell assigns what a run of the default config into results/dev would pass
    (config paths compared relative to the repository root, see ``notebook_defaults``)."""
    expected = notebook_defaults(stage, REPO)
    mismatches = parameter_mismatches(NOTEBOOKS / stage.notebook, expected)
    assert not mismatches, "\n".join(f"{stage.notebook}: {name} = {nb!r} in the notebook, {cfg!r} from the config"
                                     for name, nb, cfg in mismatches)


@pytest.mark.parametrize("stage", STAGES, ids=lambda s: s.name)
def test_shipped_notebooks_validate_without_warnings(stage):
    """Every cell has an id (nbformat 4.5): a missing one printed nbformat's MissingIDFieldWarning
    on every ``samstudy run``, and is a hard error in later nbformat versions."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nb = nbformat.read(NOTEBOOKS / stage.notebook, as_version=4)
        nbformat.validate(nb)
    assert all(c.get("id") for c in nb.cells)


def test_notebook_defaults_are_relative_dev_paths():
    foundation = next(s for s in STAGES if s.name == "foundation")
    d = notebook_defaults(foundation, REPO)
    assert d["run_dir"] == "results/dev" and d["out_dir"] == "results/dev/foundation"
    assert d["data_dir"] == "results/dev/data" and d["cache_dir"] is None


def test_parameter_mismatches_and_alignment(tmp_path):
    nb = tmp_path / "n.ipynb"
    _dummy_notebook(nb, "data", [])
    cell = nbformat.read(nb, as_version=4)
    cell.cells[1].source = 'a = {"n": 6}  # note\nb = 1\nc = True\n'
    nbformat.write(cell, nb)
    expected = {"a": {}, "b": 1.0, "c": 1, "d": "x"}
    assert parameter_mismatches(nb, expected) == [("a", {"n": 6}, {}), ("b", 1, 1.0), ("c", True, 1),
                                                  ("d", MISSING, "x")]
    src = aligned_parameters_source(cell.cells[1].source, expected)
    assert src == 'a = {}        # note\nb = 1.0\nc = 1\nd = "x"\n'
    cell.cells[1].source = "a = len([1])\n"
    nbformat.write(cell, nb)
    with pytest.raises(ParameterError, match="'a' is not a literal"):
        parameters_cell_values(nb)


# ---------------------------------------------------------------------------------------- hashing
def test_non_finite_parameters_hash_like_null(tmp_path):
    """Parameters and the config hash go through files.jsonable: NaN/inf become None (and JSON null)."""
    p = tmp_path / "configs" / "c.yaml"
    cfg = parse_config({"name": "c", "notebook_params": {"compare": {"x": math.inf}}}, p, repo_root=tmp_path)
    none = parse_config({"name": "c", "notebook_params": {"compare": {"x": None}}}, p, repo_root=tmp_path)
    compare = next(s for s in STAGES if s.name == "compare")
    layout = RunLayout(tmp_path / "r")
    assert stage_parameters(cfg, compare, layout)["x"] is None
    assert cfg.sha256() == none.sha256()
    nb = tmp_path / "n.ipynb"
    nb.write_text("{}")
    assert stage_input_hash(nb, {"x": math.nan}, {}) == stage_input_hash(nb, {"x": None}, {})


# ---------------------------------------------------------------------------------- import graph
def _package_imports() -> dict[str, set[str]]:
    """``{module: package modules it imports}`` from every import statement of ``lib/samstudy``,
    those inside functions and ``if TYPE_CHECKING:`` blocks included."""
    lib = REPO / "lib"
    files = {".".join(p.relative_to(lib).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (lib / "samstudy").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: strip level-1 trailing parts of the package
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]  # `from . import x` names module x
            else:
                continue
            for n in names:
                while n and n not in files:
                    n = n.rpartition(".")[0]
                if n and n != mod:
                    deps.add(n)
        graph[mod] = deps
    return graph


def _import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``graph``, one ``[a, b, ..., a]`` path per module that reaches itself."""
    cycles = []
    for start in sorted(graph):
        paths, seen = [[start]], {start}
        while paths:  # breadth-first: the shortest way back to ``start``
            path = paths.pop(0)
            for nxt in sorted(graph[path[-1]]):
                if nxt == start:
                    cycles.append(path + [start])
                    paths = []
                    break
                if nxt not in seen:
                    seen.add(nxt)
                    paths.append(path + [nxt])
    return cycles


def test_import_graph_helper_finds_cycles():
    assert _import_cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b", "a"], ["b", "a", "b"]]
    graph = _package_imports()
    assert {"samstudy.config", "samstudy.stages"} <= graph["samstudy.pipeline"]


def test_no_module_imports_one_that_imports_it_back():
    cycles = _import_cycles(_package_imports())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_stages_module_imports_nothing_of_the_package_but_files():
    assert _package_imports()["samstudy.stages"] <= {"samstudy.files"}
