"""`Editor`: the LightningModule every editing method subclasses.

An editor owns a :class:`~edit_bench.models.T2IModel` and changes only the weights it declares in
``edited_parameters()``. The base class provides bitwise ``snapshot()``/``restore()``, the delta
checkpoint (safetensors) and the evaluation step (edit -> generate), so a new method writes its
constructor (its config, with paper defaults) and ``edit()``.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import ClassVar

import lightning as L
import torch
from torch import Tensor

from ..models import T2IModel, load_t2i
from ..types import EditRequest, Sample


class Editor(L.LightningModule):
    """Base class of editors.

    Class attributes (capabilities, read by tools and tests):
        edits: what ``edit()`` may change: ``"none"``, ``"cross_attn_kv"``, ``"text_encoder"`` or ``"unet"``.
        supports_batch: whether ``edit()`` takes several requests at once.

    Args:
        base: the model spec for :func:`~edit_bench.models.load_t2i` (default: the shipped toy world).
        delta: an ``edit.safetensors`` written by ``fit``; it is applied on load and the model is then
            evaluated as edited (no further per-case edits).
    """

    edits: ClassVar[str] = "none"
    supports_batch: ClassVar[bool] = False
    needs_grad: ClassVar[bool] = False  # edit() runs with gradients enabled (optimising editors)

    def __init__(self, base: str = "toy", delta: str | None = None):
        super().__init__()
        self.base = base
        self.delta_path = delta
        self._snapshot: dict[str, Tensor] | None = None
        self._active: str | None = None
        self.edit_times: list[float] = []
        self.editing = True  # False: evaluate the unedited model (baseline pass)

    @property
    def t2i(self) -> T2IModel:
        """The model, loaded on first use (so a config is cheap to build and a missing model fails
        inside the command, with its own message), with ``delta`` applied."""
        if "_t2i" not in self._modules:
            self._t2i = load_t2i(self.base)
            if self.delta_path is not None:
                self.load_delta(self.delta_path)
        return self._modules["_t2i"]

    def configure_model(self) -> None:
        self.t2i  # Lightning calls this hook before moving the module: load the model in time

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

    def edit(self, requests: Sequence[EditRequest], preserve: Sequence[str] = ()) -> None:
        """Apply the edit in place. Subclasses implement it; the identity editor does nothing."""

    def report(self) -> dict:
        """What the method wants recorded in ``results.json`` / ``edit.json`` (e.g. statistics it used)."""
        return {}

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
                p.copy_(self._snapshot[n])
        self._active = None

    @torch.no_grad()
    def apply_edit(self, requests: Sequence[EditRequest], preserve: Sequence[str] = ()) -> float:
        """Restore, then edit; returns the edit's wall time in seconds (also kept in ``edit_times``)."""
        requests = list(requests)
        if len(requests) > 1 and not self.supports_batch:
            raise ValueError(f"{type(self).__name__} edits one request at a time; got {len(requests)}")
        self.snapshot()
        self.restore()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        with torch.enable_grad() if self.needs_grad else contextlib.nullcontext():
            self.edit(requests, preserve)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dt = time.perf_counter() - t0
        self.edit_times.append(dt)
        return dt

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
            d = p.detach().float() - self._snapshot[n].float()
            if torch.any(d != 0):
                out[n] = d.cpu().contiguous()
        return out

    def save_delta(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write the delta as safetensors (atomically: a temporary file, then a rename)."""
        from safetensors.torch import save_file

        path = Path(path)
        meta = {"format": "edit_bench.delta", "editor": type(self).__name__, "base": self.base}
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
        tmp = path.with_suffix(".tmp")
        save_file(self.delta_state_dict(), str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @torch.no_grad()
    def load_delta(self, path: str | Path) -> None:
        """Add a saved delta to the model's weights (checked: names, shapes, base model)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"delta file {path} does not exist: give the edit.safetensors that `fit` wrote")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "edit_bench.delta":
                raise ValueError(f"{path} is not an edit_bench delta (metadata format={meta.get('format')!r})")
            if meta.get("base") and meta["base"] != self.base:
                raise ValueError(
                    f"{path} was made for base model {meta['base']!r}, but this editor loads {self.base!r}: "
                    f"pass --model.base {meta['base']}"
                )
            deltas = {k: f.get_tensor(k) for k in f.keys()}
        for name, d in deltas.items():
            p = self.t2i.get_parameter(name)
            if p.shape != d.shape:
                raise ValueError(f"{path}: {name} has shape {tuple(d.shape)}, the model's is {tuple(p.shape)}")
            p.add_(d.to(p.device, p.dtype))

    # ------------------------------------------------------------------ evaluation
    def activate(self, case) -> None:
        """Make the model the edited model of ``case`` (per-case protocol), editing only when it changes."""
        if not self.editing or self.delta_path is not None or self._active == case.id:
            return
        self.apply_edit([case.request], case.preserve)
        self._active = case.id

    def generate_samples(self, samples: list, bench) -> Tensor:
        """Images ``[B, 3, H, W]`` for a batch of samples that may span several cases (sorted by case).

        Per-case protocol: each case's samples are generated with that case's edit. ``fixed``: the edit
        made before the loop (by ``eval``) is used for all.
        """
        images = []
        for case_id, group in groupby(samples, key=lambda s: s.case_id):
            group = list(group)
            if bench.protocol == "per_case":
                self.activate(bench.case(case_id))
            images.append(self.t2i.generate([s.pair.prompt for s in group], [s.seed for s in group], bench.sampler))
        return torch.cat(images)

    def predict_step(self, batch, batch_idx: int = 0):
        """Generate and judge one batch of :class:`~edit_bench.types.Sample`; returns per-sample records."""
        bench = self.trainer.datamodule
        t0 = time.perf_counter()
        images = self.generate_samples(batch, bench)
        gen_s = time.perf_counter() - t0
        judge = bench.judge.to(self.device)
        p_new = judge.preference(images, [s.pair.old for s in batch], [s.pair.new for s in batch])
        records = []
        for s, p in zip(batch, p_new.tolist()):
            success = p > 0.5 if s.pair.expect == "new" else p < 0.5
            records.append(dict(id=s.id, case=s.case_id, group=s.group, k=s.prompt_index, seed=s.seed,
                                prompt=s.pair.prompt, old=s.pair.old, new=s.pair.new, expect=s.pair.expect,
                                p_new=p, success=bool(success)))
        return {"records": records, "images": images, "generate_s": gen_s}

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, list) and batch and isinstance(batch[0], Sample):
            return batch  # samples are prompts and seeds: nothing to move
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def configure_optimizers(self):
        return None
