"""The exact prox of a separable blur (Kronecker eigendecomposition) against dense solves.

References are independent: the dense matrix of ``Blur.A`` (built by applying it to the
identity, differentiable in the kernel) and ``torch.linalg.solve`` of the normal equations,
differentiated by autograd.
"""

from __future__ import annotations

import pytest
import torch

from unroll import tree
from unroll.linear_solve import ConvergenceError, ConvergenceWarning
from unroll.physics import Blur, gaussian_blur
from unroll.physics._separable import rank_one_factors

D = torch.float64
PADDINGS = ("valid", "circular", "reflect", "replicate", "zeros")


def dense_blur(kernel: torch.Tensor, padding: str, size: tuple[int, int]) -> torch.Tensor:
    """The matrix of the 2-D blur of one ``(1, 1, h, w)`` kernel on ``size`` images."""
    n = size[0] * size[1]
    basis = torch.eye(n, dtype=D).reshape(n, 1, *size)
    return Blur(kernel, padding).A(basis).reshape(n, -1).T


def dense_prox(kernel, padding, z, y, gamma):
    """``(AᵀA + I/γ)⁻¹(Aᵀy + z/γ)`` per image and channel; ``kernel`` ``(b, c, h, w)``,
    ``gamma`` ``(B,)``; differentiable in everything."""
    B, C, H, W = z.shape
    out = []
    for i in range(B):
        for c in range(C):
            k = kernel[i % kernel.shape[0], c % kernel.shape[1]][None, None]
            A = dense_blur(k, padding, (H, W))
            M = A.T @ A + torch.eye(H * W, dtype=D) / gamma[i]
            rhs = A.T @ y[i, c].reshape(-1) + z[i, c].reshape(-1) / gamma[i]
            out.append(torch.linalg.solve(M, rhs).reshape(H, W))
    return torch.stack(out).reshape(B, C, H, W)


def separable_kernel(h: int, w: int, stack: tuple[int, int] = (1, 1), seed: int = 0):
    """Random positive rank-one kernels ``u vᵀ`` of shape ``(*stack, h, w)``."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(*stack, h, 1, generator=gen, dtype=D) + 0.1
    v = torch.rand(*stack, 1, w, generator=gen, dtype=D) + 0.1
    k = u * v
    return k / k.sum((-2, -1), keepdim=True)


def problem(kernel, padding, shape=(3, 2, 9, 8), seed=1):
    gen = torch.Generator().manual_seed(seed)
    z = torch.rand(shape, generator=gen, dtype=D)
    y = Blur(kernel, padding).A(torch.rand(shape, generator=gen, dtype=D))
    return z, y


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("size", [(5, 3), (4, 2)])
def test_prox_equals_the_dense_solve(padding, size):
    kernel = separable_kernel(*size)
    z, y = problem(kernel, padding)
    gamma = torch.tensor([0.5, 2.0, 30.0], dtype=D)
    # tol=max_iter=1 with on_failure="raise": a CG prox could not pass, the exact one does
    physics = Blur(kernel, padding, max_iter=1, tol=1e-14)
    h = physics.prox_l2(z, y, gamma, on_failure="raise")
    torch.testing.assert_close(h, dense_prox(kernel, padding, z, y, gamma), rtol=0, atol=1e-12)
    scalar = physics.prox_l2(z, y, 2.0, on_failure="raise")
    full = torch.full((3,), 2.0, dtype=D)
    torch.testing.assert_close(scalar, dense_prox(kernel, padding, z, y, full), rtol=0, atol=1e-12)


def test_per_sample_and_per_channel_kernels():
    kernel = separable_kernel(5, 3, stack=(3, 2), seed=4)
    z, y = problem(kernel, "replicate")
    gamma = torch.tensor([0.5, 2.0, 30.0], dtype=D)
    h = Blur(kernel, "replicate", max_iter=1).prox_l2(z, y, gamma, on_failure="raise")
    torch.testing.assert_close(h, dense_prox(kernel, "replicate", z, y, gamma), rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding", ["replicate", "valid"])
def test_gradients_equal_the_dense_solves(padding):
    kernel = separable_kernel(4, 3).requires_grad_()
    z, y = problem(kernel.detach(), padding)
    z.requires_grad_()
    y.requires_grad_()
    gamma = torch.tensor([0.5, 2.0, 7.0], dtype=D, requires_grad=True)
    w = torch.randn(z.shape, generator=torch.Generator().manual_seed(2), dtype=D)
    inputs = (kernel, z, y, gamma)
    # first order: the exact solve applied to the cotangent
    ours = torch.autograd.grad((Blur(kernel, padding).prox_l2(z, y, gamma) * w).sum(), inputs)
    ref = torch.autograd.grad((dense_prox(kernel, padding, z, y, gamma) * w).sum(), inputs)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # second order: CG on the linearised optimality condition at the physics' tol
    tight = Blur(kernel, padding, tol=1e-13, max_iter=500)
    first = torch.autograd.grad((tight.prox_l2(z, y, gamma) * w).sum(), inputs, create_graph=True)
    dense_first = torch.autograd.grad(
        (dense_prox(kernel, padding, z, y, gamma) * w).sum(), inputs, create_graph=True
    )
    v = torch.randn(kernel.shape, generator=torch.Generator().manual_seed(3), dtype=D)

    def outer(g):
        return (g[0] * v).sum() + g[3].square().sum()

    second = torch.autograd.grad(outer(first), (kernel, z, gamma))
    dense_second = torch.autograd.grad(outer(dense_first), (kernel, z, gamma))
    for a, b in zip(second, dense_second):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_gaussian_kernels_are_separable_and_rotated_ones_are_not():
    for sigma, dtype in ((0.5, torch.float32), (1.5, torch.float32), (3.0, D)):
        k = gaussian_blur(sigma, dtype=dtype)
        u, v = rank_one_factors(k)
        torch.testing.assert_close(
            (u[..., :, None] * v[..., None, :]).to(dtype), k, rtol=0, atol=1e-7
        )
    assert rank_one_factors(gaussian_blur((2.0, 0.7), angle=30)) is None
    assert rank_one_factors(torch.ones(1, 1, 5, 5) / 25) is not None


def test_cg_runs_where_the_closed_form_does_not_apply():
    """Each excluded case takes CG: with max_iter=1 and on_failure="raise" it raises."""
    sep = separable_kernel(5, 3)
    z, y = problem(sep, "reflect")
    cases = {
        "not separable": (Blur(gaussian_blur((2.0, 0.7), angle=30, dtype=D), "reflect"), 2.0),
        "per-pixel gamma": (Blur(sep, "reflect"), torch.full_like(z, 2.0)),
        "switched off": (Blur(sep, "reflect", separable_prox=False), 2.0),
        "other solver": (Blur(sep, "reflect", solver="minres"), 2.0),
        "through CG": (Blur(sep, "reflect", implicit_backward_solver=False), 2.0),
    }
    for name, (physics, gamma) in cases.items():
        zz, yy = (z, y) if name != "not separable" else problem(physics.filter, "reflect")
        with pytest.raises(ConvergenceError, match="least_squares"):
            physics.prox_l2(zz, yy, gamma, max_iter=1, on_failure="raise")
    # the same CG prox as the closed form, to its tolerance, in each case
    exact = Blur(sep, "reflect").prox_l2(z, y, 2.0)
    off = Blur(sep, "reflect", separable_prox=False, tol=1e-12, max_iter=500)
    torch.testing.assert_close(off.prox_l2(z, y, 2.0), exact, rtol=0, atol=1e-10)


def test_vmap_runs_cg_and_agrees():
    sep = separable_kernel(5, 3)
    z, y = problem(sep, "replicate")
    physics = Blur(sep, "replicate", tol=1e-12, max_iter=500)
    batched = torch.func.vmap(lambda zi, yi: physics.prox_l2(zi[None], yi[None], 2.0)[0])(z, y)
    torch.testing.assert_close(batched, physics.prox_l2(z, y, 2.0), rtol=0, atol=1e-10)


def test_nan_measurements_warn_and_bad_shapes_raise():
    sep = separable_kernel(5, 3)
    z, y = problem(sep, "replicate")
    physics = Blur(sep, "replicate")
    bad = y.clone()
    bad[1, 0, 2, 2] = float("nan")
    with pytest.warns(ConvergenceWarning, match=r"^Blur.prox_l2 \(exact solve\).*1 of 3"):
        h = physics.prox_l2(z, bad, 2.0)
    # a float64 per-sample gamma with float32 images: the result stays float32, as with CG
    z32, y32 = z.float(), y.float()
    g64 = torch.tensor([0.5, 1.0, 2.0], dtype=D)
    h32 = Blur(sep.float(), "replicate").prox_l2(z32, y32, g64)
    assert h32.dtype == torch.float32
    ref = dense_prox(sep, "replicate", z32.double(), y32.double(), g64)
    torch.testing.assert_close(h32.double(), ref, rtol=0, atol=1e-5)
    assert torch.isfinite(h[0]).all() and torch.isfinite(h[2]).all()
    with pytest.raises(ValueError, match=r"^Blur.prox_l2: y has shape \(3, 2, 9, 7\)"):
        physics.prox_l2(z, y[..., :7], 2.0)
    with pytest.raises(TypeError, match="^Blur: separable_prox must be True or False"):
        Blur(sep, separable_prox="yes")


def test_the_switch_is_static_pytree_data():
    physics = Blur(separable_kernel(5, 3), "replicate", separable_prox=False)
    leaves, spec = tree.flatten(physics)
    assert tree.unflatten(spec, leaves).separable_prox is False
    assert physics.to(torch.float32).separable_prox is False


# --------------------------------------------------------------------------- Downsampling
def dense_downsampling_prox(physics, z, y, gamma):
    """The dense prox of a single-channel ``Downsampling`` (its matrix built from ``A``)."""
    H, W = z.shape[-2:]
    basis = torch.eye(H * W, dtype=D).reshape(H * W, 1, H, W)
    A = physics.A(basis).reshape(H * W, -1).T
    out = []
    for i in range(z.shape[0]):
        M = A.T @ A + torch.eye(H * W, dtype=D) / gamma[i]
        rhs = A.T @ y[i, 0].reshape(-1) + z[i, 0].reshape(-1) / gamma[i]
        out.append(torch.linalg.solve(M, rhs).reshape(H, W))
    return torch.stack(out)[:, None]


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("filt", ["gaussian", "bicubic", "bilinear"])
def test_downsampling_prox_is_exact_for_every_padding_and_size(padding, filt):
    from unroll.physics import Downsampling

    gen = torch.Generator().manual_seed(5)
    gamma = torch.tensor([0.7, 5.0], dtype=D)
    for size in ((16, 16), (17, 19)):  # circular 17×19: no Fourier closed form
        physics = Downsampling((1, *size), filt, 2, padding=padding, dtype=D, max_iter=1)
        z = torch.rand(2, 1, *size, generator=gen, dtype=D)
        y = physics.A(torch.rand(z.shape, generator=gen, dtype=D))
        h = physics.prox_l2(z, y, gamma, on_failure="raise")  # CG could not pass max_iter=1
        ref = dense_downsampling_prox(physics, z, y, gamma)
        torch.testing.assert_close(h, ref, rtol=0, atol=1e-12)


def test_downsampling_gradients_reach_the_filter():
    from unroll.physics import Downsampling

    gen = torch.Generator().manual_seed(6)
    kernel = separable_kernel(4, 3).requires_grad_()
    z = torch.rand(2, 1, 11, 9, generator=gen, dtype=D, requires_grad=True)
    gamma = torch.tensor([0.7, 5.0], dtype=D, requires_grad=True)
    w = torch.randn(z.shape, generator=gen, dtype=D)

    def loss(exact: bool):
        physics = Downsampling(
            (1, 11, 9),
            kernel,
            3,
            padding="reflect",
            separable_prox=exact,
            tol=1e-13,
            max_iter=1000,
        )
        y = physics.A(torch.ones(z.shape, dtype=D)).detach()
        return (physics.prox_l2(z, y, gamma) * w).sum()

    exact = torch.autograd.grad(loss(True), (kernel, z, gamma))
    by_cg = torch.autograd.grad(loss(False), (kernel, z, gamma))  # CG to 1e-13
    for a, b in zip(exact, by_cg):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    with pytest.raises(TypeError, match="^Downsampling: separable_prox must be True or False"):
        Downsampling((1, 8, 8), "gaussian", 2, separable_prox=1)
