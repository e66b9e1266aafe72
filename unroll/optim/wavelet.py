r"""The wavelet sparsity prior :math:`g(x) = \|\Psi_d x\|_1` (or :math:`\|\Psi_d x\|_0`).

Built on :class:`unroll.models.WaveletDenoiser` and ``ptwt`` (the optional ``wavelet`` extra:
``pip install "unroll[wavelet]"``). :math:`\Psi_d` is the detail part of an ``L``-level
wavelet transform :math:`\Psi`; the approximation coefficients are not regularised (as in
DeepInverse).

References:
    Daubechies, Defrise & De Mol, "An iterative thresholding algorithm for linear inverse
    problems with a sparsity constraint", Comm. Pure Appl. Math., 2004.
"""

from __future__ import annotations

import math

import torch

from unroll.models.wavelet import WaveletDenoiser, check_wavelet_options
from unroll.optim.prior import Prior, _check_gamma

Tensor = torch.Tensor


class WaveletPrior(Prior):
    r"""Wavelet prior :math:`g(x) = \|\Psi_d x\|_p`, ``p = 1`` (soft) or ``p = 0`` (hard).

    .. math::

        \operatorname{prox}_{\gamma g}(x) = \Psi^\dagger\big(a,\ \rho_\gamma(d_1), \dots,
        \rho_\gamma(d_L)\big), \qquad (a, d_1, \dots, d_L) = \Psi x,

    with :math:`\rho_\gamma` soft thresholding (``p = 1``:
    :math:`\operatorname{sign}(c)\max(|c|-\gamma, 0)`) or hard thresholding (``p = 0``:
    :math:`c\,\mathbb 1_{|c|>\gamma}`, which is the prox of
    :math:`\tfrac{\gamma^2}{2}\|\Psi_d x\|_0`, DeepInverse's rule), followed by the clamp to
    ``[clamp_min, clamp_max]`` when given (as DeepInverse). It is the exact proximal operator
    when :math:`\Psi` is orthogonal — an orthogonal wavelet on images whose sides are
    divisible by :math:`2^L` with no boundary extension (``"haar"``); with ``mode="zero"``
    and longer wavelets :math:`\Psi` is only an isometry (:math:`\Psi^\top\Psi = I`) and the
    thresholding is the prox of a nearby convex function (see :mod:`unroll.models.wavelet`).

    In an algorithm the prox step is ``γ = stepsize · lambda_reg``, so the threshold is
    ``stepsize · lambda_reg``; ``sigma_denoiser`` / ``g_param`` is not read (DeepInverse
    multiplies the threshold by ``g_param``: pass ``lambda_reg = λ · g_param`` for the same
    iterates). ``gamma`` may be a number or a tensor of shape ``()``, ``(B,)``,
    ``(B, level)`` or ``(B, level, bands)`` (per sample, level, band; levels coarsest first).
    ``value`` is :math:`\sum |d|` (``p = 1``) or the count of non-zero detail coefficients
    (``p = 0``) per sample, ``+inf`` where ``x`` leaves the clamp box. Differentiable with
    ``torch.func`` (grad, vjp, vmap) through ``ptwt``.

    Args:
        level: decomposition levels ``L`` (default 3).
        wv: PyWavelets wavelet name (default ``"db8"``); a list (DeepInverse's dictionary of
            wavelets) raises.
        p: 1 (default) or 0; ``inf`` (DeepInverse's top-k) is not provided.
        device: ignored (DeepInverse compatibility).
        wvdim: 2 or 3.
        is_complex: ignored (complex inputs are detected).
        mode: ``ptwt`` boundary mode (default ``"zero"``).
        clamp_min: lower bound applied after thresholding, or None.
        clamp_max: upper bound applied after thresholding, or None.

    Raises:
        ImportError: ``ptwt`` is missing (``pip install "unroll[wavelet]"``).

    Example:
        >>> import torch
        >>> from unroll.optim import WaveletPrior
        >>> prior = WaveletPrior(level=1, wv="haar")
        >>> x = torch.tensor([[[[1.0, 3.0], [1.0, 3.0]]]], dtype=torch.float64)
        >>> round(float(prior.value(x)), 12)   # one detail coefficient, (1+1-3-3)/2 = -2
        2.0
        >>> prior.prox(x, 0.5)    # shrunk to -1.5: the columns move 0.25 towards each other
        tensor([[[[1.2500, 2.7500],
                  [1.2500, 2.7500]]]], dtype=torch.float64)

    References:
        Daubechies, Defrise & De Mol, 2004 (iterative soft thresholding); Combettes & Wajs,
        "Signal recovery by proximal forward-backward splitting", 2005.
    """

    def __init__(
        self,
        level: int = 3,
        wv: str = "db8",
        p: float = 1,
        device: torch.device | str = "cpu",
        wvdim: int = 2,
        is_complex: bool = False,
        mode: str = "zero",
        clamp_min: float | None = None,
        clamp_max: float | None = None,
    ):
        super().__init__()
        api = "unroll.optim.WaveletPrior"
        if p in (math.inf, "inf"):
            raise ValueError(f"{api}: p=inf (DeepInverse's top-k) is not provided; use p=1 or 0.")
        if isinstance(p, bool) or p not in (0, 1):
            raise ValueError(f"{api}: p must be 1 (soft thresholding) or 0 (hard), got {p!r}.")
        for name, bound in (("clamp_min", clamp_min), ("clamp_max", clamp_max)):
            number = isinstance(bound, (int, float)) and not isinstance(bound, bool)
            if bound is not None and not (number and math.isfinite(bound)):
                raise ValueError(f"{api}: {name} must be a finite number or None, got {bound!r}.")
        if clamp_min is not None and clamp_max is not None and clamp_min > clamp_max:
            raise ValueError(f"{api}: clamp_min={clamp_min} > clamp_max={clamp_max}; swap them.")
        check_wavelet_options(api, level, wv, mode, wvdim)
        self.p, self.wv, self.level, self.wvdim, self.mode = p, wv, level, wvdim, mode
        self.device, self.is_complex = device, is_complex
        self.clamp_min, self.clamp_max = clamp_min, clamp_max
        self.non_linearity = "soft" if p == 1 else "hard"
        self.WaveletDenoiser = WaveletDenoiser(
            level=level,
            wv=wv,
            device=device,
            non_linearity=self.non_linearity,
            mode=mode,
            wvdim=wvdim,
            is_complex=is_complex,
        )

    def psi(self, x: Tensor) -> list[Tensor]:
        """The detail bands of :math:`\\Psi x`, each flattened to ``(B, n)`` (coarsest first)."""
        return self.WaveletDenoiser.psi(x)

    def prox(self, x: Tensor, gamma, sigma=None, weights=None) -> Tensor:
        """The thresholding step at ``gamma`` (see the class); ``sigma``/``weights`` unused."""
        _check_gamma(self, gamma)
        out = self.WaveletDenoiser(x, gamma)
        if self.clamp_min is not None or self.clamp_max is not None:
            out = torch.clamp(out, min=self.clamp_min, max=self.clamp_max)
        return out

    def value(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        """``‖Ψ_d x‖₁`` (``p = 1``) or ``‖Ψ_d x‖₀`` (``p = 0``) per sample, ``(B,)``."""
        bands = torch.cat(self.psi(x), dim=1)
        if self.p == 1:
            out = bands.abs().sum(1)
        else:
            out = (bands != 0).sum(1).to(x.real.dtype)
        if self.clamp_min is not None or self.clamp_max is not None:
            flat = x.real.flatten(1)
            low = self.clamp_min if self.clamp_min is not None else -math.inf
            high = self.clamp_max if self.clamp_max is not None else math.inf
            outside = ((flat < low) | (flat > high)).any(1)
            out = torch.where(outside, torch.full_like(out, math.inf), out)
        return out
