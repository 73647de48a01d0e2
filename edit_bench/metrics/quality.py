"""Image quality: CLIP-score, FID and KID (clean-fid), LPIPS (the ``lpips`` package), and the toy world's twins.

Each metric is a :class:`~edit_bench.metrics.SampleMetric` (a torchmetrics ``Metric``), so it plugs into
``eval`` like the judge's scores, and it is usable on its own: ``m.score(images, samples)`` per batch,
``m.update(records, features)``, ``m.compute()``. Each records its protocol (model, weight, mode, resize)
with every number, because the papers' numbers differ by protocol more than by editor.

Nothing is downloaded. A missing weights file is a :class:`~edit_bench.models.ModelNotAvailable` naming the
file, where the library looks for it, and the setting that points the metric at a local copy.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..models import ModelNotAvailable
from ..types import Record, Sample
from .base import SampleMetric, cat_state, empty_state, group_ids, seed_stats
from .clip_preference import ClipJudge, JudgeConfig, shared_judge

# ------------------------------------------------------------------------------------------ CLIP-score
# The papers' CLIP-scores: score = weight * cos(image, caption), clamped at 0 where the paper's code clamps.
CLIP_PRESETS = {
    # ReFACT App. D: torchmetrics CLIPScore with CLIP ViT-L/14 at 336 px. Clamped per sample here; torchmetrics
    # clamps the mean of the cosines: the two agree unless some cosine is negative
    "refact": dict(model="hf:openai/clip-vit-large-patch14-336", weight=100.0, clamp=True),
    # ESD / UCE eval-scripts/mean_clip.py: the HF model's logits_per_image = logit_scale (100) * cos, unclamped
    "esd": dict(model="hf:openai/clip-vit-base-patch32", weight=100.0, clamp=False),
    # Concept Ablation evaluate.py: Hessel et al.'s CLIPScore, 2.5 * max(cos, 0), OpenAI ViT-B/32
    "concept_ablation": dict(model="hf:openai/clip-vit-base-patch32", weight=2.5, clamp=True),
    # the benchmark's own judge (on the toy world: the toy judge), 100 * max(cos, 0) per sample
    "judge": dict(model=None, weight=100.0, clamp=True),
}


def _hf_snapshot(repo: str) -> str | None:
    """The commit of a transformers model in the local Hugging Face cache (what ``hf:org/name`` resolves to)."""
    from huggingface_hub import try_to_load_from_cache

    from ..identity import hub_snapshot

    found = try_to_load_from_cache(repo, "config.json")
    return hub_snapshot(found) if isinstance(found, str) else None


class _HFClip(nn.Module):
    """A transformers ``CLIPModel`` with its processor, from a local folder or the local Hugging Face cache."""

    def __init__(self, spec: str):
        super().__init__()
        from transformers import CLIPModel, CLIPProcessor

        src = spec[len("hf:"):] if spec.startswith("hf:") else spec
        if not Path(src).is_dir():
            from huggingface_hub import constants, try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(src, "config.json"), str):
                raise ModelNotAvailable(
                    f"CLIP model {src!r} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and edit_bench "
                    f"never downloads. Fetch it once where there is internet (`hf download {src}`), or point the metric "
                    "at a local copy: clip_score model: /path/to/folder (a transformers CLIPModel folder)")
        self.model = CLIPModel.from_pretrained(src, local_files_only=True).eval().requires_grad_(False)
        self.processor = CLIPProcessor.from_pretrained(src, local_files_only=True)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @staticmethod
    def _vector(out) -> Tensor:
        # transformers 5 returns a model output whose pooler_output is the projected vector; 4.x the tensor
        # (torchmetrics 1.9's CLIPScore breaks on the former: torchmetrics #3407)
        return out if isinstance(out, Tensor) else out.pooler_output

    def image_features(self, images: Tensor) -> Tensor:
        from PIL import Image

        u8 = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        px = self.processor(images=[Image.fromarray(a) for a in u8], return_tensors="pt")["pixel_values"]
        return nn.functional.normalize(self._vector(self.model.get_image_features(pixel_values=px.to(self.device))).float(), dim=-1)

    def text_features(self, texts: list[str]) -> Tensor:
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        return nn.functional.normalize(self._vector(self.model.get_text_features(**tok)).float(), dim=-1)


def _per_group(values: Tensor, groups: list[str], seed: Tensor, name: str) -> dict:
    """``{name: all, name/<group>: ...}`` (the groups when there are several): :func:`seed_stats` of each."""
    gid, order = group_ids(groups)
    out = {name: seed_stats(values, seed)}
    if len(order) > 1:
        for i, g in enumerate(order):
            out[f"{name}/{g}"] = seed_stats(values[gid == i], seed[gid == i])
    return out


class _RecordScalar(SampleMetric):
    """A metric whose per-sample scalar goes into the records under its name and is aggregated by group. Every
    record it is given must hold the score: a missing one is an error, never a smaller n."""

    def __init__(self, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        self._groups: list[str] = []  # group names of the values, in order (the benchmark's own groups)
        self.add_state("seed", [], dist_reduce_fx="cat")
        self.add_state("value", [], dist_reduce_fx="cat")

    @property
    def key(self) -> str:
        return self.name

    def keys(self) -> list[str]:
        return [self.key]

    def reset(self) -> None:
        super().reset()
        self._groups = []

    def update(self, records: list[Record], features=None) -> None:
        if not records:
            return
        missing = [r.id for r in records if self.key not in r.scores]
        if missing:
            raise RuntimeError(f"metric {self.name!r}: {len(missing)} record(s) have no score {self.key!r} (e.g. {missing[0]})")
        self._groups += [r.group for r in records]
        self.seed.append(torch.tensor([r.seed for r in records], device=self.device))
        self.value.append(torch.tensor([float(r.scores[self.key]) for r in records], dtype=torch.float64, device=self.device))

    def compute(self) -> dict:
        if empty_state(self.value):
            return {}
        return _per_group(cat_state(self.value), self._groups, cat_state(self.seed), self.key)


class ClipScore(_RecordScalar):
    """CLIP-score of each image against its own prompt: ``weight * cos(image, prompt)`` (clamped at 0 with
    ``clamp``), per sample into the record, and its mean by group.

    Args:
        preset: ``judge`` (the benchmark's judge, 100 * max(cos, 0); on the toy world, the toy judge),
            ``refact`` (torchmetrics' convention with CLIP ViT-L/14-336, ReFACT App. D), ``esd`` (ESD's and
            UCE's 100 * cos with CLIP ViT-B/32) or ``concept_ablation`` (2.5 * max(cos, 0), ViT-B/32).
        model: overrides the preset's model: ``hf:org/name`` or a folder (a transformers ``CLIPModel``), or an
            open_clip spec as the judge takes (``local-dir:/path``, ``hf-hub:...``, ``toy``).
        weight, clamp: override the preset's.
        name: default ``clip_score``.
    """

    default_name = "clip_score"

    def __init__(self, preset: str = "judge", model: str | None = None, weight: float | None = None,
                 clamp: bool | None = None, name: str | None = None, **kwargs):
        super().__init__(name=name, **kwargs)
        if preset not in CLIP_PRESETS:
            raise UsageError(f"unknown CLIP-score preset {preset!r}: use one of {sorted(CLIP_PRESETS)}")
        p = CLIP_PRESETS[preset]
        self.preset = preset
        self.model = model if model is not None else p["model"]
        self.weight = float(weight if weight is not None else p["weight"])
        self.clamp = bool(p["clamp"] if clamp is None else clamp)
        self.net: nn.Module | None = None  # loaded by prepare(): the judge, or a transformers CLIP
        self._judge_cfg: JudgeConfig | None = None

    def _resolved_model(self) -> str:
        return self.model if self.model is not None else self._judge_cfg.model

    def prepare(self, bench) -> None:
        self._judge_cfg = bench.judge_cfg if bench is not None else JudgeConfig()
        if self.net is not None:
            return
        spec = self._resolved_model()
        if spec.startswith("hf:") or (Path(spec).is_dir() and (Path(spec) / "config.json").is_file()):
            self.net = _HFClip(spec)
        else:
            cfg = self._judge_cfg if self.model is None else JudgeConfig(model=spec)
            self.net = shared_judge(cfg)

    def identity(self) -> dict:
        spec = self._resolved_model()
        if spec.startswith("hf:"):
            return {"model": spec, "snapshot": _hf_snapshot(spec[len("hf:"):])}
        if Path(spec).is_dir() and (Path(spec) / "config.json").is_file():
            from ..provenance import path_digest

            return {"model": path_digest(spec)}
        return {"model": JudgeConfig(model=spec).identity()}

    def describe(self) -> dict:
        judge = self._judge_cfg
        return {"class": type(self).__name__, "name": self.name, "preset": self.preset, "model": self.model or "the benchmark's judge",
                **({"judge": judge.describe()} if self.model is None and judge is not None else {}),
                "formula": f"{self.weight:g} * {'max(cos, 0)' if self.clamp else 'cos'}(image, prompt)",
                "preprocess": "8-bit quantisation, then the model's own preprocessing"}

    @torch.no_grad()
    def score(self, images: Tensor, samples: list[Sample]) -> dict[str, list[float]]:
        net = self.net.to(images.device)
        with torch.autocast(images.device.type, enabled=False):
            cos = (net.image_features(images) * net.text_features([s.pair.prompt for s in samples])).sum(-1)
        if self.clamp:
            cos = cos.clamp(min=0)
        return {self.key: (self.weight * cos).cpu().tolist()}


# ------------------------------------------------------------------------------------------ FID / KID
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
        u8 = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
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


def frechet_distance(a: np.ndarray, b_mu: np.ndarray, b_sigma: np.ndarray) -> float:
    """clean-fid's Fréchet distance between features ``a`` and the statistics of a reference."""
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


# ------------------------------------------------------------------------------------------ paired distances
class PairedMetric(_RecordScalar):
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


def to_uint8(images: Tensor) -> Tensor:
    """Images in [0, 1] as the 8-bit values a PNG holds ``[B, 3, H, W]`` uint8 (on the CPU)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _quantised(images: Tensor) -> Tensor:
    """Images as 8-bit PNGs hold them, back in [0, 1] float."""
    return (images.detach().float().clamp(0, 1) * 255).round() / 255


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
        x = self._prep(_quantised(images))
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
        from torchmetrics.functional.image import structural_similarity_index_measure as ssim

        x = _quantised(images)
        return ssim(x, reference.to(x.device).float() / 255, data_range=1.0, reduction="none")


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
        return 1 - (self.judge.to(images.device).image_features(images) * reference.to(images.device)).sum(-1)
