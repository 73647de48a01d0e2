"""FID and KID with clean-fid's features, resize and formulas (:func:`~edit_bench.metrics.functional.frechet_distance`,
:func:`~edit_bench.metrics.functional.kernel_distance`), against a folder of real images (its features cached) or
the toy world's renderer; and the toy world's twin on the toy judge's image tower (``toy_fid``/``toy_kid``).

Nothing is downloaded: a missing Inception file is a :class:`~edit_bench.errors.ModelNotAvailable` naming the file,
where clean-fid looks for it, and the setting that points the metric at a local copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ModelNotAvailable, UsageError
from ..types import Record, Sample
from .base import SampleMetric, cat_state, empty_state
from .clip_preference import ClipJudge, JudgeConfig, shared_judge
from .functional import frechet_distance, kernel_distance, to_uint8

INCEPTION_FILE = "inception-2015-12-05.pt"  # clean-fid's TorchScript Inception (StyleGAN2-ADA's copy of TF's)


def _cleanfid_folder() -> Path:
    import platform

    return Path("./" if platform.system() == "Windows" else "/tmp")  # clean-fid's fixed download folder


class ImageFeatures(nn.Module):
    """Features of images as clean-fid computes them for files: 8-bit images (as a saved PNG), its resize
    for the mode, to a tensor as its ``ResizeDataset`` does, then the feature network on [0, 255] input.

    A module: the network is a registered submodule, so ``.to(device)`` moves it with the metric.

    Args:
        net: ``[B, 3, h, w]`` float in [0, 255] -> ``[B, F]`` (clean-fid's Inception, or any network, as
            clean-fid's ``custom_feat_extractor``).
        resize: numpy ``[H, W, 3]`` uint8 -> numpy (clean-fid's resizer of the mode, or ``custom_fn_resize``).
        name: what the features are, for cache keys and the protocol.
    """

    def __init__(self, net, resize, name: str):
        super().__init__()
        self.net, self.resize, self.name = net, resize, name  # a module is registered (moves with .to())

    @property
    def device(self) -> torch.device:
        p = next(self.net.parameters(), None) if isinstance(self.net, nn.Module) else None
        if p is None and isinstance(self.net, nn.Module):
            p = next(self.net.buffers(), None)
        return p.device if p is not None else torch.device("cpu")

    def extractor(self, x: Tensor) -> Tensor:
        """The network on a batch ``[B, 3, h, w]`` in [0, 255] (on its own device)."""
        return self.net(x.to(self.device))

    def to_input(self, u8: np.ndarray) -> Tensor:
        import torchvision

        x = self.resize(u8)
        t = torchvision.transforms.functional.to_tensor(np.array(x))  # clean-fid's ToTensor step
        return t * 255 if x.dtype == np.uint8 else t

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        u8 = to_uint8(images).permute(0, 2, 3, 1).numpy()
        batch = torch.stack([self.to_input(a) for a in u8])
        with torch.autocast(self.device.type, enabled=False):
            return torch.as_tensor(self.extractor(batch)).float().cpu()

    @classmethod
    def inception(cls, mode: str = "clean", path: str | None = None) -> "ImageFeatures":
        """clean-fid's Inception features (2048-d) and resize for ``mode`` (``clean``: PIL bicubic to 299 in
        float; ``legacy_tensorflow``: the network's own resize). ``path``: the TorchScript file or a folder with it
        (default: clean-fid's own folder)."""
        from cleanfid.inception_torchscript import InceptionV3W
        from cleanfid.resize import build_resizer

        if mode not in ("clean", "legacy_tensorflow"):
            raise UsageError(f"FID mode {mode!r}: use 'clean' (default) or 'legacy_tensorflow'")
        folder = Path(path).expanduser() if path else _cleanfid_folder()
        if folder.is_file():
            if folder.name != INCEPTION_FILE:
                raise ModelNotAvailable(f"{folder}: clean-fid loads the Inception file by its name {INCEPTION_FILE}; "
                                        "rename it or give its folder")
            folder = folder.parent
        if not (folder / INCEPTION_FILE).is_file():
            raise ModelNotAvailable(
                f"FID/KID need clean-fid's Inception weights {INCEPTION_FILE}, not found in {folder} (clean-fid looks "
                f"only in {_cleanfid_folder()}, fixed; edit_bench never downloads). Copy the file from "
                "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt "
                "there, or point the metric at it: inception: /path/to/inception-2015-12-05.pt")
        net = InceptionV3W(str(folder), download=False, resize_inside=mode == "legacy_tensorflow").eval()
        return cls(net, build_resizer(mode), f"inception-v3-torchscript/{mode}")

    @classmethod
    def toy_judge(cls, judge: ClipJudge | None = None) -> "ImageFeatures":
        """The toy judge's image tower (64-d, before normalisation) at the images' own 32 px, for the toy world's
        twin of FID: its images are 32 px and no ImageNet network exists there."""
        import torchvision.transforms as T

        judge = judge or shared_judge(JudgeConfig(model="toy"))
        norm = next(t for t in judge.preprocess.transforms if isinstance(t, T.Normalize))  # the judge's own
        return cls(_ImageTower(judge.model, norm.mean, norm.std), _as_float32, "toy-judge-image-tower")


def _as_float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32)


class _ImageTower(nn.Module):
    """A CLIP model's image tower on [0, 255] input, normalised as its own preprocessing does."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(std)[:, None, None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model.encode_image(((x / 255) - self.mean) / self.std).float()


class FID(SampleMetric):
    """FID and KID of a variant's images against a reference set, with clean-fid's features, resize and
    formulas. Features are computed in the predict loop while the images are in memory and stored per sample
    (so a resumed or multi-process run computes the score of all of them once).

    Args:
        name: default ``fid`` (``toy_fid`` with the toy judge's features); its KID is reported as the name with
            ``fid`` replaced by ``kid`` (``kid``, ``toy_kid``; ``fid_legacy`` -> ``kid_legacy``), or ``NAME_kid``.
        reference: a folder of real images (default: the benchmark's ``fid_reference``), its features computed
            once and cached in ``$EDIT_BENCH_CACHE/fid_ref``, keyed by the folder's content, the mode and the
            features; or
            ``renderer`` (the toy world: the renderer's images of the benchmark's own prompts and seeds, its
            true data distribution).
        features: ``inception`` (clean-fid's; the FID of the papers) or ``toy_judge`` (the toy judge's image
            tower; reported as ``toy_fid`` / ``toy_kid`` so that it is never mistaken for an Inception FID).
        mode: clean-fid's ``clean`` (default) or ``legacy_tensorflow``.
        inception: the Inception TorchScript file (or its folder), default clean-fid's ``/tmp``.
        kid_subsets, kid_subset_size, seed: KID's random subsets (clean-fid's 100 of up to 1000).
    """

    stores_features = True

    def __init__(self, reference: str | None = None, features: str = "inception", mode: str = "clean",
                 inception: str | None = None, kid_subsets: int = 100, kid_subset_size: int = 1000, seed: int = 0,
                 name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        if features not in ("inception", "toy_judge"):
            raise UsageError(f"FID features {features!r}: use 'inception' or 'toy_judge'")
        if mode not in ("clean", "legacy_tensorflow"):
            raise UsageError(f"FID mode {mode!r}: use 'clean' (default) or 'legacy_tensorflow'")
        self.reference, self.feature_kind, self.mode, self.inception = reference, features, mode, inception
        self.kid_subsets, self.kid_subset_size, self.seed = kid_subsets, kid_subset_size, seed
        self.default_name = "fid" if features == "inception" else "toy_fid"
        self.extractor: ImageFeatures | None = None  # loaded by prepare(): a registered submodule
        self._ref: dict = {}
        self.add_state("feats", [], dist_reduce_fx="cat")

    @property
    def kid_name(self) -> str:
        return self.name.replace("fid", "kid") if "fid" in self.name else f"{self.name}_kid"

    def load(self) -> ImageFeatures:
        """The feature network (loaded once; a missing one fails here)."""
        if self.extractor is None:
            self.extractor = (ImageFeatures.inception(self.mode, self.inception) if self.feature_kind == "inception"
                              else ImageFeatures.toy_judge())
        return self.extractor

    def prepare(self, bench) -> None:
        self.load()
        if self.reference is None:
            self.reference = getattr(bench, "fid_reference", None)
        if self.reference is None:
            raise UsageError("FID needs a reference: a folder of real images (--data.fid_reference DIR on a caption "
                             "benchmark, or the metric's reference), or 'renderer' on the toy world")
        if self.reference == "renderer":
            self._ref = self._renderer_reference(bench.samples())
        else:
            self._ref = self.folder_reference(self.reference)

    def _renderer_reference(self, samples: list[Sample]) -> dict:
        from ..models.toy import world

        try:
            scenes = [world.parse(s.pair.prompt) for s in samples]
        except ValueError as e:
            raise UsageError(f"FID reference 'renderer' renders the toy world's captions only: {e}. Give a folder "
                             "of real images as reference") from None
        feats = torch.cat([self.load()(world.render(scenes[i:i + 256], seeds=[s.seed for s in samples[i:i + 256]]))
                           for i in range(0, len(scenes), 256)]).double().numpy()
        return {"feats": feats, "mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False), "n": len(feats),
                "source": "renderer"}

    def folder_reference(self, folder: str) -> dict:
        """Reference features of a folder of images: computed once with clean-fid's folder reader, cached
        (atomic write, one process computes, the others wait)."""
        from cleanfid.fid import get_folder_features
        from filelock import FileLock

        from ..io import cache_root, write_atomic
        from ..provenance import path_digest

        root = Path(folder).expanduser()
        if not root.is_dir():
            raise UsageError(f"FID reference folder {folder} does not exist: give a folder of real images "
                             "(e.g. COCO val2014 for coco30k) or 'renderer' on the toy world")
        key = f"{path_digest(root)}-{self.load().name.replace('/', '_')}"
        path = cache_root() / "fid_ref" / f"{key}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if not path.is_file():
                feats = get_folder_features(str(root), model=self._folder_model, num_workers=0, batch_size=64,
                                            device=self.extractor.device, mode=self.mode, verbose=False,
                                            custom_fn_resize=self.extractor.resize)
                if len(feats) < 2:
                    raise UsageError(f"FID reference folder {folder} holds {len(feats)} image(s): it needs at least 2")
                write_atomic(path, lambda tmp: np.savez(open(tmp, "wb"), feats=feats.astype(np.float32)))
            feats = np.load(path)["feats"].astype(np.float64)
        return {"feats": feats, "mu": feats.mean(0), "sigma": np.cov(feats, rowvar=False), "n": len(feats),
                "source": str(root), "cache": str(path)}

    def _folder_model(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.as_tensor(self.extractor.extractor(x)).float()

    def identity(self) -> dict:
        from ..provenance import path_digest

        ref = self.reference
        ref_id = path_digest(ref) if ref not in (None, "renderer") and Path(ref).expanduser().is_dir() else ref
        inception = None
        if self.feature_kind == "inception":
            folder = Path(self.inception).expanduser() if self.inception else _cleanfid_folder()
            f = folder if folder.is_file() else folder / INCEPTION_FILE
            inception = path_digest(f) if f.is_file() else None
        return {"reference": ref_id, "features": self.feature_kind, "mode": self.mode, "inception": inception}

    def describe(self) -> dict:
        return {"class": type(self).__name__, "name": self.name, "names": [self.name, self.kid_name],
                "features": self.feature_kind if self.feature_kind == "toy_judge" else f"clean-fid Inception ({INCEPTION_FILE})",
                "mode": self.mode, "reference": self.reference,
                "kid": f"clean-fid kernel_distance, {self.kid_subsets} subsets of up to {self.kid_subset_size}, seed {self.seed}",
                "formula": "clean-fid frechet_distance of (mean, covariance) of the features"}

    def features(self, images: Tensor, samples: list[Sample]) -> Tensor:
        return self.load()(images)

    def update(self, records: list[Record], features: Tensor | None = None) -> None:
        if features is not None and len(features):
            self.feats.append(features.to(self.device))

    def compute(self) -> dict:
        if empty_state(self.feats):
            return {}
        if not self._ref:
            raise RuntimeError("FID.prepare(bench) computes the reference before compute()")
        a = cat_state(self.feats).double().numpy()
        ref = self._ref
        fid = frechet_distance(a, ref["mu"], ref["sigma"])
        kid = kernel_distance(a, ref["feats"], self.kid_subsets, self.kid_subset_size, self.seed)
        return {self.name: {"mean": fid, "std": 0.0, "n": len(a), "reference_n": ref["n"]},
                self.kid_name: {"mean": kid, "std": 0.0, "n": len(a), "reference_n": ref["n"]}}
