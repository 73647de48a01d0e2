"""The metrics' functional core (edit_bench.metrics.functional) against references written independently here,
in numpy / scipy and by hand (the clean-fid formulas: test_quality_metrics.py)."""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch

from edit_bench.metrics import functional as F


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_seed_stats_is_the_mean_over_samples_and_the_population_std_of_per_seed_means():
    v = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    seed = torch.tensor([0, 0, 1, 1, 2, 2])
    per_seed = np.array([0.5, 1.0, 0.0])
    assert F.seed_stats(v, seed) == {"mean": pytest.approx(0.5), "std": pytest.approx(per_seed.std(ddof=0)), "n": 6}
    assert F.seed_stats(v, torch.zeros(6, dtype=torch.long))["std"] == 0.0  # one seed: no spread


def test_preference_and_zero_shot_are_softmaxes_of_scaled_cosines():
    rng = np.random.default_rng(0)
    img, old, new = _unit(rng, 5, 8), _unit(rng, 5, 8), _unit(rng, 5, 8)
    logits = 100 * np.stack([(img * old).sum(-1), (img * new).sum(-1)], -1)
    want = scipy.special.softmax(logits, axis=-1)[:, 1]
    got = F.preference(*map(torch.from_numpy, (img, old, new)), scale=100.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    texts = _unit(rng, 3, 8)
    np.testing.assert_allclose(F.zero_shot(torch.from_numpy(img), torch.from_numpy(texts), 50.0).numpy(),
                               scipy.special.softmax(50 * img @ texts.T, axis=-1), rtol=1e-10)


def test_timed_success_and_scores_follow_refact():
    p_new = torch.tensor([0.9, 0.2, 0.6, 0.4, 0.5])
    assert F.timed_success(p_new, ["new", "new", "old", "old", "new"]).tolist() == [True, False, False, True, False]
    # two seeds; efficacy 1/2 then 2/2, generality 1/2 then 1/2, specificity 2/2 then 0/2
    group = ["efficacy"] * 4 + ["generality"] * 4 + ["specificity"] * 4
    seed = torch.tensor([0, 0, 1, 1] * 3)
    success = torch.tensor([1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 0], dtype=torch.bool)
    out = F.timed_scores(success, group, seed)
    assert out["efficacy"] == {"mean": 0.75, "std": 0.25, "n": 4}
    assert out["specificity"] == {"mean": 0.5, "std": 0.5, "n": 4}
    assert out["f1"]["mean"] == pytest.approx(math.sqrt(0.5 * 0.5))
    assert out["f1"]["std"] == pytest.approx(np.std([math.sqrt(0.5 * 1.0), math.sqrt(0.5 * 0.0)]))
    assert out["f1"]["n"] == 8 and list(out) == ["efficacy", "generality", "specificity", "f1"]
    assert list(F.timed_scores(success, group, seed, order=["specificity", "efficacy"])) == ["specificity", "efficacy"]


def test_clip_score_weights_and_clamps_the_cosine_per_pair():
    rng = np.random.default_rng(1)
    img, txt = _unit(rng, 6, 4), _unit(rng, 6, 4)
    cos = (img * txt).sum(-1)
    assert (cos < 0).any() and (cos > 0).any()
    t = torch.from_numpy
    np.testing.assert_allclose(F.clip_score(t(img), t(txt), 2.5, clamp=True).numpy(), 2.5 * np.maximum(cos, 0), rtol=1e-12)
    np.testing.assert_allclose(F.clip_score(t(img), t(txt), 100.0, clamp=False).numpy(), 100 * cos, rtol=1e-12)
    np.testing.assert_allclose(F.cosine_distance(t(img), t(txt)).numpy(), 1 - cos, rtol=1e-12)


def test_frechet_distance_is_the_closed_form_between_gaussians():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 5)), rng.normal(0.3, 1.5, size=(300, 5))
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    want = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert F.frechet_distance(a, mu2, s2) == pytest.approx(want, rel=1e-6)


def test_classifier_hits_box_counts_and_share_deviation():
    top5 = torch.tensor([[3, 1, 2, 0, 4], [1, 3, 2, 0, 4], [0, 1, 2, 4, 5]])
    top1, top5_hit = F.top_k_hits(top5, torch.tensor([3, 3, 3]))
    assert top1.tolist() == [1.0, 0.0, 0.0] and top5_hit.tolist() == [1.0, 1.0, 0.0]
    dets = [{"class": "A", "score": 0.7}, {"class": "A", "score": 0.5}, {"class": "B", "score": 0.9}, {"class": "C", "score": 0.99}]
    assert F.box_counts(dets, ("A", "B"), 0.6) == {"A": 1, "B": 1}
    assert F.share_deviation(torch.tensor([0.8, 0.2]), [0.5, 0.5]) == pytest.approx(0.6)  # TIME's |0.2 - 0.5| / 0.5
    assert F.share_deviation(torch.tensor([0.5, 0.5]), [0.5, 0.5]) == 0.0


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(F.ssim(x, x), torch.ones(2, dtype=x.dtype))
    noisy = [F.ssim(x, (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)).mean() for s in (0.05, 0.2)]
    assert 1 > noisy[0] > noisy[1]


def test_images_quantise_as_a_png_holds_them():
    x = torch.tensor([[[[0.0, 0.5, 1.2, -0.1, 0.1234]]]]).expand(1, 3, 1, 5)
    assert F.to_uint8(x)[0, 0, 0].tolist() == [0, 128, 255, 0, 31]
    assert torch.equal(F.quantised(x), F.to_uint8(x).float() / 255)
