"""Linear solvers against dense torch.linalg references (float64, small, single-threaded)."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from helpers import linear_solvers  # the one solver table (tests/helpers.py)
from hypothesis import given, settings
from hypothesis import strategies as st

from unroll import linear_solve as ls
from unroll import tree

DT = torch.float64
# the Krylov and dense solvers (the fixed-point ones need I − A to be a contraction, which
# the operators below are not; tests/test_contract.py runs those too)
ALL = linear_solvers(fixed_point=False)
GENERAL = linear_solvers(fixed_point=False, spd_only=False, symmetric=False)
NORMAL = linear_solvers(normal=True)  # (AᵀA + ρI) x = Aᵀb
SYMMETRIC = linear_solvers(spd_only=True) + linear_solvers(symmetric=True)
TIGHT = {"rtol": 1e-12}


def spd(n: int, seed: int = 0, cond: float = 10.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    eig = torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=DT)
    return q @ torch.diag(eig) @ q.T


def nonsym(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.eye(n, dtype=DT) * 3 + torch.randn(n, n, generator=g, dtype=DT) / n**0.5


def rand(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


# --------------------------------------------------------------------------- single tensor
@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_spd_matches_dense(solver):
    a, b = spd(12), rand(12)
    x = solver(lambda v: a @ v, b, **TIGHT)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("solver", GENERAL, ids=lambda f: f.__name__)
def test_nonsymmetric_matches_dense(solver):
    a, b = nonsym(15), rand(15)
    x = solver(lambda v: a @ v, b, **TIGHT)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)


def test_normal_cg_rectangular_matches_lstsq():
    a, b = rand(20, 7, seed=3), rand(20)
    x = ls.solve_normal_cg(lambda v: a @ v, b, init=torch.zeros(7, dtype=DT), **TIGHT)
    torch.testing.assert_close(x, torch.linalg.lstsq(a, b.unsqueeze(-1)).solution.squeeze(-1))


def test_normal_cg_rectangular_needs_init():
    a = rand(20, 7, seed=3)
    with pytest.raises(ValueError, match="solve_normal_cg: .*init"):
        ls.solve_normal_cg(lambda v: a @ v, rand(20))


@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_ridge_and_init(solver):
    a, b = spd(10, seed=2), rand(10)
    x = solver(lambda v: a @ v, b, ridge=0.7, init=rand(10, seed=9), **TIGHT)
    if solver in NORMAL:  # normal equations of (A + ρI)? no: AᵀA + ρI
        ref = torch.linalg.solve(a.T @ a + 0.7 * torch.eye(10, dtype=DT), a.T @ b)
    else:
        ref = torch.linalg.solve(a + 0.7 * torch.eye(10, dtype=DT), b)
    torch.testing.assert_close(x, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_scalar_system(solver):
    b = torch.tensor(3.0, dtype=DT)
    x = solver(lambda v: 4.0 * v, b, **TIGHT)
    assert x.shape == ()
    torch.testing.assert_close(x, torch.tensor(0.75, dtype=DT))


@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_scalar_gradient_is_not_zero(solver):
    # d/db of (4 x = b) is 1/4 (TorchOpt returns 0 here, its issue #222).
    b = torch.tensor(3.0, dtype=DT, requires_grad=True)
    (g,) = torch.autograd.grad(solver(lambda v: 4.0 * v, b, **TIGHT), b)
    torch.testing.assert_close(g, torch.tensor(0.25, dtype=DT))


# --------------------------------------------------------------------------- pytrees
def coupled_system():
    """A 2-leaf system {"u": (3,), "v": (2, 2)} whose off-diagonal blocks are non-zero."""
    m = spd(7, seed=5, cond=5.0) + 0.5  # dense coupling between the leaves
    m = (m + m.T) / 2 + 7 * torch.eye(7, dtype=DT)

    def pack(t):
        return torch.cat([t["u"], t["v"].reshape(-1)])

    def unpack(f):
        return {"u": f[:3], "v": f[3:].reshape(2, 2)}

    b = {"u": rand(3, seed=1), "v": rand(2, 2, seed=2)}
    return m, pack, unpack, b


@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_coupled_multi_leaf_pytree(solver):
    m, pack, unpack, b = coupled_system()
    assert (m[:3, 3:].abs() > 0.1).any()  # truly coupled
    x = solver(lambda t: unpack(m @ pack(t)), b, **TIGHT)
    ref = unpack(torch.linalg.solve(m, pack(b)))
    assert tree.allclose(x, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_nested_tuple_pytree(solver):
    a = spd(4, seed=7)
    b = (rand(4, seed=3), (2.0 * rand(4, seed=4),))
    x = solver(lambda t: (a @ t[0], (3.0 * t[1][0],)), b, **TIGHT)
    torch.testing.assert_close(x[0], torch.linalg.solve(a, b[0]))
    torch.testing.assert_close(x[1][0], b[1][0] / 3.0)


# --------------------------------------------------------------------------- batched
@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_batched_per_sample_systems(solver):
    mats = torch.stack([spd(6, seed=s, cond=3.0 + 20 * s) for s in range(4)])
    b = rand(4, 6)
    x, info = solver(
        lambda v: (mats @ v.unsqueeze(-1)).squeeze(-1), b, batched=True, return_info=True, **TIGHT
    )
    torch.testing.assert_close(x, torch.linalg.solve(mats, b), rtol=1e-9, atol=1e-10)
    assert info.converged.shape == (4,) and bool(info.converged.all())
    assert info.residual_norm.shape == (4,)


def test_batched_cg_freezes_converged_samples():
    # Sample 0 is the identity (CG converges in 1 step), sample 1 is ill-conditioned.
    mats = torch.stack([torch.eye(8, dtype=DT), spd(8, seed=3, cond=1e3)])
    b = rand(2, 8)
    mv = lambda v: (mats @ v.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    x, info = ls.solve_cg(mv, b, batched=True, return_info=True, rtol=1e-10)
    assert info.num_iter[0] == 1 and info.num_iter[1] > 3
    torch.testing.assert_close(x[0], b[0], rtol=0, atol=0)  # not touched after convergence
    ref = torch.linalg.solve(mats, b)
    torch.testing.assert_close(x, ref, rtol=1e-8, atol=1e-9)


def test_batched_zero_sample_stays_zero():
    mats = torch.stack([spd(5, seed=1), spd(5, seed=2)])
    b = torch.stack([torch.zeros(5, dtype=DT), rand(5)])
    x = ls.solve_cg(lambda v: (mats @ v.unsqueeze(-1)).squeeze(-1), b, batched=True, **TIGHT)
    assert torch.equal(x[0], torch.zeros(5, dtype=DT))
    torch.testing.assert_close(x[1], torch.linalg.solve(mats[1], b[1]))


# --------------------------------------------------------------------------- vmap / grad
@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_vmap_matches_python_loop(solver):
    mats = torch.stack(
        [spd(5, seed=s) + (0 if solver is ls.solve_cg else 0.3 * nonsym(5, s)) for s in range(6)]
    )
    if solver in SYMMETRIC:
        mats = torch.stack([spd(5, seed=s, cond=2.0 + s) for s in range(6)])
    bs = rand(6, 5)
    f = functools.partial(solver, **TIGHT)
    vm = torch.func.vmap(lambda a, b: f(lambda v: a @ v, b))(mats, bs)
    loop = torch.stack([f(lambda v, a=a: a @ v, b) for a, b in zip(mats, bs)])
    torch.testing.assert_close(vm, loop, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vm, torch.linalg.solve(mats, bs), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_grad_through_solver(solver):
    # d/dA of ½‖A⁻¹b‖² = −A⁻ᵀ x xᵀ ... compared with autograd through torch.linalg.solve.
    a, b = spd(5, seed=4), rand(5)

    def loss(mat, fn):  # A = sym(mat): CG and Cholesky only see symmetric operators
        return 0.5 * fn((mat + mat.T) / 2).square().sum()

    ours = torch.func.grad(loss)(a, lambda m: solver(lambda v: m @ v, b, **TIGHT))
    ref = torch.func.grad(loss)(a, lambda m: torch.linalg.solve(m, b))
    if solver in NORMAL:  # normal equations: differentiate the same map
        ref = torch.func.grad(loss)(a, lambda m: torch.linalg.solve(m.T @ m, m.T @ b))
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------- stopping
def test_zero_rhs_returns_zero_without_matvec():
    calls = []

    def mv(v):
        calls.append(1)
        return 2 * v

    x, info = ls.solve_cg(mv, torch.zeros(50, dtype=DT), return_info=True)
    assert torch.equal(x, torch.zeros(50, dtype=DT)) and not calls
    assert int(info.num_iter) == 0 and bool(info.converged)


def test_zero_tolerances_run_maxiter_iterations():
    calls = []
    a = spd(30, seed=1, cond=1e4)

    def mv(v):
        calls.append(1)
        return a @ v

    _, info = ls.solve_cg(mv, rand(30), rtol=0.0, atol=0.0, maxiter=17, return_info=True)
    assert len(calls) == 17 and int(info.num_iter) == 17
    assert bool(info.converged)  # no tolerance to miss: a fixed iteration count was asked for
    assert float(info.residual_norm) > 0


def test_info_reports_residual_and_convergence():
    a, b = spd(20, seed=2, cond=1e3), rand(20)
    x, info = ls.solve_cg(lambda v: a @ v, b, rtol=1e-6, return_info=True)
    true_res = torch.linalg.norm(b - a @ x)
    assert bool(info.converged)
    assert float(true_res) <= 1e-6 * float(torch.linalg.norm(b)) * 10
    _, info2 = ls.solve_cg(
        lambda v: a @ v, b, rtol=1e-12, maxiter=3, return_info=True, on_failure="ignore"
    )
    assert not bool(info2.converged) and int(info2.num_iter) == 3
    torch.testing.assert_close(
        info2.residual_norm,
        torch.linalg.norm(
            b - a @ ls.solve_cg(lambda v: a @ v, b, maxiter=3, rtol=1e-12, on_failure="ignore")
        ),
    )


def test_check_every_does_not_change_result():
    a, b = spd(25, seed=3, cond=100), rand(25)
    x1 = ls.solve_cg(lambda v: a @ v, b, rtol=1e-8, check_every=1)
    x7 = ls.solve_cg(lambda v: a @ v, b, rtol=1e-8, check_every=7)
    assert torch.equal(x1, x7)


def test_complex_hermitian_cg():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, dtype=torch.complex128, generator=g)
    a = m @ m.conj().T + 6 * torch.eye(6, dtype=torch.complex128)
    b = torch.randn(6, dtype=torch.complex128, generator=g)
    x = ls.solve_cg(lambda v: a @ v, b, rtol=1e-12)
    torch.testing.assert_close(x, torch.linalg.solve(a, b))


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("solver", ALL, ids=lambda f: f.__name__)
def test_errors_name_the_solver(solver):
    name = solver.__name__
    b = rand(4)
    with pytest.raises(ValueError, match=f"{name}: .*rtol"):
        solver(lambda v: v, b, rtol=-1.0)
    with pytest.raises(ValueError, match=f"{name}: .*maxiter"):
        solver(lambda v: v, b, maxiter=0)
    with pytest.raises(TypeError, match=f"{name}: unknown option 'tol'.*rtol"):
        solver(lambda v: v, b, tol=1e-3)
    with pytest.raises(TypeError, match=f"{name}: matvec must be callable"):
        solver(None, b)
    with pytest.raises(ValueError, match=f"{name}: .*NaN|{name}: .*shape"):
        solver(lambda v: v, torch.tensor([1.0, float("nan")], dtype=DT))


@pytest.mark.parametrize("solver", [s for s in ALL if s not in NORMAL], ids=lambda f: f.__name__)
def test_matvec_shape_mismatch(solver):
    with pytest.raises(ValueError, match=f"{solver.__name__}: matvec"):
        solver(lambda v: torch.cat([v, v]), rand(4))
    with pytest.raises(ValueError, match=f"{solver.__name__}: matvec"):
        solver(lambda t: {"a": t["a"]}, {"a": rand(2), "b": rand(3)})


@pytest.mark.parametrize("solver", [ls.solve_bicgstab, ls.solve_gmres], ids=lambda f: f.__name__)
def test_complex_rejected_by_real_only_solvers(solver):
    with pytest.raises(TypeError, match=f"{solver.__name__}: complex"):
        solver(lambda v: v, torch.ones(3, dtype=torch.complex128))


def test_cholesky_rejects_indefinite():
    a = torch.diag(torch.tensor([1.0, -2.0, 3.0], dtype=DT))
    with pytest.raises(ValueError, match="solve_cholesky: .*positive definite"):
        ls.solve_cholesky(lambda v: a @ v, rand(3))


def test_no_warnings_on_good_input():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ls.solve_cg(lambda v: 2 * v, rand(3))


# --------------------------------------------------------------------------- properties
@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 12),
    seed=st.integers(0, 10_000),
    cond=st.floats(1.0, 1e3),
    ridge=st.sampled_from([None, 0.0, 0.5]),
)
def test_property_random_spd_cg(n, seed, cond, ridge):
    a, b = spd(n, seed=seed, cond=cond), rand(n, seed=seed + 1)
    x = ls.solve_cg(lambda v: a @ v, b, ridge=ridge, rtol=1e-11, maxiter=20 * n)
    ref = torch.linalg.solve(a + (ridge or 0.0) * torch.eye(n, dtype=DT), b)
    torch.testing.assert_close(x, ref, rtol=1e-7, atol=1e-8)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 10), seed=st.integers(0, 10_000))
def test_property_dense_solvers_agree(n, seed):
    a, b = spd(n, seed=seed, cond=50.0), rand(n, seed=seed + 2)
    ref = torch.linalg.solve(a, b)
    for solver in (ls.solve_inv, ls.solve_cholesky, ls.solve_lu, ls.solve_gmres, ls.solve_bicgstab):
        torch.testing.assert_close(
            solver(lambda v: a @ v, b, rtol=1e-12), ref, rtol=1e-7, atol=1e-8
        )


# --------------------------------------------------------------------------- issue 13 / 14 solvers
def test_neumann_matches_dense_on_contractive_system():
    a, b = spd(10, seed=4, cond=8.0), rand(10, seed=5)  # eigenvalues in [1, 8]
    alpha = 2.0 / (1.0 + 8.0)  # ρ(I − αA) = 7/9 < 1
    x, info = ls.solve_neumann(
        lambda v: a @ v, b, alpha=alpha, rtol=1e-12, maxiter=500, return_info=True
    )
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-10, atol=1e-11)
    assert int(info.reason) == 0
    assert float(info.residual_norm) <= 1e-12 * float(torch.linalg.norm(b))


def test_neumann_partial_sum_is_torchopt_series():
    """``rtol = 0, maxiter = K``: exactly ``α Σ_{k=0}^{K} (I − αA)^k b`` (TorchOpt's ``ns``)."""
    a, b, alpha = spd(6, seed=6, cond=3.0), rand(6, seed=7), 0.4
    m = torch.eye(6, dtype=DT) - alpha * a
    series = alpha * sum(torch.linalg.matrix_power(m, k) @ b for k in range(11))
    x = ls.solve_neumann(lambda v: a @ v, b, alpha=alpha, rtol=0.0, maxiter=10)
    torch.testing.assert_close(x, series, rtol=1e-13, atol=1e-14)
    y = ls.solve_inv(lambda v: a @ v, b, ns=True, alpha=alpha, rtol=0.0, maxiter=10)
    torch.testing.assert_close(y, series, rtol=1e-13, atol=1e-14)
    with pytest.raises(TypeError, match="solve_inv: alpha .*ns=True"):
        ls.solve_inv(lambda v: a @ v, b, alpha=0.5)


def test_neumann_divergence_is_reported():
    a, b = spd(6, seed=8, cond=10.0), rand(6, seed=9)  # α = 1: ρ(I − A) = 9 > 1
    with pytest.warns(ls.ConvergenceWarning, match=r"solve_neumann: .*\[diverged\].*spectral"):
        x, info = ls.solve_neumann(lambda v: a @ v, b, return_info=True)
    assert int(info.reason) == 4 and not bool(info.converged)  # 4: diverged
    assert bool(torch.isfinite(x).all())
    with pytest.raises(ls.ConvergenceError, match="solve_neumann"):
        ls.solve_neumann(lambda v: a @ v, b, on_failure="raise")
    with pytest.raises(ValueError, match="solve_neumann: alpha"):
        ls.solve_neumann(lambda v: a @ v, b, alpha=0.0)


def test_qr_nonsymmetric_and_singular():
    a, b = nonsym(9, seed=3), rand(9, seed=4)
    assert float((a - a.T).abs().max()) > 0.1
    x = ls.solve_qr(lambda v: a @ v, b)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-12, atol=1e-13)
    sing = torch.diag(torch.tensor([1.0, 0.0, 2.0], dtype=DT))
    with pytest.raises(ValueError, match="solve_qr: the operator is singular"):
        ls.solve_qr(lambda v: sing @ v, rand(3))


def test_iterative_refinement_reaches_tight_tolerance_with_sloppy_inner_solver():
    a, b = spd(12, seed=5, cond=50.0), rand(12, seed=6)
    sloppy = functools.partial(ls.solve_cg, rtol=1e-2, on_failure="ignore")
    inner_err = torch.linalg.norm(b - a @ sloppy(lambda v: a @ v, b))
    assert float(inner_err) > 1e-4 * float(torch.linalg.norm(b))  # the inner solve is sloppy
    x, info = ls.solve_iterative_refinement(
        lambda v: a @ v, b, solve=sloppy, rtol=1e-12, maxiter=30, return_info=True
    )
    assert float(torch.linalg.norm(b - a @ x)) <= 1e-12 * float(torch.linalg.norm(b))
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-10, atol=1e-11)
    assert 1 < int(info.num_iter) <= 30 and int(info.reason) == 0
    with pytest.warns(ls.ConvergenceWarning, match="solve_iterative_refinement: .*max_iter"):
        ls.solve_iterative_refinement(lambda v: a @ v, b, solve=sloppy, rtol=1e-12, maxiter=2)


def test_minres_symmetric_indefinite():
    q, _ = torch.linalg.qr(rand(10, 10, seed=11))
    eig = torch.tensor([-3.0, -1.0, -0.5, 0.4, 0.7, 1.0, 2.0, 3.0, 5.0, 8.0], dtype=DT)
    a, b = q @ torch.diag(eig) @ q.T, rand(10, seed=12)
    a = (a + a.T) / 2
    x, info = ls.solve_minres(lambda v: a @ v, b, rtol=1e-12, return_info=True)
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)
    assert float(torch.linalg.norm(b - a @ x)) <= 1e-10 * float(torch.linalg.norm(b))
    assert int(info.num_iter) <= 12
    with pytest.warns(ls.ConvergenceWarning, match=r"solve_cg: .*\[breakdown\]"):
        ls.solve_cg(lambda v: a @ v, b, rtol=1e-12)  # CG cannot do this one


def test_lsqr_rectangular_and_ridge_match_lstsq():
    a, b = rand(20, 7, seed=3), rand(20)
    z0 = torch.zeros(7, dtype=DT)
    x = ls.solve_lsqr(lambda v: a @ v, b, init=z0, rtol=1e-12)
    torch.testing.assert_close(x, torch.linalg.lstsq(a, b.unsqueeze(-1)).solution.squeeze(-1))
    x0 = rand(7, seed=4)  # a warm start with damping: ridge applies to x, not to x − x0
    x = ls.solve_lsqr(lambda v: a @ v, b, init=x0, ridge=0.3, rtol=1e-12)
    ref = torch.linalg.solve(a.T @ a + 0.3 * torch.eye(7, dtype=DT), a.T @ b)
    torch.testing.assert_close(x, ref, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("solver", [ls.solve_normal_cg, ls.solve_lsqr], ids=lambda f: f.__name__)
def test_non_square_without_init_is_value_and_type_error(solver):
    """unroll's rule (ValueError for bad input) and JAXopt's class (TypeError) both catch it."""
    a = rand(20, 7, seed=3)
    for cls in (ValueError, TypeError, ls.ShapeMismatchError):
        with pytest.raises(cls, match=f"{solver.__name__}: .*init=... shaped like the unknown"):
            solver(lambda v: a @ v, rand(20))
