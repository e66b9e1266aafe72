"""Helpers shared by the predefined networks: complex <-> channel layout, weight init.

The networks are real CNNs. Complex images or measurements (MRI) are given to them as real
channels: a complex tensor ``(B, *mid, H, W)`` becomes ``(B, 2 * prod(mid), H, W)`` (real parts
first, then imaginary parts), a real tensor ``(B, *mid, H, W)`` becomes ``(B, prod(mid), H, W)``.
:func:`from_channels` inverts :func:`to_channels` exactly, so a model returns its estimate in
the layout the physics uses.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn


class Layout(NamedTuple):
    """How a tensor was folded into channels: its shape and whether it was complex."""

    shape: torch.Size
    is_complex: bool


def to_channels(x: torch.Tensor) -> tuple[torch.Tensor, Layout]:
    """Fold ``x`` (real or complex, at least ``(B, H, W)``) into a real ``(B, C, H, W)`` tensor.

    Args:
        x: a tensor of shape ``(B, *mid, H, W)``, real or complex.

    Returns:
        ``(t, layout)`` with ``t`` real of shape ``(B, C, H, W)``; ``from_channels(t, layout)``
        gives ``x`` back.
    """
    if x.dim() < 3:
        raise ValueError(
            f"unroll.models: expected a batched image of shape (B, [C,] H, W), got shape "
            f"{tuple(x.shape)}; add a batch dimension."
        )
    layout = Layout(x.shape, x.is_complex())
    if layout.is_complex:
        x = torch.stack((x.real, x.imag), dim=1)
    return x.reshape(x.shape[0], -1, *x.shape[-2:]), layout


def from_channels(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Inverse of :func:`to_channels`: unfold ``t`` (``(B, C, H, W)``) into ``layout``."""
    if not layout.is_complex:
        return t.reshape(layout.shape)
    t = t.reshape(layout.shape[0], 2, *layout.shape[1:])
    return torch.complex(t[:, 0], t[:, 1])


def num_channels(shape: torch.Size | tuple[int, ...], is_complex: bool) -> int:
    """Number of real channels :func:`to_channels` produces for ``shape``."""
    c = 1
    for s in shape[1:-2]:
        c *= s
    return 2 * c if is_complex else c


def conv3x3(in_channels: int, out_channels: int, bias: bool) -> nn.Conv2d:
    """A 3x3 convolution with 'same' zero padding."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)


def check_positive_int(name: str, api: str, value: int, minimum: int = 1) -> None:
    """Raise unless ``value`` is an int ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{api}: `{name}` must be an int, got {type(value).__name__}.")
    if value < minimum:
        raise ValueError(f"{api}: `{name}` must be >= {minimum}, got {value}.")


def make_blocks(
    api: str, block: nn.Module | list | tuple, count: int, shared: bool
) -> nn.ModuleList:
    """``count`` blocks for an unrolled network: shared, independent copies, or a given list.

    Args:
        api: name used in error messages.
        block: one module, or a list/tuple of ``count`` modules (one per iteration).
        count: number of iterations (cascades).
        shared: with a single module, reuse it in every iteration (``True``) or give each
            iteration its own deep copy (``False``; all copies start from the same weights).

    Returns:
        An ``nn.ModuleList`` of length ``count`` (the same module repeated when shared).
    """
    if isinstance(block, (list, tuple)):
        if len(block) != count:
            raise ValueError(
                f"{api}: got {len(block)} per-iteration modules for {count} iterations; pass "
                f"exactly one module per iteration, or a single module."
            )
        for b in block:
            if not isinstance(b, nn.Module):
                raise TypeError(f"{api}: per-iteration blocks must be nn.Modules, got {type(b)}.")
        return nn.ModuleList(block)
    if not isinstance(block, nn.Module):
        raise TypeError(f"{api}: expected an nn.Module, got {type(block).__name__}.")
    if shared:
        return nn.ModuleList([block] * count)
    return nn.ModuleList([block] + [copy.deepcopy(block) for _ in range(count - 1)])
