"""Paired distances: each edited image against the unedited model's image of the same prompt and seed — LPIPS (the
``lpips`` package), SSIM (torchmetrics) and the toy world's perceptual twin (1 - cos of the judge's features).

Nothing is downloaded: a missing backbone is a :class:`~edit_bench.errors.ModelNotAvailable` naming the file and
where ``lpips`` looks for it.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar

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

    def __init__(self, net: str = "alex", size: int | None = None, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        if net not in TORCHVISION_FILES:
            raise UsageError(f"LPIPS net {net!r}: use one of {sorted(TORCHVISION_FILES)}")
        self.net, self.size = net, size
        self.lpips_net: nn.Module | None = None  # loaded by prepare(): a registered submodule

    def prepare(self, bench=None) -> None:
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
                "pairs": "edited vs unedited image of the same prompt and seed"}

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
                "pairs": "edited vs unedited image of the same prompt and seed"}

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

    def __init__(self, judge: JudgeConfig | None = None, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self.judge_cfg = judge
        self.judge: ClipJudge | None = None  # loaded by prepare(): a registered submodule

    def prepare(self, bench=None) -> None:
        if self.judge_cfg is None:
            self.judge_cfg = bench.judge_cfg if bench is not None else JudgeConfig(model="toy")
        if self.judge is None:
            self.judge = shared_judge(self.judge_cfg)

    def identity(self) -> dict:
        return {"judge": self.judge_cfg.identity() if self.judge_cfg else None}

    def describe(self) -> dict:
        return {"class": type(self).__name__, "name": self.name,
                "judge": self.judge_cfg.describe() if self.judge_cfg else "the benchmark's",
                "formula": "1 - cos(judge image features of the edited image, of the unedited image)"}

    def reference(self, images: Tensor) -> Tensor:
        return self.judge.to(images.device).image_features(images).float().cpu()

    def distance(self, images: Tensor, reference: Tensor) -> Tensor:
        return cosine_distance(self.judge.to(images.device).image_features(images), reference.to(images.device))
