"""No resumed run, cached baseline or stored metric state mixes numbers made under different settings: the
provenance holds contents (not paths), metrics are named, paired metrics know their baseline, signals stop a
run where nothing is lost."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from edit_bench.benchmarks.captions import Captions
from edit_bench.benchmarks.requests import EditRequests
from edit_bench.benchmarks.timed import TIMED
from edit_bench.cli import EditTrainer
from edit_bench.editors.time import TIME
from edit_bench.editors.uce import UCE
from edit_bench.editors.unedited import Unedited
from edit_bench.errors import UsageError
from edit_bench.evaluate import Evaluation
from edit_bench.metrics import FID, SSIM, ClipScore, EditScores, ImageFeatures, JudgeConfig
from edit_bench.types import SamplerConfig
from helpers import ROOT, run_cli

TINY_SAMPLER = SamplerConfig(steps=2, size=32, seeds=[0])


def _trainer():
    return EditTrainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                       enable_model_summary=False, inference_mode=False)


def _captions(tmp_path, requests=None, **kw):
    csv = tmp_path / "captions.csv"
    if not csv.exists():
        csv.write_text("prompt,evaluation_seed\na circle,0\na red square,1\n")
    kw.setdefault("metrics", [ClipScore()])
    return Captions(path=str(csv), n=None, requests=requests, sampler=TINY_SAMPLER, judge=JudgeConfig(model="tiny:random"),
                    batch_size=2, **kw)


def test_an_edited_requests_file_refuses_the_resume_naming_the_field(tmp_path):
    req = tmp_path / "edit.yaml"
    req.write_text("requests:\n  - {source: a circle, target: a blue circle}\n")
    Evaluation(UCE(base="tiny:sd1"), _captions(tmp_path, str(req)), tmp_path / "run").run(_trainer())
    req.write_text("requests:\n  - {source: a circle, target: a green circle}\n")  # same path, another edit
    with pytest.raises(UsageError, match=r"requests\.0\.target: \"a blue circle\" -> \"a green circle\""):
        Evaluation(UCE(base="tiny:sd1"), _captions(tmp_path, str(req)), tmp_path / "run").run(_trainer())


def test_an_edited_preserve_cell_refuses_the_resume_naming_the_file_and_the_preserve_set(tmp_path):
    lines = (ROOT / "datasets/toy/toy_timed.csv").read_text().splitlines()[:2]
    csv = tmp_path / "rows.csv"
    csv.write_text(lines[0] + ",preserve\n" + lines[1] + ",a square\n")

    def bench():
        return TIMED(path=str(csv), sampler=TINY_SAMPLER, judge=JudgeConfig(model="tiny:random"), batch_size=11)

    Evaluation(TIME(base="tiny:sd1"), bench(), tmp_path / "run").run(_trainer())
    csv.write_text(lines[0] + ",preserve\n" + lines[1] + ",a star\n")
    with pytest.raises(UsageError) as e:
        Evaluation(TIME(base="tiny:sd1"), bench(), tmp_path / "run").run(_trainer())
    assert "files.data.path" in str(e.value) and 'preserve.0: "a square" -> "a star"' in str(e.value)


def test_a_code_change_misses_the_baseline_cache(tmp_path, monkeypatch):
    from edit_bench import provenance

    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))
    bench = lambda: TIMED(rows="0:1", sampler=TINY_SAMPLER, judge=JudgeConfig(model="tiny:random"), batch_size=11,  # noqa: E731
                          baseline=True)
    first = Evaluation(TIME(base="tiny:sd1"), bench(), tmp_path / "a").run(_trainer())
    assert first.samples.baseline_cache["added"] == 11
    again = Evaluation(TIME(base="tiny:sd1"), bench(), tmp_path / "b").run(_trainer())
    assert again.samples.baseline_cache["hits"] == 11
    monkeypatch.setattr(provenance, "source_hash", lambda: "another-source")  # e.g. a fix of the judge's code
    changed = Evaluation(TIME(base="tiny:sd1"), bench(), tmp_path / "c").run(_trainer())
    assert changed.samples.baseline_cache["hits"] == 0
    assert changed.provenance["code"] == "another-source"


class _ModeFeatures(nn.Module):
    """A stand-in for Inception whose features depend on the FID mode, so mixed features would show."""

    def __init__(self, mode):
        super().__init__()
        self.register_buffer("w", torch.randn(3 * 4, 6, generator=torch.Generator().manual_seed(len(mode))))

    def forward(self, x):
        return nn.functional.adaptive_avg_pool2d(x / 255, 2).flatten(1) @ self.w


def test_two_fids_with_different_modes_each_keep_their_own_features(tmp_path, monkeypatch):
    from cleanfid.resize import build_resizer

    monkeypatch.setattr(ImageFeatures, "inception", classmethod(
        lambda cls, mode="clean", path=None: cls(_ModeFeatures(mode), build_resizer("clean"), f"stand-in/{mode}")))
    rows = tmp_path / "rows.csv"
    rows.write_text("\n".join((ROOT / "datasets/toy/toy_timed.csv").read_text().splitlines()[:3]) + "\n")

    def run(metrics, out):
        bench = TIMED(path=str(rows), sampler=SamplerConfig(steps=2, size=32, seeds=[0, 1]),
                      judge=JudgeConfig(model="tiny:random"), batch_size=22, metrics=metrics)
        return Evaluation(Unedited(base="tiny:sd1"), bench, tmp_path / out).run(_trainer()).metrics

    both = run([FID(reference="renderer", kid_subset_size=20), FID(name="fid_legacy", mode="legacy_tensorflow",
                                                                reference="renderer", kid_subset_size=20)], "both")
    clean = run([FID(reference="renderer", kid_subset_size=20)], "clean")
    legacy = run([FID(name="fid_legacy", mode="legacy_tensorflow", reference="renderer", kid_subset_size=20)], "legacy")
    assert both["fid"] == clean["fid"] and both["kid"] == clean["kid"]
    assert both["fid_legacy"] == legacy["fid_legacy"] and both["kid_legacy"] == legacy["kid_legacy"]
    assert both["fid"]["mean"] != both["fid_legacy"]["mean"]
    assert {p.name.split("-rank")[0] for p in (tmp_path / "both/samples/features").iterdir()} == {"fid", "fid_legacy"}


def test_paired_metrics_need_a_baseline_and_a_deltas_baseline_is_the_model_without_it(tmp_path):
    # an editor without the baseline pass: refused before any output
    with pytest.raises(UsageError, match="'ssim' compares each image with the unedited model's"):
        Evaluation(UCE(base="tiny:sd1"), _captions(tmp_path, str(ROOT / "configs/requests/toy_blue_circle.yaml"),
                                                   metrics=[ClipScore(), SSIM()]), tmp_path / "refused").run(_trainer())
    assert not (tmp_path / "refused").exists()
    # a delta, evaluated with its baseline: the base model without the delta
    data = EditRequests(path=str(ROOT / "configs/requests/toy_blue_circle.yaml"))
    EditTrainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False).fit(UCE(base="tiny:sd1"), datamodule=data, out_dir=tmp_path / "fit")
    delta = str(tmp_path / "fit/edit.safetensors")
    res = Evaluation(Unedited(delta=delta, base="tiny:sd1"), _captions(tmp_path, metrics=[ClipScore(), SSIM()], baseline=True),
                     tmp_path / "delta").run(_trainer())
    assert res.protocol["protocol"] == "as_is" and res.baseline is not None
    assert 0 < res.metrics["ssim"]["mean"] < 1 and res.metrics["ssim"]["n"] == 2
    plain = Evaluation(Unedited(base="tiny:sd1"), _captions(tmp_path, metrics=[ClipScore()]), tmp_path / "plain").run(_trainer())
    assert res.baseline["clip_score"] == plain.metrics["clip_score"]  # the baseline is the base model
    # the unedited model itself: no pair, and the results say so
    none = Evaluation(Unedited(base="tiny:sd1"), _captions(tmp_path, metrics=[ClipScore(), SSIM()], baseline=True),
                      tmp_path / "none").run(_trainer())
    assert "ssim" not in none.metrics and "unedited model" in none.protocol["not_scored"]["ssim"]


def test_uint8_references_give_the_float32_references_numbers():
    from edit_bench.metrics.functional import quantised as _quantised

    a, b = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.rand(3, 3, 32, 32)
    m = SSIM()
    ref = m.reference(b)
    assert ref.dtype == torch.uint8 and ref.element_size() * ref.numel() == 3 * 3 * 32 * 32
    old = m.distance(a, (_quantised(b) * 255).round().to(torch.uint8))  # the float32 reference was exactly this
    assert torch.equal(m.distance(a, ref), old)
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    assert torch.equal(m.distance(a, ref), ssim(_quantised(a), _quantised(b), data_range=1.0, reduction="none"))


def test_the_coco_baseline_experiment_runs_on_its_toy_twin(tmp_path):
    """The unedited model on a caption set without requests (ReFACT Table 1's COCO baseline row): CLIP-score and
    the FID twin are scored; the paired metrics have no pair and are listed as not scored."""
    rc = run_cli(["eval", "--model", ROOT / "configs/editor/unedited.yaml", "--data", ROOT / "configs/benchmark/toy_captions.yaml",
                  "--data.requests", "null", "--data.n", "8", "--data.batch_size", "8", "--out_dir", tmp_path / "coco_base"])
    assert rc == 0
    res = json.loads((tmp_path / "coco_base/results.json").read_text())
    assert {"clip_score", "toy_fid", "toy_kid"} <= set(res["metrics"]) and res["samples"]["total"] == 8
    assert set(res["protocol"]["not_scored"]) == {"judge_distance", "ssim"}


class _KillsAtBatch2(ClipScore):
    """CLIP-score that, when armed, sends this process SIGTERM while its second batch is scored (as a scheduler
    would)."""

    armed, calls = False, 0

    def score(self, images, samples):
        type(self).calls += 1
        if type(self).armed and type(self).calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().score(images, samples)


def test_sigterm_during_eval_keeps_the_done_batches_and_the_rerun_equals_an_uninterrupted_run(tmp_path):
    from edit_bench.signals import Interrupted

    def bench(metric):
        return TIMED(rows="0:2", sampler=TINY_SAMPLER, judge=JudgeConfig(model="tiny:random"), batch_size=4,
                     metrics=[EditScores(), metric])

    whole = Evaluation(TIME(base="tiny:sd1"), bench(_KillsAtBatch2()), tmp_path / "whole").run(_trainer())
    _KillsAtBatch2.armed, _KillsAtBatch2.calls = True, 0
    try:
        with pytest.raises(Interrupted) as e:
            Evaluation(TIME(base="tiny:sd1"), bench(_KillsAtBatch2()), tmp_path / "cut").run(_trainer())
    finally:
        _KillsAtBatch2.armed = False
    assert e.value.exit_code == 143
    lines = (tmp_path / "cut/samples/rank0.jsonl").read_text().splitlines()
    assert len(lines) == 8 and not (tmp_path / "cut/results.json").exists()  # two whole batches, nothing else
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None) or callable(signal.getsignal(signal.SIGTERM))
    again = Evaluation(TIME(base="tiny:sd1"), bench(_KillsAtBatch2()), tmp_path / "cut").run(_trainer())
    assert again.samples.stored_before == 8 and again.metrics == whole.metrics


def _fit_args(out):
    return [sys.executable, "-m", "edit_bench", "fit", "--model", "configs/editor/esd_x.yaml", "--model.init_args.base", "tiny:sd1",
            "--model.init_args.sample_steps", "4", "--model.init_args.lr", "1e-3", "--data", "EditRequests",
            "--data.path", "configs/requests/toy_blue_circle.yaml", "--trainer.max_steps", "30",
            "--trainer.checkpoint_every", "1", "--trainer.enable_progress_bar", "false", "--out_dir", str(out)]


def test_sigterm_during_fit_exits_143_and_the_rerun_resumes_to_the_uninterrupted_delta(tmp_path):
    import time

    from safetensors.torch import load_file

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(_fit_args(tmp_path / "cut"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "cut/checkpoints/last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped by SIGTERM" in err and "rerun the same command" in err
    assert last.is_file() and not (tmp_path / "cut/edit.safetensors").exists()
    steps_done = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
    assert 0 < steps_done < 30
    rerun = subprocess.run(_fit_args(tmp_path / "cut"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    whole = subprocess.run(_fit_args(tmp_path / "whole"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    a, b = load_file(str(tmp_path / "cut/edit.safetensors")), load_file(str(tmp_path / "whole/edit.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)


def test_a_python_api_fit_resume_keeps_the_original_weights_and_gives_the_clis_delta(tmp_path):
    """Lightning restores ``ckpt_path`` before ``on_fit_start``: the snapshot is taken before, in configure_model,
    so ESD's frozen model and the delta are the original weights, as the CLI's."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from edit_bench.editors.esd import ESD

    data = lambda: EditRequests(path=str(ROOT / "configs/requests/toy_blue_circle.yaml"))  # noqa: E731
    kw = dict(base="tiny:sd1", sample_steps=4, lr=1e-3, params="xattn")
    cli_dir = tmp_path / "cli"
    EditTrainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False).fit(ESD(**kw), datamodule=data(), out_dir=cli_dir)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "api", save_last=True, save_top_k=0, every_n_train_steps=1)
    plain = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    L.Trainer(max_steps=2, callbacks=[ckpt], **plain).fit(ESD(**kw), datamodule=data())
    resumed = ESD(**kw)
    L.Trainer(max_steps=4, **plain, enable_checkpointing=False).fit(resumed, datamodule=data(),
                                                                    ckpt_path=str(tmp_path / "api/last.ckpt"))
    from safetensors.torch import load_file

    want = load_file(str(cli_dir / "edit.safetensors"))
    got = resumed.delta_state_dict()
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0)


def test_guidance_below_one_and_negative_max_steps_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(UsageError, match="guidance must be >= 1"):
        SamplerConfig(guidance=-3)
    rc = run_cli(["fit", "--model", ROOT / "configs/editor/time.yaml", "--data", "EditRequests", "--data.path",
                  ROOT / "configs/requests/toy_blue_circle.yaml", "--trainer.max_steps", "-5", "--out_dir", tmp_path / "x"])
    err = capsys.readouterr().err
    assert rc == 2 and "max_steps must be -1" in err and "Traceback" not in err and not (tmp_path / "x").exists()


def test_provenance_digests_are_computed_once_per_file_version(tmp_path):
    from edit_bench import provenance

    f = tmp_path / "a.csv"
    f.write_text("x\n1\n")
    d1 = provenance.path_digest(f)
    assert provenance.path_digest(f) == d1 and len(provenance._DIGESTS) >= 1
    f.write_text("x\n2\n")
    os.utime(f, ns=(1, 10**9 + 7))
    assert provenance.path_digest(f) != d1
    assert provenance.file_digests({"path": str(f), "n": 3, "name": "not a file"}) == {"path": provenance.path_digest(f)}
    assert np.all([v is not None for v in provenance.versions().values() if v]) and "Pillow" in provenance.versions()


def test_concept_ablation_embedding_trains_only_the_concepts_token_rows():
    from edit_bench.editors.concept_ablation import ConceptAblation
    from edit_bench.types import EditRequest
    from helpers import fast_kwargs

    kw = {**fast_kwargs("ConceptAblation"), "weight_decay": 0.0, "lr": 1e-2}
    ca = ConceptAblation(params="embedding", base="tiny:sd1", **kw)
    req = EditRequest("a red square", "a square")
    ca.apply_edit([req])
    delta = ca.delta_state_dict()
    (name, d), = delta.items()
    changed = d.abs().sum(1).nonzero().flatten().tolist()
    want = ca.target_token_ids([req])["text_encoder"]
    assert changed and set(changed) <= set(want)  # BOS, EOS, padding and every other word stay as they were
    assert 49406 not in want and 49407 not in want
    assert set(want) >= set(ca.t2i.tokenizer("red square", add_special_tokens=False).input_ids)


def test_the_metric_sets_scoring_networks_move_with_it():
    """Every scoring network is a registered submodule: ``MetricSet.to(device)`` moves FID's feature network, the
    judges and LPIPS's net (checked on the meta device; on a GPU the same call moves them to CUDA)."""
    from cleanfid.resize import build_resizer

    from edit_bench.metrics import JudgeDistance
    from edit_bench.metrics.base import MetricSet

    fid = FID(reference="renderer")
    fid.extractor = ImageFeatures(_ModeFeatures("clean"), build_resizer("clean"), "stand-in")
    judge = JudgeDistance(judge=JudgeConfig(model="tiny:random"))
    judge.prepare()
    clip = ClipScore(model="tiny:random")
    clip.prepare(None)
    ms = MetricSet([fid, judge, clip])
    tensors = [t for m in ms for t in (*m.parameters(), *m.buffers())]
    assert len(tensors) > 10
    ms.to("meta")
    assert all(t.device.type == "meta" for m in ms for t in (*m.parameters(), *m.buffers()))
    from edit_bench.metrics.clip_preference import _SHARED

    _SHARED.clear()  # the shared tiny judge now lives on the meta device: later tests load their own
