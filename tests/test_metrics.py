"""unroll.metrics against scikit-image / numpy references, per sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio, structural_similarity

from unroll import metrics

DT = torch.float64


def pair(shape=(3, 2, 20, 24), seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(shape, dtype=DT, generator=g)
    x = (y + noise * torch.randn(shape, dtype=DT, generator=g)).clamp(0, 1)
    return x, y


@pytest.mark.parametrize("max_pixel", [1.0, 2.5, "tensor", None])
def test_psnr_matches_skimage(max_pixel):
    x, y = pair()
    if max_pixel == "tensor":
        max_pixel = torch.tensor([1.0, 0.5, 2.0], dtype=DT)
    out = metrics.psnr(x, y, max_pixel=max_pixel)
    assert out.shape == (3,)
    for i in range(3):
        if max_pixel is None:
            rng = float(y[i].abs().max())
        elif isinstance(max_pixel, torch.Tensor):
            rng = float(max_pixel[i])
        else:
            rng = max_pixel
        ref = peak_signal_noise_ratio(y[i].numpy(), x[i].numpy(), data_range=rng)
        assert abs(out[i].item() - ref) < 1e-10


def test_psnr_complex_uses_modulus():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(2, 8, 8, dtype=torch.complex128, generator=g)
    x = y + 0.05 * torch.randn(2, 8, 8, dtype=torch.complex128, generator=g)
    out = metrics.psnr(x, y, max_pixel=3.0)
    for i in range(2):
        mse = np.mean(np.abs(x[i].numpy() - y[i].numpy()) ** 2)
        assert abs(out[i].item() - 10 * np.log10(9.0 / mse)) < 1e-10


def test_nmse_matches_skimage_and_numpy_complex():
    x, y = pair()
    out = metrics.nmse(x, y)
    for i in range(3):
        ref = normalized_root_mse(y[i].numpy(), x[i].numpy(), normalization="euclidean") ** 2
        assert abs(out[i].item() - ref) < 1e-12
    g = torch.Generator().manual_seed(2)
    yc = torch.randn(2, 5, 6, dtype=torch.complex128, generator=g)
    xc = torch.randn(2, 5, 6, dtype=torch.complex128, generator=g)
    outc = metrics.nmse(xc, yc)
    for i in range(2):
        a, b = xc[i].numpy(), yc[i].numpy()
        ref = np.sum(np.abs(a - b) ** 2) / np.sum(np.abs(b) ** 2)
        assert abs(outc[i].item() - ref) < 1e-12


@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_ssim_gaussian_matches_skimage(data_range):
    x, y = pair()
    out = metrics.ssim(x, y, max_pixel=data_range)
    assert out.shape == (3,)
    for i in range(3):
        ref = structural_similarity(
            y[i].numpy(),
            x[i].numpy(),
            data_range=data_range,
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert abs(out[i].item() - ref) < 1e-10


def test_ssim_uniform_window_matches_skimage_default():
    x, y = pair(shape=(2, 17, 19), noise=0.3)
    out = metrics.ssim(x, y, gaussian_weights=False, use_sample_covariance=True)
    for i in range(2):
        ref = structural_similarity(y[i].numpy(), x[i].numpy(), data_range=1.0)
        assert abs(out[i].item() - ref) < 1e-10


def test_ssim_identical_images_is_one_and_symmetry():
    x, y = pair()
    torch.testing.assert_close(metrics.ssim(y, y), torch.ones(3, dtype=DT))
    torch.testing.assert_close(metrics.ssim(x, y), metrics.ssim(y, x))


def test_metrics_errors():
    x, y = pair()
    with pytest.raises(ValueError, match="psnr: x and y must have the same shape"):
        metrics.psnr(x, y[:2])
    with pytest.raises(TypeError, match="ssim: complex"):
        metrics.ssim(x.to(torch.complex128), y.to(torch.complex128))
    with pytest.raises(ValueError, match="ssim: images of size"):
        metrics.ssim(x[..., :8, :8], y[..., :8, :8])
    with pytest.raises(ValueError, match="psnr: max_pixel must be positive"):
        metrics.psnr(x, y, max_pixel=0.0)
    with pytest.raises(ValueError, match="psnr: max_pixel must be a float or of shape"):
        metrics.psnr(x, y, max_pixel=torch.ones(2))
