"""Shared test problem: the contractive tanh layer ``z = tanh(W z + U x + b)`` (float64)."""

import torch

DT = torch.float64


def tanh_layer(d: int, rho: float, batch: int = 32, seed: int = 0, dtype=DT):
    """``z = tanh(W z + U x + b)`` with ``W`` scaled to spectral radius ``rho``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, d, generator=g, dtype=DT)
    w = w * rho / torch.linalg.eigvals(w).abs().max()
    u = torch.randn(d, d, generator=g, dtype=DT) / d**0.5
    b = 0.01 * torch.randn(d, generator=g, dtype=DT)
    x = 0.1 * torch.randn(batch, d, generator=g, dtype=DT)
    return tuple(t.to(dtype) for t in (w, u, b, x))


def tanh_f(z, w, u, b, x):
    return torch.tanh(z @ w.T + x @ u.T + b)


def plain_loop(f, z, *args, n=3000):
    for _ in range(n):
        z = f(z, *args)
    return z
