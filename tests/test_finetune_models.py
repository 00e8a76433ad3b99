"""Fine-tuning every SAM-family segmenter through its own ``decode_train`` (samstudy.finetune).

Tiny random-init models of each family (the helpers of test_finetune, test_models_released and
test_models_sam2; LiteMedSAM is the released one): ``decode_train`` in eval mode equals the model's
own ``decode``; a few steps on a fixed batch lower the loss and change only the trainable parts; the
fine-tuned checkpoint keeps the base file's format and loads through the official loader and the
registry; ``batches_across_images`` is True only for decoders taking per-prompt image embeddings.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from samstudy.cache import EmbeddingCache
from samstudy.finetune import (FinetuneConfig, _trainable, _train_mode, batches_across_images, collect_objects,
                               finetune, sample_prompt, seg_encoder_hash, train_step)
from samstudy.models import build_model
from samstudy.prompts import Prompt
from test_finetune import TINY as TINY_SAM, ring_world
from test_models_released import _tiny_efficientvit_sam, _tiny_hq_sam, _tiny_mobile_sam
from test_models_sam2 import CONFIG as SAM2_CONFIG, TINY as SAM2_TINY, _tiny_factory as _sam2_factory

TOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    from samstudy.compute import torch_settings

    with torch_settings(1):
        yield


def _tiny_sam():
    from samstudy.models.sam import build_sam_module

    return build_sam_module(TINY_SAM).eval()


def _save(module: torch.nn.Module, path, wrapped: bool) -> None:
    torch.save({"model": module.state_dict()} if wrapped else module.state_dict(), path)


# family: (registry name, tiny factory or None for the released weights, builder options, checkpoint wrapped)
FAMILIES = {
    "hq_sam": ("sam_hq_vit_b", _tiny_hq_sam, {}, False),
    "hq_sam_token_only": ("sam_hq_vit_b", _tiny_hq_sam, {"hq_token_only": True}, False),
    "sam2.1": ("sam2.1_hiera_t", _sam2_factory(), {}, True),
}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def built(request, tmp_path_factory):
    """(family, registry name, checkpoint path, factory, options, segmenter) of a tiny random model."""
    name, factory, options, wrapped = FAMILIES[request.param]
    torch.manual_seed(5)
    module = factory()
    path = tmp_path_factory.mktemp(request.param.replace(".", "_")) / "tiny.pth"
    _save(module, path, wrapped)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = build_model(name, checkpoint=path, factory=factory, num_threads=1, decode_chunk=8, **options)
    return request.param, name, path, factory, options, seg


def _prompts(H: int, W: int) -> dict[str, list[Prompt]]:
    """Two prompts per kind (same box presence and point count, as a decoder call needs)."""
    out: dict[str, list[Prompt]] = {"box": [], "points": [], "box+points": []}
    for s in (0.0, 0.1):
        box = np.array([(0.2 + s) * W, 0.15 * H, 0.8 * W, (0.7 - s) * H])
        pts, labels = np.array([[(0.5 - s) * W, 0.4 * H], [0.1 * W, (0.9 - s) * H]]), np.array([1, 0])
        out["box"].append(Prompt(mode="tight_box", box=box))
        out["points"].append(Prompt(mode="points", points=pts, labels=labels))
        out["box+points"].append(Prompt(mode="box_points", box=box, points=pts, labels=labels))
    return out


def _image(hw, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def _check_equal_to_decode(seg, hw=(45, 70)) -> None:
    """Prompt by prompt (as ``decode`` runs them, one per decoder call) to 1e-5; the two-prompt
    ``decode_train`` call to 1e-4 (float32 rounding differs with the batch size: up to 3e-5 seen
    on LiteMedSAM's logits of magnitude 15-35)."""
    emb = seg.encode(_image(hw, 1))
    sam2 = type(seg).__name__ == "Sam2Segmenter"
    for kind, prompts in _prompts(*hw).items():
        with torch.no_grad():
            both, both_iou = seg.decode_train(emb, prompts)
            one = [seg.decode_train(emb, [p]) for p in prompts]
        assert both.dtype == torch.float32 and tuple(both.shape[:2]) == (2, 4) and not both.requires_grad
        for i, p in enumerate(prompts):
            low, iou = one[i]
            multi = seg.decode(emb, [p], multimask=True)
            got = np.clip(low[:, 1:].numpy(), -32, 32) if sam2 else low[:, 1:].numpy()  # SAM 2.1 returns +-32
            np.testing.assert_allclose(got, multi.low_res_logits, atol=TOL, rtol=0, err_msg=kind)
            np.testing.assert_allclose(iou[:, 1:].numpy(), multi.iou_pred, atol=TOL, rtol=0, err_msg=kind)
            full, full_iou = seg._decode_all(emb, [p], None)  # the four outputs before any selection
            np.testing.assert_allclose(low.numpy(), full.numpy(), atol=TOL, rtol=0, err_msg=kind)
            np.testing.assert_allclose(iou.numpy(), full_iou.numpy(), atol=TOL, rtol=0, err_msg=kind)
            if not sam2:  # SAM 2.1's single output may fall back to a multimask one (tested in test_models_sam2)
                single = seg.decode(emb, [p], multimask=False)
                np.testing.assert_allclose(low[:, :1].numpy(), single.low_res_logits, atol=TOL, rtol=0, err_msg=kind)
                np.testing.assert_allclose(iou[:, :1].numpy(), single.iou_pred, atol=TOL, rtol=0, err_msg=kind)
            np.testing.assert_allclose(both[i].numpy(), low[0].numpy(), atol=1e-4, rtol=0, err_msg=kind)
            np.testing.assert_allclose(both_iou[i].numpy(), iou[0].numpy(), atol=1e-4, rtol=0, err_msg=kind)


def test_decode_train_equals_decode_for_every_family(built):
    _check_equal_to_decode(built[-1])


def test_decode_train_equals_decode_for_litemedsam_and_sam():
    from samstudy.models.sam import SamSegmenter

    _check_equal_to_decode(build_model("litemedsam", num_threads=1))
    torch.manual_seed(2)
    _check_equal_to_decode(SamSegmenter(_tiny_sam(), name="tiny", label="tiny", checkpoint_sha256="x", num_threads=1))


@pytest.mark.parametrize("name,factory", [("mobile_sam", _tiny_mobile_sam), ("efficientvit_sam_l0", _tiny_efficientvit_sam)])
def test_decode_train_equals_decode_for_the_other_sam_relatives(name, factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = build_model(name, random_init=True, factory=factory, num_threads=1, decode_chunk=8)
    assert seg.finetunable and seg.trainable_parts == ("prompt_encoder", "mask_decoder")
    _check_equal_to_decode(seg)


def test_hq_features_are_required():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seg = build_model("sam_hq_vit_b", random_init=True, factory=_tiny_hq_sam, num_threads=1)
    emb = seg.encode(_image((30, 40), 0))
    emb.extra.pop("hq_features")
    with pytest.raises(ValueError, match="no 'hq_features'"):
        seg.decode_train(emb, _prompts(30, 40)["box"])


def test_batching_across_images_only_where_the_decoder_takes_per_prompt_embeddings(built):
    family, *_, seg = built
    embs = [seg.encode(_image((40, 52), 2)), seg.encode(_image((52, 40), 3))]
    prompts = [_prompts(40, 52)["box"][0], _prompts(52, 40)["box"][1]]
    across = batches_across_images(seg, embs, prompts)
    # SAM 2.1's decoder takes stacked per-prompt maps (repeat_image=False); HQ-SAM's repeats one image
    assert across is (family == "sam2.1")
    if across:
        with torch.no_grad():
            low, iou = seg.decode_train(embs, prompts)
            for i in range(2):
                lo, io = seg.decode_train(embs[i], [prompts[i]])
                np.testing.assert_allclose(low[i], lo[0], atol=1e-4)
                np.testing.assert_allclose(iou[i], io[0], atol=1e-4)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return ring_world(tmp_path_factory.mktemp("rings"), 4, size=64)


def test_training_steps_lower_the_loss_and_change_only_the_trainable_parts(built, world):
    family, name, path, factory, options, _ = built
    seg = build_model(name, checkpoint=path, factory=factory, num_threads=1, **options)
    objs, embs, _ = collect_objects(world, seg, EmbeddingCache(None))
    before = {k: v.clone() for k, v in seg.model.state_dict().items()}
    enc = seg_encoder_hash(seg)
    params = _trainable(seg)
    names = {n for n, p in seg.model.named_parameters() if p.requires_grad}
    assert names and all(n.split(".")[0] in seg.trainable_parts for n in names)
    assert not any(n == p or n.startswith(p + ".") for n in names for p in seg.embedding_parts)
    opt = torch.optim.AdamW(params, lr=1e-3)
    rng = np.random.default_rng(0)
    batch = objs[:3]
    prompts = [sample_prompt("box", o, rng) for o in batch]
    _train_mode(seg)
    losses = [train_step(seg, opt, batch, prompts, embs) for _ in range(6)]
    seg.model.eval()
    assert losses[-1] < losses[0], losses
    after = seg.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.split(".")[0] in seg.trainable_parts for k in changed)
    assert seg_encoder_hash(seg) == enc  # image encoder and the image-path layers bit-identical


def test_finetuned_checkpoint_keeps_the_format_and_loads_officially(built, world, tmp_path):
    family, name, path, factory, options, _ = built
    seg = build_model(name, checkpoint=path, factory=factory, num_threads=1, **options)
    cfg = FinetuneConfig(model=name, checkpoint=str(path), options=dict(options), epochs=2, batch_size=2,
                         lr=1e-3, val_fraction=0.25, num_threads=1)
    ckpt = finetune(world, cfg, tmp_path / "ft", EmbeddingCache(None), model=seg, progress=False)
    base, new = torch.load(path, weights_only=True), torch.load(ckpt, weights_only=True)
    assert type(new) is type(base) and set(new) == set(base)  # SAM 2.1 keeps its {"model": state_dict} wrapper
    sb, sn = (base["model"], new["model"]) if FAMILIES[family][3] else (base, new)
    assert set(sb) == set(sn)
    differ = {k for k in sb if not torch.equal(sb[k], sn[k])}
    assert differ and all(k.split(".")[0] in seg.trainable_parts for k in differ)
    # the official loaders
    if family == "sam2.1":
        from sam2.build_sam import build_sam2

        official = build_sam2(SAM2_CONFIG, ckpt_path=str(ckpt), device="cpu", hydra_overrides_extra=SAM2_TINY)
    else:
        official = factory()
        official.load_state_dict(torch.load(ckpt, weights_only=True), strict=True)
    loaded = official.state_dict()
    assert all(torch.equal(loaded[k], sn[k]) for k in differ)
    # the registry: the fine-tuned arm shares the base's embeddings and decodes as the officially loaded model
    arm = build_model("finetuned", checkpoint=ckpt, factory=factory, num_threads=1, **options)
    assert arm.name == f"{name}_ft-box" and arm.cache_key == seg.cache_key
    ref = type(seg)(official, name="official", label="official", checkpoint_sha256="x", num_threads=1, **options)
    image, prompts = _image((40, 52), 4), _prompts(40, 52)["box"]
    np.testing.assert_allclose(arm.decode(arm.encode(image), prompts).low_res_logits,
                               ref.decode(ref.encode(image), prompts).low_res_logits, atol=TOL, rtol=0)


def test_a_model_without_a_base_checkpoint_is_refused_before_training(world, tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSTUDY_WEIGHTS_DIR", str(tmp_path / "no-weights"))
    seg = build_model("sam2.1_hiera_t", random_init=True, factory=_sam2_factory(), num_threads=1)
    cfg = FinetuneConfig(model="sam2.1_hiera_t", options={"random_init": True}, epochs=1, num_threads=1)
    with pytest.raises(FileNotFoundError, match="base checkpoint .*no-weights.* not found"):
        finetune(world, cfg, tmp_path / "ft", EmbeddingCache(None), model=seg, progress=False)
    assert not (tmp_path / "ft" / "last.pt").exists()
