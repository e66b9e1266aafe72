"""unroll: differentiate through optimisation in PyTorch.

Unrolled (unfolded) algorithms with learnable parameters, implicit differentiation of any
solver (:func:`custom_root`), deep equilibrium models (:func:`deq`) and imaging physics with
an O(1)-memory least-squares proximal step, all pure functions over pytrees that compose with
``torch.func``.
"""

from unroll import data, linear_solve, metrics, models, optimizers, physics, tree
from unroll._implicit_module import ImplicitModule
from unroll.implicit import custom_fixed_point, custom_root, root_jvp, root_vjp

__version__ = "0.1.0"

__all__ = [
    "ImplicitModule",
    "custom_fixed_point",
    "custom_root",
    "data",
    "linear_solve",
    "metrics",
    "models",
    "optimizers",
    "physics",
    "root_jvp",
    "root_vjp",
    "tree",
]
