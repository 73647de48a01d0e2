"""The editor contract, as a public check: ``check_editor(MyEditor)``.

The package's own contract tests run exactly these checks on every discovered editor; an editor written
outside the package (a subclass in your own module, named by ``class_path`` in your YAML) gets the same
checks by calling :func:`check_editor` from its tests. They run offline on the random tiny SD-1, SD-2 and
SDXL layouts in seconds:

- the capabilities are declared (``edits``, ``multi_request``, ``needs_grad``, ``trains``);
- ``edited_parameters()`` names the model's own tensors, in the component ``edits`` declares;
- an edit changes only declared parameters and changes something (no silent no-op);
- ``restore()`` is bitwise; the delta round-trips through ``edit.safetensors`` into a fresh model;
- the edit's prompts fit the text encoder (``derived_prompts``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

from .editors.base import Editor
from .types import EditRequest

REQUESTS = (EditRequest("A banana", "A blue banana"), EditRequest("A bear", "A polar bear"))
LAYOUTS = ("tiny:sd1", "tiny:sd2", "tiny:sdxl")
# The component each ``edits`` value may change; on an MMDiT the transformer holds both the text side's projections
# (cross_attn_kv) and the rest of the denoiser (unet).
_COMPONENT = {"none": None, "cross_attn_kv": ("unet.", "transformer."), "text_encoder": ("text_encoder.", "text_encoder_2."),
              "unet": ("unet.", "transformer.")}


def check_capabilities(cls: type[Editor]) -> None:
    """The class declares what it edits and what it can do."""
    assert issubclass(cls, Editor), f"{cls.__name__} is not an edit_bench Editor"
    assert cls.edits in _COMPONENT, f"{cls.__name__}.edits = {cls.edits!r}; use one of {sorted(_COMPONENT)}"
    for flag in ("multi_request", "needs_grad", "trains"):
        assert isinstance(getattr(cls, flag), bool), f"{cls.__name__}.{flag} must be a bool"


def check_edit(editor: Editor, requests: Sequence[EditRequest] = REQUESTS, workdir: str | Path | None = None) -> None:
    """One edit on ``editor``'s model: only declared parameters change, something changes, ``restore()``
    is bitwise and the delta round-trips."""
    from .models import load_t2i

    name = type(editor).__name__
    requests = list(requests) if editor.multi_request else list(requests)[:1]
    t2i = editor.t2i
    too_long = [p for p in editor.derived_prompts(requests) if t2i.n_tokens(p) > t2i.max_length]
    assert not too_long, f"{name} builds prompts longer than {t2i.max_length} tokens from short requests: {too_long[:2]}"
    declared = editor.edited_parameters()
    prefixes = _COMPONENT[editor.edits]
    for n, p in declared.items():  # declared names resolve to the model's own tensors
        assert t2i.get_parameter(n) is p, f"{name}: {n} is not the model's own parameter"
        assert prefixes is not None and n.startswith(prefixes), f"{name} declares edits={editor.edits!r} but edits {n}"
    before = {n: p.detach().clone() for n, p in t2i.named_parameters()}
    editor.apply_edit(requests)
    changed = {n for n, p in t2i.named_parameters() if not torch.equal(p, before[n])}
    declared_ids = {id(p) for p in declared.values()}
    undeclared = [n for n, p in t2i.named_parameters() if n in changed and id(p) not in declared_ids]
    assert not undeclared, f"{name} changed undeclared parameters: {undeclared[:3]}"
    if editor.edits != "none":
        assert changed, f"{name} edited nothing (a silent no-op)"
        delta = editor.delta_state_dict()
        assert delta and set(delta) <= set(declared), f"{name}'s delta names undeclared tensors"
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            path = editor.save_delta(Path(tmp) / "edit.safetensors")
            again = load_t2i(t2i.identity["spec"], delta=path)
            for n, p in declared.items():
                torch.testing.assert_close(again.get_parameter(n), p, atol=1e-6, rtol=0)
    editor.restore()
    moved = [n for n, p in t2i.named_parameters() if not torch.equal(p, before[n])]
    assert not moved, f"{name}.restore() is not bitwise: {moved[:3]}"


def check_editor(cls: type[Editor], layouts: Sequence[str] | None = None, **kwargs) -> None:
    """Every contract check of ``cls`` on each tiny layout (default: one per family in ``cls.families``, so an
    editor with an MMDiT form is checked on ``tiny:sd3`` and ``tiny:flux`` too; ``kwargs`` go to its constructor).

    Raises ``AssertionError`` naming the broken promise.
    """
    check_capabilities(cls)
    for spec in layouts or [f"tiny:{f}" for f in cls.families]:
        check_edit(cls(base=spec, **kwargs))


def main(argv: list[str] | None = None) -> int:
    """``python -m edit_bench.testing module.Class [...]``: run every contract check of each editor class."""
    import importlib
    import os
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    names = sys.argv[1:] if argv is None else list(argv)
    if not names:
        print("usage: python -m edit_bench.testing module.EditorClass [...]", file=sys.stderr)
        return 2
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # the user's own modules, as `python -m` finds them
    for name in names:
        mod, _, cls_name = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(mod), cls_name)
        except (ImportError, AttributeError, ValueError) as e:
            print(f"edit_bench.testing: error: cannot import {name!r} ({e}): give module.Class", file=sys.stderr)
            return 2
        try:
            check_editor(cls)
        except AssertionError as e:
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            return 1
        print(f"{name}: every contract check passed on {', '.join(f'tiny:{f}' for f in cls.families)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
