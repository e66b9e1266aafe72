"""Shared instrumentation of the benchmark scripts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def saved_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of tensors autograd saves for backward while ``fn()`` runs
    (``torch.autograd.graph.saved_tensors_hooks``)."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total
