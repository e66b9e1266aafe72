"""What every linear solver shares: validation, the operator wrapper, inner products, the
loop driver, diagnostics and the one result path (the failure policy)."""

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
    SolveInfo,
    check_on_failure,
    report_failure,
)
from unroll._host import host_any as _host_any
from unroll._host import host_any_nonfinite
from unroll._typing import MatVec, PyTree

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


class ShapeMismatchError(ValueError, TypeError):
    """A non-square operator was given without the shape of the unknown (``init``), or
    ``matvec(x)`` is not shaped like ``b``. Both a ``ValueError`` (unroll's rule for bad
    input) and a ``TypeError`` (what JAXopt raises here), so code written for either catches
    it."""


def _normal_setup(
    name: str,
    matvec: MatVec,
    b: PyTree,
    opts: _Options,
    options: dict[str, Any],
    rmatvec: Callable[[PyTree], PyTree] | None = None,
) -> tuple[Callable[[PyTree], PyTree], PyTree]:
    """Validate a least-squares solve of a possibly non-square ``A`` and return ``Aᵀ`` and an
    example of the unknown: the given ``rmatvec`` (a plain call of ``matvec`` checks the
    shapes), else ``torch.func.vjp`` of the linear ``matvec``."""
    _check_options(name, options, _COMMON)
    b_leaves = tree.leaves(b)
    _check_args(name, matvec, b_leaves, opts.rtol, opts.atol, opts.maxiter, False, opts.batched)
    check_on_failure(name, opts.on_failure)
    init = opts.init
    _check_finite(name, b_leaves, [] if init is None else tree.leaves(init))
    example = tree.zeros_like(b) if init is None else tree.zeros_like(init)
    what = "b" if init is None else "init"
    try:
        if rmatvec is None:
            out, vjp_fn = _first_call(name, lambda e: torch.func.vjp(matvec, e), example, what)
            rmatvec = lambda y: vjp_fn(y)[0]  # noqa: E731
        else:
            out = _first_call(name, matvec, example, what)
    except TypeError:
        raise
    except Exception as err:  # noqa: BLE001 - re-raised with guidance
        if isinstance(err, torch.OutOfMemoryError):
            raise
        raise ShapeMismatchError(
            f"{name}: matvec failed on an input shaped like {what} ({err}). For a non-square "
            "operator pass init=... shaped like the unknown x."
        ) from err
    if tree.structure(out) != tree.structure(b) or any(
        o.shape != bb.shape for o, bb in zip(tree.leaves(out), b_leaves)
    ):
        raise ShapeMismatchError(
            f"{name}: matvec(x) must be shaped like b; for a non-square operator pass "
            "init=... shaped like the unknown x."
        )
    for o, bb in zip(tree.leaves(out), b_leaves):
        if o.dtype != bb.dtype:
            raise TypeError(
                f"{name}: matvec returns {o.dtype} for b of dtype {bb.dtype}; the operator and "
                f"b must share a dtype: convert b with b.to({o.dtype}) or the operator."
            )

    return rmatvec, example
