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

import math
from collections.abc import Callable
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from unroll._failure import check_on_failure, report_change
from unroll._host import try_bool
from unroll.optim.data_fidelity import (
    autograd_grad,
    check_inner_options,
    gradient_descent_prox,
    needs_graph,
    soft_threshold,
)
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
    r"""Base class of the priors; ``Prior(g=callable)`` makes an explicit prior from a function.

    With ``g`` (as DeepInverse's ``Prior(g=...)``): ``value(x) = g(x)`` (per sample ``(B,)``
    or a scalar), ``grad`` by autograd and the prox by gradient descent on
    :math:`\gamma g(z) + \tfrac12\|z - x\|^2`,

    .. math:: z \leftarrow z - \eta\,(\gamma\nabla g(z) + z - x), \qquad z_0 = x,

    until every sample's relative change ``‖z_{k+1} − z_k‖/‖z_{k+1}‖ ≤ tol_inter`` (one host
    read per iteration) or ``max_iter_inter`` iterations (reported as ``"Prior.prox"``
    through ``on_failure``). The default step ``η = 1/(1 + γ)`` is exact for the quadratic
    term; with ``g`` convex and ``∇g`` ``L``-Lipschitz the iteration contracts by
    ``q = γ·max(1, |L − 1|)/(1 + γ)`` (it converges when ``q < 1``) and the result is within
    ``q/(1 − q)·tol_inter·‖z‖`` of the prox. Gradients reach ``x``,
    ``γ`` and the parameters of an ``nn.Module`` ``g`` (unrolled through the iterations).
    Without ``g`` the methods are not provided (subclasses define them).

    Args:
        g: ``g(x) -> (B,)``, or None.
        stepsize_inter: inner step ``η`` (None: ``1/(1 + γ)``).
        max_iter_inter: inner iteration cap (default 100).
        tol_inter: inner relative-change tolerance (default 1e-6; 0: exactly
            ``max_iter_inter`` iterations).
        on_failure: an unconverged prox ``"warn"`` (default), ``"raise"`` or ``"ignore"``.

    Example:
        >>> import torch
        >>> prior = Prior(g=lambda x: 1.5 * x.flatten(1).square().sum(1))   # 3/2 ‖x‖²
        >>> x = torch.tensor([[3.0, -6.0]], dtype=torch.float64)
        >>> prior.prox(x, 0.5)                                             # x / (1 + 3γ)
        tensor([[ 1.2000, -2.4000]], dtype=torch.float64)
    """

    def __init__(
        self,
        g: Callable[[Tensor], Tensor] | None = None,
        *,
        stepsize_inter: float | None = None,
        max_iter_inter: int = 100,
        tol_inter: float = 1e-6,
        on_failure: str = "warn",
    ):
        super().__init__()
        api = f"unroll.optim.{type(self).__name__}"
        if g is not None and not callable(g):
            raise TypeError(
                f"{api}: g must be a callable g(x) -> per-sample values (B,), or None; got "
                f"{type(g).__name__}."
            )
        check_inner_options(api, stepsize_inter, max_iter_inter, tol_inter, on_failure)
        self.g_fn = g
        self.stepsize_inter = stepsize_inter
        self.max_iter_inter = max_iter_inter
        self.tol_inter = tol_inter
        self.on_failure = on_failure
        if g is not None:  # provide what the class leaves unsupported
            for name in ("prox", "grad", "value"):
                if getattr(getattr(type(self), name), "unsupported", False):
                    object.__setattr__(self, name, getattr(self, f"_g_{name}"))

    def weights(self) -> dict[str, Tensor]:
        """The tensors the pure algorithms pass back as ``weights`` (empty by default)."""
        return {}

    def _g_value(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        return cast(Callable, self.g_fn)(x)

    def _g_grad(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        return autograd_grad(cast(Callable, self.g_fn), x, needs_graph(self.g_fn, x))

    def _g_prox(self, x: Tensor, gamma, sigma=None, weights=None) -> Tensor:
        _check_gamma(self, gamma)
        step = self.stepsize_inter if self.stepsize_inter is not None else 1 / (1 + gamma)
        return gradient_descent_prox(
            self._g_grad,
            x,
            gamma,
            step,
            self.max_iter_inter,
            self.tol_inter,
            "Prior.prox",
            self.on_failure,
        )

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


class ZeroPrior(Prior):
    """``g(x) = 0``: ``prox(x, γ) = x`` (a copy), ``∇g = 0``, ``value = 0`` per sample.

    Example:
        >>> import torch
        >>> ZeroPrior().prox(torch.tensor([[1.0, -2.0]]), 0.3)
        tensor([[ 1., -2.]])
    """

    def prox(self, x: Tensor, gamma, sigma=None, weights=None) -> Tensor:
        _check_gamma(self, gamma)
        return x.clone()

    def grad(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        return torch.zeros_like(x)

    def value(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        return torch.zeros(x.shape[0], dtype=x.real.dtype, device=x.device)


class L12Prior(Prior):
    r"""Group sparsity :math:`g(x) = \sum_i \|x_i\|_2`, the :math:`\ell_2` norm taken over
    the dimension ``l2_axis`` (the groups are all the other indices).

    Its prox is group soft thresholding, in closed form:

    .. math:: \operatorname{prox}_{\gamma g}(x)_i = \max\Big(1 - \frac{\gamma}{\|x_i\|_2},
              0\Big)\, x_i \quad (0 \text{ where } x_i = 0).

    Args:
        l2_axis: the dimension of the :math:`\ell_2` norm (default -1, as DeepInverse); not
            the batch dimension 0.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[3.0, 4.0], [0.3, 0.4]]])     # groups of norm 5 and 0.5
        >>> L12Prior().prox(x, 1.0)
        tensor([[[2.4000, 3.2000],
                 [0.0000, 0.0000]]])
        >>> L12Prior().value(x)
        tensor([5.5000])
    """

    def __init__(self, l2_axis: int = -1):
        super().__init__()
        if isinstance(l2_axis, bool) or not isinstance(l2_axis, int):
            raise TypeError(
                f"unroll.optim.L12Prior: l2_axis must be an int (a dimension of x), got "
                f"{type(l2_axis).__name__}."
            )
        self.l2_axis = l2_axis

    def _axis(self, api: str, x: Tensor) -> int:
        if not -x.dim() <= self.l2_axis < x.dim() or self.l2_axis % x.dim() == 0:
            raise ValueError(
                f"{api}: l2_axis={self.l2_axis} is not a non-batch dimension of x (shape "
                f"{tuple(x.shape)}); pick one of 1..{x.dim() - 1} (or -1..-{x.dim() - 1})."
            )
        return self.l2_axis

    def prox(self, x: Tensor, gamma, sigma=None, weights=None) -> Tensor:
        _check_gamma(self, gamma)
        axis = self._axis("unroll.optim.L12Prior.prox", x)
        norm_sq = x.abs().square().sum(axis, keepdim=True)
        # max(1 − γ/‖x_i‖, 0) as relu(‖x_i‖ − γ)/‖x_i‖, with no sqrt / division at 0
        safe = torch.where(norm_sq > 0, norm_sq, torch.ones_like(norm_sq)).sqrt()
        scale = torch.where(norm_sq > 0, torch.clamp(safe - gamma, min=0) / safe, 0.0)
        return scale * x

    def value(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        axis = self._axis("unroll.optim.L12Prior.value", x)
        return _per_sample_sum(torch.linalg.vector_norm(x, dim=axis))


class TVProxResult(NamedTuple):
    """The result of :func:`tv_prox`.

    Attributes:
        x: the prox ``u = x − γ ∇ᵀp``.
        dual: the dual variable ``p`` (shape ``(2, *x.shape)``, ``‖p_i‖ ≤ 1``): pass it as
            ``init`` to warm-start the next prox (e.g. the next iteration of an algorithm).
        num_iter: dual iterations run.
        rel_change: per-sample ``‖u_k − u_{k−1}‖ / ‖u_k‖`` at the last check (shape ``(B,)``).
        converged: whether every sample met ``tol`` (``True`` with ``tol = 0``: a fixed count).
    """

    x: Tensor
    dual: Tensor
    num_iter: int
    rel_change: Tensor
    converged: bool


_TV_CHECK_EVERY = 10


def tv_prox(
    x: Tensor,
    gamma: float | Tensor,
    *,
    n_it_max: int = 1000,
    tol: float = 1e-6,
    init: Tensor | None = None,
    on_failure: str = "warn",
) -> TVProxResult:
    r"""The proximal operator of isotropic total variation, with its dual (warm starts).

    .. math:: u = \arg\min_u \tfrac12\|u - x\|^2 + \gamma\,\mathrm{TV}(u), \qquad
              \mathrm{TV}(u) = \sum_i \|(\nabla u)_i\|_2,

    by the fast gradient projection (FGP, Beck & Teboulle 2009) on the dual
    :math:`\min_{\|p_i\| \le 1} \tfrac12\|x - \gamma\nabla^\top p\|^2`, step
    :math:`1/(8\gamma)`, :math:`u = x - \gamma\nabla^\top p`. It stops once every sample's
    relative change :math:`\|u_k - u_{k-1}\| / \|u_k\| \le` ``tol`` (checked every 10
    iterations: one host read each; inside ``torch.func.vmap`` it runs ``n_it_max``
    iterations) or after ``n_it_max`` iterations, which is reported through the failure policy
    (``"TVPrior.prox"``, once per cause and call site). The prox error is typically 5-20 times
    the final relative change (``tol = 1e-6`` is at least as accurate as the former fixed 200
    iterations for ``γ ≥ 0.1`` on images in ``[0, 1]``).

    Args:
        x: images ``(B, ..., H, W)`` (TV over the last two dims, forward differences, Neumann
            boundaries).
        gamma: ``γ >= 0``, finite: a number or a tensor broadcastable to ``x``.
        n_it_max: iteration cap (``>= 1``).
        tol: relative-change tolerance (``>= 0``; 0 runs exactly ``n_it_max`` iterations).
        init: a dual ``p`` to start from, shape ``(2, *x.shape)`` (e.g. the ``dual`` of the
            previous call); zeros when None.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"`` an unconverged prox.

    Returns:
        :class:`TVProxResult` ``(x, dual, num_iter, rel_change, converged)``.

    Example:
        >>> import torch
        >>> x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
        >>> first = tv_prox(x, 0.1)
        >>> again = tv_prox(x + 1e-3, 0.1, init=first.dual)   # warm start: fewer iterations
        >>> first.converged, again.num_iter < first.num_iter
        (True, True)
    """
    api = "unroll.optim.tv_prox"
    _check_tv_options(api, n_it_max, tol, on_failure)
    check_level(api, "gamma", gamma, strict=False, fix=_GAMMA_FIX)
    return _tv_prox(x, gamma, n_it_max, tol, init, on_failure)


def _check_tv_options(api: str, n_it_max: Any, tol: Any, on_failure: Any) -> None:
    if isinstance(n_it_max, bool) or not isinstance(n_it_max, int) or n_it_max < 1:
        raise ValueError(f"{api}: n_it_max must be an int >= 1, got {n_it_max!r}.")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
        raise ValueError(
            f"{api}: tol must be a finite number >= 0 (the relative change at which the dual "
            f"iterations stop, e.g. 1e-6; 0 runs n_it_max iterations), got {tol!r}."
        )
    check_on_failure(api, on_failure)


def _tv_prox(
    x: Tensor,
    gamma: float | Tensor,
    n_it_max: int,
    tol: float,
    init: Tensor | None,
    on_failure: str,
) -> TVProxResult:
    """:func:`tv_prox` for validated options and ``gamma``."""
    api = "unroll.optim.tv_prox"
    shape = (2, *x.shape)
    if init is not None:
        if not isinstance(init, Tensor) or tuple(init.shape) != shape:
            got = tuple(init.shape) if isinstance(init, Tensor) else type(init).__name__
            raise ValueError(
                f"{api}: init (the dual to warm-start from) must be a tensor of shape {shape} "
                f"(2, *x.shape), got {got}; pass the dual of a previous call on images of this "
                "shape, or None."
            )
        p = init.to(dtype=x.dtype, device=x.device)
    else:
        p = torch.zeros(shape, dtype=x.dtype, device=x.device)
    batch = x.shape[0] if x.dim() > 0 else 1
    no_change = torch.zeros(batch, dtype=x.real.dtype, device=x.device)
    if not isinstance(gamma, Tensor) and gamma == 0:
        return TVProxResult(x.clone(), p, 0, no_change, True)
    if isinstance(gamma, Tensor) and not gamma.is_floating_point():
        gamma = gamma.to(x.real.dtype)
    # 8γ, with +inf where γ = 0 (its dual step is then zero and u stays x)
    step_den = (
        8 * gamma
        if not isinstance(gamma, Tensor)
        else torch.where(gamma > 0, 8 * gamma, torch.full_like(gamma, torch.inf))
    )
    q, t = p, 1.0
    change, done, k = no_change, tol == 0, 0
    while k < n_it_max:
        u = _axpy(x, gamma, _divergence(q))  # x − γ ∇ᵀq
        p_new = _project_unit(_axpy(q, 1 / step_den, image_gradient(u)))
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        q = torch.lerp(p, p_new, 1 + (t - 1) / t_new)  # p_new + (t − 1)/t_new (p_new − p)
        k += 1
        if tol > 0 and (k % _TV_CHECK_EVERY == 0 or k == n_it_max):
            change = _relative_change(x, gamma, p_new, p)
            p, t = p_new, t_new
            stop = try_bool((change <= tol).all())
            if stop:
                done = True
                break
        else:
            p, t = p_new, t_new
    if tol > 0 and not done:
        done = _report_tv(change, k, tol, on_failure)
    return TVProxResult(x - gamma * grad_adjoint(p), p, k, change, done)


def _relative_change(x: Tensor, gamma: float | Tensor, p_new: Tensor, p: Tensor) -> Tensor:
    """Per-sample ``‖u(p_new) − u(p)‖ / ‖u(p_new)‖`` (no gradient)."""
    with torch.no_grad():
        diff = gamma * grad_adjoint(p_new - p)
        u = x - gamma * grad_adjoint(p_new)
        if x.dim() == 0:
            return (diff.abs() / u.abs().clamp_min(torch.finfo(u.real.dtype).tiny)).reshape(1)
        num = diff.reshape(x.shape[0], -1).norm(dim=1)
        den = u.reshape(x.shape[0], -1).norm(dim=1)
        return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def _report_tv(change: Tensor, k: int, tol: float, on_failure: str) -> bool:
    """Report an unconverged TV prox; whether it did converge after all (under vmap)."""
    return report_change(
        "TVPrior.prox",
        change,
        tol,
        on_failure,
        limit=f"at n_it_max={k}",
        remedy="Raise n_it_max (e.g. TVPrior(n_it_max=...)), loosen tol, or warm-start from "
        "the previous dual (tv_prox(..., init=previous.dual))",
    )


class TVPrior(Prior):
    r"""Isotropic total variation ``g(x) = Σ_i ‖(∇x)_i‖₂`` over the last two dimensions.

    ``prox(x, γ) = argmin_u ½‖u − x‖² + γ TV(u)`` by the fast gradient projection (FGP) on the
    dual, :func:`tv_prox`: ``u = x − γ ∇ᵀp``, ``‖p_i‖ ≤ 1``, step ``1/(8γ)``, until the
    relative change ``‖u_k − u_{k−1}‖/‖u_k‖ ≤ tol`` (checked every 10 iterations) or
    ``n_it_max`` iterations (reported as ``"TVPrior.prox"`` through ``on_failure``). Forward
    differences with Neumann boundaries. ``γ`` must be finite and ``>= 0``; ``γ = 0`` (e.g.
    ``lambda_reg = 0``) returns ``x`` (entry-wise for a tensor ``γ``).

    Args:
        n_it_max: dual iteration cap per prox (default 1000, as DeepInverse's ``TVPrior``).
        tol: relative-change tolerance (default 1e-6; 0: exactly ``n_it_max`` iterations, no
            host read).
        on_failure: an unconverged prox ``"warn"`` (default), ``"raise"`` or ``"ignore"``.

    Example:
        >>> import torch
        >>> x = torch.zeros(1, 1, 4, 4); x[..., 2:] = 1.0
        >>> TVPrior().prox(x, 0.5)[0, 0, 0]     # the edge shrinks by γ·2/H on each side
        tensor([0.2500, 0.2500, 0.7500, 0.7500])
    """

    def __init__(self, n_it_max: int = 1000, tol: float = 1e-6, on_failure: str = "warn"):
        super().__init__()
        _check_tv_options("unroll.optim.TVPrior", n_it_max, tol, on_failure)
        self.n_it_max = n_it_max
        self.tol = tol
        self.on_failure = on_failure

    def prox(
        self, x: Tensor, gamma, sigma=None, weights=None, *, init: Tensor | None = None
    ) -> Tensor:
        """The prox (see the class); ``init``: a dual to warm-start from (see :func:`tv_prox`,
        which also returns the dual)."""
        _check_gamma(self, gamma)
        return _tv_prox(x, gamma, self.n_it_max, self.tol, init, self.on_failure).x

    def value(self, x: Tensor, sigma=None, weights=None) -> Tensor:
        g = image_gradient(x)
        return _per_sample_sum(g.abs().square().sum(0).sqrt())


def image_gradient(x: Tensor) -> Tensor:
    """Forward differences over the last two dims, stacked ``(2, *x.shape)``, zero at the end."""
    dh = F.pad(torch.diff(x, dim=-2), (0, 0, 0, 1))
    dw = F.pad(torch.diff(x, dim=-1), (0, 1))
    return torch.stack([dh, dw])


def grad_adjoint(p: Tensor) -> Tensor:
    """The adjoint of :func:`image_gradient` (minus the discrete divergence)."""
    return -_divergence(p)


def _divergence(p: Tensor) -> Tensor:
    """``−∇ᵀp``: backward differences of ``p`` with its last row (column) taken as zero."""
    ph = F.pad(p[0][..., :-1, :], (0, 0, 1, 1))
    pw = F.pad(p[1][..., :, :-1], (1, 1))
    return torch.diff(ph, dim=-2) + torch.diff(pw, dim=-1)


def _axpy(x: Tensor, a: float | Tensor, d: Tensor) -> Tensor:
    """``x + a d`` in one operation (``a`` a number or a tensor broadcastable to ``x``)."""
    if isinstance(a, Tensor):
        return torch.addcmul(x, a, d)
    return torch.add(x, d, alpha=a)


def _project_unit(p: Tensor) -> Tensor:
    """``p / max(‖p‖, 1)`` per pixel, as ``p · rsqrt(max(‖p‖², 1))``: the same values, but no
    ``sqrt`` at 0 (whose infinite derivative made gradients w.r.t. ``γ`` NaN)."""
    mag = p.abs() if p.is_complex() else p
    norm_sq = mag.square().sum(0, keepdim=True)
    return p * torch.clamp(norm_sq, min=1.0).rsqrt()


def __getattr__(name: str):
    """DeepInverse's path ``optim.prior.WaveletPrior`` (defined in :mod:`unroll.optim.wavelet`,
    which imports this module, hence the lazy lookup)."""
    if name == "WaveletPrior":
        from unroll.optim.wavelet import WaveletPrior

        return WaveletPrior
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
