"""The public contract, checked the same way for every linear solver and every algorithm
(the tables of ``tests/helpers.py``), plus ``gradcheck`` / ``gradgradcheck`` of the three
implicit rules (``custom_root``, ``least_squares``, ``deq``). All references are independent
(dense ``torch.linalg`` solves, closed forms, central finite differences), all in float64.

Linear solvers: float64 accuracy, ``ridge``, scalars, a coupled two-leaf pytree, ``batched``
== loop, ``vmap`` == loop, ``torch.func.grad`` through the iterations == the closed-form
gradient, ``return_info``, ``on_failure="raise"``. Algorithms: convergence to a closed form,
a NamedTuple state whose type and leaves do not change, ``vmap`` over problems == loop, the
hyper-gradient of an unrolled run == central finite differences.
"""

from __future__ import annotations

import functools

import pytest
import torch
from dense_physics import MatrixPhysics  # shared test operator (tests/dense_physics.py)
from helpers import (
    ALGORITHMS,
    LINEAR_SOLVERS,
    PHYSICS,
    central_fd,
    hqs_tikhonov_fixed_point,
    lipschitz,
    matrix_problem,
    tikhonov_params,
    tikhonov_solution,
)
from tanh_layer import tanh_f, tanh_layer

from unroll import algorithms, tree
from unroll import linear_solve as ls
from unroll.algorithms import run
from unroll.equilibrium import DEQConfig, deq
from unroll.implicit import custom_root
from unroll.optim import L2, Tikhonov
from unroll.physics import least_squares

DT = torch.float64
OPTS = {"rtol": 1e-12, "maxiter": 200}
SOLVERS = [pytest.param(s, id=s.name) for s in LINEAR_SOLVERS]
ITERATIVE = [pytest.param(s, id=s.name) for s in LINEAR_SOLVERS if s.iterative]
ALGOS = [pytest.param(a, id=a.name) for a in ALGORITHMS]
GRADCHECK_TOL = {"atol": 1e-8, "rtol": 1e-6}  # gradcheck's defaults are 1e-5 / 1e-3


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=DT)


def operator(spec, n: int, seed: int = 0) -> torch.Tensor:
    """A well-conditioned ``n × n`` matrix ``spec`` can solve: symmetric positive definite with
    eigenvalues in [0.5, 1.5] for the SPD-only and symmetric-only solvers, else ``I − C``
    with ``‖C‖₂ = 0.5`` (non-symmetric). In both cases ``I − A`` is a contraction (the
    fixed-point solvers)."""
    g = gen(seed)
    if spec.spd_only or spec.symmetric:
        q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
        a = q @ torch.diag(torch.linspace(0.5, 1.5, n, dtype=DT)) @ q.T
        return (a + a.T) / 2
    c = torch.randn(n, n, generator=g, dtype=DT)
    return torch.eye(n, dtype=DT) - 0.5 * c / torch.linalg.matrix_norm(c, ord=2)


def batch_of_operators(spec, count: int = 3, n: int = 6) -> torch.Tensor:
    return torch.stack([operator(spec, n, seed=10 + i) for i in range(count)])


# =========================================================================== the tables
def test_tables_list_every_solver_and_algorithm():
    """A solver or algorithm added to the library must be added to tests/helpers.py (and so
    run through this file)."""
    public = {name for name in ls.__all__ if name.startswith("solve_")}
    assert {s.name for s in LINEAR_SOLVERS} == public
    assert {a.factory for a in ALGORITHMS} == set(algorithms.ALGORITHMS.values())


# =========================================================================== linear solvers
@pytest.mark.parametrize("spec", SOLVERS)
def test_solver_float64_accuracy(spec):
    a, b = operator(spec, 8), rand(8)
    x = spec.fn(lambda v: a @ v, b, **OPTS)
    assert x.dtype == DT and x.shape == (8,)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("spec", SOLVERS)
def test_solver_ridge(spec):
    a, b, rho = operator(spec, 6, seed=3), rand(6, seed=4), 0.3
    x = spec.fn(lambda v: a @ v, b, ridge=rho, **OPTS)
    eye = torch.eye(6, dtype=DT)
    if spec.normal:  # (AᵀA + ρI) x = Aᵀb
        ref = torch.linalg.solve(a.T @ a + rho * eye, a.T @ b)
    else:
        ref = torch.linalg.solve(a + rho * eye, b)
    torch.testing.assert_close(x, ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("spec", SOLVERS)
def test_solver_scalar(spec):
    x = spec.fn(lambda v: 1.25 * v, torch.tensor(2.0, dtype=DT), **OPTS)
    assert x.shape == ()
    torch.testing.assert_close(x, torch.tensor(1.6, dtype=DT), rtol=1e-12, atol=0)


@pytest.mark.parametrize("spec", SOLVERS)
def test_solver_coupled_pytree(spec):
    a = operator(spec, 7, seed=2)
    assert float(a[:3, 3:].abs().max()) > 0.05  # the two leaves are coupled

    def pack(t):
        return torch.cat([t["u"], t["v"].reshape(-1)])

    def unpack(flat):
        return {"u": flat[:3], "v": flat[3:].reshape(2, 2)}

    b = {"u": rand(3, seed=5), "v": rand(2, 2, seed=6)}
    x = spec.fn(lambda t: unpack(a @ pack(t)), b, **OPTS)
    assert isinstance(x, dict) and sorted(x) == ["u", "v"]
    assert x["u"].shape == (3,) and x["v"].shape == (2, 2)
    torch.testing.assert_close(pack(x), torch.linalg.solve(a, pack(b)), rtol=1e-10, atol=1e-11)


def _loop(spec, mats, bs):
    return torch.stack([spec.fn(lambda v, a=a: a @ v, b, **OPTS) for a, b in zip(mats, bs)])


@pytest.mark.parametrize("spec", SOLVERS)
def test_solver_batched_equals_loop(spec):
    mats, bs = batch_of_operators(spec), rand(3, 6, seed=7)
    x = spec.fn(lambda v: torch.einsum("bij,bj->bi", mats, v), bs, batched=True, **OPTS)
    torch.testing.assert_close(x, _loop(spec, mats, bs), rtol=0, atol=1e-10)
    torch.testing.assert_close(x, torch.linalg.solve(mats, bs), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("spec", SOLVERS)
def test_solver_vmap_equals_loop(spec):
    mats, bs = batch_of_operators(spec), rand(3, 6, seed=8)
    x = torch.func.vmap(lambda a, b: spec.fn(lambda v: a @ v, b, **OPTS))(mats, bs)
    torch.testing.assert_close(x, _loop(spec, mats, bs), rtol=0, atol=1e-10)


@pytest.mark.parametrize("spec", SOLVERS)
def test_solver_grad_through_iterations(spec):
    """``torch.func.grad`` through the solve (its iterations) against the closed form of the
    dense solution ``x = A⁻¹b``: ``∂L/∂b = A⁻ᵀw``, ``∂L/∂A = −(A⁻ᵀw) xᵀ`` for ``L = ⟨w, x⟩``;
    SPD-only solvers see ``A = sym(P)``, whose gradient is ``sym(∂L/∂A)``."""
    a, b, w = operator(spec, 6, seed=9), rand(6, seed=10), rand(6, seed=11)

    def sym(m):
        return (m + m.T) / 2 if spec.spd_only or spec.symmetric else m

    def loss(p, b):
        mat = sym(p)
        return (w * spec.fn(lambda v: mat @ v, b, **OPTS)).sum()

    grad_p, grad_b = torch.func.grad(loss, argnums=(0, 1))(a, b)
    x, u = torch.linalg.solve(a, b), torch.linalg.solve(a.T, w)
    torch.testing.assert_close(grad_b, u, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grad_p, sym(-torch.outer(u, x)), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("spec", SOLVERS)
def test_solver_return_info(spec):
    a, b = operator(spec, 6, seed=12), rand(6, seed=13)
    x, info = spec.fn(lambda v: a @ v, b, return_info=True, **OPTS)
    assert isinstance(info, ls.SolveInfo)
    assert int(info.reason) == 0 and bool(info.converged)
    assert 0 <= int(info.num_iter) <= OPTS["maxiter"]
    bnorm = float(torch.linalg.norm(b))
    assert float(info.residual_norm) <= OPTS["rtol"] * bnorm
    assert float(torch.linalg.norm(b - a @ x)) <= 10 * OPTS["rtol"] * bnorm
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("spec", ITERATIVE)
def test_solver_maxiter_failure(spec):
    a, b = operator(spec, 6, seed=14), rand(6, seed=15)
    with pytest.raises(ls.ConvergenceError):
        spec.fn(lambda v: a @ v, b, rtol=1e-12, maxiter=1, on_failure="raise")
    _, info = spec.fn(
        lambda v: a @ v, b, rtol=1e-12, maxiter=1, on_failure="ignore", return_info=True
    )
    assert int(info.reason) == 1 and not bool(info.converged)  # 1: max_iter


# =========================================================================== algorithms
LAM = 0.3
HQS_STEP = 0.7


def _params(spec, physics):
    if spec.name == "hqs":
        return {"stepsize": HQS_STEP, "lambda_reg": LAM}
    return tikhonov_params(spec.name, physics, LAM)


@pytest.mark.parametrize("spec", ALGOS)
def test_algorithm_converges_to_closed_form(spec):
    physics, y = matrix_problem(seed=4, hw=(3, 3), m=12)
    alg = spec.factory(L2(), Tikhonov())
    x, info = run(alg, y, physics, _params(spec, physics), 3000, tol=1e-13)
    if spec.minimises:
        ref = tikhonov_solution(physics, y, LAM)
    else:  # HQS: the fixed point of env_{γf} + λg
        ref = hqs_tikhonov_fixed_point(physics, y, LAM, HQS_STEP).reshape(x.shape)
    assert x.dtype == DT and x.shape == (2, 1, 3, 3)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-9)
    assert bool(info.converged.all())


@pytest.mark.parametrize("spec", ALGOS)
def test_algorithm_state_is_a_stable_namedtuple(spec):
    physics, y = matrix_problem(seed=5, hw=(3, 3), m=12)
    alg = spec.factory(L2(), Tikhonov())
    params = _params(spec, physics)
    state = alg.init(y, physics, params)
    assert type(state) is spec.state and isinstance(state, tuple) and state._fields
    layout = [(t.shape, t.dtype) for t in tree.leaves(state)]
    assert all(dtype == DT for _, dtype in layout)
    for _ in range(3):
        state = alg.step(state, y, physics, params)
        assert type(state) is spec.state
        assert [(t.shape, t.dtype) for t in tree.leaves(state)] == layout
    assert alg.output(state).shape == (2, 1, 3, 3)


@pytest.mark.parametrize("spec", ALGOS)
def test_algorithm_vmap_over_problems_equals_loop(spec):
    problems = [matrix_problem(seed=20 + i, hw=(3, 3), m=12) for i in range(3)]
    mats = torch.stack([p.matrix for p, _ in problems])
    ys = torch.stack([y for _, y in problems])
    widest = max((p for p, _ in problems), key=lambda p: float(lipschitz(p)))
    params = _params(spec, widest)
    alg = spec.factory(L2(), Tikhonov())

    def solve(mat, y):  # early stopping: under vmap, masked updates to max_iter
        return run(alg, y, MatrixPhysics(mat, (1, 3, 3)), params, 150, tol=1e-6, check_every=1)

    batched = torch.func.vmap(lambda m, y: solve(m, y)[0])(mats, ys)
    looped = [solve(m, y) for m, y in zip(mats, ys)]
    # every problem stops early, each at its own iteration: the masks are exercised
    assert all(bool(info.converged.all()) and int(info.num_iter) < 150 for _, info in looped)
    torch.testing.assert_close(batched, torch.stack([x for x, _ in looped]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("spec", ALGOS)
def test_algorithm_hypergradient_matches_finite_differences(spec):
    physics, y = matrix_problem(seed=6, hw=(3, 3), m=12)
    target = torch.rand(2, 1, 3, 3, generator=gen(0), dtype=DT)
    alg = spec.factory(L2(), Tikhonov())
    base = _params(spec, physics)
    hyper = {k: torch.tensor(float(base[k]), dtype=DT) for k in ("stepsize", "lambda_reg")}

    def loss(p):
        x, _ = run(alg, y, physics, {**base, **p}, 8)
        return ((x - target) ** 2).sum()

    grads = torch.func.grad(loss)(hyper)
    fd = central_fd(loss, hyper)
    for key in hyper:
        assert float(grads[key].abs()) > 1e-6  # the loss depends on it
        torch.testing.assert_close(grads[key], fd[key], rtol=1e-6, atol=1e-9)


# =========================================================================== gradcheck
# Each implicit rule: gradcheck (reverse mode) + gradgradcheck, and gradcheck of its forward
# mode (a ``jvp`` rule built on ``root_jvp``) through ``torch.autograd.forward_ad``.
REVERSE = {"check_backward_ad": True, "check_forward_ad": False}
FORWARD = {"check_backward_ad": False, "check_forward_ad": True, "check_undefined_grad": False}


def _ridge_grad(w, lam, X, y):
    """∇_w of ½‖Xw − y‖² + ½ λ‖w‖²."""
    return X.T @ (X @ w - y) + lam * w


@custom_root(
    _ridge_grad, argnums=(1, 2, 3), solve=functools.partial(ls.solve_cg, rtol=1e-13, maxiter=50)
)
def _ridge(init, lam, X, y):
    eye = torch.eye(X.shape[1], dtype=X.dtype)
    return torch.linalg.solve(X.T @ X + lam * eye, X.T @ y)


def _ridge_case():
    X, y = rand(6, 3, seed=30), rand(6, seed=31)
    lam = torch.tensor(0.8, dtype=DT)

    def f(lam, X, y):
        return _ridge(torch.zeros(3, dtype=DT), lam, X, y)

    return f, tuple(t.clone().requires_grad_() for t in (lam, X, y))


def _least_squares_case(case):
    theta = case.tensor(gen(40))
    physics = case.make(theta)
    z = torch.rand(2, *case.x_shape, generator=gen(41), dtype=DT)
    ax = physics.A(torch.rand(2, *case.x_shape, generator=gen(42), dtype=DT))
    y = ax + 0.1 * torch.randn(ax.shape, generator=gen(43), dtype=DT)
    gamma = torch.tensor([0.6, 1.5], dtype=DT)

    def f(z, y, gamma, theta):  # w.r.t. the centre, the data, γ and the operator's tensor
        return least_squares(case.make(theta), y, z, gamma)

    return f, tuple(t.clone().requires_grad_() for t in (z, y, gamma, theta))


def _deq_case():
    w, u, b, x = tanh_layer(3, 0.3, batch=2, seed=3)
    config = DEQConfig(max_iter=500, tol=1e-15, tol_backward=1e-14, max_iter_backward=500)

    def f(w, u, b, x):
        return deq(tanh_f, torch.zeros_like(x), w, u, b, x, config=config)

    return f, tuple(t.clone().requires_grad_() for t in (w, u, b, x))


CASES = [pytest.param(_ridge_case, id="custom_root-ridge")]
CASES += [
    pytest.param(functools.partial(_least_squares_case, c), id=f"least_squares-{c.name}")
    for c in PHYSICS
]
CASES += [pytest.param(_deq_case, id="deq-tanh")]


@pytest.mark.parametrize("make", CASES)
def test_gradcheck_and_gradgradcheck(make):
    f, inputs = make()
    assert torch.autograd.gradcheck(f, inputs, **REVERSE, **GRADCHECK_TOL)
    assert torch.autograd.gradgradcheck(f, inputs, **GRADCHECK_TOL)


@pytest.mark.parametrize("make", CASES)
def test_gradcheck_forward_mode(make):
    f, inputs = make()
    assert torch.autograd.gradcheck(f, inputs, **FORWARD, **GRADCHECK_TOL)
