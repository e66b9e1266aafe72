r"""Compressed sensing with a Gaussian random matrix: :math:`y = \Phi\, \mathrm{vec}(x)`."""

from __future__ import annotations

import math
from typing import Any

import torch

from unroll.physics._utils import check_solve_options, require_real, require_same_precision
from unroll.physics.base import LinearPhysics

__all__ = ["CompressedSensing"]


class CompressedSensing(LinearPhysics):
    r"""Random projections :math:`y = \Phi\,\mathrm{vec}(x)`,
    :math:`\Phi_{ij} \sim \mathcal N(0, 1/m)` i.i.d., :math:`\Phi \in \mathbb R^{m \times n}`.

    Args:
        m: number of measurements per sample.
        n: number of unknowns per sample, or the image shape ``(C, H, W)`` (then
            ``n = C·H·W``).
        seed: seed of the generator that draws ``Φ`` (reproducible on every machine).
        img_size: shape of one image (without the batch dim); default ``(n,)`` or the tuple
            given as ``n``.
        dtype, device: of ``Φ`` (default: torch's default dtype, CPU).
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`;
            ``prox_l2`` uses CG.

    ``A_dagger`` is the closed form :math:`\Phi^\dagger y` (``torch.linalg.pinv``).
    ``matrix`` (``Φ``) is a pytree leaf: it can be learned.

    Example:
        >>> import torch
        >>> from unroll.physics import CompressedSensing
        >>> physics = CompressedSensing(m=64, n=(1, 16, 16), seed=0)
        >>> x = torch.rand(2, 1, 16, 16)
        >>> physics.A(x).shape, physics.A_adjoint(physics.A(x)).shape
        (torch.Size([2, 64]), torch.Size([2, 1, 16, 16]))
    """

    leaves = ("matrix",)
    static = ("img_size",)

    def __init__(
        self,
        m: int,
        n: int | tuple[int, ...],
        seed: int = 0,
        *,
        img_size: tuple[int, ...] | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
    ) -> None:
        if isinstance(n, (tuple, list, torch.Size)):
            img_size = tuple(int(s) for s in n) if img_size is None else img_size
            n = math.prod(int(s) for s in n)
        img_size = (int(n),) if img_size is None else tuple(int(s) for s in img_size)
        if not (_positive_int(m) and _positive_int(n)):
            raise ValueError(f"CompressedSensing: m and n must be positive ints, got {m!r}, {n!r}.")
        if math.prod(img_size) != n:
            raise ValueError(
                f"CompressedSensing: img_size {img_size} has {math.prod(img_size)} entries, n={n}."
            )
        gen = torch.Generator().manual_seed(int(seed))
        dtype = dtype or torch.get_default_dtype()
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(
                f"CompressedSensing: dtype must be a real floating dtype (e.g. torch.float64), "
                f"got {dtype!r}."
            )
        matrix = torch.randn(m, n, generator=gen, dtype=dtype) / math.sqrt(m)
        self.matrix = matrix.to(device) if device is not None else matrix
        self.img_size = img_size
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver)

    def A(self, x: torch.Tensor) -> torch.Tensor:
        require_real("CompressedSensing.A", "x", x)
        require_same_precision("CompressedSensing.A", "matrix", self.matrix, "x", x)
        if tuple(x.shape[1:]) != self.img_size:
            raise ValueError(
                f"CompressedSensing.A: x has shape {tuple(x.shape)}, expected "
                f"(B, *{self.img_size})."
            )
        return x.reshape(x.shape[0], -1) @ self.matrix.T

    def _check_y(self, api: str, y: torch.Tensor) -> None:
        require_real(api, "y", y)
        require_same_precision(api, "matrix", self.matrix, "y", y)
        m = self.matrix.shape[0]
        if y.dim() != 2 or y.shape[1] != m:
            raise ValueError(f"{api}: y must have shape (B, {m}), got {tuple(y.shape)}.")

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check_y("CompressedSensing.A_adjoint", y)
        return (y @ self.matrix).reshape(y.shape[0], *self.img_size)

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
        """``Φ⁺ y`` by ``torch.linalg.pinv``; the CG options are validated and ignored."""
        api = "CompressedSensing.A_dagger"
        check_solve_options(api, max_iter, tol, implicit_backward_solver, on_failure, unknown)
        self._check_y(api, y)
        return (y @ torch.linalg.pinv(self.matrix).T).reshape(y.shape[0], *self.img_size)


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0
