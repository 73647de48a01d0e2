"""Docs that run: every README command and every config in configs/ is exercised here."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

from helpers import ROOT, run_cli

README = (ROOT / "README.md").read_text()


def _bash_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [ln.strip() for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _module_args(cmd):
    """``(module, args)`` of a ``python -m MODULE ARGS`` command line (after any ``pip install ... &&``)."""
    words = shlex.split(cmd.split("&&")[-1].strip())
    assert words[:2] == ["python", "-m"], cmd
    return words[2], words[3:]


def test_readme_setup_has_exactly_two_commands_and_ci_runs_the_test_one():
    setup = README.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    cmds = [c for b in re.findall(r"```bash\n(.*?)```", setup, flags=re.S) for c in b.strip().splitlines()]
    assert len(cmds) == 2
    assert cmds[0] == ("pip install -e . && python -m edit_bench eval --model configs/editor/time.yaml "
                       "--data configs/benchmark/toy_timed.yaml --out_dir runs/quickstart")
    assert cmds[1] == 'pip install -e ".[dev]" && python -m pytest'
    assert cmds[1] in (ROOT / ".ci/run").read_text()


# The README test in two halves by section (each half's commands in README order), so that two test workers share it:
# the first holds the sections whose runs others read (Set-up's quickstart run: Image quality's report, the final
# checks; Use the edited model's export).
FIRST_HALF = ("Set-up", "What you do", "Runs", "Image quality and reports", "Erasure tables", "Use the edited model", "Throughput")


def _section_commands(half: int) -> list[str]:
    out = []
    for sec in re.split(r"\n(?=## )", README)[1:]:
        title = sec.splitlines()[0][3:].strip()
        if any(title.startswith(t) for t in FIRST_HALF) == (half == 0):
            blocks = re.findall(r"```bash\n(.*?)```", sec, flags=re.S)
            lines = [ln.strip() for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
            out += [ln for ln in lines if ln and not ln.startswith("#")]
    return out


def test_the_readme_halves_hold_every_command():
    assert sorted(_section_commands(0) + _section_commands(1)) == sorted(_bash_commands())


@pytest.mark.parametrize("half", [0, 1])
def test_every_readme_command_runs(tmp_path, capsys, monkeypatch, half):
    """Run each `python -m edit_bench` command of the README, in order, from a scratch directory holding
    the checkout's configs/ and datasets/. Commands that need real weights must fail with the clear
    not-cached message (where the weights are cached they run for real)."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "datasets").symlink_to(ROOT / "datasets")
    # the user's own editor of "Adding an editor", written where the commands run
    adding = README.split("## Adding an editor", 1)[1].split("\n## ", 1)[0]
    (tmp_path / "my_editor.py").write_text(re.findall(r"```python\n(.*?)```", adding, flags=re.S)[0])
    monkeypatch.syspath_prepend(str(tmp_path))
    cmds = [c for c in _section_commands(half) if "python -m edit_bench" in c and "edit_bench.bench." not in c]
    assert len(cmds) >= 9
    for cmd in cmds:
        module, args = _module_args(cmd)
        if module == "edit_bench.testing":
            from edit_bench import testing

            assert testing.main(args) == 0, cmd
            continue
        if module == "edit_bench.models.toy.train":  # the real run takes 66 min: same code, a few steps
            from edit_bench.models import load_t2i
            from edit_bench.models.toy import train

            out = tmp_path / "retrained"
            if "mmdit" in args and not (out / "pipeline").is_dir():  # it reads the shipped SD-1 toy's encoder and VAE
                import shutil

                from edit_bench.models.toy import WEIGHTS

                shutil.copytree(WEIGHTS / "pipeline", out / "pipeline")
                shutil.copy(WEIGHTS / "train_log.json", out / "train_log.json")
            before = json.loads((out / "train_log.json").read_text()) if (out / "train_log.json").is_file() else None
            train.main(args + ["--out", str(out), "--n", "256", "--text_steps", "2", "--vae_steps", "2", "--t2i_steps", "2",
                               "--judge_steps", "2", "--mmdit_steps", "2", "--batch", "16", "--accelerator", "cpu"])
            if "mmdit" in args:
                log = json.loads((out / "train_log.json").read_text())
                assert load_t2i(str(out / "pipeline_mmdit")).family == "flux" and log["mmdit"]["steps"] == 2
                assert log["args"] == before["args"]  # the SD-1 run's record is kept
            else:
                assert load_t2i(str(out / "pipeline")).family == "sd1" and (out / "judge/open_clip_config.json").is_file()
            continue
        if module == "edit_bench.models.toy.quality":
            from edit_bench.models.toy import quality

            quality.main(args + ["--n", "12", "--steps", "4", "--out", str(tmp_path / "q.json")])
            q = json.loads((tmp_path / "q.json").read_text())
            assert q["judge_rendered"]["n"] == 12
            if "--editor" in args:  # 10 toy TIMED cases x (1 efficacy + 5 generality prompts) x 4 seeds
                assert q["edited_pixels"]["efficacy"]["n"] == 40 and q["edited_pixels"]["generality"]["n"] == 200
            continue
        assert module == "edit_bench", cmd
        if args[0] == "report":
            if "--table" in args:  # its runs were made here with fewer seeds and shapes than the toy table's protocol
                args = args + ["--allow-deviations"]
            assert run_cli(args, cwd=tmp_path) == 0, cmd
            out = tmp_path / args[args.index("--out") + 1]
            written = ["table.md", "table.csv", "refact_table1.md"] + (["grid.png"] if "--grid" in args else []) \
                + ([args[args.index("--table") + 1] + ".md"] if "--table" in args else [])
            assert all((out / f).is_file() for f in written), cmd
            if "--html" in args:
                assert (tmp_path / args[args.index("--html") + 1]).read_text().startswith("<!DOCTYPE html>"), cmd
            continue
        if args[0] == "table":
            if "--dry-run" not in args:  # seven rows of five shapes x 4 seeds: same code, the first row, one shape, one seed
                i = args.index("--rows") + 1
                args = args[:i] + [args[i].split(",")[0]] + args[i + 1:] + [
                    "--allow-deviations", "--", "--data.sampler.seeds", "[0]", "--data.erase", "[circle]"]
                if args[1] == "toy_unlearndiffatk":  # 10 x 10 steps per prompt, two attacks: the same two, 1 x 1
                    args += ["--data.attacks", json.dumps([
                        {"class_path": "edit_bench.attacks.PromptOptimisation", "init_args": {
                            "name": "p4d", "timesteps": 1, "iterations": 1, "objective": "teacher", "judge_in_loop": True}},
                        {"class_path": "edit_bench.attacks.PromptOptimisation", "init_args": {
                            "timesteps": 1, "iterations": 1, "judge_in_loop": True, "method": "text_grad"}}])]
                if args[1] == "toy_ring_a_bell":  # 64 x 200 per prompt, three lengths: the same three, 4 x 2
                    args += ["--data.attacks", json.dumps([
                        {"class_path": "edit_bench.attacks.RingABell", "init_args": {
                            "name": f"rab_k{k}", "length": n, "population": 4, "generations": 2}}
                        for k, n in ((77, 75), (38, 38), (16, 16))])]
            assert run_cli(args, cwd=tmp_path) == 0, cmd
            if "--dry-run" not in args:
                out = tmp_path / args[args.index("--out") + 1]
                assert (out / f"{args[1]}.md").is_file() and json.loads((out / "table.json").read_text())["rows"], cmd
            continue
        if args[0] == "export":
            assert run_cli(args, cwd=tmp_path) == 0, cmd
            assert (tmp_path / args[args.index("--out") + 1] / "model_index.json").is_file(), cmd
            continue
        if args[0] == "bench":  # minutes on the toy world, a GPU for random:sd1: same code, 11 samples, 2 steps, CPU
            args = [{"random:sd1": "tiny:sd1", "random:flux": "tiny:flux", "ViT-bigG-14": "tiny:random", "gpu": "cpu",
                     "16-mixed": "32-true", "bf16-true": "32-true"}.get(a, a)
                    for a in args] + ["--data.rows", "0:1", "--data.sampler.seeds", "[0]", "--data.sampler.steps", "2"]
            if "tiny:sd1" in args or "tiny:flux" in args:
                args += ["--data.sampler.size", "32"]
            assert run_cli(args, cwd=tmp_path) == 0, cmd
            out = json.loads((tmp_path / args[args.index("--out") + 1]).read_text())
            assert out["images"] == 22 and out["loops"]["authors"]["images_per_s"] > 0, cmd
            continue
        if "cpu_processes.yaml" in cmd:  # forked ranks: from a process of its own (a pytest worker is not forked);
            # the main job: same code, one case, one seed
            r = subprocess.run([sys.executable, "-m", module, *args, "--data.rows", "0:1", "--data.sampler.seeds", "[0]",
                                "--trainer.enable_progress_bar", "false"], capture_output=True, text=True, cwd=tmp_path,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=400)
            assert r.returncode == 0, (cmd, r.stderr[-3000:])
            res = json.loads((tmp_path / args[args.index("--out_dir") + 1] / "results.json").read_text())
            assert res["samples"]["total"] == 11 and res["metrics"]["f1"]["n"] == 10, cmd  # the second rank had no case
            continue
        if args[0] in ("eval", "bench") and "toy-mmdit" in cmd:  # the toy MMDiT's tables: same code, one case, one seed
            args = args + ["--data.rows", "0:1", "--data.sampler.seeds", "[0]"]
        if "toy_captions.yaml" in cmd:  # 200 captions: same code, 12
            args = args + ["--data.n", "12"]
        if args[0] == "eval" and any(b in cmd for b in ("toy_erasure.yaml", "toy_entities.yaml", "toy_objects.yaml")):
            args = args + ["--data.sampler.seeds", "[0]"]  # 4 seeds: same code, 1
        if args[0] == "eval" and "toy_objects.yaml" in cmd:  # five shapes, one edit each: same code, one shape
            args = args + ["--data.erase", "[circle]"]
        if "uce_debias_toy.yaml" in cmd:  # up to 10 rounds of 64 measuring images: same code, 1 round of 2
            args = args + ["--model.init_args.debias.rounds", "1", "--model.init_args.debias.images", "2",
                           "--model.init_args.debias.seeds", "1", "--data.sampler.seeds", "[0]"]
        if args[0] == "trace":  # the real runs take 40 s to 3 min: same code, 3 steps and one seed
            args = args + ["--sampler.steps", "3", "--sampler.seeds", "[0]", "--progress", "false"]
        if args[0] == "fit" and ("esd" in cmd or "concept_ablation" in cmd):  # 1 min each: same code, 2 steps
            args = args + ["--trainer.max_steps", "2"]
        if args[0] == "eval" and "toy_artists_absent.yaml" in cmd:  # 4 artists x 4 seeds and their twins: the first, 1 seed
            args = args + ["--data.rows", "0:1", "--data.sampler.seeds", "[0]"]
        if args[0] == "eval" and "toy_artists" in cmd and any(e in cmd for e in ("rece", "speed", "oce", "mace")):
            args = args + ["--data.sampler.seeds", "[0]"] + (["--data.rows", "0:1"] if "toy_artists.yaml" in cmd else [])
        if args[0] == "eval" and any(f"--data.{k}" in cmd for k in ("protocol sequential", "paraphrase")) \
                or "_attacked.yaml" in cmd:  # 4 artists x 4 seeds: same code, the first one or two, 1 seed
            args = args + ["--data.sampler.seeds", "[0]", "--data.rows", "0:2" if "sequential" in cmd else "0:1"]
        if "_attacked.yaml" in cmd:  # about 35 s of attacks per case: the same three attacks, a few steps each
            args = args + ["--data.attacks", json.dumps([
                {"class_path": "edit_bench.attacks.ConceptInversion", "init_args": {"steps": 2, "batch_size": 2, "image_seeds": [9]}},
                {"class_path": "edit_bench.attacks.PromptOptimisation", "init_args": {"timesteps": 1, "iterations": 2}},
                {"class_path": "edit_bench.attacks.RingABell", "init_args": {"population": 4, "generations": 2}}])]
        if "mace.yaml" in cmd and "toy_artists_erase3" in cmd:  # three artists at once: same code, two
            args = args + ["--data.rows", "0:2"]
        if "mace.yaml" in cmd:  # 50 steps per concept: same code, 2 (fit: 2 concepts x 2)
            args = args + ["--model.init_args.steps", "2"] + (["--trainer.max_steps", "4"] if args[0] == "fit" else [])
        if args[0] == "eval" and "esd_x.yaml" in cmd:  # per case, 100 steps each: same code, 2 steps
            args = args + ["--model.init_args.steps", "2"]
        if "concept_ablation.yaml" in cmd:  # 200 anchor images of DDIM 100 and 100 steps: 2 cheap ones, 2 steps
            args = args + ["--model.init_args.steps", "2", "--model.init_args.num_anchor_images", "2",
                           "--model.init_args.anchor_sampler", json.dumps({"scheduler": "ddim", "steps": 2, "size": None,
                                                                          "guidance": 6.0, "eta": 1.0, "seeds": [0]})]
        code = run_cli(args, cwd=tmp_path)
        err = capsys.readouterr().err
        if "configs/experiment/" in cmd or "coco30k.yaml" in cmd or "FLUX.1-dev" in cmd:
            assert code == 2 and "hf download" in err, (cmd, err)
            continue
        assert code == 0, (cmd, err)
        out = tmp_path / args[args.index("--out_dir") + 1]
        expect = {"eval": "results.json", "fit": "edit.safetensors", "trace": "trace.json"}[args[0]]
        assert (out / expect).is_file() and (args[0] != "trace" or (out / "trace.png").is_file()), cmd
    if half == 1:
        return
    # "Use the edited model": its Python, in plain diffusers, on the folder `export` wrote
    use = README.split("## Use the edited model", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", use, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(compile(code, "README: Use the edited model", "exec"), scope)
    assert scope["image"].size == (32, 32)
    res = json.loads((tmp_path / "runs/quickstart/results.json").read_text())
    assert res["editor"] == "TIME" and res["model"] == "toy" and res["baseline"] is not None
    # the main job reproduces the README's toy_timed rows (unedited and TIME), to the two decimals printed there
    for label, numbers in (("unedited", res["baseline"]), ("TIME", res["metrics"])):
        row = re.search(rf"^\| toy_timed[^|]*\| {label} \|(.*)\|$", README, flags=re.M).group(1).split("|")
        quoted = [[float(x) for x in cell.split("±")] for cell in row]
        got = [[numbers[k]["mean"], numbers[k]["std"]] for k in ("efficacy", "generality", "specificity")] + [[numbers["f1"]["mean"]]]
        assert quoted == [[round(x, 2) for x in g] for g in got], (label, quoted, got)


def test_readme_benchmark_scripts_run(tmp_path):
    """The README's `python -m edit_bench.bench...` commands, on the random tiny model and 1 step (the toy run is the
    README's)."""
    import subprocess
    import sys

    cmds = [c for c in _bash_commands() if c.startswith("python -m edit_bench.bench.")]
    assert cmds
    for cmd in cmds:
        words = shlex.split(cmd)
        if words[2] == "edit_bench.bench.erase_scale":  # random:sd1 at 100 concepts: same code, tiny, 1-2 concepts
            from edit_bench.bench import erase_scale

            out = tmp_path / "scale.json"
            erase_scale.main(words[3:] + ["--base", "tiny:sd1", "--concepts", "1", "2", "--repeats", "1", "--corpus_samples", "50",
                                          "--json", str(out)])
            rows = json.loads(out.read_text())["rows"]
            assert {(x["editor"], x["concepts"]) for x in rows} == {(e, n) for e in ("UCE", "TIME", "RECE", "SPEED", "OCE", "MaceCFR")
                                                                    for n in (1, 2)}
            assert all(x["seconds"] > 0 for x in rows)
            continue
        if words[2] == "edit_bench.bench.gpu":  # one GPU, random:sd1 and random:flux: same code, tiny models on the CPU
            from edit_bench.bench import gpu

            out = tmp_path / "gpu.json"
            assert gpu.main(words[3:] + ["--base", "tiny:sd1", "--flux", "tiny:flux", "--device", "cpu", "--variants", "fp32",
                                         "--batch", "2", "--batches", "1", "--steps", "2", "--size", "32", "--authors_images", "1",
                                         "--train_steps", "1", "--anchors", "1", "--concepts", "2", "--corpus_samples", "8",
                                         "--attack_population", "4", "--check_steps", "2", "--inversion_batch", "1",
                                         "--flux_steps", "2", "--flux_size", "32", "--flux_batch", "1", "--out", str(out)]) == 0
            r = json.loads(out.read_text())
            assert set(r) >= {"generation", "authors", "train", "edits", "attacks", "flux"}
            assert r["train"]["ESD-x"]["s_per_step"] > 0 and r["train"]["ConceptAblation"]["s_per_step"] > 0
            assert {"UCE", "SPEED", "OCE"} <= set(r["edits"]) and r["edits"]["OCE"]["concepts"] == 2
            assert r["attacks"]["tables"]["unlearndiffatk_nudity"]["prompts"] == 142
            continue
        if words[2] == "edit_bench.bench.cpu_levers":  # the toy UNet at batch 88: same code, tiny, 4 rows, 1 repeat
            from edit_bench.bench import cpu_levers

            assert cpu_levers.main(words[3:] + ["--base", "tiny:sd1", "--size", "32", "--batch", "4", "--repeats", "1"]) == 0
            continue
        if words[2] == "edit_bench.bench.attack_cost":  # random:sd1 at 512 px on the CPU: same code, tiny, 32 px
            from edit_bench.bench import attack_cost

            out = tmp_path / "attack_cost.json"
            assert attack_cost.main(words[3:] + ["--base", "tiny:sd1", "--size", "32", "--population", "4", "--check_steps", "2",
                                                 "--json", str(out)]) == 0
            r = json.loads(out.read_text())
            assert r["costs"]["hard_prompt_s"] > 0 and r["tables"]["ring_a_bell_nudity"]["prompts"] == 95
            continue
        detectors = words[2] == "edit_bench.bench.detectors"
        mmdit = any(b in words for b in ("toy-mmdit", "random:flux"))  # the same family, tiny
        extra = ["--base", "tiny:flux" if mmdit else "tiny:sd1", "--steps", "1"] + (["--n", "4"] if detectors else []) \
            + (["--size", "32"] if mmdit else [])
        if words[2] == "edit_bench.bench.esd_frozen_memory":  # in this process; its two measured runs are its own
            import contextlib
            import io

            from edit_bench.bench import esd_frozen_memory

            with contextlib.redirect_stdout(io.StringIO()) as printed:
                esd_frozen_memory.main(words[3:] + extra)
            stdout = printed.getvalue()
        else:
            r = subprocess.run([sys.executable, *words[1:], *extra], capture_output=True, text=True, cwd=ROOT, timeout=300)
            assert r.returncode == 0, r.stderr[-2000:]
            stdout = r.stdout
        lines = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
        if detectors:  # the generator and the three detectors, each on the same 4 images
            assert len(lines) == 4 and all(x["images"] == 4 and x["images_per_s"] > 0 for x in lines), lines
            continue
        ways = {x["mode"]: x for x in lines if "mode" in x}
        assert set(ways) == {"snapshot", "copy"} and all(w["peak_rss_mb"] > 0 for w in ways.values())
        sizes = {x["params"]: x for x in lines if "trained_M" in x}
        if mmdit:  # FLUX.1-dev's transformer: ESD-x = the text side of its 19 double-stream blocks (4 x 3072^2 + bias each)
            assert sizes["esd-x"]["tensors"] == 19 * 4 * 2 and sizes["esd-x"]["trained_M"] == 717.5, sizes
            assert all(x["second_denoiser_gb_fp32"] == 44.34 for x in sizes.values()), sizes
            continue
        assert sizes["esd-x-strict"]["trained_M"] == 19.2  # SD-1's to_k + to_v: 19.17 M (TIME's 2.2 % of the UNet)
        # ESD-u on SD-1's architecture: the paper-era noxattn (every parameter outside attn2, the time embedding and
        # the output layers) and the current code's esd-u (the Linear/Conv2d modules outside attn2, no norms)
        assert (sizes["noxattn"]["tensors"], sizes["esd-u"]["tensors"]) == (598, 388)


CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_config_kinds_are_known():
    kinds = {p.parent.name for p in CONFIGS}
    assert kinds <= {"editor", "benchmark", "trainer", "experiment", "requests", "trace", "sampler", "attack"}


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name == "sampler"], ids=lambda p: p.name)
def test_sampler_configs_build(path):
    from edit_bench.types import SamplerConfig

    s = SamplerConfig(**yaml.safe_load(path.read_text()))
    assert s.steps >= 1 and s.seeds


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name == "attack"], ids=lambda p: p.name)
def test_attack_configs_build(path, monkeypatch):
    """Every published attack config builds its attack (Ring-A-Bell reads its prompt pairs), with a positive budget
    and a version string recorded in its description."""
    import importlib

    monkeypatch.chdir(ROOT)
    cfg = yaml.safe_load(path.read_text())
    mod, _, name = cfg["class_path"].rpartition(".")
    attack = getattr(importlib.import_module(mod), name)(**(cfg.get("init_args") or {}))
    info = attack.describe()
    assert info["name"] == attack.name and info["version"]


def test_the_toy_sampler_lives_in_one_place():
    """configs/sampler/toy.yaml (read by every toy benchmark and trace config) equals the toy world's
    SAMPLER (the defaults of its quality script)."""
    from dataclasses import asdict

    from edit_bench.models.toy import SAMPLER

    cfg = yaml.safe_load((ROOT / "configs/sampler/toy.yaml").read_text())
    assert {**asdict(SAMPLER), **cfg} == asdict(SAMPLER)
    for name in ("toy_timed", "toy_road", "toy_erasure", "toy_artists", *(f"toy_artists_erase{k}" for k in (1, 2, 3)),
                 "toy_objects", "toy_artists_many", "toy_entities"):
        assert yaml.safe_load((ROOT / f"configs/benchmark/{name}.yaml").read_text())["init_args"]["sampler"] == "../sampler/toy.yaml"
    assert yaml.safe_load((ROOT / "configs/trace/toy.yaml").read_text())["sampler"] == "../sampler/toy.yaml"


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name == "editor"], ids=lambda p: p.name)
def test_editor_configs_build_and_edit(path):
    import importlib

    from edit_bench.types import EditRequest

    cfg = yaml.safe_load(path.read_text())
    mod, _, name = cfg["class_path"].rpartition(".")
    from helpers import fast_kwargs

    args = {**(cfg.get("init_args") or {}), **fast_kwargs(name)}
    if args.get("debias"):  # up to 10 rounds of 64 measuring images (a minute): same code, 1 round of 2
        args["debias"] = {**args["debias"], "rounds": 1, "images": 2, "seeds": 1}
    ed = getattr(importlib.import_module(mod), name)(**args, base="tiny:sd1")
    if ed.edits == "sampling":  # a generation-time eraser: it erases (no target) and installs a guide, no tensor
        ed.apply_edit([EditRequest("A banana", "")])
        assert not ed.edited_parameters() and ed.t2i.sampling is not None
        return
    ed.apply_edit([EditRequest("A banana", "A blue banana")])
    assert bool(ed.edited_parameters()) == (ed.edits != "none")


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name in ("benchmark", "trainer", "experiment")],
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_configs_parse_and_resolve(path, capsys):
    editor, bench = ROOT / "configs/editor/time.yaml", ROOT / "configs/benchmark/timed_tiny.yaml"
    args = {"benchmark": ["--model", editor, "--data", path],
            "trainer": ["--model", editor, "--data", bench, "--trainer", path],
            "experiment": ["-c", path]}[path.parent.name]
    assert run_cli(["eval", *args, "--print_config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"].startswith("edit_bench.editors.")
    assert resolved["data"]["class_path"].startswith("edit_bench.benchmarks.")
    if path.parent.name == "benchmark":  # its data file and rows load
        from edit_bench.benchmarks import discover

        init = resolved["data"]["init_args"]
        cls = discover()[resolved["data"]["class_path"].rsplit(".", 1)[1]]
        args = {k: v for k, v in init.items() if k not in ("sampler", "judge", "metrics", "attacks")}  # built with their own
        assert cls(**args).cases()


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name == "requests"], ids=lambda p: p.name)
def test_request_files_load(path):
    from edit_bench.benchmarks.requests import EditRequests

    assert EditRequests(path=str(path)).requests()


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name == "trace"], ids=lambda p: p.name)
def test_trace_configs_parse(path):
    from edit_bench.localize.command import parser, read_rows

    if path.name.endswith("_prompts.yaml"):  # a prompts file: every row is complete and names a real span
        method = "locogen" if "locogen" in path.name else "causal_trace"
        args = parser().parse_args(["--method", method, "--prompts", str(path)])
        from edit_bench.models import load_t2i

        t2i = load_t2i("toy")
        for r in read_rows(args):
            assert t2i.subject_positions(r["prompt"], r["subject"])
    else:
        args = parser().parse_args(["--config", str(path), "--prompt", "a circle", "--subject", "circle"])
        assert args.model.base and args.sampler.seeds
