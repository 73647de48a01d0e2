"""CLIP-score (the papers' presets) and the CLIP networks the metrics share: the benchmark's judge (open_clip) or a
transformers ``CLIPModel`` (:class:`HFClip`), and zero-shot classification over texts (:func:`zero_shot`).

Nothing is downloaded. A missing model is a :class:`~edit_bench.errors.ModelNotAvailable` naming where it was
looked for and the setting that points the metric at a local copy.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ModelNotAvailable, UsageError
from ..types import Sample
from .base import RecordScalar
from .clip_preference import JudgeConfig, shared_judge
from .functional import clip_score, to_uint8
from .functional import zero_shot as zero_shot_probs

# The papers' CLIP-scores: score = weight * cos(image, caption), clamped at 0 where the paper's code clamps.
CLIP_PRESETS = {
    # ReFACT App. D: torchmetrics CLIPScore with CLIP ViT-L/14 at 336 px. Clamped per sample here; torchmetrics
    # clamps the mean of the cosines: the two agree unless some cosine is negative
    "refact": dict(model="hf:openai/clip-vit-large-patch14-336", weight=100.0, clamp=True),
    # ESD / UCE eval-scripts/mean_clip.py: the HF model's logits_per_image = logit_scale (100) * cos, unclamped
    "esd": dict(model="hf:openai/clip-vit-base-patch32", weight=100.0, clamp=False),
    # Concept Ablation evaluate.py: Hessel et al.'s CLIPScore, 2.5 * max(cos, 0), OpenAI ViT-B/32
    "concept_ablation": dict(model="hf:openai/clip-vit-base-patch32", weight=2.5, clamp=True),
    # IGMU (ACM CCS 2025) benchmark.py: torchmetrics clip_score with CLIP ViT-B/16, 100 * max(cos, 0)
    "igmu": dict(model="hf:openai/clip-vit-base-patch16", weight=100.0, clamp=True),
    # the benchmark's own judge (on the toy world: the toy judge), 100 * max(cos, 0) per sample
    "judge": dict(model=None, weight=100.0, clamp=True),
}


def hf_snapshot(repo: str) -> str | None:
    """The commit of a transformers model in the local Hugging Face cache (what ``hf:org/name`` resolves to)."""
    from huggingface_hub import try_to_load_from_cache

    from ..identity import hub_snapshot

    found = try_to_load_from_cache(repo, "config.json")
    return hub_snapshot(found) if isinstance(found, str) else None


class HFClip(nn.Module):
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

        u8 = to_uint8(images).permute(0, 2, 3, 1).numpy()
        px = self.processor(images=[Image.fromarray(a) for a in u8], return_tensors="pt")["pixel_values"]
        return nn.functional.normalize(self._vector(self.model.get_image_features(pixel_values=px.to(self.device))).float(), dim=-1)

    def text_features(self, texts: list[str]) -> Tensor:
        tok = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        return nn.functional.normalize(self._vector(self.model.get_text_features(**tok)).float(), dim=-1)


def clip_net(model: str | None, judge_cfg: JudgeConfig | None = None):
    """A CLIP with ``image_features``/``text_features`` (normalised): ``None`` = the judge of ``judge_cfg``,
    ``hf:org/name`` or a transformers folder, or an open_clip spec as the judge takes (``toy``, ``hf-hub:...``)."""
    cfg = judge_cfg or JudgeConfig()
    spec = model if model is not None else cfg.model
    if spec.startswith("hf:") or (Path(spec).is_dir() and (Path(spec) / "config.json").is_file()):
        return HFClip(spec)
    return shared_judge(cfg if model is None else JudgeConfig(model=spec))


@torch.no_grad()
def zero_shot(net, images: Tensor, texts: list[str], scale: float = 100.0) -> Tensor:
    """``softmax(scale * cos(image, texts))`` ``[B, len(texts)]`` of ``net``'s features (float64, on the CPU)."""
    net = net.to(images.device) if isinstance(net, nn.Module) else net
    with torch.autocast(images.device.type, enabled=False):
        img = net.image_features(images).float()
        txt = net.text_features(list(texts)).float().to(img.device)
        return zero_shot_probs(img, txt, scale).cpu().double()


class ClipScore(RecordScalar):
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
            self.net = HFClip(spec)
        else:
            cfg = self._judge_cfg if self.model is None else JudgeConfig(model=spec)
            self.net = shared_judge(cfg)

    def identity(self) -> dict:
        spec = self._resolved_model()
        if spec.startswith("hf:"):
            return {"model": spec, "snapshot": hf_snapshot(spec[len("hf:"):])}
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
            img, txt = net.image_features(images), net.text_features([s.pair.prompt for s in samples])
            return {self.key: clip_score(img, txt, self.weight, self.clamp).cpu().tolist()}
