"""Fixed-point solvers against closed forms, long plain iterations and per-sample runs."""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import pytest
import torch
from tanh_layer import plain_loop, tanh_f, tanh_layer

from unroll.fixed_point import FixedPointInfo, anderson, fixed_point_iteration
from unroll.linear_solve import ConvergenceWarning, solve_anderson, solve_fixed_point

DT = torch.float64
SOLVERS = [fixed_point_iteration, anderson]


def contraction(n: int, rho: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=g, dtype=DT)
    return a * rho / torch.linalg.eigvals(a).abs().max()


# =========================================================================== closed forms
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("batched", [False, True])
def test_affine_map_closed_form(solver, batched):
    """``z = A z + c`` has ``z* = (I − A)⁻¹ c``."""
    a = contraction(6, 0.8, seed=1)
    c = torch.randn(3, 6, dtype=DT, generator=torch.Generator().manual_seed(2))
    z, info = solver(
        lambda z, a, c: z @ a.T + c,
        torch.zeros(3, 6, dtype=DT),
        a,
        c,
        tol=1e-13,
        maxiter=2000,
        batched=batched,
    )
    ref = torch.linalg.solve(torch.eye(6, dtype=DT) - a, c.T).T
    torch.testing.assert_close(z, ref, rtol=1e-11, atol=1e-11)
    assert bool(info.converged.all())
    assert info.num_iter.shape == ((3,) if batched else ())
    assert info.residual.shape == info.converged.shape


class Pair(NamedTuple):
    p: torch.Tensor
    q: torch.Tensor


@pytest.mark.parametrize("solver", SOLVERS)
def test_pytree_state_coupled_closed_form(solver):
    """A NamedTuple state of two tensors coupled through the map: a 2-block linear system
    ``(p, q) ↦ (A p + B q + c, C p + D q + e)`` with ``[[A, B], [C, D]] = M``, ``ρ(M) < 1``."""
    m = contraction(7, 0.8, seed=3)
    c = torch.randn(7, dtype=DT, generator=torch.Generator().manual_seed(4))

    def f(s, m, c):
        v = m @ torch.cat([s.p, s.q]) + c
        return Pair(v[:4], v[4:])

    z, info = solver(
        f, Pair(torch.zeros(4, dtype=DT), torch.zeros(3, dtype=DT)), m, c, tol=1e-13, maxiter=2000
    )
    assert isinstance(z, Pair)
    ref = torch.linalg.solve(torch.eye(7, dtype=DT) - m, c)
    torch.testing.assert_close(torch.cat([z.p, z.q]), ref, rtol=1e-11, atol=1e-11)
    assert bool(info.converged)


@pytest.mark.parametrize("solver", SOLVERS)
def test_complex_state(solver):
    """Complex leaves (Anderson mixes them as real/imaginary pairs): ``z = a z + 1``."""
    a = 0.7 * torch.exp(torch.tensor(0.4j, dtype=torch.complex128))
    z, _ = solver(
        lambda z, a: a * z + 1, torch.zeros(5, dtype=torch.complex128), a, tol=1e-13, maxiter=500
    )
    torch.testing.assert_close(z, torch.full((5,), 1 / (1 - a), dtype=torch.complex128))


# =========================================================================== tanh layer
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("rho", [0.9, 0.99])
def test_tanh_layer_matches_long_plain_iteration(solver, rho):
    w, u, b, x = tanh_layer(32, rho)
    z0 = torch.zeros_like(x)
    ref = plain_loop(tanh_f, z0, w, u, b, x, n=4000)
    z, info = solver(tanh_f, z0, w, u, b, x, tol=1e-12, maxiter=4000)
    torch.testing.assert_close(z, ref, rtol=1e-10, atol=1e-10)
    # the reported relative residual is an honest bound, recomputed independently
    fz = tanh_f(z, w, u, b, x)
    assert float((fz - z).norm() / fz.norm()) <= 1e-12
    assert bool(info.converged) and float(info.residual) <= 1e-12


def test_anderson_needs_3x_fewer_iterations_at_rho_099():
    w, u, b, x = tanh_layer(64, 0.99)
    z0 = torch.zeros_like(x)
    _, plain = fixed_point_iteration(tanh_f, z0, w, u, b, x, tol=1e-5, maxiter=5000)
    _, acc = anderson(tanh_f, z0, w, u, b, x, tol=1e-5, maxiter=5000)
    assert bool(plain.converged) and bool(acc.converged)
    assert 3 * int(acc.num_iter) <= int(plain.num_iter)


def test_anderson_relative_ridge_is_scale_invariant():
    """With the ridge relative to the Gram matrix, rescaling the problem ``z ↦ s z`` changes
    nothing: the same iterates (scaled) and the same iteration count."""
    w, u, b, x = tanh_layer(16, 0.95, batch=4)
    s = 1e-4

    def scaled(z, w, u, b, x):
        return s * tanh_f(z / s, w, u, b, x)

    z0 = torch.zeros_like(x)
    z1, i1 = anderson(
        tanh_f, z0, w, u, b, x, tol=1e-10, ridge=1e-2, check_every=1, on_failure="ignore"
    )
    z2, i2 = anderson(
        scaled, z0, w, u, b, x, tol=1e-10, ridge=1e-2, check_every=1, on_failure="ignore"
    )
    assert int(i1.num_iter) == int(i2.num_iter)
    torch.testing.assert_close(z2 / s, z1, rtol=1e-9, atol=1e-12)


def test_abs_and_rel_stop_modes():
    w, u, b, x = tanh_layer(16, 0.9, batch=4)
    z0 = torch.zeros_like(x)
    for mode in ("abs", "rel"):
        z, info = fixed_point_iteration(
            tanh_f, z0, w, u, b, x, tol=1e-6, stop_mode=mode, maxiter=1000, check_every=1
        )
        # the iterate before the last step has residual ‖f(z)−z‖ equal to the step size
        k = int(info.num_iter)
        z_prev = plain_loop(tanh_f, z0, w, u, b, x, n=k - 1)
        fz = tanh_f(z_prev, w, u, b, x)
        res = (fz - z_prev).norm() / (fz.norm() if mode == "rel" else 1.0)
        torch.testing.assert_close(info.residual, res, rtol=1e-10, atol=0)
        assert float(res) <= 1e-6
        # and the previous check was above the tolerance (it stopped at the first success)
        assert float(info.trace[-2]) > 1e-6
        torch.testing.assert_close(z, fz)


# =========================================================================== batched
@pytest.mark.parametrize("solver", SOLVERS)
def test_batched_equals_per_sample_runs(solver):
    """Per-sample residuals: each sample freezes at its own iteration, with the result of
    solving it alone."""
    w, u, b, x = tanh_layer(16, 0.95, batch=5)
    x = x * torch.logspace(-2, 0.5, 5, dtype=DT)[:, None]  # very different convergence speeds
    z0 = torch.zeros_like(x)
    z, info = solver(tanh_f, z0, w, u, b, x, tol=1e-9, maxiter=2000, batched=True, check_every=1)
    assert info.num_iter.shape == (5,) and info.trace.shape[1] == 5
    assert len(set(info.num_iter.tolist())) > 1
    for i in range(5):
        zi, ii = solver(
            tanh_f, z0[i : i + 1], w, u, b, x[i : i + 1], tol=1e-9, maxiter=2000, check_every=1
        )
        assert int(ii.num_iter) == int(info.num_iter[i])
        torch.testing.assert_close(z[i : i + 1], zi, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(info.residual[i], ii.residual, rtol=1e-6, atol=1e-14)


@pytest.mark.parametrize("solver", SOLVERS)
def test_vmap_equals_loop(solver):
    w, u, b, x = tanh_layer(8, 0.9, batch=3)

    def one(xi):
        return solver(tanh_f, torch.zeros(8, dtype=DT), w, u, b, xi, tol=1e-12, maxiter=500)[0]

    out = torch.func.vmap(one)(x)
    ref = torch.stack([one(xi) for xi in x])
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)


# =========================================================================== precision
def test_float32_and_bf16_autocast():
    w, u, b, x = tanh_layer(32, 0.9)
    ref = plain_loop(tanh_f, torch.zeros_like(x), w, u, b, x, n=3000)
    w32, u32, b32, x32 = (t.float() for t in (w, u, b, x))
    z0 = torch.zeros_like(x32)
    for solver in SOLVERS:
        z, info = solver(tanh_f, z0, w32, u32, b32, x32, tol=1e-5, maxiter=500)
        assert z.dtype == torch.float32 and bool(info.converged)
        assert float((z.double() - ref).norm() / ref.norm()) < 1e-3
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, info = anderson(tanh_f, z0, w32, u32, b32, x32, tol=2e-2, maxiter=200)
    assert z.dtype == torch.float32 and bool(info.converged)
    assert float((z.double() - ref).norm() / ref.norm()) < 5e-2


# =========================================================================== linear solvers
@pytest.mark.parametrize("solve", [solve_fixed_point, solve_anderson])
@pytest.mark.parametrize("batched", [False, True])
def test_linear_solvers_dense_reference(solve, batched):
    """``(I − Jᵀ) v = u``: the DEQ adjoint system, against ``torch.linalg.solve``."""
    j = contraction(8, 0.9, seed=7)
    a = torch.eye(8, dtype=DT) - j.T
    rhs = torch.randn(4, 8, dtype=DT, generator=torch.Generator().manual_seed(8))
    v, info = solve(
        lambda v: v @ a.T, rhs, rtol=1e-12, maxiter=3000, batched=batched, return_info=True
    )
    torch.testing.assert_close(v, torch.linalg.solve(a, rhs.T).T, rtol=1e-10, atol=1e-10)
    assert bool(info.converged.all())
    assert info.num_iter.shape == ((4,) if batched else ())


def test_linear_solvers_pytree_ridge_and_init():
    j = contraction(5, 0.5, seed=9)
    rhs = {"a": torch.ones(5, dtype=DT), "b": torch.tensor(2.0, dtype=DT)}

    def matvec(v):
        return {"a": v["a"] - j @ v["a"] + 0.1 * v["b"], "b": 1.5 * v["b"]}

    full = torch.zeros(6, 6, dtype=DT)
    full[:5, :5] = torch.eye(5, dtype=DT) - j
    full[:5, 5] = 0.1
    full[5, 5] = 1.5
    full = full + 0.2 * torch.eye(6, dtype=DT)
    ref = torch.linalg.solve(full, torch.cat([rhs["a"], rhs["b"][None]]))
    for solve in (solve_fixed_point, solve_anderson):
        v = solve(
            matvec,
            rhs,
            ridge=0.2,
            rtol=1e-13,
            maxiter=3000,
            init={"a": torch.ones(5, dtype=DT), "b": torch.tensor(0.0, dtype=DT)},
        )
        torch.testing.assert_close(torch.cat([v["a"], v["b"][None]]), ref)


def test_anderson_beats_richardson_on_slow_linear_system():
    j = contraction(30, 0.99, seed=11)
    a = torch.eye(30, dtype=DT) - j.T
    rhs = torch.ones(30, dtype=DT)
    _, slow = solve_fixed_point(lambda v: a @ v, rhs, rtol=1e-8, maxiter=5000, return_info=True)
    _, fast = solve_anderson(lambda v: a @ v, rhs, rtol=1e-8, maxiter=5000, return_info=True)
    assert bool(slow.converged) and bool(fast.converged)
    assert int(fast.num_iter) * 3 <= int(slow.num_iter)


def test_linear_solver_warns_with_residual():
    a = torch.eye(4, dtype=DT) - contraction(4, 0.99, seed=12)
    with pytest.warns(
        ConvergenceWarning,
        match=r"solve_fixed_point: stopped at max_iter=3 "
        r"with residual \d\.\d+e[+-]\d+ above tol",
    ):
        solve_fixed_point(lambda v: a @ v, torch.ones(4, dtype=DT), maxiter=3)
    with pytest.warns(ConvergenceWarning, match=r"diverged .*\[diverged\]"):
        x = solve_fixed_point(lambda v: -2.0 * v, torch.ones(4, dtype=DT), maxiter=30)
    assert bool(torch.isfinite(x).all())  # the last good iterate, not an overflowed one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = solve_fixed_point(
            lambda v: a @ v,
            torch.ones(4, dtype=DT),
            maxiter=3,
            return_info=True,
            on_failure="ignore",
        )
    assert not bool(info.converged) and int(info.reason) == 1  # max_iter


# =========================================================================== failures
def test_non_contractive_map_reports_not_converged():
    with pytest.warns(ConvergenceWarning, match="fixed_point_iteration: diverged"):
        z, info = fixed_point_iteration(
            lambda z: 2.0 * z + 1.0, torch.ones(3, dtype=DT), maxiter=50, stop_mode="abs"
        )
    assert not bool(info.converged) and int(info.reason) == 4  # diverged
    assert float(info.trace[-1]) > float(info.trace[0])
    assert bool(torch.isfinite(z).all())
    with pytest.warns(ConvergenceWarning, match="anderson: "):
        z, info = anderson(lambda z: torch.exp(z), torch.ones(3, dtype=DT), maxiter=50)
    assert not bool(info.converged) and bool(torch.isfinite(z).all())


def test_validation_messages():
    z0 = torch.zeros(3)
    f = torch.cos
    with pytest.raises(ValueError, match="^anderson: maxiter"):
        anderson(f, z0, maxiter=0)
    with pytest.raises(ValueError, match="^fixed_point_iteration: tol"):
        fixed_point_iteration(f, z0, tol=-1.0)
    with pytest.raises(ValueError, match="^anderson: stop_mode"):
        anderson(f, z0, stop_mode="max")
    with pytest.raises(ValueError, match="^anderson: history_size"):
        anderson(f, z0, history_size=0)
    with pytest.raises(ValueError, match="^anderson: beta"):
        anderson(f, z0, beta=0.0)
    with pytest.raises(ValueError, match="^anderson: ridge"):
        anderson(f, z0, ridge=-1.0)
    with pytest.raises(ValueError, match="^fixed_point_iteration: f returned a leaf of shape"):
        fixed_point_iteration(lambda z: z[:2], z0)
    with pytest.raises(ValueError, match="^anderson: f must return a state with the structure"):
        anderson(lambda z: (z, z), z0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        anderson(f, torch.tensor([0.0, math.nan]))
    with pytest.raises(TypeError, match="^anderson: the state must be floating"):
        anderson(f, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="^fixed_point_iteration: batched=True needs the same"):
        fixed_point_iteration(lambda s: s, (torch.zeros(2, 1), torch.zeros(3, 1)), batched=True)
    with pytest.raises(TypeError, match="^anderson: f must be callable"):
        anderson(None, z0)
    with pytest.raises(ValueError, match="^solve_anderson: rtol must be a finite number"):
        solve_anderson(lambda v: v, z0, rtol=-1.0)
    with pytest.raises(ValueError, match="^solve_fixed_point: matvec must return"):
        solve_fixed_point(lambda v: v[:2], z0)
    with pytest.raises(ValueError, match="^solve_anderson: matvec must return"):
        solve_anderson(lambda v: (v, v), z0)


def test_info_is_a_named_tuple_of_tensors():
    _, info = anderson(torch.cos, torch.zeros(2, dtype=DT), tol=1e-10)
    assert isinstance(info, FixedPointInfo)
    assert all(isinstance(t, torch.Tensor) for t in info)
    assert info.trace.dim() == 1 and info.trace.shape[0] >= 1
    torch.testing.assert_close(info.residual, info.trace[-1])


def test_unrolled_gradient_through_solver():
    """The solvers are plain differentiable loops too: d z*/d c of ``z = 0.5 cos(z) + c``
    equals the implicit-function value ``1 / (1 + 0.5 sin z*)``."""

    def step(z, c):
        return 0.5 * torch.cos(z) + c

    c = torch.tensor(0.3, dtype=DT)
    for solver in SOLVERS:
        run = functools.partial(solver, step, torch.zeros((), dtype=DT), tol=1e-14, maxiter=200)
        g = torch.func.grad(lambda c, run=run: run(c)[0])(c)
        z, _ = run(c)
        torch.testing.assert_close(g, 1 / (1 + 0.5 * torch.sin(z)), rtol=1e-8, atol=0)


def test_partial_configuration():
    solve = functools.partial(anderson, history_size=3, tol=1e-13, stop_mode="abs")
    z, info = solve(torch.cos, torch.zeros((), dtype=DT))
    assert float(abs(torch.cos(z) - z)) <= 1e-13 and bool(info.converged)


# =========================================================================== has_aux, mixing, steps
def _aux_map(a: torch.Tensor, c: torch.Tensor):
    calls = []

    def f(z, scale):
        out = scale * (z @ a.T) + c
        calls.append(1)
        return out, {"norm": out.norm(), "tag": "affine", "calls": len(calls)}

    return f


@pytest.mark.parametrize("solver", SOLVERS)
def test_has_aux_passes_aux_through_without_gradient(solver):
    a = contraction(5, 0.7, seed=3)
    c = torch.randn(5, dtype=DT, generator=torch.Generator().manual_seed(4))
    scale = torch.tensor(1.0, dtype=DT, requires_grad=True)
    f = _aux_map(a, c)
    (z, aux), info = solver(
        f, torch.zeros(5, dtype=DT), scale, tol=1e-13, maxiter=500, has_aux=True
    )
    ref = torch.linalg.solve(torch.eye(5, dtype=DT) - a, c)
    torch.testing.assert_close(z, ref, rtol=1e-11, atol=1e-12)
    assert aux["tag"] == "affine"  # non-tensor leaves untouched
    assert aux["calls"] == int(info.num_iter)  # the last evaluation's aux
    torch.testing.assert_close(aux["norm"], z.norm(), rtol=1e-12, atol=0)
    assert not aux["norm"].requires_grad and z.requires_grad  # aux carries no gradient
    z_plain, info_plain = solver(
        lambda z, s: f(z, s)[0], torch.zeros(5, dtype=DT), scale, tol=1e-13, maxiter=500
    )
    assert torch.equal(z, z_plain) and torch.equal(info.trace, info_plain.trace)
    with pytest.raises(TypeError, match=f"{solver.__name__}: has_aux=True needs f to return"):
        solver(lambda z: z * 0.5, torch.ones(2, dtype=DT), has_aux=True)


def test_custom_fixed_point_has_aux_through_fixed_point_iteration():
    from unroll import custom_fixed_point

    def T(x, a):
        out = 0.5 * x + a  # x* = 2a
        return out, {"half": 0.5 * out}

    @custom_fixed_point(T, has_aux=True)
    def solve(x, a):
        return fixed_point_iteration(T, x, a, has_aux=True, tol=1e-14, maxiter=200)[0]

    a = torch.tensor([1.0, -2.0], dtype=DT, requires_grad=True)
    z, aux = solve(torch.zeros(2, dtype=DT), a)
    torch.testing.assert_close(z, 2 * a.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(aux["half"], a.detach(), rtol=1e-12, atol=1e-12)
    assert not aux["half"].requires_grad
    (g,) = torch.autograd.grad(z.sum(), a)
    torch.testing.assert_close(g, torch.full((2,), 2.0, dtype=DT), rtol=1e-10, atol=0)


def test_anderson_mixing_frequency():
    """``mixing_frequency=k`` mixes every k-th step; the steps between are plain steps, so
    ``k > maxiter`` is plain iteration, and every ``k`` still converges to the fixed point."""
    a = contraction(8, 0.95, seed=5)
    c = torch.randn(8, dtype=DT, generator=torch.Generator().manual_seed(6))
    ref = torch.linalg.solve(torch.eye(8, dtype=DT) - a, c)
    z0 = torch.zeros(8, dtype=DT)
    plain, _ = fixed_point_iteration(lambda z: a @ z + c, z0, tol=0, maxiter=7)
    never, _ = anderson(lambda z: a @ z + c, z0, tol=0, maxiter=7, mixing_frequency=100)
    torch.testing.assert_close(never, plain, rtol=0, atol=1e-15)
    iters = {}
    for k in (1, 2, 3):
        z, info = anderson(lambda z: a @ z + c, z0, tol=1e-12, maxiter=500, mixing_frequency=k)
        torch.testing.assert_close(z, ref, rtol=1e-9, atol=1e-10)
        iters[k] = int(info.num_iter)
    _, info_plain = fixed_point_iteration(lambda z: a @ z + c, z0, tol=1e-12, maxiter=2000)
    assert iters[1] <= iters[3] < int(info_plain.num_iter)
    with pytest.raises(ValueError, match="anderson: mixing_frequency"):
        anderson(lambda z: z, z0, mixing_frequency=0)


@pytest.mark.parametrize("batched", [False, True])
def test_step_by_step_equals_one_call_bit_for_bit(batched):
    from unroll.fixed_point import anderson_algorithm, fixed_point_iteration_algorithm

    w, u, b, x = tanh_layer(4, 0.8, batch=3, seed=7)
    z0 = {"z": torch.zeros_like(x), "pair": (torch.zeros_like(x),)}

    def f(state, w, u, b, x):
        z = tanh_f(state["z"], w, u, b, x)
        return {"z": z, "pair": (0.5 * z + 0.1 * state["pair"][0],)}

    for n in (1, 2, 9):
        alg = fixed_point_iteration_algorithm(f, batched=batched)
        state = alg.init(z0, w, u, b, x)
        for _ in range(n):
            state = alg.step(state, w, u, b, x)
        one, _ = fixed_point_iteration(f, z0, w, u, b, x, tol=0, maxiter=n, batched=batched)
        assert all(
            torch.equal(p, q) for p, q in zip(tree_leaves(alg.output(state)), tree_leaves(one))
        )
        assert int(state.num_iter) == n
        for m, k in ((3, 1), (4, 2)):
            alg = anderson_algorithm(
                f, history_size=m, beta=0.9, mixing_frequency=k, batched=batched
            )
            state = alg.init(z0, w, u, b, x)
            for _ in range(n):
                state = alg.step(state, w, u, b, x)
            one, _ = anderson(
                f,
                z0,
                w,
                u,
                b,
                x,
                history_size=m,
                beta=0.9,
                mixing_frequency=k,
                tol=0,
                maxiter=n,
                batched=batched,
            )
            assert all(
                torch.equal(p, q) for p, q in zip(tree_leaves(alg.output(state)), tree_leaves(one))
            )
    assert state.residual.shape == ((3,) if batched else ())


def test_step_by_step_state_is_not_mutated():
    from unroll.fixed_point import anderson_algorithm

    a = contraction(4, 0.9, seed=8)
    alg = anderson_algorithm(lambda z: a @ z + 1.0, history_size=2)
    s = alg.init(torch.zeros(4, dtype=DT))
    states = [s]
    for _ in range(5):
        states.append(alg.step(states[-1]))
    copies = [None if t.fs is None else t.fs.clone() for t in states]
    alg.step(states[-1])
    for st, cp in zip(states, copies):
        assert (cp is None and st.fs is None) or torch.equal(st.fs, cp)


def tree_leaves(t):
    from unroll import tree

    return tree.leaves(t)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize(
    "opts",
    [
        dict(tol=0.0, maxiter=40),
        dict(tol=1e-6, maxiter=300),
        dict(tol=1e-3, maxiter=300, stop_mode="abs"),
        dict(tol=1e-14, maxiter=25),
        dict(tol=1e-6, maxiter=300, check_every=3),
    ],
)
def test_quiet_checks_equal_general_bookkeeping(monkeypatch, batched, opts):
    """The fast path of a convergence check (nothing converged or failed) gives, bit for bit,
    the iterate and FixedPointInfo of the general per-problem bookkeeping, also under vmap."""
    import unroll.fixed_point as fp

    w, u, b, x = tanh_layer(6, 0.9, batch=4, seed=3)
    x = x * torch.tensor([1.0, 3.0, 0.1, 10.0], dtype=DT)[:, None]  # unequal convergence

    def solve():
        z0 = torch.zeros_like(x)
        one = fixed_point_iteration(
            tanh_f, z0, w, u, b, x, batched=batched, on_failure="ignore", **opts
        )
        per = torch.func.vmap(
            lambda xi: fixed_point_iteration(
                tanh_f, torch.zeros_like(xi), w, u, b, xi, on_failure="ignore", **opts
            )
        )(x)
        return one, per

    fast = solve()
    monkeypatch.setattr(fp, "_quiet", lambda *args: None)
    general = solve()
    for a, g in zip(fast, general):
        assert torch.equal(a[0], g[0])
        for fa, fg in zip(a[1], g[1]):
            assert fa.dtype == fg.dtype and torch.equal(fa, fg)
