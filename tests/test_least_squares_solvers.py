"""The least-squares prox with each solver (``solver="CG"|"BiCGStab"|"lsqr"|"minres"``,
DeepInverse 0.4.1's names): forward against dense solves, implicit gradients against autograd
through the same solver run to convergence and through the dense solution (float64)."""

from __future__ import annotations

import pytest
import torch
from helpers import PHYSICS

from unroll.physics import least_squares
from unroll.physics._utils import SOLVERS

DT = torch.float64
TIGHT = {"tol": 1e-13, "max_iter": 1000}
CASES = [pytest.param(c, id=c.name) for c in PHYSICS]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dense(physics, x_shape):
    """The matrix of ``physics.A`` on one flattened sample, by applying it to a basis."""
    n = int(torch.Size(x_shape).numel())
    basis = torch.eye(n, dtype=DT).reshape(n, *x_shape)
    return physics.A(basis).reshape(n, -1).T


def problem(case):
    theta = case.tensor(gen(40))
    physics = case.make(theta)
    z = torch.rand(2, *case.x_shape, generator=gen(41), dtype=DT)
    ax = physics.A(torch.rand(2, *case.x_shape, generator=gen(42), dtype=DT))
    y = ax + 0.1 * torch.randn(ax.shape, generator=gen(43), dtype=DT)
    gamma = torch.tensor([0.6, 1.5], dtype=DT)
    return theta, z, y, gamma


def dense_prox(case, theta, z, y, gamma):
    a = dense(case.make(theta), case.x_shape)
    n = a.shape[1]
    out = []
    for i in range(z.shape[0]):
        h = a.T @ a + torch.eye(n, dtype=DT) / gamma[i]
        out.append(torch.linalg.solve(h, a.T @ y[i].reshape(-1) + z[i].reshape(-1) / gamma[i]))
    return torch.stack(out).reshape(z.shape)


def loss(h):
    w = torch.arange(1, h.numel() + 1, dtype=DT).reshape(h.shape).cos()
    return (torch.sin(h) * w).sum()


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("case", CASES)
def test_prox_equals_dense_solve(case, solver):
    theta, z, y, gamma = problem(case)
    h, info = least_squares(case.make(theta), y, z, gamma, solver=solver, return_info=True, **TIGHT)
    torch.testing.assert_close(h, dense_prox(case, theta, z, y, gamma), rtol=1e-10, atol=1e-11)
    assert bool(info.converged.all()) and info.converged.shape == (2,)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("case", CASES)
def test_implicit_gradient_equals_autograd_through_converged_solve(case, solver):
    """w.r.t. the centre, the data, γ and the operator's tensor."""
    inputs = problem(case)

    def grads(mode):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        theta, z, y, gamma = leaves
        if mode == "dense":
            h = dense_prox(case, theta, z, y, gamma)
        else:
            h = least_squares(
                case.make(theta),
                y,
                z,
                gamma,
                solver=solver,
                implicit_backward_solver=mode == "implicit",
                **TIGHT,
            )
        return torch.autograd.grad(loss(h), leaves)

    implicit, unrolled, ref = grads("implicit"), grads("unrolled"), grads("dense")
    for a, b, c in zip(implicit, unrolled, ref):
        assert float(c.abs().max()) > 1e-6
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(a, c, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("case", CASES)
def test_pseudo_inverse_each_solver(case, solver):
    theta, _, y, _ = problem(case)
    physics = case.make(theta)
    h = least_squares(physics, y, None, None, solver=solver, **TIGHT)
    a = dense(physics, case.x_shape)
    ref = (y.reshape(2, -1) @ torch.linalg.pinv(a).T).reshape(h.shape)
    torch.testing.assert_close(h, ref, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("solver", ["lsqr", "minres", "BiCGStab"])
def test_second_derivatives_and_func_transforms(solver):
    case = next(c for c in PHYSICS if c.name == "cs")
    theta, z, y, gamma = (t.clone().requires_grad_() for t in problem(case))

    def f(z, y, gamma, theta):
        return least_squares(case.make(theta), y, z, gamma, solver=solver, **TIGHT)

    tol = {"atol": 1e-8, "rtol": 1e-6, "eps": 1e-5}  # BiCGStab forward noise ~1e-14
    assert torch.autograd.gradcheck(f, (z, y, gamma, theta), **tol)
    assert torch.autograd.gradgradcheck(f, (z, y, gamma, theta), **tol)
    g = torch.func.grad(lambda z: loss(f(z, y.detach(), gamma.detach(), theta.detach())))(
        z.detach()
    )
    (ref,) = torch.autograd.grad(loss(dense_prox(case, theta, z, y, gamma)), z)
    torch.testing.assert_close(g, ref, rtol=1e-8, atol=1e-10)


def test_solver_names_are_deepinv_names_and_validated():
    case = PHYSICS[0]
    theta, z, y, gamma = problem(case)
    ref = least_squares(case.make(theta), y, z, gamma, solver="CG", **TIGHT)
    lower = least_squares(case.make(theta), y, z, gamma, solver="bicgstab", **TIGHT)
    torch.testing.assert_close(lower, ref, rtol=1e-10, atol=1e-11)
    with pytest.raises(ValueError, match="least_squares: solver must be one of 'CG'"):
        least_squares(case.make(theta), y, z, gamma, solver="gmres")


# ------------------------------------------------------------------ the physics' own setting
@pytest.mark.parametrize("solver", SOLVERS)
def test_physics_solver_setting_and_per_call_option_equal_dense_prox(solver):
    """``Blur(..., solver=...)`` (DeepInverse's constructor keyword), ``prox_l2(...,
    solver=...)`` for one call, ``replace`` and ``compose`` all reach the same dense solution."""
    from unroll.physics import Blur, compose, gaussian_blur

    kernel = gaussian_blur(1.0).to(DT)
    x_shape = (1, 10, 10)
    z = torch.rand(2, *x_shape, generator=gen(50), dtype=DT)
    base = Blur(kernel, padding="replicate", max_iter=1000, tol=1e-13)
    y = base.A(torch.rand(2, *x_shape, generator=gen(51), dtype=DT))
    a = dense(base, x_shape)
    n = a.shape[1]
    ref = torch.linalg.solve(
        (a.T @ a + torch.eye(n, dtype=DT) / 2.0)[None],
        (y.reshape(2, -1) @ a + z.reshape(2, -1) / 2.0)[..., None],
    ).reshape(z.shape)
    own = Blur(kernel, padding="replicate", max_iter=1000, tol=1e-13, solver=solver.lower())
    assert own.solver == solver and base.solver == "CG"
    for h in (
        own.prox_l2(z, y, 2.0),
        base.prox_l2(z, y, 2.0, solver=solver),
        base.replace(solver=solver).prox_l2(z, y, 2.0),
    ):
        torch.testing.assert_close(h, ref, rtol=1e-9, atol=1e-10)
    assert compose(own).solver == solver and compose(base, solver=solver).solver == solver


def test_solver_names_are_checked_everywhere_closed_forms_included():
    from unroll.physics import MRI, Blur, gaussian_blur

    with pytest.raises(ValueError, match="^Blur: solver must be one of 'CG', 'BiCGStab'"):
        Blur(gaussian_blur(1.0), solver="gmres")
    mri = MRI(torch.ones(8, 8))
    z = torch.rand(1, 2, 8, 8, generator=gen(52))
    with pytest.raises(ValueError, match="^MRI.prox_l2: solver must be one of"):
        mri.prox_l2(z, z, 1.0, solver="cholesky")
    # a closed form accepts a valid name and is unaffected by it (nothing iterative to choose)
    torch.testing.assert_close(mri.prox_l2(z, z, 1.0, solver="lsqr"), mri.prox_l2(z, z, 1.0))
