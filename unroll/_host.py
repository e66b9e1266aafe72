"""Reading tensors on the host, also inside ``torch.func`` transforms.

The one place that asks a tensor for a Python value (a host sync) when the answer decides
control flow: convergence checks, failure reports, validation. Inside ``torch.func.vmap`` a
data-dependent ``bool``/``float`` raises; there the functorch wrappers are peeled off
(``torch.func`` offers no public way to do this for a batched tensor) and the question is
asked of the whole underlying batch, which for convergence checks keeps every problem
iterating while any is active (converged ones frozen by masks: the same per-problem results as
a loop).
"""

from __future__ import annotations

import torch

__all__ = ["in_vmap", "unwrap", "host_any", "host_max", "host_values"]


def in_vmap() -> bool:
    """True when called inside ``torch.func.vmap`` (at any level)."""
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    return any(
        i.key() == torch._C._functorch.TransformType.Vmap
        for i in retrieve_all_functorch_interpreters()
    )


def unwrap(t: torch.Tensor) -> torch.Tensor:
    """``t`` detached, with every functorch wrapper peeled off (the whole underlying batch)."""
    t = t.detach()
    funct = torch._C._functorch
    while funct.is_functorch_wrapped_tensor(t):
        t = funct.get_unwrapped(t)
    return t


def host_any(t: torch.Tensor) -> bool:
    """``bool(t.any())`` read on the host; inside ``vmap`` over the whole underlying batch."""
    try:
        return bool(t) if t.dim() == 0 else bool(t.any())
    except RuntimeError:
        return bool(unwrap(t).any())


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
