"""Concept Ablation: Ablating Concepts in Text-to-Image Diffusion Models (Kumari, Zhang, Wang, Shechtman,
Zhang & Zhu, ICCV 2023, arXiv 2303.13516), trained by Lightning's ``fit``.

The model learns to draw, for a prompt naming the target concept c (``request.source``), what it draws for
the same prompt with the anchor concept c* instead (``request.target``; ``""`` = the empty prompt):

    model-based (default):  L = || ε(x_t, c, t) − sg(ε(x_t, c*, t)) ||²
    noise-based:            L = || ε(x_t, c, t) − ε ||²
    regulariser (optional): + reg_weight · || ε(x'_t, c*, t') − ε' ||²   (the authors: 0.2)

x_t is an **anchor image** (generated once by the unedited model from the anchor prompts) encoded by the VAE
and noised to a uniform t; sg is the same, trained model without gradient.

Anchor prompts: ``anchor_prompts`` (a text file, one caption per line, e.g. the authors' ``painting.txt``, or a
list), else the anchor concept itself. Target prompts are made from them as the authors do: objects by
replacing the anchor phrase with the target (``a cat on a bed`` → ``a grumpy cat on a bed``), styles with
templates naming the artist. Anchor image i is the anchor prompt ``i % len(prompts)`` drawn with seed
``anchor_sampler.seeds[0] + i``.

The anchor images are cached on disk (``$EDIT_BENCH_CACHE/anchors``, default ``~/.cache/edit_bench``), keyed
by the model's identity, the prompts, the sampler and the seeds, and written atomically under a file lock
(concurrent processes wait for one to make them). They are made by the editor rather than a data module
because the per-case protocol edits without one, and both paths must train on the same images.

Parameter sets: ``cross-attn`` (default: every attn2 ``to_k``/``to_v``), ``full-weight`` (the whole UNet),
``embedding`` (the text encoders' token-embedding tables).
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
from ..types import SamplerConfig
from .finetune import FineTuner

PARAMS = ("cross-attn", "full-weight", "embedding")
# The authors' compvis sampler for anchor images (methods §2.7): DDIM 100 steps, eta 1, guidance 6.
PAPER_SAMPLER = SamplerConfig(scheduler="ddim", steps=100, guidance=6.0, size=None, seeds=[0], eta=1.0)
STYLE_TEMPLATES = ("{prompt}, in the style of {target}", "{target} inspired painting, {prompt}",
                   "in {target}'s style, {prompt}")


def anchor_cache_dir() -> Path:
    from ..io import cache_root

    return cache_root() / "anchors"


class ConceptAblation(FineTuner):
    """Concept Ablation fine-tuning editor.

    Args:
        params: ``cross-attn``, ``full-weight`` or ``embedding``.
        loss: ``model`` (the model-based loss, the authors' default) or ``noise``.
        concept_type: ``object`` (target prompts replace the anchor phrase) or ``style`` (templates).
        anchor_prompts: a text file of anchor captions or a list of them; ``None`` = the anchor concept itself.
        num_anchor_images: anchor images per request (the paper: 1000; the authors' README examples: 200).
        anchor_sampler: how anchor images are drawn (default: the authors' DDIM 100, eta 1, guidance 6, at
            the model's native size); image i uses seed ``seeds[0] + i``.
        regularization: add the standard denoising loss on the anchor images (the authors' ``--regularization``).
        reg_weight: its weight (0.2 in the authors' compvis code).
        lr: AdamW's base learning rate (2e-6; 5e-7 for memorisation).
        scale_lr: multiply ``lr`` by batch size × accumulation × processes, as the authors' ``--scale_lr``.
        steps: optimisation steps of ``edit()`` (100; 400 for memorisation); ``fit`` runs ``--trainer.max_steps``.
        batch_size: samples per step and process (the authors' config: 4).
        weight_decay: AdamW's weight decay (1e-2).
        max_grad_norm: gradient clipping (the authors' diffusers code: 1.0).
        anchor_batch_size: images per generation call when making anchor images.
        gradient_checkpointing, seed, base: see :class:`~edit_bench.editors.finetune.FineTuner`.
    """

    def __init__(self, params: Literal["cross-attn", "full-weight", "embedding"] = "cross-attn",
                 loss: Literal["model", "noise"] = "model", concept_type: Literal["object", "style"] = "object",
                 anchor_prompts: str | list[str] | None = None, num_anchor_images: int = 1000,
                 anchor_sampler: SamplerConfig | dict = PAPER_SAMPLER, regularization: bool = False, reg_weight: float = 0.2,
                 lr: float = 2e-6, scale_lr: bool = True, steps: int = 100, batch_size: int = 4,
                 weight_decay: float = 1e-2, max_grad_norm: float | None = 1.0, anchor_batch_size: int = 16,
                 gradient_checkpointing: bool = False, seed: int = 0, base: str = "toy"):
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
        self.params, self.loss_type, self.concept_type = params, loss, concept_type
        self.edits = "text_encoder" if params == "embedding" else "unet"  # per instance: the class declares "unet"
        self.anchor_prompts = self._read_prompts(anchor_prompts)
        if isinstance(anchor_sampler, dict):  # as a checkpoint's hyperparameters hold it
            anchor_sampler = SamplerConfig(**anchor_sampler)
        self.num_anchor_images, self.anchor_sampler = num_anchor_images, anchor_sampler
        self.regularization, self.reg_weight = regularization, reg_weight
        self.scale_lr, self.weight_decay, self.anchor_batch_size = scale_lr, weight_decay, anchor_batch_size
        self._anchors: dict[str, dict] = {}  # cache key -> prompts, target prompts, latent mean/std
        self.anchor_files: list[str] = []

    @staticmethod
    def _read_prompts(spec) -> list[str] | None:
        if spec is None:
            return None
        if isinstance(spec, str):
            from ..benchmarks.base import resolve_path

            path = resolve_path(spec)
            if not path.is_file():
                raise UsageError(f"anchor_prompts file {spec!r} not found: give a text file with one caption per line")
            spec = path.read_text(encoding="utf-8").splitlines()
        prompts = [p.strip() for p in spec if p and p.strip()]
        if not prompts:
            raise UsageError("anchor_prompts is empty: give at least one caption, or null for the anchor concept itself")
        return prompts

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
        for name, ids in getattr(self, "_keep_rows", {}).items():
            weight = self.t2i.token_embedding(name).weight
            if weight.grad is not None:
                keep = torch.zeros(weight.shape[0], 1, dtype=torch.bool, device=weight.device)
                keep[ids] = True
                weight.grad.mul_(keep)

    # ------------------------------------------------------------------ prompts
    def prompt_pairs(self, request) -> list[tuple[str, str]]:
        """``(anchor prompt, target prompt)`` pairs of a request, one per distinct anchor prompt."""
        target, anchor = request.source.strip(), request.target.strip()
        prompts = self.anchor_prompts or [anchor]
        if self.concept_type == "style":
            return [(p, STYLE_TEMPLATES[i % len(STYLE_TEMPLATES)].format(prompt=p, target=target).strip(", "))
                    for i, p in enumerate(prompts)]
        if not anchor:
            return [(p, target if p == "" else f"{target}, {p}") for p in prompts]
        pattern = re.compile(rf"(?<!\w){re.escape(anchor)}(?!\w)", re.IGNORECASE)
        pairs = []
        for p in prompts:
            if not pattern.search(p):
                raise UsageError(f"anchor prompt {p!r} does not contain the anchor {anchor!r} to replace with "
                                 f"{target!r}: give anchor prompts that name it, or concept_type style")
            pairs.append((p, pattern.sub(lambda _: target, p)))
        return pairs

    def derived_prompts(self, requests):
        return [q for r in requests for pair in self.prompt_pairs(r) for q in pair]

    # ------------------------------------------------------------------ anchor images
    def anchor_key(self, prompts: list[str]) -> str:
        blob = json.dumps({"model": self.t2i.identity, "prompts": prompts, "sampler": asdict(self.anchor_sampler),
                           "n": self.num_anchor_images, "format": 1}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def anchor_images(self, prompts: list[str]) -> torch.Tensor:
        """The ``num_anchor_images`` anchor images (uint8 ``[N, 3, H, W]``) of ``prompts``, from the cache or
        made now (with a progress bar) and cached."""
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
        from tqdm.auto import tqdm

        n, s = self.num_anchor_images, self.anchor_sampler
        self.t2i.check_sampler(s)
        out = []
        with tqdm(total=n, desc="Concept Ablation: anchor images", unit="img") as bar:
            for i in range(0, n, self.anchor_batch_size):
                idx = range(i, min(n, i + self.anchor_batch_size))
                imgs = self.t2i.generate([prompts[j % len(prompts)] for j in idx], [s.seeds[0] + j for j in idx], s)
                out.append((imgs * 255).round().to(torch.uint8).cpu().contiguous())
                bar.update(len(idx))
        return torch.cat(out).contiguous()

    def _prepare_anchors(self, requests) -> None:
        for r in requests:
            pairs = self.prompt_pairs(r)
            anchors = [a for a, _ in pairs]
            key = self.anchor_key(anchors)
            if key in self._anchors:
                continue
            images = self.anchor_images(anchors)
            mean, std = [], []
            for chunk in images.split(64):
                m, sd = self.t2i.encode_images(chunk.to(self.t2i.device).float() / 255)
                mean.append(m)
                std.append(sd)
            self._anchors[key] = {"pairs": pairs, "mean": torch.cat(mean), "std": torch.cat(std)}

    # ------------------------------------------------------------------ the loss
    def _draw(self, data: dict, gen: torch.Generator):
        """One anchor image's noised latent: (x_t, t, noise, anchor prompt, target prompt)."""
        t2i = self.t2i
        i = int(torch.randint(len(data["mean"]), (1,), generator=gen))
        anchor, target = data["pairs"][i % len(data["pairs"])]
        mean, std = data["mean"][i : i + 1], data["std"][i : i + 1]
        z0 = mean + std * torch.randn(mean.shape, generator=gen).to(mean.device)
        n_train = int(t2i.scheduler_config.get("num_train_timesteps", 1000))
        t = torch.randint(0, n_train, (1,), generator=gen)
        noise = torch.randn(mean.shape, generator=gen).to(mean.device)
        x_t = self._noise_scheduler().add_noise(z0, noise, t.to(mean.device))
        return x_t, t, noise, anchor, target

    def _noise_scheduler(self):
        if getattr(self, "_ddpm", None) is None:
            self._ddpm = self.t2i.make_scheduler("ddpm")
        return self._ddpm

    def batch_loss(self, requests, gens):
        t2i = self.t2i
        datas = [self._anchors[self.anchor_key([a for a, _ in self.prompt_pairs(r)])] for r in requests]
        draws = [self._draw(datas[int(torch.randint(len(datas), (1,), generator=g))], g) for g in gens]
        x_t = torch.cat([d[0] for d in draws])
        t = torch.cat([d[1] for d in draws]).to(x_t.device)
        pred = t2i.noise_prediction(x_t, t, t2i.condition([d[4] for d in draws])).float()
        if self.loss_type == "model":
            with torch.no_grad():
                want = t2i.noise_prediction(x_t, t, t2i.condition([d[3] for d in draws])).float()
        else:
            want = torch.cat([d[2] for d in draws])
        loss = torch.nn.functional.mse_loss(pred, want)
        if self.regularization:
            reg = [self._draw(datas[int(torch.randint(len(datas), (1,), generator=g))], g) for g in gens]
            x_r, t_r = torch.cat([d[0] for d in reg]), torch.cat([d[1] for d in reg]).to(x_t.device)
            pred_r = t2i.noise_prediction(x_r, t_r, t2i.condition([d[3] for d in reg])).float()
            loss = loss + self.reg_weight * torch.nn.functional.mse_loss(pred_r, torch.cat([d[2] for d in reg]))
        return loss

    def report(self) -> dict:
        return {**super().report(), "params": self.params, "loss": self.loss_type,
                "anchor_images": self.num_anchor_images, "anchor_cache": sorted(set(self.anchor_files))}
