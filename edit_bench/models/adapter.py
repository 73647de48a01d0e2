"""`T2IModel`: the one place that knows diffusers module paths, layer order and conditioning.

Editors reach the network only through this adapter, for SD-1.x, SD-2.x and SDXL alike.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from ..errors import UsageError

# Scheduler names of a benchmark's sampler -> diffusers class names.
# cross-attention sites a published localisation names, by role and family (LocoGen §4 on SD-1: the authors'
# start_loc = 8, seq = 4 over the sorted "...attn2.to_k|to_v" names are these two transformers' k/v)
LOCALISED_SITES = {"locogen": {"sd1": ("up_blocks.1.attentions.1", "up_blocks.1.attentions.2")}}

SCHEDULERS = {
    "pndm": "PNDMScheduler",
    "ddim": "DDIMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "ddpm": "DDPMScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",  # flow matching: SD3 and FLUX only (models/mmdit.py)
}


@dataclass(frozen=True)
class CrossAttnSite:
    """One UNet cross-attention layer (``attn2``).

    Attributes:
        name: module path inside the UNet, e.g. ``"up_blocks.1.attentions.1.transformer_blocks.0.attn2"``.
        index: position in forward order (down -> mid -> up).
        attn: the whole attention module (``to_q``, ``to_k``, ``to_v``, ``to_out``): what ESD-x and
            Concept Ablation's ``cross-attn`` train.
    """

    name: str
    index: int
    attn: nn.Module

    @property
    def to_k(self) -> nn.Linear:
        """The key projection, ``Linear(d_context -> d_out)`` without bias."""
        return self.attn.to_k

    @property
    def to_v(self) -> nn.Linear:
        """The value projection, ``Linear(d_context -> d_out)`` without bias."""
        return self.attn.to_v

    def parameters(self) -> dict[str, nn.Parameter]:
        """Every parameter of the attention module, by full name (``unet.<name>.to_q.weight`` ...)."""
        return {f"unet.{self.name}.{n}": p for n, p in self.attn.named_parameters()}

    @property
    def param_names(self) -> tuple[str, str]:
        """Parameter names of ``to_k`` and ``to_v`` weights, as the adapter's ``get_parameter`` takes them."""
        return f"unet.{self.name}.to_k.weight", f"unet.{self.name}.to_v.weight"


@dataclass(frozen=True)
class TextLayer:
    """One transformer layer of a text encoder (``encoder`` is the text-encoder component name)."""

    name: str
    index: int
    encoder: str
    module: nn.Module

    @property
    def tokenizer_index(self) -> int:
        """Which tokenizer feeds this layer's encoder (SDXL: 1 for ``text_encoder_2``)."""
        return 0 if self.encoder == "text_encoder" else 1

    @property
    def attn_out(self) -> nn.Linear:
        """The self-attention output projection (``self_attn.out_proj``)."""
        return self.module.self_attn.out_proj

    @property
    def mlp_out(self) -> nn.Linear:
        """The MLP's second linear layer (``mlp.fc2``)."""
        return self.module.mlp.fc2

    def param_name(self, linear: nn.Linear) -> str:
        """The full parameter name of ``linear``'s weight, as ``T2IModel.get_parameter`` takes it."""
        rel = next(n for n, m in self.module.named_modules() if m is linear)
        return f"{self.name}.{rel}.weight"


@dataclass(frozen=True)
class UNetComponent:
    """One unit of the UNet that causal tracing restores: a ResNet block, or one transformer block's
    self-attention (``attn1``), cross-attention (``attn2``) or feed-forward (``ff``).

    Attributes:
        name: module path inside the UNet, e.g. ``"down_blocks.1.resnets.0"`` or
            ``"up_blocks.1.attentions.2.transformer_blocks.0.attn2"``.
        kind: ``"resnet"``, ``"attn1"``, ``"attn2"`` or ``"ff"``.
        index: position in forward order.
    """

    name: str
    kind: str
    index: int
    module: nn.Module


_COMPONENT = re.compile(r"^(?:(down_blocks)\.(\d+)|(mid_block)|(up_blocks)\.(\d+))\.(resnets|attentions)\.(\d+)"
                        r"(?:\.transformer_blocks\.(\d+)\.(attn1|attn2|ff))?$")
_KIND_ORDER = {"resnet": 0, "attn1": 1, "attn2": 2, "ff": 3}
COMPONENT_KINDS = tuple(_KIND_ORDER)  # a traced UNet component's kinds, in forward order within a block


def short_name(name: str) -> str:
    """A component's or text layer's full name shortened for a figure's labels (``up_blocks.1.attentions.2`` ->
    ``up1.a2``, ``text_encoder.text_model.encoder.layers.5`` -> ``L5``)."""
    return (name.replace("transformer_blocks.", "tb").replace("attentions.", "a").replace("resnets.", "r")
            .replace("down_blocks.", "down").replace("up_blocks.", "up").replace("mid_block", "mid")
            .replace("text_model.", "").replace("encoder.layers.", "L").replace("text_encoder_2.", "te2.")
            .replace("text_encoder.", "").replace(".transformer_blocks.0", "").replace("tb0.", ""))


def _component_order(name: str) -> tuple:
    """Forward order of a tracing component: down, mid, up blocks; inside a block resnet ``i`` runs before
    attention ``i`` (and, in the mid block, attention ``i`` before resnet ``i + 1``)."""
    m = _COMPONENT.match(name)
    part = 0 if m.group(1) else 1 if m.group(3) else 2
    block = int(m.group(2) or m.group(5) or 0)
    if m.group(6) == "resnets":
        return part, block, int(m.group(7)), -1, 0
    return part, block, int(m.group(7)), int(m.group(8)), _KIND_ORDER[m.group(9)]


@dataclass
class Conditioning:
    """What the UNet is conditioned on: ``context`` ``[B, 77, D]`` (what attn2 sees) and, for SDXL,
    the pooled text embedding ``[B, D_pool]``; ``ids``: the token ids ``[B, L]`` it was encoded from (SD-1/2; ``None``
    where token embeddings were replaced, or for the negative row), what a guide that reads the prompt's tokens needs."""

    context: Tensor
    pooled: Tensor | None = None
    ids: Tensor | None = None

    def __len__(self):
        return self.context.shape[0]

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        pooled = None if items[0].pooled is None else torch.cat([c.pooled for c in items])
        ids = torch.cat([c.ids for c in items]) if all(c.ids is not None for c in items) \
            and len({c.ids.shape[1] for c in items}) == 1 else None
        return Conditioning(torch.cat([c.context for c in items]), pooled, ids)


def _site_order(name: str) -> tuple:
    """Forward order of an attn2 module name: down blocks, then the mid block, then up blocks, each
    by their numeric indices (plain sorting breaks once an index reaches 10)."""
    part = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[name.split(".")[0]]
    return (part, *[int(x) for x in re.findall(r"\d+", name)])


class T2IModel(nn.Module):
    """A Stable Diffusion model (SD-1.x, SD-2.x or SDXL) seen through the operations editors need.

    Build it with :func:`edit_bench.models.load_t2i`. Components are submodules, so Lightning moves
    and casts them with the editor.
    """

    def __init__(self, components: dict, spec: str):
        super().__init__()
        self.spec = spec
        self.identity = {"spec": spec, "id": None}  # set by load_t2i: what the spec resolved to
        self.unet = components["unet"]
        self.vae = components["vae"]
        self.text_encoder = components["text_encoder"]
        self.text_encoder_2 = components.get("text_encoder_2")
        self.tokenizers = [components["tokenizer"]] + (
            [components["tokenizer_2"]] if components.get("tokenizer_2") is not None else []
        )
        self.scheduler_config = dict(components["scheduler"])
        self.scheduler_class = components.get("scheduler_class")  # the pipeline's own, e.g. "PNDMScheduler"
        self.force_zeros_for_empty_prompt = bool(components.get("force_zeros_for_empty_prompt", False))
        self.family = self.detect_family()
        self.sampling = None  # a generation-time editor's guide (edit_bench.editors.guidance.Guide): None = plain CFG
        self.requires_grad_(False)

    # ----------------------------------------------------------------- structure
    def detect_family(self) -> str:
        """``sd1``, ``sd2`` or ``sdxl``, read from the component configs (never from a name)."""
        cfg = self.unet.config
        if cfg.get("addition_embed_type") == "text_time":
            if self.text_encoder_2 is None:
                raise UsageError("UNet expects SDXL text_time conditioning but the model has one text encoder")
            return "sdxl"
        if cfg.get("addition_embed_type") is not None or cfg.get("class_embed_type") is not None:
            raise UsageError(
                f"unsupported UNet: addition_embed_type={cfg.get('addition_embed_type')!r}, "
                f"class_embed_type={cfg.get('class_embed_type')!r}; edit_bench supports SD-1.x, SD-2.x and SDXL layouts"
            )
        return "sd2" if cfg.get("use_linear_projection") else "sd1"

    @property
    def tokenizer(self):
        return self.tokenizers[0]

    @property
    def denoiser(self) -> nn.Module:
        """The network that predicts the noise (here the UNet; an MMDiT's transformer)."""
        return self.unet

    denoiser_prefix = "unet."  # the denoiser's parameters' full names start with it

    def parameter_set(self, name: str) -> dict[str, nn.Parameter]:
        """A named set of the denoiser's parameters by full name (ESD's sets: :mod:`.parameter_sets`)."""
        from .parameter_sets import unet_parameter_set

        return {f"{self.denoiser_prefix}{n}": p for n, p in unet_parameter_set(self.unet, name).items()}

    def attention_probabilities(self, select: list[str] | None = None):
        """Record the cross-attention probabilities of the sites ``select`` (all by default) through an attention
        processor until ``.remove()`` (:class:`~edit_bench.models.attention.AttentionProbabilities`)."""
        from .attention import AttentionProbabilities

        return AttentionProbabilities([s.attn for s in self.cross_attn(select)])

    def loras(self, params: list[str], names: list[str], rank: int, seed: int):
        """Named LoRA adapters on the denoiser matrices ``params`` (:class:`~edit_bench.models.lora.LoRAs`)."""
        from .lora import LoRAs

        return LoRAs(self, params, names, rank, seed)

    def sites(self, role: str) -> list[str]:
        """Cross-attention sites by role: ``all`` (every site, in forward order), or the sites a published
        localisation names for this family (``locogen``: LocoGen's SD-1 layers, the ones its authors'
        ``start_loc = 8, seq = 4`` select); other families: localise first."""
        if role == "all":
            return [s.name for s in self.cross_attn()]
        known = LOCALISED_SITES.get(role)
        if known is None:
            raise UsageError(f"unknown site role {role!r}: use all, {', '.join(sorted(LOCALISED_SITES))} or name the sites")
        if self.family not in known:
            raise UsageError(f"{role} sites are published for {', '.join(known)} only, not {self.family}: localise with "
                             "`python -m edit_bench trace` and give the sites by name")
        return list(known[self.family])

    @property
    def context_dim(self) -> int:
        return int(self.unet.config.cross_attention_dim)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def text_encoders(self) -> list[tuple[str, nn.Module]]:
        out = [("text_encoder", self.text_encoder)]
        if self.text_encoder_2 is not None:
            out.append(("text_encoder_2", self.text_encoder_2))
        return out

    def cross_attn(self, select: list[str] | None = None) -> list[CrossAttnSite]:
        """The UNet's cross-attention sites in forward order (down -> mid -> up).

        Args:
            select: site names to keep (full names, or the prefix up to ``attentions.N``, e.g.
                ``"up_blocks.1.attentions.1"``). ``None`` keeps all. An unknown name is an error.
        """
        from diffusers.models.attention_processor import Attention

        found = sorted(
            (name for name, m in self.unet.named_modules() if isinstance(m, Attention) and m.is_cross_attention),
            key=_site_order,
        )
        sites = []
        for i, name in enumerate(found):
            sites.append(CrossAttnSite(name, i, self.unet.get_submodule(name)))
        if select is None:
            return sites
        chosen = []
        for want in select:
            match = [s for s in sites if s.name == want or s.name.startswith(want.rstrip(".") + ".")]
            if not match:
                raise UsageError(
                    f"no cross-attention site named {want!r} in this {self.family} UNet; "
                    f"sites are: {', '.join(s.name for s in sites)}"
                )
            chosen += [s for s in match if s not in chosen]
        return sorted(chosen, key=lambda s: s.index)

    def unet_components(self) -> list[UNetComponent]:
        """The UNet's tracing components in forward order: every ResNet block and, in every transformer
        block, the self-attention, cross-attention and feed-forward (each the residual branch's output)."""
        from diffusers.models.attention import BasicTransformerBlock
        from diffusers.models.resnet import ResnetBlock2D

        found = []
        for name, m in self.unet.named_modules():
            if isinstance(m, ResnetBlock2D):
                found.append((name, "resnet", m))
            elif isinstance(m, BasicTransformerBlock):
                found += [(f"{name}.{k}", k, getattr(m, k)) for k in ("attn1", "attn2", "ff") if getattr(m, k, None) is not None]
        found.sort(key=lambda f: _component_order(f[0]))
        return [UNetComponent(n, k, i, m) for i, (n, k, m) in enumerate(found)]

    def text_embeddings(self, encoder: str) -> nn.Module:
        """The embeddings (token and position) of a text encoder (``"text_encoder"`` or ``"text_encoder_2"``)."""
        enc = dict(self.text_encoders())[encoder]
        return (enc.text_model if hasattr(enc, "text_model") else enc).embeddings

    def token_embedding(self, encoder: str) -> nn.Embedding:
        """The token-embedding table of a text encoder (``"text_encoder"`` or ``"text_encoder_2"``)."""
        return self.text_embeddings(encoder).token_embedding

    def subject_positions(self, prompt: str, subject: str, tokenizer_index: int = 0) -> list[int]:
        """Positions of every token of ``subject`` (its last occurrence) inside ``prompt``."""
        last = self.token_index(prompt, subject, tokenizer_index)
        n = len(self.tokenizers[tokenizer_index](subject, add_special_tokens=False).input_ids)
        return list(range(last - n + 1, last + 1))

    def text_layers(self) -> list[TextLayer]:
        """Every transformer layer of every text encoder, in forward order."""
        out = []
        for comp, enc in self.text_encoders():
            for i, layer in enumerate(enc.text_model.encoder.layers if hasattr(enc, "text_model") else enc.encoder.layers):
                path = "text_model.encoder.layers" if hasattr(enc, "text_model") else "encoder.layers"
                out.append(TextLayer(f"{comp}.{path}.{i}", i, comp, layer))
        return out

    def get_parameter(self, name: str) -> nn.Parameter:
        """A parameter by its full name, e.g. ``"unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"``."""
        comp, _, rest = name.partition(".")
        module = getattr(self, comp, None) if comp in ("unet", "vae", "text_encoder", "text_encoder_2") else None
        if module is None:
            raise UsageError(f"no component {comp!r} in {name!r}: names start with unet., vae., text_encoder. or text_encoder_2.")
        try:
            return module.get_parameter(rest)
        except AttributeError as e:
            raise UsageError(f"this {self.family} model has no parameter {name!r}") from e

    # ----------------------------------------------------------------- text
    def tokenize(self, prompts: list[str], tokenizer_index: int = 0, longest: bool = False) -> Tensor:
        """Token ids ``[B, 77]``, padded as the tokenizer pads and truncated at 77 (``longest``: padded to the
        longest prompt only)."""
        tok = self.tokenizers[tokenizer_index]
        out = tok(list(prompts), padding="longest" if longest else "max_length", max_length=tok.model_max_length,
                  truncation=True, return_tensors="pt")
        return out.input_ids

    @property
    def max_length(self) -> int:
        """The text encoder's context length in tokens (77 on SD-1/2/XL)."""
        return int(self.tokenizer.model_max_length)

    def n_tokens(self, prompt: str) -> int:
        """Number of tokens of ``prompt`` including BOS and EOS, before truncation."""
        return len(self.tokenizer(prompt, truncation=False).input_ids)

    def eos_index(self, prompt: str, tokenizer_index: int = 0) -> int:
        """Position of the first EOS token of ``prompt`` (padding may equal EOS, as in SD-1.x)."""
        tok = self.tokenizers[tokenizer_index]
        ids = self.tokenize([prompt], tokenizer_index)[0].tolist()
        return ids.index(tok.eos_token_id)

    def token_index(self, prompt: str, subject: str | None = None, tokenizer_index: int = 0) -> int:
        """Position of the last token of ``subject`` inside ``prompt`` (its last occurrence).

        With ``subject=None`` the last token before EOS. Works when PAD == EOS (SD-1.x) because it
        looks for the first EOS, not for padding.
        """
        eos = self.eos_index(prompt, tokenizer_index)
        if subject is None:
            return eos - 1
        tok = self.tokenizers[tokenizer_index]
        ids = self.tokenize([prompt], tokenizer_index)[0].tolist()[:eos]
        sub = tok(subject, add_special_tokens=False).input_ids
        if not sub:
            raise UsageError(f"subject {subject!r} has no tokens")
        for start in range(len(ids) - len(sub), 0, -1):
            if ids[start : start + len(sub)] == sub:
                return start + len(sub) - 1
        raise UsageError(
            f"subject {subject!r} (tokens {tok.convert_ids_to_tokens(sub)}) does not occur in prompt {prompt!r} "
            f"(tokens {tok.convert_ids_to_tokens(ids)}); give a subject that is a word span of the prompt"
        )

    def _encoder_states(self, enc: nn.Module, ids: Tensor, hidden_state: int | None):
        out = enc(ids.to(self.device), output_hidden_states=hidden_state is not None)
        states = out[0] if hidden_state is None else out.hidden_states[hidden_state]
        return states, out

    def condition(self, prompts: list[str], longest: bool = False) -> Conditioning:
        """The conditioning of ``prompts``; ``context`` is exactly what every attn2 sees. ``longest``: encode only up
        to the longest prompt's EOS (the text encoders' attention is causal, so every position up to a prompt's EOS
        is the same as in the 77-token context; the padding positions are absent): what an editor that reads only
        those positions needs, at a fraction of the cost."""
        if self.family != "sdxl":
            ids = self.tokenize(prompts, longest=longest)
            ctx, _ = self._encoder_states(self.text_encoder, ids, None)
            return Conditioning(ctx, ids=ids)
        # SDXL: both encoders' penultimate hidden states, concatenated; pooled from the second.
        h1, _ = self._encoder_states(self.text_encoder, self.tokenize(prompts, 0, longest), -2)
        h2, out2 = self._encoder_states(self.text_encoder_2, self.tokenize(prompts, 1, longest), -2)
        return Conditioning(torch.cat([h1, h2], dim=-1), out2.text_embeds)

    def condition_batch(self, prompts: list[str]) -> Conditioning:
        """:meth:`condition` of a generation batch with each distinct prompt encoded once (a case's samples repeat its
        prompts once per seed: a TIMED batch of 44 samples holds 11 prompts). SD-1/2's text states do not depend on the
        rest of their batch (checked to the bit on the CPU with the toy and tiny models), so their conditioning is the
        same; SDXL encodes every row, as its pooled projection rounds differently with the batch's size (1e-7). The
        MMDiTs (SD3, FLUX) always encoded each distinct prompt once: their T5 is a third of FLUX's forward cost."""
        uniq = list(dict.fromkeys(prompts))
        if len(uniq) == len(prompts) or self.family == "sdxl":
            return self.condition(prompts)
        c = self.condition(uniq)
        idx = torch.tensor([uniq.index(p) for p in prompts], device=c.context.device)
        return Conditioning(c.context[idx], None if c.pooled is None else c.pooled[idx],
                            None if c.ids is None else c.ids[idx.to(c.ids.device)])

    def condition_ids(self, ids: Tensor, where: Tensor | None = None, vectors: Tensor | None = None) -> Conditioning:
        """The conditioning of token ids ``[B, 77]`` (no tokenizer between an attack's tokens and the model), with the
        token embeddings at the positions ``where`` (``[B, 77]`` bool) replaced by ``vectors`` (``[B, 77, D]``, read
        at those positions; differentiable): a learned token, or a continuous prompt. An id outside the vocabulary
        is allowed where it is replaced (a new token of textual inversion). SD-1/2 layouts (one text encoder)."""
        if self.family == "sdxl":
            raise UsageError("token-level conditioning (attacks) supports one text encoder (SD-1/2), not SDXL's two")
        ids = ids.to(self.device)
        emb = self.token_embedding("text_encoder")
        outside = ids >= emb.num_embeddings
        if where is None:
            if outside.any():
                raise UsageError(f"token ids >= {emb.num_embeddings} need vectors: give where/vectors")
            return Conditioning(self._encoder_states(self.text_encoder, ids, None)[0], ids=ids.cpu())
        where = where.to(self.device)
        if (outside & ~where).any():
            raise UsageError(f"token ids >= {emb.num_embeddings} must be replaced (where) by vectors")

        def replace(module, inputs, out):
            return torch.where(where[..., None], vectors.to(out.device, out.dtype), out)

        handle = emb.register_forward_hook(replace)
        try:  # a new token is looked up as id 0, then replaced (SD-1/2 condition on the states, not the pooled output)
            return Conditioning(self._encoder_states(self.text_encoder, ids.masked_fill(outside, 0), None)[0])
        finally:
            handle.remove()

    def pooled(self, ids: Tensor) -> Tensor:
        """The text encoder's pooled output ``[B, D]`` of token ids ``[B, L]`` (CLIP: the final layer-normed state at
        the EOS token): what SAFREE spans its concept and prompt subspaces with. SD-1/2 layouts (one text encoder)."""
        if self.family == "sdxl":
            raise UsageError("the pooled output of one text encoder (SD-1/2); SDXL has two")
        return self._encoder_states(self.text_encoder, ids, None)[1].pooler_output

    def encode(self, prompts: list[str], longest: bool = False) -> Tensor:
        """Context ``[B, 77, D]`` that cross-attention sees (SDXL: both encoders' penultimate states); ``longest``:
        ``[B, L, D]`` up to the longest prompt's EOS (see :meth:`condition`)."""
        return self.condition(prompts, longest).context

    def unconditional(self, n: int) -> Conditioning:
        """The negative-prompt conditioning of classifier-free guidance (the empty prompt)."""
        c = self.condition([""])
        if self.force_zeros_for_empty_prompt:
            c = Conditioning(torch.zeros_like(c.context), None if c.pooled is None else torch.zeros_like(c.pooled))
        return Conditioning(c.context.expand(n, -1, -1), None if c.pooled is None else c.pooled.expand(n, -1))

    # ----------------------------------------------------------------- images
    def size_multiple(self) -> int:
        """Image sides must be multiples of this (the VAE's and the UNet's downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def check_sampler(self, sampler) -> None:
        """Fail on a sampler this model cannot run (unknown scheduler, a size that is not a multiple)."""
        if sampler.scheduler not in SCHEDULERS:
            raise UsageError(f"unknown scheduler {sampler.scheduler!r}: use one of {', '.join(SCHEDULERS)}")
        if sampler.scheduler == "flow_euler" and self.family in ("sd1", "sd2", "sdxl"):
            raise UsageError(f"scheduler 'flow_euler' (flow matching) runs SD3 and FLUX models, not this {self.family} "
                             "model: use pndm, ddim, lms, euler, euler_a, dpm or ddpm")
        size, mult = sampler.size or self.native_size, self.size_multiple()
        if size <= 0 or size % mult:
            raise UsageError(f"sampler.size {size} must be a positive multiple of {mult} for this {self.family} model")

    @property
    def default_scheduler(self) -> str:
        """The name (``pndm``, ``euler``, ...) of the scheduler the model's own pipeline samples with."""
        names = {cls: name for name, cls in SCHEDULERS.items()}
        if self.scheduler_class not in names:
            raise UsageError(f"this model's own scheduler {self.scheduler_class!r} is not one edit_bench runs "
                             f"({', '.join(SCHEDULERS.values())}): name a scheduler explicitly")
        return names[self.scheduler_class]

    def latent_shape(self, size: int) -> tuple[int, int]:
        """(channels, side) of the latents the denoiser sees at image side ``size``."""
        return int(self.unet.config.in_channels), size // self.vae_scale_factor

    def set_timesteps(self, sched, steps: int, h: int, device=None) -> None:
        """Set ``sched``'s timesteps as the model's pipeline does (``h``: the latent side, used by flow models)."""
        sched.set_timesteps(steps, device=device)

    def guided_prediction(self, x: Tensor, t, cond: Conditioning, uncond: Conditioning, guidance: float,
                          size: int | None = None, denoiser_parameters: dict[str, Tensor] | None = None) -> Tensor:
        """The guided prediction a sampler steps with at ``guidance``: classifier-free guidance, both halves in one
        batched forward (float32)."""
        eps = self.noise_prediction(torch.cat([x, x]), t, Conditioning.cat([uncond, cond]), size, denoiser_parameters).float()
        eps_u, eps_c = eps.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    def make_scheduler(self, name: str):
        import diffusers

        if name not in SCHEDULERS:
            raise UsageError(f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")
        return getattr(diffusers, SCHEDULERS[name]).from_config(self.scheduler_config)

    def fast_path(self, channels_last: bool = False, compile: str | None = None) -> dict:
        """Set the generation fast path in place and describe it: the UNet in ``channels_last`` memory format,
        its forward compiled with ``torch.compile(backend=compile)`` (once: a compiled UNet is left as it is;
        parameters stay the module's own, so in-place edits reach the compiled forward), and the attention
        processors in use (diffusers' default on PyTorch 2 is SDPA, ``AttnProcessor2_0``)."""
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile and getattr(self.unet, "_compiled_call_impl", None) is None:
            self.unet.compile(backend=compile)
        return {"channels_last": bool(channels_last), "compile": compile, "attention": self.attention_processors()}

    def attention_processors(self) -> list[str]:
        """The UNet's attention processor classes (diffusers' SDPA processor is ``AttnProcessor2_0``)."""
        return sorted({type(p).__name__ for p in self.unet.attn_processors.values()})

    def stage_modules(self) -> dict[str, list[nn.Module]]:
        """The modules of each generation stage (``text``, ``unet``, ``decode``), for timing them."""
        return {"text": [m for _, m in self.text_encoders()], "denoiser": [self.unet], "decode": [self.vae.decoder]}

    def diffusers_pipeline(self, scheduler: str):
        """A diffusers text-to-image pipeline on this model's own components (nothing copied), as the
        reference scripts build one, with the named scheduler (``pndm``, ``ddim``, ``lms``, ...)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        sched = self.make_scheduler(scheduler)
        if self.family == "sdxl":
            return StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                                             tokenizer=self.tokenizers[0], tokenizer_2=self.tokenizers[1], unet=self.unet,
                                             scheduler=sched, force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt)
        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                                       scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], sampler, conditioning: Conditioning | None = None) -> Tensor:
        """Images ``[B, 3, H, W]`` in [0, 1] with batched classifier-free guidance.

        Each sample draws its initial noise (and any scheduler noise) from its own
        ``torch.Generator("cpu").manual_seed(seed)``, so an image never depends on the rest of its batch.

        Args:
            prompts: B prompts (ignored where ``conditioning`` is given, except for their count).
            seeds: B seeds.
            sampler: a :class:`~edit_bench.types.SamplerConfig`.
            conditioning: precomputed conditioning for the B samples (conditioning-only evaluation).
        """
        if len(prompts) != len(seeds):
            raise UsageError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        n = len(seeds)
        device = self.device
        self.check_sampler(sampler)
        size = sampler.size or self.native_size
        h = size // self.vae_scale_factor
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        latents = torch.stack(
            [torch.randn((self.unet.config.in_channels, h, h), generator=g, dtype=torch.float32) for g in gens]
        ).to(device)
        sched = self.make_scheduler(sampler.scheduler)
        sched.set_timesteps(sampler.steps, device=device)
        latents = latents * sched.init_noise_sigma

        cond = conditioning if conditioning is not None else self.condition_batch(prompts)
        cfg = sampler.guidance != 1.0
        guide = self.sampling  # a generation-time editor: its negative prompt, its extra rows, its combination
        if guide is not None and not cfg:
            raise UsageError(f"{guide.name} acts through classifier-free guidance, which sampler.guidance 1 turns off: "
                             "give a guidance > 1")
        rows = [guide.unconditional(self, n) if guide is not None else self.unconditional(n), cond]
        rows += guide.extra_rows(self, n) if guide is not None else []
        both = Conditioning.cat(rows) if cfg else cond
        step_kw = inspect.signature(sched.step).parameters
        extra = {}
        if "generator" in step_kw:
            extra["generator"] = gens
        if "eta" in step_kw:
            extra["eta"] = sampler.eta
        state: dict = {}  # the guide's state across steps (SLD's momentum, SAFREE's projected prompt rows)
        if guide is not None:
            guide.prepare(self, cond, state)
        for i, t in enumerate(sched.timesteps):
            x = torch.cat([latents] * len(rows)) if cfg else latents
            step_cond = guide.step_conditioning(both, n, i, state) if guide is not None else both
            eps = self.noise_prediction(sched.scale_model_input(x, t), t, step_cond, size)
            if cfg:
                parts = eps.float().chunk(len(rows))
                if guide is None:
                    eps = parts[0] + sampler.guidance * (parts[1] - parts[0])
                else:
                    eps = guide.combine(parts, sampler.guidance, i, state)
            latents = sched.step(eps.float(), t, latents, **extra).prev_sample
        return self.decode(latents)

    def noise_prediction(self, x: Tensor, t, cond: Conditioning, size: int | None = None,
                         denoiser_parameters: dict[str, Tensor] | None = None) -> Tensor:
        """The UNet's noise prediction ``[B, C, h, w]`` for latents ``x`` at timestep ``t`` under ``cond``.

        Args:
            size: the image side (SDXL's time ids); default the model's native size.
            denoiser_parameters: tensors by UNet parameter name (``down_blocks.0...``) that replace the module's own
                for this call (``torch.func.functional_call``): a frozen copy of a few trained tensors evaluates
                the original model without a second UNet.
        """
        added = None
        if self.family == "sdxl":
            s = size or self.native_size
            time_ids = torch.tensor([s, s, 0, 0, s, s], device=x.device, dtype=cond.context.dtype)
            added = {"text_embeds": cond.pooled, "time_ids": time_ids.expand(len(cond), -1)}
        args = (x.to(self.dtype), t)
        kwargs = {"encoder_hidden_states": cond.context.to(self.dtype), "added_cond_kwargs": added}
        if denoiser_parameters is None:
            return self.unet(*args, **kwargs).sample
        return torch.func.functional_call(self.unet, denoiser_parameters, args, kwargs, strict=False).sample

    def encode_images(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``[B, 3, H, W]`` in [0, 1] -> the VAE posterior's mean and std ``[B, C, h, w]``, already in
        the UNet's latent scale (``scaling_factor``, ``shift_factor``); a latent is ``mean + std * noise``."""
        vae = self.vae
        with torch.autocast(images.device.type, enabled=False):
            dist = vae.encode((images.to(vae.device, vae.dtype) * 2 - 1)).latent_dist
        mean, std = dist.mean.float(), dist.std.float()
        if vae.config.get("shift_factor"):
            mean = mean - vae.config.shift_factor
        f = vae.config.scaling_factor
        return mean * f, std * f

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> images in [0, 1]. Decodes in float32 where the VAE asks for it (SDXL's overflows in fp16)."""
        vae = self.vae
        dtype = vae.dtype
        upcast = bool(vae.config.get("force_upcast")) and dtype != torch.float32
        if upcast:  # for this decode only, as diffusers' pipelines do (the VAE goes back to its dtype after)
            vae.to(torch.float32)
        try:
            z = latents / vae.config.scaling_factor
            if vae.config.get("shift_factor"):
                z = z + vae.config.shift_factor
            with torch.autocast(latents.device.type, enabled=False):
                img = vae.decode(z.to(vae.dtype)).sample
        finally:
            if upcast:
                vae.to(dtype)
        return (img.float() / 2 + 0.5).clamp(0, 1)
