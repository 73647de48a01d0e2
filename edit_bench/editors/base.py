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
        edits: what ``edit()`` may change: ``"none"``, ``"cross_attn_kv"``, ``"text_encoder"`` or ``"denoiser"`` (the UNet or the MMDiT transformer).
        multi_request: whether ``edit()`` takes several requests at once (needed by the ``fixed`` protocol
            and by ``fit`` with several requests).
        needs_grad: ``edit()`` runs with gradients enabled (optimising editors).
        trains: the editor is trained by Lightning's ``fit`` loop (``training_step``), not edited in closed
            form; ``eval`` evaluates its delta.
        reference_reedits_per_seed: the method's reference script edits again for every seed (``bench``'s
            authors' loop does the same by default).
        contract_args: constructor arguments of the editor's small-budget form, which the contract checker
            (:mod:`edit_bench.testing`) builds on tiny random models: the contract is about which weights change and how
            state round-trips, not about a good edit (e.g. a prior over 500 captions instead of 30,000, 2 training steps).
        ddp_unused_parameters: some trained parameters get no gradient at a step (MACE trains one LoRA per concept at
            a time): under DDP, ``fit`` tells the strategy to find unused parameters.
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
    ddp_unused_parameters: ClassVar[bool] = False
    contract_args: ClassVar[dict] = {}
    # What the editor derives from a model and from which weights: ``origin`` (the model as loaded, whatever was
    # loaded or edited since), ``reference`` (the weights the edit in progress starts from: the origin, or the current
    # weights under on_current) or ``current``. A cache of such data is keyed by the identity or a digest of those weights.
    derives: ClassVar[dict[str, str]] = {}
    families: ClassVar[tuple[str, ...]] = ("sd1", "sd2", "sdxl")
    # The constructor arguments that name files or folders, by role: an ``input`` decides the edit (its content is
    # digested into the provenance, and it must exist before anything runs); a ``cache`` or ``output`` is written by
    # the run (never digested: statistics written into it must not block a resume). A path-valued argument not
    # declared here is digested as an input.
    files: ClassVar[dict[str, str]] = {}
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
        self._origin: dict[str, Tensor] | None = None  # the edited tensors as loaded (before a delta or any state)
        self._reference: dict[str, Tensor] | None = None  # an on_current edit's starting point, while it runs
        self._active: str | None = None
        self.edit_times: list[float] = []
        self.conditions: list[float] = []  # condition numbers of the closed-form systems solved

    def resolved(self, **values) -> None:
        """Record the values a constructor resolved from a ``None`` default (a recipe's learning rate, the corpus of
        the model's world) in ``hparams``, so the provenance, ``results.json`` and a checkpoint hold what is used."""
        for k, v in values.items():
            self.hparams[k] = list(v) if isinstance(v, tuple) else v

    def input_files(self) -> dict[str, str]:
        """``{argument: path}`` of the declared input files this editor reads (checked and digested before anything
        runs); editors that read further files named inside an input add them here."""
        return {k: v for k, v in self.hparams.items() if self.files.get(k) == "input" and isinstance(v, str) and v}

    def check_inputs(self) -> None:
        """Every declared input file exists: one line naming the argument, before anything is written."""
        from ..io import resolve_path

        for k, v in self.input_files().items():
            try:
                resolve_path(v)
            except UsageError as e:
                raise UsageError(f"{type(self).__name__} {k}: {e}; fix --model.init_args.{k}") from None

    @property
    def t2i(self) -> T2IModel:
        """The model, loaded on first use (so a config is cheap to build and a missing model fails
        inside the command, with its own message)."""
        if "_t2i" not in self._modules:
            self.use_model(load_t2i(self.base))
        return self._modules["_t2i"]

    def use_model(self, t2i: T2IModel) -> None:
        """Edit ``t2i`` (a model loaded once and shared by several editors in turn, each restoring its own weights
        after an edit): its current weights become this editor's origin."""
        if "_t2i" in self._modules:
            raise UsageError(f"{type(self).__name__} already has its model: give use_model() a fresh editor")
        if t2i.family not in self.families:
            raise UsageError(f"{type(self).__name__} has no {t2i.family} form: it edits {', '.join(self.families)} "
                             f"models; on {t2i.family} use an editor that lists it in `families` (the README's model table)")
        if self.delta is not None:  # validated whole before anything changes
            from ..models.delta import read_delta

            self._delta_tensors = read_delta(self.delta, t2i)
        self._t2i = t2i  # registered only once loaded whole
        # the origin, before a delta, a checkpoint or a sequential state is applied: a delta's baseline is the
        # model without it, and "the unedited model" means this whatever a resumed run has done since
        self._origin = {n: p.detach().clone() for n, p in self.edited_parameters().items()}
        if self.delta is not None:
            self._add_delta()

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

        t2i = self.t2i  # loading takes the origin, before Lightning restores a checkpoint (right after this hook)
        if self.trains and self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
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
    # One origin per editor: the edited tensors as loaded, taken when the model loads (before a delta, a checkpoint
    # or a sequential state file is applied). ``restore()`` returns to it, ``original_weights()`` runs on it and the
    # delta is measured from it. An ``on_current`` edit (the sequential protocol) starts from the weights as they are:
    # for its duration ``reference()`` is that starting point (ESD's frozen teacher, RECE's and MACE's W0), while data
    # "of the unedited model" (anchors, generated images, attack images and teachers) is always drawn from the origin.
    def origin(self) -> dict[str, Tensor]:
        """The edited tensors' values as loaded (taken when the model loads; never changes)."""
        self.t2i
        if self._origin is None:
            raise UsageError(f"{type(self).__name__} has no origin: its model was not loaded through Editor.t2i, so "
                             "'the unedited model' is unknown; load it through the editor before editing")
        return self._origin

    def snapshot(self) -> dict[str, Tensor]:
        """The origin (kept for callers of the earlier API): ``restore()`` returns to exactly this state."""
        return self.origin()

    def reference(self) -> dict[str, Tensor]:
        """The starting point of the edit in progress: the weights before it under ``on_current``, else the origin."""
        return self._reference if self._reference is not None else self.origin()

    def _origin_of(self, params: dict) -> dict[str, Tensor]:
        origin = self.origin()
        missing = [n for n in params if n not in origin]
        if missing:
            raise UsageError(f"{type(self).__name__}'s edited_parameters() names {missing[0]}, which was not among them when "
                             "the model loaded (no origin value): edited_parameters() must not depend on the edit")
        return origin

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the origin, bit for bit."""
        params = self.edited_parameters()
        origin = self._origin_of(params)
        for n, p in params.items():
            p.copy_(origin[n].to(p.device))
        self._active = None

    @torch.no_grad()
    def apply_edit(self, requests: Sequence[EditRequest], preserve: Sequence[str] = (), on_current: bool = False) -> float:
        """Restore, then edit; returns the edit's wall time in seconds (also kept in ``edit_times``).

        ``on_current``: edit the weights as they are now (the sequential protocol's next request on the already
        edited model): for the edit's duration ``reference()`` is the current weights (ESD's frozen teacher, RECE's
        and MACE's ``W0``); ``original_weights()`` and ``restore()`` still mean the origin (the model as loaded).

        The edit runs where the model is, with autocast off: its numerics never depend on the protocol
        or on the run's mixed precision.
        """
        requests = list(requests)
        if len(requests) > 1 and not self.multi_request:
            raise UsageError(f"{type(self).__name__} edits one request at a time; got {len(requests)}")
        if on_current:
            self._reference = {n: p.detach().clone() for n, p in self.edited_parameters().items()}
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
            self._reference = None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        dt = time.perf_counter() - t0
        self.edit_times.append(dt)
        return dt

    @contextlib.contextmanager
    def original_weights(self):
        """``with editor.original_weights(): ...`` runs the block on the origin's values of the edited parameters (the
        model as loaded, whatever a resumed, sequential or training run has done since) and puts the current ones back
        after, bit for bit. Raises :class:`~edit_bench.errors.UsageError` when there is no origin."""
        params = self.edited_parameters()
        origin = self._origin_of(params)
        with torch.no_grad():
            current = {n: p.detach().clone() for n, p in params.items()}
            for n, p in params.items():
                p.copy_(origin[n].to(p.device))
        try:
            yield self
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(current[n])

    @contextlib.contextmanager
    def edited(self, requests: Sequence[EditRequest], preserve: Sequence[str] = ()):
        """``with editor.edited(requests): ...`` edits, then restores on exit."""
        self.apply_edit(requests, preserve)
        try:
            yield self
        finally:
            self.restore()

    @torch.no_grad()
    def weight_change(self) -> dict:
        """How far the edited weights are from the origin now (the side-effect measure of Genμ and of "how much did the
        edit touch"): per edited tensor ``delta_norm`` ``||W - W0||_F``, ``origin_norm`` ``||W0||_F`` and their ratio; in
        ``total`` the same over all edited tensors, the mean absolute change per edited parameter (Genμ's
        ``sum |theta - theta0| / #params`` over the edited ones), the parameter counts and ``by_kind`` (per component
        kind: ``unet:attn2.to_v``, ``text_encoder:mlp.fc2``, ...)."""
        params = self.edited_parameters()
        if not params:
            return {}
        origin = self._origin_of(params)
        per, d2, o2, abs_sum, n = {}, 0.0, 0.0, 0.0, 0
        for name, p in params.items():
            w0 = origin[name].to(p.device).double()
            d = p.detach().double() - w0
            dn, on = float(d.norm()), float(w0.norm())
            per[name] = {"delta_norm": dn, "origin_norm": on, "ratio": dn / on if on else None}
            d2, o2, abs_sum, n = d2 + dn ** 2, o2 + on ** 2, abs_sum + float(d.abs().sum()), n + p.numel()
        total = {"delta_norm": d2 ** 0.5, "origin_norm": o2 ** 0.5, "ratio": (d2 / o2) ** 0.5 if o2 else None,
                 "mean_abs_change": abs_sum / n, "params_edited": n, "tensors": len(params)}
        kinds: dict[str, list[float]] = {}  # per component kind: the model part and the layer's own name
        for name, v in per.items():
            parts = name.removesuffix(".weight").removesuffix(".bias").split(".")
            kinds.setdefault(f"{parts[0]}:{'.'.join(parts[-2:])}", [0.0, 0.0])
            kinds[f"{parts[0]}:{'.'.join(parts[-2:])}"][0] += v["delta_norm"] ** 2
            kinds[f"{parts[0]}:{'.'.join(parts[-2:])}"][1] += v["origin_norm"] ** 2
        total["by_kind"] = {k: {"delta_norm": d ** 0.5, "ratio": (d / o) ** 0.5 if o else None} for k, (d, o) in kinds.items()}
        return {"total": total, "tensors": per}

    # ------------------------------------------------------------------ delta checkpoints
    def delta_state_dict(self) -> dict[str, Tensor]:
        """``{name: W_edited - W_origin}`` in float32 for every edited parameter that changed."""
        params = self.edited_parameters()
        origin = self._origin_of(params)
        out = {}
        for n, p in params.items():
            d = p.detach().float() - origin[n].to(p.device).float()
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
