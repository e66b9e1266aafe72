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


def load_deepinv():
    """DeepInverse when installed (the ``bench`` extra / anchors venv), else None."""
    try:
        try:
            import tv_shim  # noqa: F401  (torchvision CPU shim of the anchors venv)
        except ImportError:
            pass
        import deepinv

        return deepinv
    except Exception:  # noqa: BLE001 - the anchor is optional
        return None
