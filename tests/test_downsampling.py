"""Downsampling (super-resolution) operator: adjoints, the operator against an explicit
convolution + stride, the closed-form circular prox against dense solves and CG, gradients,
vmap, the DeepInverse filters and input validation. All checks in float64 against independent
references (explicit sums, dense torch.linalg solves)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unroll import tree
from unroll.physics import (
    Downsampling,
    bicubic_filter,
    bilinear_filter,
    gaussian_blur,
    least_squares,
)

D = torch.float64
PADDINGS = ("circular", "valid", "reflect", "replicate", "zeros")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, dtype=D)


# ---------------------------------------------------------------------- references
def conv_reference(x, k, padding):
    """True convolution by explicit sums, kernel centred at (h // 2, w // 2):
    y[i, j] = Σ_ab k[a, b] x̃[i - a + h // 2, j - b + w // 2], x̃ the extended image;
    valid: the full convolution cropped to where no extension is needed."""
    B, C, H, W = x.shape
    h, w = k.shape[-2:]
    kk = k.expand(B, C, h, w)
    if padding == "valid":
        out = torch.zeros(B, C, H - h + 1, W - w + 1, dtype=x.dtype)
        for a in range(h):
            for b in range(w):
                out = (
                    out
                    + kk[:, :, a : a + 1, b : b + 1] * x[:, :, h - 1 - a : H - a, w - 1 - b : W - b]
                )
        return out
    mode = {"zeros": "constant"}.get(padding, padding)
    xp = F.pad(x, (w, w, h, h), mode=mode)
    out = torch.zeros_like(x)
    for a in range(h):
        for b in range(w):
            r0, c0 = h - a + h // 2, w - b + w // 2
            out = out + kk[:, :, a : a + 1, b : b + 1] * xp[:, :, r0 : r0 + H, c0 : c0 + W]
    return out


def downsample_reference(x, k, padding, factor):
    blurred = x if k is None else conv_reference(x, k, padding)
    return blurred[:, :, ::factor, ::factor]


def dense(fn, shape):
    """The matrix of a linear map on one sample of ``shape`` (one column per unit vector)."""
    n = int(torch.tensor(shape).prod())
    basis = torch.eye(n, dtype=D).reshape(n, *shape)
    return fn(basis).reshape(n, -1).T


def dense_prox(M, z, y, gamma):
    """Per-sample solve of (MᵀM + I/γ) h = Mᵀy + z/γ; M (m, n), gamma 0-dim or (B,)."""
    B = z.shape[0]
    n = M.shape[1]
    g = torch.as_tensor(gamma, dtype=D).expand(B)
    out = []
    for i in range(B):
        lhs = M.T @ M + torch.eye(n, dtype=D) / g[i]
        rhs = M.T @ y[i].reshape(-1) + z[i].reshape(-1) / g[i]
        out.append(torch.linalg.solve(lhs, rhs).reshape(z.shape[1:]))
    return torch.stack(out)


def make(filt, padding, size=(2, 9, 12), factor=3, **kw):
    if filt == "random":
        filt = torch.rand(1, 1, 3, 4, dtype=D)  # asymmetric, even width
    elif filt == "per-sample":
        filt = torch.rand(2, size[0], 3, 3, dtype=D)
    return Downsampling(size, filter=filt, factor=factor, padding=padding, dtype=D, **kw)


FILTERS = [None, "gaussian", "bicubic", "bilinear", "random", "per-sample"]


# ---------------------------------------------------------------------- operator
@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("filt", FILTERS)
@pytest.mark.parametrize("size", [(2, 16, 16), (2, 17, 15)])
def test_adjoint_dot_product(filt, padding, size):
    physics = make(filt, padding, size=size, factor=2)
    x = rand(2, *size)
    Ax = physics.A(x)
    y = rand(*Ax.shape)
    Aty = physics.A_adjoint(y)
    assert Aty.shape == x.shape
    lhs, rhs = tree.vdot(Ax, y), tree.vdot(x, Aty)
    assert abs(lhs - rhs) <= 1e-10 * tree.norm(Ax) * tree.norm(y)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("filt", [None, "bilinear", "random"])
@pytest.mark.parametrize("factor", [2, 3])
def test_A_matches_explicit_conv_and_stride(filt, padding, factor):
    physics = make(filt, padding, size=(1, 7, 8), factor=factor)
    shape = (1, 7, 8)
    M = dense(physics.A, shape)
    ref = dense(lambda x: downsample_reference(x, physics.filter, padding, factor), shape)
    assert M.shape == ref.shape
    assert torch.allclose(M, ref, atol=1e-12)
    # and the adjoint is the transposed matrix
    m_shape = physics.A(torch.zeros(1, *shape, dtype=D)).shape[1:]
    assert torch.allclose(dense(physics.A_adjoint, m_shape), ref.T, atol=1e-12)


def test_measurement_shapes_follow_deepinverse():
    x = rand(1, 3, 32, 32)
    assert Downsampling((3, 32, 32), "bicubic", 4, dtype=D).A(x).shape == (1, 3, 8, 8)
    # valid: blur shrinks the image by h - 1 first, then keep pixels 0, f, 2f, ...
    valid = Downsampling((3, 32, 32), "bilinear", 2, padding="valid", dtype=D)
    assert valid.A(x).shape == (1, 3, 15, 15)
    assert valid.measurement_size() == (15, 15) and valid.blurred_size() == (29, 29)


def test_gaussian_point_response():
    # DeepInverse's docstring example: a white pixel at (16, 16), gaussian filter, factor 2
    x = torch.zeros(1, 1, 32, 32)
    x[:, :, 16, 16] = 1
    y = Downsampling(filter="gaussian", img_size=(1, 32, 32), factor=2)(x)
    expected = torch.tensor([[0.0146, 0.0241, 0.0146], [0.0241, 0.0398, 0.0241]])
    assert torch.allclose(y[0, 0, 7:9, 7:10], expected, atol=5e-5)


# ---------------------------------------------------------------------- filters
def test_bilinear_and_bicubic_filters():
    for f in (1, 2, 3):
        u = [(-f + 0.5 + i) / f for i in range(2 * f)]
        w = torch.tensor([1 - abs(t) for t in u], dtype=D)
        ref = torch.outer(w, w) / torch.outer(w, w).sum()
        assert torch.allclose(bilinear_filter(f, dtype=D)[0, 0], ref, atol=1e-15)

        def cubic(t, a=-0.5):
            t = abs(t)
            if t <= 1:
                return (a + 2) * t**3 - (a + 3) * t**2 + 1
            return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a if t < 2 else 0.0

        u = [(-2 * f + 0.5 + i) / f for i in range(4 * f)]
        c = torch.tensor([cubic(t) for t in u], dtype=D)
        ref = torch.outer(c, c) / torch.outer(c, c).sum()
        assert torch.allclose(bicubic_filter(f, dtype=D)[0, 0], ref, atol=1e-15)
    assert bicubic_filter(2).dtype == torch.get_default_dtype()
    physics = Downsampling((1, 8, 8), "gaussian", 2, dtype=D)
    assert torch.equal(physics.filter, gaussian_blur(2.0, dtype=D))


# ---------------------------------------------------------------------- prox
GAMMAS = {
    "float": lambda: 0.7,
    "0-dim": lambda: torch.tensor(1.3, dtype=D),
    "per-sample": lambda: torch.tensor([0.4, 2.0], dtype=D),
    "large": lambda: 1e8,
}


@pytest.mark.parametrize("gname", list(GAMMAS))
@pytest.mark.parametrize(
    "filt,size,factor",
    [
        ("gaussian", (1, 16, 16), 2),
        ("bicubic", (1, 16, 16), 2),
        ("bilinear", (2, 9, 12), 3),
        ("random", (2, 9, 12), 3),
        ("per-sample", (2, 8, 6), 2),
    ],
)
def test_circular_prox_against_dense_solve_and_cg(filt, size, factor, gname):
    physics = make(filt, "circular", size=size, factor=factor)
    assert physics._fourier_ok()
    z = rand(2, *size)
    y = physics.A(rand(2, *size)) + 0.1 * rand(*physics.A(z).shape)
    gamma = GAMMAS[gname]()
    h = physics.prox_l2(z, y, gamma)
    ref = []
    for i in range(2):
        k = physics.filter[i : i + 1] if physics.filter.shape[0] == 2 else physics.filter
        M = dense(lambda x, k=k: downsample_reference(x, k, "circular", factor), size)
        g = torch.as_tensor(gamma, dtype=D).expand(2)[i]
        ref.append(dense_prox(M, z[i : i + 1], y[i : i + 1], g))
    ref = torch.cat(ref)
    scale = 1.0 if gname != "large" else 1e3  # conditioning of the γ → ∞ solve
    assert torch.allclose(h, ref, rtol=1e-9 * scale, atol=1e-9 * scale)
    cg = least_squares(physics, y, z, gamma, tol=1e-13, max_iter=3000)
    assert torch.allclose(h, cg, rtol=1e-8 * scale, atol=1e-8 * scale)
    assert torch.isfinite(h).all()


@pytest.mark.parametrize(
    "filt,padding,size",
    [
        ("bicubic", "reflect", (1, 16, 16)),
        ("random", "valid", (2, 9, 12)),
        ("random", "circular", (2, 10, 11)),  # not divisible by 3: CG fallback
        (None, "circular", (2, 7, 8)),
        (None, "valid", (2, 9, 12)),
    ],
)
def test_other_prox_paths_against_dense_solve(filt, padding, size):
    physics = make(filt, padding, size=size, factor=3, tol=1e-13, max_iter=3000)
    z = rand(2, *size)
    y = rand(*physics.A(z).shape)
    M = dense(lambda x: downsample_reference(x, physics.filter, padding, 3), size)
    for gamma in (0.6, torch.tensor([0.3, 3.0], dtype=D)):
        h = physics.prox_l2(z, y, gamma)
        assert torch.allclose(h, dense_prox(M, z, y, gamma), rtol=1e-8, atol=1e-9)


def test_no_filter_prox_with_full_shaped_gamma():
    physics = Downsampling((1, 5, 7), None, 2)
    z = rand(2, 1, 5, 7)
    y = rand(2, 1, 3, 4)
    g = 0.5 + torch.rand(2, 1, 5, 7, dtype=D)
    h = physics.prox_l2(z, y, g)
    keep = torch.zeros(5, 7, dtype=torch.bool)
    keep[::2, ::2] = True
    up = torch.zeros_like(z)
    up[..., ::2, ::2] = y
    expected = torch.where(keep, (up + z / g) / (1 + 1 / g), z)  # (m y + z/γ) / (m + 1/γ)
    assert torch.allclose(h, expected, atol=1e-14)


def test_prox_gradients_against_dense_solve():
    size, f = (1, 6, 8), 2
    k0 = torch.rand(1, 1, 3, 4, dtype=D)
    z0, y0 = rand(2, *size), rand(2, 1, 3, 4)
    v = rand(2, *size)

    def ours(z, y, gamma, k):
        physics = Downsampling(size, k, f, padding="circular")
        return (physics.prox_l2(z, y, gamma) * v).sum()

    def reference(z, y, gamma, k):
        M = dense(lambda x: downsample_reference(x, k, "circular", f), size)
        return (dense_prox(M, z, y, gamma) * v).sum()

    args = (z0, y0, torch.tensor(0.8, dtype=D), k0)
    args = [a.clone().requires_grad_() for a in args]
    g_ours = torch.autograd.grad(ours(*args), args)
    g_ref = torch.autograd.grad(reference(*args), args)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)
    # and the closed form against finite differences in γ (float64, central)
    eps = 1e-6
    with torch.no_grad():
        fd = (ours(z0, y0, 0.8 + eps, k0) - ours(z0, y0, 0.8 - eps, k0)) / (2 * eps)
    assert torch.allclose(g_ours[2], fd, rtol=1e-6)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("filt", ["gaussian", "bicubic", None, "custom"])
@pytest.mark.parametrize("size,factor", [((2, 32, 32), 2), ((1, 33, 31), 3)])
def test_normal_operator_equals_adjoint_of_A(filt, padding, size, factor):
    """The precomputed CG operator (FFT blur on the padded grid, decimation mask, scatter-add
    of the padding) is exactly A_adjoint(A(x)), per sample of a batch."""
    k = torch.rand(11, 10, dtype=D) if filt == "custom" else filt
    physics = Downsampling(size, k, factor, padding=padding, dtype=D)
    x = rand(3, *size)
    normal = physics.normal_operator(x)
    assert torch.allclose(normal(x), physics.A_adjoint(physics.A(x)), atol=1e-12)


@pytest.mark.parametrize("gname", ["scalar", "per_sample"])
def test_analytic_backward_of_the_closed_form(gname):
    """A filter without gradient takes the autograd.Function with the analytic VJP: its
    gradients (z, y, γ) equal the dense solve's, and grad of grad is exact (gradgradcheck)."""
    size, f = (2, 6, 8), 2
    physics = Downsampling(size, torch.rand(1, 1, 3, 4, dtype=D), f, padding="circular")
    M = dense(lambda x: downsample_reference(x, physics.filter, "circular", f), size)
    z0, y0, v = rand(3, *size), rand(3, 2, 3, 4), rand(3, *size)
    g0 = torch.tensor(0.8, dtype=D) if gname == "scalar" else torch.tensor([0.3, 1.0, 4.0], dtype=D)
    args = [a.clone().requires_grad_() for a in (z0, y0, g0)]
    out = physics.prox_l2(*args)
    assert type(out.grad_fn).__name__ == "_CircularProxBackward"
    g_ours = torch.autograd.grad((out * v).sum(), args)
    g_ref = torch.autograd.grad((dense_prox(M, *args) * v).sum(), args)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)
    assert torch.autograd.gradgradcheck(lambda z, y, g: physics.prox_l2(z, y, g), tuple(args))


def test_vmap_over_a_batch_equals_a_loop():
    size = (2, 8, 8)
    filters = torch.rand(3, 1, 1, 3, 3, dtype=D)
    z, y = rand(3, 1, *size), rand(3, 1, 2, 4, 4)
    gammas = torch.tensor([0.3, 1.0, 4.0], dtype=D)

    def prox(k, z, y, g):
        return Downsampling(size, k, 2).prox_l2(z, y, g)

    batched = torch.func.vmap(prox)(filters, z, y, gammas)
    looped = torch.stack([prox(filters[i], z[i], y[i], gammas[i]) for i in range(3)])
    assert torch.allclose(batched, looped, atol=1e-13)
    physics = Downsampling(size, "bilinear", 2, dtype=D)
    at = torch.func.vmap(physics.A_adjoint)(y)
    assert torch.allclose(at, torch.stack([physics.A_adjoint(y[i]) for i in range(3)]))


def test_pytree_and_precision():
    physics = Downsampling((1, 8, 8), "bicubic", 2)
    leaves, _ = tree.flatten(physics)
    assert len(leaves) == 1 and leaves[0] is physics.filter
    p64 = physics.to(D)
    assert p64.filter.dtype == D and physics.filter.dtype == torch.float32
    assert p64.factor == 2 and p64.padding == "circular"
    bare = Downsampling((1, 8, 8), None, 2)
    assert tree.flatten(bare)[0] == [] and bare.to(D).filter is None


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        ({"factor": 2.5}, TypeError, "Downsampling: factor must be a positive int"),
        ({"factor": True}, TypeError, "Downsampling: factor must be a positive int"),
        ({"factor": 0}, ValueError, "Downsampling: factor must be a positive int"),
        ({"filter": "bicubc"}, ValueError, "Downsampling: unknown filter 'bicubc' .*'bicubic'"),
        ({"filter": "sinc"}, ValueError, "Downsampling: unknown filter 'sinc'"),
        ({"filter": 3}, TypeError, "Downsampling: filter must be"),
        ({"padding": "circulr"}, ValueError, "Downsampling: unknown padding .*'circular'"),
        ({"img_size": (8,)}, ValueError, "Downsampling: img_size"),
        ({"img_size": (1, 0, 8)}, ValueError, "Downsampling: img_size"),
        (
            {"img_size": (1, 4, 4), "filter": "gaussian", "padding": "valid"},
            ValueError,
            "Downsampling: the 15x15 filter is larger",
        ),
    ],
)
def test_constructor_errors(kwargs, err, match):
    base = {"img_size": (1, 8, 8), "filter": "bilinear", "factor": 2}
    with pytest.raises(err, match=match):
        Downsampling(**{**base, **kwargs})


def test_call_errors():
    physics = Downsampling((1, 8, 8), "bilinear", 2, dtype=D)
    x, y = rand(2, 1, 8, 8), rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=r"Downsampling.A: x has shape \(2, 1, 8, 9\)"):
        physics.A(rand(2, 1, 8, 9))
    with pytest.raises(ValueError, match="Downsampling.A_adjoint: y has shape"):
        physics.A_adjoint(x)
    with pytest.raises(TypeError, match="Downsampling.A: the operator's filter is torch.float64"):
        physics.A(x.float())
    with pytest.raises(ValueError, match="Downsampling.prox_l2: y has shape"):
        physics.prox_l2(x, x, 1.0)
    for bad in (0.0, -1.0, float("inf"), float("nan"), torch.tensor([1.0, -2.0], dtype=D)):
        with pytest.raises(ValueError, match="Downsampling.prox_l2: gamma must be > 0"):
            physics.prox_l2(x, y, bad)
    with pytest.raises(TypeError, match="Downsampling.prox_l2: unknown option 'maxiter'"):
        physics.prox_l2(x, y, 1.0, maxiter=3)
    with pytest.raises(TypeError, match="bilinear_filter: factor must be a positive int"):
        bilinear_filter(1.5)
    with pytest.raises(ValueError, match="bicubic_filter: factor must be a positive int"):
        bicubic_filter(-2)
