r"""Implicit differentiation of roots and fixed points.

If ``x*(θ)`` solves :math:`F(x^*(\theta), \theta) = 0` and :math:`\partial_x F` is invertible,
the implicit function theorem gives

.. math::  \partial_\theta x^* = -(\partial_x F)^{-1}\, \partial_\theta F .

Reverse mode therefore needs one linear solve with the transposed Jacobian,
:math:`(\partial_x F)^\top u = -\bar x`, followed by
:math:`\bar\theta = (\partial_\theta F)^\top u` (:func:`root_vjp`); forward mode solves
:math:`(\partial_x F)\, \dot x = -\partial_\theta F\,\dot\theta` (:func:`root_jvp`).
:func:`custom_root` attaches these rules to any solver, whatever it does inside (it is run
without recording a graph), so memory does not depend on its iterations.

The rules live in a ``torch.autograd.Function`` (``forward`` + ``setup_context`` with a
generated vmap rule) that saves the *solution* it outputs, so ``.backward()``,
``torch.func.grad / vjp / jacrev / vmap``, ``vmap(grad(...))``, grad-of-grad and forward mode
(``jvp`` / ``jacfwd``) all compose.

References:
    Blondel et al., "Efficient and modular implicit differentiation", NeurIPS 2022 (JAXopt).
    Krantz & Parks, *The Implicit Function Theorem*, Birkhäuser 2002.
"""

from unroll.implicit._module import ImplicitModule
from unroll.implicit._rules import (
    ClosedOverTensorError,
    custom_fixed_point,
    custom_root,
    root_jvp,
    root_vjp,
)

__all__ = [
    "root_vjp",
    "root_jvp",
    "custom_root",
    "custom_fixed_point",
    "ImplicitModule",
    "ClosedOverTensorError",
]
