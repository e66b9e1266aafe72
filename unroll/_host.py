"""Reading tensors on the host, also inside ``torch.func`` transforms.

The one place that asks a tensor for a Python value (a host sync) when the answer decides
control flow (convergence checks, failure reports, validation) and the one place that touches
functorch internals. Inside ``torch.func.vmap`` a data-dependent ``bool``/``float`` raises;
there the functorch wrappers are peeled off with ``torch.func.debug_unwrap`` and the question
is asked of the whole underlying batch, which for convergence checks keeps every problem
iterating while any is active (converged ones frozen by masks: the same per-problem results as
a loop).
"""

from __future__ import annotations

from typing import Any

import torch

_FUNCTORCH: Any = getattr(torch._C, "_functorch")  # noqa: B009 - private, untyped in stubs

__all__ = [
    "in_vmap",
    "is_transformed",
    "unwrap",
    "unwrap_if_dead",
    "host_any",
    "host_any_nonfinite",
    "try_bool",
    "host_max",
    "host_values",
    "host_mins",
]


def in_vmap() -> bool:
    """True when called inside ``torch.func.vmap`` (at any level)."""
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(
        i.key() == _FUNCTORCH.TransformType.Vmap for i in retrieve_all_functorch_interpreters()
    )


def is_transformed(t: object) -> bool:
    """Whether ``t`` is a tensor wrapped by a ``torch.func`` transform (vmap, grad, jvp)."""
    return isinstance(t, torch.Tensor) and _FUNCTORCH.is_functorch_wrapped_tensor(t)


def unwrap(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, with every functorch wrapper peeled off (the whole underlying batch).
    Only for reading values on the host, never for computing with them."""
    return torch.func.debug_unwrap(t.detach())


def unwrap_if_dead(t: Any) -> Any:
    """A tensor whose ``torch.func`` level has exited, unwrapped (a saved tensor reached from
    a nested implicit backward must not meet new levels); anything else unchanged."""
    if isinstance(t, torch.Tensor):
        return _FUNCTORCH.unwrap_if_dead(t)
    return t


def host_any(t: torch.Tensor) -> bool:
    """``bool(t.any())`` read on the host; inside ``vmap`` over the whole underlying batch."""
    try:
        return bool(t) if t.dim() == 0 else bool(t.any())
    except RuntimeError:
        return bool(unwrap(t).any())


def host_any_nonfinite(leaves: list[Any]) -> bool:
    """Whether any tensor among ``leaves`` holds NaN or Inf (one host read for all of them;
    non-tensor leaves are ignored)."""
    checks = [~torch.isfinite(t).all() for t in leaves if isinstance(t, torch.Tensor)]
    return bool(checks) and host_any(torch.stack(checks))


def try_bool(t: torch.Tensor) -> bool | None:
    """``bool(t)`` read on the host, or ``None`` inside ``vmap`` (a loop then runs on, with
    masks, instead of stopping early)."""
    try:
        return bool(t)
    except RuntimeError:
        return None


def host_max(t: torch.Tensor) -> float | None:
    """``float(t.max())`` on the host (``None`` for an empty tensor); inside ``vmap`` over the
    whole underlying batch."""
    t = unwrap(t)
    if t.numel() == 0:
        return None
    return float(t.max())


def host_values(t: torch.Tensor) -> list[float]:
    """All values of ``t`` (flattened) as Python floats; inside ``vmap`` those of the whole
    underlying batch."""
    return unwrap(t).reshape(-1).tolist()


def host_mins(values: list[torch.Tensor]) -> list[float]:
    """The least element of each tensor, read on the host (inside ``vmap``: over the whole
    underlying batch); plain 0-dim tensors are read directly, without a stacking op."""
    if values[0].dim() == 0 and not is_transformed(values[0]):
        return [v.item() for v in values]
    if values[0].dim() > 0:  # per-sample: the least over the batch
        values = [v.amin() for v in values]
    stats = torch.stack(values)
    if is_transformed(stats):
        stats = unwrap(stats).reshape(-1, len(values)).amin(0)
    return stats.tolist()
