"""One origin for every editor, one owner for every run directory, durable logs, and a provenance built from resolved
settings and declared files: what a resumed, sequential, concurrent or interrupted run relies on."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from edit_bench.benchmarks.timed import TIMED
from edit_bench.cli import EditTrainer
from edit_bench.editors.time import TIME
from edit_bench.errors import UsageError
from edit_bench.evaluate import SEQUENTIAL_STATE, Evaluation, load_sequential_state, save_sequential_state
from edit_bench.metrics import EditScores, JudgeConfig
from edit_bench.rundir import RunDir
from edit_bench.types import EditRequest, SamplerConfig
from helpers import ROOT, run_cli

TINY_SAMPLER = SamplerConfig(steps=2, size=32, seeds=[0])
R1, R2, R3 = EditRequest("A banana", "A blue banana"), EditRequest("A rose", "A white rose"), EditRequest("A bear", "A polar bear")


def _trainer():
    return EditTrainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, inference_mode=False)


def _timed(rows="0:3", **kw):
    return TIMED(rows=rows, sampler=TINY_SAMPLER, judge=JudgeConfig(model="tiny:random"), batch_size=4,
                 metrics=[EditScores()], **kw)


def _now(ed):
    return {n: p.detach().clone() for n, p in ed.edited_parameters().items()}


# ---------------------------------------------------------------------------------------------- the origin
def test_a_resumed_editor_draws_the_unedited_models_data_whatever_state_it_loaded(tmp_path):
    """The failure this replaces: the snapshot was taken lazily after the state file was loaded, so "the unedited model"
    of a resumed run (attack images, P4D's teacher, restore()) was the partly edited one."""
    ed = TIME(base="tiny:sd1")
    loaded = _now(ed)
    ed.apply_edit([R1])
    ed.apply_edit([R2], on_current=True)
    save_sequential_state(ed, tmp_path / "state.safetensors", 2)
    after_two = _now(ed)

    resumed = TIME(base="tiny:sd1")  # a new process: the model loads, then the state file
    assert load_sequential_state(resumed, tmp_path / "state.safetensors") == 2
    with resumed.original_weights():
        assert all(torch.equal(p, loaded[n]) for n, p in resumed.edited_parameters().items())
    from edit_bench.attacks.base import concept_images

    fresh = TIME(base="tiny:sd1")
    images = concept_images(resumed.t2i, resumed, ["A banana"], TINY_SAMPLER, [0], None, "banana")
    assert torch.equal(images, concept_images(fresh.t2i, fresh, ["A banana"], TINY_SAMPLER, [0], None, "banana"))
    # the third edit starts from the state; the state saved after it is relative to the origin, not to the resume
    resumed.apply_edit([R3], on_current=True)
    save_sequential_state(resumed, tmp_path / "state3.safetensors", 3)
    ed.apply_edit([R3], on_current=True)
    again = TIME(base="tiny:sd1")
    load_sequential_state(again, tmp_path / "state3.safetensors")
    assert all(torch.equal(p, ed.edited_parameters()[n]) for n, p in again.edited_parameters().items())
    resumed.restore()
    assert all(torch.equal(p, loaded[n]) for n, p in resumed.edited_parameters().items())
    assert any(not torch.equal(after_two[n], loaded[n]) for n in loaded)


def test_an_editor_whose_parameters_appear_after_loading_has_no_origin_and_says_so():
    class Growing(TIME):
        extra = False

        def edited_parameters(self):
            out = super().edited_parameters()
            if self.extra:
                out["unet.conv_in.weight"] = self.t2i.get_parameter("unet.conv_in.weight")
            return out

    ed = Growing(base="tiny:sd1")
    ed.t2i
    ed.extra = True
    with pytest.raises(UsageError, match="no origin value.*must not depend on the edit"):
        with ed.original_weights():
            pass


def test_a_sequential_state_of_another_editor_or_model_is_refused_whole(tmp_path):
    from edit_bench.editors.uce import UCE

    ed = TIME(base="tiny:sd1")
    ed.apply_edit([R1])
    save_sequential_state(ed, tmp_path / "s.safetensors", 1)
    other = UCE(base="tiny:sd1")
    before = _now(other)
    with pytest.raises(UsageError, match="made by edit_bench.editors.time.TIME, not edit_bench.editors.uce.UCE"):
        load_sequential_state(other, tmp_path / "s.safetensors")
    with pytest.raises(UsageError, match="of model .* not of this run's"):
        load_sequential_state(TIME(base="tiny:sd2"), tmp_path / "s.safetensors")
    (tmp_path / "junk.safetensors").write_text("not a state")
    with pytest.raises(UsageError, match="not a readable sequential state"):
        load_sequential_state(other, tmp_path / "junk.safetensors")
    assert all(torch.equal(p, before[n]) for n, p in other.edited_parameters().items())


class _StopsAtEdit(TIME):
    """Sends SIGTERM to this process during its N-th edit (once armed)."""

    armed, edits, at = False, 0, 2

    def edit(self, requests, preserve=()):
        type(self).edits += 1
        super().edit(requests, preserve)
        if type(self).armed and type(self).edits == type(self).at:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_between_sequential_edits_keeps_every_edit_made(tmp_path):
    """every=3: one stage after 3 edits. A stop requested during edit 2 is honoured before edit 3, and the state holds
    both edits made (saved after each), so the rerun makes only the third."""
    from safetensors import safe_open

    from edit_bench.signals import Interrupted

    whole = Evaluation(TIME(base="tiny:sd1"), _timed(protocol="sequential", every=3), tmp_path / "whole").run(_trainer())
    _StopsAtEdit.armed, _StopsAtEdit.edits = True, 0
    try:
        with pytest.raises(Interrupted, match="the model after 2 edits is kept"):
            Evaluation(_StopsAtEdit(base="tiny:sd1"), _timed(protocol="sequential", every=3), tmp_path / "cut").run(_trainer())
    finally:
        _StopsAtEdit.armed = False
    with safe_open(str(tmp_path / "cut" / SEQUENTIAL_STATE), framework="pt") as f:
        assert f.metadata()["edits"] == "2"
    again = Evaluation(_StopsAtEdit(base="tiny:sd1"), _timed(protocol="sequential", every=3), tmp_path / "cut").run(_trainer())
    assert again.timing.edits == 1 and again.curve[-1].metrics == whole.curve[-1].metrics


def test_sigterm_inside_a_fine_tuners_optimisation_stops_between_steps():
    from edit_bench import signals
    from edit_bench.editors.esd import ESD

    ed = ESD(base="tiny:sd1", steps=5, sample_steps=4, lr=1e-3)
    loaded = _now(ed)
    with signals.stop_at_safe_points():
        signals._received.append(signal.SIGTERM)
        with pytest.raises(signals.Interrupted, match="dropped at step 0 of 5"):
            ed.apply_edit([EditRequest("A banana", "")])
    ed.restore()
    assert all(torch.equal(p, loaded[n]) for n, p in ed.edited_parameters().items())


def test_concept_ablation_draws_its_anchors_from_the_origin_under_on_current(tmp_path, monkeypatch):
    """The failure this replaces: under the sequential protocol CA drew the next request's anchors with the edited
    model and cached them under the base model's identity."""
    from safetensors.torch import load_file

    from edit_bench.editors.concept_ablation import ConceptAblation, anchor_cache_dir
    from helpers import fast_kwargs

    kw = {**fast_kwargs("ConceptAblation"), "lr": 5e-2, "base": "tiny:sd1"}
    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "a"))
    ed = ConceptAblation(**kw)
    ed.apply_edit([EditRequest("A banana", "A fruit")])
    ed.apply_edit([EditRequest("A bear", "A dog")], on_current=True)
    key = ed.anchor_key(["A dog"])
    sequential = load_file(str(anchor_cache_dir() / f"{key}.safetensors"))["images"]
    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "b"))
    fresh = ConceptAblation(**kw).anchor_images(["A dog"])
    assert torch.equal(sequential, fresh)


# ---------------------------------------------------------------------------------------------- run ownership
def _sleeper():
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_second_run_into_an_owned_directory_is_one_line_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    import socket

    out = tmp_path / "run"
    out.mkdir()
    holder = _sleeper()
    try:
        lock = {"host": socket.gethostname(), "pid": holder.pid, "start": None, "command": "eval", "since": "now"}
        (out / ".lock").write_text(json.dumps(lock))
        args = ["eval", "--model", "configs/editor/time.yaml", "--model.init_args.base", "tiny:sd1", "--data",
                "configs/benchmark/toy_timed.yaml", "--data.rows", "0:1", "--data.sampler.steps", "2",
                "--data.sampler.size", "32", "--data.sampler.seeds", "[0]", "--data.judge.model", "tiny:random",
                "--data.metrics", "[{class_path: edit_bench.metrics.EditScores}]", "--out_dir", out]
        assert run_cli(args) == 2
        err = capsys.readouterr().err
        assert f"is in use by pid {holder.pid}" in err and len(err.strip().splitlines()) == 2  # the line + the debug hint
        assert sorted(f.name for f in out.iterdir()) == [".lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    assert run_cli(args) == 0  # its holder is gone: taken over
    assert "taking over" in capsys.readouterr().out
    assert (out / "results.json").is_file() and not (out / ".lock").exists()


def test_two_runs_started_together_into_one_directory_one_runs_and_one_is_refused(tmp_path):
    """Both see no run.json; only one takes the lock (O_EXCL)."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "edit_bench", "fit", "--model", "configs/editor/time.yaml",
            "--model.init_args.base", "tiny:sd1", "--data", "EditRequests", "--data.path", "configs/requests/blue_banana.yaml",
            "--out_dir", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    # either one held the lock while the other tried (0, 2), or one finished before the other started and the second
    # found the edit already made (0, 0): never two writers at once
    assert codes in ([0, 2], [0, 0]), results
    if codes == [0, 2]:
        assert any("is in use by pid" in err for _, err in results)
    assert (out / "edit.safetensors").is_file() and not (out / ".lock").exists()


def test_a_missing_declared_input_file_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    code = run_cli(["eval", "--model", "configs/editor/oce.yaml", "--model.init_args.corpus", "/nonexistent.csv",
                    "--data", "configs/benchmark/toy_erasure.yaml", "--out_dir", out])
    err = capsys.readouterr().err
    assert code == 2 and "OCE corpus: data file /nonexistent.csv not found" in err and not out.exists()


# ---------------------------------------------------------------------------------------------- provenance
def test_a_cache_folder_is_not_an_input_and_a_resolved_default_is(tmp_path):
    from edit_bench.editors.oce import OCE
    from edit_bench.provenance import Provenance

    data = _timed(rows="0:1")
    stats = tmp_path / "stats"
    stats.mkdir()
    ed = OCE(base="tiny:sd1", stats_dir=str(stats))
    before = Provenance.build(ed, data).run()
    (stats / "prior.safetensors").write_bytes(b"x" * 10)
    (stats / "prior.safetensors.lock").write_bytes(b"")
    assert Provenance.build(OCE(base="tiny:sd1", stats_dir=str(stats)), data).run() == before  # a resume is not refused
    assert Provenance.build(OCE(base="tiny:sd1", stats_dir=str(tmp_path / "elsewhere")), data).run() == before
    assert ed.hparams["corpus"] == "datasets/coco/coco_30k.csv" and "editor.corpus" in before["files"]
    # the default corpus is the one named explicitly: the same provenance, whichever way it was given
    assert Provenance.build(OCE(base="tiny:sd1", corpus="datasets/coco/coco_30k.csv"), data).run() == before


def test_esd_records_its_recipes_values_and_fit_records_gradient_clipping():
    from edit_bench.benchmarks.requests import EditRequests
    from edit_bench.editors.esd import ESD

    ed = ESD(base="tiny:sd1", recipe="current")
    assert {k: ed.hparams[k] for k in ("eta", "lr", "steps", "params")} == {"eta": 2.0, "lr": 5e-5, "steps": 200, "params": "esd-x"}
    data = EditRequests(requests=[{"source": "A banana", "target": ""}])
    plain = EditTrainer(max_steps=2, accelerator="cpu", logger=False).fit_fingerprint(ed, data)
    clipped = EditTrainer(max_steps=2, accelerator="cpu", logger=False, gradient_clip_val=0.5).fit_fingerprint(ed, data)
    assert plain != clipped and clipped["training"]["gradient_clip_val"] == 0.5


def test_matmul_precision_governs_convolutions_and_the_flags_in_force_are_recorded():
    from edit_bench.provenance import numerics, set_numerics, versions

    old = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
    try:
        set_numerics("highest")
        assert numerics()["cudnn_tf32"] is False and numerics()["float32_matmul_precision"] == "highest"
        set_numerics("high")
        assert numerics()["cudnn_tf32"] is True
    finally:
        torch.set_float32_matmul_precision(old[0])
        torch.backends.cudnn.allow_tf32 = old[1]
    assert {"cuda", "cudnn", "onnxruntime", "opencv-python"} <= set(versions())


def test_export_refuses_a_run_that_is_still_running(tmp_path):
    import socket

    from edit_bench.export import export

    run = tmp_path / "fit"
    assert run_cli(["fit", "--model", "configs/editor/time.yaml", "--model.init_args.base", "tiny:sd1", "--data",
                    "EditRequests", "--data.path", "configs/requests/blue_banana.yaml", "--out_dir", run]) == 0
    holder = _sleeper()
    try:
        (run / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": holder.pid, "command": "fit"}))
        with pytest.raises(UsageError, match=f"still being written by pid {holder.pid}"):
            export(str(run), str(tmp_path / "out"))
        assert not (tmp_path / "out").exists()
    finally:
        holder.kill()
        holder.wait()
    assert export(str(run), str(tmp_path / "out")).is_dir()  # its holder is gone


def test_an_anchor_image_listed_outside_the_anchor_folder_is_digested(tmp_path):
    import numpy as np
    from PIL import Image

    from edit_bench.editors.concept_ablation import ConceptAblation
    from edit_bench.provenance import Provenance

    outside = tmp_path / "elsewhere" / "a.png"
    outside.parent.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside)
    folder = tmp_path / "anchors"
    folder.mkdir()
    (folder / "images.txt").write_text(f"{outside}\n")
    (folder / "caption.txt").write_text("a fruit\n")
    data = _timed(rows="0:1")

    def prov():
        return Provenance.build(ConceptAblation(base="tiny:sd1", anchor_folder=str(folder)), data).run()

    before = prov()
    assert "editor.anchor_folder.images.0" in before["files"]
    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(outside)
    assert prov()["files"] != before["files"]


def test_a_run_with_a_foreign_sequential_state_is_refused_before_it_draws_anything(tmp_path):
    from edit_bench.editors.uce import UCE

    out = tmp_path / "run"
    Evaluation(TIME(base="tiny:sd1"), _timed(rows="0:2", protocol="sequential"), out).run(_trainer())
    records = sorted(p.stat().st_mtime_ns for p in out.rglob("*.jsonl"))
    other = UCE(base="tiny:sd1")
    other.apply_edit([R1])
    save_sequential_state(other, out / SEQUENTIAL_STATE, 2)  # e.g. copied in from another run
    with pytest.raises(UsageError, match="made by edit_bench.editors.uce.UCE, not edit_bench.editors.time.TIME"):
        Evaluation(TIME(base="tiny:sd1"), _timed(rows="0:2", protocol="sequential"), out).run(_trainer())
    assert sorted(p.stat().st_mtime_ns for p in out.rglob("*.jsonl")) == records and not (out / ".lock").exists()


class _KillsAtCase(EditScores):
    """Sends SIGTERM to this process when it first scores a sample of ``case`` (once armed)."""

    armed, case = False, None

    def score(self, images, samples):
        if type(self).armed and any(s.case_id == type(self).case for s in samples):
            type(self).armed = False
            os.kill(os.getpid(), signal.SIGTERM)
        return super().score(images, samples)


def test_a_resumed_sequential_run_attacks_with_the_unedited_models_images_and_teacher(tmp_path):
    """The failure this replaces: resumed mid-stage (the state already holds the stage's edits, so no edit runs in the
    new process), concept inversion and P4D drew "the unedited model's" images and teacher from the edited model. Here
    the resumed run's attacks find what the uninterrupted run's found, at every stage."""
    from edit_bench.attacks import ConceptInversion, PromptOptimisation
    from edit_bench.editors.uce import UCE
    from edit_bench.signals import Interrupted

    def bench():
        attacks = [ConceptInversion(steps=2, batch_size=2, image_seeds=[7]),
                   PromptOptimisation(name="p4d", timesteps=1, iterations=2, objective="teacher", image_seeds=[7])]
        return TIMED(rows="0:2", sampler=TINY_SAMPLER, judge=JudgeConfig(model="tiny:random"), batch_size=4,
                     metrics=[_KillsAtCase()], attacks=attacks, protocol="sequential")

    whole = Evaluation(UCE(base="tiny:sd1"), bench(), tmp_path / "whole").run(_trainer())
    second = list(bench()._cases)[1]  # appears from stage 2 on: its first batch comes after the stage's edits are kept
    _KillsAtCase.armed, _KillsAtCase.case = True, second
    with pytest.raises(Interrupted):
        Evaluation(UCE(base="tiny:sd1"), bench(), tmp_path / "cut").run(_trainer())
    assert not _KillsAtCase.armed
    again = Evaluation(UCE(base="tiny:sd1"), bench(), tmp_path / "cut").run(_trainer())
    assert again.timing.edits == 0  # the stage's edits were kept: the resumed process made none
    from safetensors.torch import load_file

    found = sorted(p.relative_to(tmp_path / "whole") for p in (tmp_path / "whole" / "attacks").rglob("*.safetensors"))
    assert len(found) == 2 * (1 + 2)  # two attacks; stage 1 attacks one case, stage 2 two
    for rel in found:  # what each attack found (learned embeddings, token ids), bit for bit
        w, a = load_file(str(tmp_path / "whole" / rel)), load_file(str(tmp_path / "cut" / rel))
        assert w.keys() == a.keys() and all(torch.equal(w[k], a[k]) for k in w), rel
    for w, a in zip(whole.curve, again.curve):
        assert a.attacks["p4d"]["asr"] == w.attacks["p4d"]["asr"], w.edits


def test_weight_change_is_the_distance_from_the_origin_and_every_edit_logs_it(tmp_path):
    """Editor.weight_change() against the delta computed by hand; an eval's results hold each edit's and their mean."""
    from edit_bench.editors.uce import UCE
    from edit_bench.types import EditRequest

    ed = UCE(base="tiny:sd1")
    assert ed.weight_change()["total"]["delta_norm"] == 0.0  # as loaded
    ed.apply_edit([EditRequest("A banana", "A blue banana")])
    got = ed.weight_change()
    origin, params = ed.origin(), ed.edited_parameters()
    delta = torch.cat([(p.detach().double() - origin[n].double()).flatten() for n, p in params.items()])
    w0 = torch.cat([origin[n].double().flatten() for n in params])
    assert abs(got["total"]["delta_norm"] - float(delta.norm())) < 1e-9 and got["total"]["params_edited"] == delta.numel()
    assert abs(got["total"]["ratio"] - float(delta.norm() / w0.norm())) < 1e-12
    assert abs(got["total"]["mean_abs_change"] - float(delta.abs().mean())) < 1e-12
    assert set(got["total"]["by_kind"]) == {"unet:attn2.to_k", "unet:attn2.to_v"}
    ed.restore()
    assert ed.weight_change()["total"]["delta_norm"] == 0.0
    res = Evaluation(UCE(base="tiny:sd1"), _timed(rows="0:2"), tmp_path / "run").run(_trainer())
    wc = res.weight_change
    assert wc["edits"] == 2 and len(wc["per_edit"]) == 2 and all(c.startswith("TIMED_") for c in wc["per_edit"])
    each = [e["delta_norm"] for e in wc["per_edit"].values()]
    assert abs(wc["mean"]["delta_norm"] - sum(each) / 2) < 1e-9 and all(d > 0 for d in each)
