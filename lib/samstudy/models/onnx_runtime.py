"""ONNX Runtime execution of a SAM-architecture model (``SamSegmenter(runtime="onnxruntime")``).

The image encoder and the mask decoder (``MaskDecoder.predict_masks``, all four outputs) are
exported once per model to ONNX files and then run by ONNX Runtime's CPU provider; the prompt
encoder and the mask post-processing stay in PyTorch (cheap). Why: on this 2-core CPU, one thread,
LiteMedSAM's TinyViT encoder took 2.52 s in PyTorch and 0.89 s in ONNX Runtime, its mask decoder
0.070 s and 0.036 s per prompt, with outputs within 3e-6 (embedding) and 4e-5 (logits) of PyTorch
(``bench/bench_engine.py`` measures it again on your machine).

Exported files are cached under ``cache_dir`` (default ``$SAMSTUDY_ONNX_DIR`` or
``<cache root>/onnx``, :func:`samstudy.files.cache_root`), named by the model's cache key and the torch/onnxruntime versions,
written atomically. The decoder is exported for one prompt at a time with a variable number of
prompt tokens (point count, box or not), which is how the CPU path decodes anyway. A model with
more image maps (HQ-SAM's ``hq_features``) passes its own image path and the decoder's extra
inputs (``OrtSam(image_path=..., decoder_extra=...)``).
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import atomic_path, cache_root
from ..progress import note

ONNX_DIR_ENV = "SAMSTUDY_ONNX_DIR"
_OPSET = 17


def default_onnx_dir() -> Path:
    """``$SAMSTUDY_ONNX_DIR``, else ``<cache root>/onnx`` (:func:`samstudy.files.cache_root`)."""
    if os.environ.get(ONNX_DIR_ENV):
        return Path(os.environ[ONNX_DIR_ENV])
    return cache_root() / "onnx"


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("runtime='onnxruntime' needs the onnxruntime and onnx packages "
                          "(pip install onnxruntime onnx; both are in requirements.txt)") from e
    return onnxruntime


class _DecoderAllOutputs(nn.Module):
    """``predict_masks`` as a module: low-res logits ``(1, 4, l, l)`` and predicted IoU ``(1, 4)``."""

    def __init__(self, mask_decoder: nn.Module) -> None:
        super().__init__()
        self.mask_decoder = mask_decoder

    def forward(self, features: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor,
                dense: torch.Tensor, *extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mask_decoder.predict_masks(features, image_pe, sparse, dense, *extra)


def _export_atomic(module: nn.Module, args: tuple, path: Path, names: list[str], outputs: list[str],
                   dynamic_axes: dict | None) -> None:
    """Export once, announced on stderr with its duration (it takes seconds, and writes to the cache root)."""
    note(f"exporting {path.name} to ONNX (one time) into {path.parent} ...")
    t0 = time.perf_counter()
    _export_file(module, args, path, names, outputs, dynamic_axes)
    note(f"exported {path.name} in {time.perf_counter() - t0:.1f} s")


def _export_file(module: nn.Module, args: tuple, path: Path, names: list[str], outputs: list[str],
                 dynamic_axes: dict | None) -> None:
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
        torch.onnx.export(module, args, str(tmp), input_names=names, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=_OPSET, dynamo=False)


def onnx_paths(key: str, cache_dir: Path) -> tuple[Path, Path]:
    """``(encoder, decoder)`` ONNX files of the model ``key`` under ``cache_dir``, named with the
    torch and onnxruntime versions (an upgrade exports again)."""
    tag = f"{key}-torch{torch.__version__.split('+')[0]}-ort{_import_ort().__version__}"
    return cache_dir / f"{tag}-encoder.onnx", cache_dir / f"{tag}-decoder.onnx"


def export_once(module: nn.Module, args: tuple, path: Path, names: list[str], outputs: list[str],
                dynamic_axes: dict | None = None) -> None:
    """Export ``module`` traced on ``args`` to ``path`` unless that file exists (atomic, announced)."""
    if not path.is_file():
        _export_atomic(module, args, path, names, outputs, dynamic_axes)


def cpu_session(path: Path, threads: int | None) -> Any:
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (``None``: torch's count)."""
    ort = _import_ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    # idle threads sleep instead of spinning: processes sharing the cores (two runs, Ray workers) then
    # lose less to each other. Measured beside a busy 2-thread run on 2 cores, LiteMedSAM click decode:
    # 2 threads 0.333 s spinning / 0.268 s not; 1 thread 0.070 / 0.067 s (threads beyond free cores cost most)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OrtSam:
    """The encoder and mask decoder of ``model`` as ONNX Runtime sessions (CPU).

    model: a SAM-architecture module (``image_encoder``, ``prompt_encoder``, ``mask_decoder``).
    key: the segmenter's identity (weights + preprocessing), part of the file names.
    input_size: the encoder's square input side (1024 for SAM, 256 for LiteMedSAM).
    threads: ONNX Runtime intra-op threads (``None``: torch's current thread count).
    image_path: what is exported as the encoder (default ``model.image_encoder``), returning the
        maps ``image_outputs`` (the first is the embedding; HQ-SAM adds ``hq_features``).
    decoder_extra: further image-only inputs of ``mask_decoder.predict_masks``, passed after the
        four of SAM in this order, by name -> example tensor (HQ-SAM: ``hq_features``).
    """

    def __init__(self, model: nn.Module, key: str, input_size: int, cache_dir: str | os.PathLike | None = None,
                 threads: int | None = None, *, image_path: nn.Module | None = None,
                 image_outputs: tuple[str, ...] = ("features",),
                 decoder_extra: dict[str, torch.Tensor] | None = None) -> None:
        self.dir = Path(cache_dir) if cache_dir is not None else default_onnx_dir()
        self.encoder_path, self.decoder_path = onnx_paths(key, self.dir)
        self.decoder_extra = dict(decoder_extra or {})
        if not self.encoder_path.is_file():
            x = torch.zeros((1, 3, input_size, input_size), dtype=torch.float32)
            _export_atomic(image_path or model.image_encoder, (x,), self.encoder_path, ["image"],
                           list(image_outputs), None)
        if not self.decoder_path.is_file():
            self._export_decoder(model)
        self.encoder = cpu_session(self.encoder_path, threads)
        self.decoder = cpu_session(self.decoder_path, threads)

    def _export_decoder(self, model: nn.Module) -> None:
        pe = model.prompt_encoder
        with torch.inference_mode():
            sparse, dense = pe(points=None, boxes=torch.tensor([[1.0, 1.0, 8.0, 8.0]]), masks=None)
            features = torch.zeros((1, int(pe.embed_dim), *map(int, pe.image_embedding_size)))
            args = (features, pe.get_dense_pe(), sparse, dense, *self.decoder_extra.values())
        _export_atomic(_DecoderAllOutputs(model.mask_decoder), args, self.decoder_path,
                       ["features", "image_pe", "sparse", "dense", *self.decoder_extra],
                       ["low_res_logits", "iou_pred"], {"sparse": {1: "tokens"}})

    def encode_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Preprocessed input ``(1, 3, S, S)`` float32 -> the ``image_outputs`` maps, float32."""
        outs = self.encoder.run(None, {"image": np.ascontiguousarray(x.detach().cpu().numpy())})
        return [torch.from_numpy(o) for o in outs]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input ``(1, 3, S, S)`` float32 -> features ``(1, C, h, w)`` float32."""
        return self.encode_maps(x)[0]

    def predict_masks(self, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                      sparse_prompt_embeddings: torch.Tensor,
                      dense_prompt_embeddings: torch.Tensor,
                      **extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``MaskDecoder.predict_masks`` for ``N`` prompts (run one at a time): ``(N, 4, l, l)``, ``(N, 4)``
        (HQ-SAM: 5 outputs). ``extra``: the ``decoder_extra`` inputs by name."""
        if set(extra) != set(self.decoder_extra):
            raise ValueError(f"exported decoder takes extra inputs {sorted(self.decoder_extra)}, got {sorted(extra)}")
        fixed = {"features": image_embeddings.detach().cpu().numpy(), "image_pe": image_pe.detach().cpu().numpy(),
                 **{k: v.detach().cpu().numpy() for k, v in extra.items()}}
        sparse, dense = sparse_prompt_embeddings.detach().cpu(), dense_prompt_embeddings.detach().cpu()
        lows, ious = [], []
        for i in range(sparse.shape[0]):
            low, iou = self.decoder.run(None, {**fixed, "sparse": sparse[i:i + 1].numpy(),
                                               "dense": dense[i:i + 1].numpy()})
            lows.append(low)
            ious.append(iou)
        return torch.from_numpy(np.concatenate(lows)), torch.from_numpy(np.concatenate(ious))
