"""Stage 2's synthetic training errors (samstudy.custom.perturb): properties that must hold."""
import cv2
import numpy as np
import torch

from samstudy.custom.perturb import mix_base_logits, perturbed_logits


def _disc(size=32, r=9.0, cx=15.5, cy=15.5):
    yy, xx = np.mgrid[:size, :size]
    return torch.from_numpy(((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r).astype(np.float32))[None, None]


def test_no_deformation_gives_the_ground_truth_at_a_random_confidence():
    m = _disc()
    out = perturbed_logits(m.repeat(3, 1, 1, 1), np.random.default_rng(0), 0.0, 0)
    assert torch.equal(out > 0, (m > 0.5).repeat(3, 1, 1, 1))
    gains = out.amax(dim=(1, 2, 3)) / 0.5  # g * (1 - 0.5)
    assert torch.all((gains >= 4) & (gains <= 12)) and len(set(gains.tolist())) == 3


def test_without_displacement_the_mask_is_the_ground_truth_grown_or_shrunk_by_at_most_the_radius():
    # Independent truth: OpenCV's square dilation / erosion of the binary mask.
    m = _disc()
    gt = (m[0, 0] > 0.5).numpy().astype(np.uint8)
    candidates = {0: gt}
    for r in (1, 2):
        k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
        candidates[r] = cv2.dilate(gt, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        candidates[-r] = cv2.erode(gt, k, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    seen = set()
    for seed in range(40):
        out = (perturbed_logits(m, np.random.default_rng(seed), 0.0, 2) > 0)[0, 0].numpy().astype(np.uint8)
        hits = [r for r, c in candidates.items() if np.array_equal(out, c)]
        assert len(hits) == 1, seed
        seen.add(hits[0])
    assert seen == {-2, -1, 0, 1, 2}


def test_displacement_is_smooth_and_bounded_by_the_amplitude():
    # A pixel further than max_shift from the boundary keeps its label: the field moves the
    # mask by at most max_shift px (bicubic between control values in [-a, a] may overshoot a
    # little, so allow 1 px more).
    m = _disc(64, 20.0, 31.5, 31.5)
    yy, xx = np.mgrid[:64, :64]
    dist = np.hypot(xx - 31.5, yy - 31.5) - 20.0
    shift = 4.0
    for seed in range(10):
        out = (perturbed_logits(m, np.random.default_rng(seed), shift, 0) > 0)[0, 0].numpy()
        far_in, far_out = dist < -(shift + 1.5), dist > shift + 1.5
        assert out[far_in].all() and not out[far_out].any()


def test_same_rng_same_result_and_deformations_differ_across_objects():
    m = _disc().repeat(4, 1, 1, 1)
    a = perturbed_logits(m, np.random.default_rng(5), 3.0, 1)
    b = perturbed_logits(m, np.random.default_rng(5), 3.0, 1)
    assert torch.equal(a, b)
    masks = {tuple((a[i] > 0).flatten().tolist()) for i in range(4)}
    assert len(masks) > 1


def test_mix_with_probability_0_is_stage_1_and_draws_nothing():
    logits1 = torch.randn(5, 1, 32, 32, requires_grad=True)
    rng = np.random.default_rng(3)
    out = mix_base_logits(logits1, _disc().repeat(5, 1, 1, 1), rng, 0.0, 4.0, 2)
    assert torch.equal(out, logits1.detach()) and not out.requires_grad
    assert rng.random() == np.random.default_rng(3).random()


def test_mix_with_probability_1_replaces_every_object():
    logits1 = torch.full((4, 1, 32, 32), -50.0)  # stage 1 predicts nothing
    out = mix_base_logits(logits1, _disc().repeat(4, 1, 1, 1), np.random.default_rng(0), 1.0, 0.0, 0)
    assert torch.equal(out > 0, (_disc() > 0.5).repeat(4, 1, 1, 1))
    assert out.abs().max() <= 6.0  # the deformed GT's logits, not stage 1's -50
