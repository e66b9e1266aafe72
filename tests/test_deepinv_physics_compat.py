"""DeepInverse 0.4.1 call shapes of the physics: ``padding="constant"`` (and ``"same"`` /
``None`` for plain decimation), ``A_dagger`` / ``prox_l2`` ``verbose=``, and
``GaussianNoise(rng=)`` with ``sigma=`` / ``seed=`` at call.

References are independent: zero padding written with ``F.pad``, decimation by slicing, the
noise drawn by ``torch.randn`` from an equally seeded generator, iteration counts from
``least_squares(return_info=True)``.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from unroll import tree
from unroll.physics import Blur, Downsampling, GaussianNoise, gaussian_blur, least_squares

D = torch.float64


def test_constant_padding_is_zero_padding():
    k = torch.rand(1, 1, 5, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, 9, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    blur = Blur(k, padding="constant")
    assert blur.padding == "zeros"
    ref = F.conv2d(F.pad(x, (1, 1, 2, 2)).reshape(6, 1, 13, 10), k.flip(-2, -1))
    torch.testing.assert_close(blur.A(x), ref.reshape(2, 3, 9, 8), rtol=0, atol=1e-14)
    down = Downsampling((3, 8, 8), k, 2, padding="constant", dtype=D)
    zeros = Downsampling((3, 8, 8), k, 2, padding="zeros", dtype=D)
    x8 = x[..., :8, :8]
    torch.testing.assert_close(down.A(x8), zeros.A(x8), rtol=0, atol=0)


@pytest.mark.parametrize("padding", ["same", None])
def test_plain_decimation_accepts_deepinverses_padding_values(padding):
    x = torch.rand(2, 3, 16, 16, dtype=D)
    physics = Downsampling((3, 16, 16), None, 2, padding=padding)
    torch.testing.assert_close(physics.A(x), x[..., ::2, ::2], rtol=0, atol=0)
    with pytest.raises(ValueError, match="^Downsampling: unknown padding 'same'"):
        Downsampling((3, 16, 16), "gaussian", 2, padding="same")


def test_verbose_prints_the_cg_iterations(capsys):
    motion = Blur(gaussian_blur((2.0, 0.7), angle=30, dtype=D), "valid", max_iter=500, tol=1e-8)
    x = torch.rand(2, 1, 20, 20, dtype=D, generator=torch.Generator().manual_seed(2))
    y = motion.A(x)
    _, info = least_squares(motion, y, None, None, return_info=True)
    motion.A_dagger(y, verbose=True)
    line = capsys.readouterr().out.strip()
    assert line.startswith("Blur.A_dagger: CG converged after ")
    assert f"after {int(info.num_iter.max())} iteration(s)" in line
    _, info = least_squares(motion, y, torch.zeros_like(x), 2.0, return_info=True)
    motion.prox_l2(torch.zeros_like(x), y, 2.0, verbose=True)
    assert f"Blur.prox_l2: CG converged after {int(info.num_iter.max())}" in capsys.readouterr().out
    gauss = Blur(gaussian_blur(1.0, dtype=D), "valid")
    gauss.prox_l2(x, gauss.A(x), 2.0, verbose=True)
    assert "exact solve (separable kernel)" in capsys.readouterr().out
    motion.A_dagger(y)  # quiet by default
    assert capsys.readouterr().out == ""
    with pytest.raises(TypeError, match="^Blur.A_dagger: verbose must be True or False"):
        motion.A_dagger(y, verbose="yes")


def test_noise_from_a_generator_is_reproducible():
    y = torch.rand(3, 2, 5, 5, dtype=D)
    noise = GaussianNoise(0.2, rng=torch.Generator().manual_seed(7))
    expected = y + 0.2 * torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=D)
    torch.testing.assert_close(noise(y), expected, rtol=0, atol=0)
    first, again = noise(y, seed=3), noise(y, seed=3)  # seed= re-seeds the generator
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    # sigma= for one call, the object unchanged
    g = torch.Generator().manual_seed(4)
    once = GaussianNoise(0.2, rng=torch.Generator().manual_seed(4))(y, sigma=0.5)
    torch.testing.assert_close(once, y + 0.5 * torch.randn(y.shape, generator=g, dtype=D))
    assert noise.sigma == 0.2
    per_sample = torch.tensor([0.1, 0.0, 0.3], dtype=D)
    out = GaussianNoise(0.2, rng=torch.Generator().manual_seed(5))(y, sigma=per_sample)
    torch.testing.assert_close(out[1], y[1], rtol=0, atol=0)


def test_noise_generator_errors_and_structure():
    with pytest.raises(ValueError, match=r"^GaussianNoise: seed=1 needs"):
        GaussianNoise(0.1)(torch.zeros(2, 3), seed=1)
    with pytest.raises(TypeError, match="rng must be a torch.Generator"):
        GaussianNoise(0.1, rng=0)
    with pytest.raises(ValueError, match="sigma"):
        GaussianNoise(0.1)(torch.zeros(2, 3), sigma=-1.0)
    rng = torch.Generator().manual_seed(0)
    physics = Blur(gaussian_blur(1.0), "circular", noise_model=GaussianNoise(0.1, rng=rng))
    leaves, spec = tree.flatten(physics)
    assert tree.unflatten(spec, leaves).noise_model.rng is rng
    assert physics.to(D).noise_model.rng is rng
    assert isinstance(copy.deepcopy(physics).noise_model.rng, torch.Generator)
    assert "rng=" in repr(physics.noise_model)


def test_clone_is_independent_and_differentiable():
    from unroll.physics import CompressedSensing, Inpainting

    mask = torch.rand(1, 6, 6, dtype=D).requires_grad_()
    rng = torch.Generator().manual_seed(1)
    physics = Inpainting(mask, noise_model=GaussianNoise(0.1, rng=rng))
    twin = physics.clone()
    assert twin.mask is not physics.mask and twin.mask.data_ptr() != physics.mask.data_ptr()
    x = torch.rand(2, 1, 6, 6, dtype=D)
    torch.testing.assert_close(twin.A(x), physics.A(x), rtol=0, atol=0)
    twin.A(x).sum().backward()  # the clone's gradient reaches the original mask
    torch.testing.assert_close(mask.grad, x.sum(0), rtol=0, atol=0)
    torch.testing.assert_close(twin.noise_model(x), physics.noise_model(x), rtol=0, atol=0)
    assert twin.noise_model.rng is not rng
    cs = CompressedSensing(8, (1, 4, 4), compute_inverse=True, dtype=D)
    torch.testing.assert_close(cs.A(cs.A_dagger(cs.A(x[:, :, :4, :4]))), cs.A(x[:, :, :4, :4]))
    with pytest.raises(TypeError, match="^CompressedSensing: compute_inverse must be"):
        CompressedSensing(8, (1, 4, 4), compute_inverse=1)
