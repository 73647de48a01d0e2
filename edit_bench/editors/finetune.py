"""`FineTuner`: the base of editors trained by gradient steps (ESD, Concept Ablation).

One optimisation step is the mean of ``batch_size`` sample losses. Every random choice of a sample (the
request, the timestep, the noise, the anchor image) comes from its own generator, seeded by the editor's
seed, the optimiser step and the sample's **global** index ``(micro-batch · world size + rank) · batch_size +
j``. So the samples of a step do not depend on how they are split: 2 processes with batch 1 see the samples
1 process with batch 2 sees (and ``accumulate_grad_batches 2`` with batch 1 too), and a run resumed from a
checkpoint continues with exactly the samples the uninterrupted run would have drawn.

The same step runs under Lightning's ``fit`` (``training_step``, ``configure_optimizers``; precision, devices,
strategy and accumulation are the Trainer's) and without a Trainer in ``edit()`` (``steps`` steps; the
per-case and ``fixed`` protocols of ``eval``). The two are the same training at ``--trainer.precision 32-true``;
under a mixed precision ``fit`` runs the step in autocast while ``edit()`` (like every edit) runs without it.
"""

from __future__ import annotations

import abc
import hashlib
import math
from collections.abc import Sequence

import torch

from ..errors import UsageError
from ..types import EditRequest
from .base import Editor


CHECK_EVERY = 25  # micro-batch losses read back from the device (and checked) at once


def sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    """The CPU generator of sample ``index`` at optimiser step ``step`` (independent of batch split)."""
    digest = hashlib.sha256(f"{seed}/{step}/{index}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class FineTuner(Editor, metaclass=abc.ABCMeta):
    """Base class of fine-tuning editors; subclasses write ``edited_parameters``, ``batch_loss`` and
    ``make_optimizer`` (and ``prepare`` when they need data before the first step).

    Args:
        lr: the optimiser's learning rate (before any scaling a subclass applies, see ``effective_lr``).
        steps: optimisation steps of ``edit()`` (no Trainer); ``fit`` runs ``--trainer.max_steps``.
        batch_size: samples per step and process.
        max_grad_norm: gradient-norm clipping of the trained tensors (``None``: none).
        gradient_checkpointing: recompute the UNet's activations in the backward pass (diffusers' gradient
            checkpointing): less memory, about a third more compute per step.
        seed: seeds every sample's generator (never the global RNG).
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    # abstract (batch_loss, make_optimizer): not an editor by itself, discover() skips it
    edits = "denoiser"
    multi_request = True
    needs_grad = True
    trains = True

    def __init__(self, lr: float, steps: int, batch_size: int = 1, max_grad_norm: float | None = None,
                 gradient_checkpointing: bool = False, seed: int = 0, base: str = "toy"):
        super().__init__(base=base)
        name = type(self).__name__
        if lr <= 0:
            raise UsageError(f"{name} lr must be > 0, got {lr}")
        if steps < 1:
            raise UsageError(f"{name} steps must be >= 1, got {steps}")
        if batch_size < 1:
            raise UsageError(f"{name} batch_size must be >= 1, got {batch_size}")
        if max_grad_norm is not None and max_grad_norm <= 0:
            raise UsageError(f"{name} max_grad_norm must be > 0 or null, got {max_grad_norm}")
        self.lr, self.steps, self.batch_size = lr, steps, batch_size
        self.max_grad_norm, self.gradient_checkpointing, self.seed = max_grad_norm, gradient_checkpointing, seed
        self.losses: list[float] = []
        # state made while editing, declared here: the losses not yet read back, whether Lightning's fit runs, the
        # requests the last preparation was for, the optimiser steps of the last fit, the DDPM noise scheduler
        self._pending: list[torch.Tensor] = []
        self._in_fit = False
        self._prepared = None
        self._optimizer_steps: int | None = None
        self._ddpm = None

    def noise_scheduler(self):
        """The model's DDPM scheduler (its training noise schedule), made once."""
        if self._ddpm is None:
            self._ddpm = self.t2i.make_scheduler("ddpm")
        return self._ddpm

    # ------------------------------------------------------------------ what subclasses write
    @abc.abstractmethod
    def batch_loss(self, requests: Sequence[EditRequest], gens: list[torch.Generator]) -> torch.Tensor:
        """The mean loss of one sample per generator."""

    @abc.abstractmethod
    def make_optimizer(self, params: list[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        """The optimiser of the trained tensors."""

    def prepare(self, requests: Sequence[EditRequest]) -> None:
        """Called before the first step with the requests to train on (e.g. to make anchor images)."""

    def mask_gradients(self) -> None:
        """Called after the backward pass and before clipping and the optimiser step (e.g. to train only some rows)."""

    def on_before_optimizer_step(self, optimizer) -> None:
        self.mask_gradients()

    def effective_lr(self, world_size: int = 1, accumulate: int = 1) -> float:
        """The learning rate the optimiser gets (Concept Ablation scales it by the global batch)."""
        return self.lr

    # ------------------------------------------------------------------ one step
    def _gens(self, step: int, micro: int = 0, world: int = 1, rank: int = 0) -> list[torch.Generator]:
        first = (micro * world + rank) * self.batch_size
        return [sample_generator(self.seed, step, first + j) for j in range(self.batch_size)]

    def _set_checkpointing(self, on: bool) -> None:
        unet = self.t2i.denoiser
        if on:
            unet.enable_gradient_checkpointing()
        elif getattr(unet, "is_gradient_checkpointing", False):
            unet.disable_gradient_checkpointing()

    def _record(self, loss: torch.Tensor) -> None:
        """Keep a micro-batch's loss on its device; every ``CHECK_EVERY`` of them are read back at once (one device
        sync, not one per step) and checked."""
        self._pending.append(loss.detach())
        if len(self._pending) >= CHECK_EVERY:
            self._flush_losses()

    def _flush_losses(self) -> None:
        """Read the pending losses back and fail on a non-finite one; under ``fit`` on several processes every
        rank takes the decision together (a rank that raised alone would leave the others waiting in the next
        all-reduce)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        values = torch.stack(pending).float().cpu().tolist()
        first = len(self.losses)
        self.losses.extend(values)
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        decide = bad is not None
        if self._in_fit and self.trainer.world_size > 1:
            decide = self.trainer.strategy.reduce_boolean_decision(decide, all=False)
        if decide:
            where = f"is {values[bad]} at step {first + bad + 1}" if bad is not None else "is not finite on another process"
            raise UsageError(f"{type(self).__name__} loss {where}: lower --model.init_args.lr")

    # ------------------------------------------------------------------ Lightning's fit
    def _requests(self, batch) -> list[EditRequest]:
        requests = list(batch["requests"])
        if not requests:
            raise UsageError(f"{type(self).__name__} has no request to train on")
        return requests

    def on_fit_start(self) -> None:
        self._set_checkpointing(self.gradient_checkpointing)
        self._prepared = None
        self._in_fit = True

    def on_fit_end(self) -> None:
        self._flush_losses()
        self._in_fit = False
        self._set_checkpointing(False)
        self._optimizer_steps = self.global_step

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The edited tensors (the base class) and every loss so far, so a resumed fit's ``edit.json`` curve starts at
        step 0, not at the resume."""
        super().on_save_checkpoint(checkpoint)
        self._save_losses(checkpoint)

    def _save_losses(self, checkpoint: dict) -> None:
        self._flush_losses()
        checkpoint["edit_bench_losses"] = list(self.losses)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.losses = list(checkpoint.get("edit_bench_losses", []))

    def training_step(self, batch, batch_idx):
        trainer = self.trainer
        requests = self._requests(batch)
        if self._prepared != requests:  # once per fit, outside autocast and autograd,
            # by the unedited model whatever a resumed run has already trained
            with torch.autocast(self.device.type, enabled=False), torch.no_grad(), self.original_weights():
                self.prepare(requests)
            self._prepared = requests
        micro = batch_idx % trainer.accumulate_grad_batches
        loss = self.batch_loss(requests, self._gens(self.global_step, micro, trainer.world_size, self.global_rank))
        self._record(loss.detach())
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        t = self.trainer
        lr = self.lr_used = self.effective_lr(t.world_size, t.accumulate_grad_batches)
        return self.make_optimizer(list(self.edited_parameters().values()), lr)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        if gradient_clip_val is None and self.max_grad_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.max_grad_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    # ------------------------------------------------------------------ the per-case protocol (no Trainer)
    def edit(self, requests, preserve=()):
        requests = list(requests)
        with torch.no_grad(), self.original_weights():  # data of the unedited model (the origin), also under on_current
            self.prepare(requests)
        named = self.edited_parameters()
        params = list(named.values())
        for p in params:
            p.requires_grad_(True)
        opt = self.make_optimizer(params, self.effective_lr())
        self.lr_used = self.effective_lr()
        self._set_checkpointing(self.gradient_checkpointing)
        try:
            self._optimise(requests, params, opt)
        finally:
            self._pending = []
            self._set_checkpointing(False)
            for p in params:
                p.requires_grad_(False)
                p.grad = None

    def _optimise(self, requests, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, first: int = 0) -> None:
        """``steps`` optimiser steps without a Trainer, numbered from ``first`` (every edit() draws the same samples:
        an edit is a function of its requests). SIGTERM/SIGINT stop it between steps (the edit in flight is dropped: a
        rerun makes it again, from its first step, as an edit is a function of its requests)."""
        from .. import signals

        for step in range(first, first + self.steps):
            signals.check(f"{type(self).__name__}'s edit in flight was dropped at step {step - first} of {self.steps}; "
                          "rerun the same command to resume")
            loss = self.batch_loss(requests, self._gens(step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            self.mask_gradients()
            if self.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            opt.step()
            self._record(loss.detach())
        self._flush_losses()

    def report(self) -> dict:
        self._flush_losses()
        n = len(self.losses)  # one loss per micro-batch under fit's accumulation, per step in edit()
        blocks = min(n, 10)  # the loss curve: the mean loss of 10 consecutive blocks of the run
        chunks = [self.losses[i * n // blocks:(i + 1) * n // blocks] for i in range(blocks)]
        curve = [sum(c) / len(c) for c in chunks]
        return {"steps": n if self._optimizer_steps is None else self._optimizer_steps, "losses": n, "first_loss": self.losses[0] if n else None,
                "final_loss": self.losses[-1] if n else None, "loss_curve": [round(x, 5) for x in curve],
                "batch_size": self.batch_size, "lr": getattr(self, "lr_used", None), "trained_tensors": len(self.edited_parameters()),
                "trained_parameters": sum(p.numel() for p in self.edited_parameters().values())}
