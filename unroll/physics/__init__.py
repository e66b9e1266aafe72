r"""Imaging physics: linear forward operators as pytrees, and the least-squares prox.

Every operator has ``A(x)``, ``A_adjoint(y)`` (explicit, exact adjoints), ``physics(x)``
(noisy measurements), ``prox_l2(z, y, gamma)`` and ``A_dagger(y)``. Closed-form proxes where
they exist (:class:`Denoising`, :class:`Inpainting`, :class:`MRI`, :class:`BlurFFT`,
:class:`Downsampling` with circular padding); conjugate gradient with an O(1)-memory
implicit backward (:func:`least_squares`) otherwise.

Example:
    >>> import torch
    >>> from unroll import physics as P
    >>> blur = P.Blur(P.gaussian_blur(2.5), padding="valid", noise_model=P.GaussianNoise(0.1))
    >>> x = torch.rand(8, 3, 32, 32)
    >>> h = blur.prox_l2(torch.zeros_like(x), blur(x), 1.0)   # differentiable, O(1) memory
"""

from unroll.physics.base import ComposedPhysics, LinearPhysics, compose
from unroll.physics.blur import Blur, conv2d, conv_transpose2d, gaussian_blur
from unroll.physics.blur_fft import BlurFFT
from unroll.physics.compressed_sensing import CompressedSensing
from unroll.physics.downsampling import Downsampling, bicubic_filter, bilinear_filter
from unroll.physics.inpainting import Denoising, Inpainting
from unroll.physics.mri import MRI, MultiCoilMRI, fft2c, ifft2c
from unroll.physics.noise import GaussianNoise
from unroll.physics.prox import least_squares

__all__ = [
    "LinearPhysics",
    "ComposedPhysics",
    "compose",
    "Denoising",
    "Blur",
    "BlurFFT",
    "Downsampling",
    "Inpainting",
    "MRI",
    "MultiCoilMRI",
    "CompressedSensing",
    "GaussianNoise",
    "gaussian_blur",
    "bicubic_filter",
    "bilinear_filter",
    "conv2d",
    "conv_transpose2d",
    "fft2c",
    "ifft2c",
    "least_squares",
]
