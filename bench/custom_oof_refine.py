"""Stage 2 trained on stage 1's *out-of-fold* errors, chosen on validation only (a script, not a test).

    PYTHONPATH=lib .venv/bin/python bench/custom_oof_refine.py --run results/shared-coco \\
        --checkpoint results/shared-coco/train_custom/<training>/best.pt [--folds 2] [--samples 4]

The hypothesis tested: stage 2 trains on stage 1's output *on its own training objects*, which stage 1
has fitted (239 images), so stage 2 may learn to trust it and correct little on unseen objects. Here the
train split minus the checkpoint's validation images is cut into ``--folds`` folds by image; a model
is trained on all folds but one (:func:`samstudy.custom.train.train_custom`, the checkpoint's config),
and its stage 1 predicts the held-out fold (``--samples`` augmented samples per object, the training
augmentation): stage 1's real errors on objects it never saw. A new stage 2 is then trained on that
bank and scored on the checkpoint's validation images with the checkpoint's stage 1 (engine,
``extreme_points``, full resolution), against the checkpoint's own stage 2. Never reads the test split.

Writes ``<run>/oof/``: ``fold<k>/`` (trainings, resumable), ``<variant>/{best.pt,curve.csv,train_meta.json}``
(the checkpoint with the new stage 2), ``val/`` (engine rows) and ``table.csv``. Measured on shared-coco
(2026-12-07, README): no variant beat the jointly trained stage 2 on validation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "lib"))  # after PYTHONPATH: a caller may put another checkout first

from samstudy import data_stage  # noqa: E402
from samstudy.custom import CustomConfig, train_custom  # noqa: E402
from samstudy.custom.model import (Stage2Net, model_payload, prepare_inputs, read_checkpoint,  # noqa: E402
                                   save_checkpoint, stage_stats, with_interaction)
from samstudy.custom.train import (_lr_at, collect_objects, eval_batches, make_batch, make_sample,  # noqa: E402
                                   refine_windows, simulate_clicks, stage_losses, validate)
from custom_variants import score_variant  # noqa: E402  (bench/ is on sys.path when run as a script)


def fold_image_ids(image_ids: list[int], folds: int, seed: int) -> list[list[int]]:
    """``image_ids`` in a seeded random order, dealt into ``folds`` lists (sorted)."""
    order = np.random.default_rng([seed, 11]).permutation(sorted(image_ids))
    return [sorted(int(i) for i in order[k::folds]) for k in range(folds)]


def train_folds(train, meta: dict, out: Path, folds: int) -> list[tuple[Path, list[int]]]:
    """One training per fold on the other folds; returns ``(best.pt, held-out image ids)`` per fold."""
    val_ids = set(meta["val_image_ids"])
    ids = [i for i in train.images if i not in val_ids]
    parts = fold_image_ids(ids, folds, meta["config"]["seed"])
    config = CustomConfig.from_dict({**meta["config"], "max_minutes": None})
    done = []
    for k, held in enumerate(parts):
        rest = sorted(set(ids) - set(held))
        best = train_custom(train.subset(rest, name=f"{train.name}-oof{k}"), config, out / f"fold{k}", progress=False)
        done.append((best, held))
        print(f"fold {k}: {len(rest)} training images, {len(held)} held out -> {best}", flush=True)
    return done


@torch.no_grad()
def oof_bank(fold_best: Path, train, held: list[int], config: CustomConfig, samples: int, chunk: int = 64
             ) -> dict[str, torch.Tensor]:
    """Stage 1 of the fold model on its held-out images: ``samples`` augmented samples per object
    (``make_sample`` / ``make_batch`` with ``rng([seed, 100 + s])``; a chunk gets simulated corrective
    clicks with probability ``click_prob``, as in training). Returns ``x2 float16 (N, 10, R, R)``,
    ``logits1 float16 (N, 1, S, S)``, ``mask2 float16 (N, 1, R, R)``."""
    model, _ = read_checkpoint(fold_best)
    objects, images, _ = collect_objects(train.subset(held))
    out: dict[str, list[torch.Tensor]] = {"x2": [], "logits1": [], "mask2": []}
    for s in range(samples):
        rng = np.random.default_rng([config.seed, 100 + s])
        for i in range(0, len(objects), chunk):
            part = objects[i:i + chunk]
            batch = make_batch([make_sample(o, images[o.image_id], config, rng) for o in part], rng, torch.device("cpu"))
            if config.max_train_clicks > 0 and rng.random() < config.click_prob:
                clicks, prev, base = simulate_clicks(model, batch, config, int(rng.integers(1, config.max_train_clicks + 1)))
                inputs = with_interaction(base, config, clicks, prev)
            else:
                inputs = prepare_inputs(batch["rgb2"], batch["points2"], batch["pbox2"], config, batch["scale2"])
            out["logits1"].append(model.stage1(inputs["x1"], inputs.get("rgb01_half")).half())
            out["x2"].append(inputs["x2"].contiguous().half())
            out["mask2"].append(batch["mask2"].half())
    return {k: torch.cat(v) for k, v in out.items()}


def train_stage2(model, bank: dict[str, torch.Tensor], val_batches, epochs: int, lr: float, seed: int,
                 init: str, batch_size: int = 16, widths2: list[int] | None = None) -> tuple[dict, list[dict]]:
    """Train ``model.stage2`` (stage 1 frozen; ``init`` warm = from the checkpoint's stage 2, or
    scratch; ``widths2``: another stage-2 width, from scratch) on the bank with the training step's stage-2 loss and
    boundary windows; best epoch by validation stage-2 crop IoU. Returns ``(best state, curve)``."""
    if widths2 is not None:  # a wider (or narrower) stage 2, trained from scratch
        model.config = dataclasses.replace(model.config, widths2=tuple(widths2))
        init = "scratch"
    config = model.config
    if init == "scratch":
        torch.manual_seed(seed)
        model.stage2 = Stage2Net(config.widths2).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.stage2.parameters(), lr=lr, weight_decay=config.weight_decay)
    n = bank["x2"].shape[0]
    steps_per_epoch, total = n // batch_size, epochs * (n // batch_size)
    v1, v2 = validate(model, val_batches)
    curve = [{"epoch": 0, "val_miou_stage1": v1, "val_miou_stage2": v2, "train_loss2": float("nan")}]
    best = (v2, {k: t.clone() for k, t in model.stage2.state_dict().items()})
    step = 0
    for epoch in range(1, epochs + 1):
        rng = np.random.default_rng([seed, 1000 + epoch])
        order = rng.permutation(n)
        model.stage2.train()
        losses = []
        for k in range(steps_per_epoch):
            for g in opt.param_groups:
                g["lr"] = _lr_at(step / total, lr)
            idx = torch.from_numpy(order[k * batch_size:(k + 1) * batch_size])
            x2, logits1 = bank["x2"][idx].float(), bank["logits1"][idx].float()
            target = bank["mask2"][idx].float()
            logits2, target_patch = refine_windows(model, {"x2": x2}, logits1, target, rng)
            _, loss2 = stage_losses(logits1, logits2, target, target_patch, config.boundary_weight)
            opt.zero_grad(set_to_none=True)
            loss2.backward()
            opt.step()
            losses.append(loss2.item())
            step += 1
        model.stage2.eval()
        v1, v2 = validate(model, val_batches)
        curve.append({"epoch": epoch, "val_miou_stage1": v1, "val_miou_stage2": v2, "train_loss2": float(np.mean(losses))})
        print(f"  epoch {epoch}: loss2 {np.mean(losses):.4f}, val stage 1 {v1:.4f}, stage 1+2 {v2:.4f}", flush=True)
        if v2 > best[0]:
            best = (v2, {k: t.clone() for k, t in model.stage2.state_dict().items()})
    return best[1], curve


def val_batches_of(train, meta: dict, config: CustomConfig) -> list[dict[str, torch.Tensor]]:
    """The checkpoint's validation objects as un-augmented crop batches (as in ``train_custom``)."""
    objects, images, _ = collect_objects(train.subset(meta["val_image_ids"]))
    return eval_batches(objects, images, config, torch.device("cpu"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--checkpoint", required=True, help="the custom model whose stage 1 is kept (best.pt)")
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--only-folds", action="store_true", help="train the fold models, then stop")
    ap.add_argument("--samples", type=int, default=4, help="augmented samples per held-out object")
    ap.add_argument("--variant", action="append", default=None,
                    help="NAME=JSON with init (warm|scratch), epochs, lr (default: warm and scratch, 8 epochs)")
    ap.add_argument("--n-boot", type=int, default=2000)
    args = ap.parse_args()
    run, ckpt = Path(args.run), Path(args.checkpoint)
    torch.set_num_threads(1)
    train = data_stage.load_train_set(run / "data")
    if train is None:
        raise SystemExit(f"{run}/data has no train split: run the data stage first")
    meta = json.loads((ckpt.parent / "train_meta.json").read_text())
    out = run / "oof"
    folds = train_folds(train, meta, out, args.folds)
    if args.only_folds:
        return 0
    config = CustomConfig.from_dict(meta["config"])
    t0 = time.perf_counter()
    parts = [oof_bank(best, train, held, config, args.samples) for best, held in folds]
    bank = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    print(f"bank: {bank['x2'].shape[0]} samples in {time.perf_counter() - t0:.0f} s", flush=True)
    val_batches = val_batches_of(train, meta, config)
    variants = [v.partition("=") for v in args.variant] if args.variant else [
        ("warm", "", '{"init": "warm", "epochs": 8, "lr": 1e-3}'), ("scratch", "", '{"init": "scratch", "epochs": 8, "lr": 3e-3}')]
    rows = score_variant("checkpoint", ckpt, train, out / "val" / "checkpoint", args.n_boot, flip_tta=True)
    for name, _, js in variants:
        opts = json.loads(js)
        model, payload = read_checkpoint(ckpt)
        t0 = time.perf_counter()
        state, curve = train_stage2(model, bank, val_batches, int(opts["epochs"]), float(opts["lr"]), config.seed,
                                    opts.get("init", "warm"), widths2=opts.get("widths2"))
        minutes = (time.perf_counter() - t0) / 60
        model.stage2.load_state_dict(state)
        vdir = out / name
        vdir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(curve).to_csv(vdir / "curve.csv", index=False)
        save_checkpoint(vdir / "best.pt", model_payload(model, {**payload["meta"], "stage2_oof": {**opts, "folds": args.folds,
                                                                                                "samples": args.samples}}))
        # score_variant reads the validation images, stage sizes and config from train_meta.json
        (vdir / "train_meta.json").write_text(json.dumps({**meta, "stages": stage_stats(model),
                                                          "config": model.config.to_dict()}))
        for r in score_variant(name, vdir / "best.pt", train, out / "val" / name, args.n_boot, flip_tta=True):
            rows.append({**r, "stage2_train_minutes": minutes})
        print(pd.DataFrame(rows).drop(columns=["options"]).to_string(), flush=True)
    pd.DataFrame(rows).to_csv(out / "table.csv", index=False)
    print(f"wrote {out / 'table.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
