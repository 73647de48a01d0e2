"""SD3 and FLUX (MMDiT) behind the adapter: generation equals diffusers' own pipelines, the full-size architectures
have the real parameter counts, and what the family cannot do is refused with one line."""

import json

import pytest
import torch

from edit_bench.errors import UsageError
from edit_bench.models import ModelNotAvailable, load_t2i
from edit_bench.types import SamplerConfig
from helpers import run_cli

FLOW = SamplerConfig(scheduler="flow_euler", steps=3, guidance=4.0, size=32, seeds=[3, 4])


@pytest.mark.parametrize("spec", ["tiny:sd3", "tiny:flux"])
def test_generate_equals_the_diffusers_pipeline(spec):
    """MMDiTModel.generate (the text encoders, SD3's batched CFG / FLUX's guidance embedding, the flow-matching
    schedule with FLUX's sequence-length shift, FLUX's latent packing, decoding with the VAE's shift) equals
    StableDiffusion3Pipeline / FluxPipeline on the same components, latents and scheduler."""
    m = load_t2i(spec)
    assert m.family == spec.split(":")[1] and m.native_size == 32
    ours = m.generate(["a red rose", "a cat"], [3, 4], FLOW)
    c, h = m.latent_shape(32)
    latents = torch.stack([torch.randn((c, h, h), generator=torch.Generator("cpu").manual_seed(s)) for s in (3, 4)])
    pipe = m.diffusers_pipeline()
    pipe.set_progress_bar_config(disable=True)
    if m.family == "flux":  # the pipeline takes FLUX's latents packed
        latents = pipe._pack_latents(latents, 2, c, h, h)
    theirs = pipe(["a red rose", "a cat"], height=32, width=32, num_inference_steps=3, guidance_scale=4.0,
                  latents=latents, output_type="pt", max_sequence_length=m.t5_length).images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)
    # a batch repeating its prompts (a case's seeds) encodes each once, to the same conditioning
    calls = []
    m.condition = lambda ps, _f=m.condition: calls.append(list(ps)) or _f(ps)
    again = m.condition_batch(["a cat", "a red rose", "a cat"])
    assert calls == [["a cat", "a red rose"]]
    full = type(m).condition(m, ["a cat", "a red rose", "a cat"])
    torch.testing.assert_close(again.context, full.context, atol=1e-6, rtol=0)
    torch.testing.assert_close(again.pooled, full.pooled, atol=1e-6, rtol=0)


def test_a_flux_without_guidance_embedding_samples_with_true_cfg_as_the_pipeline():
    """A FLUX transformer without guidance embedding (schnell's layout; the toy MMDiT's) takes ``guidance`` as
    FluxPipeline's ``true_cfg_scale`` with the empty negative prompt: equal to the pipeline, and unlike the
    conditional prediction alone."""
    from diffusers import FluxTransformer2DModel

    from edit_bench.models.mmdit import MMDiTModel
    from edit_bench.models.tiny import tiny_mmdit_components

    comps = tiny_mmdit_components("flux")
    torch.manual_seed(1)
    comps["transformer"] = FluxTransformer2DModel(**{**comps["transformer"].config, "guidance_embeds": False})
    m = MMDiTModel(comps, "tiny:flux").eval()
    assert not m.guidance_embeds and m.true_cfg
    prompts = ["a red rose", "a cat"]
    ours = m.generate(prompts, [3, 4], FLOW)
    c, h = m.latent_shape(32)
    latents = torch.stack([torch.randn((c, h, h), generator=torch.Generator("cpu").manual_seed(s)) for s in (3, 4)])
    pipe = m.diffusers_pipeline()
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(prompts, negative_prompt=[""] * 2, true_cfg_scale=4.0, height=32, width=32, num_inference_steps=3,
                  latents=pipe._pack_latents(latents, 2, c, h, h), output_type="pt", max_sequence_length=m.t5_length).images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    unguided = m.generate(prompts, [3, 4], SamplerConfig(scheduler="flow_euler", steps=3, guidance=1.0, size=32, seeds=[3, 4]))
    assert not torch.allclose(ours, unguided, atol=1e-3)


def test_a_saved_flux_folder_loads_to_the_same_images_and_a_missing_t5_is_named(tmp_path):
    m = load_t2i("tiny:flux")
    m.diffusers_pipeline().save_pretrained(tmp_path / "flux")
    m2 = load_t2i(str(tmp_path / "flux"))
    assert m2.family == "flux" and m2.guidance_embeds
    sampler = SamplerConfig(scheduler="flow_euler", steps=2, guidance=3.5, size=32, seeds=[0])
    # FluxPipeline's max_sequence_length (512) or the T5-role tokenizer's limit where shorter: the CLIP tokenizer
    # standing in for T5 here stops at 77 (the tiny model itself reads 32: T5 attends to its padding)
    assert m2.t5_length == 77
    m2.t5_length = m.t5_length
    torch.testing.assert_close(m2.generate(["a cat"], [0], sampler), m.generate(["a cat"], [0], sampler), atol=1e-5, rtol=0)
    import shutil

    shutil.rmtree(tmp_path / "flux/text_encoder_2")
    with pytest.raises(ModelNotAvailable, match="text_encoder_2.*no text_encoder_2/ folder"):
        load_t2i(str(tmp_path / "flux"))


def test_random_full_size_mmdits_have_the_real_parameter_counts():
    """random:sd3 / random:flux are SD3-medium's and FLUX.1-dev's architectures (counted on the meta device: FLUX
    is 48 GB in float32)."""
    from edit_bench.models.tiny import random_mmdit_components

    def billions(m):
        return round(sum(p.numel() for p in m.parameters()) / 1e9, 3)

    with torch.device("meta"):
        sd3, flux = random_mmdit_components("sd3"), random_mmdit_components("flux")
    assert (billions(sd3["transformer"]), billions(sd3["text_encoder_2"]), billions(sd3["text_encoder_3"])) == (2.028, 0.695, 4.762)
    assert (billions(flux["transformer"]), billions(flux["text_encoder_2"])) == (11.901, 4.762)


def test_what_an_mmdit_cannot_do_is_refused_with_one_line(tmp_path, capsys):
    m = load_t2i("tiny:sd3")
    with pytest.raises(UsageError, match="'pndm' is not one a sd3 model runs: use flow_euler"):
        m.generate(["a cat"], [0], SamplerConfig(scheduler="pndm", steps=2, size=32, seeds=[0]))
    with pytest.raises(UsageError, match="'flow_euler'.*runs SD3 and FLUX models, not this sd1"):
        load_t2i("tiny:sd1").generate(["a cat"], [0], FLOW)
    with pytest.raises(UsageError, match="joint attention, not cross-attention"):
        m.cross_attn()
    out = tmp_path / "run"
    code = run_cli(["eval", "--model", "configs/editor/time.yaml", "--model.base", "tiny:flux", "--data",
                    "configs/benchmark/timed_tiny.yaml", "--data.sampler.scheduler", "flow_euler", "--data.rows", "0:1",
                    "--out_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "TIME has no flux form" in err and "Traceback" not in err and not out.exists()


def test_the_unedited_model_evaluates_on_flux(tmp_path):
    """The whole eval path (Lightning's loop, the judge, the records) runs on an MMDiT."""
    out = tmp_path / "run"
    assert run_cli(["eval", "--model", "configs/editor/unedited.yaml", "--model.base", "tiny:flux", "--data",
                    "configs/benchmark/timed_tiny.yaml", "--data.sampler.scheduler", "flow_euler", "--data.rows", "0:1",
                    "--out_dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model_id"].startswith("tiny:flux@") and res["metrics"]["efficacy"]["n"] == 1
    assert res["protocol"]["sampler"]["scheduler"] == "flow_euler"


def test_uce_on_flux_equals_the_authors_closed_form():
    """UCE's FLUX form (the authors' trainscripts/uce_flux_edit.py): on context_embedder and the pooled projection,
    keys at the T5 position attention_mask.sum() - 2, W' = (lam W + sum v* c^T + sum W p p^T)(lam I + sum c c^T +
    sum p p^T)^-1 with their defaults (lam 0.5, scales 1), here by explicit inverse in float64 (values without the
    layers' bias, the one difference, see UCE._edit_mmdit)."""
    from edit_bench.editors.uce import UCE
    from edit_bench.types import EditRequest

    ed = UCE(base="tiny:flux", preserve=["a dog"])
    t2i = ed.t2i
    W0 = {k: v.detach().double().clone() for k, v in ed.edited_parameters().items()}
    ed.apply_edit([EditRequest("a cat", "")])
    prompts = ["a cat", "", "a dog"]
    c = t2i.condition(prompts)

    def last(p):
        mask = t2i.tokenizers[1]([p], padding="max_length", max_length=t2i.t5_length, truncation=True,
                                 return_tensors="pt").attention_mask
        return int(mask.sum()) - 2

    emb = {p: (c.context[i, last(p)].double()[:, None], c.pooled[i].double()[:, None]) for i, p in enumerate(prompts)}
    for j, (name, W) in enumerate(W0.items()):
        ce, cg, cp = emb["a cat"][j], emb[""][j], emb["a dog"][j]
        mat1 = 0.5 * W + (W @ cg) @ ce.T + (W @ cp) @ cp.T
        mat2 = 0.5 * torch.eye(W.shape[1], dtype=torch.float64) + ce @ ce.T + cp @ cp.T
        theirs = mat1 @ torch.inverse(mat2)
        moved = (theirs - W).abs().max()
        assert moved > 1e-2 and (ed.edited_parameters()[name].double() - theirs).abs().max() < 1e-5 * moved, name


def test_oce_on_flux_rotates_context_embedder_with_the_t5_prior(tmp_path):
    """OCE's FLUX form: K0 is E[h h^T] over the positions T5's attention mask holds; the edit is a rotation of
    context_embedder (norms of its outputs kept)."""
    from edit_bench.editors.oce import OCE
    from edit_bench.editors.stats import context_moment, read_corpus
    from edit_bench.types import EditRequest

    ed = OCE(base="tiny:flux", corpus_samples=20, stats_dir=str(tmp_path))
    t2i = ed.t2i
    K0, n, _ = context_moment(t2i, ed.corpus, 20, "tokens", str(tmp_path))
    texts = read_corpus(ed.corpus, 20)
    h = t2i.encode(texts).double()[t2i.context_token_mask(texts)]
    assert n == h.shape[0] < 20 * t2i.t5_length
    torch.testing.assert_close(K0.double(), h.T @ h / n, rtol=1e-5, atol=1e-7)
    W0 = t2i.transformer.context_embedder.weight.detach().clone()
    ed.apply_edit([EditRequest("a cat", "a dog")])
    W = t2i.transformer.context_embedder.weight.detach()
    assert not torch.equal(W, W0)
    x = torch.randn(W.shape[1], 5, dtype=torch.float64)
    torch.testing.assert_close((W.double() @ x).norm(dim=0), (W0.double() @ x).norm(dim=0), rtol=1e-5, atol=0)


@pytest.mark.parametrize("spec", ["tiny:sd3", "tiny:flux"])
def test_the_adapter_names_the_editable_text_sites(spec):
    """The text side's sites by role (no editor names a module path): the input projections of the sequence and the
    pooled embedding, and the joint attention's text projections of every double-stream block; a role the family
    lacks is one line."""
    m = load_t2i(spec)
    inputs = m.text_inputs()
    assert list(inputs) == ["transformer.context_embedder", "transformer.time_text_embed.text_embedder.linear_1"]
    assert inputs["transformer.context_embedder"].in_features == m.context_dim
    assert next(iter(m.text_inputs(("pooled",)).values())).in_features == m.condition(["a cat"]).pooled.shape[-1]
    blocks = len(m.transformer.transformer_blocks)
    kv = m.joint_text_projections(("k", "v"))
    assert len(kv) == 2 * blocks and all(n.startswith("transformer.transformer_blocks.") for n in kv)
    assert len(m.joint_text_projections()) == 4 * blocks - (1 if spec == "tiny:sd3" else 0)  # SD3's last block: no to_add_out
    with pytest.raises(UsageError, match="no text input 'clip' on a .* use sequence or pooled"):
        m.text_inputs(("clip",))
    with pytest.raises(UsageError, match="no joint-attention text projection 'x'"):
        m.joint_text_projections(("x",))


def test_esd_on_flux_trains_the_text_side_of_the_joint_attention():
    """ESD on an MMDiT (recipe current): ESD-x is the joint attention's text side, x_t comes from the model's own
    flow-matching sampler, and the paper recipe (CompVis's DDIM grid) is refused."""
    from edit_bench.editors.esd import ESD
    from edit_bench.models.parameter_sets import mmdit_parameter_set
    from edit_bench.types import EditRequest

    ed = ESD(recipe="current", steps=2, sample_steps=4, lr=1e-3, base="tiny:flux")
    names = set(ed.edited_parameters())
    assert {n.split(".")[-2] for n in names} == {"add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"}, names
    assert all(".attn." in n for n in names) and not any(n.startswith("transformer.single_transformer_blocks") for n in names)
    strict = mmdit_parameter_set(ed.t2i, "esd-x-strict")
    assert {n.split(".")[-2] for n in strict} == {"add_k_proj", "add_v_proj"}
    before = {n: p.detach().clone() for n, p in ed.edited_parameters().items()}
    ed.apply_edit([EditRequest("a cat", "")])
    assert any(not torch.equal(p, before[n]) for n, p in ed.edited_parameters().items())
    with pytest.raises(UsageError, match="recipe paper.*flow matching.*recipe current"):
        ESD(base="tiny:sd3").edited_parameters()


def test_a_transformer_of_another_family_is_named_and_refused():
    """A folder whose transformer is neither SD3's nor FLUX's (here a PixArt-style Transformer2DModel) is refused
    with its class named, before anything runs."""
    from diffusers import Transformer2DModel

    from edit_bench.models.mmdit import MMDiTModel

    comps = load_t2i("tiny:sd3")
    parts = {k: getattr(comps, k) for k in ("vae", "text_encoder", "text_encoder_2")}
    other = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, sample_size=8, num_layers=1,
                               cross_attention_dim=16, norm_num_groups=4)
    with pytest.raises(UsageError, match="unsupported transformer Transformer2DModel.*SD3Transformer2DModel.*FluxTransformer2DModel"):
        MMDiTModel({**parts, "transformer": other, "tokenizer": comps.tokenizers[0], "scheduler": {}}, "x")


def test_an_mmdit_evaluates_with_its_weights_in_bf16(tmp_path):
    """``--trainer.precision bf16-true`` (configs/trainer/gpu_bf16_true.yaml: FLUX on a GPU) runs the whole eval with
    the weights in bf16 (a batch is not a dataclass Lightning's input conversion would rebuild)."""
    out = tmp_path / "run"
    code = run_cli(["eval", "--model", "configs/editor/uce.yaml", "--model.base", "tiny:flux", "--data",
                    "configs/benchmark/timed_tiny.yaml", "--data.sampler.scheduler", "flow_euler", "--data.rows", "0:1",
                    "--trainer.precision", "bf16-true", "--out_dir", str(out)])
    assert code == 0
    res = json.loads((out / "results.json").read_text())
    assert res["protocol"]["precision"] == "bf16-true" and res["metrics"]["efficacy"]["n"] > 0
