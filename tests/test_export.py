"""`export`: an edited model as a plain diffusers pipeline with a model card; plain diffusers (no edit_bench
import) draws the edited model's images."""

import json
import subprocess
import sys

import pytest
import torch

from edit_bench.models import load_t2i
from edit_bench.types import SamplerConfig
from helpers import run_cli

PLAIN = """
import sys, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
pipe.set_progress_bar_config(disable=True)
c, h = pipe.unet.config.in_channels, 32 // pipe.vae_scale_factor
latents = torch.randn((c, h, h), generator=torch.Generator("cpu").manual_seed(0))[None]
img = pipe("a circle", num_inference_steps=4, guidance_scale=4.0, height=32, width=32, latents=latents, output_type="pt").images
assert not any(m.startswith("edit_bench") for m in sys.modules), "plain diffusers only"
torch.save(img, sys.argv[2])
"""


def _fit(tmp_path, base):
    out = tmp_path / "edit"
    assert run_cli(["fit", "--model", "configs/editor/time.yaml", "--model.base", base, "--data", "EditRequests",
                    "--data.path", "configs/requests/toy_blue_circle.yaml", "--out_dir", out]) == 0
    return out


@pytest.mark.parametrize("base", ["toy", "tiny:sd1"])
def test_the_export_loads_in_plain_diffusers_and_draws_the_edited_models_images(base, tmp_path):
    run = _fit(tmp_path, base)
    evals = []
    if base == "tiny:sd1":  # a card with numbers: the delta evaluated on one TIMED row
        evals = [tmp_path / "eval"]
        assert run_cli(["eval", "--model", "configs/editor/unedited.yaml", "--model.base", base, "--model.delta",
                        run / "edit.safetensors", "--data", "configs/benchmark/timed_tiny.yaml", "--data.rows", "0:1",
                        "--out_dir", evals[0]]) == 0
    out = tmp_path / "exported"
    assert run_cli(["export", run, "--out", out, *(["--runs", *evals] if evals else [])]) == 0
    assert (out / "model_index.json").is_file() and (out / "edit_delta.safetensors").is_file()
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers") and "| a circle | a blue circle |" in card
    if evals:
        res = json.loads((evals[0] / "results.json").read_text())
        m = res["metrics"]["efficacy"]
        assert f"| efficacy | — | {m['mean']:.3f} ± {m['std']:.3f} | {m['n']} |" in card and "sampler pndm 4 steps" in card
    else:
        assert "reports no number" in card
    r = subprocess.run([sys.executable, "-c", PLAIN, str(out), str(tmp_path / "img.pt")], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = torch.load(tmp_path / "img.pt")
    t2i = load_t2i(base, delta=run / "edit.safetensors")
    sampler = SamplerConfig(scheduler=t2i.default_scheduler, steps=4, guidance=4.0, size=32, seeds=[0])
    ours = t2i.generate(["a circle"], [0], sampler)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    unedited = load_t2i(base).generate(["a circle"], [0], sampler)
    assert (unedited - ours).abs().max() > 1e-3  # the export carries the edit


def test_export_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, capsys):
    run = _fit(tmp_path, "tiny:sd1")
    cases = [
        ([tmp_path / "nothing", "--out", tmp_path / "o1"], "does not exist"),
        ([tmp_path, "--out", tmp_path / "o2"], "holds no edit.safetensors"),  # not a fit run
        ([run, "--out", tmp_path / "o3", "--base", "tiny:sd2"], "was made for model 'tiny:sd1'"),
        ([run, "--out", run], "exists and is not empty"),
        ([run, "--out", tmp_path / "o5", "--runs", tmp_path], "has no results.json"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        assert run_cli(["export", *args]) == 2, args
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, (args, err)
    assert not any(p.name.startswith((".o", "o")) for p in tmp_path.iterdir()), list(tmp_path.iterdir())


def test_eval_logs_its_numbers_to_csv_by_default_and_a_missing_logger_is_one_line(tmp_path, capsys):
    import csv

    out = tmp_path / "seq"
    assert run_cli(["eval", "--model", "configs/editor/time.yaml", "--model.base", "tiny:sd1", "--data",
                    "configs/benchmark/timed_tiny.yaml", "--data.rows", "0:2", "--data.protocol", "sequential",
                    "--out_dir", out]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["loggers"] == ["CSVLogger"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    by_step = {int(r["step"]): r for r in rows if r.get("efficacy")}
    assert sorted(by_step) == [c["edits"] for c in res["curve"]] == [1, 2]
    for c in res["curve"]:
        assert float(by_step[c["edits"]]["efficacy"]) == pytest.approx(c["metrics"]["efficacy"]["mean"])
    assert "editor: TIME" in (out / "hparams.yaml").read_text()
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:  # installed here: nothing missing to report
        return
    capsys.readouterr()
    missing = tmp_path / "tb"
    code = run_cli(["eval", "--model", "configs/editor/time.yaml", "--model.base", "tiny:sd1", "--data",
                    "configs/benchmark/timed_tiny.yaml", "--trainer.logger", "WandbLogger", "--out_dir", missing])
    err = capsys.readouterr().err
    assert code == 2 and "needs the package wandb, which is not installed" in err and not missing.exists()


def test_report_sends_its_table_and_grid_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert run_cli(["eval", "--model", "configs/editor/time.yaml", "--model.base", "tiny:sd1", "--data",
                    "configs/benchmark/timed_tiny.yaml", "--data.rows", "0:1", "--out_dir", run]) == 0
    assert run_cli(["report", run, "--out", tmp_path / "rep", "--grid", "2", "--logger", "tensorboard",
                    "--logger_dir", tmp_path / "tb"]) == 0
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "tensors": 0}).Reload()
    assert acc.Tags()["images"] == ["report/grid"] and "report/table/text_summary" in acc.Tags()["tensors"]
