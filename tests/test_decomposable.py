"""``DecomposablePhysics`` (``A = U diag(m) Vᴴ``) against dense matrices in float64: the
operator, its adjoint, the prox (dense solve), ``A_dagger`` (``torch.linalg.pinv``) and the
gradients of the closed form (autograd through the dense solve)."""

from __future__ import annotations

import pytest
import torch

from unroll.physics import DecomposablePhysics

D = torch.float64


def svd_physics(m: int = 5, n: int = 7, dtype=D, seed: int = 0, zero: bool = True):
    """A random ``m × n`` operator from its thin SVD: ``U`` (m × r), ``V`` (n × r), r = 5,
    one singular value zero (rank-deficient) when ``zero``."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(m, n, dtype=dtype, generator=g)
    U, s, Vh = torch.linalg.svd(M, full_matrices=False)
    if zero:
        s = s.clone()
        s[-1] = 0
    V = Vh.mH
    physics = DecomposablePhysics(
        U=lambda a: a @ U.T,
        U_adjoint=lambda y: y @ U.conj(),
        V=lambda a: a @ V.T,
        V_adjoint=lambda x: x @ V.conj(),
        mask=s.to(dtype),
    )
    return physics, U @ torch.diag(s).to(dtype) @ Vh


@pytest.mark.parametrize("dtype", [D, torch.complex128])
def test_operator_prox_and_pseudo_inverse_match_dense(dtype):
    physics, M = svd_physics(dtype=dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 7, dtype=dtype, generator=g)
    y = torch.randn(3, 5, dtype=dtype, generator=g)
    z = torch.randn(3, 7, dtype=dtype, generator=g)
    torch.testing.assert_close(physics.A(x), x @ M.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(physics.A_adjoint(y), y @ M.conj(), rtol=0, atol=1e-12)
    gamma = torch.tensor([0.5, 2.0, 9.0], dtype=D)
    h = physics.prox_l2(z, y, gamma)
    for i in range(3):
        lhs = M.mH @ M + torch.eye(7, dtype=dtype) / gamma[i]
        ref = torch.linalg.solve(lhs, M.mH @ y[i] + z[i] / gamma[i])
        torch.testing.assert_close(h[i], ref, rtol=0, atol=1e-12)
    ref = y @ torch.linalg.pinv(M).T
    torch.testing.assert_close(physics.A_dagger(y), ref, rtol=0, atol=1e-10)


def test_gradients_through_the_closed_form_match_dense():
    physics, M = svd_physics(zero=False)
    mask = physics.mask.clone().requires_grad_()
    physics = physics.replace(mask=mask)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(2, 7, dtype=D, generator=g, requires_grad=True)
    y = torch.randn(2, 5, dtype=D, generator=g)
    gamma = torch.tensor(1.5, dtype=D, requires_grad=True)
    w = torch.randn(2, 7, dtype=D, generator=g)
    ours = torch.autograd.grad((physics.prox_l2(z, y, gamma) * w).sum(), (mask, z, gamma))

    U, _, Vh = torch.linalg.svd(M, full_matrices=False)

    def dense(mask, z, gamma):
        A = U @ torch.diag(mask) @ Vh
        lhs = A.T @ A + torch.eye(7, dtype=D) / gamma
        return torch.linalg.solve(lhs, A.T @ y.T + z.T / gamma).T

    ref = torch.autograd.grad((dense(mask, z, gamma) * w).sum(), (mask, z, gamma))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_per_pixel_gamma_runs_cg_and_errors_name_the_class():
    physics, M = svd_physics()
    z = torch.randn(2, 7, dtype=D)
    y = torch.randn(2, 5, dtype=D)
    gamma = torch.full((2, 7), 2.0, dtype=D)
    tight = physics.replace(tol=1e-12, max_iter=500)
    torch.testing.assert_close(tight.prox_l2(z, y, gamma), physics.prox_l2(z, y, 2.0))
    with pytest.raises(ValueError, match="^DecomposablePhysics: pass both U and U_adjoint"):
        DecomposablePhysics(U=lambda a: a)
    with pytest.raises(TypeError, match="^DecomposablePhysics: mask must be"):
        DecomposablePhysics(mask="ones")
    diag = DecomposablePhysics(mask=torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(
        diag.A_dagger(torch.tensor([[4.0, 3.0]])), torch.tensor([[2.0, 0.0]])
    )
