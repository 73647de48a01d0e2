"""``python -m edit_bench export RUN_DIR|DELTA --out DIR``: an edited model as a plain diffusers pipeline.

What is written (into a temporary folder beside ``DIR``, renamed to ``DIR`` only when whole):

- the base model with the delta added, by diffusers' own ``save_pretrained``: every component is written again
  (copied, not linked: the folder is self-contained and can be shared or uploaded); its scheduler is the model's own;
- ``edit_delta.safetensors``: the delta alone (``W_edited - W_original`` of the edited tensors, named by pipeline
  component: ``unet.…``, ``text_encoder.…``, ``transformer.…``), for whoever keeps the base model and adds the
  delta with the snippet of the model card (a few matrices for the closed forms, not a LoRA: their deltas are not
  low rank in general);
- ``README.md``: a Hugging Face model card (YAML header, then the base model and its identity, the editor and its
  arguments, the requests and the preserve set, the numbers of the ``--runs`` given with their protocols, how to
  load it).

Loading needs no ``edit_bench``: ``DiffusionPipeline.from_pretrained(DIR)``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from .errors import UsageError
from .models.toy import SPECS as TOY_SPECS

DELTA_FILE = "edit_delta.safetensors"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m edit_bench export",
                                description="Write an edited model as a diffusers pipeline folder with a model card.")
    p.add_argument("source", help="a `fit` run directory (its edit.safetensors) or an edit.safetensors file")
    p.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    p.add_argument("--base", default=None, help="the base model spec (default: the one the delta was made for)")
    p.add_argument("--runs", nargs="*", default=[], help="eval run directories whose numbers the model card reports")
    return p


def _delta_path(source: Path) -> Path:
    if source.is_dir():
        path = source / "edit.safetensors"
        if not path.is_file():
            raise UsageError(f"{source} holds no edit.safetensors: an `eval` run edits per case and keeps no delta; "
                             "export the run of `python -m edit_bench fit` (or give its edit.safetensors)")
        return path
    if not source.is_file():
        raise UsageError(f"{source} does not exist: give a `fit` run directory or its edit.safetensors")
    return source


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    from .models.delta import FORMAT

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own types for a file that is not safetensors
        raise UsageError(f"{path} is not a readable safetensors file ({e}): give the edit.safetensors that `fit` wrote") from None
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path} is not an edit_bench delta (metadata format={meta.get('format')!r})")
    for k in ("requests", "preserve"):
        if k in meta:
            meta[k] = json.loads(meta[k])
    return meta


def _runs_section(runs: list[str]) -> list[str]:
    from .report import load_run

    lines = []
    for d in runs:
        r = load_run(d)
        p = r["protocol"]
        s = p.get("sampler", {})
        lines += [f"### {r['benchmark']} ({Path(d).name})", "",
                  f"Protocol: `{p.get('protocol')}`, sampler {s.get('scheduler')} {s.get('steps')} steps, guidance "
                  f"{s.get('guidance')}, {p.get('size')} px, seeds {p.get('seeds')}, precision {p.get('precision')}; model "
                  f"`{r.get('model')}` ({r.get('model_id')}).", "",
                  "| metric | unedited | edited | n |", "|---|---|---|---|"]
        base = r.get("baseline") or {}
        for k, v in r["metrics"].items():
            b = f"{base[k]['mean']:.3f}" if k in base else "—"
            lines.append(f"| {k} | {b} | {v['mean']:.3f} ± {v['std']:.3f} | {v['n']} |")
        lines.append("")
    return lines


def model_card(meta: dict, edit_info: dict | None, t2i, runs: list[str], delta_names: list[str]) -> str:
    """The export's README.md (Hugging Face model-card format)."""
    base, ident = t2i.identity["spec"], t2i.identity["id"]
    editor = meta.get("editor", "?")
    hub = base if base.count("/") == 1 and not base.startswith((".", "/", "~")) else None
    if hub or Path(base).expanduser().is_dir():
        where = hub or str(Path(base).expanduser().resolve())
    elif base in TOY_SPECS:
        from .models.toy import pipeline_dir

        where = str(pipeline_dir(base))
    else:  # tiny:/random: built by edit_bench's code, no folder of their own
        where = "THE_BASE_MODEL_FOLDER"
    head = ["---", "library_name: diffusers", "pipeline_tag: text-to-image",
            "tags:", "- edit_bench", "- model-editing", f"- {editor.lower()}"] + ([f"base_model: {hub}"] if hub else []) + ["---", ""]
    reqs = meta.get("requests") or []
    body = [f"# {editor} edit of {base}", "",
            f"The base model `{base}` (identity `{ident}`, family {t2i.family}) with one edit by **{editor}**, made and "
            "exported by edit_bench. Every component is a plain diffusers component: load it with "
            "`DiffusionPipeline.from_pretrained` and nothing else.", "",
            "## The edit", "", f"Editor: `{editor}`" + (f", arguments: `{json.dumps(edit_info.get('editor_args'))}`"
                                                         if edit_info and edit_info.get("editor_args") else ""), "",
            "| source | target | subject |", "|---|---|---|"]
    body += [f"| {r.get('source', '')} | {r.get('target', '') or '(erased: the unconditional)'} | {r.get('subject') or ''} |"
             for r in reqs]
    body += ["", f"Preserved: {', '.join(meta.get('preserve') or []) or 'nothing beyond the editor’s own set'}.", "",
             f"Edited tensors ({len(delta_names)}): " + ", ".join(f"`{n}`" for n in delta_names[:8])
             + (" …" if len(delta_names) > 8 else ""), ""]
    if runs:
        body += ["## Measured", "", "Numbers of the evaluation runs given at export, each with its protocol.", ""]
        body += _runs_section(runs)
    else:
        body += ["## Measured", "", "No evaluation run was given at export (`--runs`): this card reports no number.", ""]
    body += ["## Use", "", "```python", "from diffusers import DiffusionPipeline", "",
             'pipe = DiffusionPipeline.from_pretrained("PATH_OF_THIS_FOLDER")', "```", "",
             f"Or keep the base model and add the delta (`{DELTA_FILE}`, the edited tensors' difference):", "",
             "```python", "from diffusers import DiffusionPipeline", "from safetensors.torch import load_file", "",
             f'pipe = DiffusionPipeline.from_pretrained("{where}")',
             f'for name, d in load_file("{DELTA_FILE}").items():',
             '    component, _, tensor = name.partition(".")',
             "    getattr(pipe, component).get_parameter(tensor).data += d.to(pipe.dtype)", "```", ""]
    return "\n".join(head + body)


def export(source: str, out: str, base: str | None = None, runs: list[str] | None = None) -> Path:
    """Write the edited model of ``source`` (a fit run or its delta) to ``out``; returns ``out``."""
    from .models import load_t2i
    from .models.delta import apply_delta

    src, out_path = Path(source), Path(out)
    if out_path.exists() and (not out_path.is_dir() or any(out_path.iterdir())):
        raise UsageError(f"{out_path} exists and is not empty: give a new --out folder (nothing is overwritten)")
    from .rundir import holder

    for d in [src if src.is_dir() else src.parent, *map(Path, runs or [])]:
        if (h := holder(d)) is not None:
            raise UsageError(f"{d} is still being written by pid {h.get('pid')} on {h.get('host')} (`{h.get('command')}`): "
                             "export it when that run has ended")
    path = _delta_path(src)
    meta = _metadata(path)
    for d in runs or []:
        if not (Path(d) / "results.json").is_file():
            raise UsageError(f"--runs {d} has no results.json: give finished eval run directories")
    t2i = load_t2i(base or meta.get("base", "toy"))
    deltas = apply_delta(t2i, path)  # identity, every name and shape checked before anything is added or written
    info = src / "edit.json" if src.is_dir() else path.parent / "edit.json"
    edit_info = json.loads(info.read_text()) if info.is_file() else None
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    try:
        pipe = t2i.diffusers_pipeline(t2i.default_scheduler)
        pipe.save_pretrained(tmp)
        shutil.copyfile(path, tmp / DELTA_FILE)
        (tmp / "README.md").write_text(model_card(meta, edit_info, t2i, list(runs or []), sorted(deltas)))
        if out_path.exists():
            out_path.rmdir()  # empty (checked above)
        tmp.rename(out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_path


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    out = export(args.source, args.out, args.base, args.runs)
    print(f"edit_bench export: {out} (DiffusionPipeline.from_pretrained loads it; README.md is its model card)")
