"""Concept Ablation: Ablating Concepts in Text-to-Image Diffusion Models (Kumari, Zhang, Wang, Shechtman,
Zhang & Zhu, ICCV 2023, arXiv 2303.13516), trained by Lightning's ``fit`` as the authors' diffusers
``train.py`` trains it.

The model learns to draw, for a prompt naming the target concept c (``request.source``), what it draws for
the anchor concept c* (``request.target``; ``""`` = the empty prompt):

    model-based (default):  L = Σ_{c,h,w} m ⊙ (ε(x_t, c, t) − sg(ε(x_t, c*, t)))² / Σ_{h,w} m   (mean over the batch)
    noise-based:            the same with the target ε
    prior (``regularization``): + reg_weight · mean (ε(x'_t, c*, t') − ε')²   (the authors' diffusers weight: 1.0)

x_t is an **anchor image** (a caption c* names, drawn by the unedited model, or a real image from
``anchor_folder``) after the authors' augmentation, encoded by the VAE (a posterior sample) and noised to a
uniform t; sg is the same, trained model without gradient. The loss is the authors' masked form: m is 1 on
the latent pixels the image covers without their outer ring, and the sum runs over channels while the
normaliser counts pixels, so it is the channel count times a masked mean, as theirs (which matters for the
gradient clipping).

The augmentation, per sample, as the authors' ``CustomDiffusionDataset`` (every random choice from the
sample's own generator):

- horizontal flip with probability 0.5 (``hflip``; their README passes ``--hflip`` for every concept);
- ``augment`` (their default for objects; their README's style runs pass ``--noaug``): the image is resized
  (Lanczos) to a random side, in [size/3, size] with probability 0.66 (pasted at a random place on a zero
  canvas, the mask covering it) or in [1.2·size, 1.4·size) (randomly cropped, the mask all ones); a side
  below 0.6·size prefixes the target prompt with "a far away " or "very small ", one above size with "zoomed
  in " or "close up " (the anchor prompt is not prefixed, as theirs);
- target prompts: objects replace the anchor phrase in the caption (``a cat on a bed`` → ``a grumpy cat on a
  bed``); styles draw one of the authors' three templates per sample (``{caption}, in the style of {artist}``
  or, twice as often since two of their three are the same, ``in {artist}'s style, {caption}``).

Anchor images: ``anchor_folder`` (the authors retrieve real images of the anchor class for styles; give such
a folder), else drawn by the unedited model from the anchor prompts with ``anchor_sampler`` (default: the
pipeline's own sampler at its defaults, 50 steps of the model's scheduler at guidance 7.5, as the authors'
2023 diffusers code draws object anchors with ``pipeline(prompt)``). Generated style anchors are a documented
substitute for the retrieved ones. Anchor prompts: ``anchor_prompts`` (a text file, one caption per line, e.g.
the authors' ``painting.txt``, or a list), else the anchor concept itself; image i uses prompt
``i % len(prompts)`` and seed ``anchor_sampler.seeds[0] + i``.

Generated anchors are cached on disk (``$EDIT_BENCH_CACHE/anchors``, default ``~/.cache/edit_bench``), keyed
by the model's identity, the prompts, the sampler and the seeds, and written atomically under a file lock
(concurrent processes wait for one to make them). They are made by the editor rather than a data module
because the per-case protocol edits without one, and both paths must train on the same images.

Parameter sets: ``cross-attn`` (default: every attn2 ``to_k``/``to_v``), ``full-weight`` (the whole UNet),
``embedding`` (the text encoders' token-embedding tables, only the concept's own rows).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import torch

from ..errors import UsageError
from ..io import IMAGE_SUFFIXES, image_files, read_image
from ..types import SamplerConfig
from .finetune import FineTuner

PARAMS = ("cross-attn", "full-weight", "embedding")
# The pipeline's own sampler at its defaults (the authors' 2023 diffusers code: ``pipeline(prompt)``); the
# scheduler is the model's own, resolved when the model is known.
PIPELINE_DEFAULT = {"steps": 50, "guidance": 7.5}
# (The authors' compvis code drew anchors with DDIM 100 steps, eta 1, guidance 6, and their 2024 diffusers code
# with DPM-Solver 25 steps at guidance 6: pass either as ``anchor_sampler`` for comparison runs.)
# The authors' style templates, one drawn uniformly per sample (their second and third are the same).
STYLE_TEMPLATES = ("{prompt}, in the style of {target}", "in {target}'s style, {prompt}", "in {target}'s style, {prompt}")
SMALL_PREFIXES, LARGE_PREFIXES = ("a far away ", "very small "), ("zoomed in ", "close up ")


def anchor_cache_dir() -> Path:
    from ..io import cache_root

    return cache_root() / "anchors"


def _pick(options, gen: torch.Generator):
    return options[int(torch.randint(len(options), (1,), generator=gen))]


class ConceptAblation(FineTuner):
    """Concept Ablation fine-tuning editor.

    Args:
        params: ``cross-attn``, ``full-weight`` or ``embedding``.
        loss: ``model`` (the model-based loss, the authors' default) or ``noise``.
        concept_type: ``object`` (target prompts replace the anchor phrase) or ``style`` (templates).
        anchor_prompts: a text file of anchor captions or a list of them; ``None`` = the anchor concept itself.
        anchor_folder: a folder of real anchor images (the authors retrieve them for styles): their layout
            (``images.txt``, one image path per line, absolute or relative to the folder, and ``caption.txt``, one
            caption per line) or the image files alone, sorted by name, captioned by ``anchor_prompts`` (cycled);
            the first ``num_anchor_images`` are used, resized to the training size. ``None``: generate them.
        num_anchor_images: anchor images per request (the paper: 1000; the authors' README examples: 200).
        anchor_sampler: how generated anchor images are drawn; ``None`` = the pipeline's own sampler at its
            defaults (the model's scheduler, 50 steps, guidance 7.5, native size, seed 0). Image i uses seed
            ``seeds[0] + i``.
        augment: the authors' rescale augmentation with its prompt prefixes; ``None`` = theirs per concept type
            (objects: on; styles: off, their README's ``--noaug``).
        hflip: flip anchor images horizontally with probability 0.5 (the authors' README: on).
        masked_loss: drop the outer ring of latent pixels from the loss (the authors' mask); off = a mask of ones
            (the same normalisation).
        regularization: add the standard denoising loss on anchor images (the authors' ``--with_prior_preservation``).
        reg_weight: its weight (the authors' diffusers ``--prior_loss_weight``: 1.0; their compvis code: 0.2).
        lr: AdamW's base learning rate (2e-6; 5e-7 for memorisation).
        scale_lr: multiply ``lr`` by batch size × accumulation × processes (× 2 with ``regularization``), as the
            authors' ``--scale_lr``.
        steps: optimisation steps of ``edit()`` (100; 400 for memorisation); ``fit`` runs ``--trainer.max_steps``.
        batch_size: samples per step and process (the authors' config: 4).
        weight_decay: AdamW's weight decay (1e-2).
        max_grad_norm: gradient clipping (the authors' diffusers code: 1.0).
        anchor_batch_size: images per generation call when making anchor images.
        gradient_checkpointing, seed, base: see :class:`~edit_bench.editors.finetune.FineTuner`.
    """

    files = {"anchor_prompts": "input", "anchor_folder": "input"}
    derives = {"anchor images": "origin"}  # cached by the model's identity: the origin is the model as loaded
    contract_args = {"num_anchor_images": 2, "steps": 2, "lr": 1e-3,
                     "anchor_sampler": {"scheduler": "ddim", "steps": 2, "guidance": 6.0, "size": None, "seeds": [0], "eta": 1.0}}

    def __init__(self, params: Literal["cross-attn", "full-weight", "embedding"] = "cross-attn",
                 loss: Literal["model", "noise"] = "model", concept_type: Literal["object", "style"] = "object",
                 anchor_prompts: str | list[str] | None = None, anchor_folder: str | None = None,
                 num_anchor_images: int = 1000, anchor_sampler: SamplerConfig | dict | None = None,
                 augment: bool | None = None, hflip: bool = True, masked_loss: bool = True,
                 regularization: bool = False, reg_weight: float = 1.0, lr: float = 2e-6, scale_lr: bool = True,
                 steps: int = 100, batch_size: int = 4, weight_decay: float = 1e-2, max_grad_norm: float | None = 1.0,
                 anchor_batch_size: int = 16, gradient_checkpointing: bool = False, seed: int = 0, base: str = "toy"):
        super().__init__(lr=lr, steps=steps, batch_size=batch_size, max_grad_norm=max_grad_norm,
                         gradient_checkpointing=gradient_checkpointing, seed=seed, base=base)
        if params not in PARAMS:
            raise UsageError(f"unknown Concept Ablation parameter set {params!r}: use one of {', '.join(PARAMS)}")
        if loss not in ("model", "noise"):
            raise UsageError(f"unknown Concept Ablation loss {loss!r}: use model or noise")
        if concept_type not in ("object", "style"):
            raise UsageError(f"unknown concept_type {concept_type!r}: use object or style")
        if num_anchor_images < 1 or anchor_batch_size < 1:
            raise UsageError(f"num_anchor_images and anchor_batch_size must be >= 1, got {num_anchor_images}, {anchor_batch_size}")
        if reg_weight < 0:
            raise UsageError(f"Concept Ablation reg_weight must be >= 0 (the authors: 1.0), got {reg_weight}")
        self.params, self.loss_type, self.concept_type = params, loss, concept_type
        self.edits = "text_encoder" if params == "embedding" else "denoiser"  # per instance: the class declares "denoiser"
        self.anchor_prompts = self._read_prompts(anchor_prompts)
        self.anchor_folder = self._check_folder(anchor_folder)
        if isinstance(anchor_sampler, dict):  # as a checkpoint's hyperparameters hold it
            anchor_sampler = SamplerConfig(**anchor_sampler)
        self.num_anchor_images, self._anchor_sampler = num_anchor_images, anchor_sampler
        self.augment = (concept_type == "object") if augment is None else bool(augment)
        self.resolved(augment=self.augment)
        self.hflip, self.masked_loss = bool(hflip), bool(masked_loss)
        self.regularization, self.reg_weight = regularization, reg_weight
        self.scale_lr, self.weight_decay, self.anchor_batch_size = scale_lr, weight_decay, anchor_batch_size
        self._anchors: dict[str, dict] = {}  # cache key -> images, captions
        self._keep_rows: dict[str, list[int]] = {}  # params "embedding": the token rows that train, per encoder
        self.anchor_files: list[str] = []

    @staticmethod
    def _read_prompts(spec) -> list[str] | None:
        if spec is None:
            return None
        if isinstance(spec, str):
            from ..io import resolve_path

            path = resolve_path(spec)
            if not path.is_file():
                raise UsageError(f"anchor_prompts file {spec!r} not found: give a text file with one caption per line")
            spec = path.read_text(encoding="utf-8").splitlines()
        prompts = [p.strip() for p in spec if p and p.strip()]
        if not prompts:
            raise UsageError("anchor_prompts is empty: give at least one caption, or null for the anchor concept itself")
        return prompts

    @staticmethod
    def _check_folder(folder) -> Path | None:
        if folder is None:
            return None
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise UsageError(f"anchor_folder {folder!r} is not a folder: give a folder of anchor images "
                             "(images.txt + caption.txt, or image files), or null to generate them")
        if not (path / "images.txt").is_file() and not image_files(path):
            raise UsageError(f"anchor_folder {folder!r} has no images: give a folder of anchor images "
                             f"({', '.join(IMAGE_SUFFIXES)}) or its images.txt + caption.txt")
        return path

    def input_files(self) -> dict[str, str]:
        """The declared inputs, and every image ``anchor_folder/images.txt`` lists outside the folder (absolute
        entries), which the folder's digest does not cover."""
        out = super().input_files()
        listing = self.anchor_folder / "images.txt" if self.anchor_folder is not None else None
        if listing is not None and listing.is_file():
            for i, x in enumerate(x.strip() for x in listing.read_text().splitlines()):
                if x and Path(x).is_absolute() and self.anchor_folder.resolve() not in Path(x).resolve().parents:
                    out[f"anchor_folder.images.{i}"] = x
        return out

    # ------------------------------------------------------------------ what is trained
    def edited_parameters(self):
        t2i = self.t2i
        if self.params == "cross-attn":
            return self.cross_attn_kv()
        if self.params == "full-weight":
            return {f"unet.{n}": p for n, p in t2i.unet.named_parameters()}
        out = {}
        for name, enc in t2i.text_encoders():
            emb = t2i.token_embedding(name).weight
            out.update({f"{name}.{n}": p for n, p in enc.named_parameters() if p is emb})
        return out

    def effective_lr(self, world_size: int = 1, accumulate: int = 1) -> float:
        """``scale_lr``: lr x batch x accumulation x processes, and x 2 more with the regulariser (the authors'
        prior-preservation doubling, inside their ``scale_lr`` branch)."""
        if not self.scale_lr:
            return self.lr
        return self.lr * self.batch_size * accumulate * world_size * (2 if self.regularization else 1)

    def make_optimizer(self, params, lr):
        return torch.optim.AdamW(params, lr=lr, weight_decay=self.weight_decay)

    def target_token_ids(self, requests) -> dict[str, list[int]]:
        """The ``embedding`` variant's trained rows, per text encoder: the token ids of the concepts to remove
        (each request's ``subject``, else its ``source``: the authors' ``caption_target``), without the special
        tokens; as the authors train only these rows (every other row's gradient is zeroed)."""
        t2i, out = self.t2i, {}
        for i, (name, _) in enumerate(t2i.text_encoders()):
            tok = t2i.tokenizers[min(i, len(t2i.tokenizers) - 1)]
            out[name] = sorted({t for r in requests
                                for t in tok((r.subject or r.source).strip(), add_special_tokens=False).input_ids})
        return out

    def prepare(self, requests) -> None:
        self._keep_rows = self.target_token_ids(requests) if self.params == "embedding" else {}
        self._prepare_anchors(requests)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """``embedding``: zero the gradient of every token-embedding row but the concepts' tokens, before clipping
        and the optimiser step (the authors' ``index_grads_to_zero``). AdamW's decoupled weight decay still shrinks
        the other rows by ``lr * weight_decay`` per step, as in the authors' training."""
        for name, ids in self._keep_rows.items():
            weight = self.t2i.token_embedding(name).weight
            if weight.grad is not None:
                keep = torch.zeros(weight.shape[0], 1, dtype=torch.bool, device=weight.device)
                keep[ids] = True
                weight.grad.mul_(keep)

    # ------------------------------------------------------------------ prompts
    def target_prompt(self, request, caption: str, gen: torch.Generator | None = None) -> str:
        """The prompt naming the target concept made from an anchor caption: the anchor phrase replaced (objects)
        or a template drawn from ``gen`` (styles; the first without one)."""
        target, anchor = request.source.strip(), request.target.strip()
        if self.concept_type == "style":
            template = _pick(STYLE_TEMPLATES, gen) if gen is not None else STYLE_TEMPLATES[0]
            return template.format(prompt=caption, target=target).strip(", ")
        if not anchor:
            return target if caption == "" else f"{target}, {caption}"
        pattern = re.compile(rf"(?<!\w){re.escape(anchor)}(?!\w)", re.IGNORECASE)
        if not pattern.search(caption):
            raise UsageError(f"anchor prompt {caption!r} does not contain the anchor {anchor!r} to replace with "
                             f"{target!r}: give anchor prompts that name it, or concept_type style")
        return pattern.sub(lambda _: target, caption)

    def captions(self, request) -> list[str]:
        """The distinct anchor captions of a request (the anchor prompts, else the anchor concept)."""
        return list(dict.fromkeys(self.anchor_prompts or [request.target.strip()]))

    def prompt_pairs(self, request) -> list[tuple[str, str]]:
        """Every ``(anchor caption, target prompt)`` pair a request can train on, before the augmentation's prefix."""
        pairs = []
        for caption in self.captions(request):
            if self.concept_type == "style":
                pairs += [(caption, t.format(prompt=caption, target=request.source.strip()).strip(", "))
                          for t in dict.fromkeys(STYLE_TEMPLATES)]
            else:
                pairs.append((caption, self.target_prompt(request, caption)))
        return pairs

    def derived_prompts(self, requests):
        prefixes = ("",) + ((SMALL_PREFIXES[0], LARGE_PREFIXES[0]) if self.augment else ())
        return [q for r in requests for a, t in self.prompt_pairs(r) for q in (a, *(p + t for p in prefixes))]

    # ------------------------------------------------------------------ anchor images
    @property
    def anchor_sampler(self) -> SamplerConfig:
        """The sampler of generated anchors (the pipeline's own at its defaults unless one was given)."""
        if self._anchor_sampler is not None:
            return self._anchor_sampler
        return SamplerConfig(scheduler=self.t2i.default_scheduler, size=None, seeds=[0], **PIPELINE_DEFAULT)

    def anchor_key(self, prompts: list[str]) -> str:
        """The cache key of generated anchors: the weights that drew them (always the origin, the model as loaded, so its
        identity), the prompts, the sampler and the count. Format 2: anchors of format 1 could have been drawn by an
        already edited model under the sequential protocol and are never read."""
        blob = json.dumps({"model": self.t2i.identity, "weights": "origin", "prompts": prompts,
                           "sampler": asdict(self.anchor_sampler), "n": self.num_anchor_images, "format": 2},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def anchor_images(self, prompts: list[str]) -> torch.Tensor:
        """The ``num_anchor_images`` generated anchor images (uint8 ``[N, 3, H, W]``) of ``prompts``, from the
        cache or made now (with a progress bar) and cached."""
        from filelock import FileLock
        from safetensors.torch import load_file, save_file

        from ..io import write_atomic

        path = anchor_cache_dir() / f"{self.anchor_key(prompts)}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):  # one process makes them, the others wait and read the file
            if path.is_file():
                self.anchor_files.append(str(path))
                return load_file(str(path))["images"]
            images = self._generate(prompts)
            meta = {"prompts": json.dumps(prompts), "sampler": json.dumps(asdict(self.anchor_sampler)),
                    "model": json.dumps(self.t2i.identity, default=str)}
            write_atomic(path, lambda tmp: save_file({"images": images}, str(tmp), metadata=meta))
        self.anchor_files.append(str(path))
        return images

    @torch.no_grad()
    def _generate(self, prompts: list[str]) -> torch.Tensor:
        """Anchor images drawn by the origin (the unedited model), whatever the weights are now."""
        from tqdm.auto import tqdm

        n, s = self.num_anchor_images, self.anchor_sampler
        self.t2i.check_sampler(s)
        out = []
        with self.original_weights(), tqdm(total=n, desc="Concept Ablation: anchor images", unit="img") as bar:
            for i in range(0, n, self.anchor_batch_size):
                idx = range(i, min(n, i + self.anchor_batch_size))
                imgs = self.t2i.generate([prompts[j % len(prompts)] for j in idx], [s.seeds[0] + j for j in idx], s)
                out.append((imgs * 255).round().to(torch.uint8).cpu().contiguous())
                bar.update(len(idx))
        return torch.cat(out).contiguous()

    def folder_images(self, size: int) -> tuple[torch.Tensor, list[str]]:
        """The first ``num_anchor_images`` images of ``anchor_folder`` (uint8 ``[N, 3, size, size]``, Lanczos) and
        their captions."""
        folder = self.anchor_folder
        if (folder / "images.txt").is_file():
            paths = [Path(x.strip()) for x in (folder / "images.txt").read_text().splitlines() if x.strip()]
            paths = [p if p.is_absolute() else folder / p for p in paths]
            cap_file = folder / "caption.txt"
            captions = [x.strip() for x in cap_file.read_text().splitlines()] if cap_file.is_file() else []
            if len(captions) < len(paths):
                raise UsageError(f"{folder}: caption.txt has {len(captions)} captions for {len(paths)} images in "
                                 "images.txt: give one caption per image, line by line")
        else:
            paths, captions = image_files(folder), []
        paths = paths[: self.num_anchor_images]
        if not paths:
            raise UsageError(f"anchor_folder {folder} lists no images: add anchor images, or null to generate them")
        if not captions:
            cycle = self.anchor_prompts or [""]
            captions = [cycle[i % len(cycle)] for i in range(len(paths))]
        images = [read_image(p, size) for p in paths]
        self.anchor_files.append(str(folder))
        return torch.stack(images), captions[: len(paths)]

    def _data_key(self, request) -> str:
        """Which anchor images a request trains on: the folder's (the same for every request), else the generated
        images of its captions."""
        return "folder" if self.anchor_folder is not None else self.anchor_key(self.captions(request))

    def _prepare_anchors(self, requests) -> None:
        for r in requests:
            key = self._data_key(r)
            if key not in self._anchors:
                if self.anchor_folder is not None:
                    images, caps = self.folder_images(self.t2i.native_size)
                else:
                    captions = self.captions(r)
                    images = self.anchor_images(captions)
                    caps = [captions[i % len(captions)] for i in range(len(images))]
                self._anchors[key] = {"images": images, "captions": caps}
            if self.anchor_folder is not None and r.target.strip() and self.concept_type == "object":
                for c in dict.fromkeys(self._anchors[key]["captions"]):
                    self.target_prompt(r, c)  # every caption must name the anchor

    def _data(self, request) -> dict:
        return self._anchors[self._data_key(request)]

    # ------------------------------------------------------------------ the samples
    def augmented(self, image: torch.Tensor, gen: torch.Generator, augment: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """One anchor image (uint8 ``[3, S, S]``) after the authors' flip and rescale: the image in [0, 1] on the
        training canvas, its latent mask ``[1, h, w]`` (the covered pixels without their outer ring) and the side
        it was resized to (``S`` without ``augment``)."""
        import numpy as np
        from PIL import Image

        size, f = image.shape[-1], self.t2i.vae_scale_factor
        if self.hflip and float(torch.rand((), generator=gen)) < 0.5:
            image = image.flip(-1)
        scale = size
        if augment:
            if float(torch.rand((), generator=gen)) < 0.66:
                scale = int(torch.randint(size // 3, size + 1, (1,), generator=gen))
            else:
                scale = int(torch.randint(int(1.2 * size), int(1.4 * size), (1,), generator=gen))
        outer, inner = (scale, size) if scale > size else (size, scale)
        top, left = (int(torch.randint(0, outer - inner + 1, (1,), generator=gen)) for _ in range(2))
        img = image.float() / 255
        if scale != size:
            pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize((scale, scale), resample=Image.LANCZOS)
            img = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1).float() / 255
        h = size // f
        mask = torch.zeros(1, h, h)
        if scale > size:
            canvas = img[:, top:top + inner, left:left + inner]
            mask[:] = 1.0
        else:
            canvas = torch.full((3, size, size), 0.5)  # the authors' zero canvas in [-1, 1]
            canvas[:, top:top + inner, left:left + inner] = img
            mask[:, top // f + 1:(top + scale) // f - 1, left // f + 1:(left + scale) // f - 1] = 1.0
        if not self.masked_loss:
            mask[:] = 1.0
        return canvas, mask, scale

    def _draw(self, request, gen: torch.Generator, prior: bool = False) -> dict:
        """One sample: the image on its canvas, the mask, the anchor caption and the target prompt (instance) or
        the caption (prior), drawn from ``gen``."""
        data = self._data(request)
        i = int(torch.randint(len(data["images"]), (1,), generator=gen))
        caption = data["captions"][i]
        image, mask, scale = self.augmented(data["images"][i], gen, self.augment and not prior)
        if prior:  # the authors' class images: flipped, resized and cropped to the size, a mask of ones
            return {"image": image, "mask": torch.ones_like(mask), "anchor": caption, "prompt": caption}
        prompt = self.target_prompt(request, caption, gen)
        size = image.shape[-1]
        if scale < 0.6 * size:
            prompt = _pick(SMALL_PREFIXES, gen) + prompt
        elif scale > size:
            prompt = _pick(LARGE_PREFIXES, gen) + prompt
        return {"image": image, "mask": mask, "anchor": caption, "prompt": prompt}

    def _noised(self, samples: list[dict], gens: list[torch.Generator]):
        """Encode the samples' images (a posterior sample each), draw t and the noise: (x_t, t, noise)."""
        t2i = self.t2i
        mean, std = t2i.encode_images(torch.stack([s["image"] for s in samples]).to(t2i.device))
        n_train = int(t2i.scheduler_config.get("num_train_timesteps", 1000))
        eps, ts, noise = [], [], []
        for g in gens:
            eps.append(torch.randn(mean.shape[1:], generator=g))
            ts.append(torch.randint(0, n_train, (1,), generator=g))
            noise.append(torch.randn(mean.shape[1:], generator=g))
        z0 = mean + std * torch.stack(eps).to(mean.device)
        t = torch.cat(ts).to(mean.device)
        noise = torch.stack(noise).to(mean.device)
        return self.noise_scheduler().add_noise(z0, noise, t), t, noise


    def batch_loss(self, requests, gens):
        t2i = self.t2i
        picks = [requests[int(torch.randint(len(requests), (1,), generator=g))] for g in gens]
        samples = [self._draw(r, g) for r, g in zip(picks, gens)]
        x_t, t, noise = self._noised(samples, gens)
        pred = t2i.noise_prediction(x_t, t, t2i.condition([s["prompt"] for s in samples])).float()
        if self.loss_type == "model":
            with torch.no_grad():
                want = t2i.noise_prediction(x_t, t, t2i.condition([s["anchor"] for s in samples])).float()
        else:
            want = noise.float()
        mask = torch.stack([s["mask"] for s in samples]).to(pred.device)
        loss = (((pred - want) ** 2 * mask).sum((1, 2, 3)) / mask.sum((1, 2, 3)).clamp(min=1)).mean()
        if self.regularization:
            prior = [self._draw(r, g, prior=True) for r, g in zip(picks, gens)]
            x_r, t_r, noise_r = self._noised(prior, gens)
            pred_r = t2i.noise_prediction(x_r, t_r, t2i.condition([s["prompt"] for s in prior])).float()
            loss = loss + self.reg_weight * torch.nn.functional.mse_loss(pred_r, noise_r.float())
        return loss

    def report(self) -> dict:
        return {**super().report(), "params": self.params, "loss": self.loss_type, "anchor_images": self.num_anchor_images,
                "anchor_source": str(self.anchor_folder) if self.anchor_folder else "generated",
                "anchor_sampler": None if self.anchor_folder else asdict(self.anchor_sampler),
                "augment": self.augment, "hflip": self.hflip, "masked_loss": self.masked_loss,
                "anchor_cache": sorted(set(self.anchor_files))}
