"""Shared types: pytrees, operators, and the protocols the pure core is written against.

The core functions take *protocols*, not classes: a linear solver is any callable with the
signature of :mod:`unroll.linear_solve`; ``least_squares`` takes any object that applies
``A`` and ``Aᵀ`` and carries its CG settings (every :class:`unroll.physics.LinearPhysics`
does); a prior or data fidelity is anything with the methods an algorithm calls. This keeps
the layers one-way (the physics base class imports the least-squares solver, not the reverse).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "PyTree",
    "MatVec",
    "LinearSolver",
    "LinearOperator",
    "Denoiser",
    "PhysicsLike",
    "PriorLike",
    "DataFidelityLike",
    "DistanceFidelityLike",
]

PyTree = Any
"""A nested dict / list / tuple / NamedTuple (or registered class) of tensors (see
:mod:`unroll.tree`)."""

MatVec = Callable[[PyTree], PyTree]
"""``x ↦ A x`` on pytrees."""


class LinearSolver(Protocol):
    """``solve(matvec, b, **options) -> x`` (or ``(x, SolveInfo)`` with ``return_info``), as
    every solver of :mod:`unroll.linear_solve`."""

    def __call__(self, matvec: MatVec, b: PyTree, /, **options: Any) -> PyTree: ...


@runtime_checkable
class LinearOperator(Protocol):
    """What :func:`unroll.physics.least_squares` needs of a physics object: ``A``, ``Aᵀ``, the
    normal operator ``AᵀA``, and the CG settings of its proximal step."""

    max_iter: int
    tol: float
    implicit_backward_solver: bool

    def A(self, x: torch.Tensor) -> torch.Tensor: ...

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor: ...

    def normal_operator(self, like: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]: ...


class PhysicsLike(Protocol):
    """What the algorithms and data fidelities use of a physics object: ``A``, ``Aᵀ`` and the
    least-squares prox ``prox_l2(z, y, gamma)`` (every :class:`unroll.physics.LinearPhysics`
    has them)."""

    def A(self, x: torch.Tensor, /) -> torch.Tensor: ...

    def A_adjoint(self, y: torch.Tensor, /) -> torch.Tensor: ...

    def prox_l2(
        self, z: torch.Tensor, y: torch.Tensor, gamma: float | torch.Tensor, /
    ) -> torch.Tensor: ...


class Denoiser(Protocol):
    """``denoiser(x, sigma) -> x̂`` (a network such as :class:`unroll.models.DnCNN`)."""

    def __call__(self, x: torch.Tensor, sigma: float | torch.Tensor = ..., /) -> torch.Tensor: ...


class PriorLike(Protocol):
    """A prior as the algorithms use it: ``prox(x, gamma)`` (and, for gradient steps,
    ``grad(x)``), both taking the keywords ``sigma`` and ``weights``."""

    def prox(
        self,
        x: torch.Tensor,
        gamma: float | torch.Tensor,
        /,
        sigma: float | torch.Tensor | None = None,
        weights: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor: ...

    def grad(
        self,
        x: torch.Tensor,
        /,
        sigma: float | torch.Tensor | None = None,
        weights: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor: ...


class DataFidelityLike(Protocol):
    """A data fidelity as the algorithms use it: ``prox(x, y, physics, gamma)`` and
    ``grad(x, y, physics)``."""

    def prox(
        self, x: torch.Tensor, y: torch.Tensor, physics: PhysicsLike, gamma: float | torch.Tensor, /
    ) -> torch.Tensor: ...

    def grad(self, x: torch.Tensor, y: torch.Tensor, physics: PhysicsLike, /) -> torch.Tensor: ...


class DistanceFidelityLike(DataFidelityLike, Protocol):
    """A data fidelity ``f(x) = d(Ax, y)`` that also gives the prox of its distance,
    ``d_prox(u, y, gamma)`` (used by the measurement-space PDHG)."""

    def d_prox(
        self, u: torch.Tensor, y: torch.Tensor, gamma: float | torch.Tensor, /
    ) -> torch.Tensor: ...
