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
