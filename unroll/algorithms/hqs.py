"""Half-quadratic splitting."""

from __future__ import annotations

from typing import NamedTuple

import torch

from unroll._typing import DataFidelityLike, PriorLike
from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm


class HQSState(NamedTuple):
    """State of :func:`hqs`: the iterate ``x``."""

    x: torch.Tensor


def hqs(data_fidelity: DataFidelityLike, prior: PriorLike, *, g_first: bool = False) -> Algorithm:
    """Half-quadratic splitting: ``x_{k+1} = prox_{γλg}(prox_{γf}(x_k))``.

    The data step is the physics' least-squares prox (:meth:`L2.prox` → ``physics.prox_l2``,
    whose backward follows the physics' ``implicit_backward_solver``). For convex terms and a
    fixed ``γ``, HQS converges to the minimiser of ``env_{γf}(x) + λ g(x)`` (``env`` the Moreau
    envelope), which tends to ``argmin f + λg`` as ``γ → ∞``. Initialised at ``x₀ = Aᵀy``.

    With ``g_first=True`` the two proxes swap: ``x_{k+1} = prox_{γf}(prox_{γλg}(x_k))``.

    Args:
        data_fidelity: ``f`` with ``.prox``.
        prior: ``g`` with ``.prox`` (a denoiser for :class:`unroll.optim.PnP`).
        g_first: the prox of ``g`` first.

    Returns:
        :class:`Algorithm` over :class:`HQSState`; params as :func:`pgd`.

    References:
        Geman & Yang, "Nonlinear image recovery with half-quadratic regularization", 1995.
        Zhang et al., "Plug-and-play image restoration with deep denoiser prior", 2021.
    """
    c.check_g_first("hqs", g_first)
    c.check_components("hqs", data_fidelity, prior, ("f.prox", "g.prox"))

    def init(y, physics, params):
        return HQSState(c.default_init(y, physics))

    def step(state, y, physics, p):
        gamma = c.stepsize(p)
        if g_first:
            z = c.prior_prox(prior, state.x, gamma * c.lambda_reg(p), p)
            return HQSState(data_fidelity.prox(z, y, physics, gamma))
        z = data_fidelity.prox(state.x, y, physics, gamma)
        return HQSState(c.prior_prox(prior, z, gamma * c.lambda_reg(p), p))

    return Algorithm(
        init, step, lambda s: s.x, c.BASIC_PARAMS, warm_start=lambda x0, aux: HQSState(x0)
    )
