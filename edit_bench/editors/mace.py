"""MACE: MAss Concept Erasure (Lu et al., CVPR 2024, arXiv 2403.06135), its three stages on every cross-attention
``to_k``/``to_v``:

1. **Closed-form cross-attention refinement** (CFR, :class:`MaceCFR`, also an editor on its own). For each erased
   concept and each template, ``old = template(source)``, ``new = template(target)``; the tokens the two share (the
   common prefix with BOS, the common suffix with EOS, and the padding after it, paired from each EOS on) are
   aligned, the concept's own tokens are not. Keys are the old prompt's embeddings at the aligned positions, values
   the *original* weight times the new prompt's:

       W' = (lam W + sum W0 e_new e_old^T + s (W0 Pi_prior + w_d W0 Pi_dom))(lam I + sum e_old e_old^T + s (Pi_prior + w_d Pi_dom))^-1

   ``Pi_prior`` is the unnormalised second moment of all 77 positions of a caption corpus (MACE: every COCO-2014
   caption; :func:`~edit_bench.editors.stats.context_moment`), ``Pi_dom`` that of the preserved prompts (MACE's
   domain caches, e.g. other celebrities). MACE's code applies its ``train_preserve_scale`` twice
   (``s = s_p^2``); ``preserve_scale`` here is its config value and is squared the same way.
2. **One LoRA per concept** (:class:`MACE`, rank 1 through ``peft``, on the CFR weights): the loss is the sum
   over the 16 ``attn2`` layers of the Frobenius norm of the attention probabilities of the concept's tokens and
   of every EOS/padding position, over the pixels inside the concept's mask (MACE's ``AttnController``, its
   ``use_pooler``), at timesteps drawn with MACE's importance sampling
   ``p(t) ~ sigmoid(0.05 (t - 200)) - sigmoid(0.05 (t - 400))``, one image and one random template per step,
   AdamW (weight decay 1e-2), gradients clipped at 1.
3. **Closed-form fusion** of the LoRAs: with ``F_i`` all 77 positions of concept i's template prompts and
   ``dW_i`` its LoRA's product,

       W* = (lam W' + sum_i sum_{e in F_i} (W' + dW_i) e e^T + s_f (W0 Pi_prior + w_d W0 Pi_dom))(lam I + sum_i sum_e e e^T + s_f (Pi_prior + w_d Pi_dom))^-1

   with ``s_f`` = ``fuse_preserve_scale`` applied once (as MACE's code).

Images and masks (stage 2). MACE draws 8 images of each concept with SD and segments the concept in them with
Grounded-SAM (no mask for styles). ``data`` chooses the stand-in: ``"render"`` (the toy world only: its renderer
draws the concept's scene, and knows the object's exact mask; a style covers the whole image), ``"generate"`` (the
model's own images of each concept, full-image masks: MACE's path for styles) or a folder with
``<concept>/*.png`` and ``<concept>/masks/*.png`` (the user's own Grounded-SAM output; a concept's folder name is
its request's source).

Templates: MACE's 30 prompt templates per concept type ship under a non-commercial licence and are not copied;
``templates`` defaults to ten neutral ones of our own and takes any list.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UsageError
from ..io import image_files, read_image
from ..types import SamplerConfig
from .base import Editor
from .finetune import FineTuner
from .ridge import RidgeSystem
from .stats import DEFAULT_CORPUS, context_moment
from ..models.toy import SPECS as TOY_SPECS

TEMPLATES = ("{}", "a photo of {}", "an image of {}", "a picture of {}", "a painting of {}", "a drawing of {}",
             "a rendering of {}", "a close-up of {}", "a snapshot of {}", "an illustration of {}")
TOY_CORPUS = "datasets/toy/toy_captions.csv"


def aligned_positions(old: list[int], new: list[int], length: int) -> tuple[list[int], list[int]]:
    """MACE's token alignment of two prompts' ids (BOS..EOS, no padding): the common prefix, the common suffix,
    then the padding positions after each EOS paired one to one up to ``length``."""
    start = 0
    for a, b in zip(old, new):
        if a != b:
            break
        start += 1
    eo, en = len(old) - 1, len(new) - 1
    while eo >= start and en >= start and old[eo] == new[en]:
        eo, en = eo - 1, en - 1
    oi = list(range(start)) + list(range(eo + 1, len(old)))
    ni = list(range(start)) + list(range(en + 1, len(new)))
    pad = length - 1 - max(oi[-1], ni[-1])
    return oi + list(range(oi[-1] + 1, oi[-1] + 1 + pad)), ni + list(range(ni[-1] + 1, ni[-1] + 1 + pad))


class _Closed:
    """The closed forms MACE's two editors share (CFR and fusion), on an editor's model and parameters."""

    def _ids(self, prompt: str) -> list[int]:
        tok = self.t2i.tokenizer
        ids = self.t2i.tokenize([prompt])[0].tolist()
        return ids[:ids.index(tok.eos_token_id) + 1]

    def pairs(self, requests) -> list[tuple[str, str]]:
        return [(t.format(r.source), t.format(r.target).strip()) for r in requests for t in self.templates]

    def derived_prompts(self, requests):
        return [p for pair in self.pairs(requests) for p in pair if p]

    def _prior_factor(self) -> tuple[Tensor, int]:
        """``L`` with ``L L^T`` = the mean second moment of the corpus's 77 positions, and the number of positions
        (the unnormalised ``Pi_prior`` is ``count * L L^T``)."""
        C, n, _ = context_moment(self.t2i, self.corpus, self.corpus_samples, "all", self.stats_dir)
        evals, evecs = torch.linalg.eigh(C.double())
        return (evecs * evals.clamp(min=0).sqrt()).to(self.t2i.device), n

    def _preserve_keys(self, requests, preserve) -> Tensor:
        sources = {r.source.lower() for r in requests}
        keep = [q for q in dict.fromkeys([*self.preserve, *preserve]) if q.strip() and q.lower() not in sources]
        D = self.t2i.context_dim
        if not keep:
            return torch.zeros(D, 0, dtype=torch.float64, device=self.t2i.device)
        return self.t2i.encode(keep).double().reshape(-1, D).T

    def _solve(self, old_keys: Tensor, new_values, scale: float, requests, preserve) -> None:
        """One ridge system for every edited matrix: ``old_keys`` (weight 1) to ``new_values(name, W)``, the prior
        and the preserved prompts (weight ``scale`` and ``scale * domain_scale``) to the original outputs."""
        L, n = self._prior_factor() if scale > 0 else (None, 0)
        P = self._preserve_keys(requests, preserve)
        keys, weights = [old_keys], [torch.ones(old_keys.shape[1], dtype=torch.float64)]
        if L is not None:
            keys.append(L)
            weights.append(torch.full((L.shape[1],), scale * n, dtype=torch.float64))
        if P.shape[1] and scale > 0 and self.domain_scale > 0:
            keys.append(P)
            weights.append(torch.full((P.shape[1],), scale * self.domain_scale, dtype=torch.float64))
        K = torch.cat(keys, 1)
        system = RidgeSystem(K, self.lam, torch.cat(weights).to(K.device))
        self.conditions.append(system.condition)
        original = self.reference()  # W0: the weights this edit starts from (the origin, or the current ones on_current)
        for name, p in self.edited_parameters().items():
            W0 = original[name].to(p.device).double()
            V = [new_values(name, p.detach().double(), W0)] + [W0 @ k for k in keys[1:]]
            p.copy_(system.solve(p.detach().float(), torch.cat(V, 1)).to(p.dtype))

    @torch.no_grad()
    def cfr(self, requests, preserve=()) -> None:
        """Stage 1 on the current weights (the original ones: an edit starts from the snapshot)."""
        pairs = self.pairs(requests)
        emb_old = self.t2i.encode([o for o, _ in pairs]).double()
        emb_new = self.t2i.encode([n for _, n in pairs]).double()
        K, E = [], []
        for j, (o, n) in enumerate(pairs):
            oi, ni = aligned_positions(self._ids(o), self._ids(n), self.t2i.max_length)
            K.append(emb_old[j, oi])
            E.append(emb_new[j, ni])
        K, E = torch.cat(K).T, torch.cat(E).T
        self._solve(K, lambda name, W, W0: W0 @ E, self.preserve_scale ** 2, requests, preserve)


class MaceCFR(_Closed, Editor):
    """MACE's closed-form cross-attention refinement alone (stage 1; MACE's ablation "CFR only").

    Args:
        templates: prompt templates of each concept (``{}`` = the request's source / target).
        lam: ridge lambda (MACE: 0 for celebrities, artists and nudity; 10-1000 for its objects).
        preserve_scale: MACE's ``train_preserve_scale`` s_p; the prior's weight is s_p^2 (as its code; 0 = no prior).
        domain_scale: w_d, the preserved prompts' weight relative to the prior (MACE: 8e3-2e5 for celebrities).
        preserve: prompts preserved in every edit besides each case's preserve set.
        corpus, corpus_samples, stats_dir: the prior's captions (``None``: the toy captions on the toy world,
            COCO-30k otherwise; MACE used every COCO-2014 caption), how many, and where it is cached.
        with_to_k: also edit ``to_k`` (MACE does).
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "cross_attn_kv"
    multi_request = True
    files = {"corpus": "input", "stats_dir": "cache"}
    derives = {"W0": "reference", "prior statistics": "current"}
    contract_args = {"corpus_samples": 500, "lam": 0.5}

    def __init__(self, templates: Sequence[str] = TEMPLATES, lam: float = 0.0, preserve_scale: float = 1e-4,
                 domain_scale: float = 8e4, preserve: Sequence[str] = (), corpus: str | None = None,
                 corpus_samples: int = 30_000, stats_dir: str | None = None, with_to_k: bool = True, base: str = "toy"):
        super().__init__(base=base)
        _check(templates, lam, preserve_scale, domain_scale)
        self.templates, self.lam, self.preserve_scale, self.domain_scale = tuple(templates), lam, preserve_scale, domain_scale
        self.preserve, self.with_to_k = tuple(preserve), with_to_k
        self.corpus = corpus or (TOY_CORPUS if base in TOY_SPECS else DEFAULT_CORPUS)
        self.corpus_samples, self.stats_dir = corpus_samples, stats_dir
        self.resolved(corpus=self.corpus)

    def edited_parameters(self):
        return self.cross_attn_kv(None, self.with_to_k)

    @torch.no_grad()
    def edit(self, requests, preserve=()):
        if not requests:
            raise UsageError("MACE needs at least one concept to erase")
        self.cfr(requests, preserve)


def _check(templates, lam, preserve_scale, domain_scale) -> None:
    bad = [t for t in templates if "{}" not in t]
    if not templates or bad:
        raise UsageError(f"MACE templates need '{{}}' for the concept: {bad or '(none given)'}")
    if lam < 0 or preserve_scale < 0 or domain_scale < 0:
        raise UsageError(f"MACE's lam, preserve_scale and domain_scale must be >= 0; got {lam}, {preserve_scale}, {domain_scale}")


def importance_weights(n: int = 1000, temperature: float = 0.05) -> Tensor:
    """MACE's timestep importance ``sigmoid(T (t - 200)) - sigmoid(T (t - 400))`` for ``t = 0..n-1`` (unnormalised)."""
    t = torch.arange(n, dtype=torch.float64)
    return torch.sigmoid(temperature * (t - 200)) - torch.sigmoid(temperature * (t - 400))


class MACE(_Closed, FineTuner):
    """MACE: CFR, one rank-``rank`` LoRA per concept trained on the attention loss, closed-form fusion.

    Args:
        lr: the LoRAs' learning rate (MACE: 1e-4 celebrities and artists, 1e-5 objects and nudity).
        steps: optimisation steps per concept (MACE: 50; 120 for nudity).
        rank: LoRA rank (MACE: 1).
        images: images per concept (MACE: 8).
        data: ``"render"`` (toy world), ``"generate"`` or a folder; see the module docstring.
        data_sampler: how ``"generate"`` draws (MACE: DPM-Solver++ 30 steps, guidance 7.5).
        importance_sampling: MACE's timestep distribution (its configs: on, off for nudity); off = uniform.
        fuse_preserve_scale: s_f of the fusion's prior (MACE: = ``train_preserve_scale``, applied once).
        templates, lam, preserve_scale, domain_scale, preserve, corpus, corpus_samples, stats_dir, with_to_k:
            as :class:`MaceCFR`.
        max_grad_norm: gradient clipping (MACE: 1.0).
        batch_size, gradient_checkpointing, seed, base: see :class:`~edit_bench.editors.finetune.FineTuner`.
    """

    edits = "cross_attn_kv"
    files = {"corpus": "input", "stats_dir": "cache", "data": "input"}  # data: a folder ("render"/"generate" name none)
    ddp_unused_parameters = True  # one LoRA per concept trains at a time (peft's set_adapter freezes the others)
    derives = {"concept images (data: generate)": "origin", "W0": "reference",
               "prior statistics": "current"}  # the prior's cache is keyed by a digest of the text-encoder weights
    contract_args = {"corpus_samples": 500, "lam": 0.5, "data": "generate", "images": 1, "steps": 2,
                     "templates": ["{}", "a photo of {}"],
                     "data_sampler": {"scheduler": "dpm", "steps": 2, "guidance": 7.5, "size": None, "seeds": [0]}}

    def __init__(self, lr: float = 1e-4, steps: int = 50, rank: int = 1, images: int = 8,
                 data: str = "render", importance_sampling: bool = True, fuse_preserve_scale: float = 1e-4,
                 templates: Sequence[str] = TEMPLATES, lam: float = 0.0, preserve_scale: float = 1e-4,
                 domain_scale: float = 8e4, preserve: Sequence[str] = (), corpus: str | None = None,
                 corpus_samples: int = 30_000, stats_dir: str | None = None, with_to_k: bool = True,
                 max_grad_norm: float | None = 1.0, batch_size: int = 1, gradient_checkpointing: bool = False,
                 data_sampler: SamplerConfig | None = None, seed: int = 2024, base: str = "toy"):
        super().__init__(lr=lr, steps=steps, batch_size=batch_size, max_grad_norm=max_grad_norm,
                         gradient_checkpointing=gradient_checkpointing, seed=seed, base=base)
        _check(templates, lam, preserve_scale, domain_scale)
        if rank < 1 or images < 1 or fuse_preserve_scale < 0:
            raise UsageError(f"MACE needs rank >= 1, images >= 1, fuse_preserve_scale >= 0; got {rank}, {images}, {fuse_preserve_scale}")
        if data not in ("render", "generate") and not Path(data).is_dir():
            raise UsageError(f"MACE data must be 'render' (toy world), 'generate' or a folder of <concept>/*.png and "
                             f"<concept>/masks/*.png; {data!r} is neither")
        if data == "render" and base != "toy":
            raise UsageError(f"MACE data 'render' draws the toy world's scenes and masks, not {base!r}'s: give a folder "
                             "with each concept's images and masks (data: PATH), or data: generate (full-image masks)")
        self.rank, self.n_images, self.data, self.importance_sampling = rank, images, data, importance_sampling
        if isinstance(data_sampler, dict):
            data_sampler = SamplerConfig(**data_sampler)
        # MACE's generation of concept images: DPM-Solver++ 30 steps, guidance 7.5 (recorded as used)
        self.data_sampler = data_sampler or SamplerConfig(scheduler="dpm", steps=30, guidance=7.5, size=None, seeds=[0])
        self.resolved(data_sampler=dataclasses.asdict(self.data_sampler))
        self.fuse_preserve_scale = fuse_preserve_scale
        self.templates, self.lam, self.preserve_scale, self.domain_scale = tuple(templates), lam, preserve_scale, domain_scale
        self.preserve, self.with_to_k = tuple(preserve), with_to_k
        self.corpus = corpus or (TOY_CORPUS if base in TOY_SPECS else DEFAULT_CORPUS)
        self.corpus_samples, self.stats_dir = corpus_samples, stats_dir
        self.resolved(corpus=self.corpus)
        self._concepts: list[dict] = []
        # made while editing: the LoRAs and attention probes (between attach and detach), the concept being trained,
        # and under Lightning's fit its requests, their images and which LoRA trains
        self._loras = self._probes = self._current = None
        self._fit_data = self._fit_requests = self._fit_preserve = self._active_lora = None

    def edited_parameters(self):
        return self.cross_attn_kv(None, self.with_to_k)

    def input_files(self) -> dict[str, str]:
        out = super().input_files()
        if self.data in ("render", "generate"):
            out.pop("data", None)
        return out

    # ------------------------------------------------------------------ data
    def _concept_data(self, request, index: int) -> dict:
        """Images ``[n, 3, H, W]``, masks ``[n, 1, H, W]``, the concept's template prompts and token positions."""
        t2i, n = self.t2i, self.n_images
        if self.data == "render":
            from ..models.toy import world

            scenes = self._scenes(request, index)
            images, masks = world.render(scenes, seeds=[self.seed + 1000 * index + k for k in range(n)], masks=True)
            if scenes[0].style != "none":  # a style covers the whole image (MACE masks no style)
                masks = torch.ones_like(masks)
        elif self.data == "generate":
            sampler = self.data_sampler
            with self.original_weights():
                images = t2i.generate([request.source] * n, [self.seed + 1000 * index + k for k in range(n)], sampler).cpu()
            masks = torch.ones(n, 1, *images.shape[-2:])
        else:
            images, masks = _read_folder(Path(self.data) / request.source, n)
        prompts = [t.format(request.source) for t in self.templates]
        positions = []
        eos = t2i.tokenizer.eos_token_id
        for t in self.templates:
            old, new = self._ids(t.format(request.source)), self._ids(t.format(request.target).strip())
            aligned, _ = aligned_positions(old, new, t2i.max_length)
            concept = [i for i in range(len(old)) if i not in set(aligned)]
            padded = t2i.tokenize([t.format(request.source)])[0].tolist()
            positions.append(sorted(set(concept) | {i for i, v in enumerate(padded) if v == eos}))
        return {"images": images.float(), "masks": masks.float(), "prompts": prompts, "positions": positions}

    def _scenes(self, request, index: int) -> list:
        from ..models.toy import world

        try:
            return [world.scene_for(request.source, random.Random(self.seed + 1000 * index + k)) for k in range(self.n_images)]
        except (ValueError, KeyError) as e:
            raise UsageError(f"the toy renderer cannot draw {request.source!r} ({e}): MACE needs images of each concept "
                             "(data: generate, or a folder)") from None

    # ------------------------------------------------------------------ stage 2
    def make_optimizer(self, params, lr):
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

    def _timestep(self, g: torch.Generator) -> int:
        n = int(self.t2i.scheduler_config.get("num_train_timesteps", 1000))
        if not self.importance_sampling:
            return int(torch.randint(n, (1,), generator=g))
        return int(torch.multinomial(importance_weights(n), 1, generator=g))


    def batch_loss(self, requests, gens):
        """The attention loss of one image of the current concept per generator."""
        t2i, data = self.t2i, self._current
        losses = []
        for g in gens:
            k = int(torch.randint(data["images"].shape[0], (1,), generator=g))
            j = int(torch.randint(len(data["prompts"]), (1,), generator=g))
            mean, std = t2i.encode_images(data["images"][k:k + 1].to(t2i.device))
            z0 = mean + std * torch.randn(mean.shape, generator=g).to(mean.device)
            t = torch.tensor([self._timestep(g)], device=mean.device)
            x_t = self.noise_scheduler().add_noise(z0, torch.randn(mean.shape, generator=g).to(mean.device), t)
            with self._probes.recording() as probs:
                t2i.noise_prediction(x_t, t, t2i.condition([data["prompts"][j]]))
            pos = torch.tensor(data["positions"][j], device=mean.device)
            loss = 0.0
            for p in probs:  # [B * heads, HW, 77]
                d = int(math.isqrt(p.shape[1]))
                m = torch.nn.functional.interpolate(data["masks"][k:k + 1], size=(d, d), mode="nearest")
                sel = (m > 0.5).view(-1).to(p.device)
                loss = loss + p[:, sel][:, :, pos].float().norm()
            losses.append(loss)
            del probs
        return torch.stack(losses).mean()

    # ------------------------------------------------------------------ Lightning's fit
    def _attach(self, n: int) -> None:
        """One LoRA per concept (``mace0`` ...), each initialised from its own seed, and the attention probes."""
        self._loras = self.t2i.loras(list(self.edited_parameters()), [f"mace{i}" for i in range(n)], self.rank, self.seed)
        self._probes = self.t2i.attention_probabilities()

    def _detach(self, n: int) -> list[dict[str, Tensor]]:
        """Each concept's ``dW`` per edited matrix; then the LoRA layers and the probes are removed."""
        deltas = [self._loras.delta(f"mace{i}") for i in range(n)]
        self._probes.remove()
        self._loras.remove()
        self._loras = self._probes = None
        return deltas

    def configure_model(self) -> None:
        """Under ``fit``: images of the original model, CFR on the weights, one LoRA per concept attached (before
        Lightning restores a checkpoint, which holds the LoRAs)."""
        from lightning.pytorch.trainer.states import TrainerFn

        t2i = self.t2i
        if self._trainer is None or self.trainer.state.fn != TrainerFn.FITTING or self._fit_data:
            return
        t2i.requires_grad_(False)
        dm = self.trainer.datamodule
        self._fit_requests, self._fit_preserve = list(dm.requests()), list(dm.preserve())
        with torch.autocast(t2i.device.type, enabled=False), torch.no_grad():
            self._fit_data = [self._concept_data(r, i) for i, r in enumerate(self._fit_requests)]
            self.cfr(self._fit_requests, self._fit_preserve)
        self._attach(len(self._fit_requests))
        for i in range(len(self._fit_requests)):
            for p in self._loras.parameters(f"mace{i}"):
                p.requires_grad_(True)

    def configure_optimizers(self):
        self.lr_used = self.lr
        params = [p for i in range(len(self._fit_requests)) for p in self._loras.parameters(f"mace{i}")]
        return self.make_optimizer(params, self.lr)

    def check_fit(self, requests, max_steps: int) -> None:
        need = self.steps * len(requests)
        if max_steps != need:
            raise UsageError(f"MACE trains {self.steps} steps per concept: {len(requests)} concepts need "
                             f"--trainer.max_steps {need} (got {max_steps})")
        if self.data not in ("render", "generate"):
            for r in requests:
                _read_folder(Path(self.data) / r.source, 1)
        elif self.data == "render":
            for i, r in enumerate(requests):
                self._scenes(r, i)

    def on_fit_start(self) -> None:
        self.check_fit(self._fit_requests, self.trainer.max_steps)
        self._in_fit, self._active_lora = True, None

    def training_step(self, batch, batch_idx):
        i = min(self.global_step // self.steps, len(self._fit_requests) - 1)
        if self._active_lora != i:
            self._loras.activate(f"mace{i}")
            self._active_lora, self._current = i, self._fit_data[i]
        trainer = self.trainer
        micro = batch_idx % trainer.accumulate_grad_batches
        loss = self.batch_loss([self._fit_requests[i]], self._gens(self.global_step, micro, trainer.world_size, self.global_rank))
        self._record(loss.detach())
        self.log("loss", loss, prog_bar=True)
        return loss

    def on_fit_end(self) -> None:
        self._flush_losses()
        self._in_fit = False
        self._optimizer_steps = self.global_step
        deltas = self._detach(len(self._fit_requests))
        with torch.autocast(self.t2i.device.type, enabled=False), torch.no_grad():
            self.fuse(self._fit_requests, deltas, self._fit_preserve)
        self._fit_data = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The LoRAs (and the optimizer); the CFR weights are a function of the original ones."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if ".lora_" in k}
        self._save_losses(checkpoint)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = torch.nn.Module.load_state_dict(self, state_dict, strict=False, assign=assign)
        if result.unexpected_keys:
            raise UsageError(f"the checkpoint holds tensors MACE does not have: {result.unexpected_keys[:3]}")
        return type(result)([], [])

    # ------------------------------------------------------------------ the method
    def edit(self, requests, preserve=()):
        requests = list(requests)
        if not requests:
            raise UsageError("MACE needs at least one concept to erase")
        with torch.no_grad():
            data = [self._concept_data(r, i) for i, r in enumerate(requests)]  # images of the original model
            self.cfr(requests, preserve)  # stage 1
        self._attach(len(requests))
        deltas = None
        try:
            with torch.enable_grad():
                for i, r in enumerate(requests):  # stage 2, one LoRA per concept, each on the CFR weights
                    self._loras.activate(f"mace{i}")
                    self._current = data[i]
                    params = self._loras.parameters(f"mace{i}")
                    for p in params:
                        p.requires_grad_(True)
                    self._optimise([r], params, self.make_optimizer(params, self.lr), first=i * self.steps)
        finally:
            self._pending = []
            deltas = self._detach(len(requests))
        with torch.no_grad():
            self.fuse(requests, deltas, preserve)  # stage 3

    @torch.no_grad()
    def fuse(self, requests, deltas: list[dict[str, Tensor]], preserve=()) -> None:
        """Stage 3 on the current (CFR) weights: every concept's 77 positions of its template prompts to the outputs
        of the CFR weights plus its LoRA."""
        F, spans = [], []
        for r in requests:
            e = self.t2i.encode([t.format(r.source) for t in self.templates]).double()
            F.append(e.reshape(-1, e.shape[-1]).T)
            spans.append(F[-1].shape[1])
        K = torch.cat(F, 1)

        def values(name, W, W0):
            return torch.cat([(W + d[name].to(W.device)) @ f for d, f in zip(deltas, F)], 1)

        self._solve(K, values, self.fuse_preserve_scale, requests, preserve)

    def report(self) -> dict:
        out = {**super().report(), **Editor.report(self)}
        out["mace"] = {"data": self.data, "images_per_concept": self.n_images, "rank": self.rank,
                       "templates": len(self.templates), "importance_sampling": self.importance_sampling}
        return out


def _read_folder(folder: Path, n: int) -> tuple[Tensor, Tensor]:
    """Up to ``n`` images of ``folder`` (:func:`edit_bench.io.image_files`, at their own size) and their masks
    ``folder/masks/<same name>``."""
    files = image_files(folder)[:n]
    if not files:
        raise UsageError(f"no images in {folder}: MACE needs <data>/<concept>/ images (and masks/ of the same names) "
                         "for each concept")
    images, masks = [], []
    for f in files:
        m = folder / "masks" / f.name
        if not m.is_file():
            raise UsageError(f"{f} has no mask {m}: give each image a mask (Grounded-SAM's output), or data: generate")
        images.append(read_image(f).float() / 255)
        masks.append(read_image(m, mode="L").float() / 255)
    return torch.stack(images), torch.stack(masks)
