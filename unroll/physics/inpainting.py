r"""Pixel-wise operators: :class:`Denoising` (identity) and :class:`Inpainting` (mask).

Both are diagonal, so their prox and pseudo-inverse are closed forms for any ``gamma`` shape:

.. math:: \operatorname{prox}: h = \frac{\gamma\, m\, y + z}{\gamma\, m^2 + 1}
          = z + \frac{m\,(y - m z)}{m^2 + 1/\gamma}, \qquad
          A^\dagger y = \begin{cases} y / m & m \ne 0 \\ 0 & m = 0 \end{cases}.

The second form is the one computed: it stays finite for any finite ``γ`` (no ``γ·y``
overflow) and tends to the data-consistent ``y / m`` (``z`` where ``m = 0``) as ``γ → ∞``.
"""

from __future__ import annotations

from typing import Any, cast

import torch

from unroll.physics._utils import (
    check_prox_gamma,
    check_solve_options,
    expand_per_sample,
    is_number,
    require_real,
    require_same_precision,
    require_tensor,
    safe_denominator,
)
from unroll.physics.base import LinearPhysics
from unroll.physics.noise import GaussianNoise

__all__ = ["Denoising", "Inpainting", "random_mask"]

DEFAULT_NOISE_LEVEL = 0.1
"""``σ`` of the :class:`GaussianNoise` a :class:`Denoising` creates when given no noise model."""


class _Default:
    """Marker of an omitted ``noise_model`` (each :class:`Denoising` then builds its own)."""

    def __repr__(self) -> str:
        return f"GaussianNoise({DEFAULT_NOISE_LEVEL})"


_DEFAULT = _Default()


def _same_shape(api: str, z: torch.Tensor, y: torch.Tensor) -> None:
    require_tensor(api, "z", z)
    require_tensor(api, "y", y)
    if z.shape != y.shape:
        raise ValueError(
            f"{api}: y has shape {tuple(y.shape)} but z has {tuple(z.shape)}; this operator "
            "keeps the shape, so they must match."
        )


class Denoising(LinearPhysics):
    r"""The identity operator :math:`A = I`; measurements are ``noise_model(x)``.

    ``prox_l2(z, y, γ) = (γ y + z) / (γ + 1)`` and ``A_dagger(y) = y``.

    Args:
        noise_model: default: a new ``GaussianNoise(0.1)`` for each instance (never shared);
            ``None`` for noiseless measurements.

    Example:
        >>> import torch
        >>> from unroll.physics import Denoising, GaussianNoise
        >>> physics = Denoising(GaussianNoise(0.2))
        >>> physics.prox_l2(torch.zeros(1, 2), torch.ones(1, 2), 1.0)
        tensor([[0.5000, 0.5000]])
    """

    leaves = ()
    static = ()

    def __init__(
        self,
        noise_model: Any = _DEFAULT,
        *,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
        solver: str = "CG",
        device: torch.device | str | None = None,
    ) -> None:
        if noise_model is _DEFAULT:
            noise_model = GaussianNoise(DEFAULT_NOISE_LEVEL)
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver, solver, device)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return require_tensor("Denoising.A", "x", x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return require_tensor("Denoising.A_adjoint", "y", y)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def prox_l2(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        gamma: float | torch.Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        on_failure: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """Closed form ``y + (z − y)/(1 + γ)`` (``= (γ y + z)/(γ + 1)``, finite for any finite
        ``γ > 0``); the CG options are validated and ignored."""
        api = "Denoising.prox_l2"
        check_solve_options(api, max_iter, tol, implicit_backward_solver, on_failure, unknown)
        _same_shape(api, z, y)
        g = expand_per_sample(check_prox_gamma(api, gamma, z), z)
        return y + (z - y) / (g + 1)

    def A_dagger(
        self,
        y: torch.Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        on_failure: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """``y`` itself; the CG options are validated and ignored."""
        api = "Denoising.A_dagger"
        check_solve_options(api, max_iter, tol, implicit_backward_solver, on_failure, unknown)
        return require_tensor(api, "y", y)


class Inpainting(LinearPhysics):
    r"""Masking :math:`y = m \odot x` (``y`` keeps ``x``'s shape, zeros where ``m = 0``).

    Args:
        mask: real tensor broadcastable to the images (e.g. ``(C, H, W)``, ``(1, C, H, W)``
            or per sample ``(B, C, H, W)``); binary or any real weights. A pytree leaf.
            Or a float ``p`` in ``(0, 1)``: a random binary mask of shape ``(1, *img_size)``
            keeping each entry with probability ``p`` (DeepInverse's Bernoulli mask, drawn
            the same way: ``m = [u ≤ p]``, ``u ~ U[0, 1)`` of shape ``img_size`` from ``rng``;
            with ``pixelwise`` one draw per pixel, shared by the channels).
        img_size: ``(C, H, W)`` (or any image shape without the batch dim); required with a
            float ``mask``. DeepInverse's order ``Inpainting(img_size, mask)`` is accepted too.
        pixelwise: with a float ``mask``, mask whole pixels (all channels at once).
        rng: ``torch.Generator`` of a float ``mask`` (default: torch's global generator).
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`.

    Example:
        >>> import torch
        >>> from unroll.physics import Inpainting
        >>> mask = torch.tensor([[1.0, 0.0]])
        >>> physics = Inpainting(mask)
        >>> physics.prox_l2(torch.ones(1, 1, 2), torch.zeros(1, 1, 2), 1.0)
        tensor([[[0.5000, 1.0000]]])
        >>> rng = torch.Generator().manual_seed(0)
        >>> Inpainting(mask=0.5, img_size=(3, 4, 4), rng=rng).mask.shape
        torch.Size([1, 3, 4, 4])
    """

    leaves = ("mask",)
    static = ()

    def __init__(
        self,
        mask: torch.Tensor | float | tuple[int, ...],
        img_size: tuple[int, ...] | torch.Tensor | float | None = None,
        *,
        pixelwise: bool = True,
        rng: torch.Generator | None = None,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
        solver: str = "CG",
        device: torch.device | str | None = None,
    ) -> None:
        if _is_shape(mask) and not _is_shape(img_size):  # DeepInverse's (img_size, mask)
            mask, img_size = img_size, mask  # type: ignore[assignment]
        if is_number(mask):
            mask = random_mask(cast(float, mask), img_size, pixelwise=pixelwise, rng=rng)
        elif rng is not None:
            raise TypeError("Inpainting: rng only applies to a float mask (a random mask).")
        require_tensor("Inpainting", "mask", mask)
        mask = cast(torch.Tensor, mask)
        if mask.dtype == torch.bool:
            mask = mask.to(torch.get_default_dtype())
        require_real("Inpainting", "mask", mask)
        self.mask = mask
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver, solver, device)

    def _mask_for(self, api: str, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        require_tensor(api, name, x)
        require_same_precision(api, "mask", self.mask, name, x)
        try:
            ok = torch.broadcast_shapes(self.mask.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"{api}: mask of shape {tuple(self.mask.shape)} does not broadcast to {name} "
                f"of shape {tuple(x.shape)}; pass images of the mask's shape (B, C, H, W) or "
                "build the mask with the images' shape (C, H, W) or (B, C, H, W)."
            )
        return self.mask

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return self._mask_for("Inpainting.A", x) * x

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        return self._mask_for("Inpainting.A_adjoint", y, "y") * y

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        return self._mask_for("Inpainting.A_adjoint_A", x).square() * x

    def prox_l2(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        gamma: float | torch.Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        on_failure: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """Closed form ``z + m (y − m z)/(m² + 1/γ)`` (``= (γ m y + z)/(γ m² + 1)``); the CG
        options are validated and ignored."""
        api = "Inpainting.prox_l2"
        check_solve_options(api, max_iter, tol, implicit_backward_solver, on_failure, unknown)
        _same_shape(api, z, y)
        m = self._mask_for(api, z, "z")
        g = expand_per_sample(check_prox_gamma(api, gamma, z), z)
        return z + m * (y - m * z) / safe_denominator(m.square() + 1 / g)

    def A_dagger(
        self,
        y: torch.Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        on_failure: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        """``y / m`` where ``m ≠ 0``, zero elsewhere; the CG options are validated and ignored."""
        api = "Inpainting.A_dagger"
        check_solve_options(api, max_iter, tol, implicit_backward_solver, on_failure, unknown)
        m = self._mask_for(api, y, "y")
        nz = m != 0
        return torch.where(nz, y / torch.where(nz, m, torch.ones_like(m)), torch.zeros_like(y))


def _is_shape(v: Any) -> bool:
    return isinstance(v, (tuple, list, torch.Size)) and all(
        isinstance(s, int) and not isinstance(s, bool) for s in v
    )


def random_mask(
    p: float,
    img_size: Any,
    *,
    pixelwise: bool = True,
    rng: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    r"""A random binary mask of shape ``(1, *img_size)`` keeping each entry with probability
    ``p``: :math:`m = [u \le p]`, :math:`u \sim U[0, 1)` drawn by ``torch.rand(img_size,
    generator=rng)`` (DeepInverse 0.4.1's ``BernoulliSplittingMaskGenerator``, so the same
    generator state gives the same mask); with ``pixelwise`` (and ``len(img_size) >= 3``)
    the first channel's draw masks every channel of that pixel.

    Args:
        p: keep probability, a float in ``(0, 1)`` (``0`` / ``1`` are allowed: all out / in).
        img_size: image shape without the batch dim, e.g. ``(C, H, W)``.
        pixelwise: one draw per pixel shared by the channels (DeepInverse's default).
        rng: ``torch.Generator`` (default: torch's global generator).
        dtype: of the mask (default: torch's default dtype).

    Returns:
        ``(1, *img_size)`` tensor of zeros and ones.

    Example:
        >>> import torch
        >>> from unroll.physics import random_mask
        >>> m = random_mask(0.7, (3, 64, 64), rng=torch.Generator().manual_seed(0))
        >>> m.shape, bool((m[:, 0] == m[:, 1]).all())
        (torch.Size([1, 3, 64, 64]), True)
    """
    api = "Inpainting"
    if not (is_number(p) and 0.0 <= float(p) <= 1.0):
        raise ValueError(f"{api}: a float mask is a keep probability in [0, 1], got {p!r}.")
    if not _is_shape(img_size) or len(img_size) == 0 or min(img_size) <= 0:
        raise ValueError(
            f"{api}: a float mask ({p}) needs img_size, the image shape without the batch dim, "
            f"e.g. Inpainting(mask={p}, img_size=(3, 64, 64)); got img_size={img_size!r}."
        )
    if rng is not None and not isinstance(rng, torch.Generator):
        raise TypeError(f"{api}: rng must be a torch.Generator, got {type(rng).__name__}.")
    size = tuple(int(s) for s in img_size)
    u = torch.rand(size, generator=rng, device=None if rng is None else rng.device)
    keep = u <= p
    if pixelwise and len(size) >= 3:
        keep = keep[:1].expand(size)
    return keep.to(dtype or torch.get_default_dtype()).unsqueeze(0)
