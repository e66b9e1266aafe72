"""Chambolle–Pock primal–dual hybrid gradient."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm, get


class PDHGState(NamedTuple):
    """State of :func:`pdhg`: primal ``x`` and dual ``u`` (measurement-shaped)."""

    x: torch.Tensor
    u: torch.Tensor


def pdhg(data_fidelity: Any, prior: Any) -> Algorithm:
    """Chambolle–Pock for ``min_x d(Ax, y) + λ g(x)`` (no least-squares solve needed).

    .. math::

        x_{k+1} = \\operatorname{prox}_{τλg}(x_k − τ Aᵀu_k),\\quad
        u_{k+1} = \\operatorname{prox}_{σ d^*}(u_k + σ A(x_{k+1} + θ(x_{k+1} − x_k)))

    with ``prox_{σd*}(v) = v − σ prox_{d/σ}(v/σ)`` (Moreau). Converges for convex terms when
    ``τ σ ‖A‖² < 1`` and ``θ = 1``. Initialised at ``x₀ = Aᵀy``, ``u₀ = 0``.

    Args:
        data_fidelity: ``d`` in measurement space, with ``.d_prox(u, y, gamma)``.
        prior: ``g`` with ``.prox``.

    Returns:
        :class:`Algorithm` over :class:`PDHGState`; params: ``stepsize`` (τ),
        ``stepsize_dual`` (σ, default 1), ``beta`` (θ, default 1), ``lambda_reg``,
        ``sigma_denoiser``, ``prior``.

    References:
        Chambolle & Pock, "A first-order primal-dual algorithm for convex problems with
        applications to imaging", J. Math. Imaging Vision, 2011.
    """
    c.check_components("pdhg", data_fidelity, prior, ("f.d_prox", "g.prox"))

    def init(y, physics, params):
        return PDHGState(c.default_init(y, physics), torch.zeros_like(y))

    def step(state, y, physics, p):
        tau, sig, theta = c.stepsize(p), get(p, "stepsize_dual", 1.0), c.beta(p)
        u_x = state.x - tau * physics.A_adjoint(state.u)
        x = c.prior_prox(prior, u_x, tau * c.lambda_reg(p), p)
        v = state.u + sig * physics.A(x + theta * (x - state.x))
        u = v - sig * data_fidelity.d_prox(v / sig, y, 1 / sig)
        return PDHGState(x, u)

    return Algorithm(init, step, lambda s: s.x, c.PDHG_PARAMS)
