"""Deep equilibrium models: implicit gradients against float64 autograd through long unrolled
plain iterations, torch.func composition, pytree states, warnings, the DEQ module."""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import NamedTuple

import pytest
import torch
from tanh_layer import plain_loop, tanh_f, tanh_layer
from torch import nn

from unroll.equilibrium import DEQ, DEQConfig, deq
from unroll.fixed_point import FixedPointInfo
from unroll.linear_solve import ConvergenceWarning, solve_gmres

DT = torch.float64
TIGHT = dict(tol=1e-12, max_iter=5000, tol_backward=1e-12, max_iter_backward=5000)
BACKWARDS = {
    "fixed_point": DEQConfig(**TIGHT),
    "anderson": DEQConfig(
        **TIGHT, anderson_acceleration_forward=True, anderson_acceleration_backward=True
    ),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# =========================================================================== gradients
@pytest.mark.parametrize("backward", sorted(BACKWARDS))
@pytest.mark.parametrize("rho", [0.9, 0.99])
def test_gradients_match_unrolled_reference(rho, backward):
    params = tanh_layer(24, rho)
    weights = torch.randn(32, 24, dtype=DT, generator=torch.Generator().manual_seed(5))
    z0 = torch.zeros(32, 24, dtype=DT)

    def ref_loss(*p):
        return (plain_loop(tanh_f, z0, *p, n=3000) * weights).sum()

    ref = torch.func.grad(ref_loss, argnums=(0, 1, 2, 3))(*params)
    leaves = [p.clone().requires_grad_() for p in params]
    z = deq(tanh_f, z0, *leaves, config=BACKWARDS[backward])
    (z * weights).sum().backward()
    for leaf, r in zip(leaves, ref):
        assert rel_err(leaf.grad, r) <= 1e-6


def test_func_grad_matches_backward_and_reference():
    w, u, b, x = tanh_layer(12, 0.95, batch=6)
    params = {"w": w, "u": u, "b": b}
    cfg = BACKWARDS["anderson"]

    def loss(p, x):
        z = deq(tanh_f, torch.zeros_like(x), p["w"], p["u"], p["b"], x, config=cfg)
        return z.square().sum()

    def ref_loss(p, x):
        return plain_loop(tanh_f, torch.zeros_like(x), p["w"], p["u"], p["b"], x).square().sum()

    g = torch.func.grad(loss, argnums=(0, 1))(params, x)
    r = torch.func.grad(ref_loss, argnums=(0, 1))(params, x)
    for k in params:
        assert rel_err(g[0][k], r[0][k]) <= 1e-8
    assert rel_err(g[1], r[1]) <= 1e-8


def test_vmap_of_grad_per_sample():
    w, u, b, x = tanh_layer(10, 0.9, batch=4)
    cfg = BACKWARDS["fixed_point"]

    def per_sample(xi):
        return deq(tanh_f, torch.zeros_like(xi), w, u, b, xi, config=cfg).sum()

    g = torch.func.vmap(torch.func.grad(per_sample))(x)
    ref = torch.func.grad(lambda x: plain_loop(tanh_f, torch.zeros_like(x), w, u, b, x).sum())(x)
    assert rel_err(g, ref) <= 1e-8


def test_jacrev_through_deq():
    """Dense Jacobian dz*/dx against the implicit-function formula (I − J)⁻¹ ∂f/∂x."""
    w, u, b, x = tanh_layer(6, 0.9, batch=1)
    x = x[0]
    jac = torch.func.jacrev(
        lambda x: deq(tanh_f, torch.zeros(6, dtype=DT), w, u, b, x, config=BACKWARDS["anderson"])
    )(x)
    z = plain_loop(tanh_f, torch.zeros(6, dtype=DT), w, u, b, x)
    s = 1 - tanh_f(z, w, u, b, x) ** 2
    ref = torch.linalg.solve(torch.eye(6, dtype=DT) - s[:, None] * w, s[:, None] * u)
    torch.testing.assert_close(jac, ref, rtol=1e-9, atol=1e-12)


def test_jacobian_free_is_one_step_gradient():
    """JFB (approximate, documented): the gradient of one application of f at the detached
    fixed point, i.e. v = u instead of v = (I − Jᵀ)⁻¹ u."""
    w, u, b, x = tanh_layer(12, 0.9, batch=4)
    cfg = dataclasses.replace(BACKWARDS["fixed_point"], jacobian_free=True)
    g = torch.func.grad(lambda w: deq(tanh_f, torch.zeros_like(x), w, u, b, x, config=cfg).sum())(w)
    z_star = plain_loop(tanh_f, torch.zeros_like(x), w, u, b, x)
    ref = torch.func.grad(lambda w: tanh_f(z_star, w, u, b, x).sum())(w)
    torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)
    exact = torch.func.grad(
        lambda w: deq(
            tanh_f, torch.zeros_like(x), w, u, b, x, config=BACKWARDS["fixed_point"]
        ).sum()
    )(w)
    assert rel_err(g, exact) > 1e-2  # it is an approximation


def test_custom_backward_solve():
    w, u, b, x = tanh_layer(8, 0.9, batch=3)
    cfg = dataclasses.replace(
        BACKWARDS["fixed_point"], backward_solve=functools.partial(solve_gmres, rtol=1e-12)
    )
    g = torch.func.grad(lambda x: deq(tanh_f, torch.zeros_like(x), w, u, b, x, config=cfg).sum())(x)
    ref = torch.func.grad(lambda x: plain_loop(tanh_f, torch.zeros_like(x), w, u, b, x).sum())(x)
    assert rel_err(g, ref) <= 1e-9


def test_memory_does_not_grow_with_iterations():
    """Bytes saved for backward (saved_tensors_hooks) do not depend on the forward's
    iteration count: the forward stores no iterations."""
    w, u, b, x = tanh_layer(16, 0.99, batch=4)
    x = x.clone().requires_grad_()

    def saved_bytes(max_iter: int, anderson: bool) -> int:
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        cfg = DEQConfig(max_iter=max_iter, tol=0.0, anderson_acceleration_forward=anderson)
        with warnings.catch_warnings(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            warnings.simplefilter("ignore", ConvergenceWarning)
            deq(tanh_f, torch.zeros_like(x), w, u, b, x, config=cfg)
        return total

    one_copy = sum(t.numel() * t.element_size() for t in (x, w, u, b, x))  # z*, W, U, b, x
    for anderson in (False, True):
        small, large = saved_bytes(10, anderson), saved_bytes(400, anderson)
        assert small == large and 0 < small <= one_copy


# =========================================================================== pytree states
class State(NamedTuple):
    p: torch.Tensor
    q: torch.Tensor


def pair_step(s: State, params: dict, x: torch.Tensor) -> State:
    """An algorithm-like step with a two-tensor state."""
    p = torch.tanh(s.p @ params["a"].T + s.q @ params["c"].T + x)
    q = 0.5 * torch.tanh(s.p @ params["s"].T)
    return State(p, q)


@pytest.mark.parametrize("backward", sorted(BACKWARDS))
def test_pytree_state_gradients(backward):
    g = torch.Generator().manual_seed(3)
    params = {
        "a": 0.3 * torch.randn(5, 5, generator=g, dtype=DT),
        "c": 0.3 * torch.randn(5, 4, generator=g, dtype=DT),
        "s": 0.3 * torch.randn(4, 5, generator=g, dtype=DT),
    }
    x = torch.randn(3, 5, generator=g, dtype=DT)
    s0 = State(torch.zeros(3, 5, dtype=DT), torch.zeros(3, 4, dtype=DT))

    def loss(params, x, run):
        s = run(params, x)
        return s.p.square().sum() + s.q.sum()

    def implicit(params, x):
        out = deq(pair_step, s0, params, x, config=BACKWARDS[backward])
        assert isinstance(out, State)
        return out

    g_imp = torch.func.grad(loss, argnums=(0, 1))(params, x, implicit)
    g_ref = torch.func.grad(loss, argnums=(0, 1))(
        params, x, lambda p, x: plain_loop(pair_step, s0, p, x, n=500)
    )
    for k in params:
        assert rel_err(g_imp[0][k], g_ref[0][k]) <= 1e-8
    assert rel_err(g_imp[1], g_ref[1]) <= 1e-8


def test_batched_per_sample_convergence():
    w, u, b, x = tanh_layer(16, 0.95, batch=6)
    x = x * torch.logspace(-2, 0.5, 6, dtype=DT)[:, None]
    for anderson in (False, True):
        cfg = dataclasses.replace(
            BACKWARDS["fixed_point"],
            batched=True,
            anderson_acceleration_forward=anderson,
            anderson_acceleration_backward=anderson,
        )
        x_ = x.clone().requires_grad_()
        z, info = deq(tanh_f, torch.zeros_like(x), w, u, b, x_, config=cfg, return_info=True)
        assert isinstance(info, FixedPointInfo)
        assert info.num_iter.shape == (6,) and bool(info.converged.all())
        assert len(set(info.num_iter.tolist())) > 1
        z.square().sum().backward()
        ref = torch.func.grad(
            lambda x: plain_loop(tanh_f, torch.zeros_like(x), w, u, b, x).square().sum()
        )(x)
        assert rel_err(x_.grad, ref) <= 1e-8


# =========================================================================== warnings
def test_backward_not_converging_warns_with_residual():
    w, u, b, x = tanh_layer(16, 0.99, batch=4)
    x = x.clone().requires_grad_()
    cfg = DEQConfig(tol=1e-10, max_iter=3000, max_iter_backward=3)
    z = deq(tanh_f, torch.zeros_like(x), w, u, b, x, config=cfg)
    with pytest.warns(ConvergenceWarning, match=r"residual \d"):
        z.sum().backward()


def test_non_contractive_map_warns_forward_and_backward():
    """``f(z) = tanh(W z + x)`` with ``ρ(W) = 3``: forward and backward both warn."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 8, generator=g, dtype=DT)
    w = 3 * w / torch.linalg.eigvals(w).abs().max()
    x = torch.randn(2, 8, generator=g, dtype=DT, requires_grad=True)
    f = lambda z, w, x: z @ w.T + x  # noqa: E731  (linear and expanding: diverges)
    with pytest.warns(ConvergenceWarning, match=r"deq \(forward\): diverged \(residual"):
        z = deq(
            f, torch.zeros(2, 8, dtype=DT), w, x, config=DEQConfig(max_iter=30, stop_mode="abs")
        )
    with pytest.warns(ConvergenceWarning, match="residual"):
        z.sum().backward()


def test_converged_solve_does_not_warn():
    w, u, b, x = tanh_layer(8, 0.9, batch=2)
    x = x.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        deq(tanh_f, torch.zeros_like(x), w, u, b, x, config=BACKWARDS["anderson"]).sum().backward()


# =========================================================================== module
class Cell(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d, dtype=DT)
        self.inp = nn.Linear(d, d, bias=False, dtype=DT)
        with torch.no_grad():
            self.lin.weight.mul_(0.5 / torch.linalg.matrix_norm(self.lin.weight, 2))

    def forward(self, z, x):
        return torch.tanh(self.lin(z) + self.inp(x))


def test_deq_module_parameter_gradients():
    torch.manual_seed(0)
    cell = Cell(6)
    layer = DEQ(cell, config=BACKWARDS["fixed_point"])
    x = torch.randn(3, 6, dtype=DT)
    layer(torch.zeros(3, 6, dtype=DT), x).square().sum().backward()
    got = {k: p.grad.clone() for k, p in cell.named_parameters()}
    cell.zero_grad()
    z_ref = plain_loop(lambda z, x: cell(z, x), torch.zeros(3, 6, dtype=DT), x, n=300)
    z_ref.square().sum().backward()
    for k, p in cell.named_parameters():
        assert rel_err(got[k], p.grad) <= 1e-8, k
    assert {k for k, _ in layer.named_parameters()} == {f"f.{k}" for k in got}


def test_deq_module_with_step_function_and_params():
    w, u, b, x = tanh_layer(8, 0.9, batch=3)
    layer = DEQ(
        lambda z, p, x: tanh_f(z, p["w"], p["u"], p["b"], x),
        params={"w": w, "u": u, "b": b},
        config=BACKWARDS["anderson"],
    )
    z, info = layer(torch.zeros_like(x), x, return_info=True)
    z.sum().backward()
    ref = torch.func.grad(lambda w: plain_loop(tanh_f, torch.zeros_like(x), w, u, b, x).sum())(w)
    assert rel_err(layer.params["w"].grad, ref) <= 1e-8
    assert bool(info.converged)


# =========================================================================== config / errors
def test_config_defaults_follow_the_seeds():
    cfg = DEQConfig()
    assert (
        cfg.jacobian_free,
        cfg.anderson_acceleration_forward,
        cfg.anderson_acceleration_backward,
    ) == (False, False, False)
    assert (cfg.history_size_forward, cfg.history_size_backward) == (5, 5)
    assert (cfg.beta_anderson_acc_forward, cfg.beta_anderson_acc_backward) == (1.0, 1.0)
    assert (cfg.eps_anderson_acc_forward, cfg.eps_anderson_acc_backward) == (1e-4, 1e-4)
    assert cfg.max_iter_backward == 50


def test_config_validation():
    with pytest.raises(ValueError, match="^DEQConfig: max_iter_backward"):
        DEQConfig(max_iter_backward=0)
    with pytest.raises(ValueError, match="^DEQConfig: tol_backward"):
        DEQConfig(tol_backward=-1.0)
    with pytest.raises(ValueError, match="^DEQConfig: stop_mode"):
        DEQConfig(stop_mode="inf")
    with pytest.raises(TypeError, match="^DEQConfig: jacobian_free"):
        DEQConfig(jacobian_free="yes")
    with pytest.raises(TypeError, match="^DEQConfig.__init__|unexpected keyword"):
        DEQConfig(max_iters=3)
    with pytest.raises(TypeError, match="^deq: config must be a DEQConfig"):
        deq(torch.cos, torch.zeros(2), config={"max_iter": 3})


def test_closed_over_tensor_is_rejected():
    w = torch.eye(3, dtype=DT).mul(0.5).requires_grad_()
    with pytest.raises(ValueError, match="^deq: f uses a tensor that requires grad"):
        deq(lambda z, x: z @ w + x, torch.zeros(3, dtype=DT), torch.ones(3, dtype=DT))


def test_non_tensor_arguments_pass_through():
    """Floats, ints and strings in args are constants; tensors next to them get gradients."""
    w = torch.tensor([[0.2, 0.1], [0.0, 0.3]], dtype=DT)

    def f(z, w, scale, mode):
        assert mode == "affine"
        return scale * (w @ z) + 1.0

    g = torch.func.grad(
        lambda w: deq(
            f, torch.zeros(2, dtype=DT), w, 0.5, "affine", config=BACKWARDS["fixed_point"]
        ).sum()
    )(w)
    eye, ones = torch.eye(2, dtype=DT), torch.ones(2, dtype=DT)
    ref = torch.func.grad(lambda w: torch.linalg.solve(eye - 0.5 * w, ones).sum())(w)
    torch.testing.assert_close(g, ref, rtol=1e-9, atol=1e-12)


def test_no_args_returns_the_fixed_point():
    z, info = deq(
        lambda z: 0.5 * torch.cos(z),
        torch.zeros(4, dtype=DT),
        config=DEQConfig(tol=1e-13, stop_mode="abs"),
        return_info=True,
    )
    torch.testing.assert_close(z, 0.5 * torch.cos(z), rtol=0, atol=1e-12)
    assert not z.requires_grad and bool(info.converged)
