"""The zero-shot CLIP judge of TIMED / RoAD (as in ReFACT, NAACL 2024, §3.3).

For an image and two labels (old, new): ``P = softmax(scale * cos(image, [old, new]))``; a sample
succeeds when the label it expects wins. The paper's judge is open_clip
``hf-hub:laion/CLIP-ViT-bigG-14-laion2B-39B-b160k`` with its validation preprocessing and scale 100.
Images are quantised to 8 bits and passed through that preprocessing, as the reference scored saved
PNGs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..models import ModelNotAvailable
from .functional import preference

PAPER_JUDGE = "hf-hub:laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# A random judge with the open_clip architecture, for tests of the plumbing only (its numbers mean nothing).
TINY_RANDOM = dict(
    embed_dim=16,
    vision_cfg=dict(image_size=32, layers=2, width=32, patch_size=8, head_width=8),
    text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=2),
)


@dataclass(frozen=True)
class JudgeConfig:
    """Which CLIP judges a benchmark's images.

    Args:
        model: ``hf-hub:org/name`` (from the local cache), ``local-dir:/path`` (an open_clip folder), an
            open_clip architecture name with ``pretrained``, ``toy`` (the toy world's judge) or
            ``tiny:random`` (tests only).
        pretrained: a weights file (or cached open_clip tag) for an architecture name.
        scale: the softmax temperature multiplier (ReFACT: 100).
        dtype: the judge's weights and activations: ``float32`` (the reference), or ``float16`` / ``bfloat16``
            (the GPU fast path; cosines and the softmax stay float32).
        preprocess: ``pil`` (the reference: each 8-bit image through open_clip's PIL transform, as the papers
            scored saved PNGs) or ``tensor`` (the same transform applied by open_clip to the whole batch on the
            judge's device: antialiased bicubic resize of the 8-bit values in floating point, without PIL's
            rounding back to 8 bits; identical when the images already have the judge's size).
    """

    model: str = PAPER_JUDGE
    pretrained: str | None = None
    scale: float = 100.0
    dtype: str = "float32"
    preprocess: str = "pil"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise UsageError(f"judge dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.preprocess not in ("pil", "tensor"):
            raise UsageError(f"judge preprocess {self.preprocess!r}: use 'pil' (the reference) or 'tensor' (batched on the device)")

    def identity(self) -> str:
        """What the judge resolves to (weights hash or hub snapshot), without loading it."""
        from ..identity import file_digest, folder_identity, hub_snapshot

        spec = self.model
        if spec == "toy":
            from ..models.toy import judge_dir

            return folder_identity(judge_dir())
        if spec == "tiny:random":
            return "random:" + repr(sorted(TINY_RANDOM.items()))
        if spec.startswith("local-dir:") and Path(spec[len("local-dir:"):]).is_dir():
            return folder_identity(spec[len("local-dir:"):])
        if spec.startswith("hf-hub:"):
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(spec[len("hf-hub:"):], "open_clip_config.json")
            if isinstance(found, str):
                return f"hub:{hub_snapshot(found) or folder_identity(Path(found).parent)}"
        if self.pretrained and Path(self.pretrained).is_file():
            return file_digest(Path(self.pretrained)).hexdigest()[:16]
        return f"{spec}:{self.pretrained}"

    def describe(self) -> dict:
        return {"model": self.model, "pretrained": self.pretrained, "scale": self.scale, "dtype": self.dtype,
                "rule": "P = softmax(scale * cos(image, [old, new])); success iff the expected label has P > 0.5",
                "preprocess": "8-bit quantisation, then open_clip preprocess_val"
                              + (" per image (PIL)" if self.preprocess == "pil" else " on the batch (tensor, on the device)")}


def _load(cfg: JudgeConfig):
    import open_clip

    spec = cfg.model
    if spec == "toy":  # the toy world's judge, shipped as an open_clip folder
        from ..models.toy import judge_dir

        spec = f"local-dir:{judge_dir()}"
    if spec == "tiny:random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = open_clip.CLIP(**TINY_RANDOM)
        preprocess = open_clip.image_transform(TINY_RANDOM["vision_cfg"]["image_size"], is_train=False)
        return model, preprocess, open_clip.get_tokenizer("ViT-B-32")
    if spec.startswith("hf-hub:"):
        from huggingface_hub import try_to_load_from_cache

        repo = spec[len("hf-hub:"):]
        if not isinstance(try_to_load_from_cache(repo, "open_clip_config.json"), str):
            raise ModelNotAvailable(
                f"judge {spec!r} is not in the local Hugging Face cache and edit_bench never downloads. Fetch it "
                f"once where there is internet (`hf download {repo}`), or set the benchmark's judge.model to "
                "'local-dir:/path' or an architecture name with judge.pretrained=/path/to/weights"
            )
    elif spec.startswith("local-dir:") and not Path(spec[len("local-dir:"):]).is_dir():
        raise ModelNotAvailable(f"judge folder {spec[len('local-dir:'):]} does not exist")
    elif cfg.pretrained is not None and "/" in cfg.pretrained and not Path(cfg.pretrained).is_file():
        raise ModelNotAvailable(f"judge weights {cfg.pretrained} do not exist")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(spec, pretrained=cfg.pretrained)
    except RuntimeError as e:
        raise ModelNotAvailable(f"judge {spec!r} (pretrained={cfg.pretrained!r}) could not be loaded offline: {e}") from e
    return model, preprocess, open_clip.get_tokenizer(spec)


class ClipJudge(nn.Module):
    """Zero-shot CLIP preference between two labels."""

    def __init__(self, cfg: JudgeConfig):
        super().__init__()
        self.cfg = cfg
        self.model, self.preprocess, self.tokenizer = _load(cfg)
        self.model.eval().requires_grad_(False).to(DTYPES[cfg.dtype])
        self._text: dict[str, Tensor] = {}
        self._last_images: tuple | None = None

    @property
    def device(self):
        return next(self.model.parameters()).device

    def text_features(self, texts: list[str]) -> Tensor:
        """Normalised text features ``[N, E]``, cached per string."""
        new = sorted({t for t in texts if t not in self._text})
        if new:
            f = self.model.encode_text(self.tokenizer(new).to(self.device)).float()
            for t, v in zip(new, nn.functional.normalize(f, dim=-1)):
                self._text[t] = v
        return torch.stack([self._text[t].to(self.device) for t in texts])

    def image_features(self, images: Tensor) -> Tensor:
        """Normalised image features ``[B, E]`` of images ``[B, 3, H, W]`` in [0, 1]. The last batch's are kept:
        two metrics of one judge (TIMED scores, CLIP-score) encode a batch once."""
        last = self._last_images
        if last is not None and last[0] is images and last[1] == images._version:
            return last[2]
        feats = self._image_features(images)
        self._last_images = (images, images._version, feats)
        return feats

    def _image_features(self, images: Tensor) -> Tensor:
        u8 = (images.detach().float().clamp(0, 1) * 255).round()
        if self.cfg.preprocess == "tensor":  # open_clip's transform takes a float batch as it is (no PIL step)
            x = self.preprocess(u8.to(self.device) / 255)
        else:
            from PIL import Image

            x = torch.stack([self.preprocess(Image.fromarray(a)) for a in u8.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()])
        x = x.to(self.device, DTYPES[self.cfg.dtype])
        return nn.functional.normalize(self.model.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def preference(self, images: Tensor, old: list[str], new: list[str]) -> Tensor:
        """``P(new)`` per image ``[B]`` from ``softmax(scale * cos(image, [old, new]))``."""
        with torch.autocast(self.device.type, enabled=False):
            return preference(self.image_features(images), self.text_features(old), self.text_features(new), self.cfg.scale).cpu()


_SHARED: dict[JudgeConfig, ClipJudge] = {}


def shared_judge(cfg: JudgeConfig) -> ClipJudge:
    """One loaded judge per configuration in a process: the metrics that use the same judge (the TIMED scores,
    CLIP-score, the toy twins) share its weights and its last batch's image features."""
    if cfg not in _SHARED:
        _SHARED[cfg] = ClipJudge(cfg)
    return _SHARED[cfg]

