"""``python -m edit_bench table NAME``: every row of a published table run (resumable, a failed row marked, the
unedited samples drawn once per table) and the table printed; the launchers; bad input."""

import json

import pytest
import yaml

from helpers import ROOT, run_cli

# each row on the random tiny model, 2 steps, one seed: the same code as the toy table, in seconds
FAST = ["--model.init_args.base", "tiny:sd1", "--data.sampler.steps", "2", "--data.sampler.seeds", "[0]",
        "--data.judge.model", "tiny:random"]


def _published(tmp_path, runs: dict) -> str:
    """toy_entities' spec with its manifest replaced by ``runs``."""
    spec = yaml.safe_load((ROOT / "edit_bench/published/erasure.yaml").read_text())["toy_entities"]
    spec["runs"] = runs
    f = tmp_path / "published.yaml"
    f.write_text(yaml.safe_dump({"toy_entities": spec}, sort_keys=False))  # the manifest's row order is the run order
    return str(f)


def test_a_table_runs_its_rows_marks_a_failed_one_resumes_and_shares_the_baseline(tmp_path, capsys, monkeypatch):
    """Rows UCE and "broken" by the local launcher, then UCE and TIME by submitit's local executor (jobs as
    subprocesses, the slurm launcher's code path): UCE is skipped, TIME reads the unedited samples UCE drew."""
    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))
    data = ["--data", "configs/benchmark/toy_entities.yaml"]
    pub = _published(tmp_path, {"UCE": ["--model", "configs/editor/uce.yaml", *data],
                                "broken": ["--model", "configs/editor/uce.yaml", "--model.init_args.lam", "-1", *data],
                                "TIME": ["--model", "configs/editor/time.yaml", *data]})
    out = tmp_path / "t"
    common = ["--out", out, "--published", pub, "--allow-deviations"]
    assert run_cli(["table", "toy_entities", *common, "--rows", "UCE,broken", "--", *FAST]) == 2  # a row failed: one line
    err = capsys.readouterr()
    assert "row(s) broken failed" in err.err and "rerun the same command" in err.err
    states = json.loads((out / "table.json").read_text())["rows"]
    assert {r: s["state"] for r, s in states.items()} == {"UCE": "done", "broken": "failed"}
    assert "lam must be > 0" in (out / "broken.log").read_text()  # the row's own error, in its log
    table = (out / "toy_entities.md").read_text()
    assert "| UCE (tiny:sd1" in table and "Rows without a finished run: broken (failed" in table
    if pytest.importorskip("submitit", reason='the cluster launcher needs submitit: pip install -e ".[cluster]"'):
        assert run_cli(["table", "toy_entities", *common, "--rows", "UCE,TIME", "--launcher", "submitit-local",
                        "--html", "--", *FAST]) == 0
    printed = capsys.readouterr().out
    assert "UCE done, TIME pending" in printed  # UCE is not run again
    # the comparison page: TIME's edited images (stored by its row), UCE's shown as missing (run before --html), the
    # unedited model's drawn again; the baseline stays shared through the cache (checked below)
    page = (out / "toy_entities.html").read_text()
    assert "Ours beside the paper" in page and page.count("data:image/png;base64,") > 0 and '"src": null' in page
    assert (out / "TIME/images_samples").is_dir() and not (out / "TIME/images_baseline").exists()
    assert f"edit_bench table: {out / 'toy_entities.html'}" in printed
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert rows["UCE"]["wall_s"] == states["UCE"]["wall_s"] and rows["TIME"]["state"] == "done" and rows["TIME"]["job_id"]
    table = (out / "toy_entities.md").read_text()
    assert "| TIME (tiny:sd1" in table and sum(ln.startswith("| SD (") for ln in table.splitlines()) == 1
    uce, time_ = (json.loads((out / r / "results.json").read_text())["samples"]["baseline_cache"] for r in ("UCE", "TIME"))
    assert uce["hits"] == 0 and uce["added"] > 0 and time_["hits"] == uce["added"]  # the unedited samples drawn once


def test_bad_table_input_is_one_line_and_runs_nothing(tmp_path, capsys, monkeypatch):
    assert run_cli(["table", "no_such", "--out", tmp_path / "a"]) == 2
    assert "unknown table 'no_such': use one of" in capsys.readouterr().err
    assert run_cli(["table", "toy_objects", "--out", tmp_path / "a", "--rows", "UCE,Nope"]) == 2
    assert "has no row 'Nope': its rows are UCE, TIME" in capsys.readouterr().err
    pub = _published(tmp_path, {"UCE": ["--model", "configs/editor/missing.yaml"]})
    assert run_cli(["table", "toy_entities", "--out", tmp_path / "a", "--published", pub]) == 2
    assert "names configs/editor/missing.yaml, which does not exist" in capsys.readouterr().err
    assert run_cli(["table", "gender_debias", "--out", tmp_path / "a", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "# TIME" in out and "configs/experiment/time_debias_timed_gender.yaml" in out
    import builtins

    real = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", lambda n, *a, **k: (_ for _ in ()).throw(ImportError(n)) if n == "submitit" else real(n, *a, **k))
    assert run_cli(["table", "toy_entities", "--out", tmp_path / "a", "--launcher", "slurm"]) == 2
    assert 'needs submitit: pip install -e ".[cluster]"' in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # nothing was written by any of them
    # a second table command on a folder a live one holds: refused in one line, nothing run or rewritten
    import os
    import socket

    from edit_bench.rundir import _process_start

    busy = tmp_path / "busy"
    busy.mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "start": _process_start(os.getppid()),
              "command": "python -m edit_bench table toy_entities", "since": "now"}
    (busy / ".table.lock").write_text(json.dumps(holder))
    assert run_cli(["table", "toy_entities", "--out", busy, "--rows", "UCE"]) == 2
    err = capsys.readouterr().err
    assert f"--out {busy} is in use by pid {os.getppid()}" in err and len(err.strip().splitlines()) <= 2  # + the debug hint
    assert sorted(p.name for p in busy.iterdir()) == [".table.lock"]


def test_every_manifest_names_configs_that_exist_and_rows_the_table_can_hold():
    from edit_bench.table_command import manifest
    from edit_bench.tables import load_specs

    for name, spec in load_specs().items():
        if spec.get("runs"):
            _, rows = manifest(name)
            assert rows and all("--out_dir" not in a for a in rows.values()), name


def test_every_toy_manifest_row_builds_its_editor_with_its_arguments():
    """Each toy table row's editor, from its YAML and the row's --model.init_args overrides, resolves the tensors it
    edits (a parameter set its recipe does not have, a bad argument: caught here rather than after a table's hours)."""
    import importlib

    from edit_bench.models import load_t2i
    from edit_bench.table_command import manifest
    from edit_bench.tables import load_specs

    toy, seen = load_t2i("toy"), set()  # one model, shared: nothing is edited
    for name, spec in load_specs().items():
        if not name.startswith("toy_") or not spec.get("runs"):
            continue
        for row, args in manifest(name)[1].items():
            if "--model" not in args:
                continue
            cfg = yaml.safe_load((ROOT / args[args.index("--model") + 1]).read_text())
            kwargs = dict(cfg.get("init_args") or {})
            for i, a in enumerate(args):
                if a.startswith("--model.init_args."):
                    v = yaml.safe_load(args[i + 1])
                    if isinstance(v, str):  # "3e-4" is a string to YAML 1.1, a float to the CLI's typed parser
                        try:
                            v = float(v)
                        except ValueError:
                            pass
                    kwargs[a.removeprefix("--model.init_args.")] = v
            key = (cfg["class_path"], repr(sorted(kwargs.items())))
            if key in seen:
                continue
            seen.add(key)
            mod, _, cls = cfg["class_path"].rpartition(".")
            editor = getattr(importlib.import_module(mod), cls)(**kwargs)
            editor.use_model(toy)  # the rows' model, the toy world
            editor.edited_parameters()  # resolves the row's parameter set, sites and layers
    assert len(seen) >= 20
