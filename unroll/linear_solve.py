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
* ``maxiter``: iteration cap (default ``10·n`` for ``n`` unknowns per system).
* ``batched``: the leading dimension of every leaf indexes independent systems. Inner products,
  step sizes and convergence are then per sample; a converged sample's iterate stops changing.
* ``return_info``: also return :class:`SolveInfo`.

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
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from unroll import tree

PyTree = Any
MatVec = Callable[[PyTree], PyTree]

__all__ = [
    "ConvergenceWarning",
    "SolveInfo",
    "solve_cg",
    "solve_normal_cg",
    "solve_bicgstab",
    "solve_gmres",
    "solve_inv",
    "solve_cholesky",
    "solve_lu",
]


class ConvergenceWarning(UserWarning):
    """An iterative solve (linear system, fixed point, backward pass) stopped before reaching
    its tolerance; results derived from it (e.g. gradients) may be inaccurate."""


class SolveInfo(NamedTuple):
    """Diagnostics of a linear solve (tensors; per sample when ``batched``).

    Attributes:
        num_iter: iterations each system used until it converged (or the cap).
        residual_norm: ``‖b − (A+ρI)x‖`` at return (the recursive residual for CG/BiCGStab).
        converged: whether ``residual_norm ≤ max(rtol·‖b‖, atol)``; always True with
            ``rtol = atol = 0`` (a fixed number of iterations was asked for, no tolerance).
    """

    num_iter: torch.Tensor
    residual_norm: torch.Tensor
    converged: torch.Tensor


# =========================================================================== validation
_COMMON = ("init", "ridge", "rtol", "atol", "maxiter", "batched", "return_info")


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
    if not (rtol >= 0 and atol >= 0):
        raise ValueError(f"{name}: rtol and atol must be >= 0, got rtol={rtol}, atol={atol}.")
    if maxiter is not None and (not isinstance(maxiter, int) or maxiter <= 0):
        raise ValueError(f"{name}: maxiter must be a positive int or None, got {maxiter!r}.")
    if batched:
        sizes = {leaf.shape[0] for leaf in b_leaves}
        if len(sizes) != 1:
            raise ValueError(
                f"{name}: batched=True needs the same leading (batch) size on every leaf of b, "
                f"got {sorted(sizes)}."
            )


def _in_vmap() -> bool:
    """True when called inside ``torch.func.vmap`` (at any level)."""
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(
        i.key() == torch._C._functorch.TransformType.Vmap
        for i in retrieve_all_functorch_interpreters()
    )


def _host_any(t: torch.Tensor) -> bool:
    """``bool(t.any())`` read on the host, also inside ``torch.func`` transforms.

    Inside ``vmap`` a data-dependent ``bool`` is not allowed; there the functorch wrappers are
    peeled off and the question is asked of the whole underlying batch (any problem still
    active keeps every problem iterating, with converged ones frozen by masks, which gives
    the same per-problem results as a loop).
    """
    try:
        return bool(t) if t.dim() == 0 else bool(t.any())
    except RuntimeError:
        funct = torch._C._functorch
        while funct.is_functorch_wrapped_tensor(t):
            t = funct.get_unwrapped(t)
        return bool(t.any())


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
        out = self.matvec(tree.unflatten(self.spec, leaves))
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


def _setup(
    name: str,
    matvec: MatVec,
    b: PyTree,
    *,
    init: PyTree | None,
    ridge: Any,
    rtol: float,
    atol: float,
    maxiter: int | None,
    batched: bool,
    real_only: bool,
    options: dict[str, Any],
    allowed: tuple[str, ...] = _COMMON,
) -> tuple[_Operator, list[torch.Tensor], int]:
    _check_options(name, options, allowed)
    op = _Operator(name, matvec, b, ridge)
    _check_args(name, matvec, op.b_leaves, rtol, atol, maxiter, real_only, batched)
    if init is None:
        x0 = [torch.zeros_like(leaf) for leaf in op.b_leaves]
    else:
        x0, spec = tree.flatten(init)
        if spec != op.spec or any(a.shape != c.shape for a, c in zip(x0, op.b_leaves)):
            raise ValueError(f"{name}: init must have the structure and shapes of b.")
    n = sum(leaf[0].numel() if batched else leaf.numel() for leaf in op.b_leaves)
    return op, x0, maxiter if maxiter is not None else 10 * max(n, 1)


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

    def axpy(self, s: torch.Tensor, x: list[torch.Tensor], y: list[torch.Tensor],
             sign: int = 1, expanded: bool = False):
        """``y + sign · s x`` with ``s`` a scalar per problem (``expanded``: already shaped by
        :meth:`expand` for leaves of equal rank)."""
        if self.single and (expanded or (not self.batched and not self.complex)):
            return [torch.addcmul(y[0], s, x[0], value=sign)]
        return [torch.addcmul(yy, self.expand(s, xx), xx, value=sign) for xx, yy in zip(x, y)]

    def expand(self, s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.batched:
            s = s.reshape(s.shape + (1,) * (like.dim() - 1))
        return s.to(like.dtype) if self.complex and not s.is_complex() else s


def _conj_mul(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.conj() * y if x.is_complex() else x * y


def _safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(x)`` with a zero (not NaN) gradient at ``x = 0`` (Arnoldi breakdown)."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` with 0 where ``b == 0`` (a converged or zero system takes no step)."""
    return a / torch.where(b == 0, torch.ones_like(b), b)


# =========================================================================== loop driver
class _Loop:
    """Runs ``step(k)`` up to ``maxiter`` times, asking the host whether all systems have
    converged every ``check_every`` iterations."""

    def __init__(self, probe: torch.Tensor, maxiter: int, check_every: int | None) -> None:
        self.maxiter = maxiter
        if check_every is None:
            check_every = 1 if probe.device.type == "cpu" else 8
        self.check_every = max(int(check_every), 1)

    def run(self, step: Callable[[int], torch.Tensor], active: torch.Tensor) -> int:
        """``step(k)`` returns the new ``active`` mask; returns the iterations run."""
        if not _host_any(active):
            return 0
        k = 0
        while k < self.maxiter:
            active = step(k)
            k += 1
            if k % self.check_every == 0 and not _host_any(active):
                break
        return k


class _Start(NamedTuple):
    """What every Krylov solver starts from."""

    op: _Operator
    x: list[torch.Tensor]
    r: list[torch.Tensor]
    dots: _Dots
    loop: _Loop
    thresh_sq: torch.Tensor


def _start(name: str, matvec: MatVec, b: PyTree, init: PyTree | None, ridge: Any, rtol: float,
           atol: float, maxiter: int | None, batched: bool, check_every: int | None,
           real_only: bool, options: dict[str, Any]) -> _Start:
    """Validate, then build the operator, initial iterate and residual, and the loop driver."""
    op, x, maxiter = _setup(
        name, matvec, b, init=init, ridge=ridge, rtol=rtol, atol=atol, maxiter=maxiter,
        batched=batched, real_only=real_only, options=options,
    )
    bl = op.b_leaves
    dots = _Dots(batched, bl)
    _check_finite(name, bl + x)
    r = bl if init is None else [bb - ax for bb, ax in zip(bl, op(x))]
    return _Start(op, x, r, dots, _Loop(bl[0], maxiter, check_every),
                  _threshold_sq(dots, bl, rtol, atol))


def _info(
    num_iter: torch.Tensor | int, res_sq: torch.Tensor, thresh_sq: torch.Tensor, fixed: bool
) -> SolveInfo:
    """``fixed``: ``rtol = atol = 0`` asked for a fixed number of iterations, so there is no
    tolerance to miss and ``converged`` is True (the residual is still reported)."""
    if not isinstance(num_iter, torch.Tensor):
        num_iter = torch.full_like(res_sq, num_iter, dtype=torch.long)
    converged = torch.ones_like(res_sq, dtype=torch.bool) if fixed else res_sq <= thresh_sq
    return SolveInfo(num_iter, res_sq.sqrt(), converged)


def _threshold_sq(dots: _Dots, b: list[torch.Tensor], rtol: float, atol: float):
    b_sq = dots.sq(b)
    return torch.clamp(b_sq * rtol**2, min=atol**2)


def _finish(spec: Any, x: list[torch.Tensor], return_info: bool, info: SolveInfo):
    out = tree.unflatten(spec, x)
    return (out, info) if return_info else out


def _check_finite(name: str, leaves: list[torch.Tensor]) -> None:
    if any(_host_any(~torch.isfinite(t)) for t in leaves):
        raise ValueError(f"{name}: b (or init) contains NaN or Inf; check the inputs.")


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
        maxiter: iteration cap (default ``10 n``).
        batched: leading dimension of every leaf is a batch of independent systems.
        return_info: also return :class:`SolveInfo`.
        check_every: iterations between host-side convergence checks (default 1 on CPU, 8
            elsewhere). Results do not depend on it.

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
    return _cg("solve_cg", matvec, b, init, ridge, rtol, atol, maxiter, batched, return_info,
               check_every, options)


def _cg(
    name: str,
    matvec: MatVec,
    b: PyTree,
    init: PyTree | None,
    ridge: Any,
    rtol: float,
    atol: float,
    maxiter: int | None,
    batched: bool,
    return_info: bool,
    check_every: int | None,
    options: dict[str, Any],
) -> PyTree:
    op, x, r, dots, loop, thresh_sq = _start(name, matvec, b, init, ridge, rtol, atol, maxiter,
                                             batched, check_every, False, options)
    # Systems are frozen by masks unless one system is checked on the host every iteration.
    masked = batched or loop.check_every > 1 or _in_vmap()
    tiny = torch.finfo(thresh_sq.dtype).tiny
    one = dots.single
    rs = dots.sq(r)
    s = {"x": x, "r": r, "p": r, "rs": rs, "active": rs > thresh_sq,
         "count": torch.zeros_like(rs, dtype=torch.long) if return_info else None}

    def step(_: int) -> torch.Tensor:
        ap = op(s["p"])
        if masked:  # a frozen (converged) system may have p = 0: guard the divisions
            alpha = torch.where(s["active"], s["rs"] / (dots.rdot(s["p"], ap) + tiny), 0)
        else:  # checked every iteration: never called once rs == 0, so p ≠ 0 for SPD A
            alpha = s["rs"] / dots.rdot(s["p"], ap)
        if one:  # broadcast once for both updates
            alpha = dots.expand(alpha, ap[0])
        s["x"] = dots.axpy(alpha, s["p"], s["x"], expanded=one)
        s["r"] = dots.axpy(alpha, ap, s["r"], sign=-1, expanded=one)
        rs_new = dots.sq(s["r"])
        beta = rs_new / (s["rs"] + tiny) if masked else rs_new / s["rs"]
        s["p"] = dots.axpy(beta, s["p"], s["r"])
        if s["count"] is not None:
            s["count"] = s["count"] + s["active"]
        s["rs"] = torch.where(s["active"], rs_new, s["rs"]) if masked else rs_new
        s["active"] = s["rs"] > thresh_sq  # frozen systems keep rs <= thresh
        return s["active"]

    k = loop.run(step, s["active"])
    info = _info(s["count"] if s["count"] is not None else k, s["rs"], thresh_sq,
                 rtol == atol == 0)
    return _finish(op.spec, s["x"], return_info, info)


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
    _check_options(name, options, _COMMON)
    b_leaves = tree.leaves(b)
    _check_args(name, matvec, b_leaves, rtol, atol, maxiter, False, batched)
    _check_finite(name, b_leaves)
    example = tree.zeros_like(b) if init is None else tree.zeros_like(init)
    try:
        out, vjp_fn = torch.func.vjp(matvec, example)
    except Exception as err:  # noqa: BLE001 - re-raised with guidance
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

    return _cg(name, normal_matvec, rmatvec(b), init, ridge, rtol, atol, maxiter, batched,
               return_info, check_every, {})


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
    op, x, r, dots, loop, thresh_sq = _start(name, matvec, b, init, ridge, rtol, atol, maxiter,
                                             batched, check_every, True, options)
    r_hat = r
    rs = dots.sq(r)
    one = torch.ones_like(rs)
    s0 = {"x": x, "r": r, "p": [torch.zeros_like(t) for t in r],
          "v": [torch.zeros_like(t) for t in r], "rho": one, "alpha": one, "omega": one,
          "rs": rs, "active": rs > thresh_sq}
    count = torch.zeros_like(rs, dtype=torch.long) if return_info else None
    s = s0

    def step(_: int) -> torch.Tensor:
        nonlocal count
        act = s["active"]
        rho = dots.dot(r_hat, s["r"])
        beta = _safe_div(rho, s["rho"]) * _safe_div(s["alpha"], s["omega"])
        # p = r + beta (p - omega v)
        pv = dots.axpy(-s["omega"], s["v"], s["p"])
        p = dots.axpy(beta, pv, s["r"])
        v = op(p)
        alpha = _safe_div(rho, dots.dot(r_hat, v))
        h = dots.axpy(torch.where(act, alpha, 0), p, s["x"])
        sv = dots.axpy(-alpha, v, s["r"])
        t = op(sv)
        omega = _safe_div(dots.dot(t, sv), dots.sq(t))
        omega_act = torch.where(act, omega, 0)
        s["x"] = dots.axpy(omega_act, sv, h)
        r_new = dots.axpy(-omega, t, sv)
        keep = [dots.expand(act, a) for a in r_new]
        s["r"] = [torch.where(m, a, o) for m, a, o in zip(keep, r_new, s["r"])]
        s["p"], s["v"] = p, v
        s["rho"] = torch.where(act, rho, s["rho"])
        s["alpha"] = torch.where(act, alpha, s["alpha"])
        s["omega"] = torch.where(act, omega, s["omega"])
        if count is not None:
            count = count + act
        s["rs"] = torch.where(act, dots.sq(s["r"]), s["rs"])
        s["active"] = act & (s["rs"] > thresh_sq)
        return s["active"]

    k = loop.run(step, s["active"])
    info = _info(count if count is not None else k, s["rs"], thresh_sq, rtol == atol == 0)
    return _finish(op.spec, s["x"], return_info, info)


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
    op, x, r, dots, loop, thresh_sq = _start(name, matvec, b, init, ridge, rtol, atol, maxiter,
                                             batched, 1, True, options)
    maxiter = loop.maxiter
    bl = op.b_leaves
    rs = dots.sq(r)
    state = {"x": x, "r": r, "rs": rs, "active": rs > thresh_sq}
    count = torch.zeros_like(rs, dtype=torch.long) if return_info else None
    used = [0]

    def cycle(_: int) -> torch.Tensor:
        nonlocal count
        m = min(restart, maxiter - used[0])
        used[0] += m
        act = state["active"]
        update = _arnoldi_lstsq(op, dots, state["r"], state["rs"], m)
        update = [torch.where(dots.expand(act, u), u, torch.zeros_like(u)) for u in update]
        state["x"] = [a + u for a, u in zip(state["x"], update)]
        state["r"] = [bb - ax for bb, ax in zip(bl, op(state["x"]))]
        if count is not None:
            count = count + act * m
        state["rs"] = torch.where(act, dots.sq(state["r"]), state["rs"])
        state["active"] = act & (state["rs"] > thresh_sq)
        return state["active"]

    loop.maxiter = -(-maxiter // restart)
    k = loop.run(cycle, state["active"])
    info = _info(count if count is not None else min(k * restart, maxiter), state["rs"],
                 thresh_sq, rtol == atol == 0)
    return _finish(op.spec, state["x"], return_info, info)


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
    name: str, op: _Operator, batched: bool
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], list[torch.Tensor]]]:
    """The operator as a dense matrix over the concatenated leaves.

    Returns ``(M, rhs, split)``: ``M`` of shape ``(n, n)`` (or ``(B, n, n)`` when batched),
    ``rhs`` the flattened ``b``, and ``split`` mapping a flat vector back to leaves.
    """
    bl = op.b_leaves
    shapes = [t.shape[1:] if batched else t.shape for t in bl]
    sizes = [int(torch.Size(s).numel()) for s in shapes]
    n = sum(sizes)
    dtype = bl[0].dtype
    for t in bl:
        dtype = torch.promote_types(dtype, t.dtype)
    bsz = bl[0].shape[0] if batched else None

    def split(flat: torch.Tensor) -> list[torch.Tensor]:
        parts = torch.split(flat, sizes, dim=-1)
        lead = (bsz,) if batched else ()
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
    except Exception:  # noqa: BLE001 - a matvec that cannot be vmapped: column by column
        cols = torch.stack([concat(op(split(e))) for e in eye])
    mat = cols.movedim(0, -1)  # column j = A e_j
    return mat, concat(bl), split


def _dense(
    name: str,
    factor_solve: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    matvec: MatVec,
    b: PyTree,
    init: PyTree | None,
    ridge: Any,
    rtol: float,
    atol: float,
    maxiter: int | None,
    batched: bool,
    return_info: bool,
    options: dict[str, Any],
) -> PyTree:
    op, _, _ = _setup(
        name, matvec, b, init=init, ridge=ridge, rtol=rtol, atol=atol, maxiter=maxiter,
        batched=batched, real_only=False, options=options,
    )
    _check_finite(name, op.b_leaves)
    mat, rhs, split = _materialise(name, op, batched)
    flat = factor_solve(mat, rhs.unsqueeze(-1)).squeeze(-1)
    x = split(flat)
    if not return_info:
        return tree.unflatten(op.spec, x)
    dots = _Dots(batched, op.b_leaves)
    res = [bb - ax for bb, ax in zip(op.b_leaves, op(x))]
    res_sq = dots.sq(res)
    thresh_sq = _threshold_sq(dots, op.b_leaves, rtol, atol)
    return _finish(op.spec, x, True, _info(1, res_sq, thresh_sq, rtol == atol == 0))


def _make_dense(
    name: str, factor_solve: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], doc: str
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
        **options: Any,
    ) -> PyTree:
        return _dense(
            name, factor_solve, matvec, b, init, ridge, rtol, atol, maxiter, batched,
            return_info, options,
        )

    solver.__name__ = solver.__qualname__ = name
    solver.__doc__ = doc
    return solver


_DENSE_DOC = r"""Dense {what} of the materialised operator (small problems).

    Builds the matrix of :math:`A + \rho I` over the concatenation of all leaves of ``b``
    (so coupled multi-leaf systems are solved exactly, not block by block) with one ``vmap``
    of ``matvec`` over the identity, then {how}. ``init``, ``rtol``, ``atol`` and ``maxiter``
    are accepted for a uniform signature; ``rtol``/``atol`` only set ``SolveInfo.converged``.

    Args:
        matvec: ``x ↦ A x`` on pytrees shaped like ``b``. {req}
        b: right-hand side pytree (``n`` unknowns in all; cost ``O(n³)``).
        batched: every leaf's leading dimension indexes independent systems.
        return_info: also return :class:`SolveInfo` with the true residual.

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


def _inv_solve(mat: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    return torch.linalg.inv(mat) @ rhs


def _cholesky_solve(mat: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    chol, info = torch.linalg.cholesky_ex(mat)
    if _host_any(info != 0):
        raise ValueError(
            "solve_cholesky: the operator is not (numerically) positive definite; use "
            "solve_lu, or add ridge=..."
        )
    return torch.cholesky_solve(rhs, chol)


def _lu_solve(mat: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    lu, piv = torch.linalg.lu_factor(mat)
    return torch.linalg.lu_solve(lu, piv, rhs)


solve_inv = _make_dense(
    "solve_inv", _inv_solve,
    _DENSE_DOC.format(what="inverse", how="applies its explicit inverse", req="", name="solve_inv"),
)
solve_cholesky = _make_dense(
    "solve_cholesky", _cholesky_solve,
    _DENSE_DOC.format(
        what="Cholesky solve", how="solves with its Cholesky factor",
        req="Must be symmetric (Hermitian) positive definite.", name="solve_cholesky",
    ),
)
solve_lu = _make_dense(
    "solve_lu", _lu_solve,
    _DENSE_DOC.format(what="LU solve", how="solves with its pivoted LU factors", req="",
                      name="solve_lu"),
)
