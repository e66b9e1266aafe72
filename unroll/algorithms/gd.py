"""Gradient descent on ``f(x) + λ g(x)``."""

from __future__ import annotations

from typing import NamedTuple

import torch

from unroll._typing import DataFidelityLike, PriorLike
from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm


class GDState(NamedTuple):
    """State of :func:`gd`: the iterate ``x``."""

    x: torch.Tensor


def gd(data_fidelity: DataFidelityLike, prior: PriorLike) -> Algorithm:
    """Gradient descent: ``x_{k+1} = x_k − γ_k (∇f(x_k) + λ_k ∇g(x_k))``.

    Needs ``data_fidelity.grad`` and ``prior.grad`` (e.g. :class:`unroll.optim.RED`,
    :class:`unroll.optim.Tikhonov`). Converges for convex ``f + λg`` with ``L``-Lipschitz
    gradient when ``γ < 2/L``. Initialised at ``x₀ = Aᵀ y``.

    Args:
        data_fidelity: ``f`` (:class:`unroll.optim.L2`, ...).
        prior: ``g`` with a gradient.

    Returns:
        :class:`Algorithm` over :class:`GDState`; params: ``stepsize``, ``lambda_reg``,
        ``sigma_denoiser`` / ``prior`` for learned priors.

    Example:
        >>> import torch
        >>> from unroll.algorithms import gd, run
        >>> from unroll.optim import L2, Tikhonov
        >>> from unroll.physics import Denoising
        >>> y = torch.ones(1, 1, 4, 4)
        >>> x, info = run(gd(L2(), Tikhonov()), y, Denoising(), {"stepsize": 0.5}, 200)
        >>> torch.allclose(x, y / 2)  # argmin ½‖x − y‖² + ½‖x‖²
        True
    """
    c.check_components("gd", data_fidelity, prior, ("f.grad", "g.grad"))

    def init(y, physics, params):
        return GDState(c.default_init(y, physics))

    def step(state, y, physics, p):
        g = data_fidelity.grad(state.x, y, physics) + c.lambda_reg(p) * c.prior_grad(
            prior, state.x, p
        )
        return GDState(state.x - c.stepsize(p) * g)

    return Algorithm(
        init, step, lambda s: s.x, c.BASIC_PARAMS, warm_start=lambda x0, aux: GDState(x0)
    )
