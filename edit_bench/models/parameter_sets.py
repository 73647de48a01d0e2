"""Named parameter sets of a denoiser (the sets ESD's two code bases train), found from the architecture: which
modules are cross-attention, which are the time embedding and the output layers, which module classes the current
code trains. Editors ask the adapter by name (:meth:`T2IModel.parameter_set`), never by module path.

- ``paper`` (CompVis ``train-esd.py``'s ``train_method``, every parameter whose name matches): ``xattn`` (every
  parameter of every cross-attention module), ``noxattn`` (all but cross-attention, the time embedding and the
  output layers), ``selfattn`` (every self-attention module), ``notime`` (all but the time embedding and the output
  layers), ``full``.
- ``current`` (diffusers ``esd_sd.py``'s ``get_esd_trainable_parameters``: the parameters of ``Linear``/``Conv2d``
  modules, never a norm layer): ``esd-x`` (inside cross-attention), ``esd-u`` (outside it), ``esd-all``,
  ``esd-x-strict`` (cross-attention keys and values). On an MMDiT the joint attention's text projections play
  cross-attention's part.
"""

from __future__ import annotations

from torch import nn

from ..errors import UsageError

PAPER_SETS = ("xattn", "noxattn", "selfattn", "notime", "full")
CURRENT_SETS = ("esd-x", "esd-u", "esd-all", "esd-x-strict")
LAYERS = ("Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv")  # the current code's module classes
COMPVIS_SKIP = ("time_embedding.", "conv_norm_out.", "conv_out.")  # CompVis's ``time_embed`` and ``out.`` in diffusers names


def unet_parameter_set(unet: nn.Module, params: str) -> dict[str, nn.Parameter]:
    """A set of a diffusers UNet's parameters, by UNet parameter name (works on a ``meta`` UNet too)."""
    from diffusers.models.attention_processor import Attention

    cross = [n for n, m in unet.named_modules() if isinstance(m, Attention) and m.is_cross_attention]
    in_cross = lambda n: any(n.startswith(c + ".") for c in cross)  # noqa: E731
    named = list(unet.named_parameters())
    if params in CURRENT_SETS:
        out = {}
        for mod_name, mod in unet.named_modules():
            if type(mod).__name__ not in LAYERS:
                continue
            x = in_cross(mod_name + ".")
            keep = {"esd-x": x, "esd-u": not x, "esd-all": True,
                    "esd-x-strict": x and mod_name.rsplit(".", 1)[-1] in ("to_k", "to_v")}[params]
            if keep:
                out.update({f"{mod_name}.{n}": p for n, p in mod.named_parameters()})
        return out
    if params == "xattn":
        return {n: p for n, p in named if in_cross(n)}
    if params == "selfattn":
        return {n: p for n, p in named if ".attn1." in n}
    if params == "full":
        return dict(named)
    if params == "notime":
        return {n: p for n, p in named if not n.startswith(COMPVIS_SKIP)}
    if params == "noxattn":
        return {n: p for n, p in named if not in_cross(n) and not n.startswith(COMPVIS_SKIP)}
    raise UsageError(f"unknown parameter set {params!r}: use one of {', '.join(PAPER_SETS + CURRENT_SETS)}")


def mmdit_parameter_set(t2i, params: str) -> dict[str, nn.Parameter]:
    """A set of an SD3 / FLUX transformer's parameters (the ``current`` sets, re-expressed), by full name: the joint
    attention's text side (:meth:`MMDiTModel.joint_text_projections`: where the text enters the image stream) plays
    cross-attention's part. ``esd-x``: all four text projections (q, k, v, out); ``esd-x-strict``: k and v;
    ``esd-u``: every other Linear/Conv2d module; ``esd-all``: all of them. FLUX's single-stream blocks have no
    text-only projections: they are ESD-u's."""
    if params not in CURRENT_SETS:
        raise UsageError(f"parameter set {params!r} is not defined on an MMDiT: use one of {', '.join(CURRENT_SETS)} "
                         "(ESD: --model.init_args.recipe current)")
    text = t2i.joint_text_projections(("k", "v") if params == "esd-x-strict" else ("q", "k", "v", "out"))
    out = {}
    for mod_name, mod in t2i.transformer.named_modules():
        name = f"transformer.{mod_name}"
        if type(mod).__name__ in LAYERS and {"esd-x": name in text, "esd-x-strict": name in text,
                                             "esd-u": name not in text, "esd-all": True}[params]:
            out.update({f"{name}.{n}": p for n, p in mod.named_parameters()})
    return out
