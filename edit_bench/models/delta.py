"""Delta checkpoints: ``edit.safetensors`` holds ``W_edited - W_original`` of the changed tensors only.

Its metadata names the editor and the model it was made for (spec and identity), so it is never added to
another model, and a load is validated whole before any weight changes: a failed load leaves the model as
it was.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from ..errors import UsageError
from ..io import write_atomic

FORMAT = "edit_bench.delta"


def save_delta(path: str | Path, deltas: dict[str, Tensor], t2i, metadata: dict | None = None) -> Path:
    """Write ``deltas`` (``{full parameter name: tensor}``) for model ``t2i`` atomically."""
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "base": t2i.identity["spec"], "model_id": str(t2i.identity["id"])}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in deltas.items()}
    return write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def read_delta(path: str | Path, t2i) -> dict[str, Tensor]:
    """The delta's tensors, checked against ``t2i``: format, model identity, every name and shape."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"delta file {path} does not exist: give the edit.safetensors that `fit` wrote")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            deltas = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own types for a file that is not safetensors
        raise UsageError(f"{path} is not a readable safetensors file ({e}): give the edit.safetensors that `fit` wrote") from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path} is not an edit_bench delta (metadata format={meta.get('format')!r})")
    made_for = meta.get("model_id")
    if made_for and made_for != str(t2i.identity["id"]):
        raise UsageError(
            f"{path} was made for model {meta.get('base')!r} (identity {made_for}), but the loaded model "
            f"{t2i.identity['spec']!r} is {t2i.identity['id']}: load the model the delta was made for"
        )
    bad = []
    for name, d in deltas.items():
        try:
            p = t2i.get_parameter(name)
        except UsageError:
            bad.append(f"{name} does not exist in this model")
            continue
        if p.shape != d.shape:
            bad.append(f"{name} has shape {tuple(d.shape)}, the model's is {tuple(p.shape)}")
    if bad:
        raise UsageError(f"{path} does not fit this model ({len(bad)} tensor(s)): " + "; ".join(bad[:3])
                         + (" ..." if len(bad) > 3 else ""))
    return deltas


@torch.no_grad()
def apply_delta(t2i, path: str | Path) -> dict[str, Tensor]:
    """Validate the whole delta, then add it to ``t2i``'s weights; returns the tensors added."""
    deltas = read_delta(path, t2i)
    for name, d in deltas.items():
        p = t2i.get_parameter(name)
        p.add_(d.to(p.device, p.dtype))
    return deltas
