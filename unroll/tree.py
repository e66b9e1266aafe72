"""Pytree arithmetic over :mod:`optree`.

Every function here maps over the leaves of one or more pytrees of tensors (nested
dict / tuple / list / NamedTuple, plus the classes registered in the ``"unroll"`` optree
namespace, such as the physics operators). Reductions return 0-dim tensors, never Python
numbers, so nothing here synchronises with the device.

The ``batch_*`` variants treat the leading dimension of every leaf as a batch of independent
problems: they reduce over all other dimensions and return a tensor of shape ``(B,)``, and
scalars of shape ``(B,)`` are broadcast against each leaf.

Example:
    >>> import torch
    >>> from unroll import tree
    >>> a = {"w": torch.ones(2, 3), "b": torch.ones(2)}
    >>> tree.vdot(a, a)
    tensor(8.)
    >>> tree.batch_vdot(a, a)
    tensor([4., 4.])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch

from unroll._typing import PyTree

__all__ = [
    "NAMESPACE",
    "leaves",
    "flatten",
    "unflatten",
    "structure",
    "map",
    "register",
    "add",
    "sub",
    "scale",
    "add_scaled",
    "neg",
    "mul",
    "div",
    "conj",
    "real",
    "zeros_like",
    "ones_like",
    "full_like",
    "detach",
    "where",
    "astype",
    "vdot",
    "sum_squares",
    "norm",
    "max_abs",
    "allclose",
    "size",
    "batch_vdot",
    "batch_sum_squares",
    "batch_norm",
    "batch_scale",
    "batch_add_scaled",
    "batch_where",
]

NAMESPACE = "unroll"
"""optree namespace in which unroll registers its own pytree classes (physics, states)."""


# --------------------------------------------------------------------------- structure
def leaves(tree: PyTree) -> list[torch.Tensor]:
    """The leaves of ``tree`` in optree's canonical order."""
    return optree.tree_leaves(tree, namespace=NAMESPACE)


def flatten(tree: PyTree) -> tuple[list[Any], optree.PyTreeSpec]:
    """``(leaves, treespec)``; rebuild with :func:`unflatten`."""
    return optree.tree_flatten(tree, namespace=NAMESPACE)


def unflatten(treespec: Any, leaves_: list[Any]) -> PyTree:
    """Inverse of :func:`flatten`."""
    return optree.tree_unflatten(treespec, leaves_)


def structure(tree: PyTree) -> optree.PyTreeSpec:
    """The treespec of ``tree``."""
    return optree.tree_structure(tree, namespace=NAMESPACE)


def map(fn: Callable[..., Any], tree: PyTree, *rest: PyTree) -> PyTree:  # noqa: A001
    """``optree.tree_map`` in unroll's namespace."""
    return optree.tree_map(fn, tree, *rest, namespace=NAMESPACE)


def register(cls: type, flatten_fn: Callable, unflatten_fn: Callable) -> type:
    """Register ``cls`` as a pytree node for optree (unroll's namespace) and ``torch.func``.

    Args:
        cls: the class to register.
        flatten_fn: ``obj -> (children, aux)``; ``children`` a tuple of tensors / subtrees,
            ``aux`` hashable static data.
        unflatten_fn: ``(aux, children) -> obj``.

    Returns:
        ``cls``, so this can be used on a class right after its definition. Registering with
        ``torch.utils._pytree`` too lets ``torch.func.vmap`` / ``functional_call`` see the
        leaves (e.g. vmap over a batch of blur kernels held by physics objects).
    """
    optree.register_pytree_node(cls, flatten_fn, unflatten_fn, namespace=NAMESPACE)
    import torch.utils._pytree as torch_pytree

    torch_pytree.register_pytree_node(
        cls,
        flatten_fn,
        lambda children, aux: unflatten_fn(aux, tuple(children)),
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
    )
    return cls


# --------------------------------------------------------------------------- elementwise
def add(a: PyTree, b: PyTree) -> PyTree:
    """``a + b`` leaf by leaf."""
    return map(torch.add, a, b)


def sub(a: PyTree, b: PyTree) -> PyTree:
    """``a - b`` leaf by leaf."""
    return map(torch.sub, a, b)


def scale(s: torch.Tensor | float, a: PyTree) -> PyTree:
    """``s * a`` for a scalar ``s``."""
    return map(lambda x: s * x, a)


def add_scaled(a: PyTree, s: torch.Tensor | float, b: PyTree) -> PyTree:
    """``a + s * b`` leaf by leaf, for a scalar ``s``."""
    return map(lambda x, y: x + s * y, a, b)


def neg(a: PyTree) -> PyTree:
    """``-a``."""
    return map(torch.neg, a)


def mul(a: PyTree, b: PyTree) -> PyTree:
    """Elementwise product."""
    return map(torch.mul, a, b)


def div(a: PyTree, b: PyTree) -> PyTree:
    """Elementwise quotient."""
    return map(torch.div, a, b)


def conj(a: PyTree) -> PyTree:
    """Complex conjugate of each leaf (identity on real leaves)."""
    return map(lambda x: x.conj() if x.is_complex() else x, a)


def real(a: PyTree) -> PyTree:
    """Real part of each leaf."""
    return map(lambda x: x.real if x.is_complex() else x, a)


def zeros_like(a: PyTree) -> PyTree:
    """A pytree of zeros with ``a``'s structure, shapes and dtypes."""
    return map(torch.zeros_like, a)


def ones_like(a: PyTree) -> PyTree:
    """A pytree of ones with ``a``'s structure, shapes and dtypes."""
    return map(torch.ones_like, a)


def full_like(a: PyTree, value: float) -> PyTree:
    """A pytree filled with ``value``."""
    return map(lambda x: torch.full_like(x, value), a)


def detach(a: PyTree) -> PyTree:
    """Detach every tensor leaf."""
    return map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, a)


def where(cond: torch.Tensor | bool, a: PyTree, b: PyTree) -> PyTree:
    """``torch.where(cond, a, b)`` leaf by leaf (``cond`` broadcast against each leaf)."""
    if not isinstance(cond, torch.Tensor):
        cond = torch.tensor(bool(cond))
    return map(lambda x, y: torch.where(cond.to(x.device), x, y), a, b)


def astype(a: PyTree, dtype: torch.dtype) -> PyTree:
    """Cast every floating leaf to ``dtype``."""
    return map(lambda x: x.to(dtype) if x.is_floating_point() or x.is_complex() else x, a)


# --------------------------------------------------------------------------- reductions
def _mul_conj(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x.conj() * y if x.is_complex() else x * y


def _vdot_leaf(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _mul_conj(x, y).sum()


def vdot(a: PyTree, b: PyTree) -> torch.Tensor:
    """``⟨a, b⟩ = Σ conj(a)·b`` over all leaves (a 0-dim tensor)."""
    terms = [_vdot_leaf(x, y) for x, y in zip(leaves(a), leaves(b), strict=True)]
    return _sum(terms)


def sum_squares(a: PyTree) -> torch.Tensor:
    """``‖a‖² = Σ |a|²`` over all leaves (real, 0-dim)."""
    return _sum([_abs2(x).sum() for x in leaves(a)])


def norm(a: PyTree) -> torch.Tensor:
    """Euclidean norm ``‖a‖`` over all leaves (real, 0-dim)."""
    return sum_squares(a).sqrt()


def max_abs(a: PyTree) -> torch.Tensor:
    """``max |a|`` over all leaves (0-dim)."""
    return torch.stack([x.abs().max() for x in leaves(a)]).max()


def allclose(a: PyTree, b: PyTree, rtol: float = 1e-5, atol: float = 1e-8) -> bool:
    """True when the structures match and every pair of leaves is ``torch.allclose``."""
    if structure(a) != structure(b):
        return False
    return all(torch.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(leaves(a), leaves(b)))


def size(a: PyTree) -> int:
    """Total number of elements over all leaves."""
    return sum(x.numel() for x in leaves(a))


# --------------------------------------------------------------------------- batched
def _bcast(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a ``(B,)`` tensor to broadcast against a ``(B, ...)`` leaf."""
    return s.reshape(s.shape + (1,) * (x.dim() - s.dim()))


def batch_vdot(a: PyTree, b: PyTree) -> torch.Tensor:
    """Per-sample ``⟨a_i, b_i⟩``: reduces every leaf over all but its leading dimension."""
    terms = [
        _mul_conj(x, y).reshape(x.shape[0], -1).sum(1)
        for x, y in zip(leaves(a), leaves(b), strict=True)
    ]
    return _sum(terms)


def batch_sum_squares(a: PyTree) -> torch.Tensor:
    """Per-sample ``‖a_i‖²``, shape ``(B,)``."""
    return _sum([_abs2(x).reshape(x.shape[0], -1).sum(1) for x in leaves(a)])


def batch_norm(a: PyTree) -> torch.Tensor:
    """Per-sample ``‖a_i‖``, shape ``(B,)``."""
    return batch_sum_squares(a).sqrt()


def batch_scale(s: torch.Tensor, a: PyTree) -> PyTree:
    """``s_i * a_i`` for ``s`` of shape ``(B,)``."""
    return map(lambda x: _bcast(s, x) * x, a)


def batch_add_scaled(a: PyTree, s: torch.Tensor, b: PyTree) -> PyTree:
    """``a_i + s_i * b_i`` for ``s`` of shape ``(B,)``."""
    return map(lambda x, y: x + _bcast(s, y) * y, a, b)


def batch_where(cond: torch.Tensor, a: PyTree, b: PyTree) -> PyTree:
    """``where(cond_i, a_i, b_i)`` for a boolean ``cond`` of shape ``(B,)``."""
    return map(lambda x, y: torch.where(_bcast(cond, x), x, y), a, b)


# --------------------------------------------------------------------------- helpers
def _abs2(x: torch.Tensor) -> torch.Tensor:
    return x.real.square() + x.imag.square() if x.is_complex() else x.square()


def _sum(terms: list[torch.Tensor]) -> torch.Tensor:
    if not terms:
        raise ValueError("unroll.tree: the pytree has no tensor leaves; pass at least one tensor.")
    out = terms[0]
    for t in terms[1:]:
        out = out + t
    return out
