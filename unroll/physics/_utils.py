"""Small shared checks and helpers of the physics package (private)."""

from __future__ import annotations

import torch


def host_bool(t: torch.Tensor) -> bool | None:
    """``bool(t)`` read on the host; ``None`` inside ``vmap`` (where it cannot be asked)."""
    try:
        return bool(t)
    except RuntimeError:
        return None


def require_tensor(api: str, name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{api}: {name} must be a torch.Tensor, got {type(x).__name__}.")
    return x


def require_real(api: str, name: str, x: torch.Tensor) -> None:
    require_tensor(api, name, x)
    if x.is_complex():
        raise TypeError(
            f"{api}: {name} is complex but this operator acts on real tensors; pass "
            f"{name}.real / {name}.imag separately, or use an MRI operator for complex data."
        )
    if not x.is_floating_point():
        raise TypeError(f"{api}: {name} must be floating point, got {x.dtype}; use .float().")


def require_image(api: str, name: str, x: torch.Tensor) -> None:
    """A real (B, C, H, W) tensor."""
    require_real(api, name, x)
    if x.dim() != 4:
        raise ValueError(
            f"{api}: {name} must be a (B, C, H, W) image batch, got shape {tuple(x.shape)}; "
            "add the missing batch/channel dimensions with unsqueeze."
        )


def real_dtype(x: torch.Tensor) -> torch.dtype:
    return x.real.dtype if x.is_complex() else x.dtype


def expand_per_sample(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 1-dim ``(B,)`` tensor reshaped to broadcast against a ``(B, ...)`` tensor; other shapes
    are returned unchanged (0-dim, or already broadcastable)."""
    if s.dim() == 1 and like.dim() > 1 and s.shape[0] == like.shape[0]:
        return s.reshape(s.shape + (1,) * (like.dim() - 1))
    return s


def is_scalar_or_per_sample(gamma: torch.Tensor, like: torch.Tensor) -> bool:
    """True for a 0-dim or ``(B,)`` gamma (one value per sample)."""
    if gamma.dim() == 0:
        return True
    return gamma.dim() == 1 and like.dim() > 1 and gamma.shape[0] == like.shape[0]
