r"""Circular blur by FFT, with a closed-form prox and pseudo-inverse.

With periodic boundaries the blur is diagonal in the Fourier basis:
:math:`A = \mathcal F^{-1} \operatorname{diag}(\hat k)\, \mathcal F`, :math:`\hat k` the
transfer function of the kernel zero-padded to the image and centred at ``(h // 2, w // 2)``
(the same convention as :class:`Blur` with ``padding="circular"``, which gives the same
operator). Hence

.. math:: \operatorname{prox}:
          \hat h = \frac{\bar{\hat k}\,\hat y + \hat z/\gamma}{|\hat k|^2 + 1/\gamma}
                 = \hat z + \frac{\bar{\hat k}\,(\hat y - \hat k \hat z)}{|\hat k|^2 + 1/\gamma},
          \qquad A^\dagger y = \mathcal F^{-1}\Bigl[\tfrac{\bar{\hat k}}{|\hat k|^2}\hat y\Bigr]
          \ (\text{on } |\hat k| > \text{rtol}\cdot\max|\hat k|).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from unroll.physics._utils import (
    check_prox_gamma,
    check_solve_options,
    expand_per_sample,
    is_scalar_or_per_sample,
    require_image,
    require_real,
    require_same_precision,
    safe_denominator,
)
from unroll.physics.base import LinearPhysics

__all__ = ["BlurFFT"]


class BlurFFT(LinearPhysics):
    r"""Circular convolution :math:`y = k \circledast x` computed with real FFTs.

    Args:
        filter: real kernel ``(h, w)`` or ``(b, c, h, w)`` (``b ∈ {1, B}``, ``c ∈ {1, C}``),
            no larger than the image; a pytree leaf (differentiable).
        img_size: ``(C, H, W)`` or ``(H, W)`` of the images.
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`
            (the CG settings only matter for a full-shaped ``gamma`` in ``prox_l2``).

    ``prox_l2`` and ``A_dagger`` are closed forms (for a number, 0-dim or per-sample ``(B,)``
    ``gamma``; a full-shaped ``gamma`` is not diagonal in Fourier and falls back to CG).
    ``A_dagger`` keeps the frequencies with ``|k̂| > rtol·max|k̂|``, ``rtol = eps·H·W``
    (``torch.linalg.pinv``'s default).

    Example:
        >>> import torch
        >>> from unroll.physics import BlurFFT, gaussian_blur
        >>> physics = BlurFFT(gaussian_blur(1.5), img_size=(3, 32, 32))
        >>> x = torch.rand(2, 3, 32, 32)
        >>> h = physics.prox_l2(x, physics.A(x), 0.5)
        >>> h.shape
        torch.Size([2, 3, 32, 32])
    """

    leaves = ("filter",)
    static = ("img_size",)

    def __init__(
        self,
        filter: torch.Tensor,  # noqa: A002
        img_size: tuple[int, ...],
        *,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
        solver: str = "CG",
        device: torch.device | str | None = None,
    ) -> None:
        require_real("BlurFFT", "filter", filter)
        if filter.dim() == 2:
            filter = filter.reshape(1, 1, *filter.shape)
        if filter.dim() != 4:
            raise ValueError(
                "BlurFFT: filter must have shape (h, w) or (b, c, h, w), got "
                f"{tuple(filter.shape)}."
            )
        img_size = tuple(int(s) for s in img_size)
        if len(img_size) not in (2, 3):
            raise ValueError(f"BlurFFT: img_size must be (C, H, W) or (H, W), got {img_size!r}.")
        if filter.shape[-2] > img_size[-2] or filter.shape[-1] > img_size[-1]:
            raise ValueError(
                f"BlurFFT: the filter {tuple(filter.shape[-2:])} is larger than the image "
                f"{img_size[-2:]}."
            )
        self.filter = filter
        self.img_size = img_size
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver, solver, device)

    def _check(self, api: str, name: str, x: torch.Tensor) -> None:
        require_image(api, name, x)
        require_same_precision(api, "filter", self.filter, name, x)
        size = self.img_size
        if tuple(x.shape[-len(size) :]) != size:
            raise ValueError(
                f"{api}: {name} has shape {tuple(x.shape)}, expected (B, *{size}) from img_size."
            )
        B, C = x.shape[:2]
        b, c = self.filter.shape[:2]
        if b not in (1, B) or c not in (1, C):
            raise ValueError(
                f"{api}: filter of shape {tuple(self.filter.shape)} does not fit {name} of shape "
                f"{tuple(x.shape)}; its batch dim must be 1 or {B} and its channel dim 1 or {C}."
            )

    def otf(self) -> torch.Tensor:
        """The transfer function ``k̂ = rfft2(kernel padded to (H, W), centred at 0)``."""
        H, W = self.img_size[-2:]
        k = self.filter
        h, w = k.shape[-2:]
        kp = F.pad(k, (0, W - w, 0, H - h))
        kp = torch.roll(kp, shifts=(-(h // 2), -(w // 2)), dims=(-2, -1))
        return torch.fft.rfft2(kp)

    def _apply(self, x: torch.Tensor, multiplier: torch.Tensor) -> torch.Tensor:
        return torch.fft.irfft2(torch.fft.rfft2(x) * multiplier, s=tuple(self.img_size[-2:]))

    def A(self, x: torch.Tensor) -> torch.Tensor:
        self._check("BlurFFT.A", "x", x)
        return self._apply(x, self.otf())

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check("BlurFFT.A_adjoint", "y", y)
        return self._apply(y, self.otf().conj())

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        self._check("BlurFFT.A_adjoint_A", "x", x)
        k = self.otf()
        return self._apply(x, k.real.square() + k.imag.square())

    def prox_l2(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        gamma: float | torch.Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        on_failure: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """Closed form ``ẑ + k̂* (ŷ − k̂ ẑ)/(|k̂|² + 1/γ)`` in Fourier (finite for any finite
        ``γ > 0``); a full-shaped ``γ`` falls back to CG with the given options."""
        api = "BlurFFT.prox_l2"
        opts = check_solve_options(
            api, max_iter, tol, implicit_backward_solver, on_failure, unknown
        )
        self._check(api, "z", z)
        self._check(api, "y", y)
        gamma = check_prox_gamma(api, gamma, z)
        if not is_scalar_or_per_sample(gamma, z):
            return self._cg_prox(z, y, gamma, opts)
        g = expand_per_sample(gamma, z)
        k = self.otf()
        z_hat = torch.fft.rfft2(z)
        den = safe_denominator(k.real.square() + k.imag.square() + 1 / g)
        h_hat = z_hat + k.conj() * (torch.fft.rfft2(y) - k * z_hat) / den
        return torch.fft.irfft2(h_hat, s=tuple(self.img_size[-2:]))

    def A_dagger(
        self,
        y: torch.Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        on_failure: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """Closed form (see the class docstring); the CG options are validated and ignored."""
        api = "BlurFFT.A_dagger"
        check_solve_options(api, max_iter, tol, implicit_backward_solver, on_failure, unknown)
        self._check(api, "y", y)
        H, W = self.img_size[-2:]
        k = self.otf()
        mag2 = k.real.square() + k.imag.square()
        rtol = torch.finfo(mag2.dtype).eps * H * W
        keep = mag2 > (rtol**2) * mag2.amax(dim=(-2, -1), keepdim=True)
        inv = torch.where(keep, k.conj() / torch.where(keep, mag2, torch.ones_like(mag2)), 0)
        return self._apply(y, inv)
