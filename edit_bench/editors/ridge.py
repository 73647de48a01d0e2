"""The closed forms of the cross-attention editors: the ridge solve shared by TIME, UCE, Diff-QuickFix, LocoEdit,
RECE and MACE, and the three other primitives the 2024-2026 erasers add (RECE's adversarial map, SPEED's
null-space-projected update, OCE's orthogonal Procrustes rotation). Precision policy for all of them: inputs are
cast to float64, factored once (Cholesky / LU / symmetric eigendecomposition / SVD, never an explicit inverse),
and the result is returned in the weight's own dtype.

Ridge.

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


MAX_CONDITION = 1e12  # beyond it a float64 solve keeps fewer than 4 significant digits


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
        if self.condition > MAX_CONDITION:  # float64 keeps fewer than 4 digits of the solution: not an edit
            raise UsageError(f"ridge system is numerically singular (condition {self.condition:.1e} > {MAX_CONDITION:.0e}; "
                             f"lam={lam}, {n} keys of dim {d_in}): use lam > 0")

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


# ---------------------------------------------------------------------------------------------- RECE
@torch.no_grad()
def adversarial_map(weights: Sequence[Tensor], originals: Sequence[Tensor], gamma: float) -> Tensor:
    """RECE's closed-form adversarial embedding map ``A`` ``[d_in, d_in]`` (float64):

    ``A = (sum_l W_l^T W_l + gamma I)^-1 sum_l W_l^T W0_l``, so that ``c' = A c`` minimises
    ``sum_l ||W_l c' - W0_l c||^2 + gamma ||c'||^2``: the embedding that makes the edited matrices ``W_l`` emit
    what the original ``W0_l`` emitted for ``c``. One Cholesky factor of the (SPD for ``gamma > 0``) left side.
    """
    if gamma <= 0:
        raise UsageError(f"RECE's regulariser gamma must be > 0 (paper: 0.1 nudity, 1e-3 artists), got {gamma}")
    d = weights[0].shape[1]
    lhs = gamma * torch.eye(d, dtype=torch.float64, device=weights[0].device)
    rhs = torch.zeros(d, d, dtype=torch.float64, device=weights[0].device)
    for W, W0 in zip(weights, originals, strict=True):
        W, W0 = W.detach().double(), W0.detach().to(W.device).double()
        lhs += W.T @ W
        rhs += W.T @ W0
    return torch.cholesky_solve(rhs, torch.linalg.cholesky(lhs))


# --------------------------------------------------------------------------------------------- SPEED
@torch.no_grad()
def nullspace_projector(C: Tensor, threshold: float) -> Tensor:
    """``P = U_{s < tau} U_{s < tau}^T`` ``[d, d]`` (float64): the projector onto the eigenvectors of the symmetric
    PSD ``C`` (SPEED's retain second moment) whose eigenvalues fall below ``threshold``, i.e. the directions the
    retain keys leave (almost) unused. ``eigh`` in float64 (SPEED's code: ``torch.svd`` in float32, the same
    subspace for a PSD matrix)."""
    C = C.detach().double()
    C = (C + C.T) / 2
    evals, evecs = torch.linalg.eigh(C)
    U = evecs[:, evals < threshold]
    if U.shape[1] == 0:
        raise UsageError(
            f"the retain set leaves no null space: every one of the {C.shape[0]} eigenvalues of its second moment is "
            f">= threshold {threshold:g} (smallest {float(evals[0]):.3g}); raise threshold or retain fewer concepts")
    return U @ U.T


@torch.no_grad()
def projected_update(W: Tensor, C_ee: Tensor, C_ae: Tensor, P: Tensor, K2: Tensor, alpha: float, lam: float) -> Tensor:
    """SPEED's closed-form change ``Delta`` ``[d_out, d_in]`` of one weight (float64 inside, ``W``'s dtype out):

    ``M = (C_ee P + alpha I)^-1``,
    ``Delta = W (C_ae - C_ee) P [I - M K2 (K2^T P M K2 + lam I)^-1 K2^T P] M``.

    ``Delta r = 0`` for every ``r`` with ``P r = 0`` (the retain keys' span) and ``Delta K2 = 0`` when ``lam = 0``
    (the invariant keys: BOS and the null text's centroids). ``M`` is applied by LU solves, never inverted.
    """
    d = W.shape[1]
    f64 = dict(dtype=torch.float64, device=W.device)
    C_ee, C_ae, P, K2 = (t.detach().to(**f64) for t in (C_ee, C_ae, P, K2))
    A = C_ee @ P + alpha * torch.eye(d, **f64)  # M = A^-1
    MK2 = torch.linalg.solve(A, K2)  # [d, m]
    S = K2.T @ P @ MK2 + lam * torch.eye(K2.shape[1], **f64)
    try:
        inner = torch.eye(d, **f64) - MK2 @ torch.linalg.solve(S, K2.T @ P)
    except torch.linalg.LinAlgError:
        raise UsageError(f"SPEED's invariant-key system K2^T P M K2 + lam I is singular (lam={lam}): use lam > 0 "
                         "(SPEED uses 0.5 when only the empty prompt is retained)") from None
    G = (C_ae - C_ee) @ P @ inner  # [d, d]
    T = torch.linalg.solve(A.T, G.T).T  # G M = G A^-1
    return (W.detach().double() @ T).to(W.dtype)


# ----------------------------------------------------------------------------------------------- OCE
@torch.no_grad()
def procrustes_rotation(M: Tensor, sign: str = "kabsch") -> Tensor:
    """``R = argmax_{R in SO(n)} tr(R^T M)`` ``[n, n]`` (float64): with ``M = U S V^T`` (SVD),
    ``R = U diag(1, ..., 1, det(U V^T)) V^T`` (Kabsch: the sign goes on the smallest singular direction, so R is a
    proper rotation and still the best one). OCE's code instead negates the last column of ``U V^T`` when its
    determinant is negative, which is orthogonal but not the optimum (``sign="last_column"`` reproduces it); both agree
    whenever ``det(U V^T) > 0``."""
    M = M.detach().double()
    if not bool(torch.isfinite(M).all()):
        raise UsageError("the Procrustes matrix has non-finite entries: check the scales and that the embeddings are finite")
    try:
        U, _, Vh = torch.linalg.svd(M)
    except torch.linalg.LinAlgError:
        raise UsageError(f"the SVD of the {tuple(M.shape)} Procrustes matrix did not converge (non-finite or "
                         "degenerate input): check the scales and that the embeddings are finite") from None
    R = U @ Vh
    negative = float(torch.linalg.det(R)) < 0
    if sign == "last_column":  # OCE's code: orthogonal, proper, but not the optimum when it triggers
        if negative:
            R[:, -1] *= -1
        return R
    if sign != "kabsch":
        raise UsageError(f"sign must be 'kabsch' or 'last_column' (OCE's code), got {sign!r}")
    D = torch.ones(M.shape[0], dtype=torch.float64, device=M.device)
    D[-1] = -1.0 if negative else 1.0
    return (U * D) @ Vh
