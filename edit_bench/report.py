"""Turning results into tables."""

from __future__ import annotations

from .report_runs import _baseline_key, _label, _regenerate, _stored_image, table_rows  # noqa: F401  (re-exported)

PRINTED = 40  # metric entries printed by eval before per-concept ones (NAME/group/concept) are left to results.json


def format_table(results: dict, path) -> str:
    """The printed summary of one ``results.json``: baseline and edited side by side, timing, the file."""
    m, b = results["metrics"], results.get("baseline")
    hidden = 0
    if len(m) > PRINTED:  # per-concept entries of a many-concept table: in results.json, not on the screen
        shown = {k: v for k, v in m.items() if k.count("/") < 3}
        hidden, m = len(m) - len(shown), shown
    lines = [f"edit_bench eval: {results['editor']} on {results['benchmark']} ({results['model']}), "
             f"{results['samples']['total']} samples, {len(results['protocol']['seeds'])} seed(s)"]
    if b:
        lines += ["| metric | baseline (unedited) | edited | n |", "|---|---|---|---|"]
        base = {k: f"{b[k]['mean']:.3f} ± {b[k]['std']:.3f}" if k in b else "—" for k in m}  # paired metrics: edited only
        lines += [f"| {k} | {base[k]} | {v['mean']:.3f} ± {v['std']:.3f} | {v['n']} |" for k, v in m.items()]
    else:
        lines += ["| metric | mean | std | n |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['mean']:.3f} | {v['std']:.3f} | {v['n']} |" for k, v in m.items()]
    curve = results.get("curve")
    if curve:  # the sequential protocol: each stage's headline metrics against the number of edits
        keys = [k for k in m if k.count("/") <= 2 and not k.startswith("clip_score/") and k in curve[-1]["metrics"]][:6]
        lines += ["", "| edits | samples | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
        lines += [f"| {c['edits']} | {c['samples']} | " + " | ".join(
            f"{c['metrics'][k]['mean']:.3f}" if k in c["metrics"] else "—" for k in keys) + " |" for c in curve]
    attacks = results.get("attacks")
    if attacks:  # each attack's success rates (after it, before it, per sample either), its time per case, its judge
        def rate(a, k):
            return f"{a[k]['mean']:.3f}" if a.get(k) and a[k]["mean"] is not None else "—"

        lines += ["", "| attack | asr | asr_pre | asr_union | n | s / case | judge |", "|---|---|---|---|---|---|---|"]
        for name, a in attacks.items():
            s = f"{a['seconds_per_case']:.1f}" if a["seconds_per_case"] is not None else "—"
            judge = (a.get("judge") or {}).get("key", "success")
            lines.append(f"| {name} (v{a['version']}) | {rate(a, 'asr')} | {rate(a, 'asr_pre')} | {rate(a, 'asr_union')} "
                         f"| {a['asr']['n']} | {s} | {judge} |")
    t = results["timing"]
    tail = []
    if t["edit_s"] is not None:
        tail.append(f"edit {t['edit_s']:.3f} s x {t['edits']}")
    if t["images_per_s"]:
        tail.append(f"{t['images_per_s']:.1f} images/s")
    if hidden:
        tail.append(f"{hidden} per-concept entries not printed")
    tail.append(f"results: {path}")
    return "\n".join(lines + [" · ".join(tail)])


# ------------------------------------------------------------------------------------------ report command
# What decides images and scores besides the model and the edit: refused side by side when any differs within one
# benchmark (the protocol mode is not among them: the unedited model's row sits beside the edited ones).
PROTOCOL_KEYS = ("sampler", "seeds", "size", "precision", "matmul_precision")


def load_run(path) -> dict:
    """``RUN_DIR/results.json`` (read and checked as :class:`~edit_bench.evaluate.results.Results`) as its mapping,
    with the run directory and what the run's config says about its data."""
    from pathlib import Path

    import yaml

    from .evaluate.results import Results

    p = Path(path)
    f = p / "results.json" if p.is_dir() else p
    res = Results.read(f).to_dict()
    cfg = yaml.safe_load(res.get("config") or "") or {}
    data = (cfg.get("data") or {}).get("init_args") or {}
    res["_dir"], res["_config"] = str(f.parent), cfg
    if data.get("path"):
        res["_data"] = Path(str(data["path"])).stem
    else:  # prompts made from templates: named by their concepts
        concepts = data.get("concepts")
        res["_data"] = res["benchmark"] + (f"({', '.join(map(str, concepts))})" if concepts else "")
    return res


def _metric_protocols(res: dict) -> dict:
    return {m.get("name", m.get("class")): m for m in res["protocol"].get("metrics", [])}


def check_comparable(runs: list[dict]) -> None:
    """Refuse runs of one benchmark whose protocols differ, naming the first difference."""
    from .errors import UsageError

    first: dict[str, dict] = {}
    for r in runs:
        ref = first.setdefault(r["_data"], r)
        for k in PROTOCOL_KEYS:
            if r["protocol"].get(k) != ref["protocol"].get(k):
                raise UsageError(f"{r['_dir']} and {ref['_dir']} ran {r['_data']} under different protocols: {k} "
                                 f"{r['protocol'].get(k)!r} vs {ref['protocol'].get(k)!r}. Report them separately")
        mine, theirs = _metric_protocols(r), _metric_protocols(ref)
        for name in sorted(set(mine) & set(theirs)):
            if mine[name] != theirs[name]:
                diff = sorted(k for k in set(mine[name]) | set(theirs[name]) if mine[name].get(k) != theirs[name].get(k))
                raise UsageError(f"{r['_dir']} and {ref['_dir']} score {r['_data']} with different {name!r} protocols "
                                 f"({', '.join(diff)} differ). Report them separately")
        a, b = (x.get("provenance") or {} for x in (r, ref))
        data_files = lambda p: {f: d for f, d in (p.get("files") or {}).items() if f.startswith("data.")}  # noqa: E731
        for what, differs in (("edit_bench source", a.get("code") != b.get("code")),
                              ("data file contents", data_files(a) != data_files(b))):
            if a and b and differs:  # the same benchmark name over other data, or numbers of other code
                raise UsageError(f"{r['_dir']} and {ref['_dir']} ran {r['_data']} with different {what}. Report them separately")


def _metric_names(rows) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row["metrics"]))


def markdown_table(rows: list[dict]) -> str:
    names = _metric_names(rows)
    out = ["| benchmark | method | model | " + " | ".join(names) + " | edit_s |",
           "|---" * (len(names) + 4) + "|"]
    for row in rows:
        cells = [f"{row['metrics'][k]['mean']:.3f} ± {row['metrics'][k]['std']:.3f} (n={row['metrics'][k]['n']})"
                 if k in row["metrics"] else "—" for k in names]
        edit = f"{row['edit_s']:.3f}" if row["edit_s"] is not None else "—"
        out.append(f"| {row['benchmark']} | {row['method']} | {row['model']} | " + " | ".join(cells) + f" | {edit} |")
    return "\n".join(out) + "\n"


def write_csv(rows: list[dict], path) -> None:
    import csv

    names = _metric_names(rows)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["run", "benchmark", "method", "editor", "model", "edit_s"]
                   + [f"{k}_{s}" for k in names for s in ("mean", "std", "n")])
        for row in rows:
            m = row["metrics"]
            w.writerow([row["run"], row["benchmark"], row["method"], row["editor"], row["model"],
                        "" if row["edit_s"] is None else row["edit_s"]]
                       + [m[k][s] if k in m else "" for k in names for s in ("mean", "std", "n")])


def refact_table(rows: list[dict]) -> str:
    """ReFACT Table 1's layout: efficacy, generality, specificity (percent, ± std across seeds), F1, FID, CLIP.
    FID and CLIP come from a caption-set run (coco30k; on the toy world toy_captions) of the same editor,
    arguments and model among the runs given ("—" without one); a toy run's FID is the toy judge's and says so."""
    quality = [r for r in rows if r["res"]["benchmark"] == "Captions"]
    edits = [r for r in rows if r["res"]["benchmark"] != "Captions"]

    def same_edit(a, b):  # the full editor arguments and the model's identity, never a shortened label
        return (a["editor"], a["res"].get("editor_args"), a["res"].get("model_id")) == \
            (b["editor"], b["res"].get("editor_args"), b["res"].get("model_id"))

    def unedited(x):  # a baseline row, or a run of the unedited model without a delta
        args = x["res"].get("editor_args") or {}
        return x["method"] == "unedited (baseline)" or (x["editor"] == "Unedited" and not args.get("delta"))

    def q_for(row):  # the quality run of the same editor, arguments and model; none: "—"
        for q in quality:
            if unedited(row) and unedited(q) and q["res"].get("model_id") == row["res"].get("model_id"):
                return q["metrics"]
            if not unedited(row) and not unedited(q) and same_edit(q, row):
                return q["metrics"]
        return {}

    toy = any("toy_fid" in q_for(r) for r in edits)
    fid_key, fid_name = ("toy_fid", "toy FID (judge tower) ↓") if toy else ("fid", "FID ↓")
    out = [f"| Dataset | Method | Efficacy | Generality | Specificity | F1 | {fid_name} | CLIP ↑ |", "|---|---|---|---|---|---|---|---|"]

    def pct(m, k):
        return f"{100 * m[k]['mean']:.2f} ± {100 * m[k]['std']:.2f}" if k in m else "—"

    for row in edits:
        m, q = row["metrics"], q_for(row)
        f1 = f"{100 * m['f1']['mean']:.2f}" if "f1" in m else "—"
        fid = f"{q[fid_key]['mean']:.2f}" if fid_key in q else "—"
        clip = f"{q['clip_score']['mean']:.2f}" if "clip_score" in q else "—"
        out.append(f"| {row['benchmark']} | {row['method']} | {pct(m, 'efficacy')} | {pct(m, 'generality')} | "
                   f"{pct(m, 'specificity')} | {f1} | {fid} | {clip} |")
    return "\n".join(out) + "\n"


def image_grid(runs: list[dict], k: int, path, regenerate: bool = True) -> list[str]:
    """Rows: ``k`` prompts (samples every run has, the first seed of each); columns: the unedited model, then
    each run's edited images of the same sample. Stored PNGs when the runs saved images, else regenerated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .errors import UsageError

    from .rundir import RunDir

    def ids_of(r):
        return list(RunDir(r["_dir"], "eval", {}).load_records("samples"))

    common = set(ids_of(runs[0]))
    for r in runs[1:]:
        common &= set(ids_of(r))
    if not common:
        raise UsageError("the runs share no sample: an image grid compares runs of the same benchmark and seeds")
    chosen, prompts = [], set()
    groups = ("efficacy", "generality", "specificity")

    def order(sid):  # the first seed; each case's first prompt of every group before anyone's second
        case, group, idx, seed = sid.rsplit("/", 3)
        return int(seed), int(idx), case, groups.index(group) if group in groups else len(groups), group

    for sid in sorted(common, key=order):
        case, group, idx, _ = sid.rsplit("/", 3)
        if (case, group, idx) not in prompts:
            prompts.add((case, group, idx))
            chosen.append(sid)
        if len(chosen) == k:
            break
    base = next((r for r in runs if r.get("baseline")), runs[0])
    columns = [("unedited", base, "baseline" if base.get("baseline") else None)] + [(_label(r), r, "samples") for r in runs]
    cells = []
    for _, r, variant in columns:
        if variant is None:  # no stored baseline: the unedited model, regenerated
            cells.append(_regenerate({**r, "_config": {**r["_config"], "model": {"class_path": "edit_bench.editors.unedited.Unedited",
                                                                                   "init_args": {"base": r["_config"]["model"]["init_args"].get("base", "toy")}}}},
                                     chosen, "baseline"))
            continue
        stored = {sid: _stored_image(r["_dir"], variant, sid) for sid in chosen}
        if any(v is None for v in stored.values()):
            if not regenerate:
                raise UsageError(f"{r['_dir']} saved no images (eval --save_images true); drop --no-regenerate to make them again")
            stored = _regenerate(r, chosen, variant)
        cells.append(stored)
    prompt = {k: rec.prompt for k, rec in RunDir(runs[0]["_dir"], "eval", {}).load_records("samples").items()}
    fig, axes = plt.subplots(len(chosen), len(columns), figsize=(1.8 * len(columns) + 1.5, 1.8 * len(chosen)), squeeze=False)
    for i, sid in enumerate(chosen):
        for j, (label, _, _) in enumerate(columns):
            ax = axes[i][j]
            ax.imshow(cells[j][sid].permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                import textwrap

                ax.set_title("\n".join(textwrap.wrap(label, 24)), fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{prompt[sid]}\nseed {sid.rsplit('/', 1)[1]}", fontsize=6, rotation=0, ha="right", va="center")
    fig.tight_layout()
    from .io import write_atomic

    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)
    return chosen


def main(argv=None) -> None:
    """``python -m edit_bench report RUN_DIR... --out DIR``."""
    import argparse
    from pathlib import Path

    from .io import write_atomic

    p = argparse.ArgumentParser(prog="python -m edit_bench report",
                                description="Tables (markdown, CSV, ReFACT Table 1's layout) and image grids from eval runs")
    p.add_argument("runs", nargs="+", help="eval output directories (each with results.json)")
    p.add_argument("--out", help="where to write table.md, table.csv, refact_table1.md, grid.png (required without --html)")
    p.add_argument("--html", metavar="PAGE.html", help="also (or only, without --out) write one self-contained page: the "
                                                      "table, every case's images side by side, the plots, the provenance")
    p.add_argument("--html-prompts", type=int, default=2, metavar="K",
                   help="--html: the first K prompts of each case and group, first seed (0 = every prompt and seed)")
    p.add_argument("--html-thumb", type=int, default=128, metavar="PX", help="--html: the images' longest side")
    p.add_argument("--html-images", choices=("auto", "embed", "folder"), default="auto",
                   help="--html: images inside the page, or files in PAGE_files/ beside it (auto: embedded up to 2,000)")
    p.add_argument("--grid", type=int, default=0, help="rows (prompts) of an image grid; 0 = no grid")
    p.add_argument("--no-regenerate", action="store_true", help="use stored images only (eval --save_images true)")
    p.add_argument("--table", help="also lay the runs out as a published table, ours beside the paper's (e.g. "
                                   "mace_table1, mace_table2, esd_table2, mace_table3; toy_objects, toy_artists, toy_entities)")
    p.add_argument("--published", help="a published-values file instead of the shipped ones (edit_bench/published/)")
    p.add_argument("--allow-deviations", action="store_true",
                   help="--table: print a run whose protocol departs from the paper's (model, precision, sampler, seeds, "
                        "prompts, erased set, scorer, recipe) with each deviation named in its row, instead of refusing it")
    p.add_argument("--logger", choices=sorted(GRID_LOGGERS), help="also send the table and the image grid to this "
                                                                     "Lightning logger (its package installed)")
    p.add_argument("--logger_dir", default=None, help="the logger's save_dir (default: --out)")
    a = p.parse_args(argv)
    if a.out is None and a.html is None:
        p.error("give --out DIR (tables, grid) or --html PAGE.html (one page), or both")
    if a.html_prompts < 0 or a.html_thumb < 16:
        p.error("--html-prompts must be >= 0 (0 = all) and --html-thumb >= 16")
    if a.logger and a.out is None:
        p.error("--logger sends the tables of --out: give --out DIR")
    if a.logger:
        from .loggers import check_logger_args

        check_logger_args(["--trainer.logger", GRID_LOGGERS[a.logger]])
    runs = [load_run(r) for r in a.runs]
    check_comparable(runs)
    if a.html:
        from .report_html import check_html_inputs

        check_html_inputs(runs, a.html)
    table = None
    if a.table:
        from .tables import render

        table = render(a.table, runs, a.published, a.allow_deviations)  # checked before anything is written
    page = None
    if a.html:  # made whole in memory first: a refusal (no images) leaves nothing written
        from .report_html import build_page

        page, page_files = build_page(runs, table, a.html_prompts, a.html_thumb, not a.no_regenerate, a.html, a.html_images)
    rows = table_rows(runs)
    if a.out is None:
        from .report_html import write_page

        write_page(a.html, page, page_files)
        print(table if table is not None else markdown_table(rows))
        print(f"edit_bench report: {a.html} ({len(page) / 1e6:.2f} MB)")
        return
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "table.md", markdown_table(rows))
    write_atomic(out / "refact_table1.md", refact_table(rows))
    write_csv(rows, out / ".table.csv.tmp")
    (out / ".table.csv.tmp").replace(out / "table.csv")
    written = ["table.md", "table.csv", "refact_table1.md"]
    if table is not None:
        write_atomic(out / f"{a.table}.md", table)
        written.append(f"{a.table}.md")
    if a.grid:
        image_grid([r for r in runs if r["benchmark"] == runs[0]["benchmark"]], a.grid, out / "grid.png",
                   regenerate=not a.no_regenerate)
        written.append("grid.png")
    if a.logger:
        written.append(log_report(a.logger, a.logger_dir or str(out), markdown_table(rows), out / "grid.png" if a.grid else None))
    shown = [str(out / w) for w in written]
    if page is not None:
        from .report_html import write_page

        write_page(a.html, page, page_files)
        shown.append(f"{a.html} ({len(page) / 1e6:.2f} MB)")
    print(table if table is not None else markdown_table(rows))
    print("edit_bench report: " + ", ".join(shown))


GRID_LOGGERS = {"tensorboard": "TensorBoardLogger", "wandb": "WandbLogger", "mlflow": "MLFlowLogger"}


def log_report(kind: str, save_dir: str, table_md: str, grid) -> str:
    """Send the report's table (as text) and its grid (as an image) to a Lightning logger; returns where it went."""
    from pathlib import Path

    import numpy as np
    from lightning.pytorch import loggers

    lg = getattr(loggers, GRID_LOGGERS[kind])(save_dir=save_dir)
    if kind == "tensorboard":
        lg.experiment.add_text("report/table", table_md)
        if grid is not None:
            import matplotlib.image as mpimg

            lg.experiment.add_image("report/grid", np.asarray(mpimg.imread(grid))[..., :3], dataformats="HWC")
        lg.experiment.flush()
        where = lg.log_dir
    elif kind == "wandb":
        lg.log_text(key="report/table", columns=["markdown"], data=[[table_md]])
        if grid is not None:
            lg.log_image(key="report/grid", images=[str(grid)])
        where = f"wandb run {lg.experiment.id}"
    else:  # mlflow: files of the run
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "table.md"
            path.write_text(table_md)
            lg.experiment.log_artifact(lg.run_id, str(path), "report")
        if grid is not None:
            lg.experiment.log_artifact(lg.run_id, str(grid), "report")
        where = f"mlflow run {lg.run_id}"
    lg.finalize("success")
    return f"{kind}: {where}"
