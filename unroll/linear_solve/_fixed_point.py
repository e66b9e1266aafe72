"""Fixed-point linear solvers: Richardson, Neumann series, Anderson."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from unroll import tree
from unroll._failure import (
    SolveInfo,
    check_on_failure,
)
from unroll._typing import PyTree
from unroll.fixed_point import (
    _FP_REMEDY,
    FixedPointInfo,
    _anderson,
    _check_anderson,
    _check_common,
    _iterate,
    _Map,
    _norm,
    report_fixed_point,
)
from unroll.linear_solve._common import (
    MAXITER_CAP,
    _check_args,
    _check_finite,
    _Options,
)


# =========================================================================== fixed-point solvers
def _linear_setup(
    name: str,
    matvec: Callable[[PyTree], PyTree],
    b: PyTree,
    opts: _Options,
    alpha: float = 1.0,
):
    """The Richardson map ``x ↦ x + α(b − (A + ρI)x)`` of a fixed-point linear solver, its
    stopping rule (on the true residual ``‖b − (A + ρI)x‖``), and the iteration cap (validated
    as for every solver)."""
    init, ridge, batched = opts.init, opts.ridge, opts.batched
    b_leaves, spec = tree.flatten(b)
    _check_args(name, matvec, b_leaves, opts.rtol, opts.atol, opts.maxiter, True, batched)
    check_on_failure(name, opts.on_failure)
    n = sum(leaf[0].numel() if batched else leaf.numel() for leaf in b_leaves)
    maxiter = opts.maxiter if opts.maxiter is not None else min(10 * max(n, 1), MAXITER_CAP)
    _check_common(name, b_leaves, maxiter, 0.0, batched, opts.check_every)
    if init is None:  # one free Richardson step from zero: x₁ = αb
        x0 = list(b_leaves) if alpha == 1 else [alpha * leaf for leaf in b_leaves]
    else:
        x0, init_spec = tree.flatten(init)
        if init_spec != spec or any(a.shape != c.shape for a, c in zip(x0, b_leaves)):
            raise ValueError(f"{name}: init must have the structure and shapes of b.")
    _check_finite(name, b_leaves, [] if init is None else x0)
    single = isinstance(b, torch.Tensor)

    def richardson(x: PyTree) -> PyTree:
        """``x + b − (A + ρI) x``: its fixed point solves the linear system."""
        ax = matvec(x)
        if alpha != 1:
            return _scaled_richardson(x, ax)
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

    def _scaled_richardson(x: PyTree, ax: PyTree) -> PyTree:
        ax_leaves, ax_spec = tree.flatten(ax)
        if ax_spec != spec or any(a.shape != c.shape for a, c in zip(ax_leaves, b_leaves)):
            raise ValueError(
                f"{name}: matvec must return a pytree with the structure and shapes of b; got "
                f"{ax_spec} for b {spec}."
            )
        x_leaves = tree.leaves(x)
        if ridge is not None:
            ax_leaves = [a + ridge * v for a, v in zip(ax_leaves, x_leaves)]
        out = [v + alpha * (bb - a) for v, bb, a in zip(x_leaves, b_leaves, ax_leaves)]
        return tree.unflatten(spec, out)

    thresh = torch.clamp(_norm(b_leaves, batched) * opts.rtol, min=opts.atol)

    def stop(res: torch.Tensor, _: list[torch.Tensor]):
        # ‖f(x) − x‖ = α‖b − (A + ρI)x‖: report the residual of the system itself
        return (res if alpha == 1 else res / alpha), thresh

    return _Map(name, richardson, tree.unflatten(spec, x0), ()), stop, thresh, maxiter


def _linear_finish(
    name: str,
    z: PyTree,
    info: FixedPointInfo,
    thresh: torch.Tensor,
    maxiter: int,
    on_failure: str,
    return_info: bool,
    remedy: str = _FP_REMEDY,
):
    report_fixed_point(name, info, thresh, maxiter, on_failure, remedy)
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


def solve_neumann(
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
    alpha: float = 1.0,
) -> PyTree:
    r"""Neumann-series inverse: :math:`x = \alpha \sum_{k \ge 0} (I - \alpha A_\rho)^k b`.

    With :math:`A_\rho = A + \rho I`, the partial sums of the Neumann series of
    :math:`A_\rho^{-1} = \alpha\,[I - (I - \alpha A_\rho)]^{-1}` are the iterates of the
    Richardson iteration :math:`x \leftarrow x + \alpha (b - A_\rho x)` started from
    :math:`x_0 = \alpha b`, so after ``K`` matvecs

    .. math::  x_K = \alpha \sum_{k=0}^{K} (I - \alpha A_\rho)^k\, b,\qquad
               b - A_\rho x_K = (I - \alpha A_\rho)^{K+1} b.

    **Accuracy.** The series converges if and only if the spectral radius
    :math:`\varrho(I - \alpha A_\rho) < 1`; the residual then shrinks like
    :math:`\varrho^{K}` (for a symmetric positive-definite ``A`` with eigenvalues in
    :math:`[\lambda_{\min}, \lambda_{\max}]`: :math:`0 < \alpha < 2/\lambda_{\max}`, fastest at
    :math:`\alpha = 2/(\lambda_{\min} + \lambda_{\max})`). Where it does not converge the
    residual grows: the solve stops as ``diverged`` (``DIVERGENCE_FACTOR``) or at ``maxiter``
    and reports it by ``on_failure``, returning its last good iterate — never silently.
    This is TorchOpt's ``solve_inv(ns=True)`` (``torchopt.linalg.ns``), with a tolerance and
    the failure policy added; ``alpha=1`` is :func:`solve_fixed_point`.

    Args:
        matvec: ``x ↦ A x`` on pytrees shaped like ``b``.
        b: right-hand side pytree.
        init: initial guess (default ``αb``, the first term of the series).
        ridge: ``ρ`` added to the diagonal.
        rtol, atol: stop when ``‖b − A_ρ x‖ ≤ max(rtol·‖b‖, atol)``; ``rtol = atol = 0`` sums
            exactly ``maxiter + 1`` terms (TorchOpt's ``ns`` with ``maxiter``).
        maxiter: cap on matvecs (default ``min(10 n, MAXITER_CAP)``).
        batched, return_info, check_every, on_failure: as :func:`solve_fixed_point`.
        alpha: the step ``α > 0`` (TorchOpt's ``alpha``; default 1).

    Returns:
        ``x``, or ``(x, SolveInfo)``.

    Example:
        >>> import torch
        >>> A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> b = torch.ones(2, dtype=torch.float64)
        >>> x = solve_neumann(lambda v: A @ v, b, alpha=0.5, rtol=1e-12, maxiter=500)
        >>> torch.allclose(x, torch.linalg.solve(A, b))
        True

    References:
        Neumann series; Lorraine, Vicol & Duvenaud, "Optimizing millions of hyperparameters
        by implicit differentiation", AISTATS 2020 (its use for hypergradients).
    """
    name = "solve_neumann"
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise ValueError(f"{name}: alpha must be a finite number > 0, got {alpha!r}.")
    opts = _Options(init, ridge, rtol, atol, maxiter, batched, return_info, check_every, on_failure)
    fmap, stop, thresh, maxiter = _linear_setup(name, matvec, b, opts, float(alpha))
    z, info = _iterate(fmap, maxiter, stop, batched, check_every, opts.fixed)
    remedy = (
        "The Neumann series converges only when the spectral radius of I − αA is below 1: "
        "lower alpha (below 2/λ_max for a positive-definite A), add ridge=..., or use "
        "solve_cg / solve_gmres"
    )
    return _linear_finish(name, z, info, thresh, maxiter, on_failure, return_info, remedy)
