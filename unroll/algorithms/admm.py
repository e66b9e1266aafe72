"""ADMM (scaled form, with over-relaxation)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from unroll._typing import DataFidelityLike, PriorLike
from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm


class ADMMState(NamedTuple):
    """State of :func:`admm`: data variable ``x``, prior variable ``z``, scaled dual ``u``."""

    x: torch.Tensor
    z: torch.Tensor
    u: torch.Tensor


def admm(data_fidelity: DataFidelityLike, prior: PriorLike, *, g_first: bool = False) -> Algorithm:
    """ADMM for ``min f(x) + λ g(z)`` s.t. ``x = z`` (scaled dual ``u``, relaxation ``β``).

    .. math::

        x_{k+1} = \\operatorname{prox}_{γf}(z_k − u_k),\\quad
        \\hat x = β x_{k+1} + (1 − β) z_k,\\quad
        z_{k+1} = \\operatorname{prox}_{γλg}(\\hat x + u_k),\\quad
        u_{k+1} = u_k + \\hat x − z_{k+1}

    Converges to ``argmin f + λg`` for convex terms, any ``γ > 0`` and ``β ∈ (0, 2)``. The
    output is the prior variable ``z``. Initialised at ``x₀ = z₀ = Aᵀy``, ``u₀ = 0``.

    With ``g_first=True`` ``f`` and ``λg`` swap roles: ``x`` is the prior variable
    (``x_{k+1} = prox_{γλg}(z_k − u_k)``), ``z`` the data variable
    (``z_{k+1} = prox_{γf}(\\hat x + u_k)``), and the output is ``z``. A start ``init=(x₀, u₀)``
    sets ``x = z = x₀`` and the scaled dual ``u = u₀`` (default 0).

    Args:
        data_fidelity: ``f`` with ``.prox``.
        prior: ``g`` with ``.prox``.
        g_first: the prox of ``g`` first (see above).

    Returns:
        :class:`Algorithm` over :class:`ADMMState`; params: ``stepsize``, ``lambda_reg``,
        ``beta``, ``sigma_denoiser``, ``prior``.

    References:
        Boyd et al., "Distributed optimization and statistical learning via the alternating
        direction method of multipliers", 2011, §3.1 and §3.4.3.
    """
    c.check_g_first("admm", g_first)
    c.check_components("admm", data_fidelity, prior, ("f.prox", "g.prox"))

    def prox_first(v, y, physics, p):
        if g_first:
            return c.prior_prox(prior, v, c.stepsize(p) * c.lambda_reg(p), p)
        return data_fidelity.prox(v, y, physics, c.stepsize(p))

    def prox_second(v, y, physics, p):
        if g_first:
            return data_fidelity.prox(v, y, physics, c.stepsize(p))
        return c.prior_prox(prior, v, c.stepsize(p) * c.lambda_reg(p), p)

    def init(y, physics, params):
        x = c.default_init(y, physics)
        return ADMMState(x, x, torch.zeros_like(x))

    def step(state, y, physics, p):
        b = c.beta(p)
        x = prox_first(state.z - state.u, y, physics, p)
        x_hat = b * x + (1 - b) * state.z
        z = prox_second(x_hat + state.u, y, physics, p)
        return ADMMState(x, z, state.u + x_hat - z)

    def warm_start(x0, u0):
        return ADMMState(x0, x0, torch.zeros_like(x0) if u0 is None else u0)

    return Algorithm(init, step, lambda s: s.z, c.RELAXED_PARAMS, warm_start=warm_start)
