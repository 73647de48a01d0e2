"""`python -m edit_bench fit | eval` end to end on tiny:sd1 (2 TIMED rows, 1 seed), and `trace` on the toy world."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from helpers import ROOT, run_cli

EDITOR = ROOT / "configs/editor/time.yaml"
BENCH = ROOT / "configs/benchmark/timed_tiny.yaml"
TINY = ["--model.base", "tiny:sd1"]  # plumbing tests: the random tiny model, in seconds


def _eval(out, *extra):
    return run_cli(["eval", "--model", EDITOR, *TINY, "--data", BENCH, "--out_dir", out, *extra])


def _records(out, variant="samples"):
    return {r["id"]: r for f in sorted((out / variant).glob("rank*.jsonl")) for r in map(json.loads, f.read_text().splitlines())}


def test_fit_then_eval_the_delta_equals_the_fixed_protocol(tmp_path):
    """The delta `fit` writes *is* the edit: evaluating it gives the judge's numbers of TIME applied with the
    same requests under the fixed protocol, sample by sample."""
    assert run_cli(["fit", "--model", EDITOR, *TINY, "--data", BENCH, "--out_dir", tmp_path / "fit"]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "fit/edit.safetensors"), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert len(keys) == 32 and all(".attn2.to_" in k for k in keys)  # the delta only: 16 sites x (to_k, to_v)
    assert meta["editor"] == "TIME" and meta["base"] == "tiny:sd1" and meta["model_id"].startswith("tiny:sd1@code:")
    edit = json.loads((tmp_path / "fit/edit.json").read_text())
    assert len(edit["requests"]) == 2 and edit["timing"]["edit_s"] > 0

    out = tmp_path / "ev"
    assert run_cli(["eval", "--model", ROOT / "configs/editor/unedited.yaml", "--model.delta", tmp_path / "fit/edit.safetensors", *TINY,
                    "--data", BENCH, "--out_dir", out]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["delta"].endswith("edit.safetensors") and res["timing"]["edits"] == 0 and res["protocol"]["protocol"] == "as_is"
    fixed = tmp_path / "fixed"
    assert _eval(fixed, "--data.protocol", "fixed") == 0
    p_delta = {k: r["scores"]["p_new"] for k, r in _records(out).items()}
    p_fixed = {k: r["scores"]["p_new"] for k, r in _records(fixed).items()}
    assert p_delta.keys() == p_fixed.keys() and len(p_delta) == 22
    import torch

    torch.testing.assert_close(torch.tensor([p_delta[k] for k in sorted(p_delta)]),
                               torch.tensor([p_fixed[k] for k in sorted(p_delta)]), atol=1e-3, rtol=0)  # float32 W + delta vs W edited in place
    base = tmp_path / "base"
    assert run_cli(["eval", "--model", ROOT / "configs/editor/unedited.yaml", *TINY, "--data", BENCH, "--out_dir", base]) == 0
    p_base = {k: r["scores"]["p_new"] for k, r in _records(base).items()}
    print("max |p_base - p_delta|", max(abs(p_base[k] - p_delta[k]) for k in p_base))
    assert max(abs(p_base[k] - p_delta[k]) for k in p_base) > 1e-2  # and the edit is not a no-op


def test_eval_results_schema_records_and_resume(tmp_path):
    out = tmp_path / "run"
    assert _eval(out) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"editor", "benchmark", "model", "metrics", "protocol", "timing", "versions", "config"}
    assert {k: v["n"] for k, v in res["metrics"].items()} == {"efficacy": 2, "generality": 10, "specificity": 10, "f1": 20,
                                                             "clip_score": 22, "clip_score/efficacy": 2,
                                                             "clip_score/generality": 10, "clip_score/specificity": 10}
    assert res["protocol"]["sampler"]["scheduler"] == "pndm" and res["protocol"]["seeds"] == [0]
    assert res["protocol"]["metrics"][0]["judge"]["model"] == "tiny:random"
    assert res["protocol"]["matmul_precision"] == "highest" and res["protocol"]["protocol"] == "per_case"
    assert res["timing"]["edits"] == 2 and res["timing"]["edit_s"] > 0 and res["timing"]["images_per_s"] > 0
    assert res["model_id"].startswith("tiny:sd1@") and res["editor_args"]["lam"] == 0.1
    assert "versions" in json.loads((out / "run.json").read_text())
    assert "class_path: edit_bench.editors.time.TIME" in (out / "config.yaml").read_text()
    lines = (out / "samples/rank0.jsonl").read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    assert len(recs) == 22 == len({r["id"] for r in recs})

    # a crash after 15 samples, mid-line: the rerun computes only the rest and gets the same numbers
    (out / "samples/rank0.jsonl").write_text("\n".join(lines[:15]) + "\n" + lines[15][:20])
    (out / "results.json").unlink()
    assert _eval(out) == 0
    res2 = json.loads((out / "results.json").read_text())
    assert res2["samples"]["stored_before"] == 15 and res2["samples"]["new_this_run"] == 7
    # the judge's verdicts equal exactly; CLIP-score to float precision: the 7 redrawn images come from a batch of 7,
    # not of 22, and CPU kernels pick their blocking (and so their summation order) by batch size
    assert res2["metrics"].keys() == res["metrics"].keys()
    for k, v in res["metrics"].items():
        assert res2["metrics"][k] == (pytest.approx(v, rel=1e-5) if k.startswith("clip_score") else v), k
    assert _eval(out) == 0  # nothing left to do
    assert json.loads((out / "results.json").read_text())["samples"]["new_this_run"] == 0


def _assert_error(code, capsys, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    for n in needles:
        assert n in err, err


@pytest.mark.parametrize("args,needles", [
    (["--model", "NoSuchEditor"], ["unknown editor 'NoSuchEditor'", "TIME"]),
    (["--data", "NoSuchBench"], ["unknown benchmark/data module 'NoSuchBench'", "TIMED"]),
    (["--model.base", "someone/missing-model"], ["someone/missing-model", "hf download"]),
    (["--data.judge.model", "hf-hub:someone/missing-judge"], ["someone/missing-judge", "hf download"]),
    (["--model", ROOT / "configs/editor/refact.yaml", "--model.init_args.layer", "40"],
     ["ReFACT layer 40 does not exist", "--model.init_args.layer N"]),
    (["--model", ROOT / "configs/editor/locoedit.yaml", "--model.init_args.sites", "[up_blocks.9.attentions.0]"],
     ["no cross-attention site named 'up_blocks.9.attentions.0'"]),
    (["--data.sampler.scheduler", "nope"], ["unknown scheduler 'nope'"]),
    (["--data.sampler.size", "40"], ["sampler.size 40 must be a positive multiple of 16"]),
    (["--data.rows", "50:60", "--data.path", ROOT / "datasets/toy/toy_timed.csv"], ["selects no cases", "--data.rows"]),
    (["--model", ROOT / "configs/editor/refact.yaml", "--model.init_args.layer", "1", "--data.protocol", "fixed"],
     ["ReFACT edits one request at a time", "per_case"]),
    (["--trainer.matmul_precision", "low"], ["matmul_precision"]),
    (["--model", ROOT / "configs/editor/esd_x.yaml", "--model.init_args.params", "nope"], ["params", "nope"]),
    (["--model", ROOT / "configs/editor/esd_x.yaml", "--model.init_args.lr", "0"], ["ESD lr must be > 0"]),
    (["--model", ROOT / "configs/editor/concept_ablation.yaml", "--model.init_args.anchor_prompts", "no_such_prompts.txt"],
     ["no_such_prompts.txt", "not found"]),
    (["--model", ROOT / "configs/editor/concept_ablation.yaml", "--model.init_args.anchor_prompts", "[a photo of a dog]"],
     ["anchor prompt 'a photo of a dog' does not contain the anchor", "concept_type style"]),
    (["--model", ROOT / "configs/editor/concept_ablation.yaml", "--model.init_args.batch_size", "0"],
     ["batch_size must be >= 1"]),
    (["--model", ROOT / "configs/editor/esd_u.yaml", "--model.init_args.recipe", "current"],
     ["ESD parameter set 'noxattn' does not exist under recipe 'current'", "recipe paper", "esd-u"]),
    (["--model", ROOT / "configs/editor/esd_x.yaml", "--model.init_args.params", "esd-x"],
     ["'esd-x' does not exist under recipe 'paper'", "--model.init_args.recipe current"]),
    (["--model", ROOT / "configs/editor/esd_x.yaml", "--model.init_args.sample_steps", "30"],
     ["sample_steps dividing 1000"]),
    (["--model", ROOT / "configs/editor/concept_ablation.yaml", "--model.init_args.anchor_folder", "no_such_folder"],
     ["anchor_folder 'no_such_folder' is not a folder"]),
    (["--model", ROOT / "configs/editor/concept_ablation.yaml", "--model.init_args.anchor_folder", ROOT / "configs"],
     ["has no images"]),
    (["--model", ROOT / "configs/editor/concept_ablation.yaml", "--model.init_args.reg_weight", "-1"],
     ["reg_weight must be >= 0"]),
])

def test_bad_input_is_a_clear_error_and_leaves_no_run_dir(tmp_path, capsys, args, needles):
    out = tmp_path / "run"
    base = ["eval", "--model", EDITOR, *TINY, "--data", BENCH, "--out_dir", out]
    for i in range(0, len(args), 2):  # replace or add the flag
        if args[i] in base:
            base[base.index(args[i]) + 1] = args[i + 1]
        else:
            base += args[i:i + 2]
    _assert_error(run_cli(base), capsys, *needles)
    assert not out.exists()


def test_fit_of_a_trained_editor_with_zero_steps_is_refused(tmp_path, capsys):
    out = tmp_path / "fit"
    code = run_cli(["fit", "--model", ROOT / "configs/editor/esd_x.yaml", *TINY, "--data", BENCH, "--trainer.max_steps", "0",
                    "--out_dir", out])
    _assert_error(code, capsys, "max_steps must be >= 1")
    assert not out.exists()

def test_only_the_identity_editor_takes_a_delta(tmp_path, capsys):
    code = run_cli(["eval", "--model", EDITOR, *TINY, "--model.delta", tmp_path / "x.safetensors", "--data", BENCH,
                    "--out_dir", tmp_path / "run"])
    assert code == 2 and "delta" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_bad_csv_and_long_prompt(tmp_path, capsys):
    from edit_bench.benchmarks.timed import COLUMNS

    def write(name, header, row):
        p = tmp_path / name
        p.write_text(",".join(header) + "\n" + ",".join(row) + "\n")
        return p

    out = tmp_path / "run"
    row = ["A cat", "A blue cat"] + ["a cat"] * 20
    cases = [
        (write("missing.csv", COLUMNS[:-2], row[:-2]), ["missing columns ['negative5', 'gn5']"]),
        (write("empty.csv", COLUMNS, row[:3] + [""] + row[4:]), ["empty cells in ['gt1']"]),
        (write("same.csv", COLUMNS, ["A cat", "A cat"] + row[2:]), ["same prompt"]),
        (write("long.csv", COLUMNS, row[:2] + ["cat " * 80] + row[3:]), ["82 tokens", "truncate_long_prompts"]),
        # 76 tokens fit, but TIME's "A photo of " prefix makes 79: the editor's own prompts are checked too
        (write("derived.csv", COLUMNS, ["A " + "cat " * 73, "A blue cat"] + row[2:]), ["the editor builds", "79 tokens"]),
    ]
    for path, needles in cases:
        _assert_error(run_cli(["eval", "--model", EDITOR, *TINY, "--data", BENCH, "--data.path", path, "--data.rows", "0:1",
                               "--out_dir", out]), capsys, *needles)
        assert not out.exists()
    assert run_cli(["eval", "--model", EDITOR, *TINY, "--data", BENCH, "--data.path", cases[3][0], "--data.rows", "0:1",
                    "--data.truncate_long_prompts", "true", "--out_dir", out]) == 0
    assert "truncated 1 prompt(s)" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["protocol"]["truncated_prompts"] == ["cat " * 79 + "cat"]


def test_out_dir_of_another_config_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "run"
    assert _eval(out, "--data.rows", "0:1") == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    _assert_error(_eval(out, "--data.rows", "0:1", "--model.lam", "0.5"), capsys, "made under other settings", "editor.init_args.lam: 0.1 -> 0.5")
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "other").mkdir()
    (tmp_path / "other/notes.txt").write_text("mine")
    _assert_error(_eval(tmp_path / "other"), capsys, "not an edit_bench run directory")


def test_print_config_and_help(capsys):
    assert run_cli(["eval", "--model", EDITOR, "--data", BENCH, "--model.lam", "0.3", "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "lam: 0.3" in out and "class_path: edit_bench.benchmarks.timed.TIMED" in out
    r = subprocess.run([sys.executable, "-m", "edit_bench", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "eval" in r.stdout and "fit" in r.stdout


WRAPPER = """
import os, sys
from edit_bench.baseline_cache import BaselineCache
if os.environ.get("LOCAL_RANK", "0") != "0":  # another run stored every sample just after rank 0 looked: rank 1 would find them
    BaselineCache.lookup = lambda self, samples: {s.id: None for s in samples}
if __name__ == "__main__":  # spawned ranks import this file as a module
    from edit_bench.__main__ import run
    sys.exit(run())
"""


# every launcher runs with -m slow (the suite was at 15 min); the default run forks ranks in the SIGTERM test below
# (22 samples over 2 ranks, resumed) and in the README's cpu_processes run (one case over 2 ranks)
@pytest.mark.parametrize("strategy", [pytest.param(s, marks=pytest.mark.slow) for s in ("ddp", "ddp_fork", "ddp_spawn")])
def test_two_processes_equal_one_process(tmp_path, strategy, monkeypatch):
    """22 samples of 2 cases over 2 ranks (gloo, CPU): each rank edits only its own case, no sample is padded or
    duplicated, and the metrics and the accounting equal one process's, whether the ranks are launched as
    subprocesses (ddp), forked (ddp_fork) or spawned (ddp_spawn; under both only the main process writes the results).
    Under ddp (ranks launched later) the baseline is scored too and case 0's is in the cache: rank 0 looks it
    up and tells the others what is left, so a rank's own view of the cache never decides what it generates
    (here rank 1 would find every sample, as when another run adds to the cache while the ranks start: that
    hung ddp runs). ddp_spawn runs without the baseline (a second spawn round costs 20 s on 2 cores)."""
    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))
    with_baseline = strategy != "ddp_spawn"
    base = ["eval", "--model", EDITOR, *TINY, "--data", BENCH, "--data.baseline", str(with_baseline).lower(),
            "--data.batch_size", "4"]
    if with_baseline:
        assert run_cli([*base, "--data.rows", "0:1", "--out_dir", tmp_path / "seed"]) == 0  # caches case 0's baseline
    (tmp_path / "run.py").write_text(WRAPPER)
    out = tmp_path / strategy
    r = subprocess.run([sys.executable, "run.py", *map(str, base), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
                        "--trainer.strategy", strategy, "--trainer.enable_progress_bar", "false", "--out_dir", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    per_rank = {f.name: [json.loads(x)["id"] for x in f.read_text().splitlines()] for f in (out / "samples").glob("rank*.jsonl")}
    assert sorted(per_rank) == ["rank0.jsonl", "rank1.jsonl"]
    assert [{i.split("/")[0] for i in ids} for _, ids in sorted(per_rank.items())] == [
        {"TIMED_test_set_filtered_SD14:0000"}, {"TIMED_test_set_filtered_SD14:0001"}]  # whole cases per rank
    ids = [i for v in per_rank.values() for i in v]
    assert len(ids) == 22 == len(set(ids))
    res = json.loads((out / "results.json").read_text())
    if with_baseline:
        base_ids = [json.loads(x)["id"] for f in (out / "baseline").glob("rank*.jsonl") for x in f.read_text().splitlines()]
        assert len(base_ids) == 22 == len(set(base_ids))
        assert {k: res["samples"]["baseline_cache"][k] for k in ("hits", "added")} == {"hits": 11, "added": 11}
    single = tmp_path / "single"
    assert run_cli([*base, "--baseline_cache", "false", "--out_dir", single]) == 0  # the same batches, all generated
    one = json.loads((single / "results.json").read_text())
    # the judge's thresholded scores are identical; CLIP-score, a continuous mean of float32 cosines, equals to
    # float32 rounding (measured 4e-6 relative: the ranks' processes run CPU kernels with other thread counts)
    judged = ("efficacy", "generality", "specificity", "f1")
    for variant in ("metrics", "baseline") if with_baseline else ("metrics",):
        assert {k: res[variant][k] for k in judged} == {k: one[variant][k] for k in judged}
        assert set(res[variant]) == set(one[variant])
        for k in set(res[variant]) - set(judged):
            assert res[variant][k]["n"] == one[variant][k]["n"]
            assert res[variant][k]["mean"] == pytest.approx(one[variant][k]["mean"], rel=1e-4)
    assert res["timing"]["edits"] == 2 and res["timing"]["edit_s"] > 0 and res["timing"]["images_per_s"] > 0
    assert res["samples"] == {**one["samples"], "records": str(out / "samples"),
                              **({"baseline_cache": res["samples"]["baseline_cache"]} if with_baseline else {})}
    assert set(res["editor_info"]) == {"rank0", "rank1"}  # each rank's editor reports its own edits
    assert all(r["ridge_condition"]["solves"] == 1 for r in res["editor_info"].values())


def test_sigterm_to_forked_ranks_exits_143_in_one_line_and_the_rerun_resumes(tmp_path, monkeypatch):
    """SIGTERM to the process group of a ddp_fork eval (as a scheduler sends it) while its second pass runs: the ranks
    stop after their batch in flight and the main process exits 143 with the one-line stop, not the ranks'
    tracebacks (Lightning's SIGTERM handler in a forked rank used to test the previous pass's ranks and fail); the
    same command resumes to every sample."""
    import signal
    import time

    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "edit_bench", "eval", "--model", str(EDITOR), *TINY, "--data", str(BENCH), "--data.rows", "0:2",
           "--data.baseline", "true", "--data.batch_size", "1", "--data.sampler.steps", "10",
           "--trainer", str(ROOT / "configs/trainer/cpu_processes.yaml"), "--trainer.enable_progress_bar", "false",
           "--out_dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not list((out / "samples").glob("rank*.jsonl")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "edit_bench: stopped by SIGTERM" in err and "Traceback" not in err, err[-3000:]
    done = sum(len(f.read_text().splitlines()) for f in (out / "samples").glob("rank*.jsonl"))
    assert 0 < done < 22
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["samples"]["total"] == 22 and res["samples"]["stored_before"] == done


def test_a_ranks_stop_or_bad_input_reaches_the_main_process_as_one_line():
    """torch gives the main process of ddp_fork/ddp_spawn only a rank's traceback as text: its last line is read back
    into the stop (exit 128 + signal) or the usage error; anything else stays the bug it is."""
    from torch.multiprocessing.spawn import ProcessRaisedException

    from edit_bench.__main__ import from_rank
    from edit_bench.errors import UsageError
    from edit_bench.signals import Interrupted

    def raised(last):
        return ProcessRaisedException(f"\n-- Process 1 terminated with the following error:\nTraceback (most recent call "
                                      f"last):\n  File \"x.py\", line 1, in f\n{last}\n", 1, 123)

    stop = from_rank(raised("edit_bench.signals.Interrupted: stopped by SIGTERM: runs/x: rerun the same command"))
    assert isinstance(stop, Interrupted) and stop.exit_code == 143 and str(stop).endswith("rerun the same command")
    assert from_rank(raised("edit_bench.signals.Interrupted: stopped by SIGINT")).exit_code == 130
    bad = from_rank(raised("edit_bench.errors.UsageError: give a guidance > 1"))
    assert isinstance(bad, UsageError) and str(bad) == "give a guidance > 1"
    assert from_rank(raised("ValueError: boom")) is None and from_rank(ValueError("x")) is None


def test_fixed_protocol_edits_once_with_every_request(tmp_path):
    out = tmp_path / "fixed"
    assert _eval(out, "--data.protocol", "fixed", "--data.baseline", "true") == 0
    res = json.loads((out / "results.json").read_text())
    assert res["timing"]["edits"] == 1 and res["protocol"]["protocol"] == "fixed"
    assert res["baseline"]["efficacy"]["n"] == 2 and len((out / "baseline/rank0.jsonl").read_text().splitlines()) == 22


def test_refact_optimises_inside_eval(tmp_path):
    """ReFACT needs gradients inside Lightning's predict loop; its statistics source lands in results."""
    out = tmp_path / "refact"
    assert run_cli(["eval", "--model", ROOT / "configs/editor/refact.yaml", *TINY, "--model.init_args.steps", "5",
                    "--model.init_args.stats_samples", "200", "--data", BENCH, "--data.rows", "0:1", "--out_dir", out]) == 0
    res = json.loads((out / "results.json").read_text())
    info = res["editor_info"]
    assert info["stats_corpus"] == "datasets/coco/coco_30k.csv" and info["edits"] == 1 and info["stats_tokens"][0] > 1000
    assert 1 <= info["mean_steps"] <= 5 and res["timing"]["edit_s"] > 0


TRACE = ["trace", "--config", ROOT / "configs/trace/toy.yaml", "--sampler.steps", "2", "--sampler.seeds", "[0]",
         "--progress", "false"]


def test_trace_writes_json_png_and_never_overwrites(tmp_path, capsys):
    out = tmp_path / "tr"
    assert run_cli([*TRACE, "--prompt", "a blue circle", "--subject", "blue", "--parts", "[unet]", "--out_dir", out]) == 0
    res = json.loads((out / "trace.json").read_text())
    t = res["traces"][0]
    assert res["method"] == "causal_trace" and res["protocol"]["noise"] == 3.0 and t["seeds"] == [0]
    assert "text" not in t and len(t["unet"]["components"]) == 70 and (out / "trace.png").stat().st_size > 1000
    assert run_cli([*TRACE, "--prompt", "a blue circle", "--subject", "red", "--out_dir", out]) == 2
    assert "exists" in capsys.readouterr().err
    bad = tmp_path / "bad"
    assert run_cli([*TRACE, "--prompt", "a blue circle", "--subject", "red", "--out_dir", bad]) == 2
    assert "does not occur in prompt" in capsys.readouterr().err and not bad.exists()
    assert run_cli([*TRACE, "--method", "causal", "--prompt", "a blue circle", "--subject", "blue", "--out_dir", bad]) == 2
    assert "unknown --method" in capsys.readouterr().err and not bad.exists()


def test_trace_locogen_chooses_sites_that_locoedit_takes(tmp_path):
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,subject,target,neutral\na big star,big,,\nthe king,king,a yellow star,a square\n")
    out = tmp_path / "lg"
    assert run_cli([*TRACE, "--method", "locogen", "--prompts", prompts, "--out_dir", out]) == 0
    res = json.loads((out / "trace.json").read_text())
    assert [t["neutral"] for t in res["traces"]] == ["a star", "a square"]
    agg = res["aggregate"]
    assert len(agg["p_attribute"]) == 16 and len(agg["chosen"]["sites"]) == 3
    cfg = yaml.safe_load((out / "locoedit.yaml").read_text())
    assert cfg["init_args"]["sites"] == agg["chosen"]["sites"]
    fit = tmp_path / "fit"
    assert run_cli(["fit", "--model", out / "locoedit.yaml", "--data", "EditRequests",
                    "--data.path", ROOT / "configs/requests/toy_blue_circle.yaml", "--out_dir", fit]) == 0
    changed = json.loads((fit / "edit.json").read_text())["changed"]
    assert sorted({k.rsplit(".to_", 1)[0] for k in changed}) == sorted(f"unet.{s}" for s in agg["chosen"]["sites"])
    # and an edited model can be traced as it is
    assert run_cli([*TRACE, "--model.delta", fit / "edit.safetensors", "--prompt", "a circle", "--subject", "circle",
                    "--parts", "[text]", "--out_dir", tmp_path / "edited"]) == 0
    res = json.loads((tmp_path / "edited/trace.json").read_text())
    assert res["delta"].endswith("edit.safetensors") and "unet" not in res["traces"][0]


def test_trace_attribute_free_prompt_drops_the_subject_as_a_word():
    from edit_bench.localize.command import parser, read_rows

    args = parser().parse_args(["--method", "locogen", "--prompt", "a starry big star", "--subject", "star"])
    assert read_rows(args)[0]["neutral"] == "a starry big"
    args = parser().parse_args(["--method", "locogen", "--prompt", "a circle", "--subject", "blue"])
    with pytest.raises(ValueError, match="give --neutral"):
        read_rows(args)


def test_resume_after_the_data_or_the_model_changed_is_refused(tmp_path, capsys):
    """A run directory never mixes records: an edited CSV row or retrained weights are refused with a message
    that says what changed, and leave the directory as it was."""
    import shutil

    from edit_bench.models.toy import pipeline_dir

    src = (ROOT / "datasets/timed/TIMED_test_set_filtered_SD14.csv").read_text().splitlines()
    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(src[:3]) + "\n")
    out = tmp_path / "run"
    assert _eval(out, "--data.path", csv) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    csv.write_text("\n".join([src[0], src[1], src[2].rsplit(",", 1)[0] + ",A pear"]) + "\n")  # row 1's last label
    _assert_error(_eval(out, "--data.path", csv), capsys, "made under other settings", "files.data.path")  # the file's content
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    model = tmp_path / "model"
    shutil.copytree(pipeline_dir(), model)
    run = tmp_path / "folder_run"
    args = ["eval", "--model", ROOT / "configs/editor/unedited.yaml", "--model.base", model, "--data", BENCH,
            "--data.rows", "0:1", "--out_dir", run]
    assert run_cli(args) == 0
    weights = model / "unet/diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(4)  # "retrained": one value changes
    weights.write_bytes(bytes(data))
    _assert_error(run_cli(args), capsys, "made under other settings", "model.id")


def test_trace_judge_follows_the_model(tmp_path):
    """Without --config, tracing the toy world uses the toy judge (not the paper's ViT-bigG, which is not cached)."""
    out = tmp_path / "tr"
    assert run_cli(["trace", "--model.base", "toy", "--prompt", "a blue circle", "--subject", "blue", "--parts", "[text]",
                    "--sampler.steps", "2", "--sampler.seeds", "[0]", "--progress", "false", "--out_dir", out]) == 0
    assert json.loads((out / "trace.json").read_text())["protocol"]["judge"]["model"] == "toy"


def test_a_run_from_python_resumes_from_the_cli(tmp_path):
    """One fingerprint for both ways in: the same editor and benchmark built in Python and by the CLI."""
    from edit_bench.benchmarks.timed import TIMED
    from edit_bench.cli import EditTrainer
    from edit_bench.editors.time import TIME
    from edit_bench.evaluate import Evaluation
    from edit_bench.metrics import JudgeConfig
    from edit_bench.types import SamplerConfig

    bench = TIMED(path="datasets/timed/TIMED_test_set_filtered_SD14.csv", rows="0:2", batch_size=11,
                  sampler=SamplerConfig(scheduler="pndm", steps=4, guidance=7.5, size=32, seeds=[0]),
                  judge=JudgeConfig(model="tiny:random"))
    trainer = EditTrainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, inference_mode=False)
    out = tmp_path / "run"
    first = Evaluation(TIME(base="tiny:sd1"), bench, out).run(trainer)
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(first.to_dict(), default=str))  # field for field
    assert _eval(out) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["samples"]["new_this_run"] == 0 and res["metrics"] == first.metrics


def test_bench_times_our_loop_and_the_authors_loop_on_the_same_samples(tmp_path, capsys):
    """Both loops make the same images of the same samples (the judged scores agree exactly), the authors'
    loop edits per case (or per case and seed), the cached rerun finds the baseline, and the split adds up."""
    out = tmp_path / "bench.json"
    args = ["bench", "--model", EDITOR, *TINY, "--data", BENCH, "--data.rows", "0:1", "--data.baseline", "true",
            "--data.sampler.steps", "2", "--trainer.enable_progress_bar", "false"]
    assert run_cli([*args, "--out", out]) == 0
    r = json.loads(out.read_text())
    assert "ours vs the authors' loop" in capsys.readouterr().out
    assert list(r["loops"]) == ["ours", "ours_cached", "authors"] and r["images"] == 22
    ours, cached, authors = (r["loops"][k] for k in ("ours", "ours_cached", "authors"))
    assert ours["baseline_cache_hits"] == 0 and cached["baseline_cache_hits"] == 11 and cached["images_generated"] == 11
    assert ours["edits"] == cached["edits"] == authors["edits"] == 1
    for k in ("efficacy", "generality", "specificity"):
        assert ours["metrics"][k] == cached["metrics"][k] == authors["metrics"][k]
    assert ours["metrics"]["clip_score"] == pytest.approx(authors["metrics"]["clip_score"], rel=1e-3)
    for x in r["loops"].values():
        assert all(v >= 0 for k, v in x["split_s"].items() if k != "other") and x["split_s"]["denoiser"] > 0
        assert sum(x["split_s"].values()) == pytest.approx(x["wall_s"], abs=0.01)
    assert r["speedup"] == pytest.approx(authors["wall_s"] / ours["wall_s"], rel=0.01)
    assert run_cli([*args, "--data.sampler.seeds", "[0, 1]", "--data.baseline", "false", "--loops", "authors",
                    "--reedit_per_seed", "true", "--out", out]) == 0
    assert json.loads(out.read_text())["loops"]["authors"]["edits"] == 2  # one case, two seeds
    assert run_cli([*args, "--trainer.devices", "2", "--trainer.strategy", "ddp_spawn"]) == 2
    assert "bench measures one process" in capsys.readouterr().err


def test_the_gpu_bench_script_runs_every_section_on_tiny_models(tmp_path, capsys):
    """`python -m edit_bench.bench.gpu` is prepared for the first lent GPU; here its generation, authors' and flux
    sections on tiny:sd1 / tiny:flux on the CPU, with a variant and a backend it must drop in one line each (the README's
    command runs every section, train, edits and attacks included, in test_readme_benchmark_scripts_run)."""
    import json

    import torch

    from edit_bench.bench import gpu

    out = tmp_path / "gpu.json"
    code = gpu.main(["--base", "tiny:sd1", "--flux", "tiny:flux", "--device", "cpu", "--variants", "fp32,bf16,fp16_cl",
                     "--compile_backend", "no-such-backend", "--batch", "2", "--batches", "1", "--steps", "2", "--size", "32",
                     "--authors_images", "1", "--train_steps", "1", "--anchors", "1", "--concepts", "3", "--corpus_samples", "8",
                     "--skip", "train,edits,attacks", "--flux_steps", "2", "--flux_size", "32", "--flux_batch", "1",
                     "--out", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    assert set(r["generation"]) == {"fp32", "bf16"} and all(v["images_per_s"] > 0 for v in r["generation"].values())
    assert "fp16_cl: float16 autocast on a CPU" in capsys.readouterr().err
    assert r["authors"]["images_per_s"] > 0 and r["speedup_best_over_authors"] > 0
    assert r["flux"]["fp32"]["images_per_s"] > 0 and not {"train", "edits", "attacks"} & set(r)
    assert gpu.main(["--device", "cpu", "--skip", "nothing"]) == 2
    assert gpu.main(["--device", "cpu", "--variants", "fp64"]) == 2
    assert "unknown variant(s) ['fp64']" in capsys.readouterr().err
    assert gpu.main(["--device", "cpu", "--batch", "0"]) == 2
    if not torch.cuda.is_available():
        assert gpu.main([]) == 2 and "no CUDA device here" in capsys.readouterr().err
