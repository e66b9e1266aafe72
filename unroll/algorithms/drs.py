"""Douglas–Rachford splitting."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm


class DRSState(NamedTuple):
    """State of :func:`drs`: the governing sequence ``z`` and the estimate ``x = prox_{γf}(z)``."""

    x: torch.Tensor
    z: torch.Tensor


def drs(data_fidelity: Any, prior: Any) -> Algorithm:
    """Douglas–Rachford splitting with relaxation ``β``.

    .. math::

        x_{k+1} = \\operatorname{prox}_{γf}(z_k),\\quad
        v = \\operatorname{prox}_{γλg}(2x_{k+1} − z_k),\\quad
        z_{k+1} = z_k + β (v − x_{k+1})

    ``x_k`` converges to ``argmin f + λg`` for convex terms, ``γ > 0`` and ``β ∈ (0, 2)``.
    Initialised at ``z₀ = x₀ = Aᵀy``.

    Args:
        data_fidelity: ``f`` with ``.prox``.
        prior: ``g`` with ``.prox``.

    Returns:
        :class:`Algorithm` over :class:`DRSState`; params as :func:`admm`.

    References:
        Lions & Mercier, "Splitting algorithms for the sum of two nonlinear operators", 1979.
    """
    c.check_components("drs", data_fidelity, prior, ("f.prox", "g.prox"))

    def init(y, physics, params):
        x = c.default_init(y, physics)
        return DRSState(x, x)

    def step(state, y, physics, p):
        gamma = c.stepsize(p)
        x = data_fidelity.prox(state.z, y, physics, gamma)
        v = c.prior_prox(prior, 2 * x - state.z, gamma * c.lambda_reg(p), p)
        return DRSState(x, state.z + c.beta(p) * (v - x))

    return Algorithm(init, step, lambda s: s.x, c.RELAXED_PARAMS)
