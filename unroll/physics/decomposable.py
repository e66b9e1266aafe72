r"""An operator given by its singular value decomposition, with a closed-form prox.

:class:`DecomposablePhysics` is :math:`A = U \operatorname{diag}(m) V^{H}` (DeepInverse's
class of the same name): ``U`` and ``V`` callables with orthonormal columns
(:math:`U^H U = I`, :math:`V^H V = I`), ``m`` the singular values (``mask``). Writing
:math:`x = V a + x_\perp` (:math:`V^H x_\perp = 0`), the data term only sees :math:`a`, so

.. math:: \operatorname{prox}(z) = V\,\frac{\bar m \odot U^H y + V^H z/\gamma}{|m|^2 + 1/\gamma}
          + \bigl(z - V V^H z\bigr),
          \qquad A^\dagger y = V\Bigl(\frac{\bar m}{|m|^2}\odot U^H y\Bigr)

(entries with :math:`m = 0` give 0 in :math:`A^\dagger`); for a square (unitary) ``V`` the
last term of the prox vanishes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from unroll.physics._utils import (
    check_prox_gamma,
    check_solve_options,
    expand_per_sample,
    is_scalar_or_per_sample,
    require_tensor,
)
from unroll.physics.base import LinearPhysics

__all__ = ["DecomposablePhysics"]

Fn = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class DecomposablePhysics(LinearPhysics):
    r""":math:`A x = U(m \odot V^H x)`, an operator in SVD form, with closed-form ``prox_l2``
    and ``A_dagger`` (see the module docstring).

    Args:
        U, U_adjoint: :math:`U` and :math:`U^H` (orthonormal columns; default identity).
        V, V_adjoint: :math:`V` and :math:`V^H` (orthonormal columns; default identity).
        mask: the singular values :math:`m` (a number or a tensor broadcastable to
            :math:`V^H x`); a pytree leaf, differentiable.
        noise_model, max_iter, tol, implicit_backward_solver, solver, device: see
            :class:`LinearPhysics` (the CG settings serve a per-pixel ``gamma`` only).

    Example:
        >>> import torch
        >>> from unroll.physics import DecomposablePhysics
        >>> m = torch.tensor([[2.0, 0.0, 1.0]])
        >>> A = DecomposablePhysics(mask=m)                  # U = V = I: a diagonal operator
        >>> y = A.A(torch.ones(1, 3))
        >>> A.prox_l2(torch.zeros(1, 3), y, 1.0)              # (m y) / (m² + 1)
        tensor([[0.8000, 0.0000, 0.5000]])
        >>> A.A_dagger(y)
        tensor([[1., 0., 1.]])
    """

    leaves = ("mask",)
    static = ("_U", "_U_adjoint", "_V", "_V_adjoint")

    def __init__(
        self,
        U: Fn | None = None,
        U_adjoint: Fn | None = None,
        V: Fn | None = None,
        V_adjoint: Fn | None = None,
        mask: torch.Tensor | float = 1.0,
        *,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
        solver: str = "CG",
        device: torch.device | str | None = None,
    ) -> None:
        api = "DecomposablePhysics"
        fns = {"U": U, "U_adjoint": U_adjoint, "V": V, "V_adjoint": V_adjoint}
        for name, fn in fns.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"{api}: {name} must be callable or None, got {type(fn).__name__}.")
        for a, b in (("U", "U_adjoint"), ("V", "V_adjoint")):
            if (fns[a] is None) != (fns[b] is None):
                raise ValueError(f"{api}: pass both {a} and {b}, or neither (identity).")
        if not isinstance(mask, torch.Tensor):
            if isinstance(mask, bool) or not isinstance(mask, (int, float)):
                raise TypeError(f"{api}: mask must be a tensor or a number, got {mask!r}.")
            mask = torch.tensor(float(mask))
        self._U, self._U_adjoint = U or _identity, U_adjoint or _identity
        self._V, self._V_adjoint = V or _identity, V_adjoint or _identity
        self.mask = mask
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver, solver, device)

    # ------------------------------------------------------------------ the factors
    def U(self, x: torch.Tensor) -> torch.Tensor:
        return self._U(x)

    def U_adjoint(self, x: torch.Tensor) -> torch.Tensor:
        return self._U_adjoint(x)

    def V(self, x: torch.Tensor) -> torch.Tensor:
        return self._V(x)

    def V_adjoint(self, x: torch.Tensor) -> torch.Tensor:
        return self._V_adjoint(x)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`U(m \\odot V^H x)`."""
        return self.U(self.mask * self.V_adjoint(require_tensor("DecomposablePhysics.A", "x", x)))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """:math:`V(\\bar m \\odot U^H y)`."""
        y = require_tensor("DecomposablePhysics.A_adjoint", "y", y)
        return self.V(self.mask.conj() * self.U_adjoint(y))

    # ------------------------------------------------------------------ closed forms
    def prox_l2(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        gamma: float | torch.Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        on_failure: str | None = None,
        solver: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """The closed form of the module docstring for a number, 0-dim or per-sample ``γ``;
        conjugate gradient (:func:`least_squares`) for a per-pixel ``γ``."""
        api = "DecomposablePhysics.prox_l2"
        opts = check_solve_options(
            api, max_iter, tol, implicit_backward_solver, on_failure, unknown, solver=solver
        )
        require_tensor(api, "z", z)
        require_tensor(api, "y", y)
        gamma = check_prox_gamma(api, gamma, z)
        if not is_scalar_or_per_sample(gamma, z):
            return self._cg_prox(z, y, gamma, opts)
        vz = self.V_adjoint(z)
        inv_g = 1 / expand_per_sample(gamma, vz)
        m = self.mask
        a = (m.conj() * self.U_adjoint(y) + vz * inv_g) / (m.abs().square() + inv_g)
        return self.V(a) + (z - self.V(vz))

    def A_dagger(
        self,
        y: torch.Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        on_failure: str | None = None,
        solver: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """:math:`V(\\bar m / |m|^2 \\odot U^H y)`, 0 where :math:`m = 0`; the CG options are
        validated and ignored."""
        api = "DecomposablePhysics.A_dagger"
        check_solve_options(
            api, max_iter, tol, implicit_backward_solver, on_failure, unknown, solver=solver
        )
        m = self.mask
        power = m.abs().square()
        nonzero = power > 0
        inv = torch.where(nonzero, m.conj() / torch.where(nonzero, power, 1.0), 0.0)
        return self.V(inv * self.U_adjoint(require_tensor(api, "y", y)))
