r"""Magnetic resonance imaging: undersampled (multi-coil) Fourier operators.

With the centred orthonormal 2-D Fourier transform :math:`\mathcal F` (``fftshift ∘ fft2 ∘
ifftshift``, ``norm="ortho"``, so low frequencies sit at the centre of the mask),

* :class:`MRI`: :math:`y = m \odot \mathcal F x`, :math:`A^\top y = \mathcal F^{-1}(m \odot y)`;
  prox :math:`h = \mathcal F^{-1}\bigl[(\gamma m y + \mathcal F z)/(\gamma m^2 + 1)\bigr]`
  (computed as :math:`\hat z + m(y - m\hat z)/(m^2 + 1/\gamma)`, finite for any finite
  :math:`\gamma`)
  and :math:`A^\dagger y = \mathcal F^{-1}[y / m]` on :math:`m \ne 0` are closed forms.
* :class:`MultiCoilMRI`: :math:`y_n = m \odot \mathcal F(S_n x)` for coil sensitivities
  :math:`S_n`, :math:`A^\top y = \sum_n \bar S_n \mathcal F^{-1}(m \odot y_n)`; prox by CG.

Images are complex ``(B, H, W)`` / ``(B, C, H, W)`` tensors or real tensors with the real and
imaginary parts in dimension 1 (``(B, 2, H, W)``); outputs use the input's representation
(real k-space as ``(B, 2, H, W)`` or, multi-coil, ``(B, 2, N, H, W)``).
"""

from __future__ import annotations

from typing import Any

import torch

from unroll.physics._utils import (
    check_prox_gamma,
    check_solve_options,
    complex_of,
    expand_per_sample,
    is_scalar_or_per_sample,
    real_dtype,
    require_same_precision,
    require_tensor,
    safe_denominator,
)
from unroll.physics.base import LinearPhysics

__all__ = ["MRI", "MultiCoilMRI", "fft2c", "ifft2c"]

_DIMS = (-2, -1)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two dimensions."""
    x = torch.fft.ifftshift(x, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse (and adjoint) of :func:`fft2c`."""
    k = torch.fft.ifftshift(k, dim=_DIMS)
    return torch.fft.fftshift(torch.fft.ifft2(k, norm="ortho"), dim=_DIMS)


def to_complex(api: str, name: str, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``(complex view, was_complex)``; a real input holds (real, imag) in dimension 1."""
    require_tensor(api, name, x)
    if x.is_complex():
        return x, True
    if not x.is_floating_point() or x.dim() < 3 or x.shape[1] != 2:
        raise ValueError(
            f"{api}: a real {name} must hold (real, imag) parts in dimension 1, e.g. shape "
            f"(B, 2, H, W); got {tuple(x.shape)} ({x.dtype}). Pass a complex tensor otherwise."
        )
    return torch.complex(x[:, 0], x[:, 1]), False


def from_complex(z: torch.Tensor, was_complex: bool) -> torch.Tensor:
    """Back to the caller's representation (see :func:`to_complex`)."""
    return z if was_complex else torch.stack((z.real, z.imag), dim=1)


def _fit_mask(
    api: str, mask: torch.Tensor, target: torch.Tensor, name: str = "k-space"
) -> torch.Tensor:
    """Broadcast a ``(H, W)``, per-sample ``(B, H, W)`` or full mask against ``target`` (the
    complex k-space or image ``name`` refers to), after checking that their precisions agree."""
    require_same_precision(api, "mask", mask, name, target)
    m = mask
    if 3 <= m.dim() < target.dim():
        m = m.reshape(m.shape[:1] + (1,) * (target.dim() - m.dim()) + m.shape[1:])
    try:
        ok = torch.broadcast_shapes(m.shape, target.shape) == target.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{api}: mask of shape {tuple(mask.shape)} does not fit {name} of (complex) shape "
            f"{tuple(target.shape)}; images and k-space must have the mask's (H, W) = "
            f"{tuple(mask.shape[-2:])} (and its batch size for a per-sample (B, H, W) mask)."
        )
    return m


def _real_mask(api: str, mask: torch.Tensor) -> torch.Tensor:
    require_tensor(api, "mask", mask)
    if mask.dtype == torch.bool:
        mask = mask.to(torch.get_default_dtype())
    if mask.is_complex() or not mask.is_floating_point():
        raise TypeError(f"{api}: mask must be a real floating (or bool) tensor, got {mask.dtype}.")
    if mask.dim() < 2:
        raise ValueError(f"{api}: mask must have at least 2 dims (H, W), got {tuple(mask.shape)}.")
    return mask


class MRI(LinearPhysics):
    r"""Single-coil accelerated MRI: :math:`y = m \odot \mathcal F x`.

    Args:
        mask: real sampling mask ``(H, W)``, ``(B, H, W)`` (per sample) or the full k-space
            shape; binary or real weights (pytree leaf).
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`.

    ``prox_l2`` (number / 0-dim / per-sample ``gamma``; a full-shaped ``gamma`` uses CG) and
    ``A_dagger`` (zero-filled inverse for a binary mask) are closed forms.

    Example:
        >>> import torch
        >>> from unroll.physics import MRI
        >>> mask = torch.zeros(16, 16); mask[:, ::2] = 1
        >>> physics = MRI(mask)
        >>> x = torch.randn(3, 2, 16, 16)            # (real, imag) in dim 1
        >>> physics.A(x).shape
        torch.Size([3, 2, 16, 16])
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
        self.mask = _real_mask("MRI", mask)
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        xc, c = to_complex("MRI.A", "x", x)
        return from_complex(_fit_mask("MRI.A", self.mask, xc, "x") * fft2c(xc), c)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        yc, c = to_complex("MRI.A_adjoint", "y", y)
        return from_complex(ifft2c(_fit_mask("MRI.A_adjoint", self.mask, yc, "y") * yc), c)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        xc, c = to_complex("MRI.A_adjoint_A", "x", x)
        m = _fit_mask("MRI.A_adjoint_A", self.mask, xc, "x")
        return from_complex(ifft2c(m.square() * fft2c(xc)), c)

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
        """Closed form ``F⁻¹[ẑ + m (y − m ẑ)/(m² + 1/γ)]``, ``ẑ = F z`` (finite for any finite
        ``γ > 0``); a full-shaped ``γ`` falls back to CG with the given options."""
        api = "MRI.prox_l2"
        opts = check_solve_options(
            api, max_iter, tol, implicit_backward_solver, on_failure, unknown
        )
        zc, c = to_complex(api, "z", z)
        yc, _ = to_complex(api, "y", y)
        if yc.shape != zc.shape:
            raise ValueError(
                f"{api}: y has shape {tuple(y.shape)} but z has {tuple(z.shape)}; they must match."
            )
        m = _fit_mask(api, self.mask, zc, "z")
        gamma = check_prox_gamma(api, gamma, z)
        if not is_scalar_or_per_sample(gamma, z):
            return self._cg_prox(z, y, gamma, opts)
        g = expand_per_sample(gamma, zc)
        z_hat = fft2c(zc)
        h_hat = z_hat + m * (yc - m * z_hat) / safe_denominator(m.square() + 1 / g)
        return from_complex(ifft2c(h_hat), c)

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
        """``F⁻¹[y / m]`` where ``m ≠ 0`` (zero elsewhere); the CG options are validated and
        ignored."""
        api = "MRI.A_dagger"
        check_solve_options(api, max_iter, tol, implicit_backward_solver, on_failure, unknown)
        yc, c = to_complex(api, "y", y)
        m = _fit_mask(api, self.mask, yc, "y")
        nz = m != 0
        inv = torch.where(nz, 1 / torch.where(nz, m, torch.ones_like(m)), torch.zeros_like(m))
        return from_complex(ifft2c(inv * yc), c)


class MultiCoilMRI(LinearPhysics):
    r"""Multi-coil (parallel) MRI: :math:`y_n = m \odot \mathcal F(S_n x)`, ``n = 1..N``.

    Args:
        mask: real sampling mask ``(H, W)``, ``(B, H, W)`` or broadcastable to ``(B, N, H, W)``.
        coil_maps: sensitivities ``(N, H, W)`` or per sample ``(B, N, H, W)``, complex (or real).
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`;
            ``prox_l2`` and ``A_dagger`` use CG.

    Images: complex ``(B, H, W)`` or real ``(B, 2, H, W)``; k-space: complex ``(B, N, H, W)``
    or real ``(B, 2, N, H, W)``.

    Example:
        >>> import torch
        >>> from unroll.physics import MultiCoilMRI
        >>> maps = torch.randn(4, 16, 16, dtype=torch.complex64)
        >>> physics = MultiCoilMRI(torch.ones(16, 16), maps)
        >>> physics.A(torch.randn(2, 16, 16, dtype=torch.complex64)).shape
        torch.Size([2, 4, 16, 16])
    """

    leaves = ("mask", "coil_maps")
    static = ()

    def __init__(
        self,
        mask: torch.Tensor,
        coil_maps: torch.Tensor,
        *,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
    ) -> None:
        api = "MultiCoilMRI"
        require_tensor(api, "coil_maps", coil_maps)
        if not (coil_maps.is_complex() or coil_maps.is_floating_point()):
            raise TypeError(
                f"{api}: coil_maps must be complex (or real floating), got {coil_maps.dtype}."
            )
        if coil_maps.dim() not in (3, 4):
            raise ValueError(
                f"{api}: coil_maps must have shape (N, H, W) or (B, N, H, W), got "
                f"{tuple(coil_maps.shape)}."
            )
        if isinstance(mask, torch.Tensor) and mask.dtype == torch.bool:
            mask = mask.to(real_dtype(coil_maps))  # a binary mask is exact in any precision
        self.mask = _real_mask(api, mask)
        if real_dtype(self.mask) != real_dtype(coil_maps):
            raise TypeError(
                f"{api}: mask is {self.mask.dtype} but coil_maps is {coil_maps.dtype}; pass both "
                f"in one precision, e.g. coil_maps.to({complex_of(real_dtype(self.mask))}) or "
                f"mask.to({real_dtype(coil_maps)})."
            )
        _check_mask_fits_maps(api, self.mask, coil_maps)
        self.coil_maps = coil_maps
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver)

    @property
    def num_coils(self) -> int:
        """The number of coils ``N``."""
        return self.coil_maps.shape[-3]

    def _maps(self, api: str, xc: torch.Tensor, name: str = "x") -> torch.Tensor:
        require_same_precision(api, "coil_maps", self.coil_maps, name, xc)
        if xc.dim() != 3 or xc.shape[-2:] != self.coil_maps.shape[-2:]:
            raise ValueError(
                f"{api}: images must be complex (B, H, W) or real (B, 2, H, W) with (H, W) = "
                f"{tuple(self.coil_maps.shape[-2:])}; got complex shape {tuple(xc.shape)}."
            )
        maps = self.coil_maps
        if maps.dim() == 4 and maps.shape[0] not in (1, xc.shape[0]):
            raise ValueError(
                f"{api}: coil_maps batch {maps.shape[0]} != image batch {xc.shape[0]}; pass "
                f"{maps.shape[0]} images or per-sample maps for each image."
            )
        return maps

    def A(self, x: torch.Tensor) -> torch.Tensor:
        api = "MultiCoilMRI.A"
        xc, c = to_complex(api, "x", x)
        k = fft2c(self._maps(api, xc) * xc.unsqueeze(1))
        return from_complex(_fit_mask(api, self.mask, k) * k, c)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        api = "MultiCoilMRI.A_adjoint"
        yc, c = to_complex(api, "y", y)
        if yc.dim() != 4:
            raise ValueError(
                f"{api}: k-space must be complex (B, N, H, W) or real (B, 2, N, H, W); got "
                f"{tuple(y.shape)}."
            )
        if yc.shape[1] != self.num_coils:
            raise ValueError(
                f"{api}: y holds {yc.shape[1]} coils but coil_maps has {self.num_coils}; pass "
                f"k-space of shape (B, {self.num_coils}, H, W) (real: (B, 2, {self.num_coils}, "
                "H, W)) or build the operator with matching coil_maps."
            )
        img = ifft2c(_fit_mask(api, self.mask, yc, "y") * yc)
        maps = self._maps(api, yc[:, 0], "y")
        return from_complex((maps.conj() * img).sum(dim=1), c)


def _check_mask_fits_maps(api: str, mask: torch.Tensor, coil_maps: torch.Tensor) -> None:
    """The mask's (H, W) must broadcast to the coil maps' (H, W)."""
    mh, mw = mask.shape[-2:]
    H, W = coil_maps.shape[-2:]
    if mh not in (1, H) or mw not in (1, W):
        raise ValueError(
            f"{api}: mask (H, W) = {(mh, mw)} does not fit coil_maps (H, W) = {(H, W)}; give "
            "both the image size."
        )
