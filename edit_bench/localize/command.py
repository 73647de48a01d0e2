"""``python -m edit_bench trace``: causal tracing or LocoGen for one prompt or a file of prompts.

    python -m edit_bench trace --method causal_trace --model.base toy --prompt "a blue circle" \\
        --subject blue --out_dir runs/trace_blue [--target "a blue circle"] [--config configs/trace/toy.yaml]

Writes, and refuses to overwrite:

    DIR/trace.json      every score with its component/state name, the protocol, seeds, versions
    DIR/trace.png       per prompt: text-encoder heatmap (layers x tokens) and UNet strip (causal_trace) or
                        the per-window curve (locogen), with clean / corrupted (neutral) / best images
    DIR/locoedit.yaml   (locogen) a LocoEdit config whose ``sites`` are the chosen window:
                        ``python -m edit_bench eval --model DIR/locoedit.yaml --data ...``
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict, replace
from pathlib import Path

import torch
import yaml

from ..metrics import PAPER_JUDGE, ClipJudge, JudgeConfig
from ..metrics.clip_preference import DTYPES
from ..io import write_atomic
from ..rundir import versions
from ..types import SamplerConfig
from ..errors import UsageError

METHODS = ("causal_trace", "locogen")
FIELDS = ("prompt", "subject", "target", "neutral")


def parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    p = ArgumentParser(prog="python -m edit_bench trace", description=__doc__.split("\n\n")[0],
                       default_env=False, exit_on_error=False)
    p.add_argument("--config", action=ActionConfigFile, help="a YAML of any of these options")
    p.add_argument("--method", type=str, default="causal_trace", help=f"one of {', '.join(METHODS)}")
    p.add_argument("--model.base", type=str, default="toy", help="model spec: toy, tiny:sd1, a folder, a hub id")
    p.add_argument("--model.delta", type=str | None, default=None, help="trace an edited model: an edit.safetensors")
    p.add_argument("--prompt", type=str | None, default=None, help="the caption to trace")
    p.add_argument("--subject", type=str | None, default=None,
                   help="causal_trace: the span whose embeddings are noised; locogen: the attribute words, "
                        "removed from the prompt to make the attribute-free prompt unless --neutral is given")
    p.add_argument("--target", type=str | None, default=None,
                   help="what the images are scored against (default: the prompt)")
    p.add_argument("--neutral", type=str | None, default=None, help="locogen: the attribute-free prompt")
    p.add_argument("--prompts", type=str | None, default=None,
                   help="a YAML list or CSV of rows with prompt, subject[, target, neutral] (instead of --prompt)")
    p.add_argument("--out_dir", type=str, default="runs/trace")
    p.add_argument("--noise", type=float, default=3.0,
                   help="causal_trace: noise std as a multiple of the token-embedding table's std")
    p.add_argument("--threshold", type=float, default=0.5, help="causal_trace: normalised effect that counts as causal")
    p.add_argument("--parts", type=list[str], default=["text", "unet"], help="causal_trace: text and/or unet")
    p.add_argument("--width", type=int, default=3, help="locogen: sites per window")
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    p.add_argument("--device", type=str | None, default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", type=str, default="float32", help="float32, float16 or bfloat16")
    p.add_argument("--progress", type=bool, default=True)
    p.add_class_arguments(SamplerConfig, "sampler", default=SamplerConfig(scheduler="ddim", steps=50, guidance=7.5,
                                                                          size=None, seeds=[0, 1, 2, 3]))
    p.add_class_arguments(JudgeConfig, "judge", default=JudgeConfig(model=AUTO_JUDGE))
    return p


AUTO_JUDGE = "auto"  # the model's own judge: the toy judge for the toy world, the paper's for real models


def _fields(ns) -> dict:
    """A parsed group's values, without jsonargparse's bookkeeping (``__path__`` of a sub-config file)."""
    return {k: v for k, v in vars(ns).items() if not k.startswith("__")}


def judge_for(model_spec: str, cfg: JudgeConfig) -> JudgeConfig:
    """Resolve ``judge.model: auto`` to the judge that goes with the model."""
    if cfg.model != AUTO_JUDGE:
        return cfg
    model = {"toy": "toy"}.get(model_spec, "tiny:random" if model_spec.startswith("tiny:") else PAPER_JUDGE)
    return replace(cfg, model=model)


def read_rows(args) -> list[dict]:
    """The prompts to trace, each ``{prompt, subject, target, neutral}``, checked before any model loads."""
    if (args.prompt is None) == (args.prompts is None):
        raise UsageError("give exactly one of --prompt (with --subject) or --prompts FILE")
    if args.prompt is not None:
        rows = [{"prompt": args.prompt, "subject": args.subject, "target": args.target, "neutral": args.neutral}]
    else:
        path = Path(args.prompts)
        if not path.is_file():
            raise UsageError(f"--prompts {path}: no such file")
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = yaml.safe_load(path.read_text())
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise UsageError(f"--prompts {path}: expected a list of rows with keys {', '.join(FIELDS)}")
        for i, r in enumerate(rows):
            extra = set(r) - set(FIELDS)
            if extra:
                raise UsageError(f"--prompts {path} row {i}: unknown keys {sorted(extra)}; use {', '.join(FIELDS)}")
        rows = [{k: (r.get(k) or None) for k in FIELDS} for r in rows]
    for i, r in enumerate(rows):
        if not r["prompt"] or not r["subject"]:
            raise UsageError(f"row {i} ({r['prompt']!r}): every prompt needs a --subject (the words to corrupt, or the attribute)")
        if args.method == "locogen" and r["neutral"] is None:
            neutral = " ".join(re.sub(rf"\b{re.escape(r['subject'])}\b", " ", r["prompt"], count=1).split())
            if neutral == r["prompt"].strip():
                raise UsageError(f"subject {r['subject']!r} is not a span of {r['prompt']!r}; give --neutral")
            r["neutral"] = neutral
    return rows


def _without_images(d):
    if isinstance(d, dict):
        return {k: _without_images(v) for k, v in d.items() if k not in ("images", "clean", "neutral_images")}
    if isinstance(d, list):
        return [_without_images(v) for v in d]
    if isinstance(d, float) and math.isnan(d):
        return None
    return d


def run(argv: list[str] | None = None) -> dict:
    from ..models import load_t2i
    from .causal_trace import causal_trace
    from .figure import save_figure
    from .locogen import locogen

    from jsonargparse import ArgumentError

    try:
        args = parser().parse_args(argv)
    except ArgumentError as e:
        raise UsageError(f"trace: {e}") from None
    if args.method not in METHODS:
        raise UsageError(f"unknown --method {args.method!r}: use one of {', '.join(METHODS)}")
    rows = read_rows(args)
    out = Path(args.out_dir)
    if (out / "trace.json").exists():
        raise UsageError(f"{out / 'trace.json'} exists: choose another --out_dir or remove it (a trace is never overwritten)")
    dtype = DTYPES.get(args.dtype)
    if dtype is None:
        raise UsageError(f"--dtype {args.dtype!r}: use {', '.join(DTYPES)}")
    sampler = SamplerConfig(**_fields(args.sampler))
    judge_cfg = judge_for(args.model.base, JudgeConfig(**_fields(args.judge)))
    t2i = load_t2i(args.model.base, delta=args.model.delta)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t2i.to(device, dtype)
    for r in rows:  # a subject that is not in its prompt fails here, before any image is made
        t2i.subject_positions(r["prompt"], r["subject"])
    judge = ClipJudge(judge_cfg).to(device)
    traces = []
    for r in rows:
        if args.method == "causal_trace":
            traces.append(causal_trace(t2i, r["prompt"], r["subject"], sampler, judge, target=r["target"],
                                       parts=args.parts, noise=args.noise, threshold=args.threshold,
                                       batch_size=args.batch_size, progress=args.progress))
        else:
            traces.append(locogen(t2i, r["prompt"], r["neutral"], sampler, judge=judge,
                                  attribute=r["target"], width=args.width, batch_size=args.batch_size))
    result = {"method": args.method, "model": args.model.base, "delta": args.model.delta,
              "protocol": {"sampler": asdict(sampler), "judge": judge_cfg.describe(), "device": str(device),
                           "dtype": args.dtype, **({"noise": args.noise, "threshold": args.threshold,
                                                    "parts": list(args.parts),
                                                    "score": "CLIP-score 100*max(cos, 0) vs target, mean over seeds; "
                                                             "effect = (restored - corrupted) / (clean - corrupted)"}
                                                   if args.method == "causal_trace" else
                                                   {"width": args.width,
                                                    "score": "mean P(target) of softmax(scale*cos(image, [neutral, target]))"})},
              "traces": _without_images(traces), "versions": versions()}
    if args.method == "locogen":
        result["aggregate"] = aggregate_windows(traces)
    out.mkdir(parents=True, exist_ok=True)
    save_figure(traces, args.method, out / "trace.png")
    if args.method == "locogen":
        write_atomic(out / "locoedit.yaml", locoedit_config(args.model.base, result["aggregate"]))
    write_atomic(out / "trace.json", json.dumps(result, indent=1))
    print(summary(result, out))
    return result


def aggregate_windows(traces: list[dict]) -> dict:
    """LocoGen over several prompts: each window's mean P(attribute); the chosen window minimises it."""
    n = len(traces[0]["windows"])
    mean = [sum(t["windows"][w]["p_attribute"] for t in traces) / len(traces) for w in range(n)]
    best = min(range(n), key=lambda w: mean[w])
    return {"p_attribute": mean, "chosen": {"start": best, "sites": traces[0]["windows"][best]["sites"],
                                            "p_attribute": mean[best]},
            "p_clean": sum(t["p_clean"] for t in traces) / len(traces),
            "p_neutral": sum(t["p_neutral"] for t in traces) / len(traces)}


def locoedit_config(base: str, agg: dict) -> str:
    sites = list(agg["chosen"]["sites"])
    head = (f"# LocoEdit on the window LocoGen chose (start {agg['chosen']['start']}: mean P(attribute) "
            f"{agg['chosen']['p_attribute']:.3f}; clean {agg['p_clean']:.3f}, attribute-free prompt {agg['p_neutral']:.3f}).\n"
            "# Other settings: LocoEdit's defaults (as configs/editor/locoedit.yaml).\n")
    cfg = {"class_path": "edit_bench.editors.locoedit.LocoEdit", "init_args": {"base": base, "sites": sites}}
    return head + yaml.safe_dump(cfg, sort_keys=False)


def summary(result: dict, out: Path) -> str:
    lines = [f"edit_bench trace: {result['method']} on {result['model']}, {len(result['traces'])} prompt(s) -> {out}/trace.json, trace.png"]
    for t in result["traces"]:
        if result["method"] == "causal_trace":
            lines.append(f"- {t['prompt']!r} (subject {t['subject']!r}): CLIP-score clean {t['clean_score']:.2f}, "
                         f"corrupted {t['corrupted_score']:.2f}")
            if "warning" in t:
                lines.append(f"  warning: {t['warning']}")
            if "text" in t:
                b = t["text"]["best"]
                lines.append(f"  text: best {b['layer']} @ {b['token']!r} effect {b['effect']:.2f}; "
                             f"{len(t['text']['causal'])} state(s) >= {result['protocol']['threshold']}")
            if "unet" in t:
                b = t["unet"]["best"]
                lines.append(f"  unet: best {b['component']} effect {b['effect']:.2f}; "
                             f"{len(t['unet']['causal'])} component(s) >= {result['protocol']['threshold']}")
        else:
            c = t["chosen"]
            lines.append(f"- {t['prompt']!r} vs {t['neutral']!r}: P(attribute) clean {t['p_clean']:.2f}, "
                         f"neutral {t['p_neutral']:.2f}, best window {c['start']} ({c['p_attribute']:.2f})")
    if result["method"] == "locogen":
        a = result["aggregate"]["chosen"]
        lines.append(f"chosen window {a['start']}: {', '.join(a['sites'])} -> {out}/locoedit.yaml")
    return "\n".join(lines)
