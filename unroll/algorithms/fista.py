"""FISTA: accelerated proximal gradient."""

from __future__ import annotations

from typing import NamedTuple

import torch

from unroll._typing import DataFidelityLike, PriorLike
from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm
from unroll.algorithms.pgd import pgd, pgd_update


class FISTAState(NamedTuple):
    """State of :func:`fista`: iterate ``x``, extrapolated point ``z``, momentum ``t`` ``(B,)``."""

    x: torch.Tensor
    z: torch.Tensor
    t: torch.Tensor


def fista(data_fidelity: DataFidelityLike, prior: PriorLike, *, g_first: bool = False) -> Algorithm:
    """FISTA (Beck & Teboulle 2009).

    .. math::

        x_{k+1} = \\operatorname{prox}_{γλg}(z_k − γ∇f(z_k)),\\quad
        t_{k+1} = \\tfrac{1 + \\sqrt{1 + 4t_k^2}}{2},\\quad
        z_{k+1} = x_{k+1} + \\tfrac{t_k − 1}{t_{k+1}}(x_{k+1} − x_k)

    from ``x₀ = z₀ = Aᵀy``, ``t₀ = 1``. At a fixed point ``x = z`` the momentum vanishes, so
    the fixed points are those of :func:`pgd` (which is how a FISTA DEQ is differentiated).

    With ``g_first=True`` the forward–backward step is that of :func:`pgd` with
    ``g_first=True``: ``x_{k+1} = prox_{γf}(z_k − γλ∇g(z_k))``.

    Args:
        data_fidelity: ``f`` with ``.grad`` (``.prox`` when ``g_first``).
        prior: ``g`` with ``.prox`` (``.grad`` when ``g_first``).
        g_first: the step on ``g`` first.

    Returns:
        :class:`Algorithm` over :class:`FISTAState`; params as :func:`pgd`.

    References:
        Beck & Teboulle, "A fast iterative shrinkage-thresholding algorithm for linear inverse
        problems", SIAM J. Imaging Sciences, 2009.
    """
    c.check_g_first("fista", g_first)
    needs = ("f.prox", "g.grad") if g_first else ("f.grad", "g.prox")
    c.check_components("fista", data_fidelity, prior, needs)
    forward_backward = pgd_update(data_fidelity, prior, g_first)

    def start(x, z):
        return FISTAState(x, z, torch.ones(x.shape[0], dtype=x.real.dtype, device=x.device))

    def init(y, physics, params):
        x = c.default_init(y, physics)
        return start(x, x)

    def step(state, y, physics, p):
        x = forward_backward(state.z, y, physics, p)
        t = (1 + torch.sqrt(1 + 4 * state.t**2)) / 2
        a = ((state.t - 1) / t).reshape((-1,) + (1,) * (x.dim() - 1))
        return FISTAState(x, x + a * (x - state.x), t)

    # the momentum counter t grows forever: a DEQ of FISTA runs PGD (same fixed points)
    return Algorithm(
        init,
        step,
        lambda s: s.x,
        c.BASIC_PARAMS,
        pgd(data_fidelity, prior, g_first=g_first),
        lambda x0, z0: start(x0, x0 if z0 is None else z0),
    )
