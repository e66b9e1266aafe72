"""LSQR: least squares on a (possibly non-square) operator by Golub–Kahan
bidiagonalisation."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from unroll import tree
from unroll._failure import (
    CONVERGED,
    NON_FINITE,
)
from unroll._typing import MatVec, PyTree
from unroll.linear_solve._common import (
    MAXITER_CAP,
    _Dots,
    _finish,
    _info,
    _Loop,
    _normal_setup,
    _Options,
    _safe_div,
    _safe_sqrt,
    _threshold_sq,
)


# =========================================================================== LSQR
class _LsqrState(NamedTuple):
    """LSQR: iterate, the bidiagonalisation vectors ``u`` (data, then damping part) and
    ``v``, the direction ``w``, the scalars α, ρ̄, φ̄, the normal-equation residual estimate
    squared, active mask, failure code and (when asked for) iterations per system."""

    x: list[torch.Tensor]
    u: list[torch.Tensor]
    v: list[torch.Tensor]
    w: list[torch.Tensor]
    alfa: torch.Tensor
    rhobar: torch.Tensor
    phibar: torch.Tensor
    rs: torch.Tensor
    active: torch.Tensor
    failed: torch.Tensor
    count: torch.Tensor | None


def solve_lsqr(
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
    check_every: int | None = None,
    on_failure: str = "warn",
    rmatvec: MatVec | None = None,
    **options: Any,
) -> PyTree:
    r"""LSQR: least squares on a (possibly non-square) operator directly.

    Solves :math:`\min_x \|Ax - b\|^2 + \rho\|x\|^2`, i.e. the normal equations
    :math:`(A^\top A + \rho I)x = A^\top b` (as :func:`solve_normal_cg`), by Golub–Kahan
    bidiagonalisation of the damped operator :math:`\bar A = [A;\ \sqrt\rho\, I]` instead of
    CG on :math:`A^\top A`: mathematically the same iterates, numerically more reliable for
    ill-conditioned ``A`` (it never forms :math:`A^\top A`). ``Aᵀ`` comes from
    ``torch.func.vjp`` of ``matvec`` (which must be linear). The tolerances apply to the
    normal equations' residual :math:`\|A^\top(b - Ax) - \rho x\| \le \max(\texttt{rtol}\,
    \|A^\top b\|, \texttt{atol})`, estimated by the recurrences.

    Args:
        matvec: ``x ↦ A x``; ``x`` may have a different shape/structure from ``b``.
        b: right-hand side in the range space of ``A``.
        init: initial guess in the domain of ``A``; required when ``A`` is not square (it
            gives the shape of ``x``; else :class:`ShapeMismatchError`); default zeros shaped
            like ``b``.
        ridge: ``ρ ≥ 0`` (LSQR's ``damp²``).
        rtol, atol, maxiter, batched, return_info, check_every, on_failure: as
            :func:`solve_cg`.
        rmatvec: ``y ↦ Aᵀ y``, the exact adjoint, when you have one (e.g. a physics'
            ``A_adjoint``); default: from ``torch.func.vjp`` of ``matvec``.

    Returns:
        ``x`` (shaped like ``init``, or ``b``), or ``(x, SolveInfo)``.

    Example:
        >>> import torch
        >>> from unroll.linear_solve import solve_lsqr
        >>> A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
        >>> b = torch.ones(3, dtype=torch.float64)
        >>> x = solve_lsqr(lambda v: A @ v, b, init=torch.zeros(2, dtype=torch.float64),
        ...                rtol=1e-12)
        >>> torch.allclose(x, torch.linalg.lstsq(A, b).solution)
        True

    References:
        Paige & Saunders, "LSQR: an algorithm for sparse linear equations and sparse least
        squares", ACM TOMS 8(1), 1982.
    """
    name = "solve_lsqr"
    opts = _Options(init, ridge, rtol, atol, maxiter, batched, return_info, check_every, on_failure)
    if rmatvec is not None and not callable(rmatvec):
        raise TypeError(f"{name}: rmatvec must be callable y -> Aᵀ y or None.")
    rmatvec, example = _normal_setup(name, matvec, b, opts, options, rmatvec)
    x_leaves, x_spec = tree.flatten(example if init is None else init)
    b_leaves = tree.leaves(b)
    if ridge is not None and not isinstance(ridge, torch.Tensor) and ridge < 0:
        raise ValueError(f"{name}: ridge must be >= 0, got {ridge!r}.")
    sd = (
        None
        if ridge is None
        else (ridge**0.5 if isinstance(ridge, torch.Tensor) else math.sqrt(ridge))
    )
    nb = len(b_leaves)

    def a_op(v: list[torch.Tensor]) -> list[torch.Tensor]:  # Ā v = (A v, √ρ v)
        out = tree.leaves(matvec(tree.unflatten(x_spec, v)))
        return out if sd is None else out + [sd * t for t in v]

    def at_op(u: list[torch.Tensor]) -> list[torch.Tensor]:  # Āᵀ (u, u_d) = Aᵀu + √ρ u_d
        out = tree.leaves(rmatvec(tree.unflatten(tree.structure(b), u[:nb])))
        return out if sd is None else [o + sd * d for o, d in zip(out, u[nb:])]

    dots = _Dots(batched, b_leaves)
    xdots = _Dots(batched, x_leaves)
    n = sum(t[0].numel() if batched else t.numel() for t in x_leaves)
    loop = _Loop(
        b_leaves[0],
        maxiter if maxiter is not None else min(10 * max(n, 1), MAXITER_CAP),
        check_every,
    )
    x0 = [torch.zeros_like(t) for t in x_leaves] if init is None else list(x_leaves)
    if init is None:
        u = list(b_leaves) + ([] if sd is None else [torch.zeros_like(t) for t in x_leaves])
    else:
        u = [bb - ax for bb, ax in zip(b_leaves, a_op(x0)[:nb])]
        u = u + ([] if sd is None else [-sd * t for t in x0])
    atb = tree.leaves(rmatvec(b))
    thresh_sq = _threshold_sq(xdots, atb, rtol, atol)
    beta = _safe_sqrt(dots.sq(u[:nb]) + (xdots.sq(u[nb:]) if sd is not None else 0))
    u = _scale_leaves(dots, xdots, nb, u, _safe_div(torch.ones_like(beta), beta))
    v = at_op(u)
    alfa = _safe_sqrt(xdots.sq(v))
    v = [t * xdots.expand(_safe_div(torch.ones_like(alfa), alfa), t) for t in v]
    rs = (alfa * beta).square()
    fin0 = torch.isfinite(rs)
    state = _LsqrState(
        x0,
        u,
        v,
        v,
        alfa,
        alfa,
        beta,
        rs,
        fin0 & (rs > thresh_sq),
        torch.where(fin0, CONVERGED, NON_FINITE),
        torch.zeros_like(rs, dtype=torch.long) if return_info else None,
    )

    def step(s: _LsqrState) -> _LsqrState:
        act = s.active
        au = a_op(s.v)
        u = [
            a - t * (dots if i < nb else xdots).expand(s.alfa, t)
            for i, (a, t) in enumerate(zip(au, s.u))
        ]
        beta = _safe_sqrt(dots.sq(u[:nb]) + (xdots.sq(u[nb:]) if sd is not None else 0))
        u = _scale_leaves(dots, xdots, nb, u, _safe_div(torch.ones_like(beta), beta))
        v = xdots.axpy(beta, s.v, at_op(u), sign=-1)
        alfa = _safe_sqrt(xdots.sq(v))
        v = [t * xdots.expand(_safe_div(torch.ones_like(alfa), alfa), t) for t in v]
        rho = _safe_sqrt(s.rhobar.square() + beta.square())
        cs, sn = _safe_div(s.rhobar, rho), _safe_div(beta, rho)
        theta = sn * alfa
        phi = cs * s.phibar
        phibar = sn * s.phibar
        x_new = xdots.axpy(_safe_div(phi, rho), s.w, s.x)
        w = xdots.axpy(_safe_div(theta, rho), s.w, v, sign=-1)
        rs = (phibar * alfa * cs).square()  # ‖Āᵀ r̄‖² = ‖Aᵀ(b − Ax) − ρx‖²
        fin = torch.isfinite(rs) & torch.isfinite(phi)
        ok = act & fin
        mx = [xdots.mask(ok, t) for t in s.x]
        mu = [(dots if i < nb else xdots).mask(ok, t) for i, t in enumerate(s.u)]
        rs = torch.where(ok, rs, s.rs)
        return _LsqrState(
            [torch.where(k, a, o) for k, a, o in zip(mx, x_new, s.x)],
            [torch.where(k, a, o) for k, a, o in zip(mu, u, s.u)],
            [torch.where(k, a, o) for k, a, o in zip(mx, v, s.v)],
            [torch.where(k, a, o) for k, a, o in zip(mx, w, s.w)],
            torch.where(ok, alfa, s.alfa),
            torch.where(ok, -cs * alfa, s.rhobar),
            torch.where(ok, phibar, s.phibar),
            rs,
            ok & (rs > thresh_sq),
            torch.where(act & ~fin, NON_FINITE, s.failed),
            None if s.count is None else s.count + act,
        )

    state, k = loop.run(step, state)
    count = state.count if state.count is not None else k
    info = _info(count, state.rs, thresh_sq, opts.fixed, state.failed)
    return _finish(name, x_spec, state.x, info, opts, loop.maxiter)


def _scale_leaves(
    dots: _Dots, xdots: _Dots, nb: int, leaves: list[torch.Tensor], s: torch.Tensor
) -> list[torch.Tensor]:
    """``s · leaves`` with ``s`` one number per problem (data leaves, then damping leaves)."""
    return [t * (dots if i < nb else xdots).expand(s, t) for i, t in enumerate(leaves)]
