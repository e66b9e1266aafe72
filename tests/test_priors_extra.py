"""DEQConfig aliases, TVPrior tolerance / warm starts, L12Prior, ZeroPrior, Prior(g=...),
DataFidelity(d=...) (float64, independent references)."""

import warnings

import pytest
import torch

from unroll import DEQConfig
from unroll import physics as P
from unroll._failure import ConvergenceError, ConvergenceWarning
from unroll.optim import DataFidelity, L12Prior, Prior, TVPrior, ZeroPrior, tv_prox
from unroll.optim.prior import grad_adjoint, image_gradient

D = torch.float64


# ---------------------------------------------------------------------- DEQConfig aliases
def test_deq_config_accepts_deepinverse_backward_names():
    c = DEQConfig(beta_backward=0.5, eps_backward=1e-3)
    assert c.beta_anderson_acc_backward == 0.5 and c.eps_anderson_acc_backward == 1e-3
    assert c.beta_backward == 0.5 and c.eps_backward == 1e-3
    c = DEQConfig(beta_anderson_acc_backward=0.3, eps_anderson_acc_backward=1e-2)
    assert c.beta_backward == 0.3 and c.eps_backward == 1e-2
    assert DEQConfig(beta_backward=0.5, beta_anderson_acc_backward=0.5).beta_backward == 0.5
    assert DEQConfig().beta_backward == 1.0 and DEQConfig().eps_backward == 1e-4


@pytest.mark.parametrize(
    "alias, name",
    [
        ("beta_backward", "beta_anderson_acc_backward"),
        ("eps_backward", "eps_anderson_acc_backward"),
    ],
)
def test_deq_config_alias_conflict_raises(alias, name):
    with pytest.raises(ValueError, match=f"^DEQConfig: {alias}=0.5 and {name}=0.7 .*pass only"):
        DEQConfig(**{alias: 0.5, name: 0.7})
    with pytest.raises(ValueError, match=f"^DEQConfig: {name} must be"):
        DEQConfig(**{alias: -1.0})


# ---------------------------------------------------------------------- TV prox
def _fgp_fixed(x, gamma, n):
    """The former TVPrior.prox: exactly n FGP iterations (written here independently)."""
    p = torch.zeros((2, *x.shape), dtype=x.dtype)
    q, t = p, 1.0
    for _ in range(n):
        u = x - gamma * grad_adjoint(q)
        z = q + image_gradient(u) / (8 * gamma)
        p_new = z / torch.clamp(z.square().sum(0, keepdim=True).sqrt(), min=1.0)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        q = p_new + ((t - 1) / t_new) * (p_new - p)
        p, t = p_new, t_new
    return x - gamma * grad_adjoint(p)


@pytest.fixture(scope="module")
def tv_case():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 1, 24, 24, dtype=D)
    x[..., 6:18, 6:18] = 1.0
    x = x + 0.1 * torch.randn(x.shape, generator=g, dtype=D)
    refs = {gamma: _fgp_fixed(x, gamma, 5000) for gamma in (0.1, 0.3)}
    return x, refs


@pytest.mark.parametrize("gamma", [0.1, 0.3])
def test_tv_prox_with_tol_is_as_accurate_as_200_iterations(tv_case, gamma):
    x, refs = tv_case
    ref = refs[gamma]
    old = _fgp_fixed(x, gamma, 200)
    res = tv_prox(x, gamma)
    assert res.converged and res.num_iter < 1000
    assert bool((res.rel_change <= 1e-6).all())
    err_new, err_old = (res.x - ref).norm(), (old - ref).norm()
    assert err_new <= 1.5 * err_old
    assert err_new / ref.norm() < 1e-4
    torch.testing.assert_close(TVPrior().prox(x, gamma), res.x, rtol=0, atol=0)


def test_tv_prox_with_zero_tol_is_the_fixed_count(tv_case):
    x, _ = tv_case
    res = tv_prox(x, 0.1, n_it_max=200, tol=0)
    assert res.num_iter == 200 and res.converged
    torch.testing.assert_close(res.x, _fgp_fixed(x, 0.1, 200), rtol=0, atol=1e-13)


def test_tv_prox_warm_start_reaches_the_same_point_in_fewer_iterations(tv_case):
    x, refs = tv_case
    cold = tv_prox(x, 0.3, tol=1e-7, n_it_max=5000)
    x2 = x + 1e-3 * torch.sin(torch.arange(x.numel(), dtype=D)).reshape(x.shape)
    cold2 = tv_prox(x2, 0.3, tol=1e-7, n_it_max=5000)
    warm2 = tv_prox(x2, 0.3, tol=1e-7, n_it_max=5000, init=cold.dual)
    assert cold2.converged and warm2.converged
    assert warm2.num_iter < cold2.num_iter / 2, (warm2.num_iter, cold2.num_iter)
    ref2 = _fgp_fixed(x2, 0.3, 5000)
    # as accurate as the former fixed 200 iterations (a warm start stops on a smaller
    # relative change sooner, so it is less accurate than the cold solve at the same tol)
    err_warm = (warm2.x - ref2).norm()
    err_old = (_fgp_fixed(x2, 0.3, 200) - ref2).norm()
    assert err_warm <= err_old and err_warm / ref2.norm() < 1e-4, (err_warm, err_old)
    # the same dual through the module API
    torch.testing.assert_close(
        TVPrior(tol=1e-7, n_it_max=5000).prox(x2, 0.3, init=cold.dual), warm2.x, rtol=0, atol=0
    )


def test_tv_prox_non_convergence_goes_through_the_failure_policy(tv_case):
    x, _ = tv_case
    with pytest.warns(ConvergenceWarning, match=r"^TVPrior.prox: stopped at n_it_max=20 .*tol"):
        res = tv_prox(x, 0.3, n_it_max=20)
    assert not res.converged
    with pytest.raises(ConvergenceError, match="^TVPrior.prox"):
        TVPrior(n_it_max=20, on_failure="raise").prox(x, 0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TVPrior(n_it_max=20, on_failure="ignore").prox(x, 0.3)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"tol": -1.0}, "^unroll.optim.TVPrior: tol must be a finite number >= 0"),
        ({"n_it_max": 0}, "^unroll.optim.TVPrior: n_it_max must be an int >= 1"),
        ({"on_failure": "loud"}, "^unroll.optim.TVPrior: on_failure must be one of"),
    ],
)
def test_tv_prior_rejects_bad_options(kwargs, words):
    with pytest.raises(ValueError, match=words):
        TVPrior(**kwargs)


def test_tv_prox_rejects_a_dual_of_the_wrong_shape():
    x = torch.rand(1, 1, 6, 6, dtype=D)
    with pytest.raises(ValueError, match=r"^unroll.optim.tv_prox: init .* shape \(2, 1, 1, 6, 6\)"):
        tv_prox(x, 0.1, init=torch.zeros(1, 1, 6, 6, dtype=D))


# ---------------------------------------------------------------------- L12 / Zero
def _group_soft_threshold(x, gamma, dim):
    """Written independently: shrink each group's norm by gamma."""
    xm = x.movedim(dim, -1).contiguous()
    out = torch.zeros_like(xm)
    flat, fout = xm.view(-1, xm.shape[-1]), out.view(-1, xm.shape[-1])
    for i in range(flat.shape[0]):
        n = float(flat[i].norm())
        if n > gamma:
            fout[i] = (1 - gamma / n) * flat[i]
    return out.movedim(-1, dim)


@pytest.mark.parametrize("dim", [-1, 1, 2])
def test_l12_prox_is_group_soft_thresholding(dim):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=D)
    x[0, 0, 0] = 0.0  # a zero group (for dim=-1): stays zero, no NaN
    gamma = 1.2
    out = L12Prior(l2_axis=dim).prox(x, gamma)
    torch.testing.assert_close(out, _group_soft_threshold(x, gamma, dim), rtol=1e-12, atol=1e-14)
    value = L12Prior(l2_axis=dim).value(x)
    torch.testing.assert_close(value, x.norm(dim=dim).flatten(1).sum(1))


def test_l12_prox_satisfies_the_optimality_condition():
    """0 ∈ u − x + γ ∂g(u): u − x = −γ u_i/‖u_i‖ where u_i ≠ 0, ‖x_i‖ ≤ γ where u_i = 0;
    and u minimises the objective against random perturbations."""
    g = torch.Generator().manual_seed(2)
    x, gamma = torch.randn(3, 6, 4, generator=g, dtype=D), 1.5
    prior = L12Prior()
    u = prior.prox(x, gamma)
    nu = u.norm(dim=-1, keepdim=True)
    nz = nu.squeeze(-1) > 0
    assert nz.any() and (~nz).any()
    resid = (u - x + gamma * u / torch.where(nu > 0, nu, 1.0))[nz]
    assert resid.abs().max() < 1e-12
    assert (x.norm(dim=-1)[~nz] <= gamma + 1e-12).all()

    def obj(v):
        return 0.5 * (v - x).square().flatten(1).sum(1) + gamma * prior.value(v)

    for _ in range(20):
        v = u + 1e-3 * torch.randn(u.shape, generator=g, dtype=D)
        assert (obj(v) >= obj(u) - 1e-12).all()


def test_l12_prior_rejects_batch_or_missing_axis():
    x = torch.rand(2, 3, dtype=D)
    with pytest.raises(ValueError, match="^unroll.optim.L12Prior.prox: l2_axis=0 .*pick one"):
        L12Prior(l2_axis=0).prox(x, 1.0)
    with pytest.raises(ValueError, match="^unroll.optim.L12Prior.prox: l2_axis=5"):
        L12Prior(l2_axis=5).prox(x, 1.0)
    with pytest.raises(TypeError, match="^unroll.optim.L12Prior: l2_axis must be an int"):
        L12Prior(l2_axis="last")


def test_zero_prior_is_the_identity():
    x = torch.randn(2, 3, 4, dtype=D)
    out = ZeroPrior().prox(x, 0.7)
    assert out is not x
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    torch.testing.assert_close(ZeroPrior().grad(x), torch.zeros_like(x))
    torch.testing.assert_close(ZeroPrior().value(x), torch.zeros(2, dtype=D))


# ---------------------------------------------------------------------- generic Prior(g)
@pytest.mark.parametrize("a, gamma", [(1.0, 0.5), (3.0, 0.5), (2.0, 2.0)])
def test_prior_from_function_prox_matches_the_closed_form(a, gamma):
    """g = a/2 ‖x‖²: prox = x/(1 + aγ); the error bound q/(1−q)·tol·‖z‖ of the docs."""
    x = torch.randn(2, 3, 4, dtype=D)
    prior = Prior(g=lambda v: 0.5 * a * v.flatten(1).square().sum(1))
    exact = x / (1 + a * gamma)
    out = prior.prox(x, gamma)
    q = gamma * max(1.0, abs(a - 1)) / (1 + gamma)
    bound = q / (1 - q) * 1e-6 * exact.norm() + 1e-14
    assert (out - exact).norm() <= bound
    torch.testing.assert_close(prior.grad(x), a * x)
    torch.testing.assert_close(prior.value(x), 0.5 * a * x.flatten(1).square().sum(1))


def test_prior_from_function_prox_of_a_non_quadratic_satisfies_optimality():
    """g = Σ log cosh: the prox u solves u − x + γ tanh(u) = 0."""
    x = 3 * torch.randn(2, 8, dtype=D)
    gamma = 0.8
    u = Prior(g=lambda v: torch.log(torch.cosh(v)).sum(1), tol_inter=1e-10, max_iter_inter=500)
    u = u.prox(x, gamma)
    assert (u - x + gamma * torch.tanh(u)).abs().max() < 1e-8


def test_prior_from_function_gradients_flow_and_failure_is_reported():
    x = torch.randn(1, 4, dtype=D, requires_grad=True)
    prior = Prior(g=lambda v: v.flatten(1).square().sum(1), max_iter_inter=2)
    with pytest.warns(ConvergenceWarning, match="^Prior.prox: stopped at max_iter_inter=2"):
        prior.prox(x, 0.5).sum().backward()
    assert x.grad is not None
    exact = Prior(g=lambda v: v.flatten(1).square().sum(1))
    gx = torch.autograd.grad(exact.prox(x, 0.5).sum(), x)[0]
    torch.testing.assert_close(gx, torch.full_like(x, 0.5), rtol=1e-5, atol=1e-6)  # 1/(1+2γ)


def test_plain_prior_still_has_no_prox_and_bad_g_raises():
    from unroll import algorithms

    with pytest.raises(TypeError, match="prior must provide .prox"):
        algorithms.pgd(DataFidelity(lambda u, y: (u - y).square().flatten(1).sum(1)), Prior())
    with pytest.raises(TypeError, match="^unroll.optim.Prior: g must be a callable"):
        Prior(g=3)
    with pytest.raises(ValueError, match="^unroll.optim.Prior: max_iter_inter must be"):
        Prior(g=lambda v: v.sum(), max_iter_inter=0)


# ---------------------------------------------------------------------- DataFidelity(d)
def test_data_fidelity_from_function_matches_l2():
    from unroll.optim import L2

    g = torch.Generator().manual_seed(3)
    physics = P.Blur(P.gaussian_blur(1.0), padding="circular").to(D)
    x = torch.rand(1, 1, 8, 8, generator=g, dtype=D)
    y = physics.A(torch.rand(1, 1, 8, 8, generator=g, dtype=D))
    f = DataFidelity(
        lambda u, y: 0.5 * (u - y).flatten(1).square().sum(1), tol_inter=1e-10, max_iter_inter=2000
    )
    torch.testing.assert_close(f.value(x, y, physics), L2().value(x, y, physics))
    torch.testing.assert_close(f.grad(x, y, physics), L2().grad(x, y, physics))
    ref = physics.prox_l2(x, y, 0.7, tol=1e-12, max_iter=500)
    torch.testing.assert_close(f.prox(x, y, physics, 0.7), ref, rtol=0, atol=1e-8)
    torch.testing.assert_close(f.d_prox(x, y, 0.7), (x + 0.7 * y) / 1.7, rtol=0, atol=1e-9)
    with pytest.raises(TypeError, match="^unroll.optim.DataFidelity: d must be a callable"):
        DataFidelity()
