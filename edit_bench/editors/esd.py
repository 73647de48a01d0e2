"""ESD: Erasing Concepts from Diffusion Models (Gandikota, Materzyńska, Fiotto-Kaufman & Bau, ICCV 2023,
arXiv 2303.07345), trained by Lightning's ``fit``.

The trained UNet θ* learns to predict, for the concept c, the noise the frozen UNet θ predicts with the
concept's direction reversed (negative guidance η):

    L = || ε_θ*(x_t, c, t) − target ||²
    paper-era code:  target = ε_θ(x_t, t) − η (ε_θ(x_t, c, t) − ε_θ(x_t, t)),   η = 1
    current code:    target = ε_θ(x_t, c, t) − η (ε_θ(x_t, c, t) − ε_θ(x_t, t)), η = 2

x_t comes from a partial DDIM-``ddim_steps`` run from noise with prompt c at guidance ``start_guidance``
(3), stopped after a random ``t_enc`` steps; the training timestep t is uniform in the 1000-step bucket of
``t_enc``. The paper-era code samples x_t with θ* (the model being trained), the current code with θ.

θ is never a second UNet: the editor keeps a copy of the trained tensors only (its snapshot) and evaluates
θ with ``torch.func.functional_call`` on the same module.

Parameter sets (``params``), by name through the adapter: ``xattn`` (ESD-x: every parameter of every
cross-attention module), ``x-strict`` (their ``to_k``/``to_v``), ``selfattn`` (every self-attention
module), ``noxattn`` (ESD-u: every UNet parameter but cross-attention, the time embedding and the output
layers ``conv_norm_out``/``conv_out``), ``full`` (the whole UNet).
"""

from __future__ import annotations

from typing import Literal

import torch

from ..errors import UsageError
from .finetune import FineTuner

PARAMS = ("xattn", "x-strict", "selfattn", "noxattn", "full")
RECIPES = {  # (eta, lr, steps) of the paper-era CompVis code and of the current diffusers code
    "paper": {"eta": 1.0, "lr": 1e-5, "steps": 1000},
    "current": {"eta": 2.0, "lr": 5e-5, "steps": 200},
}


def parameter_set(unet: torch.nn.Module, params: str) -> dict[str, torch.nn.Parameter]:
    """ESD's trained parameters of a diffusers UNet, by UNet parameter name (works on a ``meta`` UNet too)."""
    from diffusers.models.attention_processor import Attention

    cross = [n for n, m in unet.named_modules() if isinstance(m, Attention) and m.is_cross_attention]
    in_cross = lambda n: any(n.startswith(c + ".") for c in cross)  # noqa: E731
    named = list(unet.named_parameters())
    if params == "xattn":
        return {n: p for n, p in named if in_cross(n)}
    if params == "x-strict":
        return {n: p for n, p in named if in_cross(n) and (".to_k." in n or ".to_v." in n)}
    if params == "selfattn":
        return {n: p for n, p in named if ".attn1." in n}
    if params == "full":
        return dict(named)
    skip = ("time_embedding.", "conv_norm_out.", "conv_out.")  # noxattn (ESD-u), as the paper-era code
    return {n: p for n, p in named if not in_cross(n) and not n.startswith(skip)}


class ESD(FineTuner):
    """ESD fine-tuning editor.

    Args:
        params: the trained parameter set (``xattn`` = ESD-x, ``noxattn`` = ESD-u, ``x-strict``,
            ``selfattn``, ``full``).
        recipe: ``paper`` (θ* samples x_t, target anchored on the unconditional prediction, η 1, lr 1e-5,
            1000 iterations) or ``current`` (θ samples x_t, anchored on the conditional one, η 2, lr 5e-5,
            200 iterations); ``eta``/``lr``/``steps`` override it.
        eta: negative guidance η.
        lr: Adam's learning rate.
        steps: optimisation steps of ``edit()`` (the per-case protocol, without a Trainer); ``fit`` runs
            ``--trainer.max_steps``.
        start_guidance: classifier-free guidance of the x_t sampling (3).
        ddim_steps: DDIM steps of the x_t sampling (50).
        size: image side of the training latents; ``None`` = the model's native size (the paper: 512).
        batch_size: samples per step and process (the authors: 1).
        gradient_checkpointing: see :class:`~edit_bench.editors.finetune.FineTuner`.
        seed: seeds every sample's concept, t_enc, t and noise (never the global RNG).
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    def __init__(self, params: Literal["xattn", "x-strict", "selfattn", "noxattn", "full"] = "xattn",
                 recipe: Literal["paper", "current"] = "paper", eta: float | None = None, lr: float | None = None,
                 steps: int | None = None, start_guidance: float = 3.0, ddim_steps: int = 50, size: int | None = None,
                 batch_size: int = 1, gradient_checkpointing: bool = False, seed: int = 0, base: str = "toy"):
        if params not in PARAMS:
            raise UsageError(f"unknown ESD parameter set {params!r}: use one of {', '.join(PARAMS)}")
        if recipe not in RECIPES:
            raise UsageError(f"unknown ESD recipe {recipe!r}: use paper or current")
        r = RECIPES[recipe]
        super().__init__(lr=r["lr"] if lr is None else lr, steps=r["steps"] if steps is None else steps,
                         batch_size=batch_size, gradient_checkpointing=gradient_checkpointing, seed=seed, base=base)
        if ddim_steps < 1:
            raise UsageError(f"ESD ddim_steps must be >= 1 (paper: 50), got {ddim_steps}")
        self.params, self.recipe = params, recipe
        self.eta = r["eta"] if eta is None else eta
        self.start_guidance, self.ddim_steps, self.size = start_guidance, ddim_steps, size

    # ------------------------------------------------------------------ what is trained
    def edited_parameters(self):
        out = {f"unet.{n}": p for n, p in parameter_set(self.t2i.unet, self.params).items()}
        if not out:
            raise UsageError(f"ESD parameter set {self.params!r} selects no parameter of this {self.t2i.family} UNet")
        return out

    def make_optimizer(self, params, lr):
        return torch.optim.Adam(params, lr=lr)

    # ------------------------------------------------------------------ the loss
    def _frozen(self) -> dict[str, torch.Tensor]:
        """θ: the original values of the trained tensors, by UNet parameter name (on the model's device)."""
        device = self.t2i.device
        if getattr(self, "_frozen_on", (None,))[0] != device:
            self._frozen_on = (device, {n.removeprefix("unet."): v.to(device) for n, v in self.snapshot().items()})
        return self._frozen_on[1]

    def theta_prediction(self, x, t, cond):
        """ε_θ: the frozen model's prediction, through the trained module with the original tensors."""
        return self.t2i.noise_prediction(x, t, cond, self.size, self._frozen())

    @torch.no_grad()
    def _x_t(self, cond, uncond, t_enc: int, gen: torch.Generator):
        """x_t after ``t_enc`` DDIM steps from noise with the concept at ``start_guidance``."""
        t2i = self.t2i
        size = self.size or t2i.native_size
        h = size // t2i.vae_scale_factor
        sched = t2i.make_scheduler("ddim")
        sched.set_timesteps(self.ddim_steps, device=t2i.device)
        x = torch.randn((1, t2i.unet.config.in_channels, h, h), generator=gen).to(t2i.device) * sched.init_noise_sigma
        both = type(cond).cat([uncond, cond])
        for t in sched.timesteps[:t_enc]:
            x2 = torch.cat([x, x])
            if self.recipe == "current":  # θ samples
                eps = self.theta_prediction(x2, t, both).float()
            else:  # paper-era: θ* samples
                eps = t2i.noise_prediction(x2, t, both, size).float()
            eps_u, eps_c = eps.chunk(2)
            x = sched.step(eps_u + self.start_guidance * (eps_c - eps_u), t, x).prev_sample
        return x

    def loss(self, concept: str, gen: torch.Generator) -> torch.Tensor:
        """One sample's ESD loss for ``concept`` (t_enc, t and noise from ``gen``)."""
        t2i = self.t2i
        t_enc = int(torch.randint(0, self.ddim_steps, (1,), generator=gen))
        n_train = int(t2i.scheduler_config.get("num_train_timesteps", 1000))
        lo = n_train * t_enc // self.ddim_steps
        hi = max(n_train * (t_enc + 1) // self.ddim_steps, lo + 1)
        t = torch.randint(lo, hi, (1,), generator=gen).to(t2i.device)
        with torch.no_grad():
            cond, uncond = t2i.condition([concept]), t2i.unconditional(1)
        x_t = self._x_t(cond, uncond, t_enc, gen)
        target = self.target(x_t, t, cond, uncond)
        e_n = t2i.noise_prediction(x_t, t, cond, self.size).float()
        return torch.nn.functional.mse_loss(e_n, target)

    @torch.no_grad()
    def target(self, x_t, t, cond, uncond) -> torch.Tensor:
        """What θ* learns to predict at (x_t, t, c): θ's prediction with the concept's direction reversed."""
        e_0 = self.theta_prediction(x_t, t, uncond).float()
        e_p = self.theta_prediction(x_t, t, cond).float()
        anchor = e_0 if self.recipe == "paper" else e_p
        return anchor - self.eta * (e_p - e_0)

    def batch_loss(self, requests, gens):
        concepts = [r.source for r in requests]
        return torch.stack([self.loss(concepts[int(torch.randint(len(concepts), (1,), generator=g))], g)
                            for g in gens]).mean()

    def report(self) -> dict:
        return {**super().report(), "recipe": self.recipe, "params": self.params}
