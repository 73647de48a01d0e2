"""``python -m edit_bench bench``: our evaluation loop against the authors'-style loop, on the same model and
samples, with the time split and peak memory of each.

The authors' loop (how the reference scripts evaluate, see the docs' methods §6): the edit per case (per case
*and seed* with ``--reedit_per_seed``, as ReFACT's script re-runs its optimisation for every seed), then one
diffusers pipeline call per image in float32, then the judge on that one image; the unedited baseline the
same way. Both loops use the benchmark's judge as configured: with ``--data.judge.dtype float16`` the
authors' loop judges in half precision too, so the ratio never credits ours with the judge's precision.
Ours: ``eval`` itself (batched generation under the trainer's precision, batched judging, the baseline
scored once per context). Ours runs twice: with an empty baseline cache (what the first editor pays) and
again with the baseline found in it (what every later editor on these samples pays).

The split (edit, text encoding, denoiser (UNet or transformer), VAE decode, judge, other) comes from forward hooks on the model's
components, timed with a device synchronisation at each call's start and end; a call made inside the edit
counts as edit; "judge" is every metric's work on the images (scores, stored features, paired references).
"""

from __future__ import annotations

import inspect

import contextlib
import io
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import torch

from ..errors import UsageError
from ..types import Record, Sample

PARTS = ("edit", "text", "denoiser", "decode", "judge")


class Split:
    """Seconds spent in the edit, the text encoders, the UNet, the VAE decoder and the judge (the metrics'
    ``score``), from hooks installed for the duration of a ``with`` block."""

    def __init__(self, editor, metrics, device: torch.device):
        self.editor, self.metrics, self.device = editor, metrics, device
        self.seconds = dict.fromkeys(PARTS, 0.0)
        self._depth = dict.fromkeys(PARTS, 0)
        self._start: dict[str, float] = {}
        self._handles: list = []

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _enter(self, part):
        if self._depth["edit"] and part != "edit":
            return
        if self._depth[part] == 0:
            self._sync()
            self._start[part] = time.perf_counter()
        self._depth[part] += 1

    def _exit(self, part):
        if self._depth["edit"] and part != "edit":
            return
        self._depth[part] -= 1
        if self._depth[part] == 0:
            self._sync()
            self.seconds[part] += time.perf_counter() - self._start[part]

    def _wrap(self, obj, name, part):
        fn = getattr(obj, name)

        def timed(*a, **kw):
            self._enter(part)
            try:
                return fn(*a, **kw)
            finally:
                self._exit(part)

        setattr(obj, name, timed)
        self._handles.append(lambda: obj.__dict__.pop(name, None))

    def __enter__(self):
        modules = [(part, m) for part, ms in self.editor.t2i.stage_modules().items() for m in ms]
        for part, m in modules:
            self._handles.append(m.register_forward_pre_hook(lambda *_, p=part: self._enter(p)).remove)
            self._handles.append(m.register_forward_hook(lambda *_, p=part: self._exit(p)).remove)
        self._wrap(self.editor, "apply_edit", "edit")
        for m in self.metrics:  # every metric's work on images: scores, stored features, paired references
            for name in ("score", "features", "reference", "score_pairs"):
                if callable(getattr(m, name, None)):
                    self._wrap(m, name, "judge")
        return self

    def __exit__(self, *exc):
        for undo in reversed(self._handles):
            undo()
        self._handles.clear()


def _process_age() -> float | None:
    """Seconds since this process started (Linux: ``/proc``), ``None`` elsewhere."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - start
    except (OSError, ValueError, IndexError):
        return None


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device) -> dict:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def authors_loop(editor, bench, device: torch.device, reedit_per_seed: bool) -> dict:
    """Every sample as the reference scripts make it: edit per case (or per case and seed), one float32
    pipeline call per image, the judge per image; the baseline (when the benchmark scores one) likewise on
    the unedited model. Returns the records by variant, the number of edits and the metrics scored (those
    of the benchmark's that need no stored features or pairs)."""
    t2i = editor.t2i
    t2i.to(device, torch.float32)
    s = bench.sampler
    pipe = t2i.diffusers_pipeline(s.scheduler)
    pipe.set_progress_bar_config(disable=True)
    size = s.size or t2i.native_size
    metrics = [m for m in bench.metrics if not m.stores_features and not m.paired]
    samples = bench.samples()
    records: dict[str, list[Record]] = {"baseline": [], "samples": []}
    edits = 0

    def one(sample: Sample, variant: str):
        g = torch.Generator("cpu").manual_seed(int(sample.seed))
        extra = {"eta": s.eta} if "eta" in inspect.signature(pipe.__call__).parameters else {}  # SD3/FLUX: no eta
        if hasattr(t2i, "t5_length"):  # SD3/FLUX: the model's T5 length (the pipelines' default otherwise)
            extra["max_sequence_length"] = t2i.t5_length
        if t2i.family == "flux" and t2i.true_cfg:  # a FLUX without guidance embedding: true CFG on "" (as eval)
            extra.update(true_cfg_scale=s.guidance, negative_prompt="")
        img = pipe(sample.pair.prompt, num_inference_steps=s.steps, guidance_scale=s.guidance, height=size, width=size,
                   generator=g, output_type="pt", **extra).images.float().to(device)
        scores = {}
        for m in metrics:
            scores.update({k: float(v[0]) for k, v in m.score(img, [sample]).items()})
        records[variant].append(Record.from_sample(sample, scores))

    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        if bench.baseline and editor.edits != "none":
            editor.restore()
            for sample in samples:
                one(sample, "baseline")
        if editor.edits != "none" and bench.protocol == "fixed":
            editor.apply_edit(bench.requests(), bench.preserve())
            edits += 1
        if reedit_per_seed:  # each case seed by seed: edit, then that seed's images of every prompt
            order = {c: i for i, c in enumerate(dict.fromkeys(x.case_id for x in samples))}
            samples = sorted(samples, key=lambda x: (order[x.case_id], x.seed))
        last = None
        for sample in samples:
            if editor.edits != "none" and bench.protocol == "per_case":
                key = (sample.case_id, sample.seed) if reedit_per_seed else sample.case_id
                if key != last:
                    case = bench.case(sample.case_id)
                    editor.apply_edit([case.request], case.preserve)
                    edits, last = edits + 1, key
            one(sample, "samples")
    editor.restore()
    return {"records": records, "edits": edits, "metrics": metrics}


def run_bench(trainer, editor, bench, matmul_precision: str = "highest", reedit_per_seed: bool | None = None,
              out: str | None = None, loops: str = "ours,authors") -> dict:
    """Measure both loops on ``bench``'s samples; print the comparison and return it (also as JSON at ``out``)."""
    from ..evaluate import Evaluation, aggregate

    if trainer.world_size != 1:
        raise UsageError(f"bench measures one process; got {trainer.world_size} (use --trainer.devices 1)")
    chosen = [x for x in loops.split(",") if x]
    if not chosen or set(chosen) - {"ours", "authors"}:
        raise UsageError(f"--loops takes ours, authors or both (comma-separated); got {loops!r}")
    if reedit_per_seed is None:
        reedit_per_seed = bool(getattr(editor, "reference_reedits_per_seed", False))
    startup = {"process_s": _process_age()}  # interpreter, imports, parsing and instantiating the config
    t0 = time.perf_counter()
    editor.t2i  # the model (and a delta)
    startup["model_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for m in bench.metrics:
        m.prepare(bench)  # the judge and every metric's network
    startup["metrics_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    Evaluation(editor, bench, "unused").validate()  # bad input fails before any timing
    startup["validate_s"] = time.perf_counter() - t0
    from ..evaluate import provenance

    t0 = time.perf_counter()
    provenance(editor, bench, trainer, matmul_precision).run()  # the fingerprint: file digests, the source's hash
    startup["provenance_s"] = time.perf_counter() - t0
    device = trainer.strategy.root_device
    t2i = editor.t2i
    n_images = len(bench.samples()) * (2 if bench.baseline and editor.edits != "none" else 1)
    result = {"editor": type(editor).__name__, "benchmark": type(bench).__name__, "model": t2i.identity["spec"],
              "device": str(device), "precision": str(trainer.precision), "images": n_images,
              "samples": len(bench.samples()), "baseline": bool(bench.baseline and editor.edits != "none"),
              "sampler": bench.sampler.__dict__, "reedit_per_seed": reedit_per_seed,
              "judge": {k: getattr(bench.judge_cfg, k) for k in ("model", "dtype", "preprocess")},
              "startup_s": {k: None if v is None else round(v, 3) for k, v in startup.items()}, "loops": {}}
    warm = bench.samples()[:bench.batch_size]  # first-call set-up (kernels, allocators) is not timed
    with torch.no_grad():
        t2i.to(device).generate([s.pair.prompt for s in warm], [s.seed for s in warm], bench.sampler)
    tmp = Path(tempfile.mkdtemp(prefix="edit_bench_bench_"))
    old_cache = os.environ.get("EDIT_BENCH_CACHE")
    os.environ["EDIT_BENCH_CACHE"] = str(tmp / "cache")  # an empty baseline cache: the first editor's cost
    try:
        runs = [("ours", "ours")] + ([("ours_cached", "ours")] if result["baseline"] else []) if "ours" in chosen else []
        runs += [("authors", "authors")] if "authors" in chosen else []
        for name, kind in runs:
            _peak_reset(device)
            with Split(editor, bench.metrics, device) as split:
                t0 = time.perf_counter()
                if kind == "ours":
                    with contextlib.redirect_stdout(io.StringIO()):
                        res = Evaluation(editor, bench, tmp / name).run(trainer, matmul_precision)
                    metrics, edits = res.metrics, res.timing.edits
                    hits = (res.samples.baseline_cache or {}).get("hits", 0)
                else:
                    a = authors_loop(editor, bench, device, reedit_per_seed)
                    metrics, edits, hits = aggregate(a["metrics"], a["records"]["samples"]), a["edits"], 0
                wall = time.perf_counter() - t0
            generated = n_images - hits
            parts = {k: round(v, 3) for k, v in split.seconds.items()}
            parts["other"] = round(wall - sum(split.seconds.values()), 3)
            result["loops"][name] = {"wall_s": round(wall, 3), "images_generated": generated, "baseline_cache_hits": hits,
                                     "images_per_s": round(n_images / wall, 3), "edits": edits, "split_s": parts,
                                     **{k: round(v, 1) for k, v in _peak(device).items()},
                                     "metrics": {k: v["mean"] for k, v in metrics.items() if isinstance(v, dict) and "mean" in v}}
    finally:
        if old_cache is None:
            os.environ.pop("EDIT_BENCH_CACHE", None)
        else:
            os.environ["EDIT_BENCH_CACHE"] = old_cache
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    loops_ = result["loops"]
    if "ours" in loops_ and "authors" in loops_:
        result["speedup"] = round(loops_["authors"]["wall_s"] / loops_["ours"]["wall_s"], 2)
    if "ours_cached" in loops_:
        result["cached_over_first"] = round(loops_["ours_cached"]["wall_s"] / loops_["ours"]["wall_s"], 3)
        if "authors" in loops_:
            result["speedup_cached"] = round(loops_["authors"]["wall_s"] / loops_["ours_cached"]["wall_s"], 2)
    print(format_bench(result))
    if out:
        from ..io import write_atomic

        write_atomic(out, json.dumps(result, indent=1, default=str))
    return result


def format_bench(r: dict) -> str:
    head = (f"edit_bench bench: {r['editor']} on {r['benchmark']} ({r['samples']} samples, {r['images']} images"
            f"{' incl. baseline' if r['baseline'] else ''}), {r['model']}, {r['device']}, precision {r['precision']}, "
            f"{r['sampler']['scheduler']} {r['sampler']['steps']} steps, judge {r['judge']['model']} "
            f"({r['judge']['dtype']}, {r['judge']['preprocess']} preprocessing)")
    cols = ["loop", "wall s", "images/s", "edits", *(f"{p} s" for p in PARTS), "other s", "peak RSS MB (process)", "peak CUDA MB"]
    st = r.get("startup_s") or {}
    names = {"process_s": "process start to bench (imports, config)", "model_load_s": "model load",
             "metrics_load_s": "judge and metrics load", "validate_s": "checks", "provenance_s": "provenance digests"}
    startup = "; ".join(f"{label} {st[k]:.2f} s" for k, label in names.items() if st.get(k) is not None)
    lines = [head, f"start-up: {startup}" if startup else "", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for name, x in r["loops"].items():
        row = [name, f"{x['wall_s']:.2f}", f"{x['images_per_s']:.2f}", str(x["edits"]),
               *(f"{x['split_s'][p]:.2f}" for p in (*PARTS, "other")), f"{x['peak_rss_mb']:.0f}",
               f"{x['peak_cuda_mb']:.0f}" if "peak_cuda_mb" in x else "—"]
        lines.append("| " + " | ".join(row) + " |")
    if "speedup" in r:
        lines.append(f"\nours vs the authors' loop: {r['speedup']}x" + (
            f" (baseline generated), {r['speedup_cached']}x (baseline from the cache)" if "speedup_cached" in r else ""))
    if "cached_over_first" in r:
        lines.append(f"a later editor's eval (baseline cached) takes {r['cached_over_first']} x the first's")
    keys = sorted({k for x in r["loops"].values() for k in x["metrics"]})
    if keys:
        lines.append("\nthe same work: " + "; ".join(
            f"{k} " + " / ".join(f"{x['metrics'][k]:.3f}" if k in x["metrics"] else "—" for x in r["loops"].values())
            for k in keys) + f" ({' / '.join(r['loops'])})")
    return "\n".join(lines)
