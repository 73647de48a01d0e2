"""RECE: Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024, arXiv 2407.12383).

UCE first (the paper-era closed form, :class:`~edit_bench.editors.uce.UCE`), then ``epochs`` rounds of:

1. the closed-form adversarial embedding of each erased concept, all 77 positions of its prompt:
   ``c'_t = A c_t``, ``A = (sum_l W_l^T W_l + gamma I)^-1 sum_l W_l^T W0_l`` over every edited matrix
   (:func:`~edit_bench.editors.ridge.adversarial_map`, RECE's ``close_regzero``): the embedding under which the
   *edited* model emits what the *original* emitted for the concept;
2. one ridge solve per matrix on the current weights: keys ``c'_t`` to the guide's position-aligned values
   ``W c^g_t`` (weight ``adv_erase_scale``), and all 77 positions of ``" "`` (once per concept, RECE's default
   retain list; one copy here, weighted by the number of concepts) and of every preserved concept kept at ``W c``
   (weight ``adv_preserve_scale``), ridge ``adv_lam``.

Anchor, values and preserved outputs use the current ``W`` (as RECE's code), so the rounds compound. RECE's
script also renders a validation set after each round and keeps the best round (a NudeNet or classifier score);
here every round runs and the last is the edit: choose ``epochs`` as RECE's scripts do (3 nudity, 2 unsafe,
1 artists and objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from ..errors import UsageError
from .ridge import adversarial_map, ridge_update_
from .uce import UCE


class RECE(UCE):
    """RECE: UCE, then closed-form adversarial embeddings erased round by round.

    Args:
        epochs: rounds after UCE (RECE's scripts: 3 nudity, 1 artists/objects).
        gamma: the adversarial map's regulariser (``--regular_scale``: 0.1 nudity and "easy" objects, 1e-3 artists
            and "hard" objects).
        adv_lam, adv_erase_scale, adv_preserve_scale: the rounds' ridge ``--lamb`` 0.1, ``--erase_scale`` 1,
            ``--preserve_scale`` 0.1 (RECE's README: lambda_1 = lambda_2 = 0.1).
        lam, erase_scale, preserve_scale, tokens, expand, preserve, with_to_k: the UCE warm start
            (:class:`~edit_bench.editors.uce.UCE`; RECE loads UCE's paper-era edit: lam 0.5, s_e 1,
            s_p max(0.1, 1/|P|), last subject token through padding, ``""`` preserved).
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    families = ("sd1", "sd2", "sdxl")  # UCE has an MMDiT form; RECE's adversarial rounds have none
    derives = {"W^SD of the adversarial map": "reference"}

    def __init__(self, epochs: int = 3, gamma: float = 0.1, adv_lam: float = 0.1, adv_erase_scale: float = 1.0,
                 adv_preserve_scale: float = 0.1, lam: float = 0.5, erase_scale: float = 1.0,
                 preserve_scale: float | None = None, tokens: Literal["last_to_end", "last"] = "last_to_end",
                 expand: Literal["art", "object"] | None = None, preserve: Sequence[str] = (), with_to_k: bool = True,
                 base: str = "toy"):
        super().__init__(lam=lam, erase_scale=erase_scale, preserve_scale=preserve_scale, tokens=tokens, expand=expand,
                         preserve=preserve, with_to_k=with_to_k, base=base)
        if epochs < 0 or gamma <= 0 or adv_lam <= 0 or adv_erase_scale < 0 or adv_preserve_scale < 0:
            raise UsageError(f"RECE needs epochs >= 0, gamma > 0, adv_lam > 0 and non-negative scales; got epochs "
                             f"{epochs}, gamma {gamma}, adv_lam {adv_lam}, scales {adv_erase_scale}, {adv_preserve_scale}")
        self.epochs, self.gamma = epochs, gamma
        self.adv_lam, self.adv_erase_scale, self.adv_preserve_scale = adv_lam, adv_erase_scale, adv_preserve_scale
        self._rounds: list[float] = []

    @torch.no_grad()
    def edit(self, requests, preserve=()):
        if not requests:
            raise UsageError("RECE needs at least one concept to erase")
        super().edit(requests, preserve)  # the UCE warm start
        params = self.edited_parameters()
        originals = self.reference()  # W0: the weights this edit starts from
        sources = [r.source for r in requests]
        guides = [r.target if r.target.strip() else " " for r in requests]
        keep = [q for q in dict.fromkeys([*self.preserve, *preserve]) if q.strip() and q.lower() not in {s.lower() for s in sources}]
        # the retained " ": RECE's scripts without preserved concepts list it once per concept (one copy weighted
        # len(requests) times is the same sum); its scripts that take preserved concepts list it once
        retain = [" "] + keep
        c = self.t2i.encode(sources).double()  # [N, 77, D]
        D = c.shape[-1]
        V_g = self.t2i.encode(guides).double().reshape(-1, D).T  # [D, N*77], position-aligned with the keys
        C_q = self.t2i.encode(retain).double().reshape(-1, D).T
        L = c.shape[1]
        w_q = torch.full((C_q.shape[1],), float(self.adv_preserve_scale), dtype=torch.float64)
        if not keep:
            w_q[:L] *= len(requests)
        for _ in range(self.epochs):
            A = adversarial_map([p.detach() for p in params.values()], [originals[n] for n in params], self.gamma)
            K_adv = A @ c.reshape(-1, D).T  # c'_t = A c_t for every position
            K = torch.cat([K_adv, C_q], 1)
            w = torch.cat([torch.full((K_adv.shape[1],), float(self.adv_erase_scale), dtype=torch.float64), w_q]).to(K.device)
            self.conditions.append(ridge_update_(list(params.values()), K, lambda W: W.double() @ torch.cat([V_g, C_q], 1),
                                                 self.adv_lam, weights=w))
            self._rounds.append(float(torch.linalg.matrix_norm(A - torch.eye(D, dtype=A.dtype, device=A.device))))

    def report(self) -> dict:
        out = super().report()
        if self._rounds:
            out["rece"] = {"rounds": self.epochs, "adversarial_map_shift": self._rounds[-self.epochs:] if self.epochs else []}
        return out
