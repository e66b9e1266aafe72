"""Shared test tables and helpers: the linear solvers, the algorithms and a few tiny physics
operators, each listed once with the properties the tests select on, and the one central
finite-difference helper.

Tests import from here (``from helpers import ...``; ``tests/`` is on ``sys.path`` under pytest)
instead of writing their own lists, so that a new solver or algorithm is picked up by every
test that applies to it, and by ``tests/test_contract.py``, which runs all of them through the
same checks.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from dense_physics import MatrixPhysics  # shared test operator (tests/dense_physics.py)

from unroll import algorithms, tree
from unroll import linear_solve as ls
from unroll.physics import Blur, CompressedSensing, Inpainting, LinearPhysics

DT = torch.float64


# =========================================================================== linear solvers
@dataclasses.dataclass(frozen=True)
class LinearSolver:
    """A linear solver with the signature of :mod:`unroll.linear_solve` and what it can solve.

    Attributes:
        fn: ``fn(matvec, b, *, init, ridge, rtol, atol, maxiter, batched, return_info,
            on_failure)``.
        spd_only: needs a symmetric positive-definite operator (CG, Cholesky).
        iterative: stops on a tolerance, so ``maxiter`` and ``on_failure`` apply.
        fixed_point: a (Richardson / Anderson) fixed-point iteration of ``x ← x + b − A x``;
            converges only where ``I − A`` is a contraction.
        normal: solves the normal equations ``(AᵀA + ρI) x = Aᵀb`` (``ridge`` ``ρ`` is added
            to ``AᵀA``, not to ``A``).
        symmetric: needs a symmetric (possibly indefinite) operator (MINRES).
    """

    fn: Callable[..., Any]
    spd_only: bool = False
    iterative: bool = True
    fixed_point: bool = False
    normal: bool = False
    symmetric: bool = False

    @property
    def name(self) -> str:
        return self.fn.__name__


LINEAR_SOLVERS = (
    LinearSolver(ls.solve_cg, spd_only=True),
    LinearSolver(ls.solve_normal_cg, normal=True),
    LinearSolver(ls.solve_bicgstab),
    LinearSolver(ls.solve_gmres),
    LinearSolver(ls.solve_inv, iterative=False),
    LinearSolver(ls.solve_cholesky, spd_only=True, iterative=False),
    LinearSolver(ls.solve_lu, iterative=False),
    LinearSolver(ls.solve_qr, iterative=False),
    LinearSolver(ls.solve_fixed_point, fixed_point=True),
    LinearSolver(ls.solve_neumann, fixed_point=True),
    LinearSolver(ls.solve_anderson, fixed_point=True),
    LinearSolver(
        functools.update_wrapper(  # a sloppy inner solve, which the refinement corrects
            functools.partial(
                ls.solve_iterative_refinement,
                solve=functools.partial(ls.solve_gmres, rtol=1e-4, restart=2, on_failure="ignore"),
            ),
            ls.solve_iterative_refinement,
        )
    ),
    LinearSolver(ls.solve_minres, symmetric=True),
    LinearSolver(ls.solve_lsqr, normal=True),
)
"""Every linear solver of the library, in a fixed order."""


def linear_solvers(**where: bool) -> list[Callable[..., Any]]:
    """The solver functions of :data:`LINEAR_SOLVERS` whose attributes equal ``where``, e.g.
    ``linear_solvers(fixed_point=False, spd_only=False)`` (the general-operator ones)."""
    return [
        s.fn
        for s in LINEAR_SOLVERS
        if all(getattr(s, key) == value for key, value in where.items())
    ]


# =========================================================================== algorithms
@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm of :mod:`unroll.algorithms`.

    Attributes:
        name: its factory's name in :mod:`unroll.algorithms`.
        state: the NamedTuple class of its state.
        prior_grad: uses the prior's gradient (GD) rather than its prox.
        minimises: its fixed point is the minimiser of ``f + λ g`` (HQS's is the minimiser of
            the Moreau envelope ``env_{γ f} + λ g``).
        dual_step: reads ``stepsize_dual`` (PDHG).
    """

    name: str
    state: type
    prior_grad: bool = False
    minimises: bool = True
    dual_step: bool = False

    @property
    def factory(self) -> Callable[..., algorithms.Algorithm]:
        return getattr(algorithms, self.name)


ALGORITHMS = (
    AlgorithmSpec("gd", algorithms.GDState, prior_grad=True),
    AlgorithmSpec("pgd", algorithms.PGDState),
    AlgorithmSpec("fista", algorithms.FISTAState),
    AlgorithmSpec("hqs", algorithms.HQSState, minimises=False),
    AlgorithmSpec("admm", algorithms.ADMMState),
    AlgorithmSpec("drs", algorithms.DRSState),
    AlgorithmSpec("pdhg", algorithms.PDHGState, dual_step=True),
    AlgorithmSpec("md", algorithms.MDState, prior_grad=True),
    AlgorithmSpec("pmd", algorithms.PMDState),
)
"""Every algorithm of :mod:`unroll.algorithms`, in a fixed order."""


def algorithm_names(**where: bool) -> list[str]:
    """The names in :data:`ALGORITHMS` whose attributes equal ``where``, e.g.
    ``algorithm_names(minimises=True)``."""
    return [
        a.name for a in ALGORITHMS if all(getattr(a, key) == value for key, value in where.items())
    ]


def algorithm_spec(name: str) -> AlgorithmSpec:
    return next(a for a in ALGORITHMS if a.name == name)


def matrix_problem(
    seed: int = 0, batch: int = 2, hw: tuple[int, int] = (6, 6), m: int = 30
) -> tuple[MatrixPhysics, torch.Tensor]:
    """A random dense ``m × (H·W)`` :class:`MatrixPhysics` on ``(B, 1, H, W)`` images and noisy
    measurements ``y`` of a random image."""
    g = torch.Generator().manual_seed(seed)
    n = hw[0] * hw[1]
    mat = torch.randn(m, n, generator=g, dtype=DT) / n**0.5
    physics = MatrixPhysics(mat, (1, *hw))
    x = torch.rand(batch, 1, *hw, generator=g, dtype=DT)
    y = physics.A(x) + 0.05 * torch.randn(batch, m, generator=g, dtype=DT)
    return physics, y


def lipschitz(physics: MatrixPhysics) -> torch.Tensor:
    """``‖A‖₂²`` of a :class:`MatrixPhysics`."""
    return torch.linalg.matrix_norm(physics.matrix, ord=2) ** 2


def tikhonov_params(name: str, physics: MatrixPhysics, lam: float) -> dict:
    """Step sizes under which ``name`` converges on ``L2() + lam · Tikhonov()``."""
    lip = float(lipschitz(physics))
    if name in ("gd", "pgd", "fista", "md", "pmd"):
        return {"stepsize": 1.0 / (lip + lam), "lambda_reg": lam}
    if name == "pdhg":
        return {"stepsize": 0.9 / lip**0.5, "stepsize_dual": 0.9 / lip**0.5, "lambda_reg": lam}
    return {"stepsize": 1.0, "lambda_reg": lam}


def tikhonov_solution(physics: MatrixPhysics, y: torch.Tensor, lam: float) -> torch.Tensor:
    """``argmin_x ½‖A x − y‖² + ½ λ‖x‖²`` per sample, by a dense solve."""
    m = physics.matrix
    h = m.T @ m + lam * torch.eye(m.shape[1], dtype=DT)
    return torch.linalg.solve(h, (y @ m).T).T.reshape(y.shape[0], *physics.shape)


def hqs_tikhonov_fixed_point(
    physics: MatrixPhysics, y: torch.Tensor, lam: float, gamma: float
) -> torch.Tensor:
    """HQS on ``L2() + lam · Tikhonov()`` with step ``gamma`` minimises ``env_{γf} + λg``; its
    fixed point ``x = M(Aᵀy + x/γ)/(1+λγ)``, ``M = (AᵀA + I/γ)⁻¹``, as ``(B, n)``."""
    m = physics.matrix
    n = m.shape[1]
    big_m = torch.linalg.inv(m.T @ m + torch.eye(n, dtype=DT) / gamma)
    lhs = torch.eye(n, dtype=DT) - big_m / (gamma * (1 + lam * gamma))
    return torch.linalg.solve(lhs, (big_m @ (y @ m).T) / (1 + lam * gamma)).T


# =========================================================================== physics
TIGHT_PHYSICS = {"tol": 1e-14, "max_iter": 1000}
"""Solve settings under which the CG of ``least_squares`` reaches float64 round-off."""


@dataclasses.dataclass(frozen=True)
class PhysicsCase:
    """A tiny float64 :class:`~unroll.physics.LinearPhysics` built from one tensor, so that
    tests can differentiate with respect to that tensor.

    Attributes:
        name: a pytest id.
        make: ``tensor -> physics``.
        tensor: ``generator -> tensor`` (the operator's learnable leaf).
        x_shape: the shape of one input sample.
    """

    name: str
    make: Callable[[torch.Tensor], LinearPhysics]
    tensor: Callable[[torch.Generator], torch.Tensor]
    x_shape: tuple[int, ...]


PHYSICS = (
    PhysicsCase(
        "blur-valid",
        lambda k: Blur(k, padding="valid", **TIGHT_PHYSICS),
        lambda g: 0.1 + torch.rand(1, 1, 2, 2, generator=g, dtype=DT),
        (1, 3, 3),
    ),
    PhysicsCase(
        "cs",
        lambda m: CompressedSensing(5, (1, 2, 3), dtype=DT, **TIGHT_PHYSICS).replace(matrix=m),
        lambda g: torch.randn(5, 6, generator=g, dtype=DT) / 5**0.5,
        (1, 2, 3),
    ),
    PhysicsCase(
        "inpainting",
        lambda m: Inpainting(m, **TIGHT_PHYSICS),
        lambda g: 0.2 + torch.rand(1, 2, 2, generator=g, dtype=DT),
        (1, 2, 2),
    ),
)
"""Tiny operators with a differentiable tensor (kernel, matrix, mask), for ``least_squares``."""


# =========================================================================== finite differences
def central_fd(
    f: Callable[[Any], torch.Tensor], x: Any, direction: Any = None, eps: float = 1e-6
) -> Any:
    """Central finite differences of a scalar function ``f`` of a pytree ``x``.

    With ``direction`` (a pytree like ``x``): the directional derivative
    ``(f(x + ε d) − f(x − ε d)) / (2ε)``. Without: the gradient, a pytree like ``x``, one
    coordinate at a time (``f(x ± ε e_i)``). Pytrees are read with :mod:`unroll.tree` (so
    physics objects and states are pytrees too).
    """
    leaves, spec = tree.flatten(x)

    def at(new_leaves: list[torch.Tensor]) -> torch.Tensor:
        return f(tree.unflatten(spec, new_leaves))

    if direction is not None:
        d = tree.leaves(direction)
        plus = at([v + eps * u for v, u in zip(leaves, d, strict=True)])
        minus = at([v - eps * u for v, u in zip(leaves, d, strict=True)])
        return (plus - minus) / (2 * eps)
    grads = []
    for i, leaf in enumerate(leaves):
        grad = torch.zeros_like(leaf)
        flat = grad.reshape(-1)
        for j in range(leaf.numel()):
            e = torch.zeros_like(leaf).reshape(-1)
            e[j] = eps
            e = e.reshape(leaf.shape)
            plus = at([v + e if k == i else v for k, v in enumerate(leaves)])
            minus = at([v - e if k == i else v for k, v in enumerate(leaves)])
            flat[j] = (plus - minus) / (2 * eps)
        grads.append(grad)
    return tree.unflatten(spec, grads)
