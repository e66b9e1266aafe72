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

With ``three_d=True`` the transform is the centred orthonormal 3-D FFT over the last three
dimensions (volumes ``(B, D, H, W)`` complex or ``(B, 2, D, H, W)`` real). :class:`DynamicMRI`
applies the 2-D transform frame by frame to videos ``(B, T, H, W)`` / ``(B, 2, T, H, W)``
with one mask per frame. ``MultiCoilMRI(coil_maps=N)`` simulates birdcage coil maps
(:func:`birdcage_maps`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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

__all__ = [
    "MRI",
    "DynamicMRI",
    "MultiCoilMRI",
    "fft2c",
    "ifft2c",
    "fftnc",
    "ifftnc",
    "birdcage_maps",
]

_DIMS = (-2, -1)


def fftnc(x: torch.Tensor, dims: tuple[int, ...] = _DIMS) -> torch.Tensor:
    """Centred orthonormal FFT over ``dims`` (``fftshift ∘ fftn ∘ ifftshift``)."""
    x = torch.fft.ifftshift(x, dim=dims)
    return torch.fft.fftshift(torch.fft.fftn(x, dim=dims, norm="ortho"), dim=dims)


def ifftnc(k: torch.Tensor, dims: tuple[int, ...] = _DIMS) -> torch.Tensor:
    """Inverse (and adjoint) of :func:`fftnc`."""
    k = torch.fft.ifftshift(k, dim=dims)
    return torch.fft.fftshift(torch.fft.ifftn(k, dim=dims, norm="ortho"), dim=dims)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two dimensions."""
    return fftnc(x, _DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Inverse (and adjoint) of :func:`fft2c`."""
    return ifftnc(k, _DIMS)


def birdcage_maps(
    shape: tuple[int, ...],
    r: float = 1.5,
    nzz: int = 8,
    *,
    dtype: torch.dtype = torch.complex64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""Simulated birdcage coil sensitivities (SigPy's ``birdcage_maps``, which DeepInverse
    0.4.1's ``MultiCoilMRI(coil_maps=N)`` calls).

    2-D, ``shape = (N, H, W)``: coil :math:`c` sits at :math:`r(\cos\theta_c, \sin\theta_c)`,
    :math:`\theta_c = 2\pi c/N`, in coordinates :math:`\tilde x = (x - W/2)/(W/2)`,
    :math:`\tilde y = (y - H/2)/(H/2)` (pixel indices ``x``, ``y``); with
    :math:`u = \tilde x - r\cos\theta_c`, :math:`v = \tilde y - r\sin\theta_c`,

    .. math:: S_c = \frac{1}{\sqrt{u^2 + v^2}}\, e^{\,i(\operatorname{atan2}(u, -v) - \theta_c)},

    then normalised by the root-sum-of-squares over coils, :math:`\sum_c |S_c|^2 = 1` at
    every pixel. 3-D, ``shape = (N, D, H, W)``: ``nzz`` coils per ring, ring
    :math:`\lfloor c/n_{zz}\rfloor` at height :math:`z_c = \lfloor c/n_{zz}\rfloor -
    (\lceil N/n_{zz}\rceil - 1)/2`, :math:`\theta_c = 2\pi c/n_{zz}`, distance
    :math:`\sqrt{u^2 + v^2 + w^2}` with :math:`w = (z - D/2)/(D/2) - z_c` and phase
    :math:`\operatorname{atan2}(u, -v) - 2\pi(c + \lfloor c/n_{zz}\rfloor)/n_{zz}`.

    Args:
        shape: ``(N, H, W)`` or ``(N, D, H, W)``.
        r: relative radius of the birdcage.
        nzz: coils per ring (3-D only).
        dtype, device: of the result (computed in float64, then converted).

    Returns:
        Complex tensor of ``shape``.

    Example:
        >>> from unroll.physics import birdcage_maps
        >>> maps = birdcage_maps((8, 32, 32))
        >>> bool(((maps.abs() ** 2).sum(0) - 1).abs().max() < 1e-5)
        True

    References:
        SigPy, ``sigpy.mri.sim.birdcage_maps`` (Ong and Lustig, 2019).
    """
    if len(shape) not in (3, 4) or any(
        not isinstance(n, int) or isinstance(n, bool) or n <= 0 for n in shape
    ):
        raise ValueError(
            f"birdcage_maps: shape must be (N, H, W) or (N, D, H, W) of positive ints, got "
            f"{shape!r}."
        )
    f64 = torch.float64
    grids = torch.meshgrid(*(torch.arange(n, dtype=f64) for n in shape), indexing="ij")
    nc = shape[0]
    c = grids[0]
    per_ring = nc if len(shape) == 3 else nzz
    theta = c * (2 * math.pi / per_ring)
    x, y = grids[-1], grids[-2]
    nx, ny = shape[-1], shape[-2]
    u = (x - nx / 2.0) / (nx / 2.0) - r * torch.cos(theta)
    v = (y - ny / 2.0) / (ny / 2.0) - r * torch.sin(theta)
    if len(shape) == 3:
        rr = torch.sqrt(u**2 + v**2)
        phase = -theta
    else:
        z, nz = grids[1], shape[1]
        ring = torch.floor(c / nzz)
        zc = ring - 0.5 * (math.ceil(nc / nzz) - 1)
        w = (z - nz / 2.0) / (nz / 2.0) - zc
        rr = torch.sqrt(u**2 + v**2 + w**2)
        phase = -(c + ring) * (2 * math.pi / nzz)
    out = torch.polar(1.0 / rr, torch.atan2(u, -v) + phase)
    out = out / torch.sqrt((out.abs() ** 2).sum(0))
    return out.to(dtype=dtype, device=device)


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
    api: str, mask: torch.Tensor, target: torch.Tensor, name: str = "k-space", spatial: int = 2
) -> torch.Tensor:
    """Broadcast a ``(H, W)`` (``spatial`` trailing dims), per-sample ``(B, H, W)`` or full
    mask against ``target`` (the complex k-space or image ``name`` refers to), after checking
    that their precisions agree."""
    require_same_precision(api, "mask", mask, name, target)
    m = mask
    if spatial + 1 <= m.dim() < target.dim():
        m = m.reshape(m.shape[:1] + (1,) * (target.dim() - m.dim()) + m.shape[1:])
    try:
        ok = torch.broadcast_shapes(m.shape, target.shape) == target.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{api}: mask of shape {tuple(mask.shape)} does not fit {name} of (complex) shape "
            f"{tuple(target.shape)}; images and k-space must have the mask's trailing sizes "
            f"{tuple(mask.shape[-spatial:])} (and its batch size for a per-sample mask of "
            f"{spatial + 1} dims)."
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


def _default_mask(api: str, img_size: Sequence[int] | None, spatial: int) -> torch.Tensor:
    """DeepInverse's flat mask of ones of ``img_size``'s last ``spatial`` sizes."""
    if not isinstance(img_size, (tuple, list, torch.Size)) or len(img_size) < spatial:
        raise ValueError(
            f"{api}: without a mask, img_size must give at least the {spatial} spatial sizes "
            f"(e.g. (H, W) or x.shape), got {img_size!r}."
        )
    return torch.ones(tuple(int(n) for n in img_size[-spatial:]))


class MRI(LinearPhysics):
    r"""Single-coil accelerated MRI, 2-D or 3-D: :math:`y = m \odot \mathcal F x`.

    Args:
        mask: real sampling mask ``(H, W)`` (3-D: ``(D, H, W)``), per sample ``(B, H, W)``
            (3-D: ``(B, D, H, W)``) or the full k-space shape; binary or real weights (pytree
            leaf). ``None``: no subsampling, a mask of ones of ``img_size``.
        img_size: used only without a mask: its last two (3-D: three) sizes, e.g. ``x.shape``
            (DeepInverse's default ``(320, 320)``).
        three_d: Fourier transform over the last three dims (volumes ``(B, D, H, W)``
            complex or ``(B, 2, D, H, W)`` real).
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
        >>> volume = MRI(torch.ones(4, 16, 16), three_d=True)
        >>> volume.A(torch.randn(3, 2, 4, 16, 16)).shape
        torch.Size([3, 2, 4, 16, 16])
    """

    leaves = ("mask",)
    static = ("three_d",)
    _mask_dims = 2
    """Trailing dims of a shared mask: ``(H, W)``; 3 for ``three_d`` / :class:`DynamicMRI`."""

    def __init__(
        self,
        mask: torch.Tensor | None = None,
        img_size: tuple[int, ...] | None = (320, 320),
        three_d: bool = False,
        *,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
        solver: str = "CG",
        device: torch.device | str | None = None,
    ) -> None:
        api = type(self).__name__
        if not isinstance(three_d, bool):
            raise TypeError(f"{api}: three_d must be True or False, got {three_d!r}.")
        self.three_d = three_d
        if mask is None:
            mask = _default_mask(api, img_size, self._spatial)
        self.mask = self._prepare_mask(api, _real_mask(api, mask))
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver, solver, device)

    @property
    def _spatial(self) -> int:
        """Trailing dims of a shared mask."""
        return 3 if self.three_d else self._mask_dims

    @property
    def _fft_dims(self) -> tuple[int, ...]:
        return (-3, -2, -1) if self.three_d else _DIMS

    def _prepare_mask(self, api: str, mask: torch.Tensor) -> torch.Tensor:
        return mask

    def _fit(self, api: str, target: torch.Tensor, name: str) -> torch.Tensor:
        if target.dim() < self._spatial + 1:
            raise ValueError(
                f"{api}: {name} of (complex) shape {tuple(target.shape)} has too few dims for "
                f"{self._layout()}."
            )
        return _fit_mask(api, self.mask, target, name, self._spatial)

    def _layout(self) -> str:
        if self.three_d:
            return "3-D MRI: volumes (B, D, H, W) complex or (B, 2, D, H, W) real"
        return "MRI: images (B, H, W) complex or (B, 2, H, W) real"

    def A(self, x: torch.Tensor) -> torch.Tensor:
        api = f"{type(self).__name__}.A"
        xc, c = to_complex(api, "x", x)
        return from_complex(self._fit(api, xc, "x") * fftnc(xc, self._fft_dims), c)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        api = f"{type(self).__name__}.A_adjoint"
        yc, c = to_complex(api, "y", y)
        return from_complex(ifftnc(self._fit(api, yc, "y") * yc, self._fft_dims), c)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        api = f"{type(self).__name__}.A_adjoint_A"
        xc, c = to_complex(api, "x", x)
        m = self._fit(api, xc, "x")
        return from_complex(ifftnc(m.square() * fftnc(xc, self._fft_dims), self._fft_dims), c)

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
        api = f"{type(self).__name__}.prox_l2"
        opts = check_solve_options(
            api, max_iter, tol, implicit_backward_solver, on_failure, unknown
        )
        zc, c = to_complex(api, "z", z)
        yc, _ = to_complex(api, "y", y)
        if yc.shape != zc.shape:
            raise ValueError(
                f"{api}: y has shape {tuple(y.shape)} but z has {tuple(z.shape)}; they must match."
            )
        m = self._fit(api, zc, "z")
        gamma = check_prox_gamma(api, gamma, z)
        if not is_scalar_or_per_sample(gamma, z):
            return self._cg_prox(z, y, gamma, opts)
        g = expand_per_sample(gamma, zc)
        z_hat = fftnc(zc, self._fft_dims)
        h_hat = z_hat + m * (yc - m * z_hat) / safe_denominator(m.square() + 1 / g)
        return from_complex(ifftnc(h_hat, self._fft_dims), c)

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
        api = f"{type(self).__name__}.A_dagger"
        check_solve_options(api, max_iter, tol, implicit_backward_solver, on_failure, unknown)
        yc, c = to_complex(api, "y", y)
        m = self._fit(api, yc, "y")
        nz = m != 0
        inv = torch.where(nz, 1 / torch.where(nz, m, torch.ones_like(m)), torch.zeros_like(m))
        return from_complex(ifftnc(inv * yc, self._fft_dims), c)


class DynamicMRI(MRI):
    r"""Single-coil dynamic (2-D + time) MRI: :math:`y_t = m_t \odot \mathcal F x_t`, the 2-D
    transform applied frame by frame with a mask per frame.

    Args:
        mask: real mask ``(H, W)`` (the same for every frame), ``(T, H, W)`` (one per frame),
            per sample ``(B, T, H, W)``, or DeepInverse's ``(B, C, T, H, W)`` with ``C = 1``
            (or ``C = 2`` with equal real and imaginary masks). ``None``: ones of ``img_size``.
        img_size: used only without a mask: its last three sizes ``(T, H, W)``.
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`.

    Videos are complex ``(B, T, H, W)`` or real ``(B, 2, T, H, W)`` (DeepInverse's layout);
    k-space likewise. ``prox_l2`` and ``A_dagger`` are closed forms as in :class:`MRI`
    (DeepInverse's ``A_dagger`` is ``A_adjoint``, the same for a binary mask).

    Example:
        >>> import torch
        >>> from unroll.physics import DynamicMRI
        >>> mask = (torch.rand(5, 16, 16) > 0.5).float()       # one mask per frame
        >>> physics = DynamicMRI(mask)
        >>> physics.A(torch.randn(2, 2, 5, 16, 16)).shape
        torch.Size([2, 2, 5, 16, 16])
    """

    static = ()
    _mask_dims = 3

    def __init__(
        self,
        mask: torch.Tensor | None = None,
        img_size: tuple[int, ...] | None = None,
        *,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
        solver: str = "CG",
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(
            mask,
            img_size,
            False,
            noise_model=noise_model,
            max_iter=max_iter,
            tol=tol,
            implicit_backward_solver=implicit_backward_solver,
            solver=solver,
            device=device,
        )

    three_d = False

    def _prepare_mask(self, api: str, mask: torch.Tensor) -> torch.Tensor:
        if mask.dim() == 5:
            if mask.shape[1] not in (1, 2):
                raise ValueError(
                    f"{api}: a 5-dim mask is (B, C, T, H, W) with C = 1 or 2, got "
                    f"{tuple(mask.shape)}."
                )
            if mask.shape[1] == 2 and not torch.equal(mask[:, 0], mask[:, 1]):
                raise ValueError(
                    f"{api}: the real and imaginary channels of the mask differ; a complex MRI "
                    "mask samples both parts of a k-space point: pass one channel, mask[:, :1]."
                )
            mask = mask[:, 0]
        if mask.dim() > 4:
            raise ValueError(
                f"{api}: mask must be (H, W), (T, H, W), (B, T, H, W) or (B, C, T, H, W), got "
                f"{tuple(mask.shape)}."
            )
        return mask

    def _layout(self) -> str:
        return "DynamicMRI: videos (B, T, H, W) complex or (B, 2, T, H, W) real"

    def to_static(self, mask: torch.Tensor | None = None) -> MRI:
        """A 2-D :class:`MRI` with ``mask``, or by default the union of the frames' masks,
        :math:`\\min(1, \\sum_t m_t)` (DeepInverse's ``to_static``); settings are kept."""
        if mask is None:
            mask = self.mask.sum(-3).clamp(0, 1) if self.mask.dim() >= 3 else self.mask
        return MRI(
            mask,
            noise_model=self.noise_model,
            max_iter=self.max_iter,
            tol=self.tol,
            implicit_backward_solver=self.implicit_backward_solver,
        )


class MultiCoilMRI(LinearPhysics):
    r"""Multi-coil (parallel) MRI, 2-D or 3-D: :math:`y_n = m \odot \mathcal F(S_n x)`,
    ``n = 1..N``.

    Args:
        mask: real sampling mask ``(H, W)``, ``(B, H, W)`` or broadcastable to ``(B, N, H, W)``
            (3-D: ``(D, H, W)``, ``(B, D, H, W)`` or broadcastable to ``(B, N, D, H, W)``).
            ``None``: no subsampling (ones).
        coil_maps: sensitivities ``(N, H, W)`` or per sample ``(B, N, H, W)`` (3-D:
            ``(N, D, H, W)`` / ``(B, N, D, H, W)``), complex (or real); ``(H, W)`` is one coil.
            An ``int`` ``N``: simulated birdcage maps of ``N`` coils (:func:`birdcage_maps`,
            complex of the mask's precision). ``None``: one coil of ones.
        img_size: the image size when neither tensor gives it (its last two, 3-D three,
            sizes; e.g. ``x.shape``); default ``(320, 320)`` as in DeepInverse.
        three_d: 3-D Fourier transform over the last three dims.
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`;
            ``prox_l2`` and ``A_dagger`` use CG.

    Images: complex ``(B, H, W)`` or real ``(B, 2, H, W)``; k-space: complex ``(B, N, H, W)``
    or real ``(B, 2, N, H, W)`` (3-D: a depth dim before ``H``).

    Example:
        >>> import torch
        >>> from unroll.physics import MultiCoilMRI
        >>> maps = torch.randn(4, 16, 16, dtype=torch.complex64)
        >>> physics = MultiCoilMRI(torch.ones(16, 16), maps)
        >>> physics.A(torch.randn(2, 16, 16, dtype=torch.complex64)).shape
        torch.Size([2, 4, 16, 16])
        >>> sim = MultiCoilMRI(coil_maps=8, img_size=(1, 2, 32, 32))    # birdcage coils
        >>> sim.coil_maps.shape
        torch.Size([8, 32, 32])
    """

    leaves = ("mask", "coil_maps")
    static = ("three_d",)

    def __init__(
        self,
        mask: torch.Tensor | None = None,
        coil_maps: torch.Tensor | int | None = None,
        img_size: tuple[int, ...] | None = (320, 320),
        three_d: bool = False,
        *,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
        solver: str = "CG",
        device: torch.device | str | None = None,
    ) -> None:
        api = "MultiCoilMRI"
        if not isinstance(three_d, bool):
            raise TypeError(f"{api}: three_d must be True or False, got {three_d!r}.")
        self.three_d = three_d
        sp = self._spatial
        if mask is None:
            if isinstance(coil_maps, torch.Tensor) and coil_maps.dim() >= sp:
                size: Sequence[int] | None = tuple(coil_maps.shape[-sp:])
            else:
                size = img_size
            mask = _default_mask(api, size, sp)
            if isinstance(coil_maps, torch.Tensor):
                mask = mask.to(real_dtype(coil_maps))
        if coil_maps is None or (isinstance(coil_maps, int) and not isinstance(coil_maps, bool)):
            ref = _real_mask(api, mask)
            if ref.dim() >= sp and all(n > 1 for n in ref.shape[-sp:]):
                spatial_size = tuple(ref.shape[-sp:])
            else:
                spatial_size = tuple(_default_mask(api, img_size, sp).shape)
            ctype = complex_of(real_dtype(ref))
            if coil_maps is None:
                coil_maps = torch.ones((1, *spatial_size), dtype=ctype)
            elif coil_maps <= 0:
                raise ValueError(f"{api}: coil_maps={coil_maps} must be a positive int.")
            else:
                coil_maps = birdcage_maps((coil_maps, *spatial_size), dtype=ctype)
        require_tensor(api, "coil_maps", coil_maps)
        coil_maps = torch.as_tensor(coil_maps)
        if not (coil_maps.is_complex() or coil_maps.is_floating_point()):
            raise TypeError(
                f"{api}: coil_maps must be complex (or real floating), got {coil_maps.dtype}."
            )
        if coil_maps.dim() == sp:
            coil_maps = coil_maps.unsqueeze(0)  # one coil
        if coil_maps.dim() not in (sp + 1, sp + 2):
            layout = "(N, D, H, W) or (B, N, D, H, W)" if three_d else "(N, H, W) or (B, N, H, W)"
            raise ValueError(
                f"{api}: coil_maps must have shape {layout}, got {tuple(coil_maps.shape)}."
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
        _check_mask_fits_maps(api, self.mask, coil_maps, sp)
        self.coil_maps = coil_maps
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver, solver, device)

    @property
    def _spatial(self) -> int:
        return 3 if self.three_d else 2

    @property
    def _fft_dims(self) -> tuple[int, ...]:
        return (-3, -2, -1) if self.three_d else _DIMS

    @property
    def num_coils(self) -> int:
        """The number of coils ``N``."""
        return self.coil_maps.shape[-self._spatial - 1]

    def _maps(self, api: str, xc: torch.Tensor, name: str = "x") -> torch.Tensor:
        require_same_precision(api, "coil_maps", self.coil_maps, name, xc)
        sp = self._spatial
        if xc.dim() != sp + 1 or xc.shape[-sp:] != self.coil_maps.shape[-sp:]:
            size = tuple(self.coil_maps.shape[-sp:])
            layout = (
                "(B, D, H, W) or real (B, 2, D, H, W)"
                if self.three_d
                else ("(B, H, W) or real (B, 2, H, W)")
            )
            raise ValueError(
                f"{api}: images must be complex {layout} with spatial size {size}; got complex "
                f"shape {tuple(xc.shape)}."
            )
        maps = self.coil_maps
        if maps.dim() == sp + 2 and maps.shape[0] not in (1, xc.shape[0]):
            raise ValueError(
                f"{api}: coil_maps batch {maps.shape[0]} != image batch {xc.shape[0]}; pass "
                f"{maps.shape[0]} images or per-sample maps for each image."
            )
        return maps

    def A(self, x: torch.Tensor) -> torch.Tensor:
        api = "MultiCoilMRI.A"
        xc, c = to_complex(api, "x", x)
        k = fftnc(self._maps(api, xc) * xc.unsqueeze(1), self._fft_dims)
        return from_complex(_fit_mask(api, self.mask, k, spatial=self._spatial) * k, c)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        api = "MultiCoilMRI.A_adjoint"
        yc, c = to_complex(api, "y", y)
        sp = self._spatial
        if yc.dim() != sp + 2:
            layout = (
                "(B, N, D, H, W) or real (B, 2, N, D, H, W)"
                if self.three_d
                else ("(B, N, H, W) or real (B, 2, N, H, W)")
            )
            raise ValueError(f"{api}: k-space must be complex {layout}; got {tuple(y.shape)}.")
        if yc.shape[1] != self.num_coils:
            raise ValueError(
                f"{api}: y holds {yc.shape[1]} coils but coil_maps has {self.num_coils}; pass "
                f"k-space with {self.num_coils} coils in dim 1 (real: dim 2) or build the "
                "operator with matching coil_maps."
            )
        img = ifftnc(_fit_mask(api, self.mask, yc, "y", sp) * yc, self._fft_dims)
        maps = self._maps(api, yc[:, 0], "y")
        return from_complex((maps.conj() * img).sum(dim=1), c)


def _check_mask_fits_maps(
    api: str, mask: torch.Tensor, coil_maps: torch.Tensor, spatial: int = 2
) -> None:
    """The mask's spatial sizes must broadcast to the coil maps' ones."""
    ms = tuple(mask.shape[-spatial:])
    cs = tuple(coil_maps.shape[-spatial:])
    if mask.dim() < spatial or any(m not in (1, c) for m, c in zip(ms, cs)):
        dims = "(H, W)" if spatial == 2 else "(D, H, W)"
        raise ValueError(
            f"{api}: mask {dims} = {ms} does not fit coil_maps {dims} = {cs}; give both the "
            "image size."
        )
