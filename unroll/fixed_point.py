r"""Fixed-point solvers over pytrees: plain iteration and Anderson acceleration.

Both find :math:`z^\star = f(z^\star, \text{args})` for a map ``f(z, *args)`` whose state ``z``
is a pytree of tensors (a tensor, or an algorithm's NamedTuple state), and return
``(z, FixedPointInfo)``. The fixed-point residual of an iterate ``z`` is

.. math::  r_{\text{abs}}(z) = \|f(z) - z\|, \qquad r_{\text{rel}}(z) = \|f(z) - z\| / \|f(z)\|,

and a solve stops when the residual named by ``stop_mode`` is ``≤ tol``. With
``batched=True`` the leading dimension of every leaf indexes independent problems: norms are
per sample, a converged sample freezes (its iterate stops changing) while the others go on,
and ``FixedPointInfo`` holds one entry per sample.

The two linear solvers built on these iterations for backward passes of deep equilibrium
models, :func:`unroll.linear_solve.solve_fixed_point` (Richardson iteration
``x ← x + (b − A x)``) and :func:`unroll.linear_solve.solve_anderson`, live with the other
linear solvers. For ``A = I − Jᵀ`` they solve the DEQ adjoint equation ``v = Jᵀ v + b``.

Convergence is checked on the host only at some iterations: by default the checks adapt (from
the geometric rate observed between two checks, the next check is placed where the slowest
problem should reach its tolerance, at most doubling the iterations run so far), so a solve
checks a handful of times rather than at every step and costs about as much as a bare Python
loop over ``f``; ``check_every=k`` checks every ``k`` iterations instead. The residual is only
computed at checks, so ``num_iter`` is the first checked iteration that met the tolerance.
Under ``torch.func.vmap`` the loops keep running, with converged problems frozen by masks,
until every problem of the vmapped batch has converged, which gives per-problem results equal
to a Python loop over the problems.

References:
    Walker & Ni, "Anderson acceleration for fixed-point iterations", SIAM J. Numer. Anal.
    49(4), 2011. Bai, Kolter & Koltun, "Deep equilibrium models", NeurIPS 2019.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any, NamedTuple

import torch

from unroll import tree
from unroll._failure import (
    CONVERGED,
    DIVERGED,
    MAX_ITER,
    NON_FINITE,
    check_on_failure,
    report_reasons,
)
from unroll._host import host_any as _host_any
from unroll._host import host_any_nonfinite, host_max, host_mins, unwrap
from unroll._typing import PyTree

__all__ = [
    "FixedPointInfo",
    "fixed_point_iteration",
    "anderson",
    "FixedPointAlgorithm",
    "FixedPointState",
    "AndersonState",
    "fixed_point_iteration_algorithm",
    "anderson_algorithm",
]


class FixedPointInfo(NamedTuple):
    """Diagnostics of a fixed-point solve (tensors; one entry per sample when ``batched``).

    Attributes:
        num_iter: evaluations of ``f`` until the first convergence check that met the
            tolerance (or until the solve stopped, when none did).
        residual: the residual (in the solve's ``stop_mode``) at that check.
        converged: whether ``residual ≤ tol``.
        trace: residuals at every convergence check, shape ``(checks,)`` or ``(checks, B)``.
        reason: why each problem stopped, a code of :data:`unroll.linear_solve.REASONS`
            (0 converged, 1 max_iter, 3 non_finite, 4 diverged: the residual grew past
            ``DIVERGENCE_FACTOR`` times its first value; the last good iterate is returned).
    """

    num_iter: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    trace: torch.Tensor
    reason: torch.Tensor


DIVERGENCE_FACTOR = 1e4
"""A fixed-point solve whose residual grows past this factor times its first checked value is
stopped as diverged (per problem), before its iterates overflow."""


# =========================================================================== validation
_STOP_MODES = ("abs", "rel")


def _check_common(
    name: str,
    z_leaves: list[Any],
    maxiter: int,
    tol: float,
    batched: bool,
    check_every: int | None,
) -> None:
    if not z_leaves:
        raise ValueError(f"{name}: the state has no tensor leaves; pass a tensor or a pytree.")
    for leaf in z_leaves:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{name}: every leaf of the state must be a torch.Tensor, got "
                f"{type(leaf).__name__}; keep non-tensor settings in *args."
            )
        if not (leaf.is_floating_point() or leaf.is_complex()):
            raise TypeError(
                f"{name}: the state must be floating point or complex, got {leaf.dtype}; "
                "convert it with .to(torch.float32)."
            )
        if batched and leaf.dim() == 0:
            raise ValueError(
                f"{name}: batched=True needs a leading batch dimension on every leaf, got a "
                "0-dim tensor; pass batched=False."
            )
    if batched and len({leaf.shape[0] for leaf in z_leaves}) != 1:
        raise ValueError(
            f"{name}: batched=True needs the same leading (batch) size on every leaf, got "
            f"{sorted({leaf.shape[0] for leaf in z_leaves})}."
        )
    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter <= 0:
        raise ValueError(f"{name}: maxiter must be a positive int, got {maxiter!r}.")
    if not (isinstance(tol, (int, float)) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"{name}: tol must be a finite float >= 0, got {tol!r}.")
    if check_every is not None and (not isinstance(check_every, int) or check_every <= 0):
        raise ValueError(
            f"{name}: check_every must be a positive int or None, got {check_every!r}."
        )


def _check_anderson(name: str, history_size: int, beta: float, ridge: float) -> None:
    if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 1:
        raise ValueError(f"{name}: history_size must be an int >= 1, got {history_size!r}.")
    if not (isinstance(beta, (int, float)) and 0 < beta and math.isfinite(beta)):
        raise ValueError(f"{name}: beta (damping) must be a float > 0, got {beta!r}.")
    if not (isinstance(ridge, (int, float)) and ridge >= 0 and math.isfinite(ridge)):
        raise ValueError(f"{name}: ridge must be a float >= 0, got {ridge!r}.")


def _check_finite(name: str, what: str, leaves: list[torch.Tensor]) -> None:
    if host_any_nonfinite(leaves):
        raise ValueError(f"{name}: {what} contains NaN or Inf; check the inputs.")


def _check_mixing(name: str, mixing_frequency: int) -> None:
    if (
        isinstance(mixing_frequency, bool)
        or not isinstance(mixing_frequency, int)
        or mixing_frequency < 1
    ):
        raise ValueError(
            f"{name}: mixing_frequency must be an int >= 1 (1: mix at every step), got "
            f"{mixing_frequency!r}."
        )


class _Aux:
    """``f(z, *args) -> (z, aux)`` seen as ``z ↦ z`` (``has_aux``): the last ``aux`` is kept,
    detached (it is passed through, never differentiated)."""

    def __init__(self, name: str, f: Callable[..., Any]) -> None:
        if not callable(f):
            raise TypeError(f"{name}: f must be callable f(z, *args) -> (z, aux), got {f!r}.")
        self.name, self.f, self.aux = name, f, None

    def __call__(self, z: PyTree, *args: Any) -> PyTree:
        out = self.f(z, *args)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                f"{self.name}: has_aux=True needs f to return (z, aux), got "
                f"{type(out).__name__}; return a pair, or pass has_aux=False."
            )
        self.aux = tree.detach(out[1])
        return out[0]


def _with_aux(name: str, f: Callable[..., Any], has_aux: bool) -> tuple[Callable, _Aux | None]:
    if not isinstance(has_aux, bool):
        raise TypeError(f"{name}: has_aux must be True or False, got {has_aux!r}.")
    if not has_aux:
        return f, None
    wrapped = _Aux(name, f)
    return wrapped, wrapped


# =========================================================================== the map
class _Map:
    """``leaves ↦ leaves of f(unflatten(leaves), *args)``, checked once, dtypes kept."""

    def __init__(self, name: str, f: Callable[..., PyTree], z0: PyTree, args: tuple) -> None:
        if not callable(f):
            raise TypeError(f"{name}: f must be callable f(z, *args) -> z, got {type(f).__name__}.")
        self.name, self.f, self.args = name, f, args
        self.single = isinstance(z0, torch.Tensor)
        self.leaves0, self.spec = ([z0], None) if self.single else tree.flatten(z0)
        self.dtypes = [x.dtype for x in self.leaves0]
        self.checked = False
        self.needs_cast = False

    def leaves(self, z: PyTree) -> list[torch.Tensor]:
        return [z] if self.single else tree.leaves(z)

    def pack(self, leaves: list[torch.Tensor]) -> PyTree:
        return leaves[0] if self.single else tree.unflatten(self.spec, leaves)

    def __call__(self, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
        out = self.f(self.pack(leaves), *self.args)
        out_leaves = [out] if self.single and isinstance(out, torch.Tensor) else None
        if out_leaves is None:
            out_leaves, spec = tree.flatten(out)
            if spec != (self.spec if not self.single else tree.structure(self.leaves0[0])):
                raise ValueError(
                    f"{self.name}: f must return a state with the structure of z0; got "
                    f"{spec}, expected {tree.structure(self.pack(self.leaves0))}."
                )
        if not self.checked:
            self._check_shapes(out_leaves)
            self.checked = True
            self.needs_cast = any(o.dtype != d for o, d in zip(out_leaves, self.dtypes))
        if not self.needs_cast:
            return out_leaves
        return [o if o.dtype == d else o.to(d) for o, d in zip(out_leaves, self.dtypes)]

    def bare(self) -> tuple[Callable[..., PyTree], tuple] | None:
        """``(f, args)`` when, after the first (checked) call, ``f(z, *args)`` needs no
        casting back (the fast path of the iteration), else None."""
        return None if not self.checked or self.needs_cast else (self.f, self.args)

    def stepper(self) -> Callable[[PyTree], PyTree]:
        """``z ↦ f(z, *args)`` on pytrees; after the first (checked) call, a bare call unless
        the output dtypes must be cast back (e.g. under autocast)."""
        if not self.checked or self.needs_cast:
            return lambda z: self.pack(self(self.leaves(z)))
        f, args = self.f, self.args
        return lambda z: f(z, *args)

    def _check_shapes(self, out_leaves: list[Any]) -> None:
        for o, z in zip(out_leaves, self.leaves0):
            if not isinstance(o, torch.Tensor) or o.shape != z.shape:
                got = tuple(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
                raise ValueError(
                    f"{self.name}: f returned a leaf of shape {got} where z0 has "
                    f"{tuple(z.shape)}; f(z, *args) must return a state shaped like z."
                )


def _norm(leaves: list[torch.Tensor], batched: bool) -> torch.Tensor:
    """Euclidean norm over all leaves: 0-dim, or per sample ``(B,)`` when batched."""
    if batched:
        norms = [torch.linalg.vector_norm(x.reshape(x.shape[0], -1), dim=1) for x in leaves]
    else:
        norms = [torch.linalg.vector_norm(x) for x in leaves]
    if len(norms) == 1:
        return norms[0]
    return torch.stack(norms).square().sum(0).sqrt()


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.reshape(mask.shape + (1,) * (like.dim() - mask.dim()))


def _freeze(done: torch.Tensor, old: list[torch.Tensor], new: list[torch.Tensor]):
    return [torch.where(_expand(done, n), o, n) for o, n in zip(old, new)]


# Stopping rule: (‖f(z) − z‖, f(z) leaves) -> (reported residual r, threshold): converged
# when r ≤ threshold.
_Stop = Callable[[torch.Tensor, list[torch.Tensor]], tuple[torch.Tensor, Any]]


def _stop_rule(stop_mode: str, tol: float, batched: bool) -> _Stop:
    if stop_mode == "abs":
        return lambda res, fz: (res, tol)

    def rel(res: torch.Tensor, fz: list[torch.Tensor]):
        scale = _norm(fz, batched)
        return res / scale.clamp_min(torch.finfo(scale.dtype).tiny), tol

    return rel


_MAX_GAP = 64


def _quiet(r: torch.Tensor, thr: Any, size: torch.Tensor, limit: torch.Tensor) -> float | None:
    """The fast path of :meth:`_Checks.record`: the worst residual / tolerance when at this
    check no problem converged (``r > thr``) nor failed (``size ≤ limit``, so not NaN) and
    the ratio is above 1; else None, and the general bookkeeping decides. Two or three
    small ops and one host read instead of about twenty."""
    if isinstance(thr, torch.Tensor):
        return None
    # r > thr, size ≤ limit, and -(r / thr) (= -inf for thr = 0, when r > 0)
    margins = [r - thr, limit - size] if thr else [r, limit - size]
    if thr:
        margins.append(r / -thr)
    low, room, *neg = host_mins(margins)
    worst = -neg[0] if thr else math.inf
    return worst if low > 0 and room >= 0 and worst > 1 else None


class _Checks:
    """When to check convergence on the host, and the per-problem bookkeeping.

    With ``every=None`` the checks are adaptive: from the last two checks the geometric rate
    of the slowest unconverged problem predicts the iteration at which it will reach its
    tolerance, and the next check is placed there (at most doubling the iterations run so
    far). A linearly convergent iteration is then checked a handful of times instead of at
    every step, so the loop costs about as much as a bare loop over ``f``. A fixed ``every``
    checks every ``every`` iterations instead.
    """

    def __init__(self, maxiter: int, every: int | None, fixed: bool = False) -> None:
        self.maxiter, self.every, self.fixed = maxiter, every, fixed
        self.next = every or 1
        self.last: tuple[int, float] | None = None
        self.done: torch.Tensor | None = None
        self.failed: torch.Tensor | None = None  # per problem: diverged or non-finite
        self.limit: torch.Tensor | None = None  # DIVERGENCE_FACTOR * the first residual
        self.good: list[torch.Tensor] | None = None  # last checked iterate of each problem
        self.any_done = False
        self.trace: list[torch.Tensor] = []
        self.conv: list[torch.Tensor | None] = []  # None: none converged
        self.ks: list[int] = []

    def due(self, k: int) -> bool:
        return k >= self.next or k == self.maxiter

    def record(
        self, k: int, r: torch.Tensor, thr: Any, fz: list[torch.Tensor], size: torch.Tensor
    ) -> bool:
        """Record the residuals ``r`` of iteration ``k`` (``fz``: that iteration's output,
        ``size``: its absolute residual ``‖f(z) − z‖``); True when the loop should stop. A
        problem whose absolute residual is NaN/Inf or grew past ``DIVERGENCE_FACTOR`` times
        its first value stops (``failed``; a relative residual can stay bounded while the
        iterates blow up); the last checked iterate that was neither is kept in ``good``."""
        r, size = r.detach(), size.detach()
        if self.limit is None:
            self.limit = DIVERGENCE_FACTOR * size
        limit = self.limit
        if self.done is None:  # nothing has stopped yet: most checks end here
            worst = _quiet(r, thr, size, limit)
            if worst is not None:
                self.trace.append(r)
                self.conv.append(None)  # no problem converged
                self.ks.append(k)
                self.good = list(fz)
                self._plan(k, worst)
                return False
        ok_now = r <= thr
        bad = ~(size <= limit) & ~ok_now  # NaN-safe
        if self.done is not None:
            bad = bad & ~self.done
        failed = bad if self.failed is None else self.failed | bad
        converged = ok_now & ~failed
        done = converged if self.done is None else self.done | converged
        stopped = done | failed
        self.failed, self.done = failed, done
        self.trace.append(r)
        self.conv.append(converged)
        self.ks.append(k)
        # one host read: the worst unfinished residual / tolerance, and whether any problem
        # has failed or stopped (over the whole underlying batch inside vmap)
        ratio = (r / thr).masked_fill(stopped, 0)
        summary = torch.stack(
            [ratio.amax(), failed.any().to(ratio.dtype), stopped.any().to(ratio.dtype)]
        )
        worst, any_failed, any_stopped = unwrap(summary).reshape(-1, 3).amax(0).tolist()
        if any_failed:
            self.good = (
                list(fz)
                if self.good is None
                else [torch.where(_expand(~failed, f), f, g) for f, g in zip(fz, self.good)]
            )
        else:
            self.good = list(fz)
        if worst <= 1:
            return True
        self.any_done = self.any_done or bool(any_stopped)
        self._plan(k, worst)
        return False

    def stopped(self) -> torch.Tensor | None:
        """Problems to freeze: converged, diverged or non-finite."""
        if self.done is None or self.failed is None:
            return self.done
        return self.done | self.failed

    def output(self, z: list[torch.Tensor]) -> list[torch.Tensor]:
        """The final iterate, with failed problems at their last good checked iterate."""
        if self.failed is None or self.good is None:
            return z
        return [torch.where(_expand(self.failed, a), g, a) for a, g in zip(z, self.good)]

    def _plan(self, k: int, worst: float | None) -> None:
        if self.every is not None or worst is None:
            self.next = k + (self.every or 1)
            return
        gap = 1
        if not math.isfinite(worst):
            gap = _MAX_GAP
        elif self.last is not None and 0 < worst < self.last[1]:
            k0, w0 = self.last
            rate = math.log(worst / w0) / (k - k0)
            gap = math.ceil(math.log(1.0 / worst) / rate)
        elif self.last is not None:
            gap = 2 * (k - self.last[0])
        self.last = (k, worst)
        self.next = k + max(1, min(gap, k, _MAX_GAP))

    def info(self) -> FixedPointInfo:
        trace = torch.stack(self.trace)
        if self.done is None:  # no check stopped a problem: the last check tells it all
            return self._info_last(trace)
        never = torch.zeros_like(self.trace[0], dtype=torch.bool)
        conv = torch.stack([never if c is None else c for c in self.conv])
        first = torch.where(conv.any(0), conv.to(torch.uint8).argmax(0), len(self.ks) - 1)
        ks = torch.tensor(self.ks, device=trace.device)
        ks = ks.reshape(-1, *([1] * (trace.dim() - 1))).expand(trace.shape)
        index = first.unsqueeze(0)
        residual = torch.gather(trace, 0, index).squeeze(0)
        none = torch.zeros_like(residual, dtype=torch.bool)
        done = none if self.done is None else self.done
        failed = none if self.failed is None else self.failed
        if self.fixed:  # tol = 0: a fixed number of steps was asked for, no tolerance to miss
            done = ~failed
        code = torch.where(done, CONVERGED, MAX_ITER)
        code = torch.where(failed & torch.isfinite(residual), DIVERGED, code)
        code = torch.where(failed & ~torch.isfinite(residual), NON_FINITE, code)
        return FixedPointInfo(torch.gather(ks, 0, index).squeeze(0), residual, done, trace, code)

    def _info_last(self, trace: torch.Tensor) -> FixedPointInfo:
        """:meth:`info` when every problem ran to the last check (a fixed number of steps
        asked for with ``tol=0``, or ``maxiter`` reached)."""
        residual = self.trace[-1]
        code = CONVERGED if self.fixed else MAX_ITER
        return FixedPointInfo(
            torch.full_like(residual, self.ks[-1], dtype=torch.long),
            residual,
            torch.full_like(residual, self.fixed, dtype=torch.bool),
            trace,
            torch.full_like(residual, code, dtype=torch.long),
        )


# =========================================================================== plain iteration
def _iterate(
    fmap: _Map,
    maxiter: int,
    stop: _Stop,
    batched: bool,
    check_every: int | None,
    fixed: bool = False,
) -> tuple[PyTree, FixedPointInfo]:
    checks = _Checks(maxiter, check_every, fixed)
    frozen = None  # mask of problems that stopped at an earlier check
    z = fmap.pack(fmap.leaves0)
    fz = fmap.pack(fmap(fmap.leaves(z)))  # the first call validates f's output
    step = fmap.stepper()
    bare = fmap.bare()  # (f, args) when f can be called as it is
    k = 1
    while True:  # here fz = f(z) is iteration k
        if k >= checks.next or k == maxiter:
            zl, fl = fmap.leaves(z), fmap.leaves(fz)
            res = _norm([a - b for a, b in zip(fl, zl)], batched)
            finished = checks.record(k, *stop(res, fl), fl, res)
            z = fz if frozen is None else fmap.pack(_freeze(frozen, zl, fl))
            if finished:
                break
            if checks.any_done:
                frozen = checks.stopped()
        elif frozen is not None:
            z = fmap.pack(_freeze(frozen, fmap.leaves(z), fmap.leaves(fz)))
        else:
            z = fz
        if k == maxiter:
            break
        if frozen is None and bare is not None:  # a bare loop up to the next check
            f, args = bare
            until = min(checks.next, maxiter) - 1
            while k < until:
                z = f(z, *args)
                k += 1
        fz = step(z)
        k += 1
    return fmap.pack(checks.output(fmap.leaves(z))), checks.info()


def fixed_point_iteration(
    f: Callable[..., PyTree],
    z0: PyTree,
    *args: Any,
    maxiter: int = 100,
    tol: float = 1e-5,
    stop_mode: str = "rel",
    batched: bool = False,
    check_every: int | None = None,
    on_failure: str = "warn",
    has_aux: bool = False,
) -> tuple[PyTree, FixedPointInfo]:
    r"""Plain fixed-point iteration :math:`z_{k+1} = f(z_k, \text{args})`.

    Stops at the first checked iterate with residual ``≤ tol`` (see the module docstring) and
    returns :math:`f(z_k)`, the last evaluation. The loop does nothing else per step beyond the
    residual at checks, so its cost is close to a bare Python loop over ``f``. It is
    differentiable by autograd (unrolled), though for deep equilibrium models
    :func:`unroll.deq` differentiates the fixed point implicitly instead.

    Args:
        f: ``f(z, *args) -> z`` with ``z`` a pytree of tensors; returns the same structure and
            shapes (dtypes are kept as ``z0``'s, e.g. under autocast).
        z0: initial state (pytree of floating or complex tensors).
        *args: passed to ``f`` unchanged.
        maxiter: cap on evaluations of ``f``.
        tol: tolerance on the residual (``0`` runs exactly ``maxiter`` steps).
        stop_mode: ``"rel"`` (``‖f(z)−z‖/‖f(z)‖``) or ``"abs"`` (``‖f(z)−z‖``).
        batched: the leading dimension of every leaf indexes independent problems:
            per-sample residuals, converged samples freeze.
        check_every: iterations between host-side convergence checks (default ``None``:
            adaptive, see the module docstring).
        on_failure: a solve that stops at ``maxiter`` above ``tol``, diverges (residual past
            ``DIVERGENCE_FACTOR`` times its first value) or meets NaN/Inf returns its last good
            iterate and, with ``"warn"`` (default), emits a
            :class:`~unroll.linear_solve.ConvergenceWarning` once per cause and call site;
            ``"raise"`` raises :class:`~unroll.linear_solve.ConvergenceError`; ``"ignore"``
            leaves it to ``FixedPointInfo.reason``.
        has_aux: ``f`` returns ``(z, aux)``; the solver then returns ``((z, aux), info)``,
            with ``aux`` (any pytree) of the last evaluation of ``f`` untouched but detached
            (no gradient), as JAXopt's ``state.aux``.

    Returns:
        ``(z, FixedPointInfo(num_iter, residual, converged, trace, reason))``, or
        ``((z, aux), info)`` with ``has_aux``.
        For step-by-step use see :func:`fixed_point_iteration_algorithm`.

    Example:
        >>> import torch
        >>> z, info = fixed_point_iteration(torch.cos, torch.tensor(1.0, dtype=torch.float64),
        ...                                 tol=1e-10, maxiter=200)
        >>> round(float(z), 6), bool(info.converged)
        (0.739085, True)

    References:
        Banach fixed-point theorem; Bai, Kolter & Koltun, "Deep equilibrium models", 2019.
    """
    name = "fixed_point_iteration"
    f, aux = _with_aux(name, f, has_aux)
    fmap = _Map(name, f, z0, args)
    if stop_mode not in _STOP_MODES:
        raise ValueError(f"{name}: stop_mode must be 'abs' or 'rel', got {stop_mode!r}.")
    _check_common(name, fmap.leaves0, maxiter, tol, batched, check_every)
    check_on_failure(name, on_failure)
    _check_finite(name, "z0", fmap.leaves0)
    z, info = _iterate(
        fmap, maxiter, _stop_rule(stop_mode, tol, batched), batched, check_every, tol == 0
    )
    report_fixed_point(name, info, tol, maxiter, on_failure)
    return (z, info) if aux is None else ((z, aux.aux), info)


# =========================================================================== Anderson
class _Flat:
    """Leaves ↔ one real matrix ``(B, n)`` (``B = 1`` unless batched), in a working dtype of at
    least float32; complex leaves are stored as (real, imag) pairs."""

    def __init__(self, leaves: list[torch.Tensor], batched: bool) -> None:
        self.batched = batched
        self.shapes = [x.shape for x in leaves]
        self.dtypes = [x.dtype for x in leaves]
        real = [x.real.dtype if x.is_complex() else x.dtype for x in leaves]
        wdtype = real[0]
        for d in real[1:]:
            wdtype = torch.promote_types(wdtype, d)
        self.wdtype = torch.promote_types(wdtype, torch.float32)
        self.rows = leaves[0].shape[0] if batched else 1
        self.sizes = [(x.numel() // self.rows) * (2 if x.is_complex() else 1) for x in leaves]

    def to_mat(self, leaves: list[torch.Tensor]) -> torch.Tensor:
        parts = [
            (torch.view_as_real(x) if x.is_complex() else x).reshape(self.rows, -1) for x in leaves
        ]
        mat = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return mat if mat.dtype == self.wdtype else mat.to(self.wdtype)

    def from_mat(self, mat: torch.Tensor) -> list[torch.Tensor]:
        parts = [mat] if len(self.sizes) == 1 else torch.split(mat, self.sizes, dim=1)
        out = []
        for p, shape, dtype in zip(parts, self.shapes, self.dtypes):
            if dtype.is_complex:
                p = torch.view_as_complex(p.to(_REAL[dtype]).reshape(*shape, 2).contiguous())
            else:
                p = p.reshape(shape)
            out.append(p if p.dtype == dtype else p.to(dtype))
        return out


_REAL = {
    torch.complex32: torch.float16,
    torch.complex64: torch.float32,
    torch.complex128: torch.float64,
}


def _mixing_weights(
    g_hist: torch.Tensor, ones: torch.Tensor, ridge: float, floor: torch.Tensor
) -> torch.Tensor:
    r"""``α = argmin ‖Σ αᵢ gᵢ‖² + λ‖α‖²`` s.t. ``Σ αᵢ = 1``, per row, with ``λ`` relative:
    ``λ = ridge · mean(diag GGᵀ)`` (plus a tiny ``floor`` so that ``G = 0`` stays solvable).
    Closed form ``α = y / Σy`` with ``(GGᵀ + λI) y = 1``. Returns ``α`` as ``(B, 1, m)``."""
    gram = torch.bmm(g_hist, g_hist.transpose(1, 2))
    diag = gram.diagonal(dim1=1, dim2=2)
    diag.add_(torch.add(floor, diag.sum(dim=1, keepdim=True), alpha=ridge / diag.shape[1]))
    y = torch.linalg.solve_ex(gram, ones)[0]
    return y.transpose(1, 2) / y.sum(dim=1, keepdim=True)


class _History(NamedTuple):
    """Anderson's ring buffers of ``f(xᵢ)`` and ``gᵢ = f(xᵢ) − xᵢ``, shape ``(B, m, n)``."""

    fs: torch.Tensor
    gs: torch.Tensor
    ones: torch.Tensor
    floor: torch.Tensor

    @staticmethod
    def start(fx: torch.Tensor, g: torch.Tensor, m: int) -> _History:
        gs = g.unsqueeze(1).repeat(1, m, 1)
        floor = torch.full((), torch.finfo(gs.dtype).tiny ** 0.5, dtype=gs.dtype, device=gs.device)
        return _History(fx.unsqueeze(1).repeat(1, m, 1), gs, torch.ones_like(gs[:, :, :1]), floor)

    def push(self, slot: int, fx: torch.Tensor, g: torch.Tensor, inplace: bool = True) -> _History:
        if not inplace or (torch.is_grad_enabled() and (fx.requires_grad or self.fs.requires_grad)):
            # differentiable (unrolled through the iterations): no in-place history
            idx = torch.tensor([slot], device=fx.device)
            return self._replace(
                fs=self.fs.index_copy(1, idx, fx.unsqueeze(1)),
                gs=self.gs.index_copy(1, idx, g.unsqueeze(1)),
            )
        self.fs[:, slot] = fx
        self.gs[:, slot] = g
        return self


def _anderson(
    fmap: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    z: list[torch.Tensor],
    maxiter: int,
    stop: _Stop,
    batched: bool,
    check_every: int | None,
    history_size: int,
    beta: float,
    ridge: float,
    fixed: bool = False,
    mixing: int = 1,
) -> tuple[list[torch.Tensor], FixedPointInfo]:
    flat = _Flat(z, batched)
    x = flat.to_mat(z)
    hist: _History | None = None
    checks = _Checks(maxiter, check_every, fixed)
    device = x.device.type
    exact = torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else None
    frozen = None
    fz = z
    for k in range(1, maxiter + 1):
        fz = fmap(flat.from_mat(x))
        fx = flat.to_mat(fz)
        g = fx - x
        if checks.due(k):
            res = torch.linalg.vector_norm(g, dim=1 if batched else None)
            if checks.record(k, *stop(res, fz), fz, res) or k == maxiter:
                break
            if checks.any_done:
                stopped = checks.stopped()
                frozen = None if stopped is None else stopped.reshape(-1, 1)
        x_new, hist = _anderson_next(x, fx, g, hist, k, history_size, beta, ridge, mixing, exact)
        x = x_new if frozen is None else torch.where(frozen, x, x_new)
    return fmap.pack(checks.output(fz)), checks.info()


def _anderson_next(
    x: torch.Tensor,
    fx: torch.Tensor,
    g: torch.Tensor,
    hist: _History | None,
    k: int,
    history_size: int,
    beta: float,
    ridge: float,
    mixing: int,
    exact: Any,
    inplace: bool = True,
) -> tuple[torch.Tensor, _History]:
    """One Anderson update after the ``k``-th evaluation ``fx = f(x)`` (``g = fx − x``): push
    it to the history, then mix the last ``min(k, m)`` steps (every ``mixing``-th step; the
    others, and the first, are plain damped steps ``x + βg``)."""
    if hist is None:
        hist = _History.start(fx, g, history_size)
    else:
        hist = hist.push((k - 1) % history_size, fx, g, inplace)
    n = min(k, history_size)
    if n == 1 or k % mixing != 0:
        return x + beta * g, hist
    fs, gs = hist.fs[:, :n], hist.gs[:, :n]
    with exact if exact is not None else nullcontext():
        alpha = _mixing_weights(gs, hist.ones[:, :n], ridge, hist.floor)
        mix = fs if beta == 1 else fs - (1 - beta) * gs
        return (alpha.transpose(1, 2) * mix).sum(dim=1), hist


def anderson(
    f: Callable[..., PyTree],
    z0: PyTree,
    *args: Any,
    history_size: int = 5,
    beta: float = 1.0,
    ridge: float = 1e-4,
    maxiter: int = 100,
    tol: float = 1e-5,
    stop_mode: str = "rel",
    batched: bool = False,
    check_every: int | None = None,
    on_failure: str = "warn",
    has_aux: bool = False,
    mixing_frequency: int = 1,
) -> tuple[PyTree, FixedPointInfo]:
    r"""Anderson acceleration (type II) of the fixed-point iteration of ``f``.

    With iterates :math:`x_i` and residuals :math:`g_i = f(x_i) - x_i` of the last
    :math:`m` = ``history_size`` steps, each step solves

    .. math::  \alpha = \arg\min_{\sum_i \alpha_i = 1}
               \Big\|\sum_i \alpha_i g_i\Big\|^2 + \lambda \|\alpha\|^2,\qquad
               \lambda = \texttt{ridge}\cdot\tfrac1m \textstyle\sum_i \|g_i\|^2,

    and sets :math:`x_{k+1} = \sum_i \alpha_i (x_i + \beta g_i)`. The regulariser is *relative*
    to the Gram matrix :math:`G G^\top`, so it keeps the same weight as the residuals shrink
    (an absolute ``λ = 1e-4``, as in TorchDEQ, dominates the Gram matrix near the solution and
    turns Anderson into damped plain iteration). The small ``m × m`` solve runs in at least
    float32 with autocast disabled, so the solver works under bf16 autocast; iterates keep the
    dtype of ``z0``. The state is flattened into one real vector per problem (complex leaves as
    real/imaginary pairs), so any pytree state works.

    Args:
        f: ``f(z, *args) -> z`` on pytrees (same structure and shapes).
        z0: initial state.
        *args: passed to ``f`` unchanged.
        history_size: ``m``, number of past steps mixed (``1`` is damped plain iteration).
        beta: damping ``β > 0`` of the mixed step (``1`` = undamped).
        ridge: relative Tikhonov weight ``≥ 0`` (see above).
        maxiter: cap on evaluations of ``f``.
        tol, stop_mode, batched, check_every, on_failure, has_aux: as
            :func:`fixed_point_iteration`.
        mixing_frequency: mix every ``k``-th step only; the steps between are plain damped
            steps :math:`x_{k+1} = x_k + \beta g_k` (their ``f(x), g`` still enter the
            history). ``1`` (default) mixes at every step (JAXopt's ``mixing_frequency``).

    Returns:
        ``(z, FixedPointInfo)``; ``z`` is ``f`` of the last checked iterate. For step-by-step
        use see :func:`anderson_algorithm`.

    Example:
        >>> import torch
        >>> z, info = anderson(torch.cos, torch.tensor(1.0, dtype=torch.float64), tol=1e-10)
        >>> round(float(z), 6), int(info.num_iter) < 15
        (0.739085, True)

    References:
        Anderson, "Iterative procedures for nonlinear integral equations", J. ACM 12(4), 1965.
        Walker & Ni, SIAM J. Numer. Anal. 49(4), 2011.
    """
    name = "anderson"
    _check_mixing(name, mixing_frequency)
    f, aux = _with_aux(name, f, has_aux)
    fmap = _Map(name, f, z0, args)
    if stop_mode not in _STOP_MODES:
        raise ValueError(f"{name}: stop_mode must be 'abs' or 'rel', got {stop_mode!r}.")
    _check_common(name, fmap.leaves0, maxiter, tol, batched, check_every)
    _check_anderson(name, history_size, beta, ridge)
    check_on_failure(name, on_failure)
    _check_finite(name, "z0", fmap.leaves0)
    z, info = _anderson(
        fmap,
        list(fmap.leaves0),
        maxiter,
        _stop_rule(stop_mode, tol, batched),
        batched,
        check_every,
        history_size,
        beta,
        ridge,
        tol == 0,
        mixing_frequency,
    )
    report_fixed_point(name, info, tol, maxiter, on_failure)
    return (z, info) if aux is None else ((z, aux.aux), info)


_FP_REMEDY = (
    "The map may not be contractive (spectral radius of its Jacobian ≥ 1): raise the "
    "iteration cap, use Anderson acceleration, or regularise the model"
)


def report_fixed_point(
    name: str,
    info: FixedPointInfo,
    tol: float | torch.Tensor,
    maxiter: int,
    on_failure: str,
    remedy: str = _FP_REMEDY,
) -> None:
    """:func:`unroll._failure.report_reasons` for a fixed-point solve's
    :class:`FixedPointInfo` (a divergence is quoted with the first residual)."""
    if on_failure == "ignore" or not _host_any(info.reason != CONVERGED):
        return
    tol_v = host_max(tol) if isinstance(tol, torch.Tensor) else tol
    report_reasons(
        name,
        info.reason,
        info.residual,
        on_failure,
        limit=f"at max_iter={maxiter}",
        tolerance=f"tol={tol_v:.3e}",
        remedy=remedy,
        unit="problems",
        start=info.trace[0],
    )


# =========================================================================== step by step
class FixedPointAlgorithm(NamedTuple):
    """A fixed-point solver as pure functions, run step by step (like
    :class:`unroll.algorithms.Algorithm`, and JAXopt's ``init_state`` / ``update``):

    * ``state = init(z0, *args)``
    * ``state = step(state, *args)``: one evaluation of ``f`` (and, for Anderson, one mixing)
    * ``z = output(state)``: the last evaluation ``f(z)``, as the one-call solver returns it

    ``n`` steps from ``init`` give, bit for bit, the one-call solver's result with ``tol=0``
    and ``maxiter=n``. Nothing is mutated: every step returns a new state.
    """

    init: Callable[..., Any]
    step: Callable[..., Any]
    output: Callable[[Any], PyTree]


class FixedPointState(NamedTuple):
    """State of :func:`fixed_point_iteration_algorithm`.

    Attributes:
        z: the current iterate (the last evaluation of ``f``; ``z0`` after ``init``).
        num_iter: evaluations of ``f`` so far (0-dim tensor).
        residual: ``‖f(z) − z‖`` of the last step (``inf`` after ``init``; per sample when
            ``batched``).
        aux: the auxiliary output of the last evaluation (``has_aux``), else None.
    """

    z: PyTree
    num_iter: torch.Tensor
    residual: torch.Tensor
    aux: Any = None


class AndersonState(NamedTuple):
    """State of :func:`anderson_algorithm`.

    Attributes:
        x: the next point to evaluate, flattened to a real ``(B, n)`` matrix (``B = 1`` unless
            batched; complex leaves as real/imaginary pairs).
        fz: the last evaluation ``f(x)`` as a pytree shaped like ``z0`` (``z0`` after
            ``init``).
        fs, gs: the history of ``f(xᵢ)`` and ``gᵢ = f(xᵢ) − xᵢ``, ``(B, m, n)`` (None after
            ``init``).
        num_iter: evaluations of ``f`` so far.
        residual: ``‖f(x) − x‖`` of the last step (per sample when batched).
        aux: the auxiliary output of the last evaluation (``has_aux``), else None.
    """

    x: torch.Tensor
    fz: PyTree
    fs: torch.Tensor | None
    gs: torch.Tensor | None
    num_iter: torch.Tensor
    residual: torch.Tensor
    aux: Any = None


def _start_count(leaves: list[torch.Tensor], batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
    like = leaves[0]
    shape = (like.shape[0],) if batched else ()
    real = like.real.dtype if like.is_complex() else like.dtype
    return (
        torch.zeros((), dtype=torch.long, device=like.device),
        torch.full(shape, math.inf, dtype=real, device=like.device),
    )


def _call(name: str, f: Callable[..., Any], z: PyTree, args: tuple, has_aux: bool):
    out = f(z, *args)
    if not has_aux:
        return out, None
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            f"{name}: has_aux=True needs f to return (z, aux), got {type(out).__name__}."
        )
    return out[0], tree.detach(out[1])


def fixed_point_iteration_algorithm(
    f: Callable[..., PyTree], *, batched: bool = False, has_aux: bool = False
) -> FixedPointAlgorithm:
    r"""Plain fixed-point iteration :math:`z_{k+1} = f(z_k, \text{args})`, step by step.

    The step-by-step form of :func:`fixed_point_iteration` (see
    :class:`FixedPointAlgorithm`): you own the loop, e.g. to log, to change ``args`` between
    steps, or to stop on your own criterion from ``state.residual``.

    Args:
        f: ``f(z, *args) -> z`` (or ``(z, aux)`` with ``has_aux``).
        batched: ``state.residual`` per sample (leading dimension of every leaf).
        has_aux: ``f`` returns ``(z, aux)``; ``state.aux`` holds the last ``aux``, detached.

    Returns:
        :class:`FixedPointAlgorithm` over :class:`FixedPointState`.

    Example:
        >>> import torch
        >>> alg = fixed_point_iteration_algorithm(torch.cos)
        >>> state = alg.init(torch.tensor(1.0, dtype=torch.float64))
        >>> for _ in range(100):
        ...     state = alg.step(state)
        >>> z, _ = fixed_point_iteration(torch.cos, torch.tensor(1.0, dtype=torch.float64),
        ...                              tol=0, maxiter=100)
        >>> torch.equal(alg.output(state), z)
        True
    """
    name = "fixed_point_iteration_algorithm"
    if not callable(f):
        raise TypeError(f"{name}: f must be callable f(z, *args) -> z, got {type(f).__name__}.")
    if not isinstance(has_aux, bool) or not isinstance(batched, bool):
        raise TypeError(f"{name}: has_aux and batched must be True or False.")

    def init(z0: PyTree, *args: Any) -> FixedPointState:
        leaves = tree.leaves(z0)
        _check_common(name, leaves, 1, 0.0, batched, None)
        count, res = _start_count(leaves, batched)
        return FixedPointState(z0, count, res, None)

    def step(state: FixedPointState, *args: Any) -> FixedPointState:
        fz, aux = _call(name, f, state.z, args, has_aux)
        zl, fl = tree.leaves(state.z), tree.leaves(fz)
        if len(zl) != len(fl) or any(a.shape != b.shape for a, b in zip(zl, fl)):
            raise ValueError(f"{name}: f must return a state shaped like z.")
        res = _norm([a - b for a, b in zip(fl, zl)], batched)
        return FixedPointState(fz, state.num_iter + 1, res, aux)

    return FixedPointAlgorithm(init, step, lambda state: state.z)


def anderson_algorithm(
    f: Callable[..., PyTree],
    *,
    history_size: int = 5,
    beta: float = 1.0,
    ridge: float = 1e-4,
    mixing_frequency: int = 1,
    batched: bool = False,
    has_aux: bool = False,
) -> FixedPointAlgorithm:
    r"""Anderson acceleration, step by step: the step-by-step form of :func:`anderson`
    (same update, options and meaning; see :class:`FixedPointAlgorithm`).

    Args:
        f: ``f(z, *args) -> z`` (or ``(z, aux)`` with ``has_aux``).
        history_size, beta, ridge, mixing_frequency: as :func:`anderson`.
        batched: the leading dimension of every leaf indexes independent problems.
        has_aux: ``f`` returns ``(z, aux)``; ``state.aux`` holds the last ``aux``, detached.

    Returns:
        :class:`FixedPointAlgorithm` over :class:`AndersonState`.

    Example:
        >>> import torch
        >>> alg = anderson_algorithm(torch.cos, history_size=3)
        >>> state = alg.init(torch.tensor(1.0, dtype=torch.float64))
        >>> for _ in range(10):
        ...     state = alg.step(state)
        >>> z, _ = anderson(torch.cos, torch.tensor(1.0, dtype=torch.float64), history_size=3,
        ...                 tol=0, maxiter=10)
        >>> torch.equal(alg.output(state), z)
        True

    References:
        Walker & Ni, SIAM J. Numer. Anal. 49(4), 2011.
    """
    name = "anderson_algorithm"
    if not callable(f):
        raise TypeError(f"{name}: f must be callable f(z, *args) -> z, got {type(f).__name__}.")
    _check_anderson(name, history_size, beta, ridge)
    _check_mixing(name, mixing_frequency)
    if not isinstance(has_aux, bool) or not isinstance(batched, bool):
        raise TypeError(f"{name}: has_aux and batched must be True or False.")

    def init(z0: PyTree, *args: Any) -> AndersonState:
        leaves, spec = tree.flatten(z0)
        _check_common(name, leaves, 1, 0.0, batched, None)
        count, res = _start_count(leaves, batched)
        return AndersonState(_Flat(leaves, batched).to_mat(leaves), z0, None, None, count, res)

    def step(state: AndersonState, *args: Any) -> AndersonState:
        leaves, spec = tree.flatten(state.fz)
        flat = _Flat(leaves, batched)
        fz, aux = _call(name, f, tree.unflatten(spec, flat.from_mat(state.x)), args, has_aux)
        fl, fspec = tree.flatten(fz)
        if fspec != spec or any(a.shape != b.shape for a, b in zip(fl, leaves)):
            raise ValueError(f"{name}: f must return a state with the structure of z0.")
        fx = flat.to_mat(fl)
        g = fx - state.x
        hist = None
        if state.fs is not None and state.gs is not None:
            ones = torch.ones_like(state.gs[:, :, :1])
            floor = torch.full((), torch.finfo(g.dtype).tiny ** 0.5, dtype=g.dtype, device=g.device)
            hist = _History(state.fs, state.gs, ones, floor)
        k = int(state.num_iter) + 1
        device = g.device.type
        exact = torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else None
        x_new, hist = _anderson_next(
            state.x, fx, g, hist, k, history_size, beta, ridge, mixing_frequency, exact, False
        )
        res = torch.linalg.vector_norm(g, dim=1 if batched else None)
        return AndersonState(x_new, fz, hist.fs, hist.gs, state.num_iter + 1, res, aux)

    return FixedPointAlgorithm(init, step, lambda state: state.fz)
