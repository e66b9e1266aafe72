"""TorchOpt code ported by replacing ``torchopt`` with ``unroll`` (float64).

1. The seed snippet of issue 13 (``MetaAdam`` + ``extract_state_dict`` /
   ``recover_state_dict``) runs unchanged but for the name, and a rerun after
   ``recover_state_dict`` reproduces the trajectory bit for bit.
2. TorchOpt's MAML tutorial flow (object-oriented ``MetaAdam`` inner loop, outer
   ``torch.optim.Adam``): the accumulated meta-gradient equals the functional
   ``torch.func`` loop over :mod:`unroll.optimizers` and central finite differences.
3. TorchOpt's iMAML tutorial module (``ImplicitMetaGradientModule`` → ``ImplicitModule``,
   TorchOpt's meta-parameter detection and ``parameters()`` semantics): the meta-gradient
   equals the dense implicit-function-theorem formula λ (H + λI)⁻¹ ∇L_query.

TorchOpt itself is not imported (it is not a test dependency); its code is quoted.
"""

import copy
import functools
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import central_fd
from torch import nn
from torch.func import functional_call, grad

import unroll
from unroll import optimizers
from unroll.linear_solve import ConvergenceWarning

DT = torch.float64


# =========================================================================== 1. the seed snippet
class Net(nn.Module):
    """A scalar-valued network with a BatchNorm (buffers updated in place by forward)."""

    def __init__(self):
        super().__init__()
        # no bias before the BatchNorm: its gradient would be exactly 0, and Adam's
        # sqrt(v) at v = 0 has no derivative (NaN meta-gradients, in TorchOpt as well)
        self.body = nn.Sequential(
            nn.Linear(3, 5, bias=False), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 1)
        )

    def forward(self, x):
        return (self.body(x) ** 2).mean()


def _snippet(net, optim, x, record):
    """The issue's snippet, ``torchopt`` → ``unroll``; returns the saved states."""
    init_net_state = unroll.extract_state_dict(net, by="reference")  # or 'copy', 'deepcopy'
    init_optim_state = unroll.extract_state_dict(optim, by="reference")
    init_net_state = unroll.extract_state_dict(net, by="reference", detach_buffers=True)
    for _ in range(2):
        inner_loss = net(x)
        optim.step(inner_loss)  # differentiable update of net's parameters
        record.append([t.detach().clone() for t in (*net.parameters(), *net.buffers())])
    return init_net_state, init_optim_state


def test_seed_snippet_runs_and_recover_state_dict_reproduces_the_trajectory():
    torch.manual_seed(0)
    net = Net().to(DT)
    x = torch.randn(8, 3, dtype=DT)
    optim = unroll.MetaAdam(net, lr=1.0)
    leaves = list(net.parameters())
    initial = [t.detach().clone() for t in (*net.parameters(), *net.buffers())]
    ref_net = copy.deepcopy(net)

    first: list = []
    net_state, optim_state = _snippet(net, optim, x, first)
    (g_first,) = torch.autograd.grad(net(x), leaves[:1])  # through both steps
    assert not torch.equal(first[-1][0], initial[0])
    unroll.recover_state_dict(net, net_state)
    unroll.recover_state_dict(optim, optim_state)
    assert all(p is q for p, q in zip(net.parameters(), leaves))  # the initial leaves again
    for t, t0 in zip((*net.parameters(), *net.buffers()), initial):
        assert torch.equal(t.detach(), t0)  # parameters and BatchNorm statistics restored
    assert int(optim.state_dict()[0].count) == 0

    second: list = []
    _snippet(net, optim, x, second)
    (g_second,) = torch.autograd.grad(net(x), leaves[:1])
    for a, b in zip(first, second):  # a rerun: the same trajectory, bit for bit
        assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert torch.equal(g_first, g_second)

    # and the trajectory is Adam's: torch.optim.Adam (lr=1) from the same state
    ref = torch.optim.Adam(ref_net.parameters(), lr=1.0)
    for step in range(2):
        ref.zero_grad()
        ref_net(x).backward()
        ref.step()
        for p, q in zip((*ref_net.parameters(), *ref_net.buffers()), first[step]):
            torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-12)


# =========================================================================== 2. MAML
def _mlp(seed):
    torch.manual_seed(seed)
    layers = [nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)]
    return nn.Sequential(*layers).to(DT)


def _sine_tasks(n, seed, k=10):
    g = torch.Generator().manual_seed(seed)
    amp = torch.empty(n, 1, 1, dtype=DT).uniform_(0.5, 2.0, generator=g)
    phase = torch.empty(n, 1, 1, dtype=DT).uniform_(0.0, 3.0, generator=g)
    x = torch.empty(n, 2 * k, 1, dtype=DT).uniform_(-4.0, 4.0, generator=g)
    y = amp * torch.sin(x + phase)
    return x[:, :k], y[:, :k], x[:, k:], y[:, k:]


INNER_STEPS, INNER_LR, ADAM_EPS = 3, 0.05, 1e-3


def _maml_outer_step(net, inner_opt, net_state, optim_state, tasks):
    """TorchOpt's MAML tutorial loop body, with ``torchopt`` → ``unroll``."""
    xs, ys, xq, yq = tasks
    total = 0.0
    for i in range(xs.shape[0]):
        for _ in range(INNER_STEPS):
            inner_opt.step(F.mse_loss(net(xs[i]), ys[i]))
        query_loss = F.mse_loss(net(xq[i]), yq[i])
        query_loss.backward()
        total += query_loss.detach()
        unroll.recover_state_dict(net, net_state)
        unroll.recover_state_dict(inner_opt, optim_state)
    return total / xs.shape[0]


def _functional_maml_loss(params, net, tasks):
    """The same meta-loss written functionally (TorchOpt's functional API → unroll.optimizers)."""
    xs, ys, xq, yq = tasks
    total = 0.0
    for i in range(xs.shape[0]):
        opt = optimizers.adam(INNER_LR, eps=ADAM_EPS)
        p, state = params, opt.init(params)

        def support_loss(q, x=xs[i], y=ys[i]):
            return F.mse_loss(functional_call(net, q, (x,)), y)

        for _ in range(INNER_STEPS):
            p, state = opt.update(grad(support_loss)(p), state, p)
        total = total + F.mse_loss(functional_call(net, p, (xq[i],)), yq[i])
    return total


def test_maml_tutorial_meta_gradient_equals_functional_and_finite_differences():
    net = _mlp(1)
    tasks = _sine_tasks(2, seed=3)
    theta0 = {k: v.detach().clone() for k, v in net.named_parameters()}
    inner_opt = unroll.MetaAdam(net, lr=INNER_LR, eps=ADAM_EPS)
    net_state = unroll.extract_state_dict(net, by="reference")
    optim_state = unroll.extract_state_dict(inner_opt, by="reference")
    _maml_outer_step(net, inner_opt, net_state, optim_state, tasks)
    got = {k: p.grad for k, p in net.named_parameters()}

    ref = grad(_functional_maml_loss)(theta0, net, tasks)
    for k in theta0:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-12)
    gen = torch.Generator().manual_seed(4)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=DT) for k, v in theta0.items()}
    # Adam divides by sqrt(v) ~ |g|: the loss is smooth only on the scale of the smallest
    # gradient entries (~1e-3 here), so the difference step is small (error O(h²) ~ 4e-8)
    fd = central_fd(lambda p: _functional_maml_loss(p, net, tasks), theta0, direction, eps=1e-7)
    directional = sum((got[k] * direction[k]).sum() for k in theta0)
    torch.testing.assert_close(directional, fd, rtol=1e-6, atol=1e-9)


def test_maml_tutorial_training_follows_the_functional_training_trajectory():
    """Ten outer steps of the tutorial's loop (outer torch.optim.Adam on the leaves that the
    state dicts refer to) against the same training written with torch.func."""
    net = _mlp(2)
    theta = {k: v.detach().clone().requires_grad_() for k, v in net.named_parameters()}
    ref_opt = torch.optim.Adam(theta.values(), lr=1e-2)
    meta_opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    inner_opt = unroll.MetaAdam(net, lr=INNER_LR, eps=ADAM_EPS)
    net_state = unroll.extract_state_dict(net, by="reference")
    optim_state = unroll.extract_state_dict(inner_opt, by="reference")
    held_out = _sine_tasks(8, seed=100)
    before = float(_functional_maml_loss(theta, net, held_out).detach())
    for step in range(10):
        tasks = _sine_tasks(4, seed=step)
        meta_opt.zero_grad()
        _maml_outer_step(net, inner_opt, net_state, optim_state, tasks)
        meta_opt.step()
        ref_opt.zero_grad()
        _functional_maml_loss(theta, net, tasks).backward()
        ref_opt.step()
    for k, p in net.named_parameters():
        assert p.is_leaf and p is net_state.params[["0", "2", "4"].index(k[0])][k[2:]]
        torch.testing.assert_close(p.detach(), theta[k].detach(), rtol=1e-9, atol=1e-11)
    assert float(_functional_maml_loss(theta, net, held_out).detach()) < before


# =========================================================================== 3. iMAML
class InnerNet(
    unroll.ImplicitModule,
    linear_solve=functools.partial(unroll.linear_solve.solve_normal_cg, maxiter=5, atol=0),
):
    """TorchOpt's iMAML tutorial module; only the names changed:
    ``torchopt.nn.ImplicitMetaGradientModule`` → ``unroll.ImplicitModule``,
    ``torchopt.linear_solve.solve_normal_cg(...)`` → ``functools.partial(solve_normal_cg, ...)``,
    ``torchopt.module_clone(meta_net, by='deepcopy', detach_buffers=True)`` →
    ``copy.deepcopy(meta_net)``, ``torchopt.SGD`` → ``torch.optim.SGD``."""

    def __init__(self, meta_net, n_inner_iter, reg_param):
        super().__init__()
        self.meta_net = meta_net
        self.net = copy.deepcopy(meta_net)
        self.n_inner_iter = n_inner_iter
        self.reg_param = reg_param
        self.reset_parameters()

    def reset_parameters(self):
        with torch.no_grad():
            for p1, p2 in zip(self.parameters(), self.meta_parameters()):
                p1.data.copy_(p2.data)
                p1.detach_().requires_grad_()

    def forward(self, x):
        return self.net(x)

    def objective(self, x, y):
        y_pred = self(x)
        loss = F.cross_entropy(y_pred, y)
        regularization_loss = 0
        for p1, p2 in zip(self.parameters(), self.meta_parameters()):
            regularization_loss += 0.5 * self.reg_param * torch.sum(torch.square(p1 - p2))
        return loss + regularization_loss

    def solve(self, x, y):
        params = tuple(self.parameters())
        inner_optim = torch.optim.SGD(params, lr=1e-1)
        with torch.enable_grad():
            # Temporarily enable gradient computation for conducting the optimization
            for _ in range(self.n_inner_iter):
                loss = self.objective(x, y)
                inner_optim.zero_grad()
                loss.backward(inputs=params)
                inner_optim.step()
        return self


class TightInnerNet(
    InnerNet, linear_solve=functools.partial(unroll.linear_solve.solve_cg, rtol=1e-13, maxiter=500)
):
    """The same module with a converged backward solve, for the exact comparison."""


def _classification_tasks(n, seed, ways=3, shots=6, dim=4):
    base = 2.0 * torch.randn(ways, dim, generator=torch.Generator().manual_seed(0), dtype=DT)
    g = torch.Generator().manual_seed(seed)
    centers = base + 0.5 * torch.randn(n, ways, dim, generator=g, dtype=DT)  # related tasks
    labels = torch.arange(ways).repeat(shots)
    x = centers[:, labels] + torch.randn(n, len(labels), dim, generator=g, dtype=DT)
    y = labels.expand(n, -1)
    half = len(labels) // 2
    return x[:, :half], y[:, :half], x[:, half:], y[:, half:]


def _meta_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(DT)


def test_imaml_tutorial_module_meta_gradient_equals_dense_implicit_formula():
    meta_net = _meta_net(5)
    xs, ys, xq, yq = (t[0] for t in _classification_tasks(1, seed=6))
    lam = 2.0
    inner_net = TightInnerNet(meta_net, n_inner_iter=200, reg_param=lam)
    # TorchOpt's rules: the constructor's module is meta, its deep copy is inner
    assert [p is q for p, q in zip(inner_net.meta_parameters(), meta_net.parameters())] == [
        True
    ] * 4
    assert [n for n, _ in inner_net.named_parameters()] == [
        "net.0.weight",
        "net.0.bias",
        "net.2.weight",
        "net.2.bias",
    ]
    optimal_inner_net = inner_net.solve(xs, ys)
    assert meta_net[0].weight.grad is None  # the inner SGD never touched the meta-net
    F.cross_entropy(optimal_inner_net(xq), yq).backward()
    got = torch.cat([p.grad.reshape(-1) for p in meta_net.parameters()])

    # dense IFT at the returned solution w*: dθ = λ (H + λI)⁻¹ ∇_w L_query(w*),
    # H = ∇² cross_entropy(support) at w*
    names = [n for n, _ in meta_net.named_parameters()]
    shapes = [p.shape for p in meta_net.parameters()]
    w_star = torch.cat([p.detach().reshape(-1) for p in inner_net.parameters()])

    def unflat(v):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            out[n] = v[i : i + s.numel()].reshape(s)
            i += s.numel()
        return out

    def loss_at(v, x, y):
        return F.cross_entropy(functional_call(meta_net, unflat(v), (x,)), y)

    hess = torch.func.hessian(loss_at)(w_star, xs, ys)
    g_query = grad(loss_at)(w_star, xq, yq)
    eye = torch.eye(len(w_star), dtype=DT)
    expected = lam * torch.linalg.solve(hess + lam * eye, g_query)
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-11)


def test_imaml_tutorial_training_loop_warns_about_its_short_backward_and_learns():
    """The tutorial's outer loop as written, with its 5-iteration normal-CG backward: unroll
    says that this backward solve stops short (TorchOpt is silent), and the loop trains."""
    meta_net = _meta_net(7)
    meta_opt = torch.optim.Adam(meta_net.parameters(), lr=0.05)
    held_out = _classification_tasks(4, seed=200)

    def query_loss(tasks):
        xs, ys, xq, yq = tasks
        total = 0.0
        for i in range(xs.shape[0]):
            inner_net = InnerNet(meta_net, n_inner_iter=10, reg_param=0.5)
            total = total + F.cross_entropy(inner_net.solve(xs[i], ys[i])(xq[i]), yq[i])
        return total / xs.shape[0]

    with torch.no_grad():
        before = float(query_loss(held_out))
    with pytest.warns(ConvergenceWarning, match="custom_root backward: stopped after 5"):
        query_loss(_classification_tasks(2, seed=0)).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for step in range(12):
            meta_opt.zero_grad()
            query_loss(_classification_tasks(2, seed=step)).backward()
            meta_opt.step()
    with torch.no_grad():
        after = float(query_loss(held_out))
    assert after < 0.8 * before
