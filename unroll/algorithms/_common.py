"""Shared helpers for the algorithm factories (validation, parameter reads, prior calls)."""

from __future__ import annotations

from typing import Any

import torch

from unroll._typing import DataFidelityLike, PhysicsLike, PriorLike
from unroll.algorithms.base import PRIOR_KEY, get

BASIC_PARAMS = ("stepsize", "lambda_reg", "sigma_denoiser", PRIOR_KEY)
"""The keys read by GD, PGD, FISTA and HQS (``sigma_denoiser`` and ``prior`` by the prior)."""
RELAXED_PARAMS = (*BASIC_PARAMS, "beta")
"""ADMM and DRS: the basic keys and the relaxation ``beta``."""
PDHG_PARAMS = (*RELAXED_PARAMS, "stepsize_dual")
"""Chambolle–Pock: the relaxed keys and the dual step ``stepsize_dual``."""


def check_components(
    name: str,
    data_fidelity: DataFidelityLike | None,
    prior: PriorLike | None,
    needs: tuple[str, ...],
) -> None:
    """Raise a TypeError naming ``unroll.algorithms.<name>`` when a needed method is missing."""
    for obj, label, methods in (
        (data_fidelity, "data_fidelity", [m for m in needs if m.startswith("f.")]),
        (prior, "prior", [m for m in needs if m.startswith("g.")]),
    ):
        for method in methods:
            attr = method[2:]
            fn = getattr(obj, attr, None)
            if not callable(fn) or getattr(fn, "unsupported", False):
                raise TypeError(
                    f"unroll.algorithms.{name}: {label} must provide .{attr}(...); got "
                    f"{type(obj).__name__}. Use unroll.optim.L2/L1 and unroll.optim priors."
                )


def check_g_first(name: str, g_first: Any) -> None:
    """Raise a TypeError naming ``unroll.algorithms.<name>`` unless ``g_first`` is a bool."""
    if not isinstance(g_first, bool):
        raise TypeError(
            f"unroll.algorithms.{name}: g_first must be a bool (True: the step on the prior g "
            f"comes first), got {g_first!r}."
        )


def stepsize(p: dict) -> float | torch.Tensor:
    """``params['stepsize']`` (required)."""
    return get(p, "stepsize")


def lambda_reg(p: dict) -> float | torch.Tensor:
    """``params['lambda_reg']``, default 1."""
    return get(p, "lambda_reg", 1.0)


def beta(p: dict) -> float | torch.Tensor:
    """``params['beta']``, default 1 (no relaxation)."""
    return get(p, "beta", 1.0)


def sigma(p: dict) -> float | torch.Tensor | None:
    """``params['sigma_denoiser']`` (alias ``g_param``), None when absent."""
    return p.get("sigma_denoiser", p.get("g_param"))


def prior_prox(
    prior: PriorLike, x: torch.Tensor, gamma: float | torch.Tensor, p: dict
) -> torch.Tensor:
    """``prox_{γ g}(x)`` with the prior's noise level and weights from ``p``."""
    return prior.prox(x, gamma, sigma=sigma(p), weights=p.get(PRIOR_KEY))


def prior_grad(prior: PriorLike, x: torch.Tensor, p: dict) -> torch.Tensor:
    """``∇g(x)`` with the prior's noise level and weights from ``p``."""
    return prior.grad(x, sigma=sigma(p), weights=p.get(PRIOR_KEY))


def default_init(y: torch.Tensor, physics: PhysicsLike) -> torch.Tensor:
    """``x₀ = Aᵀ y`` (the adjoint back-projection)."""
    return physics.A_adjoint(y)
