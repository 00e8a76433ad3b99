"""SAM 2.1 (package ``sam2``, Meta's code; built without its CUDA extension) behind the
:class:`PromptableSegmenter` interface, matching ``sam2.sam2_image_predictor.SAM2ImagePredictor``.

Pipeline, as ``SAM2ImagePredictor`` (``set_image`` + ``predict``):

- encode: the model's own ``SAM2Transforms``: ``ToTensor`` (/255), resize to the *square*
  ``image_size x image_size`` (1024; torchvision bilinear with antialias, aspect ratio not kept, no
  padding), ImageNet mean/std. Hiera + FPN neck give three maps; the decoder's 1x1 convs
  (``conv_s0``, ``conv_s1``) are applied inside ``forward_image``, and ``no_mem_embed`` is added to
  the lowest-resolution map (an image has no memory). Cached: ``features`` = ``image_embed``
  ``(1, 256, 64, 64)`` and ``extra`` = ``feat_s0 (1, 32, 256, 256)``, ``feat_s1 (1, 64, 128, 128)``
  (16 MiB per image in float32).
- decode: points ``(x, y)`` and boxes xyxy in original pixels are normalised by the original
  ``(W, H)`` and scaled to ``image_size`` (``SAM2Transforms.transform_coords``); a box becomes two
  points with labels 2, 3 placed *before* the prompt's points, and the prompt encoder always adds
  its padding point (``boxes=None``). The mask decoder predicts four masks (token 0 single-output,
  1..3 multimask). Multimask returns tokens 1..3. The single output is token 0 unless its stability
  score (IoU of ``logits > 0.05`` and ``logits > -0.05``) is below 0.98: then it is the multimask
  output with the highest predicted IoU (``build_sam2``'s default
  ``dynamic_multimask_via_stability``; ``MaskDecoder._dynamic_multimask_via_stability``). Masks =
  bilinear upsampling of the low-res logits ``(256, 256)`` straight to ``(H, W)``, ``> 0``; the
  returned low-res logits are clamped to ``[-32, 32]`` as the predictor's, and fed back as
  ``mask_inputs`` for the next click.

Registry names ``sam2.1_hiera_t``, ``_s``, ``_b+``, ``_l`` (the package's hydra configs
``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml``); checkpoints in the official format
``{"model": state_dict}`` (`make weights MODEL=sam2.1_hiera_t`); ``random_init=True`` for benchmarks.

``runtime="onnxruntime"``: the image path (:func:`image_maps`) and the mask decoder's four outputs
are exported once to ONNX (:mod:`.onnx_runtime`) and run by ONNX Runtime on the CPU; the prompt
encoder, the single-output selection and the upsampling stay in PyTorch. Hiera-T random init, one
thread, a busy 2-core machine: encoder 3.9 s vs 4.2 s in PyTorch, decoder 0.095 s vs 0.16 s per
prompt; outputs within 4e-6 of PyTorch.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..compute import torch_settings
from .base import Decoded, Embedding, PromptableSegmenter, check_rgb_uint8
from .registry import register_model
from .release import build_released
from .sam import DEFAULT_DECODE_CHUNK, _group_prompts, _parse_prompts, _prompt_arrays

# registry name -> (hydra config inside the sam2 package, report label)
SAM2_VARIANTS: dict[str, tuple[str, str]] = {
    "sam2.1_hiera_t": ("configs/sam2.1/sam2.1_hiera_t.yaml", "SAM 2.1 Hiera-T"),
    "sam2.1_hiera_s": ("configs/sam2.1/sam2.1_hiera_s.yaml", "SAM 2.1 Hiera-S"),
    "sam2.1_hiera_b+": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "SAM 2.1 Hiera-B+"),
    "sam2.1_hiera_l": ("configs/sam2.1/sam2.1_hiera_l.yaml", "SAM 2.1 Hiera-L"),
}
HIGH_RES_KEYS = ("feat_s0", "feat_s1")  # Embedding.extra: stride-4 and stride-8 maps (after conv_s0/conv_s1)
LOW_RES_CLAMP = 32.0  # SAM2ImagePredictor clamps the returned low-res logits (not the masks) to +-32
_POSTPROCESS_CHUNK = 16
RUNTIMES = ("torch", "onnxruntime")


def image_maps(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``SAM2ImagePredictor.set_image`` keeps for input ``x (1, 3, S, S)``: ``(feat_s0, feat_s1,
    image_embed)``, finest first, each ``(1, C, h, w)`` (``no_mem_embed`` added to the last)."""
    _, feats, _, sizes = model._prepare_backbone_features(model.forward_image(x))
    if model.directly_add_no_mem_embed:
        feats[-1] = feats[-1] + model.no_mem_embed
    # each (h*w, 1, C) -> (1, C, h, w)
    s0, s1, embed = (f.permute(1, 2, 0).reshape(1, -1, *hw) for f, hw in zip(feats, sizes))
    return s0, s1, embed


class _ImageMaps(nn.Module):
    """:func:`image_maps` as a module (for the ONNX export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return image_maps(self.model, x)


class _DecoderAllOutputs(nn.Module):
    """``MaskDecoder.predict_masks`` for one prompt: low-res logits ``(1, 4, l, l)``, IoU ``(1, 4)``."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, embed, image_pe, sparse, dense, feat_s0, feat_s1) -> tuple[torch.Tensor, torch.Tensor]:
        low, iou, _, _ = self.decoder.predict_masks(embed, image_pe, sparse, dense, repeat_image=True,
                                                    high_res_features=[feat_s0, feat_s1])
        return low, iou


class Sam2Segmenter(PromptableSegmenter):
    """A ``sam2.modeling.sam2_base.SAM2Base`` as a promptable image segmenter (see the module docstring).

    decode_chunk: prompts per mask-decoder call (default 1 on CPU, 64 on CUDA, as SAM).
    num_threads: torch intra-op threads while encoding/decoding (``None``: torch's default).
    runtime: ``"torch"`` or ``"onnxruntime"`` (CPU; see the module docstring); ``onnx_dir``: where
        the exported files are kept (default :func:`.onnx_runtime.default_onnx_dir`).
    """

    def __init__(self, model: nn.Module, *, name: str, label: str, checkpoint_sha256: str,
                 device: str | torch.device = "cpu", decode_chunk: int | None = None,
                 num_threads: int | None = None, runtime: str = "torch",
                 onnx_dir: str | os.PathLike | None = None) -> None:
        if runtime not in RUNTIMES:
            raise ValueError(f"{name}: runtime must be one of {RUNTIMES}, got {runtime!r}")
        if runtime == "onnxruntime" and torch.device(device).type != "cpu":
            raise ValueError(f"{name}: runtime 'onnxruntime' runs on the CPU; use runtime 'torch' on {device}")
        for part in ("image_encoder", "sam_prompt_encoder", "sam_mask_decoder", "forward_image"):
            if not hasattr(model, part):
                raise TypeError(f"{name}: model has no '{part}'; expected a sam2 SAM2Base module")
        if not model.use_high_res_features_in_sam:
            raise TypeError(f"{name}: a SAM2Base without high-resolution features in its decoder is not supported")
        from sam2.utils.transforms import SAM2Transforms

        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.name, self.label, self.checkpoint_sha256 = name, label, checkpoint_sha256
        self.decode_chunk = int(decode_chunk or DEFAULT_DECODE_CHUNK.get(self.device.type, 8))
        self.num_threads = num_threads
        self.runtime, self.onnx_dir = runtime, onnx_dir
        self._ort: tuple[Any, Any] | None = None  # (encoder, decoder) sessions, made on first use
        self.img_size = int(model.image_size)
        self.mask_threshold = 0.0  # SAM2ImagePredictor's default
        self.preprocess_id = f"sam2-sq{self.img_size}-tvbilinear-aa-imagenet"
        with warnings.catch_warnings():  # SAM2Transforms scripts its Resize/Normalize (a FutureWarning of torch.jit)
            warnings.simplefilter("ignore", FutureWarning)
            self._transforms = SAM2Transforms(resolution=self.img_size, mask_threshold=self.mask_threshold)
        with torch.inference_mode():  # depends on the weights only
            self._dense_pe = self.model.sam_prompt_encoder.get_dense_pe()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, label={self.label!r}, sha256={self.checkpoint_sha256[:12]})"

    @property
    def cache_key(self) -> str:
        key = super().cache_key
        return key if self.runtime == "torch" else f"{key}-{self.runtime}"

    def _sessions(self) -> tuple[Any, Any]:
        """ONNX Runtime ``(encoder, decoder)``, exported on first use under the torch runtime's key."""
        if self._ort is None:
            from pathlib import Path

            from .onnx_runtime import cpu_session, default_onnx_dir, export_once, onnx_paths

            enc_path, dec_path = onnx_paths(super().cache_key, Path(self.onnx_dir or default_onnx_dir()))
            x = torch.zeros((1, 3, self.img_size, self.img_size))
            export_once(_ImageMaps(self.model), (x,), enc_path, ["image"], ["feat_s0", "feat_s1", "embed"])
            if not dec_path.is_file():
                pe = self.model.sam_prompt_encoder
                with torch.inference_mode():
                    s0, s1, embed = image_maps(self.model, x)
                    box = (torch.tensor([[[1.0, 1.0], [8.0, 8.0]]]), torch.tensor([[2, 3]], dtype=torch.int32))
                    sparse, dense = pe(points=box, boxes=None, masks=None)
                export_once(_DecoderAllOutputs(self.model.sam_mask_decoder), (embed, self._dense_pe, sparse, dense, s0, s1),
                            dec_path, ["embed", "image_pe", "sparse", "dense", "feat_s0", "feat_s1"],
                            ["low_res_logits", "iou_pred"], {"sparse": {1: "tokens"}})
            self._ort = cpu_session(enc_path, self.num_threads), cpu_session(dec_path, self.num_threads)
        return self._ort

    # ---- encode
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``uint8 (H, W, 3)`` -> float32 ``(1, 3, img_size, img_size)`` (``SAM2Transforms``, on CPU)."""
        if not image.flags.writeable:  # torch warns on read-only arrays (the engine's images may be)
            image = image.copy()
        return self._transforms(image)[None]

    def encode(self, image: np.ndarray) -> Embedding:
        """Encode an RGB ``uint8 (H, W, 3)`` image: ``image_embed`` + the two high-res maps, float32 on CPU."""
        image = check_rgb_uint8(image, self.name)
        with torch_settings(self.num_threads):
            original_hw = (int(image.shape[0]), int(image.shape[1]))
            x = self.preprocess(image).to(self.device)
            if self.runtime == "onnxruntime":
                maps = [torch.from_numpy(a) for a in self._sessions()[0].run(None, {"image": x.numpy()})]
            else:
                with torch.inference_mode():
                    maps = image_maps(self.model, x)
            # clone outside inference mode: the cached tensors stay usable in autograd
            out = [t.float().cpu().clone().contiguous() for t in maps]
        return Embedding(features=out[-1], original_hw=original_hw, input_hw=(self.img_size, self.img_size),
                         model_key=self.cache_key, extra=dict(zip(HIGH_RES_KEYS, out[:-1])))

    # ---- decode
    def _check_embedding(self, embedding: Embedding) -> None:
        if embedding.model_key is not None and embedding.model_key != self.cache_key:
            raise ValueError(f"{self.name}: embedding was computed by {embedding.model_key!r}, "
                             f"not by this model ({self.cache_key!r})")
        pe = self.model.sam_prompt_encoder
        h, w = map(int, pe.image_embedding_size)
        dim = int(pe.embed_dim)
        expected = {"features": (1, dim, h, w), "feat_s0": (1, dim // 8, 4 * h, 4 * w),
                    "feat_s1": (1, dim // 4, 2 * h, 2 * w)}
        got = {"features": tuple(embedding.features.shape),
               **{k: tuple(embedding.extra[k].shape) if k in embedding.extra else None for k in HIGH_RES_KEYS}}
        if got != expected:
            raise ValueError(f"{self.name}: embedding tensors have shapes {got}, this model expects {expected} "
                             "(an embedding of another model?)")

    def _check_mask_inputs(self, mask_inputs: np.ndarray | None, n: int) -> torch.Tensor | None:
        if mask_inputs is None:
            return None
        expected = (n, 1, *map(int, self.model.sam_prompt_encoder.mask_input_size))
        m = np.asarray(mask_inputs, dtype=np.float32)
        if m.shape != expected:
            raise ValueError(f"{self.name}: mask_inputs must have shape {expected} (N, 1, low-res logits), got {m.shape}")
        return torch.from_numpy(np.ascontiguousarray(m))

    def decode(self, embedding: Embedding, prompts: Sequence[Any], multimask: bool = False,
               mask_inputs: np.ndarray | None = None) -> Decoded:
        """Decode ``N`` prompts on one image: masks bool ``(N, K, H, W)``, iou_pred float32 ``(N, K)``,
        low_res_logits float32 ``(N, K, 256, 256)`` clamped to +-32; K = 3 if multimask else 1."""
        return self.decode_multimask(embedding, prompts, [multimask], mask_inputs)[0]

    def decode_multimask(self, embedding: Embedding, prompts: Sequence[Any], multimask: Sequence[bool],
                         mask_inputs: np.ndarray | None = None) -> list[Decoded]:
        """One decoder pass for several multimask settings: the four outputs are computed once and
        the single output is selected from them exactly as ``MaskDecoder.forward`` does."""
        self._check_embedding(embedding)
        with torch_settings(self.num_threads):
            low, iou = self._decode_all(embedding, prompts, mask_inputs)
            out = []
            for m in multimask:
                lo, io = (low[:, 1:], iou[:, 1:]) if m else self.single_output(low, iou)
                masks = self.postprocess(lo, embedding.original_hw)
                clamped = torch.clamp(lo, -LOW_RES_CLAMP, LOW_RES_CLAMP).contiguous()
                out.append(Decoded(masks=masks, iou_pred=io.numpy().copy(), low_res_logits=clamped.numpy()))
            return out

    def _decode_all(self, embedding: Embedding, prompts: Sequence[Any],
                    mask_inputs: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor]:
        """All four decoder outputs: low-res logits ``(N, 4, 256, 256)`` and predicted IoU ``(N, 4)``."""
        n = len(prompts)
        masks_t = self._check_mask_inputs(mask_inputs, n)
        parsed = _parse_prompts(self.name, prompts, masks_t is not None)
        dec = self.model.sam_mask_decoder
        k = int(dec.num_mask_tokens)
        low_hw = tuple(int(s) for s in self.model.sam_prompt_encoder.mask_input_size)
        low = torch.zeros((n, k, *low_hw), dtype=torch.float32)
        iou = torch.zeros((n, k), dtype=torch.float32)
        embed = embedding.features.to(self.device, dtype=torch.float32)
        high_res = [embedding.extra[key].to(self.device, dtype=torch.float32) for key in HIGH_RES_KEYS]
        for idx in _group_prompts(parsed).values():
            for start in range(0, len(idx), self.decode_chunk):
                chunk = idx[start:start + self.decode_chunk]
                points = self._prompt_points(embedding.original_hw, [parsed[i] for i in chunk])
                masks = None if masks_t is None else masks_t[chunk].to(self.device)
                with torch.inference_mode():
                    sparse, dense = self.model.sam_prompt_encoder(points=points, boxes=None, masks=masks)
                    if self.runtime == "onnxruntime":
                        lo, io = self._ort_decode(embed, sparse, dense, high_res)
                    else:
                        lo, io, _, _ = dec.predict_masks(
                            image_embeddings=embed, image_pe=self._dense_pe, sparse_prompt_embeddings=sparse,
                            dense_prompt_embeddings=dense, repeat_image=True, high_res_features=high_res)
                low[chunk], iou[chunk] = lo.float().cpu(), io.float().cpu()
        return low, iou

    def _ort_decode(self, embed: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                    high_res: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The exported decoder, one prompt at a time (it was exported for one): ``(n, 4, l, l)``, ``(n, 4)``."""
        fixed = {"embed": embed.numpy(), "image_pe": self._dense_pe.numpy(), "feat_s0": high_res[0].numpy(),
                 "feat_s1": high_res[1].numpy()}
        runs = [self._sessions()[1].run(None, {**fixed, "sparse": sparse[i:i + 1].numpy(),
                                               "dense": dense[i:i + 1].numpy()}) for i in range(sparse.shape[0])]
        return (torch.from_numpy(np.concatenate([r[0] for r in runs])),
                torch.from_numpy(np.concatenate([r[1] for r in runs])))

    def _prompt_points(self, original_hw: tuple[int, int],
                       group: list[tuple]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Box corners (labels 2, 3) then points as SAM 2's point prompt: coords ``(n, K', 2)`` float32
        in the ``img_size`` frame and labels ``(n, K')`` int32; ``None`` for mask-only prompts."""
        coords, labels = [], []
        tf = self._transforms
        if group[0][0] is not None:
            boxes = torch.as_tensor(np.stack([b for b, _, _ in group]), dtype=torch.float32)
            coords.append(tf.transform_boxes(boxes, normalize=True, orig_hw=original_hw))  # (n, 2, 2)
            labels.append(torch.tensor([[2, 3]], dtype=torch.int32).repeat(len(group), 1))
        if group[0][1] is not None:
            pts = torch.as_tensor(np.stack([p for _, p, _ in group]), dtype=torch.float32)
            coords.append(tf.transform_coords(pts, normalize=True, orig_hw=original_hw))
            labels.append(torch.as_tensor(np.stack([lab for _, _, lab in group]), dtype=torch.int32))
        if not coords:
            return None
        return torch.cat(coords, dim=1).to(self.device), torch.cat(labels, dim=1).to(self.device)

    # ---- fine-tuning (samstudy.finetune): the decoder pass with autograd
    finetunable: ClassVar[bool] = True
    trainable_parts: ClassVar[tuple[str, ...]] = ("sam_prompt_encoder", "sam_mask_decoder")
    # conv_s0/conv_s1 (in the decoder) and no_mem_embed run in encode: their output is the cached
    # feat_s0/feat_s1/image_embed, so they stay frozen and are hashed with the image encoder
    embedding_parts: ClassVar[tuple[str, ...]] = ("sam_mask_decoder.conv_s0", "sam_mask_decoder.conv_s1",
                                                  "no_mem_embed")

    def encode_train(self, image: np.ndarray) -> Embedding:
        """:meth:`encode` **with autograd** (``samstudy.finetune``'s encoder LoRA): the same
        transforms, then :func:`image_maps` in torch whatever ``runtime`` is. Returns ``features``
        ``(1, 256, 64, 64)`` and ``extra`` ``feat_s0``/``feat_s1``, float32 on ``self.device``,
        ``model_key=None`` (an encoder being trained is not the one the cache key names). Under
        ``torch.no_grad`` in eval mode it equals :meth:`encode` with the torch runtime.
        """
        image = check_rgb_uint8(image, self.name)
        original_hw = (int(image.shape[0]), int(image.shape[1]))
        maps = [t.float() for t in image_maps(self.model, self.preprocess(image).to(self.device))]
        return Embedding(features=maps[-1], original_hw=original_hw, input_hw=(self.img_size, self.img_size),
                         model_key=None, extra=dict(zip(HIGH_RES_KEYS, maps[:-1])))

    def low_res_frame(self, original_hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        """``(L, (L, L))``: the square resize maps the whole image onto the ``(L, L)`` low-res logits."""
        L = 4 * int(self.model.sam_prompt_encoder.image_embedding_size[0])
        return L, (L, L)

    def low_res_masks(self, low_res: torch.Tensor, embedding: Embedding) -> np.ndarray:
        """Low-res logits ``(N, K, L, L)`` of ``embedding``'s image -> bool masks ``(N, K, H, W)``."""
        return self.postprocess(low_res, embedding.original_hw)

    def single_output(self, low: torch.Tensor, iou: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The single output ``(N, 1, l, l)``, ``(N, 1)`` of the four: token 0, or the best multimask
        one where token 0 is unstable (``MaskDecoder._dynamic_multimask_via_stability``, if enabled)."""
        dec = self.model.sam_mask_decoder
        if dec.dynamic_multimask_via_stability:
            return dec._dynamic_multimask_via_stability(low, iou)
        return low[:, :1], iou[:, :1]

    def decode_train(self, embeddings: Embedding | Sequence[Embedding], prompts: Sequence[Any]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder **with autograd** (torch runtime, no mask input): low-res
        logits float32 ``(N, 4, 256, 256)`` (not clamped) and predicted IoU ``(N, 4)``; token 0 = the
        single-output token (before the stability fallback of :meth:`decode_multimask`), 1..3 the
        multimask outputs. Prompts as :meth:`decode` (box -> two points labelled 2, 3 before the
        points), and must share box presence and point count.

        embeddings: one image's embedding for every prompt, or one per prompt: then the decoder
        runs with ``repeat_image=False`` on the stacked per-prompt maps (several images in one call).
        In eval mode the outputs equal :meth:`decode`'s four outputs (tested to 1e-5).
        """
        single = isinstance(embeddings, Embedding)
        embs = [embeddings] if single else list(embeddings)
        parsed = [_prompt_arrays(p, i) for i, p in enumerate(prompts)]
        if single:
            points = self._prompt_points(embeddings.original_hw, parsed)
        else:
            per = [self._prompt_points(e.original_hw, [g]) for e, g in zip(embs, parsed)]
            points = None if per[0] is None else (torch.cat([c for c, _ in per]), torch.cat([lab for _, lab in per]))
        pe = self.model.sam_prompt_encoder
        sparse, dense = pe(points=points, boxes=None, masks=None)
        embed = torch.cat([e.features for e in embs]).to(self.device, torch.float32)
        high_res = [torch.cat([e.extra[k] for e in embs]).to(self.device, torch.float32) for k in HIGH_RES_KEYS]
        low, iou, _, _ = self.model.sam_mask_decoder.predict_masks(
            image_embeddings=embed, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, repeat_image=single, high_res_features=high_res)
        return low, iou

    def postprocess(self, low_res: torch.Tensor, original_hw: tuple[int, int]) -> np.ndarray:
        """Low-res logits ``(N, K, l, l)`` -> bool masks ``(N, K, H, W)``: bilinear to ``(H, W)``, ``> 0``."""
        n, k = low_res.shape[:2]
        flat = low_res.reshape(n * k, 1, *low_res.shape[-2:])
        out = np.zeros((n * k, *original_hw), dtype=bool)
        with torch.inference_mode():
            for s in range(0, n * k, _POSTPROCESS_CHUNK):
                x = F.interpolate(flat[s:s + _POSTPROCESS_CHUNK].to(self.device), original_hw, mode="bilinear",
                                  align_corners=False)
                out[s:s + _POSTPROCESS_CHUNK] = (x[:, 0] > self.mask_threshold).cpu().numpy()
        return out.reshape(n, k, *original_hw)


def sam2_module(config: str, overrides: Sequence[str] = ()) -> Callable[[], nn.Module]:
    """Factory of an untrained ``SAM2Base`` from a hydra config of the ``sam2`` package (e.g.
    ``configs/sam2.1/sam2.1_hiera_t.yaml``) with hydra ``overrides`` (tests shrink the model), built by
    ``sam2.build_sam.build_sam2`` with its defaults (the image predictor's post-processing settings)."""

    def build() -> nn.Module:
        from sam2.build_sam import build_sam2

        return build_sam2(config, ckpt_path=None, device="cpu", hydra_overrides_extra=list(overrides)).eval()
    return build


def _register(name: str) -> None:
    config, label = SAM2_VARIANTS[name]

    @register_model(name, Sam2Segmenter)
    def build(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu", *,
              random_init: bool = False, factory: Callable[[], nn.Module] | None = None,
              **kwargs: Any) -> Sam2Segmenter:
        return build_released(Sam2Segmenter, name, label, factory or sam2_module(config), checkpoint, device,
                              random_init, **kwargs)
    build.__qualname__ = f"build_{name.replace('.', '_').replace('+', 'plus')}"
    build.__doc__ = (f"{label} from ``checkpoint`` (official format ``{{'model': state_dict}}``; default "
                     f"``data/weights/<official file>``, `make weights MODEL={name}`).")


for _n in SAM2_VARIANTS:
    _register(_n)
