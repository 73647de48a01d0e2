"""SPEED: Scalable, Precise and Efficient concept Erasure (Li et al., ICLR 2026, arXiv 2503.07392).

One closed form per cross-attention ``to_v`` (``params: V``), every embedding from the unedited model, taken at
the last subject token (``tokens: "all"``: positions 1..76, SPEED's nudity mode):

- targets ``c_i`` (the requests' sources) and anchors ``a_i`` (their targets; ``""`` = the null text), as means
  over concepts ``C_ee = 1/N sum c c^T``, ``C_ae = 1/N sum a c^T``;
- the retain set ``R`` (the editor's ``retain`` plus each case's preserve set; none: positions 1..76 of ``""``),
  minus any name that contains a target as a whole word;
- per layer, with ``Delta_0 = W (C_ae - C_ee)(I + C_ee)^-1`` (the unconstrained edit):
  IPF keeps the retain keys with ``||Delta_0 r||`` above their mean; DPA adds ``aug`` perturbations
  ``r + P_min eps`` (``eps ~ N(0, I)``, ``P_min`` the projector on the right singular vector of ``W``'s smallest
  singular value) of each kept key, keeping those above their chunk's mean;
- ``P`` projects on the eigenvectors of ``C_rr`` (mean second moment of the refined retain keys) below
  ``threshold``; ``K2`` = the null text's BOS and 3 k-means centroids of its positions 1..76 (IEC);
- ``W += W (C_ae - C_ee) P [I - M K2 (K2^T P M K2 + lam I)^-1 K2^T P] M``, ``M = (C_ee P + alpha I)^-1``
  (:func:`~edit_bench.editors.ridge.projected_update`).

Randomness (the k-means initialisation, DPA's noise) comes from one generator seeded by ``seed``, so an edit
repeats exactly; SPEED's code draws from the global RNG (seed 0) and uses ``kmeans_pytorch``. The k-means here is
Lloyd's algorithm from ``clusters`` distinct points drawn by that generator, iterated to a fixed assignment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

import torch

from ..errors import UsageError
from .base import Editor
from .ridge import nullspace_projector, projected_update


def kmeans(X: torch.Tensor, k: int, generator: torch.Generator, iters: int = 100) -> torch.Tensor:
    """Centroids ``[k, D]`` of Lloyd's k-means on the rows of ``X`` from ``k`` distinct rows drawn by ``generator``."""
    C = X[torch.randperm(X.shape[0], generator=generator)[:k]].clone()
    assign = None
    for _ in range(iters):
        new = torch.cdist(X, C).argmin(1)
        if assign is not None and torch.equal(new, assign):
            break
        assign = new
        for j in range(k):
            if bool((assign == j).any()):
                C[j] = X[assign == j].mean(0)
    return C


class SPEED(Editor):
    """SPEED's null-space-constrained closed form on every cross-attention ``to_v``.

    Args:
        threshold: tau, eigenvalues of the retain second moment below it span the null space (SPEED: 0.1;
            celebrities 1e-4).
        retain_scale: alpha (SPEED: 1.0; celebrities 0.05, nudity 0.7).
        lam: lambda of the invariant-key system; 0 makes ``Delta K2 = 0`` exact (SPEED: 0; nudity 0.5).
        aug: DPA perturbations per retain key (SPEED: 10; 0 switches DPA off).
        filter: IPF on (SPEED: on; ``--disable_filter`` for celebrities).
        retain: concepts retained in every edit besides each case's preserve set.
        tokens: ``"last"`` (the last subject token, SPEED's default) or ``"all"`` (positions 1..76, its nudity mode).
        with_to_k: also edit ``to_k`` (SPEED's ``--params KV``; default ``V``).
        clusters: k-means centroids of the null text in ``K2`` (SPEED: 3).
        seed: seeds the k-means initialisation and DPA's noise (SPEED: 0).
        base: see :class:`~edit_bench.editors.base.Editor`.
    """

    edits = "cross_attn_kv"
    multi_request = True

    def __init__(self, threshold: float = 0.1, retain_scale: float = 1.0, lam: float = 0.0, aug: int = 10,
                 filter: bool = True, retain: Sequence[str] = (), tokens: Literal["last", "all"] = "last",
                 with_to_k: bool = False, clusters: int = 3, seed: int = 0, base: str = "toy"):
        super().__init__(base=base)
        if threshold <= 0 or retain_scale <= 0 or lam < 0 or aug < 0 or clusters < 1:
            raise UsageError(f"SPEED needs threshold > 0, retain_scale > 0, lam >= 0, aug >= 0, clusters >= 1; got "
                             f"{threshold}, {retain_scale}, {lam}, {aug}, {clusters}")
        if tokens not in ("last", "all"):
            raise UsageError(f"tokens must be 'last' (SPEED's default) or 'all' (its nudity mode), got {tokens!r}")
        self.threshold, self.retain_scale, self.lam, self.aug, self.filter = threshold, retain_scale, lam, aug, filter
        self.retain, self.tokens, self.with_to_k, self.clusters, self.seed = tuple(retain), tokens, with_to_k, clusters, seed
        self._log: list[dict] = []

    def edited_parameters(self):
        return self.cross_attn_kv(None, self.with_to_k)

    def derived_prompts(self, requests):
        return [p for r in requests for p in (r.source, r.target) if p]

    def _keys(self, prompts: list[str]) -> torch.Tensor:
        """``[N * n, D]`` embeddings of ``prompts`` at their last subject token (or positions 1..76)."""
        if self.tokens == "all":
            emb = self.t2i.encode(prompts).double()
            return emb[:, 1:].reshape(-1, emb.shape[-1])
        emb = self.t2i.encode(prompts, longest=True).double()  # the last subject token only: no padding needed
        return torch.stack([emb[j, self.t2i.token_index(p)] for j, p in enumerate(prompts)])

    def retain_keys(self, requests, preserve) -> tuple[torch.Tensor, list[str]]:
        names = list(dict.fromkeys([*self.retain, *preserve]))
        targets = [r.source.lower() for r in requests]
        names = [n for n in names if n and not any(re.search(r"\b" + re.escape(t) + r"\b", n.lower()) for t in targets)]
        if not names:  # SPEED without a retain file: the null text's positions 1..76
            return self.t2i.encode([""]).double()[0, 1:], []
        emb = self.t2i.encode(names, longest=True).double()
        return torch.stack([emb[j, self.t2i.token_index(n)] for j, n in enumerate(names)]), names

    @torch.no_grad()
    def edit(self, requests, preserve=()):
        if not requests:
            raise UsageError("SPEED needs at least one concept to erase")
        g = torch.Generator().manual_seed(self.seed)
        sources, anchors = [r.source for r in requests], [r.target for r in requests]
        c, a = self._keys(sources), self._keys(anchors)
        n = len(requests)
        C_ee, C_ae = c.T @ c / n, a.T @ c / n  # means over concepts (sums over positions in "all" mode)
        R, names = self.retain_keys(requests, preserve)
        null = self.t2i.encode([""]).double()[0]
        K2 = torch.cat([null[:1], kmeans(null[1:].cpu(), self.clusters, g).to(null.device)]).T  # [D, 1 + clusters]
        d = C_ee.shape[0]
        I = torch.eye(d, dtype=torch.float64, device=C_ee.device)
        B0 = torch.linalg.solve(I + C_ee, (C_ae - C_ee).T).T  # (C_ae - C_ee)(I + C_ee)^-1; Delta_0 = W B0
        layers = {"retain_names": len(names), "retain_keys": [], "null_dims": []}
        for name, p in self.edited_parameters().items():
            W = p.detach().double()
            D0 = W @ B0
            Rl = R
            if self.filter and self.aug > 0:  # IPF (SPEED applies it only with DPA on)
                norms = (Rl @ D0.T).norm(dim=1)
                Rl = Rl[norms > norms.mean()]
            if self.aug > 0:
                v = torch.linalg.svd(W, full_matrices=False).Vh[-1]  # smallest singular direction of W
                extra = []
                for i in range(0, Rl.shape[0], 128):
                    chunk = Rl[i:i + 128]
                    eps = torch.randn(self.aug, *chunk.shape, generator=g, dtype=torch.float64).to(chunk.device)
                    pert = (chunk[None] + (eps @ v)[..., None] * v).reshape(-1, d)
                    norms = (pert @ D0.T).norm(dim=1)
                    extra.append(pert[norms > norms.mean()])
                Rl = torch.cat([Rl, *extra])
            try:
                P = nullspace_projector(Rl.T @ Rl / Rl.shape[0], self.threshold)
            except UsageError as e:
                raise UsageError(f"{name}: {Rl.shape[0]} retain keys (from {f'{len(names)} retained prompts' if names else 'the null text'}) in {d} "
                                 f"dimensions: {e}") from None
            delta = projected_update(W, C_ee, C_ae, P, K2, self.retain_scale, self.lam)
            p.add_(delta.to(p.dtype))
            layers["retain_keys"].append(int(Rl.shape[0]))
            layers["null_dims"].append(int(round(float(torch.trace(P)))))
        self._log.append(layers)

    def report(self) -> dict:
        out = super().report()
        if self._log:
            last = self._log[-1]
            out["speed"] = {"retain_names": last["retain_names"],
                            "retain_keys": [min(last["retain_keys"]), max(last["retain_keys"])],
                            "null_dims": [min(last["null_dims"]), max(last["null_dims"])]}
        return out
