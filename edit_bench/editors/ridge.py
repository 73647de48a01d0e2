"""The closed form shared by TIME, UCE, Diff-QuickFix and LocoEdit."""

from __future__ import annotations

import torch
from torch import Tensor


def ridge_update(W: Tensor, K: Tensor, V: Tensor, lam: float, weights: Tensor | None = None,
                 dtype: torch.dtype = torch.float64) -> Tensor:
    """Solve ``argmin_W' ||(W' K - V) diag(sqrt(w))||_F^2 + lam ||W' - W||_F^2``.

    The minimiser is ``W' = (lam W + V diag(w) K^T)(lam I + K diag(w) K^T)^-1`` (TIME Eq. 5, UCE Eq. 7);
    it is computed with ``torch.linalg.solve`` in ``dtype`` (float64 by default, whatever the model's
    dtype), never with an explicit inverse, and returned in ``W``'s dtype.

    Rows of ``W`` are independent, so matrices that share their keys (every cross-attention ``to_k``/``to_v``
    of a UNet sees the same text embedding) are solved in one call by stacking them along ``d_out``.

    Args:
        W: ``[d_out, d_in]`` the current weight.
        K: ``[d_in, N]`` keys, one column per constraint.
        V: ``[d_out, N]`` values the edited weight should produce for the keys.
        lam: ridge strength (> 0 unless ``K diag(w) K^T`` has full rank).
        weights: ``[N]`` non-negative weights of the columns (UCE's erase/preserve scales), or ``None``.
        dtype: solve precision, ``torch.float64`` or ``torch.float32``.

    Returns:
        ``[d_out, d_in]`` the edited weight.
    """
    if K.ndim != 2 or V.ndim != 2 or W.ndim != 2:
        raise ValueError(f"expected 2-D W, K, V; got {tuple(W.shape)}, {tuple(K.shape)}, {tuple(V.shape)}")
    d_out, d_in = W.shape
    if K.shape[0] != d_in or V.shape[0] != d_out or K.shape[1] != V.shape[1]:
        raise ValueError(
            f"shape mismatch: W {tuple(W.shape)} needs K [{d_in}, N] and V [{d_out}, N]; "
            f"got K {tuple(K.shape)}, V {tuple(V.shape)}"
        )
    Wd, Kd, Vd = W.detach().to(dtype), K.detach().to(dtype), V.detach().to(dtype)
    Kw = Kd if weights is None else Kd * weights.detach().to(dtype)
    A = lam * torch.eye(d_in, dtype=dtype, device=W.device) + Kw @ Kd.T  # [d_in, d_in], symmetric
    B = lam * Wd + Vd @ Kw.T  # [d_out, d_in]
    try:
        W_new = torch.linalg.solve(A, B.T).T  # B A^-1, since A = A^T
    except torch.linalg.LinAlgError as e:
        raise ValueError(f"ridge system is singular (lam={lam}, {K.shape[1]} keys of dim {d_in}): use lam > 0") from e
    return W_new.to(W.dtype)
