r"""Super-resolution: blur then keep every ``factor``-th pixel, with a closed-form prox.

:class:`Downsampling` is :math:`A = S\,K`: :math:`K` the blur of :class:`Blur` (a true
convolution, kernel centred at ``(h // 2, w // 2)``, the chosen ``padding``) and :math:`S` the
decimation ``x[..., ::factor, ::factor]``. Its adjoint is :math:`A^\top = K^\top S^\top`,
:math:`S^\top` the upsampling that puts ``y`` back on the kept pixels and zeros elsewhere.

With ``padding="circular"`` and ``H, W`` multiples of ``factor`` (``f``), the blur is diagonal
in Fourier (:math:`\hat k`, the transfer function on the ``H × W`` grid) and decimation folds
the spectrum onto the ``H/f × W/f`` grid: :math:`\widehat{Sx}(u) = \tfrac1{f^2}\sum_{a}
\hat x(u + a)` over the ``f²`` aliases :math:`a`, while :math:`\widehat{S^\top y}` is
:math:`\hat y` tiled ``f × f`` times. The Woodbury identity then gives the prox in closed form
(Zhao et al., 2016, "Fast single image super-resolution using a new analytical solution for
ℓ2–ℓ2 problems"):

.. math:: \hat h = \hat z + \bar{\hat k} \odot \operatorname{tile}\!\Bigl[
          \frac{\hat y - \overline{\hat k \hat z}}{\overline{|\hat k|^2} + 1/\gamma}\Bigr],
          \qquad \bar{v}(u) = \tfrac1{f^2}\textstyle\sum_a v(u + a),

the minimiser of :math:`\tfrac12\|Ax-y\|^2 + \tfrac1{2\gamma}\|x-z\|^2` (:math:`\overline{\hat
k\hat z} = \widehat{Az}`). This form stays finite for any finite ``γ > 0``. Every other case
(other paddings, sizes not divisible by ``factor``, a kernel larger than the image, a
full-shaped ``γ``) uses conjugate gradient through :func:`least_squares`. Without a filter
:math:`A^\top A` is a 0/1 mask and the prox is closed form for every padding, size and ``γ``.
"""

from __future__ import annotations

import difflib
import numbers
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
    require_tensor,
    safe_denominator,
)
from unroll.physics.base import LinearPhysics
from unroll.physics.blur import (
    PADDINGS,
    _pad_sizes,
    conv2d,
    conv_transpose2d,
    gaussian_blur,
    pad,
    pad_adjoint,
)

__all__ = ["Downsampling", "bicubic_filter", "bilinear_filter"]

FILTERS = ("gaussian", "bilinear", "bicubic")
"""The filter names :class:`Downsampling` builds itself (``None``: no filter)."""


def _did_you_mean(value: str, options: tuple[str, ...]) -> str:
    hint = difflib.get_close_matches(value.lower(), options, n=1, cutoff=0.5)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _check_factor(api: str, factor: Any) -> int:
    if isinstance(factor, bool) or not isinstance(factor, numbers.Integral):
        raise TypeError(
            f"{api}: factor must be a positive int, got {factor!r} ({type(factor).__name__}); "
            "only integer downsampling factors are supported."
        )
    if factor <= 0:
        raise ValueError(f"{api}: factor must be a positive int, got {factor!r}.")
    return int(factor)


def _grid(factor: int, half_width: int, dtype, device) -> torch.Tensor:
    """Sample positions ``(-half_width·f + ½ .. half_width·f − ½) / f`` (``2·half_width·f``)."""
    n = 2 * half_width * factor
    return (torch.arange(n, dtype=dtype, device=device) - (n - 1) / 2) / factor


def bilinear_filter(
    factor: int = 2,
    device: torch.device | str | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""The bilinear (triangle) anti-aliasing filter of DeepInverse, ``(1, 1, 2f, 2f)``.

    .. math:: k(u, v) \propto (1 - |u|)(1 - |v|), \qquad
              u, v \in \Bigl\{\tfrac{-f + 1/2 + i}{f} : i = 0, \dots, 2f - 1\Bigr\},
              \qquad \textstyle\sum k = 1.

    Args:
        factor: the downsampling factor ``f`` (a positive int).
        device, dtype: of the result (default: CPU, torch's default dtype).

    Returns:
        ``(1, 1, 2f, 2f)`` tensor, symmetric, summing to one.

    Example:
        >>> from unroll.physics import bilinear_filter
        >>> k = bilinear_filter(2)
        >>> k.shape, round(float(k.sum()), 6)
        (torch.Size([1, 1, 4, 4]), 1.0)
        >>> k[0, 0, 0] * 64
        tensor([1., 3., 3., 1.])
    """
    factor = _check_factor("bilinear_filter", factor)
    u = _grid(factor, 1, dtype or torch.get_default_dtype(), device)
    w = 1 - u.abs()
    k = torch.outer(w, w)
    return (k / k.sum()).reshape(1, 1, *k.shape)


def bicubic_filter(
    factor: int = 2,
    device: torch.device | str | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""The bicubic (Keys, :math:`a = -\tfrac12`) anti-aliasing filter of DeepInverse,
    ``(1, 1, 4f, 4f)``.

    .. math:: k(u, v) \propto c(u)\,c(v), \quad c(t) = \begin{cases}
              (a + 2)|t|^3 - (a + 3)|t|^2 + 1 & |t| \le 1 \\
              a|t|^3 - 5a|t|^2 + 8a|t| - 4a & 1 < |t| < 2 \\ 0 & \text{otherwise}
              \end{cases}, \quad
              u, v \in \Bigl\{\tfrac{-2f + 1/2 + i}{f} : i = 0, \dots, 4f - 1\Bigr\},

    normalised to :math:`\sum k = 1`.

    Args:
        factor: the downsampling factor ``f`` (a positive int).
        device, dtype: of the result (default: CPU, torch's default dtype).

    Returns:
        ``(1, 1, 4f, 4f)`` tensor, symmetric, summing to one.

    Example:
        >>> from unroll.physics import bicubic_filter
        >>> k = bicubic_filter(2)
        >>> k.shape, round(float(k.sum()), 6)
        (torch.Size([1, 1, 8, 8]), 1.0)
    """
    factor = _check_factor("bicubic_filter", factor)
    t = _grid(factor, 2, dtype or torch.get_default_dtype(), device).abs()
    a = -0.5
    inner = ((a + 2) * t**3 - (a + 3) * t**2 + 1) * (t <= 1)
    outer = (a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a) * ((t > 1) & (t < 2))
    w = inner + outer
    k = torch.outer(w, w)
    return (k / k.sum()).reshape(1, 1, *k.shape)


def _make_filter(
    api: str, filter: Any, factor: int, device: Any, dtype: torch.dtype | None
) -> torch.Tensor | None:
    if filter is None:
        return None
    if isinstance(filter, str):
        if filter == "gaussian":
            return gaussian_blur(float(factor), dtype=dtype, device=device)
        if filter == "bilinear":
            return bilinear_filter(factor, device, dtype=dtype)
        if filter == "bicubic":
            return bicubic_filter(factor, device, dtype=dtype)
        extra = (
            " ('sinc' is not built in: pass its kernel as a tensor)"
            if filter == "sinc"
            else _did_you_mean(filter, FILTERS)
        )
        raise ValueError(
            f"{api}: unknown filter {filter!r}{extra}; use one of {FILTERS}, None (no filter) "
            "or a kernel tensor."
        )
    if not isinstance(filter, torch.Tensor):
        raise TypeError(
            f"{api}: filter must be one of {FILTERS}, None or a tensor, got "
            f"{type(filter).__name__}."
        )
    require_real(api, "filter", filter)
    if filter.dim() == 2:
        filter = filter.reshape(1, 1, *filter.shape)
    if filter.dim() != 4:
        raise ValueError(
            f"{api}: filter must have shape (h, w) or (b, c, h, w), got {tuple(filter.shape)}."
        )
    if device is not None or dtype is not None:
        filter = filter.to(device=device, dtype=dtype)
    return filter


class Downsampling(LinearPhysics):
    r"""Super-resolution operator :math:`y = S(k * x)`: blur, then keep every ``factor``-th
    pixel along each spatial axis (``x[..., ::factor, ::factor]``).

    Its adjoint upsamples with zeros and applies the blur's adjoint. ``prox_l2`` is the
    closed form of Zhao et al. (2016) for ``padding="circular"`` when ``H`` and ``W`` are
    multiples of ``factor`` (see the module docstring), conjugate gradient
    (:func:`least_squares`, O(1)-memory implicit backward) otherwise.

    Args:
        img_size: ``(C, H, W)`` or ``(H, W)`` of the high-resolution images.
        filter: ``"gaussian"`` (:func:`gaussian_blur` with ``σ = factor``), ``"bilinear"``
            (:func:`bilinear_filter`), ``"bicubic"`` (:func:`bicubic_filter`), ``None`` (plain
            decimation) or a real kernel ``(h, w)`` / ``(b, c, h, w)`` (``b ∈ {1, B}``,
            ``c ∈ {1, C}``). The kernel is a pytree leaf: gradients reach it through ``A``,
            ``A_adjoint`` and ``prox_l2``.
        factor: the downsampling factor, a positive int.
        device: where a named filter is built (a tensor filter is moved there).
        padding: the blur's boundary condition: ``"circular"`` (default), ``"valid"``
            (blurred image of size ``H − h + 1``), ``"reflect"``, ``"replicate"`` or ``"zeros"``.
        dtype: of a named filter (default: torch's default dtype); a tensor filter is converted.
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`.

    Measurements have shape ``(B, C, ⌈H'/f⌉, ⌈W'/f⌉)``, ``H' × W'`` the blurred size.

    Example:
        >>> import torch
        >>> from unroll.physics import Downsampling
        >>> physics = Downsampling((3, 32, 32), filter="bicubic", factor=2)
        >>> x = torch.rand(4, 3, 32, 32)
        >>> y = physics.A(x)
        >>> y.shape, physics.A_adjoint(y).shape
        (torch.Size([4, 3, 16, 16]), torch.Size([4, 3, 32, 32]))
        >>> h = physics.prox_l2(physics.A_adjoint(y), y, 1.0)   # closed form (circular)
        >>> h.shape
        torch.Size([4, 3, 32, 32])
    """

    leaves = ("filter",)
    static = ("img_size", "factor", "padding")

    def __init__(
        self,
        img_size: tuple[int, ...],
        filter: str | torch.Tensor | None = None,  # noqa: A002 - DeepInverse's keyword name
        factor: int = 2,
        device: torch.device | str | None = None,
        padding: str = "circular",
        *,
        dtype: torch.dtype | None = None,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
    ) -> None:
        api = "Downsampling"
        factor = _check_factor(api, factor)
        if not isinstance(img_size, (tuple, list, torch.Size)) or len(img_size) not in (2, 3):
            raise ValueError(f"{api}: img_size must be (C, H, W) or (H, W), got {img_size!r}.")
        if not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in img_size
        ):
            raise ValueError(f"{api}: img_size must hold positive ints, got {img_size!r}.")
        if not isinstance(padding, str) or padding not in PADDINGS:
            extra = _did_you_mean(padding, PADDINGS) if isinstance(padding, str) else ""
            raise ValueError(f"{api}: unknown padding {padding!r}{extra}; use one of {PADDINGS}.")
        kernel = _make_filter(api, filter, factor, device, dtype)
        img_size = tuple(int(s) for s in img_size)
        if kernel is not None and padding == "valid":
            h, w = kernel.shape[-2:]
            if h > img_size[-2] or w > img_size[-1]:
                raise ValueError(
                    f"{api}: the {h}x{w} filter is larger than the {img_size[-2]}x"
                    f"{img_size[-1]} image; valid padding needs H >= h and W >= w (use a "
                    "smaller filter or another padding)."
                )
        self.filter = kernel
        self.img_size = img_size
        self.factor = factor
        self.padding = padding
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver)

    # ------------------------------------------------------------------ shapes and checks
    def blurred_size(self) -> tuple[int, int]:
        """``(H', W')``, the size of the blurred image before decimation."""
        H, W = self.img_size[-2:]
        if self.filter is not None and self.padding == "valid":
            h, w = self.filter.shape[-2:]
            return H - h + 1, W - w + 1
        return H, W

    def measurement_size(self) -> tuple[int, int]:
        """``(⌈H'/f⌉, ⌈W'/f⌉)``, the spatial size of ``A x``."""
        Hb, Wb = self.blurred_size()
        f = self.factor
        return -(-Hb // f), -(-Wb // f)

    def _check(self, api: str, name: str, x: torch.Tensor, measured: bool) -> None:
        require_image(api, name, x)
        if self.filter is not None:
            require_same_precision(api, "filter", self.filter, name, x)
        spatial = self.measurement_size() if measured else self.img_size[-2:]
        expected = (*self.img_size[:-2], *spatial)
        if tuple(x.shape[-len(expected) :]) != expected:
            what = "the measurements A(x)" if measured else "img_size"
            raise ValueError(
                f"{api}: {name} has shape {tuple(x.shape)}, expected (B, *{expected}) from "
                f"{what} (img_size={self.img_size}, factor={self.factor}, "
                f"padding={self.padding!r})."
            )
        if self.filter is not None:
            B, C = x.shape[:2]
            b, c = self.filter.shape[:2]
            if b not in (1, B) or c not in (1, C):
                raise ValueError(
                    f"{api}: filter of shape {tuple(self.filter.shape)} does not fit {name} of "
                    f"shape {tuple(x.shape)}; its batch dim must be 1 or {B} and its channel "
                    f"dim 1 or {C}."
                )

    # ------------------------------------------------------------------ operator
    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        if self.filter is None:
            return x
        if self.padding != "valid":
            x = pad(x, _pad_sizes(*self.filter.shape[-2:]), self.padding)
        return conv2d(x, self.filter)

    def _blur_adjoint(self, x: torch.Tensor) -> torch.Tensor:
        if self.filter is None:
            return x
        x = conv_transpose2d(x, self.filter)
        if self.padding != "valid":
            x = pad_adjoint(x, _pad_sizes(*self.filter.shape[-2:]), self.padding)
        return x

    def _upsample(self, y: torch.Tensor) -> torch.Tensor:
        r""":math:`S^\top y`: ``y`` on the kept pixels of the ``H' × W'`` grid, zeros elsewhere
        (no in-place writes, so it works under ``torch.func.vmap``)."""
        f = self.factor
        Hb, Wb = self.blurred_size()
        h, w = y.shape[-2:]
        t = F.pad(y.unsqueeze(-1).unsqueeze(-3), (0, f - 1, 0, 0, 0, f - 1))
        return t.reshape(*y.shape[:-2], h * f, w * f)[..., :Hb, :Wb]

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """``(k * x)[..., ::factor, ::factor]``."""
        self._check("Downsampling.A", "x", x, measured=False)
        f = self.factor
        return self._blur(x)[..., ::f, ::f]

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint: upsample with zeros, then the blur's adjoint."""
        self._check("Downsampling.A_adjoint", "y", y, measured=True)
        return self._blur_adjoint(self._upsample(y))

    # ------------------------------------------------------------------ prox
    def _fourier_ok(self) -> bool:
        """Whether the circular closed form applies (``H, W`` multiples of ``factor`` and a
        kernel no larger than the image)."""
        if self.padding != "circular" or self.filter is None:
            return False
        H, W = self.img_size[-2:]
        h, w = self.filter.shape[-2:]
        return H % self.factor == 0 and W % self.factor == 0 and h <= H and w <= W

    def otf(self) -> torch.Tensor:
        """``k̂ = fft2(kernel padded to (H, W), centred at 0)`` (the circular blur's
        eigenvalues; full, not half, spectrum since decimation mixes ``u`` and ``−u``)."""
        H, W = self.img_size[-2:]
        k = self.filter
        if k is None:
            raise ValueError("Downsampling.otf: no filter (plain decimation has k̂ = 1).")
        h, w = k.shape[-2:]
        kp = F.pad(k, (0, W - w, 0, H - h))
        kp = torch.roll(kp, shifts=(-(h // 2), -(w // 2)), dims=(-2, -1))
        return torch.fft.fft2(kp)

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
        r""":math:`\arg\min_x \tfrac12\|Ax-y\|^2 + \tfrac1{2\gamma}\|x-z\|^2`, per sample.

        Closed form (Zhao et al., 2016; see the module docstring) for circular padding, ``H``
        and ``W`` multiples of ``factor`` and a number / 0-dim / per-sample ``(B,)`` ``γ``;
        closed form for every case without a filter; conjugate gradient with the given
        options otherwise (closed forms validate and ignore them).

        Args:
            z: ``(B, *img_size)``; y: measurements shaped like ``A(z)``; gamma: finite ``> 0``.

        Returns:
            ``(B, *img_size)`` tensor, differentiable in ``z``, ``y``, ``gamma`` and the filter.
        """
        api = "Downsampling.prox_l2"
        opts = check_solve_options(
            api, max_iter, tol, implicit_backward_solver, on_failure, unknown
        )
        require_tensor(api, "z", z)
        self._check(api, "z", z, measured=False)
        self._check(api, "y", y, measured=True)
        gamma = check_prox_gamma(api, gamma, z)
        if self.filter is None:
            return self._mask_prox(z, y, gamma)
        if not (self._fourier_ok() and is_scalar_or_per_sample(gamma, z)):
            return self._cg_prox(z, y, gamma, opts)
        f = self.factor
        H, W = self.img_size[-2:]
        h, w = H // f, W // f

        def fold(t: torch.Tensor) -> torch.Tensor:  # mean over the f² aliases
            return t.reshape(*t.shape[:-2], f, h, f, w).mean(dim=(-4, -2))

        def tile(t: torch.Tensor) -> torch.Tensor:
            t = t.unsqueeze(-3).unsqueeze(-2)
            return t.expand(*t.shape[:-4], f, h, f, w).reshape(*t.shape[:-4], H, W)

        k = self.otf()
        z_hat = torch.fft.fft2(z)
        g = expand_per_sample(gamma, z)
        den = safe_denominator(fold(k.real.square() + k.imag.square()) + 1 / g)
        q = (torch.fft.fft2(y) - fold(k * z_hat)) / den
        return torch.fft.ifft2(z_hat + k.conj() * tile(q)).real

    def _mask_prox(self, z: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """No filter: ``AᵀA`` is the 0/1 mask of kept pixels, so
        ``h = z + Sᵀ[(y − S z) / (1 + 1/S γ)]`` for any ``γ`` shape."""
        f = self.factor
        g = torch.broadcast_to(expand_per_sample(gamma, z), z.shape)[..., ::f, ::f]
        return z + self._upsample((y - z[..., ::f, ::f]) / (1 + 1 / g))
