"""The editor contract, as a public check: ``check_editor(MyEditor)`` or ``python -m edit_bench.testing module.Class``.

The package's own contract tests run exactly these checks on every discovered editor; an editor written
outside the package (a subclass in your own module, named by ``class_path`` in your YAML) gets the same
checks by calling :func:`check_editor` from its tests. They run offline on the random tiny layouts of every
family the editor lists, each editor in its declared small-budget form (``Editor.contract_args``):

- the capabilities are declared (``edits``, ``multi_request``, ``needs_grad``, ``trains``);
- ``edited_parameters()`` names the model's own tensors, in the component ``edits`` declares;
- an edit changes only declared parameters and changes something (no silent no-op);
- ``restore()`` is bitwise; the delta round-trips through ``edit.safetensors`` into a fresh model;
- the edit's prompts fit the text encoder (``derived_prompts``);
- the state model the sequential protocol and resumed runs rely on: a second edit ``on_current`` is made on the
  first's weights and leaves the origin alone; ``original_weights()`` is the model as loaded, bit for bit, and puts
  the edited weights back; the sequential state saved after it loads into a fresh editor to the same weights; and
  ``restore()`` returns both to the model as loaded;
- for an editor that trains (``trains``): ``fit`` on two processes (DDP, gloo, batch 1 each) trains the delta one process
  trains with batch 2 (:func:`check_distributed_fit`, on ``tiny:sd1``).
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
# (cross_attn_kv) and the rest of the denoiser.
_COMPONENT = {"none": None, "cross_attn_kv": ("unet.", "transformer."), "text_encoder": ("text_encoder.", "text_encoder_2."),
              "denoiser": ("unet.", "transformer."), "sampling": None}  # sampling: a generation-time editor, no tensor


def check_capabilities(cls: type[Editor]) -> None:
    """The class declares what it edits and what it can do."""
    assert issubclass(cls, Editor), f"{cls.__name__} is not an edit_bench Editor"
    assert cls.edits in _COMPONENT, f"{cls.__name__}.edits = {cls.edits!r}; use one of {sorted(_COMPONENT)}"
    for flag in ("multi_request", "needs_grad", "trains"):
        assert isinstance(getattr(cls, flag), bool), f"{cls.__name__}.{flag} must be a bool"
    bad = {k: v for k, v in cls.derives.items() if v not in ("origin", "reference", "current")}
    assert not bad, f"{cls.__name__}.derives {bad}: say origin, reference or current"
    roles = {k: v for k, v in cls.files.items() if v not in ("input", "cache", "output")}
    assert not roles, f"{cls.__name__}.files {roles}: say input, cache or output"


def check_edit(editor: Editor, requests: Sequence[EditRequest] = REQUESTS, workdir: str | Path | None = None) -> None:
    """One edit on ``editor``'s model: only declared parameters change, something changes, ``restore()``
    is bitwise and the delta round-trips."""
    from .models import load_t2i

    name = type(editor).__name__
    requests = list(requests) if editor.multi_request else list(requests)[:1]
    t2i = editor.t2i
    if editor.edits == "sampling":
        return _check_sampling_edit(editor, requests)
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


def _check_sampling_edit(editor: Editor, requests) -> None:
    """A generation-time editor's form of the contract: its edit changes no tensor but changes the images (a guide is
    installed), ``original_weights()`` draws the unedited images, and ``restore()`` gives them back bit for bit."""
    from .types import SamplerConfig

    name, t2i = type(editor).__name__, editor.t2i
    requests = [EditRequest(r.source, "") for r in requests]  # a generation-time eraser steers away; it has no target
    sampler = SamplerConfig(scheduler="ddim", steps=3, guidance=7.5, size=None, seeds=[0])
    before = {n: p.detach().clone() for n, p in t2i.named_parameters()}
    plain = t2i.generate(["A banana"], [0], sampler)
    editor.apply_edit(requests)
    assert not [n for n, p in t2i.named_parameters() if not torch.equal(p, before[n])], f"{name} changed tensors"
    guided = t2i.generate(["A banana"], [0], sampler)
    assert not torch.equal(guided, plain), f"{name} changed nothing in the images (a silent no-op)"
    with editor.original_weights():
        assert torch.equal(t2i.generate(["A banana"], [0], sampler), plain), f"{name}.original_weights() is not unedited"
    assert torch.equal(t2i.generate(["A banana"], [0], sampler), guided), f"{name}.original_weights() lost the guide"
    editor.restore()
    assert torch.equal(t2i.generate(["A banana"], [0], sampler), plain), f"{name}.restore() is not the unedited model"


def check_state(editor: Editor, workdir: str | Path | None = None) -> None:
    """Two edits in sequence (the second ``on_current``), ``original_weights()``, the sequential state saved and loaded
    into a fresh editor, and ``restore()``, all against the model as loaded (see the module doc)."""
    from .evaluate import load_sequential_state, save_sequential_state

    name = type(editor).__name__
    if editor.edits in ("none", "sampling"):  # no tensor to carry from one edit to the next (sampling: no sequence)
        return
    first, second = REQUESTS[0], REQUESTS[1]

    def now(ed):
        return {n: p.detach().clone() for n, p in ed.edited_parameters().items()}

    editor.restore()
    loaded = now(editor)

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[n], b[n].to(a[n].device)) for n in a)

    editor.apply_edit([first])
    one = now(editor)
    editor.apply_edit([second], on_current=True)
    two = now(editor)
    assert not same(two, one), f"{name}: a second edit on_current changed nothing on the first edit's weights"
    assert same(editor.origin(), loaded), f"{name}: an on_current edit moved the origin (the model as loaded)"
    with editor.original_weights():
        assert same(now(editor), loaded), f"{name}.original_weights() is not the model as loaded after two edits"
    assert same(now(editor), two), f"{name}.original_weights() did not put the edited weights back bit for bit"
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "sequential-state.safetensors"
        save_sequential_state(editor, path, 2)
        fresh = type(editor)(**dict(editor.hparams))  # as a checkpoint rebuilds it
        assert load_sequential_state(fresh, path) == 2
        assert same(now(fresh), two), f"{name}: the saved sequential state does not load into a fresh editor bit for bit"
        assert same(fresh.origin(), loaded), f"{name}: a fresh editor's origin after loading a state is not the model as loaded"
        fresh.restore()
        assert same(now(fresh), loaded), f"{name}.restore() after loading a sequential state is not the model as loaded"
    editor.restore()
    assert same(now(editor), loaded), f"{name}.restore() after two edits is not the model as loaded"


def check_distributed_fit(cls: type[Editor], workdir: str | Path | None = None, timeout: int = 600, **kwargs) -> dict:
    """``fit`` on two processes (``--trainer.strategy ddp``, gloo on the CPU, batch 1 each) against one process with batch
    2, on ``tiny:sd1``: the same samples, so the deltas agree up to float rounding (within 1 % in norm per tensor, no
    element off by more than 1e-4 while each tensor moved more). Returns the measured differences.

    Runs ``python -m edit_bench fit`` in subprocesses, with the editor's ``contract_args`` (and ``kwargs``) and two
    requests; the class must be importable by its module path."""
    import json
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    name = f"{cls.__module__}.{cls.__qualname__}"
    args = {**cls.contract_args, **kwargs, "base": "tiny:sd1"}
    steps = 2 * int(args.get("steps", 2))  # MACE trains `steps` per concept: 2 requests
    data = json.dumps({"class_path": "edit_bench.benchmarks.requests.EditRequests",
                       "init_args": {"requests": [{"source": "A banana", "target": "A fruit"},
                                                  {"source": "A bear", "target": "A dog"}]}})
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        model = Path(tmp) / "model.json"
        model.write_text(json.dumps({"class_path": name, "init_args": args}))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDIT_BENCH_CACHE": os.environ.get("EDIT_BENCH_CACHE", str(Path(tmp) / "cache")),
               "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}

        def fit(out: str, batch: int, devices: int) -> dict:
            r = subprocess.run([sys.executable, "-m", "edit_bench", "fit", "--model", str(model), "--model.init_args.batch_size",
                                str(batch), "--data", data, "--trainer.max_steps", str(steps), "--trainer.accelerator", "cpu",
                                "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
                                "--trainer.enable_progress_bar", "false", "--out_dir", str(Path(tmp) / out)],
                               capture_output=True, text=True, env=env, timeout=timeout)
            assert r.returncode == 0, f"{cls.__name__}: fit on {devices} process(es) failed: {r.stderr.strip()[-1500:]}"
            return load_file(str(Path(tmp) / out / "edit.safetensors"))

        two, one = fit("two", 1, 2), fit("one", 2, 1)
    assert two.keys() == one.keys() and one, f"{cls.__name__}: two processes trained other tensors than one"
    rel = max(float((two[k] - one[k]).norm() / one[k].norm().clamp(min=1e-30)) for k in one)
    worst = max(float((two[k] - one[k]).abs().max()) for k in one)
    moved = min(float(one[k].abs().max()) for k in one)
    assert rel < 1e-2 and worst < 1e-4 < moved, (f"{cls.__name__}: two processes' delta differs from one process's "
                                                 f"(relative {rel:.2e}, worst element {worst:.2e}, smallest move {moved:.2e})")
    return {"relative": rel, "worst": worst, "moved": moved}


def check_editor(cls: type[Editor], layouts: Sequence[str] | None = None, distributed: bool | None = None, **kwargs) -> None:
    """Every contract check of ``cls`` on each tiny layout (default: one per family in ``cls.families``, so an
    editor with an MMDiT form is checked on ``tiny:sd3`` and ``tiny:flux`` too), built with its ``contract_args``
    updated by ``kwargs``; for an editor that trains, the two-process fit too (``distributed``: default ``cls.trains``).

    Raises ``AssertionError`` naming the broken promise.
    """
    check_capabilities(cls)
    for spec in layouts or [f"tiny:{f}" for f in cls.families]:
        editor = contract_form(cls, spec, **kwargs)
        check_edit(editor)
        check_state(editor)
    if cls.trains if distributed is None else distributed:
        check_distributed_fit(cls, **kwargs)


def contract_form(cls: type[Editor], spec: str, **kwargs) -> Editor:
    """``cls`` as the contract checks build it on ``spec``: its ``contract_args`` updated by ``kwargs``; on an MMDiT
    (``tiny:sd3``, ``tiny:flux``) the flow-matching recipe where the class has recipes (ESD's paper recipe samples on
    SD's DDIM grid)."""
    import inspect

    extra = {"recipe": "current"} if spec in ("tiny:sd3", "tiny:flux") and "recipe" in inspect.signature(cls).parameters else {}
    return cls(base=spec, **{**cls.contract_args, **extra, **kwargs})


def main(argv: list[str] | None = None) -> int:
    """``python -m edit_bench.testing module.Class [...]``: run every contract check of each editor class."""
    import importlib
    import os
    import sys
    import time

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
        t0 = time.perf_counter()
        try:
            check_editor(cls)
        except AssertionError as e:
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            return 1
        extra = " and a two-process fit" if cls.trains else ""
        print(f"{name}: every contract check passed on {', '.join(f'tiny:{f}' for f in cls.families)}{extra} "
              f"in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
