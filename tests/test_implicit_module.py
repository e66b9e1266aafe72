"""ImplicitModule: iMAML-style bilevel problems against closed-form meta-gradients (float64)."""

import copy
import functools
import gc
import weakref

import pytest
import torch
from torch import nn

from unroll import optimizers
from unroll.implicit import ImplicitModule
from unroll.linear_solve import solve_cg

DT = torch.float64
TIGHT_CG = functools.partial(solve_cg, rtol=1e-13, maxiter=200)


def _data(seed=0, n=20, nv=15, d=5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=DT)
    y = torch.randn(n, generator=g, dtype=DT)
    xv = torch.randn(nv, d, generator=g, dtype=DT)
    yv = torch.randn(nv, generator=g, dtype=DT)
    theta = torch.randn(d, generator=g, dtype=DT)
    return x, y, xv, yv, theta


def _closed_form(x, y, xv, yv, theta, lam):
    """w* = (XᵀX+λI)⁻¹(Xᵀy+λθ), L = ½‖X_v w* − y_v‖²: w*, dL/dθ, dL/dλ, dL/dy."""
    A = x.T @ x + lam * torch.eye(x.shape[1], dtype=DT)
    w = torch.linalg.solve(A, x.T @ y + lam * theta)
    q = torch.linalg.solve(A, xv.T @ (xv @ w - yv))  # A⁻¹ ∂L/∂w
    return w, lam * q, q @ (theta - w), x @ q


class RidgeObjective(ImplicitModule, linear_solve=TIGHT_CG):
    """Inner: ½‖Xw − y‖² + (λ/2)‖w − θ‖², solved by gradient descent (unroll.optimizers)."""

    def __init__(self, theta, log_lam):
        super().__init__()
        self.theta = nn.Parameter(theta.clone())
        self.log_lam = nn.Parameter(torch.as_tensor(log_lam, dtype=DT))
        self.register_inner("w", torch.zeros_like(theta))

    def inner_loss(self, w, x, y):
        lam = self.log_lam.exp()
        return 0.5 * ((x @ w - y) ** 2).sum() + 0.5 * lam * ((w - self.theta) ** 2).sum()

    def objective(self, x, y):
        return self.inner_loss(self.w, x, y)

    def solve(self, x, y, steps=400):
        lam = self.log_lam.exp()
        lr = 1.0 / (torch.linalg.eigvalsh(x.T @ x)[-1] + lam)
        opt = optimizers.momentum(lr, beta=0.5)
        w, state = self.w, opt.init(self.w)
        for _ in range(steps):
            w, state = opt.update(torch.func.grad(self.inner_loss)(w, x, y), state, w)
        self.w = w
        return self

    def forward(self, x):
        return x @ self.w


class RidgeOptimality(RidgeObjective):
    """The same problem with an explicit residual and a direct solve."""

    def optimality(self, x, y):
        lam = self.log_lam.exp()
        return x.T @ (x @ self.w - y) + lam * (self.w - self.theta)

    def solve(self, x, y):
        lam = self.log_lam.exp()
        A = x.T @ x + lam * torch.eye(x.shape[1], dtype=DT)
        self.w = torch.linalg.solve(A, x.T @ y + lam * self.theta)
        return "done"


def _outer(module, xv, yv):
    return 0.5 * ((module(xv) - yv) ** 2).sum()


@pytest.mark.parametrize("cls", [RidgeObjective, RidgeOptimality])
def test_meta_gradient_closed_form(cls):
    x, y, xv, yv, theta = _data()
    lam = torch.tensor(0.7, dtype=DT)
    y = y.clone().requires_grad_(True)  # a differentiable input of solve
    module = cls(theta, lam.log())
    out = module.solve(x, y)
    assert out is module if cls is RidgeObjective else out == "done"
    _outer(module, xv, yv).backward()
    w, g_theta, g_lam, g_y = _closed_form(x, y.detach(), xv, yv, theta, lam)
    torch.testing.assert_close(module.w.detach(), w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(module.theta.grad, g_theta, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(module.log_lam.grad, lam * g_lam, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(y.grad, g_y, rtol=1e-8, atol=1e-10)


def test_autograd_grad_and_second_solve_on_same_module():
    x, y, xv, yv, theta = _data(1)
    lam = torch.tensor(2.0, dtype=DT)
    module = RidgeObjective(theta, lam.log())
    for seed in (1, 2):  # re-solving warm-starts from the last solution, no stale graph
        x, y, xv, yv, _ = _data(seed)
        module.solve(x, y)
        meta = list(module.meta_parameters())
        g_theta, g_loglam = torch.autograd.grad(_outer(module, xv, yv), meta)
        _, ref_theta, ref_lam, _ = _closed_form(x, y, xv, yv, theta, lam)
        torch.testing.assert_close(g_theta, ref_theta, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(g_loglam, lam * ref_lam, rtol=1e-8, atol=1e-10)


class InnerNet(ImplicitModule, linear_solve=TIGHT_CG):
    """iMAML: inner net = copy of the meta net, proximal term toward the meta net."""

    def __init__(self, meta_net, lam):
        super().__init__()
        self.meta_net = meta_net
        self.lam = lam
        self.register_inner("net", copy.deepcopy(meta_net))

    def objective(self, x, y):
        fit = 0.5 * ((self.net(x).squeeze(-1) - y) ** 2).sum()
        prox = sum(
            ((p - q) ** 2).sum() for p, q in zip(self.inner_parameters(), self.meta_parameters())
        )
        return fit + 0.5 * self.lam * prox

    def solve(self, x, y):
        params = list(self.inner_parameters())
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=100,
            tolerance_grad=1e-14,
            tolerance_change=0,
            line_search_fn="strong_wolfe",
        )

        def closure():
            opt.zero_grad()
            loss = self.objective(x, y)
            loss.backward()  # meta-parameters are detached here: their .grad stays clean
            return loss

        opt.step(closure)

    def forward(self, x):
        return self.net(x).squeeze(-1)


def test_imaml_inner_module_closed_form_over_tasks():
    torch.manual_seed(0)
    meta_net = nn.Linear(4, 1).to(DT)
    lam = 0.5
    theta = torch.cat([meta_net.weight.detach()[0], meta_net.bias.detach()])
    expected = torch.zeros_like(theta)
    for task in range(3):
        x, y, xv, yv, _ = _data(10 + task, d=4)
        inner = InnerNet(meta_net, lam)
        names = [n for n, _ in inner.named_meta_parameters()]
        assert names == ["meta_net.weight", "meta_net.bias"]
        assert [n for n, _ in inner.named_inner_parameters()] == ["net.weight", "net.bias"]
        assert [n for n, _ in inner.named_parameters()] == ["net.weight", "net.bias"]
        inner.solve(x, y)
        assert meta_net.weight.grad is None or task > 0  # the solve wrote no meta .grad
        _outer(inner, xv, yv).backward()
        ones = torch.ones(x.shape[0], 1, dtype=DT)
        xa, xva = torch.cat([x, ones], 1), torch.cat([xv, torch.ones(xv.shape[0], 1, dtype=DT)], 1)
        w, g_theta, _, _ = _closed_form(xa, y, xva, yv, theta, lam)
        got_w = torch.cat([inner.net.weight.detach()[0], inner.net.bias.detach()])
        torch.testing.assert_close(got_w, w, rtol=1e-8, atol=1e-10)
        expected += g_theta
        got = torch.cat([meta_net.weight.grad[0], meta_net.bias.grad])
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-9)


def test_modules_freed_by_refcount_even_while_graph_alive():
    x, y, xv, yv, theta = _data(3)
    lam = torch.tensor(0.9, dtype=DT)
    meta_theta = nn.Parameter(theta.clone())

    class Shared(RidgeOptimality):
        def __init__(self):
            super().__init__(theta, lam.log())
            del self.theta
            self.theta = meta_theta  # one meta-parameter shared by every inner module

    refs, losses = [], []
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            module = Shared()
            module.solve(x, y)
            losses.append(_outer(module, xv, yv))
            refs.append(weakref.ref(module))
            del module
        assert all(r() is None for r in refs), "an ImplicitModule was kept alive by its graph"
    finally:
        gc.enable()
    sum(losses).backward()  # the graphs still work after their modules are gone
    _, g_theta, _, _ = _closed_form(x, y, xv, yv, theta, lam)
    torch.testing.assert_close(meta_theta.grad, 5 * g_theta, rtol=1e-8, atol=1e-10)


class SolveInForward(RidgeOptimality):
    def forward(self, x, y, xv):
        self.solve(x, y)
        return xv @ self.w


def test_torch_func_grad_and_vmap_through_functional_call():
    """Meta-gradients by torch.func.grad / vmap(grad) over functional_call of the module."""
    x, y, xv, yv, theta = _data(6)
    module = SolveInForward(theta, 0.0)
    params = {k: v.detach() for k, v in module.named_meta_parameters()}

    def outer(p):
        return 0.5 * ((torch.func.functional_call(module, p, (x, y, xv)) - yv) ** 2).sum()

    lam = torch.tensor(1.0, dtype=DT)
    g = torch.func.grad(outer)(params)
    _, g_theta, g_lam, _ = _closed_form(x, y, xv, yv, theta, lam)
    torch.testing.assert_close(g["theta"], g_theta, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g["log_lam"], lam * g_lam, rtol=1e-10, atol=1e-12)
    thetas = torch.stack([theta, -2 * theta, theta + 1])
    batched = {"theta": thetas, "log_lam": params["log_lam"]}
    gv = torch.func.vmap(torch.func.grad(outer), in_dims=({"theta": 0, "log_lam": None},))(batched)
    for i, t in enumerate(thetas):
        _, g_theta, _, _ = _closed_form(x, y, xv, yv, t, lam)
        torch.testing.assert_close(gv["theta"][i], g_theta, rtol=1e-10, atol=1e-12)


def test_linear_solve_class_keyword_is_used():
    calls = []

    def counting_cg(matvec, b, **options):
        calls.append(1)
        return TIGHT_CG(matvec, b, **options)

    class Counted(RidgeOptimality, linear_solve=counting_cg):
        pass

    x, y, xv, yv, theta = _data(4)
    module = Counted(theta, 0.0)
    module.solve(x, y)
    assert calls == []
    _outer(module, xv, yv).backward()
    assert len(calls) == 1
    _, g_theta, _, _ = _closed_form(x, y, xv, yv, theta, torch.tensor(1.0, dtype=DT))
    torch.testing.assert_close(module.theta.grad, g_theta, rtol=1e-8, atol=1e-10)


def test_no_grad_solve_gives_detached_solution():
    x, y, xv, yv, theta = _data(5)
    module = RidgeOptimality(theta, 0.0)
    with torch.no_grad():
        module.solve(x, y)
    assert not module.w.requires_grad
    w, *_ = _closed_form(x, y, xv, yv, theta, torch.tensor(1.0, dtype=DT))
    torch.testing.assert_close(module.w, w, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- errors


def test_errors():
    theta = torch.zeros(3, dtype=DT)
    x, y = torch.randn(6, 3, dtype=DT), torch.randn(6, dtype=DT)

    class NoInner(ImplicitModule):
        def objective(self, x, y):
            return x.sum()

        def solve(self, x, y):
            pass

    with pytest.raises(ValueError, match="has no inner parameters"):
        NoInner().solve(x, y)

    class BadResidual(RidgeOptimality):
        def optimality(self, x, y):
            return {"v": self.w}

    module = BadResidual(theta, 0.0)
    with pytest.raises(ValueError, match="must have the inner-parameter keys"):
        module.solve(x, y)
        _outer(module, x, y).backward()

    class ClosedOver(RidgeOptimality):
        def optimality(self, x, y):
            return super().optimality(x, y) * self.scale

    module = ClosedOver(theta, 0.0)
    module.scale = torch.tensor(2.0, dtype=DT, requires_grad=True)  # not a Parameter
    with pytest.raises(ValueError, match="neither a parameter of the module nor an input"):
        module.solve(x, y)

    with pytest.raises(TypeError, match="must be floating point"):
        RidgeObjective(theta, 0.0).register_inner("k", torch.arange(3))
    with pytest.raises(ValueError, match="shares parameters"):
        net = nn.Linear(2, 1)
        m = NoInner()
        m.meta = net
        m.register_inner("inner", net)
    with pytest.raises(TypeError, match="`linear_solve` must be a callable"):

        class BadSolve(RidgeObjective, linear_solve="cg"):
            pass

    class Early(NoInner):
        def __init__(self):
            self.register_inner("w", theta)

    with pytest.raises(RuntimeError, match=r"super\(\).__init__\(\)"):
        Early()


# --------------------------------------------------------------------------- abstract methods
def test_abstract_methods_are_checked_at_instantiation():
    class NoObjective(ImplicitModule):
        def solve(self, x):
            pass

    class NoSolve(ImplicitModule):
        def objective(self, x):
            return x.sum()

    class Mixin(ImplicitModule):  # an abstract intermediate class may be defined ...
        def forward(self, x):
            return x @ self.w

    for cls, missing in [
        (NoObjective, "`objective` or `optimality`"),
        (NoSolve, "`solve`"),
        (Mixin, "`solve` nor `objective` or `optimality`"),
        (ImplicitModule, "`solve` nor `objective` or `optimality`"),
    ]:
        with pytest.raises(
            TypeError, match=f"cannot instantiate {cls.__name__}: it does not define {missing}"
        ):
            cls()

    class Concrete(Mixin, RidgeOptimality):  # ... and completed by a subclass
        pass

    x, y, xv, yv, theta = _data(7)
    module = Concrete(theta, 0.0)
    module.solve(x, y)
    _outer(module, xv, yv).backward()
    _, g_theta, _, _ = _closed_form(x, y, xv, yv, theta, torch.tensor(1.0, dtype=DT))
    torch.testing.assert_close(module.theta.grad, g_theta, rtol=1e-8, atol=1e-10)

    for kind in (staticmethod, classmethod):
        with pytest.raises(TypeError, match="must be a method `def objective"):
            type("Bad", (ImplicitModule,), {"objective": kind(lambda *a: 0.0)})
    with pytest.raises(TypeError, match="must be a method `def solve"):
        type("Bad", (ImplicitModule,), {"solve": 3})


# --------------------------------------------------------------------------- TorchOpt's rules
class TorchOptInner(ImplicitModule, linear_solve=TIGHT_CG):
    """TorchOpt's iMAML module, unchanged but for the base class: no register_inner.

    Inner problem ½‖X w + b − y‖² + (λ/2)‖(w, b) − (w₀, b₀)‖² for a linear meta-net."""

    def __init__(self, meta_net, lam, steps=1500):
        super().__init__()
        self.meta_net = meta_net  # a constructor argument: meta
        self.net = copy.deepcopy(meta_net)  # not an argument: inner
        self.lam, self.steps = lam, steps

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def objective(self, x, y):
        fit = 0.5 * ((self(x) - y) ** 2).sum()
        prox = sum(((p - q) ** 2).sum() for p, q in zip(self.parameters(), self.meta_parameters()))
        return fit + 0.5 * self.lam * prox

    def solve(self, x, y):
        params = tuple(self.parameters())
        assert [p.requires_grad for p in self.meta_parameters()] == [False, False]
        h = torch.linalg.eigvalsh(x.T @ x + x.sum(0).outer(x.sum(0)) / x.shape[0])[-1]
        optim = torch.optim.SGD(params, lr=float(1.0 / (h + x.shape[0] + self.lam)), momentum=0.9)
        for _ in range(self.steps):
            optim.zero_grad()
            self.objective(x, y).backward(inputs=params)
            optim.step()
        return self


def _augmented(x):
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=DT)], 1)


def test_torchopt_style_module_detects_meta_parameters_and_matches_closed_form():
    torch.manual_seed(1)
    meta_net = nn.Linear(4, 1).to(DT)
    x, y, xv, yv, _ = _data(20, d=4)
    lam = 0.8
    inner = TorchOptInner(meta_net, lam)
    assert [n for n, _ in inner.named_parameters()] == ["net.weight", "net.bias"]
    assert [n for n, _ in inner.named_meta_parameters()] == ["meta_net.weight", "meta_net.bias"]
    assert [p is q for p, q in zip(inner.meta_parameters(), meta_net.parameters())] == [True] * 2
    assert inner.solve(x, y) is inner
    assert meta_net.weight.grad is None  # the solver's backward never reached the meta-net
    _outer(inner, xv, yv).backward()
    theta = torch.cat([meta_net.weight.detach()[0], meta_net.bias.detach()])
    w, g_theta, _, _ = _closed_form(_augmented(x), y, _augmented(xv), yv, theta, lam)
    got_w = torch.cat([inner.net.weight.detach()[0], inner.net.bias.detach()])
    torch.testing.assert_close(got_w, w, rtol=1e-9, atol=1e-11)
    got = torch.cat([meta_net.weight.grad[0], meta_net.bias.grad])
    torch.testing.assert_close(got, g_theta, rtol=1e-7, atol=1e-9)


class TensorMeta(ImplicitModule, linear_solve=TIGHT_CG):
    """A meta *tensor* passed to the constructor (TorchOpt registers it as meta-parameter),
    two inner nn.Parameters and an optimality returned in ``parameters()`` order."""

    def __init__(self, theta, lam):
        super().__init__()
        self.theta = theta  # requires grad, not an nn.Parameter: still a meta-parameter
        self.lam = lam
        self.w = nn.Parameter(torch.zeros_like(theta))
        self.b = nn.Parameter(torch.zeros((), dtype=theta.dtype))

    def optimality(self, x, y):
        r = x @ self.w + self.b - y
        return x.T @ r + self.lam * (self.w - self.theta), r.sum() + self.lam * self.b

    def solve(self, x, y):
        xa = _augmented(x)
        reg = self.lam * torch.eye(xa.shape[1], dtype=DT)
        sol = torch.linalg.solve(
            xa.T @ xa + reg, xa.T @ y + self.lam * torch.cat([self.theta, torch.zeros(1, dtype=DT)])
        )
        with torch.no_grad():
            self.w.copy_(sol[:-1])
            self.b.copy_(sol[-1])

    def forward(self, x):
        return x @ self.w + self.b


def test_meta_tensor_argument_and_tuple_optimality_against_dense_reference():
    x, y, xv, yv, theta0 = _data(21, d=3)
    lam = 1.3
    theta = theta0.clone().requires_grad_(True)
    module = TensorMeta(theta, lam)
    assert [n for n, _ in module.named_meta_parameters()] == ["theta"]
    assert [n for n, _ in module.named_parameters()] == ["w", "b"]
    assert module.theta is theta
    clone = copy.deepcopy(module)  # the copy keeps the roles (with its own tensors)
    assert [n for n, _ in clone.named_meta_parameters()] == ["theta"]
    assert [n for n, _ in clone.named_parameters()] == ["w", "b"]
    assert clone.theta is not theta
    module.solve(x, y)
    _outer(module, xv, yv).backward()

    def reference(t):  # autograd through the dense solve
        xa = _augmented(x)
        rhs = xa.T @ y + lam * torch.cat([t, torch.zeros(1, dtype=DT)])
        sol = torch.linalg.solve(xa.T @ xa + lam * torch.eye(4, dtype=DT), rhs)
        return 0.5 * ((_augmented(xv) @ sol - yv) ** 2).sum()

    torch.testing.assert_close(
        theta.grad, torch.func.grad(reference)(theta0), rtol=1e-9, atol=1e-11
    )


def test_modules_without_meta_or_inner_parameters_raise_with_the_fix():
    x, y, xv, yv, theta = _data(22, d=3)

    class AllMeta(TorchOptInner):  # every parameter comes from the constructor
        def __init__(self, meta_net):
            ImplicitModule.__init__(self)
            self.meta_net = meta_net

        def forward(self, x):
            return self.meta_net(x).squeeze(-1)

    with pytest.raises(
        ValueError,
        match=r"unroll.ImplicitModule.solve: AllMeta has no inner "
        r"parameters; declare them with self.register_inner",
    ):
        AllMeta(nn.Linear(3, 1).to(DT)).solve(x, y)

    class NoMeta(TensorMeta):  # θ is a plain constant: nothing gets a meta-gradient
        pass

    with pytest.raises(
        ValueError,
        match=r"NoMeta has no meta-parameters and no input of solve "
        r"requires grad.*constructor",
    ):
        NoMeta(theta, 1.0).solve(x, y)

    # ... but a differentiable input of solve is enough: dL/dy against the dense reference
    module = NoMeta(theta, 1.0)
    y_leaf = y.clone().requires_grad_(True)
    module.solve(x, y_leaf)
    _outer(module, xv, yv).backward()

    def reference(yy):
        xa = _augmented(x)
        sol = torch.linalg.solve(
            xa.T @ xa + torch.eye(4, dtype=DT),
            xa.T @ yy + torch.cat([theta, torch.zeros(1, dtype=DT)]),
        )
        return 0.5 * ((_augmented(xv) @ sol - yv) ** 2).sum()

    torch.testing.assert_close(y_leaf.grad, torch.func.grad(reference)(y), rtol=1e-9, atol=1e-11)
