r"""One failure policy for every iterative solve.

A solve (Krylov, dense, fixed point, Anderson, least squares, DEQ forward / backward,
``custom_root``'s backward) that stops short of its tolerance, breaks down or meets a
non-finite value reports it through :func:`report`, according to its ``on_failure`` option:

* ``"warn"`` (default): a :class:`ConvergenceWarning` naming the solve, the cause, the
  residual and the remedy, shown **once per cause and call site** under Python's default
  warning filters, at the user's line (the first frame outside unroll and torch), not inside
  the library. Repeats are counted (:func:`suppressed_counts`) instead of shown.
* ``"raise"``: a :class:`ConvergenceError` with the same message (like Lineax's ``throw=True``).
* ``"ignore"``: nothing; the caller reads the returned diagnostics.

Failure causes (``SolveInfo.reason`` holds one code per problem):

==========  ====  ======================================================================
reason      code  meaning
==========  ====  ======================================================================
converged   0     the tolerance was met
max_iter    1     the iteration cap was reached first
breakdown   2     a zero or negative denominator (e.g. ``pᵀAp ≤ 0`` in CG: not SPD)
non_finite  3     NaN or Inf met; the last finite iterate is returned
diverged    4     the residual grew far beyond its start; the best iterate is returned
==========  ====  ======================================================================

The de-duplication keeps no tensors: only (solve, cause, file, line) keys, reset whenever the
warning filters change (``warnings.catch_warnings``, ``pytest.warns``, ``simplefilter``).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from types import FrameType
from typing import Any, NamedTuple

import torch

from unroll._host import host_any, host_values

__all__ = [
    "ConvergenceWarning",
    "ConvergenceError",
    "SolveInfo",
    "ON_FAILURE",
    "REASONS",
    "check_on_failure",
    "report",
    "report_failure",
    "report_reasons",
    "report_change",
    "ON_FAILURE_HINT",
    "suppressed_counts",
    "reset_suppressed",
]

ON_FAILURE = ("warn", "raise", "ignore")
REASONS = ("converged", "max_iter", "breakdown", "non_finite", "diverged")
CONVERGED, MAX_ITER, BREAKDOWN, NON_FINITE, DIVERGED = range(5)


class ConvergenceWarning(UserWarning):
    """An iterative solve (linear system, fixed point, backward pass) stopped before reaching
    its tolerance, broke down or met NaN/Inf; results derived from it (e.g. gradients) may be
    inaccurate. Shown once per cause and call site; turn it into an error with
    ``on_failure="raise"`` or ``warnings.simplefilter("error", ConvergenceWarning)``."""


class ConvergenceError(RuntimeError):
    """Raised instead of a :class:`ConvergenceWarning` by a solve called with
    ``on_failure="raise"``.

    Attributes:
        solve: the name of the solve (e.g. ``"solve_cg"``, ``"deq (backward)"``).
        reason: one of :data:`REASONS`.
    """

    def __init__(self, message: str, solve: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.solve = solve
        self.reason = reason


class SolveInfo(NamedTuple):
    """Diagnostics of a linear solve (tensors; per sample when ``batched``).

    Attributes:
        num_iter: iterations each system used until it converged (or stopped).
        residual_norm: ``‖b − (A+ρI)x‖`` at return (the recursive residual for CG/BiCGStab).
        converged: whether ``residual_norm ≤ max(rtol·‖b‖, atol)``; always True with
            ``rtol = atol = 0`` (a fixed number of iterations was asked for, no tolerance)
            unless the solve broke down or met NaN/Inf.
        reason: why each system stopped, a code of :data:`unroll.linear_solve.REASONS`
            (0 converged, 1 max_iter, 2 breakdown, 3 non_finite, 4 diverged).
    """

    num_iter: torch.Tensor
    residual_norm: torch.Tensor
    converged: torch.Tensor
    reason: torch.Tensor


def summary(info: SolveInfo) -> str:
    """One line for ``verbose=True``: whether every system converged, the most iterations
    and the largest final residual over the batch (one host read each)."""
    state = "converged" if bool(info.converged.all()) else "did not converge"
    return (
        f"{state} after {int(info.num_iter.max())} iteration(s), residual "
        f"{float(info.residual_norm.max()):.2e}"
    )


def check_on_failure(api: str, on_failure: Any) -> str:
    """Validate an ``on_failure`` option and return it."""
    if on_failure not in ON_FAILURE:
        raise ValueError(
            f"{api}: on_failure must be one of {', '.join(map(repr, ON_FAILURE))}, got "
            f"{on_failure!r}."
        )
    return on_failure


def reason_name(code: int) -> str:
    return REASONS[code] if 0 <= code < len(REASONS) else f"code {code}"


# --------------------------------------------------------------------------- reporting
def report(api: str, reason: str, detail: str, remedy: str, on_failure: str) -> None:
    """Apply the failure policy to one failed solve.

    Args:
        api: the solve's name, as the user knows it (``"solve_cg"``, ``"deq (backward)"``).
        reason: one of :data:`REASONS` (not ``"converged"``).
        detail: what happened, with the residual (e.g. ``"stopped at maxiter=50 with
            residual 3.2e-02 > 1.0e-05"``).
        remedy: what to do about it.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"``.
    """
    if on_failure == "ignore":
        return
    message = f"{api}: {detail} [{reason}]. {remedy}"
    if on_failure == "raise":
        raise ConvergenceError(message, api, reason)
    _warn_once(message, (api, reason))


_LIB_DIRS = tuple(
    os.path.dirname(os.path.abspath(str(m.__file__))) + os.sep
    for m in (sys.modules[__name__.rsplit(".", 1)[0]], torch)
)
_STATE: dict[str, Any] = {"filters": None, "snapshot": (), "seen": {}}


def _user_frame() -> FrameType:
    """The innermost frame outside unroll and torch (the user's line), else the caller's."""
    caller = sys._getframe(1)
    frame: FrameType | None = caller
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_LIB_DIRS) and not name.startswith("<frozen"):
            return frame
        frame = frame.f_back
    return caller


def _action(message: str, category: type, module: str, lineno: int) -> str:
    """The action Python's warning filters choose (the lookup of ``warnings.warn``)."""
    for action, msg, cat, mod, ln in warnings.filters:
        if (
            (msg is None or msg.match(message))
            and issubclass(category, cat)
            and (mod is None or mod.match(module))
            and (ln == 0 or lineno == ln)
        ):
            return action
    return getattr(warnings, "defaultaction", "default")


def _seen() -> dict[tuple, int]:
    filters = warnings.filters
    if _STATE["filters"] is not filters or _STATE["snapshot"] != tuple(filters):
        _STATE.update(filters=filters, snapshot=tuple(filters), seen={})
    return _STATE["seen"]


def _warn_once(message: str, cause: tuple[str, str]) -> None:
    frame = _user_frame()
    filename, lineno = frame.f_code.co_filename, frame.f_lineno
    module = frame.f_globals.get("__name__", "<unknown>")
    action = _action(message, ConvergenceWarning, module, lineno)
    if action == "ignore":
        return
    if action in ("default", "module", "once"):
        seen = _seen()
        key = (*cause, filename, lineno) if action == "default" else cause
        if key in seen:
            seen[key] += 1
            return
        seen[key] = 0
    warnings.warn_explicit(
        message,
        ConvergenceWarning,
        filename,
        lineno,
        module=module,
        registry={},
        module_globals=frame.f_globals,
    )


def suppressed_counts() -> dict[tuple[str, str, str, int], int]:
    """Repeats of already-shown convergence warnings that were not shown again, keyed by
    ``(solve, reason, file, line)`` (since the warning filters last changed)."""
    return {k: n for k, n in _seen().items() if n}


def reset_suppressed() -> None:
    """Forget which warnings were shown (they will be shown again once)."""
    _STATE.update(filters=None, snapshot=(), seen={})


# --------------------------------------------------------------------------- linear solves
_REMEDY = (
    "Raise maxiter (or rtol/atol), or improve the conditioning (ridge=..., a better-scaled "
    "operator)"
)
_NON_FINITE_REMEDY = (
    "The last finite iterate is returned. Check the map / matvec and its inputs for NaN/Inf "
    "(e.g. a diverging computation upstream)"
)
ON_FAILURE_HINT = " Pass on_failure='raise' to make this an error, or 'ignore' to silence it."


def _severity(code: int) -> tuple:
    return (code == NON_FINITE, code == BREAKDOWN, code == DIVERGED, code)


def report_reasons(
    name: str,
    reason: torch.Tensor,
    residual: torch.Tensor,
    on_failure: str,
    *,
    limit: str,
    tolerance: str,
    remedy: str,
    breakdown: str = "",
    unit: str = "systems",
    start: torch.Tensor | None = None,
    measure: str = "residual",
) -> None:
    """Apply the failure policy to the most severe failure among the problems of a solve
    (non-finite > breakdown > diverged > max_iter), with its residual and the remedy: the one
    report behind every iterative solve of the library.

    Args:
        name: the solve, as the user knows it.
        reason: one code per problem (:data:`REASONS`).
        residual: the final residual per problem.
        on_failure: ``"warn"``, ``"raise"`` or ``"ignore"``.
        limit: where the cap stopped it (``"at maxiter=50"``, ``"after 3 iteration(s)"``).
        tolerance: what was not met (``"the tolerance (rtol=1e-05, atol=0)"``, ``"tol=1e-4"``).
        remedy: what to do about a cap or a divergence (non-finite values get their own).
        breakdown: what broke down (``"pᵀAp ≤ 0: the operator is not SPD"``).
        unit: what the problems of a batch are called in the message.
        start: the first residual per problem, quoted when it diverged.
        measure: what ``residual`` is, in the message (``"relative change"``).
    """
    if on_failure == "ignore":
        return
    codes = [int(c) for c in host_values(reason)]
    failed = [c for c in codes if c != CONVERGED]
    if not failed:
        return
    res = host_values(residual)
    first = host_values(start) if start is not None else [math.nan] * len(res)
    worst = max(failed, key=_severity)
    where = f" in {len(failed)} of {len(codes)} {unit}" if len(codes) > 1 else ""
    picks = [(r, r0) for r, r0, c in zip(res, first, codes) if c == worst and math.isfinite(r)]
    r, r0 = max(picks) if picks else (math.nan, math.nan)
    if worst == NON_FINITE:
        detail, remedy = f"met NaN or Inf{where}", _NON_FINITE_REMEDY
    elif worst == BREAKDOWN:
        detail = f"{breakdown or 'a zero denominator'}{where} (residual {r:.3e})"
    elif worst == DIVERGED:
        grew = f", from {r0:.3e}" if math.isfinite(r0) else ""
        detail = f"diverged{where} (residual {r:.3e}{grew}); the last good iterate is returned"
    else:
        detail = f"stopped {limit}{where} with {measure} {r:.3e} above {tolerance}"
    report(name, REASONS[worst], detail, remedy + "." + ON_FAILURE_HINT, on_failure)


def report_change(
    name: str, change: torch.Tensor, tol: float, on_failure: str, *, limit: str, remedy: str
) -> bool:
    """:func:`report_reasons` for an inner solve that stops on a relative change ``≤ tol``
    (TV prox, a prior's or data fidelity's inner gradient descent): whether every problem
    met it."""
    with torch.no_grad():
        finite = torch.isfinite(change)
        reason = torch.where(
            finite, (change > tol).long() * MAX_ITER, torch.full_like(change, NON_FINITE).long()
        )
    if not host_any(reason != CONVERGED):
        return True
    report_reasons(
        name,
        reason,
        change,
        on_failure,
        limit=limit,
        tolerance=f"tol={tol:g}",
        remedy=remedy,
        unit="samples",
        measure="relative change",
    )
    return False


def report_failure(
    name: str,
    info: SolveInfo,
    on_failure: str,
    breakdown: str = "",
    remedy: str = "",
    *,
    rtol: float | None = None,
    atol: float | None = None,
    maxiter: int | None = None,
) -> None:
    """:func:`report_reasons` for a linear solve's :class:`SolveInfo`."""
    if on_failure == "ignore":
        return
    if maxiter is not None:
        limit = f"at maxiter={maxiter}"
    else:
        limit = f"after {max(host_values(info.num_iter)):.0f} iteration(s)"
    tol = "the tolerance" + ("" if rtol is None else f" (rtol={rtol:g}, atol={atol or 0:g})")
    report_reasons(
        name,
        info.reason,
        info.residual_norm,
        on_failure,
        limit=limit,
        tolerance=tol,
        remedy=remedy or _REMEDY,
        breakdown=breakdown,
    )
