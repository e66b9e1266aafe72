"""Proximal gradient descent (forward–backward splitting)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from unroll._typing import DataFidelityLike, PriorLike
from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm


class PGDState(NamedTuple):
    """State of :func:`pgd`: the iterate ``x``."""

    x: torch.Tensor


def pgd(data_fidelity: DataFidelityLike, prior: PriorLike, *, g_first: bool = False) -> Algorithm:
    r"""Proximal gradient: ``x_{k+1} = prox_{γλ g}(x_k − γ ∇f(x_k))``.

    With :class:`unroll.optim.PnP` the prox is the denoiser ``D(·, σ)``. Converges to
    ``argmin f + λg`` for convex terms when ``γ < 2/L`` (``L`` the Lipschitz constant of
    ``∇f``). Initialised at ``x₀ = Aᵀ y``.

    With ``g_first=True`` (DeepInverse's ``g_first``) the roles swap: a gradient step on
    ``λg`` and the prox of ``f``,

    .. math:: x_{k+1} = \operatorname{prox}_{γf}\big(x_k − γλ∇g(x_k)\big),

    whose fixed points are the same stationary points ``∇f(x) + λ∇g(x) = 0`` (``γλ < 2/L_g``).

    Args:
        data_fidelity: ``f`` with ``.grad`` (``.prox`` when ``g_first``).
        prior: ``g`` with ``.prox`` (``.grad`` when ``g_first``).
        g_first: the step on ``g`` first (see above).

    Returns:
        :class:`Algorithm` over :class:`PGDState`; params: ``stepsize``, ``lambda_reg``,
        ``sigma_denoiser``, ``prior``.

    References:
        Combettes & Wajs, "Signal recovery by proximal forward-backward splitting", 2005.
    """
    c.check_g_first("pgd", g_first)
    needs = ("f.prox", "g.grad") if g_first else ("f.grad", "g.prox")
    c.check_components("pgd", data_fidelity, prior, needs)
    forward_backward = pgd_update(data_fidelity, prior, g_first)

    def init(y, physics, params):
        return PGDState(c.default_init(y, physics))

    def step(state, y, physics, p):
        return PGDState(forward_backward(state.x, y, physics, p))

    return Algorithm(
        init, step, lambda s: s.x, c.BASIC_PARAMS, warm_start=lambda x0, aux: PGDState(x0)
    )


def pgd_update(data_fidelity: DataFidelityLike, prior: PriorLike, g_first: bool = False):
    """One forward–backward step ``z ↦ prox_{γλg}(z − γ∇f(z))`` (``g_first``:
    ``z ↦ prox_{γf}(z − γλ∇g(z))``) as ``(z, y, physics, params_k) -> x``; shared by
    :func:`pgd` and :func:`unroll.algorithms.fista`."""

    def update(z, y, physics, p):
        gamma = c.stepsize(p)
        if g_first:
            u = z - gamma * c.lambda_reg(p) * c.prior_grad(prior, z, p)
            return data_fidelity.prox(u, y, physics, gamma)
        u = z - gamma * data_fidelity.grad(z, y, physics)
        return c.prior_prox(prior, u, gamma * c.lambda_reg(p), p)

    return update
