import pytest
import torch

from edit_bench.editors import ridge_update


def _oracle(W, K, V, lam, w=None):
    """Brute force: the stacked least-squares system [K^T sqrt(w); sqrt(lam) I] W'^T = [V^T sqrt(w); sqrt(lam) W^T]."""
    sw = torch.ones(K.shape[1], dtype=torch.float64) if w is None else w.double().sqrt()
    A = torch.cat([K.double().T * sw[:, None], lam**0.5 * torch.eye(K.shape[0], dtype=torch.float64)])
    B = torch.cat([V.double().T * sw[:, None], lam**0.5 * W.double().T])
    return torch.linalg.lstsq(A, B).solution.T


@pytest.mark.parametrize("n", [3, 40])  # fewer and more keys than dimensions
def test_ridge_equals_lstsq(n):
    g = torch.Generator().manual_seed(0)
    W, K, V = torch.randn(7, 5, generator=g), torch.randn(5, n, generator=g), torch.randn(7, n, generator=g)
    torch.testing.assert_close(ridge_update(W, K, V, 0.1).double(), _oracle(W, K, V, 0.1), atol=1e-5, rtol=1e-5)


def test_ridge_weights_and_float32():
    g = torch.Generator().manual_seed(1)
    W, K, V = torch.randn(4, 6, generator=g), torch.randn(6, 9, generator=g), torch.randn(4, 9, generator=g)
    w = torch.rand(9, generator=g) + 0.1
    torch.testing.assert_close(ridge_update(W, K, V, 0.5, w).double(), _oracle(W, K, V, 0.5, w), atol=1e-5, rtol=1e-5)
    out = ridge_update(W.half(), K, V, 0.5, w, dtype=torch.float32)
    assert out.dtype == torch.float16  # returned in W's dtype, solved in float32
    torch.testing.assert_close(out.double(), _oracle(W.half().float(), K, V, 0.5, w), atol=1e-2, rtol=1e-2)


def test_ridge_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape mismatch"):
        ridge_update(torch.zeros(3, 4), torch.zeros(5, 2), torch.zeros(3, 2), 0.1)


def test_one_factored_system_solves_every_matrix_in_place_and_reports_its_condition():
    """ridge_update_ edits several matrices sharing K against one Cholesky factor, each equal to the
    brute-force solution; the condition number is that of lam I + K K^T."""
    from edit_bench.editors.ridge import ridge_update_

    g = torch.Generator().manual_seed(2)
    K = torch.randn(6, 4, generator=g)
    params = [torch.nn.Parameter(torch.randn(d, 6, generator=g), requires_grad=False) for d in (3, 5)]
    targets = [torch.randn(6, 4, generator=g) for _ in (3, 5)]
    Ws = [p.detach().clone() for p in params]
    cond = ridge_update_(params, K, lambda W: W @ targets[0 if W.shape[0] == 3 else 1], 0.1)
    for p, W, T in zip(params, Ws, targets):
        torch.testing.assert_close(p.double(), _oracle(W, K, W @ T, 0.1), atol=1e-5, rtol=1e-5)
    eig = torch.linalg.eigvalsh(0.1 * torch.eye(6, dtype=torch.float64) + K.double() @ K.double().T)
    assert cond == pytest.approx(float(eig[-1] / eig[0]), rel=1e-9)


def test_ridge_rejects_a_singular_system_and_bad_weights():
    from edit_bench.errors import UsageError

    with pytest.raises(UsageError, match="singular.*lam > 0"):
        ridge_update(torch.zeros(3, 4), torch.zeros(4, 2), torch.zeros(3, 2), 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        ridge_update(torch.zeros(3, 4), torch.ones(4, 2), torch.zeros(3, 2), 0.1, weights=torch.tensor([1.0, -1.0]))
