"""Krylov solvers of square systems: CG, CG on the normal equations, BiCGStab, GMRES,
MINRES."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from unroll._failure import (
    BREAKDOWN,
    CONVERGED,
    MAX_ITER,
    NON_FINITE,
    SolveInfo,
)
from unroll._host import host_any as _host_any
from unroll._host import in_vmap as _in_vmap
from unroll._typing import MatVec, PyTree
from unroll.linear_solve._common import (
    _Dots,
    _finish,
    _info,
    _normal_setup,
    _Operator,
    _Options,
    _safe_div,
    _safe_sqrt,
    _Start,
    _start,
)


# =========================================================================== CG
def solve_cg(
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
    **options: Any,
) -> PyTree:
    r"""Conjugate gradient for a symmetric (Hermitian) positive-definite system.

    Solves :math:`(A + \rho I)x = b` for SPD ``A`` given by ``matvec``.

    Args:
        matvec: ``x ↦ A x`` on pytrees shaped like ``b``; must be SPD (Hermitian PD if complex).
        b: right-hand side pytree.
        init: initial guess (default zeros).
        ridge: ``ρ ≥ 0`` added to the diagonal.
        rtol, atol: stop when ``‖r‖ ≤ max(rtol‖b‖, atol)`` (the recursive residual).
        maxiter: iteration cap (default ``min(10 n, MAXITER_CAP)``, ``n`` unknowns).
        batched: leading dimension of every leaf is a batch of independent systems.
        return_info: also return :class:`SolveInfo`.
        check_every: iterations between host-side convergence checks (default 1 on CPU, 8
            elsewhere). Results do not depend on it.
        on_failure: what to do when a system stops at ``maxiter`` above the tolerance, breaks
            down (``pᵀAp ≤ 0``: ``A`` is not SPD) or meets NaN/Inf (the last finite iterate is
            then returned): ``"warn"`` (a :class:`ConvergenceWarning`, once per cause and call
            site), ``"raise"`` (:class:`ConvergenceError`) or ``"ignore"``.

    Returns:
        ``x`` (a pytree like ``b``), or ``(x, SolveInfo)``.

    Example:
        >>> import torch
        >>> from unroll.linear_solve import solve_cg
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
        >>> solve_cg(lambda v: A @ v, torch.tensor([1.0, 2.0]), rtol=1e-8)
        tensor([0.0909, 0.6364])

    References:
        Hestenes & Stiefel, "Methods of conjugate gradients for solving linear systems", 1952.
    """
    opts = _Options(init, ridge, rtol, atol, maxiter, batched, return_info, check_every, on_failure)
    return _cg("solve_cg", matvec, b, opts, options)


_CG_BREAKDOWN = "pᵀAp ≤ 0: the operator is not symmetric positive definite"
_CG_REMEDY = (
    "The last iterate before the breakdown is returned. Use solve_gmres or "
    "solve_bicgstab for a non-symmetric or indefinite operator, solve_normal_cg for a "
    "singular one, or add ridge=..."
)


def _cg(name: str, matvec: MatVec, b: PyTree, opts: _Options, options: dict[str, Any]):
    st = _start(name, matvec, b, opts, False, options)
    # One system checked on the host every iteration runs unmasked; otherwise systems are
    # frozen by masks once converged (batched, inside vmap, or checked every k > 1 steps).
    if opts.batched or st.loop.check_every > 1 or _in_vmap():
        x, rs, count, failed = _cg_masked(st, opts.return_info, guarded=False)
        done = torch.isfinite(rs) if opts.fixed else rs <= st.thresh_sq
        if not _host_any(done.all()):  # rare: a system stopped short, broke down or met NaN
            # run again with per-step guards, which freeze a failing system at its last finite
            # iterate and say why; the common path pays nothing for them (matvec must be pure)
            x, rs, count, failed = _cg_masked(st, opts.return_info, guarded=True)
        info = _info(count, rs, st.thresh_sq, opts.fixed, failed)
    else:
        x, rs, count, code = _cg_single(st, opts.fixed)
        info = SolveInfo(
            torch.full_like(rs, count, dtype=torch.long),
            rs.sqrt(),
            torch.full_like(rs, code == CONVERGED, dtype=torch.bool),
            torch.full_like(rs, code, dtype=torch.long),
        )
        return _finish(
            name,
            st.op.spec,
            x,
            info,
            opts,
            st.loop.maxiter,
            _CG_BREAKDOWN,
            _CG_REMEDY,
            converged=code == CONVERGED,
        )
    return _finish(name, st.op.spec, x, info, opts, st.loop.maxiter, _CG_BREAKDOWN, _CG_REMEDY)


def _cg_single(st: _Start, fixed: bool):
    """CG on one system, its convergence read on the host every iteration (``‖r‖²`` and
    ``pᵀAp``, so a breakdown or NaN stops the loop at the last finite iterate).
    Returns ``(x, ‖r‖², iterations, reason code)``."""
    op, x, r, dots, loop, thresh_sq = st
    one = dots.single
    rs = dots.sq(r)
    thresh, rs_v = torch.stack((thresh_sq.detach(), rs.detach())).tolist()
    failed = CONVERGED if math.isfinite(rs_v) else NON_FINITE
    p, k = r, 0
    while rs_v > thresh and failed == CONVERGED and k < loop.maxiter:
        ap = op(p)
        pap = dots.rdot(p, ap)
        alpha = rs / pap
        if one:  # broadcast once for both updates
            alpha = dots.expand(alpha, ap[0])
        x_new = dots.axpy(alpha, p, x, expanded=one)
        r = dots.axpy(alpha, ap, r, sign=-1, expanded=one)
        rs_new = dots.sq(r)
        pap_v, rs_new_v = pap.item(), rs_new.item()  # two reads, no stacking op
        k += 1
        if not (0 < pap_v < math.inf):
            failed = BREAKDOWN if math.isfinite(pap_v) else NON_FINITE
            break
        if not math.isfinite(rs_new_v):
            failed = NON_FINITE
            break
        x = x_new
        p = dots.axpy(rs_new / rs, p, r)
        rs, rs_v = rs_new, rs_new_v
    if failed == CONVERGED and rs_v > thresh and not fixed:
        failed = MAX_ITER
    return x, rs, k, failed


class _CGState(NamedTuple):
    """Masked CG: iterate, residual, direction, ``‖r‖²``, still-active mask, whether NaN/Inf
    was met, and (when asked for) iterations per system."""

    x: list[torch.Tensor]
    r: list[torch.Tensor]
    p: list[torch.Tensor]
    rs: torch.Tensor
    active: torch.Tensor
    nonfin: torch.Tensor
    count: torch.Tensor | None


def _cg_masked(st: _Start, count_iters: bool, guarded: bool):
    """CG on several systems (or under ``vmap``), converged systems frozen by masks.

    ``guarded``: a system that breaks down (``pᵀAp ≤ 0``) or meets NaN/Inf is frozen too, at
    its last finite iterate (its step is zeroed and its residual kept); such a system ends
    inactive but above its tolerance, which ``failed`` labels (non-finite if NaN/Inf was met).
    Unguarded, the step is plain masked CG (a NaN system drops out with a NaN residual).
    """
    op, x, r, dots, loop, thresh_sq = st
    tiny = torch.finfo(thresh_sq.dtype).tiny
    one = dots.single
    rs = dots.sq(r)
    count = torch.zeros_like(rs, dtype=torch.long) if count_iters else None
    state = _CGState(x, r, r, rs, rs > thresh_sq, ~torch.isfinite(rs), count)

    def step(s: _CGState) -> _CGState:
        ap = op(s.p)
        pap = dots.rdot(s.p, ap)
        ok = s.active & (pap > 0) if guarded else s.active  # frozen systems may have p = 0
        alpha = torch.where(ok, s.rs / (pap + tiny), 0)
        if one:  # broadcast once for both updates
            alpha = dots.expand(alpha, ap[0])
        x = dots.axpy(alpha, s.p, s.x, expanded=one)  # unchanged where alpha = 0
        r = dots.axpy(alpha, ap, s.r, sign=-1, expanded=one)
        rs_new = dots.sq(r)
        nonfin = s.nonfin
        if guarded:  # keep the last finite residual of a failing system
            fin = torch.isfinite(rs_new)
            nonfin = nonfin | ~fin
            ok = ok & fin
            r = [torch.where(dots.mask(ok, a), a, o) for a, o in zip(r, s.r)]
        rs_new = torch.where(ok, rs_new, s.rs)
        p = dots.axpy(rs_new / (s.rs + tiny), s.p, r)
        count = None if s.count is None else s.count + s.active
        # frozen systems keep rs <= thresh; a failed one drops out above it
        active = ok & (rs_new > thresh_sq) if guarded else rs_new > thresh_sq
        return _CGState(x, r, p, rs_new, active, nonfin, count)

    state, k = loop.run(step, state)
    stopped = ~state.active & ~(state.rs <= thresh_sq)
    failed = torch.where(stopped, torch.where(state.nonfin, NON_FINITE, BREAKDOWN), 0)
    return state.x, state.rs, state.count if state.count is not None else k, failed


# =========================================================================== normal CG
def solve_normal_cg(
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
    **options: Any,
) -> PyTree:
    r"""CG on the normal equations, for any (also non-square) linear operator.

    Solves :math:`(A^\top A + \rho I)x = A^\top b`, i.e. the least-squares problem
    :math:`\min_x \|Ax - b\|^2 + \rho\|x\|^2`. ``Aᵀ`` is obtained from ``matvec`` with
    ``torch.func.vjp`` (``matvec`` must be linear). The tolerances apply to the normal
    equations' residual.

    Args:
        matvec: ``x ↦ A x``; ``x`` may have a different shape/structure from ``b``.
        b: right-hand side in the range space of ``A``.
        init: initial guess in the domain of ``A``. Required when ``A`` is not square (it
            gives the shape of ``x``); without it a non-square operator raises
            :class:`ShapeMismatchError` (a ``ValueError`` that is also a ``TypeError``, the
            class JAXopt raises there); default zeros shaped like ``b``.
        ridge, rtol, atol, maxiter, batched, return_info, check_every: as :func:`solve_cg`.

    Returns:
        ``x`` (shaped like ``init``, or ``b``), or ``(x, SolveInfo)``.

    Example:
        >>> import torch
        >>> from unroll.linear_solve import solve_normal_cg
        >>> A = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
        >>> x = solve_normal_cg(lambda v: A @ v, torch.ones(3), init=torch.zeros(2), rtol=1e-10)
        >>> torch.allclose(x, torch.linalg.lstsq(A, torch.ones(3)).solution, atol=1e-5)
        True
    """
    name = "solve_normal_cg"
    opts = _Options(init, ridge, rtol, atol, maxiter, batched, return_info, check_every, on_failure)
    rmatvec, _ = _normal_setup(name, matvec, b, opts, options)

    def normal_matvec(x: PyTree) -> PyTree:
        return rmatvec(matvec(x))

    return _cg(name, normal_matvec, rmatvec(b), opts, {})


# =========================================================================== BiCGStab
def solve_bicgstab(
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
    **options: Any,
) -> PyTree:
    r"""Stabilised biconjugate gradient for a general (non-symmetric) square system.

    Solves :math:`(A + \rho I)x = b` with van der Vorst's BiCGStab (real systems).

    Args:
        matvec: ``x ↦ A x`` on pytrees shaped like ``b``.
        b, init, ridge, rtol, atol, maxiter, batched, return_info, check_every: as
            :func:`solve_cg`.

    Returns:
        ``x`` or ``(x, SolveInfo)``.

    Example:
        >>> import torch
        >>> from unroll.linear_solve import solve_bicgstab
        >>> A = torch.tensor([[3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> torch.allclose(solve_bicgstab(lambda v: A @ v, b, rtol=1e-12), torch.linalg.solve(A, b))
        True

    References:
        van der Vorst, "Bi-CGSTAB: a fast and smoothly converging variant of Bi-CG", SIAM J.
        Sci. Stat. Comput. 13(2), 1992.
    """
    name = "solve_bicgstab"
    opts = _Options(init, ridge, rtol, atol, maxiter, batched, return_info, check_every, on_failure)
    op, x, r, dots, loop, thresh_sq = _start(name, matvec, b, opts, True, options)
    r_hat = r
    rs = dots.sq(r)
    one = torch.ones_like(rs)
    zeros = [torch.zeros_like(t) for t in r]
    fin0 = torch.isfinite(rs)
    state = _BiCGState(
        x,
        r,
        zeros,
        zeros,
        one,
        one,
        one,
        rs,
        fin0 & (rs > thresh_sq),
        torch.where(fin0, CONVERGED, NON_FINITE),
        torch.zeros_like(rs, dtype=torch.long) if return_info else None,
    )

    def step(s: _BiCGState) -> _BiCGState:
        act = s.active
        rho = dots.dot(r_hat, s.r)
        beta = _safe_div(rho, s.rho) * _safe_div(s.alpha, s.omega)
        p = dots.axpy(beta, dots.axpy(-s.omega, s.v, s.p), s.r)  # r + β(p − ωv)
        v = op(p)
        rhv = dots.dot(r_hat, v)
        alpha = _safe_div(rho, rhv)
        h = dots.axpy(torch.where(act, alpha, 0), p, s.x)
        sv = dots.axpy(-alpha, v, s.r)
        t = op(sv)
        omega = _safe_div(dots.dot(t, sv), dots.sq(t))
        x_new = dots.axpy(torch.where(act, omega, 0), sv, h)
        r_new = dots.axpy(-omega, t, sv)
        rs_new = dots.sq(r_new)
        # a zero denominator (ρ = r̂ᵀr or r̂ᵀv) or a NaN/Inf stops that system where it is
        fin = torch.isfinite(rs_new) & torch.isfinite(alpha) & torch.isfinite(omega)
        ok = act & fin & (rho != 0) & (rhv != 0)
        failed = torch.where(act & ~ok, torch.where(fin, BREAKDOWN, NON_FINITE), s.failed)
        keep = [dots.mask(ok, a) for a in r_new]
        rs = torch.where(ok, rs_new, s.rs)
        return _BiCGState(
            [torch.where(m, a, o) for m, a, o in zip(keep, x_new, s.x)],
            [torch.where(m, a, o) for m, a, o in zip(keep, r_new, s.r)],
            p,
            v,
            torch.where(ok, rho, s.rho),
            torch.where(ok, alpha, s.alpha),
            torch.where(ok, omega, s.omega),
            rs,
            ok & (rs > thresh_sq),
            failed,
            None if s.count is None else s.count + act,
        )

    state, k = loop.run(step, state)
    info = _info(
        state.count if state.count is not None else k, state.rs, thresh_sq, opts.fixed, state.failed
    )
    return _finish(
        name, op.spec, state.x, info, opts, loop.maxiter, "a zero denominator (r̂ᵀr or r̂ᵀv = 0)"
    )


class _BiCGState(NamedTuple):
    """BiCGStab: iterate, residual, directions ``p``/``v``, the scalars ρ, α, ω, ``‖r‖²``,
    active mask, failure code and (when asked for) iterations per system."""

    x: list[torch.Tensor]
    r: list[torch.Tensor]
    p: list[torch.Tensor]
    v: list[torch.Tensor]
    rho: torch.Tensor
    alpha: torch.Tensor
    omega: torch.Tensor
    rs: torch.Tensor
    active: torch.Tensor
    failed: torch.Tensor
    count: torch.Tensor | None


# =========================================================================== GMRES
def solve_gmres(
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
    restart: int = 20,
    on_failure: str = "warn",
    **options: Any,
) -> PyTree:
    r"""Restarted GMRES for a general (non-symmetric) square system.

    Solves :math:`(A + \rho I)x = b` by minimising the residual over Krylov subspaces of
    dimension ``restart``, restarting from the current iterate (real systems). Convergence is
    checked with the true residual after each restart cycle. ``maxiter`` counts matvecs.

    Args:
        matvec: ``x ↦ A x`` on pytrees shaped like ``b``.
        b, init, ridge, rtol, atol, maxiter, batched, return_info: as :func:`solve_cg`.
        restart: Krylov dimension per cycle (default 20).

    Returns:
        ``x`` or ``(x, SolveInfo)``.

    Example:
        >>> import torch
        >>> from unroll.linear_solve import solve_gmres
        >>> A = torch.tensor([[3.0, 1.0], [-1.0, 2.0]], dtype=torch.float64)
        >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> torch.allclose(solve_gmres(lambda v: A @ v, b, rtol=1e-12), torch.linalg.solve(A, b))
        True

    References:
        Saad & Schultz, "GMRES: a generalized minimal residual algorithm for solving
        nonsymmetric linear systems", SIAM J. Sci. Stat. Comput. 7(3), 1986.
    """
    name = "solve_gmres"
    if not isinstance(restart, int) or isinstance(restart, bool) or restart <= 0:
        raise ValueError(f"{name}: restart must be a positive int, got {restart!r}.")
    opts = _Options(init, ridge, rtol, atol, maxiter, batched, return_info, 1, on_failure)
    op, x, r, dots, loop, thresh_sq = _start(name, matvec, b, opts, True, options)
    maxiter = loop.maxiter
    bl = op.b_leaves
    rs = dots.sq(r)
    fin0 = torch.isfinite(rs)
    state = _GMRESState(
        x,
        r,
        rs,
        fin0 & (rs > thresh_sq),
        0,
        torch.where(fin0, CONVERGED, NON_FINITE),
        torch.zeros_like(rs, dtype=torch.long) if return_info else None,
    )

    def cycle(s: _GMRESState) -> _GMRESState:
        m = min(restart, maxiter - s.used)
        act = s.active
        update = _arnoldi_lstsq(op, dots, s.r, s.rs, m)
        x_new = [
            a + torch.where(dots.mask(act, u), u, torch.zeros_like(u)) for a, u in zip(s.x, update)
        ]
        r_new = [bb - ax for bb, ax in zip(bl, op(x_new))]
        rs_new = dots.sq(r_new)
        ok = act & torch.isfinite(rs_new)  # NaN/Inf: keep the last finite iterate
        keep = [dots.mask(ok, t) for t in r_new]
        rs = torch.where(ok, rs_new, s.rs)
        return _GMRESState(
            [torch.where(k, a, o) for k, a, o in zip(keep, x_new, s.x)],
            [torch.where(k, a, o) for k, a, o in zip(keep, r_new, s.r)],
            rs,
            ok & (rs > thresh_sq),
            s.used + m,
            torch.where(act & ~ok, NON_FINITE, s.failed),
            None if s.count is None else s.count + act * m,
        )

    loop.maxiter = -(-maxiter // restart)
    state, k = loop.run(cycle, state)
    count = state.count if state.count is not None else min(k * restart, maxiter)
    info = _info(count, state.rs, thresh_sq, opts.fixed, state.failed)
    return _finish(name, op.spec, state.x, info, opts, maxiter)


class _GMRESState(NamedTuple):
    """Restarted GMRES between cycles: iterate, true residual, ``‖r‖²``, active mask, matvecs
    used, failure code and (when asked for) matvecs per system."""

    x: list[torch.Tensor]
    r: list[torch.Tensor]
    rs: torch.Tensor
    active: torch.Tensor
    used: int
    failed: torch.Tensor
    count: torch.Tensor | None


def _arnoldi_lstsq(
    op: _Operator, dots: _Dots, r: list[torch.Tensor], rs: torch.Tensor, m: int
) -> list[torch.Tensor]:
    """One GMRES cycle: Arnoldi basis ``V`` of ``K_m(A, r)`` (modified Gram-Schmidt), then
    ``y = argmin ‖β e₁ − H y‖`` and the update ``V y``."""
    beta = _safe_sqrt(rs)
    v0 = [t * dots.expand(_safe_div(torch.ones_like(beta), beta), t) for t in r]
    basis = [v0]
    h_cols = []
    for j in range(m):
        w = op(basis[j])
        coeffs = []
        for vi in basis:
            hij = dots.dot(vi, w)
            w = dots.axpy(-hij, vi, w)
            coeffs.append(hij)
        hnext = _safe_sqrt(dots.sq(w))
        coeffs.append(hnext)
        coeffs.extend([torch.zeros_like(hnext)] * (m - j - 1))
        h_cols.append(torch.stack(coeffs, dim=-1))  # (..., m+1)
        basis.append([t * dots.expand(_safe_div(torch.ones_like(hnext), hnext), t) for t in w])
    hess = torch.stack(h_cols, dim=-1)  # (..., m+1, m)
    e1 = torch.zeros_like(hess[..., :, 0])
    e1 = torch.cat([beta.unsqueeze(-1), e1[..., 1:]], dim=-1)
    y = _small_lstsq(hess, e1)  # (..., m)
    update = [torch.zeros_like(t) for t in r]
    for j in range(m):
        update = dots.axpy(y[..., j], basis[j], update)
    return update


def _small_lstsq(h: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Minimum-norm least squares ``argmin_y ‖h y − rhs‖`` via a regularised normal solve
    (robust to Arnoldi breakdown, where ``h`` loses rank)."""
    ht = h.transpose(-1, -2)
    gram = ht @ h
    eps = torch.finfo(h.dtype).eps
    scale = gram.diagonal(dim1=-2, dim2=-1).amax(-1, keepdim=True).unsqueeze(-1)
    eye = torch.eye(gram.shape[-1], dtype=h.dtype, device=h.device)
    gram = gram + eye * (scale * eps + torch.finfo(h.dtype).tiny)
    return torch.linalg.solve(gram, (ht @ rhs.unsqueeze(-1))).squeeze(-1)


# =========================================================================== MINRES
class _MinresState(NamedTuple):
    """MINRES (Paige & Saunders): iterate, the last two search directions ``w``, ``w₂``, the
    Lanczos vectors ``r₁``, ``r₂`` (= ``y``), the scalars β, β_old, δ̄, ε, φ̄, c, s, active
    mask, failure code and (when asked for) iterations per system."""

    x: list[torch.Tensor]
    w: list[torch.Tensor]
    w2: list[torch.Tensor]
    r1: list[torch.Tensor]
    r2: list[torch.Tensor]
    beta: torch.Tensor
    oldb: torch.Tensor
    dbar: torch.Tensor
    epsln: torch.Tensor
    phibar: torch.Tensor
    cs: torch.Tensor
    sn: torch.Tensor
    active: torch.Tensor
    failed: torch.Tensor
    count: torch.Tensor | None


def solve_minres(
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
    **options: Any,
) -> PyTree:
    r"""MINRES for a symmetric, possibly indefinite, system.

    Solves :math:`(A + \rho I)x = b` for symmetric ``A`` by minimising :math:`\|b - (A+\rho I)
    x_k\|` over the Krylov subspaces of the Lanczos process (short recurrences: the memory of
    CG, but no positive-definiteness needed). Stops on the recursive residual norm
    :math:`\bar\phi_k = \|r_k\|` (real systems).

    Args:
        matvec: ``x ↦ A x`` on pytrees shaped like ``b``; must be symmetric.
        b, init, ridge, rtol, atol, maxiter, batched, return_info, check_every, on_failure: as
            :func:`solve_cg`.

    Returns:
        ``x`` or ``(x, SolveInfo)``.

    Example:
        >>> import torch
        >>> from unroll.linear_solve import solve_minres
        >>> A = torch.tensor([[1.0, 2.0], [2.0, -1.0]], dtype=torch.float64)  # indefinite
        >>> b = torch.tensor([1.0, 1.0], dtype=torch.float64)
        >>> torch.allclose(solve_minres(lambda v: A @ v, b, rtol=1e-12), torch.linalg.solve(A, b))
        True

    References:
        Paige & Saunders, "Solution of sparse indefinite systems of linear equations", SIAM
        J. Numer. Anal. 12(4), 1975.
    """
    name = "solve_minres"
    opts = _Options(init, ridge, rtol, atol, maxiter, batched, return_info, check_every, on_failure)
    op, x, r, dots, loop, thresh_sq = _start(name, matvec, b, opts, True, options)
    beta1 = _safe_sqrt(dots.sq(r))
    zeros = [torch.zeros_like(t) for t in r]
    fin0 = torch.isfinite(beta1)
    zero = torch.zeros_like(beta1)
    state = _MinresState(
        x,
        zeros,
        zeros,
        r,
        r,
        beta1,
        zero,
        zero,
        zero,
        beta1,
        -torch.ones_like(beta1),
        zero,
        fin0 & (beta1.square() > thresh_sq),
        torch.where(fin0, CONVERGED, NON_FINITE),
        torch.zeros_like(beta1, dtype=torch.long) if return_info else None,
    )
    eps = torch.finfo(beta1.dtype).eps

    def step(s: _MinresState) -> _MinresState:
        act = s.active
        v = [t * dots.expand(_safe_div(torch.ones_like(s.beta), s.beta), t) for t in s.r2]
        y = dots.axpy(torch.where(s.oldb == 0, 0, _safe_div(s.beta, s.oldb)), s.r1, op(v), sign=-1)
        alfa = dots.rdot(v, y)
        y = dots.axpy(_safe_div(alfa, s.beta), s.r2, y, sign=-1)
        beta = _safe_sqrt(dots.sq(y))
        delta = s.cs * s.dbar + s.sn * alfa  # the previous rotation on the new column
        gbar = s.sn * s.dbar - s.cs * alfa
        gamma = torch.clamp(_safe_sqrt(gbar.square() + beta.square()), min=eps)
        cs, sn = gbar / gamma, beta / gamma
        phi = cs * s.phibar
        w = [
            (vv - dots.expand(s.epsln, vv) * w1 - dots.expand(delta, vv) * w2)
            * dots.expand(1 / gamma, vv)
            for vv, w1, w2 in zip(v, s.w2, s.w)
        ]
        x_new = dots.axpy(phi, w, s.x)
        phibar = sn * s.phibar
        fin = torch.isfinite(phibar) & torch.isfinite(alfa) & torch.isfinite(beta)
        ok = act & fin
        m = [dots.mask(ok, t) for t in s.x]

        def pick(new: list[torch.Tensor], old: list[torch.Tensor]) -> list[torch.Tensor]:
            return [torch.where(k, a, o) for k, a, o in zip(m, new, old)]

        def keep(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
            return torch.where(ok, new, old)

        phibar = keep(phibar, s.phibar)
        return _MinresState(
            pick(x_new, s.x),
            pick(w, s.w),
            pick(s.w, s.w2),
            pick(s.r2, s.r1),
            pick(y, s.r2),
            keep(beta, s.beta),
            keep(s.beta, s.oldb),
            keep(-s.cs * beta, s.dbar),
            keep(s.sn * beta, s.epsln),
            phibar,
            keep(cs, s.cs),
            keep(sn, s.sn),
            ok & (phibar.square() > thresh_sq),
            torch.where(act & ~fin, NON_FINITE, s.failed),
            None if s.count is None else s.count + act,
        )

    state, k = loop.run(step, state)
    count = state.count if state.count is not None else k
    info = _info(count, state.phibar.square(), thresh_sq, opts.fixed, state.failed)
    return _finish(name, op.spec, state.x, info, opts, loop.maxiter)
