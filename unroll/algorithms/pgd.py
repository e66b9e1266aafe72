"""Proximal gradient descent (forward–backward splitting)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm


class PGDState(NamedTuple):
    """State of :func:`pgd`: the iterate ``x``."""

    x: torch.Tensor


def pgd(data_fidelity: Any, prior: Any) -> Algorithm:
    """Proximal gradient: ``x_{k+1} = prox_{γλ g}(x_k − γ ∇f(x_k))``.

    With :class:`unroll.optim.PnP` the prox is the denoiser ``D(·, σ)``. Converges to
    ``argmin f + λg`` for convex terms when ``γ < 2/L`` (``L`` the Lipschitz constant of
    ``∇f``). Initialised at ``x₀ = Aᵀ y``.

    Args:
        data_fidelity: ``f`` with ``.grad``.
        prior: ``g`` with ``.prox``.

    Returns:
        :class:`Algorithm` over :class:`PGDState`; params: ``stepsize``, ``lambda_reg``,
        ``sigma_denoiser``, ``prior``.

    References:
        Combettes & Wajs, "Signal recovery by proximal forward-backward splitting", 2005.
    """
    c.check_components("pgd", data_fidelity, prior, ("f.grad", "g.prox"))

    def init(y, physics, params):
        return PGDState(c.default_init(y, physics))

    def step(state, y, physics, p):
        gamma = c.stepsize(p)
        u = state.x - gamma * data_fidelity.grad(state.x, y, physics)
        return PGDState(c.prior_prox(prior, u, gamma * c.lambda_reg(p), p))

    return Algorithm(init, step, lambda s: s.x, c.BASIC_PARAMS)
