"""What a report reads from stored runs, shared by the tables (:mod:`edit_bench.report`) and the comparison page
(:mod:`edit_bench.report_html`): each run's label, the table's rows, and its images (stored or drawn again)."""

from __future__ import annotations


def _label(r: dict) -> str:
    args = r.get("editor_args") or {}
    short = {k: v for k, v in args.items() if k not in ("base", "augmentations", "delta") and not isinstance(v, (dict, list))}
    label = r["editor"] + (f" ({', '.join(f'{k}={v}' for k, v in list(short.items())[:3])})" if short else "")
    if r.get("curve"):  # a sequential run's numbers are its last stage's: say so beside the per-case rows
        label += f" [sequential, after {r['curve'][-1]['edits']} edits]"
    return label


def _baseline_key(r: dict) -> tuple:
    """What makes two runs' unedited baselines the same: the model, the data, how images are drawn and scored (the
    provenance's generation and metrics) and the samples scored (each metric's count). Never the numbers themselves:
    the same baseline drawn in another batch composition (a cached one) differs by float rounding."""
    import json

    prov = r.get("provenance") or {}
    counts = tuple(sorted((k, v.get("n")) for k, v in r["baseline"].items() if isinstance(v, dict)))
    return (r["model_id"], r["_data"], json.dumps(prov.get("generation"), sort_keys=True, default=str),
            json.dumps(prov.get("metrics"), sort_keys=True, default=str), counts)


def table_rows(runs: list[dict]) -> list[dict]:
    """One row per run (and one per distinct unedited baseline): labels, metrics, edit time."""
    rows, seen = [], set()
    for r in runs:
        if r.get("baseline"):
            key = _baseline_key(r)
            if key not in seen:
                seen.add(key)
                rows.append({"run": r["_dir"], "method": "unedited (baseline)", "model": r["model"], "benchmark": r["_data"],
                             "metrics": r["baseline"], "edit_s": None, "editor": "Unedited", "res": r})
        rows.append({"run": r["_dir"], "method": _label(r), "model": r["model"], "benchmark": r["_data"],
                     "metrics": r["metrics"], "edit_s": r["timing"].get("edit_s"), "editor": r["editor"], "res": r})
    return rows


def _stored_image(run_dir, variant: str, sample_id: str):
    from pathlib import Path

    p = Path(run_dir) / f"images_{variant}" / (sample_id.replace("/", "_").replace(":", "_") + ".png")
    if not p.is_file():
        return None
    import numpy as np
    import torch
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1).float() / 255


def _regenerate(res: dict, ids: list[str], variant: str):
    """The images of ``ids`` made again from the run's config: its editor (edited per case, once for the
    fixed protocol, or not at all for the baseline) and its benchmark's sampler and seeds."""
    import torch
    from jsonargparse import ArgumentParser

    from .benchmarks import Benchmark
    from .editors import Editor
    from .types import GenerationBatch

    p = ArgumentParser(exit_on_error=False)
    p.add_subclass_arguments(Editor, "model")
    p.add_subclass_arguments(Benchmark, "data")
    cfg = res["_config"]
    init = p.instantiate_classes(p.parse_object({"model": cfg["model"], "data": cfg["data"]}))
    editor, bench = init.model, init.data
    by_id = {s.id: s for s in bench.samples()}
    images = {}
    edited = variant == "samples" and editor.edits != "none"
    if edited and res["protocol"]["protocol"] == "fixed":
        editor.apply_edit(bench.requests(), bench.preserve())
    per_case = edited and res["protocol"]["protocol"] == "per_case"
    by_case: dict[str, list] = {}
    for sid in ids:  # one edit per case, its samples in the benchmark's batches
        by_case.setdefault(by_id[sid].case_id if per_case else "", []).append(by_id[sid])
    for case_id, samples in by_case.items():
        if per_case:
            editor.activate(bench.case(case_id))
        for i in range(0, len(samples), bench.batch_size):
            chunk = tuple(samples[i:i + bench.batch_size])
            with torch.no_grad():
                out = editor.predict_step(GenerationBatch(chunk, bench.sampler, None)).float().cpu()
            images.update({s.id: img for s, img in zip(chunk, out)})
    editor.restore()
    return images
