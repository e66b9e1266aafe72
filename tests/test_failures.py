"""The failure policy (issue 10): no solve returns NaN/Inf or an unconverged result silently.

Every iterative solve warns (once per cause and call site, at the caller's line), raises under
``on_failure="raise"``, or stays quiet under ``"ignore"``; breakdowns and NaN return the last
finite iterate (checked against hand-written reference iterations in float64); bad input gets a
ValueError/TypeError that starts with the API name. Also: no cache keeps tensors alive, and an
ImplicitModule is not silently shared between threads.
"""

from __future__ import annotations

import copy
import functools
import gc
import threading
import warnings

import pytest
import torch
from torch import nn

import unroll
from unroll import _failure
from unroll import linear_solve as ls
from unroll.fixed_point import anderson, fixed_point_iteration
from unroll.implicit import ImplicitModule, custom_root, root_jvp, root_vjp
from unroll.linear_solve import (
    ConvergenceError,
    ConvergenceWarning,
    solve_anderson,
    solve_fixed_point,
)

DT = torch.float64
KRYLOV = {
    "solve_cg": ls.solve_cg,
    "solve_normal_cg": ls.solve_normal_cg,
    "solve_bicgstab": ls.solve_bicgstab,
    "solve_gmres": functools.partial(ls.solve_gmres, restart=2),
}
DENSE = {"solve_inv": ls.solve_inv, "solve_cholesky": ls.solve_cholesky, "solve_lu": ls.solve_lu}


def spd(n: int, cond: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=DT))
    return q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(cond)), n, dtype=DT)) @ q.T


def record(fn, action: str = "default", counts: dict | None = None):
    """Run ``fn`` under a fresh ``action`` filter; return the ConvergenceWarnings it showed
    (and put the suppressed repeats in ``counts``)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter(action)
        fn()
        if counts is not None:
            counts.update(_failure.suppressed_counts())
    return [w for w in caught if issubclass(w.category, ConvergenceWarning)]


# =========================================================================== Krylov: max_iter
@pytest.mark.parametrize("name", list(KRYLOV))
def test_unconverged_krylov_warns_raises_or_ignores(name):
    solve = KRYLOV[name]
    a, b = spd(30, 1e4), torch.ones(30, dtype=DT)
    with pytest.warns(
        ConvergenceWarning,
        match=rf"^{name}: stopped at maxiter=4 with residual "
        r"\d\.\d+e[+-]\d+ above the tolerance.*"
        r"\[max_iter\]\. Raise maxiter",
    ):
        x = solve(lambda v: a @ v, b, maxiter=4)
    assert bool(torch.isfinite(x).all())
    with pytest.raises(ConvergenceError, match=rf"^{name}: stopped at maxiter=4") as err:
        solve(lambda v: a @ v, b, maxiter=4, on_failure="raise")
    assert err.value.reason == "max_iter" and err.value.solve == name
    assert not record(lambda: solve(lambda v: a @ v, b, maxiter=4, on_failure="ignore"))
    x2, info = solve(lambda v: a @ v, b, maxiter=4, on_failure="ignore", return_info=True)
    torch.testing.assert_close(x2, x, rtol=0, atol=0)  # the policy does not change the result
    assert int(info.reason) == 1 and not bool(info.converged)
    # the reported residual is the true one (up to the recursive residual's drift)
    res = torch.linalg.norm(
        (a.T @ a if name == "solve_normal_cg" else a) @ x2
        - (a.T @ b if name == "solve_normal_cg" else b)
    )
    torch.testing.assert_close(info.residual_norm, res, rtol=1e-6, atol=1e-10)


@pytest.mark.parametrize("name", list(KRYLOV))
def test_converged_krylov_is_quiet_and_exact(name):
    a, b = spd(12, 10.0), torch.ones(12, dtype=DT)
    shown = record(lambda: KRYLOV[name](lambda v: a @ v, b, rtol=1e-12), "always")
    assert not shown
    x = KRYLOV[name](lambda v: a @ v, b, rtol=1e-12, return_info=True)[1]
    assert int(x.reason) == 0


def test_default_krylov_cap_is_fixed():
    n = 5000
    d = torch.logspace(0, 8, n, dtype=DT)
    with pytest.warns(ConvergenceWarning, match=f"maxiter={ls.MAXITER_CAP} "):
        _, info = ls.solve_cg(
            lambda v: d * v, torch.ones(n, dtype=DT), rtol=1e-14, return_info=True
        )
    assert int(info.num_iter) == ls.MAXITER_CAP == 1000  # not 10·n = 50 000


# =========================================================================== breakdown / NaN
def reference_cg(a, b, maxiter):
    """Textbook CG that stops before a step with pᵀAp <= 0; returns that last iterate."""
    x, r = torch.zeros_like(b), b.clone()
    p, rs = r.clone(), r @ r
    for _ in range(maxiter):
        ap = a @ p
        pap = p @ ap
        if pap <= 0:
            return x
        alpha = rs / pap
        x, r = x + alpha * p, r - alpha * ap
        rs_new = r @ r
        p, rs = r + rs_new / rs * p, rs_new
    return x


def indefinite(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A symmetric indefinite matrix on which CG meets pᵀAp <= 0 within 30 steps."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=DT))
    a = q @ torch.diag(torch.tensor([5.0, 4, 3, 2, 1, -1, -2, -3], dtype=DT)) @ q.T
    return a, torch.randn(8, generator=g, dtype=DT)


def test_cg_breakdown_returns_last_iterate_before_it():
    a, b = indefinite()
    ref = reference_cg(a, b, 30)
    with pytest.warns(
        ConvergenceWarning,
        match=r"^solve_cg: pᵀAp ≤ 0: the operator is not "
        r"symmetric positive definite.*\[breakdown\]"
        r"\. The last iterate .*solve_gmres",
    ):
        x, info = ls.solve_cg(lambda v: a @ v, b, maxiter=30, return_info=True)
    assert int(info.reason) == 2
    torch.testing.assert_close(x, ref, rtol=1e-12, atol=1e-12)


def test_cg_breakdown_batched_freezes_only_that_system():
    # diag(1, −1) with b = (1, 1): pᵀAp = 0 at the first step, an exact breakdown; a system
    # that is indefinite but never meets pᵀAp <= 0 converges and is not reported
    bad = torch.diag(torch.tensor([1.0, -1.0], dtype=DT))
    good = spd(2, 10.0, seed=3)
    mats = torch.stack([good, bad])
    rhs = torch.ones(2, 2, dtype=DT)
    with pytest.warns(ConvergenceWarning, match=r"\[breakdown\]") as rec:
        x, info = ls.solve_cg(
            lambda v: torch.einsum("bij,bj->bi", mats, v),
            rhs,
            batched=True,
            rtol=1e-12,
            maxiter=30,
            return_info=True,
        )
    assert "in 1 of 2 systems" in str(rec[0].message)
    assert info.reason.tolist() == [0, 2]
    torch.testing.assert_close(x[0], torch.linalg.solve(good, rhs[0]), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(x[1], reference_cg(bad, rhs[1], 30), rtol=0, atol=0)  # x₀ = 0


class NanAfter:
    """``A v`` for ``calls`` calls, then NaN (a matvec that blows up mid-solve)."""

    def __init__(self, a: torch.Tensor, calls: int) -> None:
        self.a, self.calls, self.seen = a, calls, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.seen += 1
        out = v @ self.a.T
        return out if self.seen <= self.calls else out * float("nan")


@pytest.mark.parametrize("name", ["solve_cg", "solve_bicgstab", "solve_gmres"])
@pytest.mark.parametrize("batched", [False, True])
def test_nan_operator_returns_last_finite_iterate(name, batched):
    a = spd(10, 50.0)
    b = torch.ones(2, 10, dtype=DT) if batched else torch.ones(10, dtype=DT)
    with pytest.warns(
        ConvergenceWarning,
        match=rf"^{name}: met NaN or Inf.*\[non_finite\]\. "
        "The last finite iterate is returned",
    ):
        x, info = KRYLOV[name](NanAfter(a, 3), b, batched=batched, maxiter=50, return_info=True)
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(info.residual_norm).all())
    assert set(info.reason.reshape(-1).tolist()) == {3}
    # the iterate returned is one the solver reached with finite matvecs: its residual is
    # below the starting one (‖b‖). (Batched, a failed CG is re-run with per-step guards:
    # this stateful matvec then fails from its first call, and x is the start, x = 0.)
    res = torch.linalg.vector_norm(b - x @ a.T, dim=-1)
    start = torch.linalg.vector_norm(b, dim=-1)
    if batched and name == "solve_cg":
        assert bool((res <= start).all())
    else:
        assert bool((res < start).all())


def test_nan_in_b_names_b_and_upstream():
    a = spd(4, 2.0)
    with pytest.raises(ValueError, match=r"^solve_cg: b contains NaN or Inf.*upstream"):
        ls.solve_cg(lambda v: a @ v, torch.tensor([1.0, float("nan"), 0, 0], dtype=DT))
    with pytest.raises(ValueError, match=r"^solve_gmres: init contains NaN"):
        ls.solve_gmres(
            lambda v: a @ v, torch.ones(4, dtype=DT), init=torch.full((4,), float("inf"), dtype=DT)
        )


# =========================================================================== dense
@pytest.mark.parametrize("name", ["solve_inv", "solve_lu"])
def test_dense_singular_raises(name):
    a = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=DT)
    with pytest.raises(ValueError, match=rf"^{name}: the operator is singular.*ridge="):
        DENSE[name](lambda v: a @ v, torch.ones(2, dtype=DT))


def test_dense_cholesky_not_spd_and_nan_operator():
    a = torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=DT)
    with pytest.raises(ValueError, match="^solve_cholesky: the operator is not"):
        ls.solve_cholesky(lambda v: a @ v, torch.ones(2, dtype=DT))
    with pytest.raises(ValueError, match="^solve_lu: matvec returned NaN or Inf"):
        ls.solve_lu(lambda v: v * float("nan"), torch.ones(2, dtype=DT))


def test_dense_size_guard_suggests_krylov():
    b = torch.ones(ls.DENSE_MAX_UNKNOWNS + 1)
    with pytest.raises(ValueError, match=r"^solve_lu: the operator has 8193 unknowns.*solve_cg"):
        ls.solve_lu(lambda v: v, b)
    x = ls.solve_lu(lambda v: 2 * v, torch.ones(20, dtype=DT), max_unknowns=20)
    torch.testing.assert_close(x, torch.full((20,), 0.5, dtype=DT))


# =========================================================================== bad options
BAD_OPTIONS = [
    ({"maxiter": True}, ValueError, "maxiter must be a positive int"),
    ({"maxiter": 0}, ValueError, "maxiter must be a positive int"),
    ({"maxiter": 2.5}, ValueError, "maxiter must be a positive int"),
    ({"rtol": float("nan")}, ValueError, "rtol must be a finite number"),
    ({"rtol": float("inf")}, ValueError, "rtol must be a finite number"),
    ({"atol": -1.0}, ValueError, "atol must be a finite number"),
    ({"on_failure": "loud"}, ValueError, "on_failure must be one of 'warn', 'raise', 'ignore'"),
    ({"tol": 1e-3}, TypeError, "unknown option 'tol' \\(did you mean 'rtol'\\?\\)"),
    ({"max_iter": 3}, TypeError, "did you mean 'maxiter'"),
]


@pytest.mark.parametrize("kwargs,cls,words", BAD_OPTIONS)
@pytest.mark.parametrize("name", ["solve_cg", "solve_bicgstab", "solve_gmres", "solve_lu"])
def test_bad_options_raise_with_the_fix(name, kwargs, cls, words):
    solve = getattr(ls, name)
    with pytest.raises(cls, match=rf"^{name}: .*{words}"):
        solve(lambda v: v, torch.ones(3, dtype=DT), **kwargs)


@pytest.mark.parametrize("value", [0, -1, True])
def test_check_every_must_be_positive(value):
    with pytest.raises(ValueError, match="^solve_cg: check_every must be a positive int"):
        ls.solve_cg(lambda v: v, torch.ones(3), check_every=value)


def test_mixed_dtypes_name_both_and_the_fix():
    a32 = spd(4, 2.0).float()
    with pytest.raises(
        TypeError,
        match=r"^solve_cg: matvec failed on b of dtype torch.float64 "
        r"with a dtype mismatch.*share a dtype",
    ):
        ls.solve_cg(lambda v: a32 @ v, torch.ones(4, dtype=DT))
    with pytest.raises(
        TypeError,
        match=r"^solve_gmres: matvec returned torch.float32 for b of "
        r"dtype torch.float64.*b.to\(torch.float32\)",
    ):
        ls.solve_gmres(lambda v: v.float(), torch.ones(4, dtype=DT))
    with pytest.raises(TypeError, match=r"^solve_normal_cg: matvec failed on b of dtype"):
        ls.solve_normal_cg(lambda v: a32 @ v, torch.ones(4, dtype=DT))


# =========================================================================== warn once
def _unconverged_call(a, b):
    return ls.solve_cg(lambda v: a @ v, b, maxiter=2)


def test_warns_once_per_cause_and_call_site_at_the_users_line():
    a, b = spd(20, 1e3), torch.ones(20, dtype=DT)
    _failure.reset_suppressed()

    def loop():
        for _ in range(10):
            ls.solve_cg(lambda v: a @ v, b, maxiter=2)  # one call site

    suppressed: dict = {}
    shown = record(loop, counts=suppressed)
    assert len(shown) == 1
    assert shown[0].filename == __file__  # the user's line, not the library's
    line = shown[0].lineno
    assert (
        "ls.solve_cg(lambda v: a @ v, b, maxiter=2)" in open(__file__).read().splitlines()[line - 1]
    )
    assert list(suppressed.values()) == [9]
    assert list(suppressed) == [("solve_cg", "max_iter", __file__, line)]
    # another call site, or another cause, warns again; "always" shows every repeat
    shown = record(lambda: (loop(), _unconverged_call(a, b), _unconverged_call(a, b)))
    assert len(shown) == 2
    assert len(record(loop, "always")) == 10
    with pytest.raises(ConvergenceWarning):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            loop()


def test_training_loop_with_unconverged_prox_warns_once_per_cause():
    from unroll import optim, physics
    from unroll.models import DnCNN

    torch.manual_seed(0)
    model = optim.HQS(
        unfold=True,
        prior=optim.PnP(DnCNN(1, 1, depth=2, nf=4)),
        stepsize=1.0,
        sigma_denoiser=0.05,
        max_iter=2,
        trainable_params=["stepsize"],
    )
    blur = physics.Blur(
        physics.gaussian_blur(1.5), padding="valid", max_iter=2, tol=1e-10, separable_prox=False
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.rand(2, 1, 20, 20)

    def train():
        for _ in range(10):
            loss = torch.nn.functional.mse_loss(model(blur(x), blur), x)
            opt.zero_grad()
            loss.backward()
            opt.step()

    shown = record(train)
    names = sorted(str(w.message).split(":")[0] for w in shown)
    assert names == ["least_squares (backward)", "least_squares (forward)"]
    assert all(w.filename == __file__ for w in shown)


# =========================================================================== fixed points
def test_diverging_fixed_point_stops_before_overflow():
    f = lambda z: 3.0 * z + 1.0  # noqa: E731 - residual grows 3x per step
    with pytest.warns(
        ConvergenceWarning,
        match=r"^fixed_point_iteration: diverged \(residual "
        r".*\[diverged\]\. The map may not be "
        r"contractive",
    ):
        z, info = fixed_point_iteration(f, torch.zeros(3, dtype=DT), maxiter=500)
    assert int(info.reason) == 4 and bool(torch.isfinite(z).all())
    assert float(z.abs().max()) < 1e6  # stopped within DIVERGENCE_FACTOR of the start
    with pytest.raises(ConvergenceError, match="fixed_point_iteration: diverged") as err:
        fixed_point_iteration(f, torch.zeros(3, dtype=DT), maxiter=500, on_failure="raise")
    assert err.value.reason == "diverged"


def test_fixed_point_nan_returns_last_finite_iterate_per_sample():
    def f(z):  # sample 0 contracts to 2, sample 1 produces NaN once it passes 1.5
        out = 0.5 * z + 1.0
        bad = torch.where(z[1:] > 1.5, torch.full_like(z[1:], float("nan")), out[1:])
        return torch.cat([out[:1], bad])

    with pytest.warns(ConvergenceWarning, match=r"met NaN or Inf in 1 of 2 problems"):
        z, info = fixed_point_iteration(
            f, torch.zeros(2, 1, dtype=DT), maxiter=200, tol=1e-10, batched=True, check_every=1
        )
    assert info.reason.tolist() == [0, 3]
    torch.testing.assert_close(z[0], torch.tensor([2.0], dtype=DT), rtol=1e-9, atol=1e-9)
    assert float(z[1]) == 1.75  # z = 0, 1, 1.5, 1.75, then f(1.75) = NaN


def test_anderson_unconverged_and_ignore():
    f = lambda z: torch.cos(z)  # noqa: E731
    with pytest.warns(ConvergenceWarning, match=r"^anderson: stopped at max_iter=2"):
        anderson(f, torch.ones(3, dtype=DT), maxiter=2, tol=1e-12)
    assert not record(
        lambda: anderson(f, torch.ones(3, dtype=DT), maxiter=2, tol=1e-12, on_failure="ignore")
    )
    with pytest.raises(ValueError, match="^anderson: on_failure must be one of"):
        anderson(f, torch.ones(3, dtype=DT), on_failure=False)


@pytest.mark.parametrize("solve", [solve_fixed_point, solve_anderson])
def test_linear_fixed_point_solvers_follow_the_policy(solve):
    a = spd(6, 50.0) / 50.0  # I − A has radius < 1: Richardson converges, slowly
    name = solve.__name__
    with pytest.warns(
        ConvergenceWarning,
        match=rf"^{name}: stopped at max_iter=3 .*"
        r"\[max_iter\]",
    ):
        x = solve(lambda v: a @ v, torch.ones(6, dtype=DT), maxiter=3, rtol=1e-12)
    assert bool(torch.isfinite(x).all())
    with pytest.raises(ConvergenceError, match=rf"^{name}: "):
        solve(lambda v: a @ v, torch.ones(6, dtype=DT), maxiter=3, rtol=1e-12, on_failure="raise")


# =========================================================================== DEQ
def test_nested_deq_with_diverging_backward_warns_and_returns_finite_gradients():
    """The issue's repro: an HQS DEQ (DnCNN prior) over a CG Blur prox whose backward diverges
    used to crash with "solve_cg: b (or init) contains NaN", blaming an input never passed."""
    from unroll import optim, physics
    from unroll.models import DnCNN

    torch.manual_seed(0)
    model = optim.HQS(
        unfold=True,
        prior=optim.PnP(DnCNN(1, 1, depth=3, nf=4)),
        stepsize=1.0,
        sigma_denoiser=0.05,
        max_iter=3,
        DEQ=unroll.DEQConfig(max_iter=3),
    )
    blur = physics.Blur(physics.gaussian_blur(1.0), padding="reflect", max_iter=20)
    x = torch.rand(2, 1, 16, 16)
    y = blur(x)
    shown = record(lambda: model(y, blur).mean().backward())
    names = {str(w.message).split(":")[0] for w in shown}
    assert "deq (backward)" in names and "deq (forward)" in names
    assert not any("solve_cg: b" in str(w.message) for w in shown)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    # under on_failure="raise" the first failing solve raises, by its DEQ name
    strict = optim.HQS(
        unfold=True,
        prior=optim.PnP(DnCNN(1, 1, depth=3, nf=4)),
        stepsize=1.0,
        sigma_denoiser=0.05,
        max_iter=3,
        DEQ=unroll.DEQConfig(max_iter=3, on_failure="raise"),
    )
    with pytest.raises(ConvergenceError, match=r"^deq \(forward\): stopped at max_iter=3"):
        strict(y, blur)


def test_deq_backward_divergence_falls_back_to_a_finite_gradient():
    # f(z) = W z + x with ‖W‖ = 1.5 in its Jacobian: the adjoint iteration v ← Wᵀv + u diverges
    w = 1.5 * torch.eye(3, dtype=DT)
    x = torch.ones(3, dtype=DT, requires_grad=True)
    cfg = unroll.DEQConfig(
        max_iter=5, tol=1e-30, max_iter_backward=200, tol_backward=1e-10, on_failure="ignore"
    )
    z = unroll.deq(lambda z, w, x: w @ z + x, torch.zeros(3, dtype=DT), w, x, config=cfg)
    z.sum().backward()
    assert bool(torch.isfinite(x.grad).all())
    cfg_warn = dataclass_replace(cfg, on_failure="warn")
    x.grad = None
    with pytest.warns(ConvergenceWarning, match=r"^deq \(backward\): diverged.*\[diverged\]"):
        unroll.deq(
            lambda z, w, x: w @ z + x, torch.zeros(3, dtype=DT), w, x, config=cfg_warn
        ).sum().backward()


def dataclass_replace(cfg, **changes):
    import dataclasses

    return dataclasses.replace(cfg, **changes)


def test_deq_config_rejects_bad_policy_and_values():
    with pytest.raises(ValueError, match="^DEQConfig: on_failure must be one of"):
        unroll.DEQConfig(on_failure="never")
    with pytest.raises(ValueError, match="^DEQConfig: tol must be a finite float >= 0"):
        unroll.DEQConfig(tol=float("inf"))
    with pytest.raises(
        ValueError, match="^DEQConfig: beta_anderson_acc_forward must be a finite float > 0"
    ):
        unroll.DEQConfig(beta_anderson_acc_forward=float("nan"))


# =========================================================================== custom_root
def ridge_grad(w, lam, X, y):
    return X.T @ (X @ w - y) + lam * w


def ridge_closed(lam, X, y):
    return torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1], dtype=DT), X.T @ y)


def ridge_data():
    g = torch.Generator().manual_seed(4)
    return torch.randn(30, 6, generator=g, dtype=DT), torch.randn(30, generator=g, dtype=DT)


def test_custom_root_backward_policy_from_the_decorator_or_the_solver():
    X, y = ridge_data()
    lam = torch.tensor(0.1, dtype=DT)
    short = functools.partial(ls.solve_cg, maxiter=1)
    strict = custom_root(ridge_grad, solve=short, on_failure="raise")(
        lambda init, lam, X, y: ridge_closed(lam, X, y)
    )
    with pytest.raises(ConvergenceError, match=r"^custom_root backward: stopped after 1 "):
        torch.func.grad(lambda l: strict(None, l, X, y).sum())(lam)
    from_solver = custom_root(ridge_grad, solve=functools.partial(short, on_failure="raise"))(
        lambda init, lam, X, y: ridge_closed(lam, X, y)
    )
    with pytest.raises(ConvergenceError, match=r"^custom_root backward"):
        torch.func.grad(lambda l: from_solver(None, l, X, y).sum())(lam)
    with pytest.raises(ValueError, match="^custom_root: on_failure must be one of"):
        custom_root(ridge_grad, on_failure="sometimes")


def test_nan_cotangent_is_reported_not_blamed_on_b():
    X, y = ridge_data()
    solver = custom_root(ridge_grad)(lambda init, lam, X, y: ridge_closed(lam, X, y))
    lam = torch.tensor(0.1, dtype=DT, requires_grad=True)
    w = solver(None, lam, X, y)
    with pytest.warns(
        ConvergenceWarning,
        match=r"^custom_root backward: the incoming gradient "
        r"already holds NaN or Inf.*\[non_finite\]",
    ):
        (w * float("nan")).sum().backward()
    assert bool(torch.isnan(lam.grad))  # NaN in, NaN out — said out loud, never a crash


def test_custom_root_user_errors():
    X, y = ridge_data()
    lam = torch.tensor(0.1, dtype=DT, requires_grad=True)
    wrong_sig = custom_root(lambda w, lam: w)(lambda init, lam, X, y: ridge_closed(lam, X, y))
    with pytest.raises(
        TypeError,
        match=r"^custom_root: optimality_fn.*cannot take \(params, "
        r"\*args\) with the solver's 3 argument",
    ):
        wrong_sig(None, lam, X, y)
    bad_shape = custom_root(ridge_grad)(lambda init, lam, X, y: torch.zeros(7, dtype=DT))
    with pytest.raises(
        ValueError,
        match=r"^custom_root: the solver returned params with leaf "
        r"shapes \[\(7,\)\] where init_params has \[\(6,\)\]",
    ):
        bad_shape(torch.zeros(6, dtype=DT), lam, X, y)


def test_root_jvp_missing_tangent_key_and_root_vjp_policy():
    F = lambda x, p: p["a"] * x - p["b"]  # noqa: E731
    p = {"a": torch.tensor(2.0, dtype=DT), "b": torch.tensor(1.0, dtype=DT)}
    with pytest.raises(
        ValueError,
        match=r"^root_jvp: tangents\[0\] does not have the structure "
        r"of args\[0\]",
    ):
        root_jvp(F, torch.tensor(0.5, dtype=DT), (p,), ({"a": torch.tensor(1.0, dtype=DT)},))
    out = root_jvp(
        F, torch.tensor(0.5, dtype=DT), (p,), ({"a": torch.tensor(1.0, dtype=DT), "b": None},)
    )
    torch.testing.assert_close(out, torch.tensor(-0.25, dtype=DT))  # d(b/a)/da = −b/a²
    with pytest.raises(ValueError, match="^root_vjp: on_failure must be one of"):
        root_vjp(
            F, torch.tensor(0.5, dtype=DT), (p,), torch.tensor(1.0, dtype=DT), on_failure="shout"
        )


# =========================================================================== least squares
def test_least_squares_reports_forward_and_backward_by_name():
    from unroll import physics

    blur = physics.Blur(physics.gaussian_blur(2.0).to(DT), padding="valid", max_iter=2, tol=1e-12)
    x = torch.rand(2, 1, 24, 24, dtype=DT)
    y = blur.A(x)
    z = torch.zeros_like(x, requires_grad=True)
    with pytest.warns(
        ConvergenceWarning,
        match=r"^least_squares \(forward\): stopped at "
        r"maxiter=2.*in 2 of 2 systems",
    ):
        h = physics.least_squares(blur, y, z, 5.0)
    with pytest.warns(
        ConvergenceWarning,
        match=r"^least_squares \(backward\): stopped at "
        r"maxiter=2.*implicit_backward_solver=False",
    ):
        h.sum().backward()
    with pytest.raises(ConvergenceError, match=r"^least_squares \(forward\)"):
        physics.least_squares(blur, y, z, 5.0, on_failure="raise")
    with pytest.raises(
        ValueError,
        match=r"^least_squares: gamma must be finite and > 0.*"
        r"A_dagger",
    ):
        physics.least_squares(blur, y, z, float("inf"))
    with pytest.raises(ValueError, match=r"^least_squares: gamma must be finite"):
        physics.least_squares(blur, y, z, torch.tensor([1.0, float("inf")], dtype=DT))


# =========================================================================== no leaks
def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def test_no_cache_keeps_physics_tensors_alive():
    """200 least-squares backward passes, each with a fresh physics object (its own kernel
    tensor, requiring grad): the number of live tensors does not grow."""
    from unroll import physics

    x = torch.rand(2, 1, 10, 10)

    def step(i: int) -> None:
        kernel = physics.gaussian_blur(1.0 + 0.001 * i).requires_grad_(True)
        blur = physics.Blur(kernel, padding="circular", max_iter=30)
        z = torch.zeros_like(x, requires_grad=True)
        physics.least_squares(blur, blur.A(x), z, 1.0).square().sum().backward()
        assert kernel.grad is not None

    for i in range(20):
        step(i)
    before = live_tensors()
    for i in range(200):
        step(20 + i)
    assert live_tensors() - before <= 5


# =========================================================================== threads
class Ridge(ImplicitModule, linear_solve=functools.partial(ls.solve_cg, rtol=1e-13)):
    """Inner: ½‖Xw − y‖² + (λ/2)‖w‖², solved in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.log_lam = nn.Parameter(torch.tensor(0.0, dtype=DT))
        self.register_inner("w", torch.zeros(6, dtype=DT))

    def objective(self, X, y):
        return 0.5 * ((X @ self.w - y) ** 2).sum() + 0.5 * self.log_lam.exp() * (self.w**2).sum()

    def solve(self, X, y):
        self.w = ridge_closed(self.log_lam.exp(), X, y)

    def forward(self, X):
        return X @ self.w


def meta_gradient(module: Ridge, X, y) -> torch.Tensor:
    module.solve(X, y)
    loss = module(X).square().sum()
    return torch.autograd.grad(loss, module.log_lam)[0]


def closed_meta_gradient(X, y, log_lam: float) -> torch.Tensor:
    t = torch.tensor(log_lam, dtype=DT, requires_grad=True)
    w = ridge_closed(t.exp(), X, y)
    return torch.autograd.grad((X @ w).square().sum(), t)[0]


def test_implicit_module_copies_per_thread_give_exact_meta_gradients():
    X, y = ridge_data()
    ref = closed_meta_gradient(X, y, 0.0)
    base = Ridge()
    results: list[torch.Tensor] = []
    lock = threading.Lock()

    def worker():
        mine = copy.deepcopy(base)  # a copy gets its own lock and solution
        for _ in range(20):
            g = meta_gradient(mine, X, y)
            with lock:
                results.append(g)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40
    for g in results:
        torch.testing.assert_close(g, ref, rtol=1e-8, atol=1e-10)


def test_implicit_module_shared_across_live_threads_raises():
    X, y = ridge_data()
    module = Ridge()
    solved, release = threading.Event(), threading.Event()

    def other():
        module.solve(X, y)
        solved.set()
        release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    solved.wait(10)
    try:
        with pytest.raises(
            RuntimeError, match="last solved by another running thread.*copy.deepcopy"
        ):
            module(X)
    finally:
        release.set()
        t.join()
    torch.testing.assert_close(
        meta_gradient(module, X, y), closed_meta_gradient(X, y, 0.0), rtol=1e-8, atol=1e-10
    )  # the thread is gone: usable again
