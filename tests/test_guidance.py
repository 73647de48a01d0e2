"""Generation-time erasers: SD-NP and SLD equal diffusers' pipelines image for image on a tiny model, run through
`eval` beside the weight editors, and refuse what they cannot do in one line."""

import pytest
import torch

from edit_bench.editors.guidance import SLD_PRESETS, NegativePrompt, SafeLatentDiffusion
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
