"""Chambolle–Pock primal–dual hybrid gradient."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from unroll._typing import DistanceFidelityLike, PriorLike
from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm, get


class PDHGState(NamedTuple):
    """State of :func:`pdhg`: primal ``x`` and dual ``u`` (shaped like ``y``, or like ``K(x)``)."""

    x: torch.Tensor
    u: torch.Tensor


def _check_operator(
    K: Callable[[torch.Tensor], torch.Tensor] | None,  # noqa: N803
    K_adjoint: Callable[[torch.Tensor], torch.Tensor] | None,  # noqa: N803
    g_first: Any,
) -> None:  # noqa: N803
    api = "unroll.algorithms.pdhg"
    if (K is None) != (K_adjoint is None):
        raise ValueError(
            f"{api}: pass both K and K_adjoint (a linear operator and its adjoint), or "
            "neither; got only " + ("K." if K_adjoint is None else "K_adjoint.")
        )
    for name, op in (("K", K), ("K_adjoint", K_adjoint)):
        if op is not None and not callable(op):
            raise TypeError(
                f"{api}: {name} must be a callable on tensors (e.g. lambda x: x), got "
                f"{type(op).__name__}."
            )
    c.check_g_first("pdhg", g_first)


def _dual_prox(
    prox: Callable[[torch.Tensor, float | torch.Tensor], torch.Tensor],
    v: torch.Tensor,
    sig: float | torch.Tensor,
) -> torch.Tensor:
    """Moreau: ``prox_{σ h*}(v) = v − σ prox_{h/σ}(v/σ)``, with ``prox(z, γ) = prox_{γh}(z)``."""
    return v - sig * prox(v / sig, 1 / sig)


def pdhg(
    data_fidelity: DistanceFidelityLike,
    prior: PriorLike,
    *,
    K: Callable[[torch.Tensor], torch.Tensor] | None = None,  # noqa: N803
    K_adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None,  # noqa: N803
    g_first: bool = False,
) -> Algorithm:
    r"""Chambolle–Pock primal–dual hybrid gradient, in three splittings.

    Every variant is one primal proximal step, one dual proximal step (by Moreau's identity
    :math:`\operatorname{prox}_{\sigma h^*}(v) =
    v - \sigma\operatorname{prox}_{h/\sigma}(v/\sigma)`) and an extrapolation
    :math:`\bar x = x_{k+1} + \theta(x_{k+1} - x_k)`; it converges for convex terms when
    :math:`\tau\sigma\|K\|^2 < 1` and :math:`\theta = 1`.

    * ``K=None`` (default): :math:`\min_x d(Ax, y) + \lambda g(x)` with :math:`K = A`
      and the data term in measurement space (no least-squares solve):

      .. math::

          x_{k+1} = \operatorname{prox}_{\tau\lambda g}(x_k - \tau A^\top u_k),\quad
          u_{k+1} = \operatorname{prox}_{\sigma d^*}(u_k + \sigma A\bar x).

    * ``K, K_adjoint`` given: :math:`\min_x f(Kx) + \lambda g(x)`, ``f`` the data fidelity
      (:math:`f(v) = d(Av, y)`, its prox ``data_fidelity.prox(v, y, physics, gamma)``),
      DeepInverse's ``PDCP(K=..., K_adjoint=...)``:

      .. math::

          x_{k+1} = \operatorname{prox}_{\tau\lambda g}(x_k - \tau K^\top u_k),\quad
          u_{k+1} = \operatorname{prox}_{\sigma f^*}(u_k + \sigma K\bar x).

    * ``g_first=True`` (``K`` default identity): :math:`\min_x f(x) + \lambda g(Kx)` —
      e.g. total-variation-like priors with ``K`` a finite-difference gradient:

      .. math::

          x_{k+1} = \operatorname{prox}_{\tau f}(x_k - \tau K^\top u_k),\quad
          u_{k+1} = \operatorname{prox}_{\sigma(\lambda g)^*}(u_k + \sigma K\bar x).

    Initialised at ``x₀ = Aᵀy`` and ``u₀ = 0`` (shaped like ``y``, or like ``K(x₀)``). Keep
    the batch dimension first in ``K``'s output (per-sample convergence in :func:`run`).
    ``K`` and ``K_adjoint`` must be adjoint linear maps (check with a dot-product test).

    Args:
        data_fidelity: ``d`` with ``.d_prox(u, y, gamma)`` (``K=None``), or ``f`` with
            ``.prox(v, y, physics, gamma)`` (``K`` given or ``g_first=True``).
        prior: ``g`` with ``.prox``.
        K: a linear operator (callable), or None.
        K_adjoint: its adjoint, given with ``K``.
        g_first: put the prior on ``Kx`` and the data fidelity on ``x`` (DeepInverse's
            ``g_first``).

    Returns:
        :class:`Algorithm` over :class:`PDHGState`; params: ``stepsize`` (τ),
        ``stepsize_dual`` (σ, default 1), ``beta`` (θ, default 1), ``lambda_reg``,
        ``sigma_denoiser``, ``prior``.

    Example:
        >>> import torch
        >>> from unroll.algorithms import pdhg, run
        >>> from unroll.optim import L2, Tikhonov
        >>> from unroll.physics import Denoising
        >>> y = torch.tensor([[0.0, 3.0]], dtype=torch.float64)
        >>> diff = lambda x: x[:, 1:] - x[:, :-1]                    # K: (B, 2) -> (B, 1)
        >>> diff_t = lambda u: torch.cat([-u, u], dim=1)             # its adjoint
        >>> alg = pdhg(L2(), Tikhonov(), K=diff, K_adjoint=diff_t, g_first=True)
        >>> p = {"stepsize": 0.5, "stepsize_dual": 0.5}
        >>> x, _ = run(alg, y, Denoising(), p, 200)  # min ½‖x − y‖² + ½(x₂ − x₁)²
        >>> x
        tensor([[1., 2.]], dtype=torch.float64)

    References:
        Chambolle & Pock, "A first-order primal-dual algorithm for convex problems with
        applications to imaging", J. Math. Imaging Vision, 2011.
    """
    _check_operator(K, K_adjoint, g_first)
    if K is None and not g_first:
        return _pdhg_measurement(data_fidelity, prior)
    c.check_components("pdhg", data_fidelity, prior, ("f.prox", "g.prox"))
    op = K if K is not None else (lambda x: x)
    op_t = K_adjoint if K_adjoint is not None else (lambda u: u)

    def init(y, physics, params):
        x = c.default_init(y, physics)
        return PDHGState(x, torch.zeros_like(op(x)))

    def step(state, y, physics, p):
        tau, sig, theta = c.stepsize(p), get(p, "stepsize_dual", 1.0), c.beta(p)
        lam = c.lambda_reg(p)
        v_x = state.x - tau * op_t(state.u)
        if g_first:
            x = data_fidelity.prox(v_x, y, physics, tau)
        else:
            x = c.prior_prox(prior, v_x, tau * lam, p)
        v = state.u + sig * op(x + theta * (x - state.x))
        if g_first:
            u = _dual_prox(lambda z, gam: c.prior_prox(prior, z, gam * lam, p), v, sig)
        else:
            u = _dual_prox(lambda z, gam: data_fidelity.prox(z, y, physics, gam), v, sig)
        return PDHGState(x, u)

    return Algorithm(init, step, lambda s: s.x, c.PDHG_PARAMS)


def _pdhg_measurement(data_fidelity: DistanceFidelityLike, prior: PriorLike) -> Algorithm:
    """:func:`pdhg` with ``K = A`` and the data term in measurement space."""
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
