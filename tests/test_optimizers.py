"""unroll.optimizers: trajectories against torch.optim, meta-gradients against closed forms."""

import pytest
import torch
from helpers import central_fd  # the one finite-difference helper (tests/helpers.py)
from torch.func import grad, hessian, vmap

from unroll import optimizers, tree

DT = torch.float64
STEPS = 15


def _problem(seed=0):
    """A smooth non-quadratic loss over a dict of two coupled tensors."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 4, generator=g, dtype=DT)
    y = torch.randn(12, generator=g, dtype=DT)
    params = {
        "w": torch.randn(4, generator=g, dtype=DT),
        "b": torch.randn((), generator=g, dtype=DT),
    }

    def loss(p):
        r = x @ p["w"] + p["b"] - y
        return torch.log(torch.cosh(r)).mean() + 0.1 * (p["w"] ** 4).sum()

    return loss, params


def _ours(opt, loss, params, steps=STEPS):
    state = opt.init(params)
    traj = []
    for _ in range(steps):
        params, state = opt.update(grad(loss)(params), state, params)
        traj.append(params)
    return traj


def _torch(make_opt, loss, params, steps=STEPS):
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = make_opt(p)
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        loss(p).backward()
        opt.step()
        traj.append({k: v.detach().clone() for k, v in p.items()})
    return traj


def _assert_traj(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- torch.optim


@pytest.mark.parametrize("lr", [0.3, torch.tensor(0.3, dtype=DT)])
def test_sgd_matches_torch(lr):
    loss, p0 = _problem()
    ours = _ours(optimizers.sgd(lr), loss, p0)
    ref = _torch(lambda p: torch.optim.SGD(p.values(), lr=0.3), loss, p0)
    _assert_traj(ours, ref)


@pytest.mark.parametrize("beta,nesterov", [(0.0, False), (0.8, False), (0.8, True)])
def test_momentum_matches_torch(beta, nesterov):
    loss, p0 = _problem(1)
    ours = _ours(optimizers.momentum(0.1, beta=beta, nesterov=nesterov), loss, p0)
    ref = _torch(
        lambda p: torch.optim.SGD(p.values(), lr=0.1, momentum=beta, nesterov=nesterov),
        loss,
        p0,
    )
    _assert_traj(ours, ref)


@pytest.mark.parametrize(
    "lr,b1,b2,eps", [(0.05, 0.9, 0.999, 1e-8), (0.2, 0.5, 0.9, 1e-3), (0.01, 0.0, 0.99, 0.0)]
)
def test_adam_matches_torch(lr, b1, b2, eps):
    loss, p0 = _problem(2)
    ours = _ours(optimizers.adam(lr, b1=b1, b2=b2, eps=eps), loss, p0)
    ref = _torch(lambda p: torch.optim.Adam(p.values(), lr=lr, betas=(b1, b2), eps=eps), loss, p0)
    _assert_traj(ours, ref)


def test_per_leaf_lr_matches_param_groups():
    loss, p0 = _problem(3)
    lrs = {"w": 0.2, "b": torch.tensor(0.05, dtype=DT)}
    ours = _ours(optimizers.momentum(lrs, beta=0.5), loss, p0)
    ref = _torch(
        lambda p: torch.optim.SGD(
            [{"params": [p["w"]], "lr": 0.2}, {"params": [p["b"]], "lr": 0.05}],
            lr=1.0,
            momentum=0.5,
        ),
        loss,
        p0,
    )
    _assert_traj(ours, ref)


@pytest.mark.parametrize(
    "opt", [optimizers.sgd(0.1), optimizers.momentum(0.1, 0.9, True), optimizers.adam(0.1)]
)
def test_update_does_not_modify_inputs(opt):
    loss, params = _problem(4)
    state = opt.init(params)
    params, state = opt.update(grad(loss)(params), state, params)  # non-trivial state
    grads = grad(loss)(params)
    inputs = (grads, state, params)
    snapshot = tree.map(torch.clone, inputs)
    versions = [t._version for t in tree.leaves(inputs)]
    new_params, new_state = opt.update(*inputs)
    assert [t._version for t in tree.leaves(inputs)] == versions
    assert tree.allclose(inputs, snapshot, rtol=0, atol=0)
    assert not tree.allclose(new_params, params, rtol=0, atol=0)
    assert tree.structure(new_state) == tree.structure(state)


# --------------------------------------------------------------------------- meta-gradients


def _quadratic_task(seed=0, n=5):
    """Inner loss ½(w−a)ᵀA(w−a), outer loss ½‖Bw−c‖²."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=DT)
    A = q @ q.T / n + 0.5 * torch.eye(n, dtype=DT)
    a = torch.randn(n, generator=g, dtype=DT)
    B = torch.randn(3, n, generator=g, dtype=DT)
    c = torch.randn(3, generator=g, dtype=DT)
    theta = torch.randn(n, generator=g, dtype=DT)
    return A, a, B, c, theta


def _maml_closed_form(A, a, B, c, theta, lr, K):
    """w_K = a + M^K (θ − a), M = I − lr·A: gradient w.r.t. θ and lr, and the θ-Hessian."""
    n = A.shape[0]
    M = torch.eye(n, dtype=DT) - lr * A
    MK = torch.linalg.matrix_power(M, K)
    wK = a + MK @ (theta - a)
    r = B @ wK - c
    g_theta = MK.T @ (B.T @ r)
    dMK_dlr = -K * A @ torch.linalg.matrix_power(M, K - 1)
    g_lr = r @ (B @ (dMK_dlr @ (theta - a)))
    H = MK.T @ B.T @ B @ MK
    return g_theta, g_lr, H


def _maml_loss(opt_factory, K):
    def meta_loss(theta, lr, A, a, B, c):
        inner = lambda w: 0.5 * (w - a) @ (A @ (w - a))  # noqa: E731
        opt = opt_factory(lr)
        w, state = theta, opt.init(theta)
        for _ in range(K):
            w, state = opt.update(grad(inner)(w), state, w)
        return 0.5 * ((B @ w - c) ** 2).sum()

    return meta_loss


def test_maml_sgd_meta_gradient_closed_form_func():
    A, a, B, c, theta = _quadratic_task()
    lr, K = torch.tensor(0.3, dtype=DT), 6
    g_theta, g_lr, H = _maml_closed_form(A, a, B, c, theta, lr, K)
    meta_loss = _maml_loss(optimizers.sgd, K)
    got_theta, got_lr = grad(meta_loss, argnums=(0, 1))(theta, lr, A, a, B, c)
    torch.testing.assert_close(got_theta, g_theta, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_lr, g_lr, rtol=1e-10, atol=1e-12)
    # second order: forward-over-reverse Hessian of the meta-loss w.r.t. θ
    got_H = hessian(meta_loss)(theta, lr, A, a, B, c)
    torch.testing.assert_close(got_H, H, rtol=1e-10, atol=1e-12)


def test_maml_sgd_meta_gradient_closed_form_backward():
    A, a, B, c, theta0 = _quadratic_task(1)
    K = 5
    theta = theta0.clone().requires_grad_(True)
    lr = torch.tensor(0.25, dtype=DT, requires_grad=True)
    opt = optimizers.sgd(lr)
    w, state = theta, opt.init(theta)
    for _ in range(K):
        inner = 0.5 * (w - a) @ (A @ (w - a))
        (g,) = torch.autograd.grad(inner, w, create_graph=True)
        w, state = opt.update(g, state, w)
    (0.5 * ((B @ w - c) ** 2).sum()).backward()
    g_theta, g_lr, _ = _maml_closed_form(A, a, B, c, theta0, lr.detach(), K)
    torch.testing.assert_close(theta.grad, g_theta, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lr.grad, g_lr, rtol=1e-10, atol=1e-12)


def _logistic_meta_loss(opt_factory, K):
    """Inner: ℓ2-regularised logistic regression from θ; outer: validation logistic loss."""

    def inner(w, x, y):
        return torch.nn.functional.softplus(-y * (x @ w)).mean() + 0.05 * (w**2).sum()

    def meta_loss(theta, lr, x, y, xv, yv):
        opt = opt_factory(lr)
        w, state = theta, opt.init(theta)
        for _ in range(K):
            w, state = opt.update(grad(inner)(w, x, y), state, w)
        return torch.nn.functional.softplus(-yv * (xv @ w)).mean()

    return meta_loss


def _logistic_data(seed):
    g = torch.Generator().manual_seed(seed)
    x, xv = torch.randn(10, 4, generator=g, dtype=DT), torch.randn(8, 4, generator=g, dtype=DT)
    y = torch.randn(10, generator=g, dtype=DT).sign()
    yv = torch.randn(8, generator=g, dtype=DT).sign()
    theta = torch.randn(4, generator=g, dtype=DT)
    return theta, x, y, xv, yv


@pytest.mark.parametrize(
    "factory",
    [
        lambda lr: optimizers.momentum(lr, beta=0.7),
        lambda lr: optimizers.momentum(lr, beta=0.7, nesterov=True),
        lambda lr: optimizers.adam(lr, b1=0.8, b2=0.95),
    ],
    ids=["momentum", "nesterov", "adam"],
)
def test_maml_meta_gradient_finite_differences(factory):
    theta, x, y, xv, yv = _logistic_data(5)
    lr = torch.tensor(0.2, dtype=DT)
    meta_loss = _logistic_meta_loss(factory, K=6)
    got_theta, got_lr = grad(meta_loss, argnums=(0, 1))(theta, lr, x, y, xv, yv)
    fd_theta = central_fd(lambda t: meta_loss(t, lr, x, y, xv, yv), theta, eps=1e-6)
    fd_lr = central_fd(lambda s: meta_loss(theta, s, x, y, xv, yv), lr, eps=1e-6)
    torch.testing.assert_close(got_theta, fd_theta, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got_lr, fd_lr, rtol=1e-6, atol=1e-9)


def test_vmap_over_tasks_equals_loop():
    """Per-task MAML meta-gradients by vmap(grad) through Adam equal a Python loop."""
    thetas, xs, ys, xvs, yvs = zip(*[_logistic_data(s) for s in range(4)])
    theta = thetas[0]
    xs, ys, xvs, yvs = map(torch.stack, (xs, ys, xvs, yvs))
    lr = torch.tensor(0.1, dtype=DT)
    meta_grad = grad(_logistic_meta_loss(lambda s: optimizers.adam(s), K=4))
    batched = vmap(meta_grad, in_dims=(None, None, 0, 0, 0, 0))(theta, lr, xs, ys, xvs, yvs)
    loop = torch.stack([meta_grad(theta, lr, *t) for t in zip(xs, ys, xvs, yvs)])
    torch.testing.assert_close(batched, loop, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: optimizers.sgd(0.0), ValueError, "unroll.optimizers.sgd: `lr`"),
        (lambda: optimizers.sgd(-1.0), ValueError, "positive"),
        (lambda: optimizers.sgd(float("nan")), ValueError, "positive"),
        (lambda: optimizers.sgd("0.1"), TypeError, "unroll.optimizers.sgd"),
        (lambda: optimizers.sgd(True), TypeError, "bool"),
        (lambda: optimizers.momentum(0.1, beta=1.0), ValueError, "`beta` must lie in"),
        (lambda: optimizers.momentum(0.1, nesterov=1), TypeError, "`nesterov`"),
        (lambda: optimizers.adam(0.1, b2=1.5), ValueError, "unroll.optimizers.adam: `b2`"),
        (lambda: optimizers.adam(0.1, eps=-1e-8), ValueError, "`eps`"),
        (lambda: optimizers.adam({"w": -0.1}), ValueError, "`lr`"),
    ],
)
def test_invalid_hyperparameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_invalid_update_arguments():
    p = {"w": torch.zeros(3), "b": torch.zeros(())}
    opt = optimizers.adam(0.1)
    state = opt.init(p)
    with pytest.raises(ValueError, match="adam: `grads` must have the same pytree structure"):
        opt.update({"w": torch.zeros(3)}, state, p)
    with pytest.raises(TypeError, match="adam: `state` must be the AdamState"):
        opt.update(p, optimizers.MomentumState(p), p)
    with pytest.raises(ValueError, match="sgd: `lr` must have the same pytree structure"):
        s = optimizers.sgd({"w": 0.1})
        s.update(p, s.init(p), p)
    with pytest.raises(TypeError, match="complex parameters"):
        z = torch.zeros(2, dtype=torch.complex64)
        opt.update(z, opt.init(z), z)
    with pytest.raises(ValueError, match="no tensor leaves"):
        opt.init({})


# --------------------------------------------------------------------------- rmsprop


@pytest.mark.parametrize(
    "alpha,eps,mom,centered",
    [
        (0.99, 1e-8, 0.0, False),
        (0.9, 1e-3, 0.7, False),
        (0.8, 1e-6, 0.0, True),
        (0.9, 0.0, 0.5, True),
    ],
)
def test_rmsprop_matches_torch(alpha, eps, mom, centered):
    loss, p0 = _problem(6)
    ours = _ours(optimizers.rmsprop(0.02, alpha, eps, momentum=mom, centered=centered), loss, p0)
    ref = _torch(
        lambda p: torch.optim.RMSprop(
            p.values(), lr=0.02, alpha=alpha, eps=eps, momentum=mom, centered=centered
        ),
        loss,
        p0,
    )
    _assert_traj(ours, ref)


def test_rmsprop_nesterov_and_initial_scale_closed_form():
    """One step by hand: s1 = α s0 + (1-α) g², u = g/(√s1+ε), b1 = u, d = u + μ b1."""
    g = torch.tensor([0.5, -2.0], dtype=DT)
    p = torch.tensor([1.0, 3.0], dtype=DT)
    opt = optimizers.rmsprop(
        0.1, alpha=0.9, eps=1e-3, momentum=0.6, nesterov=True, initial_scale=1.0
    )
    new_p, state = opt.update(g, opt.init(p), p)
    s1 = 0.9 * 1.0 + 0.1 * g**2
    u = g / (s1.sqrt() + 1e-3)
    torch.testing.assert_close(new_p, p - 0.1 * (u + 0.6 * u), rtol=1e-14, atol=0)
    torch.testing.assert_close(state.nu, s1, rtol=1e-14, atol=0)
    assert state.mu is None


def test_rmsprop_meta_gradient_finite_differences():
    theta, x, y, xv, yv = _logistic_data(7)
    lr = torch.tensor(0.05, dtype=DT)
    factory = lambda s: optimizers.rmsprop(s, alpha=0.9, momentum=0.5, centered=True)  # noqa: E731
    meta_loss = _logistic_meta_loss(factory, K=5)
    got_theta, got_lr = grad(meta_loss, argnums=(0, 1))(theta, lr, x, y, xv, yv)
    fd_theta = central_fd(lambda t: meta_loss(t, lr, x, y, xv, yv), theta, eps=1e-6)
    fd_lr = central_fd(lambda s: meta_loss(theta, s, x, y, xv, yv), lr, eps=1e-6)
    torch.testing.assert_close(got_theta, fd_theta, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(got_lr, fd_lr, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: optimizers.rmsprop(-0.1), ValueError, "unroll.optimizers.rmsprop: `lr`"),
        (lambda: optimizers.rmsprop(0.1, alpha=1.0), ValueError, "`alpha` must lie in"),
        (lambda: optimizers.rmsprop(0.1, eps=-1.0), ValueError, "`eps`"),
        (lambda: optimizers.rmsprop(0.1, momentum=1.2), ValueError, "`momentum`"),
        (lambda: optimizers.rmsprop(0.1, centered=1), TypeError, "`centered` must be a bool"),
        (lambda: optimizers.rmsprop(0.1, nesterov=True), ValueError, "needs `momentum`"),
        (lambda: optimizers.rmsprop(0.1, initial_scale=-1.0), ValueError, "`initial_scale`"),
    ],
)
def test_rmsprop_invalid_hyperparameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_rmsprop_update_does_not_modify_inputs():
    loss, params = _problem(8)
    opt = optimizers.rmsprop(0.1, momentum=0.9, centered=True)
    state = opt.init(params)
    params, state = opt.update(grad(loss)(params), state, params)
    inputs = (grad(loss)(params), state, params)
    snapshot = tree.map(torch.clone, inputs)
    opt.update(*inputs)
    assert tree.allclose(inputs, snapshot, rtol=0, atol=0)
