"""Diff-QuickFix (Basu, Zhao, Morariu, Feizi & Manjunatha, ICLR 2024, arXiv 2310.13730).

Causal tracing finds one causal state in the CLIP text encoder: the first self-attention layer at the
last subject token. The edit is a closed form on that layer's output projection
(``encoder.layers[0].self_attn.out_proj``):

    W' = (lam W + sum_i v_i k_i^T)(lam I + sum_i k_i k_i^T)^-1,   lam = 0.01

- ``k_i``: the *input* of ``out_proj`` (the concatenated heads) while encoding the source caption, at its
  last subject token and every later position up to 76 (EOS and padding included);
- ``v_i``: the *output* of ``out_proj`` for the target caption, from its last token on, aligned position by
  position (a shorter target list is padded with position 76, a longer one truncated);
- the pair plus the TIME prefixes "A photo of ", "An image of ", "A picture of ".

**Bias.** ``out_proj`` has a bias ``b``. The authors' values are the layer's outputs ``W_t k + b``, while
the fit is on the weight only, so the edited layer outputs ``≈ W' k + b`` and counts ``b`` twice for the
edited keys. ``bias="as_authors"`` (default) reproduces that; ``bias="subtract"`` fits ``v_i - b``, so
the edited layer reproduces the target's outputs exactly.

The authors edit the text tower of ``openai/clip-vit-large-patch14-336`` and swap it into SD-1.4; we edit
the pipeline's own text encoder. On SDXL (not in the paper) both text encoders are edited, each with its
own tokenizer, keys and values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..types import EditRequest
from .base import Editor
from .ridge import ridge_update_
from .time import AUGMENTATIONS, augment
from ..errors import UsageError


class DiffQuickFix(Editor):
    """Diff-QuickFix closed-form editor.

    Args:
        lam: ridge strength λ (the notebook's ``reg = 0.01``).
        layer: text-encoder layer whose ``self_attn.out_proj`` is edited (the paper's finding: 0).
        augmentations: prefixes added to both captions (the notebook uses TIME's three).
        bias: ``"as_authors"`` or ``"subtract"``; see the module docstring.
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "text_encoder"
    multi_request = True

    def __init__(self, lam: float = 0.01, layer: int = 0, augmentations: Sequence[str] = AUGMENTATIONS,
                 bias: Literal["as_authors", "subtract"] = "as_authors", base: str = "toy"):
        super().__init__(base=base)
        if lam <= 0:
            raise UsageError(f"lam must be > 0 (paper: 0.01), got {lam}")
        if bias not in ("as_authors", "subtract"):
            raise UsageError(f"bias must be 'as_authors' (the authors' values) or 'subtract', got {bias!r}")
        self.lam, self.layer, self.augmentations, self.bias = lam, layer, tuple(augmentations), bias

    def _layers(self):
        layers = [tl for tl in self.t2i.text_layers() if tl.index == self.layer]
        if not layers:
            n = max(tl.index for tl in self.t2i.text_layers()) + 1
            raise UsageError(f"DiffQuickFix layer={self.layer}, but the text encoder has {n} layers: pass --model.init_args.layer N with N in 0..{n - 1}")
        return layers

    def edited_parameters(self):
        return {tl.param_name(tl.attn_out): tl.attn_out.weight for tl in self._layers()}

    def prompt_pairs(self, requests: Sequence[EditRequest]) -> list[tuple[str, str, str | None]]:
        out = []
        for r in requests:
            out.append((r.source, r.target, r.subject))
            out += [(augment(r.source, a), augment(r.target, a), r.subject) for a in self.augmentations]
        return out

    def derived_prompts(self, requests):
        return [p for s, t, _ in self.prompt_pairs(requests) for p in (s, t)]

    def positions(self, source: str, target: str, subject: str | None, tokenizer_index: int = 0):
        """Aligned source and target positions: last (subject) token .. 76 of each, padded with 76."""
        i_s = self.t2i.token_index(source, subject, tokenizer_index)
        i_t = self.t2i.token_index(target, None, tokenizer_index) if target else 0
        n = self.t2i.max_length
        src = list(range(i_s, n))
        dst = list(range(i_t, n))[: len(src)]
        return src, dst + [n - 1] * (len(src) - len(dst))

    def capture(self, layer, prompts: list[str], tokenizer_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``out_proj`` inputs and outputs ``[B, 77, D]`` while the encoder reads ``prompts``."""
        proj, store = layer.attn_out, {}
        hook = proj.register_forward_hook(lambda m, i, o: store.update(x=i[0].detach(), y=o.detach()))
        try:
            getattr(self.t2i, layer.encoder)(self.t2i.tokenize(prompts, tokenizer_index).to(self.device))
        finally:
            hook.remove()
        return store["x"].float(), store["y"].float()

    @torch.no_grad()
    def edit(self, requests, preserve=()):
        pairs = self.prompt_pairs(requests)
        for tl in self._layers():
            ti = tl.tokenizer_index
            x, y = self.capture(tl, [p[0] for p in pairs] + [p[1] for p in pairs], ti)
            keys, values = [], []
            for j, (s, t, subj) in enumerate(pairs):
                ps, pt = self.positions(s, t, subj, ti)
                keys.append(x[j, ps])
                values.append(y[len(pairs) + j, pt])
            K, V = torch.cat(keys).T, torch.cat(values).T
            proj = tl.attn_out
            if self.bias == "subtract" and proj.bias is not None:
                V = V - proj.bias.float()[:, None]
            self.conditions.append(ridge_update_([proj.weight], K, lambda W, V=V: V, self.lam))
