"""Train the toy world: a tiny SD-1-layout text-to-image model and a tiny open_clip judge.

    python -m edit_bench.models.toy.train --out edit_bench/models/toy/weights --seed 0

Three Lightning stages, all from one seed: (1) an ``AutoencoderKL`` 32x32x3 -> 8x8x4; (2) a
``CLIPTextModel`` and an SD-1-layout ``UNet2DConditionModel`` (16 cross-attention sites with the real
names) trained jointly with the epsilon objective on the VAE latents, with SD's scheduler; (3) an
open_clip ``CLIP`` judge trained contrastively, every caption that is true of an image a positive
(``world.constraints``: unnamed colour and texture mean the defaults, unnamed size and background are free).
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
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, sample_size=32, layers_per_block=1,
           block_out_channels=(16, 32, 64), norm_num_groups=8,
           down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
JUDGE = dict(embed_dim=64,
             vision_cfg=dict(image_size=32, patch_size=4, width=64, layers=3, head_width=32),
             text_cfg=dict(context_length=77, vocab_size=49408, width=32, heads=4, layers=3))


def make_data(n: int, seed: int):
    """``n`` (caption, image) pairs of the training distribution: images uint8 ``[n, 3, 32, 32]``."""
    rng = random.Random(seed)
    caps = [world.random_caption(rng) for _ in range(n)]
    scenes = [world.parse(c) if c else world.random_scene(rng) for c in caps]
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


class T2IStage(L.LightningModule):
    def __init__(self, tokenizer, steps: int, scheduler_config: dict, lr: float = 5e-4):
        super().__init__()
        from diffusers import DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        self.tok = tokenizer
        self.text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, **TEXT,
                                                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                 pad_token_id=tokenizer.pad_token_id))
        self.unet = UNet2DConditionModel(**UNET)
        self.noise = DDPMScheduler.from_config(scheduler_config)
        self.steps, self.lr = steps, lr

    def training_step(self, batch, _):
        z, ids = batch
        ctx = self.text(ids)[0]
        t = torch.randint(0, self.noise.config.num_train_timesteps, (z.shape[0],), device=z.device)
        eps = torch.randn_like(z)
        pred = self.unet(self.noise.add_noise(z, eps, t), t, encoder_hidden_states=ctx).sample
        loss = F.mse_loss(pred, eps)
        self.log("eps", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(list(self.text.parameters()) + list(self.unet.parameters()), lr=self.lr, weight_decay=0.01)
        return [opt], [{"scheduler": _cosine(opt, 200, self.steps), "interval": "step"}]


class JudgeStage(L.LightningModule):
    def __init__(self, steps: int, batch: int, seed: int, lr: float = 1e-3):
        super().__init__()
        import open_clip

        self.clip = open_clip.CLIP(**JUDGE)
        self.tokenize = open_clip.get_tokenizer("ViT-B-32")
        self.steps, self.batch, self.lr = steps, batch, lr
        self.rng = random.Random(seed + 2)

    def training_step(self, batch, _):
        caps = []
        while len(caps) < self.batch:
            c = world.random_caption(self.rng)
            if c:
                caps.append(c)
        scenes = [world.scene_for(c, self.rng) for c in caps]
        x = world.render(scenes, rng=self.rng).to(self.device)
        x = (x + 0.03 * torch.randn_like(x)).clamp(0, 1)  # robustness to generated images
        mean = torch.tensor((0.48145466, 0.4578275, 0.40821073), device=x.device)[:, None, None]
        std = torch.tensor((0.26862954, 0.26130258, 0.27577711), device=x.device)[:, None, None]
        img = F.normalize(self.clip.encode_image((x - mean) / std), dim=-1)
        txt = F.normalize(self.clip.encode_text(self.tokenize(caps).to(self.device)), dim=-1)
        # image i and caption j are a positive pair when the caption is true of the scene
        cons = [world.constraints(c) for c in caps]
        pos = torch.tensor([[world.matches(c, s) for c in cons] for s in scenes], dtype=torch.float32, device=x.device)
        logits = self.clip.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss = 0.5 * (torch.sum(-pos / pos.sum(1, keepdim=True) * logits.log_softmax(1), 1).mean()
                      + torch.sum(-pos / pos.sum(0, keepdim=True) * logits.log_softmax(0), 0).mean())
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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(Path(__file__).parent / "weights"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n", type=int, default=60000, help="pre-rendered (caption, image) pairs")
    p.add_argument("--vae_steps", type=int, default=800)
    p.add_argument("--t2i_steps", type=int, default=3000)
    p.add_argument("--judge_steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--stages", default="vae,t2i,judge")
    a = p.parse_args(argv)
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from ..tiny import SD_SCHEDULER
    from ..tokenizer import clip_tokenizer

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(a.seed, workers=True)
    stages, log = a.stages.split(","), {"seed": a.seed, "args": vars(a)}
    if "vae" in stages or "t2i" in stages:  # the judge renders its own batches
        t0 = time.time()
        caps, imgs = make_data(a.n, a.seed)
        log["data_s"] = time.time() - t0
    tok = clip_tokenizer()
    pipe_dir = out / "pipeline"

    if "vae" in stages:
        t0 = time.time()
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

        t0 = time.time()
        vae = AutoencoderKL.from_pretrained(out / "stage_vae")
        z = torch.load(out / "stage_vae" / "latents.pt") * vae.config.scaling_factor
        ids = tok(caps, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        stage = T2IStage(tok, a.t2i_steps, SD_SCHEDULER)
        _trainer(a.t2i_steps, a.accelerator).fit(stage, DataLoader(TensorDataset(z, ids), batch_size=a.batch,
                                                                  shuffle=True, drop_last=True))
        pipe = StableDiffusionPipeline(unet=stage.unet.eval(), vae=vae, text_encoder=stage.text.eval(), tokenizer=tok,
                                       scheduler=PNDMScheduler.from_config(SD_SCHEDULER), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.to(torch.float16).save_pretrained(pipe_dir)
        log["t2i_s"] = time.time() - t0
    if "judge" in stages:
        from safetensors.torch import save_file

        t0 = time.time()
        L.seed_everything(a.seed + 2, workers=True)  # the judge is the same whether or not the other stages ran
        judge = JudgeStage(a.judge_steps, 256, a.seed)
        _trainer(a.judge_steps, a.accelerator).fit(judge)
        jdir = out / "judge"
        jdir.mkdir(exist_ok=True)
        cfg = {"model_cfg": JUDGE, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                     "std": [0.26862954, 0.26130258, 0.27577711],
                                                     "interpolation": "bicubic", "resize_mode": "shortest"}}
        (jdir / "open_clip_config.json").write_text(json.dumps(cfg, indent=1))
        save_file({k: v.half().contiguous() for k, v in judge.clip.state_dict().items()}, str(jdir / "open_clip_model.safetensors"))
        log["judge_s"] = time.time() - t0
    prev = json.loads((out / "train_log.json").read_text()) if (out / "train_log.json").exists() else {}
    (out / "train_log.json").write_text(json.dumps({**prev, **log}, indent=1))
    print(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
