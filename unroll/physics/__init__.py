r"""Imaging physics: linear forward operators as pytrees, and the least-squares prox.

Every operator has ``A(x)``, ``A_adjoint(y)`` (explicit, exact adjoints), ``physics(x)``
(noisy measurements), ``prox_l2(z, y, gamma)`` and ``A_dagger(y)``. Closed-form proxes where
they exist (:class:`Denoising`, :class:`Inpainting`, :class:`MRI` in 2-D and 3-D,
:class:`DynamicMRI`, :class:`BlurFFT`, :class:`Downsampling` with circular padding, the fast
:class:`CompressedSensing`); conjugate gradient with an O(1)-memory implicit backward
(:func:`least_squares`) otherwise. ``physics.adjointness_test(u)``,
``physics.compute_sqnorm(x0)`` and ``physics.compute_norm(x0)`` check an operator and estimate
its norm (:mod:`unroll.physics.spectral`).

Example:
    >>> import torch
    >>> from unroll import physics as P
    >>> blur = P.Blur(P.gaussian_blur(2.5), padding="valid", noise_model=P.GaussianNoise(0.1))
    >>> x = torch.rand(8, 3, 32, 32)
    >>> h = blur.prox_l2(torch.zeros_like(x), blur(x), 1.0)   # differentiable, O(1) memory
"""

from unroll.physics import functional
from unroll.physics.base import ComposedPhysics, LinearPhysics, compose
from unroll.physics.blur import (
    Blur,
    conv2d,
    conv3d,
    conv_transpose2d,
    conv_transpose3d,
    gaussian_blur,
)
from unroll.physics.blur_fft import BlurFFT
from unroll.physics.compressed_sensing import CompressedSensing
from unroll.physics.decomposable import DecomposablePhysics
from unroll.physics.downsampling import Downsampling, bicubic_filter, bilinear_filter
from unroll.physics.inpainting import Denoising, Inpainting, random_mask
from unroll.physics.mri import (
    MRI,
    DynamicMRI,
    MultiCoilMRI,
    birdcage_maps,
    fft2c,
    fftnc,
    ifft2c,
    ifftnc,
)
from unroll.physics.noise import GaussianNoise
from unroll.physics.prox import least_squares

__all__ = [
    "functional",
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
    "DynamicMRI",
    "birdcage_maps",
    "CompressedSensing",
    "DecomposablePhysics",
    "GaussianNoise",
    "gaussian_blur",
    "bicubic_filter",
    "bilinear_filter",
    "conv2d",
    "conv_transpose2d",
    "conv3d",
    "conv_transpose3d",
    "random_mask",
    "fft2c",
    "ifft2c",
    "fftnc",
    "ifftnc",
    "least_squares",
]
