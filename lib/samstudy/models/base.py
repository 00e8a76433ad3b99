"""The one interface every promptable segmenter implements (SAM, LiteMedSAM, ...).

``encode`` runs the expensive image encoder once per image; ``decode`` turns a batch of prompts on
that image into masks. Coordinates are always in the *original* image frame: boxes ``(N, 4)`` xyxy
float pixels, points ``(N, K, 2)`` as ``(x, y)``; the model maps them to its own input frame.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Sequence

import numpy as np

from ..prompts import MODE_SPECS

if TYPE_CHECKING:  # annotations only: the interface itself needs no torch (configs check modes without it)
    import torch

    from ..prompts import Prompt, PromptMode

# Every prompt mode of samstudy.prompts: what the SAM family (box + points + mask input) decodes.
ALL_MODES: frozenset[str] = frozenset(MODE_SPECS)
# Multimask selections (the ``multimask`` result column): how a prompt's mask is chosen among the
# model's outputs; see samstudy.engine for their exact rules.
ONE_SHOT_SELECTIONS = ("single", "best_of_3")
CLICK_SELECTIONS = ("first_best_of_3", "single", "best_of_3")


class CheckpointError(RuntimeError):
    """A weights file that cannot be used (missing, truncated, not a state dict, another
    architecture, wrong keys/shapes). The one checkpoint error of the package, for foundation and
    custom models alike; the message always names the file and, when known, the model."""


@dataclass
class Embedding:
    """Output of the image encoder for one image.

    features: float32 tensor ``(1, C, h, w)`` (SAM: ``(1, 256, 64, 64)``), on CPU when cached.
    original_hw: ``(H, W)`` of the image given to ``encode``.
    input_hw: ``(h, w)`` of the image after the model's resize, before padding to its square input.
    model_key: ``cache_key`` of the model that produced it (``decode`` refuses another model's
        embedding when set; ``None`` for embeddings built by hand).
    extra: further float32 tensors the decoder needs, by name, cached with ``features`` (SAM 2:
        its two high-resolution feature maps; HQ-SAM: its fused early-layer/final features).
    """

    features: torch.Tensor
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    model_key: str | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Decoded:
    """Output of ``decode`` for ``N`` prompts with ``K`` masks each (K = 1, or 3 with multimask).

    masks: bool ``(N, K, H, W)`` at the original image resolution (logits > 0).
    iou_pred: float32 ``(N, K)``, the model's own IoU estimate.
    low_res_logits: float32 ``(N, K, 256, 256)``, fed back as ``mask_inputs`` for the next click;
        ``None`` for models without mask input (they do not support click sequences).
    """

    masks: np.ndarray
    iou_pred: np.ndarray
    low_res_logits: np.ndarray | None


class PromptableSegmenter(ABC):
    """A promptable segmenter. Subclasses set the identity attributes below.

    name: registry key (``"litemedsam"``, ``"sam_vit_b"``...).
    label: how reports name it; LiteMedSAM is never called "SAM".
    checkpoint_sha256: SHA-256 of the weights file (``"random-init"`` for untrained weights).
    preprocess_id: short id of the image preprocessing (part of the embedding cache key).

    Capabilities (class attributes; the engine and the config check them before anything runs):

    supported_modes: names of the prompt modes (``samstudy.prompts.MODE_SPECS``) the model decodes.
    multimask_outputs: masks per prompt with ``multimask=True`` (3 for the SAM family; 1 = no
        multimask output, so only the ``single`` selection is meaningful).
    cache_embeddings: whether the engine keeps its embeddings in the on-disk cache (``False`` for
        models whose per-image state is cheap, e.g. the custom model's image itself).
    """

    name: str
    label: str
    checkpoint_sha256: str
    preprocess_id: str
    device: "torch.device"
    supported_modes: ClassVar[frozenset[str]] = ALL_MODES
    multimask_outputs: ClassVar[int] = 3
    cache_embeddings: ClassVar[bool] = True
    # samstudy.finetune can train the prompt side (decode_train, trainable_parts, low_res_frame,
    # low_res_masks, embedding_parts: see SamSegmenter; encode_train for its optional encoder LoRA);
    # others are refused at config time
    finetunable: ClassVar[bool] = False

    @abstractmethod
    def encode(self, image: np.ndarray) -> Embedding:
        """Encode an RGB ``uint8 (H, W, 3)`` image."""

    @abstractmethod
    def decode(self, embedding: Embedding, prompts: Sequence[Prompt], multimask: bool = False,
               mask_inputs: np.ndarray | None = None) -> Decoded:
        """Decode ``N = len(prompts)`` prompts on one image.

        Prompts may mix box / no box and differ in point count: the SAM-family implementations
        decode each group of prompts with the same (has box, number of points) together, so every
        result equals decoding that prompt alone. (Padding shorter point lists with SAM's label -1
        would *not* be neutral: each extra "not a point" token changes the decoder's attention;
        measured on a small SAM.)
        mask_inputs: optional float32 ``(N, 1, 256, 256)`` low-res logits from a previous decode.
        """

    def decode_multimask(self, embedding: Embedding, prompts: Sequence[Prompt], multimask: Sequence[bool],
                         mask_inputs: np.ndarray | None = None) -> list[Decoded]:
        """``[decode(embedding, prompts, m, mask_inputs) for m in multimask]``.

        Models whose decoder computes every output in one pass (the SAM family) override this so
        that the single-output and best-of-3 selections of a prompt cost one decoder call.
        """
        return [self.decode(embedding, prompts, multimask=m, mask_inputs=mask_inputs) for m in multimask]


    @property
    def cache_key(self) -> str:
        """Identity of the embedding: weights + preprocessing (the image hash is added by the cache)."""
        return f"{self.name}-{self.checkpoint_sha256[:16]}-{self.preprocess_id}"


def check_rgb_uint8(image: np.ndarray, model_name: str) -> np.ndarray:
    """Return ``image`` as a C-contiguous ``uint8 (H, W, 3)`` array or raise ``ValueError``."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{model_name}: encode expects an RGB image of shape (H, W, 3), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{model_name}: encode expects dtype uint8 (0..255), got {image.dtype}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{model_name}: empty image of shape {image.shape}")
    return np.ascontiguousarray(image)


def default_click_selections(model: "PromptableSegmenter | type[PromptableSegmenter]") -> tuple[str, ...]:
    """The click-sequence selection a model is scored with when none is given: SAM's interactive
    convention ``first_best_of_3`` for a model with several outputs per prompt, else ``single``
    (the custom arm, a single-output decoder)."""
    return ("first_best_of_3",) if model.multimask_outputs > 1 else ("single",)


def check_model_modes(model: "PromptableSegmenter | type[PromptableSegmenter]", modes: Sequence[PromptMode],
                      multimask: Sequence[str] = ("single",), click_multimask: Sequence[str] = (),
                      name: str | None = None) -> None:
    """Raise ``ValueError`` unless ``model`` (an instance or its class) can run every mode and selection.

    ``name`` names the model in the message (default: the instance's ``name``, or the class name).

    Selections must be distinct values of :data:`ONE_SHOT_SELECTIONS` / :data:`CLICK_SELECTIONS`; a
    model with one output per prompt takes only ``single``; every mode must be in the model's
    ``supported_modes``.
    """
    bad = [p for p in multimask if p not in ONE_SHOT_SELECTIONS]
    bad += [p for p in click_multimask if p not in CLICK_SELECTIONS]
    if bad or len(set(multimask)) != len(multimask) or len(set(click_multimask)) != len(click_multimask):
        raise ValueError(f"multimask selections must be distinct values of {ONE_SHOT_SELECTIONS} (one-shot) and "
                         f"{CLICK_SELECTIONS} (clicks); got {list(multimask)} / {list(click_multimask)}")
    name = name or getattr(model, "name", None) or getattr(model, "__name__", "model")
    bad_modes = sorted({m.name for m in modes} - set(model.supported_modes))
    if bad_modes:
        raise ValueError(f"model {name!r} does not support prompt mode(s) {bad_modes}; "
                         f"it supports {sorted(model.supported_modes)}")
    # a click sequence also needs its start (click 0): e.g. clicks[start=extreme_points] needs extreme_points
    bad_starts = sorted(m.key for m in modes if not m.required_modes <= set(model.supported_modes))
    if bad_starts:
        raise ValueError(f"model {name!r} cannot start click sequence(s) {bad_starts}: each start needs its "
                         f"one-shot mode (samstudy.prompts.CLICK_START_MODES); it supports "
                         f"{sorted(model.supported_modes)}")
    clicking = any(m.is_interactive for m in modes)
    multi = set(multimask) - {"single"} | (set(click_multimask) - {"single"} if clicking else set())
    if model.multimask_outputs < 2 and multi:
        raise ValueError(f"model {name!r} has one output per prompt: multimask selection(s) {sorted(multi)} "
                         "are not available (use 'single')")
