"""DeepInverse's operator conveniences (issue 14): ``adjointness_test``, ``compute_sqnorm``,
``compute_norm`` and random ``Inpainting(mask=p)`` masks, checked in float64 against
independent references (dense singular values, the formula of the defect, DeepInverse's
Bernoulli-mask recipe)."""

from __future__ import annotations

import warnings

import pytest
import torch

from unroll._failure import ConvergenceError, ConvergenceWarning
from unroll.physics import (
    Blur,
    CompressedSensing,
    Inpainting,
    LinearPhysics,
    gaussian_blur,
    random_mask,
)
from unroll.physics.spectral import power_method

D = torch.float64


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------- adjointness_test
def test_adjointness_test_is_the_defect_formula():
    M = torch.randn(5, 7, dtype=D)
    wrong = LinearPhysics(lambda x: x @ M.T, lambda y: 2 * (y @ M))  # twice the adjoint
    u = torch.randn(3, 7, dtype=D)
    got = wrong.adjointness_test(u, rng=torch.Generator().manual_seed(4))
    v = torch.randn(3, 5, generator=torch.Generator().manual_seed(4), dtype=D)
    expected = (v * (u @ M.T)).sum() - (2 * (v @ M) * u).sum()  # = -<v, M u>
    assert torch.allclose(got, expected, rtol=1e-12)
    assert abs(float(got)) > 1e-3
    right = LinearPhysics(lambda x: x @ M.T, lambda y: y @ M)
    assert abs(float(right.adjointness_test(u))) < 1e-12


def test_adjointness_test_complex_convention():
    M = torch.randn(4, 6, dtype=torch.complex128)
    phys = LinearPhysics(lambda x: x @ M.T, lambda y: y @ M.conj())
    u = torch.randn(2, 6, dtype=torch.complex128)
    defect = phys.adjointness_test(u)
    assert defect.is_complex() and abs(defect) < 1e-12
    bad = LinearPhysics(lambda x: x @ M.T, lambda y: y @ M)  # transpose without conjugate
    assert abs(bad.adjointness_test(u)) > 1e-3


# ---------------------------------------------------------------------- norms
def test_compute_sqnorm_and_norm_against_svd():
    physics = Blur(gaussian_blur(1.0, dtype=D), padding="reflect")
    x = torch.zeros(1, 1, 6, 7, dtype=D)
    eye = torch.eye(x.numel(), dtype=D)
    M = torch.stack([physics.A(eye[j].reshape(x.shape)).reshape(-1) for j in range(x.numel())], 1)
    s = torch.linalg.matrix_norm(M, ord=2)
    sq = physics.compute_sqnorm(x, tol=1e-12, max_iter=10_000)
    assert torch.allclose(sq, s**2, rtol=1e-6)
    assert torch.allclose(physics.compute_norm(x, squared=False, tol=1e-12, max_iter=10_000), s)
    with pytest.warns(DeprecationWarning, match="compute_sqnorm"):
        sq2 = physics.compute_norm(x, tol=1e-12, max_iter=10_000)
    assert torch.allclose(sq2, s**2, rtol=1e-6)


def test_compute_sqnorm_of_fast_cs_is_one_and_of_a_mask_its_max():
    fast = CompressedSensing(20, (1, 6, 6), fast=True, dtype=D)
    assert abs(float(fast.compute_sqnorm(torch.zeros(1, 1, 6, 6, dtype=D))) - 1) < 1e-6
    mask = torch.tensor([[0.5, 3.0, 1.0]], dtype=D)
    sq = Inpainting(mask).compute_sqnorm(torch.zeros(2, 1, 3, dtype=D), tol=1e-12)
    assert abs(float(sq) - 9.0) < 1e-9


def test_power_method_failure_policy():
    M = torch.diag(torch.tensor([1.0, 0.999, 0.5], dtype=D))
    x0 = torch.zeros(3, dtype=D)
    with pytest.warns(ConvergenceWarning, match="power_method: stopped at max_iter=3"):
        power_method(lambda v: M @ v, x0, max_iter=3, tol=1e-14)
    with pytest.raises(ConvergenceError):
        power_method(lambda v: M @ v, x0, max_iter=3, tol=1e-14, on_failure="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        power_method(lambda v: M @ v, x0, max_iter=3, tol=1e-14, on_failure="ignore")
    with pytest.raises(ValueError, match="power_method: max_iter must be a positive int"):
        power_method(lambda v: v, x0, max_iter=0)
    with pytest.raises(ValueError, match="compute_norm: squared must be True or False"):
        Inpainting(torch.ones(3, dtype=D)).compute_norm(x0, squared="yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- random inpainting masks
def test_random_mask_follows_deepinv_recipe():
    size = (3, 9, 8)
    m = Inpainting(mask=0.3, img_size=size, rng=torch.Generator().manual_seed(7)).mask
    u = torch.rand(size, generator=torch.Generator().manual_seed(7))
    expected = (u[:1] <= 0.3).expand(size).to(torch.get_default_dtype()).unsqueeze(0)
    assert torch.equal(m, expected)
    channelwise = Inpainting(
        mask=0.3, img_size=size, pixelwise=False, rng=torch.Generator().manual_seed(7)
    ).mask
    assert torch.equal(channelwise, (u <= 0.3).to(torch.get_default_dtype()).unsqueeze(0))


def test_random_mask_density_and_deepinv_argument_order():
    big = random_mask(0.7, (1, 200, 200), rng=torch.Generator().manual_seed(0))
    assert abs(float(big.mean()) - 0.7) < 0.01
    a = Inpainting((2, 5, 5), 0.5, rng=torch.Generator().manual_seed(1))  # DeepInverse's order
    b = Inpainting(mask=0.5, img_size=(2, 5, 5), rng=torch.Generator().manual_seed(1))
    assert torch.equal(a.mask, b.mask)
    x = torch.rand(4, 2, 5, 5)
    assert torch.equal(a.A(x), a.mask * x)


def test_random_mask_errors():
    with pytest.raises(ValueError, match=r"Inpainting: a float mask \(0.5\) needs img_size"):
        Inpainting(mask=0.5)
    with pytest.raises(ValueError, match="Inpainting: a float mask is a keep probability"):
        Inpainting(mask=1.5, img_size=(1, 4, 4))
    with pytest.raises(TypeError, match="Inpainting: rng only applies to a float mask"):
        Inpainting(torch.ones(1, 4, 4), rng=torch.Generator())


def test_functional_namespace_matches_deepinverse_paths_and_the_gaussian_formula():
    """``unroll.physics.functional`` holds DeepInverse's functional names (same objects as the
    ``unroll.physics`` ones); the Gaussian filter is the normalised sampled Gaussian."""
    from unroll import physics
    from unroll.physics import functional

    for name in functional.__all__:
        assert getattr(functional, name) is getattr(physics, name, getattr(functional, name))
    assert functional.bicubic_filter is physics.bicubic_filter
    k = functional.gaussian_blur(sigma=(1.0, 1.0), dtype=torch.float64)[0, 0]
    r = (k.shape[-1] - 1) // 2
    i = torch.arange(-r, r + 1, dtype=torch.float64)
    ref = torch.exp(-(i[:, None] ** 2 + i[None, :] ** 2) / 2)
    torch.testing.assert_close(k, ref / ref.sum(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "make",
    [
        lambda **kw: __import__("unroll").physics.Blur(torch.ones(1, 1, 3, 3) / 9, **kw),
        lambda **kw: __import__("unroll").physics.BlurFFT(
            torch.ones(1, 1, 3, 3) / 9, img_size=(1, 8, 8), **kw
        ),
        lambda **kw: __import__("unroll").physics.Inpainting(torch.ones(1, 8, 8), **kw),
        lambda **kw: __import__("unroll").physics.MRI(torch.ones(8, 8), **kw),
        lambda **kw: __import__("unroll").physics.Denoising(**kw),
    ],
    ids=["Blur", "BlurFFT", "Inpainting", "MRI", "Denoising"],
)
def test_device_keyword_equals_to_device(make):
    """DeepInverse's ``device=`` constructor keyword gives the operator that ``.to(device)``
    gives: same leaves on that device, same settings."""
    import optree

    with_kw, moved = make(device="cpu"), make().to(device="cpu")
    a, spec_a = optree.tree_flatten(with_kw, namespace="unroll")
    b, spec_b = optree.tree_flatten(moved, namespace="unroll")
    assert spec_a == spec_b and len(a) == len(b)
    for u, v in zip(a, b):
        assert u.device == torch.device("cpu") and torch.equal(u, v)
