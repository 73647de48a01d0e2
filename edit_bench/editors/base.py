"""`Editor`: the LightningModule every editing method subclasses.

An editor owns a :class:`~edit_bench.models.T2IModel` and changes only the weights it declares in
``edited_parameters()``. The base class provides bitwise ``snapshot()``/``restore()``, the delta
checkpoint (safetensors) and one evaluation step (images for a batch of samples under its case's edit),
so a new method writes its constructor (its config, with paper defaults) and ``edit()``. Everything else
about evaluation (protocol, records, metrics, run directory) belongs to :mod:`edit_bench.evaluate`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from torch import Tensor

from ..errors import UsageError
from ..models import T2IModel, load_t2i
from ..models.delta import apply_delta, save_delta
from ..types import EditCase, EditRequest, GenerationBatch


class Editor(L.LightningModule):
    """Base class of editors.

    Class attributes (capabilities, read by tools and tests):
        edits: what ``edit()`` may change: ``"none"``, ``"cross_attn_kv"``, ``"text_encoder"`` or ``"unet"``.
        multi_request: whether ``edit()`` takes several requests at once (needed by the ``fixed`` protocol
            and by ``fit`` with several requests).
        needs_grad: ``edit()`` runs with gradients enabled (optimising editors).
        trains: the editor is trained by Lightning's ``fit`` loop (``training_step``), not edited in closed
            form; ``eval`` evaluates its delta.
        reference_reedits_per_seed: the method's reference script edits again for every seed (``bench``'s
            authors' loop does the same by default).
        families: the model families the editor has a form for (``sd1``, ``sd2``, ``sdxl``; ``sd3`` and ``flux``
            where it has an MMDiT form); another family is refused when the model loads.

    Args:
        base: the model spec for :func:`~edit_bench.models.load_t2i` (default: the shipped toy world).
    """

    edits: ClassVar[str] = "none"
    multi_request: ClassVar[bool] = False
    needs_grad: ClassVar[bool] = False
    trains: ClassVar[bool] = False
    reference_reedits_per_seed: ClassVar[bool] = False
    families: ClassVar[tuple[str, ...]] = ("sd1", "sd2", "sdxl")
    delta: str | None = None  # only the identity editor evaluates a saved delta

    def __init__(self, base: str = "toy"):
        super().__init__()
        self.save_hyperparameters()  # every subclass's constructor arguments: its checkpoint rebuilds it
        own = inspect.signature(type(self).__init__).parameters
        for k in [k for k in self.hparams if k not in own]:  # an intermediate base's arguments (FineTuner's)
            del self.hparams[k]
        for k, v in self.hparams.items():  # plain data: a checkpoint loads with torch.load(weights_only=True)
            if dataclasses.is_dataclass(v) and not isinstance(v, type):
                self.hparams[k] = dataclasses.asdict(v)
        self.base = base
        self.strict_loading = False  # checkpoints hold the edited parameters only (on_save_checkpoint)
        self._snapshot: dict[str, Tensor] | None = None
        self._active: str | None = None
        self.edit_times: list[float] = []
        self.conditions: list[float] = []  # condition numbers of the closed-form systems solved

    @property
    def t2i(self) -> T2IModel:
        """The model, loaded on first use (so a config is cheap to build and a missing model fails
        inside the command, with its own message)."""
        if "_t2i" not in self._modules:
            t2i = load_t2i(self.base)
            if t2i.family not in self.families:
                raise UsageError(f"{type(self).__name__} has no {t2i.family} form: it edits {', '.join(self.families)} "
                                 f"models; on {t2i.family} use an editor that lists it in `families` (the README's model table)")
            if self.delta is not None:  # validated whole before anything changes
                from ..models.delta import read_delta

                self._delta_tensors = read_delta(self.delta, t2i)
            self._t2i = t2i  # registered only once loaded whole
            if self.delta is not None:  # the original values are kept: a delta's baseline is the model without it
                self.snapshot()
                self._add_delta()
        return self._modules["_t2i"]

    @torch.no_grad()
    def _add_delta(self) -> None:
        for name, d in self._delta_tensors.items():
            p = self.t2i.get_parameter(name)
            p.add_(d.to(p.device, p.dtype))

    def as_loaded(self) -> None:
        """Back to the model as loaded: the base model, plus the delta when one was given."""
        self.restore()
        if self.delta is not None:
            self._add_delta()

    def configure_model(self) -> None:
        """Lightning calls this before moving the module: load the model in time and, when training,
        make exactly the edited parameters trainable."""
        from lightning.pytorch.trainer.states import TrainerFn

        t2i = self.t2i
        if self.trains and self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            # the original values, before Lightning restores a checkpoint (which it does right after this hook)
            self.snapshot()
            t2i.requires_grad_(False)
            for p in self.edited_parameters().values():
                p.requires_grad_(True)

    # ------------------------------------------------------------------ the method
    def edited_parameters(self) -> dict[str, torch.nn.Parameter]:
        """Exactly the weights ``edit()`` may change, by full name (``unet.…``, ``text_encoder.…``)."""
        return {}

    def cross_attn_kv(self, select: list[str] | None = None, with_to_k: bool = True) -> dict[str, torch.nn.Parameter]:
        """``to_k`` (optional) and ``to_v`` weights of the chosen cross-attention sites, by full name."""
        out = {}
        for site in self.t2i.cross_attn(select):
            k_name, v_name = site.param_names
            if with_to_k:
                out[k_name] = site.to_k.weight
            out[v_name] = site.to_v.weight
        return out

    def derived_prompts(self, requests: Sequence[EditRequest]) -> list[str]:
        """Every prompt ``edit()`` will build from ``requests`` and feed the text encoder (prefixes,
        templates), so that too-long ones fail before any output exists."""
        return []

    def check_fit(self, requests: Sequence[EditRequest], max_steps: int) -> None:
        """Called by ``fit`` before anything is written: raise a :class:`~edit_bench.errors.UsageError` for
        requests or a step count this editor cannot train on (e.g. missing data)."""

    def edit(self, requests: Sequence[EditRequest], preserve: Sequence[str] = ()) -> None:
        """Apply the edit in place. Subclasses implement it; the identity editor does nothing."""

    def report(self) -> dict:
        """What the method wants recorded in ``results.json`` / ``edit.json`` (e.g. statistics it used)."""
        if not self.conditions:
            return {}
        return {"ridge_condition": {"max": max(self.conditions), "min": min(self.conditions), "solves": len(self.conditions)}}

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, Tensor]:
        """Copy the edited parameters (once); ``restore()`` returns to exactly this state."""
        if self._snapshot is None:
            self._snapshot = {n: p.detach().clone() for n, p in self.edited_parameters().items()}
        return self._snapshot

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the snapshot, bit for bit."""
        if self._snapshot is not None:
            for n, p in self.edited_parameters().items():
                p.copy_(self._snapshot[n].to(p.device))
        self._active = None

    @torch.no_grad()
    def apply_edit(self, requests: Sequence[EditRequest], preserve: Sequence[str] = (), on_current: bool = False) -> float:
        """Restore, then edit; returns the edit's wall time in seconds (also kept in ``edit_times``).

        ``on_current``: edit the weights as they are now (the sequential protocol's next request on the already
        edited model): for the edit's duration the current weights are its starting point wherever the method
        reads "the original" (ESD's frozen teacher, RECE's and MACE's ``W0``, data drawn from the unedited model),
        and ``restore()`` still returns to the model as loaded.

        The edit runs where the model is, with autocast off: its numerics never depend on the protocol
        or on the run's mixed precision.
        """
        requests = list(requests)
        if len(requests) > 1 and not self.multi_request:
            raise UsageError(f"{type(self).__name__} edits one request at a time; got {len(requests)}")
        loaded = self.snapshot()
        if on_current:
            self._snapshot = {n: p.detach().clone() for n, p in self.edited_parameters().items()}
        else:
            self.restore()
        device = self.t2i.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        try:
            with torch.autocast(device.type, enabled=False), (torch.enable_grad() if self.needs_grad else contextlib.nullcontext()):
                self.edit(requests, preserve)
        finally:
            self._snapshot = loaded
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        self.edit_times.append(dt)
        return dt

    @contextlib.contextmanager
    def original_weights(self):
        """``with editor.original_weights(): ...`` runs the block on the snapshot's (original) values of the edited
        parameters and puts the current ones back after, bit for bit (e.g. data an editor derives from the
        unedited model, whatever a resumed training has done)."""
        if self._snapshot is None:
            yield self
            return
        with torch.no_grad():
            current = {n: p.detach().clone() for n, p in self.edited_parameters().items()}
            for n, p in self.edited_parameters().items():
                p.copy_(self._snapshot[n].to(p.device))
        try:
            yield self
        finally:
            with torch.no_grad():
                for n, p in self.edited_parameters().items():
                    p.copy_(current[n])

    @contextlib.contextmanager
    def edited(self, requests: Sequence[EditRequest], preserve: Sequence[str] = ()):
        """``with editor.edited(requests): ...`` edits, then restores on exit."""
        self.apply_edit(requests, preserve)
        try:
            yield self
        finally:
            self.restore()

    # ------------------------------------------------------------------ delta checkpoints
    def delta_state_dict(self) -> dict[str, Tensor]:
        """``{name: W_edited - W_original}`` in float32 for every edited parameter that changed."""
        if self._snapshot is None:
            raise RuntimeError("no edit has been made: call apply_edit(...) first")
        out = {}
        for n, p in self.edited_parameters().items():
            d = p.detach().float() - self._snapshot[n].to(p.device).float()
            if torch.any(d != 0):
                out[n] = d.cpu().contiguous()
        return out

    def save_delta(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write the delta as safetensors, atomically, with the editor and the model's identity."""
        return save_delta(path, self.delta_state_dict(), self.t2i, {"editor": type(self).__name__, **(metadata or {})})

    def load_delta(self, path: str | Path) -> None:
        """Add a saved delta to the model's weights; validated whole first (a failed load changes nothing)."""
        apply_delta(self.t2i, path)

    # ------------------------------------------------------------------ checkpoints of trained editors
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """A Lightning checkpoint holds the edited parameters (and the optimizer), never the whole pipeline."""
        keep = {f"_t2i.{n}" for n in self.edited_parameters()}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load a checkpoint's edited tensors into the model (loaded first: it is built lazily). Tensors the
        editor does not have are an error; the frozen ones it lacks are the point."""
        self.t2i
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if result.unexpected_keys:
            raise UsageError(f"the checkpoint holds tensors {type(self).__name__} does not have: {result.unexpected_keys[:3]}")
        missing = [k for k in result.missing_keys if k.removeprefix("_t2i.") in self.edited_parameters()]
        return type(result)(missing, [])  # the frozen tensors come from the base model, not the checkpoint

    # ------------------------------------------------------------------ evaluation
    def activate(self, case: EditCase) -> float | None:
        """Make the model the edited model of ``case``; returns the edit's seconds, or ``None`` when the
        model already is (the same case as the last batch)."""
        if self._active == case.id:
            return None
        dt = self.apply_edit([case.request], case.preserve)
        self._active = case.id
        return dt

    def predict_step(self, batch: GenerationBatch, batch_idx: int = 0) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] for the batch's samples, under its case's edit when it has one."""
        if batch.case is not None:
            self.activate(batch.case)
        return self.t2i.generate([s.pair.prompt for s in batch.samples], [s.seed for s in batch.samples], batch.sampler)

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, (GenerationBatch, dict)):
            return batch  # prompts, seeds and requests: nothing to move
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def configure_optimizers(self):
        return None
