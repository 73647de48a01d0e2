"""Turning results into tables."""

from __future__ import annotations


def format_table(results: dict, path) -> str:
    """The printed summary of one ``results.json``: baseline and edited side by side, timing, the file."""
    m, b = results["metrics"], results.get("baseline")
    lines = [f"edit_bench eval: {results['editor']} on {results['benchmark']} ({results['model']}), "
             f"{results['samples']['total']} samples, {len(results['protocol']['seeds'])} seed(s)"]
    if b:
        lines += ["| metric | baseline (unedited) | edited | n |", "|---|---|---|---|"]
        base = {k: f"{b[k]['mean']:.3f} ± {b[k]['std']:.3f}" if k in b else "—" for k in m}  # paired metrics: edited only
        lines += [f"| {k} | {base[k]} | {v['mean']:.3f} ± {v['std']:.3f} | {v['n']} |" for k, v in m.items()]
    else:
        lines += ["| metric | mean | std | n |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['mean']:.3f} | {v['std']:.3f} | {v['n']} |" for k, v in m.items()]
    t = results["timing"]
    tail = []
    if t["edit_s"] is not None:
        tail.append(f"edit {t['edit_s']:.3f} s x {t['edits']}")
    if t["images_per_s"]:
        tail.append(f"{t['images_per_s']:.1f} images/s")
    tail.append(f"results: {path}")
    return "\n".join(lines + [" · ".join(tail)])
