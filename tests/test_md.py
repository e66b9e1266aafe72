"""Mirror descent / proximal mirror descent against GD / PGD, closed forms, simplex projections
and finite differences (float64)."""

import numpy as np
import pytest
import torch
from helpers import matrix_problem, tikhonov_params

from unroll import algorithms
from unroll.algorithms import (
    BregmanL2,
    BurgEntropy,
    MDState,
    NegEntropy,
    PMDState,
    md,
    pmd,
    run,
)
from unroll.optim import L2, RED, L1Prior, Tikhonov, ZeroPrior
from unroll.physics import Denoising
from unroll.unfolded import unfolded_builder

DT = torch.float64


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def project_simplex(v):
    """Euclidean projection of each row onto the probability simplex (sorting algorithm,
    Held, Wolfe & Crowder 1974; Duchi et al. 2008), on numpy."""
    out = []
    for row in np.asarray(v):
        u = np.sort(row)[::-1]
        css = np.cumsum(u) - 1
        k = np.nonzero(u - css / np.arange(1, len(u) + 1) > 0)[0][-1]
        out.append(np.maximum(row - css[k] / (k + 1), 0))
    return torch.from_numpy(np.stack(out))


# --------------------------------------------------------------------------- Euclidean = GD/PGD
@pytest.mark.parametrize("prior", [Tikhonov(), RED(lambda x, s: 0.5 * x)], ids=["tik", "red"])
def test_md_with_l2_potential_is_gd(prior):
    physics, y = matrix_problem()
    params = {**tikhonov_params("gd", physics, 0.3), "sigma_denoiser": 0.1}
    for potential in (None, BregmanL2()):
        x_md, _ = run(md(L2(), prior, potential), y, physics, params, 50)
        x_gd, _ = run(algorithms.gd(L2(), prior), y, physics, params, 50)
        torch.testing.assert_close(x_md, x_gd, rtol=0, atol=1e-12)


@pytest.mark.parametrize("prior", [Tikhonov(), L1Prior()], ids=["tik", "l1"])
def test_pmd_with_l2_potential_is_pgd(prior):
    physics, y = matrix_problem()
    params = tikhonov_params("pgd", physics, 0.3)
    x_pmd, _ = run(pmd(L2(), prior), y, physics, params, 50)
    x_pgd, _ = run(algorithms.pgd(L2(), prior), y, physics, params, 50)
    torch.testing.assert_close(x_pmd, x_pgd, rtol=0, atol=1e-12)


def test_md_and_pmd_by_name_in_unfolded_builder():
    physics, y = matrix_problem()
    params = tikhonov_params("gd", physics, 0.3)
    for name, ref in (("MD", "GD"), ("PMD", "PGD")):
        build = lambda it: unfolded_builder(  # noqa: E731
            iteration=it, params_algo=dict(params), prior=Tikhonov(), max_iter=4
        ).double()
        torch.testing.assert_close(
            build(name)(y, physics), build(ref)(y, physics), rtol=0, atol=1e-12
        )


# --------------------------------------------------------------------------- entropies
@pytest.mark.parametrize(
    "c",
    [
        [[0.5, 0.3, 0.4, 0.1], [0.2, 0.2, 0.2, 0.1]],  # interior projections
        [[0.9, 0.1, -0.3, 0.4], [1.5, 0.0, 0.2, 0.1]],  # projections on the boundary
    ],
    ids=["interior", "boundary"],
)
def test_exponentiated_gradient_reaches_the_simplex_projection(c):
    # min_{x ∈ Δ} ½‖x − c‖² is the Euclidean projection of c onto the simplex
    c = torch.tensor(c, dtype=DT)
    alg = md(L2(), ZeroPrior(), NegEntropy(simplex=True))
    x0 = torch.full_like(c, 0.25)
    x, _ = run(alg, c, Denoising(), {"stepsize": 1.0}, 3000, init=MDState(x0))
    torch.testing.assert_close(x, project_simplex(c), rtol=0, atol=1e-10)
    torch.testing.assert_close(x.sum(1), torch.ones(2, dtype=DT), rtol=0, atol=1e-14)


def test_neg_entropy_step_is_multiplicative():
    physics, y = matrix_problem()
    x0 = rand(2, 1, 6, 6) + 0.1
    gamma = 0.2
    alg = md(L2(), Tikhonov(), NegEntropy())
    p = {"stepsize": gamma, "lambda_reg": 0.5}
    x1 = alg.step(MDState(x0), y, physics, p).x
    v = physics.A_adjoint(physics.A(x0) - y) + 0.5 * x0
    torch.testing.assert_close(x1, x0 * torch.exp(-gamma * v), rtol=1e-14, atol=0)
    # on the simplex: the same update, normalised per sample
    x1s = md(L2(), Tikhonov(), NegEntropy(simplex=True)).step(MDState(x0), y, physics, p).x
    w = x0 * torch.exp(-gamma * v)
    torch.testing.assert_close(x1s, w / w.sum((1, 2, 3), keepdim=True), rtol=1e-13, atol=0)


def test_burg_entropy_step_and_convergence():
    c = rand(2, 1, 4, 4) + 0.5
    x0 = torch.ones_like(c)
    alg = md(L2(), ZeroPrior(), BurgEntropy())
    x1 = alg.step(MDState(x0), c, Denoising(), {"stepsize": 0.3}).x
    torch.testing.assert_close(x1, x0 / (1 + 0.3 * x0 * (x0 - c)), rtol=1e-14, atol=0)
    x, _ = run(alg, c, Denoising(), {"stepsize": 0.3}, 400, init=MDState(x0))
    torch.testing.assert_close(x, c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("phi", [BregmanL2(), NegEntropy(), BurgEntropy()], ids=repr)
def test_potentials_closed_forms(phi):
    x, y = rand(3, 2, 5) + 0.1, rand(3, 2, 5, seed=1) + 0.1
    # ∇φ* inverts ∇φ, and Fenchel–Young holds with equality at u = ∇φ(x)
    u = phi.grad(x)
    torch.testing.assert_close(phi.grad_conj(u), x, rtol=1e-13, atol=0)
    fy = phi.fn(x) + phi.conjugate(u) - (x * u).sum((1, 2))
    torch.testing.assert_close(fy, torch.zeros(3, dtype=DT), rtol=0, atol=1e-12)
    ref = {
        "BregmanL2": 0.5 * (x - y).square().sum((1, 2)),
        "NegEntropy": (x * torch.log(x / y) - x + y).sum((1, 2)),
        "BurgEntropy": (x / y - torch.log(x / y) - 1).sum((1, 2)),
    }[type(phi).__name__]
    torch.testing.assert_close(phi.div(x, y), ref, rtol=1e-13, atol=1e-14)
    # the generic definition φ(x) − φ(y) − ⟨∇φ(y), x − y⟩ agrees
    generic = phi.fn(x) - phi.fn(y) - (phi.grad(y) * (x - y)).sum((1, 2))
    torch.testing.assert_close(generic, ref, rtol=1e-12, atol=1e-13)


def test_simplex_conjugate_is_logsumexp():
    x = torch.softmax(rand(2, 6), dim=1)
    phi = NegEntropy(simplex=True)
    u = phi.grad(x)
    torch.testing.assert_close(phi.grad_conj(u), x, rtol=1e-13, atol=0)
    fy = phi.fn(x) + phi.conjugate(u) - (x * u).sum(1)
    torch.testing.assert_close(fy, torch.zeros(2, dtype=DT), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- PMD, other potential
class PositiveL1:
    """``g(x) = Σ x`` on ``x > 0``: Bregman prox under the negative entropy
    ``argmin γ Σu + KL(u, x) = x e^{−γ}``."""

    def prox(self, x, gamma, sigma=None, weights=None):  # pragma: no cover - not used
        raise AssertionError

    def bregman_prox(self, x, bregman_potential, gamma, sigma=None, weights=None):
        assert isinstance(bregman_potential, NegEntropy)
        return x * torch.exp(-torch.as_tensor(gamma, dtype=x.dtype))


def test_pmd_with_entropy_reaches_the_shifted_minimiser():
    # min ½‖x − c‖² + λ Σx over x > 0, c > λ: x* = c − λ
    c = rand(2, 1, 4, 4) + 0.5
    lam = 0.2
    alg = pmd(L2(), PositiveL1(), NegEntropy())
    x0 = torch.ones_like(c)
    x1 = alg.step(PMDState(x0), c, Denoising(), {"stepsize": 0.5, "lambda_reg": lam}).x
    torch.testing.assert_close(x1, x0 * torch.exp(-0.5 * (x0 - c)) * np.exp(-0.5 * lam))
    x, _ = run(alg, c, Denoising(), {"stepsize": 0.5, "lambda_reg": lam}, 500, init=PMDState(x0))
    torch.testing.assert_close(x, c - lam, rtol=0, atol=1e-12)


def test_pmd_with_zero_prior_is_md():
    c = rand(2, 1, 4, 4) + 0.5
    p = {"stepsize": 0.4}
    x_pmd, _ = run(pmd(L2(), ZeroPrior(), BurgEntropy()), c, Denoising(), p, 30)
    x_md, _ = run(md(L2(), ZeroPrior(), BurgEntropy()), c, Denoising(), p, 30)
    torch.testing.assert_close(x_pmd, x_md, rtol=0, atol=0)


# --------------------------------------------------------------------------- hypergradients
def test_hypergradients_match_finite_differences():
    physics, y = matrix_problem()
    target = rand(2, 1, 6, 6, seed=3)
    x0 = torch.full((2, 1, 6, 6), 1 / 36, dtype=DT)
    alg = md(L2(), Tikhonov(), NegEntropy(simplex=True))

    def loss(gamma, lam, y):
        p = {"stepsize": gamma, "lambda_reg": lam}
        x, _ = run(alg, y, physics, p, 15, init=MDState(x0))
        return (x - target).square().sum()

    args = (torch.tensor(0.4, dtype=DT), torch.tensor(0.3, dtype=DT), y)
    grads = torch.func.grad(loss, argnums=(0, 1, 2))(*args)
    h = 1e-6
    for i, g in enumerate(grads):
        direction = rand(*args[i].shape, seed=10 + i) if args[i].dim() else torch.ones((), dtype=DT)
        plus = [a + h * direction if j == i else a for j, a in enumerate(args)]
        minus = [a - h * direction if j == i else a for j, a in enumerate(args)]
        fd = (loss(*plus) - loss(*minus)) / (2 * h)
        torch.testing.assert_close((g * direction).sum(), fd, rtol=1e-6, atol=1e-10)


def test_vmap_over_problems_matches_the_batch():
    c = rand(3, 5) + 0.2
    alg = md(L2(), ZeroPrior(), NegEntropy(simplex=True))
    x0 = torch.full_like(c, 0.2)

    def solve(ci, x0i):
        return run(alg, ci[None], Denoising(), {"stepsize": 0.5}, 20, init=MDState(x0i[None]))[0][0]

    batched, _ = run(alg, c, Denoising(), {"stepsize": 0.5}, 20, init=MDState(x0))
    torch.testing.assert_close(torch.func.vmap(solve)(c, x0), batched, rtol=0, atol=1e-14)


# --------------------------------------------------------------------------- errors
def test_errors():
    with pytest.raises(TypeError, match=r"^unroll\.algorithms\.md: bregman_potential must"):
        md(L2(), Tikhonov(), "entropy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^unroll\.algorithms\.pmd: .*bregman_prox"):
        pmd(L2(), L1Prior(), NegEntropy())
    with pytest.raises(TypeError, match=r"^unroll\.algorithms\.md: prior must provide \.grad"):
        md(L2(), L1Prior())
    with pytest.raises(TypeError, match=r"^unroll\.algorithms\.NegEntropy: simplex"):
        NegEntropy(simplex=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown parameter 'beta'"):
        run(md(L2(), Tikhonov()), torch.ones(1, 2), Denoising(), {"stepsize": 1.0, "beta": 1.0}, 2)


# ------------------------------------------------------------------ the unroll.optim classes
def test_md_and_pmd_classes_with_the_l2_potential_equal_gd_and_pgd():
    from unroll import optim
    from unroll.algorithms import BregmanL2
    from unroll.physics import Denoising

    y = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    smooth = dict(data_fidelity=optim.L2(), prior=optim.Tikhonov(), stepsize=0.5,
                  lambda_reg=0.25, max_iter=200, tol=None)  # fmt: skip
    # (0.25 and 0.125: exact in the float32 the classes store hyperparameters in)
    gd_x = optim.GD(**smooth)(y, Denoising())
    md_x = optim.MD(BregmanL2(), **smooth)(y, Denoising())
    torch.testing.assert_close(md_x, gd_x, rtol=0, atol=1e-15)
    torch.testing.assert_close(md_x, y / 1.25, rtol=0, atol=1e-12)  # argmin ½‖x−y‖² + ⅛‖x‖²
    sparse = dict(data_fidelity=optim.L2(), prior=optim.L1Prior(), stepsize=0.5,
                  lambda_reg=0.125, max_iter=200, tol=None)  # fmt: skip
    pmd_x = optim.PMD(**sparse)(y, Denoising())
    torch.testing.assert_close(pmd_x, optim.PGD(**sparse)(y, Denoising()), rtol=0, atol=1e-15)
    soft = torch.sign(y) * (y.abs() - 0.125).clamp_min(0)  # prox of 0.125‖·‖₁ at y
    torch.testing.assert_close(pmd_x, soft, rtol=0, atol=1e-12)
