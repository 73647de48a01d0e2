"""``python -m edit_bench table NAME --out DIR``: every row of a published table, run and printed beside the paper's.

A table's manifest is its spec's ``runs`` (``edit_bench/published/*.yaml``): row name -> the ``eval`` arguments of
that row (an experiment config, or ``--model``/``--data`` configs). Each row is one ``eval`` in ``DIR/<row>``, run
as its own process: a row whose run finished (``results.json``) is skipped, a row interrupted is resumed by the same
``eval`` (its run directory resumes), and a row that fails is marked and never stops the others. Rows of one table
evaluate the same benchmark, so the unedited model's samples are drawn by the first row and read from the baseline
cache by every later one (``$EDIT_BENCH_CACHE``, file-locked: rows on several cluster nodes share it on a shared
filesystem). ``DIR/table.json`` holds every row's state (pending, running, done, failed) as the rows run; at the
end the table is rendered from the finished rows (:func:`edit_bench.tables.render`, with its protocol checks) into
``DIR/NAME.md`` and printed.

Launchers: ``local`` runs the rows one after another in this environment; ``slurm`` submits one job per row through
submitit (``pip install -e ".[cluster]"``) with the ``--slurm.*`` settings and waits for them; ``submitit-local`` is
submitit's local executor (jobs as subprocesses: the same code path as ``slurm``, used by the tests).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .errors import UsageError
from .io import REPO_ROOT, write_atomic
from .rundir import release_lock, take_lock

LAUNCHERS = ("local", "slurm", "submitit-local")


def manifest(name: str, path: str | None = None) -> tuple[dict, dict[str, list[str]]]:
    """The table's spec and its rows' ``eval`` arguments, every config they name checked to exist."""
    from .tables import load_specs

    specs = load_specs(path)
    if name not in specs:
        raise UsageError(f"unknown table {name!r}: use one of {', '.join(sorted(specs))}")
    spec = specs[name]
    rows = spec.get("runs") or {}
    if not rows:
        raise UsageError(f"table {name!r} has no manifest (runs:) in {spec['_file']}: run its rows with `eval` and "
                         f"`report --table {name}`")
    out = {}
    for row, args in rows.items():
        args = [str(a) for a in args]
        for flag, value in zip(args, args[1:]):
            if flag in ("-c", "--config", "--model", "--data") and value.endswith((".yaml", ".yml")):
                if not (REPO_ROOT / value).is_file() and not Path(value).is_file():
                    raise UsageError(f"table {name!r} row {row!r} names {value}, which does not exist: fix the manifest "
                                     f"in {spec['_file']}")
        out[row] = args
    return spec, out


def _slug(row: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in row)


def _command(args: list[str], out_dir: Path, extra: list[str]) -> list[str]:
    resolved = [str(REPO_ROOT / a) if a.endswith((".yaml", ".yml")) and (REPO_ROOT / a).is_file() else a for a in args]
    return [sys.executable, "-m", "edit_bench", "eval", *resolved, *extra, "--out_dir", str(out_dir)]


def _run_row(cmd: list[str], log: str) -> int:
    """One row's ``eval`` as a process, its output in ``log``; its exit code. SIGTERM/SIGINT sent to this process are
    passed on to the row, which stops after its batch in flight (its run resumes); then they stop the table."""
    import signal

    from .signals import Interrupted

    with open(log, "a") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        got = []

        def forward(signum, frame):
            got.append(signum)
            proc.send_signal(signum)

        old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            code = proc.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
    if got:
        raise Interrupted(got[0])
    return code


class _RowJob:
    """A row as a submitit job: requeued on preemption or timeout, where the same ``eval`` resumes its run."""

    def __call__(self, cmd: list[str], log: str) -> int:
        return _run_row(cmd, log)

    def checkpoint(self, cmd: list[str], log: str):
        import submitit

        return submitit.helpers.DelayedSubmission(self, cmd, log)


def _executor(launcher: str, folder: Path, slurm: dict):
    try:
        import submitit
    except ImportError:
        raise UsageError(f"--launcher {launcher} needs submitit: pip install -e \".[cluster]\"") from None
    ex = submitit.AutoExecutor(folder=str(folder), cluster="local" if launcher == "submitit-local" else "slurm")
    if launcher == "slurm":
        ex.update_parameters(**{k: v for k, v in slurm.items() if v is not None})
    return ex


def run_table(name: str, out: str | Path, rows: list[str] | None = None, launcher: str = "local", extra: list[str] = (),
              dry_run: bool = False, allow_deviations: bool = False, published: str | None = None,
              slurm: dict | None = None, html: bool = False) -> dict:
    """Run the selected rows of table ``name`` into ``out`` and render the table; returns the rows' states. ``html``:
    every row also stores its images, and ``out/NAME.html`` is the comparison page of the finished rows."""
    if launcher not in LAUNCHERS:
        raise UsageError(f"unknown launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
    spec, manifest_rows = manifest(name, published)
    chosen = list(manifest_rows) if not rows else rows
    unknown = [r for r in chosen if r not in manifest_rows]
    if unknown:
        raise UsageError(f"table {name!r} has no row {unknown[0]!r}: its rows are {', '.join(manifest_rows)}")
    out = Path(out)
    extra = list(extra) + (["--save_images", "edited"] if html else [])  # the baseline stays shared through the cache
    cmds = {r: _command(manifest_rows[r], out / _slug(r), extra) for r in chosen}
    if dry_run:
        for r, c in cmds.items():
            print(f"# {r}\n{shlex.join(c)}")
        return {r: {"state": "dry-run", "command": shlex.join(c)} for r, c in cmds.items()}
    executor = _executor(launcher, out / ".submitit", slurm or {}) if launcher != "local" else None
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file: give the table's folder")
    out.mkdir(parents=True, exist_ok=True)
    lock = out / TABLE_LOCK  # one table command per folder: a second one would run the same rows twice
    me = take_lock(lock, shlex.join(["python", "-m", "edit_bench", "table", name, "--out", str(out)]), f"--out {out}", "--out")
    try:
        return _run_rows(name, out, chosen, cmds, states_of(out), executor, launcher, published, allow_deviations, html)
    finally:
        release_lock(lock, me)


TABLE_LOCK = ".table.lock"


def states_of(out: Path) -> dict:
    """The rows' states a previous table command left in ``out/table.json`` (``{}``: none)."""
    state_file = out / "table.json"
    return json.loads(state_file.read_text())["rows"] if state_file.is_file() else {}


def _run_rows(name, out, chosen, cmds, states, executor, launcher, published, allow_deviations, html=False) -> dict:
    """Run the pending rows (done ones are skipped), keeping ``out/table.json`` current; then render the table."""
    state_file = out / "table.json"

    def save():
        write_atomic(state_file, json.dumps({"table": name, "launcher": launcher, "rows": states}, indent=1))

    pending = []
    for r in chosen:
        done = (out / _slug(r) / "results.json").is_file() and not (out / _slug(r) / ".lock").exists()
        states[r] = {**states.get(r, {}), "dir": str(out / _slug(r)), "log": str(out / f"{_slug(r)}.log"),
                     "command": shlex.join(cmds[r]), "state": "done" if done else "pending"}
        if not done:
            pending.append(r)
    save()
    _show(name, states, chosen)
    if executor is None:
        for r in pending:
            states[r].update(state="running", started=time.time())
            save()
            try:
                code = _run_row(cmds[r], states[r]["log"])
            except BaseException:  # stopped: the row's run directory resumes on the same command
                states[r].update(state="stopped", wall_s=round(time.time() - states[r]["started"], 1))
                save()
                raise
            states[r].update(state="done" if code == 0 else "failed", exit_code=code,
                             wall_s=round(time.time() - states[r]["started"], 1))
            save()
            print(f"edit_bench table: {r}: {states[r]['state']} ({states[r]['wall_s']} s)" +
                  ("" if code == 0 else f", exit {code}: see {states[r]['log']}"), flush=True)
    else:
        jobs = {}
        for r in pending:
            jobs[r] = executor.submit(_RowJob(), cmds[r], states[r]["log"])
            states[r].update(state="running", job_id=str(jobs[r].job_id), started=time.time())
        save()
        for r, job in jobs.items():
            try:
                code = job.result()
            except Exception as e:  # the job itself failed (killed, not requeued): the row is marked
                code = None
                states[r]["error"] = str(e).splitlines()[-1][:300] if str(e) else type(e).__name__
            states[r].update(state="done" if code == 0 else "failed", exit_code=code,
                             wall_s=round(time.time() - states[r]["started"], 1))
            save()
    _show(name, states, chosen)
    finished = [r for r in chosen if states[r]["state"] == "done"]
    if finished:
        from .report import load_run
        from .tables import render

        text = render(name, [load_run(states[r]["dir"]) for r in finished], published, allow_deviations)
        missing = [r for r in chosen if r not in finished]
        if missing:
            text += "\nRows without a finished run: " + "; ".join(
                f"{r} ({states[r]['state']}, see {states[r]['log']})" for r in missing) + "\n"
        write_atomic(out / f"{name}.md", text)
        print(text)
        if html:
            _page(out, name, [load_run(states[r]["dir"]) for r in finished], text)
    return {r: states[r] for r in chosen}


def _page(out: Path, name: str, runs: list[dict], text: str) -> None:
    """``out/NAME.html``: the comparison page of the finished rows beside the paper's table, from the edited images the
    rows stored (a row run before ``--html`` shows its images as missing) and the unedited model's drawn again (no
    edit: a generation pass over the page's samples); rewritten at every table command."""
    import shutil

    from .report_html import build_page, folder_of, write_page

    page = out / f"{name}.html"
    html, files = build_page(runs, text, page=page, regenerate=False, allow_missing=True)
    page.unlink(missing_ok=True)
    shutil.rmtree(folder_of(page), ignore_errors=True)
    write_page(page, html, files)
    print(f"edit_bench table: {page} ({len(html) / 1e6:.2f} MB{f', {len(files)} images in {folder_of(page)}' if files else ''})")


def _show(name: str, states: dict, chosen: list[str]) -> None:
    print(f"edit_bench table {name}: " + ", ".join(f"{r} {states[r]['state']}" for r in chosen), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m edit_bench table", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="a published table with a manifest (runs:), e.g. toy_objects, mace_table2")
    p.add_argument("--out", required=True, help="the table's folder: one run directory per row, table.json, NAME.md")
    p.add_argument("--rows", help="comma-separated rows to run (default: all)")
    p.add_argument("--launcher", default="local", choices=LAUNCHERS)
    p.add_argument("--dry-run", action="store_true", help="print each row's command and run nothing")
    p.add_argument("--allow-deviations", action="store_true", help="print rows whose protocol departs from the paper's "
                                                                   "with each deviation named (see report --table)")
    p.add_argument("--published", help="a published-values file instead of the shipped ones")
    p.add_argument("--html", action="store_true", help="every row stores its images, and OUT/NAME.html is the comparison "
                                                       "page of the finished rows beside the paper's table")
    for k, help_ in (("partition", "SLURM partition"), ("gpus_per_node", "GPUs per job (set --trainer.devices to match "
                     "after --)"), ("timeout_min", "each job's time limit in minutes"), ("cpus_per_task", "CPUs per job"),
                     ("mem_gb", "memory per job")):
        p.add_argument(f"--slurm.{k}", dest=f"slurm_{k}", default=None, type=str if k == "partition" else int, help=help_)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    slurm = {"slurm_partition": a.slurm_partition, "gpus_per_node": a.slurm_gpus_per_node, "timeout_min": a.slurm_timeout_min,
             "cpus_per_task": a.slurm_cpus_per_task, "mem_gb": a.slurm_mem_gb}
    states = run_table(a.name, a.out, [r.strip() for r in a.rows.split(",")] if a.rows else None, a.launcher, extra,
                       a.dry_run, a.allow_deviations, a.published, slurm, a.html)
    failed = [r for r, s in states.items() if s["state"] == "failed"]
    if failed:
        raise UsageError(f"table {a.name}: row(s) {', '.join(failed)} failed (their logs are in {a.out}); the others are "
                         "in the table. Fix and rerun the same command: finished rows are skipped")
