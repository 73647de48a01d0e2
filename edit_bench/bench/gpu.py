"""``python -m edit_bench.bench.gpu``: everything the first lent GPU should measure, in one call of a few minutes.

On ``--base`` (default ``random:sd1``: SD-1.5's architecture with random weights, whose cost is the real one's; nothing
is downloaded) under the TIMED protocol's sampler (PNDM 50 steps, guidance 7.5, the native size):

1. ``generation``: images/s of our batched loop (``T2IModel.generate``, ``--batch`` images = twice as many UNet rows
   with classifier-free guidance) in each variant of ``--variants``: ``fp32``, ``fp16`` / ``bf16`` (autocast, as
   ``--trainer.precision 16-mixed`` / ``bf16-mixed``), ``fp16_cl`` (channels_last too) and ``fp16_compiled`` (also
   ``torch.compile`` with ``--compile_backend``; its compile time is printed apart), each after one warm-up batch,
   with its peak memory;
2. ``authors``: the authors'-style loop, one float32 diffusers pipeline call per image;
3. ``train``: seconds per step of ESD-x (the paper's recipe, cross-attention) and Concept Ablation (its anchors
   drawn first, timed apart);
4. ``edits``: seconds for UCE, SPEED and OCE to erase ``--concepts`` concepts at once (UCE's artists; OCE's caption
   prior built first, timed apart);
5. ``attacks``: each attack's seconds per step and the projected hours of each published attack table
   (:mod:`edit_bench.bench.attack_cost`, ConceptInversion at the paper's 16 images per step);
6. ``flux``: the generation measure on ``--flux`` (default ``random:flux``, FLUX.1-dev's sampler, 28 steps, 1024 px)
   in bf16, where its memory allows (an out-of-memory batch is reported as such, never a crash).

Everything is printed as it is measured and written to ``--out`` as JSON. What cannot run is said in one line before
any measurement: a compile backend that is missing (the compiled variant is dropped), a precision the device does not
support (bf16 without hardware support: dropped), a first batch that does not fit (the fix: a smaller ``--batch``).
``tests/test_cli.py`` runs it on ``tiny:sd1`` / ``tiny:flux`` on the CPU, so it cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

from ..errors import UsageError
from .throughput import _peak as _process_peak, _peak_reset

VARIANTS = ("fp32", "fp16", "bf16", "fp16_cl", "fp16_compiled")
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp16_cl": torch.float16,
          "fp16_compiled": torch.float16}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device) -> dict:
    return {k: round(v, 1) for k, v in _process_peak(device).items()}


def _oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def check_variants(variants: list[str], device: torch.device, backend: str) -> tuple[list[str], list[str]]:
    """The variants that can run here, and one line for each dropped one (naming why)."""
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise UsageError(f"unknown variant(s) {bad}: choose among {', '.join(VARIANTS)}")
    keep, notes = [], []
    for v in variants:
        if v == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            notes.append("bf16: this GPU does not support bfloat16; dropped (fp16 runs)")
            continue
        if v.startswith("fp16") and device.type == "cpu":
            notes.append(f"{v}: float16 autocast on a CPU measures nothing useful; dropped (use bf16 or fp32 on a CPU)")
            continue
        if v == "fp16_compiled":
            import torch._dynamo

            if backend not in torch._dynamo.list_backends():
                notes.append(f"fp16_compiled: compile backend {backend!r} is not available (have: "
                             f"{', '.join(torch._dynamo.list_backends())}); dropped")
                continue
        keep.append(v)
    return keep, notes


def _autocast(device, dtype):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def generation(t2i, sampler, variants: list[str], batch: int, batches: int, device, backend: str, log) -> dict:
    """Images/s of ``T2IModel.generate`` in each variant (see the module docstring)."""
    prompts = [f"a photo of a cat number {i}" for i in range(batch)]
    out = {}
    for v in variants:
        dtype = DTYPES[v]
        if v in ("fp16_cl", "fp16_compiled"):
            t2i.fast_path(channels_last=True, compile=backend if v == "fp16_compiled" else None)
        row = {}
        _peak_reset(device)
        try:
            with torch.no_grad(), _autocast(device, dtype):
                _sync(device)
                t0 = time.perf_counter()
                t2i.generate(prompts, list(range(batch)), sampler)  # warm-up (and, compiled, the compile)
                _sync(device)
                row["warmup_s"] = round(time.perf_counter() - t0, 2)
                t0 = time.perf_counter()
                for b in range(batches):
                    t2i.generate(prompts, [batch * (b + 1) + i for i in range(batch)], sampler)
                _sync(device)
                wall = time.perf_counter() - t0
        except RuntimeError as e:
            if not _oom(e):
                raise
            row = {"error": f"out of memory at batch {batch}: try --batch {max(1, batch // 2)}"}
            log(f"generation {v}: {row['error']}")
            out[v] = row
            torch.cuda.empty_cache() if device.type == "cuda" else None
            continue
        row.update({"images": batch * batches, "wall_s": round(wall, 3), "images_per_s": round(batch * batches / wall, 3),
                    **_peak(device)})
        out[v] = row
        log(f"generation {v}: {row['images_per_s']:.2f} images/s ({row['images']} images in {wall:.1f} s; warm-up "
            f"{row['warmup_s']:.1f} s; peak {row.get('peak_cuda_mb', row['peak_rss_mb']):.0f} MB)")
    return out


def authors(t2i, sampler, images: int, device, log) -> dict:
    """One float32 diffusers pipeline call per image (the reference scripts' loop)."""
    pipe = t2i.diffusers_pipeline(sampler.scheduler)
    pipe.set_progress_bar_config(disable=True)
    size = sampler.size or t2i.native_size
    kw = {"height": size, "width": size, "num_inference_steps": sampler.steps, "guidance_scale": sampler.guidance,
          "output_type": "pt"}
    with torch.no_grad():
        pipe("a photo of a cat", generator=torch.Generator("cpu").manual_seed(0), **kw)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for i in range(images):
            pipe(f"a photo of a cat number {i}", generator=torch.Generator("cpu").manual_seed(i + 1), **kw)
        _sync(device)
    wall = time.perf_counter() - t0
    row = {"images": images, "wall_s": round(wall, 3), "images_per_s": round(images / wall, 3)}
    log(f"authors' loop (fp32, one pipeline call per image): {row['images_per_s']:.3f} images/s")
    return row


def train(base: str, steps: int, anchors: int, size: int | None, device, log) -> dict:
    """Seconds per training step of ESD-x (paper recipe) and Concept Ablation on ``base``."""
    from ..editors.concept_ablation import ConceptAblation
    from ..editors.esd import ESD
    from ..types import EditRequest, SamplerConfig

    out = {}
    esd = ESD(recipe="paper", params="xattn", steps=steps, lr=1e-5, size=size, base=base)
    esd.t2i.to(device)
    _peak_reset(device)
    t0 = time.perf_counter()
    esd.apply_edit([EditRequest("Van Gogh", "")])
    _sync(device)
    out["ESD-x"] = {"steps": steps, "s_per_step": round((time.perf_counter() - t0) / steps, 3), **_peak(device)}
    log(f"ESD-x (paper recipe): {out['ESD-x']['s_per_step']:.3f} s per step (x_t sampled by DDIM each step)")
    del esd
    anchor_sampler = SamplerConfig(scheduler="ddim", steps=min(100, max(2, steps)), guidance=6.0, size=size, seeds=[0])
    ca = ConceptAblation(steps=steps, num_anchor_images=anchors, anchor_sampler=anchor_sampler, base=base)
    ca.t2i.to(device)
    _peak_reset(device)
    t0 = time.perf_counter()
    ca.apply_edit([EditRequest("Van Gogh", "art")])  # draws its anchor images first (cached for the next edit)
    _sync(device)
    first = time.perf_counter() - t0
    ca.restore()
    t0 = time.perf_counter()
    ca.apply_edit([EditRequest("Van Gogh", "art")])  # the anchors from the cache: the training alone
    _sync(device)
    second = time.perf_counter() - t0
    out["ConceptAblation"] = {"steps": steps, "anchors": anchors, "anchor_s": round(first - second, 3),
                              "s_per_step": round(second / steps, 3), **_peak(device)}
    log(f"Concept Ablation: {out['ConceptAblation']['s_per_step']:.3f} s per step ({anchors} anchor images drawn in "
        f"{first - second:.1f} s)")
    return out


def edits(base: str, n: int, corpus_samples: int, device, log) -> dict:
    """Seconds for UCE, SPEED and OCE to erase ``n`` concepts at once."""
    from ..editors.oce import OCE
    from ..editors.speed import SPEED
    from ..editors.uce import UCE
    from ..models import load_t2i
    from ..types import EditRequest
    from .erase_scale import concepts

    t2i = load_t2i(base).to(device)
    reqs = [EditRequest(c, "") for c in concepts(n)]
    out = {}
    for cls, kw in ((UCE, {}), (SPEED, {}), (OCE, {"corpus_samples": corpus_samples})):
        ed = cls(base=base, **kw)
        ed.use_model(t2i)
        if cls is OCE:
            from ..editors.stats import context_moment

            t0 = time.perf_counter()
            context_moment(t2i, ed.corpus, ed.corpus_samples, "tokens", ed.stats_dir)
            out["OCE_prior_s"] = round(time.perf_counter() - t0, 2)
        ed.apply_edit(reqs[:1])  # warm-up
        ed.restore()
        seconds = ed.apply_edit(reqs)
        ed.restore()
        out[cls.__name__] = {"concepts": n, "seconds": round(seconds, 3), "concepts_per_s": round(n / seconds, 2)}
        log(f"{cls.__name__}: {n} concepts in {seconds:.2f} s")
    return out


def main(argv=None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m edit_bench.bench.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="random:sd1")
    p.add_argument("--flux", default="random:flux", help="the MMDiT measured last ('none': skip; random:flux builds its "
                   "12 B random parameters on the CPU first, minutes)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--compile_backend", default="inductor")
    p.add_argument("--batch", type=int, default=44, help="images per batch (twice as many UNet rows)")
    p.add_argument("--batches", type=int, default=1, help="timed batches per variant (after one warm-up batch)")
    p.add_argument("--steps", type=int, default=50, help="sampler steps (TIMED: PNDM 50)")
    p.add_argument("--size", type=int, default=None, help="image side (default: the model's native size)")
    p.add_argument("--authors_images", type=int, default=4)
    p.add_argument("--train_steps", type=int, default=5)
    p.add_argument("--anchors", type=int, default=4, help="Concept Ablation's anchor images")
    p.add_argument("--concepts", type=int, default=100)
    p.add_argument("--corpus_samples", type=int, default=30_000, help="OCE's caption prior (its default 30,000)")
    p.add_argument("--attack_population", type=int, default=200, help="Ring-A-Bell's population (its 200)")
    p.add_argument("--check_steps", type=int, default=50, help="sampler steps of an attack's judge check (LMS 50)")
    p.add_argument("--inversion_batch", type=int, default=16, help="ConceptInversion's images per step (CCE's 16)")
    p.add_argument("--flux_steps", type=int, default=28)
    p.add_argument("--flux_size", type=int, default=None)
    p.add_argument("--flux_batch", type=int, default=4)
    p.add_argument("--skip", default="", help="comma-separated sections to skip: generation,authors,train,edits,attacks,flux")
    p.add_argument("--out", default=None, help="also write the numbers here (JSON)")
    a = p.parse_args(argv)
    from ..models import load_t2i
    from ..types import SamplerConfig

    try:
        if a.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda: no CUDA device here; run on the GPU machine, or --device cpu for a dry run")
        device = torch.device(a.device)
        if min(a.batch, a.batches, a.steps, a.authors_images, a.train_steps, a.concepts, a.flux_batch) < 1:
            raise UsageError("--batch, --batches, --steps, --authors_images, --train_steps, --concepts and --flux_batch "
                             "must be >= 1")
        skip = {s for s in a.skip.split(",") if s}
        unknown = skip - {"generation", "authors", "train", "edits", "attacks", "flux"}
        if unknown:
            raise UsageError(f"--skip {sorted(unknown)}: use generation, authors, train, edits, attacks, flux")
        variants, notes = check_variants([v for v in a.variants.split(",") if v], device, a.compile_backend)
    except UsageError as e:
        print(f"edit_bench.bench.gpu: error: {e}", file=sys.stderr)
        return 2
    for n in notes:
        print(f"edit_bench.bench.gpu: {n}", file=sys.stderr)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "base": a.base, "notes": notes}
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    t_all = time.perf_counter()
    t2i = load_t2i(a.base).to(device)
    sampler = SamplerConfig(scheduler="pndm", steps=a.steps, guidance=7.5, size=a.size, seeds=[0])
    log(f"{a.base} on {result['device']}: PNDM {a.steps} steps, guidance 7.5, {a.size or t2i.native_size} px, batch {a.batch}")
    sections = result["section_s"] = {}
    clock = t_all  # the model's load is the first section

    def done(name):
        nonlocal clock
        sections[name] = round(time.perf_counter() - clock, 1)
        log(f"[{name}: {sections[name]:.0f} s]")
        clock = time.perf_counter()

    done("load")
    if "generation" not in skip and variants:
        result["generation"] = generation(t2i, sampler, variants, a.batch, a.batches, device, a.compile_backend, log)
        first = result["generation"][variants[0]]
        if "error" in first:  # the first batch does not fit: the fix, before anything else runs
            print(f"edit_bench.bench.gpu: error: {first['error']}", file=sys.stderr)
            return 2
        done("generation")
    if "authors" not in skip:
        t2i.fast_path()  # the authors' loop: eager fp32
        result["authors"] = authors(load_t2i(a.base).to(device), sampler, a.authors_images, device, log)
        best = max((r["images_per_s"] for r in result.get("generation", {}).values() if "images_per_s" in r), default=None)
        if best:
            result["speedup_best_over_authors"] = round(best / result["authors"]["images_per_s"], 2)
            log(f"best variant over the authors' loop: {result['speedup_best_over_authors']}x")
        done("authors")
    del t2i
    if "train" not in skip:
        result["train"] = train(a.base, a.train_steps, a.anchors, a.size, device, log)
        done("train")
    if "edits" not in skip:
        result["edits"] = edits(a.base, a.concepts, a.corpus_samples, device, log)
        done("edits")
    if "attacks" not in skip:
        from .attack_cost import project, step_costs

        costs = step_costs(a.base, a.device, a.size, a.inversion_batch, a.attack_population, a.check_steps, log)
        result["attacks"] = {"costs": costs, "tables": project(costs)}
        for name, t in result["attacks"]["tables"].items():
            log(f"{name}: {t['total_hours']} h per row on this device (upper bound: " +
                ", ".join(f"{k} {v} h" for k, v in t["hours"].items()) + ")")
        done("attacks")
    if "flux" not in skip and a.flux != "none":
        try:
            flux = load_t2i(a.flux, dtype=torch.bfloat16 if device.type == "cuda" else None).to(device)
            fs = SamplerConfig(scheduler="flow_euler", steps=a.flux_steps, guidance=3.5, size=a.flux_size, seeds=[0])
            log(f"{a.flux}: flow-matching Euler {a.flux_steps} steps, {a.flux_size or flux.native_size} px, batch {a.flux_batch}")
            result["flux"] = generation(flux, fs, ["bf16" if device.type == "cuda" else "fp32"], a.flux_batch, 1, device,
                                        a.compile_backend, log)
        except RuntimeError as e:
            if not _oom(e):
                raise
            result["flux"] = {"error": "out of memory loading or running the model"}
            log(f"flux: {result['flux']['error']}")
        done("flux")
    result["total_s"] = round(time.perf_counter() - t_all, 1)
    log(f"total {result['total_s']:.0f} s")
    if a.out:
        from ..io import write_atomic

        write_atomic(a.out, json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
