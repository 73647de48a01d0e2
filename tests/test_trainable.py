"""The seam for editors that train (ESD, Concept Ablation): `fit` runs Lightning's own loop on exactly the
edited parameters, the fingerprint holds the training settings, checkpoints hold the edited tensors only,
and an editor is rebuilt from its checkpoint."""

import json

import pytest
import torch

from edit_bench.benchmarks.requests import EditRequests
from edit_bench.cli import EditTrainer
from edit_bench.editors import Editor
from edit_bench.editors.esd import ESD
from edit_bench.errors import UsageError


class MoveValues(Editor):
    """A minimal trainable editor: the first cross-attention module (all of attn2) learns to give the
    source prompt's values the target prompt's."""

    edits = "denoiser"
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
    assert res.timing.edits == 1 and res.editor_info["steps"] == 2
    assert res.baseline["efficacy"]["n"] == res.metrics["efficacy"]["n"] == 2


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
    # the resumed run keeps the loss of every step: the steps before the interruption in metrics.csv and in edit.json
    import csv

    def losses(name):
        with open(tmp_path / name / "metrics.csv", newline="") as f:
            return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f) if r.get("loss")}

    assert sorted(losses("cut")) == sorted(losses("whole")) == [0, 1, 2, 3]
    for step, v in losses("whole").items():
        assert losses("cut")[step] == pytest.approx(v, rel=1e-6, abs=1e-9)


class InterruptedESD(FailsOnce, ESD):
    pass


def test_a_resumed_fine_tuner_keeps_its_whole_loss_curve_in_edit_json(tmp_path):
    data = EditRequests(requests=[{"source": "A banana", "target": ""}])

    def trainer():
        return EditTrainer(max_steps=4, checkpoint_every=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                           enable_progress_bar=False, enable_model_summary=False)

    kw = {"base": "tiny:sd1", "sample_steps": 4, "lr": 1e-3}
    trainer().fit(ESD(**kw), datamodule=data, out_dir=tmp_path / "whole")
    InterruptedESD.failed = False
    with pytest.raises(RuntimeError, match="interrupted"):
        trainer().fit(InterruptedESD(**kw), datamodule=data, out_dir=tmp_path / "cut")
    trainer().fit(InterruptedESD(**kw), datamodule=data, out_dir=tmp_path / "cut")
    whole, cut = (json.loads((tmp_path / d / "edit.json").read_text())["editor_info"] for d in ("whole", "cut"))
    assert cut["losses"] == whole["losses"] == 4 and cut["steps"] == 4
    assert cut["first_loss"] == pytest.approx(whole["first_loss"], rel=1e-5)
    assert cut["loss_curve"] == pytest.approx(whole["loss_curve"], rel=1e-4)


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
    """On the trained toy world, 20-30 steps lower the loss on the same 8 samples (drawn from fixed generators; ESD's
    ``current`` recipe, whose x_t the frozen model samples, so the samples stay the same)."""
    from edit_bench.editors.esd import ESD
    from edit_bench.editors.finetune import sample_generator
    from edit_bench.types import EditRequest

    req = [EditRequest("a star", "an orange circle")]
    if editor == "ESD":
        ed = ESD(recipe="current", steps=20, sample_steps=6, lr=1e-3, batch_size=2, base="toy")
    else:
        ed = _ca(base="toy", steps=30, num_anchor_images=8, lr=2.5e-5)
    ed.snapshot()
    gens = lambda: [sample_generator(0, 1000, j) for j in range(8)]  # noqa: E731
    with torch.no_grad():
        ed.prepare(req)
        before = float(ed.batch_loss(req, gens()))
    ed.apply_edit(req)
    with torch.no_grad():
        after = float(ed.batch_loss(req, gens()))
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


def _trained_editors():
    from edit_bench.editors import discover

    # ESD and MACE share Concept Ablation's FineTuner path through DDP (another loss; MACE: one LoRA per concept):
    # -m slow runs them, keeping the default suite under 15 min
    slow = {"ESD", "MACE"}
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n, c in sorted(discover().items()) if c.trains]


@pytest.mark.parametrize("editor", _trained_editors())
def test_two_processes_with_batch_1_train_the_delta_of_one_process_with_batch_2(tmp_path, editor, monkeypatch):
    """Every editor that trains, through the public checker (``edit_bench.testing.check_distributed_fit``): `fit
    --trainer.devices 2 --trainer.strategy ddp` (gloo, CPU), batch 1 per process, trains the delta one process trains
    with batch 2: the same samples (keyed by global sample index), the gradient averaged by DDP's all-reduce instead
    of by the loss's mean. MACE trains one LoRA per concept at a time, the others unused at a step.

    They are not bitwise equal: a UNet forward of batch 2 and two of batch 1 round differently in float32
    (the loss agrees to ~3e-6 relative; a gradient element that is 1e-3 of its tensor's largest carries ~1e-2
    relative error). Adam divides every element by its own gradient magnitude, so such an element's step
    (~lr = 1e-3) differs by up to a few percent of lr. Hence the bounds: each tensor's delta within 1 % in
    norm, and no element off by more than a tenth of one Adam step (1e-4), while each tensor moved ~1e-3."""
    from edit_bench.editors import discover
    from edit_bench.testing import check_distributed_fit

    monkeypatch.setenv("EDIT_BENCH_CACHE", str(tmp_path / "cache"))
    out = check_distributed_fit(discover()[editor], workdir=tmp_path)
    print(f"{editor}: relative delta difference {out['relative']:.2e}, worst element {out['worst']:.2e}, "
          f"smallest tensor move {out['moved']:.2e}")


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


# ---------------------------------------------------------------------- ESD's x_t and t, as each recipe's authors' code
def _compvis_steps(S: int, t_enc: int) -> list[int]:
    """The timesteps the CompVis DDIM loop of ESD's paper-era code runs for ``till_T = t_enc`` (written from its
    definition: the grid 1, 1 + 1000/S, ... without its last entry, index counting down, break at index + 1 == till)."""
    grid = [j * (1000 // S) + 1 for j in range(S)][:-1]
    out = []
    for i, step in enumerate(reversed(grid)):
        out.append(step)
        if len(grid) - i - 1 + 1 == t_enc:
            break
    return out


@pytest.mark.parametrize("recipe", ["paper", "current"])
@pytest.mark.parametrize("base", ["tiny:sd1", "tiny:sd2", "tiny:sdxl"])
def test_every_esd_training_call_is_at_the_recipes_timestep_for_its_x_t(base, recipe):
    """Through the public edit(): a hook on the UNet sees every call. Each trained call (the one with autograd
    on) follows its sampling chain (the CFG calls, batch 2). ``current``: the chain is the model's own scheduler's
    first k timesteps and the trained call is at timesteps[k], x_t's own noise level. ``paper``: the chain is
    CompVis's DDIM loop for t_enc = t's bucket (so x_t sits 2-3 DDIM steps below t, as the authors' runs)."""
    from edit_bench.editors.esd import ESD
    from edit_bench.types import EditRequest

    S = 10
    ed = ESD(recipe=recipe, steps=6, sample_steps=S, lr=1e-4, base=base)
    calls = []
    ed.t2i.unet.register_forward_pre_hook(
        lambda m, a, kw: calls.append((int(torch.as_tensor(a[1]).reshape(-1)[0]), a[0].shape[0], torch.is_grad_enabled())),
        with_kwargs=True)
    ed.apply_edit([EditRequest("a star", "")])
    chains, chain = [], []
    for t, batch, grad in calls:
        if grad:
            chains.append((chain, t))
            chain = []
        elif batch == 2:
            chain.append(t)
    assert len(chains) == 6
    sched = ed.t2i.make_scheduler(ed.t2i.default_scheduler)
    sched.set_timesteps(S)
    own = [int(x) for x in sched.timesteps]
    lengths = set()
    for chain, t in chains:
        if recipe == "current":
            assert chain == own[:len(chain)] and t == own[len(chain)], (chain, t)
        else:
            assert chain == _compvis_steps(S, t // (1000 // S)), (chain, t)
        lengths.add(len(chain))
    assert len(lengths) > 1  # the draws differ


def test_the_compvis_loop_reference_is_the_authors_arithmetic():
    """The reference above on the paper's S = 50: t_enc = 0 and 1 run 49 steps (down to timestep 1); t_enc >= 2
    runs 50 - t_enc steps and stops at 20·t_enc - 19, so x_t's level is 20·t_enc - 39, 39-58 below t's bucket."""
    assert len(_compvis_steps(50, 0)) == len(_compvis_steps(50, 1)) == 49
    for t_enc in range(2, 50):
        steps = _compvis_steps(50, t_enc)
        assert steps[0] == 961 and len(steps) == 50 - t_enc and steps[-1] == 20 * t_enc - 19


def test_esd_parameter_sets_exist_only_under_their_recipe():
    from edit_bench.editors.esd import ESD
    from edit_bench.models.parameter_sets import unet_parameter_set as parameter_set

    with pytest.raises(UsageError, match="'esd-u' does not exist under recipe 'paper'.*recipe current"):
        ESD(params="esd-u", base="tiny:sd1")
    with pytest.raises(UsageError, match="'xattn' does not exist under recipe 'current'"):
        ESD(params="xattn", recipe="current", base="tiny:sd1")
    unet = ESD(base="tiny:sd1").t2i.unet
    x, esd_x = parameter_set(unet, "xattn"), parameter_set(unet, "esd-x")
    assert set(x) == set(esd_x)  # SD's attn2 holds only Linear layers
    u = parameter_set(unet, "esd-u")
    assert not any("norm" in n for n in u) and "conv_out.weight" in u and "time_embedding.linear_1.weight" in u
    assert "conv_out.weight" not in parameter_set(unet, "noxattn")
    assert set(parameter_set(unet, "esd-x-strict")) == {n for n in x if ".to_k." in n or ".to_v." in n}


# ---------------------------------------------------------------------- Concept Ablation's data, as the authors'
def test_concept_ablation_augmentation_mask_and_prefixes_follow_the_authors():
    """No augmentation: the image as is and a mask without the outer ring of latent pixels. With it: a side below
    0.6·size is pasted on a canvas with a "far away"/"very small" prefix and a mask inside the pasted region; a
    side above size is cropped, "zoomed in"/"close up", mask all ones; the anchor caption is never prefixed."""
    from edit_bench.types import EditRequest

    ca = _ca(num_anchor_images=2, augment=True)
    req = EditRequest("a star", "an orange circle")
    ca.prepare([req])
    size, f = 32, ca.t2i.vae_scale_factor
    h = size // f
    image = ca._data(req)["images"][0]
    plain, mask, scale = ca.augmented(image, torch.Generator().manual_seed(0), False)
    ring = torch.zeros(1, h, h)
    ring[:, 1:h - 1, 1:h - 1] = 1
    assert scale == size and torch.equal(mask, ring)
    assert torch.equal(plain, image.float() / 255) or torch.equal(plain, image.flip(-1).float() / 255)
    seen = {"small": 0, "large": 0}
    for s in range(300):
        d = ca._draw(req, torch.Generator().manual_seed(s))
        assert d["anchor"] == "an orange circle"
        if d["prompt"].startswith(("a far away ", "very small ")):
            seen["small"] += 1
            assert 0 < d["mask"].sum() < (h - 2) ** 2 or d["mask"].sum() == 0
        elif d["prompt"].startswith(("zoomed in ", "close up ")):
            seen["large"] += 1
            assert torch.equal(d["mask"], torch.ones(1, h, h))
        else:
            assert d["prompt"] == "a star"
    assert seen["small"] > 50 and seen["large"] > 50  # 0.66 · (0.6 - 1/3) / (2/3) and 0.34 of the draws


def test_concept_ablation_loss_is_the_authors_masked_sum():
    """The loss is Σ_{c,h,w} m (ε - target)² / Σ_{h,w} m per sample, averaged: with ``masked_loss: false`` (a mask of
    ones) that is the channel count times the plain mean squared error, as the authors' normalisation."""
    from edit_bench.types import EditRequest

    req = [EditRequest("a star", "an orange circle")]
    ca = _ca(masked_loss=False, augment=False, loss="noise", batch_size=2)
    ca.prepare(req)
    gens = ca._gens(3)
    with torch.no_grad():
        loss = ca.batch_loss(req, gens)
        gens = ca._gens(3)
        picks = [req[int(torch.randint(1, (1,), generator=g))] for g in gens]
        samples = [ca._draw(r, g) for r, g in zip(picks, gens)]
        x_t, t, noise = ca._noised(samples, gens)
        pred = ca.t2i.noise_prediction(x_t, t, ca.t2i.condition([s["prompt"] for s in samples]))
    torch.testing.assert_close(loss, pred.shape[1] * torch.nn.functional.mse_loss(pred, noise), rtol=1e-5, atol=0)


def test_concept_ablation_defaults_are_the_authors(tmp_path):
    """The pipeline's own sampler at its defaults for generated anchors; flips on; the rescale augmentation on for
    objects and off for styles (their README's --noaug); the prior weight 1.0."""
    from edit_bench.editors.concept_ablation import ConceptAblation

    obj = ConceptAblation(base="tiny:sd1")
    s = obj.anchor_sampler
    assert (s.scheduler, s.steps, s.guidance, s.size) == ("pndm", 50, 7.5, None)
    assert obj.augment and obj.hflip and obj.masked_loss and obj.reg_weight == 1.0
    assert not ConceptAblation(concept_type="style", base="tiny:sd1").augment
    assert ConceptAblation(base="tiny:sdxl").anchor_sampler.scheduler == "euler"


def test_concept_ablation_trains_on_a_folder_of_real_anchor_images(tmp_path):
    """``anchor_folder`` in the authors' layout (images.txt + caption.txt): the images are resized to the
    training size, each with its caption; a caption short is one clear error."""
    import numpy as np
    from PIL import Image

    from edit_bench.types import EditRequest

    folder = tmp_path / "anchors"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((48, 40, 3), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "images.txt").write_text("\n".join(f"{i}.png" for i in range(3)))
    (folder / "caption.txt").write_text("a painting of a tree\na painting of a dog\na painting of a cup\n")
    ca = _ca(concept_type="style", anchor_folder=str(folder), anchor_sampler=None)
    req = EditRequest("van gogh", "painting")
    ca.apply_edit([req])
    data = ca._data(req)
    assert data["images"].shape == (3, 3, 32, 32) and data["captions"][1] == "a painting of a dog"
    assert ca.report()["anchor_source"] == str(folder) and ca.report()["anchor_sampler"] is None
    (folder / "caption.txt").write_text("only one\n")
    with pytest.raises(UsageError, match="caption.txt has 1 captions for 3 images"):
        _ca(concept_type="style", anchor_folder=str(folder)).apply_edit([req])


def test_a_non_finite_loss_stops_the_training_with_its_step(tmp_path, monkeypatch):
    """Losses are read back from the device in blocks (no sync per step); a non-finite one fails edit() and fit
    with the step it happened at, and nothing is written for the fit."""
    from edit_bench.editors.esd import ESD
    from edit_bench.types import EditRequest

    def nan_at_3(self, requests, gens):
        loss = sum(p.sum() for p in self.edited_parameters().values()) * 0.0 + 1.0
        n = len(self.losses) + len(self._pending)
        return loss * float("nan") if n == 2 else loss

    monkeypatch.setattr(ESD, "batch_loss", nan_at_3)
    with pytest.raises(UsageError, match="loss is nan at step 3: lower --model.init_args.lr"):
        ESD(steps=5, sample_steps=4, lr=1e-3, base="tiny:sd1").apply_edit([EditRequest("A banana", "")])
    data = EditRequests(requests=[{"source": "A banana", "target": ""}])
    trainer = EditTrainer(max_steps=5, accelerator="cpu", logger=False, enable_checkpointing=False,
                          enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    with pytest.raises(UsageError, match="loss is nan at step 3"):
        trainer.fit(ESD(sample_steps=4, lr=1e-3, base="tiny:sd1"), datamodule=data, out_dir=tmp_path / "fit")
    assert not (tmp_path / "fit/edit.safetensors").exists()
