"""UCE: Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzyńska & Bau, WACV 2024, arXiv 2308.14761).

Every cross-attention ``to_k``/``to_v`` solves, in one closed form (paper Eq. 7), "erase set E maps to
its guide, preserve set P keeps its outputs":

    W' = (lam W + s_e sum_E v*_e c_e^T + s_p sum_P W c_q c_q^T)(lam I + s_e sum_E c_e c_e^T + s_p sum_P c_q c_q^T)^-1

A request ``source -> target`` is one erase concept and its guide: ``target = ""`` guides to the
unconditional embedding (erasure), any other target is a guide concept (an edit towards it, as on TIMED).

Two published token policies (``tokens``):

- ``"last_to_end"`` (the paper-era code, default): keys are the source's positions from the last subject
  token through EOS and padding; the guide's slice from its own last token is aligned to the same length
  (``src[i_s : 77 - max(0, far - i_s)]``, ``far = max(i_s, i_g)``). Preserve prompts use all 77 positions
  and the empty prompt is always preserved.
- ``"last"`` (the current code): only the last subject token of the source, of the guide and of each
  preserve prompt; the empty prompt is not added.

Values (``technique``): ``"replace"``: ``v* = W c_guide``; ``"tensor"``: ``v* = W c_g - <W c_g, u> u`` with
``u = W c_e / ||W c_e||``, per matrix (the component along the concept's own output is removed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..types import EditRequest
from .base import Editor
from .ridge import ridge_update_
from ..errors import UsageError

# Prompt expansion (``--add_prompts`` / ``--expand_prompts``) of both published scripts.
TEMPLATES = {
    "art": ("painting by {}", "art by {}", "artwork by {}", "picture by {}", "style of {}"),
    "object": ("image of {}", "photo of {}", "portrait of {}", "picture of {}", "painting of {}"),
}


class UCE(Editor):
    """UCE closed-form editor (erase, edit towards a guide, preserve).

    Args:
        lam: ridge strength λ (both scripts: 0.5).
        erase_scale: s_e (both scripts: 1).
        preserve_scale: s_p; ``None`` = ``max(0.1, 1/|P|)`` (paper-era code); the current code uses 1.
        technique: ``"replace"`` (default of both scripts) or ``"tensor"`` (paper-era option).
        tokens: ``"last_to_end"`` (paper-era) or ``"last"`` (current code); see the module docstring.
        expand: ``None``, ``"art"`` or ``"object"``: add the five template prompts of each concept and guide
            (both scripts, off by default).
        preserve: extra concepts preserved in every edit (besides each case's own preserve set).
        with_to_k: also edit ``to_k`` (both scripts do).
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "cross_attn_kv"
    multi_request = True

    def __init__(self, lam: float = 0.5, erase_scale: float = 1.0, preserve_scale: float | None = None,
                 technique: Literal["replace", "tensor"] = "replace",
                 tokens: Literal["last_to_end", "last"] = "last_to_end",
                 expand: Literal["art", "object"] | None = None, preserve: Sequence[str] = (),
                 with_to_k: bool = True, base: str = "toy"):
        super().__init__(base=base)
        if lam <= 0:
            raise UsageError(f"lam must be > 0 (paper: 0.5), got {lam}")
        if technique not in ("replace", "tensor"):
            raise UsageError(f"technique must be 'replace' or 'tensor', got {technique!r}")
        if tokens not in ("last_to_end", "last"):
            raise UsageError(f"tokens must be 'last_to_end' (paper-era code) or 'last' (current code), got {tokens!r}")
        if expand not in (None, *TEMPLATES):
            raise UsageError(f"expand must be null, 'art' or 'object', got {expand!r}")
        self.lam, self.erase_scale, self.preserve_scale = lam, erase_scale, preserve_scale
        self.technique, self.tokens, self.expand = technique, tokens, expand
        self.preserve, self.with_to_k = tuple(preserve), with_to_k

    def edited_parameters(self):
        return self.cross_attn_kv(None, self.with_to_k)

    # ------------------------------------------------------------------ keys and values
    def concept_pairs(self, requests: Sequence[EditRequest]) -> list[tuple[str, str, str | None]]:
        """(concept prompt, guide prompt, subject) for every request and its expansions."""
        out = []
        for r in requests:
            out.append((r.source, r.target, r.subject))
            for t in TEMPLATES.get(self.expand, ()):
                out.append((t.format(r.source), t.format(r.target) if r.target else "", r.subject or r.source))
        return out

    def derived_prompts(self, requests):
        return [p for c, g, _ in self.concept_pairs(requests) for p in (c, g) if p]

    def erase_positions(self, concept: str, guide: str, subject: str | None) -> tuple[list[int], list[int]]:
        """Source and guide positions whose embeddings are paired (keys, values)."""
        i_s = self.t2i.token_index(concept, subject)
        i_g = self.t2i.token_index(guide) if guide else 0  # "": BOS (its only non-EOS token)
        if self.tokens == "last":
            return [i_s], [i_g]
        n = self.t2i.max_length - max(i_s, i_g)
        return list(range(i_s, i_s + n)), list(range(i_g, i_g + n))

    def keys_values(self, requests, preserve) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """Erase keys and guide embeddings ``[D, Ne]``, preserve keys ``[D, Np]`` (context space), and the
        number of preserved prompts."""
        pairs = self.concept_pairs(requests)
        emb_c = self.t2i.encode([p[0] for p in pairs]).float()
        emb_g = self.t2i.encode([p[1] for p in pairs]).float()
        C_e, C_g = [], []
        for j, (c, g, s) in enumerate(pairs):
            ps, pg = self.erase_positions(c, g, s)
            C_e.append(emb_c[j, ps])
            C_g.append(emb_g[j, pg])
        keep = list(dict.fromkeys([*self.preserve, *preserve] + ([""] if self.tokens == "last_to_end" else [])))
        keep = [q for q in keep if q.strip().lower() not in {p[0].strip().lower() for p in pairs}]
        if keep:
            emb_q = self.t2i.encode(keep).float()
            if self.tokens == "last":
                C_q = torch.stack([emb_q[j, self.t2i.token_index(q) if q else 0] for j, q in enumerate(keep)])
            else:
                C_q = emb_q.reshape(-1, emb_q.shape[-1])
        else:
            C_q = emb_c.new_zeros(0, emb_c.shape[-1])
        return torch.cat(C_e).T, torch.cat(C_g).T, C_q.T, len(keep)

    @torch.no_grad()
    def edit(self, requests, preserve=()):
        C_e, C_g, C_q, n_keep = self.keys_values(requests, preserve)
        s_p = self.preserve_scale if self.preserve_scale is not None else max(0.1, 1 / max(n_keep, 1))
        K = torch.cat([C_e, C_q], 1)
        w = torch.cat([torch.full((C_e.shape[1],), float(self.erase_scale)), torch.full((C_q.shape[1],), float(s_p))])

        def values(W):  # every matrix shares the keys: one factored system, solved matrix by matrix
            V_e = W @ C_g
            if self.technique == "tensor":  # remove the component along the concept's own output W c_e
                u = torch.nn.functional.normalize(W @ C_e, dim=0)
                V_e = V_e - (V_e * u).sum(0, keepdim=True) * u
            return torch.cat([V_e, W @ C_q], 1)

        self.conditions.append(ridge_update_(list(self.edited_parameters().values()), K, values, self.lam, weights=w.to(K.device)))
