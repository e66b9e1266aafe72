"""Dense solvers of the materialised operator: inverse, Cholesky, LU, QR."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from unroll._failure import (
    BREAKDOWN,
    CONVERGED,
)
from unroll._host import host_any as _host_any
from unroll._typing import MatVec, PyTree
from unroll.linear_solve._common import (
    DENSE_MAX_UNKNOWNS,
    _check_finite,
    _Dots,
    _finish,
    _info,
    _Operator,
    _Options,
    _setup,
    _threshold_sq,
)
from unroll.linear_solve._fixed_point import solve_neumann


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


_solve_inv_dense = _make_dense(
    "solve_inv",
    _inv_solve,
    _DENSE_DOC.format(what="inverse", how="applies its explicit inverse", req="", name="solve_inv"),
)


def solve_inv(
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
    ns: bool = False,
    alpha: float | None = None,
    **options: Any,
) -> PyTree:
    common = {
        "init": init,
        "ridge": ridge,
        "rtol": rtol,
        "atol": atol,
        "maxiter": maxiter,
        "batched": batched,
        "return_info": return_info,
        "on_failure": on_failure,
    }
    if not isinstance(ns, bool):
        raise TypeError(f"solve_inv: ns must be True or False, got {ns!r}.")
    if ns:
        if max_unknowns != DENSE_MAX_UNKNOWNS:
            raise TypeError("solve_inv: max_unknowns applies to the dense inverse (ns=False).")
        return solve_neumann(matvec, b, alpha=1.0 if alpha is None else alpha, **common, **options)
    if alpha is not None:
        raise TypeError(
            "solve_inv: alpha is the Neumann-series step; pass it with ns=True (or use "
            "solve_neumann)."
        )
    return _solve_inv_dense(matvec, b, max_unknowns=max_unknowns, **common, **options)


solve_inv.__doc__ = (
    cast(str, _solve_inv_dense.__doc__).replace(
        "Dense inverse of the materialised operator (small problems).",
        "Dense inverse of the materialised operator (small problems), or with ``ns=True`` its\n"
        "    Neumann-series approximation (:func:`solve_neumann`, TorchOpt's\n"
        "    ``solve_inv(ns=True)``; ``alpha`` is then its step).",
    )
    + """
    Migrating from TorchOpt: ``torchopt.linear_solve.solve_inv(ns=True, maxiter=10)`` (a factory
    returning a solver) is ``functools.partial(solve_inv, ns=True, maxiter=10, rtol=0)`` here
    (``rtol=0``: exactly the ``maxiter + 1`` terms TorchOpt sums, no tolerance).
"""
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


def _qr_solve(name: str, mat: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    q, r = torch.linalg.qr(mat)
    if _host_any(r.diagonal(dim1=-2, dim2=-1) == 0):
        _singular(name, torch.ones(()))
    return torch.linalg.solve_triangular(r, q.mH @ rhs, upper=True)


solve_qr = _make_dense(
    "solve_qr",
    _qr_solve,
    _DENSE_DOC.format(
        what="QR solve",
        how="solves :math:`Rx = Q^H b` with its Householder QR factors :math:`A + \\rho I = QR`"
        " (JAXopt's ``solve_qr``; backward-stable, for any square operator)",
        req="",
        name="solve_qr",
    ),
)
