"""Operators of unroll.physics: adjoints, conventions, closed-form proxes and pseudo-inverses,
pytree behaviour, noise and input validation. All numerical checks in float64 against
independent references (dense matrices, torch.nn.functional, torch.func.vjp, torch.linalg)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from unroll import tree
from unroll.physics import (
    MRI,
    Blur,
    BlurFFT,
    ComposedPhysics,
    CompressedSensing,
    Denoising,
    GaussianNoise,
    Inpainting,
    LinearPhysics,
    MultiCoilMRI,
    compose,
    gaussian_blur,
    least_squares,
)

D = torch.float64
C64 = torch.complex128


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rand(*shape, dtype=D):
    return torch.randn(*shape, dtype=dtype)


def real_dot(a, b):
    return tree.vdot(a, b).real


# ---------------------------------------------------------------------- operator table
def _mri_mask(H=8, W=8, B=None):
    shape = (H, W) if B is None else (B, H, W)
    return (torch.rand(shape) > 0.4).to(D)


def _operators():
    """(id, physics, input example) covering every operator, padding and input format."""
    ops = []
    for padding in ("valid", "circular", "reflect", "replicate", "zeros"):
        for fshape in [(1, 1, 5, 4), (1, 3, 3, 3), (2, 1, 4, 5), (2, 3, 3, 2)]:
            ops.append(
                (
                    f"blur-{padding}-{fshape}",
                    lambda p=padding, s=fshape: (
                        Blur(torch.rand(s, dtype=D), padding=p),
                        rand(2, 3, 9, 10),
                    ),
                )
            )
        for fshape in [(1, 1, 11, 10), (2, 3, 10, 12)]:  # large kernels: the FFT path
            ops.append(
                (
                    f"blur-{padding}-{fshape}",
                    lambda p=padding, s=fshape: (
                        Blur(torch.rand(s, dtype=D), padding=p),
                        rand(2, 3, 14, 13),
                    ),
                )
            )
    ops += [
        (
            "blurfft-shared",
            lambda: (BlurFFT(torch.rand(1, 1, 4, 5, dtype=D), (3, 8, 9)), rand(2, 3, 8, 9)),
        ),
        (
            "blurfft-per-sample",
            lambda: (BlurFFT(torch.rand(2, 3, 3, 3, dtype=D), (8, 8)), rand(2, 3, 8, 8)),
        ),
        ("inpainting", lambda: (Inpainting(torch.rand(3, 6, 7, dtype=D)), rand(2, 3, 6, 7))),
        (
            "inpainting-per-sample",
            lambda: (Inpainting(torch.rand(2, 3, 6, 7, dtype=D)), rand(2, 3, 6, 7)),
        ),
        ("denoising", lambda: (Denoising(), rand(2, 3, 5, 5))),
        ("mri-complex", lambda: (MRI(_mri_mask()), rand(2, 8, 8, dtype=C64))),
        ("mri-complex-4d-per-sample", lambda: (MRI(_mri_mask(B=2)), rand(2, 3, 8, 8, dtype=C64))),
        ("mri-real-2ch", lambda: (MRI(_mri_mask()), rand(2, 2, 8, 8))),
        (
            "multicoil-complex",
            lambda: (MultiCoilMRI(_mri_mask(), rand(4, 8, 8, dtype=C64)), rand(2, 8, 8, dtype=C64)),
        ),
        (
            "multicoil-real-per-sample",
            lambda: (MultiCoilMRI(_mri_mask(B=2), rand(2, 3, 8, 8, dtype=C64)), rand(2, 2, 8, 8)),
        ),
        ("cs", lambda: (CompressedSensing(20, (2, 4, 4), seed=3, dtype=D), rand(2, 2, 4, 4))),
        (
            "composed",
            lambda: (
                Inpainting(torch.rand(1, 8, 8, dtype=D))
                * Blur(torch.rand(1, 1, 3, 3, dtype=D), padding="reflect"),
                rand(2, 1, 8, 8),
            ),
        ),
        ("custom", lambda: (_diag_physics(), rand(2, 6))),
    ]
    return ops


def _diag_physics():
    d = torch.linspace(0.5, 2.0, 6, dtype=D)
    return LinearPhysics(lambda x: d * x, lambda y: d * y)


OPERATORS = _operators()
IDS = [name for name, _ in OPERATORS]


@pytest.mark.parametrize("make", [m for _, m in OPERATORS], ids=IDS)
def test_adjoint_dot_product(make):
    physics, x = make()
    y = rand(*physics.A(x).shape, dtype=physics.A(x).dtype)
    lhs = tree.vdot(physics.A(x), y)
    rhs = tree.vdot(x, physics.A_adjoint(y))
    scale = tree.norm(physics.A(x)) * tree.norm(y)
    assert abs(lhs - rhs) <= 1e-10 * scale
    assert physics.A_adjoint(y).shape == x.shape


@pytest.mark.parametrize("make", [m for _, m in OPERATORS], ids=IDS)
def test_adjoint_matches_vjp(make):
    physics, x = make()
    out, vjp = torch.func.vjp(physics.A, x)
    y = rand(*out.shape, dtype=out.dtype)
    (expected,) = vjp(y)
    assert torch.allclose(physics.A_adjoint(y), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("make", [m for _, m in OPERATORS], ids=IDS)
def test_normal_operator(make):
    physics, x = make()
    assert torch.allclose(
        physics.A_adjoint_A(x), physics.A_adjoint(physics.A(x)), rtol=1e-10, atol=1e-12
    )


# ---------------------------------------------------------------------- conventions
def _blur_reference(x, k, padding):
    """Per-channel convolution by explicit sums: y[i, j] = Σ_ab k[a, b] x[i - a + c_h, j - b + c_w]
    for the 'same' modes (with the boundary extension), valid: y = full conv cropped."""
    B, C, H, W = x.shape
    h, w = k.shape[-2:]
    kk = k.expand(B, C, h, w)
    if padding == "valid":
        out = torch.zeros(B, C, H - h + 1, W - w + 1, dtype=x.dtype)
        for a in range(h):
            for b in range(w):
                out += (
                    kk[:, :, a : a + 1, b : b + 1] * x[:, :, h - 1 - a : H - a, w - 1 - b : W - b]
                )
        return out
    mode = {"zeros": "constant"}.get(padding, padding)
    top, left = h // 2, w // 2
    xp = F.pad(x, (w, w, h, h), mode=mode)  # generous padding, then shift
    out = torch.zeros_like(x)
    for a in range(h):
        for b in range(w):
            r0, c0 = h - a + top, w - b + left
            out += kk[:, :, a : a + 1, b : b + 1] * xp[:, :, r0 : r0 + H, c0 : c0 + W]
    return out


@pytest.mark.parametrize("padding", ["valid", "circular", "reflect", "replicate", "zeros"])
@pytest.mark.parametrize("ksize", [(3, 3), (4, 5), (11, 10)])
def test_blur_matches_explicit_convolution(padding, ksize):
    x = rand(2, 3, 13, 14)
    k = torch.rand(1, 3, *ksize, dtype=D)
    got = Blur(k, padding=padding).A(x)
    assert torch.allclose(got, _blur_reference(x, k, padding), atol=1e-12)


@pytest.mark.parametrize("ksize", [(5, 5), (4, 3)])
def test_blurfft_equals_circular_blur(ksize):
    k = torch.rand(2, 1, *ksize, dtype=D)
    x = rand(2, 3, 9, 8)
    fft, direct = BlurFFT(k, (3, 9, 8)), Blur(k, padding="circular")
    assert torch.allclose(fft.A(x), direct.A(x), atol=1e-12)
    y = rand(2, 3, 9, 8)
    assert torch.allclose(fft.A_adjoint(y), direct.A_adjoint(y), atol=1e-12)


def test_gaussian_blur_kernel():
    k = gaussian_blur(2.5)
    c = int(2.5 / 0.3 + 1)
    assert k.shape == (1, 1, 2 * c + 1, 2 * c + 1)
    u = torch.arange(-c, c + 1, dtype=k.dtype)
    ref = torch.exp(-(u[:, None] ** 2 + u[None, :] ** 2) / (2 * 2.5**2))
    assert torch.allclose(k[0, 0], ref / ref.sum(), atol=1e-7)
    # anisotropic: (sigma_h, sigma_w); rotating by 90 degrees swaps the axes
    a = gaussian_blur((1.0, 2.0), dtype=D)
    b = gaussian_blur((2.0, 1.0), angle=90.0, dtype=D)
    assert torch.allclose(a, b, atol=1e-12)
    assert a[0, 0, :, a.shape[-1] // 2].std() < a[0, 0, a.shape[-2] // 2, :].std()
    with pytest.raises(ValueError, match="gaussian_blur"):
        gaussian_blur(0.0)


def test_mri_is_masked_unitary_fourier():
    mask = _mri_mask(8, 8)
    x = rand(2, 8, 8, dtype=C64)
    physics = MRI(mask)
    # dense DFT matrix as an independent reference (centred: shifts around the DFT)
    n = 8
    j = torch.arange(n, dtype=D)
    dft = torch.exp(-2j * math.pi * torch.outer(j, j) / n) / math.sqrt(n)
    shifted = torch.fft.ifftshift(x, dim=(-2, -1))
    k = torch.fft.fftshift(dft @ shifted @ dft.T, dim=(-2, -1))
    assert torch.allclose(physics.A(x), mask * k, atol=1e-12)
    # the 2-channel real representation is the same operator
    xr = torch.stack([x.real, x.imag], dim=1)
    yr = physics.A(xr)
    assert torch.allclose(torch.complex(yr[:, 0], yr[:, 1]), physics.A(x), atol=1e-12)


def test_multicoil_with_one_unit_coil_is_mri():
    mask = _mri_mask()
    x = rand(2, 8, 8, dtype=C64)
    multi = MultiCoilMRI(mask, torch.ones(1, 8, 8, dtype=C64))
    assert torch.allclose(multi.A(x)[:, 0], MRI(mask).A(x), atol=1e-12)


def test_compressed_sensing_matrix_and_seed():
    a = CompressedSensing(30, 50, seed=7, dtype=D)
    b = CompressedSensing(30, 50, seed=7, dtype=D)
    c = CompressedSensing(30, 50, seed=8, dtype=D)
    assert torch.equal(a.matrix, b.matrix) and not torch.equal(a.matrix, c.matrix)
    x = rand(4, 50)
    assert torch.allclose(a.A(x), x @ a.matrix.T)
    # entries ~ N(0, 1/m): E‖Φ x‖² = ‖x‖² (loose statistical check)
    big = CompressedSensing(400, 300, seed=1, dtype=D)
    assert abs(float(big.matrix.var() * 400) - 1.0) < 0.02


def test_composition_order():
    mask = torch.rand(1, 8, 8, dtype=D)
    blur = Blur(torch.rand(1, 1, 3, 3, dtype=D), padding="circular")
    x = rand(2, 1, 8, 8)
    physics = compose(Inpainting(mask), blur)
    assert isinstance(physics, ComposedPhysics)
    assert torch.allclose(physics.A(x), mask * blur.A(x))
    nested = ComposedPhysics(physics, Denoising())
    assert len(nested.operators) == 3
    assert tree.leaves(physics) == [mask, blur.filter]


# ---------------------------------------------------------------------- dense references
def dense_matrix(fn, shape, dtype=D):
    """Matrix of a linear map on tensors of ``shape`` (one sample), by applying it to the
    identity basis."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=dtype).reshape(n, *shape)
    cols = torch.stack([fn(e.unsqueeze(0)).reshape(-1) for e in eye], dim=1)
    return cols


def dense_prox(physics, z, y, gamma):
    """Per-sample dense solve of (AᵀA + I/γ) h = Aᵀy + z/γ (real operators)."""
    out = []
    for i in range(z.shape[0]):
        sub = _sample(physics, i)
        A = dense_matrix(sub.A, z.shape[1:])
        g = gamma[i] if gamma.dim() >= 1 else gamma
        g = g.reshape(-1) if g.dim() > 0 else g
        n = A.shape[1]
        lhs = A.T @ A + torch.diag(torch.ones(n, dtype=D) / g * torch.ones(n, dtype=D))
        rhs = A.T @ y[i].reshape(-1) + z[i].reshape(-1) / g
        out.append(torch.linalg.solve(lhs, rhs).reshape(z.shape[1:]))
    return torch.stack(out)


def _sample(physics, i):
    """The physics of sample ``i`` (per-sample leaves sliced)."""
    leaves, spec = tree.flatten(physics)
    return tree.unflatten(
        spec, [t[i : i + 1] if t.dim() >= 4 and t.shape[0] > 1 else t for t in leaves]
    )


GAMMAS = {
    "float": lambda z: 0.7,
    "0-dim": lambda z: torch.tensor(1.3, dtype=D),
    "per-sample": lambda z: torch.tensor([0.4, 2.0], dtype=D),
    "full": lambda z: 0.5 + torch.rand(z.shape, dtype=D),
}


def _as_tensor(gamma, z):
    g = torch.as_tensor(gamma, dtype=D)
    return g.reshape(-1, *[1] * (z.dim() - 1)) if g.dim() == 1 else g


@pytest.mark.parametrize("gname", list(GAMMAS))
@pytest.mark.parametrize(
    "kind", ["blur-valid", "blur-reflect", "blurfft", "inpainting", "denoising", "cs"]
)
def test_prox_against_dense_solve(kind, gname):
    z = rand(2, 2, 6, 6)
    physics = {
        "blur-valid": lambda: Blur(torch.rand(2, 1, 3, 3, dtype=D), tol=1e-12, max_iter=500),
        "blur-reflect": lambda: Blur(
            torch.rand(1, 2, 3, 2, dtype=D), padding="reflect", tol=1e-12, max_iter=500
        ),
        "blurfft": lambda: BlurFFT(
            torch.rand(2, 1, 3, 3, dtype=D), (2, 6, 6), tol=1e-12, max_iter=500
        ),
        "inpainting": lambda: Inpainting(torch.rand(2, 2, 6, 6, dtype=D)),
        "denoising": lambda: Denoising(),
        "cs": lambda: CompressedSensing(30, (2, 6, 6), seed=0, dtype=D, tol=1e-12, max_iter=500),
    }[kind]()
    y = physics.A(rand(2, 2, 6, 6)) + 0.1 * rand(*physics.A(z).shape)
    gamma = GAMMAS[gname](z)
    h = physics.prox_l2(z, y, gamma)
    ref = dense_prox(
        physics,
        z,
        y,
        _as_tensor(gamma, z).expand(z.shape)
        if gname == "full"
        else torch.as_tensor(gamma, dtype=D),
    )
    assert torch.allclose(h, ref, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("gname", list(GAMMAS))
@pytest.mark.parametrize("kind", ["mri-complex", "mri-2ch", "blurfft", "inpainting", "denoising"])
def test_closed_form_prox_against_cg(kind, gname):
    if kind.startswith("mri"):
        physics = MRI(torch.rand(2, 8, 8, dtype=D), tol=1e-13, max_iter=1000)
        z = rand(2, 8, 8, dtype=C64) if kind == "mri-complex" else rand(2, 2, 8, 8)
    elif kind == "blurfft":
        physics = BlurFFT(torch.rand(1, 1, 3, 4, dtype=D), (8, 8), tol=1e-13, max_iter=1000)
        z = rand(2, 3, 8, 8)
    elif kind == "inpainting":
        physics, z = Inpainting((torch.rand(1, 8, 8) > 0.5).to(D)), rand(2, 3, 8, 8)
    else:
        physics, z = Denoising(), rand(2, 3, 8, 8)
    y = physics.A(rand(*z.shape, dtype=z.dtype))
    gamma = GAMMAS[gname](z.real if z.is_complex() else z)
    closed = physics.prox_l2(z, y, gamma)
    cg = least_squares(physics, y, z, gamma, tol=1e-13, max_iter=1000)
    assert torch.allclose(closed, cg, rtol=1e-9, atol=1e-10)
    # and it satisfies the optimality condition Aᵀ(Ah − y) + (h − z)/γ = 0
    g = _as_tensor(gamma, z.real if z.is_complex() else z)
    if kind == "mri-complex" and g.dim() == 4:
        g = g.squeeze(1)
    res = physics.A_adjoint(physics.A(closed) - y) + (closed - z) / g
    assert tree.norm(res) <= 1e-10 * tree.norm(z)


@pytest.mark.parametrize(
    "kind", ["blur-circular", "blur-replicate", "multicoil", "composed", "cs", "custom"]
)
def test_cg_prox_optimality(kind):
    physics, x = {
        "blur-circular": lambda: (
            Blur(torch.rand(1, 1, 5, 5, dtype=D), padding="circular", tol=1e-12, max_iter=300),
            rand(2, 3, 10, 10),
        ),
        "blur-replicate": lambda: (
            Blur(torch.rand(2, 3, 4, 4, dtype=D), padding="replicate", tol=1e-12, max_iter=300),
            rand(2, 3, 10, 10),
        ),
        "multicoil": lambda: (
            MultiCoilMRI(_mri_mask(), rand(3, 8, 8, dtype=C64), tol=1e-12, max_iter=300),
            rand(2, 8, 8, dtype=C64),
        ),
        "composed": lambda: (
            compose(
                Inpainting(torch.rand(1, 8, 8, dtype=D)),
                Blur(torch.rand(1, 1, 3, 3, dtype=D), padding="zeros"),
                tol=1e-12,
                max_iter=300,
            ),
            rand(2, 1, 8, 8),
        ),
        "cs": lambda: (
            CompressedSensing(40, 60, seed=0, dtype=D, tol=1e-12, max_iter=300),
            rand(2, 60),
        ),
        "custom": lambda: (_diag_physics().replace(tol=1e-12), rand(2, 6)),
    }[kind]()
    y = physics.A(rand(*x.shape, dtype=x.dtype))
    gamma = torch.tensor([0.3, 3.0], dtype=D)
    h = physics.prox_l2(x, y, gamma)
    g = gamma.reshape(-1, *[1] * (x.dim() - 1))
    res = physics.A_adjoint(physics.A(h) - y) + (h - x) / g
    b = physics.A_adjoint(y) + x / g
    assert tree.norm(res) <= 1e-10 * tree.norm(b)


@pytest.mark.parametrize(
    "kind", ["blurfft", "inpainting", "mri", "cs", "custom-cg", "cs-as-generic-cg"]
)
def test_A_dagger_against_pinv(kind):
    if kind == "blurfft":
        physics, shape = BlurFFT(torch.rand(1, 1, 3, 3, dtype=D), (6, 6)), (1, 6, 6)
    elif kind == "inpainting":
        physics = Inpainting(torch.rand(1, 6, 6, dtype=D) * (torch.rand(1, 6, 6) > 0.3))
        shape = (1, 6, 6)
    elif kind == "mri":
        physics, shape = MRI(_mri_mask(6, 6)), (2, 6, 6)
    elif kind == "cs":
        physics, shape = CompressedSensing(20, 36, seed=0, dtype=D), (36,)
    elif kind == "custom-cg":
        physics, shape = _diag_physics().replace(tol=1e-12), (6,)
    else:
        cs = CompressedSensing(20, 36, seed=0, dtype=D)
        physics = LinearPhysics(cs.A, cs.A_adjoint, tol=1e-13, max_iter=500)
        shape = (36,)
    A = dense_matrix(physics.A, shape)
    y = physics.A(rand(2, *shape)) + 0.1 * rand(*physics.A(rand(2, *shape)).shape)
    ref = (torch.linalg.pinv(A) @ y.reshape(2, -1).T).T.reshape(2, *shape)
    assert torch.allclose(physics.A_dagger(y), ref, rtol=1e-8, atol=1e-9)


# ---------------------------------------------------------------------- pytree behaviour
def test_physics_is_a_pytree_and_immutable():
    k = torch.rand(1, 1, 3, 3, dtype=D)
    noise = GaussianNoise(torch.tensor(0.1, dtype=D))
    physics = Blur(k, padding="reflect", max_iter=7, tol=1e-3, noise_model=noise)
    leaves, spec = tree.flatten(physics)
    assert leaves[0] is k and leaves[1] is noise.sigma and len(leaves) == 2
    rebuilt = tree.unflatten(spec, [2 * k, noise.sigma])
    assert isinstance(rebuilt, Blur) and rebuilt.padding == "reflect" and rebuilt.max_iter == 7
    assert torch.equal(rebuilt.filter, 2 * k)
    # torch.utils._pytree sees the same leaves (what torch.func.vmap uses)
    import torch.utils._pytree as tp

    assert len(tp.tree_leaves(physics)) == 2
    # per-call options do not change the object
    x = rand(2, 1, 8, 8)
    physics.prox_l2(x, physics.A(x), 1.0, max_iter=3, tol=0.0, implicit_backward_solver=False)
    assert (physics.max_iter, physics.tol, physics.implicit_backward_solver) == (7, 1e-3, True)
    copy = physics.replace(max_iter=50)
    assert copy.max_iter == 50 and physics.max_iter == 7 and copy.filter is k
    with pytest.raises(TypeError, match="replace"):
        physics.replace(maxiter=3)


def test_vmap_over_a_batch_of_physics():
    kernels = torch.rand(3, 1, 1, 3, 3, dtype=D)
    singles = [Blur(k, padding="circular", tol=1e-12, max_iter=200) for k in kernels]
    stacked = tree.map(lambda *t: torch.stack(t), *singles)  # one Blur with batched leaves
    assert isinstance(stacked, Blur) and stacked.filter.shape == (3, 1, 1, 3, 3)
    x = rand(3, 2, 1, 8, 8)

    def prox(p, xi):
        return p.prox_l2(xi, p.A(xi), 0.5)

    batched = torch.func.vmap(prox)(stacked, x)
    built_inside = torch.func.vmap(
        lambda k, xi: prox(Blur(k, padding="circular", tol=1e-12, max_iter=200), xi)
    )(kernels, x)
    for i in range(3):
        expected = prox(singles[i], x[i])
        assert torch.allclose(batched[i], expected, atol=1e-10)
        assert torch.allclose(built_inside[i], expected, atol=1e-10)


def test_gaussian_noise():
    y = torch.zeros(2, 100_000, dtype=D)
    out = GaussianNoise(torch.tensor([0.1, 0.5], dtype=D))(y)
    assert torch.allclose(out.std(dim=1), torch.tensor([0.1, 0.5], dtype=D), rtol=0.02)
    assert abs(float(out[0].mean())) < 0.01
    physics = Denoising(GaussianNoise(0.2))
    x = torch.ones(1, 200_000, dtype=D)
    assert abs(float((physics(x) - x).std()) - 0.2) < 0.004
    noiseless = Blur(torch.ones(1, 1, 1, 1, dtype=D), padding="valid")
    x = rand(1, 1, 5, 5)
    assert torch.equal(noiseless(x), x)
    with pytest.raises(ValueError, match="GaussianNoise"):
        GaussianNoise(-1.0)


def test_gaussian_noise_rejects_negative_tensor_sigma():
    with pytest.raises(ValueError, match="^GaussianNoise: sigma must be >= 0"):
        GaussianNoise(torch.tensor(-1.0, dtype=D))
    with pytest.raises(ValueError, match="^GaussianNoise: sigma must be >= 0"):
        GaussianNoise(torch.tensor([0.1, -0.1], dtype=D))
    GaussianNoise(torch.tensor(0.0, dtype=D))  # zero noise is allowed
    # under vmap the check reads the whole underlying batch; valid levels pass through
    draw = torch.func.vmap(
        lambda s: GaussianNoise(s)(torch.zeros(3, dtype=D)), randomness="different"
    )
    assert draw(torch.tensor([0.1, 0.2], dtype=D)).shape == (2, 3)
    with pytest.raises(ValueError, match="^GaussianNoise: sigma must be >= 0"):
        draw(torch.tensor([0.1, -0.2], dtype=D))
    # under grad the level stays differentiable
    g = torch.func.grad(lambda s: GaussianNoise(s)(torch.ones(4, dtype=D)).sum())
    assert g(torch.tensor(0.1, dtype=D)).shape == ()


# ---------------------------------------------------------------------- validation
def test_errors():
    blur = Blur(torch.rand(1, 1, 5, 5, dtype=D), padding="valid")
    x = rand(2, 1, 8, 8)
    y = blur.A(x)
    with pytest.raises(ValueError, match="least_squares"):  # y does not match A(x)
        least_squares(blur, rand(2, 1, 6, 6), x, 1.0)
    with pytest.raises(ValueError, match="gamma"):
        blur.prox_l2(x, y, 0.0)
    with pytest.raises(ValueError, match="gamma"):
        blur.prox_l2(x, y, -1.0)
    with pytest.raises(ValueError, match="gamma"):
        blur.prox_l2(x, y, torch.tensor([1.0, -2.0], dtype=D))
    with pytest.raises(ValueError, match="gamma"):
        blur.prox_l2(x, y, torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match="larger than"):
        blur.A(rand(2, 1, 4, 8))
    with pytest.raises(ValueError, match="Blur"):
        Blur(torch.rand(1, 1, 3, 3), padding="same")
    with pytest.raises(TypeError, match="complex"):
        blur.A(rand(2, 1, 8, 8, dtype=C64))
    with pytest.raises(TypeError, match="complex"):
        CompressedSensing(4, 9, dtype=D).A(rand(2, 9, dtype=C64))
    with pytest.raises(ValueError, match="B, C, H, W"):
        blur.A(rand(8, 8))
    with pytest.raises(ValueError, match="filter"):
        Blur(torch.rand(3, 1, 3, 3, dtype=D)).A(x)
    with pytest.raises(ValueError, match="mask"):
        Inpainting(torch.rand(1, 7, 8, dtype=D)).A(x)
    with pytest.raises(ValueError, match="mask"):
        MRI(torch.rand(6, 8, dtype=D)).A(rand(2, 8, 8, dtype=C64))
    with pytest.raises(ValueError, match="real"):
        MRI(torch.rand(8, 8, dtype=D)).A(rand(2, 3, 8, 8))
    with pytest.raises(TypeError, match="mask"):
        MRI(torch.rand(8, 8, dtype=C64))
    with pytest.raises(ValueError, match="img_size"):
        BlurFFT(torch.rand(3, 3, dtype=D), (8, 8)).A(rand(1, 1, 8, 9))
    with pytest.raises(ValueError, match="max_iter"):
        Blur(torch.rand(3, 3), max_iter=0)
    with pytest.raises(ValueError, match="max_iter"):
        least_squares(blur, y, x, 1.0, max_iter=-1)
    with pytest.raises(ValueError, match="z is only used"):
        least_squares(blur, y, x, None)
    with pytest.raises(TypeError, match="LinearPhysics"):
        LinearPhysics(lambda x: x)
    with pytest.raises(TypeError, match="least_squares"):
        least_squares(lambda x: x, y, x, 1.0)
