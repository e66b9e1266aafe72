r"""Mirror descent (MD) and proximal mirror descent (PMD), with their Bregman potentials.

For a convex potential :math:`\phi` (Legendre on its domain) with conjugate :math:`\phi^*`,
mirror descent replaces the Euclidean gradient step by a step in the mirror (dual) space:

.. math::

    x_{k+1} = \nabla\phi^*\big(\nabla\phi(x_k) - \gamma\, v_k\big),

the minimiser of :math:`\gamma\langle v_k, x\rangle + D_\phi(x, x_k)`, with the Bregman
divergence :math:`D_\phi(x, y) = \phi(x) - \phi(y) - \langle\nabla\phi(y), x - y\rangle`.
With :math:`\phi = \tfrac12\|\cdot\|^2` it is gradient descent; with the negative entropy
:math:`\phi(x) = \sum_i x_i\log x_i` it is the multiplicative (exponentiated-gradient)
update :math:`x_{k+1} = x_k\, e^{-\gamma v_k}`, normalised on the simplex.

References:
    Nemirovski & Yudin, "Problem complexity and method efficiency in optimization", 1983.
    Beck & Teboulle, "Mirror descent and nonlinear projected subgradient methods for convex
    optimization", Oper. Res. Lett., 2003. Bauschke, Bolte & Teboulle, "A descent lemma
    beyond Lipschitz gradient continuity: first-order methods revisited and applications",
    Math. Oper. Res., 2017.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from unroll._typing import DataFidelityLike, PriorLike
from unroll.algorithms import _common as c
from unroll.algorithms.base import Algorithm

Tensor = torch.Tensor


def _sum(t: Tensor) -> Tensor:
    """Per-sample sum over every non-batch dimension, ``(B,)``."""
    return t.reshape(t.shape[0], -1).sum(1)


class Bregman:
    r"""A Bregman potential :math:`\phi`: ``fn``, ``grad``, ``conjugate``, ``grad_conj``, ``div``.

    Subclasses define :meth:`fn` (:math:`\phi`, per sample), :meth:`grad`
    (:math:`\nabla\phi`), :meth:`conjugate` (:math:`\phi^*`) and :meth:`grad_conj`
    (:math:`\nabla\phi^* = (\nabla\phi)^{-1}`); :meth:`div` and :meth:`md_step` follow. All are
    pure tensor functions (``torch.func``-friendly). DeepInverse's ``Bregman(phi=...)`` from a
    function alone is not provided: mirror descent needs :math:`\nabla\phi^*` in closed form.

    Example:
        >>> x, y = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
        >>> BregmanL2().div(x, y)          # ½‖x − y‖²
        tensor([2.5000])
    """

    def fn(self, x: Tensor) -> Tensor:
        """:math:`\\phi(x)` per sample, ``(B,)``."""
        raise NotImplementedError(f"unroll.algorithms.{type(self).__name__}: define fn(x).")

    def grad(self, x: Tensor) -> Tensor:
        """:math:`\\nabla\\phi(x)`."""
        raise NotImplementedError(f"unroll.algorithms.{type(self).__name__}: define grad(x).")

    def conjugate(self, u: Tensor) -> Tensor:
        """:math:`\\phi^*(u) = \\sup_x \\langle u, x\\rangle - \\phi(x)` per sample."""
        raise NotImplementedError(f"unroll.algorithms.{type(self).__name__}: define conjugate(u).")

    def grad_conj(self, u: Tensor) -> Tensor:
        """:math:`\\nabla\\phi^*(u)`, the inverse of :meth:`grad`."""
        raise NotImplementedError(
            f"unroll.algorithms.{type(self).__name__}: define grad_conj(u) (the inverse of "
            "grad): mirror descent needs it in closed form."
        )

    def div(self, x: Tensor, y: Tensor) -> Tensor:
        r""":math:`D_\phi(x, y) = \phi(x) - \phi(y) - \langle\nabla\phi(y), x - y\rangle`,
        per sample ``(B,)``."""
        return self.fn(x) - self.fn(y) - _sum(self.grad(y) * (x - y))

    def md_step(self, x: Tensor, grad: Tensor, gamma: float | Tensor = 1.0) -> Tensor:
        r"""One mirror step :math:`\nabla\phi^*(\nabla\phi(x) - \gamma\,\mathrm{grad})`
        (DeepInverse's ``MD_step``)."""
        return self.grad_conj(self.grad(x) - gamma * grad)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BregmanL2(Bregman):
    r""":math:`\phi(x) = \tfrac12\|x\|^2`: :math:`\nabla\phi = \nabla\phi^* = \mathrm{id}`,
    :math:`D_\phi(x, y) = \tfrac12\|x - y\|^2`; mirror descent is gradient descent.

    Example:
        >>> BregmanL2().md_step(torch.tensor([[1.0]]), torch.tensor([[4.0]]), 0.25)
        tensor([[0.]])
    """

    def fn(self, x: Tensor) -> Tensor:
        return 0.5 * _sum(x.square())

    def grad(self, x: Tensor) -> Tensor:
        return x

    def conjugate(self, u: Tensor) -> Tensor:
        return 0.5 * _sum(u.square())

    def grad_conj(self, u: Tensor) -> Tensor:
        return u

    def div(self, x: Tensor, y: Tensor) -> Tensor:
        return 0.5 * _sum((x - y).square())

    def md_step(self, x: Tensor, grad: Tensor, gamma: float | Tensor = 1.0) -> Tensor:
        return x - gamma * grad


class NegEntropy(Bregman):
    r"""Negative entropy :math:`\phi(x) = \sum_i x_i\log x_i` on :math:`x > 0`; with
    ``simplex=True`` restricted to each sample's probability simplex
    :math:`\{x \ge 0,\ \sum_i x_i = 1\}`.

    .. math::

        \nabla\phi(x) = 1 + \log x, \qquad
        \nabla\phi^*(u) = e^{u - 1}\ \ \big(\text{simplex: } \operatorname{softmax}(u)\big),
        \qquad D_\phi(x, y) = \sum_i x_i\log\tfrac{x_i}{y_i} - x_i + y_i\ \ (\mathrm{KL}).

    Mirror descent is then the exponentiated-gradient update
    :math:`x_{k+1} \propto x_k e^{-\gamma v_k}` (normalised per sample on the simplex), which
    keeps every iterate positive. ``x`` must be positive.

    Args:
        simplex: restrict to the simplex of every sample (the softmax over all non-batch
            dimensions); default False (DeepInverse's ``NegEntropy``).

    Example:
        >>> x = torch.tensor([[0.5, 0.5]])
        >>> NegEntropy(simplex=True).md_step(x, torch.tensor([[0.0, 1.0]]), 1.0)
        tensor([[0.7311, 0.2689]])
    """

    def __init__(self, simplex: bool = False):
        if not isinstance(simplex, bool):
            raise TypeError(
                f"unroll.algorithms.NegEntropy: simplex must be a bool, got {simplex!r}."
            )
        self.simplex = simplex

    def fn(self, x: Tensor) -> Tensor:
        return _sum(torch.special.xlogy(x, x))

    def grad(self, x: Tensor) -> Tensor:
        return 1 + torch.log(x)

    def conjugate(self, u: Tensor) -> Tensor:
        if self.simplex:
            return torch.logsumexp(u.reshape(u.shape[0], -1), dim=1)
        return _sum(torch.exp(u - 1))

    def grad_conj(self, u: Tensor) -> Tensor:
        if self.simplex:
            flat = u.reshape(u.shape[0], -1)
            return torch.softmax(flat, dim=1).reshape(u.shape)
        return torch.exp(u - 1)

    def div(self, x: Tensor, y: Tensor) -> Tensor:
        return _sum(torch.special.xlogy(x, x) - torch.special.xlogy(x, y) - x + y)

    def __repr__(self) -> str:
        return f"NegEntropy(simplex={self.simplex})"


class BurgEntropy(Bregman):
    r"""Burg's entropy :math:`\phi(x) = -\sum_i\log x_i` on :math:`x > 0`.

    .. math::

        \nabla\phi(x) = -1/x, \qquad \nabla\phi^*(u) = -1/u\ (u < 0), \qquad
        D_\phi(x, y) = \sum_i \tfrac{x_i}{y_i} - \log\tfrac{x_i}{y_i} - 1
        \ \ \text{(Itakura–Saito)}.

    The mirror step is :math:`x_{k+1} = x_k / (1 + \gamma x_k v_k)`, valid while
    :math:`1 + \gamma x_k v_k > 0`; it suits Poisson likelihoods (Bauschke, Bolte & Teboulle).

    Example:
        >>> BurgEntropy().md_step(torch.tensor([[2.0]]), torch.tensor([[0.25]]), 1.0)
        tensor([[1.3333]])
    """

    def fn(self, x: Tensor) -> Tensor:
        return -_sum(torch.log(x))

    def grad(self, x: Tensor) -> Tensor:
        return -1 / x

    def conjugate(self, u: Tensor) -> Tensor:
        return -_sum(torch.log(-u)) - u[0].numel()

    def grad_conj(self, u: Tensor) -> Tensor:
        return -1 / u

    def div(self, x: Tensor, y: Tensor) -> Tensor:
        r = x / y
        return _sum(r - torch.log(r) - 1)


class MDState(NamedTuple):
    """State of :func:`md`: the iterate ``x``."""

    x: Tensor


class PMDState(NamedTuple):
    """State of :func:`pmd`: the iterate ``x``."""

    x: Tensor


def _potential(name: str, bregman_potential: Bregman | None) -> Bregman:
    if bregman_potential is None:
        return BregmanL2()
    for method in ("grad", "grad_conj"):
        if not callable(getattr(bregman_potential, method, None)):
            raise TypeError(
                f"unroll.algorithms.{name}: bregman_potential must provide grad and grad_conj "
                f"(e.g. unroll.algorithms.BregmanL2(), NegEntropy(), BurgEntropy()), got "
                f"{type(bregman_potential).__name__}."
            )
    return bregman_potential


def md(
    data_fidelity: DataFidelityLike, prior: PriorLike, bregman_potential: Bregman | None = None
) -> Algorithm:
    r"""Mirror descent on :math:`f(x) + \lambda g(x)`:

    .. math::

        v_k = \nabla f(x_k) + \lambda\nabla g(x_k), \qquad
        x_{k+1} = \nabla\phi^*\big(\nabla\phi(x_k) - \gamma v_k\big).

    With :class:`BregmanL2` (the default) it is :func:`unroll.algorithms.gd`, iterate for
    iterate. It converges for convex :math:`f + \lambda g` that is :math:`L`-smooth relative
    to :math:`\phi` (:math:`L\phi - f - \lambda g` convex) when :math:`\gamma \le 1/L`.
    Initialised at ``x₀ = Aᵀy``, which must lie in the potential's domain (``x > 0`` for the
    entropies; pass ``init=`` to :func:`run` otherwise).

    Args:
        data_fidelity: ``f`` with ``.grad``.
        prior: ``g`` with ``.grad`` (e.g. :class:`unroll.optim.Tikhonov`,
            :class:`unroll.optim.RED`, :class:`unroll.optim.ZeroPrior`).
        bregman_potential: :math:`\phi` (:class:`BregmanL2`, :class:`NegEntropy`,
            :class:`BurgEntropy`, or any object with ``grad`` and ``grad_conj``).

    Returns:
        :class:`Algorithm` over :class:`MDState`; params: ``stepsize``, ``lambda_reg``,
        ``sigma_denoiser`` / ``prior`` for learned priors.

    Example:
        >>> import torch
        >>> from unroll.algorithms import NegEntropy, md, run
        >>> from unroll.optim import L2, ZeroPrior
        >>> from unroll.physics import Denoising
        >>> c = torch.tensor([[0.5, 0.3, 0.4, 0.1]], dtype=torch.float64)
        >>> alg = md(L2(), ZeroPrior(), NegEntropy(simplex=True))  # exponentiated gradient
        >>> x, _ = run(alg, c, Denoising(), {"stepsize": 1.0}, 300)
        >>> x   # the Euclidean projection of c onto the simplex: c − 0.075
        tensor([[0.4250, 0.2250, 0.3250, 0.0250]], dtype=torch.float64)

    References:
        Beck & Teboulle, "Mirror descent and nonlinear projected subgradient methods for
        convex optimization", 2003.
    """
    c.check_components("md", data_fidelity, prior, ("f.grad", "g.grad"))
    phi = _potential("md", bregman_potential)

    def init(y, physics, params):
        return MDState(c.default_init(y, physics))

    def step(state, y, physics, p):
        v = data_fidelity.grad(state.x, y, physics) + c.lambda_reg(p) * c.prior_grad(
            prior, state.x, p
        )
        return MDState(phi.md_step(state.x, v, c.stepsize(p)))

    return Algorithm(init, step, lambda s: s.x, c.BASIC_PARAMS)


def _bregman_prox(prior: Any, phi: Bregman) -> Callable[[Tensor, float | Tensor, dict], Tensor]:
    """``(u, gamma, p) -> prox^φ_{γg}(u)``: the prior's prox for :class:`BregmanL2`, its
    ``bregman_prox`` otherwise, the identity for :class:`unroll.optim.ZeroPrior`."""
    from unroll.optim.prior import ZeroPrior

    if isinstance(phi, BregmanL2):
        c.check_components("pmd", None, prior, ("g.prox",))
        return lambda u, gamma, p: c.prior_prox(prior, u, gamma, p)
    if callable(getattr(prior, "bregman_prox", None)):
        return lambda u, gamma, p: prior.bregman_prox(
            u, phi, gamma, sigma=c.sigma(p), weights=p.get(c.PRIOR_KEY)
        )
    if isinstance(prior, ZeroPrior):
        return lambda u, gamma, p: u
    raise TypeError(
        f"unroll.algorithms.pmd: with the potential {phi!r} the prior must provide "
        "bregman_prox(x, bregman_potential, gamma, sigma=None, weights=None) (the Bregman "
        f"prox argmin_u γ g(u) + D_φ(u, x)); {type(prior).__name__} does not. Use "
        "BregmanL2(), ZeroPrior(), or give the prior that method."
    )


def pmd(
    data_fidelity: DataFidelityLike, prior: PriorLike, bregman_potential: Bregman | None = None
) -> Algorithm:
    r"""Proximal mirror descent (Bregman proximal gradient) on :math:`f(x) + \lambda g(x)`:

    .. math::

        u_k = \nabla\phi^*\big(\nabla\phi(x_k) - \gamma\nabla f(x_k)\big), \qquad
        x_{k+1} = \operatorname{prox}^\phi_{\gamma\lambda g}(u_k)
        = \arg\min_x\ \gamma\lambda\, g(x) + D_\phi(x, u_k).

    With :class:`BregmanL2` (the default) the Bregman prox is the prior's prox and PMD is
    :func:`unroll.algorithms.pgd`, iterate for iterate (a :class:`unroll.optim.PnP` denoiser
    replaces the prox as usual). Another potential needs the prior's
    ``bregman_prox(x, bregman_potential, gamma, sigma=None, weights=None)`` (or
    :class:`unroll.optim.ZeroPrior`, whose Bregman prox is the identity); DeepInverse's inner
    gradient-descent fallback is not provided. Converges for convex terms with ``f``
    :math:`L`-smooth relative to :math:`\phi` when :math:`\gamma \le 1/L`. Initialised at
    ``x₀ = Aᵀy`` (in the potential's domain).

    Args:
        data_fidelity: ``f`` with ``.grad``.
        prior: ``g`` with ``.prox`` (:class:`BregmanL2`) or ``.bregman_prox``.
        bregman_potential: :math:`\phi` (default :class:`BregmanL2`).

    Returns:
        :class:`Algorithm` over :class:`PMDState`; params: ``stepsize``, ``lambda_reg``,
        ``sigma_denoiser``, ``prior``.

    Example:
        >>> import torch
        >>> from unroll.algorithms import pmd, run
        >>> from unroll.optim import L2, L1Prior
        >>> from unroll.physics import Denoising
        >>> y = torch.tensor([[2.0, -0.5, 1.0]])
        >>> x, _ = run(pmd(L2(), L1Prior()), y, Denoising(), {"stepsize": 1.0}, 5)
        >>> x    # soft thresholding of y at λ = 1
        tensor([[1., -0., 0.]])

    References:
        Bauschke, Bolte & Teboulle, "A descent lemma beyond Lipschitz gradient continuity",
        2017.
    """
    c.check_components("pmd", data_fidelity, None, ("f.grad",))
    phi = _potential("pmd", bregman_potential)
    prox = _bregman_prox(prior, phi)

    def init(y, physics, params):
        return PMDState(c.default_init(y, physics))

    def step(state, y, physics, p):
        gamma = c.stepsize(p)
        u = phi.md_step(state.x, data_fidelity.grad(state.x, y, physics), gamma)
        return PMDState(prox(u, gamma * c.lambda_reg(p), p))

    return Algorithm(init, step, lambda s: s.x, c.BASIC_PARAMS)
