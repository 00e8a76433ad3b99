"""Where the engine's per-image step runs: this process (``local``) or a Ray cluster (``ray``).

:func:`samstudy.engine.run_experiment` owns a run: it holds the output folder's lock, checks the
run identity, lists the images without current parts and merges the parts at the end. Only the
loop over those images is handed to an executor, through :class:`ExecutorSpec` and
:func:`run_distributed` (the one seam); every executor runs the same
:class:`samstudy.engine.ImageStep` (``process_image`` + the one part writer), so rows are the same
whichever runs them, and resume works across executors (a run started locally can be finished on
Ray and back).

``ray`` -- a Ray Data pipeline, built per run:

1. ``from_items``: one item per image still to do (id, fingerprint, pickled record + objects);
2. ``map`` (Ray tasks): the image is read and decoded (:meth:`ImageStep.read`). A read failure
   travels as the pickled exception and becomes the same skip rows as in a local run;
3. ``map_batches`` with the callable class :class:`_Worker` on a fixed pool of ``workers`` actors
   (``ActorPoolStrategy``), one image per batch: each actor builds its model once
   (``build_model(**model.build_args)`` on its own device when the model came from
   :func:`samstudy.models.build_model`, else the driver's model unpickled), opens the embedding
   cache and writes each image's parts itself, atomically, with the driver's run id;
4. the driver iterates the (tiny) per-image results for the study's progress bar and cache counts.

Resources: ``num_gpus = gpus_per_worker`` per actor (default 1 when the cluster has GPUs, else 0)
and ``num_cpus = cpus_per_worker`` (default 1; Ray then sets ``OMP_NUM_THREADS`` to it, so torch
uses that many threads). ``workers`` defaults to the GPUs Ray sees (divided by
``gpus_per_worker``), or without GPUs to its CPUs divided by ``cpus_per_worker``. Read tasks
reserve no CPU (they are short and I/O-bound; with ``workers`` = CPUs a CPU-reserving read could
never be scheduled) and at most ``2 x workers`` run at once.

Failures: a killed actor is restarted by Ray (``max_restarts`` / ``max_task_retries`` = 3) and its
in-flight image computed again; images whose parts were written are never recomputed, in this
run or a rerun (the driver lists only missing parts). A model error in ``process_image`` fails
the run like a local one, keeping every part written so far.

Requirements of ``ray``: every worker imports the same ``samstudy`` version and reaches the
images, the model checkpoints and the output folder at the **same paths** (a shared filesystem:
NFS, a Kubernetes ReadWriteMany volume...); so must the embedding cache folder, or each node
caches on its own (still correct, only less reuse). See docs/RAY.md. ``ray`` is imported lazily:
local runs never need it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only (the engine imports this module, never the reverse)
    from .cache import EmbeddingCache
    from .data import Dataset, ImageRecord, Instance
    from .models.base import PromptableSegmenter


class ImageStep(Protocol):
    """What an executor runs per image (:class:`samstudy.engine.ImageStep`)."""

    def read(self, record: "ImageRecord") -> np.ndarray: ...

    def __call__(self, model: "PromptableSegmenter", cache: "EmbeddingCache", record: "ImageRecord",
                 instances: Sequence["Instance"], variants: Mapping[str, Mapping[int, "Instance"]], fingerprint: str,
                 image: np.ndarray | None = None, image_loader: Any = None) -> None: ...


class ImageProgress(Protocol):
    """Where an executor reports finished images (:class:`samstudy.engine.ImageProgress`)."""

    def image_done(self, n_objects: int, cache_hits: int) -> None: ...

log = logging.getLogger(__name__)

__all__ = ["EXECUTORS", "ExecutorSpec", "run_distributed", "ray_session", "worker_resources"]

EXECUTORS = ("local", "ray")
_RETRIES = 3          # restarts of a killed actor / retries of its in-flight image
_REREAD = b"reread"   # read task could not ship the image or its error: the worker reads it itself


@dataclass(frozen=True)
class ExecutorSpec:
    """How the per-image work of a run is executed (the config's ``run`` section).

    executor: ``"local"`` (this process) or ``"ray"``.
    ray_address: the cluster to join (``"auto"``, ``"ray://head:10001"``, ``"10.0.0.1:6379"``);
        ``None``: the ``RAY_ADDRESS`` environment variable, else a Ray instance started on this
        machine. Ignored when Ray is already initialised in this process.
    workers: number of actors; ``None``: one per GPU Ray sees, else CPUs // ``cpus_per_worker``.
    cpus_per_worker: CPUs (hence torch threads) reserved per actor.
    gpus_per_worker: GPUs per actor; ``None``: 1 when the cluster has GPUs, else 0.
    """

    executor: str = "local"
    ray_address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {EXECUTORS}, got {self.executor!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise ValueError(f"workers must be a positive integer or null, got {self.workers!r}")
        if not float(self.cpus_per_worker) > 0:
            raise ValueError(f"cpus_per_worker must be > 0, got {self.cpus_per_worker!r}")
        if self.gpus_per_worker is not None and not float(self.gpus_per_worker) >= 0:
            raise ValueError(f"gpus_per_worker must be >= 0 or null, got {self.gpus_per_worker!r}")
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError(f"ray_address {self.ray_address!r} is given but executor is {self.executor!r}")

    @classmethod
    def of(cls, value: Any) -> "ExecutorSpec":
        """``None`` (local), an executor name, a mapping of these fields or a dataclass with them."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(executor=value)
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if isinstance(value, Mapping):
            return cls(**value)
        raise TypeError(f"executor: expected None, a name, a mapping or an ExecutorSpec, got {type(value).__name__}")


def worker_resources(spec: ExecutorSpec, cluster: Mapping[str, float]) -> tuple[int, float, float]:
    """``(workers, num_cpus, num_gpus)`` per actor for a cluster with ``cluster`` resources
    (``ray.cluster_resources()``: ``{"CPU": 8.0, "GPU": 2.0, ...}``); rules in :class:`ExecutorSpec`."""
    gpus_seen = float(cluster.get("GPU", 0.0))
    gpus = float(spec.gpus_per_worker if spec.gpus_per_worker is not None else (1.0 if gpus_seen >= 1 else 0.0))
    cpus = float(spec.cpus_per_worker)
    if spec.workers is not None:
        workers = spec.workers
    elif gpus > 0:
        workers = int(gpus_seen // gpus)
    else:
        workers = int(float(cluster.get("CPU", 1.0)) // cpus)
    return max(1, workers), cpus, gpus


def ray_session(address: str | None = None) -> Any:
    """The ``ray`` module, initialised: the running session if any, else ``ray.init(address)``."""
    try:
        import ray
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("executor 'ray' needs Ray Data: pip install 'ray[data]' (pinned in requirements.txt)") from e
    if not ray.is_initialized():
        log.info("starting Ray (%s)", address or os.environ.get("RAY_ADDRESS") or "a local instance")
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True)
    return ray


def run_distributed(spec: ExecutorSpec, dataset: "Dataset", model: "PromptableSegmenter", cache: EmbeddingCache,
                    todo: Sequence[tuple[int, str]], step: ImageStep,
                    variants: Mapping[str, Mapping[int, "Instance"]], bar: ImageProgress) -> None:
    """Run ``step`` on every ``(image_id, fingerprint)`` of ``todo`` with ``spec``'s executor.

    ``model`` is the driver's model (its identity is checked against each worker's); ``cache``'s
    folder is opened by every worker and its counters receive theirs; ``bar`` gets one tick per image.
    """
    if spec.executor != "ray":
        raise ValueError(f"run_distributed: no distributed executor {spec.executor!r}")
    if not todo:
        return
    _run_on_ray(spec, dataset, model, cache, todo, step, variants, bar)


# ------------------------------------------------------------------------------------------ ray
def _identity(model: "PromptableSegmenter") -> tuple[str, str, str, str]:
    return model.name, model.label, model.checkpoint_sha256, model.cache_key


class _ModelSource:
    """How a worker gets the model: rebuilt from ``build_args`` (on the worker's device), else the
    driver's model through the object store (one ``ray.put``, one unpickling per worker)."""

    def __init__(self, ray: Any, model: "PromptableSegmenter") -> None:
        self.identity = _identity(model)
        self.build_args = getattr(model, "build_args", None)
        self.ref = None if self.build_args is not None else [ray.put(model)]  # in a list: not auto-resolved

    def build(self) -> "PromptableSegmenter":
        if self.build_args is not None:
            from .models import build_model

            model = build_model(**self.build_args)
        else:
            import ray

            model = ray.get(self.ref[0])
        if _identity(model) != self.identity:
            raise RuntimeError(f"the worker's model {_identity(model)} is not the driver's {self.identity} "
                               "(another checkpoint or package version on this node?)")
        return model


def _read_row(row: dict[str, Any], step: ImageStep) -> dict[str, Any]:
    """Ray task: decode the row's image (or ship the read error to the worker)."""
    record = pickle.loads(row["task"])[0]
    image, error = np.zeros((0, 0, 3), np.uint8), b""
    try:
        got = step.read(record)
        if isinstance(got, np.ndarray) and got.dtype == np.uint8 and got.ndim == 3 and got.shape[2] == 3:
            image = np.ascontiguousarray(got)
        else:
            error = _REREAD  # odd loader output: let process_image judge it on the worker, as locally
    except Exception as e:  # noqa: BLE001 - becomes the same skip rows as a local run
        try:
            error = pickle.dumps(e)
        except Exception:  # noqa: BLE001 - unpicklable exception: the worker reads (and fails) itself
            error = _REREAD
    return {"image_id": row["image_id"], "fingerprint": row["fingerprint"], "task": row["task"],
            "image": image, "read_error": error}


class _Raise:
    """An image loader that raises the read task's exception (so the skip rows match a local run)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self, record: Any) -> np.ndarray:
        raise self.error


class _Worker:
    """Ray Data callable class: one model per actor; evaluates and writes one image per call."""

    def __init__(self, step: ImageStep, source: _ModelSource, cache_root: str | None) -> None:
        from .cache import EmbeddingCache

        self.step = step
        self.model = source.build()
        self.cache = EmbeddingCache(cache_root)
        log.info("ray worker pid %d built %s", os.getpid(), self.model.name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"image_id": [], "objects": [], "hits": [], "misses": [], "corrupt": [],
                                "encode_s": []}
        for k in range(len(batch["image_id"])):
            record, instances, variants = pickle.loads(batch["task"][k])
            error = bytes(batch["read_error"][k])
            image, loader = None, None
            if not error:
                image = np.array(batch["image"][k], dtype=np.uint8)  # writable copy of the Arrow buffer
            elif error != _REREAD:
                loader = _Raise(pickle.loads(error))
            s0 = dataclasses.replace(self.cache.stats)
            self.step(self.model, self.cache, record, instances, variants, str(batch["fingerprint"][k]),
                      image=image, image_loader=loader)
            s1 = self.cache.stats
            out["image_id"].append(int(batch["image_id"][k]))
            out["objects"].append(len(instances))
            out["hits"].append(s1.hits - s0.hits)
            out["misses"].append(s1.misses - s0.misses)
            out["corrupt"].append(s1.corrupt - s0.corrupt)
            out["encode_s"].append(s1.encode_s - s0.encode_s)
        return {k: np.asarray(v) for k, v in out.items()}


@contextlib.contextmanager
def _data_context(ray: Any) -> Iterator[None]:
    """Ray Data settings of a run, restored afterwards: the study's own progress bar instead of Ray's."""
    ctx = ray.data.DataContext.get_current()
    old = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    try:
        yield
    finally:
        ctx.enable_progress_bars = old


def _items(dataset: "Dataset", todo: Sequence[tuple[int, str]],
           variants: Mapping[str, Mapping[int, "Instance"]]) -> list[dict[str, Any]]:
    """One item per image: its record, objects and their gt-variant objects (only this image's)."""
    by_image = dataset.instances_by_image()
    items = []
    for image_id, fp in todo:
        insts = by_image.get(image_id, [])
        own = {name: {i.ann_id: lookup[i.ann_id] for i in insts if i.ann_id in lookup}
               for name, lookup in variants.items()}
        items.append({"image_id": int(image_id), "fingerprint": fp,
                      "task": pickle.dumps((dataset.images[image_id], insts, own))})
    return items


def _restart_args() -> dict[str, int]:
    """Ray remote options of the model actors: a killed actor is restarted and its task retried."""
    return {"max_restarts": _RETRIES, "max_task_retries": _RETRIES}


def _run_on_ray(spec: ExecutorSpec, dataset: "Dataset", model: "PromptableSegmenter", cache: EmbeddingCache,
                todo: Sequence[tuple[int, str]], step: ImageStep,
                variants: Mapping[str, Mapping[int, "Instance"]], bar: ImageProgress) -> None:
    ray = ray_session(spec.ray_address)
    import ray.data  # noqa: F401 - the submodule

    workers, cpus, gpus = worker_resources(spec, ray.cluster_resources())
    workers = min(workers, len(todo))
    log.info("ray: %d images on %d workers (%g CPU, %g GPU each)", len(todo), workers, cpus, gpus)
    source = _ModelSource(ray, model)
    cache_root = None if cache.root is None or not model.cache_embeddings else str(cache.root)
    with _data_context(ray):
        ds = ray.data.from_items(_items(dataset, todo, variants), override_num_blocks=len(todo))
        ds = ds.map(_read_row, fn_kwargs={"step": step}, num_cpus=0,
                    compute=ray.data.TaskPoolStrategy(size=2 * workers))
        ds = ds.map_batches(_Worker, batch_size=1, batch_format="numpy",
                            fn_constructor_kwargs={"step": step, "source": source, "cache_root": cache_root},
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus, num_gpus=gpus,
                            # actor restart options have no named parameter; **ray_remote_args is deprecated
                            ray_remote_args_fn=_restart_args)
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=0):
            st = cache.stats
            st.hits += int(batch["hits"].sum())
            st.misses += int(batch["misses"].sum())
            st.corrupt += int(batch["corrupt"].sum())
            st.encode_s += float(batch["encode_s"].sum())
            bar.image_done(int(batch["objects"].sum()), st.hits)
