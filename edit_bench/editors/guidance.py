"""Erasers that act at generation time, on the sampling loop instead of the weights: the negative prompt (SD-NP) and
Safe Latent Diffusion (SLD; Schramowski et al., CVPR 2023), the rows every nudity and robustness table prints beside
the weight editors.

Such an editor changes no tensor. Its edit installs a :class:`Guide` on the model (``T2IModel.sampling``), the one seam
of the adapter's guided prediction (``T2IModel.generate``): the guide gives the classifier-free guidance's negative row
(SD-NP: the concept), any extra rows batched into the same forward (SLD: the safety concept) and how the rows' noise
predictions combine into the step's prediction. ``restore()`` removes it (the model is the unedited one again, bit for
bit, since nothing else changed) and ``original_weights()`` runs its block without it. With no guide installed the
loop is the plain CFG loop, its numbers unchanged.

What they cannot do, each refused in one line: ``fit`` and ``export`` (there are no weights to save: evaluate them with
``eval``); the sequential protocol (a guide replaces, it does not accumulate); SD3 and FLUX (their samplers have no
such seam yet); a sampler without classifier-free guidance (guidance 1).
"""

from __future__ import annotations

import abc
import contextlib
from typing import ClassVar, Literal

import torch

from ..errors import UsageError
from .base import Editor


class Guide:
    """What a generation-time editor does to the sampling loop (see the module docstring)."""

    name = "guide"

    def unconditional(self, t2i, n: int):
        """The negative row of classifier-free guidance for ``n`` samples (default: the model's, the empty prompt)."""
        return t2i.unconditional(n)

    def extra_rows(self, t2i, n: int) -> list:
        """Conditionings batched after the negative and the prompt rows (default: none)."""
        return []

    def prepare(self, t2i, cond, state: dict) -> None:
        """Called once per batch before the first step with the prompts' conditioning (``cond.ids``: their token ids,
        ``None`` where an attack replaced token embeddings); may keep what the steps need in ``state`` (default:
        nothing)."""

    def step_conditioning(self, both, n: int, i: int, state: dict):
        """The rows' conditioning at step ``i`` (``both``: negative, prompt, extras, ``n`` samples each; default: the
        same at every step)."""
        return both

    def combine(self, parts, guidance: float, i: int, state: dict):
        """The step's noise prediction from the rows' (``parts``: negative, prompt, extras) at step ``i``."""
        eps_u, eps_c = parts[0], parts[1]
        return eps_u + guidance * (eps_c - eps_u)


class GenerationEditor(Editor, metaclass=abc.ABCMeta):
    """Base class of the generation-time erasers: :meth:`guide` builds the :class:`Guide` of the requests (abstract:
    not an editor by itself, ``discover()`` skips it)."""

    edits: ClassVar[str] = "sampling"
    families: ClassVar[tuple[str, ...]] = ("sd1", "sd2", "sdxl")
    multi_request: ClassVar[bool] = True

    @abc.abstractmethod
    def guide(self, requests) -> Guide:
        """The guide that erases ``requests`` at generation time."""

    def edited_parameters(self):
        return {}

    def concept(self, requests) -> str:
        """The erased concept as one text: the requests' sources, joined by ", " (every request erases towards the
        unconditional: a generation-time eraser has no target)."""
        targets = [r.target for r in requests if r.target]
        if targets:
            raise UsageError(f"{type(self).__name__} erases a concept (it steers away from it); it cannot draw "
                             f"{targets[0]!r} instead: give requests with an empty target")
        return ", ".join(r.source for r in requests)

    def edit(self, requests, preserve=()):
        self.t2i.sampling = self.guide(list(requests))

    def derived_prompts(self, requests) -> list[str]:
        """The text the guide encodes (checked before any output: a request with a target is refused here)."""
        return [self.concept(list(requests))]

    @torch.no_grad()
    def restore(self) -> None:
        super().restore()
        if "_t2i" in self._modules:
            self._modules["_t2i"].sampling = None

    @contextlib.contextmanager
    def original_weights(self):
        """The block runs on the unedited model: without the guide, which is put back after."""
        t2i = self.t2i
        guide, t2i.sampling = t2i.sampling, None
        try:
            yield self
        finally:
            t2i.sampling = guide

    def report(self) -> dict:
        g = self.t2i.sampling
        return {"guide": None if g is None else {k: v for k, v in vars(g).items() if not k.startswith("_")}}


# ---------------------------------------------------------------------------------------------- SD-NP
class _NegativePrompt(Guide):
    name = "SD-NP"

    def __init__(self, text: str):
        self.negative_prompt = text

    def unconditional(self, t2i, n: int):
        return t2i.condition([self.negative_prompt] * n)


class NegativePrompt(GenerationEditor):
    """SD-NP: the erased concept as classifier-free guidance's negative prompt (diffusers' ``negative_prompt``), the
    baseline of ESD's, MACE's, RECE's and UnlearnDiffAtk's nudity tables.

    Args:
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    def guide(self, requests):
        return _NegativePrompt(self.concept(requests))


# ---------------------------------------------------------------------------------------------- SLD
SLD_PRESETS = {  # Schramowski et al., CVPR 2023, Table 1; diffusers' SafetyConfig (deprecated stable_diffusion_safe)
    "weak": {"warmup_steps": 15, "guidance_scale": 20.0, "threshold": 0.0, "momentum_scale": 0.0, "mom_beta": 0.0},
    "medium": {"warmup_steps": 10, "guidance_scale": 1000.0, "threshold": 0.01, "momentum_scale": 0.3, "mom_beta": 0.4},
    "strong": {"warmup_steps": 7, "guidance_scale": 2000.0, "threshold": 0.025, "momentum_scale": 0.5, "mom_beta": 0.7},
    "max": {"warmup_steps": 0, "guidance_scale": 5000.0, "threshold": 1.0, "momentum_scale": 0.5, "mom_beta": 0.7},
}
SLD_CONCEPT = ("an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, "
               "bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child "
               "abuse, brutality, cruelty")  # the pipeline's default safety concept


class _SafetyGuidance(Guide):
    name = "SLD"

    def __init__(self, concept: str, warmup_steps: int, guidance_scale: float, threshold: float, momentum_scale: float,
                 mom_beta: float):
        self.safety_concept, self.warmup_steps, self.guidance_scale = concept, warmup_steps, guidance_scale
        self.threshold, self.momentum_scale, self.mom_beta = threshold, momentum_scale, mom_beta

    def extra_rows(self, t2i, n: int):
        return [t2i.condition([self.safety_concept] * n)]

    def combine(self, parts, guidance, i, state):
        """SLD's Eq. 3-8, as ``StableDiffusionPipelineSafe``: the safety guidance is computed (and its momentum
        updated) at every step, and subtracted from the text guidance from step ``warmup_steps`` on."""
        eps_u, eps_c, eps_s = parts
        text = eps_c - eps_u
        momentum = state.get("momentum")
        if momentum is None:
            momentum = torch.zeros_like(text)
        scale = torch.clamp((eps_c - eps_s).abs() * self.guidance_scale, max=1.0)
        scale = torch.where((eps_c - eps_s) >= self.threshold, torch.zeros_like(scale), scale)
        safety = (eps_s - eps_u) * scale + self.momentum_scale * momentum
        state["momentum"] = self.mom_beta * momentum + (1 - self.mom_beta) * safety
        if i >= self.warmup_steps:
            text = text - safety
        return eps_u + guidance * text


class SafeLatentDiffusion(GenerationEditor):
    """SLD: at every step, guidance away from the safety concept where the prompt's prediction is near it (Schramowski
    et al., CVPR 2023), equal to diffusers' ``StableDiffusionPipelineSafe`` (tested image for image on a tiny model).

    Args:
        preset: ``weak``, ``medium``, ``strong`` or ``max`` (the paper's four configurations).
        safety_concept: the concept steered away from; ``None``: the requests' sources (``"nudity"``), as every other
            editor erases its requests; ``sld``: the pipeline's default text (hate, harassment, ..., nudity, ...),
            which the papers' SLD rows use.
        warmup_steps, guidance_scale, threshold, momentum_scale, mom_beta: override the preset's value.
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    contract_args = {"preset": "max"}  # no warm-up: the guidance acts within the checker's 3 steps

    def __init__(self, preset: Literal["weak", "medium", "strong", "max"] = "medium", safety_concept: str | None = None,
                 warmup_steps: int | None = None, guidance_scale: float | None = None, threshold: float | None = None,
                 momentum_scale: float | None = None, mom_beta: float | None = None, base: str = "toy"):
        super().__init__(base=base)
        if preset not in SLD_PRESETS:
            raise UsageError(f"unknown SLD preset {preset!r}: use one of {', '.join(SLD_PRESETS)}")
        given = {"warmup_steps": warmup_steps, "guidance_scale": guidance_scale, "threshold": threshold,
                 "momentum_scale": momentum_scale, "mom_beta": mom_beta}
        self.settings = {**SLD_PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        if self.settings["warmup_steps"] < 0 or not 0 <= self.settings["mom_beta"] <= 1:
            raise UsageError(f"SLD: warmup_steps must be >= 0 and mom_beta in [0, 1], got {self.settings}")
        self.preset, self.safety_concept = preset, safety_concept

    def _safety_concept(self, requests) -> str:
        return SLD_CONCEPT if self.safety_concept == "sld" else self.safety_concept or self.concept(requests)

    def derived_prompts(self, requests) -> list[str]:
        return super().derived_prompts(requests) + [self._safety_concept(list(requests))]

    def guide(self, requests):
        return _SafetyGuidance(self._safety_concept(requests), **self.settings)


# ---------------------------------------------------------------------------------------------- SAFREE
SAFREE_NUDITY = ["Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art",
                 "Lustful", "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction",
                 "Sexual Intercourse", "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification"]
SAFREE_FILTER = {"nudity": (5.333, 2.5), "artist": (5.5, 3.5)}  # the self-validating filter's sigmoid: midpoint, slope


def _projection(rows: torch.Tensor) -> torch.Tensor:
    """The projection ``[D, D]`` onto the span of ``rows`` ``[K, D]``: ``E (E^T E)^+ E^T`` with ``E = rows^T``."""
    return rows.T @ torch.linalg.pinv(rows @ rows.T) @ rows


class _Safree(Guide):
    name = "SAFREE"

    def __init__(self, concept_space: list[str], alpha: float, up_t: int, self_validation: bool, category: str):
        self.concept_space, self.negative_prompt = list(concept_space), ", ".join(concept_space)
        self.alpha, self.up_t, self.self_validation, self.category = alpha, up_t, self_validation, category

    def unconditional(self, t2i, n: int):
        return t2i.condition([self.negative_prompt] * n)

    def steps(self, beta: float) -> int:
        """The self-validating filter: the last step (0-based) that draws from the projected prompt,
        ``round(up_t * sigmoid(2 k (10 beta - t)))`` with the category's midpoint ``t`` and slope ``k``."""
        import math

        t, k = SAFREE_FILTER[self.category]
        return round(self.up_t * (1 / (1 + math.exp(-(2.0 * k * (10 * beta - t))))))

    @torch.no_grad()
    def project(self, t2i, ids: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, int, list[int]]:
        """SAFREE's projection of one prompt, its token ids ``[L]`` (BOS, tokens, EOS, padding) and its states
        ``context``: the states with each trigger token's replaced by ``(I - P_c) P_m`` of it, the last step that uses
        them, and the trigger positions (see the class)."""
        dev = t2i.device
        concept = t2i.pooled(t2i.tokenize(self.concept_space).to(dev)).double()
        p_c = _projection(concept)
        ids = ids.to(dev)
        at_eos = (ids == t2i.tokenizer.eos_token_id).nonzero()
        ids = ids[:int(at_eos[0]) + 1 if len(at_eos) else len(ids)]  # SAFREE encodes the prompt padded to its own length
        n = len(ids) - 2
        masked = ids.repeat(n, 1)
        masked[torch.arange(n), torch.arange(n) + 1] = 0  # token i+1 masked (id 0), as SAFREE masks
        tokens = t2i.pooled(masked).double()
        p_m = _projection(tokens)
        away = torch.eye(p_c.shape[0], dtype=torch.float64, device=dev) - p_c
        dist = (tokens @ away.T).norm(dim=1)  # each masked prompt's distance from the concept subspace
        others = (dist.sum() - dist) / (n - 1) if n > 1 else torch.full_like(dist, float("nan"))
        keep = dist < (1.0 + self.alpha) * others  # a token whose removal moves the prompt away from the concept: a trigger
        text = context.double()
        projected = text @ p_m.T @ away.T  # (I - P_c) P_m applied to every state
        use = torch.ones(text.shape[0], dtype=torch.bool, device=dev)
        use[1:n + 1] = keep
        out = torch.where(use[:, None], text, projected)
        if not self.self_validation:
            return out.to(context.dtype), 10**9, (~keep).nonzero().flatten().add(1).tolist()
        valid = slice(0, min(n + 2, text.shape[0]))  # BOS, the prompt's tokens, EOS: the tokenizer's attention mask
        beta = 1 - torch.nn.functional.cosine_similarity(projected[valid], text[valid], dim=-1).mean().item()
        return out.to(context.dtype), self.steps(beta), (~keep).nonzero().flatten().add(1).tolist()

    def prepare(self, t2i, cond, state):
        if cond.ids is None:
            raise UsageError("SAFREE masks each of a prompt's tokens: it cannot draw from replaced token embeddings (a "
                             "learned token); attack it with a search over token ids (RingABell)")
        found = [self.project(t2i, cond.ids[b], cond.context[b]) for b in range(len(cond))]
        state["safree"] = (torch.stack([f[0] for f in found]), torch.tensor([f[1] for f in found], device=cond.context.device))

    def step_conditioning(self, both, n, i, state):
        projected, until = state["safree"]
        use = i <= until
        if not bool(use.any()):
            return both
        ctx = both.context.clone()
        ctx[n:2 * n] = torch.where(use[:, None, None], projected.to(ctx.dtype), ctx[n:2 * n])
        return type(both)(ctx, both.pooled)


class SAFREE(GenerationEditor):
    """SAFREE (Yoon et al., ICLR 2025): a training-free guard in the text embedding space, as its authors' code
    (jaehong31/SAFREE@b8b2c3f, ``ModifiedStableDiffusionPipeline`` with ``--safree -svf -lra``).

    1. The concept subspace: the text encoder's pooled outputs of the concept's keywords (``concept_space``; nudity:
       SAFREE's 17 phrases), ``P_c`` its projection; the keywords joined by ", " are also the negative prompt.
    2. Trigger tokens: each of the prompt's tokens masked in turn (id 0), the masked prompts' pooled outputs span
       ``P_m``; a token is a trigger when the masked prompt's distance from the concept subspace ``||(I - P_c) p_i||`` is
       at least ``(1 + alpha)`` times the mean of the other tokens' distances.
    3. The prompt's states at the trigger positions are replaced by ``(I - P_c) P_m`` of them.
    4. The self-validating filter: ``beta = 1 - mean cos((I - P_c) P_m e_j, e_j)`` over the prompt's BOS, tokens and EOS;
       the projected prompt is used for the steps ``i <= round(up_t * sigmoid(2 k (10 beta - t)))`` (nudity: t 5.333,
       k 2.5; artists: 5.5, 3.5), the original prompt after.

    The latent re-attention (``-lra``) of the authors' release changes nothing: their script registers the Fourier
    filters with ``safree=None``, which falls through to a ``NotImplementedError`` that is built but never raised, so
    the UNet's up blocks run unchanged (checked by running it, ``tests/authors/safree.py``); it is not reproduced.
    The projections are solved in float64 (theirs: float32). A prompt over 75 tokens: SAFREE cuts its masked copies at
    77 ids without an EOS, so its pooled outputs are read elsewhere; here every masked copy keeps its EOS. The guide
    works from token ids, so it also guards the prompts a token search found (Ring-A-Bell's), not a learned embedding.

    Args:
        concept_space: the concept's keywords; ``nudity``: SAFREE's 17 nudity phrases; ``None``: the requests' sources.
        category: ``nudity`` or ``artist``: the self-validating filter's constants.
        alpha: the trigger threshold's margin (0.01).
        up_t: the filter's largest number of steps (10).
        self_validation: the filter on (the authors' ``-svf``); off, the projected prompt is used at every step.
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    families = ("sd1", "sd2")

    def __init__(self, concept_space: list[str] | str | None = None, category: Literal["nudity", "artist"] = "nudity",
                 alpha: float = 0.01, up_t: int = 10, self_validation: bool = True, base: str = "toy"):
        super().__init__(base=base)
        if category not in SAFREE_FILTER:
            raise UsageError(f"SAFREE category {category!r}: use nudity or artist (the self-validating filter's constants)")
        if isinstance(concept_space, str) and concept_space != "nudity":
            raise UsageError(f"concept_space {concept_space!r}: give a list of keywords, or nudity (SAFREE's 17 phrases)")
        if up_t < 0:
            raise UsageError(f"up_t must be >= 0, got {up_t}")
        self.concept_space, self.category, self.alpha, self.up_t = concept_space, category, alpha, up_t
        self.self_validation = self_validation

    def _space(self, requests) -> list[str]:
        if self.concept_space == "nudity":
            return list(SAFREE_NUDITY)
        if self.concept_space:
            return list(self.concept_space)
        self.concept(requests)  # refuses a request with a target
        return [r.source for r in requests]

    def derived_prompts(self, requests) -> list[str]:
        return super().derived_prompts(requests) + self._space(list(requests)) + [", ".join(self._space(list(requests)))]

    def guide(self, requests):
        return _Safree(self._space(list(requests)), self.alpha, self.up_t, self.self_validation, self.category)
