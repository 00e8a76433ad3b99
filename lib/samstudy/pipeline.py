"""The study as a DAG of notebooks, executed with papermill, exported to an HTML report.

The stages and the run layout are defined in :mod:`samstudy.stages`; what the data stage writes
and the later stages read is in :mod:`samstudy.data_stage`. This module runs the DAG: it derives
each stage's flat parameters from the config (:func:`stage_parameters`), decides by hash what to
run, executes the notebooks and keeps the manifests. Layout of a run::

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
  The values assigned there are the defaults of a run of the default config into ``results/dev``
  (:func:`notebook_defaults`), so a notebook opened by hand behaves like a stage of that run.
- A failing stage keeps papermill's partial output notebook, its manifest records the failing cell,
  and the run stops with :class:`StageFailed`; the next run skips the completed stages by hash and
  resumes at the failed one.
- The notebooks ship inside the package (:func:`package_notebooks`, found through
  :mod:`importlib.resources`), so a config anywhere runs the same study. Kernels run in the run
  folder. Nothing is written outside ``results/<run>/`` but the cache root
  (:func:`samstudy.files.cache_root`), which the run prints with its size at the start and hands to
  the kernels as ``$SAMSTUDY_CACHE_DIR``.
- Progress: the engine's per-image bars and the custom model's training bar
  (:mod:`samstudy.progress`) are written to ``results/<run>/stages/<stage>.progress`` and printed
  by the runner every few seconds (:func:`follow_progress`).
- One run at a time per results folder: :func:`run_study` holds ``results/<run>/`` with
  :func:`samstudy.locks.folder_lock` and raises :class:`samstudy.locks.FolderLocked` when another
  process is running into it.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import nbformat

from .config import StudyConfig, parse_config
from .files import CACHE_ENV, atomic_path, cache_root, file_sha256, folder_bytes, jsonable, read_json, write_json_atomic
from .locks import LOCK_NAME, OWNER_NAME, folder_lock
from .progress import PROGRESS_ENV
from .provenance import git_info, package_versions
from .stages import STAGE_NAMES, STAGES, RunLayout, Stage, config_stages

MANIFEST_FORMAT = 1


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


def package_notebooks() -> Path:
    """The study notebooks shipped with the package (``samstudy/notebooks/``)."""
    from importlib.resources import files

    return Path(str(files("samstudy").joinpath("notebooks")))


# ------------------------------------------------------------------------------------- parameters
def _dirs(layout: RunLayout, cfg: StudyConfig) -> dict[str, str]:
    """``<stage>_dir`` parameters of every stage ("" for a stage this config does not run)."""
    active = {s.name for s in config_stages(cfg)}
    return {f"{s}_dir": str(layout.stage_dir(s)) if s in active else "" for s in STAGE_NAMES}


def stage_parameters(cfg: StudyConfig, stage: Stage, layout: RunLayout) -> dict[str, Any]:
    """The notebook parameters of ``stage``: common ones, its inputs' folders, its config section.

    Every stage gets ``run_name, run_dir, out_dir, seed`` and ``<dep>_dir`` for each dependency and
    each stage it only ``reads`` (``""`` for one this config does not run); then the values of its config section;
    ``notebook_params.<stage>`` from the config is merged last (and validated like the rest).
    Config paths are absolute (:meth:`StudyConfig.resolve`), folders are built from ``layout`` as
    given. The result is :func:`samstudy.files.jsonable` (lists, dicts, str; NaN/inf -> None).
    """
    dirs = _dirs(layout, cfg)
    p: dict[str, Any] = {"run_name": layout.root.name, "run_dir": str(layout.root),
                         "out_dir": str(layout.stage_dir(stage.name)), "seed": cfg.seed}
    # The full stage list's deps, not the active one: a notebook always declares e.g. evaluate_custom_dir.
    static = next(s for s in STAGES if s.name == stage.name) if stage.name in STAGE_NAMES else stage
    p.update({f"{dep}_dir": dirs.get(f"{dep}_dir", str(layout.stage_dir(dep))) for dep in static.deps + static.reads})
    p.update(_section_parameters(cfg, stage.name))
    p.update(cfg.stage_params.get(stage.name, {}))
    return jsonable(p)


def _model_specs(cfg: StudyConfig, models: Sequence[Any]) -> list[dict[str, Any]]:
    """A config's model entries as notebook parameters: ``{"name", "checkpoint" (resolved), "options"}``."""
    return [{"name": m.name, "checkpoint": cfg.resolve(m.checkpoint), "options": dict(m.options)} for m in models]


def _section_parameters(cfg: StudyConfig, stage: str) -> dict[str, Any]:
    """The parameters one stage takes from its config sections (none for an unknown stage)."""
    d, f, c = cfg.data, cfg.foundation, cfg.compare
    p: dict[str, Any] = {}
    arms = {"tight_mode": c.tight_mode, "loose_mode": c.loose_mode, "multimask": c.multimask,
            "custom_enabled": cfg.custom.enabled}
    if stage == "data":
        p.update(dataset_name=cfg.name, source=d.source, synthetic=dict(d.synthetic),
                 annotations=cfg.resolve(d.annotations), images=cfg.resolve(d.images),
                 train_annotations=cfg.resolve(d.train_annotations), train_images=cfg.resolve(d.train_images),
                 isegm_root=cfg.resolve(d.isegm_root), isegm_datasets=list(d.isegm_datasets),
                 categories=list(d.categories), include_crowd=d.include_crowd, policy=dict(d.policy),
                 test_fraction=d.split.test_fraction, split_seed=d.split.seed,
                 limit_images=d.limit_images, limit_train_images=d.limit_train_images,
                 train_needed=cfg.custom.enabled or cfg.finetune.enabled)
        p.update(max_skip_fraction=d.max_skip_fraction, exif=d.exif)
    elif stage == "train_custom":
        p.update(minutes=cfg.custom.minutes, custom_options=dict(cfg.custom.options), device=f.device)
    elif stage == "foundation":
        p.update(models=_model_specs(cfg, f.models),
                 modes=list(f.modes), buffer_sweep=list(f.buffer_sweep), multimask=list(f.multimask),
                 gt_variants=list(f.gt_variants), cache_dir=cfg.resolve(f.cache_dir), device=f.device,
                 executor=dataclasses.asdict(cfg.run))
    elif stage == "finetune":
        ft = cfg.finetune
        p.update(models=_model_specs(cfg, ft.models),
                 prompts=list(ft.prompts), epochs=ft.epochs, minutes=ft.minutes, options=dict(ft.options),
                 gt_variants=list(f.gt_variants), cache_dir=cfg.resolve(f.cache_dir), device=f.device)
    elif stage == "evaluate_custom":
        p["modes"] = list(cfg.custom.modes)
        p.update(device=f.device, executor=dataclasses.asdict(cfg.run))
    elif stage == "compare":
        p.update(arms, finetune_enabled=cfg.finetune.enabled, n_boot=c.n_boot, reference=c.reference, buffer_sweep=list(f.buffer_sweep),
                 gt_variants=list(f.gt_variants), config_name=cfg.name, config_description=cfg.description)
    elif stage == "gallery":
        p.update(arms, per_failure=cfg.gallery.per_failure, failure_modes=list(cfg.gallery.failure_modes),
                 crop_margin=cfg.gallery.crop_margin)
    elif stage == "explore":
        p.update(arms)
    elif stage == "effort":
        p.update(dataclasses.asdict(cfg.effort), custom_enabled=cfg.custom.enabled, n_boot=c.n_boot,
                 config_name=cfg.name)
    elif stage == "learning_curve":
        lc = cfg.learning_curve
        # the train_custom stage's options and device, so each run is that model on less data
        p.update(custom_options=dict(cfg.custom.options), device=f.device, fractions=list(lc.fractions),
                 seeds=list(lc.seeds), epochs=lc.epochs, minutes=cfg.custom.minutes if lc.minutes is None else lc.minutes,
                 target_n=lc.target_n, n_boot=c.n_boot, tight_mode=c.tight_mode, multimask=c.multimask)
        ft = cfg.finetune  # the fine-tuned arm: the finetune stage's models, schedule, options and cache
        p.update(finetune=lc.finetune, finetune_models=_model_specs(cfg, ft.models),
                 finetune_epochs=ft.epochs, finetune_minutes=ft.minutes, finetune_options=dict(ft.options),
                 cache_dir=cfg.resolve(f.cache_dir))
    return p


# ------------------------------------------------------------------------------ parameter checking
def parameters_cell_source(nb: Mapping[str, Any], path: Path) -> str:
    """Source of the first code cell, which must be tagged ``parameters``.

    ``nb`` is a notebook as nbformat reads it or as plain JSON (where a source may be a list of lines).
    """
    cell = _parameters_cell(nb, path)
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _parameters_cell(nb: Mapping[str, Any], path: Path) -> dict[str, Any]:
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    if not code or "parameters" not in code[0].get("metadata", {}).get("tags", []):
        raise ParameterError(f"{path}: the first code cell must be tagged 'parameters'")
    return code[0]


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


# ----------------------------------------------------------------------------- notebook defaults
# A notebook opened by hand runs with its parameters cell as written; those values are the ones a run
# of the default config would pass, so that the notebook and `samstudy run` agree.
DEV_RUN = Path("results/dev")  # the run folder of the defaults, relative to the repository root
MISSING = "<not assigned>"     # notebook value of a parameter its cell does not assign


def default_config(repo_root: Path) -> StudyConfig:
    """The config every notebook default comes from: the YAML mapping ``{name: dev}`` (everything
    else the config dataclasses' defaults), with relative paths hanging off ``repo_root``."""
    repo_root = Path(repo_root)
    return parse_config({"name": "dev"}, repo_root / "configs" / "dev.yaml", repo_root=repo_root)


def notebook_defaults(stage: Stage, repo_root: Path) -> dict[str, Any]:
    """The values ``stage``'s notebook should assign in its parameters cell.

    That is ``stage_parameters(default_config(repo_root), stage, RunLayout(DEV_RUN))`` with every
    string that is an absolute path inside ``repo_root`` (the config's resolved paths, e.g.
    ``cache_dir``) written relative to it in POSIX form (``".cache/embeddings"``); the run folders
    are relative already (``"results/dev/data"``). Paths outside the repository stay absolute.
    """
    root = Path(repo_root).resolve()
    return _repo_relative(stage_parameters(default_config(root), stage, RunLayout(DEV_RUN)), root)


def _repo_relative(v: Any, root: Path) -> Any:
    if isinstance(v, dict):
        return {k: _repo_relative(x, root) for k, x in v.items()}
    if isinstance(v, list):
        return [_repo_relative(x, root) for x in v]
    if isinstance(v, str) and os.path.isabs(v) and Path(v).is_relative_to(root):
        return Path(v).relative_to(root).as_posix()
    return v


def parameters_cell_values(notebook: Path) -> dict[str, Any]:
    """``{name: value}`` of the top-level assignments of ``notebook``'s parameters cell, each right
    side evaluated with :func:`ast.literal_eval` (nothing is executed).

    Raises :class:`ParameterError` naming an assignment whose target is not a single name or whose
    value is not a literal: a parameters cell holds plain values only.
    """
    return _literal_values(parameters_cell_source(nbformat.read(notebook, as_version=4), notebook), notebook)


def _literal_values(source: str, path: Path) -> dict[str, Any]:
    values = {}
    for name, node in _assignments(source, path):
        try:
            values[name] = ast.literal_eval(node)
        except ValueError:
            raise ParameterError(f"{path.name}: parameter {name!r} is not a literal ({ast.unparse(node)})") from None
    return values


def _assignments(source: str, path: Path) -> list[tuple[str, ast.expr]]:
    """``(name, value node)`` of each top-level ``name = value`` / ``name: T = value`` of ``source``."""
    out = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            out.append((node.targets[0].id, node.value))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out.append((node.target.id, node.value))
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            raise ParameterError(f"{path.name}: line {node.lineno} of the parameters cell is not a "
                                 f"'name = literal' assignment: {ast.unparse(node)}")
    return out


def parameter_mismatches(notebook: Path, expected: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, notebook value, expected value)`` for each expected parameter the notebook's cell
    assigns differently, in the order of ``expected``; the notebook value is :data:`MISSING` when
    the cell does not assign it. Values are compared by their JSON text, so ``1`` differs from
    ``True`` and from ``1.0``, and a tuple equals the list with the same items."""
    return _mismatches(parameters_cell_values(notebook), expected)


def _mismatches(have: Mapping[str, Any], expected: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    return [(k, have.get(k, MISSING), v) for k, v in expected.items()
            if k not in have or not _same_value(have[k], v)]


def _same_value(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def aligned_parameters_source(source: str, expected: Mapping[str, Any]) -> str:
    """``source`` (a parameters cell) with each mismatching value of ``expected`` written in.

    Only the value text of a differing ``name = value`` changes (comments and layout stay);
    expected names the cell does not assign are appended as ``name = value`` lines.
    """
    lines = source.splitlines(keepends=True)
    starts = [0]
    for ln in lines:  # ast column offsets count UTF-8 bytes
        starts.append(starts[-1] + len(ln.encode()))
    data = source.encode()
    found = dict(_assignments(source, Path("<cell>")))
    values = _literal_values(source, Path("<cell>"))
    edits = []
    for name, node in found.items():
        if name in expected and not _same_value(values[name], expected[name]):
            a = starts[node.lineno - 1] + node.col_offset
            b = starts[node.end_lineno - 1] + node.end_col_offset
            edits.append((a, b, python_literal(expected[name]).encode()))
    for a, b, text in sorted(edits, reverse=True):  # from the end: earlier offsets stay valid
        data = data[:a] + text + _keep_comment_column(data[b:], len(text) - (b - a))
    out = data.decode()
    missing = [k for k in expected if k not in found]
    if missing:
        out = (out if not out or out.endswith("\n") else out + "\n") + "".join(
            f"{k} = {python_literal(expected[k])}\n" for k in missing)
    return out


def _keep_comment_column(rest: bytes, grew: int) -> bytes:
    """``rest`` of a line after a value that grew by ``grew`` bytes, with the spaces before a
    trailing ``# comment`` adjusted so that the comment stays in its column (at least 2 spaces)."""
    line, nl, tail = rest.partition(b"\n")
    code = line.lstrip(b" ")
    if not code.startswith(b"#"):
        return rest
    spaces = max(2, len(line) - len(code) - grew)
    return b" " * spaces + code + nl + tail


def python_literal(v: Any) -> str:
    """Python source of a JSON-like value, strings in double quotes (the notebooks' style)."""
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{python_literal(k)}: {python_literal(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(python_literal(x) for x in v) + "]"
    return repr(v)  # None, bool, int, float


def align_notebook_parameters(notebook: Path, expected: Mapping[str, Any]) -> list[str]:
    """Rewrite ``notebook``'s parameters cell with :func:`aligned_parameters_source`; return the
    names changed or added (nothing is written when the list is empty).

    Only that cell's ``source`` changes. The file is read, edited and replaced (atomically) at
    once, written back in nbformat's own JSON layout, so people editing other cells of the same
    notebook are not overwritten unless they save in that instant.
    """
    notebook = Path(notebook)
    nb = json.loads(notebook.read_text(encoding="utf-8"))
    source = parameters_cell_source(nb, notebook)
    changed = [name for name, _, _ in _mismatches(_literal_values(source, notebook), expected)]
    if not changed:
        return []
    _parameters_cell(nb, notebook)["source"] = aligned_parameters_source(source, expected).splitlines(keepends=True)
    mode = notebook.stat().st_mode & 0o7777
    with atomic_path(notebook) as tmp:
        tmp.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        os.chmod(tmp, mode)  # the temporary file is private (mkstemp); keep the notebook's permissions
    return changed


# ----------------------------------------------------------------------------------------- hashing
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
    blob = {"notebook": file_sha256(notebook), "params": jsonable(params),
            "files": _fingerprints(params), "upstream": dict(sorted(upstream.items()))}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


_LOCK_FILES = (LOCK_NAME, OWNER_NAME)


def hash_outputs(stage_dir: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under a stage's output folder.

    Lock bookkeeping (:data:`samstudy.locks.LOCK_NAME`, :data:`~samstudy.locks.OWNER_NAME`) is not
    output: a folder some process locked hashes like the same folder never locked.
    """
    if not stage_dir.is_dir():
        return {}
    return {str(p.relative_to(stage_dir)): file_sha256(p)
            for p in sorted(stage_dir.rglob("*")) if p.is_file() and p.name not in _LOCK_FILES}


def combined_hash(files: Mapping[str, str]) -> str:
    return hashlib.sha256(json.dumps(dict(sorted(files.items()))).encode()).hexdigest()


# --------------------------------------------------------------------------------------- manifests
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


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
    """SHA-256 of a (large) checkpoint through the models' sidecar cache (hashing ViT-H takes ~10 s)."""
    from .models.download import cached_file_sha256  # function-level: keeps torch-adjacent imports off the CLI path

    return cached_file_sha256(path)


# ----------------------------------------------------------------------------------------- running
@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables (inherited by notebook kernels) for the block, then restore them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def follow_progress(path: Path, log: Callable[[str], None], prefix: str, every: float = 5.0,
                    poll: float = 0.5) -> Iterator[None]:
    """While the block runs, print (``log``) the text progress bars written to ``path``
    (:mod:`samstudy.progress`): each bar's latest state at most every ``every`` seconds, and
    every finished line (a bar's last state, a one-time note). ``path`` is truncated first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    stop = threading.Event()

    def loop() -> None:
        pos, tail, shown, shown_at = 0, "", "", 0.0
        while True:
            stopping = stop.wait(poll)
            with open(path, encoding="utf-8", errors="replace") as fh:
                fh.seek(pos)
                text, pos = tail + fh.read(), fh.tell()
            *done, tail = text.split("\n")
            for line in done:
                last = line.split("\r")[-1].strip()
                if last and last != shown:
                    log(f"{prefix} {last}")
                    shown, shown_at = last, time.monotonic()
            current = tail.split("\r")[-1].strip()
            if current and current != shown and (stopping or time.monotonic() - shown_at >= every):
                log(f"{prefix} {current}")
                shown, shown_at = current, time.monotonic()
            if stopping:
                return

    thread = threading.Thread(target=loop, name=f"progress {prefix}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)


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
                  cwd: Path, progress: bool = True, kernel_name: str | None = None,
                  progress_file: Path | None = None, log: Callable[[str], None] | None = None) -> None:
    """Execute one notebook with papermill; raise :class:`StageFailed` naming the failing cell.

    progress_file: where the kernel's progress bars go (``$SAMSTUDY_PROGRESS_FILE``); with ``log``
    they are printed while the notebook runs (:func:`follow_progress`)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    notebook_out.parent.mkdir(parents=True, exist_ok=True)
    lib_dir = Path(__file__).resolve().parents[1]
    noise = _PapermillParameterNoise()
    pm_logs = [logging.getLogger(n) for n in ("papermill", "papermill.translators")]  # filters do not inherit
    for lg in pm_logs:
        lg.addFilter(noise)
    follow = (follow_progress(progress_file, log, f"[{stage.name}]") if progress_file and log and progress
              else contextlib.nullcontext())
    env = {PROGRESS_ENV: str(progress_file)} if progress_file and progress else {}
    try:
        with kernel_import_path(lib_dir), environ(**env), follow:
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
    write_json_atomic(layout.stage_manifest(stage.name), manifest)
    log(f"[{stage.name}] start ({stage.notebook})")
    t0 = time.perf_counter()
    failure: StageFailed | None = None
    try:
        execute_stage(stage, notebooks_dir / stage.notebook, layout.notebook(stage), params, cwd,
                      progress, kernel_name, progress_file=layout.root / "stages" / f"{stage.name}.progress",
                      log=log)
    except StageFailed as e:
        failure = e
    except KeyboardInterrupt:
        manifest.update(status="interrupted", finished=_now(), seconds=round(time.perf_counter() - t0, 3))
        write_json_atomic(layout.stage_manifest(stage.name), manifest)
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
    write_json_atomic(layout.stage_manifest(stage.name), manifest)
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
              kernel_name: str | None = None, cache_dir: str | os.PathLike | None = None) -> RunResult:
    """Run (or resume) the study of ``cfg`` into ``results_root/run_name`` and write its report.

    only: run just these stages (their upstream stages must have succeeded before); skipping by
        hash still applies unless ``force``.
    force: rerun the selected stages even when their inputs are unchanged.
    stages: the DAG (default: :data:`STAGES` filtered by :func:`~samstudy.stages.config_stages`); tests pass their own.
    results_root: default ``./results``; notebooks_dir: default :func:`package_notebooks`.
    cache_dir: the cache root (default :func:`samstudy.files.cache_root`: ``$SAMSTUDY_CACHE_DIR`` or XDG).
    Returns a :class:`RunResult`; a failed stage is in ``result.failure`` (not raised). Raised before
    anything is written: :class:`ParameterError` / :class:`PipelineError` for a bad configuration
    or selection, :class:`samstudy.locks.FolderLocked` when another process is running into the
    same ``results_root/run_name`` (the folder is held for the whole run).
    """
    notebooks = Path(notebooks_dir) if notebooks_dir else package_notebooks()
    layout = RunLayout(Path(results_root or "results").resolve() / run_name)
    plan = list(stages) if stages is not None else config_stages(cfg)
    selected = _select(plan, only)
    params = _checked_parameters(cfg, plan, layout, notebooks)
    cache = cache_root(cache_dir)
    with folder_lock(layout.root, f"samstudy run {run_name}"), environ(**{CACHE_ENV: str(cache)}):
        return _run_plan(cfg, run_name, layout, plan, selected, params, notebooks, only, force,
                         progress, log, kernel_name, cache)


def _checked_parameters(cfg: StudyConfig, plan: Sequence[Stage], layout: RunLayout,
                        notebooks_dir: Path) -> dict[str, dict[str, Any]]:
    """``{stage: parameters}``, after checking every notebook exists and declares its parameters
    (fail fast: nothing runs when one stage's parameters are wrong)."""
    params = {s.name: stage_parameters(cfg, s, layout) for s in plan}
    for s in plan:
        nb = notebooks_dir / s.notebook
        if not nb.is_file():
            raise PipelineError(f"stage {s.name!r}: notebook {nb} not found")
        validate_parameters(nb, params[s.name], origin=f"config {cfg.path.name} (stage {s.name!r})")
    return params


def _run_plan(cfg: StudyConfig, run_name: str, layout: RunLayout, plan: Sequence[Stage], selected: set[str],
              params: Mapping[str, dict[str, Any]], notebooks_dir: Path, only: Sequence[str] | None,
              force: bool, progress: bool, log: Log | None, kernel_name: str | None, cache: Path) -> RunResult:
    """The body of :func:`run_study`, run while the results folder is held."""
    from tqdm.auto import tqdm

    from .report import write_index

    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    log(f"cache: {cache} ({folder_bytes(cache) / 2**20:.1f} MiB)")
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
                                                layout.root, progress, log, kernel_name))
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
         "config_sha256": cfg.sha256(), "config": cfg.to_dict(), "git": git_info(),
         "packages": package_versions(), "platform": {"machine": platform.machine(),
                                                      "system": platform.platform(), "cpus": os.cpu_count()},
         "checkpoints": checkpoint_info(cfg), "invocation": {"only": list(only or []), "force": force,
                                                             "argv": sys.argv},
         "started": _now(), "status": "running", "stages": {}}
    write_json_atomic(layout.manifest, m)
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
    write_json_atomic(layout.manifest, m)
