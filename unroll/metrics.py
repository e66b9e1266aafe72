"""Image-quality metrics, batched: each returns one value per sample, shape ``(B,)``.

Conventions: ``x`` is the estimate, ``y`` the reference (ground truth), both of shape
``(B, ...)``. Complex inputs are supported by :func:`psnr` and :func:`nmse` (through
``|x − y|²``); :func:`ssim` needs real images (take magnitudes first).

Example:
    >>> import torch
    >>> from unroll import metrics
    >>> x = torch.zeros(2, 1, 16, 16); y = torch.full((2, 1, 16, 16), 0.1)
    >>> metrics.psnr(x, y)
    tensor([20., 20.])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(api: str, x: torch.Tensor, y: torch.Tensor, min_dim: int = 2) -> None:
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{api}: {name} must be a tensor, got {type(t).__name__}.")
    if x.shape != y.shape:
        raise ValueError(
            f"{api}: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if x.dim() < min_dim:
        raise ValueError(
            f"{api}: expected a batch of shape (B, ...) with at least {min_dim} dimensions, got "
            f"{tuple(x.shape)}; add a batch dimension with x[None]."
        )


def _abs2(t: torch.Tensor) -> torch.Tensor:
    return t.real.square() + t.imag.square() if t.is_complex() else t.square()


def _per_sample_mean(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).mean(1)


__all__ = [
    "mse",
    "psnr",
    "nmse",
    "ssim",
]


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error ``mean |x_i − y_i|²``, shape ``(B,)``."""
    _check_pair("unroll.metrics.mse", x, y)
    return _per_sample_mean(_abs2(x - y))


def psnr(
    x: torch.Tensor, y: torch.Tensor, max_pixel: float | torch.Tensor | None = 1.0
) -> torch.Tensor:
    r"""Peak signal-to-noise ratio in dB, per sample.

    .. math:: \mathrm{PSNR}_i = 10 \log_{10}\frac{P_i^2}{\tfrac1n\|x_i − y_i\|^2}

    Args:
        x: estimate, shape ``(B, ...)``.
        y: reference, same shape.
        max_pixel: peak value ``P`` (the data range): a float, a ``(B,)`` tensor, or ``None``
            for the per-sample maximum of ``|y_i|``.

    Returns:
        ``(B,)`` tensor (``inf`` where ``x_i = y_i``).

    References:
        Matches ``skimage.metrics.peak_signal_noise_ratio(y_i, x_i, data_range=P)``.
    """
    api = "unroll.metrics.psnr"
    _check_pair(api, x, y)
    if max_pixel is None:
        peak = y.abs().reshape(y.shape[0], -1).amax(1)
    else:
        if not isinstance(max_pixel, torch.Tensor) and not max_pixel > 0:
            raise ValueError(f"{api}: max_pixel must be positive, got {max_pixel}.")
        peak = torch.as_tensor(max_pixel, dtype=x.real.dtype, device=x.device)
        if peak.dim() > 1 or (peak.dim() == 1 and peak.shape[0] not in (1, x.shape[0])):
            raise ValueError(
                f"{api}: max_pixel must be a float or of shape (B,) = ({x.shape[0]},), got "
                f"shape {tuple(peak.shape)}."
            )
    return 10.0 * torch.log10(peak.square() / mse(x, y))


def nmse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r"""Normalised mean squared error per sample: ``‖x_i − y_i‖² / ‖y_i‖²`` (``y`` the reference).

    Returns:
        ``(B,)`` tensor; equals ``skimage.metrics.normalized_root_mse(y_i, x_i,
        normalization="euclidean") ** 2``.
    """
    _check_pair("unroll.metrics.nmse", x, y)
    num = _abs2(x - y).reshape(x.shape[0], -1).sum(1)
    return num / _abs2(y).reshape(y.shape[0], -1).sum(1)


def _gaussian_window(radius: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    w = torch.exp(-0.5 * (r / sigma) ** 2)
    return w / w.sum()


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    max_pixel: float = 1.0,
    *,
    gaussian_weights: bool = True,
    sigma: float = 1.5,
    window_size: int | None = None,
    use_sample_covariance: bool = False,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    r"""Structural similarity index per sample (mean over channels and valid pixels).

    With local means ``μ``, variances ``σ²`` and covariance ``σ_xy`` from a separable window
    ``w`` (Gaussian of std ``sigma`` truncated at ``3.5 sigma``, or uniform),
    ``C_1 = (k_1 P)^2``, ``C_2 = (k_2 P)^2``:

    .. math:: \mathrm{SSIM}(x, y) = \operatorname{mean}_{p}
        \frac{(2 μ_x μ_y + C_1)(2 σ_{xy} + C_2)}{(μ_x^2 + μ_y^2 + C_1)(σ_x^2 + σ_y^2 + C_2)},

    the mean over every channel and every pixel whose window lies inside the image (no
    padding), which is what ``skimage.metrics.structural_similarity`` averages (it crops the
    border after filtering).

    Args:
        x: estimate, real, ``(B, C, H, W)`` or ``(B, H, W)``.
        y: reference, same shape.
        max_pixel: the data range ``P``.
        gaussian_weights: Gaussian window (Wang et al.) or uniform window.
        sigma: std of the Gaussian window.
        window_size: odd window side; default ``2·int(3.5·sigma + 0.5) + 1`` (11) for the
            Gaussian window, 7 for the uniform one.
        use_sample_covariance: scale variances by ``N/(N−1)`` (``N`` = window pixels), as
            skimage does by default; ``False`` follows Wang et al.
        k1, k2: stabilising constants.

    Returns:
        ``(B,)`` tensor.

    References:
        Z. Wang, A. C. Bovik, H. R. Sheikh, E. P. Simoncelli, "Image quality assessment: from
        error visibility to structural similarity", IEEE TIP 13(4), 2004.
    """
    api = "unroll.metrics.ssim"
    _check_pair(api, x, y, min_dim=3)
    if x.is_complex() or y.is_complex():
        raise TypeError(f"{api}: complex images are not supported; pass x.abs() and y.abs().")
    if x.dim() == 3:
        x, y = x.unsqueeze(1), y.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"{api}: expected (B, C, H, W) or (B, H, W), got {tuple(x.shape)}.")
    if not max_pixel > 0:
        raise ValueError(f"{api}: max_pixel must be positive, got {max_pixel}.")
    if window_size is None:
        window_size = 2 * int(3.5 * sigma + 0.5) + 1 if gaussian_weights else 7
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"{api}: window_size must be odd and positive, got {window_size}.")
    b, c, h, w = x.shape
    if h < window_size or w < window_size:
        raise ValueError(
            f"{api}: images of size {h}x{w} are smaller than the {window_size}x{window_size} "
            f"window; pass a smaller window_size."
        )
    radius = window_size // 2
    if gaussian_weights:
        win = _gaussian_window(radius, sigma, x)
    else:
        win = torch.full((window_size,), 1.0 / window_size, dtype=x.dtype, device=x.device)
    kernel_h = win.reshape(1, 1, -1, 1)
    kernel_w = win.reshape(1, 1, 1, -1)

    def filt(t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(b * c, 1, h, w)
        return F.conv2d(F.conv2d(t, kernel_h), kernel_w)

    cov_norm = window_size**2 / (window_size**2 - 1) if use_sample_covariance else 1.0
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    c1, c2 = (k1 * max_pixel) ** 2, (k2 * max_pixel) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(b, -1).mean(1)
