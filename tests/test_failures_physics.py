"""Failure modes of the physics operators, priors and data fidelities (issue 10, items 5 and 7).

Every bad value gets a ``ValueError`` / ``TypeError`` that starts with the API name and says
what to do; where a finite result is promised (a huge but finite ``gamma``, ``gamma = 0`` for a
prior) it is compared with an independent float64 reference. Validation is cheap: a Python
number costs no host read, a tensor exactly one (also inside ``torch.func.vmap``).
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

import unroll.optim.data_fidelity as data_fidelity_module
import unroll.optim.prior as prior_module
import unroll.physics as P
import unroll.physics._utils as putils
from unroll import tree
from unroll.optim import L1, L2, RED, L1Prior, PnP, Tikhonov, TVPrior

D = torch.float64
C128 = torch.complex128
INF, NAN = math.inf, math.nan


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _mask(*shape, dtype=D):
    return (torch.rand(shape) > 0.4).to(dtype)


# ---------------------------------------------------------------------- the operator table
def _physics(kind: str, dtype=D):
    """(physics, an input x) for every operator, in ``dtype`` (complex inputs follow it)."""
    cdtype = C128 if dtype == D else torch.complex64
    if kind == "denoising":
        return P.Denoising(), torch.randn(2, 1, 6, 6, dtype=dtype)
    if kind == "blur":
        return (
            P.Blur(
                torch.rand(1, 1, 3, 3, dtype=dtype), padding="circular", tol=1e-12, max_iter=300
            ),
            torch.randn(2, 1, 6, 6, dtype=dtype),
        )
    if kind == "blurfft":
        k = 0.05 * torch.rand(1, 1, 3, 3, dtype=dtype)
        k[..., 1, 1] = 1.0  # |k̂| >= 0.55: well conditioned
        return P.BlurFFT(k, (1, 6, 6)), torch.randn(2, 1, 6, 6, dtype=dtype)
    if kind == "inpainting":
        return P.Inpainting(_mask(1, 6, 6, dtype=dtype)), torch.randn(2, 1, 6, 6, dtype=dtype)
    if kind == "mri":
        return P.MRI(_mask(6, 6, dtype=dtype)), torch.randn(2, 6, 6, dtype=cdtype)
    if kind == "multicoil":
        maps = torch.randn(3, 6, 6, dtype=cdtype)
        return (
            P.MultiCoilMRI(_mask(6, 6, dtype=dtype), maps, tol=1e-12, max_iter=300),
            torch.randn(2, 6, 6, dtype=cdtype),
        )
    if kind == "cs":
        return (
            P.CompressedSensing(20, (1, 6, 6), seed=0, dtype=dtype, tol=1e-12, max_iter=300),
            torch.randn(2, 1, 6, 6, dtype=dtype),
        )
    raise KeyError(kind)


KINDS = ["denoising", "blur", "blurfft", "inpainting", "mri", "multicoil", "cs"]
NAMES = {
    "denoising": "Denoising",
    "blur": "Blur",
    "blurfft": "BlurFFT",
    "inpainting": "Inpainting",
    "mri": "MRI",
    "multicoil": "MultiCoilMRI",
    "cs": "CompressedSensing",
}
CLOSED_FORMS = ["denoising", "blurfft", "inpainting", "mri"]


# ---------------------------------------------------------------------- prox_l2: gamma
BAD_GAMMAS = {
    "inf": (INF, "large finite gamma"),
    "nan": (NAN, "positive step"),
    "zero": (0.0, "positive step"),
    "negative": (-1.0, "positive step"),
    "tensor-inf": (torch.tensor([1.0, INF], dtype=D), "large finite gamma"),
    "tensor-nan": (torch.tensor([NAN, 1.0], dtype=D), "positive step"),
    "tensor-negative": (torch.tensor(-2.0, dtype=D), "positive step"),
}


@pytest.mark.parametrize("bad", list(BAD_GAMMAS))
@pytest.mark.parametrize("kind", KINDS)
def test_prox_l2_rejects_bad_gamma(kind, bad):
    physics, x = _physics(kind)
    gamma, fix = BAD_GAMMAS[bad]
    with pytest.raises(ValueError, match=f"^{NAMES[kind]}.prox_l2: gamma must be > 0") as err:
        physics.prox_l2(x, physics.A(x), gamma)
    assert "finite" in str(err.value) and fix in str(err.value)


@pytest.mark.parametrize("kind", KINDS)
def test_prox_l2_rejects_non_numeric_gamma(kind):
    physics, x = _physics(kind)
    with pytest.raises(TypeError, match=f"^{NAMES[kind]}.prox_l2: gamma must be"):
        physics.prox_l2(x, physics.A(x), "1.0")
    with pytest.raises(TypeError, match=f"^{NAMES[kind]}.prox_l2: gamma must be real"):
        physics.prox_l2(x, physics.A(x), torch.tensor(1.0 + 1.0j))


def _dense(fn, shape, dtype):
    n = math.prod(shape)
    eye = torch.eye(n, dtype=dtype).reshape(n, *shape)
    return torch.stack([fn(e.unsqueeze(0)).reshape(-1) for e in eye], dim=1)


def _projection_reference(physics64, z, y):
    """lim_{γ→∞} prox = z + A⁺(y − A z) (the least-squares solution nearest z), float64, by a
    dense pseudo-inverse per sample."""
    z, y = z.to(C128 if z.is_complex() else D), y.to(C128 if y.is_complex() else D)
    A = _dense(physics64.A, z.shape[1:], z.dtype)
    out = [
        zi.reshape(-1) + torch.linalg.pinv(A) @ (yi.reshape(-1) - A @ zi.reshape(-1))
        for zi, yi in zip(z, y)
    ]
    return torch.stack(out).reshape(z.shape)


@pytest.mark.parametrize("kind", CLOSED_FORMS)
def test_huge_finite_gamma_gives_the_data_consistent_limit_in_float32(kind):
    """float32 and γ = 3e38 (the old closed forms overflowed to Inf/NaN): the result is the
    projection of z onto {x : A x = y} (the γ → ∞ limit), computed independently in float64."""
    physics64, x64 = _physics(kind)
    physics32, x32 = (
        physics64.to(torch.float32),
        x64.to(torch.complex64 if x64.is_complex() else torch.float32),
    )
    z32 = 3 * torch.randn_like(x32)
    y32 = physics32.A(x32)
    h = physics32.prox_l2(z32, y32, 3e38)
    assert torch.isfinite(torch.view_as_real(h) if h.is_complex() else h).all()
    ref = _projection_reference(physics64, z32, y32)
    torch.testing.assert_close(h.to(ref.dtype), ref, rtol=1e-4, atol=1e-4)
    # and the same with a per-sample tensor gamma
    g = torch.tensor([3e38, 1e30], dtype=torch.float32)
    torch.testing.assert_close(
        physics32.prox_l2(z32, y32, g).to(ref.dtype), ref, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("kind", ["blur", "cs"])
def test_large_gamma_cg_prox_approaches_the_projection(kind):
    physics, x = _physics(kind)
    z = torch.randn_like(x)
    y = physics.A(x)
    h = physics.prox_l2(z, y, 1e9)
    torch.testing.assert_close(h, _projection_reference(physics, z, y), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["denoising", "inpainting"])
def test_closed_form_gamma_gradient_matches_the_analytic_derivative(kind):
    """The finite-for-large-γ rewrite keeps the derivative: ∂h/∂γ = m (y − m z)/(γ m² + 1)²."""
    physics, x = _physics(kind)
    z, y = torch.randn_like(x), physics.A(torch.randn_like(x))
    m = physics.mask if kind == "inpainting" else torch.ones((), dtype=D)
    w = torch.randn_like(x)
    gamma = torch.tensor(0.7, dtype=D)
    got = torch.func.grad(lambda g: (physics.prox_l2(z, y, g) * w).sum())(gamma)
    ref = (w * m * (y - m * z) / (gamma * m.square() + 1) ** 2).sum()
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_gamma_is_validated_inside_vmap_and_grad():
    physics, x = _physics("inpainting")
    y = physics.A(x)

    def prox(g):
        return physics.prox_l2(x, y, g)

    good = torch.tensor([0.5, 2.0], dtype=D)
    out = torch.func.vmap(prox)(good)
    for i in range(2):
        torch.testing.assert_close(out[i], physics.prox_l2(x, y, float(good[i])))
    with pytest.raises(ValueError, match="^Inpainting.prox_l2: gamma must be > 0"):
        torch.func.vmap(prox)(torch.tensor([0.5, -2.0], dtype=D))
    with pytest.raises(ValueError, match="^Inpainting.prox_l2: gamma must be > 0"):
        torch.func.grad(lambda g: prox(g).sum())(torch.tensor(INF, dtype=D))
    blur, xb = _physics("blur")
    with pytest.raises(ValueError, match="^Blur.prox_l2: gamma must be > 0"):
        torch.func.vmap(lambda g: blur.prox_l2(xb, blur.A(xb), g))(torch.tensor([1.0, NAN]))


class _CountHostReads:
    """Counts the host reads of the physics/prior validation (``_utils.host_any``)."""

    def __init__(self, monkeypatch):
        self.count = 0
        original = putils.host_any

        def counted(t):
            self.count += 1
            return original(t)

        monkeypatch.setattr(putils, "host_any", counted)


@pytest.mark.parametrize("kind", CLOSED_FORMS)
def test_validation_costs_one_host_read_per_tensor_gamma_and_none_per_number(kind, monkeypatch):
    physics, x = _physics(kind)
    y = physics.A(x)
    reads = _CountHostReads(monkeypatch)
    physics.prox_l2(x, y, 0.5)
    assert reads.count == 0
    physics.prox_l2(x, y, torch.tensor([0.5, 2.0], dtype=D))
    assert reads.count == 1


def test_prior_validation_is_outside_the_inner_loop(monkeypatch):
    x = torch.rand(2, 1, 6, 6, dtype=D)
    reads = _CountHostReads(monkeypatch)
    TVPrior(n_it_max=50).prox(x, torch.tensor(0.1, dtype=D))
    assert reads.count == 1  # one read for 50 dual iterations
    TVPrior(n_it_max=50).prox(x, 0.1)
    L1Prior().prox(x, 0.1)
    assert reads.count == 1  # numbers are checked without a host read


# ---------------------------------------------------------------------- per-call options
@pytest.mark.parametrize("method", ["prox_l2", "A_dagger"])
@pytest.mark.parametrize("kind", KINDS)
def test_unknown_options_are_rejected_with_did_you_mean(kind, method):
    physics, x = _physics(kind)
    y = physics.A(x)
    args = (x, y, 1.0) if method == "prox_l2" else (y,)
    with pytest.raises(
        TypeError,
        match=f"^{NAMES[kind]}.{method}: unknown option 'maxiter' "
        r"\(did you mean 'max_iter'\?\)",
    ):
        getattr(physics, method)(*args, maxiter=3)
    with pytest.raises(TypeError, match=r"unknown option 'rtol' \(did you mean 'tol'\?\)"):
        getattr(physics, method)(*args, rtol=1e-3)


@pytest.mark.parametrize("kind", ["denoising", "inpainting", "blur"])
def test_bad_option_values_are_rejected_by_closed_forms_too(kind):
    physics, x = _physics(kind)
    y = physics.A(x)
    api = f"^{NAMES[kind]}.prox_l2"
    with pytest.raises(ValueError, match=f"{api}: max_iter must be a positive int"):
        physics.prox_l2(x, y, 1.0, max_iter=0)
    with pytest.raises(ValueError, match=f"{api}: tol must be a finite number"):
        physics.prox_l2(x, y, 1.0, tol=NAN)
    with pytest.raises(TypeError, match=f"{api}: implicit_backward_solver must be"):
        physics.prox_l2(x, y, 1.0, implicit_backward_solver="yes")
    with pytest.raises(ValueError, match=f"{api}: on_failure must be one of"):
        physics.prox_l2(x, y, 1.0, on_failure="loud")


def test_valid_options_still_work_and_do_not_change_numbers():
    physics, x = _physics("inpainting")
    y = physics.A(x)
    plain = physics.prox_l2(x, y, 0.5)
    torch.testing.assert_close(
        physics.prox_l2(
            x, y, 0.5, max_iter=3, tol=0.0, implicit_backward_solver=False, on_failure="raise"
        ),
        plain,
        rtol=0,
        atol=0,
    )
    blur, xb = _physics("blur")
    yb = blur.A(xb)
    torch.testing.assert_close(
        blur.prox_l2(xb, yb, 0.5, on_failure="raise"), blur.prox_l2(xb, yb, 0.5), rtol=0, atol=0
    )


# ---------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("kind", ["blur", "blurfft", "inpainting", "mri", "multicoil", "cs"])
def test_mixed_precision_names_both_dtypes_and_the_fix(kind):
    physics32, x32 = _physics(kind, dtype=torch.float32)
    _, x64 = _physics(kind)
    with pytest.raises(TypeError, match=f"^{NAMES[kind]}.A: the operator's") as err:
        physics32.A(x64)
    msg = str(err.value)
    assert "torch.float64" in msg or "torch.complex128" in msg
    assert "torch.float32" in msg or "torch.complex64" in msg
    assert "physics.to(torch.float64)" in msg
    with pytest.raises(TypeError, match=f"^{NAMES[kind]}.(prox_l2|A_adjoint): the operator's"):
        physics32.prox_l2(x64, physics32.to(D).A(x64), 1.0)
    # the fix named in the message works and gives the float64 operator's numbers
    physics64 = physics32.to(torch.float64)
    torch.testing.assert_close(physics64.A(x64), _reference_A(physics32, x64))
    # and .to() left the original untouched
    assert all(t.dtype in (torch.float32, torch.complex64) for t in tree.leaves(physics32))


def _reference_A(physics32, x64):
    """``A x`` with every tensor of the float32 operator upcast by hand (independent of .to)."""
    leaves, spec = tree.flatten(physics32)
    up = [t.to(C128) if t.is_complex() else t.to(D) for t in leaves]
    return tree.unflatten(spec, up).A(x64)


def test_to_converts_every_tensor_and_keeps_the_original():
    maps = torch.randn(2, 6, 6, dtype=torch.complex64)
    noise = P.GaussianNoise(torch.tensor([0.1, 0.2]))
    physics = P.MultiCoilMRI(_mask(6, 6, dtype=torch.float32), maps, noise_model=noise)
    copy = physics.to(torch.float64)
    assert copy.mask.dtype == D and copy.coil_maps.dtype == C128
    assert copy.noise_model.sigma.dtype == D
    assert physics.mask.dtype == torch.float32 and physics.coil_maps is maps
    assert noise.sigma.dtype == torch.float32
    assert physics.to(torch.complex128).coil_maps.dtype == C128  # a complex dtype names its parts
    with pytest.raises(TypeError, match="^MultiCoilMRI.to: dtype must be a floating dtype"):
        physics.to(torch.int64)
    with pytest.raises(TypeError, match="^MultiCoilMRI.to: pass a torch.dtype"):
        physics.to(3)


def test_multicoil_precision_of_mask_and_maps_must_agree():
    with pytest.raises(
        TypeError,
        match=r"^MultiCoilMRI: mask is torch.float64 but coil_maps is "
        r"torch.complex64; pass both in one precision, e.g. "
        r"coil_maps.to\(torch.complex128\)",
    ):
        P.MultiCoilMRI(_mask(6, 6), torch.randn(3, 6, 6, dtype=torch.complex64))
    # a bool mask takes the maps' precision (exact for a binary mask)
    physics = P.MultiCoilMRI(torch.rand(6, 6) > 0.5, torch.randn(3, 6, 6, dtype=C128))
    assert physics.mask.dtype == D


def test_gaussian_noise_per_sample_sigma_precision_and_batch():
    y32 = torch.zeros(2, 3)
    with pytest.raises(
        TypeError, match="^GaussianNoise: sigma is torch.float64 but y is torch.float32"
    ):
        P.GaussianNoise(torch.tensor([0.1, 0.2], dtype=D))(y32)
    with pytest.raises(
        ValueError, match="^GaussianNoise: sigma has 3 entries but y has batch size 2"
    ):
        P.GaussianNoise(torch.tensor([0.1, 0.2, 0.3]))(y32)
    # a 0-dim float64 level keeps float32 data float32 (scalar type promotion)
    assert P.GaussianNoise(torch.tensor(0.1, dtype=D))(y32).dtype == torch.float32


def test_pnp_denoiser_precision_mismatch():
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1))

    class Den(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, sigma):
            return self.net(x)

    prior = PnP(Den())
    x64 = torch.rand(1, 1, 6, 6, dtype=D)
    with pytest.raises(
        TypeError,
        match=r"^unroll.optim.PnP: the denoiser's weights are "
        r"torch.float32 but x is torch.float64.*\.double\(\)",
    ):
        prior.prox(x64, 1.0, sigma=0.1)
    with pytest.raises(TypeError, match="^unroll.optim.RED: the denoiser's weights"):
        RED(Den()).grad(x64, sigma=0.1)
    torch.testing.assert_close(PnP(Den().double()).prox(x64, 1.0, sigma=0.1), net.double()(x64))


# ---------------------------------------------------------------------- shapes
def test_multicoil_wrong_coil_count():
    physics, x = _physics("multicoil")
    y4 = torch.randn(2, 4, 6, 6, dtype=C128)
    with pytest.raises(
        ValueError, match="^MultiCoilMRI.A_adjoint: y holds 4 coils but coil_maps has 3"
    ):
        physics.A_adjoint(y4)
    with pytest.raises(ValueError, match="MultiCoilMRI.A_adjoint: y holds 4 coils"):
        physics.prox_l2(x, y4, 1.0)
    with pytest.raises(ValueError, match="MultiCoilMRI.A_adjoint: y holds 2 coils"):
        physics.A_dagger(torch.randn(2, 2, 2, 6, 6, dtype=D))  # real (B, 2, N, H, W) form


def test_multicoil_mask_and_maps_sizes_must_agree():
    with pytest.raises(
        ValueError,
        match=r"^MultiCoilMRI: mask \(H, W\) = \(8, 8\) does not fit "
        r"coil_maps \(H, W\) = \(6, 6\)",
    ):
        P.MultiCoilMRI(_mask(8, 8), torch.randn(3, 6, 6, dtype=C128))
    with pytest.raises(TypeError, match="^MultiCoilMRI: coil_maps must be complex"):
        P.MultiCoilMRI(_mask(6, 6), torch.ones(3, 6, 6, dtype=torch.int64))


def test_wrong_image_shapes_for_masks():
    mri, _ = _physics("mri")
    with pytest.raises(ValueError, match=r"^MRI.A: mask of shape \(6, 6\) does not fit x"):
        mri.A(torch.randn(2, 7, 7, dtype=C128))
    with pytest.raises(ValueError, match=r"^MRI.prox_l2: mask of shape \(6, 6\) does not fit z"):
        mri.prox_l2(torch.randn(2, 7, 7, dtype=C128), torch.randn(2, 7, 7, dtype=C128), 1.0)
    inp, _ = _physics("inpainting")
    with pytest.raises(
        ValueError,
        match=r"^Inpainting.A: mask of shape \(1, 6, 6\) does not "
        r"broadcast to x of shape \(2, 1, 7, 7\)",
    ):
        inp.A(torch.randn(2, 1, 7, 7, dtype=D))
    with pytest.raises(ValueError, match="^Inpainting.A_dagger: mask .* does not broadcast to y"):
        inp.A_dagger(torch.randn(2, 1, 5, 6, dtype=D))


# ---------------------------------------------------------------------- noise models
@pytest.mark.parametrize(
    "sigma, cls, words",
    [
        (NAN, ValueError, "sigma must be >= 0 and finite, got nan"),
        (INF, ValueError, "sigma must be >= 0 and finite, got inf"),
        (-0.1, ValueError, "sigma must be >= 0 and finite, got -0.1"),
        (True, TypeError, "sigma must be a real number or a tensor, got bool"),
        ("0.1", TypeError, "sigma must be a real number or a tensor, got str"),
        (
            torch.tensor(NAN),
            ValueError,
            "sigma must be >= 0 and finite (every entry), got an entry nan",
        ),
        (torch.tensor([0.1, INF]), ValueError, "got an entry inf"),
        (torch.tensor(0.1 + 0j), TypeError, "sigma must be real"),
    ],
)
def test_gaussian_noise_rejects_bad_sigma(sigma, cls, words):
    with pytest.raises(cls, match="^GaussianNoise: ") as err:
        P.GaussianNoise(sigma)
    assert words in str(err.value)


def test_gaussian_noise_sigma_is_checked_on_assignment_and_inside_vmap():
    noise = P.GaussianNoise(0.1)
    with pytest.raises(ValueError, match="^GaussianNoise: sigma must be >= 0 and finite"):
        noise.sigma = NAN
    assert noise.sigma == 0.1  # unchanged
    draw = torch.func.vmap(
        lambda s: P.GaussianNoise(s)(torch.zeros(3, dtype=D)), randomness="different"
    )
    with pytest.raises(ValueError, match="^GaussianNoise: sigma must be >= 0 and finite"):
        draw(torch.tensor([0.1, INF], dtype=D))
    # zero noise is valid
    y = torch.randn(2, 3, dtype=D)
    torch.testing.assert_close(P.GaussianNoise(0.0)(y), y, rtol=0, atol=0)


# ---------------------------------------------------------------------- shared state
def test_each_denoising_owns_its_noise_model():
    a, b = P.Denoising(), P.Denoising()
    assert a.noise_model is not b.noise_model
    assert isinstance(a.noise_model, P.GaussianNoise) and a.noise_model.sigma == 0.1
    a.noise_model.sigma = 0.5
    assert b.noise_model.sigma == 0.1 and P.Denoising().noise_model.sigma == 0.1
    x = torch.zeros(1, 100_000, dtype=D)
    assert abs(float(b(x).std()) - 0.1) < 0.003  # b still draws at σ = 0.1
    assert abs(float(a(x).std()) - 0.5) < 0.01
    assert P.Denoising(None).noise_model is None  # explicitly noiseless
    assert torch.equal(P.Denoising(None)(x), x)


def _defaults(module):
    for _, obj in inspect.getmembers(module):
        fns = []
        if inspect.isfunction(obj) and obj.__module__ == module.__name__:
            fns.append(obj)
        elif inspect.isclass(obj) and obj.__module__ == module.__name__:
            fns += [f for f in vars(obj).values() if inspect.isfunction(f)]
        for fn in fns:
            for p in inspect.signature(fn).parameters.values():
                if p.default is not inspect.Parameter.empty:
                    yield f"{module.__name__}.{fn.__qualname__}({p.name})", p.default


MUTABLE = (list, dict, set, bytearray, torch.Tensor, nn.Module, P.GaussianNoise, P.LinearPhysics)


@pytest.mark.parametrize(
    "module",
    [
        P.base,
        P.blur,
        P.blur_fft,
        P.compressed_sensing,
        P.inpainting,
        P.mri,
        P.noise,
        prior_module,
        data_fidelity_module,
    ],
    ids=lambda m: m.__name__,
)
def test_no_mutable_default_arguments(module):
    shared = [name for name, value in _defaults(module) if isinstance(value, MUTABLE)]
    assert shared == []


# ---------------------------------------------------------------------- priors
@pytest.mark.parametrize(
    "prior", [TVPrior(n_it_max=20), L1Prior(), Tikhonov()], ids=lambda p: type(p).__name__
)
@pytest.mark.parametrize(
    "gamma, words",
    [
        (-0.1, "got -0.1"),
        (NAN, "got nan"),
        (INF, "got inf"),
        (torch.tensor([0.1, -1.0]), "got an entry -1.0"),
    ],
)
def test_prior_prox_rejects_bad_gamma(prior, gamma, words):
    x = torch.rand(2, 1, 6, 6, dtype=D)
    name = type(prior).__name__
    with pytest.raises(
        ValueError, match=f"^unroll.optim.{name}.prox: gamma must be >= 0 and finite"
    ) as err:
        prior.prox(x, gamma)
    assert words in str(err.value) and "lambda_reg" in str(err.value)


@pytest.mark.parametrize(
    "prior", [TVPrior(n_it_max=20), L1Prior(), Tikhonov()], ids=lambda p: type(p).__name__
)
def test_prior_prox_with_zero_gamma_is_the_identity(prior):
    x = torch.rand(2, 1, 6, 6, dtype=D)
    out = prior.prox(x, 0.0)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    assert out is not x
    torch.testing.assert_close(prior.prox(x, torch.tensor(0.0, dtype=D)), x, rtol=0, atol=0)


def test_tv_prox_with_some_zero_gammas_is_entrywise():
    """A tensor gamma with zeros: identity there, the usual prox elsewhere (no NaN)."""
    x = torch.rand(2, 1, 6, 6, dtype=D)
    tv = TVPrior(n_it_max=50)
    gamma = torch.tensor([0.0, 0.2], dtype=D).reshape(2, 1, 1, 1)
    out = tv.prox(x, gamma)
    torch.testing.assert_close(out[0], x[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1:], tv.prox(x[1:], 0.2), rtol=1e-12, atol=1e-12)
    w = torch.randn_like(x)
    grad = torch.func.grad(lambda g: (tv.prox(x, g) * w).sum())(gamma)
    assert torch.isfinite(grad).all()


def test_tv_prox_gradient_in_gamma_is_finite_and_matches_finite_differences():
    """It was NaN (sqrt at 0 in the dual projection) for every gamma."""
    x, w = torch.rand(2, 1, 6, 6, dtype=D), torch.randn(2, 1, 6, 6, dtype=D)
    tv = TVPrior(n_it_max=50)
    grad = torch.func.grad(lambda g: (tv.prox(x, g) * w).sum())(torch.tensor(0.2, dtype=D))
    eps = 1e-6
    fd = ((tv.prox(x, 0.2 + eps) - tv.prox(x, 0.2 - eps)) * w).sum() / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)


def test_tv_prox_of_the_pgd_with_lambda_zero_is_finite():
    from unroll.optim import PGD

    y = torch.rand(1, 1, 8, 8, dtype=D)
    x = PGD(prior=TVPrior(n_it_max=5), lambda_reg=0.0, stepsize=1.0, max_iter=3)(
        y, P.Denoising(None)
    )
    torch.testing.assert_close(x, y)  # no regularisation: the data term's minimiser


@pytest.mark.parametrize(
    "make",
    [
        lambda x: PnP(lambda v, s: v).prox(x, 1.0, sigma=-0.1),
        lambda x: PnP(lambda v, s: v).prox(x, 1.0, sigma=NAN),
        lambda x: PnP(lambda v, s: v).prox(x, 1.0, sigma=torch.tensor([0.1, INF])),
        lambda x: RED(lambda v, s: v).grad(x, sigma=-1.0),
        lambda x: RED(lambda v, s: v).value(x, sigma=INF),
    ],
    ids=["pnp-negative", "pnp-nan", "pnp-tensor-inf", "red-negative", "red-value-inf"],
)
def test_denoiser_priors_reject_bad_noise_levels(make):
    x = torch.rand(2, 1, 6, 6, dtype=D)
    with pytest.raises(
        ValueError,
        match=r"^unroll.optim.(PnP|RED): sigma \(the denoiser's noise "
        r"level\) must be >= 0 and finite",
    ) as err:
        make(x)
    assert "sigma_denoiser" in str(err.value)


def test_tv_prior_rejects_a_bool_iteration_count():
    with pytest.raises(ValueError, match="^unroll.optim.TVPrior: n_it_max must be an int"):
        TVPrior(n_it_max=True)


# ---------------------------------------------------------------------- data fidelities
@pytest.mark.parametrize(
    "make, cls, words",
    [
        (lambda: L2(sigma=NAN), ValueError, "^unroll.optim.L2: sigma must be > 0 and finite"),
        (lambda: L2(sigma=INF), ValueError, "^unroll.optim.L2: sigma must be > 0 and finite"),
        (
            lambda: L2(sigma=torch.tensor([1.0, -1.0])),
            ValueError,
            r"^unroll.optim.L2: sigma must be > 0 and finite \(every entry\)",
        ),
        (lambda: L2(sigma="1"), TypeError, "^unroll.optim.L2: sigma must be a real number"),
        (lambda: L1(norm=INF), ValueError, "^unroll.optim.L1: norm must be > 0 and finite"),
        (lambda: L1(max_iter=True), ValueError, "^unroll.optim.L1: max_iter must be an int"),
    ],
    ids=["l2-nan", "l2-inf", "l2-tensor-negative", "l2-str", "l1-norm-inf", "l1-bool-iter"],
)
def test_data_fidelity_constructors_reject_bad_values(make, cls, words):
    with pytest.raises(cls, match=words):
        make()


@pytest.mark.parametrize(
    "call, api",
    [
        (lambda z, y: L1().prox(z, y, P.Denoising(), 0.0), "unroll.optim.L1.prox"),
        (lambda z, y: L1().prox(z, y, P.Denoising(), torch.tensor(NAN)), "unroll.optim.L1.prox"),
        (lambda z, y: L1().d_prox(z, y, -1.0), "unroll.optim.L1.d_prox"),
        (lambda z, y: L2().d_prox(z, y, INF), "unroll.optim.L2.d_prox"),
        (lambda z, y: L2().prox(z, y, P.Denoising(), -1.0), "Denoising.prox_l2"),
    ],
    ids=["l1-prox-zero", "l1-prox-nan", "l1-dprox-negative", "l2-dprox-inf", "l2-prox-negative"],
)
def test_data_fidelity_steps_reject_bad_gamma(call, api):
    z, y = torch.rand(2, 1, 4, 4, dtype=D), torch.rand(2, 1, 4, 4, dtype=D)
    with pytest.raises(ValueError, match=f"^{api}: gamma must be > 0"):
        call(z, y)


# ---------------------------------------------------------------------- settings
@pytest.mark.parametrize(
    "make, cls, words",
    [
        (
            lambda: P.Blur(torch.rand(3, 3), tol=NAN),
            ValueError,
            "^Blur: tol must be a finite number",
        ),
        (
            lambda: P.Blur(torch.rand(3, 3), tol=INF),
            ValueError,
            "^Blur: tol must be a finite number",
        ),
        (
            lambda: P.CompressedSensing(True, 9),
            ValueError,
            "^CompressedSensing: m and n must be positive ints",
        ),
        (
            lambda: P.CompressedSensing(4, 9, dtype=torch.int64),
            TypeError,
            "^CompressedSensing: dtype must be a real floating dtype",
        ),
    ],
    ids=["tol-nan", "tol-inf", "cs-bool-m", "cs-int-dtype"],
)
def test_physics_settings_reject_bad_values(make, cls, words):
    with pytest.raises(cls, match=words):
        make()


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: P.gaussian_blur(INF), "^gaussian_blur: sigma must be > 0 and finite, got inf"),
        (lambda: P.gaussian_blur((1.0, NAN)), "^gaussian_blur: sigma must be > 0 and finite"),
        (lambda: P.gaussian_blur(1.0, angle=NAN), "^gaussian_blur: angle must be a finite number"),
    ],
    ids=["sigma-inf", "sigma-nan", "angle-nan"],
)
def test_gaussian_blur_rejects_non_finite_values(make, words):
    with pytest.raises(ValueError, match=words):
        make()


def test_conv2d_helpers_name_both_dtypes():
    x, k = torch.rand(1, 1, 6, 6, dtype=D), torch.rand(1, 1, 3, 3)
    with pytest.raises(
        TypeError, match="^conv2d: the input is torch.float64 but the kernel is torch.float32"
    ):
        P.conv2d(x, k)
    with pytest.raises(TypeError, match="^conv_transpose2d: the input is torch.float64"):
        P.conv_transpose2d(x, k)
