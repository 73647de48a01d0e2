"""`MMDiTModel`: SD3 / SD3.5 and FLUX.1 (joint text-image attention, flow matching) behind `T2IModel`'s interface.

What differs from the UNet families, and where each piece follows diffusers' pipelines
(`StableDiffusion3Pipeline`, `FluxPipeline`) so that :meth:`MMDiTModel.generate` equals them:

- text: SD3 conditions on both CLIPs' penultimate states (concatenated, zero-padded to T5's width) followed by
  T5's sequence (256 tokens), pooled = both CLIPs' projected EOS states; FLUX on T5's sequence (512 tokens), pooled
  = CLIP-L's EOS state. A missing T5 (SD3 allows it) conditions on zeros, as the pipeline does.
- sampling: the flow-matching Euler scheduler (``flow_euler``; the only one these models run). SD3 applies
  classifier-free guidance with the empty prompt; FLUX-dev feeds the guidance value to its guidance embedding
  (no second forward); a FLUX without one (schnell's layout, the toy MMDiT) takes it as FluxPipeline's
  ``true_cfg_scale`` with the empty negative prompt (``guidance`` 1 or less: the conditional prediction alone). FLUX's image-sequence-length shift (``mu``) is the pipeline's.
- latents are kept as images ``[B, C, h, w]``; FLUX's 2x2 packing happens inside :meth:`noise_prediction`.

The editable sites (``context_embedder``, the joint attention's text projections ``add_k_proj``/``add_v_proj``)
belong to the editors' MMDiT forms; an editor that reaches for a UNet gets one line saying this model has none.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UsageError
from .adapter import Conditioning, T2IModel

FLOW = "flow_euler"  # the scheduler name of FlowMatchEulerDiscreteScheduler in a benchmark's sampler
T5_LENGTH = {"sd3": 256, "flux": 512}  # the pipelines' default max_sequence_length
# The editable text sites, by role (the same module paths in SD3's and FLUX's transformers): where the text enters the
# transformer (the sequence's ``context_embedder``, the pooled embedding's projection) and the joint attention's
# text-stream projections of every double-stream block (FLUX's single-stream blocks have none).
TEXT_INPUTS = {"sequence": "context_embedder", "pooled": "time_text_embed.text_embedder.linear_1"}
TEXT_PROJECTIONS = {"q": "add_q_proj", "k": "add_k_proj", "v": "add_v_proj", "out": "to_add_out"}


def _calculate_shift(seq_len: int, cfg: dict) -> float:
    """FLUX's (and dynamically shifted SD3.5's) ``mu``: linear in the image sequence length between the
    scheduler config's base and max (``pipeline_flux.calculate_shift``)."""
    base, top = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    lo, hi = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    m = (hi - lo) / (top - base)
    return seq_len * m + (lo - m * base)


class MMDiTModel(T2IModel):
    """An SD3 or FLUX model seen through the operations editors need (see the module docstring).

    ``text_encoder`` is CLIP-L in both families; ``text_encoder_2`` is CLIP-G (SD3) or T5 (FLUX);
    ``text_encoder_3`` is SD3's T5 (``None`` when the model is used without it).
    """

    def __init__(self, components: dict, spec: str):
        nn.Module.__init__(self)
        self.spec = spec
        self.identity = {"spec": spec, "id": None}
        self.transformer = components["transformer"]
        self.vae = components["vae"]
        self.text_encoder = components["text_encoder"]
        self.text_encoder_2 = components.get("text_encoder_2")
        self.text_encoder_3 = components.get("text_encoder_3")
        self.tokenizers = [components[k] for k in ("tokenizer", "tokenizer_2", "tokenizer_3") if components.get(k) is not None]
        self.scheduler_config = dict(components["scheduler"])
        self.scheduler_class = components.get("scheduler_class")
        self.force_zeros_for_empty_prompt = False
        self.family = self.detect_family()
        _, t5_tok = self._t5()
        # the pipelines' default sequence length, or the T5-role tokenizer's own limit where that is shorter (the toy
        # MMDiT's encoder has 32 positions)
        limit = int(getattr(t5_tok, "model_max_length", 0) or 0) if t5_tok is not None else 0
        default = min(T5_LENGTH[self.family], limit) if 0 < limit else T5_LENGTH[self.family]
        self.t5_length = int(components.get("max_sequence_length") or default)
        self.requires_grad_(False)

    # ----------------------------------------------------------------- structure
    def detect_family(self) -> str:
        """``sd3`` or ``flux``, read from the transformer's config (never from a name)."""
        cfg = self.transformer.config
        if "axes_dims_rope" in cfg:
            if self.text_encoder_2 is None:
                raise UsageError("a FLUX transformer needs its T5 text encoder (text_encoder_2): the folder lacks it; "
                                 "download the model's text_encoder_2/ and tokenizer_2/ beside transformer/")
            return "flux"
        if "caption_projection_dim" in cfg and "pooled_projection_dim" in cfg:
            if self.text_encoder_2 is None:
                raise UsageError("an SD3 transformer needs both CLIP text encoders (text_encoder, text_encoder_2): "
                                 "the folder lacks text_encoder_2/")
            return "sd3"
        raise UsageError(f"unsupported transformer {type(self.transformer).__name__}: edit_bench runs SD3/SD3.5 "
                         "(SD3Transformer2DModel) and FLUX.1 (FluxTransformer2DModel) transformers")

    @property
    def unet(self):
        raise UsageError(f"this {self.family} model is an MMDiT and has no UNet: the method needs its MMDiT form "
                         "(editors with one: see the README's model table); use an SD-1/2/XL model for this one")

    @property
    def denoiser(self) -> nn.Module:
        return self.transformer

    denoiser_prefix = "transformer."

    def parameter_set(self, name: str) -> dict[str, nn.Parameter]:
        from .parameter_sets import mmdit_parameter_set

        return mmdit_parameter_set(self, name)

    def attention_probabilities(self, select=None):
        raise UsageError(f"attention probabilities are read from cross-attention; this {self.family} model has joint "
                         "attention (no recording processor for it yet)")

    @property
    def context_dim(self) -> int:
        return int(self.transformer.config.joint_attention_dim)

    @property
    def native_size(self) -> int:
        """SD3: the transformer's latent side times the VAE's factor (1024); FLUX's transformer has no size: its VAE's."""
        if self.family == "flux":
            return int(self.vae.config.sample_size)
        return int(self.transformer.config.sample_size) * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def guidance_embeds(self) -> bool:
        """FLUX-dev's distilled guidance (a guidance embedding instead of a second, unconditional forward)."""
        return bool(self.transformer.config.get("guidance_embeds", False))

    def text_encoders(self) -> list[tuple[str, nn.Module]]:
        return [(k, m) for k in ("text_encoder", "text_encoder_2", "text_encoder_3") if (m := getattr(self, k)) is not None]

    def _t5(self) -> tuple[nn.Module | None, object | None]:
        """(T5 encoder, its tokenizer): FLUX's second encoder, SD3's third."""
        i = 1 if self.family == "flux" else 2
        enc = self.text_encoder_2 if self.family == "flux" else self.text_encoder_3
        return enc, (self.tokenizers[i] if len(self.tokenizers) > i else None)

    def text_inputs(self, roles=("sequence", "pooled")) -> dict[str, nn.Linear]:
        """The transformer's text input projections by full name (``transformer.context_embedder``, ...), for
        ``roles`` among ``sequence`` (the token states, ``context``) and ``pooled`` (the pooled embedding, added to the
        timestep's)."""
        bad = [r for r in roles if r not in TEXT_INPUTS]
        if bad:
            raise UsageError(f"no text input {bad[0]!r} on a {self.family} transformer: use {' or '.join(TEXT_INPUTS)}")
        return {f"transformer.{TEXT_INPUTS[r]}": self.transformer.get_submodule(TEXT_INPUTS[r]) for r in roles}

    def joint_text_projections(self, roles=tuple(TEXT_PROJECTIONS)) -> dict[str, nn.Module]:
        """The joint attention's text-stream projections by full name (``transformer.transformer_blocks.0.attn.add_k_proj``,
        ...), for ``roles`` among ``q``, ``k``, ``v`` (the text's query/key/value in the joint attention: what
        cross-attention's ``to_q``/``to_k``/``to_v`` of the text are) and ``out`` (the text stream's output)."""
        bad = [r for r in roles if r not in TEXT_PROJECTIONS]
        if bad:
            raise UsageError(f"no joint-attention text projection {bad[0]!r} on a {self.family} transformer: "
                             f"use {', '.join(TEXT_PROJECTIONS)}")
        leaves = {TEXT_PROJECTIONS[r] for r in roles}
        return {f"transformer.{n}": m for n, m in self.transformer.named_modules()
                if ".attn." in f".{n}." and n.rsplit(".", 1)[-1] in leaves}

    def cross_attn(self, select=None):
        raise UsageError(f"this {self.family} model has joint attention, not cross-attention sites: the editor needs "
                         "its MMDiT form (the joint attention's text projections add_k_proj/add_v_proj)")

    def unet_components(self):
        raise UsageError(f"tracing reads a UNet's components; this {self.family} model is an MMDiT")

    def get_parameter(self, name: str) -> nn.Parameter:
        comp, _, rest = name.partition(".")
        names = [k for k, _ in self.text_encoders()] + ["transformer", "vae"]
        if comp not in names:
            raise UsageError(f"no component {comp!r} in {name!r}: names start with {', '.join(n + '.' for n in names)}")
        try:
            return getattr(self, comp).get_parameter(rest)
        except AttributeError as e:
            raise UsageError(f"this {self.family} model has no parameter {name!r}") from e

    # ----------------------------------------------------------------- text
    def _clip(self, index: int, prompts: list[str]):
        enc = (self.text_encoder, self.text_encoder_2)[index]
        return enc(self.tokenize(prompts, index).to(self.device), output_hidden_states=True)

    def _t5_states(self, prompts: list[str]) -> Tensor:
        enc, tok = self._t5()
        if enc is None:  # SD3 without T5: zeros where its sequence would be (StableDiffusion3Pipeline)
            return torch.zeros(len(prompts), self.t5_length, self.context_dim, device=self.device, dtype=self.dtype)
        ids = tok(list(prompts), padding="max_length", max_length=self.t5_length, truncation=True,
                  add_special_tokens=True, return_tensors="pt").input_ids
        return enc(ids.to(self.device))[0]

    def condition(self, prompts: list[str], longest: bool = False) -> Conditioning:
        """The conditioning of ``prompts``: ``context`` is the token sequence the transformer's
        ``context_embedder`` reads, ``pooled`` what its pooled projection reads (see the module docstring)."""
        if self.family == "flux":
            pooled = self._clip(0, prompts).pooler_output
            return Conditioning(self._t5_states(prompts), pooled)
        out1, out2 = self._clip(0, prompts), self._clip(1, prompts)
        clip = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        t5 = self._t5_states(prompts)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return Conditioning(torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat([out1[0], out2[0]], dim=-1))

    def last_token_positions(self, prompt: str) -> list[int]:
        """Where a prompt's last token sits in ``context``, as UCE's and OCE's FLUX code reads it: the T5 tokenizer's
        ``attention_mask.sum() - 2`` (the token before EOS; for ``""`` that is -1: the last padding position, as
        theirs). SD3's context is CLIP's 77 positions then T5's: both of its last tokens."""
        def last(tok, length):
            mask = tok([prompt], padding="max_length", max_length=length, truncation=True, return_tensors="pt").attention_mask
            return int(mask.sum()) - 2

        _, t5_tok = self._t5()
        if self.family == "flux":
            return [last(t5_tok, self.t5_length) % self.t5_length]
        clip_len = int(self.tokenizers[0].model_max_length)
        t5 = [clip_len + last(t5_tok, self.t5_length) % self.t5_length] if t5_tok is not None else []
        return [last(self.tokenizers[0], clip_len) % clip_len] + t5

    def context_token_mask(self, prompts: list[str]) -> Tensor:
        """``[B, L]`` bool: the positions of ``context`` that hold a prompt's tokens (each tokenizer's attention mask,
        EOS included, padding not): the positions a corpus prior such as OCE's ``K0`` averages over."""
        _, t5_tok = self._t5()

        def mask(tok, length):
            return tok(list(prompts), padding="max_length", max_length=length, truncation=True,
                       return_tensors="pt").attention_mask.bool()

        t5 = mask(t5_tok, self.t5_length) if t5_tok is not None else torch.zeros(len(prompts), self.t5_length, dtype=torch.bool)
        if self.family == "flux":
            return t5
        return torch.cat([mask(self.tokenizers[0], int(self.tokenizers[0].model_max_length)), t5], dim=1)

    def condition_ids(self, ids, where=None, vectors=None):
        raise UsageError(f"token-level conditioning (attacks) supports one text encoder (SD-1/2), not {self.family}'s")

    def unconditional(self, n: int) -> Conditioning:
        c = self.condition([""])
        return Conditioning(c.context.expand(n, -1, -1), c.pooled.expand(n, -1))

    # ----------------------------------------------------------------- images
    def size_multiple(self) -> int:
        patch = int(self.transformer.config.patch_size)
        return self.vae_scale_factor * patch * (2 if self.family == "flux" else 1)  # FLUX packs 2x2 latents

    def check_sampler(self, sampler) -> None:
        if sampler.scheduler != FLOW:
            raise UsageError(f"scheduler {sampler.scheduler!r} is not one a {self.family} model runs: "
                             f"use {FLOW} (flow matching, the model's own)")
        super().check_sampler(sampler)

    @property
    def default_scheduler(self) -> str:
        return FLOW

    def make_scheduler(self, name: str):
        if name != FLOW:
            raise UsageError(f"scheduler {name!r} is not one a {self.family} model runs: use {FLOW}")
        return super().make_scheduler(name)

    def set_timesteps(self, sched, steps: int, h: int, device=None) -> None:
        """The pipeline's schedule: FLUX's sigmas ``linspace(1, 1/steps)`` with ``mu`` from the image sequence
        length; SD3's ``steps`` with the config's shift (and ``mu`` where it shifts dynamically)."""
        cfg = self.scheduler_config
        if self.family == "flux":
            seq = (h // 2) ** 2
            sigmas = None if cfg.get("use_flow_sigmas") else np.linspace(1.0, 1 / steps, steps)
            sched.set_timesteps(sigmas=sigmas, device=device, mu=_calculate_shift(seq, cfg))
            sched.set_begin_index(0)
        else:
            kw = {}
            if cfg.get("use_dynamic_shifting"):
                patch = int(self.transformer.config.patch_size)
                kw["mu"] = _calculate_shift((h // patch) ** 2, {"max_shift": 1.16, **cfg})
            sched.set_timesteps(steps, device=device, **kw)

    def fast_path(self, channels_last: bool = False, compile: str | None = None) -> dict:
        if compile and getattr(self.transformer, "_compiled_call_impl", None) is None:
            self.transformer.compile(backend=compile)
        return {"channels_last": False, "compile": compile, "attention": self.attention_processors()}

    def attention_processors(self) -> list[str]:
        return sorted({type(p).__name__ for p in self.transformer.attn_processors.values()})

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        return {"text": [m for _, m in self.text_encoders()], "denoiser": [self.transformer], "decode": [self.vae.decoder]}

    def diffusers_pipeline(self, scheduler: str = FLOW):
        """diffusers' own pipeline on this model's components (nothing copied)."""
        from diffusers import FluxPipeline, StableDiffusion3Pipeline

        sched = self.make_scheduler(scheduler)
        if self.family == "flux":
            return FluxPipeline(scheduler=sched, vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizers[0],
                                text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizers[1], transformer=self.transformer)
        return StableDiffusion3Pipeline(transformer=self.transformer, scheduler=sched, vae=self.vae,
                                        text_encoder=self.text_encoder, tokenizer=self.tokenizers[0],
                                        text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizers[1],
                                        text_encoder_3=self.text_encoder_3,
                                        tokenizer_3=self.tokenizers[2] if len(self.tokenizers) > 2 else None)

    def latent_shape(self, size: int) -> tuple[int, int]:
        """(channels, side) of the image latents the transformer denoises at image side ``size``."""
        c = int(self.transformer.config.in_channels) // (4 if self.family == "flux" else 1)
        return c, size // self.vae_scale_factor

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], sampler, conditioning: Conditioning | None = None) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1]; each sample's noise from its own ``torch.Generator("cpu")``, as in
        :meth:`T2IModel.generate`. SD3 and a FLUX without guidance embedding: batched classifier-free guidance where
        ``guidance > 1``; FLUX-dev: the guidance value goes to the guidance embedding and there is one forward per step."""
        if len(prompts) != len(seeds):
            raise UsageError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        self.check_sampler(sampler)
        n, size = len(seeds), sampler.size or self.native_size
        c, h = self.latent_shape(size)
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        latents = torch.stack([torch.randn((c, h, h), generator=g, dtype=torch.float32) for g in gens]).to(self.device)
        sched = self.make_scheduler(sampler.scheduler)
        self.set_timesteps(sched, sampler.steps, h, self.device)
        cond = conditioning if conditioning is not None else self.condition_batch(prompts)
        cfg = self.true_cfg and sampler.guidance > 1
        both = Conditioning.cat([self.unconditional(n), cond]) if cfg else cond
        for t in sched.timesteps:
            x = torch.cat([latents, latents]) if cfg else latents
            v = self.noise_prediction(x, t, both, size, guidance=sampler.guidance)
            if cfg:
                v_u, v_c = v.float().chunk(2)
                v = v_u + sampler.guidance * (v_c - v_u)
            latents = sched.step(v.float(), t, latents).prev_sample
        return self.decode(latents)

    @property
    def true_cfg(self) -> bool:
        """Whether ``guidance`` is classifier-free guidance with the empty prompt (SD3; a FLUX without a guidance
        embedding, where it is FluxPipeline's ``true_cfg_scale`` with ``negative_prompt=""``) rather than the value fed
        to FLUX-dev's guidance embedding."""
        return self.family == "sd3" or not self.guidance_embeds

    def guided_prediction(self, x, t, cond, uncond, guidance, size=None, denoiser_parameters=None):
        """SD3 and a FLUX without guidance embedding: classifier-free guidance; FLUX-dev: one forward with ``guidance``
        in the guidance embedding."""
        if self.true_cfg:
            return super().guided_prediction(x, t, cond, uncond, guidance, size, denoiser_parameters)
        return self.noise_prediction(x, t, cond, size, denoiser_parameters, guidance=guidance).float()

    @staticmethod
    def _pack(x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def _image_ids(h: int, w: int) -> Tensor:
        """FLUX's RoPE position ids ``[h/2 * w/2, 3]`` of packed latents ``h x w``: (0, row, column) per token."""
        ids = torch.zeros(h // 2, w // 2, 3)
        ids[..., 1] += torch.arange(h // 2)[:, None]
        ids[..., 2] += torch.arange(w // 2)[None, :]
        return ids.reshape(-1, 3)

    @staticmethod
    def _unpack(x: Tensor, h: int, w: int) -> Tensor:
        b, _, c4 = x.shape
        return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)

    def noise_prediction(self, x: Tensor, t, cond: Conditioning, size: int | None = None,
                         denoiser_parameters: dict[str, Tensor] | None = None, guidance: float | None = None) -> Tensor:
        """The transformer's prediction (the flow's velocity) ``[B, C, h, w]`` for latents ``x`` at scheduler
        timestep ``t`` (0..1000) under ``cond``; ``guidance``: FLUX-dev's guidance value (its pipeline's default
        3.5 where ``None``); ``denoiser_parameters``: tensors by transformer parameter name replacing the module's own
        for this call."""
        b = x.shape[0]
        x = x.to(self.dtype)
        t = torch.as_tensor(t, device=x.device)
        ctx, pooled = cond.context.to(self.dtype), cond.pooled.to(self.dtype)
        if self.family == "flux":
            _, _, h, w = x.shape
            g = torch.full([b], 3.5 if guidance is None else float(guidance), device=x.device, dtype=torch.float32)
            kwargs = dict(hidden_states=self._pack(x), timestep=t.expand(b).to(x.dtype) / 1000,
                          guidance=g if self.guidance_embeds else None, pooled_projections=pooled,
                          encoder_hidden_states=ctx, txt_ids=torch.zeros(ctx.shape[1], 3, device=x.device, dtype=x.dtype),
                          img_ids=self._image_ids(h, w).to(x.device, x.dtype), return_dict=False)
        else:
            kwargs = dict(hidden_states=x, timestep=t.expand(b), encoder_hidden_states=ctx, pooled_projections=pooled,
                          return_dict=False)
        if denoiser_parameters is None:
            out = self.transformer(**kwargs)[0]
        else:
            out = torch.func.functional_call(self.transformer, denoiser_parameters, (), kwargs, strict=False)[0]
        return self._unpack(out, h, w) if self.family == "flux" else out

