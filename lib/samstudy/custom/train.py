"""Training of the custom extreme-point model (both stages), resumable and deterministic on CPU.

:func:`train_custom` ``(train_dataset, config, out_dir)``:

- **Data**: the non-crowd instances of ``train_dataset`` (already under the wanted labeling policy:
  the model learns exactly the masks it is given). A validation subset of images
  (``val_fraction``, seeded, at most ``max_val_objects`` objects) is carved from it for model
  selection; the rest is trained on. Images are decoded once into memory; each object keeps its
  mask cut to its tight box (``bool``), so a sample costs a few small numpy/cv2 operations.
- **Sample**: extreme points jittered on the mask (:func:`samstudy.prompts.extreme_points` with
  ``jitter_px = min(config.jitter_px, 10% of the object's shorter side)``), per-side crop margins
  drawn in ``margin * [1 - margin_jitter, 1 + margin_jitter]``, the crop at ``2S`` (image bilinear,
  mask area-averaged = soft target), horizontal flip (p = 0.5), colour jitter (brightness,
  contrast, saturation) in torch.
- **Loss**: stage 1 BCE + soft Dice at S (targets = 2x2 average of the ``2S`` target); stage 2
  (on one ``stage2_patch`` window per object centred on a random pixel of the GT boundary or of
  stage 1's refinement band, or the whole crop) BCE weighted ``1 + boundary_weight`` within 3 px of the GT boundary + Dice. Stage 2 gets
  stage 1's output detached.
- **Clicks** (RITM iterative training): with probability ``click_prob`` a batch first runs
  :func:`simulate_clicks` (1..``max_train_clicks`` rounds, no gradient) and trains on its clicks
  and last prediction as mask input; other batches train the one-shot extreme-point prompt.
- **Optimiser**: AdamW, one-cycle schedule (5% linear warm-up, cosine decay) over training
  *progress* = ``step / (epochs * steps_per_epoch)``. ``max_minutes`` counts the training steps
  and per-epoch validations only (not the set-up: image decoding, model building); a budget that
  ends inside the first epoch raises :class:`BudgetTooSmallError` with the measured seconds per
  step. A run the budget stopped before ``epochs`` is marked ``budget_limited`` in
  ``train_meta.json`` and ``best.pt``'s metadata (its epoch count depends on machine load).
  The budget only stops training (leaving time for the last validation); it never bends the schedule, so a run that
  finishes its epochs is the same on every machine. (An earlier version annealed over
  ``max(steps, elapsed / budget)``: the demo's custom mIoU then moved by 0.02 between a quiet
  and a busy run.) Size ``epochs`` to fit the budget; ``curve.csv`` shows where a run stopped.
- **Determinism**: all sample randomness comes from ``numpy.random.default_rng([seed, epoch])``
  and model init from ``config.seed``; no dropout. A run on CPU gives bit-identical weights
  whether or not it was killed and resumed, unless the budget stopped it.
- **Flip average** (:func:`choose_flip_tta`): once training is done, the best model is validated
  again with each crop averaged with its mirror (the training flip); inference uses the average
  when it scores higher on validation, a choice recorded in ``best.pt`` and ``train_meta.json``.
- **Checkpoints** (``out_dir``): ``last.pt`` after every epoch (model, optimiser, epoch, step,
  elapsed seconds, curve, best score; written atomically), ``best.pt`` = best validation
  ``val_miou_stage2`` (the file to use, :func:`samstudy.custom.model.load_custom`), ``curve.csv``
  (``epoch, step, train_loss, train_loss_stage1, train_loss_stage2, val_miou_stage1,
  val_miou_stage2, lr, seconds``), ``train_meta.json`` (config, data counts, splits, timings).
  Restarting with the same ``out_dir`` and config resumes after the last finished epoch; a
  different config raises ``ValueError`` naming the file and the fields.

Validation mIoU is measured in the crop frame (``2S`` crop, GT area-resampled, > 0.5), which ranks
models like full-image IoU at a fraction of the cost; test figures come from
:mod:`samstudy.custom.evaluate` at full resolution.

CLI: ``python -m samstudy.custom.train --data instances.json --images DIR --out DIR [--minutes M]``.
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data import Dataset, Instance, read_record_image
from ..masks import decode_rle, tight_crop
from ..prompts import extreme_points
from ..clicks import Click, next_click
from ..compute import resolve_device, torch_settings
from ..files import atomic_path, read_json, write_json_atomic
from .crops import box_to_crop, crop_image, crop_mask, crop_scale, crop_spec, points_to_crop
from .model import (CHECKPOINT_FORMAT, CustomConfig, CustomModel, build_custom_model, forward_views,
                    mirror_box, mirror_extreme_points, model_payload, prepare_inputs, with_interaction,
                    read_checkpoint, read_state_file, save_checkpoint, stage_stats, boundary_band, crop_patches)
from .perturb import mix_base_logits

__all__ = ["TrainObject", "collect_objects", "carve_validation", "make_sample", "make_batch",
           "eval_batches", "simulate_clicks", "refine_windows", "BudgetTooSmallError",
           "train_custom", "main"]

TRAIN_FORMAT = CHECKPOINT_FORMAT + "+train"
CURVE_COLUMNS = ("epoch", "step", "train_loss", "train_loss_stage1", "train_loss_stage2",
                 "val_miou_stage1", "val_miou_stage2", "lr", "seconds")
# Config fields that may change between a run and its resume (they do not change the results
# on CPU beyond speed).
_RESUME_FREE = ("device", "num_threads")


# ----------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TrainObject:
    """One training object: its image key, mask cut to the tight box, and where that box sits.

    window: ``bool (h, w)`` = full mask rows ``y0:y0+h``, cols ``x0:x0+w``; offset: ``(x0, y0)``.
    """

    image_id: int
    ann_id: int
    window: np.ndarray
    offset: tuple[int, int]
    image_hw: tuple[int, int]


def collect_objects(dataset: Dataset, images: dict[int, np.ndarray] | None = None
                    ) -> tuple[list[TrainObject], dict[int, np.ndarray], list[dict[str, Any]]]:
    """Trainable objects of ``dataset`` and its decoded images (``uint8 (H, W, 3)`` by image id).

    Crowd annotations, empty masks and objects whose mask size differs from their image are left
    out and listed in the returned skip rows ``{"image_id", "ann_id", "reason"}``.
    """
    images = {} if images is None else images
    objects, skips = [], []
    for image_id, insts in dataset.instances_by_image().items():
        usable = [t for t in insts if not t.iscrowd]
        skips += [{"image_id": t.image_id, "ann_id": t.ann_id, "reason": "iscrowd"} for t in insts if t.iscrowd]
        if not usable:
            continue
        if image_id not in images:
            images[image_id] = read_record_image(dataset.images[image_id])
        hw = images[image_id].shape[:2]
        for inst in usable:
            obj = _train_object(inst, hw)
            if isinstance(obj, str):
                skips.append({"image_id": inst.image_id, "ann_id": inst.ann_id, "reason": obj})
            else:
                objects.append(obj)
    return objects, images, skips


def _train_object(inst: Instance, image_hw: tuple[int, int]) -> TrainObject | str:
    if tuple(inst.rle["size"]) != tuple(image_hw):
        return "image_size_mismatch"
    cut = tight_crop(decode_rle(inst.rle))
    if cut is None:
        return "empty_mask"
    return TrainObject(inst.image_id, inst.ann_id, cut[0], cut[1], (int(image_hw[0]), int(image_hw[1])))


def carve_validation(objects: Sequence[TrainObject], val_fraction: float, seed: int,
                     max_val_objects: int) -> tuple[list[TrainObject], list[TrainObject]]:
    """Split objects by image: ``round(val_fraction * n_images)`` images (at least 1 when there
    are 2 or more images and ``val_fraction > 0``) go to validation, in a seeded random order,
    stopping before ``max_val_objects`` objects are exceeded. Returns ``(train, val)``."""
    ids = sorted({o.image_id for o in objects})
    if val_fraction <= 0 or len(ids) < 2:
        return list(objects), []
    order = [ids[i] for i in np.random.default_rng([seed, 7]).permutation(len(ids))]
    n_val = min(max(1, int(round(val_fraction * len(ids)))), len(ids) - 1)
    counts = {i: 0 for i in ids}
    for o in objects:
        counts[o.image_id] += 1
    val_ids: set[int] = set()
    total = 0
    for i in order[:n_val]:
        if val_ids and total + counts[i] > max_val_objects:
            break
        val_ids.add(i)
        total += counts[i]
    return ([o for o in objects if o.image_id not in val_ids], [o for o in objects if o.image_id in val_ids])


def make_sample(obj: TrainObject, image: np.ndarray, config: CustomConfig,
                rng: np.random.Generator | None) -> dict[str, np.ndarray]:
    """One sample at ``2S``; ``rng=None`` gives the un-augmented evaluation sample.

    Returns ``rgb uint8 (2S, 2S, 3)``, ``mask float32 (2S, 2S)`` soft target, ``points float64
    (4, 2)`` (``2S`` crop pixel-index xy), ``pbox float64 (4,)`` (points' box, ``2S`` crop edges),
    ``scale float64 (2,)`` (crop pixels per image pixel, x and y).
    """
    s2 = config.refine_size
    h, w = obj.window.shape
    if rng is None:
        pts = extreme_points(obj.window)
        margin: Any = config.margin
    else:
        jitter = int(min(config.jitter_px, math.floor(0.1 * min(h, w))))
        pts = extreme_points(obj.window, rng, jitter)
        margin = config.margin * rng.uniform(1 - config.margin_jitter, 1 + config.margin_jitter, 4)
    pts = pts + np.asarray(obj.offset, dtype=np.float64)
    spec = crop_spec(pts, obj.image_hw, margin, config.min_margin_px, config.min_crop_px, config.max_aspect)
    rgb = crop_image(image, spec, s2)
    mask = crop_mask(obj.window, spec, s2, obj.offset)
    points = points_to_crop(pts, spec, s2)
    pbox = box_to_crop(spec.points_box, spec, s2)
    scale = crop_scale(spec, s2)
    if rng is not None and rng.random() < 0.5:  # horizontal flip
        rgb, mask = rgb[:, ::-1], mask[:, ::-1]
        points, pbox = mirror_extreme_points(points, s2), mirror_box(pbox, s2)
    return {"rgb": np.ascontiguousarray(rgb), "mask": np.ascontiguousarray(mask), "points": points, "pbox": pbox,
            "scale": scale}


def make_batch(samples: Sequence[dict[str, np.ndarray]], rng: np.random.Generator | None,
               device: torch.device) -> dict[str, torch.Tensor]:
    """Stack samples; colour-jitter RGB when ``rng`` is given. ``rgb2`` is ``float32 (B, 3, 2S, 2S)``
    in ``[0, 1]``, ``mask2 (B, 1, 2S, 2S)``, ``points2 (B, 4, 2)``, ``pbox2 (B, 4)``, ``scale2 (B, 2)``."""
    rgb = torch.from_numpy(np.stack([s["rgb"] for s in samples])).permute(0, 3, 1, 2).float().div_(255.0)
    if rng is not None:
        b = len(samples)
        bright = torch.from_numpy(rng.uniform(-0.12, 0.12, b)).float()[:, None, None, None]
        contrast = torch.from_numpy(rng.uniform(0.75, 1.25, b)).float()[:, None, None, None]
        sat = torch.from_numpy(rng.uniform(0.7, 1.3, b)).float()[:, None, None, None]
        grey = rgb.mean(dim=1, keepdim=True)
        rgb = grey + (rgb - grey) * sat
        mean = rgb.mean(dim=(1, 2, 3), keepdim=True)
        rgb = ((rgb - mean) * contrast + mean + bright).clamp_(0.0, 1.0)
    return {"rgb2": rgb.to(device),
            "mask2": torch.from_numpy(np.stack([s["mask"] for s in samples]))[:, None].to(device),
            "points2": torch.from_numpy(np.stack([s["points"] for s in samples])).float().to(device),
            "pbox2": torch.from_numpy(np.stack([s["pbox"] for s in samples])).float().to(device),
            "scale2": torch.from_numpy(np.stack([s["scale"] for s in samples])).float().to(device)}


def eval_batches(objects: Sequence[TrainObject], images: dict[int, np.ndarray], config: CustomConfig,
                 device: torch.device, size: int = 64) -> list[dict[str, torch.Tensor]]:
    """``objects`` as un-augmented samples (:func:`make_sample` with ``rng=None``) in batches of
    ``size`` (:func:`make_batch`): the validation input of :func:`train_custom` and of the benches."""
    return [make_batch([make_sample(o, images[o.image_id], config, None) for o in objects[i:i + size]], None, device)
            for i in range(0, len(objects), size)]


def boundary_corners(where: torch.Tensor, patch: int, rng: np.random.Generator) -> torch.Tensor:
    """Per object, the top-left ``(x, y)`` of a ``patch`` window centred on a random pixel of
    ``where (B, 1, 2S, 2S)`` bool (the crop centre when it is empty), clamped inside the crop.
    Returns ``int64 (B, 2)``."""
    size = where.shape[-1]
    out = np.empty((where.shape[0], 2), dtype=np.int64)
    for i, b in enumerate(where[:, 0].cpu().numpy()):
        ys, xs = np.nonzero(b)
        if ys.size:
            j = rng.integers(ys.size)
            cx, cy = xs[j], ys[j]
        else:
            cx = cy = size // 2
        out[i] = np.clip([cx - patch // 2, cy - patch // 2], 0, size - patch)
    return torch.from_numpy(out)


# ----------------------------------------------------------------------------- losses
def _dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def stage_losses(logits1: torch.Tensor, logits2: torch.Tensor, target2: torch.Tensor,
                 target2_patch: torch.Tensor, boundary_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss1, loss2)``: BCE + Dice at S; boundary-weighted BCE + Dice for stage 2's window."""
    t1 = F.avg_pool2d(target2, target2.shape[-1] // logits1.shape[-1])  # R -> S
    loss1 = F.binary_cross_entropy_with_logits(logits1, t1) + _dice(logits1, t1)
    w = 1.0 + boundary_weight * boundary_band(target2_patch > 0.5, 3).float()
    bce = (F.binary_cross_entropy_with_logits(logits2, target2_patch, reduction="none") * w).sum() / w.sum()
    return loss1, bce + _dice(logits2, target2_patch)


# ----------------------------------------------------------------------------- helpers
def _lr_at(progress: float, peak: float) -> float:
    """One-cycle: linear warm-up over the first 5%, cosine decay to 1% of ``peak``."""
    if progress < 0.05:
        return peak * (0.1 + 0.9 * progress / 0.05)
    q = min(1.0, (progress - 0.05) / 0.95)
    return peak * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * q)))


def _param_groups(model: CustomModel, config: CustomConfig) -> list[dict[str, Any]]:
    """Pretrained stem weights get ``config.stem_lr_scale`` times the learning rate (kept as
    ``lr_scale`` in the group); a frozen stem (scale 0) is left out."""
    pre = [p for n, p in model.named_parameters() if n.startswith("stage1.tiny.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("stage1.tiny.")]
    groups = [{"params": rest, "lr_scale": 1.0}]
    if pre:
        groups.append({"params": pre, "lr_scale": config.stem_lr_scale})
    return groups


def _write_curve(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
        wr.writeheader()
        wr.writerows(rows)


def _write_json(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, sort_keys=True)


@torch.no_grad()
def validate(model: CustomModel, val_batches: Sequence[dict[str, torch.Tensor]], flip: bool = False
             ) -> tuple[float, float]:
    """Mean crop-frame IoU of stage 1 (upsampled to ``R``) and stage 2 over the validation set
    (``flip``: with the flip average of :func:`samstudy.custom.model.forward_views`)."""
    model.eval()
    ious1, ious2 = [], []
    for b in val_batches:
        logits1, logits2, _ = forward_views(model, b["rgb2"], b["points2"], b["pbox2"], b["scale2"], flip=flip)
        up1 = F.interpolate(logits1, size=logits2.shape[-2:], mode="bilinear", align_corners=False)
        gt = b["mask2"] > 0.5
        for logits, acc in ((up1, ious1), (logits2, ious2)):
            pred = logits > 0
            inter = (pred & gt).flatten(1).sum(1).float()
            union = (pred | gt).flatten(1).sum(1).float()
            acc.extend(torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).tolist())
    model.train()
    return (float(np.mean(ious1)) if ious1 else float("nan"), float(np.mean(ious2)) if ious2 else float("nan"))


def _check_resume(state: dict[str, Any], config: CustomConfig, path: Path) -> None:
    if state.get("format") != TRAIN_FORMAT:
        raise ValueError(f"{path} is not a custom-model training checkpoint (format {state.get('format')!r})")
    old, new = dict(state["config"]), config.to_dict()
    diff = sorted(k for k in set(old) | set(new) if k not in _RESUME_FREE and old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"{path} was written with another config (differs in "
                         + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
                         + "); use a new out_dir or delete the file")


# ----------------------------------------------------------------------------- training
def train_custom(train_dataset: Dataset, config: CustomConfig, out_dir: str | Path, val_fraction: float = 0.1,
                 progress: bool = True, max_val_objects: int = 300, stop_after_epochs: int | None = None) -> Path:
    """Train both stages on ``train_dataset``; returns the path of the best checkpoint (``best.pt``).

    Resumes from ``out_dir/last.pt`` when it exists with the same config (see the module
    docstring). ``stop_after_epochs``: return after that many epochs of *this call* (simulates a
    kill in tests; the run stays resumable). Never touches the dataset's test images: pass the
    train split only.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out / "last.pt", out / "best.pt"
    device = resolve_device(config.device)
    with torch_settings(config.num_threads, deterministic=True):
        state = None
        if last_path.exists():
            state = read_state_file(last_path, "training checkpoint")
            _check_resume(state, config, last_path)
            # done, and the flip choice made (train_meta.json is written after best.pt holds it)
            if state.get("done") and best_path.exists() and "flip_tta" in (read_json(out / "train_meta.json") or {}):
                return best_path

        objects, images, skips = collect_objects(train_dataset)
        if not objects:
            raise ValueError(f"dataset {train_dataset.name!r} has no trainable (non-crowd, non-empty) object")
        train_objs, val_objs = carve_validation(objects, val_fraction, config.seed, max_val_objects)
        bs = max(2, min(config.batch_size, len(train_objs)))  # BatchNorm needs 2 samples
        steps_per_epoch = max(1, len(train_objs) // bs)
        total_steps = config.epochs * steps_per_epoch
        val_batches = eval_batches(val_objs, images, config, device)

        model = build_custom_model(config).to(device)
        model.train()
        opt = torch.optim.AdamW(_param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
        epoch, step, elapsed_before = 0, 0, 0.0
        curve: list[dict[str, Any]] = []
        best = {"score": -1.0, "epoch": -1}
        if state is not None:
            model.stage1.load_state_dict(state["stage1"])
            model.stage2.load_state_dict(state["stage2"])
            model.init_source = state.get("init_source", model.init_source)
            opt.load_state_dict(state["optimizer"])
            epoch, step = int(state["epoch"]), int(state["step"])
            elapsed_before = float(state["elapsed_s"])
            curve, best = list(state["curve"]), dict(state["best"])
        budget_s = None if config.max_minutes is None else 60.0 * float(config.max_minutes)
        setup_s = time.perf_counter() - t_start
        t_train = time.perf_counter()  # the budget clock starts here: set-up (images, model) is not in it

        def elapsed() -> float:  # seconds of training (steps + per-epoch validation) so far, resumes included
            return elapsed_before + (time.perf_counter() - t_train)

        def progress_now() -> float:
            # steps only, so a run is the same on every machine; the wall-clock budget just stops it
            return step / max(1, total_steps)

        def over_budget() -> bool:
            return bool(budget_s) and elapsed() >= budget_s

        meta = {"config": config.to_dict(), "dataset": train_dataset.name, "n_train_objects": len(train_objs),
                "n_val_objects": len(val_objs), "n_train_images": len({o.image_id for o in train_objs}),
                "val_image_ids": sorted({o.image_id for o in val_objs}), "skipped": len(skips),
                "skip_reasons": _count(skips), "device": str(device), "stages": stage_stats(model),
                "init_source": model.init_source, "steps_per_epoch": steps_per_epoch, "batch_size": bs}
        _write_json(out / "train_meta.json", meta)
        val_s, lr = 0.0, float("nan")
        epochs_this_call = 0
        from ..progress import tqdm

        bar = tqdm(total=total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True,
                   desc=f"custom {train_dataset.name}")
        try:
            while epoch < config.epochs and not over_budget():
                rng = np.random.default_rng([config.seed, epoch])
                order = rng.permutation(len(train_objs))
                sums = np.zeros(3)
                n_steps = 0
                for k in range(steps_per_epoch):
                    # Leave room for the last validation within the budget.
                    if budget_s and elapsed() + val_s >= budget_s:
                        break
                    lr = _lr_at(progress_now(), config.lr)
                    for g in opt.param_groups:
                        g["lr"] = lr * g.get("lr_scale", 1.0)
                    idx = order[k * bs:(k + 1) * bs]
                    samples = [make_sample(train_objs[i], images[train_objs[i].image_id], config, rng) for i in idx]
                    batch = make_batch(samples, rng, device)
                    loss, l1, l2 = _train_step(model, opt, batch, config, rng)
                    sums += (loss, l1, l2)
                    n_steps += 1
                    step += 1
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
                if n_steps == 0:  # the budget ended before this epoch's first step
                    break
                if not curve and n_steps < steps_per_epoch:
                    per_step = elapsed() / n_steps
                    raise BudgetTooSmallError(
                        f"custom model: the training budget of {config.max_minutes:g} min is too small for one "
                        f"epoch: {n_steps} of {steps_per_epoch} steps ran, measured {per_step:.3f} s per "
                        f"training step (batch {bs}), so one epoch needs about "
                        f"{per_step * steps_per_epoch / 60:.1f} min; raise custom.minutes or lower the batch "
                        f"size / crop_size ({out})")
                t_val = time.perf_counter()
                v1, v2 = validate(model, val_batches) if val_batches else (float("nan"), float("nan"))
                val_s = time.perf_counter() - t_val
                epoch += 1
                epochs_this_call += 1
                mean = sums / max(1, n_steps)
                curve.append({"epoch": epoch, "step": step, "train_loss": float(mean[0]),
                              "train_loss_stage1": float(mean[1]), "train_loss_stage2": float(mean[2]),
                              "val_miou_stage1": v1, "val_miou_stage2": v2, "lr": lr,
                              "seconds": round(elapsed(), 3)})
                score = v2 if val_batches else -float(mean[0])
                if score > best["score"] or not best_path.exists():
                    best = {"score": float(score), "epoch": epoch, "val_miou_stage1": v1, "val_miou_stage2": v2}
                    save_checkpoint(best_path, model_payload(model, {**meta, "epoch": epoch, "step": step,
                                                                     "best": best}))
                done = epoch >= config.epochs or over_budget()
                save_checkpoint(last_path, {
                    "format": TRAIN_FORMAT, "config": config.to_dict(), "init_source": model.init_source,
                    "stage1": model.stage1.state_dict(), "stage2": model.stage2.state_dict(),
                    "optimizer": opt.state_dict(), "epoch": epoch, "step": step, "elapsed_s": elapsed(),
                    "curve": curve, "best": best, "done": done})
                _write_curve(out / "curve.csv", curve)
                bar.set_postfix(epoch=epoch, loss=f"{mean[0]:.3f}", val=f"{v1:.3f}/{v2:.3f}", refresh=True)
                if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
                    break
        finally:
            bar.close()
        # Cut short by the wall clock (not the epoch count): its result depends on machine load.
        budget_limited = bool(curve) and epoch < config.epochs and stop_after_epochs is None
        meta.update({"epochs_done": epoch, "steps_done": step, "train_seconds": round(elapsed(), 3),
                     "setup_seconds": round(setup_s, 3), "budget_limited": budget_limited,
                     "epochs_planned": config.epochs, "best": best})
        flip = _finish_best(best_path, budget_limited, epoch,
                            val_batches if epoch >= config.epochs or over_budget() else None)
        if flip is not None:
            meta["flip_tta"] = flip
        _write_json(out / "train_meta.json", meta)
    return best_path


def choose_flip_tta(model: CustomModel, val_batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Decide on validation whether inference averages the crop with its mirror (the flip the model
    trains with; :func:`samstudy.custom.model.forward_views`): ``chosen`` when it raises the
    validation mIoU of stage 2, the selection score of :func:`train_custom`. Returns the record
    ``{"chosen", "val_miou_stage2_plain", "val_miou_stage2_flip"}`` that :func:`train_custom` keeps
    in ``best.pt``'s metadata (read by :func:`samstudy.custom.model.load_custom`). Test data never
    enter: the choice is part of training. Without validation objects the flip stays off."""
    if not val_batches:
        return {"chosen": False, "val_miou_stage2_plain": None, "val_miou_stage2_flip": None}
    model = model.to(val_batches[0]["rgb2"].device)
    plain, flip = validate(model, val_batches)[1], validate(model, val_batches, flip=True)[1]
    return {"chosen": bool(flip > plain), "val_miou_stage2_plain": plain, "val_miou_stage2_flip": flip}


class BudgetTooSmallError(ValueError):
    """The wall-clock budget ends before the first epoch; the message gives the time per step."""


def _finish_best(best_path: Path, limited: bool, epochs_done: int,
                 val_batches: Sequence[dict[str, torch.Tensor]] | None) -> dict[str, Any] | None:
    """Complete ``best.pt``'s metadata in one read and at most one write: whether the budget cut the
    run short, and, once training is done (``val_batches`` given, possibly empty), the flip choice
    (:func:`choose_flip_tta`, made once). Rewritten only when something changes, so a finished
    run's checkpoint stays byte-identical. Returns the flip record (``None`` before it is made)."""
    if not best_path.exists():
        return None
    model, payload = read_checkpoint(best_path)
    meta = dict(payload.get("meta", {}))
    new = {**meta, "budget_limited": limited, "epochs_done": epochs_done}
    if val_batches is not None and new.get("flip_tta") is None:
        new["flip_tta"] = choose_flip_tta(model, val_batches)
    if new != meta:
        save_checkpoint(best_path, {**payload, "meta": new})
    return new.get("flip_tta")


def _count(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["reason"]] = out.get(r["reason"], 0) + 1
    return out


@torch.no_grad()
def simulate_clicks(model: CustomModel, batch: dict[str, torch.Tensor], config: CustomConfig, n_clicks: int
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """RITM iterative training: ``n_clicks`` rounds of "predict, then click on the error".

    Round ``k`` runs stage 1 (no gradient, the model's current mode) with the ``k`` clicks so far
    and the previous round's logits as mask input, and places click ``k + 1`` per object with
    :func:`samstudy.clicks.next_click` on the ``R`` crop (ground truth = soft target > 0.5; earlier
    clicks blocked), the rule of the evaluation's simulator. Returns ``clicks float32 (B, n, 3)``
    (``x, y, label`` in ``R`` crop pixels; -1 rows when an object had no error left) and
    ``prev_logits (B, 1, R, R)`` = the last round's prediction, which the training step then
    takes as mask input together with all ``n`` clicks, and the batch's click-free inputs.
    """
    r = config.refine_size
    b = batch["rgb2"].shape[0]
    gt = (batch["mask2"][:, 0] > 0.5).cpu().numpy()
    clicks = np.full((b, n_clicks, 3), -1.0, dtype=np.float32)
    done: list[list[Click]] = [[] for _ in range(b)]
    prev = None
    base = prepare_inputs(batch["rgb2"], batch["points2"], batch["pbox2"], config, batch["scale2"])
    for k in range(n_clicks):
        ct = torch.from_numpy(clicks[:, :k]).to(batch["rgb2"].device) if k else None
        inputs = with_interaction(base, config, ct, prev)
        logits1 = model.stage1(inputs["x1"], inputs.get("rgb01_half"))
        prev = F.interpolate(logits1, size=(r, r), mode="bilinear", align_corners=False)
        pred = (prev[:, 0] > 0).cpu().numpy()
        for i in range(b):
            c = next_click(gt[i], pred[i], clicked=done[i])
            if c is not None:
                done[i].append(c)
                clicks[i, k] = (c.x, c.y, 1.0 if c.is_positive else 0.0)
    return torch.from_numpy(clicks).to(batch["rgb2"].device), prev, base


def refine_windows(model: CustomModel, inputs: dict[str, torch.Tensor], base1: torch.Tensor, target: torch.Tensor,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage 2's training pass: on one ``stage2_patch`` window per object centred on a random pixel of
    the GT boundary or of stage 2's band around ``base1`` (where it acts), or on the whole crop when
    the window is not smaller. ``base1 (B, 1, S, S)`` stage 2's input logits, ``target (B, 1, R, R)``
    the soft ground truth. Returns ``(logits2, target)`` of the windows, ``(B, 1, P, P)`` each."""
    config = model.config
    r, patch = config.refine_size, config.stage2_patch
    if patch >= r:
        return model.refine(inputs, base1), target
    up = F.interpolate(base1, size=(r, r), mode="bilinear", align_corners=False)
    where = boundary_band(target > 0.5, 1) | boundary_band(up > 0, config.refine_band)
    corners = boundary_corners(where, patch, rng)
    return model.refine(inputs, base1, corners, patch), crop_patches(target, corners, patch)


def _train_step(model: CustomModel, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
                config: CustomConfig, rng: np.random.Generator) -> tuple[float, float, float]:
    if config.max_train_clicks > 0 and rng.random() < config.click_prob:
        clicks, prev, base = simulate_clicks(model, batch, config, int(rng.integers(1, config.max_train_clicks + 1)))
        inputs = with_interaction(base, config, clicks, prev)
    else:
        inputs = prepare_inputs(batch["rgb2"], batch["points2"], batch["pbox2"], config, batch["scale2"])
    target = batch["mask2"]
    logits1 = model.stage1(inputs["x1"], inputs.get("rgb01_half"))
    # Stage 2's input: stage 1's logits, or for a share of objects a deformed ground truth
    # (samstudy.custom.perturb: the errors stage 1 makes on unseen objects, not on these).
    base1 = mix_base_logits(logits1, F.avg_pool2d(target, config.refine_scale), rng, config.stage2_perturb,
                            config.perturb_shift_px, config.perturb_morph_px)
    logits2, target_patch = refine_windows(model, inputs, base1, target, rng)
    loss1, loss2 = stage_losses(logits1, logits2, target, target_patch, config.boundary_weight)
    loss = loss1 + loss2
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item(), loss1.item(), loss2.item()


# ----------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    from ..data import load_coco
    from ..splits import split_by_image

    ap = argparse.ArgumentParser(prog="python -m samstudy.custom.train", description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="COCO instances JSON")
    ap.add_argument("--images", required=True, help="image folder")
    ap.add_argument("--out", required=True, help="output folder (checkpoints, curve.csv)")
    ap.add_argument("--minutes", type=float, default=None, help="wall-clock budget (default: epochs only)")
    ap.add_argument("--epochs", type=int, default=CustomConfig.epochs)
    ap.add_argument("--init", default=CustomConfig.init, choices=("scratch", "litemedsam_stem"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-fraction", type=float, default=0.0,
                    help="hold out this share of images (split_by_image, same seed) and train on the rest")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=CustomConfig.num_threads)
    args = ap.parse_args(argv)
    ds = load_coco(args.data, args.images)
    if args.test_fraction > 0:
        train_ids, _ = split_by_image(ds, args.test_fraction, args.seed)
        ds = ds.subset(train_ids, name=f"{ds.name}-train")
    cfg = CustomConfig(epochs=args.epochs, max_minutes=args.minutes, init=args.init, seed=args.seed,
                       device=args.device, num_threads=args.threads)
    best = train_custom(ds, cfg, args.out)
    print(best)
    return 0


if __name__ == "__main__":
    sys.exit(main())
