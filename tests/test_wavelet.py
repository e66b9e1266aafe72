"""WaveletPrior / WaveletDenoiser against PyWavelets on numpy (float64), closed forms and
finite differences. Needs the ``wavelet`` extra (ptwt, PyWavelets): no skip."""

import sys

import numpy as np
import pytest
import pywt
import torch

from unroll.algorithms import pgd, run
from unroll.models import WaveletDenoiser
from unroll.models.wavelet import wavedec, waverec
from unroll.optim import L2, PnP, WaveletPrior
from unroll.physics import Inpainting

# PyWavelets warns that small images at these levels meet the boundary everywhere: expected
pytestmark = pytest.mark.filterwarnings("ignore:Level value of:UserWarning")

DT = torch.float64
WAVELETS = ("haar", "db2", "db8", "sym4", "coif2")


def rand(*shape, seed=0, dtype=DT):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --------------------------------------------------------------------------- references
def np_threshold(c, t, kind):
    """Soft / hard thresholding on numpy, complex soft shrinking the modulus."""
    if kind == "soft":
        mag = np.abs(c)
        return np.where(mag > t, c * (1 - t / np.where(mag > 0, mag, 1)), 0)
    return np.where(np.abs(c) > t, c, 0)


def pywt_denoise(x, wv, level, t, kind="soft", mode="zero", wvdim=2, band_t=None):
    """``Ψ†(a, ρ_t(d_1), ..., ρ_t(d_L))`` with PyWavelets on numpy; ``band_t(j, b)`` (levels
    coarsest first) overrides ``t`` per band (a per-sample array)."""
    arr = x.numpy()
    pad = [(0, 0)] * (arr.ndim - wvdim) + [(0, s % 2) for s in arr.shape[-wvdim:]]
    arr = np.pad(arr, pad, mode="edge")
    axes = tuple(range(-wvdim, 0))
    if wvdim == 2:
        coeffs = pywt.wavedec2(arr, wv, mode=mode, level=level, axes=axes)
        bands = lambda c: list(c)  # noqa: E731
        build = tuple
    else:
        keys = ("aad", "ada", "add", "daa", "dad", "dda", "ddd")
        coeffs = pywt.wavedecn(arr, wv, mode=mode, level=level, axes=axes)
        bands = lambda c: [c[k] for k in keys]  # noqa: E731
        build = lambda bs: dict(zip(keys, bs, strict=True))  # noqa: E731
    out = [coeffs[0]]
    for j, c in enumerate(coeffs[1:]):
        new = []
        for b, d in enumerate(bands(c)):
            tb = t if band_t is None else band_t(j, b).reshape(-1, *[1] * (d.ndim - 1))
            new.append(np_threshold(d, tb, kind))
        out.append(build(new))
    rec = pywt.waverec2(out, wv, axes=axes) if wvdim == 2 else pywt.waverecn(out, wv, axes=axes)
    index = (Ellipsis, *[slice(0, s) for s in x.shape[-wvdim:]])
    return torch.from_numpy(np.ascontiguousarray(np.asarray(rec)[index]))


def pywt_details(x, wv, level, mode="zero"):
    coeffs = pywt.wavedec2(x.numpy(), wv, mode=mode, level=level, axes=(-2, -1))
    return np.concatenate([d.reshape(x.shape[0], -1) for c in coeffs[1:] for d in c], axis=1)


# --------------------------------------------------------------------------- transform
@pytest.mark.parametrize("wv", WAVELETS)
@pytest.mark.parametrize("mode", ["zero", "reflect", "periodic", "symmetric"])
@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 2, 19, 24)])
def test_perfect_reconstruction(wv, mode, shape):
    x = rand(*shape)
    back = waverec(wavedec(x, wv, level=3, mode=mode), wv, x.shape)
    assert back.shape == x.shape
    torch.testing.assert_close(back, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("wv", ["haar", "db2", "sym3"])
def test_perfect_reconstruction_3d(wv):
    x = rand(2, 1, 8, 10, 12)
    back = waverec(wavedec(x, wv, level=2, wvdim=3), wv, x.shape)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("wv", WAVELETS)
def test_coefficients_match_pywt(wv):
    x = rand(2, 3, 32, 32)
    ours = wavedec(x, wv, level=3)
    ref = pywt.wavedec2(x.numpy(), wv, mode="zero", level=3, axes=(-2, -1))
    np.testing.assert_allclose(ours[0].numpy(), ref[0], rtol=0, atol=1e-10)
    for c_ours, c_ref in zip(ours[1:], ref[1:], strict=True):
        for d_ours, d_ref in zip(c_ours, c_ref, strict=True):
            np.testing.assert_allclose(d_ours.numpy(), d_ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("wv", ["db2", "db8", "sym4"])
def test_zero_mode_is_an_isometry_with_the_reconstruction_as_adjoint(wv):
    # the module docstring's claim: ΨᵀΨ = I and Ψ† = Ψᵀ with mode="zero"
    x = rand(2, 1, 16, 16)
    coeffs = wavedec(x, wv, level=2)
    flat = lambda c: torch.cat([c[0].flatten()] + [t.flatten() for d in c[1:] for t in d])  # noqa: E731
    torch.testing.assert_close(flat(coeffs).norm(), x.norm(), rtol=1e-12, atol=0)
    other = [rand(*coeffs[0].shape, seed=5)] + [
        tuple(rand(*t.shape, seed=6 + 3 * j + b) for b, t in enumerate(d))
        for j, d in enumerate(coeffs[1:])
    ]
    lhs = flat(coeffs) @ flat(other)
    rhs = (x * waverec(other, wv, x.shape)).sum()
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- prox and value
@pytest.mark.parametrize("wv", WAVELETS)
@pytest.mark.parametrize("p,kind", [(1, "soft"), (0, "hard")])
@pytest.mark.parametrize("level", [1, 3])
def test_prox_is_thresholding_of_pywt_coefficients(wv, p, kind, level):
    x = rand(2, 3, 24, 20)
    gamma = 0.4
    out = WaveletPrior(level=level, wv=wv, p=p).prox(x, gamma)
    ref = pywt_denoise(x, wv, level, gamma, kind)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("mode", ["reflect", "periodic", "symmetric"])
def test_prox_other_modes_and_odd_sizes(mode):
    x = rand(1, 2, 17, 15)
    out = WaveletPrior(level=2, wv="db2", mode=mode).prox(x, 0.3)
    torch.testing.assert_close(out, pywt_denoise(x, "db2", 2, 0.3, mode=mode), rtol=0, atol=1e-10)


def test_prox_3d_matches_pywt():
    x = rand(2, 1, 8, 10, 12)
    out = WaveletPrior(level=2, wv="db2", wvdim=3).prox(x, 0.5)
    torch.testing.assert_close(out, pywt_denoise(x, "db2", 2, 0.5, wvdim=3), rtol=0, atol=1e-10)


def test_prox_complex_shrinks_the_modulus():
    x = torch.complex(rand(1, 1, 16, 16), rand(1, 1, 16, 16, seed=1))
    out = WaveletPrior(level=2, wv="db4").prox(x, 0.3)
    assert out.dtype == torch.complex128
    torch.testing.assert_close(out, pywt_denoise(x, "db4", 2, 0.3), rtol=0, atol=1e-10)


def test_haar_prox_is_the_exact_proximal_operator():
    # Ψ orthogonal (Haar, sides divisible by 2^L): the thresholding minimises
    # γ‖Ψ_d u‖₁ + ½‖u − x‖²; compare with the objective at random perturbations
    x = rand(1, 1, 16, 16)
    gamma = 0.3
    prior = WaveletPrior(level=3, wv="haar")
    u = prior.prox(x, gamma)

    def objective(v):
        return gamma * prior.value(v) + 0.5 * (v - x).square().sum()

    best = objective(u)
    for seed in range(40):
        for t in (1e-4, 1e-2, 1.0):
            assert bool(objective(u + t * rand(*x.shape, seed=100 + seed)) >= best - 1e-13)
    # the subgradient condition, coefficient-wise: x − u = γ Ψ_dᵀ s with |s| ≤ 1, s = sign(d)
    # on the support
    dx, du = pywt_details(x, "haar", 3), pywt_details(u, "haar", 3)
    s = (dx - du) / gamma
    assert np.all(np.abs(s) <= 1 + 1e-10)
    on = np.abs(du) > 1e-12
    np.testing.assert_allclose(s[on], np.sign(du[on]), rtol=0, atol=1e-10)


@pytest.mark.parametrize("wv", ["haar", "db8"])
def test_value_is_l1_of_pywt_details(wv):
    x = rand(3, 2, 16, 16)
    ref = np.abs(pywt_details(x, wv, 3)).sum(1)
    torch.testing.assert_close(
        WaveletPrior(wv=wv).value(x), torch.from_numpy(ref), rtol=1e-12, atol=0
    )


def test_value_l0_counts_nonzero_details():
    x = torch.zeros(2, 1, 8, 8, dtype=DT)
    x[0, 0, :, 4:] = 1.0  # one vertical edge: non-zero details at the coarsest Haar level only
    # x[1] = 0: no details (a constant would leave round-off-sized details, counted by ℓ0)
    ref = (np.abs(pywt_details(x, "haar", 3)) > 0).sum(1).astype(np.float64)
    out = WaveletPrior(wv="haar", p=0).value(x)
    torch.testing.assert_close(out, torch.from_numpy(ref))
    assert out[0] > 0 and out[1] == 0


def test_clamp_and_box_indicator():
    x = rand(2, 1, 16, 16)
    prior = WaveletPrior(level=2, wv="db2", clamp_min=-0.5, clamp_max=0.5)
    ref = pywt_denoise(x, "db2", 2, 0.2).clamp(-0.5, 0.5)
    torch.testing.assert_close(prior.prox(x, 0.2), ref, rtol=0, atol=1e-10)
    inside = x.clamp(-0.5, 0.5)
    values = prior.value(torch.cat([inside[:1], x[1:]]))
    assert torch.isfinite(values[0]) and values[1] == float("inf")


def test_per_band_thresholds():
    x = rand(2, 1, 16, 16)
    level = 2
    per_sample = torch.tensor([0.1, 0.7], dtype=DT)
    per_level = torch.tensor([[0.1, 0.5], [0.9, 0.2]], dtype=DT)  # (B, L), coarsest first
    per_band = rand(2, level, 3, seed=3).abs()
    prior = WaveletPrior(level=level, wv="db2")
    cases = (
        (per_sample, lambda j, b: per_sample.numpy()),
        (per_level, lambda j, b: per_level[:, j].numpy()),
        (per_band, lambda j, b: per_band[:, j, b].numpy()),
    )
    for ths, band_t in cases:
        ref = pywt_denoise(x, "db2", level, None, band_t=band_t)
        torch.testing.assert_close(prior.prox(x, ths), ref, rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- in algorithms
def test_denoiser_in_pnp_pgd_matches_the_explicit_iteration():
    g = torch.Generator().manual_seed(0)
    x_true = torch.rand(2, 1, 16, 16, generator=g, dtype=DT)
    mask = (torch.rand(1, 1, 16, 16, generator=g) > 0.3).to(DT)
    physics = Inpainting(mask)
    y = physics.A(x_true)
    gamma, sigma, steps = 0.9, 0.05, 4
    denoiser = WaveletDenoiser(level=2, wv="db4")
    x, _ = run(
        pgd(L2(), PnP(denoiser)), y, physics, {"stepsize": gamma, "sigma_denoiser": sigma}, steps
    )
    ref = mask * y  # x₀ = Aᵀy, then x ← D(x − γ Aᵀ(Ax − y), σ) with PyWavelets
    for _ in range(steps):
        ref = pywt_denoise(ref - gamma * mask * (mask * ref - y), "db4", 2, sigma)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-10)
    # the explicit prior at γλ gives the same iterates as the denoiser at σ = γλ
    xp, _ = run(
        pgd(L2(), WaveletPrior(level=2, wv="db4")),
        y,
        physics,
        {"stepsize": gamma, "lambda_reg": sigma / gamma},
        steps,
    )
    torch.testing.assert_close(xp, x, rtol=0, atol=1e-12)


def test_ista_with_haar_prior_reaches_the_lasso_minimiser():
    # denoising: min ½‖x − y‖² + λ‖Ψ_d x‖₁ with orthogonal Haar is one thresholding
    y = rand(1, 1, 16, 16)
    lam = 0.2
    x, _ = run(
        pgd(L2(), WaveletPrior(wv="haar")),
        y,
        Inpainting(torch.ones(1, 1, 16, 16, dtype=DT)),
        {"stepsize": 0.5, "lambda_reg": lam},
        80,
    )
    torch.testing.assert_close(x, pywt_denoise(y, "haar", 3, lam), rtol=0, atol=1e-12)


# --------------------------------------------------------------------------- differentiation
def test_gradients_match_finite_differences():
    x = rand(2, 1, 16, 16)
    w = rand(2, 1, 16, 16, seed=1)
    direction = rand(2, 1, 16, 16, seed=2)
    prior = WaveletPrior(level=2, wv="db4")

    def loss(x, gamma):
        return (w * prior.prox(x, gamma)).sum()

    gamma = torch.tensor(0.3, dtype=DT)
    gx, gg = torch.func.grad(loss, argnums=(0, 1))(x, gamma)
    h = 1e-6
    fd_x = (loss(x + h * direction, gamma) - loss(x - h * direction, gamma)) / (2 * h)
    fd_g = (loss(x, gamma + h) - loss(x, gamma - h)) / (2 * h)
    torch.testing.assert_close((gx * direction).sum(), fd_x, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(gg, fd_g, rtol=1e-7, atol=1e-9)
    # loss.backward() gives the same gradient
    xr, gr = x.clone().requires_grad_(), gamma.clone().requires_grad_()
    loss(xr, gr).backward()
    torch.testing.assert_close(xr.grad, gx, rtol=0, atol=1e-12)
    torch.testing.assert_close(gr.grad, gg, rtol=0, atol=1e-12)


def test_value_gradient_matches_finite_differences():
    x, direction = rand(1, 1, 16, 16), rand(1, 1, 16, 16, seed=4)
    prior = WaveletPrior(level=2, wv="sym4")
    g = torch.func.grad(lambda v: prior.value(v).sum())(x)
    h = 1e-6
    fd = (prior.value(x + h * direction) - prior.value(x - h * direction)) / (2 * h)
    torch.testing.assert_close((g * direction).sum(), fd.sum(), rtol=1e-7, atol=1e-9)


def test_vmap_matches_the_batched_call():
    x = rand(3, 2, 16, 16)
    gammas = torch.tensor([0.1, 0.3, 0.6], dtype=DT)
    prior = WaveletPrior(level=2, wv="db2")
    out = torch.func.vmap(lambda xi, gi: prior.prox(xi[None], gi)[0])(x, gammas)
    torch.testing.assert_close(out, prior.prox(x, gammas), rtol=0, atol=1e-12)
    per_sample = torch.func.vmap(
        torch.func.grad(lambda xi: prior.prox(xi[None], 0.2).square().sum())
    )(x)
    full = torch.func.grad(lambda v: prior.prox(v, 0.2).square().sum())(x)
    torch.testing.assert_close(per_sample, full, rtol=0, atol=1e-12)


def test_inputs_are_not_mutated():
    x = rand(1, 1, 16, 16)
    ths = torch.tensor([0.3], dtype=DT)
    x0, t0 = x.clone(), ths.clone()
    WaveletPrior(level=2, wv="db2", p=0).prox(x, ths)
    assert torch.equal(x, x0) and torch.equal(ths, t0)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"wv": "nope"}, "discrete PyWavelets wavelet"),
        ({"wv": ["db1", "db2"]}, "list of wavelets"),
        ({"p": 2}, "p must be 1"),
        ({"p": float("inf")}, "top-k"),
        ({"level": 0}, "level must be an int"),
        ({"mode": "wrap"}, "mode must be one of"),
        ({"wvdim": 1}, "wvdim must be 2 or 3"),
        ({"clamp_min": 1.0, "clamp_max": 0.0}, "swap"),
    ],
)
def test_prior_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=r"^unroll\.optim\.WaveletPrior: .*" + match):
        WaveletPrior(**kwargs)


def test_denoiser_errors():
    with pytest.raises(ValueError, match=r"^unroll\.models\.WaveletDenoiser: .*'topk'"):
        WaveletDenoiser(non_linearity="median")
    D = WaveletDenoiser(level=2, wv="haar")
    with pytest.raises(ValueError, match="threshold tensor must have shape"):
        D(rand(2, 1, 8, 8), torch.ones(2, 5, dtype=DT))
    with pytest.raises(ValueError, match=r"^unroll\.models\.WaveletDenoiser: the threshold"):
        D(rand(2, 1, 8, 8), -0.1)
    with pytest.raises(ValueError, match="batch dimension"):
        D(rand(8, 8), 0.1)
    with pytest.raises(ValueError, match=r"^unroll\.optim\.WaveletPrior\.prox: gamma"):
        WaveletPrior(wv="haar").prox(rand(1, 1, 8, 8), -1.0)


def test_missing_ptwt_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ptwt", None)  # `import ptwt` now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "unroll\[wavelet\]"'):
        WaveletPrior()
    with pytest.raises(ImportError, match=r"^unroll\.models\.WaveletDenoiser needs ptwt"):
        WaveletDenoiser()


def _topk_reference(img: np.ndarray, fraction: float, level: int) -> np.ndarray:
    """PyWavelets: keep the ⌊fraction·n⌋ largest-modulus coefficients of each detail band."""
    coeffs = pywt.wavedec2(img, "haar", level=level, mode="zero")
    out = [coeffs[0]]
    for bands in coeffs[1:]:
        kept = []
        for band in bands:
            flat = band.ravel()
            k = int(np.floor(fraction * flat.size))
            keep = np.zeros(flat.size, dtype=bool)
            keep[np.argsort(-np.abs(flat), kind="stable")[:k]] = True
            kept.append(np.where(keep, flat, 0.0).reshape(band.shape))
        out.append(tuple(kept))
    return pywt.waverec2(out, "haar", mode="zero")


def test_topk_keeps_the_largest_coefficients_of_each_band():
    D = WaveletDenoiser(level=2, wv="haar", non_linearity="topk")
    x = torch.randn(2, 1, 16, 16, dtype=DT, generator=torch.Generator().manual_seed(0))
    fractions = torch.tensor([0.25, 0.5], dtype=DT)
    out = D(x, fractions)
    for i, f in enumerate((0.25, 0.5)):
        ref = _topk_reference(x[i, 0].numpy(), f, 2)
        np.testing.assert_allclose(out[i, 0].numpy(), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(D(x, 1.0), x, rtol=0, atol=1e-12)  # keep everything
    coarse = D(x, 0.0)  # no detail kept: the approximation alone
    ref = _topk_reference(x[0, 0].numpy(), 0.0, 2)
    np.testing.assert_allclose(coarse[0, 0].numpy(), ref, rtol=0, atol=1e-12)


def test_wavelet_prior_is_importable_from_deepinverses_path():
    from unroll.optim.prior import WaveletPrior as from_prior

    assert from_prior is WaveletPrior
