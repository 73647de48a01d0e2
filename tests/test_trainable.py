"""The seam for editors that train (ESD, Concept Ablation): `fit` runs Lightning's own loop on exactly the
edited parameters, the fingerprint holds the training settings, checkpoints hold the edited tensors only,
and an editor is rebuilt from its checkpoint."""

import json

import pytest
import torch

from edit_bench.benchmarks.requests import EditRequests
from edit_bench.cli import EditTrainer
from edit_bench.editors import Editor
from edit_bench.errors import UsageError


class MoveValues(Editor):
    """A minimal trainable editor: the first cross-attention module (all of attn2) learns to give the
    source prompt's values the target prompt's."""

    edits = "unet"
    trains = True

    def __init__(self, lr: float = 0.1, base: str = "tiny:sd1"):
        super().__init__(base=base)
        self.lr = lr

    def site(self):
        return self.t2i.cross_attn()[0]

    def edited_parameters(self):
        return self.site().parameters()

    def training_step(self, batch, batch_idx):
        r = batch["requests"][0]
        with torch.no_grad():
            want = self.site().to_v(self.t2i.encode([r.target]))
        loss = torch.nn.functional.mse_loss(self.site().to_v(self.t2i.encode([r.source])), want)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.edited_parameters().values()], lr=self.lr)


def _trainer(steps):
    return EditTrainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, enable_model_summary=False, inference_mode=False)


def test_cross_attn_site_exposes_the_whole_attention_module():
    ed = MoveValues()
    names = sorted(n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1] for n in ed.edited_parameters())
    assert {"to_q.weight", "to_k.weight", "to_v.weight", "0.weight", "0.bias"} <= set(names)


def test_fit_trains_exactly_the_edited_parameters_and_checkpoints_only_them(tmp_path):
    data = EditRequests(requests=[{"source": "A banana", "target": "A blue banana"}])
    ed = MoveValues()
    before = {n: p.detach().clone() for n, p in ed.t2i.named_parameters()}
    _trainer(3).fit(ed, datamodule=data, out_dir=tmp_path / "fit")
    changed = {f"{n}" for n, p in ed.t2i.named_parameters() if not torch.equal(p, before[n])}
    declared = {n.removeprefix("unet.") for n in ed.edited_parameters()}
    assert changed and {c.removeprefix("unet.") for c in changed} <= declared
    edit = json.loads((tmp_path / "fit/edit.json").read_text())
    assert set(edit["changed"]) <= set(ed.edited_parameters()) and edit["editor_args"]["lr"] == 0.1
    assert all(not p.requires_grad for n, p in ed.t2i.named_parameters() if f"{n}" not in
               {k for k in ed.edited_parameters()})

    # a different training run is never answered "already done"
    with pytest.raises(UsageError, match="training.max_steps"):
        _trainer(5).fit(MoveValues(), datamodule=data, out_dir=tmp_path / "fit")

    # a Lightning checkpoint holds the edited tensors (and the optimizer), and rebuilds the editor
    trainer = _trainer(2)
    trainer.fit(ed, datamodule=data, out_dir=tmp_path / "fit2")
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=False)
    assert set(state["state_dict"]) == {f"_t2i.{n}" for n in ed.edited_parameters()}
    assert state["optimizer_states"] and state["hyper_parameters"]["lr"] == 0.1
    again = MoveValues.load_from_checkpoint(ckpt)
    for n, p in ed.edited_parameters().items():
        assert torch.equal(again.t2i.get_parameter(n), p.detach())


def test_a_trained_editor_evaluates_under_the_fixed_protocol_without_a_trainer_loop(tmp_path):
    """Under ``fixed`` an editor that trains runs its own step ``steps`` times once (edit()), then every case
    is scored; the baseline is scored beside it."""
    from edit_bench.benchmarks.timed import TIMED
    from edit_bench.editors.esd import ESD
    from edit_bench.evaluate import Evaluation
    from edit_bench.metrics import JudgeConfig
    from edit_bench.types import SamplerConfig

    bench = TIMED(rows="0:2", sampler=SamplerConfig(steps=2, size=32, seeds=[0]), judge=JudgeConfig(model="tiny:random"),
                  protocol="fixed", baseline=True)
    res = Evaluation(ESD(steps=2, sample_steps=4, lr=1e-3, base="tiny:sd1"), bench, tmp_path / "run").run(_trainer(1))
    assert res["timing"]["edits"] == 1 and res["editor_info"]["steps"] == 2
    assert res["baseline"]["efficacy"]["n"] == res["metrics"]["efficacy"]["n"] == 2


class FailsOnce:
    """Mixin: training fails once at step 2, as a killed job would."""

    failed = False

    def training_step(self, batch, batch_idx):
        if self.global_step == 2 and not type(self).failed:
            type(self).failed = True
            raise RuntimeError("interrupted")
        return super().training_step(batch, batch_idx)


class Interrupted(FailsOnce, MoveValues):
    pass


def test_an_interrupted_fit_resumes_from_its_checkpoint_to_the_same_delta(tmp_path):
    from safetensors.torch import load_file

    data = EditRequests(requests=[{"source": "A banana", "target": "A blue banana"}])

    def trainer():
        return EditTrainer(max_steps=4, checkpoint_every=1, log_every_n_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)

    _ = trainer().fit(MoveValues(), datamodule=data, out_dir=tmp_path / "whole")
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer().fit(Interrupted(), datamodule=data, out_dir=tmp_path / "cut")
    assert (tmp_path / "cut/checkpoints/last.ckpt").is_file() and not (tmp_path / "cut/edit.safetensors").exists()
    trainer().fit(Interrupted(), datamodule=data, out_dir=tmp_path / "cut")  # resumes at step 2
    whole, cut = load_file(str(tmp_path / "whole/edit.safetensors")), load_file(str(tmp_path / "cut/edit.safetensors"))
    assert whole.keys() == cut.keys()
    for k in whole:
        torch.testing.assert_close(cut[k], whole[k], atol=1e-6, rtol=0)
    rows = (tmp_path / "whole/metrics.csv").read_text().splitlines()
    assert "loss" in rows[0].split(",") and len(rows) == 5  # header + one row per step
    edit = json.loads((tmp_path / "whole/edit.json").read_text())
    assert edit["timing"]["peak_rss_mb"] > 0


@pytest.mark.parametrize("recipe", ["paper", "current"])
def test_esd_target_equals_a_hand_computation_with_two_unets(recipe):
    """After a few steps (θ* ≠ θ), ESD's θ (functional_call with the snapshot of the trained tensors) equals a
    deep copy of the original UNet, and its target is the recipe's formula on that second UNet's predictions:
    paper ε_θ(x,t) − 1·(ε_θ(x,c,t) − ε_θ(x,t)), current ε_θ(x,c,t) − 2·(ε_θ(x,c,t) − ε_θ(x,t))."""
    import copy

    from edit_bench.editors.esd import ESD
    from edit_bench.types import EditRequest

    ed = ESD(recipe=recipe, steps=3, sample_steps=4, lr=1e-2, base="tiny:sd1")
    original = copy.deepcopy(ed.t2i.unet)
    ed.apply_edit([EditRequest("A banana", "")])
    t2i = ed.t2i
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500])
    cond, uncond = t2i.condition(["A banana"]), t2i.unconditional(1)
    with torch.no_grad():
        e_c = original(x, t, encoder_hidden_states=cond.context).sample
        e_0 = original(x, t, encoder_hidden_states=uncond.context).sample
        trained = t2i.noise_prediction(x, t, cond)
        torch.testing.assert_close(ed.theta_prediction(x, t, cond), e_c, atol=1e-6, rtol=0)
    assert not torch.allclose(trained, e_c, atol=1e-4)  # θ* moved
    hand = e_0 - 1.0 * (e_c - e_0) if recipe == "paper" else e_c - 2.0 * (e_c - e_0)
    torch.testing.assert_close(ed.target(x, t, cond, uncond), hand, atol=1e-6, rtol=0)
    assert ed.report()["steps"] == 3 and ed.report()["recipe"] == recipe


def test_esd_fit_runs_in_bf16_mixed_on_cpu_and_keeps_float32_master_weights(tmp_path):
    from edit_bench.editors.esd import ESD

    data = EditRequests(requests=[{"source": "A banana", "target": ""}])
    ed = ESD(sample_steps=4, lr=1e-3, base="tiny:sd1")
    trainer = EditTrainer(max_steps=3, precision="bf16-mixed", accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    trainer.fit(ed, datamodule=data, out_dir=tmp_path / "fit")
    assert all(p.dtype == torch.float32 for p in ed.edited_parameters().values())
    edit = json.loads((tmp_path / "fit/edit.json").read_text())
    assert edit["editor_info"]["steps"] == 3 and len(edit["changed"]) == len(ed.edited_parameters())


# ---------------------------------------------------------------------- fine-tuning editors (ESD, Concept Ablation)
CHEAP = {"scheduler": "ddim", "steps": 2, "guidance": 6.0, "size": None, "seeds": [0], "eta": 1.0}


def _ca(**kw):
    from edit_bench.editors.concept_ablation import ConceptAblation
    from edit_bench.types import SamplerConfig

    args = {"num_anchor_images": 4, "anchor_sampler": SamplerConfig(**CHEAP), "lr": 1e-3, "steps": 2, "base": "tiny:sd1"}
    return ConceptAblation(**{**args, **kw})


def test_concept_ablation_builds_target_prompts_as_the_authors():
    from edit_bench.types import EditRequest

    obj = _ca(anchor_prompts=["a cat on a bed", "A Cat in the sun"])
    assert obj.prompt_pairs(EditRequest("grumpy cat", "cat")) == [
        ("a cat on a bed", "a grumpy cat on a bed"), ("A Cat in the sun", "A grumpy cat in the sun")]
    assert _ca().prompt_pairs(EditRequest("a star", "an orange circle")) == [("an orange circle", "a star")]
    style = _ca(concept_type="style", anchor_prompts=["a painting of a house"])
    assert style.prompt_pairs(EditRequest("van gogh", "painting")) == [
        ("a painting of a house", "a painting of a house, in the style of van gogh"),
        ("a painting of a house", "in van gogh's style, a painting of a house")]
    # one template drawn per sample, as the authors' (2 of their 3 are the same): 1/3 and 2/3
    gen = torch.Generator().manual_seed(0)
    drawn = [style.target_prompt(EditRequest("van gogh", "painting"), "a house", gen) for _ in range(600)]
    assert 150 < drawn.count("a house, in the style of van gogh") < 250
    assert drawn.count("in van gogh's style, a house") == 600 - drawn.count("a house, in the style of van gogh")
    with pytest.raises(UsageError, match="does not contain the anchor 'dog'"):
        obj.prompt_pairs(EditRequest("a corgi", "dog"))
    with pytest.raises(UsageError, match="parameter set"):
        _ca(params="attn")


def test_concept_ablation_anchor_images_are_cached_and_the_cache_is_hit(tmp_path, monkeypatch):
    """Anchor images are made once per (model, prompts, sampler, seeds): a second editor reads them back
    without generating; another seed is another entry."""
    from edit_bench.types import EditRequest, SamplerConfig

    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))
    req = [EditRequest("A banana", "A fruit")]
    first = _ca()
    first.apply_edit(req)
    files = sorted((tmp_path / "cache/anchors").glob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "cache/anchors").glob(".*.tmp"))  # whole, atomic

    second = _ca()
    monkeypatch.setattr(type(second), "_generate", lambda self, prompts: pytest.fail("the anchor cache was missed"))
    second.apply_edit(req)
    assert second.report()["anchor_cache"] == [str(files[0])]
    for n, p in first.edited_parameters().items():  # same images, same samples: the same edit
        assert torch.equal(p, second.edited_parameters()[n])
    monkeypatch.undo()
    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))
    _ca(anchor_sampler=SamplerConfig(**{**CHEAP, "seeds": [7]})).apply_edit(req)
    assert len(list((tmp_path / "cache/anchors").glob("*.safetensors"))) == 2


@pytest.mark.parametrize("editor", ["ESD", "ConceptAblation"])
def test_the_loss_falls_on_the_toy_world(editor):
    """On the trained toy world, 30 steps lower the loss on the same samples (drawn from fixed generators)."""
    from edit_bench.editors.esd import ESD
    from edit_bench.types import EditRequest

    req = [EditRequest("a star", "an orange circle")]
    if editor == "ESD":
        ed = ESD(steps=30, sample_steps=10, lr=1e-3, batch_size=2, base="toy")
    else:
        ed = _ca(base="toy", steps=30, num_anchor_images=8, lr=2.5e-5)
    ed.snapshot()
    with torch.no_grad():
        ed.prepare(req)
        before = float(ed.batch_loss(req, ed._gens(1000)))
    ed.apply_edit(req)
    with torch.no_grad():
        after = float(ed.batch_loss(req, ed._gens(1000)))
    assert after < 0.8 * before, (before, after, ed.losses)


def test_gradient_checkpointing_changes_memory_not_the_result():
    from edit_bench.types import EditRequest

    req = [EditRequest("A banana", "A fruit")]
    plain, ckpt = _ca(), _ca(gradient_checkpointing=True)
    plain.apply_edit(req)
    ckpt.apply_edit(req)
    assert not ckpt.t2i.unet.is_gradient_checkpointing  # switched off again after the edit
    for n, p in plain.edited_parameters().items():
        torch.testing.assert_close(ckpt.edited_parameters()[n], p, atol=1e-6, rtol=0)


def test_a_step_draws_the_same_samples_however_the_batch_is_split():
    """Batch 2 on one process = batch 1 on each of 2 ranks = batch 1 with 2 accumulated micro-batches."""
    one = _ca(batch_size=2)
    two = _ca(batch_size=1)
    seeds = lambda gens: [g.initial_seed() for g in gens]  # noqa: E731
    whole = seeds(one._gens(5))
    assert seeds(two._gens(5, world=2, rank=0)) + seeds(two._gens(5, world=2, rank=1)) == whole
    assert seeds(two._gens(5, micro=0)) + seeds(two._gens(5, micro=1)) == whole
    assert seeds(one._gens(6)) != whole


def test_an_interrupted_concept_ablation_fit_resumes_to_the_same_delta(tmp_path, monkeypatch):
    """Samples are keyed by the optimiser step, so a resumed run draws what the whole run drew."""
    from safetensors.torch import load_file

    from edit_bench.editors.concept_ablation import ConceptAblation

    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))

    class CutCA(FailsOnce, ConceptAblation):
        pass

    data = EditRequests(requests=[{"source": "A banana", "target": "A fruit"}])
    kw = {"num_anchor_images": 4, "anchor_sampler": _ca().anchor_sampler, "lr": 1e-3, "base": "tiny:sd1"}

    def trainer():
        return EditTrainer(max_steps=4, checkpoint_every=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)

    trainer().fit(ConceptAblation(**kw), datamodule=data, out_dir=tmp_path / "whole")
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer().fit(CutCA(**kw), datamodule=data, out_dir=tmp_path / "cut")
    trainer().fit(CutCA(**kw), datamodule=data, out_dir=tmp_path / "cut")
    whole, cut = load_file(str(tmp_path / "whole/edit.safetensors")), load_file(str(tmp_path / "cut/edit.safetensors"))
    assert whole.keys() == cut.keys() and len(whole) == 32
    for k in whole:
        torch.testing.assert_close(cut[k], whole[k], atol=1e-7, rtol=0)


@pytest.mark.parametrize("editor", ["ConceptAblation", "ESD"])
def test_two_processes_with_batch_1_train_the_delta_of_one_process_with_batch_2(tmp_path, editor):
    """`fit --trainer.devices 2 --trainer.strategy ddp` (gloo, CPU), batch 1 per process, trains the delta one
    process trains with batch 2: the same samples (keyed by global sample index), the gradient averaged by
    DDP's all-reduce instead of by the loss's mean.

    They are not bitwise equal: a UNet forward of batch 2 and two of batch 1 round differently in float32
    (the loss agrees to ~3e-6 relative; a gradient element that is 1e-3 of its tensor's largest carries ~1e-2
    relative error). Adam divides every element by its own gradient magnitude, so such an element's step
    (~lr = 1e-3) differs by up to a few percent of lr. Hence the bounds: each tensor's delta within 1 % in
    norm, and no element off by more than a tenth of one Adam step (1e-4), while each tensor moved ~1e-3."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from helpers import ROOT

    model = tmp_path / "model.yaml"
    args = {"ConceptAblation": {"num_anchor_images": 4, "lr": 1e-3, "scale_lr": True, "anchor_sampler": CHEAP},
            "ESD": {"sample_steps": 4, "lr": 1e-3}}[editor]
    module = {"ConceptAblation": "concept_ablation", "ESD": "esd"}[editor]
    model.write_text(json.dumps({"class_path": f"edit_bench.editors.{module}.{editor}",
                                 "init_args": {**args, "base": "tiny:sd1"}}))
    data = json.dumps({"class_path": "edit_bench.benchmarks.requests.EditRequests",
                       "init_args": {"requests": [{"source": "A banana", "target": "A fruit"},
                                                  {"source": "A bear", "target": "A dog"}]}})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDIT_BENCH_CACHE": str(tmp_path / "cache")}

    def fit(out, batch, devices):
        r = subprocess.run([sys.executable, "-m", "edit_bench", "fit", "--model", model, "--model.init_args.batch_size",
                            str(batch), "--data", data, "--trainer.max_steps", "3", "--trainer.accelerator", "cpu",
                            "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
                            "--trainer.enable_progress_bar", "false", "--out_dir", tmp_path / out],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=400)
        assert r.returncode == 0, r.stderr[-3000:]
        return load_file(str(tmp_path / out / "edit.safetensors")), json.loads((tmp_path / out / "edit.json").read_text())

    (two, two_info), (one, one_info) = fit("two", 1, 2), fit("one", 2, 1)
    assert two.keys() == one.keys() and len(one) > 0
    assert two_info["editor_info"]["lr"] == one_info["editor_info"]["lr"]  # CA's scale_lr: batch x processes
    rel = max(float((two[k] - one[k]).norm() / one[k].norm()) for k in one)
    worst = max(float((two[k] - one[k]).abs().max()) for k in one)
    moved = min(float(one[k].abs().max()) for k in one)
    print(f"relative delta difference {rel:.2e}, worst element {worst:.2e}, smallest tensor move {moved:.2e}")
    assert rel < 1e-2 and worst < 1e-4 < moved, (rel, worst, moved)


def test_fit_and_the_per_case_edit_run_the_same_training(tmp_path, monkeypatch):
    """`fit` (Lightning's loop, 3 steps) and `edit()` (no Trainer, steps 3) draw the same samples and take the
    same steps: a delta trained by `fit` is the edit the per-case protocol makes."""
    from edit_bench.types import EditRequest

    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))
    data = EditRequests(requests=[{"source": "A banana", "target": "A fruit"}])
    fitted, edited = _ca(steps=3), _ca(steps=3)
    EditTrainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False).fit(fitted, datamodule=data, out_dir=tmp_path / "fit")
    edited.apply_edit([EditRequest("A banana", "A fruit")])
    assert fitted.losses == pytest.approx(edited.losses, rel=1e-5)
    for n, p in edited.edited_parameters().items():
        torch.testing.assert_close(fitted.edited_parameters()[n], p, atol=1e-6, rtol=0)
