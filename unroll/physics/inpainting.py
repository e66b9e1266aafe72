r"""Pixel-wise operators: :class:`Denoising` (identity) and :class:`Inpainting` (mask).

Both are diagonal, so their prox and pseudo-inverse are closed forms for any ``gamma`` shape:

.. math:: \operatorname{prox}: h = \frac{\gamma\, m\, y + z}{\gamma\, m^2 + 1}, \qquad
          A^\dagger y = \begin{cases} y / m & m \ne 0 \\ 0 & m = 0 \end{cases}.
"""

from __future__ import annotations

import torch

from unroll.physics._utils import expand_per_sample, require_real, require_tensor
from unroll.physics.base import LinearPhysics
from unroll.physics.noise import GaussianNoise
from unroll.physics.prox import check_gamma

__all__ = ["Denoising", "Inpainting"]

_DEFAULT_NOISE = GaussianNoise(0.1)


def _same_shape(api: str, z: torch.Tensor, y: torch.Tensor) -> None:
    require_tensor(api, "z", z)
    require_tensor(api, "y", y)
    if z.shape != y.shape:
        raise ValueError(
            f"{api}: y has shape {tuple(y.shape)} but z has {tuple(z.shape)}; this operator "
            "keeps the shape, so they must match."
        )


class Denoising(LinearPhysics):
    r"""The identity operator :math:`A = I`; measurements are ``noise_model(x)``.

    ``prox_l2(z, y, γ) = (γ y + z) / (γ + 1)`` and ``A_dagger(y) = y``.

    Args:
        noise_model: default ``GaussianNoise(0.1)``.

    Example:
        >>> import torch
        >>> from unroll.physics import Denoising, GaussianNoise
        >>> physics = Denoising(GaussianNoise(0.2))
        >>> physics.prox_l2(torch.zeros(1, 2), torch.ones(1, 2), 1.0)
        tensor([[0.5000, 0.5000]])
    """

    leaves = ()
    static = ()

    def __init__(
        self,
        noise_model=_DEFAULT_NOISE,
        *,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
    ) -> None:
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return require_tensor("Denoising.A", "x", x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return require_tensor("Denoising.A_adjoint", "y", y)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def prox_l2(self, z, y, gamma, **options):
        _same_shape("Denoising.prox_l2", z, y)
        g = expand_per_sample(check_gamma("Denoising.prox_l2", gamma, z), z)
        return (g * y + z) / (g + 1)

    def A_dagger(self, y, **options):
        return require_tensor("Denoising.A_dagger", "y", y)


class Inpainting(LinearPhysics):
    r"""Masking :math:`y = m \odot x` (``y`` keeps ``x``'s shape, zeros where ``m = 0``).

    Args:
        mask: real tensor broadcastable to the images (e.g. ``(C, H, W)``, ``(1, C, H, W)``
            or per sample ``(B, C, H, W)``); binary or any real weights. A pytree leaf.
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`.

    Example:
        >>> import torch
        >>> from unroll.physics import Inpainting
        >>> mask = torch.tensor([[1.0, 0.0]])
        >>> physics = Inpainting(mask)
        >>> physics.prox_l2(torch.ones(1, 1, 2), torch.zeros(1, 1, 2), 1.0)
        tensor([[[0.5000, 1.0000]]])
    """

    leaves = ("mask",)
    static = ()

    def __init__(
        self,
        mask: torch.Tensor,
        *,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
    ) -> None:
        require_tensor("Inpainting", "mask", mask)
        if mask.dtype == torch.bool:
            mask = mask.to(torch.get_default_dtype())
        require_real("Inpainting", "mask", mask)
        self.mask = mask
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver)

    def _mask_for(self, api: str, x: torch.Tensor) -> torch.Tensor:
        require_tensor(api, "x", x)
        try:
            ok = torch.broadcast_shapes(self.mask.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"{api}: mask of shape {tuple(self.mask.shape)} does not broadcast to the input "
                f"of shape {tuple(x.shape)}; give the mask the image's shape (C, H, W) or "
                "(B, C, H, W)."
            )
        return self.mask

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self._mask_for("Inpainting.A", x) * x

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._mask_for("Inpainting.A_adjoint", y) * y

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        return self._mask_for("Inpainting.A_adjoint_A", x).square() * x

    def prox_l2(self, z, y, gamma, **options):
        _same_shape("Inpainting.prox_l2", z, y)
        m = self._mask_for("Inpainting.prox_l2", z)
        g = expand_per_sample(check_gamma("Inpainting.prox_l2", gamma, z), z)
        return (g * m * y + z) / (g * m.square() + 1)

    def A_dagger(self, y, **options):
        m = self._mask_for("Inpainting.A_dagger", y)
        nz = m != 0
        return torch.where(nz, y / torch.where(nz, m, torch.ones_like(m)), torch.zeros_like(y))
