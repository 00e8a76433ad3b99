"""Study configuration: one YAML file -> validated, frozen dataclasses.

A config names everything a run needs: the data source and its labeling policy and split, the
foundation models with their checkpoints and the prompt modes, the custom model's training budget,
the comparison and gallery settings, and optional extra notebook parameters per stage.

Rules:

- Unknown keys are errors that name the key and the file (``ConfigError``); a typo never silently
  falls back to a default.
- Relative paths are resolved against the repository root (the folder holding ``pyproject.toml``
  above the config file), so ``../shared/data/coco-sample`` means the ``shared`` folder beside the
  repository whatever the working directory is.
- Sections passed through to library dataclasses (``data.synthetic`` -> ``SyntheticConfig``,
  ``data.policy`` -> ``PolicyConfig``, ``custom.options`` -> ``custom.CustomConfig``) and the
  prompt modes (``prompts.parse_modes``) are checked by those very constructors at load time.

See ``configs/demo.yaml`` for a commented example of every section.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from .files import jsonable
from .stages import STAGE_NAMES

SOURCES = ("synthetic", "coco", "isegm")
GT_VARIANTS = ("policy", "raw")
FAILURE_MODES = ("holes", "small", "boundary", "policy")  # gallery.RULES
# Reference datasets of the published-numbers table (published.PUBLISHED).
REFERENCES = ("coco", "automotive", "isegm", "none")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the offending key."""


@dataclass(frozen=True)
class SplitConfig:
    """Image-level train/test split (``splits.split_by_image``)."""

    test_fraction: float = 0.3
    seed: int = 0


@dataclass(frozen=True)
class DataConfig:
    """Where the objects come from and how they are labelled.

    source: ``synthetic`` (the generated probe set), ``coco`` (COCO-format json + images) or
        ``isegm`` (GrabCut / Berkeley single-object benchmarks).
    synthetic: keyword arguments of ``synthetic.SyntheticConfig``.
    annotations, images: the COCO json and image folder of the evaluation set (or of the whole set
        when no training set is given, which is then split by image).
    train_annotations, train_images: a separate training set (COCO train2017 for the real study);
        when given, the evaluation set is the test split as a whole.
    isegm_root, isegm_datasets: folder holding ``GrabCut/`` and ``Berkeley/``, and which to load.
    categories: keep only these category names (empty: all).
    include_crowd: keep COCO crowd annotations as objects (the study excludes them).
    policy: keyword arguments of ``policies.PolicyConfig`` (empty: the raw annotations).
    limit_images / limit_train_images: keep only the first N test / train images (tiny runs).
    """

    source: str = "synthetic"
    synthetic: Mapping[str, Any] = field(default_factory=dict)
    annotations: str | None = None
    images: str | None = None
    train_annotations: str | None = None
    train_images: str | None = None
    isegm_root: str | None = None
    isegm_datasets: tuple[str, ...] = ("grabcut", "berkeley")
    categories: tuple[str, ...] = ()
    include_crowd: bool = False
    policy: Mapping[str, Any] = field(default_factory=dict)
    split: SplitConfig = field(default_factory=SplitConfig)
    limit_images: int | None = None
    limit_train_images: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A foundation model: registry name (``models.build_model``), checkpoint path (None: built-in) and
    builder options, e.g. ``{runtime: onnxruntime}`` or ``{num_threads: 1}`` (``SamSegmenter`` keywords;
    LiteMedSAM also takes ``intensity``)."""

    name: str
    checkpoint: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FoundationConfig:
    """The SAM-family experiment (``engine.run_foundation_experiment``).

    modes: prompt mode specs as accepted by ``prompts.parse_modes`` (key strings or dicts).
    multimask: one-shot multimask policies of the engine: ``single`` (SAM's single output) and/or
        ``best_of_3`` (highest predicted IoU of 3 masks); the headline uses ``compare.multimask``.
    gt_variants: score against the policy ground truth, the raw one, or both.
    cache_dir: embedding cache shared across runs.
    """

    models: tuple[ModelSpec, ...] = (ModelSpec("litemedsam"),)
    modes: tuple[Any, ...] = ("tight_box", "loose_box[b=0.2]")
    buffer_sweep: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    multimask: tuple[str, ...] = ("single",)
    gt_variants: tuple[str, ...] = ("policy",)  # the policy GT is always scored; add "raw" to also score raw GT
    cache_dir: str = ".cache/embeddings"
    device: str = "cpu"


@dataclass(frozen=True)
class CustomSection:
    """The custom extreme-point model: whether to train it, the wall-clock budget, extra options, and
    the prompt modes its arms are scored with (checked against what the model decodes)."""

    enabled: bool = True
    minutes: float = 3.0
    options: Mapping[str, Any] = field(default_factory=dict)
    modes: tuple[Any, ...] = ("extreme_points",)


@dataclass(frozen=True)
class CompareConfig:
    """Comparison notebook: bootstrap size, which arms make the headline, published reference."""

    n_boot: int = 2000
    tight_mode: str | None = "tight_box"   # null: no box arms (e.g. the click-only isegm run)
    loose_mode: str | None = "loose_box[b=0.2]"
    multimask: str = "single"
    reference: str = "coco"


@dataclass(frozen=True)
class GalleryConfig:
    """Failure galleries: how many objects per failure mode and the crop margin (fraction of box side)."""

    per_failure: int = 6
    failure_modes: tuple[str, ...] = ("holes", "small", "boundary")  # add "policy" for policy studies
    crop_margin: float = 0.3


@dataclass(frozen=True)
class StudyConfig:
    """A whole study run. ``path`` is the YAML file, ``repo_root`` what relative paths hang off."""

    name: str
    description: str
    seed: int
    data: DataConfig
    foundation: FoundationConfig
    custom: CustomSection
    compare: CompareConfig
    gallery: GalleryConfig
    stage_params: Mapping[str, Mapping[str, Any]]
    path: Path
    repo_root: Path

    def resolve(self, p: str | None) -> str | None:
        """Absolute form of a config path (relative ones hang off the repository root)."""
        if p is None or p == "":
            return None
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (self.repo_root / q).resolve())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (for manifests, :func:`samstudy.files.jsonable`: NaN/inf -> None);
        paths as given in the file."""
        d = jsonable(dataclasses.asdict(self))
        d["path"], d["repo_root"] = str(self.path), str(self.repo_root)
        return d

    def sha256(self) -> str:
        """Hash of the configuration content (not of the file's formatting)."""
        d = self.to_dict()
        d.pop("path"), d.pop("repo_root")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# ----------------------------------------------------------------------------------------- parsing
def find_repo_root(start: Path) -> Path:
    """The nearest folder at or above ``start`` holding ``pyproject.toml`` (else ``start``'s folder)."""
    start = start.resolve()
    here = start if start.is_dir() else start.parent
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file():
            return d
    return here


def _check_keys(d: Mapping[str, Any], allowed: set[str], where: str, file: Path) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ConfigError(f"{file}: unknown key {where + '.' if where else ''}{unknown[0]!r}"
                          + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
                          + f"; allowed in {where or 'the top level'}: {sorted(allowed)}")


def _section(raw: Mapping[str, Any], key: str, file: Path) -> dict[str, Any]:
    v = raw.get(key) or {}
    if not isinstance(v, Mapping):
        raise ConfigError(f"{file}: {key!r} must be a mapping, got {type(v).__name__}")
    return dict(v)


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _build(cls: type, d: Mapping[str, Any], where: str, file: Path) -> Any:
    """Instantiate a config dataclass after checking keys; lists become tuples (frozen, hashable)."""
    _check_keys(d, _fields(cls), where, file)
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    return cls(**kw)


def _check_passthrough(d: Mapping[str, Any], cls: type, build: Callable[[dict[str, Any]], Any],
                       where: str, file: Path) -> None:
    """Validate a section by building the library's own object from it: ``build(dict(d))``.

    ``cls`` is the dataclass the keys belong to (it names an unknown key). Unknown keys and bad
    values then fail here, at load time, naming the section and the file.
    """
    try:
        build(dict(d))
    except TypeError as e:  # dataclass(**d) with an unknown keyword
        unknown = sorted(set(d) - _fields(cls)) if dataclasses.is_dataclass(cls) else []
        key = f" {unknown[0]!r}" if unknown else ""
        raise ConfigError(f"{file}: unknown key{key} in {where} ({e})") from None
    except ValueError as e:
        raise ConfigError(f"{file}: {where}: {e}") from None


def _require(cond: bool, file: Path, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{file}: {msg}")


def _parse_models(items: Any, file: Path) -> tuple[ModelSpec, ...]:
    _require(isinstance(items, list) and len(items) > 0, file,
             "foundation.models must be a non-empty list of {name, checkpoint}")
    out = []
    for i, m in enumerate(items):
        m = {"name": m} if isinstance(m, str) else m
        _require(isinstance(m, Mapping), file, f"foundation.models[{i}] must be a name or a mapping")
        spec = _build(ModelSpec, m, f"foundation.models[{i}]", file)
        _require(isinstance(spec.options, Mapping) and all(isinstance(k, str) for k in spec.options), file,
                 f"foundation.models[{i}].options must be a mapping of keyword -> value")
        out.append(spec)
    return tuple(out)


def _parse_data(d: dict[str, Any], file: Path) -> DataConfig:
    split = _section(d, "split", file)
    d = dict(d)
    d["split"] = _build(SplitConfig, split, "data.split", file)
    for k in ("synthetic", "policy"):
        if k in d and not isinstance(d[k] or {}, Mapping):
            raise ConfigError(f"{file}: data.{k} must be a mapping")
        d[k] = dict(d.get(k) or {})
    # Function-level imports: the library modules load numpy/OpenCV, needed only when there is something to check.
    if d["synthetic"]:
        from .synthetic import SyntheticConfig

        _check_passthrough(d["synthetic"], SyntheticConfig, lambda kw: SyntheticConfig(**kw), "data.synthetic", file)
    if d["policy"]:
        from .policies import PolicyConfig

        _check_passthrough(d["policy"], PolicyConfig, PolicyConfig.from_dict, "data.policy", file)
    data = _build(DataConfig, d, "data", file)
    _require(data.source in SOURCES, file, f"data.source must be one of {SOURCES}, got {data.source!r}")
    if data.source == "coco":
        _require(bool(data.annotations and data.images), file,
                 "data.source 'coco' needs data.annotations and data.images")
        _require(bool(data.train_annotations) == bool(data.train_images), file,
                 "data.train_annotations and data.train_images go together")
    if data.source == "isegm":
        _require(bool(data.isegm_root), file, "data.source 'isegm' needs data.isegm_root")
    _require(0.0 < data.split.test_fraction < 1.0, file, "data.split.test_fraction must be in (0, 1)")
    for k in ("limit_images", "limit_train_images"):
        v = getattr(data, k)
        _require(v is None or (isinstance(v, int) and v > 0), file, f"data.{k} must be a positive integer or null")
    return data


def _parse_foundation(d: dict[str, Any], file: Path) -> FoundationConfig:
    d = dict(d)
    if "models" in d:
        d["models"] = _parse_models(d["models"], file)
    fc = _build(FoundationConfig, d, "foundation", file)
    _require(len(fc.modes) > 0, file, "foundation.modes must list at least one prompt mode")
    bad = [v for v in fc.gt_variants if v not in GT_VARIANTS]
    _require(not bad and "policy" in fc.gt_variants, file,
             f"foundation.gt_variants must contain 'policy' (and may add 'raw'), got {list(fc.gt_variants)}")
    _require(all(0.0 <= float(b) <= 2.0 for b in fc.buffer_sweep), file, "foundation.buffer_sweep values must be in [0, 2]")
    _require(bool(fc.multimask) and all(m in ("single", "best_of_3") for m in fc.multimask), file,
             f"foundation.multimask must list 'single' and/or 'best_of_3', got {list(fc.multimask)}")
    modes = _modes(list(fc.modes), "foundation.modes", file, fc.buffer_sweep)
    for i, spec in enumerate(fc.models):
        _check_model(spec.name, modes, fc.multimask, f"foundation.models[{i}]", file)
    return fc


def _modes(specs: list[Any], where: str, file: Path, buffer_sweep: tuple[float, ...] = ()) -> list[Any]:
    """Parse prompt modes (plus the buffer sweep's loose boxes) with the library's own parser."""
    from .prompts import with_buffer_sweep  # function-level: prompts loads numpy and scipy

    try:
        return with_buffer_sweep(jsonable(specs), buffer_sweep)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{file}: {where}: {e}") from None


def _check_model(name: str, modes: list[Any], multimask: tuple[str, ...], where: str, file: Path) -> None:
    """The model must be registered and decode every mode and selection it is given (no model is built)."""
    from .models.base import check_model_modes
    from .models.registry import model_class  # function-level: registering the built-ins loads torch

    try:
        cls = model_class(name)
        clicks = ("first_best_of_3",) if cls.multimask_outputs > 1 else ("single",)  # one-output models: single
        check_model_modes(cls, modes, multimask, clicks, name=name)
    except ValueError as e:
        raise ConfigError(f"{file}: {where}: {e}") from None


def _parse_stage_params(d: Mapping[str, Any], file: Path, stage_names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for stage, params in d.items():
        _require(stage in stage_names, file, f"unknown stage {stage!r} under 'notebook_params'; stages: {list(stage_names)}")
        _require(isinstance(params, Mapping), file, f"notebook_params.{stage} must be a mapping of parameter: value")
        out[stage] = dict(params)
    return out


def _check_arms(compare: CompareConfig, fc: FoundationConfig, file: Path) -> CompareConfig:
    """The headline's tight and loose arms must be among the foundation modes; returns their canonical keys."""
    _require(compare.multimask in fc.multimask, file,
             f"compare.multimask {compare.multimask!r} is not in foundation.multimask {list(fc.multimask)}")
    from .prompts import parse_modes  # function-level: prompts loads numpy and scipy

    keys = {m.key for m in parse_modes(jsonable(list(fc.modes)))}
    if fc.buffer_sweep:
        keys |= {m.key for m in parse_modes([{"name": "loose_box", "buffer": list(fc.buffer_sweep)}])}
    canon: dict[str, str | None] = {}
    for what in ("tight_mode", "loose_mode"):
        spec = getattr(compare, what)
        if spec is None:
            canon[what] = None
            continue
        try:
            key = parse_modes([spec])[0].key
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{file}: compare.{what}: {e}") from None
        _require(key in keys, file, f"compare.{what} {key!r} is not among the foundation modes {sorted(keys)}")
        canon[what] = key
    return dataclasses.replace(compare, **canon)


TOP_KEYS = {"name", "description", "seed", "data", "foundation", "custom", "compare", "gallery",
            "notebook_params"}


def parse_config(raw: Mapping[str, Any], file: Path, repo_root: Path | None = None) -> StudyConfig:
    """Validate a parsed YAML mapping. ``file`` is used in error messages and to find the repo root."""
    file = Path(file)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{file}: the top level must be a mapping, got {type(raw).__name__}")
    _check_keys(raw, TOP_KEYS, "", file)
    custom = _section(raw, "custom", file)
    _check_keys(custom, _fields(CustomSection), "custom", file)
    custom_cfg = CustomSection(**custom)
    if custom_cfg.options:
        from .custom.model import CustomConfig  # function-level: loads torch, only when there are options

        _check_passthrough(custom_cfg.options, CustomConfig, CustomConfig.from_dict, "custom.options", file)
    _require(custom_cfg.minutes > 0, file, "custom.minutes must be > 0")
    if custom_cfg.enabled:
        _check_model("custom", _modes(list(custom_cfg.modes), "custom.modes", file), ("single",), "custom.modes", file)
    gallery = _build(GalleryConfig, _section(raw, "gallery", file), "gallery", file)
    bad = [m for m in gallery.failure_modes if m not in FAILURE_MODES]
    _require(not bad, file, f"gallery.failure_modes: unknown {bad}; known: {FAILURE_MODES}")
    compare = _build(CompareConfig, _section(raw, "compare", file), "compare", file)
    _require(compare.reference in REFERENCES, file, f"compare.reference must be one of {REFERENCES}")
    _require(compare.n_boot >= 100, file, "compare.n_boot must be >= 100")
    foundation = _parse_foundation(_section(raw, "foundation", file), file)
    compare = _check_arms(compare, foundation, file)
    name = str(raw.get("name") or file.stem)
    return StudyConfig(
        name=name,
        description=str(raw.get("description") or ""),
        seed=int(raw.get("seed", 0)),
        data=_parse_data(_section(raw, "data", file), file),
        foundation=foundation,
        custom=custom_cfg,
        compare=compare,
        gallery=gallery,
        stage_params=_parse_stage_params(_section(raw, "notebook_params", file), file, STAGE_NAMES),
        path=file.resolve(),
        repo_root=(repo_root or find_repo_root(file)).resolve(),
    )


def load_config(path: str | Path, repo_root: Path | None = None) -> StudyConfig:
    """Read and validate a YAML study config (see the module docstring for the rules)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_config(raw, path, repo_root)
