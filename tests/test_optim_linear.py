"""``unroll.optim.linear``: DeepInverse 0.4.1's linear-solver call shapes, checked against
dense solves (``torch.linalg.solve``) in float64."""

from __future__ import annotations

import pytest
import torch

from unroll.linear_solve import ConvergenceWarning
from unroll.optim import linear as L
from unroll.optim.utils import least_squares_implicit_backward

D = torch.float64


def matvec(M):
    return lambda x: (M @ x.T).T


@pytest.fixture
def system():
    g = torch.Generator().manual_seed(0)
    mat = torch.randn(24, 24, dtype=D, generator=g)
    b = torch.randn(2, 24, dtype=D, generator=g)
    return mat, b


def test_krylov_solvers_match_dense_solves(system):
    mat, b = system
    spd = mat.T @ mat + 0.1 * torch.eye(24, dtype=D)
    sym = mat + mat.T
    cases = {
        "conjugate_gradient": (spd, L.conjugate_gradient(matvec(spd), b, tol=1e-11, max_iter=500)),
        "minres": (sym, L.minres(matvec(sym), b, tol=1e-11, max_iter=500)),
        "bicgstab": (sym, L.bicgstab(matvec(sym), b, tol=1e-11, max_iter=500)),
        "lsqr": (mat, L.lsqr(matvec(mat), matvec(mat.T), b, tol=1e-13, max_iter=500)[0]),
    }
    for name, (M, x) in cases.items():
        ref = torch.linalg.solve(M, b.T).T
        torch.testing.assert_close(x, ref, rtol=0, atol=1e-8, msg=name)
    zero = L.conjugate_gradient(matvec(spd), torch.zeros_like(b))
    assert torch.equal(zero, torch.zeros_like(b))


def test_damped_lsqr_and_least_squares_match_closed_forms(system):
    mat, b = system
    g = torch.Generator().manual_seed(1)
    x0, z = torch.randn(2, 2, 24, dtype=D, generator=g)
    eye = torch.eye(24, dtype=D)
    x, info = L.lsqr(matvec(mat), matvec(mat.T), b, eta=0.5, x0=x0, tol=1e-14, max_iter=500)
    ref = torch.linalg.solve(mat.T @ mat + 0.5 * eye, mat.T @ b.T + 0.5 * x0.T).T
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-10)
    assert bool(info.converged.all())
    h = L.least_squares(matvec(mat), matvec(mat.T), b, z=z, gamma=2.0, tol=1e-12, max_iter=500)
    ref = torch.linalg.solve(mat.T @ mat + 0.5 * eye, mat.T @ b.T + 0.5 * z.T).T
    torch.testing.assert_close(h, ref, rtol=0, atol=1e-10)


def test_lsqr_on_a_non_square_operator():
    g = torch.Generator().manual_seed(3)
    A = torch.randn(7, 5, dtype=D, generator=g)
    b = torch.randn(3, 7, dtype=D, generator=g)
    x, _ = L.lsqr(matvec(A), matvec(A.T), b, tol=1e-14, max_iter=200)
    ref = torch.linalg.lstsq(A, b.T).solution.T
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-10)
    x0 = torch.randn(3, 5, dtype=D, generator=g)
    x, _ = L.lsqr(matvec(A), matvec(A.T), b, eta=0.3, x0=x0, tol=1e-14, max_iter=200)
    ref = torch.linalg.solve(A.T @ A + 0.3 * torch.eye(5, dtype=D), A.T @ b.T + 0.3 * x0.T).T
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-10)


def test_least_squares_implicit_backward_gradients(system):
    from unroll.physics import LinearPhysics

    mat, b = system
    physics = LinearPhysics(matvec(mat), matvec(mat.T), max_iter=500, tol=1e-12)
    z = torch.randn(2, 24, dtype=D, generator=torch.Generator().manual_seed(2)).requires_grad_()
    gamma = torch.tensor(2.0, dtype=D, requires_grad=True)
    h = least_squares_implicit_backward(physics, b, z, gamma=gamma)
    (dz, dg) = torch.autograd.grad(h.square().sum(), (z, gamma))

    def dense(z, gamma):
        M = mat.T @ mat + torch.eye(24, dtype=D) / gamma
        return torch.linalg.solve(M, mat.T @ b.T + z.T / gamma).T

    ref = torch.autograd.grad(dense(z, gamma).square().sum(), (z, gamma))
    torch.testing.assert_close(dz, ref[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(dg, ref[1], rtol=1e-9, atol=1e-10)


def test_options_errors_and_reports(system, capsys):
    mat, b = system
    spd = mat.T @ mat + 0.1 * torch.eye(24, dtype=D)
    L.conjugate_gradient(matvec(spd), b, tol=1e-10, max_iter=500, verbose=True)
    assert "conjugate_gradient: converged after" in capsys.readouterr().out
    with pytest.warns(ConvergenceWarning, match="solve_cg"):
        L.conjugate_gradient(matvec(spd), b, tol=1e-12, max_iter=2)
    with pytest.raises(ValueError, match=r"^unroll.optim.linear.minres: parallel_dim=1"):
        L.minres(matvec(spd), b, parallel_dim=1)
    with pytest.raises(TypeError, match=r"^unroll.optim.linear.bicgstab: left_precon="):
        L.bicgstab(matvec(spd), b, left_precon=lambda x: x)
    one = L.conjugate_gradient(matvec(spd), b[:1], tol=1e-11, max_iter=500, parallel_dim=None)
    torch.testing.assert_close(one, torch.linalg.solve(spd, b[:1].T).T, rtol=0, atol=1e-8)
