"""Classical algorithms against closed forms and long independent reference runs (float64)."""

import pytest
import torch
from dense_physics import MatrixPhysics  # shared test operator (tests/dense_physics.py)
from helpers import (  # shared tables and closed forms (tests/helpers.py)
    algorithm_names,
    hqs_tikhonov_fixed_point,
    matrix_problem,
    tikhonov_params,
    tikhonov_solution,
)

from unroll import algorithms
from unroll.algorithms import run
from unroll.optim import L1, L2, L1Prior, Tikhonov, TVPrior
from unroll.optim.prior import grad_adjoint, image_gradient

DT = torch.float64


def identity_problem(seed=1, batch=2, hw=(5, 5)):
    g = torch.Generator().manual_seed(seed)
    n = hw[0] * hw[1]
    physics = MatrixPhysics(torch.eye(n, dtype=DT), (1, *hw))
    return physics, torch.randn(batch, n, generator=g, dtype=DT)


CONVEX = algorithm_names(minimises=True)  # all but HQS (which minimises a Moreau envelope)
PROXIMAL = algorithm_names(prior_grad=False)  # all but GD (which needs the prior's gradient)


@pytest.mark.parametrize("name", CONVEX)
def test_tikhonov_deblurring_closed_form(name):
    physics, y = matrix_problem()
    lam = 0.3
    alg = getattr(algorithms, name)(L2(), Tikhonov())
    x, info = run(alg, y, physics, tikhonov_params(name, physics, lam), 3000, tol=1e-13)
    ref = tikhonov_solution(physics, y, lam)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-8)
    assert bool(info.converged.all())


def test_hqs_fixed_point_closed_form():
    # HQS minimises env_{γf} + λg; its fixed point x = M(Aᵀy + x/γ)/(1+λγ), M = (AᵀA + I/γ)⁻¹
    physics, y = matrix_problem()
    lam, gamma = 0.3, 0.7
    alg = algorithms.hqs(L2(), Tikhonov())
    x, _ = run(alg, y, physics, {"stepsize": gamma, "lambda_reg": lam}, 2000, tol=1e-14)
    ref = hqs_tikhonov_fixed_point(physics, y, lam, gamma)
    torch.testing.assert_close(x.reshape(2, -1), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", PROXIMAL)
def test_l1_denoising_soft_thresholding(name):
    physics, y = identity_problem()
    lam, gamma = 0.4, 0.5
    params = {"stepsize": gamma, "lambda_reg": lam}
    if name == "pdhg":
        params["stepsize_dual"] = 1.0
    alg = getattr(algorithms, name)(L2(), L1Prior())
    x, _ = run(alg, y, physics, params, 2000, tol=1e-14)
    # HQS minimises ½‖x − y‖²/(1 + γ) + λ‖x‖₁ (the Moreau envelope of f): threshold λ(1+γ)
    thr = lam * (1 + gamma) if name == "hqs" else lam
    ref = torch.sign(y) * torch.clamp(y.abs() - thr, min=0)
    torch.testing.assert_close(x.reshape(y.shape), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", ["admm", "drs", "pdhg"])
def test_l1_data_fidelity_closed_form(name):
    # min ‖x − y‖₁ + λ/2 ‖x‖²  →  x = clamp(y, −1/λ, 1/λ)
    physics, y = identity_problem(seed=3)
    lam = 1.5
    params = {"stepsize": 0.5, "lambda_reg": lam}
    if name == "pdhg":
        params["stepsize_dual"] = 1.0  # ADMM and DRS have no dual step (the key would raise)
    alg = getattr(algorithms, name)(L1(), Tikhonov())
    x, _ = run(alg, y, physics, params, 3000, tol=1e-14)
    torch.testing.assert_close(x.reshape(y.shape), y.clamp(-1 / lam, 1 / lam), rtol=0, atol=1e-8)


def test_l1_prox_general_operator_optimality():
    # x = prox_{γ‖A·−y‖₁}(z) ⇔ (z − x)/γ ∈ Aᵀ ∂‖·‖₁(Ax − y): check through a dense KKT residual
    physics, y = matrix_problem(seed=5, batch=1, m=12)
    z = torch.randn(1, *physics.shape, dtype=DT)
    gamma = 0.3
    x = L1(max_iter=20000).prox(z, y, physics, gamma)

    # the objective at x is below the objective at random perturbations of x
    def obj(v):
        return (physics.A(v) - y).abs().sum() + ((v - z) ** 2).sum() / (2 * gamma)

    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        d = 1e-3 * torch.randn(x.shape, generator=g, dtype=DT)
        assert obj(x + d) >= obj(x) - 1e-10


def test_image_gradient_adjoint():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g, dtype=DT)
    p = torch.randn(2, 2, 3, 5, 7, generator=g, dtype=DT)
    lhs = (image_gradient(x) * p).sum()
    rhs = (x * grad_adjoint(p)).sum()
    torch.testing.assert_close(lhs, rhs)


def tv_reference(physics, y, lam, iters=3000):
    """Chambolle–Pock with K = ∇ and the data term's prox as a dense solve (no inner loop)."""
    lip = 8.0
    tau = sig = 0.99 / lip**0.5
    x = physics.A_adjoint(y)
    x_bar, p = x, torch.zeros(2, *x.shape, dtype=DT)
    for _ in range(iters):
        p = p + sig * image_gradient(x_bar)
        p = p / torch.clamp(p.square().sum(0, keepdim=True).sqrt() / lam, min=1.0)
        x_new = physics.prox_l2(x - tau * grad_adjoint(p), y, tau)
        x_bar, x = 2 * x_new - x, x_new
    return x


@pytest.fixture(scope="module")
def tv_case():
    physics, y = matrix_problem(seed=7, hw=(4, 4), m=12)
    lam = 0.1
    return physics, y, lam, tv_reference(physics, y, lam)


@pytest.mark.parametrize("name", ["pgd", "admm", "pdhg"])
def test_tv_deblurring_against_reference(name, tv_case):
    physics, y, lam, ref = tv_case
    alg = getattr(algorithms, name)(L2(), TVPrior(n_it_max=300, tol=0.0))  # fixed inner count
    params = tikhonov_params(name, physics, 0.0)
    params["lambda_reg"] = lam
    x, _ = run(alg, y, physics, params, 400, tol=1e-10)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-5)


def test_tv_prox_denoising_against_reference():
    physics, y = identity_problem(seed=2)
    lam = 0.3
    ref = tv_reference(physics, y, lam)
    x = TVPrior(n_it_max=2000, tol=0.0).prox(physics.A_adjoint(y), lam)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-6)


def test_early_stopping_per_sample_and_traces():
    physics, y = matrix_problem(batch=3)
    lam = 0.3
    alg = algorithms.pgd(L2(), Tikhonov())
    params = tikhonov_params("pgd", physics, lam)

    def cost(x, y, physics, p):
        return L2().value(x, y, physics) + p["lambda_reg"] * Tikhonov().value(x)

    x, info = run(alg, y, physics, params, 500, tol=1e-6, check_every=7, trace=True, cost=cost)
    assert bool(info.converged.all()) and int(info.num_iter) < 500
    assert info.cost_trace.shape == (int(info.num_iter), 3)
    # PGD with step 1/L is monotone on a convex cost; the last trace entry is F(x)
    assert bool((info.cost_trace[1:] <= info.cost_trace[:-1] + 1e-12).all())
    torch.testing.assert_close(info.cost_trace[-1], cost(x, y, physics, params))
    # a sample freezes at its own convergence: batched results equal single-sample runs
    for i in range(3):
        xi, _ = run(alg, y[i : i + 1], physics, params, 500, tol=1e-6, check_every=1)
        torch.testing.assert_close(x[i : i + 1], xi, rtol=0, atol=1e-13)


def test_per_iteration_parameters_match_manual_loop():
    physics, y = matrix_problem()
    steps = torch.tensor([0.1, 0.5, 0.2, 0.9], dtype=DT)
    alg = algorithms.pgd(L2(), Tikhonov())
    x, _ = run(
        alg, y, physics, {"stepsize": steps, "lambda_reg": 0.3}, 4, per_iteration=("stepsize",)
    )
    ref = physics.A_adjoint(y)
    for s in steps:
        ref = (ref - s * L2().grad(ref, y, physics)) / (1 + 0.3 * s)
    torch.testing.assert_close(x, ref)


def test_run_under_vmap_matches_loop():
    physics, y = matrix_problem(batch=3)
    alg = algorithms.fista(L2(), Tikhonov())
    params = tikhonov_params("fista", physics, 0.3)

    def single(yi):
        return run(alg, yi[None], physics, params, 300, tol=1e-8)[0][0]

    batched = torch.func.vmap(single)(y)
    looped = torch.stack([single(yi) for yi in y])
    torch.testing.assert_close(batched, looped, rtol=0, atol=1e-12)


def test_validation_messages():
    physics, y = matrix_problem()
    alg = algorithms.pgd(L2(), Tikhonov())
    with pytest.raises(ValueError, match="^unroll.algorithms: parameter 'stepsize'"):
        run(alg, y, physics, {"lambda_reg": 1.0}, 3)
    with pytest.raises(ValueError, match="^unroll.algorithms.run: max_iter"):
        run(alg, y, physics, {"stepsize": 1.0}, 0)
    with pytest.raises(TypeError, match="^unroll.algorithms.gd: prior must provide .grad"):
        algorithms.gd(L2(), L1Prior())
    with pytest.raises(ValueError, match="^unroll.algorithms.run: both 'g_param'"):
        run(alg, y, physics, {"stepsize": 1.0, "g_param": 1.0, "sigma_denoiser": 1.0}, 3)
