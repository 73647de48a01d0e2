"""TIME: Text-to-Image Model Editing (Orgad, Kawar & Belinkov, ICCV 2023, arXiv 2303.08084).

Every cross-attention ``to_v`` (and ``to_k``) is moved so that the source prompt's token embeddings
``c_i`` project to what the destination prompt's aligned embeddings ``c*_pi(i)`` projected to before
the edit (paper Eq. 5):

    W' = argmin sum_p sum_i ||W' c_i - W c*_pi(i)||^2 + lam ||W' - W||^2
       = (lam W + sum v*_i c_i^T)(lam I + sum c_i c_i^T)^-1,   v*_i = W c*_pi(i)

Keys are all 77 positions of each source prompt (BOS, words, EOS and padding). All sites share the
keys, so every matrix is solved in one call.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from ..types import EditRequest
from .base import Editor
from .ridge import ridge_update_
from ..errors import UsageError

AUGMENTATIONS = ("A photo of ", "An image of ", "A picture of ")  # TIME --with_augs; diffusers' with_augs


def augment(prompt: str, prefix: str) -> str:
    """``"A banana"`` with ``"A photo of "`` -> ``"A photo of a banana"`` (a leading capital is lowered)."""
    return prefix + prompt[:1].lower() + prompt[1:]


def align_tokens(src_ids: list[int], dst_ids: list[int], eos_id: int, same: dict[int, int] | None = None) -> list[int]:
    """TIME's token alignment: for each source position, the destination position whose token it matches.

    Source tokens up to and including the first EOS are matched in order to the next equal destination
    token (after mapping ids through ``same``, e.g. "an" -> "a"); destination-only tokens ("blue") are
    skipped. The remaining source positions take the following destination positions, clamped to the
    last one. A source token with no match later in the destination keeps the next position in line
    (the reference code fails on such prompts).

    Args:
        src_ids, dst_ids: padded token ids of equal length L (77).
        eos_id: the end-of-text id (the first occurrence ends the prompt, even when padding equals it).
        same: id normalisation applied to both sides before matching.

    Returns:
        ``L`` destination positions, one per source position.
    """
    same = same or {}
    L = len(src_ids)
    src = [same.get(t, t) for t in src_ids]
    dst = [same.get(t, t) for t in dst_ids]
    src_len = src.index(eos_id) + 1 if eos_id in src else L
    out, j = [], 0
    for t in src[:src_len]:
        k = next((k for k in range(j, L) if dst[k] == t), None)
        k = min(j, L - 1) if k is None else k
        out.append(k)
        j = k + 1
    while len(out) < L:
        out.append(min(j, L - 1))
        j += 1
    return out


class TIME(Editor):
    """TIME closed-form editor.

    Args:
        lam: ridge strength λ (paper/README main experiment: ``--lamb 0.1``).
        with_to_k: also edit ``to_k`` (README main experiment: ``--with_to_k``).
        augmentations: prefixes added to both prompts as extra key/value pairs (``--with_augs``:
            "A photo of ", "An image of ", "A picture of ").
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "cross_attn_kv"
    multi_request = True

    def __init__(self, lam: float = 0.1, with_to_k: bool = True, augmentations: Sequence[str] = AUGMENTATIONS,
                 base: str = "toy"):
        super().__init__(base=base)
        if lam <= 0:
            raise UsageError(f"lam must be > 0 (paper: 0.1), got {lam}")
        self.lam = lam
        self.with_to_k = with_to_k
        self.augmentations = tuple(augmentations)

    def edited_parameters(self):
        return self.cross_attn_kv(None, self.with_to_k)

    def prompt_pairs(self, requests: Sequence[EditRequest]) -> list[tuple[str, str]]:
        """Every (source, destination) pair the closed form sums over: each request and its augmentations."""
        pairs = []
        for r in requests:
            pairs.append((r.source, r.target))
            pairs += [(augment(r.source, a), augment(r.target, a)) for a in self.augmentations]
        return pairs

    def derived_prompts(self, requests):
        return [p for pair in self.prompt_pairs(requests) for p in pair]

    def alignment(self, src: list[str], dst: list[str]) -> torch.Tensor:
        """``[P, 77]`` destination positions aligned to each source position."""
        tok = self.t2i.tokenizer
        an, a = tok.convert_tokens_to_ids("an</w>"), tok.convert_tokens_to_ids("a</w>")
        if tok.unk_token_id is not None and tok.unk_token_id in (an, a):
            raise UsageError("TIME's alignment maps 'an' to 'a', but this tokenizer has no 'an</w>'/'a</w>' tokens (not CLIP BPE)")
        same = {an: a}
        s_ids, d_ids = self.t2i.tokenize(src).tolist(), self.t2i.tokenize(dst).tolist()
        return torch.tensor([align_tokens(s, d, tok.eos_token_id, same) for s, d in zip(s_ids, d_ids)])

    @torch.no_grad()
    def edit(self, requests, preserve=()):
        if preserve:
            warnings.warn("TIME has no preservation term (paper Eq. 5): the preserve set is unused", stacklevel=2)
        pairs = self.prompt_pairs(requests)
        src, dst = [p[0] for p in pairs], [p[1] for p in pairs]
        c = self.t2i.encode(src).float()  # [P, 77, D]
        c_dst = self.t2i.encode(dst).float()
        idx = self.alignment(src, dst).to(c.device)  # [P, 77]
        c_star = torch.gather(c_dst, 1, idx[..., None].expand(-1, -1, c_dst.shape[-1]))
        K = c.reshape(-1, c.shape[-1]).T  # [D, P*77]
        K_star = c_star.reshape(-1, c.shape[-1]).T
        # every matrix shares K: one factored system, solved matrix by matrix
        cond = ridge_update_(list(self.edited_parameters().values()), K, lambda W: W @ K_star, self.lam)
        self.conditions.append(cond)
