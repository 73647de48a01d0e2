"""ESD: Erasing Concepts from Diffusion Models (Gandikota, Materzyńska, Fiotto-Kaufman & Bau, ICCV 2023,
arXiv 2303.07345), trained by Lightning's ``fit``.

The trained UNet θ* learns to predict, for the concept c, the noise the frozen UNet θ predicts with the
concept's direction reversed (negative guidance η):

    L = || ε_θ*(x_t, c, t) − target ||²
    paper-era code:  target = ε_θ(x_t, t) − η (ε_θ(x_t, c, t) − ε_θ(x_t, t)),   η = 1
    current code:    target = ε_θ(x_t, c, t) − η (ε_θ(x_t, c, t) − ε_θ(x_t, t)), η = 2

(with η − 1 in place of η the two targets are the same: ``current`` at η 2 trains ``paper``'s η 1 target; the
recipes differ in how x_t is drawn, the learning rate, the steps and the parameter sets.)

How x_t and t are drawn, per recipe, each as its authors' code does:

- ``paper`` (the CompVis ``train-esd.py``): t_enc uniform in [0, S) (S = ``sample_steps``, 50); x_t from
  noise by DDIM (η 0) with c at guidance ``start_guidance`` (3), sampled by θ* (the model being trained), on
  CompVis's grid 1, 21, …, 981 with its last step dropped (``t_start = -1``): the loop starts at 961 and runs
  S − t_enc steps (S − 1 for t_enc = 0), stopping at the noise level of DDIM step t_enc − 2; the loss is then
  taken at t uniform in [1000·t_enc/S, 1000·(t_enc+1)/S). So t sits 39–58 timesteps above x_t's own noise
  level (at S = 50), as in the authors' runs.
- ``current`` (the diffusers ``esd_sd.py``): k uniform in [0, S); x_t after k steps of the model's own
  scheduler (its pipeline's default: PNDM for SD-1.x, Euler for SDXL) from noise with c at
  ``start_guidance``, sampled by θ (the frozen model); the loss is taken at ``timesteps[k]``, x_t's own level
  (the UNet sees ``scale_model_input(x_t)``, the identity for PNDM/DDIM; the authors' SDXL script leaves the
  Euler input unscaled).

θ is never a second UNet: the editor keeps a copy of the trained tensors only (its snapshot) and evaluates
θ with ``torch.func.functional_call`` on the same module.

On SD3 and FLUX (no published ESD code) ESD runs recipe ``current`` with the model's own flow-matching sampler
(FLUX: the start guidance goes to its guidance embedding) and the same target in the velocity the transformer
predicts (a fixed affine function of ε at a given x_t and t, so the reversed direction is the same); the joint
attention's text side plays cross-attention's part (:func:`edit_bench.models.parameter_sets.mmdit_parameter_set`).

Parameter sets (``params``), by name through the adapter, each under the recipe whose code defines it:

- ``paper`` (``train_method`` of ``train-esd.py``, every parameter whose CompVis name matches): ``xattn``
  (ESD-x: every parameter of every cross-attention module), ``noxattn`` (ESD-u: every UNet parameter but
  cross-attention, the time embedding and the output layers ``conv_norm_out``/``conv_out``), ``selfattn``
  (every self-attention module), ``notime`` (all but the time embedding and the output layers), ``full``.
- ``current`` (``get_esd_trainable_parameters`` of ``esd_sd.py``: the parameters of the ``Linear``/``Conv2d``
  modules, so never a norm layer): ``esd-x`` (those inside cross-attention), ``esd-u`` (those outside it,
  the time embedding, ``conv_in`` and ``conv_out`` included), ``esd-all`` (all of them), ``esd-x-strict``
  (cross-attention ``to_k``/``to_v``).
"""

from __future__ import annotations

import torch

from ..errors import UsageError
from ..models.parameter_sets import CURRENT_SETS, PAPER_SETS
from .finetune import FineTuner

PARAMS = {"paper": PAPER_SETS, "current": CURRENT_SETS}  # each recipe's parameter sets (the adapter finds them)
RECIPES = {  # (eta, lr, steps, the default parameter set) of the paper-era CompVis code and of the current diffusers code
    "paper": {"eta": 1.0, "lr": 1e-5, "steps": 1000, "params": "xattn"},
    "current": {"eta": 2.0, "lr": 5e-5, "steps": 200, "params": "esd-x"},
}


class ESD(FineTuner):
    """ESD fine-tuning editor.

    Args:
        params: the trained parameter set; ``None`` = the recipe's ESD-x (``xattn`` under ``paper``, ``esd-x``
            under ``current``). ESD-u is ``noxattn`` / ``esd-u``.
        recipe: ``paper`` (the CompVis code: θ* samples x_t by DDIM, target anchored on the unconditional
            prediction, η 1, lr 1e-5, 1000 iterations) or ``current`` (the diffusers ``esd_sd.py``: θ samples x_t
            with the model's own scheduler, anchored on the conditional prediction, η 2, lr 5e-5, 200
            iterations); ``eta``/``lr``/``steps`` override it.
        eta: negative guidance η.
        lr: Adam's learning rate.
        steps: optimisation steps of ``edit()`` (the per-case protocol, without a Trainer); ``fit`` runs
            ``--trainer.max_steps``.
        start_guidance: classifier-free guidance of the x_t sampling (3; the authors' SDXL script: 2).
        sample_steps: the x_t sampler's steps S (50): CompVis's ``ddim_steps`` under ``paper``, the scheduler's
            ``num_inference_steps`` under ``current``.
        size: image side of the training latents; ``None`` = the model's native size (the paper: 512).
        batch_size: samples per step and process (the authors: 1).
        gradient_checkpointing: see :class:`~edit_bench.editors.finetune.FineTuner`.
        seed: seeds every sample's concept, t_enc, t and noise (never the global RNG).
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    def __init__(self, params: str | None = None, recipe: str = "paper", eta: float | None = None,
                 lr: float | None = None, steps: int | None = None, start_guidance: float = 3.0, sample_steps: int = 50,
                 size: int | None = None, batch_size: int = 1, gradient_checkpointing: bool = False, seed: int = 0,
                 base: str = "toy"):
        if recipe not in RECIPES:
            raise UsageError(f"unknown ESD recipe {recipe!r}: use paper or current")
        r = RECIPES[recipe]
        params = r["params"] if params is None else params
        if params not in PARAMS[recipe]:
            other = next((k for k, v in PARAMS.items() if params in v), None)
            hint = (f"it is the {other} code's set: use --model.init_args.recipe {other}, or --model.init_args.params "
                    f"one of {', '.join(PARAMS[recipe])}" if other
                    else f"use --model.init_args.params one of {', '.join(PARAMS[recipe])}")
            raise UsageError(f"ESD parameter set {params!r} does not exist under recipe {recipe!r}: {hint}")
        super().__init__(lr=r["lr"] if lr is None else lr, steps=r["steps"] if steps is None else steps,
                         batch_size=batch_size, gradient_checkpointing=gradient_checkpointing, seed=seed, base=base)
        if sample_steps < 2:
            raise UsageError(f"ESD sample_steps must be >= 2 (the authors: 50), got {sample_steps}")
        if recipe == "paper" and 1000 % sample_steps:
            raise UsageError(f"ESD recipe paper samples on CompVis's DDIM grid, which needs sample_steps dividing 1000 "
                             f"(the authors: 50), got {sample_steps}")
        if start_guidance < 1:
            raise UsageError(f"ESD start_guidance must be >= 1 (the authors: 3), got {start_guidance}")
        self.params, self.recipe = params, recipe
        self.eta = r["eta"] if eta is None else eta
        self.start_guidance, self.sample_steps, self.size = start_guidance, sample_steps, size
        self._frozen_on: tuple = (None, None, None)  # (device, reference, θ on that device) of the last teacher
        self.resolved(params=self.params, eta=self.eta, lr=self.lr, steps=self.steps)  # the recipe's values, as used

    # ------------------------------------------------------------------ what is trained
    families = ("sd1", "sd2", "sdxl", "sd3", "flux")  # SD3 / FLUX: recipe current, the text side as ESD-x
    contract_args = {"steps": 2, "sample_steps": 4, "lr": 1e-3}
    derives = {"frozen teacher θ": "reference"}

    def edited_parameters(self):
        if self.t2i.family in ("sd3", "flux"):
            if self.recipe != "current":
                raise UsageError(f"ESD recipe paper samples on CompVis's DDIM grid, which a {self.t2i.family} model "
                                 "(flow matching) has not: use --model.init_args.recipe current")
        out = self.t2i.parameter_set(self.params)
        if not out:
            raise UsageError(f"ESD parameter set {self.params!r} selects no parameter of this {self.t2i.family} denoiser")
        return out

    def make_optimizer(self, params, lr):
        return torch.optim.Adam(params, lr=lr)

    # ------------------------------------------------------------------ the loss
    def _frozen(self) -> dict[str, torch.Tensor]:
        """θ: the original values of the trained tensors, by the denoiser's parameter name (on the model's device)."""
        device, original = self.t2i.device, self.reference()  # a sequential edit's teacher is the model it starts from
        if self._frozen_on[0] != device or self._frozen_on[1] is not original:
            self._frozen_on = (device, original, {n.partition(".")[2]: v.to(device) for n, v in original.items()})
        return self._frozen_on[2]

    def theta_prediction(self, x, t, cond):
        """ε_θ: the frozen model's prediction, through the trained module with the original tensors."""
        return self.t2i.noise_prediction(x, t, cond, self.size, self._frozen())

    def sampler(self):
        """A fresh scheduler of the recipe's x_t sampler, its timesteps set: CompVis's DDIM (η 0, no clipping,
        the last alpha from ``alphas_cumprod[0]``) under ``paper``, the model's own scheduler under ``current``."""
        t2i = self.t2i
        if self.recipe == "paper":
            from diffusers import DDIMScheduler

            sched = DDIMScheduler.from_config(t2i.scheduler_config, timestep_spacing="leading", steps_offset=1,
                                              set_alpha_to_one=False, clip_sample=False, thresholding=False)
            sched.set_timesteps(self.sample_steps, device=t2i.device)
        else:
            sched = t2i.make_scheduler(t2i.default_scheduler)
            t2i.set_timesteps(sched, self.sample_steps, t2i.latent_shape(self.size or t2i.native_size)[1], t2i.device)
        return sched

    def sampling_plan(self, gen: torch.Generator) -> tuple[int, int, int]:
        """One sample's ``(first, n, t)``: the sampler runs ``timesteps[first : first + n]`` from noise and the
        loss is taken at timestep ``t`` (drawn from ``gen``: t_enc or k, then t under ``paper``)."""
        S = self.sample_steps
        k = int(torch.randint(0, S, (1,), generator=gen))
        if self.recipe == "current":
            return 0, k, -1  # t = timesteps[k], read from the scheduler
        # CompVis: ddim_sampling runs its grid without the last entry (t_start = -1), index counting down from
        # S - 2, and breaks after index + 1 == t_enc; t_enc = 0 never breaks
        n = S - k if k >= 1 else S - 1
        n_train = int(self.t2i.scheduler_config.get("num_train_timesteps", 1000))
        lo, hi = round(k / S * n_train), round((k + 1) / S * n_train)
        return 1, n, int(torch.randint(lo, hi, (1,), generator=gen))

    @torch.no_grad()
    def draw_x_t(self, cond, uncond, gen: torch.Generator):
        """One sample's ``(x_t, t)`` as the recipe draws them: the UNet's input (``scale_model_input`` applied)
        and the training timestep ``[1]``."""
        t2i = self.t2i
        size = self.size or t2i.native_size
        c, h = t2i.latent_shape(size)
        sched = self.sampler()
        first, n, t = self.sampling_plan(gen)
        # flow matching (SD3/FLUX) starts from unit noise and scales no input
        scale = getattr(sched, "scale_model_input", lambda x, s: x)
        x = torch.randn((1, c, h, h), generator=gen).to(t2i.device) * getattr(sched, "init_noise_sigma", 1.0)
        theta = self._frozen() if self.recipe == "current" else None  # θ samples (current), θ* (paper-era)
        for s in sched.timesteps[first:first + n]:
            guided = t2i.guided_prediction(scale(x, s), s, cond, uncond, self.start_guidance, size, theta)
            x = sched.step(guided, s, x).prev_sample
        if self.recipe == "current":
            t_k = sched.timesteps[n]
            return scale(x, t_k), t_k.reshape(1).to(t2i.device)
        return x, torch.tensor([t], device=t2i.device)

    def loss(self, concept: str, gen: torch.Generator) -> torch.Tensor:
        """One sample's ESD loss for ``concept`` (the sampler's steps, t and noise from ``gen``)."""
        t2i = self.t2i
        with torch.no_grad():
            cond, uncond = t2i.condition([concept]), t2i.unconditional(1)
        x_t, t = self.draw_x_t(cond, uncond, gen)
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
