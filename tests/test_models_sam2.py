"""SAM 2.1: parity with ``sam2.sam2_image_predictor.SAM2ImagePredictor`` on a small random model.

The test builds a SAM 2.1 from the package's own hydra config (``sam2.1_hiera_t``) shrunk by hydra
overrides (Hiera of width 8 with 1, 1, 2, 1 blocks, a 32-wide decoder; still 1024 px, because the
official predictor hard-codes the 256/128/64 feature sizes of 1024 px), saves it in the official
checkpoint format ``{"model": state_dict}``, loads it back through the registry builder (the user's
path), and compares with the official predictor on a landscape and a portrait image: masks equal,
logits and IoU within 1e-5, for a box, points, box + points, the four extreme points, a mask-only
prompt, multimask on and off, under both branches of the single-output stability rule, a batch of
mixed prompts, and a second click with the previous low-res logits fed back.
"""
from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from samstudy.models import build_model, model_class
from samstudy.prompts import Prompt

SIZES = [(45, 70), (83, 52)]
TOL = 1e-5
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
TINY = [  # hydra overrides of the official config: same modules, fewer/narrower layers
    "model.image_encoder.trunk.embed_dim=8", "model.image_encoder.trunk.stages=[1,1,2,1]",
    "model.image_encoder.trunk.global_att_blocks=[3]", "model.image_encoder.neck.d_model=32",
    "model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    "model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "model.memory_attention.num_layers=1", "model.memory_attention.layer.dim_feedforward=32",
    "model.memory_encoder.fuser.num_layers=1",
]


def _tiny_factory():
    from samstudy.models.sam2 import sam2_module

    return sam2_module(CONFIG, TINY)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    from samstudy.compute import torch_settings

    with torch_settings(1):
        yield


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(ours built through the registry from the saved checkpoint, the official predictor on a copy)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    factory = _tiny_factory()
    torch.manual_seed(4)
    module = factory()
    with torch.no_grad():  # random logits are ~0.4: scale them so that the predictor's +-32 clamp matters
        for mlp in module.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.mul_(150.0)
            mlp.layers[-1].bias.mul_(150.0)
    path = tmp_path_factory.mktemp("sam2") / "tiny_sam2.pt"
    torch.save({"model": module.state_dict()}, path)
    ours = build_model("sam2.1_hiera_t", checkpoint=path, factory=factory, num_threads=1, decode_chunk=8)
    from sam2.build_sam import build_sam2

    reference = build_sam2(CONFIG, ckpt_path=str(path), device="cpu", hydra_overrides_extra=TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        predictor = SAM2ImagePredictor(reference)
    ours.saved_at = path
    return ours, predictor


def _prompts(H: int, W: int) -> dict[str, Prompt]:
    box = np.array([0.2 * W, 0.15 * H, 0.8 * W, 0.7 * H])
    points, labels = np.array([[0.5 * W, 0.4 * H], [0.1 * W, 0.9 * H]]), np.array([1, 0])
    extreme = np.array([[0.2 * W, 0.5 * H], [0.5 * W, 0.15 * H], [0.8 * W, 0.4 * H], [0.45 * W, 0.7 * H]])
    return {"tight_box": Prompt(mode="tight_box", box=box),
            "points": Prompt(mode="points", points=points, labels=labels),
            "center_point": Prompt(mode="center_point", points=points[:1], labels=labels[:1]),
            "box_center_point": Prompt(mode="box_center_point", box=box, points=points[:1], labels=labels[:1]),
            "extreme_points": Prompt(mode="extreme_points", points=extreme, labels=np.ones(4, dtype=int)),
            "extreme_points_box": Prompt(mode="extreme_points_box", box=box, points=extreme,
                                         labels=np.ones(4, dtype=int))}


def _official(predictor, prompt: Prompt | None, multimask: bool, mask_input=None):
    kw = {} if prompt is None else dict(point_coords=prompt.points, point_labels=prompt.labels, box=prompt.box)
    return map(_np, predictor.predict(**kw, mask_input=mask_input, multimask_output=multimask, return_logits=True))


def _assert_same(got, index: int, official, ctx: str) -> None:
    logits, iou, low = official
    np.testing.assert_array_equal(got.masks[index], logits > 0, err_msg=ctx)
    np.testing.assert_allclose(got.low_res_logits[index], low, atol=TOL, rtol=0, err_msg=ctx)
    np.testing.assert_allclose(got.iou_pred[index], iou, atol=TOL, rtol=0, err_msg=ctx)


@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("stability_thresh", [None, 0.0, 1.01])  # official default, always stable, never stable
def test_matches_the_official_predictor_for_every_prompt_kind(pair, hw, stability_thresh):
    ours, predictor = pair
    decoders = (ours.model.sam_mask_decoder, predictor.model.sam_mask_decoder)
    default = decoders[0].dynamic_multimask_stability_thresh
    for d in decoders:
        d.dynamic_multimask_stability_thresh = default if stability_thresh is None else stability_thresh
    try:
        H, W = hw
        image = np.random.default_rng(H).integers(0, 256, (H, W, 3), dtype=np.uint8)
        emb = ours.encode(image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            predictor.set_image(image)
        np.testing.assert_allclose(emb.features, _np(predictor._features["image_embed"]), atol=TOL, rtol=0)
        prompts = _prompts(H, W)
        assert np.abs(ours.decode(emb, [prompts["tight_box"]], True).low_res_logits).max() == 32.0  # clamped
        for kind, prompt in prompts.items():
            both = ours.decode_multimask(emb, [prompt], [False, True])
            for got, multimask in zip(both, (False, True)):
                _assert_same(got, 0, _official(predictor, prompt, multimask), f"{hw} {kind} multimask={multimask}")
        # a batch of mixed prompts decodes as each prompt alone
        batch = list(prompts.values())
        got = ours.decode(emb, batch, multimask=False)
        for i, prompt in enumerate(batch):
            _assert_same(got, i, _official(predictor, prompt, False), f"{hw} batch item {i}")
        # second click: the previous (clamped) low-res logits fed back; and a mask-only prompt
        first = ours.decode(emb, [prompts["points"]])
        click2 = Prompt(mode="clicks", points=np.vstack([prompts["points"].points, [[0.3 * W, 0.3 * H]]]),
                        labels=np.array([1, 0, 1]))
        got = ours.decode(emb, [click2], mask_inputs=first.low_res_logits)
        _assert_same(got, 0, _official(predictor, click2, False, first.low_res_logits[0]), f"{hw} click 2")
        assert not np.allclose(got.low_res_logits, ours.decode(emb, [click2]).low_res_logits)  # feedback is used
        mask_only = SimpleNamespace(box=None, points=None, labels=None)  # no Prompt has neither; the interface allows it
        got = ours.decode(emb, [mask_only], multimask=True, mask_inputs=first.low_res_logits)
        _assert_same(got, 0, _official(predictor, None, True, first.low_res_logits[0]), f"{hw} mask only")
    finally:
        for d in decoders:
            d.dynamic_multimask_stability_thresh = default


def test_single_output_falls_back_to_the_best_multimask_when_unstable(pair):
    """The stability rule is really exercised: with threshold 1.01 the single output is the
    multimask output of highest IoU, with threshold 0 it is token 0, and the two differ."""
    ours, _ = pair
    dec = ours.model.sam_mask_decoder
    emb = ours.encode(np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    p = _prompts(40, 60)["center_point"]
    default = dec.dynamic_multimask_stability_thresh
    try:
        dec.dynamic_multimask_stability_thresh = 1.01
        multi, unstable = ours.decode_multimask(emb, [p], [True, False])
        dec.dynamic_multimask_stability_thresh = 0.0
        stable = ours.decode(emb, [p])
    finally:
        dec.dynamic_multimask_stability_thresh = default
    best = int(np.argmax(multi.iou_pred[0]))
    np.testing.assert_array_equal(unstable.low_res_logits[0, 0], multi.low_res_logits[0, best])
    assert not np.array_equal(stable.low_res_logits, unstable.low_res_logits)


def test_embedding_holds_the_high_res_maps_and_survives_the_cache(pair, tmp_path):
    from samstudy.cache import EmbeddingCache

    ours, _ = pair
    assert type(ours) is model_class("sam2.1_hiera_t")
    image = np.random.default_rng(5).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    fresh, cached, _ = EmbeddingCache(tmp_path).get_or_encode(ours, image)
    again, hit, _ = EmbeddingCache(tmp_path).get_or_encode(ours, image)
    assert not cached and hit
    assert {k: tuple(v.shape) for k, v in again.extra.items()} == {"feat_s0": (1, 4, 256, 256), "feat_s1": (1, 8, 128, 128)}
    assert again.input_hw == (1024, 1024) and again.original_hw == (40, 60)
    p = Prompt(mode="tight_box", box=np.array([5.0, 5.0, 40.0, 30.0]))
    np.testing.assert_array_equal(ours.decode(fresh, [p], True).low_res_logits, ours.decode(again, [p], True).low_res_logits)
    assert ours.checkpoint_sha256[:16] in ours.cache_key and ours.preprocess_id in ours.cache_key
    broken = type(again)(features=again.features, original_hw=again.original_hw, input_hw=again.input_hw,
                         model_key=again.model_key, extra={})
    with pytest.raises(ValueError, match="feat_s0"):
        ours.decode(broken, [p])


def test_builders_labels_checkpoints_and_runtime(tmp_path):
    import json

    from samstudy.models import ChecksumError
    from samstudy.models.sam2 import SAM2_VARIANTS, Sam2Segmenter

    factory = _tiny_factory()
    m = build_model("sam2.1_hiera_s", random_init=True, factory=factory)
    assert m.name == "sam2.1_hiera_s_random" and m.checkpoint_sha256 == "random-init"
    assert m.label == "SAM 2.1 Hiera-S (random init, benchmark only)"
    path = tmp_path / "finetuned.pt"
    torch.save({"model": factory().state_dict()}, path)
    assert build_model("sam2.1_hiera_t", checkpoint=path, factory=factory).label == "SAM 2.1 Hiera-T (checkpoint finetuned.pt)"
    official = tmp_path / "sam2.1_hiera_tiny.pt"
    official.write_bytes(path.read_bytes())
    assert build_model("sam2.1_hiera_t", checkpoint=official, factory=factory).label == "SAM 2.1 Hiera-T"
    (tmp_path / "first-download-sha256.json").write_text(json.dumps({"sam2.1_hiera_tiny.pt": {"sha256": "0" * 64}}))
    with pytest.raises(ChecksumError, match="sam2.1_hiera_tiny.pt"):
        build_model("sam2.1_hiera_t", checkpoint=official, factory=factory)
    with pytest.raises(FileNotFoundError, match=r"make weights MODEL=sam2\.1_hiera_b\+"):
        build_model("sam2.1_hiera_b+", checkpoint=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="runtime must be one of"):
        build_model("sam2.1_hiera_t", random_init=True, factory=factory, runtime="tensorrt")
    # the official configs build on the CPU without the CUDA extension, and their decoder is SAM 2's
    assert set(SAM2_VARIANTS) == {"sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"}
    assert all(model_class(n) is Sam2Segmenter for n in SAM2_VARIANTS)


def test_wrong_architecture_checkpoint_names_the_file(tmp_path):
    from samstudy.models import CheckpointError

    path = tmp_path / "other.pt"
    torch.save({"model": {"not_sam2.weight": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointError, match="other.pt.*missing keys"):
        build_model("sam2.1_hiera_t", checkpoint=path, factory=_tiny_factory())


@pytest.mark.slow
def test_official_tiny_config_builds_on_cpu_and_encodes():
    """The real Hiera-T architecture (random init): builds without the CUDA extension, embeds at 1024."""
    m = build_model("sam2.1_hiera_t", random_init=True, num_threads=1)
    emb = m.encode(np.zeros((32, 48, 3), dtype=np.uint8))
    assert tuple(emb.features.shape) == (1, 256, 64, 64)
    assert {k: tuple(v.shape) for k, v in emb.extra.items()} == {"feat_s0": (1, 32, 256, 256), "feat_s1": (1, 64, 128, 128)}
    out = m.decode(emb, [Prompt(mode="tight_box", box=np.array([4.0, 4.0, 30.0, 20.0]))], multimask=True)
    assert out.masks.shape == (1, 3, 32, 48) and out.low_res_logits.shape == (1, 3, 256, 256)


def test_capabilities_and_the_config_entries():
    """Configs check modes against the declared class: SAM 2.1 takes every mode of the shipped COCO
    configs and every multimask selection; their commented entries name the downloadable files."""
    import re
    from pathlib import Path

    import yaml

    from samstudy.config import model_options
    from samstudy.models.base import ALL_MODES, check_model_modes
    from samstudy.models.download import MODEL_CHECKPOINTS
    from samstudy.models.sam2 import SAM2_VARIANTS
    from samstudy.prompts import parse_modes

    root = Path(__file__).resolve().parents[1]
    for cfg in ("configs/coco.yaml", "configs/shared-coco.yaml"):
        text = (root / cfg).read_text()
        modes = parse_modes(yaml.safe_load(text)["foundation"]["modes"])
        entries = [yaml.safe_load(m) for m in re.findall(r"^\s*# - (\{name: sam2\.1_[^}]*\})", text, re.M)]
        assert sorted(e["name"] for e in entries) == sorted(SAM2_VARIANTS), cfg
        for e in entries:
            cls = model_class(e["name"])
            assert cls.supported_modes == ALL_MODES and cls.multimask_outputs == 3
            check_model_modes(cls, modes, ("single", "best_of_3"), ("first_best_of_3", "single", "best_of_3"),
                              name=e["name"])
            assert Path(e["checkpoint"]).name == MODEL_CHECKPOINTS[e["name"]].filename
            assert f"make weights MODEL={e['name']}" in text
    assert {"num_threads", "decode_chunk", "runtime", "random_init"} <= model_options("sam2.1_hiera_l")


def test_download_then_build_from_the_default_path(tmp_path, monkeypatch):
    """The user's path end to end: `make weights MODEL=sam2.1_hiera_t` against a local HTTP server
    (no published hash: the first download is recorded with a warning), then ``build_model`` from
    the default weights folder loads it, labelled as the official model, and checks it against the record."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from samstudy.models import ChecksumError
    from samstudy.models.download import (FIRST_DOWNLOAD_RECORD, MODEL_CHECKPOINTS, RemoteFile,
                                          UnverifiedDownloadWarning, cached_file_sha256, download_model_checkpoint)

    spec = MODEL_CHECKPOINTS["sam2.1_hiera_t"]
    assert spec.url == "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_tiny.pt"
    served = tmp_path / "server" / "092824"
    served.mkdir(parents=True)
    factory = _tiny_factory()
    torch.save({"model": factory().state_dict()}, served / spec.filename)
    handler = functools.partial(type("Quiet", (SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(tmp_path / "server"))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        files = {"sam2.1_hiera_t": RemoteFile(f"http://127.0.0.1:{httpd.server_address[1]}/092824/{spec.filename}")}
        weights = tmp_path / "weights"
        with pytest.warns(UnverifiedDownloadWarning, match="no published checksum"):
            path = download_model_checkpoint("sam2.1_hiera_t", weights, progress=False, files=files)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert path == weights / "sam2.1_hiera_tiny.pt" and path.read_bytes() == (served / spec.filename).read_bytes()
    monkeypatch.setenv("SAMSTUDY_WEIGHTS_DIR", str(weights))
    m = build_model("sam2.1_hiera_t", factory=factory)
    assert m.label == "SAM 2.1 Hiera-T" and m.checkpoint_sha256 == cached_file_sha256(path)
    assert (weights / FIRST_DOWNLOAD_RECORD).exists()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))  # a changed file under the official name is refused
    with pytest.raises(ChecksumError, match="first-download"):
        build_model("sam2.1_hiera_t", factory=factory)


def test_onnxruntime_matches_the_official_predictor_and_keeps_its_own_cache_key(pair, tmp_path):
    """runtime 'onnxruntime': exported once, then within ONNX Runtime's float error of the official
    predictor (logits are scaled up x150 in this model), masks equal away from the 0 level."""
    ours, predictor = pair
    ort = build_model("sam2.1_hiera_t", checkpoint=ours.saved_at, factory=_tiny_factory(), num_threads=1,
                      runtime="onnxruntime", onnx_dir=tmp_path)
    assert ort.cache_key == f"{ours.cache_key}-onnxruntime"
    for H, W in SIZES:
        image = np.random.default_rng(W).integers(0, 256, (H, W, 3), dtype=np.uint8)
        emb = ort.encode(image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            predictor.set_image(image)
        np.testing.assert_allclose(emb.features, _np(predictor._features["image_embed"]), atol=1e-5, rtol=1e-4)
        for key, want in zip(('feat_s0', 'feat_s1'), predictor._features["high_res_feats"]):
            np.testing.assert_allclose(emb.extra[key], _np(want), atol=1e-5, rtol=1e-4)
        prompts = list(_prompts(H, W).values())
        for multimask in (False, True):
            got = ort.decode(emb, prompts, multimask=multimask)
            for i, prompt in enumerate(prompts):
                logits, iou, low = _official(predictor, prompt, multimask)
                ctx = f"{(H, W)} {prompt.mode} multimask={multimask}"
                np.testing.assert_allclose(got.low_res_logits[i], low, atol=2e-4, rtol=0, err_msg=ctx)  # 5e-5 seen
                np.testing.assert_allclose(got.iou_pred[i], iou, atol=1e-5, rtol=1e-4, err_msg=ctx)
                clear = np.abs(logits) > 1e-2
                np.testing.assert_array_equal(got.masks[i][clear], (logits > 0)[clear], err_msg=ctx)
        first = ort.decode(emb, prompts[:1])  # mask only: no prompt token at all
        got = ort.decode(emb, [SimpleNamespace(box=None, points=None, labels=None)], mask_inputs=first.low_res_logits)
        _, _, low = _official(predictor, None, False, first.low_res_logits[0])
        np.testing.assert_allclose(got.low_res_logits[0], low, atol=2e-4, rtol=0)
    files = sorted(tmp_path.glob("*.onnx"))
    assert [f.name.endswith(("decoder.onnx", "encoder.onnx")) for f in files] == [True, True]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = build_model("sam2.1_hiera_t", checkpoint=ours.saved_at, factory=_tiny_factory(), num_threads=1,
                        runtime="onnxruntime", onnx_dir=tmp_path)
    again.encode(np.zeros((20, 30, 3), dtype=np.uint8))
    assert [f.stat().st_mtime_ns for f in files] == stamps  # exported once, reused


def test_a_config_with_sam2_includes_it_in_the_default_finetune_models(tmp_path):
    """finetune.models empty = the foundation models the fine-tuned arm can train (segmenters that
    declare ``finetunable``): SAM 2.1 trains its own prompt encoder + mask decoder (decode_train);
    a model without one (the custom model) is refused, naming it."""
    from pathlib import Path

    import yaml

    from samstudy.config import ConfigError, load_config

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text())
    sam2 = {"name": "sam2.1_hiera_t", "options": {"random_init": True}}
    raw["foundation"]["models"] = [*raw["foundation"]["models"], sam2]
    raw["finetune"] = {"enabled": True, "models": [], "prompts": ["box"]}
    path = tmp_path / "with_sam2.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    assert [m.name for m in cfg.foundation.models] == ["litemedsam", "sam2.1_hiera_t"]
    assert [m.name for m in cfg.finetune.models] == ["litemedsam", "sam2.1_hiera_t"]
    raw["foundation"]["models"] = [sam2]
    path.write_text(yaml.safe_dump(raw))
    assert [m.name for m in load_config(path).finetune.models] == ["sam2.1_hiera_t"]
    raw["finetune"]["models"] = [{"name": "custom"}]  # named explicitly: refused, naming it
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="'custom' is not a fine-tunable SAM-family model"):
        load_config(path)


def test_the_engine_runs_every_mode_with_sam2_and_resumes_from_the_cache(pair, tmp_path):
    """SAM 2.1 through the one engine with no special case: every prompt mode, corrective clicks
    with logits feedback, both multimask selections; a second run reads the cached embeddings."""
    from samstudy import engine
    from samstudy.data import load_coco
    from samstudy.synthetic import SyntheticConfig, generate_probe_set

    ours, _ = pair
    root = generate_probe_set(SyntheticConfig(n_images=1, seed=2, objects_per_image=(2, 2)), tmp_path / "syn")
    ds = load_coco(root / "instances.json", root / "images")
    modes = ["tight_box", "loose_box[b=0.2]", "extreme_points", "extreme_points_box", "center_point",
             "box_center_point", "clicks[start=click,max_clicks=3]", "clicks[start=box,max_clicks=2]"]
    cache = tmp_path / "cache"
    out = engine.run_experiment(ds, ours, modes, tmp_path / "a", cache, progress=False)
    ok = out[out.status == "ok"]
    assert len(ok) > 0 and set(ok.prompt_mode) == set(modes) and not ok.cached.any()
    assert set(ok.model) == {"sam2.1_hiera_t"} and set(ok.checkpoint_sha256) == {ours.checkpoint_sha256}
    clicks = ok[ok.prompt_mode == "clicks[start=click,max_clicks=3]"]
    assert clicks.click.max() >= 2  # the random model never reaches the target: sequences go on
    again = engine.run_experiment(ds, ours, modes, tmp_path / "b", cache, progress=False)
    assert again[again.status == "ok"].cached.all()
    cols = ["image_id", "ann_id", "prompt_mode", "multimask", "click"]
    a, b = ok.sort_values(cols).reset_index(drop=True), again[again.status == "ok"].sort_values(cols).reset_index(drop=True)
    np.testing.assert_array_equal(a.iou.to_numpy(), b.iou.to_numpy())
