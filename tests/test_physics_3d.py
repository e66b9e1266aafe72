"""3-D and dynamic physics (issue 14): 3-D Blur, MRI(three_d=True), DynamicMRI,
MultiCoilMRI(three_d=True / coil_maps=int), complex and fast CompressedSensing.

Every operator is checked in float64 against independent references: its dense matrix (built
column by column from ``A``), explicit sums, dense DFT / sine matrices, SigPy's birdcage formula
(in NumPy), dense least-squares solves and pseudo-inverses, and autograd through a converged
solve for the implicit gradients."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unroll import tree
from unroll.physics import (
    MRI,
    Blur,
    CompressedSensing,
    DynamicMRI,
    MultiCoilMRI,
    birdcage_maps,
    conv3d,
    conv_transpose3d,
)
from unroll.physics.compressed_sensing import dst1

D = torch.float64
C128 = torch.complex128


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def rand(*shape, dtype=D):
    return torch.randn(*shape, dtype=dtype)


# ---------------------------------------------------------------------- dense references
def dense(fn, x):
    """The matrix of the linear map ``fn`` at inputs shaped like ``x`` (column j = fn(e_j))."""
    n = x.numel()
    eye = torch.eye(n, dtype=x.dtype)
    cols = [fn(eye[j].reshape(x.shape)).reshape(-1) for j in range(n)]
    return torch.stack(cols, dim=1)


def dense_prox(M, z, y, gamma):
    """argmin ½‖M x − y‖² + 1/(2γ)‖x − z‖² for the whole (flattened) batch at once."""
    n = M.shape[1]
    g = torch.as_tensor(gamma, dtype=M.real.dtype).reshape(-1).expand(n)
    lhs = M.mH @ M + torch.diag(1 / g).to(M.dtype)
    rhs = M.mH @ y.reshape(-1).to(M.dtype) + z.reshape(-1).to(M.dtype) / g
    return torch.linalg.solve(lhs, rhs)


def _centred_dft(n):
    j = torch.arange(n, dtype=D) - n // 2
    return torch.exp(-2j * math.pi * torch.outer(j, j) / n) / math.sqrt(n)


def _mask(*shape):
    return (torch.rand(shape) > 0.4).to(D)


# ---------------------------------------------------------------------- the operator table
def _ops():
    """(id, factory -> (physics, x)) of every new operator and input layout."""
    ops = []
    for padding in ("valid", "circular", "reflect", "replicate", "zeros"):
        for fshape in [(1, 1, 3, 2, 3), (2, 3, 2, 3, 2), (1, 3, 5, 5, 4)]:  # last: FFT path
            ops.append(
                (
                    f"blur3d-{padding}-{fshape}",
                    lambda p=padding, s=fshape: (
                        Blur(torch.rand(s, dtype=D), padding=p),
                        rand(2, 3, 6, 6, 5),
                    ),
                )
            )
    ops += [
        ("mri3d-real", lambda: (MRI(_mask(3, 4, 5), three_d=True), rand(2, 2, 3, 4, 5))),
        (
            "mri3d-complex-per-sample",
            lambda: (MRI(_mask(2, 3, 4, 5), three_d=True), rand(2, 3, 4, 5, dtype=C128)),
        ),
        ("dynamic-per-frame", lambda: (DynamicMRI(_mask(3, 4, 5)), rand(2, 2, 3, 4, 5))),
        ("dynamic-shared", lambda: (DynamicMRI(_mask(4, 5)), rand(2, 3, 4, 5, dtype=C128))),
        ("dynamic-5d", lambda: (DynamicMRI(_mask(2, 1, 3, 4, 5)), rand(2, 2, 3, 4, 5))),
        (
            "multicoil3d",
            lambda: (
                MultiCoilMRI(_mask(3, 4, 4), rand(3, 3, 4, 4, dtype=C128), three_d=True),
                rand(2, 2, 3, 4, 4),
            ),
        ),
        (
            "multicoil-birdcage",
            lambda: (MultiCoilMRI(_mask(6, 6), coil_maps=4), rand(2, 6, 6, dtype=C128)),
        ),
        (
            "cs-complex",
            lambda: (
                CompressedSensing(20, (2, 3, 4), dtype=C128),
                rand(2, 2, 3, 4, dtype=C128),
            ),
        ),
        (
            "cs-fast",
            lambda: (CompressedSensing(15, (2, 3, 4), fast=True, dtype=D), rand(2, 2, 3, 4)),
        ),
        (
            "cs-fast-channelwise",
            lambda: (
                CompressedSensing(7, (2, 3, 4), fast=True, channelwise=True, dtype=D),
                rand(2, 2, 3, 4),
            ),
        ),
        (
            "cs-channelwise",
            lambda: (
                CompressedSensing(9, (2, 3, 4), channelwise=True, dtype=D),
                rand(2, 2, 3, 4),
            ),
        ),
    ]
    return ops


OPS = _ops()
IDS = [name for name, _ in OPS]


@pytest.mark.parametrize("make", [m for _, m in OPS], ids=IDS)
def test_adjoint_is_the_dense_conjugate_transpose(make):
    physics, x = make()
    y = physics.A(x)
    M = dense(physics.A, x)
    v = rand(*y.shape, dtype=y.dtype)
    expected = (M.mH @ v.reshape(-1)).reshape(x.shape)
    assert torch.allclose(physics.A_adjoint(v), expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(physics.A_adjoint_A(x), physics.A_adjoint(y), rtol=1e-10, atol=1e-12)
    defect = physics.adjointness_test(x, rng=torch.Generator().manual_seed(1))
    assert abs(defect) <= 1e-10 * float(tree.norm(y)) * math.sqrt(y.numel())


@pytest.mark.parametrize("make", [m for _, m in OPS], ids=IDS)
def test_compute_sqnorm_is_the_largest_squared_singular_value(make):
    physics, x = make()
    M = dense(physics.A, x)
    expected = torch.linalg.matrix_norm(M, ord=2) ** 2
    got = physics.compute_sqnorm(x, tol=1e-10, max_iter=5000, rng=torch.Generator().manual_seed(0))
    assert got.dtype == D and got.dim() == 0
    assert torch.allclose(got, expected, rtol=1e-5)


# ---------------------------------------------------------------------- forward references
def _blur3d_reference(x, k, padding):
    """Explicit sums y[i] = Σ_b k[b] x_ext[i + s - 1 - b] over kernel offsets b, on x extended
    by (s//2 - (s-1)%2, s//2) per dim (valid: no extension)."""
    B, C = x.shape[:2]
    ks = k.shape[2:]
    kk = k.expand(B, C, *ks)
    if padding != "valid":
        mode = "constant" if padding == "zeros" else padding
        flat = []
        for s in reversed(ks):
            flat += [s // 2 - (s - 1) % 2, s // 2]
        x = F.pad(x, flat, mode=mode)
    out_shape = [n - s + 1 for n, s in zip(x.shape[2:], ks)]
    out = torch.zeros(B, C, *out_shape, dtype=x.dtype)
    for b in itertools.product(*(range(s) for s in ks)):
        sl = tuple(slice(s - 1 - bi, s - 1 - bi + o) for s, bi, o in zip(ks, b, out_shape))
        out += kk[(slice(None), slice(None), *(slice(bi, bi + 1) for bi in b))] * x[(..., *sl)]
    return out


@pytest.mark.parametrize("padding", ["valid", "circular", "reflect", "replicate", "zeros"])
@pytest.mark.parametrize("ksize", [(3, 3, 3), (2, 4, 3), (5, 5, 4)])
def test_blur3d_matches_explicit_convolution(padding, ksize):
    x = rand(2, 3, 7, 6, 8)
    k = torch.rand(2, 1, *ksize, dtype=D)
    physics = Blur(k, padding=padding)
    assert torch.allclose(physics.A(x), _blur3d_reference(x, k, padding), atol=1e-12)


def test_blur3d_with_unit_depth_is_slicewise_2d_blur():
    x = rand(2, 3, 4, 9, 8)
    k2 = torch.rand(1, 3, 3, 4, dtype=D)
    for padding in ("valid", "reflect", "circular"):
        vol = Blur(k2.unsqueeze(2), padding=padding).A(x)
        per_slice = torch.stack([Blur(k2, padding=padding).A(x[:, :, d]) for d in range(4)], 2)
        assert torch.allclose(vol, per_slice, atol=1e-12)


def test_conv3d_pair_is_adjoint():
    x, k = rand(2, 3, 5, 6, 7), torch.rand(1, 3, 2, 3, 2, dtype=D)
    y = conv3d(x, k)
    v = rand(*y.shape)
    assert torch.allclose(tree.vdot(y, v), tree.vdot(x, conv_transpose3d(v, k)), rtol=1e-12)


def test_mri3d_is_masked_centred_3d_dft():
    mask = _mask(3, 4, 5)
    x = rand(2, 3, 4, 5, dtype=C128)
    Fd, Fh, Fw = _centred_dft(3), _centred_dft(4), _centred_dft(5)
    ref = mask * torch.einsum("ad,bh,cw,ndhw->nabc", Fd, Fh, Fw, x)
    assert torch.allclose(MRI(mask, three_d=True).A(x), ref, atol=1e-12)
    real = MRI(mask, three_d=True).A(torch.stack((x.real, x.imag), 1))
    assert torch.allclose(torch.complex(real[:, 0], real[:, 1]), ref, atol=1e-12)


def test_dynamic_mri_is_framewise_mri():
    mask = _mask(3, 6, 5)
    x = rand(2, 2, 3, 6, 5)
    y = DynamicMRI(mask).A(x)
    for t in range(3):
        assert torch.allclose(y[:, :, t], MRI(mask[t]).A(x[:, :, t]), atol=1e-12)
    # DeepInverse's 5-dim (B, C, T, H, W) masks, C = 1 or two equal channels
    same = DynamicMRI(mask[None, None].expand(1, 2, 3, 6, 5).clone()).A(x)
    assert torch.allclose(same, y, atol=1e-14)


def test_multicoil3d_with_one_unit_coil_is_mri3d():
    mask = _mask(3, 4, 5)
    x = rand(2, 3, 4, 5, dtype=C128)
    ones = torch.ones(1, 3, 4, 5, dtype=C128)
    multi = MultiCoilMRI(mask, ones, three_d=True).A(x)
    assert torch.allclose(multi[:, 0], MRI(mask, three_d=True).A(x), atol=1e-12)
    assert torch.allclose(MultiCoilMRI(mask, three_d=True).coil_maps, ones.to(torch.complex128))


def _sigpy_birdcage(shape, r=1.5, nzz=8):
    """SigPy's birdcage_maps in NumPy (sigpy/mri/sim.py), for reference."""
    if len(shape) == 3:
        nc, ny, nx = shape
        c, y, x = np.mgrid[:nc, :ny, :nx]
        coilx = r * np.cos(c * (2 * np.pi / nc))
        coily = r * np.sin(c * (2 * np.pi / nc))
        coil_phs = -c * (2 * np.pi / nc)
        x_co = (x - nx / 2.0) / (nx / 2.0) - coilx
        y_co = (y - ny / 2.0) / (ny / 2.0) - coily
        rr = np.sqrt(x_co**2 + y_co**2)
    else:
        nc, nz, ny, nx = shape
        c, z, y, x = np.mgrid[:nc, :nz, :ny, :nx]
        coilx = r * np.cos(c * (2 * np.pi / nzz))
        coily = r * np.sin(c * (2 * np.pi / nzz))
        coilz = np.floor(c / nzz) - 0.5 * (np.ceil(nc / nzz) - 1)
        coil_phs = -(c + np.floor(c / nzz)) * (2 * np.pi / nzz)
        x_co = (x - nx / 2.0) / (nx / 2.0) - coilx
        y_co = (y - ny / 2.0) / (ny / 2.0) - coily
        z_co = (z - nz / 2.0) / (nz / 2.0) - coilz
        rr = (x_co**2 + y_co**2 + z_co**2) ** 0.5
    phi = np.arctan2(x_co, -y_co) + coil_phs
    out = (1.0 / rr) * np.exp(1j * phi)
    return out / np.sum(np.abs(out) ** 2, 0) ** 0.5


@pytest.mark.parametrize("shape", [(8, 12, 10), (5, 7, 9), (12, 4, 6, 5), (3, 3, 4, 4)])
def test_birdcage_maps_match_sigpy(shape):
    got = birdcage_maps(shape, dtype=C128)
    ref = torch.from_numpy(_sigpy_birdcage(shape))
    assert torch.allclose(got, ref, atol=1e-12)
    assert torch.allclose((got.abs() ** 2).sum(0), torch.ones(shape[1:], dtype=D))


def test_multicoil_int_coil_maps_are_birdcage():
    physics = MultiCoilMRI(coil_maps=6, img_size=(1, 2, 10, 12))
    assert physics.coil_maps.dtype == torch.complex64 and physics.mask.shape == (10, 12)
    assert torch.allclose(physics.coil_maps, birdcage_maps((6, 10, 12)), atol=1e-6)
    vol = MultiCoilMRI(_mask(3, 4, 5), coil_maps=10, three_d=True)
    assert torch.allclose(vol.coil_maps, birdcage_maps((10, 3, 4, 5), dtype=C128), atol=1e-12)


def test_dst1_is_deepinv_orthogonal_sine_transform():
    for n in (1, 4, 7):
        j = torch.arange(n, dtype=D)
        S = -math.sqrt(2 / (n + 1)) * torch.sin(math.pi * torch.outer(j + 1, j + 1) / (n + 1))
        x = rand(3, n)
        assert torch.allclose(dst1(x), x @ S.T, atol=1e-12)
        assert torch.allclose(S @ S, torch.eye(n, dtype=D), atol=1e-12)


def test_fast_cs_structure_and_draws():
    n, m = 24, 10
    physics = CompressedSensing(
        m, (2, 3, 4), fast=True, dtype=D, rng=torch.Generator().manual_seed(3)
    )
    # DeepInverse's draws from the same generator: signs from rand(n) > 0.5, then randperm
    g = torch.Generator().manual_seed(3)
    signs = torch.where(torch.rand(n, generator=g) > 0.5, -1.0, 1.0).to(D)
    idx = torch.sort(torch.randperm(n, generator=g)[:m]).values
    assert torch.equal(physics.signs, signs) and torch.equal(physics.indices, idx)
    j = torch.arange(n, dtype=D)
    S = -math.sqrt(2 / (n + 1)) * torch.sin(math.pi * torch.outer(j + 1, j + 1) / (n + 1))
    Phi = S[idx] * signs
    x = rand(2, 2, 3, 4)
    assert torch.allclose(physics.A(x), x.reshape(2, -1) @ Phi.T, atol=1e-12)
    M = dense(physics.A, x[:1])
    assert torch.allclose(M @ M.T, torch.eye(m, dtype=D), atol=1e-12)  # orthonormal rows


def test_dense_cs_draws_match_deepinv_recipe():
    for dtype in (D, C128):
        g = torch.Generator().manual_seed(5)
        physics = CompressedSensing(7, (1, 3, 3), dtype=dtype, rng=g)
        ref = torch.randn(7, 9, generator=torch.Generator().manual_seed(5), dtype=dtype)
        assert torch.equal(physics.matrix, ref / math.sqrt(7))
    big = CompressedSensing(400, (1, 20, 20), dtype=C128, seed=1).matrix
    assert abs(float(big.real.var()) - 1 / 800) < 1e-4
    assert abs(float(big.imag.var()) - 1 / 800) < 1e-4


def test_complex_cs_promotes_real_inputs():
    physics = CompressedSensing(10, (1, 2, 3), dtype=C128)
    x = rand(2, 1, 2, 3)
    assert torch.allclose(physics.A(x), physics.A(x.to(C128)))


# ---------------------------------------------------------------------- prox and pseudo-inverse
PROX_CASES = {
    "blur3d-valid": lambda: (
        Blur(torch.rand(1, 1, 2, 2, 3, dtype=D), tol=1e-13, max_iter=800),
        (2, 1, 3, 4, 5),
    ),
    "blur3d-reflect": lambda: (
        Blur(torch.rand(2, 1, 3, 2, 2, dtype=D), padding="reflect", tol=1e-13, max_iter=800),
        (2, 1, 3, 4, 5),
    ),
    "mri3d": lambda: (MRI(torch.rand(3, 4, 5, dtype=D), three_d=True), (2, 2, 3, 4, 5)),
    "dynamic": lambda: (DynamicMRI(torch.rand(2, 3, 4, 5, dtype=D)), (2, 2, 3, 4, 5)),
    "multicoil3d": lambda: (
        MultiCoilMRI(
            _mask(3, 4, 4), rand(3, 3, 4, 4, dtype=C128), three_d=True, tol=1e-13, max_iter=800
        ),
        (2, 2, 3, 4, 4),
    ),
    "cs-complex": lambda: (
        CompressedSensing(20, (2, 3, 4), dtype=C128, tol=1e-13, max_iter=800),
        "complex",
    ),
    "cs-fast": lambda: (CompressedSensing(15, (2, 3, 4), fast=True, dtype=D), (2, 2, 3, 4)),
    "cs-fast-channelwise": lambda: (
        CompressedSensing(7, (2, 3, 4), fast=True, channelwise=True, dtype=D),
        (2, 2, 3, 4),
    ),
}


def _input(spec):
    return rand(2, 2, 3, 4, dtype=C128) if spec == "complex" else rand(*spec)


@pytest.mark.parametrize("gname", ["float", "per-sample", "full"])
@pytest.mark.parametrize("kind", list(PROX_CASES))
def test_prox_against_dense_solve(kind, gname):
    physics, spec = PROX_CASES[kind]()
    z = _input(spec)
    y = physics.A(_input(spec))
    y = y + 0.1 * rand(*y.shape, dtype=y.dtype)
    gamma = {
        "float": 0.7,
        "per-sample": torch.tensor([0.4, 2.0], dtype=D),
        "full": 0.5 + torch.rand(z.shape, dtype=D),
    }[gname]
    h = physics.prox_l2(z, y, gamma, tol=1e-13, max_iter=800)
    ref = []
    for i in range(2):
        Mi = dense(physics.A, z[:1]) if _shared(physics) else None
        if Mi is None:
            Mi = dense(lambda v, i=i: _one(physics, v, i), z[:1])
        g = gamma if gname == "float" else gamma[i]
        ref.append(dense_prox(Mi, z[i], y[i], g).reshape(z.shape[1:]))
    ref = torch.stack(ref)
    assert torch.allclose(h, ref.to(h.dtype) if h.is_complex() else ref.real, atol=1e-9)


def _shared(physics):
    """Whether every sample sees the same operator (no per-sample leaves)."""
    return not any(
        isinstance(t, torch.Tensor) and t.dim() >= 4 and t.shape[0] == 2
        for t in tree.leaves(physics)
    )


def _one(physics, v, i):
    """A of sample i applied to a batch of one (per-sample leaves sliced)."""

    def pick(t):
        if not isinstance(t, torch.Tensor):
            return t
        per_sample = (t.dim() >= 4 and t.shape[0] == 2) or (
            isinstance(physics, DynamicMRI) and t.dim() == 4
        )
        return t[i : i + 1] if per_sample else t

    return tree.map(pick, physics).A(v)


@pytest.mark.parametrize(
    "kind", ["mri3d-binary", "dynamic", "cs-fast", "cs-complex", "multicoil3d"]
)
def test_A_dagger_against_pinv(kind):
    physics, x = {
        "mri3d-binary": lambda: (MRI(_mask(3, 4, 5), three_d=True), rand(2, 2, 3, 4, 5)),
        "dynamic": lambda: (DynamicMRI(_mask(3, 4, 5)), rand(2, 2, 3, 4, 5)),
        "cs-fast": lambda: (CompressedSensing(15, (2, 3, 4), fast=True, dtype=D), rand(2, 2, 3, 4)),
        "cs-complex": lambda: (
            CompressedSensing(20, (2, 3, 4), dtype=C128),
            rand(2, 2, 3, 4, dtype=C128),
        ),
        "multicoil3d": lambda: (
            MultiCoilMRI(
                _mask(2, 4, 4), rand(2, 2, 4, 4, dtype=C128), three_d=True, tol=1e-13, max_iter=2000
            ),
            rand(2, 2, 2, 4, 4),
        ),
    }[kind]()
    y = physics.A(x)
    y = y + 0.1 * rand(*y.shape, dtype=y.dtype)
    M = dense(physics.A, x[:1])
    ref = torch.stack([torch.linalg.pinv(M) @ y[i].reshape(-1) for i in range(2)])
    got = physics.A_dagger(y)
    assert torch.allclose(got.reshape(2, -1).to(ref.dtype), ref, atol=1e-8)


# ---------------------------------------------------------------------- gradients
def _grads(physics, leaf_names, z, y, w, implicit):
    leaves = {k: getattr(physics, k).detach().requires_grad_() for k in leaf_names}
    p = physics.replace(**leaves, implicit_backward_solver=implicit)
    gamma = 0.8
    h = p.prox_l2(z, y, gamma, tol=1e-13, max_iter=2000)
    loss = (h * w.conj()).real.sum()
    return torch.autograd.grad(loss, [leaves[k] for k in leaf_names])


@pytest.mark.parametrize("kind", ["blur3d", "multicoil3d", "cs-complex"])
def test_implicit_gradient_equals_autograd_through_converged_solve(kind):
    physics, names, x = {
        "blur3d": lambda: (
            Blur(torch.rand(1, 2, 2, 3, 2, dtype=D), padding="replicate"),
            ["filter"],
            rand(2, 2, 3, 4, 4),
        ),
        "multicoil3d": lambda: (
            MultiCoilMRI(_mask(2, 4, 4), rand(3, 2, 4, 4, dtype=C128), three_d=True),
            ["coil_maps"],
            rand(2, 2, 2, 4, 4),
        ),
        "cs-complex": lambda: (
            CompressedSensing(10, (1, 3, 4), dtype=C128),
            ["matrix"],
            rand(2, 1, 3, 4, dtype=C128),
        ),
    }[kind]()
    y = physics.A(x)
    z = rand(*x.shape, dtype=x.dtype)
    w = rand(*z.shape, dtype=z.dtype)
    implicit = _grads(physics, names, z, y, w, True)
    unrolled = _grads(physics, names, z, y, w, False)
    for a, b in zip(implicit, unrolled):
        assert torch.allclose(a, b, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("kind", ["mri3d", "dynamic"])
def test_closed_form_prox_gradient_reaches_the_mask(kind):
    mask = torch.rand(3, 4, 5, dtype=D, requires_grad=True)
    make = (lambda m: MRI(m, three_d=True)) if kind == "mri3d" else DynamicMRI
    x, z = rand(1, 2, 3, 4, 5), rand(1, 2, 3, 4, 5)
    w = rand(1, 2, 3, 4, 5)
    y = make(mask.detach()).A(x)
    (g,) = torch.autograd.grad((make(mask).prox_l2(z, y, 0.6) * w).sum(), mask)

    def dense_loss(m):
        M = dense(make(m).A, z)
        return (dense_prox(M, z, y, 0.6).real * w.reshape(-1)).sum()

    (ref,) = torch.autograd.grad(dense_loss(mask), mask)
    assert torch.allclose(g, ref, atol=1e-10)


def test_vmap_over_a_batch_of_3d_blurs():
    kernels = torch.rand(3, 1, 1, 2, 3, 3, dtype=D)
    singles = [Blur(k, padding="circular", tol=1e-12, max_iter=300) for k in kernels]
    stacked = tree.map(lambda *t: torch.stack(t), *singles)
    x = rand(3, 2, 1, 4, 5, 5)

    def prox(p, xi):
        return p.prox_l2(xi, p.A(xi), 0.5)

    batched = torch.func.vmap(prox)(stacked, x)
    for i in range(3):
        assert torch.allclose(batched[i], prox(singles[i], x[i]), atol=1e-10)


# ---------------------------------------------------------------------- errors
def test_closed_forms_reject_unknown_options():
    z = rand(1, 2, 3, 4, 5)
    for physics in (
        MRI(torch.ones(3, 4, 5), three_d=True).to(D),
        DynamicMRI(torch.ones(3, 4, 5)).to(D),
    ):
        name = type(physics).__name__
        with pytest.raises(TypeError, match=rf"{name}.prox_l2: unknown option 'maxiter'"):
            physics.prox_l2(z, z, 1.0, maxiter=3)
        with pytest.raises(TypeError, match=rf"{name}.A_dagger: unknown option 'rtol'"):
            physics.A_dagger(z, rtol=1e-3)
    fast = CompressedSensing(5, (1, 2, 4), fast=True, dtype=D)
    x = rand(1, 1, 2, 4)
    with pytest.raises(TypeError, match="CompressedSensing.prox_l2: unknown option 'maxiters'"):
        fast.prox_l2(x, fast.A(x), 1.0, maxiters=3)
    with pytest.raises(TypeError, match="CompressedSensing.A_dagger: unknown option"):
        fast.A_dagger(fast.A(x), tolerance=1e-3)


def test_errors():
    with pytest.raises(ValueError, match=r"Blur.A: x must be a \(B, C, D, H, W\) volume batch"):
        Blur(torch.rand(1, 1, 2, 2, 2)).A(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match=r"Blur.A: x must be a \(B, C, H, W\) image batch"):
        Blur(torch.rand(1, 1, 2, 2)).A(torch.rand(1, 1, 3, 4, 4))
    with pytest.raises(ValueError, match="Blur: filter must have shape"):
        Blur(torch.rand(2, 2, 2))
    with pytest.raises(ValueError, match="MRI.A: mask of shape"):
        MRI(torch.ones(3, 4, 5), three_d=True).A(torch.rand(1, 2, 4, 4, 5))
    with pytest.raises(ValueError, match="DynamicMRI: the real and imaginary channels"):
        DynamicMRI(torch.rand(1, 2, 3, 4, 4))
    with pytest.raises(ValueError, match="MultiCoilMRI: coil_maps=0 must be a positive int"):
        MultiCoilMRI(torch.ones(4, 4), coil_maps=0)
    with pytest.raises(ValueError, match="CompressedSensing: the fast operator is real"):
        CompressedSensing(4, (1, 2, 4), fast=True, dtype=torch.cfloat)
    with pytest.raises(ValueError, match="CompressedSensing: the fast operator keeps m"):
        CompressedSensing(9, (1, 2, 4), fast=True)
    with pytest.raises(TypeError, match="CompressedSensing: seed must be an int"):
        CompressedSensing(4, (1, 2, 4), True)  # DeepInverse's positional fast
    with pytest.raises(TypeError, match="CompressedSensing.A: x is complex"):
        CompressedSensing(4, (1, 2, 4)).A(torch.rand(1, 1, 2, 4, dtype=torch.cfloat))
    with pytest.raises(TypeError, match="CompressedSensing.compute_sqnorm: unknown option"):
        CompressedSensing(4, (1, 2, 4)).compute_sqnorm(torch.rand(1, 1, 2, 4), filter=None)


def test_fast_cs_gradients_through_closed_forms():
    """Φ = P S diag(sign(s)): the closed-form prox and pseudo-inverse have exact derivatives
    (zero with respect to the signs, those of the dense solve for z and y)."""
    physics = CompressedSensing(10, (1, 4, 4), fast=True, dtype=D)
    z, w, y = rand(2, 1, 4, 4), rand(2, 1, 4, 4), rand(2, 10)

    def loss(p, z, y):
        return (p.prox_l2(z, y, 0.3) * w).sum() + p.A_dagger(y).square().sum()

    g_p, g_z, g_y = torch.func.grad(loss, argnums=(0, 1, 2))(physics, z, y)
    n = 16
    j = torch.arange(n, dtype=D)
    S = -math.sqrt(2 / (n + 1)) * torch.sin(math.pi * torch.outer(j + 1, j + 1) / (n + 1))
    signs = physics.signs.clone().requires_grad_()
    zz, yy = z.clone().requires_grad_(), y.clone().requires_grad_()
    Phi = S[physics.indices] * signs.sign()
    h = torch.stack([dense_prox(Phi, zz[i], yy[i], 0.3) for i in range(2)])
    ref = (h * w.reshape(2, -1)).sum() + (yy @ torch.linalg.pinv(Phi).T).square().sum()
    r_s, r_z, r_y = torch.autograd.grad(ref, (signs, zz, yy), allow_unused=True)
    assert torch.equal(g_p.matrix, torch.zeros_like(signs))
    assert r_s is None or not r_s.any()
    assert torch.allclose(g_z, r_z, atol=1e-10) and torch.allclose(g_y, r_y, atol=1e-10)


def test_vmap_over_a_batch_of_dynamic_mri():
    singles = [DynamicMRI(torch.rand(3, 4, 5, dtype=D)) for _ in range(3)]
    stacked = tree.map(lambda *t: torch.stack(t), *singles)
    x = rand(3, 1, 2, 3, 4, 5)

    def prox(p, xi):
        return p.prox_l2(xi, p.A(xi) + 0.5, 0.7)

    batched = torch.func.vmap(prox)(stacked, x)
    for i in range(3):
        assert torch.allclose(batched[i], prox(singles[i], x[i]), atol=1e-12)


def test_dynamic_to_static_uses_the_union_of_the_frame_masks():
    frames = torch.zeros(3, 4, 4, dtype=D)
    frames[0, :, 0] = 1
    frames[1, :, 0] = 1
    frames[2, :, 2] = 1
    static = DynamicMRI(frames, tol=1e-7).to_static()
    expected = torch.zeros(4, 4, dtype=D)
    expected[:, 0] = expected[:, 2] = 1
    assert isinstance(static, MRI) and torch.equal(static.mask, expected) and static.tol == 1e-7


def test_deepinv_defaults_without_a_mask():
    x = rand(2, 2, 6, 5)
    full = MRI(img_size=x.shape).to(D)  # no subsampling: the unitary centred DFT
    assert full.mask.shape == (6, 5) and torch.allclose(full.A_adjoint(full.A(x)), x)
    assert MRI().mask.shape == (320, 320)  # DeepInverse's default img_size
    vol = MRI(img_size=(1, 2, 3, 6, 5), three_d=True)
    assert vol.mask.shape == (3, 6, 5)
    multi = MultiCoilMRI(img_size=(1, 2, 6, 5)).to(D)  # one coil of ones, no subsampling
    assert multi.coil_maps.shape == (1, 6, 5)
    assert torch.allclose(multi.A(x)[:, :, 0], full.A(x))
    assert DynamicMRI(img_size=(1, 2, 3, 6, 5)).mask.shape == (3, 6, 5)
