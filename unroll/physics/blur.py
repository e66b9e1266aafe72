r"""Convolution (blur) with an explicit adjoint for every boundary condition.

:class:`Blur` applies :math:`y = k * x` per channel (a true convolution, not a correlation)
with the kernel's centre at index ``(h // 2, w // 2)`` (3-D: ``(d // 2, h // 2, w // 2)`` on
``(B, C, D, H, W)`` volumes). Boundary handling:

* ``"valid"``: no padding, ``y`` has shape ``(H - h + 1, W - w + 1)``;
* ``"circular"``, ``"reflect"``, ``"replicate"``, ``"zeros"``: ``x`` is extended by
  ``(h // 2 - (h - 1) % 2, h // 2)`` rows above / below (likewise columns) and ``y`` has
  ``x``'s size.

Every padding is a gather ``x_pad = x[idx]`` with a fixed index map (``"zeros"``: embedding),
so its adjoint is the scatter-add ``index_add`` along the same map; the convolution's adjoint is
the transposed convolution (``conv_transpose2d`` / ``conv_transpose3d``). No ``torch.func``
transform runs at call time, so the operator works with
``torch.autograd.graph.saved_tensors_hooks`` (checkpointing, offloading, memory measurement).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from unroll._host import is_transformed
from unroll.physics import _separable
from unroll.physics._utils import (
    SolveOptions,
    check_prox_gamma,
    check_solve_options,
    is_scalar_or_per_sample,
    require_real,
    require_same_precision,
    require_tensor,
)
from unroll.physics.base import LinearPhysics
from unroll.physics.prox import direct_prox

__all__ = ["Blur", "gaussian_blur", "conv2d", "conv_transpose2d", "conv3d", "conv_transpose3d"]

PADDINGS = ("valid", "circular", "reflect", "replicate", "zeros")
#: DeepInverse's other name for a padding (``"constant"``: zeros), read as ours.
PADDING_ALIASES = {"constant": "zeros"}


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
def _pad_sizes(*ks: int) -> tuple[int, ...]:
    """``(before_0, after_0, before_1, after_1, ...)`` for kernel sizes ``ks`` (one per spatial
    dim, outermost first) so that a valid convolution returns the input size; in 2-D
    ``(top, bottom, left, right)``."""
    out: list[int] = []
    for k in ks:
        out += [k // 2 - (k - 1) % 2, k // 2]
    return tuple(out)


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


def _pairs(sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    return [(sizes[2 * i], sizes[2 * i + 1]) for i in range(len(sizes) // 2)]


def pad(x: torch.Tensor, sizes: tuple[int, ...], mode: str) -> torch.Tensor:
    """Extend the last ``len(sizes) // 2`` dims of ``x`` by ``sizes = (before_0, after_0,
    ...)`` (2-D: ``(top, bottom, left, right)``) with ``mode``."""
    pairs = _pairs(sizes)
    n = len(pairs)
    if mode == "zeros":
        flat = [p for pair in reversed(pairs) for p in pair]
        return F.pad(x, flat)
    for d, (before, after) in enumerate(pairs):
        dim = x.dim() - n + d
        x = x.index_select(dim, _index_map(x.shape[dim], before, after, mode, x.device))
    return x


def pad_adjoint(y: torch.Tensor, sizes: tuple[int, ...], mode: str) -> torch.Tensor:
    """Adjoint of :func:`pad`: scatter-add each padded sample back onto its source."""
    pairs = _pairs(sizes)
    n = len(pairs)
    if mode == "zeros":
        index = tuple(slice(b, y.shape[y.dim() - n + d] - a) for d, (b, a) in enumerate(pairs))
        return y[(Ellipsis, *index)]
    for d, (before, after) in reversed(list(enumerate(pairs))):
        dim = y.dim() - n + d
        size = y.shape[dim] - before - after
        idx = _index_map(size, before, after, mode, y.device)
        shape = list(y.shape)
        shape[dim] = size
        y = y.new_zeros(shape).index_add(dim, idx, y)
    return y


# ---------------------------------------------------------------------- convolution
FFT_MIN_AREA = 100
"""Kernels with ``h·w`` (3-D: ``d·h·w``) at least this use FFTs (faster on CPU from about
10×10); smaller ones use a grouped direct convolution. Both compute the same operator
exactly."""

_DIRECT = {2: (F.conv2d, F.conv_transpose2d), 3: (F.conv3d, F.conv_transpose3d)}


def _use_fft(k: torch.Tensor) -> bool:
    return math.prod(k.shape[2:]) >= FFT_MIN_AREA


def _grouped(x: torch.Tensor, k: torch.Tensor, transpose: bool) -> torch.Tensor:
    """Apply conv / conv_transpose (2-D or 3-D, weight ``k`` flipped) channel by channel as
    one grouped convolution, for a kernel ``(b, c, *ks)``, ``b ∈ {1, B}``, ``c ∈ {1, C}``."""
    B, C, *spatial = x.shape
    ks = k.shape[2:]
    n = len(ks)
    op = _DIRECT[n][1 if transpose else 0]
    dims = tuple(range(-n, 0))
    kf = k.flip(dims).expand(B, C, *ks).reshape(B * C, 1, *ks)
    out = op(x.reshape(1, B * C, *spatial), kf, groups=B * C)
    return out.reshape(B, C, *out.shape[2:])


def _spectrum(k: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """``rfftn`` of the kernel zero-padded (at the end) to ``size`` (its last dims)."""
    return torch.fft.rfftn(k, s=size, dim=tuple(range(-len(size), 0)))


def _conv_fft(x: torch.Tensor, k: torch.Tensor, spec: torch.Tensor | None = None):
    """Valid convolution as a circular one on ``x``'s grid, cropped where nothing wraps."""
    n = k.dim() - 2
    size = tuple(x.shape[-n:])
    dims = tuple(range(-n, 0))
    spec = _spectrum(k, size) if spec is None else spec
    full = torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * spec, s=size, dim=dims)
    return full[(Ellipsis, *(slice(kd - 1, None) for kd in k.shape[2:]))]


def _conv_transpose_fft(y: torch.Tensor, k: torch.Tensor, spec: torch.Tensor | None = None):
    """Adjoint of :func:`_conv_fft`: embed ``y`` (zeros elsewhere), correlate circularly."""
    ks = k.shape[2:]
    n = len(ks)
    size = tuple(y.shape[-n + d] + ks[d] - 1 for d in range(n))
    dims = tuple(range(-n, 0))
    spec = _spectrum(k, size) if spec is None else spec
    embedded = F.pad(y, [p for kd in reversed(ks) for p in (kd - 1, 0)])
    return torch.fft.irfftn(torch.fft.rfftn(embedded, dim=dims) * spec.conj(), s=size, dim=dims)


def _conv(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return _conv_fft(x, k) if _use_fft(k) else _grouped(x, k, transpose=False)


def _conv_transpose(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return _conv_transpose_fft(y, k) if _use_fft(k) else _grouped(y, k, transpose=True)


def conv2d(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    r"""Valid 2-D convolution :math:`y_{i} = \sum_{b} k_{b}\, x_{i + h - 1 - b}` per channel.

    ``x``: ``(B, C, H, W)``; ``k``: ``(b, c, h, w)``, ``b ∈ {1, B}``, ``c ∈ {1, C}``. Output
    ``(B, C, H - h + 1, W - w + 1)``. Adjoint: :func:`conv_transpose2d`. Large kernels
    (``h·w ≥ FFT_MIN_AREA``) go through real FFTs, small ones through a grouped convolution.
    """
    _same_dtype("conv2d", x, k)
    _rank("conv2d", x, k, 4)
    return _conv(x, k)


def conv_transpose2d(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`conv2d`: output ``(B, C, H + h - 1, W + w - 1)``."""
    _same_dtype("conv_transpose2d", y, k)
    _rank("conv_transpose2d", y, k, 4)
    return _conv_transpose(y, k)


def conv3d(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    r"""Valid 3-D convolution :math:`y_{i} = \sum_{b} k_{b}\, x_{i + s - 1 - b}` per channel
    (``i, b, s`` multi-indices over depth, height, width; a true convolution).

    ``x``: ``(B, C, D, H, W)``; ``k``: ``(b, c, d, h, w)``, ``b ∈ {1, B}``, ``c ∈ {1, C}``.
    Output ``(B, C, D - d + 1, H - h + 1, W - w + 1)``. Adjoint: :func:`conv_transpose3d`.

    Example:
        >>> import torch
        >>> from unroll.physics import conv3d
        >>> conv3d(torch.ones(1, 1, 4, 5, 6), torch.ones(1, 1, 2, 2, 2)).shape
        torch.Size([1, 1, 3, 4, 5])
    """
    _same_dtype("conv3d", x, k)
    _rank("conv3d", x, k, 5)
    return _conv(x, k)


def conv_transpose3d(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`conv3d`: output ``(B, C, D + d - 1, H + h - 1, W + w - 1)``."""
    _same_dtype("conv_transpose3d", y, k)
    _rank("conv_transpose3d", y, k, 5)
    return _conv_transpose(y, k)


def _rank(api: str, x: torch.Tensor, k: torch.Tensor, dim: int) -> None:
    if x.dim() != dim or k.dim() != dim:
        raise ValueError(
            f"{api}: input and kernel must both have {dim} dims, got {tuple(x.shape)} and "
            f"{tuple(k.shape)}."
        )


def _same_dtype(api: str, x: torch.Tensor, k: torch.Tensor) -> None:
    if x.dtype != k.dtype:
        raise TypeError(
            f"{api}: the input is {x.dtype} but the kernel is {k.dtype}; convert one, e.g. "
            f"k.to({x.dtype})."
        )


# ---------------------------------------------------------------------- the operator
class Blur(LinearPhysics):
    r"""Blur (convolution) operator :math:`y = k * x` with a chosen boundary condition, in 2-D
    or 3-D.

    Args:
        filter: 2-D kernel ``(h, w)`` or ``(b, c, h, w)``, or 3-D kernel ``(b, c, d, h, w)``
            (then images are ``(B, C, D, H, W)`` volumes), with ``b ∈ {1, B}`` (shared or
            one per sample) and ``c ∈ {1, C}`` (shared or one per channel); real. It is a
            pytree leaf: it may require grad or come from a network, and gradients reach it
            through ``A``, ``A_adjoint`` and ``prox_l2`` (implicit or not).
        padding: ``"valid"`` (output smaller than the image), ``"circular"``, ``"reflect"``,
            ``"replicate"`` or ``"zeros"`` (output the image's size; DeepInverse's
            ``"constant"`` is read as ``"zeros"``), in 2-D and 3-D alike (DeepInverse 0.4.1 has
            only ``"valid"`` and ``"circular"`` in 3-D).
        noise_model, max_iter, tol, implicit_backward_solver, solver: see
            :class:`LinearPhysics`; they set the conjugate-gradient ``prox_l2``
            (:func:`least_squares`) of a non-separable kernel.
        separable_prox: a separable 2-D kernel (rank one: a Gaussian without rotation, a box)
            gets the exact ``prox_l2`` of :mod:`unroll.physics._separable` (Kronecker
            eigendecomposition, every padding; several times faster than CG and exact) for a
            number, 0-dim or per-sample ``γ``, ``solver="CG"``, an implicit backward and no
            ``torch.func`` transform; ``False`` always runs CG.

    Each boundary condition extends the image by ``s // 2 - (s - 1) % 2`` samples before and
    ``s // 2`` after along a dimension where the kernel has size ``s`` (DeepInverse's
    convention, in 3-D too).

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
        >>> volume = Blur(torch.ones(1, 1, 3, 3, 3) / 27, padding="circular")
        >>> volume.A(torch.rand(2, 1, 8, 16, 16)).shape
        torch.Size([2, 1, 8, 16, 16])
    """

    leaves = ("filter",)
    static = ("padding", "separable_prox")

    def __init__(
        self,
        filter: torch.Tensor,  # noqa: A002 - the seeds' keyword name
        padding: str = "valid",
        *,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
        solver: str = "CG",
        device: torch.device | str | None = None,
        separable_prox: bool = True,
    ) -> None:
        require_real("Blur", "filter", filter)
        if not isinstance(separable_prox, bool):
            raise TypeError(f"Blur: separable_prox must be True or False, got {separable_prox!r}.")
        if filter.dim() == 2:
            filter = filter.reshape(1, 1, *filter.shape)
        if filter.dim() not in (4, 5):
            raise ValueError(
                f"Blur: filter must have shape (h, w), (b, c, h, w) or, in 3-D, (b, c, d, h, w); "
                f"got {tuple(filter.shape)}."
            )
        padding = PADDING_ALIASES.get(padding, padding) if isinstance(padding, str) else padding
        if padding not in PADDINGS:
            raise ValueError(f"Blur: padding must be one of {PADDINGS}, got {padding!r}.")
        self.filter = filter
        self.padding = padding
        self.separable_prox = separable_prox
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver, solver, device)

    def _check(self, api: str, name: str, x: torch.Tensor) -> None:
        require_real(api, name, x)
        rank = self.filter.dim()
        if x.dim() != rank:
            layout = "(B, C, H, W) image batch" if rank == 4 else "(B, C, D, H, W) volume batch"
            raise ValueError(
                f"{api}: {name} must be a {layout} for this {rank - 2}-D filter, got shape "
                f"{tuple(x.shape)}; add the missing batch/channel dimensions with unsqueeze."
            )
        require_same_precision(api, "filter", self.filter, name, x)
        B, C, *spatial = x.shape
        b, c, *ks = self.filter.shape
        if b not in (1, B) or c not in (1, C):
            raise ValueError(
                f"{api}: filter of shape {tuple(self.filter.shape)} does not fit {name} of shape "
                f"{tuple(x.shape)}; its batch dim must be 1 or {B} and its channel dim 1 or {C}."
            )
        if self.padding == "valid" and name == "x" and any(n < k for n, k in zip(spatial, ks)):
            raise ValueError(
                f"{api}: the {tuple(ks)} filter is larger than the {tuple(spatial)} image; valid "
                "padding needs every image size >= the filter's (use a smaller filter or another "
                "padding)."
            )

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """``k * x`` with the boundary condition ``padding``."""
        self._check("Blur.A", "x", x)
        if self.padding != "valid":
            x = pad(x, _pad_sizes(*self.filter.shape[2:]), self.padding)
        return _conv(x, self.filter)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        return self.normal_operator(x)(x)

    def normal_operator(self, like: torch.Tensor):
        """``AᵀA``; for valid padding and a large kernel: four FFTs with one kernel spectrum,
        ``AᵀA x = F⁻¹[k̂* · F[V ⊙ F⁻¹[k̂ · F x]]]``, ``V`` the indicator of the valid window."""
        if self.padding != "valid" or not _use_fft(self.filter):
            return lambda x: self.A_adjoint(self.A(x))
        self._check("Blur.A_adjoint_A", "x", like)
        ks = self.filter.shape[2:]
        n = len(ks)
        size = tuple(like.shape[-n:])
        dims = tuple(range(-n, 0))
        spec = _spectrum(self.filter, size)
        spec_conj = spec.conj().resolve_conj()  # materialised once, not at every call
        valid = torch.zeros(size, dtype=like.dtype, device=like.device)
        valid[tuple(slice(k - 1, None) for k in ks)] = 1

        def normal(x: torch.Tensor) -> torch.Tensor:
            if x.shape != like.shape:
                raise ValueError(
                    f"Blur.A_adjoint_A: x has shape {tuple(x.shape)}, expected {tuple(like.shape)}."
                )
            full = torch.fft.irfftn(torch.fft.rfftn(x, dim=dims) * spec, s=size, dim=dims)
            out = torch.fft.rfftn(full * valid, dim=dims) * spec_conj
            return torch.fft.irfftn(out, s=size, dim=dims)

        return normal

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """Exact adjoint: the transposed convolution then the adjoint of the padding."""
        self._check("Blur.A_adjoint", "y", y)
        x = _conv_transpose(y, self.filter)
        if self.padding != "valid":
            x = pad_adjoint(x, _pad_sizes(*self.filter.shape[2:]), self.padding)
        return x

    # ------------------------------------------------------------------ prox
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
        solver: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        r""":math:`\arg\min_x \tfrac12\|Ax-y\|^2 + \tfrac1{2\gamma}\|x-z\|^2`, per sample.

        Exact for a separable 2-D kernel (Kronecker eigendecomposition, see
        :mod:`unroll.physics._separable`; the CG options are then validated and unused) when
        ``separable_prox`` is on, ``γ`` is a number, 0-dim or per-sample ``(B,)``, the solver is
        ``"CG"``, the backward is implicit and no ``torch.func`` transform or forward-mode
        tangent is involved; conjugate gradient (:func:`least_squares`) with the given options
        otherwise. Higher-order derivatives of the exact prox run CG on the linearised
        optimality condition (at the physics' ``tol``).

        Args:
            z: ``(B, C, H, W)`` (or a volume batch); y: measurements shaped like ``A(z)``;
            gamma: finite ``> 0``; the options as in :meth:`LinearPhysics.prox_l2`.

        Returns:
            ``h`` shaped like ``z``, differentiable in ``z``, ``y``, ``gamma`` and the filter
            (implicitly: exact for the closed form, to the CG tolerance otherwise).

        Example:
            >>> import torch
            >>> from unroll.physics import Blur, gaussian_blur
            >>> physics = Blur(gaussian_blur(1.5, dtype=torch.float64), padding="replicate")
            >>> z = torch.rand(2, 3, 24, 24, dtype=torch.float64)
            >>> y = physics.A(torch.rand_like(z))
            >>> h = physics.prox_l2(z, y, 2.0)                 # exact: no CG iterations
            >>> grad = physics.A_adjoint(physics.A(h) - y) + (h - z) / 2.0   # optimality
            >>> bool(grad.abs().max() < 1e-12)
            True
        """
        api = "Blur.prox_l2"
        opts = check_solve_options(
            api, max_iter, tol, implicit_backward_solver, on_failure, unknown, solver=solver
        )
        require_tensor(api, "z", z)
        gamma = check_prox_gamma(api, gamma, z)
        fac = self._kronecker(api, z, y, gamma, opts)
        if fac is None:
            return self._cg_prox(z, y, gamma, opts)
        return kronecker_prox(self, fac, z, y, gamma, opts, api)

    def _kronecker(
        self,
        api: str,
        z: torch.Tensor,
        y: torch.Tensor,
        gamma: torch.Tensor,
        opts: SolveOptions,
    ) -> _separable.Kronecker | None:
        """The separable factorisation for this call, or ``None`` where CG must run."""
        if self.filter.dim() != 4 or not exact_prox_applies(self, z, y, gamma, opts):
            return None
        self._check(api, "x", z)
        self._check(api, "y", y)
        fac = separable_factorisation(self.filter, z, self.padding)
        if fac is not None and tuple(y.shape) != (*z.shape[:2], *fac.out_size()):
            raise ValueError(
                f"{api}: y has shape {tuple(y.shape)}, expected "
                f"{(*z.shape[:2], *fac.out_size())} (the shape of A(z) with "
                f"padding={self.padding!r}); pass the measurements of images shaped like z."
            )
        return fac


def exact_prox_applies(
    physics: LinearPhysics, z: torch.Tensor, y: Any, gamma: torch.Tensor, opts: SolveOptions
) -> bool:
    """Whether a ``prox_l2`` call may take an exact (non-CG) path: ``separable_prox`` on, the
    ``"CG"`` solver, an implicit backward, a number / 0-dim / per-sample ``γ`` and no
    ``torch.func`` transform or forward-mode tangent on the filter, ``z``, ``y`` or ``γ``."""
    filt = getattr(physics, "filter", None)
    implicit = opts.implicit_backward_solver
    return (
        bool(getattr(physics, "separable_prox", False))
        and isinstance(filt, torch.Tensor)
        and isinstance(y, torch.Tensor)
        and (opts.solver or physics.solver) == "CG"
        and (physics.implicit_backward_solver if implicit is None else implicit)
        and is_scalar_or_per_sample(gamma, z)
        and not any(
            is_transformed(t) or fwAD.unpack_dual(t).tangent is not None
            for t in (filt, z, y, gamma)
        )
    )


def kronecker_prox(
    physics: LinearPhysics,
    fac: _separable.Kronecker,
    z: torch.Tensor,
    y: torch.Tensor,
    gamma: torch.Tensor,
    opts: SolveOptions,
    api: str,
) -> torch.Tensor:
    """The exact prox of an operator factorised by :func:`separable_factorisation`
    (:func:`~unroll.physics.prox.direct_prox` with the Kronecker solve and adjoint)."""
    return direct_prox(
        physics,
        z,
        y,
        gamma,
        lambda v, inv_g: _separable.solve(fac, v, inv_g),
        lambda t: _separable.adjoint(fac, t),
        opts.on_failure,
        api,
        opts.verbose,
    )


def separable_factorisation(
    kernel: torch.Tensor, like: torch.Tensor, padding: str, stride: int = 1
) -> _separable.Kronecker | None:
    """The Kronecker factorisation of the 2-D blur by ``kernel`` (``(b, c, h, w)``) with
    ``padding`` on images shaped like ``like``, then a decimation by ``stride``; ``None`` when
    the kernel is not separable (one host read)."""
    factors = _separable.rank_one_factors(kernel)
    if factors is None:
        return None
    H, W = like.shape[-2:]
    top, bottom, left, right = _pad_sizes(*kernel.shape[2:])
    if padding == "valid":
        top = bottom = left = right = 0
    axes = tuple(
        (n, before, after, _axis_index(n, before, after, padding))
        for n, before, after in ((H, top, bottom), (W, left, right))
    )
    return _separable.factorise(factors, axes, like, stride)


def _axis_index(n: int, before: int, after: int, padding: str) -> torch.Tensor | None:
    """The source sample of each padded position along an axis (``None``: zeros outside)."""
    if padding in ("zeros", "valid"):
        return None
    return _index_map(n, before, after, padding, torch.device("cpu"))
