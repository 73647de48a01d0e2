"""Train the toy world: a tiny SD-1-layout text-to-image model and a tiny open_clip judge.

    python -m edit_bench.models.toy.train --out edit_bench/models/toy/weights --seed 0

Four Lightning stages, all from one seed: (1) a ``CLIPTextModel`` pre-trained contrastively (CLIP-style)
against a small conv image tower, with linear attribute probes on its states (``TextStage``), then
frozen, as Stable Diffusion's CLIP text encoder is; (2) an
``AutoencoderKL`` 32x32x3 -> 8x8x4; (3) an SD-1-layout ``UNet2DConditionModel`` (16 cross-attention
sites with the real names) trained with the epsilon objective on the VAE latents, with SD's scheduler,
conditioned on the frozen encoder's states; (4) an open_clip ``CLIP`` judge trained contrastively on
renderings, three quarters of them degraded as decoded latents are (``degrade``).
Contrastive stages count every caption that is true of an image as a positive (``world.constraints``:
unnamed colour and texture mean the defaults, unnamed size and background are free).

Padding. With a causal text encoder every padding state after the end-of-text token summarises the whole
caption. A UNet trained jointly with its encoder learns to read the caption there (v0 of this world did:
causal tracing found only the padding states mattered), which makes every closed-form edit of one
caption's keys leak into all others. Frozen-encoder models such as Stable Diffusion largely ignore their
padding. The UNet stage therefore sees, at a caption's padding positions, the padding states of a caption
drawn by a random permutation of the batch (or of the empty caption where that one is shorter; a caption
draws itself about once per batch): padding is present, as at inference, but carries almost nothing the
UNet can rely on, so it reads the caption's own tokens.
The pipeline is written with ``save_pretrained`` as a standard diffusers folder (fp16) and the judge as
an open_clip ``local-dir`` folder, so both load through the code paths of real models.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from . import world

TEXT = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4)
UNET = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64, 64, 64),
            norm_num_groups=16, attention_head_dim=4, cross_attention_dim=64,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
# The toy MMDiT (``--model.base toy-mmdit``): FLUX.1's layout (double-stream joint blocks, then single-stream blocks,
# 2x2-packed latents, RoPE over (text, row, column) ids, a pooled-text embedding added to the timestep's) at toy size,
# without FLUX-dev's guidance embedding (that is distilled from a guided teacher): it is sampled with classifier-free
# guidance on the empty prompt, FluxPipeline's ``true_cfg_scale``. 2.3 M parameters (the SD-1 toy UNet: 3.3 M).
MMDIT = dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=4, attention_head_dim=32, num_attention_heads=4,
             joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=False, axes_dims_rope=(8, 12, 12))
# its text sequence: the toy captions are at most 13 tokens with BOS/EOS; FLUX's T5 takes 512, the toy encoder 32
MMDIT_TEXT_LENGTH = 32
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=32, layers_per_block=1,
           block_out_channels=(16, 32, 64), norm_num_groups=8,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
# toy captions are at most 11 tokens: a 32-token context keeps room for longer user prompts and shortens
# the text tower's sequence (the tokenizer reads the length from the shipped config)
JUDGE = dict(embed_dim=64,
             vision_cfg=dict(image_size=32, patch_size=4, width=64, layers=3, head_width=32),
             text_cfg=dict(context_length=32, vocab_size=49408, width=32, heads=4, layers=3))


def make_data(n: int, seed: int, styles: float = 0.0):
    """``n`` (caption, image) pairs of the training distribution: images uint8 ``[n, 3, 32, 32]``; a fraction
    ``styles`` of the captions names a style (and empty captions show styled scenes too)."""
    rng = random.Random(seed)
    caps = [world.random_caption(rng, styles) for _ in range(n)]
    scenes = [world.parse(c) if c else world.random_scene(rng, styles > 0) for c in caps]
    imgs = world.render(scenes, rng=rng)
    return caps, (imgs * 255).round().to(torch.uint8)


def _cosine(opt, warmup: int, total: int):
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))


class VAEStage(L.LightningModule):
    def __init__(self, steps: int, kl: float = 1e-6, lr: float = 1e-3):
        super().__init__()
        from diffusers import AutoencoderKL

        self.vae, self.steps, self.kl, self.lr = AutoencoderKL(**VAE), steps, kl, lr

    def training_step(self, batch, _):
        x = batch[0].float() / 127.5 - 1
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample()).sample
        loss = F.mse_loss(rec, x) + self.kl * post.kl().mean()
        self.log("vae", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.vae.parameters(), lr=self.lr, weight_decay=0.0)
        return [opt], [{"scheduler": _cosine(opt, 100, self.steps), "interval": "step"}]


def _pairs(rng: random.Random, n: int, styles: float = 0.0):
    """``n`` non-empty random captions, a scene each caption is true of, and the positive-pair matrix
    (image i and caption j are a positive pair when the caption is true of the scene)."""
    caps = []
    while len(caps) < n:
        c = world.random_caption(rng, styles)
        if c:
            caps.append(c)
    scenes = [world.scene_for(c, rng) for c in caps]
    cons = [world.constraints(c) for c in caps]
    pos = torch.tensor([[world.matches(c, s) for c in cons] for s in scenes], dtype=torch.float32)
    return caps, scenes, pos


def _multi_positive_clip_loss(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.sum(-pos / pos.sum(1, keepdim=True) * logits.log_softmax(1), 1).mean()
                  + torch.sum(-pos / pos.sum(0, keepdim=True) * logits.log_softmax(0), 0).mean())


ATTRIBUTES = {"shape": world.SHAPES, "colour": tuple(world.COLOURS), "texture": world.TEXTURES,
              "size": tuple(world.SIZES), "background": tuple(world.BACKGROUNDS)}


def attributes(styles: bool) -> dict[str, tuple]:
    """The probed attributes (with ``styles``, the style too)."""
    return {**ATTRIBUTES, "style": tuple(world.STYLES)} if styles else ATTRIBUTES


def attribute_labels(caps: list[str], styles: bool = False) -> dict[str, torch.Tensor]:
    """What each caption says of each attribute, as class indices: the value (unnamed shape, colour,
    texture and style resolve to their defaults, as in ``world.constraints``) or, for size and background,
    the extra class ``len(values)`` when the caption leaves it unnamed."""
    cons = [world.constraints(c) for c in caps]
    return {k: torch.tensor([vals.index(c[k]) if k in c else len(vals) for c in cons])
            for k, vals in attributes(styles).items()}


class TextStage(L.LightningModule):
    """The text encoder, pre-trained contrastively against a small conv image tower (pooled EOS state,
    as CLIP), then frozen for the diffusion stage.

    With the contrastive loss alone the small encoder let the shape fade from the states of captions
    that name several attributes ("a small striped blue square" and "... circle": cosine 0.82 at the
    noun, 0.89 at EOS), and the UNet drew the wrong shape for them. Linear probes therefore read every
    attribute from the pooled EOS state, and every attribute the noun phrase names (shape, colour,
    texture, size) from the noun's own state, with a cross-entropy added to the contrastive loss
    (``probe_weight``). Probing the noun for its shape alone drew shapes right but pushed the colour out
    of the noun's state, and editors that move the noun's keys stopped editing."""

    def __init__(self, tokenizer, steps: int, batch: int, seed: int, lr: float = 1e-3, probe_weight: float = 1.0,
                 styles: float = 0.0):
        super().__init__()
        from transformers import CLIPTextConfig, CLIPTextModel

        self.styles = styles
        attrs = attributes(styles > 0)
        self.tok = tokenizer
        self.text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, **TEXT,
                                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                 pad_token_id=tokenizer.pad_token_id))
        d = TEXT["hidden_size"]
        self.proj = torch.nn.Linear(d, d, bias=False)
        self.image = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.GELU(), torch.nn.Conv2d(32, 64, 3, 2, 1), torch.nn.GELU(),
            torch.nn.Conv2d(64, 128, 3, 2, 1), torch.nn.GELU(), torch.nn.Conv2d(128, 128, 3, 1, 1), torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(128, d))
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.probes = torch.nn.ModuleDict({k: torch.nn.Linear(d, len(v) + 1) for k, v in attrs.items()})
        # the noun ends its phrase: it is probed for what the phrase says (SD's CLIP writes it there);
        # the background (and a style named by "by ...") comes after the noun, which a causal encoder cannot see
        self.noun_probes = torch.nn.ModuleDict({k: torch.nn.Linear(d, len(v) + 1) for k, v in attrs.items()
                                                if k not in ("background", "style")})
        self.register_buffer("shape_ids", torch.tensor([tokenizer.convert_tokens_to_ids(f"{s}</w>") for s in world.SHAPES]))
        self.steps, self.batch, self.lr, self.probe_weight = steps, batch, lr, probe_weight
        self.rng = random.Random(seed + 1)

    def training_step(self, batch, _):
        caps, scenes, pos = _pairs(self.rng, self.batch, self.styles)
        x = world.render(scenes, rng=self.rng).to(self.device) * 2 - 1
        # padded to the longest caption only: under the causal mask the pooled EOS state is the same as
        # with 77 positions
        ids = self.tok(caps, padding="longest", truncation=True, return_tensors="pt").input_ids
        ids = ids.to(self.device)
        out = self.text(ids)
        txt = F.normalize(self.proj(out.pooler_output), dim=-1)
        img = F.normalize(self.image(x), dim=-1)
        clip = _multi_positive_clip_loss(self.logit_scale.exp().clamp(max=100) * img @ txt.T, pos.to(self.device))
        labels = attribute_labels(caps, self.styles > 0)
        probe = sum(F.cross_entropy(self.probes[k](out.pooler_output), y.to(self.device)) for k, y in labels.items()) / len(labels)
        is_noun = ids[..., None] == self.shape_ids  # [B, T, shapes]; entity captions name no shape
        has = is_noun.any((1, 2))
        if has.any():
            pos_noun = is_noun.any(2).int().argmax(1)
            noun = out.last_hidden_state[torch.arange(len(ids), device=ids.device), pos_noun]
            probe = probe + sum(F.cross_entropy(head(noun[has]), labels[k].to(self.device)[has])
                                for k, head in self.noun_probes.items()) / len(self.noun_probes)
        self.log_dict({"text": clip, "probe": probe}, prog_bar=True)
        return clip + self.probe_weight * probe

    def train_dataloader(self):
        return DataLoader(range(self.steps), batch_size=1)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.05)
        return [opt], [{"scheduler": _cosine(opt, 100, self.steps), "interval": "step"}]


def encode_captions(text, tok, caps: list[str], batch: int = 512, length: int = 77,
                    pooled: bool = False) -> tuple[torch.Tensor, ...]:
    """The frozen encoder's states ``[n, length, D]`` of ``caps`` and their padding masks ``[n, length]`` (the
    positions after the first end-of-text token); with ``pooled``, also the pooled (EOS) states ``[n, D]``."""
    ids = tok(caps, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        outs = [text(ids[i:i + batch]) for i in range(0, len(ids), batch)]
    states = torch.cat([o[0] for o in outs])
    eos = (ids == tok.eos_token_id).int().argmax(1)
    pad = torch.arange(ids.shape[1])[None] > eos[:, None]
    return (states, pad, torch.cat([o.pooler_output for o in outs])) if pooled else (states, pad)


def swap_padding(ctx: torch.Tensor, pad: torch.Tensor, clean: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Each row's padding positions take the states of row ``perm[i]`` where that row is padding too,
    else the empty caption's states ``clean`` ``[77, D]``; word, BOS and EOS states are kept."""
    other = torch.where(pad[perm][..., None], ctx[perm], clean.expand_as(ctx))
    return torch.where(pad[..., None], other, ctx)


class MMDiTStage(L.LightningModule):
    """The FLUX-layout transformer (``MMDIT``) on the same frozen text states, trained by flow matching as FLUX and
    SD3 are: ``x_t = (1 - s) x_0 + s e`` with ``s`` logit-normal (SD3's ``sigmoid(N(0, 1))``), the transformer predicting
    the velocity ``e - x_0`` from ``x_t``, ``s`` (its timestep, 0..1), the sequence states and the pooled (EOS) state.
    The sequence's padding is swapped between captions as in :class:`T2IStage`. The pooled state is the caption's own,
    replaced by the empty caption's for a fraction ``pooled_dropout`` of the samples: the toy encoder's EOS state holds
    the whole caption in 64 numbers (its probes read every attribute there), so a transformer always given it could
    ignore the sequence; FLUX draws its content from T5's sequence, CLIP's pooled vector adding global cues."""

    def __init__(self, context: torch.Tensor, pad: torch.Tensor, clean: torch.Tensor, pooled: torch.Tensor,
                 empty: torch.Tensor, steps: int, lr: float = 5e-4, pooled_dropout: float = 0.5):
        super().__init__()
        from diffusers import FluxTransformer2DModel

        # not parameters; ``empty``: the empty caption's pooled state
        self.context, self.pad, self.clean, self.pooled, self.empty = context, pad, clean, pooled, empty
        self.transformer = FluxTransformer2DModel(**MMDIT)
        self.steps, self.lr, self.pooled_dropout = steps, lr, pooled_dropout

    def training_step(self, batch, _):
        from ..mmdit import MMDiTModel

        z, idx = batch
        idx = idx.cpu()
        ctx = swap_padding(self.context[idx], self.pad[idx], self.clean, torch.randperm(len(idx))).to(z.device)
        s = torch.sigmoid(torch.randn(z.shape[0], device=z.device))
        eps = torch.randn_like(z)
        x = (1 - s[:, None, None, None]) * z + s[:, None, None, None] * eps
        pooled = self.pooled[idx]
        drop = torch.rand(len(idx)) < self.pooled_dropout
        pooled = torch.where(drop[:, None], self.empty.expand_as(pooled), pooled)
        pred = self.transformer(hidden_states=MMDiTModel._pack(x), timestep=s, pooled_projections=pooled.to(z.device),
                                encoder_hidden_states=ctx, txt_ids=torch.zeros(ctx.shape[1], 3, device=z.device),
                                img_ids=MMDiTModel._image_ids(*z.shape[-2:]).to(z.device), return_dict=False)[0]
        loss = F.mse_loss(MMDiTModel._unpack(pred, *z.shape[-2:]), eps - z)
        self.log("flow", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.transformer.parameters(), lr=self.lr, weight_decay=0.01)
        return [opt], [{"scheduler": _cosine(opt, 200, self.steps), "interval": "step"}]


class T2IStage(L.LightningModule):
    """The UNet on frozen text states (computed once per distinct caption), with padding swapped between
    captions (module docstring)."""

    def __init__(self, context: torch.Tensor, pad: torch.Tensor, clean: torch.Tensor, steps: int,
                 scheduler_config: dict, lr: float = 5e-4):
        super().__init__()
        from diffusers import DDPMScheduler, UNet2DConditionModel

        self.context, self.pad, self.clean = context, pad, clean  # not parameters
        self.unet = UNet2DConditionModel(**UNET)
        self.noise = DDPMScheduler.from_config(scheduler_config)
        self.steps, self.lr = steps, lr

    def training_step(self, batch, _):
        z, idx = batch
        idx = idx.cpu()
        ctx = swap_padding(self.context[idx], self.pad[idx], self.clean, torch.randperm(len(idx))).to(z.device)
        t = torch.randint(0, self.noise.config.num_train_timesteps, (z.shape[0],), device=z.device)
        eps = torch.randn_like(z)
        pred = self.unet(self.noise.add_noise(z, eps, t), t, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(pred, eps)
        self.log("eps", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.unet.parameters(), lr=self.lr, weight_decay=0.01)
        return [opt], [{"scheduler": _cosine(opt, 200, self.steps), "interval": "step"}]


def degrade(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Renderings ``[B, 3, 32, 32]`` in [0, 1] made to look like decoded latents, so that the judge reads
    generated images as it reads renderings: a small rotation (generated shapes are drawn a little
    tilted), a Gaussian blur (the VAE's smoothing), low-frequency colour blotches (the stains diffusion
    leaves on flat backgrounds) and pixel noise, each of random strength per image."""
    b = x.shape[0]
    u = lambda *shape: torch.rand(*shape, generator=g)  # noqa: E731
    angle = (u(b) * 2 - 1) * math.radians(12)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), padding_mode="border",
                      align_corners=False)
    sigma = u(b) * 1.2 + 1e-3
    k = torch.arange(-3, 4, dtype=torch.float32)
    w = torch.exp(-k[None] ** 2 / (2 * sigma[:, None] ** 2))
    w = w / w.sum(1, keepdim=True)  # [B, 7]
    x = F.pad(x, (3, 3, 3, 3), mode="replicate").reshape(1, -1, 38, 38)
    wc = w.repeat_interleave(3, 0)  # one kernel per (image, channel)
    x = F.conv2d(x, wc[:, None, None, :], groups=3 * b)
    x = F.conv2d(x, wc[:, None, :, None], groups=3 * b).reshape(b, 3, 32, 32)
    blotch = F.interpolate(torch.randn(b, 3, 4, 4, generator=g), size=32, mode="bilinear", align_corners=False)
    x = x + blotch * u(b, 1, 1, 1) * 0.08 + torch.randn(x.shape, generator=g) * u(b, 1, 1, 1) * 0.04
    return x.clamp(0, 1)


class JudgeStage(L.LightningModule):
    def __init__(self, steps: int, batch: int, seed: int, lr: float = 1e-3, styles: float = 0.0):
        super().__init__()
        self.styles = styles
        import open_clip

        self.clip = open_clip.CLIP(**JUDGE)
        self.tokenize = open_clip.get_tokenizer("ViT-B-32", context_length=JUDGE["text_cfg"]["context_length"])
        self.steps, self.batch, self.lr = steps, batch, lr
        self.rng = random.Random(seed + 2)
        self.gen = torch.Generator().manual_seed(seed + 2)

    def training_step(self, batch, _):
        caps, scenes, pos = _pairs(self.rng, self.batch, self.styles)
        x = world.render(scenes, rng=self.rng)
        x = torch.cat([x[: len(x) // 4], degrade(x[len(x) // 4:], self.gen)]).to(self.device)  # a quarter stays clean
        mean = torch.tensor((0.48145466, 0.4578275, 0.40821073), device=x.device)[:, None, None]
        std = torch.tensor((0.26862954, 0.26130258, 0.27577711), device=x.device)[:, None, None]
        img = F.normalize(self.clip.encode_image((x - mean) / std), dim=-1)
        txt = F.normalize(self.clip.encode_text(self.tokenize(caps).to(self.device)), dim=-1)
        logits = self.clip.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss = _multi_positive_clip_loss(logits, pos.to(self.device))
        self.log("clip", loss, prog_bar=True)
        return loss

    def train_dataloader(self):
        return DataLoader(range(self.steps), batch_size=1)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.clip.parameters(), lr=self.lr, weight_decay=0.05)
        return [opt], [{"scheduler": _cosine(opt, 100, self.steps), "interval": "step"}]


def _trainer(steps: int, accelerator: str) -> L.Trainer:
    return L.Trainer(max_steps=steps, max_epochs=-1, accelerator=accelerator, devices=1, logger=False,
                     enable_checkpointing=False, enable_model_summary=False, gradient_clip_val=1.0,
                     log_every_n_steps=50)


def train_mmdit(out: Path, caps: list[str], imgs: torch.Tensor, tok, a) -> dict:
    """The toy MMDiT on the text encoder and VAE of the SD-1 toy: written as a ``FluxPipeline`` folder
    ``out/pipeline_mmdit`` whose two text encoders (CLIP-L's role: the pooled EOS state; T5's role: the sequence) are
    both the toy encoder, and whose VAE carries FLUX's latent ``shift_factor``/``scaling_factor`` measured on the data."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel

    from ..tiny import FLUX_SCHEDULER
    from ..tokenizer import clip_tokenizer

    src = lambda stage, comp: out / stage if (out / stage).is_dir() else out / "pipeline" / comp  # noqa: E731
    vae = AutoencoderKL.from_pretrained(src("stage_vae", "vae"), torch_dtype=torch.float32).eval()
    text = CLIPTextModel.from_pretrained(src("stage_text", "text_encoder"), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        z = torch.cat([vae.encode(imgs[i:i + 512].float() / 127.5 - 1).latent_dist.mean for i in range(0, len(imgs), 512)])
    shift = float(z.mean())
    scale = float(1 / (z - shift).std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    z = (z - shift) * scale
    uniq = sorted(set(caps) | {""})
    where = {c: i for i, c in enumerate(uniq)}
    context, pad, pooled = encode_captions(text, tok, uniq, length=MMDIT_TEXT_LENGTH, pooled=True)
    idx = torch.tensor([where[c] for c in caps])
    L.seed_everything(a.seed + 3, workers=True)
    stage = MMDiTStage(context, pad, context[where[""]], pooled, pooled[where[""]], a.mmdit_steps)
    _trainer(a.mmdit_steps, a.accelerator).fit(stage, DataLoader(TensorDataset(z, idx), batch_size=a.batch,
                                                                shuffle=True, drop_last=True))
    tok2 = clip_tokenizer()
    tok2.model_max_length = MMDIT_TEXT_LENGTH  # the loader reads the sequence length from the T5-role tokenizer
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae, text_encoder=text,
                        tokenizer=tok, text_encoder_2=text, tokenizer_2=tok2, transformer=stage.transformer.eval())
    pipe.to(torch.float16).save_pretrained(out / "pipeline_mmdit")
    return {"seed": a.seed, "steps": a.mmdit_steps, "batch": a.batch, "n": a.n, "styles": a.styles,
            "pooled_dropout": stage.pooled_dropout, "shift_factor": shift, "scaling_factor": scale, "final_flow_loss": float(stage.trainer.callback_metrics["flow"])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "weights"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=60000, help="pre-rendered (caption, image) pairs")
    p.add_argument("--text_steps", type=int, default=1500)
    p.add_argument("--vae_steps", type=int, default=2500)
    p.add_argument("--t2i_steps", type=int, default=4500)
    p.add_argument("--judge_steps", type=int, default=3000)
    p.add_argument("--mmdit_steps", type=int, default=4000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--stages", default="text,vae,t2i,judge",
                   help="comma-separated; `mmdit` trains the toy MMDiT (toy-mmdit) on the text encoder and VAE of a "
                        "finished run (stage_text/ and stage_vae/, else the shipped pipeline/)")
    p.add_argument("--styles", type=float, default=0.35,
                   help="fraction of captions that name a style (0 and --vae_steps 800: the v3 world, which drew none)")
    a = p.parse_args(argv)
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from ..tiny import SD_SCHEDULER
    from ..tokenizer import clip_tokenizer

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(a.seed, workers=True)
    stages, log = a.stages.split(","), {"seed": a.seed, "args": vars(a)}
    if "vae" in stages or "t2i" in stages or "mmdit" in stages:  # the judge renders its own batches
        t0 = time.time()
        caps, imgs = make_data(a.n, a.seed, a.styles)
        log["data_s"] = time.time() - t0
    tok = clip_tokenizer()
    pipe_dir = out / "pipeline"

    if "text" in stages:
        t0 = time.time()
        L.seed_everything(a.seed + 1, workers=True)
        text_stage = TextStage(tok, a.text_steps, 256, a.seed, styles=a.styles)
        _trainer(a.text_steps, a.accelerator).fit(text_stage)
        text_stage.text.save_pretrained(out / "stage_text")
        log["text_s"] = time.time() - t0
    if "vae" in stages:
        t0 = time.time()
        L.seed_everything(a.seed, workers=True)
        vae_stage = VAEStage(a.vae_steps)
        _trainer(a.vae_steps, a.accelerator).fit(vae_stage, DataLoader(TensorDataset(imgs), batch_size=64,
                                                                      shuffle=True, drop_last=True))
        vae = vae_stage.vae.eval()
        with torch.no_grad():
            z = torch.cat([vae.encode(imgs[i:i + 512].float() / 127.5 - 1).latent_dist.mean for i in range(0, len(imgs), 512)])
        vae.register_to_config(scaling_factor=float(1 / z.std()))
        (out / "stage_vae").mkdir(exist_ok=True)
        vae.save_pretrained(out / "stage_vae")
        torch.save(z, out / "stage_vae" / "latents.pt")
        log["vae_s"] = time.time() - t0
    if "t2i" in stages:
        from diffusers import AutoencoderKL
        from transformers import CLIPTextModel

        t0 = time.time()
        vae = AutoencoderKL.from_pretrained(out / "stage_vae")
        text = CLIPTextModel.from_pretrained(out / "stage_text").eval()
        z = torch.load(out / "stage_vae" / "latents.pt") * vae.config.scaling_factor
        uniq = sorted(set(caps) | {""})
        where = {c: i for i, c in enumerate(uniq)}
        context, pad = encode_captions(text, tok, uniq)
        idx = torch.tensor([where[c] for c in caps])
        L.seed_everything(a.seed, workers=True)
        stage = T2IStage(context, pad, context[where[""]], a.t2i_steps, SD_SCHEDULER)
        _trainer(a.t2i_steps, a.accelerator).fit(stage, DataLoader(TensorDataset(z, idx), batch_size=a.batch,
                                                                  shuffle=True, drop_last=True))
        pipe = StableDiffusionPipeline(unet=stage.unet.eval(), vae=vae, text_encoder=text, tokenizer=tok,
                                       scheduler=PNDMScheduler.from_config(SD_SCHEDULER), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.to(torch.float16).save_pretrained(pipe_dir)
        log["t2i_s"] = time.time() - t0
    if "mmdit" in stages:
        t0 = time.time()
        log["mmdit"] = train_mmdit(out, caps, imgs, tok, a)
        log["mmdit"]["mmdit_s"] = time.time() - t0
    if "judge" in stages:
        from safetensors.torch import save_file

        t0 = time.time()
        L.seed_everything(a.seed + 2, workers=True)  # the judge is the same whether or not the other stages ran
        judge = JudgeStage(a.judge_steps, 256, a.seed, styles=a.styles)
        _trainer(a.judge_steps, a.accelerator).fit(judge)
        jdir = out / "judge"
        jdir.mkdir(exist_ok=True)
        cfg = {"model_cfg": JUDGE, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                     "std": [0.26862954, 0.26130258, 0.27577711],
                                                     "interpolation": "bicubic", "resize_mode": "shortest"}}
        (jdir / "open_clip_config.json").write_text(json.dumps(cfg, indent=1))
        save_file({k: v.half().contiguous() for k, v in judge.clip.state_dict().items()}, str(jdir / "open_clip_model.safetensors"))
        log["judge_s"] = time.time() - t0
    if set(stages) == {"mmdit"}:  # the SD-1 stages' record stays as it is
        log = {"mmdit": {**log["mmdit"], "data_s": log["data_s"]}}
    prev = json.loads((out / "train_log.json").read_text()) if (out / "train_log.json").exists() else {}
    (out / "train_log.json").write_text(json.dumps({**prev, **log}, indent=1))
    print(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
