"""Segment Anything (SAM) behind the :class:`PromptableSegmenter` interface.

``SamSegmenter`` wraps any module with SAM's three parts (``image_encoder``, ``prompt_encoder``,
``mask_decoder``): the official ``segment_anything.Sam`` (ViT-B/L/H), a small SAM built in tests, or
SAM-architecture relatives such as LiteMedSAM (:mod:`.litemedsam` subclasses it and only changes the
image preprocessing and the prompt scaling).

Pipeline, as ``segment_anything.SamPredictor`` (``set_image`` + ``predict_torch``):

- encode: ``ResizeLongestSide(img_size)`` (PIL bilinear, longest side -> ``img_size`` = 1024,
  other side ``int(s * 1024 / max(H, W) + 0.5)``), normalise with the model's pixel mean/std (on
  0..255 values), zero-pad bottom/right to ``img_size x img_size``, run the image encoder once.
- decode: boxes ``(N, 4)`` xyxy and points ``(N, K, 2)`` ``(x, y)`` in original pixels are mapped to
  the resized frame (``x * w/W``, ``y * h/H``), embedded by the prompt encoder (which adds 0.5 to
  reach pixel centres), decoded by the mask decoder; low-res logits ``(N, K, 256, 256)`` are
  upsampled to ``img_size``, cropped to the resized image, upsampled to ``(H, W)`` (bilinear), and
  thresholded at ``logits > 0`` (``Sam.mask_threshold``). ``multimask`` gives K = 3 else K = 1.

Builders registered here: ``sam_vit_b``, ``sam_vit_l``, ``sam_vit_h`` (need the official checkpoint)
and ``sam_vit_b_random`` (untrained ViT-B, for speed benchmarks only).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..compute import torch_settings
from .base import CheckpointError, Decoded, Embedding, PromptableSegmenter, check_rgb_uint8
from .download import SAM_CHECKPOINTS, ChecksumError, cached_file_sha256
from .registry import register_model

# How many prompts go through the mask decoder at once. The decoder repeats the (256, 64, 64)
# embedding per prompt and its image-side work is memory-bound, so on CPU batching does not pay:
# LiteMedSAM, 16 boxes, 1 thread, measured per prompt: chunk 1 -> 0.55 s, 4 -> 0.61 s, 16 -> 0.90 s
# (a busy 2-core machine). On a GPU large batches amortise kernel launches.
DEFAULT_DECODE_CHUNK = {"cpu": 1, "cuda": 64}
# How many (H, W) masks are upsampled at once in postprocessing (a 1024^2 float map is 4 MB).
_POSTPROCESS_CHUNK = 16
_N_DECODER_OUTPUTS = 4  # SAM's mask tokens: 1 single-output + 3 multimask
RUNTIMES = ("torch", "onnxruntime")

SAM_LABELS = {"vit_b": "SAM ViT-B", "vit_l": "SAM ViT-L", "vit_h": "SAM ViT-H"}
WEIGHTS_DIR_ENV = "SAMSTUDY_WEIGHTS_DIR"
DEFAULT_WEIGHTS_DIR = Path("data") / "weights"


# --------------------------------------------------------------------------------------- prompts
def _prompt_arrays(prompt: Any, index: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """``(box (4,) | None, points (K, 2) | None, labels (K,) | None)`` of one prompt, float64/int64."""
    box = getattr(prompt, "box", None)
    points = getattr(prompt, "points", None)
    labels = getattr(prompt, "labels", None)
    if box is not None:
        box = np.asarray(box, dtype=np.float64).reshape(-1)
        if box.shape != (4,) or not np.all(np.isfinite(box)):
            raise ValueError(f"prompt {index}: box must be 4 finite numbers x0, y0, x1, y1, got {box}")
    if points is not None:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        if labels is None:
            raise ValueError(f"prompt {index}: points given without labels (1 positive, 0 negative)")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.shape[0] != points.shape[0]:
            raise ValueError(f"prompt {index}: {points.shape[0]} points but {labels.shape[0]} labels")
        if len(points) == 0:
            points, labels = None, None
    return box, points, (labels if points is not None else None)


def _parse_prompts(model: str, prompts: Sequence[Any], has_mask_inputs: bool) -> list[tuple]:
    """:func:`_prompt_arrays` of every prompt; a prompt with neither box nor points is an error
    unless mask inputs are given (a mask-only prompt)."""
    parsed = [_prompt_arrays(p, i) for i, p in enumerate(prompts)]
    for i, (box, points, _) in enumerate(parsed):
        if box is None and points is None and not has_mask_inputs:
            raise ValueError(f"{model}: prompt {i} has neither a box nor points (and no mask input)")
    return parsed


def _group_prompts(parsed: list[tuple]) -> dict[tuple[bool, int], list[int]]:
    """Indices of prompts grouped by ``(has box, number of points)``; each group decodes as one batch."""
    groups: dict[tuple[bool, int], list[int]] = {}
    for i, (box, points, _) in enumerate(parsed):
        key = (box is not None, 0 if points is None else len(points))
        groups.setdefault(key, []).append(i)
    return groups


# -------------------------------------------------------------------------------- the segmenter
class SamSegmenter(PromptableSegmenter):
    """A SAM-architecture model (``image_encoder``, ``prompt_encoder``, ``mask_decoder``).

    model: e.g. ``segment_anything.modeling.Sam``; must expose ``image_encoder.img_size`` and, for
        the default preprocessing, ``pixel_mean``/``pixel_std`` buffers ``(3, 1, 1)``.
    channels_last: run the image encoder on a channels-last input (meant for conv-heavy encoders;
        LiteMedSAM encode, 1 thread, busy machine: 5.35 s -> 4.95 s best of 3, within the noise
        of other runs; not measured for SAM's ViT). Off by default.
    decode_chunk: prompts per mask-decoder call (default: 1 on CPU, 64 on CUDA; see below).
    num_threads: torch intra-op threads while encoding/decoding (set and restored around each call;
        ``None`` = leave torch's default, ``torch.get_num_threads()``). On a shared 2-core machine
        under load, 1 thread was much faster than 2 (OpenMP threads wait on each other): tiny-SAM
        decode test 0.24 s vs 8.5 s; LiteMedSAM encode 4.2 s vs 10.8 s (load average ~8).
    runtime: ``"torch"`` (default) or ``"onnxruntime"``: run the image encoder and mask decoder with
        ONNX Runtime (:mod:`.onnx_runtime`; about 2-3x faster on CPU here, outputs within 1e-4 of
        PyTorch; the embedding cache keeps the two runtimes apart). ``onnx_dir``: where the
        exported ONNX files are kept (default :func:`.onnx_runtime.default_onnx_dir`).
    """

    preprocess_id = "sam-rls1024pil-meanstd-pad"

    def __init__(self, model: nn.Module, *, name: str, label: str, checkpoint_sha256: str,
                 device: str | torch.device = "cpu", channels_last: bool = False,
                 decode_chunk: int | None = None, num_threads: int | None = None, runtime: str = "torch",
                 onnx_dir: str | os.PathLike | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"{name}: runtime must be one of {RUNTIMES}, got {runtime!r}")
        for part in ("image_encoder", "prompt_encoder", "mask_decoder"):
            if not hasattr(model, part):
                raise TypeError(f"{name}: model has no '{part}'; expected a SAM-architecture module")
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.name, self.label, self.checkpoint_sha256 = name, label, checkpoint_sha256
        self.channels_last = bool(channels_last)
        self.decode_chunk = int(decode_chunk or DEFAULT_DECODE_CHUNK.get(self.device.type, 8))
        self.num_threads = num_threads
        self.img_size = self.model_img_size(model)
        self.mask_threshold = float(getattr(model, "mask_threshold", 0.0))
        if self.channels_last:
            self.model.image_encoder.to(memory_format=torch.channels_last)
        self.runtime = runtime
        self.onnx_dir = onnx_dir
        with torch.inference_mode():  # depends on the weights only: computed once, not per decoder call
            self._dense_pe = self.model.prompt_encoder.get_dense_pe()
        self._ort: Any = None  # OrtSam, built on first use (exporting takes seconds)

    @property
    def cache_key(self) -> str:
        key = super().cache_key
        return key if self.runtime == "torch" else f"{key}-{self.runtime}"

    def _ort_sam(self) -> Any:
        if self._ort is None:
            if self.device.type != "cpu":
                raise ValueError(f"{self.name}: runtime 'onnxruntime' runs on the CPU; use runtime 'torch' on {self.device}")
            self._ort = self._build_ort()
        return self._ort

    def _build_ort(self, **options: Any) -> Any:
        """The :class:`.onnx_runtime.OrtSam` of this model, keyed by the torch runtime's identity;
        ``options`` go to ``OrtSam`` (HQ-SAM exports its extra image map too)."""
        from .onnx_runtime import OrtSam

        return OrtSam(self.model, super().cache_key, self.encoder_input_size(), self.onnx_dir, self.num_threads,
                      **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, label={self.label!r}, sha256={self.checkpoint_sha256[:12]})"

    # ---- model-specific hooks (LiteMedSAM, EfficientViT-SAM... override these)
    def encoder_input_size(self) -> int:
        """Side of the square image-encoder input (:meth:`preprocess`'s output; SAM: ``img_size``)."""
        return self.img_size

    @staticmethod
    def model_img_size(model: nn.Module) -> int:
        """Side of the square frame prompts and low-res logits refer to (SAM: ``image_encoder.img_size``)."""
        return int(model.image_encoder.img_size)

    def input_hw(self, original_hw: tuple[int, int]) -> tuple[int, int]:
        """``(h, w)`` after resizing the longest side to ``img_size`` (round half up, as SAM)."""
        H, W = original_hw
        scale = self.img_size / max(H, W)
        return int(H * scale + 0.5), int(W * scale + 0.5)

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``uint8 (H, W, 3)`` -> float32 ``(1, 3, img_size, img_size)`` model input (on CPU)."""
        from segment_anything.utils.transforms import ResizeLongestSide

        resized = ResizeLongestSide(self.img_size).apply_image(image)  # uint8 (h, w, 3), PIL bilinear
        x = torch.from_numpy(resized).permute(2, 0, 1).float()[None]
        mean = self.model.pixel_mean.detach().float().cpu().view(1, 3, 1, 1)
        std = self.model.pixel_std.detach().float().cpu().view(1, 3, 1, 1)
        x = (x - mean) / std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def to_input_frame(self, xy: np.ndarray, original_hw: tuple[int, int],
                       input_hw: tuple[int, int]) -> np.ndarray:
        """Map ``(..., 2)`` ``(x, y)`` original pixels to the resized frame (``ResizeLongestSide.apply_coords``)."""
        (H, W), (h, w) = original_hw, input_hw
        out = np.array(xy, dtype=np.float64, copy=True)
        out[..., 0] *= w / W
        out[..., 1] *= h / H
        return out

    # ---- encode
    def encode(self, image: np.ndarray) -> Embedding:
        """Encode an RGB ``uint8 (H, W, 3)`` image into features ``(1, C, h', w')`` float32 on CPU."""
        image = check_rgb_uint8(image, self.name)
        with torch_settings(self.num_threads):
            return self._encode(image)

    def _encode(self, image: np.ndarray) -> Embedding:
        original_hw = (int(image.shape[0]), int(image.shape[1]))
        x = self.preprocess(image).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            features = self._ort_sam().encode(x) if self.runtime == "onnxruntime" else self.model.image_encoder(x)
        # clone outside inference mode: the cached tensor stays usable in autograd (decoder fine-tuning)
        features = features.float().cpu().clone().contiguous()
        return Embedding(features=features, original_hw=original_hw, input_hw=self.input_hw(original_hw),
                         model_key=self.cache_key)

    # ---- decode
    def _check_embedding(self, embedding: Embedding) -> None:
        if embedding.model_key is not None and embedding.model_key != self.cache_key:
            raise ValueError(f"{self.name}: embedding was computed by {embedding.model_key!r}, "
                             f"not by this model ({self.cache_key!r})")
        pe = self.model.prompt_encoder
        expected = (1, int(pe.embed_dim), *map(int, pe.image_embedding_size))
        if tuple(embedding.features.shape) != expected:
            raise ValueError(f"{self.name}: embedding features have shape {tuple(embedding.features.shape)}, "
                             f"this model expects {expected} (embedding from another model or image size?)")

    def _check_mask_inputs(self, mask_inputs: np.ndarray | None, n: int) -> torch.Tensor | None:
        if mask_inputs is None:
            return None
        expected = (n, 1, *map(int, self.model.prompt_encoder.mask_input_size))
        m = np.asarray(mask_inputs, dtype=np.float32)
        if m.shape != expected:
            raise ValueError(f"{self.name}: mask_inputs must have shape {expected} (N, 1, low-res logits), got {m.shape}")
        return torch.from_numpy(np.ascontiguousarray(m))

    def decode(self, embedding: Embedding, prompts: Sequence[Any], multimask: bool = False,
               mask_inputs: np.ndarray | None = None) -> Decoded:
        """Decode ``N`` prompts on one image; see :meth:`PromptableSegmenter.decode`.

        Returns masks bool ``(N, K, H, W)``, iou_pred float32 ``(N, K)``, low_res_logits float32
        ``(N, K, 4*h', 4*w')`` (``(256, 256)`` for SAM and LiteMedSAM), K = 3 if multimask else 1.
        """
        return self.decode_multimask(embedding, prompts, [multimask], mask_inputs)[0]

    def decode_multimask(self, embedding: Embedding, prompts: Sequence[Any], multimask: Sequence[bool],
                        mask_inputs: np.ndarray | None = None) -> list[Decoded]:
        """One mask-decoder pass for several multimask settings (see the base class).

        SAM's decoder always predicts four masks: token 0 is the single-output mask, tokens 1..3 the
        multimask ones; ``multimask_output`` only chooses which are returned
        (``MaskDecoder.forward``). So both selections cost one pass and equal separate calls exactly.
        """
        self._check_embedding(embedding)
        with torch_settings(self.num_threads):
            low, iou = self._decode_all(embedding, prompts, mask_inputs)
            out = []
            for m in multimask:
                lo, io = (low[:, 1:_N_DECODER_OUTPUTS], iou[:, 1:_N_DECODER_OUTPUTS]) if m else self.single_output(low, iou)
                lo = lo.contiguous()
                masks = self.postprocess(lo, embedding.input_hw, embedding.original_hw)
                out.append(Decoded(masks=masks, iou_pred=io.numpy().copy(), low_res_logits=lo.numpy()))
            return out

    def _decode_all(self, embedding: Embedding, prompts: Sequence[Any],
                    mask_inputs: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """All four decoder outputs: low-res logits ``(N, 4, l, l)`` and predicted IoU ``(N, 4)``."""
        n = len(prompts)
        masks_t = self._check_mask_inputs(mask_inputs, n)
        parsed = _parse_prompts(self.name, prompts, masks_t is not None)
        low_hw = tuple(4 * int(s) for s in self.model.prompt_encoder.image_embedding_size)
        low = torch.zeros((n, _N_DECODER_OUTPUTS, *low_hw), dtype=torch.float32)
        iou = torch.zeros((n, _N_DECODER_OUTPUTS), dtype=torch.float32)
        features = embedding.features.to(self.device, dtype=torch.float32)
        for (has_box, _), idx in _group_prompts(parsed).items():
            for start in range(0, len(idx), self.decode_chunk):
                chunk = idx[start:start + self.decode_chunk]
                lo, io = self._decode_group(features, embedding, [parsed[i] for i in chunk], has_box,
                                            None if masks_t is None else masks_t[chunk])
                low[chunk], iou[chunk] = lo.float().cpu(), io.float().cpu()
        return low, iou

    def _decode_group(self, features: torch.Tensor, embedding: Embedding, group: list[tuple],
                      has_box: bool, masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask-decoder call for prompts with the same box presence and point count (all 4 outputs)."""
        points, boxes = self._prompt_tensors(embedding, group, has_box)
        if masks is not None:
            masks = masks.to(self.device)
        pe = self.model.prompt_encoder
        with torch.inference_mode():
            sparse, dense = pe(points=points, boxes=boxes, masks=masks)
            decoder = self._ort_sam() if self.runtime == "onnxruntime" else self.model.mask_decoder
            low, iou = decoder.predict_masks(
                image_embeddings=features, image_pe=self._dense_pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense)
        return low, iou

    def _prompt_tensors(self, embedding: Embedding | Sequence[Embedding], group: list[tuple],
                        has_box: bool) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """Points ``((n, K, 2) float32, (n, K) int64)`` and boxes ``(n, 4)`` of a group, in the input
        frame of ``embedding``'s image (or of each prompt's own image: one embedding per prompt)."""
        embs = [embedding] * len(group) if isinstance(embedding, Embedding) else list(embedding)
        frames = [(e.original_hw, e.input_hw) for e in embs]
        points = None
        if group[0][1] is not None:
            coords = np.stack([self.to_input_frame(p, *f) for (_, p, _), f in zip(group, frames)])  # (n, K, 2)
            labels = np.stack([lab for _, _, lab in group])  # (n, K)
            points = (torch.as_tensor(coords, dtype=torch.float32, device=self.device),
                      torch.as_tensor(labels, dtype=torch.int64, device=self.device))
        boxes = None
        if has_box:
            b = np.stack([self.to_input_frame(b.reshape(2, 2), *f).reshape(4) for (b, _, _), f in zip(group, frames)])
            boxes = torch.as_tensor(b, dtype=torch.float32, device=self.device)  # (n, 4)
        return points, boxes

    # ---- fine-tuning (samstudy.finetune): the decoder pass with autograd
    finetunable: ClassVar[bool] = True
    trainable_parts: ClassVar[tuple[str, ...]] = ("prompt_encoder", "mask_decoder")
    # state-dict names inside the trainable parts that only the image path uses: their output is in
    # the cached embedding, so they stay frozen and are hashed with the image encoder
    embedding_parts: ClassVar[tuple[str, ...]] = ()

    def encode_train(self, image: np.ndarray) -> Embedding:
        """:meth:`encode` **with autograd** (``samstudy.finetune``'s encoder LoRA): the same
        preprocessing, then the torch image encoder whatever ``runtime`` is (no inference mode, no
        cache). Returns features float32 ``(1, C, h', w')`` on ``self.device`` (and ``extra`` as
        :meth:`encode`, e.g. HQ-SAM's), ``model_key=None``: an encoder being trained is not the one
        this model's cache key names. Under ``torch.no_grad`` in eval mode it equals :meth:`encode`
        with the torch runtime (tested to 1e-5).
        """
        image = check_rgb_uint8(image, self.name)
        original_hw = (int(image.shape[0]), int(image.shape[1]))
        x = self.preprocess(image).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        features, extra = self._train_image_maps(x)
        return Embedding(features=features.float(), original_hw=original_hw, input_hw=self.input_hw(original_hw),
                         model_key=None, extra=extra)

    def _train_image_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The image path with autograd: input ``(1, 3, S, S)`` -> ``(features, extra)`` as cached by encode."""
        return self.model.image_encoder(x), {}

    def low_res_frame(self, original_hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        """``(L, (h, w))``: the low-res logits are ``(L, L)`` and the image covers their top-left
        ``(h, w)`` (the resized input frame scaled by ``L / img_size``; zero padding beyond)."""
        L = 4 * int(self.model.prompt_encoder.image_embedding_size[0])
        h, w = self.input_hw(original_hw)
        scale = L / self.img_size
        return L, (max(1, int(round(h * scale))), max(1, int(round(w * scale))))

    def low_res_masks(self, low_res: torch.Tensor, embedding: Embedding) -> np.ndarray:
        """Low-res logits ``(N, K, L, L)`` of ``embedding``'s image -> bool masks ``(N, K, H, W)``."""
        return self.postprocess(low_res, embedding.input_hw, embedding.original_hw)

    def single_output(self, low: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The single output of the four: token 0, ``(N, 1, l, l)`` and ``(N, 1)``."""
        return low[:, :1], iou[:, :1]

    def decode_train(self, embeddings: Embedding | Sequence[Embedding], prompts: Sequence[Any]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder **with autograd** (no inference mode, no mask input, torch
        runtime): low-res logits float32 ``(N, 4, L, L)`` and predicted IoU ``(N, 4)`` for N prompts,
        token 0 = the single output, 1..3 = the multimask outputs (as :meth:`decode_multimask`).

        embeddings: one image's embedding for every prompt, or one per prompt (several images in one
        decoder call; only decoders that take one image embedding per prompt accept it, see
        ``samstudy.finetune.batches_across_images``). Prompts must share box presence and point
        count. In eval mode the outputs equal :meth:`decode`'s (tested to 1e-5).
        """
        single = isinstance(embeddings, Embedding)
        embs = [embeddings] if single else list(embeddings)
        parsed = [_prompt_arrays(p, i) for i, p in enumerate(prompts)]
        points, boxes = self._prompt_tensors(embeddings, parsed, parsed[0][0] is not None)
        pe = self.model.prompt_encoder
        sparse, dense = pe(points=points, boxes=boxes, masks=None)
        feats = torch.cat([e.features for e in embs]).to(self.device, torch.float32)
        return self._train_masks(feats, embs, sparse, dense, pe.get_dense_pe())

    def _train_masks(self, features: torch.Tensor, embeddings: list[Embedding], sparse: torch.Tensor,
                     dense: torch.Tensor, image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask decoder's four outputs with autograd (``embeddings``: one, or one per prompt)."""
        return self.model.mask_decoder.predict_masks(image_embeddings=features, image_pe=image_pe,
                                                     sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)

    def postprocess(self, low_res: torch.Tensor, input_hw: tuple[int, int],
                    original_hw: tuple[int, int]) -> np.ndarray:
        """Low-res logits ``(N, K, l, l)`` -> bool masks ``(N, K, H, W)`` (as ``Sam.postprocess_masks``)."""
        n, k = low_res.shape[:2]
        (h, w), (H, W) = input_hw, original_hw
        flat = low_res.reshape(n * k, 1, *low_res.shape[-2:])
        out = np.zeros((n * k, H, W), dtype=bool)
        with torch.inference_mode():
            for s in range(0, n * k, _POSTPROCESS_CHUNK):
                x = flat[s:s + _POSTPROCESS_CHUNK].to(self.device)
                if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
                    x = F.interpolate(x, (self.img_size, self.img_size), mode="bilinear", align_corners=False)
                x = F.interpolate(x[..., :h, :w], (H, W), mode="bilinear", align_corners=False)
                out[s:s + _POSTPROCESS_CHUNK] = (x[:, 0] > self.mask_threshold).cpu().numpy()
        return out.reshape(n, k, H, W)


# ----------------------------------------------------------------------- architectures + loading
@dataclass(frozen=True)
class SamArchitecture:
    """Hyper-parameters of a SAM (``segment_anything.build_sam._build_sam`` with the sizes exposed).

    The official models use ``img_size=1024, patch_size=16`` (64x64 embedding), prompt dim 256;
    tests build tiny ones (e.g. ``img_size=64, encoder_embed_dim=32, depth=1``).
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256


def build_sam_module(arch: str | SamArchitecture) -> nn.Module:
    """An untrained ``segment_anything.modeling.Sam``: ``"vit_b"/"vit_l"/"vit_h"`` via
    ``segment_anything.sam_model_registry``, or any :class:`SamArchitecture`."""
    from segment_anything import sam_model_registry
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if isinstance(arch, str):
        if arch not in SAM_LABELS:
            raise ValueError(f"unknown SAM architecture {arch!r}; known: {sorted(SAM_LABELS)}")
        return sam_model_registry[arch](checkpoint=None)
    emb = arch.img_size // arch.patch_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth, embed_dim=arch.encoder_embed_dim, img_size=arch.img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.encoder_num_heads,
            patch_size=arch.patch_size, qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=tuple(arch.encoder_global_attn_indexes), window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim),
        prompt_encoder=PromptEncoder(embed_dim=arch.prompt_embed_dim, image_embedding_size=(emb, emb),
                                     input_image_size=(arch.img_size, arch.img_size),
                                     mask_in_chans=arch.mask_in_chans),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=arch.decoder_depth, embedding_dim=arch.prompt_embed_dim,
                                          mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_num_heads),
            transformer_dim=arch.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=arch.iou_head_hidden_dim),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Load a ``torch.save``d state dict (or ``{"model"|"state_dict": state}``) on CPU.

    Raises ``FileNotFoundError`` when absent and :class:`CheckpointError` naming the file when it
    is truncated, not a PyTorch file, or not a mapping of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: checkpoint file not found: {path}")
    try:
        try:  # memory-map zip checkpoints: ViT-H is 2.5 GB
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, ValueError) as err:
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure of the unpickler means the file is unusable (IndexError seen)
        raise CheckpointError(
            f"{what}: cannot read checkpoint {path} ({path.stat().st_size} bytes): {type(err).__name__}: {err}. "
            "The file is probably truncated or not a PyTorch checkpoint; download it again.") from err
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{what}: {path} does not contain a state dict (a mapping of names to tensors)")
    return dict(obj)


def load_state_into(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike, what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with an error naming the file and the key mismatch."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        def show(keys: list[str]) -> str:
            return f"{len(keys)} (e.g. {keys[:3]})" if keys else "0"
        detail = ", ".join(f"wrong shape {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                           for k in wrong[:2])
        raise CheckpointError(
            f"{what}: checkpoint {path} does not fit the model: missing keys {show(missing)}, "
            f"unexpected keys {show(unexpected)}, wrong shapes {len(wrong)}{'; ' + detail if detail else ''}. "
            "Is it a checkpoint of another architecture?")
    module.load_state_dict(state, strict=True)


def load_sam(checkpoint: str | os.PathLike, arch: str | SamArchitecture) -> nn.Module:
    """Build the SAM ``arch`` and load ``checkpoint`` into it (the path every SAM builder takes)."""
    what = f"SAM {arch if isinstance(arch, str) else 'custom architecture'}"
    state = read_state_dict(checkpoint, what)
    sam = build_sam_module(arch)
    load_state_into(sam, state, checkpoint, what)
    return sam.eval()


def sam_segmenter_from_checkpoint(checkpoint: str | os.PathLike, arch: str | SamArchitecture, *, name: str,
                                  label: str | None = None, device: str | torch.device = "cpu",
                                  verify: bool = True, **kwargs: Any) -> SamSegmenter:
    """A :class:`SamSegmenter` for ``checkpoint`` of architecture ``arch``.

    For an official release file name (``sam_vit_b_01ec64.pth``...) with ``verify=True`` the file's
    SHA-256 must equal the published one (:class:`ChecksumError` otherwise); other files are
    accepted (fine-tuned weights) and identified by their SHA-256 and file name in the label.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(_missing_message(name, arch, path))
    sha = cached_file_sha256(path)
    official = _official_entry(path.name)
    if verify and official is not None and sha != official[1]:
        raise ChecksumError(f"{path}: SHA-256 {sha} differs from the published {official[1]} of "
                            f"{path.name}; the file is corrupt or incomplete, download it again")
    if label is None:
        base = SAM_LABELS.get(arch, "SAM (custom architecture)") if isinstance(arch, str) else "SAM (custom architecture)"
        known = official is not None and sha == official[1]
        label = base if known else f"{base} (checkpoint {path.name})"
    return SamSegmenter(load_sam(path, arch), name=name, label=label, checkpoint_sha256=sha, device=device, **kwargs)


def _official_entry(filename: str) -> tuple[str, str, int] | None:
    for url, sha, size in SAM_CHECKPOINTS.values():
        if url.rsplit("/", 1)[-1] == filename:
            return url, sha, size
    return None


def _missing_message(name: str, arch: Any, path: Path | None) -> str:
    where = f"not found at {path}" if path is not None else "no checkpoint given"
    if isinstance(arch, str) and arch in SAM_CHECKPOINTS:
        url, sha, size = SAM_CHECKPOINTS[arch]
        return (f"{name}: SAM checkpoint {where}. Download it with `samstudy download sam --model {arch}` "
                f"(or `make weights MODEL={arch}`), or pass checkpoint=<path>. Offline: fetch {url} "
                f"({size} bytes, sha256 {sha}) on a machine with internet and place it at "
                f"{path or _default_checkpoint_path(arch)}.")
    return f"{name}: checkpoint {where}"


def _default_checkpoint_path(arch: str) -> Path:
    """``$SAMSTUDY_WEIGHTS_DIR/<official file name>`` (default ``data/weights/``)."""
    folder = Path(os.environ.get(WEIGHTS_DIR_ENV, DEFAULT_WEIGHTS_DIR))
    return folder / SAM_CHECKPOINTS[arch][0].rsplit("/", 1)[-1]


def _build_official(arch: str, checkpoint: str | os.PathLike | None, device: str | torch.device,
                    random_init: bool = False, **kwargs: Any) -> SamSegmenter:
    name = f"sam_{arch}"
    if random_init:
        if checkpoint is not None:
            raise ValueError(f"{name}: give either checkpoint or random_init=True, not both")
        with torch.random.fork_rng(devices=[]):  # same weights on every run, global RNG untouched
            torch.manual_seed(0)
            module = build_sam_module(arch)
        return SamSegmenter(module, name=f"{name}_random",
                            label=f"{SAM_LABELS[arch]} (random init, benchmark only)",
                            checkpoint_sha256="random-init", device=device, **kwargs)
    path = Path(checkpoint).expanduser() if checkpoint is not None else _default_checkpoint_path(arch)
    if not path.is_file():
        raise FileNotFoundError(_missing_message(name, arch, path))
    return sam_segmenter_from_checkpoint(path, arch, name=name, device=device, **kwargs)


@register_model("sam_vit_b", SamSegmenter)
def build_sam_vit_b(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                    **kwargs: Any) -> SamSegmenter:
    """SAM ViT-B from ``checkpoint`` (default ``data/weights/sam_vit_b_01ec64.pth``); ``random_init=True``
    gives the untrained benchmark model."""
    return _build_official("vit_b", checkpoint, device, **kwargs)


@register_model("sam_vit_l", SamSegmenter)
def build_sam_vit_l(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                    **kwargs: Any) -> SamSegmenter:
    """SAM ViT-L from ``checkpoint`` (default ``data/weights/sam_vit_l_0b3195.pth``)."""
    return _build_official("vit_l", checkpoint, device, **kwargs)


@register_model("sam_vit_h", SamSegmenter)
def build_sam_vit_h(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                    **kwargs: Any) -> SamSegmenter:
    """SAM ViT-H from ``checkpoint`` (default ``data/weights/sam_vit_h_4b8939.pth``)."""
    return _build_official("vit_h", checkpoint, device, **kwargs)


@register_model("sam_vit_b_random", SamSegmenter)
def build_sam_vit_b_random(checkpoint: None = None, device: str | torch.device = "cpu",
                           **kwargs: Any) -> SamSegmenter:
    """Untrained SAM ViT-B (seed 0) for timing benchmarks; labelled as such, sha256 ``random-init``."""
    return _build_official("vit_b", checkpoint, device, random_init=True, **kwargs)
