import time

import pytest
import torch

from edit_bench.models import ModelNotAvailable, T2IModel, load_t2i
from edit_bench.models.tokenizer import clip_tokenizer
from edit_bench.types import SamplerConfig

from helpers import TINY

S = SamplerConfig(steps=2, size=32, seeds=[0])

# Full-size UNet configs of the released models (diffusers config.json values), built on the meta device.
FULL = {
    "sd1": dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "sd2": dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                block_out_channels=(320, 640, 1280, 1280), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "sdxl": dict(sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                 block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816),
}
TEXT = {"sd1": (768, 12, "quick_gelu"), "sd2": (1024, 23, "gelu"), "sdxl": (768, 12, "quick_gelu")}


def _full_model(family):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = clip_tokenizer()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**FULL[family])
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], latent_channels=4,
                            down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4)
        h, n, act = TEXT[family]
        te = CLIPTextModel(CLIPTextConfig(hidden_size=h, intermediate_size=4 * h, num_hidden_layers=n,
                                          num_attention_heads=h // 64, hidden_act=act))
        comps = dict(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler={})
        if family == "sdxl":
            comps["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(
                hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                hidden_act="gelu", projection_dim=1280))
            comps["tokenizer_2"] = tok
    return T2IModel(comps, f"meta:{family}")


@pytest.mark.parametrize("family,n_sites,dim", [("sd1", 16, 768), ("sd2", 16, 1024), ("sdxl", 70, 2048)])
def test_full_size_layouts_on_meta(family, n_sites, dim):
    m = _full_model(family)
    sites = m.cross_attn()
    assert m.family == family
    assert len(sites) == n_sites and m.context_dim == dim
    assert all(s.to_k.in_features == dim and s.to_v.in_features == dim for s in sites)
    names = [s.name for s in sites]
    assert names[0].startswith("down_blocks.") and names[-1].startswith("up_blocks.")
    mid = [i for i, n in enumerate(names) if n.startswith("mid_block")]
    assert mid == ([6] if family != "sdxl" else list(range(24, 34)))  # down -> mid -> up
    if family == "sd1":  # LocoEdit's default sites by name, layers 8 and 9 in this order
        assert names[8] == "up_blocks.1.attentions.1.transformer_blocks.0.attn2"
        assert names[9] == "up_blocks.1.attentions.2.transformer_blocks.0.attn2"


def test_tokenizer_matches_open_clip():
    import open_clip

    tok = clip_tokenizer()
    for p in ["a photo of a rose", "The prime minister of Canada, oil painting", "An apple"]:
        ids = tok(p).input_ids
        ref = open_clip.tokenize([p])[0].tolist()
        assert ids == ref[: len(ids)]
    assert len(tok) == 49408 and tok.pad_token_id == tok.eos_token_id == 49407 and tok.model_max_length == 77


@pytest.mark.parametrize("spec", TINY)
def test_sites_in_forward_order_and_encode_is_what_attn2_sees(spec):
    m = load_t2i(spec)
    calls, contexts = [], []
    names = {mod: n for n, mod in m.unet.named_modules()}

    def record(mod, args, kw):
        calls.append(names[mod])
        contexts.append(kw["encoder_hidden_states"])

    handles = [m.unet.get_submodule(s.name).register_forward_pre_hook(record, with_kwargs=True) for s in m.cross_attn()]
    m.generate(["a red rose"], [0], SamplerConfig(steps=1, size=32, seeds=[0]))
    for h in handles:
        h.remove()
    assert calls == [s.name for s in m.cross_attn()]
    cond = contexts[0][1:]  # CFG batch is [uncond, cond]
    torch.testing.assert_close(cond, m.encode(["a red rose"]))


@pytest.mark.parametrize("spec,family", zip(TINY, ("sd1", "sd2", "sdxl")))
def test_family_and_generation(spec, family):
    m = load_t2i(spec)
    assert m.family == family
    a = m.generate(["a cat", "a dog"], [3, 4], S)
    b = m.generate(["a dog"], [4], S)
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    torch.testing.assert_close(a[1:], b, atol=1e-5, rtol=0)  # batch composition does not change an image
    assert torch.equal(a, m.generate(["a cat", "a dog"], [3, 4], S))  # deterministic
    assert not torch.allclose(a[0], m.generate(["a cat"], [5], S)[0])  # the seed matters


def test_token_index_with_pad_equal_to_eos():
    m = load_t2i("tiny:sd1")
    # [BOS, a, photo, of, a, red, rose, EOS, EOS(pad) ...]
    assert m.token_index("a photo of a red rose", "rose") == 6
    assert m.token_index("a photo of a red rose", "red rose") == 6
    assert m.token_index("a photo of a red rose", "photo") == 2
    assert m.token_index("a photo of a red rose") == 6
    assert m.token_index("Van Gogh", "van gogh") == 2
    with pytest.raises(ValueError, match="does not occur"):
        m.token_index("a photo of a red rose", "tulip")


def test_local_folder_round_trip(tmp_path):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    m = load_t2i("tiny:sd1")
    StableDiffusionPipeline(unet=m.unet, vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer,
                            scheduler=PNDMScheduler.from_config(m.scheduler_config), safety_checker=None,
                            feature_extractor=None, requires_safety_checker=False).save_pretrained(tmp_path)
    m2 = load_t2i(str(tmp_path))
    assert m2.family == "sd1" and len(m2.cross_attn()) == 16
    torch.testing.assert_close(m2.encode(["a cat"]), m.encode(["a cat"]))
    torch.testing.assert_close(m2.generate(["a cat"], [0], S), m.generate(["a cat"], [0], S), atol=1e-5, rtol=0)


def test_missing_models_fail_fast_with_instructions(tmp_path):
    t = time.perf_counter()
    with pytest.raises(ModelNotAvailable, match="edit-bench-test/not-cached.*hf download"):
        load_t2i("edit-bench-test/not-cached")
    assert time.perf_counter() - t < 20  # no minutes of retries (typically well under a second)
    with pytest.raises(ModelNotAvailable, match="model_index.json"):
        load_t2i(str(tmp_path))
    with pytest.raises(ModelNotAvailable, match="tiny:sd1"):
        load_t2i("tiny:sd4")


@pytest.mark.parametrize("spec", ["tiny:sd1", "tiny:sdxl"])
def test_generate_equals_the_diffusers_pipeline(spec):
    """T2IModel.generate (batched CFG, conditioning, time ids, decoding) equals diffusers'
    StableDiffusionPipeline / StableDiffusionXLPipeline on the same components, latents and scheduler: the
    basis of every comparison with published numbers."""
    import diffusers

    m = load_t2i(spec)
    sampler = SamplerConfig(scheduler="ddim", steps=4, guidance=7.5, size=32, seeds=[3, 4])
    ours = m.generate(["a red rose", "a cat"], [3, 4], sampler)
    h = 32 // m.vae_scale_factor
    latents = torch.stack([torch.randn((m.unet.config.in_channels, h, h), generator=torch.Generator("cpu").manual_seed(s))
                           for s in (3, 4)])
    comps = dict(unet=m.unet, vae=m.vae, text_encoder=m.text_encoder, tokenizer=m.tokenizer,
                 scheduler=diffusers.DDIMScheduler.from_config(m.scheduler_config))
    if m.family == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(**comps, text_encoder_2=m.text_encoder_2, tokenizer_2=m.tokenizers[1],
                                                   force_zeros_for_empty_prompt=m.force_zeros_for_empty_prompt)
    else:
        pipe = diffusers.StableDiffusionPipeline(**comps, safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(["a red rose", "a cat"], height=32, width=32, num_inference_steps=4, guidance_scale=7.5,
                  latents=latents.clone(), output_type="pt").images
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scheduler,eta", [("euler_a", 0.0), ("ddim", 1.0), ("ddpm", 0.0)])
def test_ancestral_samplers_do_not_depend_on_the_batch(scheduler, eta):
    """Samplers that draw noise at every step (Euler ancestral, DDIM with eta > 0, DDPM) draw it from each
    sample's own generator: an image is the same alone or in a batch."""
    m = load_t2i("tiny:sd1")
    sampler = SamplerConfig(scheduler=scheduler, steps=4, guidance=7.5, size=32, seeds=[1], eta=eta)
    both = m.generate(["a cat", "a dog"], [3, 4], sampler)
    alone = m.generate(["a dog"], [4], sampler)
    torch.testing.assert_close(both[1:], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(both[0], m.generate(["a cat"], [5], sampler)[0])


@pytest.mark.parametrize("family,unet_m,text_m", [("sd1", 859.52, 123.06), ("sd2", 865.91, 340.39)])
def test_random_full_size_models_have_the_real_parameter_counts(family, unet_m, text_m):
    """random:sd1 / random:sd2 are the full-size architectures (SD-1.5's UNet: 859.52 M parameters), built on the meta
    device (the architecture without drawing its billion random numbers)."""
    from edit_bench.models import load_t2i

    with torch.device("meta"):
        t2i = load_t2i(f"random:{family}")
    assert round(sum(p.numel() for p in t2i.unet.parameters()) / 1e6, 2) == unet_m
    assert round(sum(p.numel() for p in t2i.text_encoder.parameters()) / 1e6, 2) == text_m
    assert len(t2i.cross_attn()) == 16 and t2i.native_size == {"sd1": 512, "sd2": 768}[family]


@pytest.mark.parametrize("spec", ["tiny:sd1", "toy"])
def test_a_batch_encodes_each_distinct_prompt_once_to_the_same_bits(spec):
    """generate encodes a batch's distinct prompts once (a TIMED batch repeats each prompt once per seed): the
    conditioning equals encoding every row, to the bit, with its token ids (what SAFREE reads) in the same order.
    (SDXL encodes every row: its pooled projection's rows round differently with the batch's size.)"""
    m = load_t2i(spec)
    prompts = ["a cat", "a dog", "a red circle"] * 3 + ["a cat"]
    calls = []
    encode = m.condition
    m.condition = lambda ps, longest=False: calls.append(list(ps)) or encode(ps, longest)
    got = m.condition_batch(prompts)
    assert calls == [["a cat", "a dog", "a red circle"]]
    want = encode(prompts)
    assert torch.equal(got.context, want.context)
    assert (got.pooled is None and want.pooled is None) or torch.equal(got.pooled, want.pooled)
    assert (got.ids is None and want.ids is None) or torch.equal(got.ids, want.ids)
