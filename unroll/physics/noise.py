r"""Noise models: maps ``y ↦ ỹ`` applied after the forward operator.

A noise model is a pytree like the physics that holds it: a tensor ``sigma`` is a leaf (so
``torch.func.vmap`` can batch it), a Python number is static data.
"""

from __future__ import annotations

import torch

from unroll import tree
from unroll.linear_solve import _host_any

__all__ = ["GaussianNoise"]


class GaussianNoise:
    r"""Additive white Gaussian noise :math:`\tilde y = y + \sigma\,\varepsilon`,
    :math:`\varepsilon \sim \mathcal N(0, I)`.

    For complex ``y`` the noise is circular complex Gaussian with ``E|ε|² = 1`` (variance
    ``σ²/2`` on the real and imaginary parts), as ``torch.randn_like`` draws it.

    Args:
        sigma: standard deviation ``σ ≥ 0``: a number, a 0-dim tensor, or a ``(B,)`` tensor
            (one level per sample, broadcast over the other dimensions).

    Example:
        >>> import torch
        >>> from unroll.physics import GaussianNoise
        >>> noise = GaussianNoise(0.1)
        >>> y = noise(torch.zeros(4, 1, 8, 8))
        >>> y.shape
        torch.Size([4, 1, 8, 8])

    Under ``torch.func.vmap`` pass ``randomness="different"`` (or ``"same"``).
    """

    def __init__(self, sigma: float | torch.Tensor = 0.1) -> None:
        if isinstance(sigma, torch.Tensor):
            if sigma.is_complex():
                raise TypeError("GaussianNoise: sigma must be real, got a complex tensor.")
            if _negative(sigma):
                raise ValueError(
                    f"GaussianNoise: sigma must be >= 0 (every entry), got {sigma!r}; pass a "
                    "non-negative noise level."
                )
        elif not isinstance(sigma, (int, float)) or sigma < 0:
            raise ValueError(
                f"GaussianNoise: sigma must be a number >= 0 or a tensor, got {sigma!r}."
            )
        self.sigma = sigma

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """Return ``y + σ ε`` (a fresh draw of ``ε`` at each call)."""
        sigma = self.sigma
        if isinstance(sigma, torch.Tensor) and sigma.dim() == 1 and y.dim() > 1:
            sigma = sigma.reshape(sigma.shape + (1,) * (y.dim() - 1))
        return y + sigma * torch.randn_like(y)

    def __repr__(self) -> str:
        return f"GaussianNoise(sigma={self.sigma!r})"


def _negative(sigma: torch.Tensor) -> bool:
    """Whether any entry of ``sigma`` is negative or NaN, read once on the host (under
    ``torch.func.vmap`` over the whole underlying batch); False where no host read is
    possible."""
    try:
        return _host_any(~(sigma.detach() >= 0))
    except RuntimeError:
        return False


def _flatten(noise: GaussianNoise):
    if isinstance(noise.sigma, torch.Tensor):
        return (noise.sigma,), None
    return (), noise.sigma


def _unflatten(aux, children) -> GaussianNoise:
    obj = GaussianNoise.__new__(GaussianNoise)
    obj.sigma = children[0] if children else aux
    return obj


tree.register(GaussianNoise, _flatten, _unflatten)
