r"""Linear solvers over pytrees, one signature for all.

Every solver finds ``x`` with

.. math::  (A + \rho I)\, x = b,

where ``A`` is given only through ``matvec(x) = A x``, ``b`` and ``x`` are pytrees of tensors
of the same structure, and ``ρ`` is ``ridge`` (default 0). Configure a solver with
``functools.partial`` and pass it wherever unroll takes a ``solve=`` argument::

    solve = functools.partial(solve_cg, rtol=1e-8, maxiter=500)

Common keyword options (all keyword-only):

* ``init``: initial guess (default zeros).
* ``ridge``: ``ρ`` above.
* ``rtol``, ``atol``: stop once ``‖b − (A+ρI)x‖ ≤ max(rtol·‖b‖, atol)``;
  ``rtol = atol = 0`` runs exactly ``maxiter`` iterations (equal-work benchmarks).
* ``maxiter``: iteration cap (default ``min(10·n, MAXITER_CAP = 1000)`` for ``n`` unknowns
  per system).
* ``batched``: the leading dimension of every leaf indexes independent systems. Inner products,
  step sizes and convergence are then per sample; a converged sample's iterate stops changing.
* ``return_info``: also return :class:`SolveInfo` (with the reason each system stopped).
* ``on_failure``: a system that stops at ``maxiter`` above the tolerance, breaks down or meets
  NaN/Inf is never returned silently: ``"warn"`` (default) emits a :class:`ConvergenceWarning`
  once per cause and call site (at the caller's line) saying which solve, why, the residual and
  the remedy; ``"raise"`` raises :class:`ConvergenceError`; ``"ignore"`` leaves it to
  ``SolveInfo``. After a breakdown or NaN the last finite iterate is returned.

Every solver runs under ``torch.func.vmap`` (it then runs to ``maxiter`` with per-problem
masked updates, giving the same per-problem results as a loop) and inside ``torch.func.grad``
(differentiation through the iterations). The iterative solvers check convergence on the host
once every ``check_every`` iterations; between checks, converged systems are frozen by zeroing
their step, so results do not depend on ``check_every``.

References:
    Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., SIAM 2003 (CG §6.7,
    GMRES §6.5, BiCGStab §7.4.2). The API follows JAXopt's ``jaxopt.linear_solve``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from unroll import tree
from unroll._failure import (
    BREAKDOWN,
    CONVERGED,
    MAX_ITER,
    NON_FINITE,
    REASONS,
    ConvergenceError,
    ConvergenceWarning,
    SolveInfo,
    check_on_failure,
    report_failure,
)
from unroll._host import host_any as _host_any
from unroll._host import host_any_nonfinite
from unroll._host import in_vmap as _in_vmap
from unroll._typing import MatVec, PyTree
from unroll.fixed_point import (
    FixedPointInfo,
    _anderson,
    _check_anderson,
    _check_common,
    _iterate,
    _Map,
    _norm,
    report_fixed_point,
)

__all__ = [
    "ConvergenceWarning",
    "ConvergenceError",
    "REASONS",
    "MAXITER_CAP",
    "DENSE_MAX_UNKNOWNS",
    "SolveInfo",
    "solve_cg",
    "solve_normal_cg",
    "solve_bicgstab",
    "solve_gmres",
    "solve_inv",
    "solve_cholesky",
    "solve_lu",
    "solve_fixed_point",
    "solve_anderson",
]


MAXITER_CAP = 1000
"""Default iteration cap of the Krylov solvers: ``min(10·n, MAXITER_CAP)`` for ``n`` unknowns
per system (a Krylov method that needs more is better preconditioned or regularised)."""

DENSE_MAX_UNKNOWNS = 8192
"""Largest number of unknowns the dense solvers materialise by default (an ``n × n`` matrix:
512 MiB in float64 at the cap); pass ``max_unknowns=`` to go beyond, or use a Krylov solver."""


# =========================================================================== validation
_COMMON = ("init", "ridge", "rtol", "atol", "maxiter", "batched", "return_info", "on_failure")


def _check_options(name: str, options: dict[str, Any], allowed: tuple[str, ...]) -> None:
    for key in options:
        hint = difflib.get_close_matches(key, allowed, n=1)
        if key == "tol":
            hint = ["rtol"]
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise TypeError(
            f"{name}: unknown option {key!r}{extra}. Valid options: {', '.join(allowed)}."
        )


def _check_args(
    name: str,
    matvec: MatVec,
    b_leaves: list[torch.Tensor],
    rtol: float,
    atol: float,
    maxiter: int | None,
    real_only: bool,
    batched: bool,
) -> None:
    if not callable(matvec):
        raise TypeError(f"{name}: matvec must be callable x -> A x, got {type(matvec).__name__}.")
    if not b_leaves:
        raise ValueError(f"{name}: b has no tensor leaves; pass a tensor or a pytree of tensors.")
    for leaf in b_leaves:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{name}: every leaf of b must be a torch.Tensor, got {type(leaf).__name__}."
            )
        if not (leaf.is_floating_point() or leaf.is_complex()):
            raise TypeError(
                f"{name}: b must be floating point or complex, got {leaf.dtype}; "
                "convert it with b.to(torch.float32)."
            )
        if real_only and leaf.is_complex():
            raise TypeError(
                f"{name}: complex b is not supported; use solve_cg (Hermitian A), "
                "solve_normal_cg or a dense solver, or split into real and imaginary parts."
            )
        if batched and leaf.dim() == 0:
            raise ValueError(
                f"{name}: batched=True needs a leading batch dimension on every leaf of b, "
                "got a 0-dim tensor."
            )
    for key, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (0 <= tol < math.inf):
            raise ValueError(f"{name}: {key} must be a finite number >= 0, got {tol!r}.")
    if maxiter is not None and (
        isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter <= 0
    ):
        raise ValueError(f"{name}: maxiter must be a positive int or None, got {maxiter!r}.")
    if batched:
        sizes = {leaf.shape[0] for leaf in b_leaves}
        if len(sizes) != 1:
            raise ValueError(
                f"{name}: batched=True needs the same leading (batch) size on every leaf of b, "
                f"got {sorted(sizes)}."
            )


# =========================================================================== the operator
class _Operator:
    """``x ↦ (A + ρI) x`` on flat lists of leaves, with a one-time structure check."""

    def __init__(self, name: str, matvec: MatVec, b: PyTree, ridge: Any) -> None:
        self.name = name
        self.matvec = matvec
        self.b_leaves, self.spec = tree.flatten(b)
        self.ridge = ridge
        self.checked = False
        self.single = isinstance(b, torch.Tensor)

    def __call__(self, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.single and self.checked:  # fast path: b is one tensor
            out = self.matvec(leaves[0])
            if self.ridge is not None:
                out = out + self.ridge * leaves[0]
            return [out]
        if self.checked:
            out = self.matvec(tree.unflatten(self.spec, leaves))
        else:
            out = _first_call(self.name, self.matvec, tree.unflatten(self.spec, leaves), "b")
        out_leaves, out_spec = tree.flatten(out)
        if not self.checked:
            self._check(out_leaves, out_spec)
            self.checked = True
        if self.ridge is not None:
            out_leaves = [o + self.ridge * x for o, x in zip(out_leaves, leaves)]
        return out_leaves

    def _check(self, out_leaves: list[Any], out_spec: Any) -> None:
        if out_spec != self.spec:
            raise ValueError(
                f"{self.name}: matvec must return a pytree with the structure of b; got "
                f"{out_spec}, expected {self.spec}. For a non-square operator use "
                "solve_normal_cg."
            )
        for o, b in zip(out_leaves, self.b_leaves):
            if not isinstance(o, torch.Tensor) or o.shape != b.shape:
                got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
                raise ValueError(
                    f"{self.name}: matvec returned a leaf of shape {got} where b has "
                    f"{tuple(b.shape)}; A must map x to a pytree shaped like b (for a "
                    "non-square operator use solve_normal_cg)."
                )
            if o.dtype != b.dtype:
                raise TypeError(
                    f"{self.name}: matvec returned {o.dtype} for b of dtype {b.dtype}; the "
                    f"operator and b must share a dtype. Convert b with b.to({o.dtype}) or "
                    f"the operator's tensors with .to({b.dtype})."
                )


def _first_call(name: str, fn: Callable, x: PyTree, what: str) -> PyTree:
    """``fn(x)``, turning PyTorch's dtype-mismatch errors into one that names the fix."""
    try:
        return fn(x)
    except RuntimeError as err:
        text = str(err)
        if isinstance(err, torch.OutOfMemoryError) or not any(
            word in text for word in ("dtype", "Double", "Float", "Half", "BFloat", "scalar type")
        ):
            raise
        dtypes = sorted({str(t.dtype) for t in tree.leaves(x) if isinstance(t, torch.Tensor)})
        raise TypeError(
            f"{name}: matvec failed on {what} of dtype {', '.join(dtypes)} with a dtype "
            f"mismatch ({text.splitlines()[0]}). The operator's tensors and {what} must share "
            f"a dtype: convert {what} with .to(...) to the operator's dtype, or the operator's "
            "tensors (e.g. the matrix) to the dtype of {what}."
        ) from err


def _setup(
    name: str,
    matvec: MatVec,
    b: PyTree,
    opts: _Options,
    real_only: bool,
    options: dict[str, Any],
) -> tuple[_Operator, list[torch.Tensor], int]:
    _check_options(name, options, _COMMON)
    init, maxiter, batched = opts.init, opts.maxiter, opts.batched
    op = _Operator(name, matvec, b, opts.ridge)
    _check_args(name, matvec, op.b_leaves, opts.rtol, opts.atol, maxiter, real_only, batched)
    check_on_failure(name, opts.on_failure)
    ce = opts.check_every
    if ce is not None and (isinstance(ce, bool) or not isinstance(ce, int) or ce <= 0):
        raise ValueError(f"{name}: check_every must be a positive int or None, got {ce!r}.")
    if not isinstance(opts.return_info, bool) or not isinstance(batched, bool):
        raise TypeError(f"{name}: return_info and batched must be True or False.")
    if init is None:
        x0 = [torch.zeros_like(leaf) for leaf in op.b_leaves]
    else:
        x0, spec = tree.flatten(init)
        if spec != op.spec or any(a.shape != c.shape for a, c in zip(x0, op.b_leaves)):
            raise ValueError(f"{name}: init must have the structure and shapes of b.")
    n = sum(leaf[0].numel() if batched else leaf.numel() for leaf in op.b_leaves)
    return op, x0, maxiter if maxiter is not None else min(10 * max(n, 1), MAXITER_CAP)


# =========================================================================== inner products
class _Dots:
    """Inner products: one number per problem (0-dim), or per sample ``(B,)`` when batched.

    Written for a low per-iteration overhead: a single real leaf (the common case) takes
    one tensor op per call and no Python loops.
    """

    def __init__(self, batched: bool, leaves: list[torch.Tensor]) -> None:
        self.batched = batched
        self.complex = any(t.is_complex() for t in leaves)
        self.single = len(leaves) == 1

    def dot(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        """⟨a, b⟩ = Σ conj(a)·b (complex for complex leaves; see :meth:`rdot`)."""
        if self.single:
            return self._dot1(a[0], b[0])
        total = self._dot1(a[0], b[0])
        for x, y in zip(a[1:], b[1:]):
            total = total + self._dot1(x, y)
        return total

    def _dot1(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.batched:
            return torch.linalg.vecdot(x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1))
        if x.dim() != 1:
            x, y = x.reshape(-1), y.reshape(-1)
        return torch.linalg.vecdot(x, y)

    def rdot(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
        """Real part of ⟨a, b⟩."""
        return self.dot(a, b).real if self.complex else self.dot(a, b)

    def sq(self, a: list[torch.Tensor]) -> torch.Tensor:
        return self.rdot(a, a)

    def axpy(
        self,
        s: torch.Tensor,
        x: list[torch.Tensor],
        y: list[torch.Tensor],
        sign: int = 1,
        expanded: bool = False,
    ):
        """``y + sign · s x`` with ``s`` a scalar per problem (``expanded``: already shaped by
        :meth:`expand` for leaves of equal rank)."""
        if self.single and (expanded or (not self.batched and not self.complex)):
            return [torch.addcmul(y[0], s, x[0], value=sign)]
        return [torch.addcmul(yy, self.expand(s, xx), xx, value=sign) for xx, yy in zip(x, y)]

    def mask(self, m: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-problem boolean mask shaped to broadcast against ``like``."""
        return m.reshape(m.shape + (1,) * (like.dim() - 1)) if self.batched else m

    def expand(self, s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.batched:
            s = s.reshape(s.shape + (1,) * (like.dim() - 1))
        return s.to(like.dtype) if self.complex and not s.is_complex() else s


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` with a zero (not NaN) gradient at ``x = 0`` (Arnoldi breakdown)."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` with 0 where ``b == 0`` (a converged or zero system takes no step)."""
    return a / torch.where(b == 0, torch.ones_like(b), b)


# =========================================================================== loop driver
class _Loop:
    """Runs ``state = step(state)`` up to ``maxiter`` times, asking the host whether any
    system is still active (``state.active``) every ``check_every`` iterations."""

    def __init__(self, probe: torch.Tensor, maxiter: int, check_every: int | None) -> None:
        self.maxiter = maxiter
        if check_every is None:
            check_every = 1 if probe.device.type == "cpu" else 8
        self.check_every = check_every

    def run(self, step: Callable[[Any], Any], state: Any) -> tuple[Any, int]:
        """Returns the final state and the number of iterations run."""
        if not _host_any(state.active):
            return state, 0
        k = 0
        while k < self.maxiter:
            state = step(state)
            k += 1
            if k % self.check_every == 0 and not _host_any(state.active):
                break
        return state, k


class _Options(NamedTuple):
    """The options every solver shares, validated once by :func:`_setup`."""

    init: PyTree | None = None
    ridge: Any = None
    rtol: float = 1e-5
    atol: float = 0.0
    maxiter: int | None = None
    batched: bool = False
    return_info: bool = False
    check_every: int | None = None
    on_failure: str = "warn"

    @property
    def fixed(self) -> bool:
        """``rtol = atol = 0``: a fixed number of iterations, no tolerance to miss."""
        return self.rtol == 0 and self.atol == 0


class _Start(NamedTuple):
    """What every Krylov solver starts from."""

    op: _Operator
    x: list[torch.Tensor]
    r: list[torch.Tensor]
    dots: _Dots
    loop: _Loop
    thresh_sq: torch.Tensor


def _start(
    name: str, matvec: MatVec, b: PyTree, opts: _Options, real_only: bool, options: dict[str, Any]
) -> _Start:
    """Validate, then build the operator, initial iterate and residual, and the loop driver."""
    op, x, maxiter = _setup(name, matvec, b, opts, real_only, options)
    bl = op.b_leaves
    dots = _Dots(opts.batched, bl)
    _check_finite(name, bl, x if opts.init is not None else [])
    r = bl if opts.init is None else [bb - ax for bb, ax in zip(bl, op(x))]
    return _Start(
        op,
        x,
        r,
        dots,
        _Loop(bl[0], maxiter, opts.check_every),
        _threshold_sq(dots, bl, opts.rtol, opts.atol),
    )


def _info(
    num_iter: torch.Tensor | int,
    res_sq: torch.Tensor,
    thresh_sq: torch.Tensor,
    fixed: bool,
    failed: torch.Tensor | int | None = None,
) -> SolveInfo:
    """Diagnostics from the final squared residuals.

    ``fixed``: ``rtol = atol = 0`` asked for a fixed number of iterations, so there is no
    tolerance to miss and ``converged`` is True (the residual is still reported) unless the
    solve failed. ``failed``: per-problem code (0, or ``BREAKDOWN`` / ``NON_FINITE``)."""
    if not isinstance(num_iter, torch.Tensor):
        num_iter = torch.full_like(res_sq, num_iter, dtype=torch.long)
    ok = torch.ones_like(res_sq, dtype=torch.bool) if fixed else res_sq <= thresh_sq
    code = torch.where(ok, CONVERGED, MAX_ITER)
    if isinstance(failed, torch.Tensor):
        code = torch.where(failed != 0, failed, code)
    code = torch.where(torch.isfinite(res_sq) | (code != CONVERGED), code, NON_FINITE)
    return SolveInfo(num_iter, res_sq.sqrt(), code == CONVERGED, code)


def _threshold_sq(dots: _Dots, b: list[torch.Tensor], rtol: float, atol: float):
    b_sq = dots.sq(b)
    return torch.clamp(b_sq * rtol**2, min=atol**2)


def _finish(
    name: str,
    spec: Any,
    x: list[torch.Tensor],
    info: SolveInfo,
    opts: _Options,
    maxiter: int,
    breakdown: str = "",
    remedy: str = "",
    converged: bool | None = None,
) -> PyTree:
    """The one result path: apply the failure policy, then return ``x`` (or ``(x, info)``).
    ``converged``: already known on the host (saves a sync)."""
    failed = not converged if converged is not None else _host_any(info.reason != CONVERGED)
    if opts.on_failure != "ignore" and failed:
        if remedy and not _host_any(info.reason == BREAKDOWN):
            remedy = ""  # the breakdown remedy only when a system broke down
        report_failure(
            name,
            info,
            opts.on_failure,
            breakdown,
            remedy,
            rtol=opts.rtol,
            atol=opts.atol,
            maxiter=maxiter,
        )
    out = tree.unflatten(spec, x)
    return (out, info) if opts.return_info else out


def _check_finite(name: str, b: list[torch.Tensor], init: list[torch.Tensor]) -> None:
    for what, leaves in (("b", b), ("init", init)):
        if host_any_nonfinite(leaves):
            raise ValueError(
                f"{name}: {what} contains NaN or Inf; a linear solve needs finite inputs. Check "
                f"where {what} comes from (if {name} runs inside a backward pass, an upstream "
                "gradient is already non-finite: look at the warnings before this error)."
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
    """CG on one system, its convergence read on the host every iteration (one sync that
    also reads ``pᵀAp``, so a breakdown or NaN stops the loop at the last finite iterate).
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
        pap_v, rs_new_v = torch.stack((pap, rs_new)).tolist()
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
            gives the shape of ``x``); default zeros shaped like ``b``.
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
    _check_options(name, options, _COMMON)
    b_leaves = tree.leaves(b)
    _check_args(name, matvec, b_leaves, rtol, atol, maxiter, False, batched)
    check_on_failure(name, on_failure)
    _check_finite(name, b_leaves, [] if init is None else tree.leaves(init))
    example = tree.zeros_like(b) if init is None else tree.zeros_like(init)
    try:
        out, vjp_fn = _first_call(
            name, lambda e: torch.func.vjp(matvec, e), example, "b" if init is None else "init"
        )
    except TypeError:
        raise
    except Exception as err:  # noqa: BLE001 - re-raised with guidance
        if isinstance(err, torch.OutOfMemoryError):
            raise
        raise ValueError(
            f"{name}: matvec failed on an input shaped like "
            f"{'b' if init is None else 'init'} ({err}). For a non-square operator pass "
            "init=... shaped like the unknown x."
        ) from err
    if tree.structure(out) != tree.structure(b) or any(
        o.shape != bb.shape for o, bb in zip(tree.leaves(out), tree.leaves(b))
    ):
        raise ValueError(
            f"{name}: matvec(x) must be shaped like b; for a non-square operator pass "
            "init=... shaped like the unknown x."
        )

    def rmatvec(y: PyTree) -> PyTree:
        return vjp_fn(y)[0]

    def normal_matvec(x: PyTree) -> PyTree:
        return rmatvec(matvec(x))

    for o, bb in zip(tree.leaves(out), b_leaves):
        if o.dtype != bb.dtype:
            raise TypeError(
                f"{name}: matvec returns {o.dtype} for b of dtype {bb.dtype}; the operator and "
                f"b must share a dtype: convert b with b.to({o.dtype}) or the operator."
            )
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


# =========================================================================== dense solvers
def _materialise(
    name: str, op: _Operator, batched: bool, max_unknowns: int
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], list[torch.Tensor]]]:
    """The operator as a dense matrix over the concatenated leaves.

    Returns ``(M, rhs, split)``: ``M`` of shape ``(n, n)`` (or ``(B, n, n)`` when batched),
    ``rhs`` the flattened ``b``, and ``split`` mapping a flat vector back to leaves.
    """
    bl = op.b_leaves
    shapes = [t.shape[1:] if batched else t.shape for t in bl]
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    n = sum(sizes)
    if n > max_unknowns:
        raise ValueError(
            f"{name}: the operator has {n} unknowns per system; a dense solve materialises an "
            f"{n}×{n} matrix ({n * n * bl[0].element_size() / 2**30:.1f} GiB) and costs O(n³). "
            "Use a Krylov solver (solve_cg for a symmetric positive-definite operator, "
            f"solve_gmres otherwise), or pass max_unknowns={n} to force it."
        )
    dtype = bl[0].dtype
    for t in bl:
        dtype = torch.promote_types(dtype, t.dtype)
    bsz = int(bl[0].shape[0]) if batched else 0

    def split(flat: torch.Tensor) -> list[torch.Tensor]:
        parts = torch.split(flat, sizes, dim=-1)
        lead: tuple[int, ...] = (bsz,) if batched else ()
        return [p.reshape(lead + tuple(s)).to(t.dtype) for p, s, t in zip(parts, shapes, bl)]

    def concat(leaves: list[torch.Tensor]) -> torch.Tensor:
        if batched:
            return torch.cat([t.reshape(bsz, -1).to(dtype) for t in leaves], dim=-1)
        return torch.cat([t.reshape(-1).to(dtype) for t in leaves])

    eye = torch.eye(n, dtype=dtype, device=bl[0].device)
    if batched:
        eye = eye.unsqueeze(1).expand(n, bsz, n)
    try:
        cols = torch.func.vmap(lambda e: concat(op(split(e))))(eye)
    except Exception as err:  # noqa: BLE001 - a matvec that cannot be vmapped: column by column
        if isinstance(err, (torch.OutOfMemoryError, TypeError, ValueError)):
            raise
        cols = torch.stack([concat(op(split(e))) for e in eye])
    mat = cols.movedim(0, -1)  # column j = A e_j
    if _host_any(~torch.isfinite(mat)):
        raise ValueError(
            f"{name}: matvec returned NaN or Inf on a unit vector, so the operator's matrix is "
            "not finite; check matvec and the tensors it uses."
        )
    return mat, concat(bl), split


def _dense(
    name: str,
    factor_solve: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor],
    matvec: MatVec,
    b: PyTree,
    opts: _Options,
    max_unknowns: int,
    options: dict[str, Any],
) -> PyTree:
    op, _, _ = _setup(name, matvec, b, opts, False, options)
    if isinstance(max_unknowns, bool) or not isinstance(max_unknowns, int) or max_unknowns < 1:
        raise ValueError(f"{name}: max_unknowns must be a positive int, got {max_unknowns!r}.")
    _check_finite(name, op.b_leaves, [])
    mat, rhs, split = _materialise(name, op, opts.batched, max_unknowns)
    flat = factor_solve(name, mat, rhs.unsqueeze(-1)).squeeze(-1)
    x = split(flat)
    dots = _Dots(opts.batched, op.b_leaves)
    res = [bb - ax for bb, ax in zip(op.b_leaves, op(x))]
    thresh_sq = _threshold_sq(dots, op.b_leaves, opts.rtol, opts.atol)
    res_sq = dots.sq(res)
    # a residual above the tolerance after an exact factorisation: (nearly) singular
    failed = torch.where(res_sq <= thresh_sq, CONVERGED, BREAKDOWN)
    info = _info(1, res_sq, thresh_sq, opts.fixed, failed if not opts.fixed else None)
    return _finish(
        name,
        op.spec,
        x,
        info,
        opts,
        1,
        "the residual after the factorisation is above the tolerance: the "
        "operator is singular or ill-conditioned",
    )


def _make_dense(
    name: str, factor_solve: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor], doc: str
) -> Callable[..., PyTree]:
    def solver(
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
        max_unknowns: int = DENSE_MAX_UNKNOWNS,
        **options: Any,
    ) -> PyTree:
        opts = _Options(init, ridge, rtol, atol, maxiter, batched, return_info, None, on_failure)
        return _dense(name, factor_solve, matvec, b, opts, max_unknowns, options)

    solver.__name__ = solver.__qualname__ = name
    solver.__doc__ = doc
    return solver


_DENSE_DOC = r"""Dense {what} of the materialised operator (small problems).

    Builds the matrix of :math:`A + \rho I` over the concatenation of all leaves of ``b``
    (so coupled multi-leaf systems are solved exactly, not block by block) with one ``vmap``
    of ``matvec`` over the identity, then {how}. ``init``, ``rtol``, ``atol`` and ``maxiter``
    are accepted for a uniform signature; ``rtol``/``atol`` set ``SolveInfo.converged``: a
    true residual above them means a (nearly) singular operator, reported by ``on_failure``.
    An exactly singular operator, or one whose matrix holds NaN/Inf, raises ``ValueError``.

    Args:
        matvec: ``x ↦ A x`` on pytrees shaped like ``b``. {req}
        b: right-hand side pytree (``n`` unknowns in all; cost ``O(n³)``).
        batched: every leaf's leading dimension indexes independent systems.
        return_info: also return :class:`SolveInfo` with the true residual.
        on_failure: ``"warn"`` / ``"raise"`` / ``"ignore"`` when the residual is above the
            tolerance (see :func:`solve_cg`).
        max_unknowns: refuse (``ValueError``) to materialise more unknowns than this
            (default :data:`DENSE_MAX_UNKNOWNS`): use a Krylov solver for large problems.

    Returns:
        ``x`` or ``(x, SolveInfo)``.

    Example:
        >>> import torch
        >>> from unroll.linear_solve import {name}
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> b = {{"u": torch.tensor([1.0], dtype=torch.float64),
        ...      "v": torch.tensor([2.0], dtype=torch.float64)}}
        >>> x = {name}(lambda t: {{"u": A[0, 0] * t["u"] + A[0, 1] * t["v"],
        ...                        "v": A[1, 0] * t["u"] + A[1, 1] * t["v"]}}, b)
        >>> torch.allclose(torch.cat([x["u"], x["v"]]),
        ...                torch.linalg.solve(A, torch.tensor([1.0, 2.0], dtype=torch.float64)))
        True
"""


def _singular(name: str, info: torch.Tensor) -> None:
    if _host_any(info != 0):
        raise ValueError(
            f"{name}: the operator is singular (an exactly zero pivot); add ridge=... for a "
            "regularised solution, or use solve_normal_cg for the least-squares solution."
        )


def _inv_solve(name: str, mat: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    inv, info = torch.linalg.inv_ex(mat)
    _singular(name, info)
    return inv @ rhs


def _cholesky_solve(name: str, mat: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(mat)
    if _host_any(info != 0):
        raise ValueError(
            f"{name}: the operator is not (numerically) symmetric positive definite; use "
            "solve_lu, or add ridge=..."
        )
    return torch.cholesky_solve(rhs, chol)


def _lu_solve(name: str, mat: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    lu, piv, info = torch.linalg.lu_factor_ex(mat)
    _singular(name, info)
    return torch.linalg.lu_solve(lu, piv, rhs)


solve_inv = _make_dense(
    "solve_inv",
    _inv_solve,
    _DENSE_DOC.format(what="inverse", how="applies its explicit inverse", req="", name="solve_inv"),
)
solve_cholesky = _make_dense(
    "solve_cholesky",
    _cholesky_solve,
    _DENSE_DOC.format(
        what="Cholesky solve",
        how="solves with its Cholesky factor",
        req="Must be symmetric (Hermitian) positive definite.",
        name="solve_cholesky",
    ),
)
solve_lu = _make_dense(
    "solve_lu",
    _lu_solve,
    _DENSE_DOC.format(
        what="LU solve", how="solves with its pivoted LU factors", req="", name="solve_lu"
    ),
)


# =========================================================================== fixed-point solvers
def _linear_setup(name: str, matvec: Callable[[PyTree], PyTree], b: PyTree, opts: _Options):
    """The Richardson map ``x ↦ x + b − (A + ρI)x`` of a fixed-point linear solver, its
    stopping rule, and the iteration cap (validated as for every solver)."""
    init, ridge, batched = opts.init, opts.ridge, opts.batched
    b_leaves, spec = tree.flatten(b)
    _check_args(name, matvec, b_leaves, opts.rtol, opts.atol, opts.maxiter, True, batched)
    check_on_failure(name, opts.on_failure)
    n = sum(leaf[0].numel() if batched else leaf.numel() for leaf in b_leaves)
    maxiter = opts.maxiter if opts.maxiter is not None else min(10 * max(n, 1), MAXITER_CAP)
    _check_common(name, b_leaves, maxiter, 0.0, batched, opts.check_every)
    if init is None:
        x0 = list(b_leaves)  # one free Richardson step from zero: x₁ = b
    else:
        x0, init_spec = tree.flatten(init)
        if init_spec != spec or any(a.shape != c.shape for a, c in zip(x0, b_leaves)):
            raise ValueError(f"{name}: init must have the structure and shapes of b.")
    _check_finite(name, b_leaves, [] if init is None else x0)
    single = isinstance(b, torch.Tensor)

    def richardson(x: PyTree) -> PyTree:
        """``x + b − (A + ρI) x``: its fixed point solves the linear system."""
        ax = matvec(x)
        if single and isinstance(ax, torch.Tensor) and ax.shape == b.shape:
            return (x - ax if ridge is None else x - ax - ridge * x) + b
        ax_leaves, ax_spec = tree.flatten(ax)
        if ax_spec != spec or any(a.shape != c.shape for a, c in zip(ax_leaves, b_leaves)):
            raise ValueError(
                f"{name}: matvec must return a pytree with the structure and shapes of b; got "
                f"{ax_spec} for b {spec}."
            )
        x_leaves = tree.leaves(x)
        if ridge is not None:
            ax_leaves = [a + ridge * v for a, v in zip(ax_leaves, x_leaves)]
        out = [v + bb - a for v, bb, a in zip(x_leaves, b_leaves, ax_leaves)]
        return tree.unflatten(spec, out)

    thresh = torch.clamp(_norm(b_leaves, batched) * opts.rtol, min=opts.atol)

    def stop(res: torch.Tensor, _: list[torch.Tensor]):
        return res, thresh

    return _Map(name, richardson, tree.unflatten(spec, x0), ()), stop, thresh, maxiter


def _linear_finish(
    name: str,
    z: PyTree,
    info: FixedPointInfo,
    thresh: torch.Tensor,
    maxiter: int,
    on_failure: str,
    return_info: bool,
):
    report_fixed_point(name, info, thresh, maxiter, on_failure)
    if return_info:
        return z, SolveInfo(info.num_iter, info.residual, info.converged, info.reason)
    return z


def solve_fixed_point(
    matvec: Callable[[PyTree], PyTree],
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
) -> PyTree:
    r"""Richardson (fixed-point) iteration for a linear system :math:`(A + \rho I)x = b`.

    Iterates :math:`x \leftarrow x + b - (A + \rho I) x`, which converges when the spectral
    radius of :math:`I - A - \rho I` is below 1. For a DEQ backward, ``A = I − Jᵀ`` with
    ``J = ∂f/∂z*``, so this is :math:`v \leftarrow J^\top v + b`, the fixed-point iteration of
    the adjoint equation. Starts from ``init`` (default ``b``, i.e. one free step from zero).
    Signature and options as :mod:`unroll.linear_solve`; use it as a ``solve=`` argument.

    Args:
        matvec: ``x ↦ A x`` on pytrees shaped like ``b``.
        b: right-hand side pytree.
        init: initial guess (default ``b``).
        ridge: ``ρ`` added to the diagonal.
        rtol, atol: stop when ``‖b − (A+ρI)x‖ ≤ max(rtol·‖b‖, atol)``.
        maxiter: cap on matvecs (default ``min(10 n, MAXITER_CAP)``, as every solver).
        batched: the leading dimension of every leaf is a batch of independent systems.
        return_info: also return :class:`unroll.linear_solve.SolveInfo`.
        check_every: iterations between host convergence checks (default adaptive).
        on_failure: a solve that stops at ``maxiter`` above the tolerance, diverges (its
            residual grows past ``DIVERGENCE_FACTOR`` times the first; the last good iterate is
            returned) or meets NaN/Inf: ``"warn"`` (a
            :class:`~unroll.linear_solve.ConvergenceWarning` once per cause and call site),
            ``"raise"`` (:class:`~unroll.linear_solve.ConvergenceError`) or ``"ignore"``.

    Returns:
        ``x``, or ``(x, SolveInfo)``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[1.0, -0.5], [0.2, 1.0]], dtype=torch.float64)
        >>> x = solve_fixed_point(lambda v: A @ v, torch.ones(2, dtype=torch.float64), rtol=1e-12,
        ...                       maxiter=200)
        >>> torch.allclose(A @ x, torch.ones(2, dtype=torch.float64))
        True

    References:
        Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., §4.1 (Richardson).
    """
    name = "solve_fixed_point"
    opts = _Options(init, ridge, rtol, atol, maxiter, batched, return_info, check_every, on_failure)
    fmap, stop, thresh, maxiter = _linear_setup(name, matvec, b, opts)
    z, info = _iterate(fmap, maxiter, stop, batched, check_every, opts.fixed)
    return _linear_finish(name, z, info, thresh, maxiter, on_failure, return_info)


def solve_anderson(
    matvec: Callable[[PyTree], PyTree],
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
    history_size: int = 5,
    beta: float = 1.0,
    anderson_ridge: float = 1e-4,
) -> PyTree:
    r"""Anderson-accelerated Richardson iteration for :math:`(A + \rho I)x = b`.

    :func:`anderson` applied to the map :math:`x \mapsto x + b - (A + \rho I)x`; for a DEQ
    backward (``A = I − Jᵀ``) this accelerates :math:`v \leftarrow J^\top v + b`. On a linear
    map Anderson acceleration is equivalent to GMRES (Walker & Ni 2011) with a window of
    ``history_size`` steps.

    Args:
        matvec, b, init, ridge, rtol, atol, maxiter, batched, return_info, check_every,
            on_failure: as :func:`solve_fixed_point`.
        history_size: Anderson window ``m``.
        beta: Anderson damping.
        anderson_ridge: relative Tikhonov weight of the mixing problem (``ridge`` of
            :func:`anderson`; ``ridge`` here is the linear system's diagonal shift).

    Returns:
        ``x``, or ``(x, SolveInfo)``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[1.0, -0.9], [0.9, 1.0]], dtype=torch.float64)
        >>> x = solve_anderson(lambda v: A @ v, torch.ones(2, dtype=torch.float64), rtol=1e-12)
        >>> torch.allclose(A @ x, torch.ones(2, dtype=torch.float64))
        True

    References:
        Walker & Ni, "Anderson acceleration for fixed-point iterations", 2011.
    """
    name = "solve_anderson"
    _check_anderson(name, history_size, beta, anderson_ridge)
    opts = _Options(init, ridge, rtol, atol, maxiter, batched, return_info, check_every, on_failure)
    fmap, stop, thresh, maxiter = _linear_setup(name, matvec, b, opts)
    z, info = _anderson(
        fmap,
        list(fmap.leaves0),
        maxiter,
        stop,
        batched,
        check_every,
        history_size,
        beta,
        anderson_ridge,
        opts.fixed,
    )
    return _linear_finish(name, z, info, thresh, maxiter, on_failure, return_info)
