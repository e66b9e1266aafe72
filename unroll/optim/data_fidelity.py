"""Data fidelities ``f(x) = d(A x, y)``: value, gradient and proximal operator through a physics.

A data fidelity is a distance ``d(u, y)`` in measurement space composed with the forward
operator ``A`` of a physics object (``physics.A``, ``physics.A_adjoint``, ``physics.prox_l2``).
Values are per sample (shape ``(B,)``).

References:
    Combettes & Pesquet, "Proximal splitting methods in signal processing", 2011.
"""

from __future__ import annotations

from typing import Any

import torch

from unroll.physics._utils import check_level

Tensor = torch.Tensor


def _check_step(api: str, gamma: Any) -> None:
    """A prox step ``γ`` finite and > 0 (a number: free; a tensor: one host read)."""
    check_level(api, "gamma", gamma, strict=True, fix="Pass a positive step, e.g. gamma=1.0.")


def _per_sample_sum(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def soft_threshold(x: Tensor, threshold: Tensor | float) -> Tensor:
    """``sign(x) · max(|x| − threshold, 0)`` (complex: shrinks the modulus)."""
    return torch.sgn(x) * torch.clamp(x.abs() - threshold, min=0)


class L2:
    """``f(x) = 1/(2σ²) ‖A x − y‖²``.

    Args:
        sigma: noise level ``σ > 0`` (default 1).

    Example:
        >>> import torch
        >>> from unroll.physics import Denoising
        >>> z, y = torch.zeros(1, 2), torch.ones(1, 2)
        >>> L2().prox(z, y, Denoising(), gamma=1.0)  # argmin_x f(x) + ‖x − z‖²/(2·1)
        tensor([[0.5000, 0.5000]])
    """

    def __init__(self, sigma: float | Tensor = 1.0):
        check_level(
            "unroll.optim.L2",
            "sigma",
            sigma,
            strict=True,
            fix="Pass the measurement noise level, e.g. L2(sigma=1.0).",
        )
        self.sigma = sigma

    def __repr__(self) -> str:
        return f"L2(sigma={self.sigma})"

    @property
    def _inv_var(self) -> float | Tensor:
        return 1.0 / self.sigma**2

    # measurement-space distance d(u, y) = ‖u − y‖² / (2σ²)
    def d(self, u: Tensor, y: Tensor) -> Tensor:
        """Per-sample ``‖u − y‖² / (2σ²)``."""
        return 0.5 * self._inv_var * _per_sample_sum((u - y).abs().square())

    def d_grad(self, u: Tensor, y: Tensor) -> Tensor:
        """``(u − y) / σ²``."""
        return self._inv_var * (u - y)

    def d_prox(self, u: Tensor, y: Tensor, gamma: Tensor | float) -> Tensor:
        """``argmin_v ‖v − y‖²/(2σ²) + ‖v − u‖²/(2γ) = (u + γ y/σ²) / (1 + γ/σ²)``
        (``γ`` finite, > 0)."""
        _check_step("unroll.optim.L2.d_prox", gamma)
        c = gamma * self._inv_var
        return (u + c * y) / (1 + c)

    # image-space f(x) = d(A x, y)
    def value(self, x: Tensor, y: Tensor, physics: Any) -> Tensor:
        """Per-sample ``f(x)``."""
        return self.d(physics.A(x), y)

    def grad(self, x: Tensor, y: Tensor, physics: Any) -> Tensor:
        """``∇f(x) = Aᵀ(A x − y) / σ²``."""
        return physics.A_adjoint(self.d_grad(physics.A(x), y))

    def prox(self, z: Tensor, y: Tensor, physics: Any, gamma: Tensor | float) -> Tensor:
        """``argmin_x ‖A x − y‖²/(2σ²) + ‖x − z‖²/(2γ)`` = ``physics.prox_l2(z, y, γ/σ²)``."""
        return physics.prox_l2(z, y, gamma * self._inv_var)


class L1:
    """``f(x) = ‖A x − y‖₁``.

    The proximal operator is exact for the identity operator (``y + soft(z − y, γ)``); for a
    general ``A`` it runs ``max_iter`` projected-gradient steps on the dual
    ``max_{‖w‖∞ ≤ 1} ⟨w, A z − y⟩γ − γ²‖Aᵀw‖²/2`` with ``x = z − γ Aᵀ w`` (exact in one step
    when ``‖A‖ = 1`` and ``AᵀA = I``).

    Args:
        max_iter: dual iterations of the prox for a general operator (default 100).
        norm: ``‖A‖²`` (largest eigenvalue of ``AᵀA``); estimated by 30 power iterations
            when None.

    Example:
        >>> import torch
        >>> from unroll.physics import Denoising
        >>> z, y = torch.tensor([[1.0, 0.05]]), torch.zeros(1, 2)
        >>> L1().prox(z, y, Denoising(), gamma=0.1)  # soft-thresholds z − y by γ
        tensor([[0.9000, 0.0000]])
    """

    def __init__(self, max_iter: int = 100, norm: float | None = None):
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"unroll.optim.L1: max_iter must be an int >= 1, got {max_iter!r}.")
        check_level(
            "unroll.optim.L1",
            "norm",
            norm,
            strict=True,
            allow_none=True,
            fix="Pass ‖A‖² (the largest eigenvalue of AᵀA), or None to estimate it.",
        )
        self.max_iter = max_iter
        self.norm = norm

    def __repr__(self) -> str:
        return f"L1(max_iter={self.max_iter})"

    def d(self, u: Tensor, y: Tensor) -> Tensor:
        """Per-sample ``‖u − y‖₁``."""
        return _per_sample_sum((u - y).abs())

    def d_grad(self, u: Tensor, y: Tensor) -> Tensor:
        """A subgradient, ``sign(u − y)``."""
        return torch.sgn(u - y)

    def d_prox(self, u: Tensor, y: Tensor, gamma: Tensor | float) -> Tensor:
        """``argmin_v ‖v − y‖₁ + ‖v − u‖²/(2γ) = y + soft(u − y, γ)`` (``γ`` finite, > 0)."""
        _check_step("unroll.optim.L1.d_prox", gamma)
        return y + soft_threshold(u - y, gamma)

    def value(self, x: Tensor, y: Tensor, physics: Any) -> Tensor:
        """Per-sample ``‖A x − y‖₁``."""
        return self.d(physics.A(x), y)

    def grad(self, x: Tensor, y: Tensor, physics: Any) -> Tensor:
        """A subgradient ``Aᵀ sign(A x − y)``."""
        return physics.A_adjoint(self.d_grad(physics.A(x), y))

    def prox(self, z: Tensor, y: Tensor, physics: Any, gamma: Tensor | float) -> Tensor:
        """``argmin_x ‖A x − y‖₁ + ‖x − z‖²/(2γ)`` by projected gradient on the dual
        (``γ`` finite, > 0)."""
        _check_step("unroll.optim.L1.prox", gamma)
        norm = self.norm if self.norm is not None else _operator_norm_sq(physics, z)
        w = torch.zeros_like(y)
        for _ in range(self.max_iter):
            x = z - gamma * physics.A_adjoint(w)
            w = torch.clamp(w + (physics.A(x) - y) / (gamma * norm), -1.0, 1.0)
        return z - gamma * physics.A_adjoint(w)


def _operator_norm_sq(physics: Any, like: Tensor, num_iter: int = 30) -> Tensor:
    """Largest eigenvalue of ``AᵀA`` by power iteration (no gradient)."""
    with torch.no_grad():
        v = torch.randn_like(like)
        v = v / v.norm()
        lam = torch.ones((), dtype=like.real.dtype, device=like.device)
        for _ in range(num_iter):
            w = physics.A_adjoint(physics.A(v))
            lam = w.norm()
            v = w / lam
        return lam * 1.01
