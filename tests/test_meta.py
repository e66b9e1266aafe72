"""unroll.meta: MetaSGD / MetaAdam / MetaRMSProp against torch.optim and the functional
optimizers (meta-gradients, finite differences), and the TorchOpt state-dict functions."""

import copy

import pytest
import torch
from helpers import central_fd
from torch.func import functional_call, grad

import unroll
from unroll import optimizers

DT = torch.float64


def _net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).to(DT)


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, generator=g, dtype=DT)
    y = torch.randn(6, 1, generator=g, dtype=DT)
    xv = torch.randn(5, 3, generator=g, dtype=DT)
    yv = torch.randn(5, 1, generator=g, dtype=DT)
    return x, y, xv, yv


def _mse(out, y):
    return ((out - y) ** 2).mean()


# --------------------------------------------------------------------------- vs torch.optim
CASES = [
    (lambda n: unroll.MetaSGD(n, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (
        lambda n: unroll.MetaSGD(n, lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.05),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.8, dampening=0.3, weight_decay=0.05),
    ),
    (
        lambda n: unroll.MetaSGD(n, lr=0.1, momentum=0.7, nesterov=True, maximize=True),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.7, nesterov=True, maximize=True),
    ),
    (lambda n: unroll.MetaAdam(n, lr=0.05), lambda p: torch.optim.Adam(p, lr=0.05)),
    (
        lambda n: unroll.MetaAdam(n, lr=0.05, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.1),
        lambda p: torch.optim.Adam(p, lr=0.05, betas=(0.5, 0.9), eps=1e-4, weight_decay=0.1),
    ),
    (lambda n: unroll.MetaRMSProp(n, lr=0.01), lambda p: torch.optim.RMSprop(p, lr=0.01)),
    (
        lambda n: unroll.MetaRMSProp(
            n, lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.1, maximize=True
        ),
        lambda p: torch.optim.RMSprop(
            p, lr=0.01, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.1, maximize=True
        ),
    ),
]


@pytest.mark.parametrize("make_meta,make_torch", CASES)
def test_step_sequence_matches_torch_optim(make_meta, make_torch):
    x, y, _, _ = _data()
    net = _net()
    ref_net = copy.deepcopy(net)
    opt, ref = make_meta(net), make_torch(ref_net.parameters())
    for _ in range(5):
        opt.step(_mse(net(x), y))
        ref.zero_grad()
        _mse(ref_net(x), y).backward()
        ref.step()
        for (name, p), q in zip(net.named_parameters(), ref_net.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-12, msg=name)


# --------------------------------------------------------------------------- meta-gradients
def _functional_outer(opt_factory, steps):
    """The same MAML loss written with torch.func through unroll.optimizers."""

    def outer(params, lr, x, y, xv, yv, net):
        def inner(p):
            return _mse(functional_call(net, p, (x,)), y)

        opt = opt_factory(lr)
        state = opt.init(params)
        for _ in range(steps):
            params, state = opt.update(grad(inner)(params), state, params)
        return _mse(functional_call(net, params, (xv,)), yv)

    return outer


@pytest.mark.parametrize(
    "meta_cls,kwargs,factory",
    [
        (unroll.MetaSGD, {"momentum": 0.6}, lambda lr: optimizers.momentum(lr, beta=0.6)),
        (unroll.MetaAdam, {"betas": (0.8, 0.95)}, lambda lr: optimizers.adam(lr, 0.8, 0.95)),
        (
            unroll.MetaRMSProp,
            {"alpha": 0.9, "centered": True},
            lambda lr: optimizers.rmsprop(lr, alpha=0.9, centered=True),
        ),
    ],
    ids=["sgd", "adam", "rmsprop"],
)
def test_maml_meta_gradient_equals_functional_and_fd(meta_cls, kwargs, factory):
    x, y, xv, yv = _data(1)
    net = _net(1)
    steps = 3
    theta0 = {k: v.detach().clone() for k, v in net.named_parameters()}
    lr = torch.tensor(0.05, dtype=DT, requires_grad=True)
    opt = meta_cls(net, lr=lr, **kwargs)
    leaves = dict(net.named_parameters())
    for _ in range(steps):
        opt.step(_mse(net(x), y))
    _mse(net(xv), yv).backward()
    got = {k: v.grad for k, v in leaves.items()}

    outer = _functional_outer(factory, steps)
    ref_p, ref_lr = grad(outer, argnums=(0, 1))(theta0, lr.detach(), x, y, xv, yv, net)
    for k in theta0:
        torch.testing.assert_close(got[k], ref_p[k], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lr.grad, ref_lr, rtol=1e-10, atol=1e-12)

    lr0 = lr.detach()
    fd_p = central_fd(lambda p: outer(p, lr0, x, y, xv, yv, net), theta0, eps=1e-6)
    fd_lr = central_fd(lambda s: outer(theta0, s, x, y, xv, yv, net), lr0, eps=1e-6)
    for k in theta0:
        torch.testing.assert_close(got[k], fd_p[k], rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(lr.grad, fd_lr, rtol=1e-6, atol=1e-8)


def test_meta_parameter_module_weight_gets_meta_gradient():
    """A meta-parameter outside the optimised module (a feature scale) gets d outer / d s."""
    x, y, xv, yv = _data(2)
    net = _net(2)
    scale0 = torch.tensor([0.5, 1.5, -1.0], dtype=DT)
    scale = scale0.clone().requires_grad_(True)
    opt = unroll.MetaAdam(net, lr=0.1)
    theta0 = {k: v.detach().clone() for k, v in net.named_parameters()}
    for _ in range(2):
        opt.step(_mse(net(x * scale), y))
    _mse(net(xv), yv).backward()

    def outer(s):
        def inner(p):
            return _mse(functional_call(net, p, (x * s,)), y)

        opt_f = optimizers.adam(0.1)
        p, st = theta0, opt_f.init(theta0)
        for _ in range(2):
            p, st = opt_f.update(grad(inner)(p), st, p)
        return _mse(functional_call(net, p, (xv,)), yv)

    torch.testing.assert_close(scale.grad, grad(outer)(scale0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(scale.grad, central_fd(outer, scale0), rtol=1e-6, atol=1e-8)


def test_unused_and_frozen_parameters_are_left_unchanged():
    net = torch.nn.ModuleDict(
        {"a": torch.nn.Linear(2, 1), "b": torch.nn.Linear(2, 1), "c": torch.nn.Linear(2, 1)}
    ).to(DT)
    net["c"].weight.requires_grad_(False)
    b_weight, c_weight = net["b"].weight, net["c"].weight
    opt = unroll.MetaAdam(net, lr=0.1, weight_decay=0.1)
    x = torch.ones(3, 2, dtype=DT)
    opt.step((net["a"](x) + net["c"](x)).sum())
    assert net["b"].weight is b_weight and net["c"].weight is c_weight
    assert net["a"].weight.grad_fn is not None
    state = opt.state_dict()[0].inner
    # order: a.weight, a.bias, b.weight, b.bias, c.weight (frozen), c.bias (used)
    assert [bool(m.detach().abs().sum() == 0) for m in state.mu] == [
        False,
        False,
        True,
        True,
        True,
        False,
    ]


def test_tied_parameters_stay_tied():
    a, b = torch.nn.Linear(2, 2).to(DT), torch.nn.Linear(2, 2).to(DT)
    b.weight = a.weight
    net = torch.nn.Sequential(a, b)
    opt = unroll.MetaSGD(net, lr=0.1)
    opt.step(net(torch.ones(1, 2, dtype=DT)).sum())
    assert net[0].weight is net[1].weight


# --------------------------------------------------------------------------- state dicts
def test_snippet_recover_reproduces_trajectory():
    """TorchOpt's documented snippet with torchopt -> unroll."""
    x, y, _, _ = _data(3)
    net = _net(3)
    optim = unroll.MetaAdam(net, lr=0.1)
    init_net = unroll.extract_state_dict(net, by="reference", detach_buffers=True)
    init_optim = unroll.extract_state_dict(optim, by="reference")
    original = {k: v for k, v in net.named_parameters()}
    for _ in range(2):
        optim.step(_mse(net(x), y))
    first = [p.detach().clone() for p in net.parameters()]
    first_state = unroll.extract_state_dict(optim, by="deepcopy")
    unroll.recover_state_dict(net, init_net)
    unroll.recover_state_dict(optim, init_optim)
    for k, v in net.named_parameters():
        assert v is original[k]  # the original leaf tensors are back
    assert int(optim.state_dict()[0].count) == 0
    for _ in range(2):
        optim.step(_mse(net(x), y))
    for a, b in zip(net.parameters(), first):
        assert torch.equal(a.detach(), b)
    for a, b in zip(unroll.tree.leaves(optim.state_dict()), unroll.tree.leaves(first_state)):
        assert torch.equal(a.detach(), b)


def test_by_reference_copy_deepcopy():
    x, y, _, _ = _data(4)
    net = _net(4)
    optim = unroll.MetaSGD(net, lr=0.1, momentum=0.9)
    optim.step(_mse(net(x), y))  # parameters and momentum now have autograd history
    w = net[0].weight
    ref = unroll.extract_state_dict(net, by="reference")
    cp = unroll.extract_state_dict(net, by="copy")
    dcp = unroll.extract_state_dict(net, by="deepcopy")
    assert ref.params[0]["weight"] is w
    for st in (cp, dcp):
        saved = st.params[0]["weight"]
        assert saved is not w and saved.data_ptr() != w.data_ptr()
        assert torch.equal(saved.detach(), w.detach())
    assert cp.params[0]["weight"].grad_fn is not None  # CloneBackward: still attached
    assert dcp.params[0]["weight"].grad_fn is None and dcp.params[0]["weight"].requires_grad
    o_ref = unroll.extract_state_dict(optim, by="reference")
    o_cp = unroll.extract_state_dict(optim, by="copy")
    o_dcp = unroll.extract_state_dict(optim, by="deepcopy")
    buf = optim.state_dict()[0].momentum[0]
    assert o_ref[0].momentum[0] is buf
    assert o_cp[0].momentum[0] is not buf and o_cp[0].momentum[0].grad_fn is not None
    assert o_dcp[0].momentum[0].grad_fn is None
    assert torch.equal(o_dcp[0].momentum[0], buf.detach())
    # aliases of TorchOpt
    assert unroll.extract_state_dict(net, by="ref").params[0]["weight"] is w


def test_copy_keeps_autograd_path_deepcopy_cuts_it():
    net = torch.nn.Linear(2, 1).to(DT)
    w0 = net.weight
    cp = unroll.extract_state_dict(net, by="copy")
    dcp = unroll.extract_state_dict(net, by="deepcopy")
    x = torch.ones(1, 2, dtype=DT)
    unroll.recover_state_dict(net, cp)
    net(x).sum().backward()
    assert w0.grad is not None and torch.equal(w0.grad, x)
    w0.grad = None
    unroll.recover_state_dict(net, dcp)
    net(x).sum().backward()
    assert w0.grad is None and dcp.params[0]["weight"].grad is not None


def test_detach_buffers():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)).to(DT)
    bn = net[1]
    state = unroll.extract_state_dict(net, by="reference", detach_buffers=True)
    assert state.params[0]["weight"] is net[0].weight  # parameters by reference
    saved_mean = state.buffers[0]["running_mean"]
    assert saved_mean is not bn.running_mean  # buffers: detached copies
    before = saved_mean.clone()
    net.train()
    net(torch.randn(4, 2, dtype=DT))  # updates running stats in place
    assert torch.equal(saved_mean, before)
    unroll.recover_state_dict(net, state)
    assert torch.equal(bn.running_mean, before)
    assert bn.running_mean is not saved_mean  # a copy is put back: the state stays reusable
    plain = unroll.extract_state_dict(net, by="reference")
    assert plain.buffers[0]["running_mean"] is bn.running_mean
    assert unroll.extract_state_dict(net, with_buffers=False).buffers == ()


def test_stop_gradient():
    x, y, _, _ = _data(5)
    net = _net(5)
    optim = unroll.MetaAdam(net, lr=0.1)
    optim.step(_mse(net(x), y))
    assert all(p.grad_fn is not None for p in net.parameters())
    values = [p.detach().clone() for p in net.parameters()]
    state = unroll.extract_state_dict(net)  # by reference: shares the in-place detach
    unroll.stop_gradient(net)
    unroll.stop_gradient(optim)
    for p, v in zip(net.parameters(), values):
        assert p.grad_fn is None and p.requires_grad and torch.equal(p, v)
    assert state.params[0]["weight"].grad_fn is None
    assert all(t.grad_fn is None for t in unroll.tree.leaves(optim.state_dict()))
    # a later step differentiates from the detached tensors only
    w = net[0].weight
    optim.step(_mse(net(x), y))
    (g,) = torch.autograd.grad(net[0].weight.sum(), w)
    assert g.shape == w.shape
    t = {"a": torch.ones(2, requires_grad=True) * 2}
    unroll.stop_gradient(t)
    assert t["a"].grad_fn is None and t["a"].requires_grad


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda n: unroll.MetaSGD(n, lr=-0.1), ValueError, r"unroll.MetaSGD: `lr`"),
        (lambda n: unroll.MetaSGD(n, lr=0.0), ValueError, r"unroll.MetaSGD: `lr` must be pos"),
        (lambda n: unroll.MetaSGD(n, lr="a"), TypeError, r"unroll.MetaSGD: `lr`"),
        (lambda n: unroll.MetaSGD(n, 0.1, nesterov=True), ValueError, "Nesterov momentum needs"),
        (lambda n: unroll.MetaSGD(n, 0.1, momentum=1.5), ValueError, "`momentum` must be"),
        (lambda n: unroll.MetaAdam(n, betas=0.9), TypeError, r"MetaAdam: `betas` must be a pair"),
        (lambda n: unroll.MetaAdam(n, betas=(0.9, 1.0)), ValueError, r"`betas\[1\]`"),
        (lambda n: unroll.MetaAdam(n, weight_decay=-1.0), ValueError, "`weight_decay`"),
        (lambda n: unroll.MetaAdam(n, maximize=1), TypeError, "`maximize` must be a bool"),
        (lambda n: unroll.MetaRMSProp(n, alpha=1.0), ValueError, r"MetaRMSProp: `alpha`"),
        (lambda n: unroll.MetaRMSProp(n, nesterov=True), ValueError, r"MetaRMSProp: .*momentum"),
        (lambda n: unroll.MetaAdam(n.weight), TypeError, "expects an nn.Module"),
        (lambda n: unroll.MetaAdam(torch.nn.Tanh()), ValueError, "no parameters"),
        (lambda n: unroll.MetaOptimizer(n, "sgd"), TypeError, "GradientTransformation"),
    ],
)
def test_invalid_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make(torch.nn.Linear(2, 1))


def test_invalid_step_and_state_arguments():
    net = torch.nn.Linear(2, 1)
    opt = unroll.MetaAdam(net, lr=0.1)
    x = torch.ones(3, 2)
    with pytest.raises(ValueError, match=r"unroll.MetaAdam.step: `loss` does not require grad"):
        with torch.no_grad():
            opt.step(net(x).sum())
    with pytest.raises(ValueError, match=r"MetaAdam.step: `loss` must be a scalar.*mean"):
        opt.step(net(x))
    with pytest.raises(TypeError, match=r"MetaAdam.step: `loss` must be a tensor"):
        opt.step(1.0)
    with pytest.raises(ValueError, match=r"unroll.extract_state_dict: `by` must be 'reference'"):
        unroll.extract_state_dict(net, by="shallow")
    with pytest.raises(TypeError, match=r"unroll.extract_state_dict: `target` must be"):
        unroll.extract_state_dict({"w": torch.ones(2)})
    with pytest.raises(TypeError, match=r"unroll.recover_state_dict: `state` must be"):
        unroll.recover_state_dict(net, {"weight": torch.ones(1, 2)})
    with pytest.raises(ValueError, match=r"recover_state_dict: the state does not match"):
        unroll.recover_state_dict(
            torch.nn.Sequential(net, net.__class__(1, 1)), unroll.extract_state_dict(net)
        )
    other = unroll.MetaSGD(torch.nn.Linear(2, 1), lr=0.1)
    with pytest.raises(ValueError, match=r"MetaAdam.load_state_dict: the state does not match"):
        unroll.recover_state_dict(opt, unroll.extract_state_dict(other))
    with pytest.raises(TypeError, match=r"recover_state_dict: got a module's state"):
        unroll.recover_state_dict(opt, unroll.extract_state_dict(net))
    with pytest.raises(TypeError, match=r"unroll.stop_gradient: `target` must be"):
        unroll.stop_gradient("net")


@pytest.mark.parametrize(
    "lr,eps_root,dtypes",
    [
        (0.05, 0.0, (DT, DT)),  # all scalars folded into the denominator
        (0.05, 1e-10, (DT, DT)),  # eps_root under the square root
        ("tensor", 1e-10, (DT, DT)),  # lr kept in the graph
        (0.05, 0.0, (DT, torch.float32)),  # mixed dtypes: per-parameter update
    ],
    ids=["float-lr", "eps-root", "tensor-lr-eps-root", "mixed-dtypes"],
)
def test_meta_adam_foreach_update_matches_functional_adam(lr, eps_root, dtypes):
    """MetaAdam's foreach update: trajectory and meta-gradient w.r.t. θ₀ equal the
    functional unroll.optimizers.adam loop (per-parameter ops) in every code path."""
    x, y, xv, yv = _data(2)
    net = _net(2)
    net[2].to(dtypes[1])
    lr_value = torch.tensor(0.05, dtype=DT, requires_grad=True) if lr == "tensor" else lr

    def model(p, inp):
        h = torch.tanh(inp @ p["0.weight"].T + p["0.bias"])
        return (h.to(p["2.weight"].dtype) @ p["2.weight"].T + p["2.bias"]).to(DT)

    theta0 = {k: v.detach().clone() for k, v in net.named_parameters()}
    opt = unroll.MetaAdam(net, lr=lr_value, betas=(0.7, 0.9), eps_root=eps_root)
    leaves = dict(net.named_parameters())
    for _ in range(3):
        opt.step(_mse(model(dict(net.named_parameters()), x), y))
    _mse(model(dict(net.named_parameters()), xv), yv).backward()

    def outer(params):
        fopt = optimizers.adam(lr_value, 0.7, 0.9, eps_root=eps_root)
        state = fopt.init(params)
        for _ in range(3):
            g = grad(lambda p: _mse(model(p, x), y))(params)
            params, state = fopt.update(g, state, params)
        return _mse(model(params, xv), yv), params

    ref, final = grad(outer, has_aux=True)(theta0)
    for k, p in net.named_parameters():
        tol = 1e-5 if p.dtype == torch.float32 else 1e-10
        torch.testing.assert_close(p.detach(), final[k], rtol=tol, atol=tol)
        torch.testing.assert_close(leaves[k].grad, ref[k], rtol=tol, atol=tol * 1e-2)
