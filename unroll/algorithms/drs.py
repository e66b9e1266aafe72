"""Douglas–Rachford splitting."""

from __future__ import annotations

from typing import NamedTuple

import torch

from unroll._typing import DataFidelityLike, PriorLike
from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm


class DRSState(NamedTuple):
    """State of :func:`drs`: the governing sequence ``z`` and the estimate ``x = prox_{γf}(z)``."""

    x: torch.Tensor
    z: torch.Tensor


def drs(data_fidelity: DataFidelityLike, prior: PriorLike, *, g_first: bool = False) -> Algorithm:
    """Douglas–Rachford splitting with relaxation ``β``.

    .. math::

        x_{k+1} = \\operatorname{prox}_{γf}(z_k),\\quad
        v = \\operatorname{prox}_{γλg}(2x_{k+1} − z_k),\\quad
        z_{k+1} = z_k + β (v − x_{k+1})

    ``x_k`` converges to ``argmin f + λg`` for convex terms, ``γ > 0`` and ``β ∈ (0, 2)``.
    Initialised at ``z₀ = x₀ = Aᵀy``.

    With ``g_first=True`` ``f`` and ``λg`` swap roles: ``x_{k+1} = prox_{γλg}(z_k)``,
    ``v = prox_{γf}(2x_{k+1} − z_k)``, ``z_{k+1} = z_k + β(v − x_{k+1})`` (output ``x``). A
    start ``init=(x₀, z₀)`` sets ``x = x₀`` and the governing sequence ``z = z₀`` (default
    ``x₀``).

    Args:
        data_fidelity: ``f`` with ``.prox``.
        prior: ``g`` with ``.prox``.
        g_first: the prox of ``g`` first (see above).

    Returns:
        :class:`Algorithm` over :class:`DRSState`; params as :func:`admm`.

    References:
        Lions & Mercier, "Splitting algorithms for the sum of two nonlinear operators", 1979.
    """
    c.check_g_first("drs", g_first)
    c.check_components("drs", data_fidelity, prior, ("f.prox", "g.prox"))

    def prox_f(v, y, physics, p):
        return data_fidelity.prox(v, y, physics, c.stepsize(p))

    def prox_g(v, y, physics, p):
        return c.prior_prox(prior, v, c.stepsize(p) * c.lambda_reg(p), p)

    first, second = (prox_g, prox_f) if g_first else (prox_f, prox_g)

    def init(y, physics, params):
        x = c.default_init(y, physics)
        return DRSState(x, x)

    def step(state, y, physics, p):
        x = first(state.z, y, physics, p)
        v = second(2 * x - state.z, y, physics, p)
        return DRSState(x, state.z + c.beta(p) * (v - x))

    def warm_start(x0, z0):
        return DRSState(x0, x0 if z0 is None else z0)

    return Algorithm(init, step, lambda s: s.x, c.RELAXED_PARAMS, warm_start=warm_start)
