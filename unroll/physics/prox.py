r"""The least-squares proximal step with an O(1)-memory implicit backward.

.. math::

    h(z, y, \gamma, \theta) = \arg\min_x \tfrac12\|A_\theta x - y\|^2 + \tfrac1{2\gamma}\|x - z\|^2
                            = (A_\theta^\top A_\theta + I/\gamma)^{-1}(A_\theta^\top y + z/\gamma)

is solved per sample by conjugate gradient. With ``implicit_backward_solver=True`` the step is
:func:`unroll.custom_root` applied to its normal equations

.. math:: F(h; z, y, \gamma, \theta) = A_\theta^\top(A_\theta h - y) + (h - z)/\gamma = 0,

so the backward pass is one more CG solve :math:`w = M v`, :math:`M = (A^\top A + I/\gamma)^{-1}`
(``v`` the incoming cotangent), followed by the vector-Jacobian products

.. math:: \bar z = w/\gamma,\quad \bar y = A w,\quad
          \bar\gamma = \langle w, h - z\rangle/\gamma^2,\quad
          \bar\theta = \nabla_\theta\, \bigl(-\langle w, A_\theta^\top(A_\theta h - y)\rangle\bigr)
          \big|_{h, w\ \text{fixed}},

which is what :func:`unroll.root_vjp` computes from ``F``. Nothing of the forward iterations is
stored: memory does not grow with the number of CG iterations, and the gradient reaches every
tensor of the physics object (a blur kernel predicted by a network included), through
autograd's return values. With ``implicit_backward_solver=False`` autograd differentiates
through the CG iterations instead (memory linear in the iteration count).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import torch
import torch.autograd.forward_ad as fwAD

from unroll import tree
from unroll._failure import (
    CONVERGED,
    NON_FINITE,
    SolveInfo,
    check_on_failure,
    report_failure,
)
from unroll._host import host_any, is_transformed
from unroll._typing import LinearOperator
from unroll.linear_solve import solve_bicgstab, solve_cg, solve_lsqr, solve_minres
from unroll.physics._utils import (
    check_solver,
    expand_per_sample,
    real_dtype,
    require_tensor,
)

__all__ = ["least_squares", "check_gamma"]

_API = "least_squares"

_SYSTEM_SOLVERS = {"CG": solve_cg, "BiCGStab": solve_bicgstab, "minres": solve_minres}


class _Settings(NamedTuple):
    max_iter: int
    tol: float
    on_failure: str = "warn"
    solver: str = "CG"


_FORWARD_REMEDY = (
    "The prox is inexact. Raise the physics' max_iter (or tol), or pass max_iter=... to this "
    "call; a slowly converging CG means AᵀA + I/γ is ill-conditioned (a smaller gamma helps)"
)
_BACKWARD_REMEDY = (
    "The implicit gradient is inexact. Raise max_iter (or tol), or use "
    "implicit_backward_solver=False"
)


def least_squares(
    physics: LinearOperator,
    y: torch.Tensor,
    z: torch.Tensor | None = None,
    gamma: float | torch.Tensor | None = None,
    *,
    init: torch.Tensor | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    implicit_backward_solver: bool | None = None,
    return_info: bool = False,
    on_failure: str = "warn",
    solver: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, SolveInfo]:
    r"""Per-sample solution of :math:`\min_x \tfrac12\|Ax-y\|^2 + \tfrac1{2\gamma}\|x-z\|^2`.

    Conjugate gradient on :math:`(A^\top A + I/\gamma)h = A^\top y + z/\gamma` (each sample
    of the batch is its own system and stops on its own), differentiated implicitly (default)
    or through the iterations. With ``gamma=None`` (:math:`\gamma = \infty`) it returns the
    minimum-norm least-squares solution :math:`A^\dagger y` (CG on :math:`A^\top A h =
    A^\top y` from zero).

    Args:
        physics: a :class:`~unroll.physics.LinearPhysics` (its tensors are differentiated
            too), or any object with its methods and CG settings.
        y: measurements, shaped like ``physics.A(x)`` with a leading batch dimension.
        z: the prox centre, shaped like ``x`` (``None``: zeros). Must be ``None`` when
            ``gamma`` is ``None``.
        gamma: :math:`\gamma > 0`: a number, a 0-dim tensor, a per-sample ``(B,)`` tensor, or
            a tensor broadcastable to ``x``'s shape (a 1-dim tensor of length ``B`` is read as
            per-sample).
        init: initial CG iterate (default ``z``, or zeros). Only the explicit mode
            differentiates through it.
        max_iter: CG iteration cap of the forward and the backward solves (default
            ``physics.max_iter``).
        tol: relative residual tolerance ``‖r_i‖ ≤ tol·‖b_i‖`` (default ``physics.tol``).
        implicit_backward_solver: implicit (O(1)-memory) backward; default
            ``physics.implicit_backward_solver``.
        return_info: also return the forward solve's
            :class:`unroll.linear_solve.SolveInfo` (``num_iter``, ``residual_norm``,
            ``converged``, ``reason``, per sample).
        on_failure: when the forward or the backward CG stops at ``max_iter`` above ``tol``,
            breaks down or meets NaN/Inf: ``"warn"`` (a
            :class:`~unroll.linear_solve.ConvergenceWarning` named ``least_squares (forward)``
            or ``least_squares (backward)``, once per cause and call site), ``"raise"`` or
            ``"ignore"``.
        solver: the Krylov method, DeepInverse 0.4.1's names (case-insensitive; default
            ``physics.solver`` if the physics has one, else ``"CG"``):

            * ``"CG"``: :func:`~unroll.linear_solve.solve_cg` on the normal system
              :math:`(A^\top A + I/\gamma)h = A^\top y + z/\gamma` (symmetric positive
              definite);
            * ``"BiCGStab"``: :func:`~unroll.linear_solve.solve_bicgstab` on the same system
              (real operators);
            * ``"minres"``: :func:`~unroll.linear_solve.solve_minres` on the same system (real
              operators);
            * ``"lsqr"``: :func:`~unroll.linear_solve.solve_lsqr` on ``A`` itself, never forming
              :math:`A^\top A`: :math:`h = z + d`, :math:`d = \arg\min \|A d - (y - A z)\|^2
              + \|d\|^2/\gamma` (``tol`` then applies to the residual of that problem's
              normal equations, relative to :math:`\|A^\top(y - Az)\|`).

            Each has an implicit backward solving :math:`(A^\top A + I/\gamma)w = v` with the
            same method: ``"lsqr"`` as the damped problem :math:`w = \gamma v + \arg\min_d
            \|A d + \gamma A v\|^2 + \|d\|^2/\gamma` (with MINRES on the symmetric system
            instead for higher-order derivatives, inside ``torch.func`` transforms, and for
            ``gamma=None``).

    Returns:
        ``h`` shaped like ``x`` (or ``(h, info)``).

    Raises:
        ValueError: ``y`` does not match the operator's output shape, ``z`` does not match the
            input shape, ``gamma`` is not positive or has a bad shape, bad ``max_iter``/``tol``.

    The backward CG reports (``on_failure``) when it stops before ``tol``: the gradient is
    then inexact. Second derivatives (grad of grad) and forward mode (``jvp``/``jacfwd``)
    are supported. With ``gamma=None`` the backward solves ``AᵀA u = b`` in the least-squares
    sense (CG on ``(AᵀA)² u = AᵀA b``): the gradient w.r.t. ``y`` is exact, but for a
    rank-deficient ``A`` the one w.r.t. the operator's tensors omits the null-space term of
    the pseudo-inverse's derivative (use ``implicit_backward_solver=False`` there).

    Example:
        >>> import torch
        >>> from unroll.physics import Blur, gaussian_blur, least_squares
        >>> physics = Blur(gaussian_blur(1.0), padding="valid", tol=1e-6)
        >>> x = torch.rand(2, 1, 16, 16)
        >>> y = physics.A(x)
        >>> h = least_squares(physics, y, torch.zeros_like(x), 1.0)
        >>> grad = physics.A_adjoint(physics.A(h) - y) + h     # optimality, gamma = 1
        >>> bool(grad.abs().max() < 1e-4)
        True

    References:
        Hestenes & Stiefel, "Methods of conjugate gradients for solving linear systems", 1952.
        Blondel et al., "Efficient and modular implicit differentiation", NeurIPS 2022.
    """
    return _least_squares(
        physics,
        y,
        z,
        gamma,
        init=init,
        max_iter=max_iter,
        tol=tol,
        implicit_backward_solver=implicit_backward_solver,
        return_info=return_info,
        on_failure=on_failure,
        solver=solver,
    )


def _least_squares(
    physics: LinearOperator,
    y: torch.Tensor,
    z: torch.Tensor | None,
    gamma: float | torch.Tensor | None,
    *,
    init: torch.Tensor | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    implicit_backward_solver: bool | None = None,
    return_info: bool = False,
    on_failure: str = "warn",
    gamma_checked: bool = False,
    solver: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, SolveInfo]:
    """:func:`least_squares`; ``gamma_checked``: the caller (``prox_l2``) already validated
    ``gamma`` (saves a second host read)."""
    if not isinstance(physics, LinearOperator):
        raise TypeError(
            f"{_API}: physics must be an unroll.physics.LinearPhysics (A, A_adjoint, "
            f"normal_operator and CG settings max_iter, tol, implicit_backward_solver), got "
            f"{type(physics).__name__}."
        )
    require_tensor(_API, "y", y)
    settings = _settings(physics, max_iter, tol, on_failure, solver)
    implicit = (
        physics.implicit_backward_solver
        if implicit_backward_solver is None
        else (implicit_backward_solver)
    )
    if not isinstance(implicit, bool):
        raise TypeError(f"{_API}: implicit_backward_solver must be True, False or None.")
    with torch.no_grad():
        x_like = physics.A_adjoint(y.detach())
    if gamma is None:
        if z is not None:
            raise ValueError(
                f"{_API}: z is only used with a finite gamma; pass gamma=... or z=None "
                "(gamma=None gives the minimum-norm least-squares solution)."
            )
        start = torch.zeros_like(x_like) if init is None else _check_like("init", init, x_like)
        if implicit:
            normal = _fast_normal_op(physics, None, (y,))
            run = _pinv_solver(settings, _differentiable(physics), normal)
        else:
            run = functools.partial(_pinv_cg, settings=settings)
        h, info = run(start, y, physics)
    else:
        z = torch.zeros_like(x_like) if z is None else _check_like("z", z, x_like)
        if not gamma_checked:
            gamma = check_gamma(_API, gamma, x_like)
        elif not isinstance(gamma, torch.Tensor):
            gamma = torch.as_tensor(float(gamma), dtype=real_dtype(x_like), device=x_like.device)
        if init is None:  # implicit: the solver runs without a graph anyway
            start = z.detach() if implicit else z
        else:
            start = _check_like("init", init, x_like)
        if implicit:
            normal = _fast_normal_op(physics, gamma, (y, z))
            direct = None
            if settings.solver == "lsqr" and normal is not None:
                direct = _lsqr_backward(tree.detach(physics), gamma.detach(), settings)
            run = _prox_solver(settings, _differentiable(physics), normal, direct)
        else:
            run = functools.partial(_prox_cg, settings=settings)
        h, info = run(start, z, y, gamma, physics)
    report_failure(
        f"{_API} (forward)",
        info,
        settings.on_failure,
        remedy=_FORWARD_REMEDY,
        rtol=settings.tol,
        atol=0.0,
        maxiter=settings.max_iter,
    )
    return (h, info) if return_info else h


# ---------------------------------------------------------------------- validation
def _settings(
    physics: LinearOperator,
    max_iter: int | None,
    tol: float | None,
    on_failure: str,
    solver: str | None = None,
) -> _Settings:
    max_iter = physics.max_iter if max_iter is None else max_iter
    tol = physics.tol if tol is None else tol
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter <= 0:
        raise ValueError(f"{_API}: max_iter must be a positive int, got {max_iter!r}.")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
        raise ValueError(f"{_API}: tol must be a finite number >= 0, got {tol!r}.")
    solver = getattr(physics, "solver", "CG") if solver is None else solver
    return _Settings(
        max_iter, float(tol), check_on_failure(_API, on_failure), check_solver(_API, solver)
    )


def _check_like(name: str, t: Any, x_like: torch.Tensor) -> torch.Tensor:
    require_tensor(_API, name, t)
    if t.shape != x_like.shape:
        raise ValueError(
            f"{_API}: {name} has shape {tuple(t.shape)} but A_adjoint(y) has shape "
            f"{tuple(x_like.shape)}; y must have the shape of A(x) for x shaped like {name}."
        )
    return t


def check_gamma(api: str, gamma: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Validate ``gamma`` (positive; number, 0-dim, ``(B,)`` or broadcastable to ``like``)
    and return it as a real tensor on ``like``'s device."""
    if isinstance(gamma, torch.Tensor):
        if gamma.is_complex():
            raise TypeError(f"{api}: gamma must be real, got a complex tensor.")
        per_sample = gamma.dim() == 1 and like.dim() > 1 and gamma.shape[0] == like.shape[0]
        if not per_sample and gamma.dim() > 0:
            try:
                ok = torch.broadcast_shapes(gamma.shape, like.shape) == like.shape
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(
                    f"{api}: gamma has shape {tuple(gamma.shape)}; use a number, a 0-dim "
                    f"tensor, a per-sample ({like.shape[0]},) tensor, or one broadcastable to "
                    f"{tuple(like.shape)}."
                )
        if host_any(~((gamma > 0) & (gamma < math.inf))):  # one host sync, also in vmap
            raise ValueError(
                f"{api}: gamma must be finite and > 0 everywhere; got a value <= 0, NaN or "
                "Inf. For gamma = ∞ (no proximity term) use physics.A_dagger(y) or "
                "least_squares(physics, y, gamma=None)."
            )
        return gamma
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"{api}: gamma must be a number or a tensor, got {type(gamma).__name__}.")
    if not 0 < gamma < math.inf:
        raise ValueError(
            f"{api}: gamma must be finite and > 0, got {gamma!r}. For gamma = ∞ (no proximity "
            "term) use physics.A_dagger(y) or least_squares(physics, y, gamma=None)."
        )
    return torch.as_tensor(float(gamma), dtype=real_dtype(like), device=like.device)


# ---------------------------------------------------------------------- the solves
def _prox_residual(
    h: torch.Tensor, z: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor, physics: LinearOperator
) -> torch.Tensor:
    """``F(h) = Aᵀ(A h − y) + (h − z)/γ`` (zero at the prox)."""
    return physics.A_adjoint(physics.A(h) - y) + (h - z) / expand_per_sample(gamma, h)


def _pinv_residual(h: torch.Tensor, y: torch.Tensor, physics: LinearOperator) -> torch.Tensor:
    """``F(h) = Aᵀ(A h − y)`` (zero at every least-squares solution)."""
    return physics.A_adjoint(physics.A(h) - y)


def _prox_cg(
    init: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    gamma: torch.Tensor,
    physics: LinearOperator,
    *,
    settings: _Settings,
) -> tuple[torch.Tensor, SolveInfo]:
    inv_g = 1 / expand_per_sample(gamma, z)
    if settings.solver == "lsqr":  # h = z + argmin ‖A d − (y − A z)‖² + ‖d‖²/γ
        d, info = solve_lsqr(
            physics.A,
            y - physics.A(z),
            init=init - z,
            ridge=inv_g,
            rtol=settings.tol,
            maxiter=settings.max_iter,
            batched=True,
            return_info=True,
            on_failure="ignore",  # reported by least_squares, by its name
            rmatvec=physics.A_adjoint,
        )
        return z + d, info
    rhs = torch.addcmul(physics.A_adjoint(y), z, inv_g)
    normal = physics.normal_operator(z)

    def matvec(h: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(normal(h), h, inv_g)  # AᵀA h + h/γ in one op

    return _SYSTEM_SOLVERS[settings.solver](
        matvec,
        rhs,
        init=init,
        rtol=settings.tol,
        maxiter=settings.max_iter,
        batched=True,
        return_info=True,
        on_failure="ignore",  # reported by least_squares, by its name
    )


def _pinv_cg(
    init: torch.Tensor, y: torch.Tensor, physics: LinearOperator, *, settings: _Settings
) -> tuple[torch.Tensor, SolveInfo]:
    if settings.solver == "lsqr":  # min-norm least squares from zero
        return solve_lsqr(
            physics.A,
            y,
            init=init,
            rtol=settings.tol,
            maxiter=settings.max_iter,
            batched=True,
            return_info=True,
            on_failure="ignore",
            rmatvec=physics.A_adjoint,
        )
    return _SYSTEM_SOLVERS[settings.solver](
        physics.normal_operator(init),
        physics.A_adjoint(y),
        init=init,
        rtol=settings.tol,
        maxiter=settings.max_iter,
        batched=True,
        return_info=True,
        on_failure="ignore",
    )


def _lsqr_backward(physics: LinearOperator, gamma: torch.Tensor, settings: _Settings):
    """``v ↦ w = (AᵀA + I/γ)⁻¹ v`` by LSQR on ``A`` (physics and γ detached): ``w`` is the
    prox at ``y = 0``, ``z = γv``, i.e. ``γv + argmin ‖A d + γ A v‖² + ‖d‖²/γ``."""

    def solve(v: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        g = expand_per_sample(gamma, v)
        gv = g * v
        d, info = solve_lsqr(
            physics.A,
            -physics.A(gv),
            init=torch.zeros_like(v),
            ridge=1 / g,
            rtol=settings.tol,
            maxiter=settings.max_iter,
            batched=True,
            return_info=True,
            on_failure="ignore",
            rmatvec=physics.A_adjoint,
        )
        return gv + d, info

    return solve


def _backward_solve(settings: _Settings, normal_op=None, singular: bool = False, direct=None):
    """The backward linear solve: batched CG whose failures are reported (``on_failure``) as
    ``least_squares (backward)``.

    ``(∂F/∂h)ᵀ = AᵀA + I/γ`` is the forward system matrix itself. For a first-order backward
    (grad mode off: ``.backward()`` / ``autograd.grad`` without ``create_graph``) CG applies
    it directly with ``normal_op`` (the physics' explicit operators, as fast as a forward
    iteration) instead of replaying the autograd graph of ``F``; for higher-order derivatives
    it uses ``matvec`` (root_vjp's linearisation), which is differentiable.

    ``singular``: the system ``AᵀA u = b`` of the pseudo-inverse may be singular and
    inconsistent; CG then runs on ``(AᵀA)² u = AᵀA b``, whose solution from zero is the
    minimum-norm least-squares ``u = (AᵀA)⁺ b``.

    The method is ``settings.solver``'s (``"lsqr"``: ``direct``, LSQR on the physics, for a
    first-order backward; MINRES on the symmetric system otherwise).
    """
    method = _SYSTEM_SOLVERS.get(settings.solver, solve_minres)

    def solve(matvec, b):
        first_order = not torch.is_grad_enabled()
        if direct is not None and first_order and not singular:
            x, info = direct(b)
        else:
            op = normal_op if normal_op is not None and first_order else matvec
            rhs = b
            if singular:
                op, rhs = (lambda u, base=op: base(base(u))), op(b)
            x, info = method(
                op,
                rhs,
                rtol=settings.tol,
                maxiter=settings.max_iter,
                batched=True,
                return_info=True,
                on_failure="ignore",
            )
        report_failure(
            f"{_API} (backward)",
            info,
            settings.on_failure,
            remedy=_BACKWARD_REMEDY,
            rtol=settings.tol,
            atol=0.0,
            maxiter=settings.max_iter,
        )
        return x

    return solve


def _fast_normal_op(physics: LinearOperator, gamma: torch.Tensor | None, others: tuple):
    """``u ↦ AᵀA u + u/γ`` on detached tensors, or ``None`` inside ``torch.func`` transforms
    (their wrapped tensors must not outlive the forward call)."""
    if any(is_transformed(t) for t in (*tree.leaves(physics), gamma, *others)):
        return None
    phys = tree.detach(physics)
    cache: dict[str, Any] = {}  # the operator and 1/γ, built at the first call

    def normal(u: torch.Tensor) -> torch.Tensor:
        if "op" not in cache:
            cache["op"] = phys.normal_operator(u)
            cache["inv_g"] = None if gamma is None else 1 / expand_per_sample(gamma.detach(), u)
        out, inv_g = cache["op"](u), cache["inv_g"]
        return out if inv_g is None else torch.addcmul(out, u, inv_g)

    return normal


def _differentiable(physics: LinearOperator) -> bool:
    """Whether the physics tensors may need gradients: one requires grad, carries a
    forward-mode tangent (``torch.autograd.forward_ad``), or is being transformed by
    ``torch.func`` (inside ``vmap`` ``requires_grad`` reads False although an outer
    ``backward`` may still need the gradient). Otherwise they are left out of the
    implicit rule (nothing of them is saved or differentiated)."""
    return any(
        t.requires_grad or is_transformed(t) or fwAD.unpack_dual(t).tangent is not None
        for t in tree.leaves(physics)
        if isinstance(t, torch.Tensor)
    )


def _prox_solver(settings: _Settings, diff_physics: bool, normal_op, direct=None, forward=None):
    """The implicitly differentiated prox: ``forward(init, z, y, γ, physics) -> (h, info)``
    (default: :func:`_prox_cg`), its backward ``direct`` or the settings' Krylov method."""
    argnums = (1, 2, 3, 4) if diff_physics else (1, 2, 3)
    solve = _backward_solve(settings, normal_op, direct=direct)
    run = functools.partial(_prox_cg, settings=settings) if forward is None else forward
    return _implicit(_prox_residual, argnums, solve, settings)(run)


def direct_prox(
    physics: LinearOperator,
    z: torch.Tensor,
    y: torch.Tensor,
    gamma: torch.Tensor,
    solve,
    rhs_adjoint,
    on_failure: str | None,
    api: str,
    verbose: bool = False,
) -> torch.Tensor:
    r"""The prox :math:`h = (A^\top A + I/\gamma)^{-1}(A^\top y + z/\gamma)` by an exact solve,
    differentiated implicitly as :func:`least_squares` is.

    Args:
        physics: the operator (its tensors are differentiated through the optimality
            condition, never through ``solve``).
        z, y: prox centre and measurements (validated by the caller); gamma: a 0-dim or
            per-sample ``(B,)`` tensor, validated.
        solve: ``(v, 1/γ) ↦ (A^\top A + I/γ)^{-1} v`` from detached tensors (``1/γ`` shaped
            to broadcast against ``v``).
        rhs_adjoint: ``y ↦ A^\top y``, the same operator as ``physics.A_adjoint`` (a faster
            form of it).
        on_failure: the policy for NaN/Inf in the result (``None``: ``"warn"``).
        api: the caller's name, for its NaN/Inf report and ``verbose`` line.
        verbose: print one line saying the solve was exact.

    A first-order backward applies ``solve`` to the cotangent; higher orders run the physics'
    Krylov method on the differentiable linearisation (as the CG prox does).
    """
    settings = _settings(physics, None, None, on_failure or "warn")
    inv_g = (1 / expand_per_sample(gamma.detach(), z)).to(real_dtype(z))  # γ may be float64

    def exact(v: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        h = solve(v, inv_g)
        finite = torch.isfinite(h).flatten(1).all(1)
        none = torch.zeros_like(finite, dtype=torch.long)
        reason = torch.where(finite, CONVERGED, NON_FINITE)
        residual = torch.where(finite, 0.0, math.nan).to(real_dtype(h))
        return h, SolveInfo(none, residual, finite, reason)

    def forward(init, z, y, gamma, physics) -> tuple[torch.Tensor, SolveInfo]:
        return exact(torch.addcmul(rhs_adjoint(y), z, inv_g))

    # no normal operator: a first-order backward takes ``exact``, a higher-order one the
    # differentiable linearisation
    run = _prox_solver(settings, _differentiable(physics), None, exact, forward)
    h, info = run(z, z, y, gamma, physics)
    # only NaN/Inf can fail here (maxiter=1 names no iteration cap and costs no host read)
    report_failure(
        f"{api} (exact solve)",
        info,
        settings.on_failure,
        remedy="z, y or gamma holds NaN/Inf, or gamma is so large that the system is singular",
        maxiter=1,
    )
    if verbose:
        print(f"{api}: exact solve (separable kernel), no CG iterations")
    return h


def _pinv_solver(settings: _Settings, diff_physics: bool, normal_op):
    argnums = (1, 2) if diff_physics else (1,)
    solve = _backward_solve(settings, normal_op, singular=True)
    return _implicit(_pinv_residual, argnums, solve, settings)(
        functools.partial(_pinv_cg, settings=settings)
    )


def _implicit(residual, argnums: tuple[int, ...], solve, settings: _Settings):
    """``custom_root`` whose backward failures are reported as ``least_squares (backward)``."""
    from unroll.implicit._rules import _custom_root

    return _custom_root(
        "least_squares",
        residual,
        argnums,
        True,
        solve,
        settings.on_failure,
        f"{_API} (backward)",
        _BACKWARD_REMEDY,
    )
