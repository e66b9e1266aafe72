"""Priors ``g``: proximal operators, gradients and values, explicit or learned (denoisers).

Each prior exposes ``prox(x, gamma, sigma=None, weights=None)`` (``argmin_u g(u) +
‖u − x‖²/(2γ)``, or a denoiser in its place), ``grad(x, sigma=None, weights=None)`` and
``value(x, sigma=None, weights=None)`` (per sample, shape ``(B,)``). ``sigma`` is the
denoiser's noise level (``sigma_denoiser`` / ``g_param``); ``weights`` is a dict of the
denoiser's tensors used through :func:`torch.func.functional_call` (None: the module's own),
so the algorithms stay pure functions of their parameters.

References:
    Venkatakrishnan, Bouman & Wohlberg, "Plug-and-play priors for model based reconstruction",
    2013. Romano, Elad & Milanfar, "The little engine that could: regularization by denoising
    (RED)", 2017. Beck & Teboulle, "Fast gradient-based algorithms for constrained total
    variation image denoising and deblurring problems", 2009.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import nn

from unroll.optim.data_fidelity import soft_threshold
from unroll.physics._utils import check_level

Tensor = torch.Tensor

_GAMMA_FIX = (
    "gamma is the prox step (stepsize x lambda_reg in the algorithms); pass a finite value "
    ">= 0 (gamma = 0 returns x unchanged)."
)
_SIGMA_FIX = "Pass the denoiser's noise level, e.g. sigma_denoiser=0.05."


def _check_gamma(prior: Prior, gamma: Any) -> None:
    """``gamma`` finite and >= 0 (a number: free; a tensor: one host read)."""
    api = f"unroll.optim.{type(prior).__name__}.prox"
    check_level(api, "gamma", gamma, strict=False, fix=_GAMMA_FIX)


def _per_sample_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def _unsupported(method):
    """Mark a base-class stub so algorithms can tell at build time that it is missing."""
    method.unsupported = True
    return method


class Prior(nn.Module):
    """Base class: a prior with no learnable weights unless it holds a denoiser."""

    def weights(self) -> dict[str, Tensor]:
        """The tensors the pure algorithms pass back as ``weights`` (empty by default)."""
        return {}

    @_unsupported
    def prox(self, x: Tensor, gamma, sigma=None, weights=None) -> Tensor:
        raise NotImplementedError(
            f"unroll.optim.{type(self).__name__}: no proximal operator; use an algorithm that "
            "only needs the gradient (gd) or a prior with a prox (PnP, Tikhonov, L1Prior, TVPrior)."
        )

    @_unsupported
    def grad(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        raise NotImplementedError(
            f"unroll.optim.{type(self).__name__}: no gradient; use a proximal algorithm "
            "(pgd, fista, hqs, admm, drs, pdhg) or a differentiable prior (RED, Tikhonov)."
        )

    @_unsupported
    def value(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        raise NotImplementedError(
            f"unroll.optim.{type(self).__name__}: no explicit value; costs cannot be traced."
        )


class _DenoiserPrior(Prior):
    def __init__(self, denoiser: Callable):
        super().__init__()
        if not callable(denoiser):
            raise TypeError(
                f"unroll.optim.{type(self).__name__}: denoiser must be callable as "
                f"denoiser(x, sigma), got {type(denoiser).__name__}."
            )
        self.denoiser = denoiser

    def weights(self) -> dict[str, Tensor]:
        if isinstance(self.denoiser, nn.Module):
            return dict(self.denoiser.named_parameters())
        return {}

    def denoise(self, x: Tensor, sigma, weights=None) -> Tensor:
        """``D(x, σ)`` with the given weights (the module's own when None or empty).

        ``σ`` must be finite and >= 0 (a number: no host read; a tensor: one). A denoiser whose
        weights' precision differs from ``x``'s raises a ``TypeError`` naming both dtypes."""
        api = f"unroll.optim.{type(self).__name__}"
        if sigma is None:
            raise ValueError(
                f"{api}: the denoiser needs a noise level; set sigma_denoiser (or g_param)."
            )
        check_level(api, "sigma (the denoiser's noise level)", sigma, strict=False, fix=_SIGMA_FIX)
        use_weights = bool(weights) and isinstance(self.denoiser, nn.Module)
        try:
            if use_weights:
                net = cast(nn.Module, self.denoiser)
                return torch.func.functional_call(net, cast(dict, weights), (x, sigma))
            return self.denoiser(x, sigma)
        except RuntimeError as err:
            wdtype = _weights_dtype(self.denoiser, weights if use_weights else None)
            if wdtype is None or wdtype == x.dtype or not x.is_floating_point():
                raise
            raise TypeError(
                f"{api}: the denoiser's weights are {wdtype} but x is {x.dtype}; use one "
                f"precision: convert the model with .to({x.dtype}) (e.g. model.double()) or the "
                f"data with .to({wdtype})."
            ) from err


def _weights_dtype(denoiser: Callable, weights: dict[str, Tensor] | None) -> torch.dtype | None:
    """The floating dtype of the denoiser's first floating weight (None if it has none)."""
    if weights is not None:
        tensors = list(weights.values())
    elif isinstance(denoiser, nn.Module):
        tensors = [*denoiser.parameters(), *denoiser.buffers()]
    else:
        return None
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.dtype
    return None


class PnP(_DenoiserPrior):
    """Plug-and-play prior: the proximal operator of ``g`` is replaced by a denoiser.

    ``prox(x, γ, σ) = D(x, σ)`` (``γ`` is ignored: the regularisation strength is ``σ``).

    Args:
        denoiser: a callable ``denoiser(x, sigma)``; an ``nn.Module``'s weights are trainable.

    Example:
        >>> import torch
        >>> from unroll.models import DnCNN
        >>> prior = PnP(DnCNN(depth=3, nf=8))
        >>> prior.prox(torch.rand(1, 3, 16, 16), gamma=1.0, sigma=0.1).shape
        torch.Size([1, 3, 16, 16])
    """

    def prox(self, x: Tensor, gamma, sigma=None, weights=None) -> Tensor:
        return self.denoise(x, sigma, weights)


class RED(_DenoiserPrior):
    """Regularisation by denoising: ``∇g(x) = x − D(x, σ)``, ``g(x) = ½⟨x, x − D(x, σ)⟩``.

    Args:
        denoiser: a callable ``denoiser(x, sigma)``.
    """

    def grad(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        return x - self.denoise(x, sigma, weights)

    def value(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        return 0.5 * _per_sample_sum(x * (x - self.denoise(x, sigma, weights)))


class Tikhonov(Prior):
    """``g(x) = ½‖x‖²``: ``prox(x, γ) = x / (1 + γ)`` (``γ`` finite, ``>= 0``), ``∇g(x) = x``."""

    def prox(self, x: Tensor, gamma, sigma=None, weights=None) -> Tensor:
        _check_gamma(self, gamma)
        return x / (1 + gamma)

    def grad(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        return x

    def value(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        return 0.5 * _per_sample_sum(x.abs().square())


class L1Prior(Prior):
    """``g(x) = ‖x‖₁``: ``prox(x, γ) = sign(x) max(|x| − γ, 0)`` (soft thresholding; ``γ``
    finite, ``>= 0``)."""

    def prox(self, x: Tensor, gamma, sigma=None, weights=None) -> Tensor:
        _check_gamma(self, gamma)
        return soft_threshold(x, gamma)

    def value(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        return _per_sample_sum(x.abs())


class TVPrior(Prior):
    """Isotropic total variation ``g(x) = Σ_i ‖(∇x)_i‖₂`` over the last two dimensions.

    ``prox(x, γ) = argmin_u ½‖u − x‖² + γ TV(u)`` by the fast gradient projection (FGP) on the
    dual: ``u = x − γ ∇ᵀp``, ``‖p_i‖ ≤ 1``, step ``1/(8γ)``, ``n_it_max`` iterations (a fixed
    count: no host synchronisation inside the loop). Forward differences with Neumann
    boundaries. ``γ`` must be finite and ``>= 0``; ``γ = 0`` (e.g. ``lambda_reg = 0``) returns
    ``x`` (entry-wise for a tensor ``γ``).

    Args:
        n_it_max: dual iterations per prox (default 200).
    """

    def __init__(self, n_it_max: int = 200):
        super().__init__()
        if isinstance(n_it_max, bool) or not isinstance(n_it_max, int) or n_it_max < 1:
            raise ValueError(
                f"unroll.optim.TVPrior: n_it_max must be an int >= 1, got {n_it_max!r}."
            )
        self.n_it_max = n_it_max

    def prox(self, x: Tensor, gamma, sigma=None, weights=None) -> Tensor:
        _check_gamma(self, gamma)
        if not isinstance(gamma, Tensor) and gamma == 0:
            return x.clone()
        if isinstance(gamma, Tensor) and not gamma.is_floating_point():
            gamma = gamma.to(x.real.dtype)
        # 8γ, with +inf where γ = 0 (its dual step is then zero and u stays x)
        step_den = (
            8 * gamma
            if not isinstance(gamma, Tensor)
            else torch.where(gamma > 0, 8 * gamma, torch.full_like(gamma, torch.inf))
        )
        p = torch.zeros((2, *x.shape), dtype=x.dtype, device=x.device)
        q, t = p, 1.0
        for _ in range(self.n_it_max):
            u = x - gamma * grad_adjoint(q)
            p_new = _project_unit(q + image_gradient(u) / step_den)
            t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
            q = p_new + ((t - 1) / t_new) * (p_new - p)
            p, t = p_new, t_new
        return x - gamma * grad_adjoint(p)

    def value(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        g = image_gradient(x)
        return _per_sample_sum(g.abs().square().sum(0).sqrt())


def image_gradient(x: Tensor) -> Tensor:
    """Forward differences over the last two dims, stacked ``(2, *x.shape)``, zero at the end."""
    dh = torch.cat([x[..., 1:, :] - x[..., :-1, :], torch.zeros_like(x[..., :1, :])], dim=-2)
    dw = torch.cat([x[..., :, 1:] - x[..., :, :-1], torch.zeros_like(x[..., :, :1])], dim=-1)
    return torch.stack([dh, dw])


def grad_adjoint(p: Tensor) -> Tensor:
    """The adjoint of :func:`image_gradient` (minus the discrete divergence)."""
    ph, pw = p[0], p[1]
    ph = torch.cat([ph[..., :-1, :], torch.zeros_like(ph[..., :1, :])], dim=-2)
    pw = torch.cat([pw[..., :, :-1], torch.zeros_like(pw[..., :, :1])], dim=-1)
    sh = torch.cat([torch.zeros_like(ph[..., :1, :]), ph[..., :-1, :]], dim=-2)
    sw = torch.cat([torch.zeros_like(pw[..., :, :1]), pw[..., :, :-1]], dim=-1)
    return (sh - ph) + (sw - pw)


def _project_unit(p: Tensor) -> Tensor:
    """``p / max(‖p‖, 1)`` per pixel, as ``p / sqrt(max(‖p‖², 1))``: the same values, but no
    ``sqrt`` at 0 (whose infinite derivative made gradients w.r.t. ``γ`` NaN)."""
    norm_sq = p.abs().square().sum(0, keepdim=True)
    return p / torch.clamp(norm_sq, min=1.0).sqrt()
