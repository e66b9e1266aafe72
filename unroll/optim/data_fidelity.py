"""Data fidelities ``f(x) = d(A x, y)``: value, gradient and proximal operator through a physics.

A data fidelity is a distance ``d(u, y)`` in measurement space composed with the forward
operator ``A`` of a physics object (``physics.A``, ``physics.A_adjoint``, ``physics.prox_l2``).
Values are per sample (shape ``(B,)``).

References:
    Combettes & Pesquet, "Proximal splitting methods in signal processing", 2011.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from unroll._failure import check_on_failure, report_change
from unroll._host import try_bool
from unroll._typing import PhysicsLike
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


class _CallableFidelity:
    """DeepInverse's names for :meth:`value`: ``f(x, y, physics)`` and ``f.fn(x, y, physics)``."""

    def value(self, x: Tensor, y: Tensor, physics: PhysicsLike) -> Tensor:
        raise NotImplementedError

    def fn(self, x: Tensor, y: Tensor, physics: PhysicsLike) -> Tensor:
        """:meth:`value` under DeepInverse's name (also ``f(x, y, physics)``)."""
        return self.value(x, y, physics)

    def __call__(self, x: Tensor, y: Tensor, physics: PhysicsLike) -> Tensor:
        return self.value(x, y, physics)


class L2(_CallableFidelity):
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
    def value(self, x: Tensor, y: Tensor, physics: PhysicsLike) -> Tensor:
        """Per-sample ``f(x)``."""
        return self.d(physics.A(x), y)

    def grad(self, x: Tensor, y: Tensor, physics: PhysicsLike) -> Tensor:
        """``∇f(x) = Aᵀ(A x − y) / σ²``."""
        return physics.A_adjoint(self.d_grad(physics.A(x), y))

    def prox(self, z: Tensor, y: Tensor, physics: PhysicsLike, gamma: Tensor | float) -> Tensor:
        """``argmin_x ‖A x − y‖²/(2σ²) + ‖x − z‖²/(2γ)`` = ``physics.prox_l2(z, y, γ/σ²)``."""
        return physics.prox_l2(z, y, gamma * self._inv_var)


class L1(_CallableFidelity):
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

    def value(self, x: Tensor, y: Tensor, physics: PhysicsLike) -> Tensor:
        """Per-sample ``‖A x − y‖₁``."""
        return self.d(physics.A(x), y)

    def grad(self, x: Tensor, y: Tensor, physics: PhysicsLike) -> Tensor:
        """A subgradient ``Aᵀ sign(A x − y)``."""
        return physics.A_adjoint(self.d_grad(physics.A(x), y))

    def prox(self, z: Tensor, y: Tensor, physics: PhysicsLike, gamma: Tensor | float) -> Tensor:
        """``argmin_x ‖A x − y‖₁ + ‖x − z‖²/(2γ)`` by projected gradient on the dual
        (``γ`` finite, > 0)."""
        _check_step("unroll.optim.L1.prox", gamma)
        norm = self.norm if self.norm is not None else _operator_norm_sq(physics, z)
        w = torch.zeros_like(y)
        for _ in range(self.max_iter):
            x = z - gamma * physics.A_adjoint(w)
            w = torch.clamp(w + (physics.A(x) - y) / (gamma * norm), -1.0, 1.0)
        return z - gamma * physics.A_adjoint(w)


def _operator_norm_sq(physics: PhysicsLike, like: Tensor, num_iter: int = 30) -> Tensor:
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


# ---------------------------------------------------------------------- generic (autograd)
def check_inner_options(
    api: str, stepsize_inter: Any, max_iter_inter: Any, tol_inter: Any, on_failure: Any
) -> None:
    """Validate the inner gradient-descent options of a prox computed from a function."""
    if stepsize_inter is not None:
        check_level(
            api,
            "stepsize_inter",
            stepsize_inter,
            strict=True,
            fix="Pass a positive step, or None for 1/(1 + γ·L).",
        )
    if (
        isinstance(max_iter_inter, bool)
        or not isinstance(max_iter_inter, int)
        or max_iter_inter < 1
    ):
        raise ValueError(f"{api}: max_iter_inter must be an int >= 1, got {max_iter_inter!r}.")
    if (
        isinstance(tol_inter, bool)
        or not isinstance(tol_inter, (int, float))
        or not 0 <= tol_inter < math.inf
    ):
        raise ValueError(
            f"{api}: tol_inter must be a finite number >= 0 (relative change of the inner "
            f"iterates, e.g. 1e-6), got {tol_inter!r}."
        )
    check_on_failure(api, on_failure)


def needs_graph(fn: Any, *tensors: Any) -> bool:
    """Whether a gradient computed by autograd must itself be differentiable: grad mode is on
    and an input tensor or a parameter of an ``nn.Module`` ``fn`` requires grad (tensors a
    plain function captures are constants)."""
    if not torch.is_grad_enabled():
        return False
    if any(isinstance(t, Tensor) and t.requires_grad for t in tensors):
        return True
    return isinstance(fn, torch.nn.Module) and any(p.requires_grad for p in fn.parameters())


def autograd_grad(fn: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool) -> Tensor:
    """``∇ Σ fn(x)`` by autograd (``torch.autograd.grad``), with a graph when asked."""
    with torch.enable_grad():
        xr = x if (create_graph and x.requires_grad) else x.detach().requires_grad_()
        out = fn(xr)
        if not isinstance(out, Tensor):
            raise TypeError(
                f"the function must return a tensor (per sample (B,) or a scalar), got "
                f"{type(out).__name__}."
            )
        (g,) = torch.autograd.grad(out.sum(), xr, create_graph=create_graph)
    return g


def gradient_descent_prox(
    grad_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    gamma: float | Tensor,
    step: float | Tensor,
    max_iter: int,
    tol: float,
    name: str,
    on_failure: str,
) -> Tensor:
    """``argmin_z γ h(z) + ½‖z − x‖²`` by ``z ← z − η (γ ∇h(z) + z − x)`` from ``z = x``,
    until every sample's ``‖z_{k+1} − z_k‖ ≤ tol·‖z_{k+1}‖`` (one host read per iteration)
    or ``max_iter`` iterations (reported as ``name`` through the failure policy)."""
    z = x
    change = torch.zeros(())
    for _ in range(max_iter):
        z_new = z - step * (gamma * grad_fn(z) + z - x)
        with torch.no_grad():
            if z.dim() == 0:
                num, den = (z_new - z).abs(), z_new.abs()
            else:
                num = (z_new - z).reshape(z.shape[0], -1).norm(dim=1)
                den = z_new.reshape(z.shape[0], -1).norm(dim=1)
            change = num / den.clamp_min(torch.finfo(den.dtype).tiny)
        z = z_new
        if tol > 0 and try_bool((change <= tol).all()):
            return z
    if tol > 0:
        report_change(
            name,
            change,
            tol,
            on_failure,
            limit=f"at max_iter_inter={max_iter}",
            remedy="Raise max_iter_inter, loosen tol_inter, or lower stepsize_inter (the inner "
            "gradient descent diverges when stepsize_inter·(1 + γ·L) > 2, L the Lipschitz "
            "constant of the gradient)",
        )
    return z


class DataFidelity(_CallableFidelity):
    r"""A data fidelity ``f(x) = d(A x, y)`` from a distance function, as DeepInverse's
    ``DataFidelity(d=...)``.

    ``d(u, y)`` returns per-sample values ``(B,)`` (or a scalar: their sum). Gradients are by
    autograd: ``∇f(x) = Aᵀ ∇_u d(A x, y)``. The proxes are computed by gradient descent:

    .. math:: \operatorname{prox}_{\gamma f}(z) = \arg\min_x \gamma f(x) +
              \tfrac12\|x - z\|^2, \qquad x \leftarrow x - \eta\,(\gamma\nabla f(x)
              + x - z),

    from ``x = z``, until the relative change ``‖x_{k+1} − x_k‖/‖x_{k+1}‖ ≤ tol_inter`` (per
    sample; one host read per iteration) or ``max_iter_inter`` iterations (then reported as
    ``"DataFidelity.prox"`` through ``on_failure``). With ``∇d`` ``L_d``-Lipschitz the
    iteration contracts by ``q = max |1 − η(1 + γ μ)|`` over the curvatures ``μ ∈ [0,
    L_d‖A‖²]``, and the error is at most ``q/(1 − q)·tol_inter·‖x‖``. The default step
    ``η = 1/(1 + γ L_d ‖A‖²)`` takes ``L_d = 1`` (``‖A‖²`` by 30 power iterations).

    Args:
        d: ``d(u, y) -> (B,)`` (a callable, e.g. an ``nn.Module``).
        stepsize_inter: inner step ``η`` (None: the default above).
        max_iter_inter: inner iteration cap (default 100).
        tol_inter: inner relative-change tolerance (default 1e-6; 0: exactly
            ``max_iter_inter`` iterations).
        on_failure: an unconverged prox ``"warn"``, ``"raise"`` or ``"ignore"``.

    Example:
        >>> import torch
        >>> from unroll.physics import Denoising
        >>> f = DataFidelity(lambda u, y: 0.5 * ((u - y) ** 2).flatten(1).sum(1))
        >>> z, y = torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
        >>> f.prox(z, y, Denoising(None), gamma=1.0)   # as L2: (z + γ y)/(1 + γ)
        tensor([[0.5000, 0.5000]], dtype=torch.float64)
    """

    def __init__(
        self,
        d: Callable[[Tensor, Tensor], Tensor] | None = None,
        *,
        stepsize_inter: float | None = None,
        max_iter_inter: int = 100,
        tol_inter: float = 1e-6,
        on_failure: str = "warn",
    ):
        api = "unroll.optim.DataFidelity"
        if d is None or not callable(d):
            raise TypeError(
                f"{api}: d must be a callable d(u, y) -> per-sample distances (B,), got "
                f"{type(d).__name__}; e.g. DataFidelity(lambda u, y: ((u - y) ** 2).flatten(1)"
                ".sum(1) / 2), or use L2 / L1."
            )
        check_inner_options(api, stepsize_inter, max_iter_inter, tol_inter, on_failure)
        self._d = d
        self.stepsize_inter = stepsize_inter
        self.max_iter_inter = max_iter_inter
        self.tol_inter = tol_inter
        self.on_failure = on_failure

    def __repr__(self) -> str:
        return f"DataFidelity(d={self._d!r})"

    def d(self, u: Tensor, y: Tensor) -> Tensor:
        """Per-sample ``d(u, y)``."""
        return self._d(u, y)

    def d_grad(self, u: Tensor, y: Tensor) -> Tensor:
        """``∇_u d(u, y)`` by autograd."""
        return autograd_grad(lambda v: self._d(v, y), u, needs_graph(self._d, u, y))

    def d_prox(self, u: Tensor, y: Tensor, gamma: Tensor | float) -> Tensor:
        """``argmin_v γ d(v, y) + ½‖v − u‖²`` by gradient descent (step ``1/(1 + γ)`` unless
        ``stepsize_inter`` is set)."""
        _check_step("unroll.optim.DataFidelity.d_prox", gamma)
        step = self.stepsize_inter if self.stepsize_inter is not None else 1 / (1 + gamma)
        return gradient_descent_prox(
            lambda v: self.d_grad(v, y),
            u,
            gamma,
            step,
            self.max_iter_inter,
            self.tol_inter,
            "DataFidelity.d_prox",
            self.on_failure,
        )

    def value(self, x: Tensor, y: Tensor, physics: PhysicsLike) -> Tensor:
        """Per-sample ``f(x) = d(A x, y)``."""
        return self.d(physics.A(x), y)

    def grad(self, x: Tensor, y: Tensor, physics: PhysicsLike) -> Tensor:
        """``∇f(x) = Aᵀ ∇_u d(A x, y)``."""
        return physics.A_adjoint(self.d_grad(physics.A(x), y))

    def prox(self, z: Tensor, y: Tensor, physics: PhysicsLike, gamma: Tensor | float) -> Tensor:
        """``argmin_x γ d(A x, y) + ½‖x − z‖²`` by gradient descent (see the class)."""
        _check_step("unroll.optim.DataFidelity.prox", gamma)
        if self.stepsize_inter is not None:
            step: float | Tensor = self.stepsize_inter
        else:
            step = 1 / (1 + gamma * _operator_norm_sq(physics, z))
        return gradient_descent_prox(
            lambda x: self.grad(x, y, physics),
            z,
            gamma,
            step,
            self.max_iter_inter,
            self.tol_inter,
            "DataFidelity.prox",
            self.on_failure,
        )
