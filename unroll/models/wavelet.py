r"""Wavelet thresholding denoiser on ``ptwt`` (the optional ``wavelet`` extra).

The transform is ``ptwt``'s fast wavelet transform (``ptwt.wavedec2`` / ``wavedec3`` and their
inverses), a maintained PyTorch port of PyWavelets; it is imported when a wavelet object is
built, and a missing install raises an ``ImportError`` that names the extra
(``pip install "unroll[wavelet]"``).

Write :math:`\Psi x = (a, d_1, \dots, d_L)` for the ``L``-level decomposition of an image
(approximation ``a`` at the coarsest scale, detail bands ``d_j``: 3 per level in 2-D, 7 in 3-D,
``d_1`` coarsest, as ``ptwt`` orders them) and :math:`\Psi^\dagger` for the reconstruction. The
denoiser thresholds the detail bands and keeps the approximation:

.. math::

    D(x, t) = \Psi^\dagger\big(a,\ \rho_t(d_1), \dots, \rho_t(d_L)\big), \qquad
    \rho_t(c) = \operatorname{sign}(c)\max(|c| - t, 0)\ \text{(soft)} \quad\text{or}\quad
    c\,\mathbb 1_{|c| > t}\ \text{(hard)}.

With an orthogonal wavelet and an orthogonal transform (:math:`\Psi^\dagger = \Psi^\top`,
:math:`\Psi\Psi^\top = I`: e.g. ``"haar"`` on images whose sides are divisible by
:math:`2^L`), soft thresholding is exactly the proximal operator
:math:`\operatorname{prox}_{t\|\Psi_d\cdot\|_1}`, :math:`\Psi_d` the detail part of
:math:`\Psi`. With ``mode="zero"`` (the default, as DeepInverse) and a longer orthogonal
wavelet (``"db8"``), :math:`\Psi` is an isometry onto a larger coefficient space
(:math:`\Psi^\top\Psi = I`, :math:`\Psi^\dagger = \Psi^\top`) but not onto: ``D`` is then the
gradient of a convex 1-Lipschitz function, hence the prox of *some* convex function, not of
:math:`\|\Psi_d\cdot\|_1` itself. Other boundary modes (``"reflect"``, ``"periodic"``,
``"symmetric"``) reconstruct perfectly but are not isometries.

Everything is a differentiable PyTorch function: ``loss.backward()``, ``torch.func.grad``,
``vjp`` and ``vmap`` all go through ``ptwt``'s convolutions (checked in the tests).

References:
    Donoho & Johnstone, "Ideal spatial adaptation by wavelet shrinkage", Biometrika, 1994.
    Wolter, Blanke, Garcke & Hoffman, "ptwt — The PyTorch Wavelet Toolbox", JMLR, 2024.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from unroll._typing import PyTree
from unroll.physics._utils import check_level

Tensor = torch.Tensor

EXTRA_HINT = 'install the optional wavelet extra: pip install "unroll[wavelet]" (ptwt, PyWavelets)'
MODES = ("zero", "constant", "reflect", "periodic", "symmetric")
"""The boundary modes of ``ptwt``'s convolution transforms."""
NON_LINEARITIES = ("soft", "hard", "topk")
_BANDS = {2: 3, 3: 7}
_KEYS_3D = ("aad", "ada", "add", "daa", "dad", "dda", "ddd")


def import_ptwt(api: str) -> tuple[Any, Any]:
    """``(ptwt, pywt)``, imported on first use; an ``ImportError`` naming ``api`` and the
    extra when they are missing.

    Example:
        >>> ptwt, pywt = import_ptwt("unroll.models.WaveletDenoiser")
        >>> pywt.Wavelet("haar").orthogonal
        True
    """
    try:
        import ptwt
        import pywt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"{api} needs ptwt: {EXTRA_HINT}.") from err
    return ptwt, pywt


def check_wavelet_options(api: str, level: Any, wv: Any, mode: Any, wvdim: Any) -> None:
    """Validate the transform options (imports ``ptwt`` to check the wavelet name)."""
    if isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise ValueError(f"{api}: level must be an int >= 1, got {level!r}; e.g. level=3.")
    if isinstance(wv, (list, tuple)):
        raise TypeError(
            f"{api}: a list of wavelets (DeepInverse's WaveletDictDenoiser, an overcomplete "
            "dictionary) is not supported; pass one wavelet name such as wv='db8'."
        )
    if wvdim not in _BANDS:
        raise ValueError(f"{api}: wvdim must be 2 or 3 (the transform dimension), got {wvdim!r}.")
    if mode not in MODES:
        raise ValueError(f"{api}: mode must be one of {MODES}, got {mode!r}.")
    _, pywt = import_ptwt(api)
    if not isinstance(wv, str) or wv not in pywt.wavelist(kind="discrete"):
        raise ValueError(
            f"{api}: wv must be the name of a discrete PyWavelets wavelet (e.g. 'haar', 'db4', "
            f"'db8', 'sym4', 'coif2'; see pywt.wavelist(kind='discrete')), got {wv!r}."
        )


def _pad_even(x: Tensor, axes: tuple[int, ...]) -> Tensor:
    """Replicate the last slice along each odd-sized axis (DeepInverse's padding)."""
    for axis in axes:
        if x.shape[axis] % 2:
            x = torch.cat([x, x.narrow(axis, x.shape[axis] - 1, 1)], dim=axis)
    return x


def _crop(x: Tensor, shape: tuple[int, ...], axes: tuple[int, ...]) -> Tensor:
    for axis, size in zip(axes, shape, strict=True):
        x = x.narrow(axis, 0, size)
    return x


def _details(level_coeffs: tuple[Tensor, ...] | dict[str, Tensor]) -> list[Tensor]:
    """The detail bands of one level as a list (2-D: a tuple of 3; 3-D: a dict of 7)."""
    if isinstance(level_coeffs, dict):
        return [level_coeffs[k] for k in _KEYS_3D]
    return list(level_coeffs)


def _rebuild(
    level_coeffs: tuple[Tensor, ...] | dict[str, Tensor], bands: list[Tensor]
) -> tuple[Tensor, ...] | dict[str, Tensor]:
    if isinstance(level_coeffs, dict):
        return dict(zip(_KEYS_3D, bands, strict=True))
    return type(level_coeffs)(*bands) if hasattr(level_coeffs, "_fields") else tuple(bands)


def wavedec(
    x: Tensor, wv: str = "db8", level: int = 3, mode: str = "zero", wvdim: int = 2
) -> list[PyTree]:
    r"""The ``level``-level wavelet decomposition :math:`\Psi x` over the last ``wvdim`` axes.

    Odd-sized axes are first padded by one replicated slice (as DeepInverse does); complex
    inputs are transformed as their real and imaginary parts and give complex coefficients.

    Args:
        x: ``(B, C, H, W)`` (``wvdim=2``) or ``(B, C, D, H, W)`` (``wvdim=3``), real or complex.
        wv: a PyWavelets wavelet name.
        level: number of levels ``L``.
        mode: ``ptwt`` boundary mode (see :data:`MODES`).
        wvdim: 2 or 3.

    Returns:
        ``[a, details_1, ..., details_L]`` (``ptwt``'s order: coarsest first); each
        ``details_j`` a tuple of 3 tensors (2-D) or a dict of 7 (3-D).

    Example:
        >>> x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
        >>> c = wavedec(x, "haar", level=2)
        >>> torch.allclose(waverec(c, "haar", x.shape), x)
        True
    """
    ptwt, pywt = import_ptwt("unroll.models.wavelet.wavedec")
    axes = tuple(range(-wvdim, 0))
    x = _pad_even(x, axes)
    is_complex = x.is_complex()
    if is_complex:
        x = torch.view_as_real(x)
        axes = tuple(a - 1 for a in axes)
    dec = ptwt.wavedec2 if wvdim == 2 else ptwt.wavedec3
    coeffs = list(dec(x, pywt.Wavelet(wv), mode=mode, level=level, axes=axes))
    if not is_complex:
        return coeffs
    as_complex = lambda t: torch.view_as_complex(t.contiguous())  # noqa: E731
    return [as_complex(coeffs[0])] + [
        _rebuild(c, [as_complex(t) for t in _details(c)]) for c in coeffs[1:]
    ]


def waverec(coeffs: list[PyTree], wv: str, shape: tuple[int, ...] | torch.Size) -> Tensor:
    r"""The reconstruction :math:`\Psi^\dagger c`, cropped to ``shape[-wvdim:]``.

    Args:
        coeffs: as returned by :func:`wavedec`.
        wv: the wavelet name used by :func:`wavedec`.
        shape: the shape of the original input (its trailing ``wvdim`` sizes are kept).

    Returns:
        The image, real or complex as the coefficients.
    """
    ptwt, pywt = import_ptwt("unroll.models.wavelet.waverec")
    wvdim = 3 if isinstance(coeffs[1], dict) else 2
    axes = tuple(range(-wvdim, 0))
    is_complex = coeffs[0].is_complex()
    if is_complex:
        coeffs = [torch.view_as_real(coeffs[0])] + [
            _rebuild(c, [torch.view_as_real(t) for t in _details(c)]) for c in coeffs[1:]
        ]
        axes = tuple(a - 1 for a in axes)
    rec = ptwt.waverec2 if wvdim == 2 else ptwt.waverec3
    x = rec(tuple(coeffs), pywt.Wavelet(wv), axes=axes)
    if is_complex:
        x = torch.view_as_complex(x.contiguous())
    axes = tuple(range(-wvdim, 0))
    return _crop(x, tuple(shape[-wvdim:]), axes)


def _check_threshold(api: str, ths: Any, level: int, bands: int) -> None:
    """A finite threshold ``>= 0`` (a number: free; a tensor: one host read) of a shape that
    :func:`band_threshold` reads."""
    check_level(api, "the threshold ths", ths, strict=False, fix="Pass e.g. ths=0.1.")
    if isinstance(ths, Tensor):
        ok = ths.dim() <= 1 or (
            ths.dim() <= 3
            and ths.shape[1] in (1, level)
            and (ths.dim() == 2 or ths.shape[2] in (1, bands))
        )
        if not ok:
            raise ValueError(
                f"{api}: a threshold tensor must have shape (), (B,), (B, level={level}) or "
                f"(B, level={level}, {bands}) (one value per sample, level, band), got "
                f"{tuple(ths.shape)}."
            )


def band_threshold(ths: float | Tensor, j: int, b: int, like: Tensor) -> float | Tensor:
    """The threshold of level ``j`` (0 = coarsest) and band ``b``, broadcastable to ``like``.

    A number or a 0-dim tensor is shared; a ``(B,)`` tensor is one value per sample;
    ``(B, L)`` one per sample and level; ``(B, L, bands)`` one per sample, level and band
    (a size-1 level or band axis is shared).
    """
    if not isinstance(ths, Tensor) or ths.dim() == 0:
        return ths
    if ths.dim() >= 2:
        ths = ths[:, j if ths.shape[1] > 1 else 0]
    if ths.dim() == 2:
        ths = ths[:, b if ths.shape[1] > 1 else 0]
    return ths.reshape(-1, *([1] * (like.dim() - 1)))


def threshold(c: Tensor, t: float | Tensor, non_linearity: str) -> Tensor:
    r"""Soft :math:`\operatorname{sign}(c)\max(|c|-t,0)` (the modulus for complex ``c``) or
    hard :math:`c\,\mathbb 1_{|c|>t}` thresholding (``torch.func``-friendly: no in-place), or
    ``"topk"``: keep the :math:`\lfloor t\,n\rfloor` coefficients of largest modulus of each
    sample (``n`` its coefficients in ``c``; ``t`` a fraction, values above 1 keep all), zero
    the rest (ties broken by position).

    Example:
        >>> threshold(torch.tensor([-2.0, 0.5, 3.0]), 1.0, "soft")
        tensor([-1.,  0.,  2.])
        >>> threshold(torch.tensor([-2.0, 0.5, 3.0]), 1.0, "hard")
        tensor([-2.,  0.,  3.])
    """
    if non_linearity == "soft":
        return torch.sgn(c) * torch.clamp(c.abs() - t, min=0)
    if non_linearity == "topk":
        return _keep_largest(c, t)
    return torch.where(c.abs() > t, c, torch.zeros_like(c))


def _keep_largest(c: Tensor, fraction: float | Tensor) -> Tensor:
    """``c`` with all but the ``⌊fraction · n⌋`` largest-modulus entries of each sample zeroed
    (``fraction``: a number or a tensor broadcastable as ``(B, 1, ...)``)."""
    flat = c.abs().flatten(1)
    n = flat.shape[1]
    order = flat.argsort(dim=1, descending=True, stable=True)
    rank = order.argsort(dim=1)  # 0 for the largest
    if isinstance(fraction, Tensor):
        k = torch.floor(fraction.reshape(-1, 1).to(flat.dtype) * n)
    else:
        k = math.floor(fraction * n)
    keep = (rank < k).reshape(c.shape)
    return torch.where(keep, c, torch.zeros_like(c))


class WaveletDenoiser(nn.Module):
    r"""Wavelet thresholding denoiser ``D(x, ths)`` (DeepInverse 0.4.1's keywords and defaults).

    .. math::

        D(x, t) = \Psi^\dagger\big(a,\ \rho_t(d_1), \dots, \rho_t(d_L)\big)

    with :math:`\rho_t` soft or hard thresholding of the detail coefficients; the approximation
    ``a`` is kept (see the module docstring for when this is an exact proximal operator:
    soft thresholding is :math:`\operatorname{prox}_{t\|\Psi_d\cdot\|_1}` when the transform is
    orthogonal). Usable in :class:`unroll.optim.PnP` (called as ``denoiser(x, sigma)``: the
    noise level is the threshold). Works under ``loss.backward()``, ``torch.func.grad`` /
    ``vjp`` / ``vmap`` (a hard threshold has derivative 0 or 1).

    Args:
        level: decomposition levels ``L`` (default 3).
        wv: PyWavelets wavelet name (default ``"db8"``).
        device: accepted for DeepInverse compatibility and ignored (the input's device is used).
        non_linearity: ``"soft"`` (default), ``"hard"``, or ``"topk"``: keep the fraction
            ``ths`` (in ``[0, 1]``) of largest-modulus coefficients in each detail band of each
            sample (DeepInverse reads a tensor ``ths`` as counts there; here every value is a
            fraction).
        mode: ``ptwt`` boundary mode (default ``"zero"``).
        wvdim: 2 (images ``(B, C, H, W)``) or 3 (volumes ``(B, C, D, H, W)``).
        is_complex: accepted for compatibility; complex inputs are detected from their dtype
            (soft thresholding then shrinks the coefficients' modulus).

    Raises:
        ImportError: ``ptwt`` is missing (``pip install "unroll[wavelet]"``).

    Example:
        >>> import torch
        >>> from unroll.models import WaveletDenoiser
        >>> D = WaveletDenoiser(level=3, wv="haar")
        >>> x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
        >>> torch.allclose(D(x, 0.0), x)      # no threshold: perfect reconstruction
        True
        >>> bool((D(x, 10.0) - x.mean()).abs().max() < 1e-12)  # all details removed
        True

    References:
        Donoho & Johnstone, "Ideal spatial adaptation by wavelet shrinkage", 1994.
    """

    def __init__(
        self,
        level: int = 3,
        wv: str = "db8",
        device: torch.device | str = "cpu",
        non_linearity: str = "soft",
        mode: str = "zero",
        wvdim: int = 2,
        is_complex: bool = False,
    ):
        super().__init__()
        api = "unroll.models.WaveletDenoiser"
        if non_linearity not in NON_LINEARITIES:
            raise ValueError(
                f"{api}: non_linearity must be 'soft', 'hard' or 'topk', got {non_linearity!r}."
            )
        check_wavelet_options(api, level, wv, mode, wvdim)
        self.level, self.wv, self.mode, self.wvdim = level, wv, mode, wvdim
        self.non_linearity = non_linearity
        self.device, self.is_complex = device, is_complex

    def _check_input(self, api: str, x: Any) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"{api}: x must be a tensor, got {type(x).__name__}.")
        if x.dim() < self.wvdim + 1:
            raise ValueError(
                f"{api}: x needs a batch dimension and {self.wvdim} transform dimensions "
                f"(e.g. (B, C, H, W) for wvdim=2), got shape {tuple(x.shape)}."
            )
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{api}: x must be a floating or complex tensor, got {x.dtype}.")

    def dwt(self, x: Tensor) -> list[PyTree]:
        """The decomposition :math:`\\Psi x` (see :func:`wavedec`)."""
        self._check_input("unroll.models.WaveletDenoiser.dwt", x)
        return wavedec(x, self.wv, self.level, self.mode, self.wvdim)

    def iwt(self, coeffs: list[PyTree], shape: tuple[int, ...] | torch.Size) -> Tensor:
        """:math:`\\Psi^\\dagger c` cropped to ``shape`` (see :func:`waverec`)."""
        return waverec(coeffs, self.wv, shape)

    def psi(self, x: Tensor) -> list[Tensor]:
        """The detail bands of :math:`\\Psi x`, each flattened to ``(B, n)`` (coarsest first)."""
        coeffs = self.dwt(x)
        return [t.flatten(1) for c in coeffs[1:] for t in _details(c)]

    def threshold_details(self, coeffs: list[PyTree], ths: float | Tensor) -> list[PyTree]:
        """Threshold every detail band (level ``j``, band ``b``) at :func:`band_threshold`."""
        out = [coeffs[0]]
        for j, c in enumerate(coeffs[1:]):
            bands = [
                threshold(t, band_threshold(ths, j, b, t), self.non_linearity)
                for b, t in enumerate(_details(c))
            ]
            out.append(_rebuild(c, bands))
        return out

    def forward(self, x: Tensor, ths: float | Tensor = 0.1, **kwargs: Any) -> Tensor:
        """``D(x, ths)``.

        Args:
            x: ``(B, C, H, W)`` (or ``(B, C, D, H, W)`` with ``wvdim=3``).
            ths: threshold ``t >= 0`` (default 0.1): a number, or a tensor of shape ``()``,
                ``(B,)``, ``(B, level)`` or ``(B, level, bands)`` (``bands`` = 3 in 2-D, 7 in
                3-D; levels coarsest first).
            **kwargs: ignored (DeepInverse's denoisers accept extra keywords).

        Returns:
            The denoised ``x``, same shape and dtype.
        """
        api = "unroll.models.WaveletDenoiser"
        self._check_input(api, x)
        _check_threshold(api, ths, self.level, _BANDS[self.wvdim])
        coeffs = self.threshold_details(self.dwt(x), ths)
        return self.iwt(coeffs, x.shape)
