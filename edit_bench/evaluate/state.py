"""The sequential protocol's state: the edited tensors relative to the editor's origin after the last edit made, with the
model's and the editor's identity, written atomically after every edit and checked whole before it is loaded."""

from __future__ import annotations

from pathlib import Path

import torch

from ..editors import Editor
from ..errors import UsageError

SEQUENTIAL_STATE = "sequential-state.safetensors"


def save_sequential_state(editor: Editor, path: Path, edits: int) -> None:
    """Keep the values of the edited parameters that differ from the editor's origin (the model as loaded), after
    ``edits`` edits, with the model's identity and the editor's class (atomically: a crash leaves the previous state).
    Relative to the origin, never to a resume point: a second resume starts from the origin plus this file."""
    from safetensors.torch import save_file

    from ..io import write_atomic
    from ..provenance import class_path

    params = editor.edited_parameters()
    origin = editor.origin()
    tensors = {n: p.detach().cpu().contiguous() for n, p in params.items() if not torch.equal(p.detach().cpu(), origin[n].cpu())}
    meta = {"edits": str(edits), "model_id": str(editor.t2i.identity["id"]), "editor": class_path(editor)}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


@torch.no_grad()
def load_sequential_state(editor: Editor, path: Path, check_only: bool = False) -> int:
    """Put the stored sequential state into the model (restored to its origin first); returns its number of edits.
    A file of another model or editor is refused whole, before any tensor changes (``check_only``: refuse or return,
    touching nothing: a run checks its state before it draws anything)."""
    from safetensors import SafetensorError, safe_open

    from ..provenance import class_path

    params = editor.edited_parameters()
    fix = f"delete {path} (and the run's after-* record sets) to start the sequence over, or choose a new --out_dir"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta, names = f.metadata() or {}, list(f.keys())
            model, mine = meta.get("model_id"), str(editor.t2i.identity["id"])
            if model != mine:
                raise UsageError(f"{path} holds a sequential state of model {model}, not of this run's {mine}: {fix}")
            if meta.get("editor", class_path(editor)) != class_path(editor):
                raise UsageError(f"{path} holds a sequential state made by {meta['editor']}, not {class_path(editor)}: {fix}")
            unknown = [n for n in names if n not in params or tuple(f.get_slice(n).get_shape()) != tuple(params[n].shape)]
            if unknown:
                raise UsageError(f"{path} holds {unknown[0]}, which {type(editor).__name__} does not edit on this model: {fix}")
            edits = int(meta["edits"])
            if check_only:
                return edits
            editor.restore()
            for name in names:
                params[name].copy_(f.get_tensor(name))
    except (OSError, ValueError, KeyError, SafetensorError) as e:  # a file that is not a safetensors state
        raise UsageError(f"{path} is not a readable sequential state ({e}): {fix}") from None
    return edits
