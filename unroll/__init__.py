"""unroll: differentiate through optimisation in PyTorch.

Unrolled (unfolded) algorithms with learnable parameters, implicit differentiation of any
solver (:func:`custom_root`), deep equilibrium models (:func:`deq`) and imaging physics with
an O(1)-memory least-squares proximal step, all pure functions over pytrees that compose with
``torch.func``.
"""

from unroll import (
    algorithms,
    data,
    equilibrium,
    fixed_point,
    linear_solve,
    metrics,
    models,
    optim,
    optimizers,
    physics,
    tree,
    unfolded,
)
from unroll._version import __version__
from unroll.equilibrium import DEQ, DEQConfig, deq
from unroll.fixed_point import FixedPointInfo, anderson, fixed_point_iteration
from unroll.implicit import (
    ImplicitModule,
    custom_fixed_point,
    custom_root,
    root_jvp,
    root_vjp,
)
from unroll.meta import (
    MetaAdam,
    MetaOptimizer,
    MetaRMSProp,
    MetaSGD,
    extract_state_dict,
    recover_state_dict,
    stop_gradient,
)

__all__ = [
    "DEQ",
    "DEQConfig",
    "FixedPointInfo",
    "algorithms",
    "anderson",
    "deq",
    "equilibrium",
    "fixed_point",
    "fixed_point_iteration",
    "ImplicitModule",
    "custom_fixed_point",
    "custom_root",
    "data",
    "linear_solve",
    "MetaAdam",
    "MetaOptimizer",
    "MetaRMSProp",
    "MetaSGD",
    "extract_state_dict",
    "recover_state_dict",
    "stop_gradient",
    "metrics",
    "models",
    "optim",
    "optimizers",
    "physics",
    "root_jvp",
    "root_vjp",
    "tree",
    "unfolded",
    "__version__",
]
