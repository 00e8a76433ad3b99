"""Tests of the on-disk embedding cache: keys, reuse, atomic writes, corrupt entries."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from samstudy.cache import EmbeddingCache, image_sha256
from samstudy.models.base import Decoded, Embedding, PromptableSegmenter


class CountingEncoder(PromptableSegmenter):
    """Encoder whose features are a deterministic function of the image; counts encode calls."""

    label = "counting encoder (tests)"
    checkpoint_sha256 = "c" * 64

    def __init__(self, name: str = "counting", preprocess_id: str = "p1"):
        self.name, self.preprocess_id = name, preprocess_id
        self.device = torch.device("cpu")
        self.calls = 0

    def encode(self, image: np.ndarray) -> Embedding:
        self.calls += 1
        f = torch.from_numpy(image.astype(np.float32).mean(-1))[None, None] / 255.0  # (1, 1, H, W)
        return Embedding(features=f, original_hw=image.shape[:2], input_hw=image.shape[:2],
                         model_key=self.cache_key)

    def decode(self, embedding, prompts, multimask=False, mask_inputs=None) -> Decoded:  # pragma: no cover
        raise NotImplementedError


def _image(seed: int = 0, hw=(12, 16)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def test_hit_returns_identical_embedding_without_encoding(tmp_path):
    model, cache, img = CountingEncoder(), EmbeddingCache(tmp_path), _image()
    e1, cached1, t1 = cache.get_or_encode(model, img)
    e2, cached2, t2 = EmbeddingCache(tmp_path).get_or_encode(model, img)  # a new object: from disk
    assert (cached1, cached2, model.calls) == (False, True, 1)
    assert t1 > 0 and t2 == 0.0
    assert torch.equal(e1.features, e2.features) and e2.features.dtype == torch.float32
    assert e2.original_hw == (12, 16) and e2.input_hw == (12, 16) and e2.model_key == model.cache_key


def test_key_depends_on_model_identity_and_pixels_only(tmp_path):
    cache, img = EmbeddingCache(tmp_path), _image()
    a, b = CountingEncoder(), CountingEncoder(preprocess_id="p2")
    cache.get_or_encode(a, img)
    assert cache.get_or_encode(b, img)[1] is False  # other preprocessing: miss
    assert cache.get_or_encode(a, img.copy())[1] is True  # same pixels, other array: hit
    changed = img.copy()
    changed[0, 0, 0] ^= 1
    assert cache.get_or_encode(a, changed)[1] is False
    # same bytes, other shape: different hash
    assert image_sha256(img) != image_sha256(img.reshape(16, 12, 3))


def test_corrupt_entry_is_logged_and_recomputed(tmp_path, caplog):
    model, cache, img = CountingEncoder(), EmbeddingCache(tmp_path), _image()
    cache.get_or_encode(model, img)
    path = cache.path(model.cache_key, image_sha256(img))
    path.write_bytes(path.read_bytes()[:50])  # truncated file
    with caplog.at_level(logging.WARNING, logger="samstudy.cache"):
        emb, cached, _ = cache.get_or_encode(model, img)
    assert not cached and model.calls == 2 and cache.stats.corrupt == 1
    assert "unreadable entry" in caplog.text
    assert EmbeddingCache(tmp_path).get_or_encode(model, img)[1] is True  # rewritten


def test_entry_with_wrong_key_inside_is_rejected(tmp_path):
    model, cache, img, other = CountingEncoder(), EmbeddingCache(tmp_path), _image(0), _image(1)
    cache.get_or_encode(model, img)
    cache.get_or_encode(model, other)
    p_img = cache.path(model.cache_key, image_sha256(img))
    p_other = cache.path(model.cache_key, image_sha256(other))
    p_img.write_bytes(p_other.read_bytes())  # a valid file under the wrong name
    assert cache.get_or_encode(model, img)[1] is False


def test_atomic_write_leaves_no_temporary_files_and_size_is_reported(tmp_path):
    model, cache = CountingEncoder(), EmbeddingCache(tmp_path)
    assert cache.size_bytes() == 0
    for s in range(3):
        cache.get_or_encode(model, _image(s))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 3 and not any(p.name.startswith(".tmp-") for p in files)
    assert cache.size_bytes() == sum(p.stat().st_size for p in files) > 3 * 12 * 16 * 4


def test_disabled_cache_always_encodes(tmp_path):
    model, cache, img = CountingEncoder(), EmbeddingCache(None), _image()
    assert [cache.get_or_encode(model, img)[1] for _ in range(2)] == [False, False]
    assert model.calls == 2 and cache.size_bytes() == 0


def test_unwritable_cache_does_not_fail_the_run(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    model = CountingEncoder()
    emb, cached, _ = EmbeddingCache(blocker).get_or_encode(model, _image())  # cannot mkdir under a file
    assert not cached and emb.features.shape == (1, 1, 12, 16)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5)])
def test_image_hash_is_stable(shape):
    img = np.zeros((*shape, 3), np.uint8)
    assert image_sha256(img) == image_sha256(np.zeros((*shape, 3), np.uint8))
    assert len(image_sha256(img)) == 64
