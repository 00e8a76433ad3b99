"""Encoder LoRA of the fine-tuned arm (``FinetuneConfig.encoder_lora_rank > 0``; samstudy.lora).

Tiny random SAM-family models (the helpers and fixtures of test_finetune / test_finetune_models):
rank 0 is the decoder-only run; with rank > 0 only the adapters and the decoder parts get gradients
and the base encoder stays bit-identical; the merged ``finetuned.pth`` loaded into a plain model
encodes as the adapted one (and as ``W + alpha/rank * B @ A`` computed here from ``last.pt``); every
other key is the base file's; bad values are ValueErrors naming the field.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from samstudy.cache import EmbeddingCache
from samstudy.finetune import (FinetuneConfig, _encoder_lora, _trainable, _train_mode, collect_objects,
                               encoder_train_step, finetune, sample_prompt, seg_encoder_hash, train_dir)
from samstudy.lora import EncoderLora, LoraLinear, lora_target_names
from samstudy.models import build_model
from samstudy.models.sam import SamSegmenter, load_sam
from test_finetune import (TINY, TINY_NAME, tiny_ckpt, tiny_config, tiny_model, tiny_registered,  # noqa: F401
                           trained_parts, world)
from test_finetune_models import FAMILIES, _image, _save

RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    from samstudy.compute import torch_settings

    with torch_settings(1):
        yield


def lora_config(ckpt: str, **kw) -> FinetuneConfig:
    return tiny_config(ckpt, **{"epochs": 1, "lr": 1e-2, "encoder_lora_rank": RANK, "encoder_lora_alpha": ALPHA, **kw})


@pytest.fixture(scope="module")
def lora_run(tiny_ckpt, tiny_registered, world, tmp_path_factory) -> Path:
    """One epoch of encoder LoRA on the tiny SAM (best epoch = last epoch: last.pt holds its adapters)."""
    out = tmp_path_factory.mktemp("lora")
    return finetune(world, lora_config(tiny_ckpt), out, model=tiny_model(tiny_ckpt), progress=False)


def same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Same names in the same order, bit-identical tensors (the .pth bytes differ: torch.save names
    its archive after the temporary file)."""
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def _encoder_out(seg: SamSegmenter, image: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return seg.encode_train(image).features


def _world_image(world) -> np.ndarray:
    from samstudy.data import read_image

    return read_image(world.images[1].path)


# --------------------------------------------------------------------------------------- (a) rank 0
def test_rank_0_is_the_decoder_only_run_bit_for_bit(tiny_ckpt, tiny_registered, world, tmp_path, monkeypatch):
    from samstudy.data_stage import training_dir
    from samstudy.finetune import arm_dir

    plain = tiny_config(tiny_ckpt, epochs=2)
    zero = dataclasses.replace(plain, encoder_lora_alpha=3.0, encoder_lora_targets=("attn.qkv",))
    assert zero.to_dict() == plain.to_dict() and not any(k.startswith("encoder_lora") for k in plain.to_dict())
    # the training key is the one of the config without the LoRA fields, augment "none" and no decoder chunk (folders
    # written before those fields existed are kept)
    data = tmp_path / "train.json"
    data.write_text("{}")
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"num_threads", "device", "max_minutes",
                                                                      "encoder_lora_rank", "encoder_lora_alpha",
                                                                      "encoder_lora_targets", "augment", "decoder_chunk"}
    pre_lora = {k: (dict(v) if k == "options" else v) for k, v in dataclasses.asdict(plain).items() if k in fields}
    assert train_dir(tmp_path, zero, data) == training_dir(arm_dir(tmp_path, TINY_NAME, "box"), pre_lora, data)
    a = finetune(world, plain, tmp_path / "plain", model=tiny_model(tiny_ckpt), progress=False)
    seg = tiny_model(tiny_ckpt)
    monkeypatch.setattr(seg, "encode_train", lambda image: pytest.fail("rank 0 ran the encoder with autograd"))
    b = finetune(world, zero, tmp_path / "zero", model=seg, progress=False)
    sa, sb = trained_parts(a), trained_parts(b)
    assert same_tensors(sa, sb)
    assert "lora" not in torch.load(tmp_path / "zero" / "last.pt", weights_only=False)
    assert "encoder_lora" not in json.loads(b.with_suffix(".json").read_text())


# ----------------------------------------------------------------------------------- (b) gradients
def test_only_the_adapters_and_the_decoder_parts_get_gradients(tiny_ckpt, world):
    seg = tiny_model(tiny_ckpt)
    base = trained_parts(Path(tiny_ckpt))
    enc_hash = seg_encoder_hash(seg)
    objs, embs, _ = collect_objects(world, seg, EmbeddingCache(None), encode=False)
    assert embs == {}
    params = _trainable(seg)
    lora = _encoder_lora(seg, lora_config(tiny_ckpt))
    assert lora.layers and all(isinstance(seg.model.image_encoder.get_submodule(n), LoraLinear) for n in lora.layers)
    opt = torch.optim.AdamW(params + lora.parameters(), lr=1e-2)
    images = {i: _image((64, 64), i) for i in {o.image_id for o in objs}}
    rng = np.random.default_rng(0)
    batch = [o for o in objs if o.image_id in (1, 2)][:3]
    _train_mode(seg)
    for _ in range(3):  # A's gradient is 0 while B is 0: after the first step both move
        prompts = [sample_prompt("box", o, rng) for o in batch]
        encoder_train_step(seg, opt, batch, prompts, lambda key: images[key[0]])  # reader: (image_id, view)
    seg.model.eval()
    adapters = {id(p) for p in lora.parameters()}
    graded = set()
    for name, p in seg.model.named_parameters():
        trainable = name.split(".")[0] in seg.trainable_parts or id(p) in adapters
        assert p.requires_grad == trainable, name
        if p.grad is not None:  # box prompts leave e.g. the point embeddings without a gradient
            assert trainable, name
            graded.add(name.split(".")[0])
    assert graded == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert all(p.grad is not None and float(p.grad.abs().max()) > 0 for p in lora.parameters())
    # the base encoder's tensors never moved (read through the wrapped layers' .base)
    lora.remove()
    now = seg.model.state_dict()
    assert list(now) == list(base)  # the plain architecture again
    assert all(torch.equal(now[k], base[k]) for k in base if k.startswith("image_encoder."))
    assert seg_encoder_hash(seg) == enc_hash
    assert any(not torch.equal(now[k], base[k]) for k in base if k.startswith("mask_decoder."))


# ---------------------------------------------------------------------------------- (c) the merge
def test_the_merge_is_w_plus_scaled_b_a_and_the_plain_model_encodes_as_the_adapted_one(tiny_ckpt, world, lora_run):
    base, merged = trained_parts(Path(tiny_ckpt)), trained_parts(lora_run)
    adapters = torch.load(lora_run.parent / "last.pt", weights_only=False)["lora"]
    layers = sorted({k.rsplit(".", 1)[0] for k in adapters})
    assert layers == lora_target_names(load_sam(tiny_ckpt, TINY).image_encoder, ("attn.qkv", "attn.proj"))
    for layer in layers:  # by hand: W + alpha / rank * B @ A
        A, B = adapters[f"{layer}.lora_A"], adapters[f"{layer}.lora_B"]
        want = base[f"image_encoder.{layer}.weight"] + (ALPHA / RANK) * B @ A
        torch.testing.assert_close(merged[f"image_encoder.{layer}.weight"], want, atol=1e-6, rtol=0)
        assert float((B @ A).abs().max()) > 1e-4  # the adapters did train
    # the adapted encoder (fresh base model + last.pt's adapters) vs the plain architecture loading the file
    image = _world_image(world)
    adapted = tiny_model(tiny_ckpt)
    lora = EncoderLora(adapted.model.image_encoder, ("attn.qkv", "attn.proj"), RANK, ALPHA, seed=0)
    lora.load_state_dict(adapters)
    plain = SamSegmenter(load_sam(lora_run, TINY), name="plain", label="plain", checkpoint_sha256="x")
    got, want = plain.encode(image).features, _encoder_out(adapted, image)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert float((got - _encoder_out(tiny_model(tiny_ckpt), image)).abs().max()) > 1e-4  # not the base encoder


def test_the_lora_arm_gets_its_own_cache_key_and_records_the_adapters(tiny_ckpt, tiny_registered, world, lora_run):
    meta = json.loads(lora_run.with_suffix(".json").read_text())
    info = meta["encoder_lora"]
    assert (info["rank"], info["alpha"], info["scale"], info["targets"]) == (RANK, ALPHA, ALPHA / RANK,
                                                                            ["attn.qkv", "attn.proj"])
    assert info["layers"] == ["blocks.0.attn.proj", "blocks.0.attn.qkv"]
    assert meta["config"]["encoder_lora_rank"] == RANK and meta["encoder_sha256"] == seg_encoder_hash(tiny_model(tiny_ckpt))
    base = build_model(TINY_NAME, checkpoint=tiny_ckpt)
    arm = build_model("finetuned", checkpoint=lora_run)
    # the merged encoder hashes differently from the recorded base encoder: the arm keys its own embeddings
    assert seg_encoder_hash(arm.inner) != meta["encoder_sha256"]
    assert arm.cache_key == arm.inner.cache_key != base.cache_key
    assert f"(decoder + encoder LoRA r{RANK}, sha256 {arm.checkpoint_sha256[:8]})" in arm.label
    image = _world_image(world)
    torch.testing.assert_close(arm.encode(image).features, _encoder_out(
        SamSegmenter(load_sam(lora_run, TINY), name="p", label="p", checkpoint_sha256="x"), image), atol=0, rtol=0)


def test_validation_runs_with_the_adapted_encoder(tiny_ckpt, tiny_registered, world, tmp_path, monkeypatch):
    """The embeddings validation decodes on are the merged plain model's (1e-5), not the base encoder's."""
    import samstudy.finetune as ft

    seen: dict[int, torch.Tensor] = {}
    real = ft.validate

    def spy(seg, objs, embeddings, modes, seed):
        seen.update({o.image_id: embeddings[o.key].features.clone() for o in objs})
        return real(seg, objs, embeddings, modes, seed)

    monkeypatch.setattr(ft, "validate", spy)
    path = finetune(world, lora_config(tiny_ckpt), tmp_path, model=tiny_model(tiny_ckpt), progress=False)
    from samstudy.data import read_image

    assert seen
    plain = SamSegmenter(load_sam(path, TINY), name="p", label="p", checkpoint_sha256="x")
    base = tiny_model(tiny_ckpt)
    for image_id, features in seen.items():
        image = read_image(world.images[image_id].path)
        torch.testing.assert_close(features, plain.encode(image).features, atol=1e-5, rtol=0)
        assert float((features - base.encode(image).features).abs().max()) > 1e-4


# ------------------------------------------------------------------------------ (d) the other keys
def test_the_merged_checkpoint_keeps_every_other_key_of_the_base_file(tiny_ckpt, lora_run):
    base, merged = trained_parts(Path(tiny_ckpt)), trained_parts(lora_run)
    assert list(merged) == list(base)
    targeted = {f"image_encoder.{n}.weight" for n in json.loads(lora_run.with_suffix(".json").read_text())
                ["encoder_lora"]["layers"]}
    differ = {k for k in base if not torch.equal(base[k], merged[k])}
    assert targeted <= differ and all(k.split(".")[0] in SamSegmenter.trainable_parts for k in differ - targeted)
    untouched = [k for k in base if k.split(".")[0] not in SamSegmenter.trainable_parts and k not in targeted]
    # (segment_anything keeps pixel_mean/std out of the state dict: here every other key is the encoder's;
    # the families below have non-encoder frozen keys)
    assert any(k.endswith("attn.qkv.bias") for k in untouched) and any(".mlp." in k for k in untouched)
    assert all(torch.equal(base[k], merged[k]) for k in untouched)


@pytest.mark.parametrize("family", ["hq_sam", "sam2.1"])
def test_other_families_merge_into_their_own_format(family, tmp_path):
    """HQ-SAM (its image-path fusion layers stay frozen) and SAM 2.1 (``{"model": ...}`` file; Hiera's
    block-level ``proj`` Linear is not an attention layer: not adapted)."""
    from test_finetune import ring_world

    name, factory, options, wrapped = FAMILIES[family]
    torch.manual_seed(5)
    path = tmp_path / "tiny.pth"
    _save(factory(), path, wrapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = build_model(name, checkpoint=path, factory=factory, num_threads=1, **options)
    cfg = FinetuneConfig(model=name, checkpoint=str(path), options=dict(options), epochs=1, batch_size=2, lr=1e-2,
                         val_fraction=0.25, num_threads=1, encoder_lora_rank=2)
    ckpt = finetune(ring_world(tmp_path / "w", 3, size=48), cfg, tmp_path / "ft", model=seg, progress=False)
    base, new = torch.load(path, weights_only=True), torch.load(ckpt, weights_only=True)
    assert type(new) is type(base) and set(new) == set(base)
    sb, sn = (base["model"], new["model"]) if wrapped else (base, new)
    layers = json.loads(ckpt.with_suffix(".json").read_text())["encoder_lora"]["layers"]
    assert layers and all(n.endswith(("attn.qkv", "attn.proj")) for n in layers)
    targeted = {f"image_encoder.{n}.weight" for n in layers}
    frozen = [k for k in sb if k not in targeted and (k.split(".")[0] not in seg.trainable_parts or any(
        k.startswith(p + ".") or k == p for p in seg.embedding_parts))]
    assert all(not torch.equal(sb[k], sn[k]) for k in targeted)
    assert all(torch.equal(sb[k], sn[k]) for k in frozen)
    outside = [k for k in frozen if not k.startswith("image_encoder.")]  # HQ: its fusion; SAM 2.1: memory parts...
    assert outside, "the test needs non-encoder frozen keys"
    if family == "sam2.1":
        assert any(k.endswith(".proj.weight") and ".attn." not in k for k in sb if k.startswith("image_encoder."))
    # the plain architecture loads the merged file and encodes as the adapted model's last state
    adapted = build_model(name, checkpoint=path, factory=factory, num_threads=1, **options)
    lora = EncoderLora(adapted.model.image_encoder, cfg.encoder_lora_targets, 2, cfg.encoder_lora_alpha, 0)
    lora.load_state_dict(torch.load(ckpt.parent / "last.pt", weights_only=False)["lora"])
    plain = build_model(name, checkpoint=ckpt, factory=factory, num_threads=1, **options)
    image = _image((40, 52), 4)
    with torch.no_grad():
        a, p = adapted.encode_train(image), plain.encode_train(image)
    torch.testing.assert_close(p.features, a.features, atol=1e-5, rtol=0)
    for k in a.extra:
        torch.testing.assert_close(p.extra[k], a.extra[k], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["sam", "hq_sam", "sam2.1"])
def test_encode_train_is_encode_with_autograd(family, tiny_ckpt):
    """Under no_grad in eval mode, the differentiable image path equals the cached one (torch runtime)."""
    if family == "sam":
        seg = tiny_model(tiny_ckpt)
    else:
        name, factory, options, _ = FAMILIES[family]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = build_model(name, random_init=True, factory=factory, num_threads=1, **options)
    image = _image((40, 52), 3)
    ref = seg.encode(image)
    got = seg.encode_train(image)
    assert got.features.requires_grad and got.model_key is None
    assert (got.original_hw, got.input_hw, sorted(got.extra)) == (ref.original_hw, ref.input_hw, sorted(ref.extra))
    with torch.no_grad():
        got = seg.encode_train(image)
    for a, b in [(got.features, ref.features)] + [(got.extra[k], ref.extra[k]) for k in ref.extra]:
        assert a.dtype == torch.float32 and a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ determinism, key, resume checks
def test_lora_resume_is_bit_identical_and_the_lora_fields_key_the_run(tiny_ckpt, tiny_registered, world, tmp_path):
    cfg = lora_config(tiny_ckpt, epochs=2)
    ref = finetune(world, cfg, tmp_path / "ref", model=tiny_model(tiny_ckpt), progress=False)
    seg = tiny_model(tiny_ckpt)
    finetune(world, cfg, tmp_path / "cut", model=seg, progress=False, stop_after_epochs=1)
    assert list(seg.model.state_dict()) == list(trained_parts(Path(tiny_ckpt)))  # adapters removed afterwards
    resumed = finetune(world, cfg, tmp_path / "cut", model=tiny_model(tiny_ckpt), progress=False)
    assert same_tensors(trained_parts(ref), trained_parts(resumed))
    with pytest.raises(ValueError, match="encoder_lora_alpha"):
        finetune(world, dataclasses.replace(cfg, encoder_lora_alpha=2.0), tmp_path / "cut",
                 model=tiny_model(tiny_ckpt), progress=False)
    data = tmp_path / "train.json"
    data.write_text("{}")
    keys = {train_dir(tmp_path, c, data) for c in
            (dataclasses.replace(cfg, encoder_lora_rank=0), cfg, dataclasses.replace(cfg, encoder_lora_rank=8),
             dataclasses.replace(cfg, encoder_lora_alpha=16.0), dataclasses.replace(cfg, encoder_lora_targets=("qkv",)))}
    assert len(keys) == 5
    assert train_dir(tmp_path, dataclasses.replace(cfg, device="cuda"), data) == train_dir(tmp_path, cfg, data)
    back = FinetuneConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))  # YAML/JSON lists -> the same config
    assert back == cfg and back.encoder_lora_targets == ("attn.qkv", "attn.proj")


# ----------------------------------------------------------------------------------- (e) bad values
@pytest.mark.parametrize("field,value", [
    ("encoder_lora_rank", -1), ("encoder_lora_rank", 2.5), ("encoder_lora_rank", True), ("encoder_lora_rank", "8"),
    ("encoder_lora_alpha", 0), ("encoder_lora_alpha", -2.0), ("encoder_lora_alpha", float("nan")),
    ("encoder_lora_alpha", float("inf")), ("encoder_lora_alpha", "8"),
    ("encoder_lora_targets", ()), ("encoder_lora_targets", "attn.qkv"), ("encoder_lora_targets", ("",)),
    ("encoder_lora_targets", (".qkv",)), ("encoder_lora_targets", (3,)),
])
def test_bad_values_are_value_errors_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        FinetuneConfig(**{field: value})


def test_targets_matching_no_linear_layer_are_refused_before_training(tiny_ckpt, tiny_registered, world, tmp_path):
    with pytest.raises(ValueError, match="encoder_lora_targets .*match no nn.Linear"):
        finetune(world, lora_config(tiny_ckpt, encoder_lora_targets=("attn.nope",)), tmp_path / "x",
                 model=tiny_model(tiny_ckpt), progress=False)
    assert not (tmp_path / "x" / "last.pt").exists()
    # EfficientViT-SAM's attention has no nn.Linear: the message says so
    from test_models_released import _tiny_efficientvit_sam

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evit = build_model("efficientvit_sam_l0", random_init=True, factory=_tiny_efficientvit_sam, num_threads=1)
    with pytest.raises(ValueError, match="encoder_lora_targets .*uses no nn.Linear"):
        _encoder_lora(evit, FinetuneConfig(model="efficientvit_sam_l0", encoder_lora_rank=4))
