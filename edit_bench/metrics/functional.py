"""The metrics' formulas as pure functions, as torchmetrics keeps a functional core under each metric class:
features, images or detections in, numbers out; no network, no state, no file.

Each metric class (:mod:`.edit_scores`, :mod:`.clip_score`, :mod:`.fid`, :mod:`.paired`, :mod:`.detectors`) loads
its network, computes features and calls one of these; ``bench``'s authors'-style loop scores through the same
classes, so both loops run one formula. The tests check each function against an independent reference
(``tests/test_functional_metrics.py``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


# ------------------------------------------------------------------------------------------ images
def to_uint8(images: Tensor) -> Tensor:
    """Images ``[B, 3, H, W]`` in [0, 1] as the 8-bit values a saved PNG holds (uint8, on the CPU)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def quantised(images: Tensor) -> Tensor:
    """Images as 8-bit PNGs hold them, back in [0, 1] float (on their device)."""
    return (images.detach().float().clamp(0, 1) * 255).round() / 255


# ------------------------------------------------------------------------------------------ reductions
def seed_stats(values: Tensor, seed: Tensor) -> dict:
    """``{"mean", "std", "n"}``: the mean over samples and the population std (ddof=0) across seeds of the
    per-seed means (ReFACT's ± ), of ``values`` ``[N]`` with their ``seed`` ``[N]``."""
    seeds = sorted(set(seed.tolist()))
    per_seed = torch.stack([values[seed == s].double().mean() for s in seeds])
    return {"mean": float(values.double().mean()), "std": float(per_seed.std(unbiased=False)) if len(seeds) > 1 else 0.0,
            "n": int(values.numel())}


# ------------------------------------------------------------------------------------------ the TIMED judge
def preference(image_features: Tensor, old_features: Tensor, new_features: Tensor, scale: float) -> Tensor:
    """``P(new)`` per image ``[B]``: ``softmax(scale * cos(image, [old, new]))[1]`` of normalised features ``[B, E]``."""
    cos = torch.stack([(image_features * old_features).sum(-1), (image_features * new_features).sum(-1)], -1)
    return torch.softmax(scale * cos, dim=-1)[:, 1]


def timed_success(p_new: Tensor, expect: list[str]) -> Tensor:
    """The TIMED rule: a sample succeeds when the label it expects wins (``P(new) > 0.5`` for ``"new"``,
    ``< 0.5`` for ``"old"``). ``[B]`` bool."""
    want_new = torch.tensor([e == "new" for e in expect])
    return torch.where(want_new, p_new > 0.5, p_new < 0.5)


def timed_scores(success: Tensor, group: list[str], seed: Tensor, order: list[str] | None = None) -> dict:
    """ReFACT §3.3 from per-sample successes ``[N]`` with their group and seed: each group's :func:`seed_stats`, and
    ``f1 = sqrt(generality × specificity)`` of the means, its std across seeds of the per-seed ``sqrt(gen × spec)``.
    Groups in ``order`` (default: order of first appearance)."""
    success = success.double()
    seeds = sorted(set(seed.tolist()))
    out, per_seed = {}, {}
    for g in order if order is not None else dict.fromkeys(group):
        in_g = torch.tensor([x == g for x in group])
        per_seed[g] = torch.stack([success[in_g & (seed == s)].mean() for s in seeds if (in_g & (seed == s)).any()])
        out[g] = seed_stats(success[in_g], seed[in_g])
    if "generality" in out and "specificity" in out:
        f1_seed = (per_seed["generality"] * per_seed["specificity"]).sqrt()
        out["f1"] = {"mean": math.sqrt(out["generality"]["mean"] * out["specificity"]["mean"]),
                     "std": float(f1_seed.std(unbiased=False)) if len(f1_seed) > 1 else 0.0,
                     "n": out["generality"]["n"] + out["specificity"]["n"]}
    return out


# ------------------------------------------------------------------------------------------ CLIP
def clip_score(image_features: Tensor, text_features: Tensor, weight: float, clamp: bool) -> Tensor:
    """``weight * cos(image, text)`` per pair ``[B]`` of normalised features, ``max(cos, 0)`` with ``clamp``."""
    cos = (image_features * text_features).sum(-1)
    return weight * (cos.clamp(min=0) if clamp else cos)


def zero_shot(image_features: Tensor, text_features: Tensor, scale: float) -> Tensor:
    """``softmax(scale * cos(image, texts))`` ``[B, T]`` of normalised features ``[B, E]`` and ``[T, E]``."""
    return torch.softmax(scale * image_features @ text_features.T, dim=-1)


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """``1 - cos`` per row ``[B]`` of normalised features."""
    return 1 - (a * b).sum(-1)


def share_deviation(share: Tensor, desired: list[float]) -> float:
    """``max_j |share_j - desired_j| / desired_j``: 0 when the shares are the desired ones (TIME §6's
    ``|p_female - 50%| / 50%`` with two balanced attributes)."""
    return max(abs(float(share[j]) - d) / d for j, d in enumerate(desired))


# ------------------------------------------------------------------------------------------ classifiers
def top_k_hits(top5: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Top-1 and top-5 hits ``([B], [B])`` float64 of class indices ``top5`` ``[B, 5]`` (best first) and ``target`` ``[B]``."""
    return (top5[:, 0] == target).double(), (top5 == target[:, None]).any(-1).double()


def box_counts(detections: list[dict], classes: tuple[str, ...], threshold: float) -> dict[str, int]:
    """Boxes per class among one image's detections (``{"class", "score"}``) with ``score >= threshold``."""
    kept = [d for d in detections if d["score"] >= threshold and d["class"] in classes]
    return {c: sum(d["class"] == c for d in kept) for c in classes}


# ------------------------------------------------------------------------------------------ feature distributions
def frechet_distance(a: np.ndarray, b_mu: np.ndarray, b_sigma: np.ndarray) -> float:
    """clean-fid's Fréchet distance between features ``a`` ``[N, F]`` and the statistics of a reference."""
    from cleanfid.fid import frechet_distance as fd

    return float(fd(np.mean(a, axis=0), np.cov(a, rowvar=False), b_mu, b_sigma))


def kernel_distance(a: np.ndarray, b: np.ndarray, subsets: int, subset_size: int, seed: int) -> float:
    """clean-fid's KID (unbiased MMD², cubic polynomial kernel, averaged over random subsets); clean-fid draws
    the subsets from numpy's global RNG, which is seeded here and restored after."""
    from cleanfid.fid import kernel_distance as kd

    state = np.random.get_state()
    try:
        np.random.seed(seed)
        return float(kd(a, b, num_subsets=subsets, max_subset_size=subset_size))
    finally:
        np.random.set_state(state)


# ------------------------------------------------------------------------------------------ paired images
def ssim(images: Tensor, reference: Tensor) -> Tensor:
    """torchmetrics' SSIM (Gaussian window 11, sigma 1.5) per pair ``[B]`` of images in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(images, reference, data_range=1.0, reduction="none")
