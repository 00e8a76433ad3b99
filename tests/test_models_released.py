"""MobileSAM, HQ-SAM and EfficientViT-SAM: parity with each family's official predictor.

Each test builds a small randomly initialised model from the family's own package classes, saves
its state dict and loads it back through the registry builder (``build_model(name, checkpoint=...,
factory=...)``: the user's path, with the tiny architecture in place of the official one). Then,
on two image sizes (landscape and portrait), for a box, points, box + points, box + four extreme
points, multimask and a second click with the previous low-res logits fed back, our masks must
equal the official predictor's and the low-res logits agree within 1e-5. The same again with
``runtime="onnxruntime"`` (logits scaled to a trained model's size, within 2e-4).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from samstudy.models import build_model, model_class
from samstudy.models.base import check_model_modes
from samstudy.prompts import Prompt

SIZES = [(45, 70), (83, 52)]
TOL = 1e-5


def _tiny_mobile_sam() -> torch.nn.Module:
    from mobile_sam.modeling import MaskDecoder, PromptEncoder, Sam, TinyViT, TwoWayTransformer

    # TinyViT hard-codes a 64x64 output and a stride-1 last stage of width 320: keep 1024 px and 320
    return Sam(image_encoder=TinyViT(img_size=1024, embed_dims=[8, 16, 16, 320], depths=[1, 1, 1, 1],
                                     num_heads=[1, 1, 1, 2], window_sizes=[7, 7, 7, 7], mlp_ratio=1.0,
                                     mbconv_expand_ratio=1.0),
               prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64),
                                            input_image_size=(1024, 1024), mask_in_chans=4),
               mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3,
                                        iou_head_hidden_dim=32,
                                        transformer=TwoWayTransformer(depth=1, embedding_dim=256, mlp_dim=64,
                                                                      num_heads=2)),
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def _tiny_hq_sam() -> torch.nn.Module:
    from functools import partial

    from segment_anything_hq.modeling import ImageEncoderViT, MaskDecoderHQ, PromptEncoder, Sam, TwoWayTransformer

    return Sam(image_encoder=ImageEncoderViT(depth=2, embed_dim=32, img_size=64, mlp_ratio=2, num_heads=2,
                                             norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), patch_size=8,
                                             qkv_bias=True, use_rel_pos=True, global_attn_indexes=(0,),
                                             window_size=4, out_chans=32),
               prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64),
                                            mask_in_chans=4),
               mask_decoder=MaskDecoderHQ(num_multimask_outputs=3, transformer_dim=32, iou_head_depth=3,
                                          iou_head_hidden_dim=32, vit_dim=32,
                                          transformer=TwoWayTransformer(depth=1, embedding_dim=32, mlp_dim=64,
                                                                        num_heads=2)),
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375]).eval()


def _tiny_efficientvit_sam() -> torch.nn.Module:
    from efficientsam.models.efficientvit.backbone import EfficientViTLargeBackbone
    from efficientsam.models.efficientvit.sam import EfficientViTSamImageEncoder, SamNeck

    from efficientsam.models.efficientvit.sam import EfficientViTSam
    from efficientsam.segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    backbone = EfficientViTLargeBackbone(width_list=[8, 8, 16, 16, 32], depth_list=[1, 1, 1, 1, 1])
    neck = SamNeck(fid_list=["stage4", "stage3", "stage2"], in_channel_list=[32, 16, 16], head_width=256,
                   head_depth=1, expand_ratio=1, middle_op="fmb")
    # encoder input 256 (the neck resizes to a 64x64 embedding) while prompts and masks stay in the 1024 frame,
    # as the L models (512 -> 64x64); a small decoder keeps the test fast
    return EfficientViTSam(
        image_encoder=EfficientViTSamImageEncoder(backbone, neck),
        prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=32,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=256, mlp_dim=64, num_heads=2)),
        image_size=(1024, 256)).eval()


def _official_predictor(family: str, module: torch.nn.Module):
    if family == "mobile_sam":
        from mobile_sam import SamPredictor
        return SamPredictor(module), {}
    if family.startswith("sam_hq"):
        from segment_anything_hq import SamPredictor
        return SamPredictor(module), {"hq_token_only": family.endswith("only")}
    from efficientsam.models.efficientvit.sam import EfficientViTSamPredictor
    return EfficientViTSamPredictor(module), {}


CASES = {  # family: (registry name, tiny factory, builder options)
    "mobile_sam": ("mobile_sam", _tiny_mobile_sam, {}),
    "sam_hq": ("sam_hq_vit_b", _tiny_hq_sam, {}),
    "sam_hq_token_only": ("sam_hq_vit_b", _tiny_hq_sam, {"hq_token_only": True}),
    "efficientvit_sam": ("efficientvit_sam_l0", _tiny_efficientvit_sam, {}),
}


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The official predictors run with torch's threads: one, as ours (a shared 2-core machine)."""
    from samstudy.compute import torch_settings

    with torch_settings(1):
        yield


@pytest.fixture(scope="module", params=sorted(CASES))
def family(request, tmp_path_factory):
    name, factory, options = CASES[request.param]
    torch.manual_seed(3)
    module = factory()
    path = tmp_path_factory.mktemp(request.param) / "tiny.pth"
    torch.save(module.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = build_model(name, checkpoint=path, factory=factory, num_threads=1, decode_chunk=8, **options)
    reference = factory()
    reference.load_state_dict(torch.load(path, weights_only=True))
    predictor, extra = _official_predictor(request.param, reference.eval())
    ours.saved_at, ours.factory, ours.options = path, factory, options  # to build the ONNX Runtime twin
    return request.param, ours, predictor, extra


def _prompts(H: int, W: int) -> dict[str, Prompt]:
    box = np.array([0.2 * W, 0.15 * H, 0.8 * W, 0.7 * H])
    points, labels = np.array([[0.5 * W, 0.4 * H], [0.1 * W, 0.9 * H]]), np.array([1, 0])
    return {"box": Prompt(mode="tight_box", box=box),
            "points": Prompt(mode="points", box=None, points=points, labels=labels),
            "box_points": Prompt(mode="box_center_point", box=box, points=points[:1], labels=labels[:1]),
            "extreme_points_box": Prompt(mode="extreme_points_box", box=box, labels=np.ones(4, dtype=int),
                                         points=np.array([[0.2 * W, 0.5 * H], [0.5 * W, 0.15 * H],
                                                          [0.8 * W, 0.4 * H], [0.45 * W, 0.7 * H]]))}


@pytest.mark.parametrize("hw", SIZES)
def test_matches_the_official_predictor_for_every_prompt_kind(family, hw):
    fam, ours, predictor, extra = family
    H, W = hw
    image = np.random.default_rng(H).integers(0, 256, (H, W, 3), dtype=np.uint8)
    emb = ours.encode(image)
    predictor.set_image(image)
    prompts = _prompts(H, W)
    points = prompts["points"].points
    for kind, prompt in prompts.items():
        for multimask in (False, True):
            got = ours.decode(emb, [prompt], multimask=multimask)
            kw = dict(point_coords=prompt.points, point_labels=prompt.labels, box=prompt.box,
                      multimask_output=multimask, return_logits=True, **extra)
            logits, iou, low = map(_np, predictor.predict(**kw))
            pick = slice(None)
            if fam.startswith("sam_hq") and multimask:  # HQ-SAM returns only its best multimask output
                pick = slice(int(np.argmax(got.iou_pred[0])), None)
                pick = slice(pick.start, pick.start + 1)
            ctx = f"{fam} {hw} {kind} multimask={multimask}"
            np.testing.assert_array_equal(got.masks[0, pick], logits > 0, err_msg=ctx)
            np.testing.assert_allclose(got.low_res_logits[0, pick], low, atol=TOL, rtol=0, err_msg=ctx)
            np.testing.assert_allclose(got.iou_pred[0, pick], iou, atol=TOL, rtol=0, err_msg=ctx)
            assert got.masks.any() or not (logits > 0).any()
    # second click: previous single-output low-res logits fed back
    first = ours.decode(emb, [prompts["points"]])
    click2 = Prompt(mode="points", box=None, points=np.vstack([points, [[0.3 * W, 0.3 * H]]]),
                    labels=np.array([1, 0, 1]))
    got = ours.decode(emb, [click2], mask_inputs=first.low_res_logits)
    logits, _, low = map(_np, predictor.predict(point_coords=click2.points, point_labels=click2.labels,
                                                mask_input=first.low_res_logits[0], multimask_output=False,
                                                return_logits=True, **extra))
    np.testing.assert_array_equal(got.masks[0], logits > 0)
    np.testing.assert_allclose(got.low_res_logits[0], low, atol=TOL, rtol=0)
    assert not np.allclose(got.low_res_logits, ours.decode(emb, [click2]).low_res_logits)  # the feedback is used


LOGIT_GAIN = 50.0  # random-init logits are below 1: scaled to ~40, the size of a trained model's
ORT_TOL = 2e-4  # ONNX Runtime's fused float32 kernels vs PyTorch's, on logits up to ~40 (3e-5 seen)


def _with_large_logits(factory, saved_at, path):
    """The saved tiny model with each mask token's hypernetwork output layer x LOGIT_GAIN (logits x
    LOGIT_GAIN, IoUs unchanged), saved at ``path``; returns the module (for the official predictor)."""
    module = factory()
    module.load_state_dict(torch.load(saved_at, weights_only=True))
    dec = module.mask_decoder
    with torch.no_grad():
        for mlp in [*dec.output_hypernetworks_mlps, *([dec.hf_mlp] if hasattr(dec, "hf_mlp") else [])]:
            mlp.layers[-1].weight.mul_(LOGIT_GAIN)
            mlp.layers[-1].bias.mul_(LOGIT_GAIN)
    torch.save(module.state_dict(), path)
    return module.eval()


def test_onnxruntime_matches_the_official_predictor(family, tmp_path):
    """runtime 'onnxruntime' (image path incl. HQ-SAM's hq_features, and the decoder, exported once):
    within ONNX Runtime's float error of the official predictor; masks equal away from the 0 level."""
    fam, ours, _, extra = family
    scaled = tmp_path / "large_logits.pth"
    predictor, _ = _official_predictor(fam, _with_large_logits(ours.factory, ours.saved_at, scaled))
    onnx_dir = tmp_path / "onnx"
    ort = build_model(ours.name, checkpoint=scaled, factory=ours.factory, num_threads=1,
                      runtime="onnxruntime", onnx_dir=onnx_dir, **ours.options)
    twin = build_model(ours.name, checkpoint=scaled, factory=ours.factory, **ours.options)
    assert ort.cache_key == f"{twin.cache_key}-onnxruntime"  # cached embeddings of the two runtimes never mix
    scale = worst = 0.0
    for H, W in SIZES:
        image = np.random.default_rng(W).integers(0, 256, (H, W, 3), dtype=np.uint8)
        emb = ort.encode(image)
        predictor.set_image(image)
        np.testing.assert_allclose(emb.features, _np(predictor.features), atol=1e-5, rtol=1e-4)
        assert set(emb.extra) == ({"hq_features"} if fam.startswith("sam_hq") else set())
        prompts = _prompts(H, W)
        for multimask in (False, True):
            batch = ort.decode(emb, list(prompts.values()), multimask=multimask)  # one call, all kinds
            for i, (kind, prompt) in enumerate(prompts.items()):
                logits, iou, low = map(_np, predictor.predict(
                    point_coords=prompt.points, point_labels=prompt.labels, box=prompt.box,
                    multimask_output=multimask, return_logits=True, **extra))
                pick = slice(None)
                if fam.startswith("sam_hq") and multimask:  # the official output is the best of the three
                    best = int(np.argmax(batch.iou_pred[i]))
                    pick = slice(best, best + 1)
                ctx = f"{fam} {(H, W)} {kind} multimask={multimask}"
                np.testing.assert_allclose(batch.low_res_logits[i, pick], low, atol=ORT_TOL, rtol=0, err_msg=ctx)
                np.testing.assert_allclose(batch.iou_pred[i, pick], iou, atol=1e-5, rtol=1e-4, err_msg=ctx)
                clear = np.abs(logits) > 50 * ORT_TOL  # bilinear upsampling keeps the error below ORT_TOL
                np.testing.assert_array_equal(batch.masks[i, pick][clear], (logits > 0)[clear], err_msg=ctx)
                assert clear.mean() > 0.95, ctx  # the comparison covers almost every pixel
                scale = max(scale, float(np.abs(low).max()))
                worst = max(worst, float(np.abs(batch.low_res_logits[i, pick] - low).max()))
        points = _prompts(H, W)["points"]
        first = ort.decode(emb, [points])  # second click: the previous low-res logits fed back
        click2 = Prompt(mode="points", box=None, points=np.vstack([points.points, [[0.3 * W, 0.3 * H]]]),
                        labels=np.array([1, 0, 1]))
        got = ort.decode(emb, [click2], mask_inputs=first.low_res_logits)
        _, _, low = map(_np, predictor.predict(point_coords=click2.points, point_labels=click2.labels,
                                               mask_input=first.low_res_logits[0], multimask_output=False,
                                               return_logits=True, **extra))
        np.testing.assert_allclose(got.low_res_logits[0], low, atol=ORT_TOL, rtol=0)
    assert scale > 10  # the tolerance is tested on logits of a trained model's size
    print(f"{fam}: max |ONNX - official| low-res logit {worst:.2e} on logits up to {scale:.1f}")
    files = sorted(onnx_dir.glob("*.onnx"))
    assert [f.name.endswith(("decoder.onnx", "encoder.onnx")) for f in files] == [True, True]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = build_model(ours.name, checkpoint=scaled, factory=ours.factory, num_threads=1,
                        runtime="onnxruntime", onnx_dir=onnx_dir, **ours.options)
    again.decode(again.encode(np.zeros((20, 30, 3), dtype=np.uint8)), [_prompts(20, 30)["box"]])
    assert [f.stat().st_mtime_ns for f in files] == stamps  # exported once, reused


def test_cached_embedding_round_trip_gives_identical_masks(family, tmp_path):
    from samstudy.cache import EmbeddingCache

    _, ours, _, _ = family
    assert type(ours) is model_class(ours.name)  # what configs check modes against
    image = np.random.default_rng(5).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    cache = EmbeddingCache(tmp_path)
    fresh, cached, _ = cache.get_or_encode(ours, image)
    again, hit, _ = EmbeddingCache(tmp_path).get_or_encode(ours, image)
    assert not cached and hit and set(again.extra) == set(fresh.extra)
    p = Prompt(mode="tight_box", box=np.array([5.0, 5.0, 40.0, 30.0]))
    np.testing.assert_array_equal(ours.decode(fresh, [p], True).low_res_logits, ours.decode(again, [p], True).low_res_logits)
    assert ours.checkpoint_sha256[:16] in ours.cache_key and ours.preprocess_id in ours.cache_key


def test_random_init_is_labelled_and_unknown_files_name_the_file(tmp_path):
    m = build_model("mobile_sam", random_init=True, factory=_tiny_mobile_sam)
    assert m.name == "mobile_sam_random" and m.checkpoint_sha256 == "random-init"
    assert m.label == "MobileSAM (random init, benchmark only)"
    path = tmp_path / "finetuned.pt"
    torch.save(_tiny_mobile_sam().state_dict(), path)
    assert build_model("mobile_sam", checkpoint=path, factory=_tiny_mobile_sam).label == "MobileSAM (checkpoint finetuned.pt)"
    with pytest.raises(FileNotFoundError, match="make weights MODEL=sam_hq_vit_l"):
        build_model("sam_hq_vit_l", checkpoint=tmp_path / "missing.pth")


def test_official_file_name_is_checked_against_the_first_download_record(tmp_path):
    import json

    from samstudy.models import ChecksumError
    path = tmp_path / "mobile_sam.pt"
    torch.save(_tiny_mobile_sam().state_dict(), path)
    assert build_model("mobile_sam", checkpoint=path, factory=_tiny_mobile_sam).label == "MobileSAM"
    (tmp_path / "first-download-sha256.json").write_text(json.dumps({"mobile_sam.pt": {"sha256": "0" * 64}}))
    with pytest.raises(ChecksumError, match="mobile_sam.pt"):
        build_model("mobile_sam", checkpoint=path, factory=_tiny_mobile_sam)


def test_capabilities_are_declared_for_config_checks():
    """Configs check modes against the declared class without building: these families decode
    every mode, clicks with mask feedback, and three multimask outputs."""
    from samstudy.models.base import ALL_MODES
    from samstudy.prompts import parse_modes

    modes = parse_modes(["tight_box", "extreme_points_box", "center_point", "clicks[start=click,max_clicks=3]"])
    for name in ("mobile_sam", "sam_hq_vit_h", "efficientvit_sam_xl1"):
        cls = model_class(name)
        assert cls.supported_modes == ALL_MODES and cls.multimask_outputs == 3
        check_model_modes(cls, modes, ("single", "best_of_3"), ("first_best_of_3",), name=name)


def test_random_init_rows_never_enter_the_headline_arms():
    import pandas as pd

    from samstudy.compare import RANDOM_INIT_SHA256, headline_arms
    from samstudy.models.release import RANDOM_INIT
    assert RANDOM_INIT_SHA256 == RANDOM_INIT
    rows = pd.DataFrame({"model": ["mobile_sam", "mobile_sam_random"], "model_label": ["MobileSAM", "MobileSAM (random init, benchmark only)"],
                         "checkpoint_sha256": ["a" * 64, RANDOM_INIT], "prompt_mode": ["tight_box"] * 2,
                         "multimask": ["single"] * 2, "click": [0, 0]})
    arms = headline_arms(rows, None, "tight_box", None)
    assert [a.model for a in arms] == ["mobile_sam"]
