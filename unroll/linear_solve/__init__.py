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

The solvers:

* Krylov: :func:`solve_cg` (symmetric positive definite), :func:`solve_minres` (symmetric,
  possibly indefinite), :func:`solve_bicgstab`, :func:`solve_gmres` (general square);
  least squares on any (also non-square) operator: :func:`solve_normal_cg`, :func:`solve_lsqr`.
* Dense (small problems, the operator materialised): :func:`solve_inv`, :func:`solve_cholesky`,
  :func:`solve_lu`, :func:`solve_qr`.
* Fixed point: :func:`solve_fixed_point` (Richardson), :func:`solve_neumann` (Neumann series,
  TorchOpt's ``solve_inv(ns=True)``), :func:`solve_anderson`.
* Meta: :func:`solve_iterative_refinement` (corrects an inexact inner solver).

References:
    Saad, *Iterative Methods for Sparse Linear Systems*, 2nd ed., SIAM 2003 (CG §6.7,
    GMRES §6.5, BiCGStab §7.4.2). Paige & Saunders 1975 (MINRES), 1982 (LSQR). The API
    follows JAXopt's ``jaxopt.linear_solve``.
"""

from __future__ import annotations

from unroll._failure import REASONS, ConvergenceError, ConvergenceWarning, SolveInfo
from unroll.linear_solve._common import DENSE_MAX_UNKNOWNS, MAXITER_CAP, ShapeMismatchError
from unroll.linear_solve._dense import solve_cholesky, solve_inv, solve_lu, solve_qr
from unroll.linear_solve._fixed_point import solve_anderson, solve_fixed_point, solve_neumann
from unroll.linear_solve._krylov import (
    solve_bicgstab,
    solve_cg,
    solve_gmres,
    solve_minres,
    solve_normal_cg,
)
from unroll.linear_solve._lsqr import solve_lsqr
from unroll.linear_solve._refinement import solve_iterative_refinement

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
    "solve_qr",
    "solve_fixed_point",
    "solve_neumann",
    "solve_anderson",
    "solve_iterative_refinement",
    "solve_minres",
    "solve_lsqr",
    "ShapeMismatchError",
]
