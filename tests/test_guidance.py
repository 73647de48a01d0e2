"""Generation-time erasers: SD-NP and SLD equal diffusers' pipelines image for image on a tiny model, run through
`eval` beside the weight editors, and refuse what they cannot do in one line."""

import pytest
import torch

from edit_bench.editors.guidance import SAFREE, SLD_PRESETS, NegativePrompt, SafeLatentDiffusion
from edit_bench.errors import UsageError
from edit_bench.types import EditRequest, SamplerConfig

PROMPTS, SEEDS = ["a red rose", "a bear in the snow"], [0, 1]


def _gens():
    return [torch.Generator("cpu").manual_seed(s) for s in SEEDS]


@pytest.mark.parametrize("preset", sorted(SLD_PRESETS))
def test_sld_equals_diffusers_safe_pipeline_image_for_image(preset):
    from diffusers.pipelines.deprecated.stable_diffusion_safe import SafetyConfig, StableDiffusionPipelineSafe

    ed = SafeLatentDiffusion(preset=preset, base="tiny:sd1")
    t2i = ed.t2i
    steps = SLD_PRESETS[preset]["warmup_steps"] + 6  # the safety guidance acts on the last six steps
    ed.apply_edit([EditRequest("a banana", "")])
    ours = t2i.generate(PROMPTS, SEEDS, SamplerConfig(scheduler="ddim", steps=steps, guidance=7.5, size=32, seeds=SEEDS))
    pipe = StableDiffusionPipelineSafe(vae=t2i.vae, text_encoder=t2i.text_encoder, tokenizer=t2i.tokenizer, unet=t2i.unet,
                                       scheduler=t2i.make_scheduler("ddim"), safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.safety_concept = "a banana"
    theirs = pipe(PROMPTS, height=32, width=32, num_inference_steps=steps, guidance_scale=7.5, generator=_gens(),
                  output_type="np", **getattr(SafetyConfig, preset.upper())).images
    theirs = torch.from_numpy(theirs).permute(0, 3, 1, 2)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    ed.restore()
    plain = t2i.generate(PROMPTS, SEEDS, SamplerConfig(scheduler="ddim", steps=steps, guidance=7.5, size=32, seeds=SEEDS))
    assert (plain - ours).abs().max() > 1e-5  # the guidance did something (10x the tolerance above)


def test_sd_np_equals_diffusers_negative_prompt_image_for_image():
    from diffusers import StableDiffusionPipeline

    ed = NegativePrompt(base="tiny:sd1")
    t2i = ed.t2i
    ed.apply_edit([EditRequest("a banana", ""), EditRequest("a tree", "")])
    ours = t2i.generate(PROMPTS, SEEDS, SamplerConfig(scheduler="ddim", steps=4, guidance=7.5, size=32, seeds=SEEDS))
    pipe = StableDiffusionPipeline(vae=t2i.vae, text_encoder=t2i.text_encoder, tokenizer=t2i.tokenizer, unet=t2i.unet,
                                   scheduler=t2i.make_scheduler("ddim"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPTS, negative_prompt=["a banana, a tree"] * 2, height=32, width=32, num_inference_steps=4,
                  guidance_scale=7.5, generator=_gens(), output_type="pt").images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_generation_time_erasers_refuse_what_they_cannot_do(tmp_path):
    with pytest.raises(UsageError, match="unknown SLD preset 'extreme': use one of weak, medium, strong, max"):
        SafeLatentDiffusion(preset="extreme")
    with pytest.raises(UsageError, match="it cannot draw 'a pear' instead"):
        NegativePrompt(base="tiny:sd1").derived_prompts([EditRequest("a banana", "a pear")])
    with pytest.raises(UsageError, match="has no flux form"):
        SafeLatentDiffusion(base="tiny:flux").t2i
    ed = NegativePrompt(base="tiny:sd1")
    ed.apply_edit([EditRequest("a banana", "")])
    with pytest.raises(UsageError, match="acts through classifier-free guidance"):
        ed.t2i.generate(["a rose"], [0], SamplerConfig(steps=2, guidance=1.0, size=32, seeds=[0]))


def test_sld_and_sd_np_rows_are_named_as_the_papers_name_them_and_the_toy_world_runs_them(tmp_path):
    from edit_bench.tables import load_specs, method_name
    from helpers import run_cli
    import json

    assert method_name({"editor": "SafeLatentDiffusion", "editor_args": {"preset": "max"}}) == "SLD-Max"
    assert method_name({"editor": "SafeLatentDiffusion", "editor_args": {"preset": "medium"}}) == "SLD-M"
    assert method_name({"editor": "NegativePrompt", "editor_args": {}}) == "SD-NP"
    assert load_specs()["mace_table2"]["values"]["SLD-M"][-1] == 212
    out = tmp_path / "sld"
    code = run_cli(["eval", "--model", "configs/editor/sld.yaml", "--model.init_args.preset", "max", "--data",
                    "configs/benchmark/toy_objects.yaml", "--data.erase", "[star]", "--data.sampler.seeds", "[0]",
                    "--out_dir", out])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["metrics"]["clip_acc/p/erased"]["mean"] < res["baseline"]["clip_acc/p/erased"]["mean"]  # the star fades
    assert "weight_change" not in res and res["editor_info"]["guide"]["guidance_scale"] == 5000.0
    assert run_cli(["fit", "--model", "configs/editor/sld.yaml", "--data", "configs/requests/nudity.yaml",
                    "--out_dir", tmp_path / "fit"]) == 2 and not (tmp_path / "fit").exists()


def test_a_generation_time_eraser_without_guidance_is_refused_before_any_output(tmp_path, capsys):
    from helpers import run_cli

    out = tmp_path / "g1"
    code = run_cli(["eval", "--model", "configs/editor/sd_np.yaml", "--data", "configs/benchmark/toy_objects.yaml",
                    "--data.sampler.guidance", "1", "--out_dir", out])
    assert code == 2 and "acts through classifier-free guidance" in capsys.readouterr().err and not out.exists()


def _safree_by_hand(t2i, space, prompt, alpha=0.01, up_t=10, t=5.333, k=2.5):
    """SAFREE's steps 1-4 as its paper writes them, one token at a time in float32 (the authors' loop)."""
    import math

    with torch.no_grad():
        pool = lambda ids: t2i.text_encoder(ids).pooler_output  # noqa: E731
        C = pool(t2i.tokenizer(space, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids)
        proj = lambda E: E @ torch.pinverse(E.T @ E) @ E.T  # noqa: E731
        P_c = proj(C.T)
        ids = t2i.tokenizer(prompt, return_tensors="pt").input_ids
        n = ids.shape[1] - 2
        masked = []
        for i in range(n):
            m = ids.clone()
            m[0, i + 1] = 0
            masked.append(pool(m)[0])
        M = torch.stack(masked)
        P_m = proj(M.T)
        dist = [float(torch.norm((torch.eye(C.shape[1]) - P_c) @ M[i])) for i in range(n)]
        triggers = [i + 1 for i in range(n) if not dist[i] < (1 + alpha) * (sum(dist) - dist[i]) / (n - 1)]
        e = t2i.encode([prompt])[0]
        p = ((torch.eye(C.shape[1]) - P_c) @ P_m @ e.T).T
        beta = 1 - torch.nn.functional.cosine_similarity(p[:n + 2], e[:n + 2]).mean().item()
        return triggers, round(up_t / (1 + math.exp(-2 * k * (10 * beta - t))))


def test_safree_finds_the_trigger_tokens_and_filter_steps_its_paper_defines_and_guides_only_those_steps():
    """The authors' pipeline itself is compared image for image by tests/authors/safree.py (largest difference 3.4e-6);
    here: the triggers and the filter's steps against a by-hand loop, and the projected prompt used for exactly the
    filter's steps."""
    space = ["a banana", "a yellow fruit", "bananas"]
    ed = SAFREE(concept_space=space, base="tiny:sd1")
    ed.apply_edit([EditRequest("a banana", "")])
    guide, t2i = ed.t2i.sampling, ed.t2i
    assert guide.negative_prompt == "a banana, a yellow fruit, bananas"
    for prompt in ("a ripe banana on a plate", "a bear in the snow", "two bananas"):
        projected, steps, triggers = guide.project(t2i, t2i.tokenize([prompt])[0], t2i.encode([prompt])[0])
        assert (triggers, steps) == _safree_by_hand(t2i, space, prompt), prompt
        plain = t2i.encode([prompt])[0]
        changed = (projected - plain).abs().amax(-1) > 0
        assert changed.nonzero().flatten().tolist() == triggers, prompt  # only the trigger positions move
    state, cond = {}, t2i.condition(["a ripe banana on a plate"])
    guide.prepare(t2i, cond, state)
    until = int(state["safree"][1][0])
    both = t2i.unconditional(1).__class__.cat([guide.unconditional(t2i, 1), cond])
    for i in range(until + 3):
        row = guide.step_conditioning(both, 1, i, state).context[1]
        assert torch.equal(row, state["safree"][0][0] if i <= until else cond.context[0]), i
    assert SAFREE(concept_space="nudity", base="tiny:sd1")._space([])[2] == "Nudity"


def test_safree_guards_the_token_ids_an_attack_found_and_refuses_what_it_cannot_do(tmp_path):
    from edit_bench.attacks import ConceptInversion, RingABell
    from edit_bench.benchmarks.concepts import ConceptPrompts
    from edit_bench.evaluate import Evaluation
    from edit_bench.metrics import ClipAccuracy, JudgeConfig
    from edit_bench.cli import EditTrainer

    with pytest.raises(UsageError, match="SAFREE category 'violence'"):
        SAFREE(category="violence")
    with pytest.raises(UsageError, match="concept_space 'nude'"):
        SAFREE(concept_space="nude")
    with pytest.raises(UsageError, match="has no sdxl form"):
        SAFREE(base="tiny:sdxl").t2i

    def bench(attack):
        return ConceptPrompts(concepts=["Pell", "Ross"], templates=["a circle by {}"], erase=["Pell"], protocol="per_case",
                              sampler=SamplerConfig(steps=2, size=32, seeds=[0]), judge=JudgeConfig(model="tiny:random"),
                              metrics=[ClipAccuracy()], attacks=[attack])

    trainer = lambda: EditTrainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,  # noqa: E731
                                  enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    out = Evaluation(SAFREE(base="tiny:sd1"), bench(RingABell(population=2, generations=1, length=3)), tmp_path / "r").run(trainer())
    assert out.attacks["ring_a_bell"]["asr"]["n"] == 1  # the found ids, drawn under SAFREE's projection of them
    with pytest.raises(UsageError, match="concept_inversion\\) optimise against the denoiser") as e:
        Evaluation(SAFREE(base="tiny:sd1"), bench(ConceptInversion(steps=1)), tmp_path / "s").run(trainer())
    assert "\n" not in str(e.value) and not (tmp_path / "s").exists()
    ed = SAFREE(base="tiny:sd1")
    ed.apply_edit([EditRequest("a banana", "")])
    learned = ed.t2i.condition_ids(ed.t2i.tokenize(["a banana"]), torch.zeros(1, 77, dtype=torch.bool),
                                   torch.zeros(1, 77, 32))
    with pytest.raises(UsageError, match="cannot draw from replaced token embeddings"):
        ed.t2i.generate(["x"], [0], SamplerConfig(steps=2, size=32, seeds=[0]), conditioning=learned)
