"""``python -m edit_bench.bench.erase_scale``: the edit time of every multi-concept closed-form editor erasing 1, 10
and 100 concepts at once, on one model (default ``random:sd1``: the full-size SD-1.5 architecture with random
weights, whose cost equals the real one's; nothing is downloaded).

The concepts are the first N artists of UCE's 100-artist list (``datasets/erasure``), each erased to ``""`` by one
edit (the ``fixed`` protocol). Each editor runs at its defaults except where a default cannot run on random weights
(MACE's CFR at ``lam: 0`` is singular on a random text encoder: ``lam`` 0.5 here, same cost). The time is
``Editor.apply_edit``'s wall time (restore, text encoding, every solve), the best of ``--repeats`` edits, with the
share spent in the text encoders (forward hooks: on a CPU it dominates, a GPU makes it small); the caption
priors of OCE and MACE are built once before timing (their build time is printed on its own, as OCE's and MACE's
timings load a cached prior). Concepts per second = N / seconds, the figure the papers quote.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch

from ..errors import UsageError

EDITORS = {
    "UCE": ("edit_bench.editors.uce", "UCE", {}),
    "TIME": ("edit_bench.editors.time", "TIME", {}),
    "RECE": ("edit_bench.editors.rece", "RECE", {}),
    "SPEED": ("edit_bench.editors.speed", "SPEED", {}),
    "OCE": ("edit_bench.editors.oce", "OCE", {}),
    "MaceCFR": ("edit_bench.editors.mace", "MaceCFR", {"lam": 0.5}),
}
ARTISTS = "datasets/erasure/erased-100artists-towards_art-preserve_true-sd_1_4-method_replace.csv"


def concepts(n: int) -> list[str]:
    from ..io import resolve_path

    with open(resolve_path(ARTISTS), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    names = list(dict.fromkeys(r["artist"] for r in rows if r["type"] == "erased"))
    if len(names) < n:
        raise UsageError(f"{ARTISTS} names {len(names)} erased artists; asked for {n}")
    return names[:n]


def main(argv=None) -> None:
    import importlib

    p = argparse.ArgumentParser(prog="python -m edit_bench.bench.erase_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="random:sd1", help="the model (default: SD-1.5's architecture, random weights)")
    p.add_argument("--concepts", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--editors", nargs="+", default=list(EDITORS), choices=list(EDITORS))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--corpus_samples", type=int, default=30_000, help="captions of OCE's and MACE's priors (their default 30,000)")
    p.add_argument("--json", default=None, help="also write the numbers here")
    a = p.parse_args(argv)
    from ..models import load_t2i
    from ..types import EditRequest

    t0 = time.perf_counter()
    t2i = load_t2i(a.base)
    print(f"{a.base}: loaded in {time.perf_counter() - t0:.1f} s; torch threads {torch.get_num_threads()}; "
          f"{sum(s.to_k.weight.numel() + s.to_v.weight.numel() for s in t2i.cross_attn(None)) / 1e6:.1f} M cross-attention K/V weights")
    names = concepts(max(a.concepts))
    clock: list[float] = []  # seconds spent in the text encoders during an edit (forward hooks)
    for _, enc in t2i.text_encoders():
        enc.register_forward_pre_hook(lambda m, args: setattr(m, "_t0", time.perf_counter()))
        enc.register_forward_hook(lambda m, args, out: clock.append(time.perf_counter() - m._t0))
    rows = []
    for name in a.editors:
        mod, cls, kw = EDITORS[name]
        extra = {"corpus_samples": a.corpus_samples} if name in ("OCE", "MaceCFR") else {}
        ed = getattr(importlib.import_module(mod), cls)(base=a.base, **kw, **extra)
        ed.use_model(t2i)  # one model for every editor (each restores its own weights after an edit)
        if name in ("OCE", "MaceCFR"):
            from ..editors.stats import context_moment

            t0 = time.perf_counter()
            context_moment(t2i, ed.corpus, ed.corpus_samples, "tokens" if name == "OCE" else "all", ed.stats_dir)
            print(f"{name}: caption prior ({ed.corpus_samples} captions of {ed.corpus}) built or loaded in {time.perf_counter() - t0:.1f} s")
        for n in a.concepts:
            reqs = [EditRequest(c, "") for c in names[:n]]
            times, texts = [], []
            for _ in range(a.repeats):
                clock.clear()
                times.append(ed.apply_edit(reqs))
                texts.append(sum(clock))
                ed.restore()
            i = min(range(len(times)), key=times.__getitem__)
            best, text = times[i], texts[i]
            rows.append({"editor": name, "concepts": n, "seconds": best, "text_encoding_s": text, "concepts_per_s": n / best,
                         "all": times})
            print(f"{name:8s} {n:4d} concepts: {best:8.2f} s  ({n / best:7.2f} concepts/s; text encoding {text:.2f} s, "
                  f"the rest {best - text:.2f} s; runs {', '.join(f'{t:.2f}' for t in times)})", flush=True)
        del ed
    if a.json:
        Path(a.json).write_text(json.dumps({"base": a.base, "threads": torch.get_num_threads(), "rows": rows}, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
