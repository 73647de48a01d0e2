"""LocoEdit (Basu et al., ICML 2024, arXiv 2405.01008): a closed-form edit of the few cross-attention
layers that LocoGen localises a concept to.

On the chosen sites only (selected by name), ``to_k`` and ``to_v`` solve

    W' = argmin sum_i ||W' k_i - W v||^2 + lam ||W' - W||^2 = (lam W + sum_i W v k_i^T)(lam I + sum_i k_i k_i^T)^-1

with ``k_i`` the final text-encoder outputs (what cross-attention reads) at the last subject token of the
concept and of its templates, ``v`` the same for the anchor's last token, and ``lam = 0.01``.

Site choice. The authors index layers in the lexicographic order of the 32 names ``...attn2.to_k|to_v``
and edit entries ``[2 start_loc, 2 start_loc + seq)`` with ``start_loc = 8, seq = 4``; on SD-1 that order
is down0.a0, down0.a1, down1.a0, down1.a1, down2.a0, down2.a1, mid, up1.a0, up1.a1, up1.a2, ..., so the
entries 16..19 are ``to_k``/``to_v`` of the second up block's last two transformers: the adapter's
``locogen`` sites (:meth:`T2IModel.sites`). Sites are taken by that role (SD-1) or by name (a localisation of your
own, e.g. from ``trace``), so the choice means the same on every model; for other families, localise first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..types import EditRequest
from .base import Editor
from .ridge import ridge_update_
from ..errors import UsageError

TEMPLATES = ("{}", "a painting in the style of {}", "a photo in the style of {}", "a picture in the style of {}")


class LocoEdit(Editor):
    """LocoEdit closed-form editor.

    Args:
        sites: cross-attention sites to edit: ``locogen`` (default: LocoGen's SD-1 localisation, from the adapter),
            ``all`` (every site) or a list of site names.
        lam: ridge strength λ (``reg_key = 0.01``).
        templates: prompts built around the concept whose last subject token gives a key (the authors':
            the concept, "a painting / a photo / a picture in the style of {}").
        anchor: the prompt whose last token gives the value. ``None`` takes each request's target (the
            authors hard-code "a painting"); an empty target means the unconditional prompt's BOS.
        with_to_k: also edit ``to_k`` (the authors edit both).
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "cross_attn_kv"
    multi_request = True
    contract_args = {"sites": "all"}  # LocoGen's sites are published for SD-1 only; the contract runs on every layout

    def __init__(self, sites: str | Sequence[str] = "locogen", lam: float = 0.01, templates: Sequence[str] = TEMPLATES,
                 anchor: str | None = None, with_to_k: bool = True, base: str = "toy"):
        super().__init__(base=base)
        if lam <= 0:
            raise UsageError(f"lam must be > 0 (paper: 0.01), got {lam}")
        if not sites:
            raise UsageError("LocoEdit needs sites: locogen (LocoGen's SD-1 layers) or a list of site names from `trace`")
        bad = [t for t in templates if t.count("{}") != 1]
        if bad:
            raise UsageError(f"each template needs exactly one '{{}}' for the concept; got {bad}")
        self.sites = sites if isinstance(sites, str) else tuple(sites)
        self.lam, self.templates = lam, tuple(templates)
        self.anchor, self.with_to_k = anchor, with_to_k

    def edited_parameters(self):
        sites = self.t2i.sites(self.sites) if isinstance(self.sites, str) else list(self.sites)
        return self.cross_attn_kv(sites, self.with_to_k)

    def derived_prompts(self, requests):
        return [t.format(r.source) for r in requests for t in self.templates] + [self.anchor or r.target for r in requests]

    def keys_values(self, requests: Sequence[EditRequest]) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys ``[D, N]`` and the embeddings ``[D, N]`` whose projections are their values."""
        prompts, subjects, anchors = [], [], []
        for r in requests:
            for t in self.templates:
                prompts.append(t.format(r.source))
                subjects.append(r.subject or r.source)
                anchors.append(self.anchor if self.anchor is not None else r.target)
        emb = self.t2i.encode(prompts).float()
        K = torch.stack([emb[j, self.t2i.token_index(p, s)] for j, (p, s) in enumerate(zip(prompts, subjects))])
        uniq = list(dict.fromkeys(anchors))
        emb_a = self.t2i.encode(uniq).float()
        last = {a: emb_a[j, self.t2i.token_index(a) if a else 0] for j, a in enumerate(uniq)}
        return K.T, torch.stack([last[a] for a in anchors]).T

    @torch.no_grad()
    def edit(self, requests, preserve=()):
        K, A = self.keys_values(requests)
        self.conditions.append(ridge_update_(list(self.edited_parameters().values()), K, lambda W: W @ A, self.lam))
