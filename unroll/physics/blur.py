r"""Convolution (blur) with an explicit adjoint for every boundary condition.

:class:`Blur` applies :math:`y = k * x` per channel (a true convolution, not a correlation)
with the kernel's centre at index ``(h // 2, w // 2)``. Boundary handling:

* ``"valid"``: no padding, ``y`` has shape ``(H - h + 1, W - w + 1)``;
* ``"circular"``, ``"reflect"``, ``"replicate"``, ``"zeros"``: ``x`` is extended by
  ``(h // 2 - (h - 1) % 2, h // 2)`` rows above / below (likewise columns) and ``y`` has
  ``x``'s size.

Every padding is a gather ``x_pad = x[idx]`` with a fixed index map (``"zeros"``: embedding),
so its adjoint is the scatter-add ``index_add`` along the same map; the convolution's adjoint is
``conv_transpose2d``. No ``torch.func`` transform runs at call time, so the operator works with
``torch.autograd.graph.saved_tensors_hooks`` (checkpointing, offloading, memory measurement).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from unroll.physics._utils import require_image, require_real, require_same_precision
from unroll.physics.base import LinearPhysics

__all__ = ["Blur", "gaussian_blur", "conv2d", "conv_transpose2d"]

PADDINGS = ("valid", "circular", "reflect", "replicate", "zeros")


def gaussian_blur(
    sigma: float | tuple[float, float] = (1.0, 1.0),
    angle: float = 0.0,
    *,
    size: int | tuple[int, int] | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    r"""A normalised 2-D Gaussian kernel of shape ``(1, 1, h, w)``.

    .. math:: k(u) \propto \exp\!\bigl(-\tfrac12 (R_\theta u)^\top
              \operatorname{diag}(\sigma_w^{-2}, \sigma_h^{-2}) (R_\theta u)\bigr),
              \qquad \textstyle\sum k = 1,

    on the grid :math:`u = (u_w, u_h) \in \{-c..c\}^2`, :math:`c = \lfloor\max\sigma/0.3 + 1\rfloor`
    (the size DeepInverse uses), :math:`R_\theta` the rotation by ``angle`` degrees.

    Args:
        sigma: standard deviation in pixels: one number (isotropic) or ``(σ_h, σ_w)``.
        angle: rotation in degrees.
        size: kernel size ``h`` or ``(h, w)`` (default ``2c + 1``).
        dtype, device: of the result (default: torch's default dtype, CPU).

    Returns:
        ``(1, 1, h, w)`` tensor summing to one.

    Example:
        >>> from unroll.physics import gaussian_blur
        >>> k = gaussian_blur(2.5)
        >>> k.shape, round(float(k.sum()), 6)
        (torch.Size([1, 1, 19, 19]), 1.0)
    """
    if isinstance(sigma, (int, float)):
        s_h = s_w = float(sigma)
    else:
        s_h, s_w = map(float, sigma)
    if not (0 < s_h < math.inf and 0 < s_w < math.inf):
        raise ValueError(f"gaussian_blur: sigma must be > 0 and finite, got {sigma!r}.")
    if not math.isfinite(angle):
        raise ValueError(f"gaussian_blur: angle must be a finite number of degrees, got {angle!r}.")
    if size is None:
        c = int(max(s_h, s_w) / 0.3 + 1)
        size = (2 * c + 1, 2 * c + 1)
    elif isinstance(size, int):
        size = (size, size)
    h, w = size
    if h <= 0 or w <= 0:
        raise ValueError(f"gaussian_blur: size must be positive, got {size!r}.")
    dtype = dtype or torch.get_default_dtype()
    uh = torch.linspace(-(h - 1) / 2, (h - 1) / 2, h, dtype=dtype, device=device)
    uw = torch.linspace(-(w - 1) / 2, (w - 1) / 2, w, dtype=dtype, device=device)
    gh, gw = torch.meshgrid(uh, uw, indexing="ij")
    t = math.radians(angle)
    rw = math.cos(t) * gw - math.sin(t) * gh
    rh = math.sin(t) * gw + math.cos(t) * gh
    k = torch.exp(-0.5 * ((rw / s_w) ** 2 + (rh / s_h) ** 2))
    return (k / k.sum()).reshape(1, 1, h, w)


# ---------------------------------------------------------------------- padding
def _pad_sizes(kh: int, kw: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) so that a valid convolution returns the input size."""
    return kh // 2 - (kh - 1) % 2, kh // 2, kw // 2 - (kw - 1) % 2, kw // 2


def _index_map(n: int, before: int, after: int, mode: str, device: torch.device) -> torch.Tensor:
    """Source index of each padded position ``-before .. n + after - 1``."""
    i = torch.arange(-before, n + after, device=device)
    if mode == "circular":
        return torch.remainder(i, n)
    if mode == "replicate":
        return i.clamp(0, n - 1)
    # reflect about the edge samples (no repetition), any pad width
    if n == 1:
        return torch.zeros_like(i)
    j = torch.remainder(i, 2 * n - 2)
    return torch.where(j >= n, 2 * n - 2 - j, j)


def pad(x: torch.Tensor, sizes: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Extend the last two dims of ``x`` by ``(top, bottom, left, right)`` with ``mode``."""
    top, bottom, left, right = sizes
    if mode == "zeros":
        return F.pad(x, (left, right, top, bottom))
    H, W = x.shape[-2:]
    ih = _index_map(H, top, bottom, mode, x.device)
    iw = _index_map(W, left, right, mode, x.device)
    return x.index_select(-2, ih).index_select(-1, iw)


def pad_adjoint(y: torch.Tensor, sizes: tuple[int, int, int, int], mode: str) -> torch.Tensor:
    """Adjoint of :func:`pad`: scatter-add each padded sample back onto its source."""
    top, bottom, left, right = sizes
    Hp, Wp = y.shape[-2:]
    H, W = Hp - top - bottom, Wp - left - right
    if mode == "zeros":
        return y[..., top : top + H, left : left + W]
    ih = _index_map(H, top, bottom, mode, y.device)
    iw = _index_map(W, left, right, mode, y.device)
    out = y.new_zeros(y.shape[:-1] + (W,)).index_add(-1, iw, y)
    return out.new_zeros(out.shape[:-2] + (H, W)).index_add(-2, ih, out)


# ---------------------------------------------------------------------- convolution
FFT_MIN_AREA = 100
"""Kernels with ``h·w`` at least this use FFTs (faster on CPU from about 10×10); smaller ones
use a grouped direct convolution. Both compute the same operator exactly."""


def _use_fft(k: torch.Tensor) -> bool:
    return k.shape[-2] * k.shape[-1] >= FFT_MIN_AREA


def _grouped(x: torch.Tensor, k: torch.Tensor, op) -> torch.Tensor:
    """Apply ``op`` (conv2d / conv_transpose2d with weight ``k`` flipped) channel by channel as
    one grouped convolution, for a kernel ``(b, c, h, w)``, ``b ∈ {1, B}``, ``c ∈ {1, C}``."""
    B, C, H, W = x.shape
    b, c, h, w = k.shape
    kf = k.flip(-2, -1).expand(B, C, h, w).reshape(B * C, 1, h, w)
    out = op(x.reshape(1, B * C, H, W), kf, groups=B * C)
    return out.reshape(B, C, out.shape[-2], out.shape[-1])


def _spectrum(k: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``rfft2`` of the kernel zero-padded (at the end) to ``size``."""
    return torch.fft.rfft2(k, s=size)


def _conv_fft(x: torch.Tensor, k: torch.Tensor, spec: torch.Tensor | None = None):
    """Valid convolution as a circular one on ``x``'s grid, cropped where nothing wraps."""
    H, W = x.shape[-2:]
    h, w = k.shape[-2:]
    spec = _spectrum(k, (H, W)) if spec is None else spec
    full = torch.fft.irfft2(torch.fft.rfft2(x) * spec, s=(H, W))
    return full[..., h - 1 :, w - 1 :]


def _conv_transpose_fft(y: torch.Tensor, k: torch.Tensor, spec: torch.Tensor | None = None):
    """Adjoint of :func:`_conv_fft`: embed ``y`` (zeros elsewhere), correlate circularly."""
    h, w = k.shape[-2:]
    H, W = y.shape[-2] + h - 1, y.shape[-1] + w - 1
    spec = _spectrum(k, (H, W)) if spec is None else spec
    embedded = F.pad(y, (w - 1, 0, h - 1, 0))
    return torch.fft.irfft2(torch.fft.rfft2(embedded) * spec.conj(), s=(H, W))


def conv2d(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    r"""Valid 2-D convolution :math:`y_{i} = \sum_{b} k_{b}\, x_{i + h - 1 - b}` per channel.

    ``x``: ``(B, C, H, W)``; ``k``: ``(b, c, h, w)``, ``b ∈ {1, B}``, ``c ∈ {1, C}``. Output
    ``(B, C, H - h + 1, W - w + 1)``. Adjoint: :func:`conv_transpose2d`. Large kernels
    (``h·w ≥ FFT_MIN_AREA``) go through real FFTs, small ones through a grouped convolution.
    """
    _same_dtype("conv2d", x, k)
    return _conv_fft(x, k) if _use_fft(k) else _grouped(x, k, F.conv2d)


def conv_transpose2d(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`conv2d`: output ``(B, C, H + h - 1, W + w - 1)``."""
    _same_dtype("conv_transpose2d", y, k)
    return _conv_transpose_fft(y, k) if _use_fft(k) else _grouped(y, k, F.conv_transpose2d)


def _same_dtype(api: str, x: torch.Tensor, k: torch.Tensor) -> None:
    if x.dtype != k.dtype:
        raise TypeError(
            f"{api}: the input is {x.dtype} but the kernel is {k.dtype}; convert one, e.g. "
            f"k.to({x.dtype})."
        )


# ---------------------------------------------------------------------- the operator
class Blur(LinearPhysics):
    r"""Blur (convolution) operator :math:`y = k * x` with a chosen boundary condition.

    Args:
        filter: kernel ``(h, w)`` or ``(b, c, h, w)`` with ``b ∈ {1, B}`` (shared or one per
            sample) and ``c ∈ {1, C}`` (shared or one per channel); real. It is a pytree leaf:
            it may require grad or come from a network, and gradients reach it through
            ``A``, ``A_adjoint`` and ``prox_l2`` (implicit or not).
        padding: ``"valid"`` (output smaller than the image), ``"circular"``, ``"reflect"``,
            ``"replicate"`` or ``"zeros"`` (output the image's size).
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`.
            ``prox_l2`` has no closed form here and uses CG (:func:`least_squares`).

    Example:
        >>> import torch
        >>> from unroll.physics import Blur, GaussianNoise, gaussian_blur
        >>> physics = Blur(gaussian_blur(2.5), padding="valid", noise_model=GaussianNoise(0.1),
        ...                max_iter=100, tol=1e-8)
        >>> x = torch.rand(8, 3, 32, 32)
        >>> physics.A(x).shape
        torch.Size([8, 3, 14, 14])
        >>> h = physics.prox_l2(torch.zeros_like(x), physics(x), 1.0)
        >>> h.shape
        torch.Size([8, 3, 32, 32])
    """

    leaves = ("filter",)
    static = ("padding",)

    def __init__(
        self,
        filter: torch.Tensor,  # noqa: A002 - the seeds' keyword name
        padding: str = "valid",
        *,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
    ) -> None:
        require_real("Blur", "filter", filter)
        if filter.dim() == 2:
            filter = filter.reshape(1, 1, *filter.shape)
        if filter.dim() != 4:
            raise ValueError(
                f"Blur: filter must have shape (h, w) or (b, c, h, w), got {tuple(filter.shape)}."
            )
        if padding not in PADDINGS:
            raise ValueError(f"Blur: padding must be one of {PADDINGS}, got {padding!r}.")
        self.filter = filter
        self.padding = padding
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver)

    def _check(self, api: str, name: str, x: torch.Tensor) -> None:
        require_image(api, name, x)
        require_same_precision(api, "filter", self.filter, name, x)
        B, C, H, W = x.shape
        b, c, h, w = self.filter.shape
        if b not in (1, B) or c not in (1, C):
            raise ValueError(
                f"{api}: filter of shape {tuple(self.filter.shape)} does not fit {name} of shape "
                f"{tuple(x.shape)}; its batch dim must be 1 or {B} and its channel dim 1 or {C}."
            )
        if self.padding == "valid" and name == "x" and (H < h or W < w):
            raise ValueError(
                f"{api}: the {h}x{w} filter is larger than the {H}x{W} image; valid padding "
                "needs H >= h and W >= w (use a smaller filter or another padding)."
            )

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """``k * x`` with the boundary condition ``padding``."""
        self._check("Blur.A", "x", x)
        if self.padding != "valid":
            x = pad(x, _pad_sizes(*self.filter.shape[-2:]), self.padding)
        return conv2d(x, self.filter)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        return self.normal_operator(x)(x)

    def normal_operator(self, like: torch.Tensor):
        """``AᵀA``; for valid padding and a large kernel: four FFTs with one kernel spectrum,
        ``AᵀA x = F⁻¹[k̂* · F[V ⊙ F⁻¹[k̂ · F x]]]``, ``V`` the indicator of the valid window."""
        if self.padding != "valid" or not _use_fft(self.filter):
            return lambda x: self.A_adjoint(self.A(x))
        self._check("Blur.A_adjoint_A", "x", like)
        H, W = like.shape[-2:]
        h, w = self.filter.shape[-2:]
        spec = _spectrum(self.filter, (H, W))
        spec_conj = spec.conj()
        valid = torch.zeros(H, W, dtype=like.dtype, device=like.device)
        valid[h - 1 :, w - 1 :] = 1

        def normal(x: torch.Tensor) -> torch.Tensor:
            if x.shape != like.shape:
                raise ValueError(
                    f"Blur.A_adjoint_A: x has shape {tuple(x.shape)}, expected {tuple(like.shape)}."
                )
            full = torch.fft.irfft2(torch.fft.rfft2(x) * spec, s=(H, W))
            return torch.fft.irfft2(torch.fft.rfft2(full * valid) * spec_conj, s=(H, W))

        return normal

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint: ``conv_transpose2d`` then the adjoint of the padding."""
        self._check("Blur.A_adjoint", "y", y)
        x = conv_transpose2d(y, self.filter)
        if self.padding != "valid":
            x = pad_adjoint(x, _pad_sizes(*self.filter.shape[-2:]), self.padding)
        return x
