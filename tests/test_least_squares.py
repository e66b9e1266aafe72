"""Differentiating the least-squares prox: implicit backward against autograd through CG run
to convergence, finite differences and dense pseudo-inverses (float64); torch.func transforms,
second derivatives, non-convergence warnings and the O(1) saved-tensor memory."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import central_fd  # the one finite-difference helper (tests/helpers.py)

from unroll import tree
from unroll.linear_solve import ConvergenceWarning
from unroll.physics import (
    Blur,
    CompressedSensing,
    LinearPhysics,
    MultiCoilMRI,
    gaussian_blur,
    least_squares,
)

D = torch.float64
TIGHT = {"tol": 1e-12, "max_iter": 1000}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rel(a, b):
    return float(tree.norm(tree.sub(a, b)) / tree.norm(b))


def _problem(B=2, C=2, H=10, W=10, kshape=(1, 1, 3, 3)):
    k = torch.rand(kshape, dtype=D) + 0.1
    x = torch.rand(B, C, H, W, dtype=D)
    physics = Blur(k, padding="valid", **TIGHT)
    y = physics.A(x) + 0.05 * torch.randn_like(physics.A(x))
    z = torch.randn(B, C, H, W, dtype=D)
    return k, y, z


def _loss(h):
    return (torch.sin(h) * torch.arange(h.numel(), dtype=D).reshape(h.shape).cos()).sum()


def _grads(implicit, k, y, z, gamma, padding="valid"):
    leaves = [t.detach().clone().requires_grad_() for t in (k, y, z, gamma)]
    kk, yy, zz, gg = leaves
    physics = Blur(kk, padding=padding, implicit_backward_solver=implicit, **TIGHT)
    h = physics.prox_l2(zz, yy, gg)
    _loss(h).backward()
    return h.detach(), [t.grad for t in leaves]


GAMMAS = {
    "0-dim": lambda z: torch.tensor(0.8, dtype=D),
    "per-sample": lambda z: torch.tensor([0.3, 2.0], dtype=D),
    "full": lambda z: 0.5 + torch.rand(z.shape, dtype=D),
}


@pytest.mark.parametrize("padding", ["valid", "reflect"])
@pytest.mark.parametrize("gname", list(GAMMAS))
def test_implicit_matches_unrolled_cg(gname, padding):
    k, y, z = _problem()
    if padding != "valid":
        y = Blur(k, padding=padding).A(torch.rand_like(z))
    gamma = GAMMAS[gname](z)
    h_imp, g_imp = _grads(True, k, y, z, gamma, padding)
    h_exp, g_exp = _grads(False, k, y, z, gamma, padding)
    assert rel(h_imp, h_exp) < 1e-10
    for name, a, b in zip(("filter", "y", "z", "gamma"), g_imp, g_exp):
        assert a is not None and rel(a, b) < 1e-6, name
    assert g_imp[3].shape == gamma.shape


def test_per_sample_kernels_and_channels():
    k, y, z = _problem(kshape=(2, 2, 3, 3))
    gamma = torch.tensor([0.5, 1.5], dtype=D)
    _, g_imp = _grads(True, k, y, z, gamma)
    _, g_exp = _grads(False, k, y, z, gamma)
    for a, b in zip(g_imp, g_exp):
        assert rel(a, b) < 1e-6


class KernelNet(torch.nn.Module):
    """A small network predicting a normalised blur kernel from a code vector."""

    def __init__(self, size=3):
        super().__init__()
        self.size = size
        self.lin = torch.nn.Linear(4, size * size, dtype=D)

    def forward(self, code):
        logits = self.lin(code)
        return torch.softmax(logits, dim=-1).reshape(-1, 1, self.size, self.size)


@pytest.mark.parametrize("batch_kernels", [False, True])
def test_kernel_from_a_network_gets_gradients(batch_kernels):
    _, y, z = _problem()
    net = KernelNet()
    code = torch.randn(2 if batch_kernels else 1, 4, dtype=D)

    def run(implicit):
        net.zero_grad()
        physics = Blur(net(code), padding="valid", implicit_backward_solver=implicit, **TIGHT)
        _loss(physics.prox_l2(z, y, 0.7)).backward()
        return [p.grad.clone() for p in net.parameters()]

    g_imp, g_exp = run(True), run(False)
    for a, b in zip(g_imp, g_exp):
        assert a is not None and float(a.abs().max()) > 0
        assert rel(a, b) < 1e-6


def test_finite_difference_spot_check():
    k, y, z = _problem(B=1, C=1, H=8, W=8)
    gamma = torch.tensor([0.6], dtype=D)
    inputs = [k, y, z, gamma]
    _, grads = _grads(True, *inputs)
    direction = [torch.randn_like(t) for t in inputs]

    def f(perturbed):
        kk, yy, zz, gg = perturbed
        return _loss(Blur(kk, **TIGHT).prox_l2(zz, yy, gg))

    fd = central_fd(f, inputs, direction, eps=1e-5)
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    assert abs(float(fd - analytic)) <= 1e-7 * max(1.0, abs(float(fd)))


def test_torch_func_grad_over_the_physics_pytree():
    k, y, z = _problem()
    physics = Blur(k, padding="valid", **TIGHT)

    def loss(p, zz, gg):
        return _loss(least_squares(p, y, zz, gg))

    gamma = torch.tensor(0.9, dtype=D)
    g_phys, g_z, g_gamma = torch.func.grad(loss, argnums=(0, 1, 2))(physics, z, gamma)
    assert isinstance(g_phys, Blur)
    _, ref = _grads(False, k, y, z, gamma)
    assert rel(g_phys.filter, ref[0]) < 1e-6
    assert rel(g_z, ref[2]) < 1e-6
    assert rel(g_gamma, ref[3]) < 1e-6


def test_vmap_of_grad_gives_per_sample_gradients():
    k, y, z = _problem(B=3, C=1)
    gammas = torch.tensor([0.4, 1.0, 3.0], dtype=D)
    physics = Blur(k, padding="valid", **TIGHT)

    def loss(g, zi, yi):  # one sample, kept with a batch dim of 1
        return _loss(physics.prox_l2(zi[None], yi[None], g))

    per_sample = torch.func.vmap(torch.func.grad(loss))(gammas, z, y)
    for i in range(3):
        _, ref = _grads(False, k, y[i : i + 1], z[i : i + 1], gammas[i])
        assert rel(per_sample[i], ref[3]) < 1e-6


def test_second_derivatives_match_unrolled():
    k, y, z = _problem(B=1, C=1, H=8, W=8)

    def d2(implicit):
        gamma = torch.tensor(0.7, dtype=D, requires_grad=True)
        kk = k.clone().requires_grad_()
        physics = Blur(kk, implicit_backward_solver=implicit, **TIGHT)
        loss = _loss(physics.prox_l2(z, y, gamma))
        (g,) = torch.autograd.grad(loss, gamma, create_graph=True)
        return torch.autograd.grad(g, (gamma, kk))

    for a, b in zip(d2(True), d2(False)):
        assert rel(a, b) < 1e-6
    # and with torch.func: hessian of the loss w.r.t. gamma
    h_func = torch.func.grad(torch.func.grad(lambda g: _loss(Blur(k, **TIGHT).prox_l2(z, y, g))))(
        torch.tensor(0.7, dtype=D)
    )
    assert rel(h_func, d2(False)[0]) < 1e-6


@pytest.mark.parametrize("implicit", [True, False])
def test_multicoil_complex_gradients(implicit):
    H = W = 8
    mask = (torch.rand(H, W) > 0.5).to(D)
    maps = torch.randn(3, H, W, dtype=torch.complex128)
    x = torch.randn(2, H, W, dtype=torch.complex128)
    y0 = MultiCoilMRI(mask, maps).A(x)

    def grads(imp):
        mm = maps.clone().requires_grad_()
        zz = x.flip(-1).clone().requires_grad_()
        physics = MultiCoilMRI(mask, mm, implicit_backward_solver=imp, **TIGHT)
        h = physics.prox_l2(zz, y0, 0.5)
        (h.real.sin().sum() + (h.imag**2).sum()).backward()
        return mm.grad, zz.grad

    for a, b in zip(grads(implicit), grads(False)):
        assert rel(a, b) < 1e-6


def test_pseudo_inverse_gradient_against_dense():
    cs = CompressedSensing(12, 20, seed=0, dtype=D)
    physics = LinearPhysics(cs.A, cs.A_adjoint, **TIGHT)  # the generic CG path
    y = torch.randn(2, 12, dtype=D, requires_grad=True)
    v = torch.randn(2, 20, dtype=D)
    (physics.A_dagger(y) * v).sum().backward()
    pinv = torch.linalg.pinv(cs.matrix)
    assert rel(y.grad, v @ pinv) < 1e-8


def test_matrix_of_compressed_sensing_gets_gradients():
    cs = CompressedSensing(15, 24, seed=1, dtype=D, **TIGHT)
    z = torch.randn(2, 24, dtype=D)
    y = cs.A(torch.randn(2, 24, dtype=D))

    def grad(implicit):
        leaves, spec = tree.flatten(cs)
        m = leaves[0].clone().requires_grad_()
        physics = tree.unflatten(spec, [m]).replace(implicit_backward_solver=implicit)
        _loss(physics.prox_l2(z, y, 0.5)).backward()
        return m.grad

    assert rel(grad(True), grad(False)) < 1e-6


def test_backward_non_convergence_warns_once():
    k, y, z = _problem()
    zz = z.clone().requires_grad_()
    physics = Blur(k, tol=1e-14, max_iter=2)
    with pytest.warns(ConvergenceWarning, match=r"^least_squares \(forward\)"):
        h = physics.prox_l2(zz, y, 5.0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _loss(h).backward()
    hits = [w for w in record if issubclass(w.category, ConvergenceWarning)]
    assert len(hits) == 1
    assert "residual" in str(hits[0].message) and "least_squares" in str(hits[0].message)


def test_checkpointing_uses_saved_tensor_hooks():
    """Activation checkpointing relies on saved_tensors_hooks: the operators and the prox must
    work inside it (no torch.func transform in the forward) and give the same gradients."""
    k, y, z = _problem()
    for implicit in (True, False):
        physics = Blur(k, implicit_backward_solver=implicit, **TIGHT)
        z1 = z.clone().requires_grad_()
        _loss(physics.prox_l2(z1, y, 0.7)).backward()
        z2 = z.clone().requires_grad_()
        h = torch.utils.checkpoint.checkpoint(
            lambda t, p=physics: p.prox_l2(t, y, 0.7), z2, use_reentrant=False
        )
        _loss(h).backward()
        assert rel(z2.grad, z1.grad) < 1e-10


def _saved_bytes(implicit, max_iter):
    k, y, z = _problem(B=2, C=1, H=16, W=16)
    inputs = [t.clone().requires_grad_() for t in (k, y, z)]
    gamma = torch.tensor(0.5, dtype=D, requires_grad=True)
    physics = Blur(inputs[0], tol=0.0, max_iter=max_iter, implicit_backward_solver=implicit)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        physics.prox_l2(inputs[2], inputs[1], gamma)
    return total


def test_saved_bytes_do_not_grow_with_cg_iterations():
    implicit = [_saved_bytes(True, n) for n in (25, 100, 400)]
    assert implicit[0] > 0
    assert max(implicit) <= 1.01 * min(implicit)
    explicit = [_saved_bytes(False, n) for n in (25, 100, 400)]
    # linear growth: b(n) = a + c n, so (b400 - b100) / (b100 - b25) = 300 / 75
    assert explicit[1] > 2 * explicit[0]
    ratio = (explicit[2] - explicit[1]) / (explicit[1] - explicit[0])
    assert abs(ratio - 4.0) < 0.05
    assert implicit[0] < explicit[0] / 5


def test_gaussian_kernel_prox_converges_fast():
    """The benchmark's problem (σ = 2.5 Gaussian, valid padding, γ = 1) in float64: CG meets a
    1e-8 relative residual in few iterations and the true residual agrees."""
    physics = Blur(gaussian_blur(2.5, dtype=D), padding="valid", tol=1e-8, max_iter=100)
    x = torch.rand(2, 3, 32, 32, dtype=D)
    y = physics.A(x)
    z = torch.zeros_like(x)
    h, info = least_squares(physics, y, z, 1.0, return_info=True)
    assert bool(info.converged.all()) and int(info.num_iter.max()) < 30
    res = physics.A_adjoint(physics.A(h) - y) + (h - z)
    b = physics.A_adjoint(y)
    assert float(tree.batch_norm(res).max() / tree.batch_norm(b).min()) < 1e-7


def test_vmap_then_backward_reaches_the_kernels():
    """Inside vmap a kernel that requires grad outside is a batched tensor; its gradient must
    still reach it through the implicit rule."""
    kernels = (torch.rand(3, 1, 1, 3, 3, dtype=D) + 0.1).requires_grad_()
    _, y, z = _problem(B=3, C=1)

    def prox(k, zi, yi):
        return Blur(k, **TIGHT).prox_l2(zi[None], yi[None], 0.6)[0]

    _loss(torch.func.vmap(prox)(kernels, z, y)).backward()
    loop = kernels.detach().clone().requires_grad_()
    out = torch.stack(
        [
            Blur(loop[i], implicit_backward_solver=False, **TIGHT).prox_l2(
                z[i : i + 1], y[i : i + 1], 0.6
            )[0]
            for i in range(3)
        ]
    )
    _loss(out).backward()
    assert rel(kernels.grad, loop.grad) < 1e-6


def test_forward_mode_jvp():
    """torch.func.jvp / jacfwd through the implicit prox (root_jvp): dh = M⁻¹ dz / γ, and the
    γ-derivative agrees with reverse mode."""
    physics = Blur(gaussian_blur(2.0, dtype=D), **TIGHT)  # 13×13 kernel: the FFT path
    x = torch.rand(2, 1, 16, 16, dtype=D)
    y, z, v = physics.A(x), torch.randn_like(x), torch.randn_like(x)
    _, tangent = torch.func.jvp(lambda zz: physics.prox_l2(zz, y, 0.7), (z,), (v,))
    expected = least_squares(physics, torch.zeros_like(y), v, 0.7)  # (AᵀA + I/γ)⁻¹ v/γ
    assert rel(tangent, expected) < 1e-10
    gamma = torch.tensor(0.7, dtype=D)
    fwd = torch.func.jacfwd(lambda g: _loss(physics.prox_l2(z, y, g)))(gamma)
    rev = torch.func.grad(lambda g: _loss(physics.prox_l2(z, y, g)))(gamma)
    assert rel(fwd, rev) < 1e-8


def test_fixed_iteration_count_does_not_warn():
    # tol=0 asks for exactly max_iter CG iterations: no tolerance, so no ConvergenceWarning.
    from unroll import physics as P

    ph = P.Blur(P.gaussian_blur(2.5), padding="valid", max_iter=25, tol=0.0)
    z = torch.rand(1, 1, 32, 32, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ph.prox_l2(z, ph.A(torch.rand(1, 1, 32, 32)), 1.0).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("bad", [[1.0, float("nan")], [0.0, 1.0], [-1.0, 1.0]])
def test_tensor_gamma_must_be_positive_everywhere(bad):
    from unroll import physics as P

    ph = P.Blur(torch.rand(1, 1, 3, 3, dtype=torch.float64), padding="valid")
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="gamma must be > 0 everywhere"):
        ph.prox_l2(x, ph.A(x), torch.tensor(bad, dtype=torch.float64))
