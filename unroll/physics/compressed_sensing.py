r"""Compressed sensing: random projections :math:`y = \Phi\, \mathrm{vec}(x)`.

Two constructions, as in DeepInverse 0.4.1:

* dense (``fast=False``): :math:`\Phi_{ij} \sim \mathcal N(0, 1/m)` i.i.d. (real), or
  :math:`\mathcal N(0, \tfrac1{2m}) + i\,\mathcal N(0, \tfrac1{2m})` for a complex ``dtype``;
* fast (``fast=True``, "subsampled orthogonal with random signs"):
  :math:`\Phi = P\, S\, \operatorname{diag}(s)` with random signs :math:`s \in \{\pm1\}^n`, the
  orthonormal type-I discrete sine transform :math:`S` (applied by FFTs, up to DeepInverse's
  sign :math:`-S`) and :math:`P` keeping ``m`` random entries. Its rows are orthonormal
  (:math:`\Phi\Phi^\top = I`), so :math:`A^\dagger = A^\top` and the prox is the closed form
  :math:`h = z + \tfrac{\gamma}{1 + \gamma} A^\top (y - A z)`.

With ``channelwise=True`` each channel of a ``(B, C, ...)`` image is measured by the same
operator on ``n = prod(img_size[1:])`` unknowns and ``y`` has shape ``(B, C, m)``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from unroll.physics._utils import (
    check_prox_gamma,
    check_solve_options,
    complex_of,
    expand_per_sample,
    is_scalar_or_per_sample,
    real_dtype,
    require_same_precision,
    require_tensor,
)
from unroll.physics.base import LinearPhysics

__all__ = ["CompressedSensing", "dst1"]


def dst1(x: torch.Tensor) -> torch.Tensor:
    r"""DeepInverse's orthogonal type-I discrete sine transform over the last dim:

    .. math:: (\mathrm{dst1}\,x)_k = -\sqrt{\tfrac{2}{n+1}} \sum_{j=0}^{n-1} x_j
              \sin\frac{\pi (j+1)(k+1)}{n+1},

    computed by one real FFT of length :math:`2n + 2`. Symmetric and orthogonal:
    ``dst1(dst1(x)) = x``. Any real dtype; differentiable.

    Example:
        >>> import torch
        >>> from unroll.physics.compressed_sensing import dst1
        >>> x = torch.randn(3, 7, dtype=torch.float64)
        >>> bool(torch.allclose(dst1(dst1(x)), x))
        True
    """
    n = x.shape[-1]
    zero = x.new_zeros(x.shape[:-1] + (1,))
    ext = torch.cat([zero, x, zero, -x.flip(-1)], dim=-1)
    return torch.fft.rfft(ext, norm="ortho").imag[..., 1 : n + 1]


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


class CompressedSensing(LinearPhysics):
    r"""Random projections :math:`y = \Phi\,\mathrm{vec}(x)`, dense Gaussian or fast
    (subsampled sine transform with random signs); see the module notes for the math.

    Args:
        m: number of measurements per sample (per channel with ``channelwise``).
        n: number of unknowns per sample, or the image shape ``(C, H, W)`` (DeepInverse's
            second positional argument ``img_size``).
        seed: seed of the generator that draws the operator when no ``rng`` is given
            (reproducible on every machine).
        img_size: shape of one image without the batch dim; default ``(n,)`` or the tuple
            given as ``n``.
        fast: the fast operator :math:`P S \operatorname{diag}(s)` (real only; needs
            ``m <= n``); ``A_dagger`` = ``A_adjoint`` and ``prox_l2`` closed forms.
        channelwise: the same operator on each channel; ``y`` is ``(B, C, m)``.
        dtype: real (default: torch's default dtype) or complex (``torch.cfloat`` /
            ``torch.cdouble``: a complex Gaussian matrix; inputs are then complex, real ones
            are promoted).
        device: of the operator's tensors.
        rng: a ``torch.Generator`` to draw from instead of ``seed`` (DeepInverse's argument;
            with the same generator state the dense matrix, the signs and the kept indices
            are drawn exactly as DeepInverse 0.4.1 draws them).
        noise_model, max_iter, tol, implicit_backward_solver: see :class:`LinearPhysics`;
            the dense operator's ``prox_l2`` uses CG.
        compute_inverse: accepted for DeepInverse's signature; ``A_dagger`` is already the
            exact pseudo-inverse (computed when called), so it changes nothing.

    The dense ``A_dagger`` is the closed form :math:`\Phi^\dagger y` (``torch.linalg.pinv``).
    The one pytree leaf is ``matrix``: ``Φ`` (``(m, n)``, learnable), or for the fast operator
    the sign vector ``s`` (``(n,)``, also readable as ``signs``). The fast operator uses
    :math:`\operatorname{sign}(s)`, so it stays orthonormal whatever ``s`` holds and the
    gradient with respect to ``s`` is exactly zero (its closed forms are exact, derivatives
    included). The kept entries are static (``indices``: a sorted ``LongTensor`` built from
    them), so ``torch.func`` transforms see only floating tensors.

    Example:
        >>> import torch
        >>> from unroll.physics import CompressedSensing
        >>> physics = CompressedSensing(m=64, n=(1, 16, 16), seed=0)
        >>> x = torch.rand(2, 1, 16, 16)
        >>> physics.A(x).shape, physics.A_adjoint(physics.A(x)).shape
        (torch.Size([2, 64]), torch.Size([2, 1, 16, 16]))
        >>> fast = CompressedSensing(100, (3, 16, 16), fast=True, channelwise=True)
        >>> fast.A(torch.rand(2, 3, 16, 16)).shape
        torch.Size([2, 3, 100])

    References:
        S. Oymak, B. Recht, M. Soltanolkotabi, "Isometric sketching of any set via the
        Restricted Isometry Property", Information and Inference, 2018 (the fast operator).
    """

    leaves = ("matrix",)
    static = ("img_size", "fast", "channelwise", "_kept")

    def __init__(
        self,
        m: int,
        n: int | tuple[int, ...] | None = None,
        seed: int = 0,
        *,
        img_size: tuple[int, ...] | None = None,
        fast: bool = False,
        channelwise: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        rng: torch.Generator | None = None,
        noise_model=None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
        solver: str = "CG",
        compute_inverse: bool = False,
    ) -> None:
        api = "CompressedSensing"
        if not isinstance(compute_inverse, bool):
            raise TypeError(
                f"{api}: compute_inverse must be True or False, got {compute_inverse!r}."
            )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(
                f"{api}: seed must be an int, got {seed!r}; pass fast= / channelwise= by keyword."
            )
        if n is None and img_size is None:
            raise TypeError(f"{api}: pass n (or img_size), the image shape, e.g. (1, 16, 16).")
        if n is None:
            n = tuple(int(s) for s in img_size)  # type: ignore[union-attr]
        if isinstance(n, (tuple, list, torch.Size)):
            img_size = tuple(int(s) for s in n) if img_size is None else img_size
            n = math.prod(int(s) for s in n)
        img_size = (int(n),) if img_size is None else tuple(int(s) for s in img_size)
        if not (_positive_int(m) and _positive_int(n)):
            raise ValueError(f"{api}: m and n must be positive ints, got {m!r}, {n!r}.")
        if math.prod(img_size) != n:
            raise ValueError(
                f"{api}: img_size {img_size} has {math.prod(img_size)} entries, n={n}."
            )
        for name, flag in (("fast", fast), ("channelwise", channelwise)):
            if not isinstance(flag, bool):
                raise TypeError(f"{api}: {name} must be True or False, got {flag!r}.")
        if channelwise and len(img_size) < 2:
            raise ValueError(
                f"{api}: channelwise needs img_size = (C, ...), got {img_size}; pass the image "
                "shape as n."
            )
        dtype = dtype or torch.get_default_dtype()
        if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
            raise TypeError(
                f"{api}: dtype must be a real floating dtype or a complex one (e.g. "
                f"torch.float64, torch.cfloat), got {dtype!r}."
            )
        if fast and dtype.is_complex:
            raise ValueError(
                f"{api}: the fast operator is real (as in DeepInverse); use fast=False for a "
                "complex Gaussian matrix."
            )
        if rng is not None and not isinstance(rng, torch.Generator):
            raise TypeError(f"{api}: rng must be a torch.Generator, got {type(rng).__name__}.")
        gen = rng if rng is not None else torch.Generator().manual_seed(int(seed))
        gdev = gen.device
        n_op = math.prod(img_size[1:]) if channelwise else n
        self._kept: tuple[int, ...] = ()
        if fast:
            if m > n_op:
                raise ValueError(
                    f"{api}: the fast operator keeps m of n={n_op} entries; m={m} is too many."
                )
            u = torch.rand(n_op, generator=gen, device=gdev)
            self.matrix = torch.where(u > 0.5, -1.0, 1.0).to(dtype=dtype, device=device)
            perm = torch.randperm(n_op, generator=gen, device=gdev)[:m]
            self._kept = tuple(int(i) for i in torch.sort(perm).values.tolist())
        else:
            matrix = torch.randn(m, n_op, generator=gen, dtype=dtype, device=gdev)
            self.matrix = (matrix / math.sqrt(m)).to(device)
        self.img_size = img_size
        self.fast = fast
        self.channelwise = channelwise
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver, solver)

    # ------------------------------------------------------------------ helpers
    @property
    def m(self) -> int:
        """The number of measurements (per channel with ``channelwise``)."""
        return len(self._kept) if self.fast else self.matrix.shape[-2]

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the operator's matrix (or signs): complex for a complex operator."""
        return self.matrix.dtype

    @property
    def signs(self) -> torch.Tensor:
        """The fast operator's random signs ``s`` (its ``matrix`` leaf)."""
        if not self.fast:
            raise AttributeError("CompressedSensing.signs: only the fast operator has signs.")
        return self.matrix

    @property
    def indices(self) -> torch.Tensor:
        """The entries the fast operator keeps (sorted; empty when dense)."""
        return torch.tensor(self._kept, dtype=torch.long, device=self.matrix.device)

    def _held(self) -> torch.Tensor:
        return self.matrix

    def _as_input(self, api: str, name: str, x: torch.Tensor) -> torch.Tensor:
        require_tensor(api, name, x)
        held = self._held()
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"{api}: {name} must be floating point, got {x.dtype}; use .float().")
        if x.is_complex() and not held.is_complex():
            raise TypeError(
                f"{api}: {name} is complex but the operator is real; build it with "
                f"dtype={complex_of(real_dtype(held))} for complex data."
            )
        require_same_precision(api, "matrix", held, name, x)
        if held.is_complex() and not x.is_complex():
            x = x.to(held.dtype)
        return x

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        return x.reshape(B * x.shape[1], -1) if self.channelwise else x.reshape(B, -1)

    def _forward(self, rows: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return dst1(rows * self.matrix.sign()).index_select(-1, self._index(rows))
        return rows @ self.matrix.T

    def _adjoint(self, rows: torch.Tensor) -> torch.Tensor:
        if self.fast:
            full = rows.new_zeros(rows.shape[:-1] + self.matrix.shape[-1:])
            return dst1(full.index_add(-1, self._index(rows), rows)) * self.matrix.sign()
        return rows @ self.matrix.conj()

    def _index(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self._kept, dtype=torch.long, device=like.device)

    # ------------------------------------------------------------------ operator
    def A(self, x: torch.Tensor) -> torch.Tensor:
        api = "CompressedSensing.A"
        x = self._as_input(api, "x", x)
        if tuple(x.shape[1:]) != self.img_size:
            raise ValueError(
                f"{api}: x has shape {tuple(x.shape)}, expected (B, *{self.img_size})."
            )
        y = self._forward(self._rows(x))
        return y.reshape(x.shape[0], x.shape[1], -1) if self.channelwise else y

    def _check_y(self, api: str, y: torch.Tensor) -> torch.Tensor:
        y = self._as_input(api, "y", y)
        m = self.m
        if self.channelwise:
            C = self.img_size[0]
            if y.dim() != 3 or y.shape[1:] != (C, m):
                raise ValueError(f"{api}: y must have shape (B, {C}, {m}), got {tuple(y.shape)}.")
        elif y.dim() != 2 or y.shape[1] != m:
            raise ValueError(f"{api}: y must have shape (B, {m}), got {tuple(y.shape)}.")
        return y

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        y = self._check_y("CompressedSensing.A_adjoint", y)
        rows = y.reshape(-1, y.shape[-1])
        return self._adjoint(rows).reshape(y.shape[0], *self.img_size)

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
        """Fast operator: the closed form ``z + γ/(1 + γ) Aᵀ(y − A z)`` (a number, 0-dim or
        per-sample ``γ``); otherwise CG with the given options."""
        api = "CompressedSensing.prox_l2"
        opts = check_solve_options(
            api, max_iter, tol, implicit_backward_solver, on_failure, unknown
        )
        require_tensor(api, "z", z)
        gamma = check_prox_gamma(api, gamma, z)
        if not self.fast or not is_scalar_or_per_sample(gamma, z):
            return self._cg_prox(z, y, gamma, opts)
        g = expand_per_sample(gamma, z)
        return z + g / (1 + g) * self.A_adjoint(y - self.A(z))

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
        """``Φ⁺ y``: ``torch.linalg.pinv`` (dense) or ``Aᵀ y`` (fast, orthonormal rows); the
        CG options are validated and ignored."""
        api = "CompressedSensing.A_dagger"
        check_solve_options(api, max_iter, tol, implicit_backward_solver, on_failure, unknown)
        y = self._check_y(api, y)
        if self.fast:
            return self.A_adjoint(y)
        rows = y.reshape(-1, y.shape[-1])
        return (rows @ torch.linalg.pinv(self.matrix).T).reshape(y.shape[0], *self.img_size)
