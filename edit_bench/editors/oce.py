"""OCE: Orthogonal Concept Erasure (Sun et al., ICML 2026, arXiv 2605.28902).

Every cross-attention ``to_v`` is rotated, never rescaled: ``W* = R W`` with ``R`` the proper rotation maximising
``tr(R^T M)`` (one SVD, :func:`~edit_bench.editors.ridge.procrustes_rotation`), where, from last-subject-token
embeddings of the erased concepts ``e_i``, their guides ``g_j`` and the preserved concepts ``p_k``:

    E = orth([W e_i / ||W e_i||]),  E* = orth([W g_j / ||W g_j||]),  G = E E^T,  G* = E* E*^T
    M = -s_e G (I - G*) + s_c sum_k (W p_k)(W p_k)^T + s_g W K0 W^T + lam W W^T

``K0`` (the global prior) is ``E[h h^T]`` of the context over every token, BOS through EOS, of a caption corpus
(OCE: COCO-30k; cached per model and corpus, :func:`~edit_bench.editors.stats.context_moment`). Orthonormal bases
come from a reduced QR of the distinct normalised outputs: OCE pads the guides to the number of concepts by
repeating them, which leaves the QR's extra columns arbitrary; the duplicates are dropped here, so ``E*`` spans
exactly the guides.

On SD3 and FLUX (OCE's ``oce_flux.py``) the same rotation edits ``transformer.context_embedder``, the keys are the
T5 state at ``attention_mask.sum() - 2`` (:meth:`~edit_bench.models.mmdit.MMDiTModel.last_token_positions`; SD3
adds CLIP's last token) and ``K0`` averages the context over every position a tokenizer's mask holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..errors import UsageError
from .base import Editor
from .ridge import procrustes_rotation
from ..models.toy import SPECS as TOY_SPECS
from .stats import DEFAULT_CORPUS, context_moment
from .uce import TEMPLATES

TOY_CORPUS = "datasets/toy/toy_captions.csv"


def _basis(outputs: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis ``[d_out, r]`` of the distinct normalised columns of ``outputs``."""
    cols = torch.nn.functional.normalize(outputs, dim=0)
    cols = torch.unique(cols.T, dim=0).T
    return torch.linalg.qr(cols, mode="reduced").Q


class OCE(Editor):
    """OCE's orthogonal Procrustes edit of every cross-attention ``to_v``.

    Args:
        erase_scale: s_e (OCE's CLI default 1; its scripts 500-3500).
        global_scale: s_g of the global prior ``W K0 W^T`` (CLI 0.5; scripts 10-70).
        concept_scale: s_c of the preserved concepts (CLI 0.3; scripts 0-5).
        lam: the ``W W^T`` term (CLI 1.5; scripts 10).
        expand: ``None``, ``"art"`` or ``"object"``: add the five template prompts of each concept and its guide
            (OCE's ``--expand_prompts``).
        preserve: concepts preserved in every edit besides each case's preserve set.
        corpus: captions of the global prior (``None``: the toy captions on the toy world, COCO-30k otherwise).
        corpus_samples: at most this many captions (OCE: all 30,000).
        stats_dir: where the prior is cached.
        sign: ``"kabsch"`` (the proper rotation that maximises the objective) or ``"last_column"`` (OCE's code:
            when ``det(U V^T) < 0`` it negates the rotation's last column, which is not the optimum; on tiny:sd1 this
            happens in 1-6 of 16 layers and moves those layers' edits by 0.7-3.3 times their size).
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "cross_attn_kv"
    multi_request = True
    families = ("sd1", "sd2", "sdxl", "sd3", "flux")  # SD3 / FLUX: context_embedder (OCE's oce_flux.py)
    files = {"corpus": "input", "stats_dir": "cache"}
    derives = {"global prior K0": "current"}  # cached by a digest of the text-encoder weights
    contract_args = {"corpus_samples": 500}

    def __init__(self, erase_scale: float = 1.0, global_scale: float = 0.5, concept_scale: float = 0.3, lam: float = 1.5,
                 expand: Literal["art", "object"] | None = None, preserve: Sequence[str] = (), corpus: str | None = None,
                 corpus_samples: int = 30_000, stats_dir: str | None = None,
                 sign: Literal["kabsch", "last_column"] = "kabsch", base: str = "toy"):
        super().__init__(base=base)
        if min(erase_scale, global_scale, concept_scale, lam) < 0:
            raise UsageError(f"OCE's scales must be >= 0; got s_e {erase_scale}, s_g {global_scale}, s_c {concept_scale}, lam {lam}")
        if expand not in (None, *TEMPLATES):
            raise UsageError(f"expand must be null, 'art' or 'object', got {expand!r}")
        self.erase_scale, self.global_scale, self.concept_scale, self.lam = erase_scale, global_scale, concept_scale, lam
        self.expand, self.preserve = expand, tuple(preserve)
        self.corpus = corpus or (TOY_CORPUS if base in TOY_SPECS else DEFAULT_CORPUS)
        self.corpus_samples, self.stats_dir = corpus_samples, stats_dir
        self.resolved(corpus=self.corpus)
        if sign not in ("kabsch", "last_column"):
            raise UsageError(f"sign must be 'kabsch' or 'last_column' (OCE's code), got {sign!r}")
        self.sign = sign
        self._info: dict = {}

    def edited_parameters(self):
        if self.t2i.family in ("sd3", "flux"):  # OCE's FLUX form rotates the text side's input projection
            return {f"{n}.weight": m.weight for n, m in self.t2i.text_inputs(("sequence",)).items()}
        return self.cross_attn_kv(None, with_to_k=False)

    def pairs(self, requests) -> tuple[list[str], list[str]]:
        """Erased prompts and their guides (``""`` guides to the null text's BOS, as OCE's ``' '``)."""
        erase, guide = [], []
        for r in requests:
            erase.append(r.source)
            guide.append(r.target)
            for t in TEMPLATES.get(self.expand, ()):
                erase.append(t.format(r.source))
                guide.append(t.format(r.target.strip() or " "))
        return erase, guide

    def derived_prompts(self, requests):
        e, g = self.pairs(requests)
        return [p for p in e + g if p]

    def _last(self, prompts: list[str]) -> torch.Tensor:
        if self.t2i.family in ("sd3", "flux"):  # the T5 state at attention_mask.sum() - 2 (SD3: CLIP's last token too)
            ctx = self.t2i.encode(prompts).double()
            return torch.cat([ctx[j, self.t2i.last_token_positions(p)] for j, p in enumerate(prompts)]).T
        emb = self.t2i.encode(prompts, longest=True).double()  # the last subject token only: no padding needed
        return torch.stack([emb[j, self.t2i.token_index(p) if p.strip() else 0] for j, p in enumerate(prompts)]).T

    @torch.no_grad()
    def edit(self, requests, preserve=()):
        if not requests:
            raise UsageError("OCE needs at least one concept to erase")
        erase, guide = self.pairs(requests)
        keep = [q for q in dict.fromkeys([*self.preserve, *preserve]) if q.strip() and q.lower() not in {e.lower() for e in erase}]
        E_in, G_in = self._last(erase), self._last(guide)
        P_in = self._last(keep) if keep else None
        K0, n_tokens, path = context_moment(self.t2i, self.corpus, self.corpus_samples, "tokens", self.stats_dir)
        K0 = K0.to(E_in.device, torch.float64)
        for p in self.edited_parameters().values():
            W = p.detach().double()
            E, Es = _basis(W @ E_in), _basis(W @ G_in)
            I = torch.eye(W.shape[0], dtype=torch.float64, device=W.device)
            M = -self.erase_scale * (E @ E.T) @ (I - Es @ Es.T) + self.global_scale * W @ K0 @ W.T + self.lam * W @ W.T
            if P_in is not None:
                Wp = W @ P_in
                M = M + self.concept_scale * Wp @ Wp.T
            p.copy_((procrustes_rotation(M, self.sign) @ W).to(p.dtype))
        self._info = {"prior_corpus": self.corpus, "prior_tokens": n_tokens, "prior_file": str(path),
                      "erased_prompts": len(erase), "preserved": len(keep)}

    def report(self) -> dict:
        return {**super().report(), **({"oce": self._info} if self._info else {})}
