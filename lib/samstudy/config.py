"""Study configuration: one YAML file -> validated, frozen dataclasses.

A config names everything a run needs: the data source and its labeling policy and split, the
foundation models with their checkpoints and the prompt modes, the custom model's training budget,
the comparison and gallery settings, and optional extra notebook parameters per stage.

Rules:

- Every section is checked by pydantic against the dataclass declarations below (unknown keys and
  wrong types, e.g. ``n_boot: two hundred``) and then by the cross-field rules here, all at load
  time, before any stage runs. Errors are ``ConfigError`` naming the file, the dotted key
  (``compare.n_boot``, ``foundation.models[0].options``), the expected type and the value given.
- Data paths (``data.annotations``, ``images``, ``train_*``, ``isegm_root``) must exist when the
  config is loaded (:func:`check_data_paths`), so a mistyped folder fails before any stage runs.
- Relative paths are resolved against **the folder holding the config file** (``StudyConfig.repo_root``),
  whatever the working directory is: ``configs/shared-coco.yaml`` names ``../../shared/data/coco-sample``.
  Results go to ``./results`` (the working directory) unless ``--results`` says otherwise; caches go
  to the cache root (:func:`samstudy.files.cache_root`).
- Model options are checked against the keyword parameters of the registered builder and class;
  a configured checkpoint must exist, and must match its SHA-256 (``sha256:`` of the model entry,
  or the published one of an official SAM file, ``models.download.SAM_CHECKPOINTS``).
- Prompt modes with parameters (``loose_box[b=0.2]``) cannot stand unquoted in a YAML flow list
  (``[tight_box, loose_box[b=0.2]]``); write them as mappings, ``{name: loose_box, b: 0.2}``.
- Sections passed through to library dataclasses (``data.synthetic`` -> ``SyntheticConfig``,
  ``data.policy`` -> ``PolicyConfig``, ``custom.options`` -> ``custom.CustomConfig``) and the
  prompt modes (``prompts.parse_modes``) are checked by those very constructors at load time.

See ``configs/demo.yaml`` for a commented example of every section.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pydantic
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
    max_skip_fraction: a stage that skips more than this share of its images (or objects), or is
        left with no object, stops with the skip table's summary (``data.check_skip_limit``).
    exif: ``stored`` (pixels, sizes and masks in the stored frame, as COCO's are; the EXIF
        orientation is ignored) or ``apply`` (images shown upright, masks transformed with them).
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
    max_skip_fraction: float = 0.05
    exif: str = "stored"


@dataclass(frozen=True)
class ModelSpec:
    """A foundation model: registry name (``models.build_model``), checkpoint path (None: built-in) and
    builder options, e.g. ``{runtime: onnxruntime}`` or ``{num_threads: 1}`` (``SamSegmenter`` keywords;
    LiteMedSAM also takes ``intensity``)."""

    name: str
    checkpoint: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # expected SHA-256 of the checkpoint file (checked at load time)


@dataclass(frozen=True)
class FoundationConfig:
    """The SAM-family experiment (``engine.run_foundation_experiment``).

    modes: prompt mode specs as accepted by ``prompts.parse_modes`` (key strings or dicts).
    multimask: one-shot multimask policies of the engine: ``single`` (SAM's single output) and/or
        ``best_of_3`` (highest predicted IoU of 3 masks); the headline uses ``compare.multimask``.
    gt_variants: score against the policy ground truth, the raw one, or both.
    cache_dir: embedding cache shared across runs (null: ``<cache root>/embeddings``,
        :func:`samstudy.files.cache_root`).
    """

    models: tuple[ModelSpec, ...] = (ModelSpec("litemedsam"),)
    modes: tuple[Any, ...] = ("tight_box", "loose_box[b=0.2]")
    buffer_sweep: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    multimask: tuple[str, ...] = ("single",)
    gt_variants: tuple[str, ...] = ("policy",)  # the policy GT is always scored; add "raw" to also score raw GT
    cache_dir: str | None = None
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
class FinetuneSection:
    """The fine-tuned foundation arm (``samstudy.finetune``): the prompt encoder and mask decoder of
    each base model fine-tuned on the train split per prompt type (``box``, ``extreme_points``,
    ``clicks``), then scored with that prompt type's modes (``finetune.EVAL_MODES``).

    models: base models (empty: the foundation models of the SAM family); epochs: the step schedule; minutes: budget
    per arm (only stops training); options: other ``finetune.FinetuneConfig`` fields (batch_size, lr...).
    """

    enabled: bool = False
    models: tuple[ModelSpec, ...] = ()
    prompts: tuple[str, ...] = ("box",)
    epochs: int = 3
    minutes: float = 20.0
    options: Mapping[str, Any] = field(default_factory=dict)


COCO_TRAIN2017_INSTANCES = 860_001  # instance annotations of COCO train2017: the published model's training set


@dataclass(frozen=True)
class LearningCurveSection:
    """The custom model's learning curve (``samstudy.custom.learning``, notebook 09): test mIoU against
    the number of training objects, with a power-law projection.

    One training run per (fraction, seed): a seeded ``fraction`` of the train split's images
    (``fractions`` in (0, 1], at least 2 distinct), trained with ``custom.options`` and the run's
    ``seed``. epochs: ``None`` = the ``custom.options`` epochs; minutes: per-run budget (``None`` =
    ``custom.minutes``); target_n: training objects the power law is projected to (default: COCO
    train2017's instances, the published training set). Needs ``custom.enabled``.

    finetune: also the fine-tuned foundation arm, a second curve: per (fraction, seed) the first
    ``finetune.models`` model's prompt encoder and mask decoder fine-tuned with box prompts on the
    same subset (``finetune.epochs``, ``finetune.minutes`` per run, ``finetune.options``, the run's
    seed; model selection on a validation part of the subset) and scored with the tight box.
    Needs ``finetune.enabled`` (a ``ConfigError`` otherwise, when the section is enabled).
    """

    enabled: bool = False
    fractions: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
    epochs: int | None = None
    minutes: float | None = None
    target_n: float = float(COCO_TRAIN2017_INSTANCES)
    finetune: bool = False


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


EFFORT_FALLBACKS = ("polygon", "edit")


@dataclass(frozen=True)
class EffortConfig:
    """The annotator-effort model (``samstudy.effort``): **modelled** seconds per object, not measured.

    seconds = prompt time + clicks x ``click_s`` + (``polygon_s`` or ``edit_s``, by ``fallback``) when
    the IoU target is not reached within ``max_clicks``. Defaults and their sources:

    - ``extreme_points_s`` 7.0: extreme clicking "only 7s per box" (Papadopoulos et al., ICCV 2017);
    - ``tight_box_s`` 35.0: "35s for one high-quality box" (same paper, on the ILSVRC protocol of Su et al. 2012);
    - ``loose_box_s`` 7.0: an assumption, no published figure for a deliberately loose box: a quick box
      without the quality rounds, priced as the fast box of extreme clicking (7 s);
    - ``click_s`` 1.75: per click, derived from the same extreme-clicking figure (4 clicks in 7 s);
      the per-click time of Benenson et al. (CVPR 2019) could not be verified here;
    - ``polygon_s`` 79.2: COCO polygons, 22 worker-hours per 1,000 segmentations (Lin et al., ECCV 2014);
    - ``edit_s`` 79.2: no published figure; the default is the polygon (editing a mask never costs
      more than redrawing it); used with ``fallback: edit``.

    targets: IoU targets (0.85 and 0.90 by default). max_clicks: the click limit (RITM's 20; a
    shorter sequence is its own limit). one_shot_modes: one-shot prompt modes (no corrective clicks)
    that are assistants besides every click sequence. click_s_grid / polygon_s_grid: the sensitivity table.
    """

    targets: tuple[float, ...] = (0.85, 0.9)
    extreme_points_s: float = 7.0
    tight_box_s: float = 35.0
    loose_box_s: float = 7.0
    click_s: float = 1.75
    polygon_s: float = 79.2
    edit_s: float = 79.2
    fallback: str = "polygon"
    max_clicks: int = 20
    one_shot_modes: tuple[str, ...] = ("tight_box", "loose_box[b=0.2]", "extreme_points")
    click_s_grid: tuple[float, ...] = (1.0, 1.75, 3.0, 5.0)
    polygon_s_grid: tuple[float, ...] = (40.0, 79.2, 120.0)


@dataclass(frozen=True)
class RunConfig:
    """Where the per-image work of the foundation and custom-evaluation stages runs
    (``samstudy.executors.ExecutorSpec``, same fields): ``executor: local`` (default, this process) or
    ``ray`` (Ray Data workers; ``ray_address``, ``workers``, ``cpus_per_worker``, ``gpus_per_worker``;
    docs/RAY.md). The command line's ``--executor`` / ``--ray-address`` override it."""

    executor: str = "local"
    ray_address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None


@dataclass(frozen=True)
class StudyConfig:
    """A whole study run. ``path`` is the YAML file, ``repo_root`` what relative paths hang off
    (the config file's folder)."""

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
    effort: EffortConfig = field(default_factory=EffortConfig)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    run: RunConfig = field(default_factory=RunConfig)
    learning_curve: LearningCurveSection = field(default_factory=LearningCurveSection)

    def resolve(self, p: str | None) -> str | None:
        """Absolute form of a config path (relative ones hang off the config file's folder)."""
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
    """The folder relative paths of the config ``start`` hang off: the folder holding it."""
    start = Path(start).resolve()
    return start if start.is_dir() else start.parent


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


@functools.cache
def _adapter(tp: Any) -> type[pydantic.BaseModel]:
    """A pydantic model with the one field ``value: tp``: its ``extra="forbid"`` reaches every nested
    standard dataclass (a stdlib dataclass takes its parent's config), so unknown keys are errors."""
    return pydantic.create_model("Config", __config__=pydantic.ConfigDict(extra="forbid"), value=(tp, ...))


def _dotted(where: str, loc: tuple[Any, ...]) -> str:
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _declared_type(cls: Any, loc: tuple[Any, ...]) -> str | None:
    """The declared annotation (source text) of the field at ``loc`` inside dataclass ``cls``."""
    tp: Any = None
    for part in loc:
        if not (isinstance(part, str) and dataclasses.is_dataclass(cls)):
            return None
        f = {f.name: f for f in dataclasses.fields(cls)}.get(part)
        if f is None:
            return None
        tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        cls = globals().get(tp)
    return tp


def _validation_error(e: pydantic.ValidationError, cls: Any, where: str, file: Path) -> ConfigError:
    """The first error of ``e`` as one line: file, dotted key, expected type, value given."""
    err = e.errors()[0]
    loc = tuple(err["loc"])[1:]  # without _adapter's "value"
    if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        parent = cls
        for part in loc[:-1]:
            parent = globals().get(_declared_type(parent, (part,)) or "")
        allowed = f"; allowed in {_dotted(where, loc[:-1]) or 'the top level'}: {sorted(_fields(parent))}" \
            if dataclasses.is_dataclass(parent) else ""
        return ConfigError(f"{file}: unknown key {_dotted(where, loc)!r}{allowed}")
    declared = _declared_type(cls, loc) if dataclasses.is_dataclass(cls) else getattr(cls, "__name__", None)
    expected = f"expected {declared}, " if declared else ""
    more = f" (and {e.error_count() - 1} more error(s))" if e.error_count() > 1 else ""
    return ConfigError(f"{file}: {_dotted(where, loc)}: {expected}got {err['input']!r}: {err['msg']}{more}")


def _validated(tp: Any, value: Any, where: str, file: Path) -> Any:
    """``value`` validated (and converted: lists -> tuples, dicts -> dataclasses) as type ``tp``."""
    try:
        return _adapter(tp).model_validate({"value": value}).value
    except pydantic.ValidationError as e:
        raise _validation_error(e, tp, where, file) from None


def _build(cls: type, d: Mapping[str, Any], where: str, file: Path) -> Any:
    """Instantiate a config dataclass from a mapping, validated by pydantic against its declaration."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{file}: {where}: expected a mapping, got {d!r}")
    return _validated(cls, dict(d), where, file)


def _check_passthrough(d: Mapping[str, Any], cls: type, build: Callable[[dict[str, Any]], Any],
                       where: str, file: Path) -> None:
    """Validate a section by building the library's own object from it: ``build(dict(d))``.

    ``cls`` is the dataclass the keys belong to: its declared types are checked first (pydantic),
    then ``build`` applies the library's own rules. Unknown keys and bad values fail here, at load
    time, naming the section and the file.
    """
    if dataclasses.is_dataclass(cls):
        known = {k: v for k, v in d.items() if k in _fields(cls)}
        try:
            _adapter(cls)
        except (pydantic.PydanticUserError, pydantic.PydanticSchemaGenerationError):
            pass  # a declaration pydantic cannot read: the constructor below still checks
        else:
            _validated(cls, known, where, file)
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
        _require(all(isinstance(k, str) for k in spec.options), file,
                 f"foundation.models[{i}].options must be a mapping of keyword -> value")
        out.append(spec)
    return tuple(out)


def _parse_data(d: dict[str, Any], file: Path) -> DataConfig:
    data = _build(DataConfig, d, "data", file)
    # Function-level imports: the library modules load numpy/OpenCV, needed only when there is something to check.
    if data.synthetic:
        from .synthetic import SyntheticConfig

        _check_passthrough(data.synthetic, SyntheticConfig, lambda kw: SyntheticConfig(**kw), "data.synthetic", file)
    if data.policy:
        from .policies import PolicyConfig

        _check_passthrough(data.policy, PolicyConfig, PolicyConfig.from_dict, "data.policy", file)
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
    f = data.max_skip_fraction
    _require(isinstance(f, (int, float)) and not isinstance(f, bool) and 0.0 <= f <= 1.0, file,
             f"data.max_skip_fraction must be a number in [0, 1], got {f!r}")
    _require(data.exif in ("stored", "apply"), file, f"data.exif must be 'stored' or 'apply', got {data.exif!r}")
    return data


# Data paths each source needs: (key, "file" | "folder").
_DATA_PATHS = {"coco": (("annotations", "file"), ("images", "folder"),
                        ("train_annotations", "file"), ("train_images", "folder")),
               "isegm": (("isegm_root", "folder"),)}
_ISEGM_FOLDERS = {"grabcut": "GrabCut", "berkeley": "Berkeley"}


def check_data_paths(cfg: "StudyConfig") -> None:
    """Every data path of ``cfg`` exists: ``ConfigError`` naming the key, the config file and the path.

    A mistyped images folder would otherwise load as 0 images and "succeed" (nothing else notices
    an empty folder). Checked: ``data.annotations`` / ``train_annotations`` (files), ``data.images`` /
    ``train_images`` and ``isegm_root`` with the ``isegm_datasets``' subfolders (folders).
    """
    d = cfg.data
    for key, kind in _DATA_PATHS.get(d.source, ()):
        given = getattr(d, key)
        if not given:
            continue
        path = Path(cfg.resolve(given))
        if not (path.is_file() if kind == "file" else path.is_dir()):
            raise ConfigError(f"{cfg.path}: data.{key}: {kind} not found: {path}"
                              + (f" (given as {given!r}, relative to {cfg.repo_root})" if not Path(given).is_absolute() else ""))
    if d.source == "isegm":
        root = Path(cfg.resolve(d.isegm_root))
        for name in d.isegm_datasets:
            sub = root / _ISEGM_FOLDERS.get(name, name)
            if name in _ISEGM_FOLDERS and not sub.is_dir():
                raise ConfigError(f"{cfg.path}: data.isegm_root: folder {sub} not found "
                                  f"(data.isegm_datasets lists {name!r})")


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
        _check_model_options(spec, f"foundation.models[{i}]", file)
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
    from .models.base import check_model_modes, default_click_selections
    from .models.registry import model_class  # function-level: registering the built-ins loads torch

    try:
        cls = model_class(name)
        check_model_modes(cls, modes, multimask, default_click_selections(cls), name=name)
    except ValueError as e:
        raise ConfigError(f"{file}: {where}: {e}") from None


def _keywords(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    """Keyword parameters of ``fn`` that have a default, and whether it also takes ``**kwargs``."""
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.default is not p.empty
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def model_options(name: str) -> set[str] | None:
    """The option names a registered model accepts (``None``: open-ended, cannot be checked).

    A builder's own keywords, then, while each takes ``**kwargs`` and hands them on, those of the
    registered class's ``__init__`` and of its bases. ``checkpoint`` and ``device`` are not options
    (the model entry's ``checkpoint`` and ``foundation.device`` set them)."""
    from .models.registry import MODEL_CLASSES, MODEL_REGISTRY, model_class

    model_class(name)  # loads the built-ins
    names, more = _keywords(MODEL_REGISTRY[name])
    for klass in MODEL_CLASSES[name].__mro__:
        if not more:
            break
        if "__init__" in vars(klass):
            n, more = _keywords(klass.__init__)
            names |= n
    return None if more else names - {"checkpoint", "device"}


def _check_model_options(spec: ModelSpec, where: str, file: Path) -> None:
    allowed = model_options(spec.name)
    unknown = sorted(set(spec.options) - allowed) if allowed is not None else []
    _require(not unknown, file, f"{where}.options: unknown option {unknown[0]!r} of model {spec.name!r}; "
             f"its options: {sorted(allowed or ())}" if unknown else "")


def _known_sha256(path: Path) -> str | None:
    """The published SHA-256 of an official checkpoint file name (``models.download.SAM_CHECKPOINTS``)."""
    from .models.download import SAM_CHECKPOINTS

    return next((sha for url, sha, _ in SAM_CHECKPOINTS.values() if url.rsplit("/", 1)[-1] == path.name), None)


def check_checkpoints(cfg: StudyConfig) -> None:
    """Every configured checkpoint exists and matches its expected SHA-256 (the model entry's
    ``sha256``, else the published one of an official file name; the sidecar hash cache
    ``models.download.cached_file_sha256`` makes this free after the first time)."""
    from .models.download import cached_file_sha256

    for i, m in enumerate(cfg.foundation.models):
        if m.checkpoint is None:
            continue
        path = Path(cfg.resolve(m.checkpoint))
        where = f"foundation.models[{i}].checkpoint"
        _require(path.is_file(), cfg.path, f"{where}: checkpoint file not found: {path}"
                 + (" (samstudy download sam --model ... fetches official SAM weights)" if _known_sha256(path) else ""))
        expected = (m.sha256 or _known_sha256(path) or "").lower()
        if expected:
            got = cached_file_sha256(path)
            _require(got == expected, cfg.path, f"{where}: {path} has SHA-256 {got}, expected {expected}")


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
            "notebook_params", "effort", "finetune", "run", "learning_curve"}


def _parse_finetune(d: dict[str, Any], fc: FoundationConfig, file: Path) -> FinetuneSection:
    """The ``finetune`` section; base models default to the foundation models, each must be a
    SAM-family model the fine-tuned arm can decode with every mode of its prompt types."""
    d = dict(d)
    if d.get("models"):
        d["models"] = _parse_models(d["models"], file)
    else:
        d.pop("models", None)
    ft = _build(FinetuneSection, d, "finetune", file)
    defaulted = not ft.models
    if defaulted:
        ft = dataclasses.replace(ft, models=fc.models)
    if not ft.enabled:
        return ft
    from .finetune import EVAL_MODES, FinetuneConfig  # function-level: loads torch

    bad = [p for p in ft.prompts if p not in EVAL_MODES]
    _require(bool(ft.prompts) and not bad, file, f"finetune.prompts must list prompt types of {sorted(EVAL_MODES)}, got {list(ft.prompts)}")
    _require(ft.epochs >= 1 and ft.minutes > 0, file, "finetune.epochs must be >= 1 and finetune.minutes > 0")
    fixed = {"model", "checkpoint", "options", "prompt", "epochs", "max_minutes"}
    _require(not (set(ft.options) & fixed), file, f"finetune.options may not set {sorted(set(ft.options) & fixed)} (section keys)")
    _check_passthrough(dict(ft.options), FinetuneConfig, lambda kw: FinetuneConfig(**kw), "finetune.options", file)
    from .models.registry import model_class

    if defaulted:  # the foundation models the arm can fine-tune (segmenters declaring finetunable: the SAM family)
        ft = dataclasses.replace(ft, models=tuple(m for m in fc.models if getattr(model_class(m.name), "finetunable", False)))
        _require(bool(ft.models), file, "finetune: no foundation model has a prompt encoder + mask decoder "
                 "to fine-tune; list finetune.models or set finetune.enabled: false")
    for i, spec in enumerate(ft.models):
        try:
            cls = model_class(spec.name)
        except ValueError as e:
            raise ConfigError(f"{file}: finetune.models[{i}]: {e}") from None
        _require(getattr(cls, "finetunable", False), file,
                 f"finetune.models[{i}]: {spec.name!r} is not a fine-tunable SAM-family model (prompt encoder + mask decoder)")
    return ft


def _parse_learning_curve(d: dict[str, Any], custom: CustomSection, finetune: FinetuneSection,
                          file: Path) -> LearningCurveSection:
    """The ``learning_curve`` section: types by pydantic, then ranges (checked even when disabled:
    they cost nothing) and, when enabled, that the custom model it trains is enabled too, and the
    fine-tuned arm when ``finetune`` asks for it."""
    lc = _build(LearningCurveSection, d, "learning_curve", file)
    fr = [float(f) for f in lc.fractions]
    _require(all(0.0 < f <= 1.0 for f in fr), file, f"learning_curve.fractions must lie in (0, 1], got {fr}")
    _require(len(set(fr)) == len(fr) and len(fr) >= 2, file,
             f"learning_curve.fractions must list at least 2 distinct fractions (a power law needs 2 sizes), got {fr}")
    _require(len(lc.seeds) >= 1 and len(set(lc.seeds)) == len(lc.seeds) and min(lc.seeds) >= 0, file,
             f"learning_curve.seeds must list distinct integers >= 0, got {list(lc.seeds)}")
    _require(lc.epochs is None or lc.epochs >= 1, file, f"learning_curve.epochs must be >= 1 or null, got {lc.epochs}")
    _require(lc.minutes is None or lc.minutes > 0, file, f"learning_curve.minutes must be > 0 or null, got {lc.minutes}")
    _require(lc.target_n > 0, file, f"learning_curve.target_n must be > 0, got {lc.target_n}")
    _require(not lc.enabled or custom.enabled, file,
             "learning_curve.enabled needs custom.enabled: true (the curve trains the custom model)")
    _require(not (lc.enabled and lc.finetune) or finetune.enabled, file,
             "learning_curve.finetune needs finetune.enabled: true (the fine-tuned arm's base model and schedule "
             "are the finetune section's)")
    return lc


def _parse_effort(d: dict[str, Any], file: Path) -> EffortConfig:
    e = _build(EffortConfig, d, "effort", file)
    _require(len(e.targets) > 0 and all(0.0 < float(t) <= 1.0 for t in e.targets), file,
             "effort.targets must list IoU targets in (0, 1]")
    costs = ("extreme_points_s", "tight_box_s", "loose_box_s", "click_s", "polygon_s", "edit_s")
    _require(all(float(getattr(e, k)) >= 0 for k in costs), file, f"effort: every cost ({', '.join(costs)}) must be >= 0 s")
    _require(e.fallback in EFFORT_FALLBACKS, file, f"effort.fallback must be one of {EFFORT_FALLBACKS}, got {e.fallback!r}")
    _require(isinstance(e.max_clicks, int) and e.max_clicks >= 0, file, "effort.max_clicks must be an integer >= 0")
    _require(all(float(v) >= 0 for v in e.click_s_grid + e.polygon_s_grid), file, "effort grids must be >= 0 s")
    _modes(list(e.one_shot_modes), "effort.one_shot_modes", file)
    return e


def parse_config(raw: Mapping[str, Any], file: Path, repo_root: Path | None = None,
                 check_files: bool = False) -> StudyConfig:
    """Validate a parsed YAML mapping. ``file`` is used in error messages and to find the folder
    relative paths hang off (``repo_root`` overrides it); ``check_files``: also
    :func:`check_checkpoints`."""
    file = Path(file)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{file}: the top level must be a mapping, got {type(raw).__name__}")
    _check_keys(raw, TOP_KEYS, "", file)
    custom_cfg = _build(CustomSection, _section(raw, "custom", file), "custom", file)
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
    finetune = _parse_finetune(_section(raw, "finetune", file), foundation, file)
    run = _parse_run(_section(raw, "run", file), file)
    cfg = StudyConfig(
        name=_validated(str, raw.get("name") or file.stem, "name", file),
        description=_validated(str, raw.get("description") or "", "description", file),
        seed=_validated(int, raw.get("seed", 0), "seed", file),
        data=_parse_data(_section(raw, "data", file), file),
        foundation=foundation,
        custom=custom_cfg,
        compare=compare,
        gallery=gallery,
        stage_params=_parse_stage_params(_section(raw, "notebook_params", file), file, STAGE_NAMES),
        effort=_parse_effort(_section(raw, "effort", file), file),
        path=file.resolve(),
        repo_root=(repo_root or find_repo_root(file)).resolve(),
        finetune=finetune,
        run=run,
        learning_curve=_parse_learning_curve(_section(raw, "learning_curve", file), custom_cfg, finetune, file),
    )
    if check_files:
        check_checkpoints(cfg)
    return cfg


def _parse_run(d: dict[str, Any], file: Path) -> RunConfig:
    """The ``run`` section, checked by the executor's own ``ExecutorSpec`` (no Ray import)."""
    from .executors import ExecutorSpec  # function-level: loads numpy

    run = _build(RunConfig, d, "run", file)
    _check_passthrough(dataclasses.asdict(run), ExecutorSpec, lambda kw: ExecutorSpec(**kw), "run", file)
    return run


# A prompt-mode key with parameters, which YAML cannot read unquoted inside a flow list.
_MODE_KEY = re.compile(r"\b\w+\[\w+=[^\]]*\]")


def load_config(path: str | Path, repo_root: Path | None = None, check_files: bool = True) -> StudyConfig:
    """Read and validate a YAML study config (see the module docstring for the rules);
    ``check_files=False`` skips the data-path and checkpoint checks (e.g. to check a config on another machine)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        hint = ""
        if _MODE_KEY.search(text):
            hint = ("\n  (a prompt mode such as loose_box[b=0.2] cannot stand unquoted in a [...] list: "
                    "quote it, 'loose_box[b=0.2]', or write it as a mapping, {name: loose_box, b: 0.2})")
        raise ConfigError(f"{path}: not valid YAML: {e}{hint}") from None
    cfg = parse_config(raw, path, repo_root, check_files=check_files)
    if check_files:
        check_data_paths(cfg)
    return cfg
