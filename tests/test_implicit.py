"""custom_root / custom_fixed_point / root_vjp / root_jvp against closed forms, float64."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from helpers import central_fd, linear_solvers  # shared tables (tests/helpers.py)

import unroll
from unroll import linear_solve as ls
from unroll import tree
from unroll.implicit import custom_fixed_point, custom_root, root_jvp, root_vjp

DT = torch.float64
TIGHT = {"rtol": 1e-12, "maxiter": 500}
# the Krylov and dense solvers: the ridge Hessian's I − A is no contraction, so the fixed-point
# solvers are left to tests/test_contract.py
SOLVERS = linear_solvers(fixed_point=False)


def data(n=30, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.randn(n, generator=g, dtype=DT)
    return X, y


# --------------------------------------------------------------------------- ridge
def ridge_grad(w, lam, X, y):
    """∇_w of ½‖Xw − y‖² + ½ λ‖w‖²."""
    return X.T @ (X @ w - y) + lam * w


def ridge_closed(lam, X, y):
    return torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype), X.T @ y)


def make_ridge(solve=ls.solve_cg, argnums=(1, 2, 3)):
    @custom_root(ridge_grad, argnums=argnums, solve=functools.partial(solve, **TIGHT))
    def ridge(init, lam, X, y):
        w = init
        # plain gradient descent: an iterative solver the implicit rule knows nothing about
        step = 1.0 / (torch.linalg.matrix_norm(X, ord=2) ** 2 + lam)
        for _ in range(3000):
            w = w - step * ridge_grad(w, lam, X, y)
        return w

    return ridge


def outer_loss(w):
    return (w * torch.arange(1, w.shape[-1] + 1, dtype=w.dtype)).sum() + 0.5 * w.square().sum()


@pytest.mark.parametrize("solve", SOLVERS, ids=lambda f: f.__name__)
def test_ridge_hypergradient_every_solver(solve):
    X, y = data()
    lam = torch.tensor(0.7, dtype=DT)
    ridge = make_ridge(solve)
    f = lambda l, X, y: outer_loss(ridge(torch.zeros(5, dtype=DT), l, X, y))  # noqa: E731
    ref = lambda l, X, y: outer_loss(ridge_closed(l, X, y))  # noqa: E731
    ours = torch.func.grad(f, argnums=(0, 1, 2))(lam, X, y)
    truth = torch.func.grad(ref, argnums=(0, 1, 2))(lam, X, y)
    for a, b in zip(ours, truth):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_backward_equals_func_grad_and_vjp_and_jacrev():
    X, y = data(seed=1)
    lam = torch.tensor(0.3, dtype=DT, requires_grad=True)
    Xr = X.clone().requires_grad_(True)
    ridge = make_ridge()
    w = ridge(torch.zeros(5, dtype=DT), lam, Xr, y)
    outer_loss(w).backward()
    truth = torch.func.grad(lambda l, X: outer_loss(ridge_closed(l, X, y)), argnums=(0, 1))(
        lam.detach(), X
    )
    torch.testing.assert_close(lam.grad, truth[0], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(Xr.grad, truth[1], rtol=1e-8, atol=1e-10)
    # vjp and jacrev of the solution map w(λ)
    sol = lambda l: ridge(torch.zeros(5, dtype=DT), l, X, y)  # noqa: E731
    jac_ref = torch.func.jacrev(lambda l: ridge_closed(l, X, y))(lam.detach())
    torch.testing.assert_close(torch.func.jacrev(sol)(lam.detach()), jac_ref, rtol=1e-8, atol=1e-10)
    w0, vjp_fn = torch.func.vjp(sol, lam.detach())
    ct = torch.arange(5, dtype=DT)
    torch.testing.assert_close(vjp_fn(ct)[0], ct @ jac_ref, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(w0, ridge_closed(lam.detach(), X, y), rtol=1e-8, atol=1e-10)


def test_jacrev_wrt_matrix_argument():
    X, y = data(n=8, d=3, seed=2)
    lam = torch.tensor(0.5, dtype=DT)
    ridge = make_ridge()
    ours = torch.func.jacrev(lambda X: ridge(torch.zeros(3, dtype=DT), lam, X, y))(X)
    ref = torch.func.jacrev(lambda X: ridge_closed(lam, X, y))(X)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-10)


def test_vmap_over_problems_equals_loop():
    Xs = torch.stack([data(seed=s)[0] for s in range(8)])
    ys = torch.stack([data(seed=s)[1] for s in range(8)])
    lams = torch.linspace(0.1, 2.0, 8, dtype=DT)
    ridge = make_ridge(argnums=1)

    def hyper(l, X, y):
        return torch.func.grad(lambda l: outer_loss(ridge(torch.zeros(5, dtype=DT), l, X, y)))(l)

    vm = torch.func.vmap(hyper)(lams, Xs, ys)
    loop = torch.stack([hyper(lams[i], Xs[i], ys[i]) for i in range(8)])
    ref = torch.stack(
        [
            torch.func.grad(lambda l, i=i: outer_loss(ridge_closed(l, Xs[i], ys[i])))(lams[i])
            for i in range(8)
        ]
    )
    torch.testing.assert_close(vm, loop, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(vm, ref, rtol=1e-8, atol=1e-10)
    # vmap of the solver itself (solution values)
    sols = torch.func.vmap(lambda l, X, y: ridge(torch.zeros(5, dtype=DT), l, X, y))(lams, Xs, ys)
    torch.testing.assert_close(
        sols,
        torch.stack([ridge_closed(lams[i], Xs[i], ys[i]) for i in range(8)]),
        rtol=1e-9,
        atol=1e-10,
    )


def test_per_example_hypergradients_vmap_grad():
    # Validation loss per example; vmap(grad) gives one hypergradient per validation example.
    X, y = data(seed=3)
    Xv, yv = data(n=6, seed=4)
    ridge = make_ridge(argnums=1)
    lam = torch.tensor(0.9, dtype=DT)

    def per_example(l, xv, yv_):
        w = ridge(torch.zeros(5, dtype=DT), l, X, y)
        return 0.5 * (xv @ w - yv_) ** 2

    ours = torch.func.vmap(torch.func.grad(per_example), in_dims=(None, 0, 0))(lam, Xv, yv)
    ref = torch.func.vmap(
        torch.func.grad(lambda l, xv, yv_: 0.5 * (xv @ ridge_closed(l, X, y) - yv_) ** 2),
        in_dims=(None, 0, 0),
    )(lam, Xv, yv)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-10)


def test_second_derivative_matches_closed_form():
    # d²L/dλ² (TorchOpt reports 7.51 where the truth is 10.95 on its own example).
    X, y = data(seed=5)
    ridge = make_ridge(argnums=1)
    lam = torch.tensor(0.4, dtype=DT)
    f = lambda l: outer_loss(ridge(torch.zeros(5, dtype=DT), l, X, y))  # noqa: E731
    ref = lambda l: outer_loss(ridge_closed(l, X, y))  # noqa: E731
    torch.testing.assert_close(
        torch.func.grad(torch.func.grad(f))(lam),
        torch.func.grad(torch.func.grad(ref))(lam),
        rtol=1e-7,
        atol=1e-9,
    )
    # and with .backward(create_graph=True)
    lr = lam.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(f(lr), lr, create_graph=True)
    (h,) = torch.autograd.grad(g, lr)
    torch.testing.assert_close(h, torch.func.grad(torch.func.grad(ref))(lam), rtol=1e-7, atol=1e-9)
    # mixed second derivatives: Jacobian of the gradient w.r.t. the data matrix
    make = make_ridge(argnums=2)
    hx = torch.func.jacrev(
        torch.func.grad(lambda X: outer_loss(make(torch.zeros(5, dtype=DT), lam, X, y)))
    )(X)
    hr = torch.func.jacrev(torch.func.grad(lambda X: outer_loss(ridge_closed(lam, X, y))))(X)
    torch.testing.assert_close(hx, hr, rtol=1e-6, atol=1e-8)


def test_forward_mode_jvp_and_jacfwd():
    X, y = data(seed=6)
    ridge = make_ridge(argnums=(1, 3))
    lam = torch.tensor(1.3, dtype=DT)
    sol = lambda l, y: ridge(torch.zeros(5, dtype=DT), l, X, y)  # noqa: E731
    tl, ty = torch.tensor(0.7, dtype=DT), torch.randn(30, dtype=DT)
    _, ours = torch.func.jvp(sol, (lam, y), (tl, ty))
    jl, jy = torch.func.jacrev(lambda l, y: ridge_closed(l, X, y), argnums=(0, 1))(lam, y)
    torch.testing.assert_close(ours, jl * tl + jy @ ty, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(torch.func.jacfwd(sol, argnums=1)(lam, y), jy, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- other problems
def test_logistic_regression_against_finite_differences():
    g = torch.Generator().manual_seed(7)
    X = torch.randn(40, 4, generator=g, dtype=DT)
    t = (torch.rand(40, generator=g, dtype=DT) > 0.5).to(DT)

    def objective(w, lam):
        return (
            torch.nn.functional.binary_cross_entropy_with_logits(X @ w, t, reduction="sum")
            + 0.5 * lam * w.square().sum()
        )

    def optimality(w, lam):
        return torch.func.grad(objective)(w, lam)

    @custom_root(optimality, solve=functools.partial(ls.solve_cg, **TIGHT))
    def fit(w, lam):
        for _ in range(50):  # Newton
            h = torch.func.hessian(objective)(w, lam)
            w = w - torch.linalg.solve(h, optimality(w, lam))
        return w

    def val(lam):
        return fit(torch.zeros(4, dtype=DT), lam).sin().sum()

    lam = torch.tensor(2.0, dtype=DT)
    fd = central_fd(val, lam, eps=1e-5)
    torch.testing.assert_close(torch.func.grad(val)(lam), fd, rtol=1e-7, atol=1e-9)


def test_dict_of_tensors_coupled_params():
    # params {"w", "b"} coupled through the loss; args a dict of hyperparameters.
    X, y = data(n=25, d=3, seed=8)

    def objective(p, hp):
        r = X @ p["w"] + p["b"] - y
        return (
            0.5 * r.square().sum()
            + 0.5 * hp["lam"] * p["w"].square().sum()
            + 0.5 * hp["mu"] * p["b"] ** 2
        )

    def closed(hp):
        A = torch.cat([X, torch.ones(25, 1, dtype=DT)], 1)
        reg = torch.diag(torch.cat([hp["lam"].expand(3), hp["mu"].reshape(1)]))
        z = torch.linalg.solve(A.T @ A + reg, A.T @ y)
        return {"w": z[:3], "b": z[3]}

    @custom_root(torch.func.grad(objective), solve=functools.partial(ls.solve_cg, **TIGHT))
    def fit(init, hp):
        return closed(hp)

    def outer(p):
        return p["w"].sum() ** 2 + 3 * p["b"]

    hp = {"lam": torch.tensor(0.5, dtype=DT), "mu": torch.tensor(2.0, dtype=DT)}
    init = {"w": torch.zeros(3, dtype=DT), "b": torch.tensor(0.0, dtype=DT)}
    ours = torch.func.grad(lambda hp: outer(fit(init, hp)))(hp)
    ref = torch.func.grad(lambda hp: outer(closed(hp)))(hp)
    assert tree.allclose(ours, ref, rtol=1e-8, atol=1e-10)


def test_custom_fixed_point_matches_closed_form():
    # x = T(x) = 0.5 tanh(W x) + a ... linear version for a closed form: x = M x + a.
    g = torch.Generator().manual_seed(9)
    M = torch.randn(6, 6, generator=g, dtype=DT)
    M = 0.5 * M / torch.linalg.matrix_norm(M, ord=2)

    def T(x, M, a):
        return M @ x + a

    @custom_fixed_point(T, argnums=(1, 2), solve=functools.partial(ls.solve_gmres, **TIGHT))
    def fp(x, M, a):
        for _ in range(200):
            x = T(x, M, a)
        return x

    a = torch.randn(6, generator=g, dtype=DT)
    ours = torch.func.grad(
        lambda M, a: fp(torch.zeros(6, dtype=DT), M, a).square().sum(), argnums=(0, 1)
    )(M, a)
    ref = torch.func.grad(
        lambda M, a: torch.linalg.solve(torch.eye(6, dtype=DT) - M, a).square().sum(),
        argnums=(0, 1),
    )(M, a)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-8, atol=1e-10)


def test_has_aux_and_keyword_arguments():
    X, y = data(seed=10)

    @custom_root(ridge_grad, has_aux=True, solve=functools.partial(ls.solve_cg, **TIGHT))
    def ridge(init, lam, X, y):
        return ridge_closed(lam, X, y), {"iters": torch.tensor(1)}

    lam = torch.tensor(0.2, dtype=DT)
    g = torch.func.grad(lambda l: ridge(None, l, X=X, y=y)[0].sum())(lam)
    torch.testing.assert_close(g, torch.func.grad(lambda l: ridge_closed(l, X, y).sum())(lam))
    _, aux = ridge(None, lam, X, y)
    assert int(aux["iters"]) == 1


def test_root_vjp_and_root_jvp_are_transposes():
    X, y = data(seed=11)
    lam = torch.tensor(0.6, dtype=DT)
    w = ridge_closed(lam, X, y)
    solve = functools.partial(ls.solve_cg, **TIGHT)
    ct = torch.randn(5, dtype=DT)
    ty = torch.randn(30, dtype=DT)
    (_, _, gy) = root_vjp(ridge_grad, w, (lam, X, y), ct, solve)
    tw = root_jvp(ridge_grad, w, (lam, X, y), (None, None, ty), solve)
    torch.testing.assert_close(gy @ ty, ct @ tw, rtol=1e-9, atol=1e-11)


# --------------------------------------------------------------------------- errors, warnings
def test_argnums_errors():
    with pytest.raises(ValueError, match="custom_root: argnums=0"):
        custom_root(ridge_grad, argnums=0)
    with pytest.raises(TypeError, match="custom_root: solve must be"):
        custom_root(ridge_grad, solve="cg")
    ridge = make_ridge(argnums=7)
    X, y = data()
    with pytest.raises(ValueError, match="custom_root: argnums=7 is out of range"):
        ridge(torch.zeros(5, dtype=DT), torch.tensor(1.0, dtype=DT), X, y)


def test_structure_mismatch_raises():
    X, y = data()

    @custom_root(lambda w, lam: {"w": w})
    def bad(init, lam):
        return torch.zeros(5, dtype=DT)

    with pytest.raises(ValueError, match="custom_root: optimality_fn.*structure"):
        bad(None, torch.tensor(1.0, dtype=DT, requires_grad=True))


def test_closed_over_tensor_requiring_grad_is_rejected():
    X, y = data()
    lam = torch.tensor(0.5, dtype=DT, requires_grad=True)

    @custom_root(lambda w, X: ridge_grad(w, lam, X, y))
    def solver(init, X):
        return ridge_closed(lam, X, y)

    with pytest.raises(ValueError, match="custom_root: .*closed-over"):
        solver(None, X)


def test_non_converged_backward_warns():
    X, y = data(seed=12)
    ridge = custom_root(ridge_grad, solve=functools.partial(ls.solve_cg, rtol=1e-14, maxiter=1))(
        lambda init, lam, X, y: ridge_closed(lam, X, y)
    )
    lam = torch.tensor(0.1, dtype=DT)
    with pytest.warns(
        ls.ConvergenceWarning,
        match=r"custom_root backward: stopped after 1 iteration\(s\) with residual",
    ):
        torch.func.grad(lambda l: ridge(None, l, X, y).sum())(lam)


def test_converged_backward_does_not_warn():
    X, y = data(seed=12)
    ridge = make_ridge(argnums=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.func.grad(lambda l: ridge(torch.zeros(5, dtype=DT), l, X, y).sum())(
            torch.tensor(0.1, dtype=DT)
        )


def test_top_level_exports():
    assert unroll.custom_root is custom_root and unroll.root_vjp is root_vjp
    assert unroll.custom_fixed_point is custom_fixed_point and unroll.root_jvp is root_jvp


@pytest.mark.parametrize("solve_name", ["solve_fixed_point", "solve_anderson", "solve_gmres"])
def test_custom_fixed_point_with_fixed_point_backward_solvers(solve_name):
    # The backward operator is (I − ∂T)ᵀ: Richardson/Anderson iterations on it converge for a
    # contractive T, and agree with the closed form x* = (I − M)⁻¹ a.
    solve = getattr(ls, solve_name)
    g = torch.Generator().manual_seed(21)
    M = torch.randn(5, 5, generator=g, dtype=DT)
    M = 0.6 * M / torch.linalg.matrix_norm(M, ord=2)
    a = torch.randn(5, generator=g, dtype=DT)
    T = lambda x, M, a: M @ x + a  # noqa: E731

    @custom_fixed_point(T, argnums=(1, 2), solve=functools.partial(solve, rtol=1e-12, maxiter=400))
    def fp_solve(x, M, a):
        for _ in range(200):
            x = T(x, M, a)
        return x

    loss = lambda x: (x * torch.arange(5, dtype=DT)).sum()  # noqa: E731
    ours = torch.func.grad(
        lambda M, a: loss(fp_solve(torch.zeros(5, dtype=DT), M, a)), argnums=(0, 1)
    )(M, a)
    ref = torch.func.grad(
        lambda M, a: loss(torch.linalg.solve(torch.eye(5, dtype=DT) - M, a)), argnums=(0, 1)
    )(M, a)
    torch.testing.assert_close(ours[0], ref[0], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(ours[1], ref[1], rtol=1e-9, atol=1e-11)


def test_nested_implicit_layers_compose_with_torch_func():
    # Outer fixed point z = ½ inner(z, a) + λ with inner(b, a) = argmin ½ a x² − b x = b / a:
    # z* = λ / (1 − 1/(2a)); the inner rule runs inside the outer backward's linear solve
    # (a DEQ whose step calls a CG prox has this shape).
    def f_in(x, b, a):
        return a * x - b

    @custom_root(f_in, argnums=(1, 2), solve=functools.partial(ls.solve_cg, **TIGHT))
    def inner(x0, b, a):
        return b / a

    def T(z, lam, a):
        return 0.5 * inner(None, z, a) + lam

    @custom_fixed_point(T, argnums=(1, 2), solve=functools.partial(ls.solve_gmres, **TIGHT))
    def outer(z0, lam, a):
        z = z0
        for _ in range(200):
            z = T(z, lam, a)
        return z

    def closed(lam, a):
        return lam / (1 - 0.5 / a)

    lam, a = torch.tensor(0.3, dtype=DT), torch.tensor(2.0, dtype=DT)
    z0 = torch.zeros((), dtype=DT)
    f = lambda lam, a: outer(z0, lam, a)  # noqa: E731
    ref = torch.func.grad(closed, argnums=(0, 1))(lam, a)
    for got in (
        torch.func.grad(f, argnums=(0, 1))(lam, a),
        torch.func.jacrev(f, argnums=(0, 1))(lam, a),
    ):
        torch.testing.assert_close(got[0], ref[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[1], ref[1], rtol=1e-10, atol=1e-12)
    lams = torch.tensor([0.3, 0.5, 0.9], dtype=DT)
    torch.testing.assert_close(
        torch.func.vmap(torch.func.grad(f), in_dims=(0, None))(lams, a),
        torch.func.vmap(torch.func.grad(closed), in_dims=(0, None))(lams, a),
    )
    lr, ar = lam.clone().requires_grad_(True), a.clone().requires_grad_(True)
    f(lr, ar).backward()
    torch.testing.assert_close(lr.grad, ref[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ar.grad, ref[1], rtol=1e-10, atol=1e-12)
