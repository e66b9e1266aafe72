r"""Noise models: maps ``y ↦ ỹ`` applied after the forward operator.

A noise model is a pytree like the physics that holds it: a tensor ``sigma`` is a leaf (so
``torch.func.vmap`` can batch it), a Python number is static data.
"""

from __future__ import annotations

from typing import Any

import torch

from unroll import tree
from unroll.physics._utils import check_level, real_dtype

__all__ = ["GaussianNoise"]

_API = "GaussianNoise"
_FIX = "Pass a noise standard deviation sigma >= 0, e.g. GaussianNoise(0.1)."


def _check_sigma(sigma: Any) -> None:
    """A real number or real tensor, every entry finite and >= 0 (one host read for a tensor,
    also inside ``torch.func`` transforms)."""
    if isinstance(sigma, torch.Tensor) and sigma.is_complex():
        raise TypeError(f"{_API}: sigma must be real, got a complex tensor.")
    check_level(_API, "sigma", sigma, strict=False, fix=_FIX)


class GaussianNoise:
    r"""Additive white Gaussian noise :math:`\tilde y = y + \sigma\,\varepsilon`,
    :math:`\varepsilon \sim \mathcal N(0, I)`.

    For complex ``y`` the noise is circular complex Gaussian with ``E|ε|² = 1`` (variance
    ``σ²/2`` on the real and imaginary parts), as ``torch.randn_like`` draws it.

    Args:
        sigma: standard deviation ``σ ≥ 0``, finite: a number, a 0-dim tensor, or a ``(B,)``
            tensor (one level per sample, broadcast over the other dimensions). Checked here
            and whenever ``sigma`` is assigned.
        rng: a ``torch.Generator`` to draw ``ε`` from (reproducible noise; DeepInverse's
            keyword); ``None``: torch's global generator. Draws happen on the generator's
            device and are moved to ``y``'s.

    Example:
        >>> import torch
        >>> from unroll.physics import GaussianNoise
        >>> noise = GaussianNoise(0.1)
        >>> y = noise(torch.zeros(4, 1, 8, 8))
        >>> y.shape
        torch.Size([4, 1, 8, 8])

    Under ``torch.func.vmap`` pass ``randomness="different"`` (or ``"same"``), and no ``rng``.
    """

    def __init__(self, sigma: float | torch.Tensor = 0.1, rng: torch.Generator | None = None):
        if rng is not None and not isinstance(rng, torch.Generator):
            raise TypeError(
                f"{_API}: rng must be a torch.Generator or None, got {type(rng).__name__}; e.g. "
                "rng=torch.Generator().manual_seed(0)."
            )
        self.sigma = sigma
        self.rng = rng

    @property
    def sigma(self) -> float | torch.Tensor:
        """The noise standard deviation (validated on assignment)."""
        return self._sigma

    @sigma.setter
    def sigma(self, value: float | torch.Tensor) -> None:
        _check_sigma(value)
        self._sigma = value

    def __call__(
        self,
        y: torch.Tensor,
        sigma: float | torch.Tensor | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        """Return ``y + σ ε`` (a fresh draw of ``ε`` at each call).

        Args:
            y: the clean measurements.
            sigma: a noise level for this call only (default: the object's). DeepInverse
                stores it as the new level; here the object is left unchanged.
            seed: re-seed ``rng`` before drawing (DeepInverse's keyword); needs ``rng``.
        """
        if not isinstance(y, torch.Tensor):
            raise TypeError(f"{_API}: y must be a torch.Tensor, got {type(y).__name__}.")
        if sigma is None:
            sigma = self._sigma
        else:
            _check_sigma(sigma)
        if isinstance(sigma, torch.Tensor):
            sigma = _fit_sigma(sigma, y)
        return y + sigma * self._draw(y, seed)

    def _draw(self, y: torch.Tensor, seed: int | None) -> torch.Tensor:
        rng = self.rng
        if seed is not None:
            if rng is None:
                raise ValueError(
                    f"{_API}: seed={seed!r} needs a generator to seed; create the noise with "
                    "rng=torch.Generator() (or seed torch.manual_seed yourself)."
                )
            rng.manual_seed(seed)
        if rng is None:
            return torch.randn_like(y)
        eps = torch.randn(y.shape, generator=rng, dtype=y.dtype, device=rng.device)
        return eps.to(y.device)

    def __repr__(self) -> str:
        extra = "" if self.rng is None else f", rng={self.rng!r}"
        return f"GaussianNoise(sigma={self._sigma!r}{extra})"


def _fit_sigma(sigma: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A tensor ``σ`` shaped to broadcast against ``y`` (``(B,)`` is per sample); raises when
    it cannot, or when a non-scalar ``σ`` would silently change ``y``'s precision."""
    if sigma.dim() == 1 and y.dim() > 1:
        if sigma.shape[0] not in (1, y.shape[0]):
            raise ValueError(
                f"{_API}: sigma has {sigma.shape[0]} entries but y has batch size {y.shape[0]}; "
                "pass one level per sample, or a single number."
            )
        sigma = sigma.reshape(sigma.shape + (1,) * (y.dim() - 1))
    try:
        ok = torch.broadcast_shapes(sigma.shape, y.shape) == y.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"{_API}: sigma of shape {tuple(sigma.shape)} does not broadcast to y of shape "
            f"{tuple(y.shape)}; use a number, a 0-dim tensor or a per-sample (B,) tensor."
        )
    if sigma.dim() > 0 and sigma.is_floating_point() and sigma.dtype != real_dtype(y):
        raise TypeError(
            f"{_API}: sigma is {sigma.dtype} but y is {y.dtype}; use one precision, e.g. "
            f"physics.to({real_dtype(y)}) or sigma.to({real_dtype(y)})."
        )
    return sigma


def _flatten(noise: GaussianNoise):
    rng = getattr(noise, "rng", None)
    if isinstance(noise.sigma, torch.Tensor):
        return (noise.sigma,), (None, rng)
    return (), (noise.sigma, rng)


def _unflatten(aux, children) -> GaussianNoise:
    obj = GaussianNoise.__new__(GaussianNoise)
    sigma, obj.rng = aux
    obj._sigma = children[0] if children else sigma  # no host read inside transforms
    return obj


tree.register(GaussianNoise, _flatten, _unflatten)
