"""The closed form shared by TIME, UCE, Diff-QuickFix and LocoEdit.

``argmin_W' ||(W' K - V) diag(sqrt(w))||_F^2 + lam ||W' - W||_F^2`` has the minimiser
``W' = (lam W + V diag(w) K^T) A^-1`` with ``A = lam I + K diag(w) K^T`` (TIME Eq. 5, UCE Eq. 7). ``A`` is
symmetric positive definite for ``lam > 0``: it is factored once (Cholesky, float64) and every matrix that
shares the keys is solved against the factor one at a time, so an SDXL edit (70 sites, 140 matrices) never
holds more than one matrix in float64. Never an explicit inverse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..errors import UsageError


class RidgeSystem:
    """``A = lam I + K diag(w) K^T``, factored once; solves ``W'`` for any ``(W, V)`` sharing ``K``.

    Args:
        K: ``[d_in, N]`` keys, one column per constraint.
        lam: ridge strength (> 0 unless ``K diag(w) K^T`` has full rank).
        weights: ``[N]`` non-negative weights of the columns (UCE's erase/preserve scales), or ``None``.
        dtype: solve precision, ``torch.float64`` (default) or ``torch.float32``.
    """

    def __init__(self, K: Tensor, lam: float, weights: Tensor | None = None, dtype: torch.dtype = torch.float64):
        if K.ndim != 2:
            raise ValueError(f"expected 2-D keys K [d_in, N]; got {tuple(K.shape)}")
        d_in, n = K.shape
        if weights is not None and (weights.shape != (n,) or bool((weights < 0).any())):
            raise ValueError(f"weights must be [N] = [{n}] and non-negative; got shape {tuple(weights.shape)}")
        self.lam, self.dtype = lam, dtype
        self.K = K.detach().to(dtype)
        self.Kw = self.K if weights is None else self.K * weights.detach().to(K.device, dtype)
        A = lam * torch.eye(d_in, dtype=dtype, device=K.device) + self.Kw @ self.K.T  # [d_in, d_in]
        self.L, info = torch.linalg.cholesky_ex(A)
        if int(info) != 0:
            raise UsageError(f"ridge system is singular (lam={lam}, {n} keys of dim {d_in}): use lam > 0")
        eig = torch.linalg.eigvalsh(A)
        self.condition = float(eig[-1] / eig[0]) if float(eig[0]) > 0 else float("inf")

    def solve(self, W: Tensor, V: Tensor) -> Tensor:
        """``W'`` ``[d_out, d_in]`` (in ``W``'s dtype) for the current weight ``W`` and values ``V`` ``[d_out, N]``."""
        d_out, d_in = W.shape
        if d_in != self.K.shape[0] or V.shape != (d_out, self.K.shape[1]):
            raise ValueError(f"shape mismatch: W {tuple(W.shape)} needs K [{d_in}, N] and V [{d_out}, N]; "
                             f"got K {tuple(self.K.shape)}, V {tuple(V.shape)}")
        B = self.lam * W.detach().to(self.dtype) + V.detach().to(self.dtype) @ self.Kw.T  # [d_out, d_in]
        return torch.cholesky_solve(B.T, self.L).T.to(W.dtype)  # B A^-1, since A = A^T


def ridge_update(W: Tensor, K: Tensor, V: Tensor, lam: float, weights: Tensor | None = None,
                 dtype: torch.dtype = torch.float64) -> Tensor:
    """Solve ``argmin_W' ||(W' K - V) diag(sqrt(w))||_F^2 + lam ||W' - W||_F^2`` for one matrix.

    Args:
        W: ``[d_out, d_in]`` the current weight.
        K: ``[d_in, N]`` keys, one column per constraint.
        V: ``[d_out, N]`` values the edited weight should produce for the keys.
        lam: ridge strength (> 0 unless ``K diag(w) K^T`` has full rank).
        weights: ``[N]`` non-negative weights of the columns, or ``None``.
        dtype: solve precision.

    Returns:
        ``[d_out, d_in]`` the edited weight, in ``W``'s dtype.
    """
    if W.ndim != 2 or V.ndim != 2:
        raise ValueError(f"expected 2-D W, K, V; got {tuple(W.shape)}, {tuple(K.shape)}, {tuple(V.shape)}")
    return RidgeSystem(K, lam, weights, dtype).solve(W, V)


@torch.no_grad()
def ridge_update_(params: Sequence[torch.nn.Parameter], K: Tensor, values: Callable[[Tensor], Tensor], lam: float,
                  weights: Tensor | None = None) -> float:
    """Edit every matrix of ``params`` in place against one factored system; returns its condition number.

    Args:
        params: weights ``[d_out_i, d_in]`` that share the keys (every cross-attention ``to_k``/``to_v``).
        K: ``[d_in, N]`` keys.
        values: ``W_i (float32) -> V_i [d_out_i, N]``, the values the edited ``W_i`` should produce.
        lam, weights: see :class:`RidgeSystem`.
    """
    system = RidgeSystem(K, lam, weights)
    for p in params:
        W = p.float()
        p.copy_(system.solve(W, values(W)).to(p.dtype))
    return system.condition
