"""The study as a DAG of notebooks, executed with papermill, exported to an HTML report.

Stages (one notebook each, run in this order)::

    data -> train_custom -> foundation -> evaluate_custom -> compare -> gallery -> explore

Each stage gets flat parameters derived from the config (:func:`stage_parameters`) and writes its
tables, figures and recorded values into ``results/<run>/<stage>/``. Layout of a run::

    results/<run>/manifest.json          config, git commit, package versions, checkpoints, timings
    results/<run>/stages/<stage>.json    input hash, parameters, status, outputs and their hashes
    results/<run>/notebooks/NN_x.ipynb   executed notebooks (partial ones when a stage failed)
    results/<run>/<stage>/...            the stage's outputs
    results/<run>/report/index.html      headline table, links to every page, run summary

Rules:

- A stage's *input hash* is the SHA-256 of its notebook file, its parameters (plus size and
  modification time of any parameter that is an existing file, e.g. an annotation json or a
  checkpoint) and the output hashes of the stages it depends on. A stage whose input hash matches
  its last successful manifest, and whose outputs are unchanged on disk, is skipped; ``force``
  reruns it. Library code is deliberately not part of the hash (so a fix to the library lets a
  failed run resume where it stopped); rerun with ``--force`` after changing the library.
- Every parameter passed to a notebook must be assigned in that notebook's ``parameters`` cell;
  otherwise :class:`ParameterError` names it before anything runs (papermill itself only warns).
- A failing stage keeps papermill's partial output notebook, its manifest records the failing cell,
  and the run stops with :class:`StageFailed`; the next run skips the completed stages by hash and
  resumes at the failed one.
"""
from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import nbformat

from .config import StudyConfig, _plain
from .files import write_json_atomic
from .provenance import git_info, package_versions

MANIFEST_FORMAT = 1

# Distributions whose versions every run manifest records.


@dataclass(frozen=True)
class Stage:
    """One notebook of the study. ``deps`` are stage names whose outputs it reads."""

    name: str
    notebook: str
    deps: tuple[str, ...]
    title: str
    needs_custom: bool = False


STAGES: tuple[Stage, ...] = (
    Stage("data", "00_data.ipynb", (), "Data, labeling policy and split"),
    Stage("train_custom", "01_train_custom.ipynb", ("data",), "Training the custom model", True),
    Stage("foundation", "02_foundation_prompts.ipynb", ("data",), "Foundation model over all prompt modes"),
    Stage("evaluate_custom", "03_evaluate_custom.ipynb", ("data", "train_custom"),
          "Custom model on the test split", True),
    Stage("compare", "04_compare.ipynb", ("data", "foundation", "evaluate_custom"), "Comparison"),
    Stage("gallery", "05_failure_gallery.ipynb", ("data", "foundation", "evaluate_custom"), "Failure gallery"),
    Stage("explore", "06_explore.ipynb", ("data", "foundation", "evaluate_custom"), "Explorer"),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


class PipelineError(RuntimeError):
    """A run that cannot start or continue (bad stage selection, missing upstream output...)."""


class ParameterError(PipelineError):
    """A parameter the config passes to a notebook is not defined in its ``parameters`` cell."""


class StageFailed(PipelineError):
    """A notebook raised. Attributes name the stage, the failing cell and the partial notebook."""

    def __init__(self, stage: str, notebook: Path, cell_index: int | None, exec_count: int | None,
                 cell_first_line: str, error: str):
        self.stage, self.notebook = stage, notebook
        self.cell_index, self.exec_count = cell_index, exec_count
        self.cell_first_line, self.error = cell_first_line, error
        where = (f"cell {cell_index} (In [{exec_count}]): {cell_first_line!r}" if cell_index is not None
                 else "outside any cell")
        super().__init__(f"stage {stage!r} failed at {where}\n  {error}\n  partial notebook: {notebook}")


# ------------------------------------------------------------------------------------------ layout
@dataclass(frozen=True)
class RunLayout:
    """Paths of one run under ``results_root/<run>``."""

    root: Path

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def stage_manifest(self, stage: str) -> Path:
        return self.root / "stages" / f"{stage}.json"

    def notebook(self, stage: Stage) -> Path:
        return self.root / "notebooks" / stage.notebook

    def html(self, stage: Stage) -> Path:
        return self.report_dir / (Path(stage.notebook).stem + ".html")

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def index(self) -> Path:
        return self.report_dir / "index.html"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"


# -------------------------------------------------------------------------------------- the stages
def active_stages(cfg: StudyConfig, stages: Sequence[Stage] = STAGES) -> list[Stage]:
    """Stages of this config in run order: custom-model stages drop out when ``custom.enabled`` is false."""
    keep = [s for s in stages if cfg.custom.enabled or not s.needs_custom]
    names = {s.name for s in keep}
    return [Stage(s.name, s.notebook, tuple(d for d in s.deps if d in names), s.title, s.needs_custom)
            for s in keep]


def _dirs(layout: RunLayout, cfg: StudyConfig) -> dict[str, str]:
    """``<stage>_dir`` parameters of every stage ("" for a stage this config does not run)."""
    active = {s.name for s in active_stages(cfg)}
    return {f"{s}_dir": str(layout.stage_dir(s)) if s in active else "" for s in STAGE_NAMES}


def stage_parameters(cfg: StudyConfig, stage: Stage, layout: RunLayout) -> dict[str, Any]:
    """The notebook parameters of ``stage``: common ones, its inputs' folders, its config section.

    Every stage gets ``run_name, run_dir, out_dir, seed`` and ``<dep>_dir`` for each dependency;
    ``notebook_params.<stage>`` from the config is merged last (and validated like the rest).
    """
    d, f, c = cfg.data, cfg.foundation, cfg.compare
    dirs = _dirs(layout, cfg)
    p: dict[str, Any] = {"run_name": layout.root.name, "run_dir": str(layout.root),
                         "out_dir": str(layout.stage_dir(stage.name)), "seed": cfg.seed}
    # The full stage list's deps, not the active one: a notebook always declares e.g. evaluate_custom_dir.
    static = next(s for s in STAGES if s.name == stage.name) if stage.name in STAGE_NAMES else stage
    p.update({f"{dep}_dir": dirs.get(f"{dep}_dir", str(layout.stage_dir(dep))) for dep in static.deps})
    arms = {"tight_mode": c.tight_mode, "loose_mode": c.loose_mode, "multimask": c.multimask,
            "custom_enabled": cfg.custom.enabled}
    if stage.name == "data":
        p.update(dataset_name=cfg.name, source=d.source, synthetic=dict(d.synthetic),
                 annotations=cfg.resolve(d.annotations), images=cfg.resolve(d.images),
                 train_annotations=cfg.resolve(d.train_annotations), train_images=cfg.resolve(d.train_images),
                 isegm_root=cfg.resolve(d.isegm_root), isegm_datasets=list(d.isegm_datasets),
                 categories=list(d.categories), include_crowd=d.include_crowd, policy=dict(d.policy),
                 test_fraction=d.split.test_fraction, split_seed=d.split.seed,
                 limit_images=d.limit_images, limit_train_images=d.limit_train_images,
                 train_needed=cfg.custom.enabled)
    elif stage.name == "train_custom":
        p.update(minutes=cfg.custom.minutes, custom_options=dict(cfg.custom.options), device=f.device)
    elif stage.name == "foundation":
        p.update(models=[{"name": m.name, "checkpoint": cfg.resolve(m.checkpoint), "options": dict(m.options)}
                         for m in f.models],
                 modes=list(f.modes), buffer_sweep=list(f.buffer_sweep), multimask=list(f.multimask), gt_variants=list(f.gt_variants), cache_dir=cfg.resolve(f.cache_dir),
                 device=f.device)
    elif stage.name == "evaluate_custom":
        p.update(device=f.device)
    elif stage.name == "compare":
        p.update(arms, n_boot=c.n_boot, reference=c.reference, buffer_sweep=list(f.buffer_sweep),
                 gt_variants=list(f.gt_variants), config_name=cfg.name, config_description=cfg.description)
    elif stage.name == "gallery":
        p.update(arms, per_failure=cfg.gallery.per_failure, failure_modes=list(cfg.gallery.failure_modes),
                 crop_margin=cfg.gallery.crop_margin)
    elif stage.name == "explore":
        p.update(arms)
    p.update(cfg.stage_params.get(stage.name, {}))
    return _plain(p)


# ------------------------------------------------------------------------------ parameter checking
def parameters_cell_source(nb: nbformat.NotebookNode, path: Path) -> str:
    """Source of the first code cell, which must be tagged ``parameters``."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    if not code or "parameters" not in code[0].get("metadata", {}).get("tags", []):
        raise ParameterError(f"{path}: the first code cell must be tagged 'parameters'")
    return code[0].source


def defined_names(source: str) -> set[str]:
    """Names assigned at the top level of ``source`` (``x = ...``, ``x: int = ...``, ``a, b = ...``)."""
    names: set[str] = set()

    def add(target: ast.AST) -> None:
        if isinstance(target, ast.Name):
            names.add(target.id)
        elif isinstance(target, (ast.Tuple, ast.List)):
            for t in target.elts:
                add(t)

    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                add(t)
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            add(node.target)
    return names


def validate_parameters(notebook: Path, params: Mapping[str, Any], origin: str = "") -> None:
    """Raise :class:`ParameterError` naming every parameter not defined in the notebook's parameters cell."""
    nb = nbformat.read(notebook, as_version=4)
    defined = defined_names(parameters_cell_source(nb, notebook))
    unknown = sorted(set(params) - defined)
    if unknown:
        raise ParameterError(
            f"{notebook.name}: parameter(s) {unknown} {'from ' + origin + ' ' if origin else ''}"
            f"are not defined in its parameters cell (defined: {sorted(defined)})")


# ----------------------------------------------------------------------------------------- hashing
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fingerprints(params: Mapping[str, Any]) -> dict[str, list[int]]:
    """Size and mtime of every parameter value that names an existing file (cheap change detection)."""
    out: dict[str, list[int]] = {}

    def visit(v: Any) -> None:
        if isinstance(v, str) and len(v) < 4096 and os.path.isabs(v) and os.path.isfile(v):
            st = os.stat(v)
            out[v] = [st.st_size, st.st_mtime_ns]
        elif isinstance(v, Mapping):
            for x in v.values():
                visit(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                visit(x)

    visit(dict(params))
    return out


def stage_input_hash(notebook: Path, params: Mapping[str, Any], upstream: Mapping[str, str]) -> str:
    """SHA-256 over the notebook file, the parameters, their file fingerprints and upstream output hashes."""
    blob = {"notebook": file_sha256(notebook), "params": _plain(params),
            "files": _fingerprints(params), "upstream": dict(sorted(upstream.items()))}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def hash_outputs(stage_dir: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under a stage's output folder."""
    if not stage_dir.is_dir():
        return {}
    return {str(p.relative_to(stage_dir)): file_sha256(p)
            for p in sorted(stage_dir.rglob("*")) if p.is_file()}


def combined_hash(files: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(sorted(files.items()))).encode()).hexdigest()


# --------------------------------------------------------------------------------------- manifests
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a killed run never leaves half a manifest)."""
    write_json_atomic(path, _plain(obj))


def checkpoint_info(cfg: StudyConfig) -> list[dict[str, Any]]:
    """Configured foundation checkpoints: name, path, size and SHA-256 when the file exists.

    Built-in weights (``checkpoint: null``, e.g. LiteMedSAM shipped in its package) are hashed by the
    model itself; the foundation stage records those and the run manifest merges them in.
    """
    out = []
    for m in cfg.foundation.models:
        path = cfg.resolve(m.checkpoint)
        info: dict[str, Any] = {"model": m.name, "checkpoint": path, "sha256": None, "bytes": None}
        if path and Path(path).is_file():
            info["bytes"] = Path(path).stat().st_size
            info["sha256"] = _cached_sha256(Path(path))
        out.append(info)
    return out


def _cached_sha256(path: Path) -> str:
    """SHA-256 of a (large) checkpoint, through the models' cached hasher when it is there."""
    try:
        from .models.download import cached_file_sha256
        return cached_file_sha256(path)
    except ImportError:
        return file_sha256(path)


# ----------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def kernel_import_path(lib_dir: Path) -> Iterator[None]:
    """Let the notebook kernel (a child process) import this very ``samstudy`` (PYTHONPATH += lib)."""
    old = os.environ.get("PYTHONPATH")
    parts = [str(lib_dir)] + ([old] if old else [])
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class _PapermillParameterNoise(logging.Filter):
    """Drop papermill's parameter-inference warnings: its line parser trips on ``=`` inside strings
    (``"loose_box[b=0.2]"``) and then calls valid parameters unknown. :func:`validate_parameters`
    has already checked every parameter with Python's own parser."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Passed unknown parameter") or msg.startswith("Unable to parse line"))


def _kernel_config() -> Any:
    """Kernels talk over local IPC sockets: nothing listens on TCP, and ipykernel has nothing to warn about."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc"}})


def execute_stage(stage: Stage, notebook_in: Path, notebook_out: Path, params: Mapping[str, Any],
                  cwd: Path, progress: bool = True, kernel_name: str | None = None) -> None:
    """Execute one notebook with papermill; raise :class:`StageFailed` naming the failing cell."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook_out.parent.mkdir(parents=True, exist_ok=True)
    lib_dir = Path(__file__).resolve().parents[1]
    noise = _PapermillParameterNoise()
    pm_logs = [logging.getLogger(n) for n in ("papermill", "papermill.translators")]  # filters do not inherit
    for lg in pm_logs:
        lg.addFilter(noise)
    try:
        with kernel_import_path(lib_dir):
            pm.execute_notebook(str(notebook_in), str(notebook_out), parameters=dict(params),
                                progress_bar=progress, cwd=str(cwd), kernel_name=kernel_name,
                                request_save_on_cell_execute=True, config=_kernel_config())
    except PapermillExecutionError as e:
        first = next((ln for ln in str(e.source).splitlines() if ln.strip()), "")
        raise StageFailed(stage.name, notebook_out, e.cell_index, e.exec_count, first,
                          f"{e.ename}: {e.evalue}") from None
    except Exception as e:  # kernel died, timeout, bad notebook file: still name the stage
        raise StageFailed(stage.name, notebook_out, None, None, "", f"{type(e).__name__}: {e}") from e
    finally:
        for lg in pm_logs:
            lg.removeFilter(noise)


@dataclass
class StageOutcome:
    """What happened to one stage in this invocation."""

    stage: str
    status: str  # "ran" | "skipped" | "failed" | "not selected"
    seconds: float = 0.0
    reason: str = ""


@dataclass
class RunResult:
    """Outcome of :func:`run_study`: per-stage outcomes, the manifest path and the failure if any."""

    layout: RunLayout
    outcomes: list[StageOutcome] = field(default_factory=list)
    failure: StageFailed | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None


def _skip_reason(layout: RunLayout, stage: Stage, input_hash: str) -> str | None:
    """Why the stage must run, or ``None`` when its last successful outputs are still valid."""
    m = read_json(layout.stage_manifest(stage.name))
    if m is None:
        return "never run"
    if m.get("status") != "ok":
        return f"last run {m.get('status')}"
    if m.get("input_hash") != input_hash:
        return "inputs or parameters changed"
    if not layout.notebook(stage).is_file():
        return "executed notebook missing"
    if combined_hash(hash_outputs(layout.stage_dir(stage.name))) != m.get("output_hash"):
        return "outputs changed on disk"
    return None


def _upstream_hashes(layout: RunLayout, stage: Stage) -> dict[str, str]:
    out = {}
    for dep in stage.deps:
        m = read_json(layout.stage_manifest(dep))
        if m is None or m.get("status") != "ok":
            raise PipelineError(f"stage {stage.name!r} needs stage {dep!r}, which has no successful run "
                                f"in {layout.root}; run it first (drop --only or add {dep})")
        out[dep] = m["output_hash"]
    return out


Log = Callable[[str], None]


def _run_one(stage: Stage, params: dict[str, Any], input_hash: str, layout: RunLayout, notebooks_dir: Path,
             cwd: Path, progress: bool, log: Log, kernel_name: str | None) -> StageOutcome:
    """Execute a stage, write its manifest (ok or failed) and its HTML page."""
    from .report import export_html, read_records

    out_dir = layout.stage_dir(stage.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": MANIFEST_FORMAT, "stage": stage.name, "title": stage.title,
                                "notebook": stage.notebook, "input_hash": input_hash, "parameters": params,
                                "status": "running", "started": _now()}
    write_json(layout.stage_manifest(stage.name), manifest)
    log(f"[{stage.name}] start ({stage.notebook})")
    t0 = time.perf_counter()
    failure: StageFailed | None = None
    try:
        execute_stage(stage, notebooks_dir / stage.notebook, layout.notebook(stage), params, cwd,
                      progress, kernel_name)
    except StageFailed as e:
        failure = e
    except KeyboardInterrupt:
        manifest.update(status="interrupted", finished=_now(), seconds=round(time.perf_counter() - t0, 3))
        write_json(layout.stage_manifest(stage.name), manifest)
        raise
    seconds = time.perf_counter() - t0
    outputs = hash_outputs(out_dir)
    manifest.update(finished=_now(), seconds=round(seconds, 3), outputs=outputs,
                    output_hash=combined_hash(outputs), records=read_records(out_dir))
    if failure is None:
        manifest["status"] = "ok"
    else:
        manifest.update(status="failed", error={"cell_index": failure.cell_index,
                                                "exec_count": failure.exec_count,
                                                "cell_first_line": failure.cell_first_line,
                                                "message": failure.error})
    write_json(layout.stage_manifest(stage.name), manifest)
    if layout.notebook(stage).is_file():
        export_html(layout.notebook(stage), layout.html(stage), title=f"{stage.notebook} - {stage.title}")
    log(f"[{stage.name}] {'done' if failure is None else 'FAILED'} in {seconds:.1f} s")
    if failure is not None:
        raise failure
    return StageOutcome(stage.name, "ran", seconds)


def _select(stages: Sequence[Stage], only: Sequence[str] | None) -> set[str]:
    names = [s.name for s in stages]
    if not only:
        return set(names)
    bad = [o for o in only if o not in names]
    if bad:
        raise PipelineError(f"--only: unknown or inactive stage(s) {bad}; stages of this config: {names}")
    return set(only)


def run_study(cfg: StudyConfig, run_name: str, *, results_root: Path | None = None,
              notebooks_dir: Path | None = None, only: Sequence[str] | None = None, force: bool = False,
              progress: bool = True, log: Log | None = None, stages: Sequence[Stage] | None = None,
              kernel_name: str | None = None) -> RunResult:
    """Run (or resume) the study of ``cfg`` into ``results_root/run_name`` and write its report.

    only: run just these stages (their upstream stages must have succeeded before); skipping by
        hash still applies unless ``force``.
    force: rerun the selected stages even when their inputs are unchanged.
    stages: the DAG (default: :data:`STAGES` filtered by :func:`active_stages`); tests pass their own.
    Returns a :class:`RunResult`; a failed stage is in ``result.failure`` (not raised), a bad
    configuration raises :class:`ParameterError` / :class:`PipelineError` before anything runs.
    """
    from tqdm.auto import tqdm

    from .report import write_index

    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    repo = cfg.repo_root
    results_root = results_root or repo / "results"
    notebooks_dir = notebooks_dir or repo / "notebooks"
    layout = RunLayout(Path(results_root).resolve() / run_name)
    plan = list(stages) if stages is not None else active_stages(cfg)
    selected = _select(plan, only)

    params = {s.name: stage_parameters(cfg, s, layout) for s in plan}
    for s in plan:  # fail fast: every notebook and parameter checked before the first stage runs
        nb = notebooks_dir / s.notebook
        if not nb.is_file():
            raise PipelineError(f"stage {s.name!r}: notebook {nb} not found")
        validate_parameters(nb, params[s.name], origin=f"config {cfg.path.name} (stage {s.name!r})")

    run_manifest = _start_manifest(cfg, run_name, layout, plan, only, force)
    result = RunResult(layout)
    t_run = time.perf_counter()
    bar = tqdm(plan, desc=f"samstudy run {run_name}", unit="stage", disable=not progress, file=sys.stderr)
    interrupted = False
    try:
        for s in bar:
            bar.set_postfix_str(s.name)
            if s.name not in selected:
                result.outcomes.append(StageOutcome(s.name, "not selected"))
                continue
            input_hash = stage_input_hash(notebooks_dir / s.notebook, params[s.name], _upstream_hashes(layout, s))
            reason = "forced" if force else _skip_reason(layout, s, input_hash)
            if reason is None:
                log(f"[{s.name}] skipped (inputs and parameters unchanged)")
                result.outcomes.append(StageOutcome(s.name, "skipped", reason="unchanged"))
                _ensure_html(layout, s)
                continue
            log(f"[{s.name}] runs: {reason}")
            try:
                result.outcomes.append(_run_one(s, params[s.name], input_hash, layout, notebooks_dir,
                                                repo, progress, log, kernel_name))
            except StageFailed as e:
                result.outcomes.append(StageOutcome(s.name, "failed", reason=str(e)))
                result.failure = e
                break
            finally:
                _update_manifest(run_manifest, layout, plan, result, time.perf_counter() - t_run)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        bar.close()
        _update_manifest(run_manifest, layout, plan, result, time.perf_counter() - t_run, final=True,
                         interrupted=interrupted)
        write_index(layout, plan, read_json(layout.manifest) or run_manifest)
    return result


def _ensure_html(layout: RunLayout, stage: Stage) -> None:
    """Re-export a skipped stage's page when it is missing or older than its notebook."""
    from .report import export_html

    nb, html = layout.notebook(stage), layout.html(stage)
    if nb.is_file() and (not html.is_file() or html.stat().st_mtime < nb.stat().st_mtime):
        export_html(nb, html, title=f"{stage.notebook} - {stage.title}")


def _start_manifest(cfg: StudyConfig, run_name: str, layout: RunLayout, plan: Sequence[Stage],
                    only: Sequence[str] | None, force: bool) -> dict[str, Any]:
    m = {"format": MANIFEST_FORMAT, "run": run_name, "config_file": str(cfg.path),
         "config_sha256": cfg.sha256(), "config": cfg.to_dict(), "git": git_info(cfg.repo_root),
         "packages": package_versions(), "platform": {"machine": platform.machine(),
                                                      "system": platform.platform(), "cpus": os.cpu_count()},
         "checkpoints": checkpoint_info(cfg), "invocation": {"only": list(only or []), "force": force,
                                                             "argv": sys.argv},
         "started": _now(), "status": "running", "stages": {}}
    write_json(layout.manifest, m)
    return m


def _update_manifest(m: dict[str, Any], layout: RunLayout, plan: Sequence[Stage], result: RunResult,
                     seconds: float, final: bool = False, interrupted: bool = False) -> None:
    """Fold stage manifests (status, timings, recorded model checkpoints) into the run manifest."""
    stages: dict[str, Any] = {}
    models: list[dict[str, Any]] = []
    for s in plan:
        sm = read_json(layout.stage_manifest(s.name)) or {}
        this = next((o for o in result.outcomes if o.stage == s.name), None)
        stages[s.name] = {"notebook": s.notebook, "status": sm.get("status", "not run"),
                          "seconds": sm.get("seconds"), "finished": sm.get("finished"),
                          "this_invocation": this.status if this else "not reached",
                          "error": sm.get("error")}
        models += list((sm.get("records") or {}).get("models", []) or [])
    m["stages"] = stages
    if models:
        m["models"] = models
    m["seconds_this_invocation"] = round(seconds, 3)
    if final:
        m["finished"] = _now()
        m["status"] = "interrupted" if interrupted else "failed" if result.failure else "ok"
    write_json(layout.manifest, m)


# ------------------------------------------------------------------- stage outputs read by notebooks
# The data stage writes ``<data_dir>/datasets.json`` naming its COCO files; later stages load them
# through these helpers so that no notebook hard-codes a file layout.
DATASETS_FILE = "datasets.json"


def write_datasets_manifest(data_dir: str | os.PathLike, test: Sequence[Mapping[str, Any]],
                            train: Mapping[str, Any] | None, policy: str) -> Path:
    """Record the data stage's datasets.

    test: one entry per evaluation set ``{"name", "annotations", "images", "raw_annotations"}``
        (``raw_annotations``: the same images before the labeling policy, or ``None`` when the
        policy changed nothing); train: ``{"name", "annotations", "images"}`` or ``None``.
        Annotation paths may be absolute or relative to ``data_dir``.
    """
    path = Path(data_dir) / DATASETS_FILE
    write_json(path, {"policy": policy, "test": [dict(t) for t in test], "train": dict(train) if train else None})
    return path


def _abs(data_dir: Path, p: str | None) -> Path | None:
    return None if not p else (Path(p) if os.path.isabs(p) else data_dir / p)


def read_datasets_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    d = read_json(Path(data_dir) / DATASETS_FILE)
    if d is None:
        raise PipelineError(f"{data_dir}: no {DATASETS_FILE}; run the data stage first")
    return d


def load_test_sets(data_dir: str | os.PathLike) -> list[Any]:
    """The evaluation ``Dataset``s written by the data stage (labeling policy applied)."""
    from .data import load_coco

    data_dir = Path(data_dir)
    return [load_coco(_abs(data_dir, t["annotations"]), t["images"], name=t["name"], check_images=False)
            for t in read_datasets_manifest(data_dir)["test"]]


def load_train_set(data_dir: str | os.PathLike) -> Any | None:
    """The training ``Dataset`` written by the data stage, or ``None`` when there is none."""
    from .data import load_coco

    data_dir = Path(data_dir)
    t = read_datasets_manifest(data_dir)["train"]
    if not t:
        return None
    return load_coco(_abs(data_dir, t["annotations"]), t["images"], name=t["name"], check_images=False)


def raw_gt_variant(data_dir: str | os.PathLike, test_name: str) -> dict[int, Any] | None:
    """``{ann_id: Instance}``: for each policy object of ``test_name``, its ground truth *before* the policy.

    An object the policy kept or filled has its raw instance (same ``ann_id``). A merged object's raw
    counterpart is the union of its members' raw masks (no hole filled), so scoring one prediction
    against both variants separates what the policy costs from what mask quality costs.
    Returns ``None`` when the data stage wrote no raw annotations (the policy changed nothing).
    """
    from .data import load_coco
    from .masks import decode_rle, encode_rle, mask_box_xyxy

    data_dir = Path(data_dir)
    entry = next(t for t in read_datasets_manifest(data_dir)["test"] if t["name"] == test_name)
    if not entry.get("raw_annotations"):
        return None
    raw = {t.ann_id: t for t in load_coco(_abs(data_dir, entry["raw_annotations"]), entry["images"],
                                          check_images=False).instances}
    pol = load_coco(_abs(data_dir, entry["annotations"]), entry["images"], check_images=False)
    out: dict[int, Any] = {}
    for inst in pol.instances:
        members = [raw[a] for a in (inst.source_ann_ids or (inst.ann_id,)) if a in raw]
        if not members:
            continue
        if len(members) == 1:
            out[inst.ann_id] = members[0].with_(ann_id=inst.ann_id)
            continue
        mask = decode_rle(members[0].rle)
        for m in members[1:]:
            mask |= decode_rle(m.rle)
        out[inst.ann_id] = inst.with_(rle=encode_rle(mask), area=int(mask.sum()),
                                      box_xyxy=tuple(float(v) for v in mask_box_xyxy(mask)))
    return out


def first_images(dataset: Any, n: int | None) -> Any:
    """The dataset restricted to its ``n`` smallest image ids (all when ``n`` is None): tiny runs."""
    if n is None or n >= len(dataset.images):
        return dataset
    return dataset.subset(sorted(dataset.images)[:n])


def load_source(source: str, out_dir: str | os.PathLike, name: str, synthetic: Mapping[str, Any] | None = None,
                annotations: str | None = None, images: str | None = None,
                train_annotations: str | None = None, train_images: str | None = None,
                isegm_root: str | None = None, isegm_datasets: Sequence[str] = ("grabcut", "berkeley"),
                limit_images: int | None = None, limit_train_images: int | None = None
                ) -> tuple[dict[str, Any], Any | None]:
    """Load the config's data source: ``({eval set name: Dataset}, separate train Dataset or None)``.

    synthetic: the probe set is generated into ``out_dir/probe_set`` (``synthetic.SyntheticConfig``
    fields in ``synthetic``); coco: ``annotations``/``images`` (+ ``train_*`` for a separate
    training set); isegm: ``isegm.load_grabcut`` / ``load_berkeley`` under ``isegm_root``.
    ``limit_images`` keeps the first N images of each evaluation source (before any split),
    ``limit_train_images`` the first N of the separate training set.
    """
    from .data import load_coco

    if source == "synthetic":
        from .synthetic import INSTANCES_FILE, SyntheticConfig, generate_probe_set

        probe = generate_probe_set(SyntheticConfig(**dict(synthetic or {})), Path(out_dir) / "probe_set")
        sets = {name: load_coco(probe / INSTANCES_FILE, probe / "images", name=name)}
        train = None
    elif source == "coco":
        sets = {name: load_coco(annotations, images, name=name)}
        train = (load_coco(train_annotations, train_images, name=f"{name}-train", check_images=False)
                 if train_annotations else None)
    elif source == "isegm":
        from . import isegm

        loaders = {"grabcut": ("GrabCut", isegm.load_grabcut), "berkeley": ("Berkeley", isegm.load_berkeley)}
        unknown = [d for d in isegm_datasets if d not in loaders]
        if unknown:
            raise ValueError(f"unknown isegm dataset(s) {unknown}; known: {sorted(loaders)}")
        sets = {d: loaders[d][1](Path(isegm_root) / loaders[d][0]) for d in isegm_datasets}
        train = None
    else:
        raise ValueError(f"unknown data source {source!r}")
    sets = {k: first_images(v, limit_images) for k, v in sets.items()}
    return sets, (first_images(train, limit_train_images) if train is not None else None)


def image_dir_of(dataset: Any) -> str:
    """The folder a dataset's ``file_name``s are relative to (from its first image record)."""
    if not dataset.images:
        return ""
    rec = next(iter(dataset.images.values()))
    path = str(rec.path)
    return path[: len(path) - len(rec.file_name)].rstrip("/\\") or "."


def write_stage_datasets(out_dir: str | os.PathLike, test_sets: Mapping[str, Any], train: Any | None,
                         raw_sets: Mapping[str, Any] | None, policy: str) -> Path:
    """Write the data stage's COCO files and ``datasets.json``.

    test_sets: ``{name: Dataset}`` with the policy applied (``test-<name>.json``); raw_sets: the
    same sources before the policy (restricted to the test images, ``test-<name>-raw.json``), or
    ``None`` when the policy is ``raw``; train: ``train.json`` or ``None``.
    """
    from .data import write_coco

    out = Path(out_dir)
    entries = []
    for name, ds in test_sets.items():
        ann = write_coco(ds, out / f"test-{name}.json")
        raw_ann = None
        if raw_sets is not None and policy != "raw":
            raw_ann = write_coco(raw_sets[name].subset(set(ds.images)), out / f"test-{name}-raw.json").name
        entries.append({"name": name, "annotations": ann.name, "images": image_dir_of(ds), "raw_annotations": raw_ann})
    tr = None
    if train is not None:
        tr = {"name": train.name, "annotations": write_coco(train, out / "train.json").name,
              "images": image_dir_of(train)}
    return write_datasets_manifest(out, entries, tr, policy)


def training_dir(out_dir: str | os.PathLike, config: Mapping[str, Any], data_file: str | os.PathLike) -> Path:
    """``<out_dir>/training-<key>`` for one (training config, training data) pair; other ones are removed.

    The custom trainer resumes from its folder when the config matches: keying the folder by the
    training data too means a rerun after a failure resumes, while new data starts afresh.
    """
    import shutil

    key = hashlib.sha256((json.dumps(_plain(dict(config)), sort_keys=True) + file_sha256(Path(data_file))).encode())
    out = Path(out_dir) / f"training-{key.hexdigest()[:12]}"
    for old in Path(out_dir).glob("training-*"):
        if old != out and old.is_dir():
            shutil.rmtree(old)
    return out
