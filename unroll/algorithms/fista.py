"""FISTA: accelerated proximal gradient."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm
from unroll.algorithms.pgd import pgd


class FISTAState(NamedTuple):
    """State of :func:`fista`: iterate ``x``, extrapolated point ``z``, momentum ``t`` ``(B,)``."""

    x: torch.Tensor
    z: torch.Tensor
    t: torch.Tensor


def fista(data_fidelity: Any, prior: Any) -> Algorithm:
    """FISTA (Beck & Teboulle 2009).

    .. math::

        x_{k+1} = \\operatorname{prox}_{γλg}(z_k − γ∇f(z_k)),\\quad
        t_{k+1} = \\tfrac{1 + \\sqrt{1 + 4t_k^2}}{2},\\quad
        z_{k+1} = x_{k+1} + \\tfrac{t_k − 1}{t_{k+1}}(x_{k+1} − x_k)

    from ``x₀ = z₀ = Aᵀy``, ``t₀ = 1``. At a fixed point ``x = z`` the momentum vanishes, so
    the fixed points are those of :func:`pgd` (which is how a FISTA DEQ is differentiated).

    Args:
        data_fidelity: ``f`` with ``.grad``.
        prior: ``g`` with ``.prox``.

    Returns:
        :class:`Algorithm` over :class:`FISTAState`; params as :func:`pgd`.

    References:
        Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear inverse
        problems", SIAM J. Imaging Sciences, 2009.
    """
    c.check_components("fista", data_fidelity, prior, ("f.grad", "g.prox"))

    def init(y, physics, params):
        x = c.default_init(y, physics)
        return FISTAState(x, x, torch.ones(x.shape[0], dtype=x.real.dtype, device=x.device))

    def step(state, y, physics, p):
        gamma = c.stepsize(p)
        u = state.z - gamma * data_fidelity.grad(state.z, y, physics)
        x = c.prior_prox(prior, u, gamma * c.lambda_reg(p), p)
        t = (1 + torch.sqrt(1 + 4 * state.t**2)) / 2
        a = ((state.t - 1) / t).reshape((-1,) + (1,) * (x.dim() - 1))
        return FISTAState(x, x + a * (x - state.x), t)

    # the momentum counter t grows forever: a DEQ of FISTA runs PGD (same fixed points)
    return Algorithm(init, step, lambda s: s.x, c.BASIC_PARAMS, pgd(data_fidelity, prior))
