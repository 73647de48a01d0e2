"""Paired distances: each edited image against the unedited model's image of the same prompt and seed — LPIPS (the
``lpips`` package), SSIM (torchmetrics) and the toy world's perceptual twin (1 - cos of the judge's features).

Nothing is downloaded: a missing backbone is a :class:`~edit_bench.errors.ModelNotAvailable` naming the file and
where ``lpips`` looks for it.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ..errors import ModelNotAvailable, UsageError
from .base import RecordScalar
from .clip_preference import ClipJudge, JudgeConfig, shared_judge
from .functional import cosine_distance, quantised, ssim, to_uint8

class PairedMetric(RecordScalar):
    """A distance between each edited image and the unedited model's image of the same sample (same prompt,
    same seed), scored when the benchmark scores its baseline: the baseline pass stores each image's
    ``reference(images)`` per sample id (the 8-bit image itself as uint8 where the distance needs pixels: exact,
    since the images are 8-bit, and a quarter of float32); the edited pass scores ``distance(images, stored
    references)`` into the record under the metric's name.

    A delta's baseline is the model without the delta; the unedited model has no pair (nothing is scored, and
    ``results.json`` says so); an editor evaluated without ``baseline: true`` is refused before any output."""

    paired: ClassVar[bool] = True
    needs_baseline: ClassVar[bool] = True

    def __init__(self, name: str | None = None, against: Literal["same", "absent"] = "same", **kwargs):
        super().__init__(name=name, **kwargs)
        if against not in ("same", "absent"):
            raise UsageError(f"metric {self.name!r}: against {against!r}: use 'same' (the unedited image of the same "
                             "prompt and seed) or 'absent' (the unedited image of the concept-absent prompt, same seed)")
        self.against = against

    def prepare(self, bench=None) -> None:
        if self.against == "absent" and (bench is None or getattr(bench, "absent", None) is None):
            raise UsageError(f"metric {self.name!r} compares with the concept-absent reference (against: absent), but the "
                             "benchmark declares none: give it absent: new or absent: {remove: [the concept's words]}")

    def pairs_info(self) -> str:
        """Which two images each score compares (recorded in the protocol)."""
        if self.against == "absent":
            return ("each image of a prompt naming the erased concept vs the unedited model's image of the same prompt "
                    "without it (the benchmark's absent rule), same seed")
        return "edited vs unedited image of the same prompt and seed"

    def reference_of(self, images: Tensor, samples) -> Tensor:
        """What the baseline pass stores for ``samples``' images (``reference(images)`` unless a metric needs the
        samples too)."""
        return self.reference(images)

    def scored(self, records: list) -> list:
        """The records this metric scores: all (``same``), or those whose case holds the concept-absent twin group
        (``absent``)."""
        if self.against == "same":
            return records
        twins = {(r.case, r.group.removeprefix("absent:")) for r in records if r.group.startswith("absent:")}
        return [r for r in records if (r.case, r.group) in twins]

    def update(self, records, features=None) -> None:
        super().update(self.scored(records), features)

    @abc.abstractmethod
    def reference(self, images: Tensor) -> Tensor:
        """What the baseline pass stores per image ``[B, ...]``."""

    @abc.abstractmethod
    def distance(self, images: Tensor, reference: Tensor) -> Tensor:
        """``[B]`` distances between ``images`` and the stored ``reference`` rows of the same samples."""

    def score_pairs(self, images: Tensor, reference: Tensor) -> dict[str, list[float]]:
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            return {self.key: self.distance(images, reference.to(images.device)).double().cpu().tolist()}


TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


class LPIPS(PairedMetric):
    """LPIPS (the ``lpips`` package, v0.1 linear heads) between the edited and the unedited image of each
    sample, images in [-1, 1]; mean by group.

    Args:
        net: ``alex`` (default, as ESD/UCE) or ``vgg``.
        size: ``None`` = full resolution; ``64`` = ESD's and UCE's scripts (``transforms.Resize(64)``: the short
            side to 64 px, bilinear with antialiasing, of the 8-bit image).
        name: default ``lpips``.
    """

    default_name = "lpips"

    def __init__(self, net: str = "alex", size: int | None = None, name: str | None = None,
                 against: Literal["same", "absent"] = "same", **kwargs):
        super().__init__(name=name, against=against, **kwargs)
        if net not in TORCHVISION_FILES:
            raise UsageError(f"LPIPS net {net!r}: use one of {sorted(TORCHVISION_FILES)}")
        self.net, self.size = net, size
        self.lpips_net: nn.Module | None = None  # loaded by prepare(): a registered submodule

    def prepare(self, bench=None) -> None:
        super().prepare(bench)
        if self.lpips_net is not None:
            return
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        if not (hub / TORCHVISION_FILES[self.net]).is_file():
            raise ModelNotAvailable(
                f"LPIPS ({self.net}) needs torchvision's ImageNet backbone {TORCHVISION_FILES[self.net]}, not found in "
                f"{hub} (the torch hub cache, where lpips loads it; set TORCH_HOME to use another cache; edit_bench never "
                f"downloads). Copy https://download.pytorch.org/models/{TORCHVISION_FILES[self.net]} there")
        import warnings

        import lpips

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's 'pretrained' deprecation, inside lpips
            self.lpips_net = lpips.LPIPS(net=self.net, verbose=False).eval().requires_grad_(False)

    def identity(self) -> dict:
        from ..provenance import path_digest

        f = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[self.net]
        return {"net": self.net, "size": self.size, "backbone": path_digest(f) if f.is_file() else None}

    def describe(self) -> dict:
        return {"class": type(self).__name__, "name": self.name, "net": self.net, "version": "lpips 0.1",
                "resize": f"short side to {self.size} px (torchvision Resize, as ESD/UCE)" if self.size else "none",
                "pairs": self.pairs_info()}

    def _prep(self, x: Tensor) -> Tensor:
        """8-bit values in [0, 1] float, resized when asked."""
        if self.size:
            import torchvision.transforms.functional as TF

            x = TF.resize(x, self.size, antialias=True)
        return x

    def reference(self, images: Tensor) -> Tensor:
        return to_uint8(images)

    def distance(self, images: Tensor, reference: Tensor) -> Tensor:
        x = self._prep(quantised(images))
        ref = self._prep(reference.to(x.device).float() / 255)
        net = self.lpips_net.to(x.device)
        return net(x * 2 - 1, ref * 2 - 1).flatten()


class SSIM(PairedMetric):
    """SSIM (torchmetrics, Gaussian window 11, sigma 1.5) between the edited and the unedited 8-bit image of
    each sample: the toy world's pixel-level paired similarity (1 = identical).

    Args:
        name: default ``ssim``.
    """

    default_name = "ssim"

    def describe(self) -> dict:
        return {"class": type(self).__name__, "name": self.name,
                "implementation": "torchmetrics structural_similarity_index_measure",
                "pairs": self.pairs_info()}

    def reference(self, images: Tensor) -> Tensor:
        return to_uint8(images)

    def distance(self, images: Tensor, reference: Tensor) -> Tensor:
        x = quantised(images)
        return ssim(x, reference.to(x.device).float() / 255)


class JudgeDistance(PairedMetric):
    """1 - cos between the toy judge's (or any judge's) image features of the edited and the unedited image of
    each sample: the toy world's perceptual twin of LPIPS (0 = the same to the judge). Reported as
    ``judge_distance``, never as LPIPS.

    Args:
        judge: the judge; ``None`` = the benchmark's.
        name: default ``judge_distance``.
    """

    default_name = "judge_distance"

    def __init__(self, judge: JudgeConfig | None = None, name: str | None = None,
                 against: Literal["same", "absent"] = "same", **kwargs):
        super().__init__(name=name, against=against, **kwargs)
        self.judge_cfg = judge
        self.judge: ClipJudge | None = None  # loaded by prepare(): a registered submodule

    def prepare(self, bench=None) -> None:
        super().prepare(bench)
        if self.judge_cfg is None:
            self.judge_cfg = bench.judge_cfg if bench is not None else JudgeConfig(model="toy")
        if self.judge is None:
            self.judge = shared_judge(self.judge_cfg)

    def identity(self) -> dict:
        return {"judge": self.judge_cfg.identity() if self.judge_cfg else None}

    def describe(self) -> dict:
        return {"class": type(self).__name__, "name": self.name,
                "judge": self.judge_cfg.describe() if self.judge_cfg else "the benchmark's",
                "formula": "1 - cos(judge image features of the edited image, of the unedited image)",
                "pairs": self.pairs_info()}

    def reference(self, images: Tensor) -> Tensor:
        return self.judge.to(images.device).image_features(images).float().cpu()

    def distance(self, images: Tensor, reference: Tensor) -> Tensor:
        return cosine_distance(self.judge.to(images.device).image_features(images), reference.to(images.device))


class ClipScoreDifference(PairedMetric):
    """IGMU's CLIP Score Difference Rate (Liu et al., "Rethinking machine unlearning in image generation models",
    ACM CCS 2025; ryliu68/IGMU ``benchmark.py``): per image, ``|CLIP(ref, p') - CLIP(img, p')| / CLIP(ref, p') x 100``,
    where ``p'`` is the concept-absent prompt and ``ref`` the unedited model's image of it (``against: absent``; the
    default), or with ``against: same`` the sample's own prompt and the unedited image of it. 0: the image agrees
    with ``p'`` exactly as well as the reference does.

    The CLIP-score is :class:`~edit_bench.metrics.ClipScore`'s (``preset``/``model``): ``igmu`` is IGMU's
    (torchmetrics' ``100 * max(cos, 0)`` with CLIP ViT-B/16); ``judge`` (default) the benchmark's judge. IGMU edits
    torchmetrics to get per-image scores; here they are per image by construction. A reference scoring 0 gives an
    undefined rate (NaN), reported as such.

    Args:
        preset, model: the CLIP-score's (see ``ClipScore``).
        against: ``absent`` (IGMU's) or ``same``.
        name: default ``csdr``.
    """

    default_name = "csdr"

    def __init__(self, preset: str = "judge", model: str | None = None, name: str | None = None,
                 against: Literal["same", "absent"] = "absent", **kwargs):
        super().__init__(name=name, against=against, **kwargs)
        from .clip_score import ClipScore

        self.clip = ClipScore(preset=preset, model=model, name=f"{self.name}-clip")

    def prepare(self, bench=None) -> None:
        super().prepare(bench)
        self.clip.prepare(bench)

    def identity(self) -> dict:
        return {"clip": self.clip.identity()}

    def describe(self) -> dict:
        c = self.clip.describe()
        return {"class": type(self).__name__, "name": self.name, "clip_score": {k: c[k] for k in ("preset", "model", "formula")},
                "formula": "|CLIP(reference image, p') - CLIP(image, p')| / CLIP(reference image, p') * 100, p' the "
                           "reference's prompt", "pairs": self.pairs_info()}

    def reference_of(self, images: Tensor, samples) -> Tensor:
        net = self.clip.net.to(images.device)
        with torch.autocast(images.device.type, enabled=False):
            img = net.image_features(images).float()
            txt = net.text_features([s.pair.prompt for s in samples]).float().to(img.device)
        return torch.cat([img, txt], 1).cpu()

    def reference(self, images: Tensor) -> Tensor:
        raise TypeError("ClipScoreDifference stores the reference prompt's text features too: use reference_of(images, samples)")

    def distance(self, images: Tensor, reference: Tensor) -> Tensor:
        from .functional import clip_score

        net, w, clamp = self.clip.net.to(images.device), self.clip.weight, self.clip.clamp
        ref = reference.to(images.device).double()
        ref_img, txt = ref.chunk(2, dim=1)
        img = net.image_features(images).double()
        s_ref, s_img = clip_score(ref_img, txt, w, clamp), clip_score(img, txt, w, clamp)
        rate = (s_ref - s_img).abs() / s_ref * 100
        return torch.where(s_ref > 0, rate, torch.full_like(rate, float("nan")))
