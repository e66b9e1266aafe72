"""Iterative refinement of an inexact inner linear solver (JAXopt's
``solve_iterative_refinement``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from unroll import tree
from unroll._failure import (
    CONVERGED,
    NON_FINITE,
)
from unroll._typing import MatVec, PyTree
from unroll.linear_solve._common import (
    _check_finite,
    _Dots,
    _finish,
    _info,
    _Loop,
    _Operator,
    _Options,
    _setup,
    _threshold_sq,
)
from unroll.linear_solve._krylov import solve_gmres


# =========================================================================== iterative refinement
class _RefineState(NamedTuple):
    """Iterative refinement: iterate, residual ``b − (A+ρI)x``, ``‖r‖²``, active mask, failure
    code and (when asked for) refinement steps per system."""

    x: list[torch.Tensor]
    r: list[torch.Tensor]
    rs: torch.Tensor
    active: torch.Tensor
    failed: torch.Tensor
    count: torch.Tensor | None


def _default_inner(matvec: MatVec, b: PyTree, **options: Any) -> PyTree:
    """The default inner solve of :func:`solve_iterative_refinement`: GMRES to ``rtol=1e-6``,
    its shortfalls left to the refinement (which reports its own)."""
    return solve_gmres(matvec, b, rtol=1e-6, on_failure="ignore", **options)


def solve_iterative_refinement(
    matvec: MatVec,
    b: PyTree,
    *,
    init: PyTree | None = None,
    ridge: float | torch.Tensor | None = None,
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    batched: bool = False,
    return_info: bool = False,
    on_failure: str = "warn",
    solve: Callable[..., PyTree] | None = None,
    matvec_bar: MatVec | None = None,
    **options: Any,
) -> PyTree:
    r"""Iterative refinement of an inexact inner solver (JAXopt's
    ``solve_iterative_refinement``).

    Solves :math:`(A + \rho I)x = b` by correcting an approximate solver: from
    :math:`x_0` (``init``, default 0) and :math:`r_0 = b - (A + \rho I)x_0` it iterates

    .. math::  \bar A\,\delta_t \approx r_{t-1}\ \ (\texttt{solve}),\qquad
               x_t = x_{t-1} + \delta_t,\qquad r_t = b - (A + \rho I)\,x_t,

    with :math:`\bar A = A + \rho I` (or ``matvec_bar`` :math:`+ \rho I`, a cheaper or better
    conditioned approximation of ``A``). If the inner solve reduces the error by a factor
    :math:`c < 1` each time, the residual falls like :math:`c^t`, so a sloppy (low-precision,
    few-iteration) inner solver still reaches a tight tolerance: the true residual is what is
    tested. ``maxiter`` counts refinement steps (default 10, as JAXopt).

    Args:
        matvec: ``x ↦ A x`` on pytrees shaped like ``b``.
        b: right-hand side pytree.
        init, ridge, rtol, atol, batched, return_info, on_failure: as :func:`solve_cg`
            (``rtol``/``atol`` on the true residual).
        maxiter: refinement steps (default 10).
        solve: the inner solver ``solve(matvec, r) -> δ`` (called with ``batched=True`` when
            ``batched``); default GMRES to ``rtol=1e-6`` with its failures left to the
            refinement. Configure with ``functools.partial``.
        matvec_bar: optional approximation :math:`\bar A` of ``A`` used by the inner solves.

    Returns:
        ``x`` or ``(x, SolveInfo)`` (``num_iter``: refinement steps).

    Example:
        >>> import functools, torch
        >>> from unroll.linear_solve import solve_cg, solve_iterative_refinement
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 2.0], dtype=torch.float64)
        >>> sloppy = functools.partial(solve_cg, rtol=1e-2, on_failure="ignore")
        >>> x = solve_iterative_refinement(lambda v: A @ v, b, solve=sloppy, rtol=1e-12)
        >>> torch.allclose(A @ x, b, rtol=0, atol=1e-11)
        True

    References:
        Wilkinson, *Rounding Errors in Algebraic Processes*, 1963; Moler, "Iterative
        refinement in floating point", J. ACM 14(2), 1967.
    """
    name = "solve_iterative_refinement"
    inner = _default_inner if solve is None else solve
    if not callable(inner):
        raise TypeError(f"{name}: solve must be a linear solver solve(matvec, b) -> x.")
    if matvec_bar is not None and not callable(matvec_bar):
        raise TypeError(f"{name}: matvec_bar must be callable x -> Ā x or None.")
    opts = _Options(
        init,
        ridge,
        rtol,
        atol,
        10 if maxiter is None else maxiter,
        batched,
        return_info,
        1,
        on_failure,
    )
    op, x, dots, loop, thresh_sq, r = _refine_start(name, matvec, b, opts, options)
    bar = op if matvec_bar is None else _Operator(name, matvec_bar, b, ridge)
    extra = {"batched": True} if batched else {}

    def inner_matvec(t: PyTree) -> PyTree:
        return tree.unflatten(op.spec, bar(tree.leaves(t)))

    rs = dots.sq(r)
    fin0 = torch.isfinite(rs)
    state = _RefineState(
        x,
        r,
        rs,
        fin0 & (rs > thresh_sq),
        torch.where(fin0, CONVERGED, NON_FINITE),
        torch.zeros_like(rs, dtype=torch.long) if return_info else None,
    )

    def step(s: _RefineState) -> _RefineState:
        delta = tree.leaves(inner(inner_matvec, tree.unflatten(op.spec, s.r), **extra))
        act = s.active
        x_new = [
            a + torch.where(dots.mask(act, d), d, torch.zeros_like(d)) for a, d in zip(s.x, delta)
        ]
        r_new = [bb - ax for bb, ax in zip(op.b_leaves, op(x_new))]
        rs_new = dots.sq(r_new)
        ok = act & torch.isfinite(rs_new)  # NaN/Inf: keep the last finite iterate
        keep = [dots.mask(ok, t) for t in r_new]
        rs = torch.where(ok, rs_new, s.rs)
        return _RefineState(
            [torch.where(k, a, o) for k, a, o in zip(keep, x_new, s.x)],
            [torch.where(k, a, o) for k, a, o in zip(keep, r_new, s.r)],
            rs,
            ok & (rs > thresh_sq),
            torch.where(act & ~ok, NON_FINITE, s.failed),
            None if s.count is None else s.count + act,
        )

    state, k = loop.run(step, state)
    count = state.count if state.count is not None else k
    info = _info(count, state.rs, thresh_sq, opts.fixed, state.failed)
    return _finish(name, op.spec, state.x, info, opts, loop.maxiter)


def _refine_start(name: str, matvec: MatVec, b: PyTree, opts: _Options, options: dict[str, Any]):
    op, x, maxiter = _setup(name, matvec, b, opts, False, options)
    dots = _Dots(opts.batched, op.b_leaves)
    _check_finite(name, op.b_leaves, x if opts.init is not None else [])
    r = op.b_leaves if opts.init is None else [bb - ax for bb, ax in zip(op.b_leaves, op(x))]
    loop = _Loop(op.b_leaves[0], maxiter, 1)
    return op, x, dots, loop, _threshold_sq(dots, op.b_leaves, opts.rtol, opts.atol), r
