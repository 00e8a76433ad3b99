"""HQ-SAM (package ``segment-anything-hq``, import ``segment_anything_hq``): SAM with a
high-quality output token.

Same input pipeline as SAM (``ResizeLongestSide(1024)``, SAM mean/std, zero padding). The image
encoder also returns its early-layer features (after the first global-attention block); the
decoder fuses them with the final embedding into ``hq_features`` ``(1, 32, 256, 256)`` =
``embedding_encoder(features) + compress_vit_feat(early)``. That map depends on the image only, so
it is computed once in :meth:`encode` and cached as ``Embedding.extra["hq_features"]`` (8 MiB).

Outputs, as ``MaskDecoderHQ.forward`` (``segment_anything_hq.SamPredictor``): the HQ token's logits
are *added* to SAM's selected mask logits (``hq_token_only=False``, the default), or replace them
(``hq_token_only=True``, a builder option). Single output: SAM token 0 + HQ. Multimask: the
official decoder keeps only the SAM token (1..3) with the highest predicted IoU, plus HQ; here all
three are returned (each + HQ) with their IoUs, so the ``best_of_3`` selection is exactly the
official multimask output. Low-res logits (the sums) feed back as ``mask_inputs``.

``runtime="onnxruntime"``: the image path (encoder + the ``hq_features`` fusion, :func:`hq_image_maps`)
and the decoder's five outputs are exported once to ONNX (:class:`.onnx_runtime.OrtSam`) and run by
ONNX Runtime on the CPU; the prompt encoder and the SAM + HQ sum stay in PyTorch. ViT-B random init,
one thread, a busy 2-core machine: encoder 12.6 s vs 24.7 s in PyTorch, decoder 0.15 s vs 0.32 s per
prompt; the one-time encoder export took 209 s (``bench/bench_onnx.py``).

Registry names ``sam_hq_vit_b/l/h``; ``random_init=True`` for benchmarks.
"""
from __future__ import annotations

import os
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from .base import Embedding
from .registry import register_model
from .release import build_released
from .sam import SamSegmenter

HQ_LABELS = {"vit_b": "HQ-SAM ViT-B", "vit_l": "HQ-SAM ViT-L", "vit_h": "HQ-SAM ViT-H"}


class HqSamSegmenter(SamSegmenter):
    """HQ-SAM behind :class:`PromptableSegmenter` (see the module docstring)."""

    def __init__(self, model: nn.Module, *, hq_token_only: bool = False, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.hq_token_only = bool(hq_token_only)
        if self.hq_token_only:  # a different output: keep its embeddings and rows apart by name and label
            self.label = f"{self.label} (HQ token only)"

    @property
    def cache_key(self) -> str:  # the cached hq_features do not depend on hq_token_only
        return super().cache_key

    def _build_ort(self) -> Any:
        """Sessions whose image path also returns ``hq_features`` and whose decoder takes it."""
        pe = self.model.prompt_encoder
        h, w = map(int, pe.image_embedding_size)
        hq_example = torch.zeros((1, int(pe.embed_dim) // 8, 4 * h, 4 * w))  # embedding_encoder's output
        return super()._build_ort(image_path=_HqImagePath(self.model), image_outputs=("features", "hq_features"),
                                  decoder_extra={"hq_features": hq_example})

    def _encode(self, image: np.ndarray) -> Embedding:
        original_hw = (int(image.shape[0]), int(image.shape[1]))
        x = self.preprocess(image).to(self.device)
        with torch.inference_mode():
            if self.runtime == "onnxruntime":
                features, hq = self._ort_sam().encode_maps(x)
            else:
                features, hq = hq_image_maps(self.model, x)
        return Embedding(features=features.float().cpu().clone().contiguous(), original_hw=original_hw,
                         input_hw=self.input_hw(original_hw), model_key=self.cache_key,
                         extra={"hq_features": hq.float().cpu().clone().contiguous()})

    def _decode_group(self, features: torch.Tensor, embedding: Embedding, group: list[tuple],
                      has_box: bool, masks: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Like SAM's, with the HQ logits added to (or replacing) each of the four SAM outputs."""
        if "hq_features" not in embedding.extra:
            raise ValueError(f"{self.name}: embedding has no 'hq_features' (not computed by an HQ-SAM encoder)")
        points, boxes = self._prompt_tensors(embedding, group, has_box)
        with torch.inference_mode():
            sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes,
                                                      masks=None if masks is None else masks.to(self.device))
            decoder = self._ort_sam() if self.runtime == "onnxruntime" else self.model.mask_decoder
            out, iou = decoder.predict_masks(
                image_embeddings=features, image_pe=self._dense_pe, sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense, hq_features=embedding.extra["hq_features"].to(self.device))
        return self._combine(out).contiguous(), iou

    def _combine(self, out: torch.Tensor) -> torch.Tensor:
        """Decoder output ``(N, 5, L, L)`` (SAM's 4 tokens, then HQ) -> ``(N, 4, L, L)``: each SAM
        output + the HQ logits, or the HQ logits alone (``hq_token_only``), as ``MaskDecoderHQ``."""
        sam_logits, hq_logits = out[:, :-1], out[:, -1:]
        return hq_logits.expand_as(sam_logits) if self.hq_token_only else sam_logits + hq_logits

    # the hq_features fusion runs in encode (cached): its layers are part of the image path
    embedding_parts: ClassVar[tuple[str, ...]] = ("mask_decoder.embedding_encoder", "mask_decoder.compress_vit_feat")

    def _train_image_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """As :meth:`_encode` with autograd: the final embedding and the fused ``hq_features``."""
        features, hq = hq_image_maps(self.model, x)
        return features, {"hq_features": hq.float()}

    def _train_masks(self, features: torch.Tensor, embeddings: list[Embedding], sparse: torch.Tensor,
                     dense: torch.Tensor, image_pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`_decode_group`: SAM's four outputs each + the HQ token's logits (or HQ only)."""
        if any("hq_features" not in e.extra for e in embeddings):
            raise ValueError(f"{self.name}: embedding has no 'hq_features' (not computed by an HQ-SAM encoder)")
        hq = torch.cat([e.extra["hq_features"] for e in embeddings]).to(self.device, torch.float32)
        out, iou = self.model.mask_decoder.predict_masks(
            image_embeddings=features, image_pe=image_pe, sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, hq_features=hq)
        return self._combine(out), iou


def hq_image_maps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Input ``(1, 3, S, S)`` -> ``(features (1, C, h, w), hq_features (1, C/8, 4h, 4w))``, as
    ``MaskDecoderHQ.forward`` computes them from the encoder's final and first-global-block maps."""
    dec = model.mask_decoder
    features, interm = model.image_encoder(x)
    early = interm[0].permute(0, 3, 1, 2)
    return features, dec.embedding_encoder(features) + dec.compress_vit_feat(early)


class _HqImagePath(nn.Module):
    """:func:`hq_image_maps` as a module (the ONNX export of the image path)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hq_image_maps(self.model, x)


def hq_sam_module(arch: str) -> Callable[[], nn.Module]:
    """Factory of the untrained official HQ-SAM ``arch`` (``vit_b``/``vit_l``/``vit_h``)."""
    if arch not in HQ_LABELS:
        raise ValueError(f"unknown HQ-SAM architecture {arch!r}; known: {sorted(HQ_LABELS)}")

    def build() -> nn.Module:
        from segment_anything_hq import sam_model_registry

        return sam_model_registry[arch](checkpoint=None).eval()
    return build


def _register(arch: str) -> None:
    name = f"sam_hq_{arch}"

    @register_model(name, HqSamSegmenter)
    def build(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
              random_init: bool = False, factory: Callable[[], nn.Module] | None = None,
              **kwargs: Any) -> HqSamSegmenter:
        return build_released(HqSamSegmenter, name, HQ_LABELS[arch], factory or hq_sam_module(arch),
                              checkpoint, device, random_init, **kwargs)
    build.__qualname__ = f"build_{name}"
    build.__doc__ = (f"{HQ_LABELS[arch]} from ``checkpoint`` (default ``data/weights/{name}.pth``, "
                     f"`make weights MODEL={name}`); ``hq_token_only=True`` for the HQ token alone.")


for _a in HQ_LABELS:
    _register(_a)
