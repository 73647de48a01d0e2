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
