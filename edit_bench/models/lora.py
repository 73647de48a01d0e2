"""LoRA adapters on the denoiser through ``peft`` (diffusers' own ``add_adapter``), with their whole lifecycle in
one place: attach several named adapters on chosen matrices, train one at a time, read each one's product
``ΔW = B·A·scaling`` by full parameter name, and remove them all so the model is as loaded again.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn


class LoRAs:
    """Named rank-``rank`` LoRA adapters on the denoiser matrices ``params`` (full parameter names of the adapter,
    ``unet.<module>.weight``), each initialised (peft's ``gaussian``) from its own seed ``seed + i``.

    The denoiser's ``requires_grad`` flags are kept and restored by :meth:`remove`."""

    def __init__(self, t2i, params: list[str], names: list[str], rank: int, seed: int):
        from peft import LoraConfig

        self.denoiser: nn.Module = t2i.denoiser
        prefix = t2i.denoiser_prefix
        self.targets = {p.removeprefix(prefix).removesuffix(".weight"): p for p in params}  # module path -> full name
        self.names = list(names)
        self._grads = {k: p.requires_grad for k, p in self.denoiser.named_parameters()}
        for i, name in enumerate(self.names):
            with warnings.catch_warnings():  # several adapters in one model is the point
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                self.denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                                     target_modules=list(self.targets)), adapter_name=name)
            torch.manual_seed(seed + i)  # peft's gaussian init draws from the global generator
            for m in self.targets:
                self.denoiser.get_submodule(m).reset_lora_parameters(name, "gaussian")

    def parameters(self, name: str) -> list[nn.Parameter]:
        """Adapter ``name``'s trainable tensors (A and B of every target)."""
        mods = [self.denoiser.get_submodule(m) for m in self.targets]
        return [p for mod in mods for p in (mod.lora_A[name].weight, mod.lora_B[name].weight)]

    def activate(self, name: str) -> None:
        """Only adapter ``name`` acts and trains (peft's ``set_adapter`` freezes the others)."""
        self.denoiser.set_adapter(name)

    @torch.no_grad()
    def delta(self, name: str) -> dict[str, Tensor]:
        """Adapter ``name``'s ``B·A·scaling`` (float64) per edited matrix, by full parameter name."""
        out = {}
        for m, full in self.targets.items():
            mod = self.denoiser.get_submodule(m)
            out[full] = (mod.lora_B[name].weight @ mod.lora_A[name].weight * mod.scaling[name]).double()
        return out

    def remove(self) -> None:
        """Every adapter's layers and config removed; the denoiser's ``requires_grad`` flags as before."""
        from diffusers.utils.peft_utils import recurse_remove_peft_layers

        recurse_remove_peft_layers(self.denoiser)
        if hasattr(self.denoiser, "peft_config"):  # as loaded again: a later attach starts afresh
            del self.denoiser.peft_config
        self.denoiser._hf_peft_config_loaded = False
        for k, p in self.denoiser.named_parameters():
            p.requires_grad_(self._grads.get(k, False))
