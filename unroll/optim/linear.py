r"""DeepInverse 0.4.1's linear solvers under their names (``deepinv.optim.linear``), on
unroll's: same call shapes, unroll's solvers and failure policy underneath.

* :func:`conjugate_gradient`, :func:`bicgstab`, :func:`minres`: solve :math:`Ax = b` per
  sample (``parallel_dim=0``: the leading dimension is the batch) to the relative residual
  ``tol`` (DeepInverse's CG criterion :math:`\|r\|^2 < \mathrm{tol}^2 \|b\|^2`);
* :func:`lsqr`: :math:`\min_x \|Ax - b\|^2 + \eta \|x - x_0\|^2`;
* :func:`least_squares` / :func:`least_squares_implicit_backward`:
  :math:`\min_x \tfrac12\|Ax - y\|^2 + \tfrac1{2\gamma}\|x - z\|^2` (``gamma=None``: the
  minimum-norm least-squares solution), through :func:`unroll.physics.least_squares`.

A solve that stops short warns (:class:`~unroll.linear_solve.ConvergenceWarning`) instead of
returning silently; ``verbose=True`` prints its iterations and residual.

Example:
    >>> import torch
    >>> from unroll.optim.linear import conjugate_gradient
    >>> M = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    >>> b = torch.tensor([[1.0, 2.0]])
    >>> conjugate_gradient(lambda x: x @ M.T, b, tol=1e-8)
    tensor([[0.0909, 0.6364]])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch

from unroll import linear_solve as ls
from unroll._failure import SolveInfo, summary

__all__ = [
    "conjugate_gradient",
    "bicgstab",
    "minres",
    "lsqr",
    "least_squares",
    "least_squares_implicit_backward",
]

MatVec = Callable[[torch.Tensor], torch.Tensor]


def _batched(api: str, parallel_dim: Any) -> bool:
    """``parallel_dim`` 0 / ``[0]``: one system per sample; ``None`` / ``[]``: one system."""
    if parallel_dim in (0, [0], (0,)):
        return True
    if parallel_dim is None or parallel_dim in ([], ()):
        return False
    raise ValueError(
        f"{api}: parallel_dim={parallel_dim!r} is not supported; use 0 (the leading dimension "
        "holds independent systems) or None (one system)."
    )


def _report(api: str, info: SolveInfo, verbose: bool) -> None:
    if verbose:
        print(f"{api}: {summary(info)}")


def _krylov(api: str, method, A: MatVec, b, init, max_iter, tol, parallel_dim, verbose):
    x, info = method(
        A,
        b,
        init=init,
        rtol=float(tol),
        maxiter=int(max_iter),
        batched=_batched(api, parallel_dim),
        return_info=True,
    )
    _report(api, info, verbose)
    return x


def conjugate_gradient(
    A: MatVec,
    b: torch.Tensor,
    max_iter: float = 1e2,
    tol: float = 1e-5,
    eps: float = 1e-8,
    parallel_dim: None | int | list[int] = 0,
    init: torch.Tensor | None = None,
    verbose: bool = False,
) -> torch.Tensor:
    """Conjugate gradient for a Hermitian positive-definite ``A``
    (:func:`unroll.linear_solve.solve_cg`); ``eps`` is accepted and unused (unroll's CG guards
    its divisions itself)."""
    del eps
    api = "unroll.optim.linear.conjugate_gradient"
    return _krylov(api, ls.solve_cg, A, b, init, max_iter, tol, parallel_dim, verbose)


def bicgstab(
    A: MatVec,
    b: torch.Tensor,
    init: torch.Tensor | None = None,
    max_iter: float = 1e2,
    tol: float = 1e-5,
    parallel_dim: None | int | list[int] = 0,
    verbose: bool = False,
    **unused: Any,
) -> torch.Tensor:
    """BiCGStab for a general square ``A`` (:func:`unroll.linear_solve.solve_bicgstab`);
    DeepInverse's preconditioner keywords are not supported."""
    _no_preconditioner("unroll.optim.linear.bicgstab", unused)
    api = "unroll.optim.linear.bicgstab"
    return _krylov(api, ls.solve_bicgstab, A, b, init, max_iter, tol, parallel_dim, verbose)


def minres(
    A: MatVec,
    b: torch.Tensor,
    init: torch.Tensor | None = None,
    max_iter: float = 1e2,
    tol: float = 1e-5,
    eps: float = 1e-6,
    parallel_dim: None | int | list[int] = 0,
    verbose: bool = False,
    **unused: Any,
) -> torch.Tensor:
    """MINRES for a Hermitian, possibly indefinite ``A``
    (:func:`unroll.linear_solve.solve_minres`); ``eps`` is accepted and unused."""
    del eps
    _no_preconditioner("unroll.optim.linear.minres", unused)
    api = "unroll.optim.linear.minres"
    return _krylov(api, ls.solve_minres, A, b, init, max_iter, tol, parallel_dim, verbose)


def _no_preconditioner(api: str, unused: dict[str, Any]) -> None:
    for key, value in unused.items():
        if value is not None:
            raise TypeError(f"{api}: {key}= is not supported (unroll's Krylov solvers take none).")


def lsqr(
    A: MatVec,
    AT: MatVec,
    b: torch.Tensor,
    eta: float | torch.Tensor = 0.0,
    x0: torch.Tensor | None = None,
    tol: float = 1e-6,
    conlim: float = 1e8,
    max_iter: int = 100,
    parallel_dim: None | int | list[int] = 0,
    verbose: bool = False,
    **unused: Any,
) -> tuple[torch.Tensor, SolveInfo]:
    r""":math:`\min_x \|Ax - b\|^2 + \eta\|x - x_0\|^2` by LSQR
    (:func:`unroll.linear_solve.solve_lsqr` on :math:`d = x - x_0`).

    Returns:
        ``(x, info)``: the solution and the solve's :class:`~unroll.linear_solve.SolveInfo`
        (DeepInverse returns a condition-number estimate second; ``conlim`` is unused).
    """
    del conlim
    api = "unroll.optim.linear.lsqr"
    _no_preconditioner(api, unused)
    rhs = b if x0 is None else b - A(x0)
    ridge = None if isinstance(eta, (int, float)) and eta == 0 else eta
    start = torch.zeros_like(AT(b) if x0 is None else x0)  # x's shape (A may be non-square)
    d, info = ls.solve_lsqr(
        A,
        rhs,
        init=start,
        rmatvec=AT,
        ridge=ridge,
        rtol=float(tol),
        maxiter=int(max_iter),
        batched=_batched(api, parallel_dim),
        return_info=True,
    )
    _report(api, info, verbose)
    return (d if x0 is None else x0 + d), info


def least_squares(
    A: MatVec,
    AT: MatVec,
    y: torch.Tensor,
    z: torch.Tensor | float | None = 0.0,
    init: torch.Tensor | None = None,
    gamma: float | torch.Tensor | None = None,
    parallel_dim: int = 0,
    AAT: MatVec | None = None,
    ATA: MatVec | None = None,
    solver: str = "CG",
    max_iter: int = 100,
    tol: float = 1e-6,
    **unused: Any,
) -> torch.Tensor:
    r""":math:`\arg\min_x \tfrac12\|Ax - y\|^2 + \tfrac1{2\gamma}\|x - z\|^2` per sample for
    operators given as callables (:func:`unroll.physics.least_squares` on
    ``LinearPhysics(A, AT)``, implicit backward); ``gamma=None``: :math:`A^\dagger y`.
    ``ATA`` replaces the normal operator when given; ``AAT`` is unused."""
    from unroll.physics import LinearPhysics

    api = "unroll.optim.linear.least_squares"
    _batched(api, parallel_dim)
    if parallel_dim != 0:
        raise ValueError(f"{api}: parallel_dim must be 0 (one system per sample).")
    del AAT
    _no_preconditioner(api, unused)
    physics = LinearPhysics(A, AT, max_iter=max_iter, tol=tol, solver=solver)
    if ATA is not None:
        physics.A_adjoint_A = ATA  # type: ignore[method-assign]  # the user's faster AᵀA
    return least_squares_implicit_backward(physics, y, z, init, gamma)


def least_squares_implicit_backward(
    physics: Any,
    y: torch.Tensor,
    z: torch.Tensor | float | None = None,
    init: torch.Tensor | None = None,
    gamma: float | torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    r""":func:`unroll.physics.least_squares` with the implicit (O(1)-memory) backward, under
    DeepInverse's name; ``kwargs``: its options (``max_iter``, ``tol``, ``solver``, ...)."""
    from unroll.physics import least_squares as ls_prox

    if gamma is None:
        z = None
    elif isinstance(z, (int, float)):
        like = physics.A_adjoint(y)
        z = torch.full_like(like, float(z))
    kwargs.setdefault("implicit_backward_solver", True)
    if kwargs.get("return_info"):
        raise TypeError(
            "unroll.optim.linear.least_squares_implicit_backward: return_info is not supported "
            "here; call unroll.physics.least_squares(..., return_info=True)."
        )
    return cast(torch.Tensor, ls_prox(physics, y, z, gamma, init=init, **kwargs))
