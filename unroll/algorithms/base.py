"""The common shape of every algorithm: ``Algorithm(init, step, output)`` and its runner.

Every algorithm in :mod:`unroll.algorithms` minimises (or, with learned priors, mimics the
minimisation of)

.. math::

    \\min_x \\; f(x; y, A) + \\lambda\\, g(x)

where ``f`` is a data fidelity (:class:`unroll.optim.L2`, :class:`unroll.optim.L1`) and ``g`` a
prior (:class:`unroll.optim.PnP`, :class:`unroll.optim.Tikhonov`, ...). An algorithm is three
pure functions over a NamedTuple state and a parameter pytree ``params`` (a dict):

* ``state = init(y, physics, params)``
* ``state = step(state, y, physics, params_k)``
* ``x = output(state)``

Parameter keys read by the algorithms: ``"stepsize"`` (required), ``"lambda_reg"`` (default 1),
``"sigma_denoiser"`` (alias ``"g_param"``, used by learned priors), ``"beta"`` (relaxation,
default 1), ``"stepsize_dual"`` (PDHG) and ``"prior"`` (the prior's network weights, a dict
passed to :func:`torch.func.functional_call`). A hyperparameter leaf whose leading dimension
equals the number of iterations is per-iteration (``params_k`` holds its ``k``-th entry); any
other leaf is shared. The prior's weights (``params["prior"]``) are always shared.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from unroll import tree
from unroll.linear_solve import _host_any

PyTree = Any

PRIOR_KEY = "prior"
ALIASES = {"g_param": "sigma_denoiser"}
HYPERPARAMETERS = ("stepsize", "lambda_reg", "sigma_denoiser", "beta", "stepsize_dual")
POSITIVE = ("stepsize", "stepsize_dual", "sigma_denoiser")
"""Hyperparameters that must be > 0 (``lambda_reg`` must be >= 0; ``beta`` is free)."""


class Algorithm(NamedTuple):
    """An iterative algorithm as three pure functions (see the module docstring).

    Attributes:
        init: ``(y, physics, params) -> state``.
        step: ``(state, y, physics, params_k) -> state``; one iteration.
        output: ``state -> x``; the current estimate.
    """

    init: Callable[..., Any]
    step: Callable[..., Any]
    output: Callable[[Any], torch.Tensor]


class RunInfo(NamedTuple):
    """Diagnostics of :func:`run`.

    Attributes:
        num_iter: iterations performed (0-dim tensor).
        residual: per-sample relative change of the state ``‖s_k − s_{k−1}‖ / ‖s_{k−1}‖`` at the
            end, ``(B,)``.
        converged: per-sample ``residual <= tol`` (all False when ``tol`` is None), ``(B,)``.
        residual_trace: ``(num_iter, B)`` residuals when ``trace=True``, else None.
        cost_trace: ``(num_iter, B)`` values of ``cost`` when ``trace=True`` and a ``cost`` is
            given, else None.
    """

    num_iter: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    residual_trace: torch.Tensor | None
    cost_trace: torch.Tensor | None


# --------------------------------------------------------------------------- parameters
def canonical(params: dict) -> dict:
    """Rename aliases (``g_param`` → ``sigma_denoiser``) in a parameter dict (a new dict)."""
    if not isinstance(params, dict):
        raise TypeError(
            f"unroll.algorithms: params must be a dict such as {{'stepsize': 1.0}}, got "
            f"{type(params).__name__}."
        )
    out = {}
    for key, value in params.items():
        name = ALIASES.get(key, key)
        if name in out:
            raise ValueError(
                "unroll.algorithms: both 'g_param' and its alias 'sigma_denoiser' were given; "
                "pass one."
            )
        out[name] = value
    return out


def get(params: dict, name: str, default: Any = None) -> Any:
    """``params[name]`` (through aliases), ``default`` when absent; raises when required."""
    for key in (name, *[a for a, c in ALIASES.items() if c == name]):
        if key in params:
            return params[key]
    if default is None:
        raise ValueError(
            f"unroll.algorithms: parameter '{name}' is required; add it to params "
            f"(e.g. params['{name}'] = 1.0)."
        )
    return default


def _out_of_range(value: Any, strict: bool, tensors: bool) -> bool:
    """Whether a number / list / real tensor has an entry ``<= 0`` (strict) or ``< 0`` (NaN
    counts as out of range). Tensors are read on the host only when ``tensors``; a check
    that cannot run on the host (e.g. under some ``torch.func`` transforms) is skipped."""
    if isinstance(value, torch.Tensor):
        if not tensors or value.is_complex():
            return False
        ok = value.detach() > 0 if strict else value.detach() >= 0
        try:
            return _host_any(~ok)
        except RuntimeError:
            return False
    if isinstance(value, (list, tuple)):
        return any(_out_of_range(v, strict, tensors) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return not (value > 0 if strict else value >= 0)
    return False


def check_hyperparameters(api: str, params: dict, *, tensors: bool = True) -> None:
    """Raise a ValueError naming ``api`` when ``stepsize`` / ``stepsize_dual`` /
    ``sigma_denoiser`` is not > 0 or ``lambda_reg`` is negative (numbers, lists, and, when
    ``tensors``, tensors: a one-time host read, for construction time)."""
    for key, value in params.items():
        name = ALIASES.get(key, key)
        if name in POSITIVE and _out_of_range(value, True, tensors):
            raise ValueError(
                f"{api}: {key} must be > 0 (every entry), got {value!r}; pass a positive "
                f"value, e.g. {key}=1.0."
            )
        if name == "lambda_reg" and _out_of_range(value, False, tensors):
            raise ValueError(
                f"{api}: lambda_reg must be >= 0 (every entry), got {value!r}; pass a "
                "non-negative regularisation weight."
            )


def is_per_iteration(leaf: Any, num_iter: int) -> bool:
    """True when ``leaf`` is a tensor whose leading dimension equals ``num_iter``."""
    return isinstance(leaf, torch.Tensor) and leaf.dim() >= 1 and leaf.shape[0] == num_iter


def params_at(params: dict, k: int, num_iter: int) -> dict:
    """The parameters of iteration ``k``: per-iteration leaves indexed, shared leaves kept.

    Args:
        params: the parameter dict (hyperparameters and, under ``"prior"``, network weights).
        k: iteration index, ``0 <= k < num_iter``.
        num_iter: number of iterations (defines which leaves are per-iteration).

    Returns:
        A dict of the same keys; the ``"prior"`` entry is passed through unchanged.
    """
    out = {}
    for key, value in params.items():
        if key == PRIOR_KEY:
            out[key] = value
        else:
            out[key] = tree.map(lambda x: x[k] if is_per_iteration(x, num_iter) else x, value)
    return out


def has_per_iteration(params: dict, num_iter: int) -> bool:
    """Whether any hyperparameter (outside ``"prior"``) is per-iteration."""
    return any(
        is_per_iteration(x, num_iter)
        for key, value in params.items()
        if key != PRIOR_KEY
        for x in tree.leaves(value)
    )


# --------------------------------------------------------------------------- runner
def _try_bool(t: torch.Tensor) -> bool | None:
    """``bool(t)``, or None under ``torch.func.vmap`` (data-dependent control flow)."""
    try:
        return bool(t)
    except RuntimeError:
        return None


def _check_run_args(max_iter: int, tol: float | None, check_every: int) -> None:
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"unroll.algorithms.run: max_iter must be an int >= 1, got {max_iter!r}.")
    if tol is not None and not tol > 0:
        raise ValueError(f"unroll.algorithms.run: tol must be positive or None, got {tol!r}.")
    if not isinstance(check_every, int) or check_every < 1:
        raise ValueError(
            f"unroll.algorithms.run: check_every must be an int >= 1, got {check_every!r}."
        )


def run(
    algorithm: Algorithm,
    y: torch.Tensor,
    physics: Any,
    params: dict,
    max_iter: int,
    *,
    tol: float | None = None,
    check_every: int = 10,
    trace: bool = False,
    cost: Callable[[torch.Tensor, torch.Tensor, Any, dict], torch.Tensor] | None = None,
    init: Any = None,
) -> tuple[torch.Tensor, RunInfo]:
    """Run ``algorithm`` for ``max_iter`` iterations, with optional early stopping and traces.

    Iterates ``state_{k+1} = step(state_k, y, physics, params_k)`` from
    ``state_0 = init(y, physics, params_0)``. With ``tol``, a sample whose relative change
    ``‖s_{k+1} − s_k‖ / ‖s_k‖`` of the state (all its iterates) falls to ``tol`` or below
    freezes (per-sample convergence), and
    the loop stops once every sample has converged; the test synchronises with the device only
    every ``check_every`` iterations, and never under ``torch.func.vmap`` (which then runs to
    ``max_iter`` with the same masked updates).

    Args:
        algorithm: an :class:`Algorithm`.
        y: measurements, leading dimension = batch.
        physics: the forward operator.
        params: parameter dict; leaves with leading dimension ``max_iter`` are per-iteration.
        max_iter: number of iterations (>= 1).
        tol: relative-change tolerance for early stopping, or None (run ``max_iter``).
        check_every: iterations between two convergence checks on the host.
        trace: record per-iteration residuals (and ``cost``) in the returned info.
        cost: optional ``(x, y, physics, params_k) -> (B,)`` objective, traced when ``trace``.
        init: optional initial state, replacing ``algorithm.init``.

    Returns:
        ``(x, RunInfo)`` with ``x = output(state)``.

    Example:
        >>> import torch
        >>> from unroll.algorithms import pgd, run
        >>> from unroll.optim import L2, L1Prior
        >>> from unroll.physics import Denoising
        >>> y = torch.rand(2, 1, 8, 8)
        >>> x, info = run(pgd(L2(), L1Prior()), y, Denoising(), {"stepsize": 1.0}, 100, tol=1e-6)
        >>> bool(info.converged.all()), int(info.num_iter) < 100
        (True, True)
    """
    _check_run_args(max_iter, tol, check_every)
    params = canonical(params)
    check_hyperparameters("unroll.algorithms.run", params, tensors=False)
    state = algorithm.init(y, physics, params_at(params, 0, max_iter)) if init is None else init
    x = algorithm.output(state)
    if x.dim() == 0:
        raise ValueError("unroll.algorithms.run: the estimate needs a leading batch dimension.")
    batch = x.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=x.device)
    residual = torch.full((batch,), float("inf"), dtype=x.real.dtype, device=x.device)
    residuals, costs = [], []
    k = 0
    while k < max_iter:
        p_k = params_at(params, k, max_iter)
        new_state = algorithm.step(state, y, physics, p_k)
        new_x = algorithm.output(new_state)
        if tol is not None or trace:
            residual = _relative_change(new_state, state)
        if tol is not None:
            residual = torch.where(done, torch.zeros_like(residual), residual)
            new_state = tree.batch_where(done, state, new_state)
            new_x = algorithm.output(new_state)
            done = done | (residual <= tol)
        state, x = new_state, new_x
        k += 1
        if trace:
            residuals.append(residual)
            if cost is not None:
                costs.append(cost(x, y, physics, p_k))
        if tol is not None and k % check_every == 0 and _try_bool(done.all()):
            break
    info = RunInfo(
        num_iter=torch.tensor(k),
        residual=residual,
        converged=done if tol is not None else torch.zeros_like(done),
        residual_trace=torch.stack(residuals) if trace else None,
        cost_trace=torch.stack(costs) if trace and cost is not None else None,
    )
    return x, info


def _relative_change(new: Any, old: Any) -> torch.Tensor:
    """Per-sample ``‖s_new − s_old‖ / ‖s_old‖`` over the state's array leaves (``dim >= 2``;
    per-sample scalars such as FISTA's momentum ``t`` are not iterates and are left out)."""
    new = [t for t in tree.leaves(new) if t.dim() >= 2]
    old = [t for t in tree.leaves(old) if t.dim() >= 2]
    diff = tree.batch_norm(tree.sub(new, old))
    scale = tree.batch_norm(old)
    return diff / torch.where(scale > 0, scale, torch.ones_like(scale))
