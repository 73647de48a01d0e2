"""Tiny random pipelines with the real SD-1, SD-2 and SDXL layouts, for contract tests.

The UNets keep the block structure of the full models, so their cross-attention sites carry the real
names (16 for SD-1/SD-2, 70 for SDXL); widths are cut to a few channels. Weights are random but
deterministic (built under a fixed seed without touching the caller's RNG). Numbers from these models
mean nothing: they exist to exercise code paths offline in a fraction of a second.
"""

from __future__ import annotations

import torch

FAMILIES = ("sd1", "sd2", "sdxl")

# The SD-1.x / SD-2.x scheduler settings (the pipelines' default PNDM with the scaled-linear betas).
SD_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    skip_prk_steps=True,
    steps_offset=1,
    set_alpha_to_one=False,
    clip_sample=False,
    prediction_type="epsilon",
)
SDXL_SCHEDULER_CLASS = "EulerDiscreteScheduler"  # SDXL's pipeline default; SD-1.x's is PNDM


def _text_encoder(tokenizer, hidden: int, act: str, layers: int, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,  # the real model's depth, so layer indices of papers (ReFACT L=9) apply
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=act,
        projection_dim=projection or hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def tiny_components(family: str) -> dict:
    """Random components of a tiny pipeline of ``family`` (``sd1``, ``sd2`` or ``sdxl``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .tokenizer import clip_tokenizer

    if family not in FAMILIES:
        raise ValueError(f"unknown tiny family {family!r}: use one of {', '.join(FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tok = clip_tokenizer()
        vae = AutoencoderKL(
            block_out_channels=[8, 16],
            norm_num_groups=4,
            latent_channels=4,
            sample_size=32,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            force_upcast=family == "sdxl",
        )
        if family == "sdxl":
            te1 = _text_encoder(tok, 32, "quick_gelu", 12)
            te2 = _text_encoder(tok, 32, "gelu", 32, projection=32)
            unet = UNet2DConditionModel(
                sample_size=16,
                layers_per_block=2,
                block_out_channels=(8, 16, 16),
                norm_num_groups=4,
                attention_head_dim=(2, 4, 4),
                use_linear_projection=True,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10),
                cross_attention_dim=64,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=6 * 8 + 32,
            )
            return dict(unet=unet, vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok,
                        tokenizer_2=clip_tokenizer(), scheduler=dict(SD_SCHEDULER),
                        scheduler_class=SDXL_SCHEDULER_CLASS, force_zeros_for_empty_prompt=True)
        hidden, act = (32, "quick_gelu") if family == "sd1" else (48, "gelu")
        te = _text_encoder(tok, hidden, act, 12 if family == "sd1" else 23)
        unet = UNet2DConditionModel(
            sample_size=16,
            layers_per_block=2,
            block_out_channels=(8, 16, 16, 16),
            norm_num_groups=4,
            attention_head_dim=2 if family == "sd1" else (2, 4, 4, 4),
            use_linear_projection=family == "sd2",
            cross_attention_dim=hidden,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
        return dict(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=dict(SD_SCHEDULER), scheduler_class="PNDMScheduler")


def random_components(family: str) -> dict:
    """Random components with the **full-size** architectures of SD-1.5 (860 M-parameter UNet, CLIP ViT-L/14
    text encoder), SD-2.1 (OpenCLIP ViT-H/14 text encoder, 23 of its 24 layers as the pipeline keeps them) and
    SDXL (2.6 B-parameter UNet, CLIP ViT-L + OpenCLIP ViT-bigG), built offline under a fixed seed.

    For measuring speed and memory without downloading weights; their images and scores mean nothing.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .tokenizer import clip_tokenizer

    if family not in FAMILIES:
        raise ValueError(f"unknown random family {family!r}: use one of {', '.join(FAMILIES)}")

    def clip(tok, hidden, layers, heads, act, projection=None):
        cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden,
                             num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                             hidden_act=act, projection_dim=projection or 768, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tok = clip_tokenizer()
        size = {"sd1": 512, "sd2": 768, "sdxl": 1024}[family]
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
                            sample_size=size, down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, force_upcast=family == "sdxl",
                            scaling_factor=0.13025 if family == "sdxl" else 0.18215)
        if family == "sdxl":
            unet = UNet2DConditionModel(
                sample_size=128, block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
                use_linear_projection=True, transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            return dict(unet=unet, vae=vae, text_encoder=clip(tok, 768, 12, 12, "quick_gelu"),
                        text_encoder_2=clip(tok, 1280, 32, 20, "gelu", projection=1280), tokenizer=tok,
                        tokenizer_2=clip_tokenizer(), scheduler=dict(SD_SCHEDULER), scheduler_class=SDXL_SCHEDULER_CLASS,
                        force_zeros_for_empty_prompt=True)
        if family == "sd1":
            te = clip(tok, 768, 12, 12, "quick_gelu")
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        else:
            te = clip(tok, 1024, 23, 16, "gelu")
            unet = UNet2DConditionModel(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                                        use_linear_projection=True)
        return dict(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, scheduler=dict(SD_SCHEDULER), scheduler_class="PNDMScheduler")


MMDIT_FAMILIES = ("sd3", "flux")
# The pipelines' FlowMatchEulerDiscreteScheduler settings (SD3-medium's scheduler_config.json; FLUX.1-dev's).
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)


def _t5(vocab: int, d_model: int, layers: int, heads: int, d_ff: int):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
                                   num_heads=heads, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                                   pad_token_id=0, eos_token_id=1))


def tiny_mmdit_components(family: str) -> dict:
    """Random components of a tiny SD3 or FLUX pipeline: the real layouts (SD3: CLIP-L, CLIP-G, T5 and a joint
    transformer; FLUX: CLIP-L, T5, double- and single-stream blocks, guidance embedding), the text encoders at their
    real depths (12, 32, 24 layers), the transformers cut to 2 (SD3) and 1 + 2 (FLUX) blocks. T5's tokenizer is
    not available offline: the CLIP tokenizer stands in for it (the pipelines only call it for ids)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    from .tokenizer import clip_tokenizer

    if family not in MMDIT_FAMILIES:
        raise ValueError(f"unknown tiny MMDiT family {family!r}: use one of {', '.join(MMDIT_FAMILIES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tok = clip_tokenizer()
        latent = 4
        vae = AutoencoderKL(block_out_channels=[8, 16], norm_num_groups=4, latent_channels=latent, sample_size=32,
                            down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                            use_quant_conv=False, use_post_quant_conv=False,
                            scaling_factor=1.5305 if family == "sd3" else 0.3611,
                            shift_factor=0.0609 if family == "sd3" else 0.1159)
        if family == "sd3":
            te1 = _text_encoder(tok, 16, "quick_gelu", 12, projection=16)
            te2 = _text_encoder(tok, 16, "gelu", 32, projection=16)
            t5 = _t5(len(tok), 32, 24, 4, 64)
            transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=latent, out_channels=latent,
                                                num_layers=2, attention_head_dim=8, num_attention_heads=2,
                                                joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
                                                pos_embed_max_size=32)
            return dict(transformer=transformer, vae=vae, text_encoder=te1, text_encoder_2=te2, text_encoder_3=t5,
                        tokenizer=tok, tokenizer_2=clip_tokenizer(), tokenizer_3=clip_tokenizer(),
                        scheduler=dict(SD3_SCHEDULER), scheduler_class="FlowMatchEulerDiscreteScheduler", max_sequence_length=32)
        te1 = _text_encoder(tok, 16, "quick_gelu", 12)
        t5 = _t5(len(tok), 32, 24, 4, 64)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=4 * latent, num_layers=1, num_single_layers=2,
                                             attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                             pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
        return dict(transformer=transformer, vae=vae, text_encoder=te1, text_encoder_2=t5, tokenizer=tok,
                    tokenizer_2=clip_tokenizer(), scheduler=dict(FLUX_SCHEDULER),
                    scheduler_class="FlowMatchEulerDiscreteScheduler", max_sequence_length=32)


def random_mmdit_components(family: str) -> dict:
    """Random components with the **full-size** architectures of SD3-medium (a 2.0 B-parameter transformer of 24
    joint blocks; CLIP-L, OpenCLIP bigG, T5-XXL's encoder) and FLUX.1-dev (11.9 B: 19 double- and 38 single-stream
    blocks, guidance embedding; CLIP-L, T5-XXL's encoder), built under a fixed seed, for speed and memory without
    weights. In float32 FLUX alone is 48 GB: build it under ``torch.device("meta")`` to count, on a GPU host to run.
    The CLIP tokenizer stands in for T5's (not available offline); it changes ids, not cost."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .tokenizer import clip_tokenizer

    if family not in MMDIT_FAMILIES:
        raise ValueError(f"unknown random MMDiT family {family!r}: use one of {', '.join(MMDIT_FAMILIES)}")

    def clip(tok, hidden, layers, heads, act, projection=None):  # FLUX reads CLIP-L's pooled state, SD3 its projection
        cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                             num_attention_heads=heads, max_position_embeddings=77, hidden_act=act,
                             projection_dim=projection or hidden, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        tok = clip_tokenizer()
        vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=16,
                            sample_size=1024, down_block_types=["DownEncoderBlock2D"] * 4,
                            up_block_types=["UpDecoderBlock2D"] * 4, use_quant_conv=False, use_post_quant_conv=False,
                            scaling_factor=1.5305 if family == "sd3" else 0.3611,
                            shift_factor=0.0609 if family == "sd3" else 0.1159)
        t5 = _t5(32128, 4096, 24, 64, 10240)  # T5-XXL v1.1's encoder (4.76 B)
        clip_l = clip(tok, 768, 12, 12, "quick_gelu", 768 if family == "sd3" else None)
        if family == "sd3":
            transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                                                attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                                caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
            return dict(transformer=transformer, vae=vae, text_encoder=clip_l, text_encoder_2=clip(tok, 1280, 32, 20, "gelu", 1280),
                        text_encoder_3=t5, tokenizer=tok, tokenizer_2=clip_tokenizer(), tokenizer_3=clip_tokenizer(),
                        scheduler=dict(SD3_SCHEDULER), scheduler_class="FlowMatchEulerDiscreteScheduler")
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                             attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                             pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
        return dict(transformer=transformer, vae=vae, text_encoder=clip_l, text_encoder_2=t5, tokenizer=tok,
                    tokenizer_2=clip_tokenizer(), scheduler=dict(FLUX_SCHEDULER), scheduler_class="FlowMatchEulerDiscreteScheduler")
