r"""Checks and norms of a linear operator: the adjointness test and the power method.

Pure functions of anything with ``A`` / ``A_adjoint`` (``A_adjoint_A`` when present);
:class:`unroll.physics.LinearPhysics` exposes them as methods with DeepInverse's names
(``adjointness_test``, ``compute_sqnorm``, ``compute_norm``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch

from unroll._failure import check_on_failure, report
from unroll._host import host_values
from unroll._typing import PhysicsLike
from unroll.physics._utils import is_number, require_tensor

__all__ = ["adjointness_test", "power_method", "compute_sqnorm", "compute_norm"]


def _no_extra(api: str, unknown: dict[str, Any]) -> None:
    if unknown:
        raise TypeError(
            f"{api}: unknown option(s) {sorted(unknown)}; unroll's physics take no on-the-fly "
            "parameters: build a new operator (or physics.replace(...)) instead."
        )


def adjointness_test(
    physics: PhysicsLike, u: torch.Tensor, *, rng: torch.Generator | None = None
) -> torch.Tensor:
    r"""The adjointness defect :math:`\overline{\langle v, A u\rangle} - \langle u, A^\top v\rangle`
    for a random :math:`v`, with :math:`\langle a, b\rangle = \sum \bar a\, b`.

    It is zero for an exact adjoint; in practice of the order of the dtype's precision times
    :math:`\|A u\|\|v\|`. ``v`` is standard normal, shaped like ``A u`` (complex normal for a
    complex ``A u``), drawn from ``rng`` (default: torch's global generator).

    Args:
        physics: an operator with ``A`` and ``A_adjoint``.
        u: an input of ``A``.
        rng: generator of ``v``.

    Returns:
        A 0-dim tensor (complex for complex operators), DeepInverse's convention.

    Example:
        >>> import torch
        >>> from unroll.physics import Blur, gaussian_blur
        >>> physics = Blur(gaussian_blur(1.0).double(), padding="reflect")
        >>> u = torch.randn(1, 1, 8, 8, dtype=torch.float64)
        >>> bool(physics.adjointness_test(u).abs() < 1e-10)
        True

    References:
        DeepInverse 0.4.1, ``LinearPhysics.adjointness_test``.
    """
    require_tensor("adjointness_test", "u", u)
    Au = physics.A(u)
    v = torch.randn(Au.shape, generator=rng, dtype=Au.dtype, device=Au.device)
    Atv = physics.A_adjoint(v)
    s1 = (v.conj() * Au).sum()
    s2 = (Atv * u.conj()).sum()
    return s1.conj() - s2


def power_method(
    operator: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    verbose: bool = False,
    rng: torch.Generator | None = None,
    on_failure: str = "warn",
    api: str = "power_method",
) -> torch.Tensor:
    r"""Largest eigenvalue of a self-adjoint positive semi-definite ``operator`` by power
    iteration: :math:`x_{k+1} = M x_k / \|M x_k\|`, estimate
    :math:`\lambda_k = \langle x_k, M x_k\rangle` (Rayleigh quotient), stopped once
    :math:`|\lambda_k - \lambda_{k-1}| \le \mathrm{tol}\cdot|\lambda_k|`.

    Args:
        operator: ``x ↦ M x`` (e.g. ``AᵀA``).
        x0: a tensor of the operator's input shape, dtype and device (its values are ignored:
            the start is standard normal from ``rng``).
        max_iter: iteration cap; stopping there reports through ``on_failure``.
        tol: relative change of the estimate that counts as converged.
        verbose: print the iteration count and the estimate.
        rng: generator of the start (default: torch's global generator).
        on_failure: ``"warn"`` / ``"raise"`` / ``"ignore"`` when ``max_iter`` is reached.

    Returns:
        The estimate, a real 0-dim tensor (not differentiable: computed without a graph).

    Example:
        >>> import torch
        >>> from unroll.physics.spectral import power_method
        >>> M = torch.diag(torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64))
        >>> x0 = torch.zeros(3, dtype=torch.float64)
        >>> round(float(power_method(lambda v: M @ v, x0, tol=1e-10)), 6)
        3.0

    References:
        DeepInverse 0.4.1, ``deepinv.physics.functional.power_method`` (which stops on an
        absolute change ``tol``; here the change is relative).
    """
    require_tensor(api, "x0", x0)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter <= 0:
        raise ValueError(f"{api}: max_iter must be a positive int, got {max_iter!r}.")
    if not (is_number(tol) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"{api}: tol must be a finite number >= 0, got {tol!r}.")
    check_on_failure(api, on_failure)
    with torch.no_grad():
        x = torch.randn(x0.shape, generator=rng, dtype=x0.dtype, device=x0.device)
        x = x / torch.linalg.vector_norm(x)
        z_old = None
        z = torch.zeros((), dtype=x.real.dtype, device=x.device)
        change = math.inf
        for it in range(1, max_iter + 1):
            y = operator(x)
            z = torch.vdot(x.reshape(-1), y.reshape(-1)).real
            ny = torch.linalg.vector_norm(y)
            if z_old is not None:
                zv, zo = host_values(torch.stack((z, z_old)))
                change = abs(zv - zo)
                if change <= tol * abs(zv) or not math.isfinite(zv):
                    if verbose:
                        print(f"{api}: converged at iteration {it}, ||A^T A||_2 = {zv:.6g}")
                    break
            if not bool(ny > 0):  # M x = 0: x is in the null space (M = 0 on that start)
                break
            z_old = z
            x = y / ny
        else:
            report(
                api,
                "max_iter",
                f"stopped at max_iter={max_iter} with a relative change "
                f"{change / max(abs(float(z)), 1e-300):.3e} above tol={tol:g}",
                "Raise max_iter or tol",
                on_failure,
            )
    return z


def compute_sqnorm(
    physics: PhysicsLike,
    x0: torch.Tensor,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    verbose: bool = False,
    rng: torch.Generator | None = None,
    on_failure: str = "warn",
    **unknown: Any,
) -> torch.Tensor:
    r"""Squared spectral norm :math:`\|A\|_2^2 = \|A^\top A\|_2` by :func:`power_method` on
    ``A_adjoint_A``.

    Args:
        physics: an operator with ``A`` / ``A_adjoint`` (``A_adjoint_A`` used when present).
        x0: a tensor shaped like the operator's input (batched or not, as ``A`` takes it);
            only its shape, dtype and device are used.
        max_iter, tol, verbose, rng, on_failure: see :func:`power_method`.

    Returns:
        A real 0-dim tensor. For a batch ``x0`` it is the norm of the block-diagonal operator,
        i.e. the largest over the samples.

    Example:
        >>> import torch
        >>> from unroll.physics import Inpainting
        >>> physics = Inpainting(torch.tensor([[0.5, 2.0, 1.0]]))
        >>> round(float(physics.compute_sqnorm(torch.zeros(1, 1, 3), tol=1e-8)), 6)
        4.0

    References:
        DeepInverse 0.4.1, ``LinearPhysics.compute_sqnorm``.
    """
    api = f"{type(physics).__name__}.compute_sqnorm"
    _no_extra(api, unknown)
    normal = getattr(physics, "A_adjoint_A", None) or (lambda v: physics.A_adjoint(physics.A(v)))
    return power_method(
        normal,
        x0,
        max_iter=max_iter,
        tol=tol,
        verbose=verbose,
        rng=rng,
        on_failure=on_failure,
        api=api,
    )


def compute_norm(
    physics: PhysicsLike,
    x0: torch.Tensor,
    max_iter: int = 100,
    tol: float = 1e-3,
    verbose: bool = False,
    squared: bool = True,
    *,
    rng: torch.Generator | None = None,
    on_failure: str = "warn",
    **unknown: Any,
) -> torch.Tensor:
    r"""Spectral norm :math:`\|A\|_2` (``squared=False``) or its square
    :math:`\|A^\top A\|_2` (``squared=True``, DeepInverse 0.4.1's deprecated default, which
    warns with a ``DeprecationWarning`` as DeepInverse does: use :func:`compute_sqnorm`).

    Returns:
        A real 0-dim tensor.

    Example:
        >>> import torch
        >>> from unroll.physics import Inpainting
        >>> physics = Inpainting(torch.tensor([[0.5, 2.0, 1.0]], dtype=torch.float64))
        >>> x0 = torch.zeros(1, 1, 3, dtype=torch.float64)
        >>> round(float(physics.compute_norm(x0, squared=False, tol=1e-10)), 6)
        2.0

    References:
        DeepInverse 0.4.1, ``LinearPhysics.compute_norm``.
    """
    api = f"{type(physics).__name__}.compute_norm"
    if squared is True:
        warnings.warn(
            f"{api}(squared=True) is deprecated (as in DeepInverse): use compute_sqnorm() for "
            "||A^T A||_2, or compute_norm(squared=False) for ||A||_2.",
            DeprecationWarning,
            stacklevel=3,
        )
    elif squared is not False:
        raise ValueError(f"{api}: squared must be True or False, got {squared!r}.")
    sq = compute_sqnorm(
        physics,
        x0,
        max_iter=max_iter,
        tol=tol,
        verbose=verbose,
        rng=rng,
        on_failure=on_failure,
        **unknown,
    )
    return sq if squared else sq.sqrt()
