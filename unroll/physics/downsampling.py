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
k\hat z} = \widehat{Az}`). This form stays finite for any finite ``γ > 0``. It is computed as
:math:`h = z + A^\top q`, :math:`q = D^{-1}(y - Az)`, :math:`D = AA^\top + I/\gamma` (a
circulant on the ``H/f × W/f`` grid): three real FFTs on the ``H × W`` grid, ``Aᵀ``'s
upsampling read as a tiling of ``q̂``. Its backward is analytic, as cheap as the forward: for a
cotangent ``v`` and :math:`s = D^{-1}Av`, :math:`\bar z = v - A^\top s`, :math:`\bar y = s`,
:math:`\bar\gamma = \langle s, q\rangle/\gamma^2` (autograd differentiates the same
operations instead when the filter needs a gradient or under ``torch.func`` transforms).

Every other case (other paddings, sizes not divisible by ``factor``, a kernel larger than the
image) with a separable filter is exact too, by the Kronecker eigendecomposition of
:mod:`unroll.physics._separable` (each axis blurs, then keeps every ``f``-th sample); a
non-separable filter or a full-shaped ``γ`` uses conjugate gradient through
:func:`least_squares`. Without a filter
:math:`A^\top A` is a 0/1 mask and the prox is closed form for every padding, size and ``γ``.
"""

from __future__ import annotations

import difflib
import numbers
from typing import Any, NamedTuple

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from unroll._host import is_transformed as _is_transformed
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
    PADDING_ALIASES,
    PADDINGS,
    _index_map,
    _pad_sizes,
    _spectrum,
    _use_fft,
    conv2d,
    conv_transpose2d,
    exact_prox_applies,
    gaussian_blur,
    kronecker_prox,
    pad,
    pad_adjoint,
    separable_factorisation,
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


def _fast_size(n: int) -> int:
    """The smallest ``m >= n`` whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


# ---------------------------------------------------------------------- circular closed form
def _has_tangent(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and fwAD.unpack_dual(t).tangent is not None


def _alias_sum(t: torch.Tensor, f: int) -> torch.Tensor:
    r""":math:`\sum_{a} t(u + a)` over the ``f²`` aliases of a ``(..., H, W)`` spectrum
    (``f²`` times the mean that is the spectrum of a decimation), as a sum of slices."""
    H, W = t.shape[-2:]
    t = t.reshape(*t.shape[:-2], f, H // f, f, W // f)
    out = t[..., 0, :, 0, :]
    for a in range(f):
        for b in range(f):
            if a or b:
                out = out + t[..., a, :, b, :]
    return out


class _Circular(NamedTuple):
    r"""What the circular closed form needs besides the images: the blur's half spectrum
    (``rfft2`` grid), the spectrum of :math:`D^{-1} = (AA^\top + I/\gamma)^{-1}` on the small
    grid, and the column map that tiles a small spectrum onto the large half grid."""

    k: torch.Tensor  # k̂ on the (H, W/2 + 1) grid
    inv_d: torch.Tensor  # 1 / (mean_a |k̂(u + a)|² + 1/γ) on the (H/f, W/f) grid
    cols: torch.Tensor  # v mod W/f for v = 0 .. W/2
    f: int


def _circular(otf: torch.Tensor, gamma: torch.Tensor, like: torch.Tensor, f: int) -> _Circular:
    H, W = otf.shape[-2:]
    power = _alias_sum(otf.real.square() + otf.imag.square(), f)
    d = power / (f * f) + 1 / expand_per_sample(gamma, like)
    cols = torch.arange(W // 2 + 1, device=otf.device) % (W // f)
    return _Circular(otf[..., : W // 2 + 1], 1 / safe_denominator(d), cols, f)


def _apply_A(x_hat: torch.Tensor, c: _Circular) -> torch.Tensor:
    """``A x = (k * x)[..., ::f, ::f]`` from ``x̂ = rfft2(x)``, the blur as ``irfft2(k̂ · x̂)``."""
    size = (c.f * c.inv_d.shape[-2], c.f * c.inv_d.shape[-1])
    return torch.fft.irfft2(x_hat * c.k, s=size)[..., :: c.f, :: c.f]


def _add_adjoint(x_hat: torch.Tensor, q_hat: torch.Tensor, c: _Circular, sign: float):
    r"""``irfft2(x̂ + sign · conj(k̂) ⊙ tile(q̂))``, i.e. :math:`x + \text{sign}\,A^\top q`:
    the zero-upsampling :math:`S^\top` tiles the small spectrum ``f × f`` times, here read
    straight onto the large half grid (no upsampled image, no extra FFT)."""
    f, (h, w) = c.f, q_hat.shape[-2:]
    t = q_hat.index_select(-1, c.cols)
    t = t.unsqueeze(-3).expand(*t.shape[:-2], f, h, t.shape[-1]).reshape(*t.shape[:-2], f * h, -1)
    return torch.fft.irfft2(torch.addcmul(x_hat, c.k.conj(), t, value=sign), s=(f * h, f * w))


def _circular_prox(
    z: torch.Tensor, y: torch.Tensor, c: _Circular
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(h, q̂)``: :math:`q = D^{-1}(y - Az)` (its spectrum) and :math:`h = z + A^\top q`,
    the prox (Woodbury form of the module docstring's formula): three FFTs on the large grid.
    Differentiable by autograd."""
    z_hat = torch.fft.rfft2(z)
    q_hat = torch.fft.fft2(y - _apply_A(z_hat, c)) * c.inv_d
    return _add_adjoint(z_hat, q_hat, c, 1.0), q_hat


def _gamma_bar(s_hat: torch.Tensor, q_hat: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    r""":math:`\langle s, q\rangle / \gamma^2` by Parseval on the small grid (per sample for a
    ``(B,)`` ``γ``)."""
    prod = (s_hat * q_hat.conj()).real / (s_hat.shape[-2] * s_hat.shape[-1])
    if gamma.dim() == 0:
        return prod.sum() / gamma.square()
    return prod.flatten(1).sum(1) / gamma.square()


class _CircularProx(torch.autograd.Function):
    r""":func:`_circular_prox` with its analytic backward. The prox is
    :math:`h = (I - A^\top D^{-1}A)z + A^\top D^{-1}y` (symmetric in ``z``), so for a
    cotangent ``v`` and :math:`s = D^{-1}Av`:

    .. math:: \bar z = v - A^\top s, \qquad \bar y = s, \qquad
              \bar\gamma = \langle s, q\rangle / \gamma^2

    (per sample for a ``(B,)`` ``γ``) — three FFTs on the large grid, as many as the forward.
    For higher derivatives (``create_graph``) ``q`` is recomputed from the saved inputs with
    differentiable operations. The OTF is a constant here: a filter that needs gradients
    takes the plain autograd path."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z, y, gamma, otf, f):  # type: ignore[override]
        return _circular_prox(z, y, _circular(otf, gamma, z, f))

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[override]
        z, y, gamma, otf, f = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(z, y, gamma, otf, output[1])
        ctx.f = f

    @staticmethod
    def backward(ctx, v, _q_bar):  # type: ignore[override]
        z, y, gamma, otf, q_hat = ctx.saved_tensors
        c = _circular(otf, gamma, z, ctx.f)
        v_hat = torch.fft.rfft2(v)
        s_hat = torch.fft.fft2(_apply_A(v_hat, c)) * c.inv_d  # D⁻¹ A v
        z_bar = _add_adjoint(v_hat, s_hat, c, -1.0) if ctx.needs_input_grad[0] else None
        y_bar = torch.fft.ifft2(s_hat).real if ctx.needs_input_grad[1] else None
        g_bar = None
        if ctx.needs_input_grad[2]:
            if torch.is_grad_enabled():  # create_graph: q as a function of (z, y, γ)
                q_hat = _circular_prox(z, y, c)[1]
            g_bar = _gamma_bar(s_hat, q_hat, gamma)
        return z_bar, y_bar, g_bar, None, None


class Downsampling(LinearPhysics):
    r"""Super-resolution operator :math:`y = S(k * x)`: blur, then keep every ``factor``-th
    pixel along each spatial axis (``x[..., ::factor, ::factor]``).

    Its adjoint upsamples with zeros and applies the blur's adjoint. ``prox_l2`` is the
    closed form of Zhao et al. (2016) for ``padding="circular"`` when ``H`` and ``W`` are
    multiples of ``factor`` (see the module docstring), exact by Kronecker eigendecomposition
    for a separable filter otherwise (see :meth:`prox_l2`), conjugate gradient
    (:func:`least_squares`, O(1)-memory implicit backward) for the rest.

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
            (blurred image of size ``H − h + 1``), ``"reflect"``, ``"replicate"`` or ``"zeros"``
            (DeepInverse's ``"constant"`` is read as ``"zeros"``; without a filter nothing is
            padded and DeepInverse's ``"same"`` / ``None`` are accepted).
        dtype: of a named filter (default: torch's default dtype); a tensor filter is converted.
        noise_model, max_iter, tol, implicit_backward_solver, solver: see
            :class:`LinearPhysics`.
        separable_prox: a separable filter (``"gaussian"``, ``"bilinear"``, ``"bicubic"`` are)
            gets an exact ``prox_l2`` where the circular closed form does not apply, as
            :class:`Blur`'s; ``False`` runs CG there.

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
    static = ("img_size", "factor", "padding", "separable_prox")

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
        solver: str = "CG",
        separable_prox: bool = True,
    ) -> None:
        api = "Downsampling"
        factor = _check_factor(api, factor)
        if not isinstance(separable_prox, bool):
            raise TypeError(f"{api}: separable_prox must be True or False, got {separable_prox!r}.")
        if not isinstance(img_size, (tuple, list, torch.Size)) or len(img_size) not in (2, 3):
            raise ValueError(f"{api}: img_size must be (C, H, W) or (H, W), got {img_size!r}.")
        if not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and s > 0 for s in img_size
        ):
            raise ValueError(f"{api}: img_size must hold positive ints, got {img_size!r}.")
        kernel = _make_filter(api, filter, factor, device, dtype)
        if kernel is None and (padding is None or padding == "same"):
            padding = "circular"  # DeepInverse's values for plain decimation: nothing is padded
        if isinstance(padding, str):
            padding = PADDING_ALIASES.get(padding, padding)
        if not isinstance(padding, str) or padding not in PADDINGS:
            extra = _did_you_mean(padding, PADDINGS) if isinstance(padding, str) else ""
            raise ValueError(f"{api}: unknown padding {padding!r}{extra}; use one of {PADDINGS}.")
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
        self.separable_prox = separable_prox
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver, solver)

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

    def normal_operator(self, like: torch.Tensor):
        r""":math:`A^\top A` for inputs shaped like ``like``, everything that does not depend
        on ``x`` built once (what each CG iteration applies). With an FFT-sized filter:

        .. math:: A^\top A x = P^\top\, \mathcal F^{-1}\bigl[\bar{\hat k}\cdot
                  \mathcal F[V \odot \mathcal F^{-1}[\hat k \cdot \mathcal F P x]]\bigr],

        :math:`P` the padding (a gather with precomputed index maps; none for ``"valid"``),
        :math:`\hat k` the kernel's spectrum on the padded grid and :math:`V` the 0/1 mask of
        the blurred pixels that decimation keeps (:math:`S^\top S`, inside the valid window).
        Without a filter :math:`A^\top A = S^\top S` is that mask alone; small filters use
        ``A_adjoint(A(x))``."""
        self._check("Downsampling.normal_operator", "like", like, measured=False)
        f = self.factor
        H, W = like.shape[-2:]
        if self.filter is None:
            keep = torch.zeros(H, W, dtype=like.dtype, device=like.device)
            keep[::f, ::f] = 1
            return lambda x: x * keep
        if not _use_fft(self.filter):
            return self.A_adjoint_A
        h, w = self.filter.shape[-2:]
        if self.padding == "valid":
            Hp, Wp = H, W
        else:
            top, bottom, left, right = _pad_sizes(h, w)
            Hp, Wp = H + top + bottom, W + left + right
            if self.padding != "zeros":
                ih = _index_map(H, top, bottom, self.padding, like.device)
                iw = _index_map(W, left, right, self.padding, like.device)
        # FFT grid: the padded size rounded up to a 5-smooth one (fast FFT sizes; a larger
        # grid changes nothing: the kept pixels see no wrap-around for any size >= (Hp, Wp))
        Nh, Nw = _fast_size(Hp), _fast_size(Wp)
        spec = _spectrum(self.filter, (Nh, Nw))
        spec_conj = spec.conj()
        keep = torch.zeros(Nh, Nw, dtype=like.dtype, device=like.device)
        keep[h - 1 : Hp : f, w - 1 : Wp : f] = 1
        padding = self.padding

        def normal(x: torch.Tensor) -> torch.Tensor:
            if padding == "zeros":
                x = F.pad(x, (left, right, top, bottom))
            elif padding != "valid":
                x = x.index_select(-2, ih).index_select(-1, iw)
            kx = torch.fft.irfft2(torch.fft.rfft2(x, s=(Nh, Nw)) * spec, s=(Nh, Nw))
            out = torch.fft.irfft2(torch.fft.rfft2(kx * keep) * spec_conj, s=(Nh, Nw))
            out = out[..., :Hp, :Wp]
            if padding == "zeros":
                return out[..., top : top + H, left : left + W]
            if padding == "valid":
                return out
            out = out.new_zeros(*out.shape[:-1], W).index_add(-1, iw, out)
            return out.new_zeros(*out.shape[:-2], H, W).index_add(-2, ih, out)

        return normal

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
        closed form for every case without a filter; exact for a separable filter (the
        named ones are) with any other padding or size, under the conditions of
        :meth:`Blur.prox_l2 <unroll.physics.Blur.prox_l2>` (Kronecker eigendecomposition, the
        decimation folded into each axis); conjugate gradient with the given options otherwise
        (closed forms validate and ignore them).

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
        if self._fourier_ok() and is_scalar_or_per_sample(gamma, z):
            return self._fourier_prox(z, y, gamma)
        fac = None
        if exact_prox_applies(self, z, y, gamma, opts):
            fac = separable_factorisation(self.filter, z, self.padding, self.factor)
        if fac is None:
            return self._cg_prox(z, y, gamma, opts)
        return kronecker_prox(self, fac, z, y, gamma, opts, api)

    def _fourier_prox(self, z: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """The circular closed form. Plain autograd use (no ``torch.func`` transform, no
        forward-mode tangent, a filter without gradient) runs it as one
        :class:`torch.autograd.Function` with the analytic backward (:class:`_CircularProx`);
        otherwise autograd differentiates its operations."""
        otf = self.otf()
        filt = self.filter
        fast = not (
            (filt is not None and filt.requires_grad)
            or any(_is_transformed(t) or _has_tangent(t) for t in (z, y, gamma, filt))
        )
        if fast:
            return _CircularProx.apply(z, y, gamma, otf.detach(), self.factor)[0]
        return _circular_prox(z, y, _circular(otf, gamma, z, self.factor))[0]

    def _mask_prox(self, z: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """No filter: ``AᵀA`` is the 0/1 mask of kept pixels, so
        ``h = z + Sᵀ[(y − S z) / (1 + 1/S γ)]`` for any ``γ`` shape."""
        f = self.factor
        g = torch.broadcast_to(expand_per_sample(gamma, z), z.shape)[..., ::f, ::f]
        return z + self._upsample((y - z[..., ::f, ::f]) / (1 + 1 / g))
