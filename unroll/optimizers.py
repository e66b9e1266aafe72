"""Functional, differentiable first-order optimizers over pytrees.

Each optimizer is a :class:`GradientTransformation`, a NamedTuple of two pure functions built
by a factory that closes over the hyperparameters (the optax pattern)::

    opt = unroll.optimizers.adam(lr=1e-3)
    state = opt.init(params)                              # NamedTuple of tensors
    params, state = opt.update(grads, state, params)      # new params, new state

``update`` returns the **new parameters** (not an update direction), so one step of an
inner loop is one line and no sign convention has to be remembered. Nothing is modified in
place: the old ``params`` and ``state`` are left untouched and the new ones are built with
out-of-place tensor arithmetic. An inner loop written with these functions is therefore an
ordinary differentiable computation: meta-gradients (MAML), second derivatives,
``torch.func.grad`` / ``vmap`` over tasks and ``loss.backward()`` all go through it.

Hyperparameters (``lr``, ``beta``, ``b1`` ...) may be Python numbers or tensors; a tensor
that requires grad (a learned step size) receives its gradient like any other input. ``lr``
may also be a pytree with the structure of ``params`` (one step size per parameter tensor,
as in Meta-SGD). The trajectories equal ``torch.optim.SGD`` / ``torch.optim.Adam`` with the
same settings, and :func:`rmsprop` equals ``torch.optim.RMSprop``.

Example (MAML, one task, differentiating through 5 unrolled inner steps)::

    import torch
    from torch.func import grad
    from unroll import optimizers

    def inner_loss(w, x, y):
        return ((x @ w - y) ** 2).mean()

    def meta_loss(w0, x, y, xv, yv):
        opt = optimizers.sgd(lr=0.1)
        w, state = w0, opt.init(w0)
        for _ in range(5):
            w, state = opt.update(grad(inner_loss)(w, x, y), state, w)
        return inner_loss(w, xv, yv)

    meta_grad = grad(meta_loss)(w0, x, y, xv, yv)

References:
    Babuschkin et al., "The DeepMind JAX Ecosystem" (optax), 2020.
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    Tieleman & Hinton, "Lecture 6.5 - RMSProp", COURSERA: Neural Networks for Machine
    Learning, 2012.
    Sutskever et al., "On the importance of initialization and momentum in deep learning",
    ICML 2013.
    Finn et al., "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import optree
import torch

from unroll import tree
from unroll._typing import PyTree

Scalar = float | torch.Tensor

__all__ = [
    "AdamState",
    "EmptyState",
    "GradientTransformation",
    "MomentumState",
    "RMSPropState",
    "adam",
    "momentum",
    "rmsprop",
    "sgd",
]


class GradientTransformation(NamedTuple):
    """A functional optimizer: two pure functions.

    Attributes:
        init: ``params -> state``; ``state`` is a NamedTuple of tensors / pytrees.
        update: ``(grads, state, params) -> (new_params, new_state)``; ``grads`` has the
            pytree structure of ``params``. Pure: the inputs are not modified.
    """

    init: Callable[[PyTree], PyTree]
    update: Callable[[PyTree, PyTree, PyTree], tuple[PyTree, PyTree]]


class EmptyState(NamedTuple):
    """State of a stateless optimizer (:func:`sgd`): no fields."""


class MomentumState(NamedTuple):
    """State of :func:`momentum`.

    Attributes:
        momentum: the velocity buffer ``v`` (pytree with the structure of ``params``).
    """

    momentum: PyTree


class AdamState(NamedTuple):
    """State of :func:`adam`.

    Attributes:
        count: number of steps taken so far (0-dim int64 tensor).
        mu: first-moment estimate ``m`` (pytree like ``params``).
        nu: second-moment estimate ``v`` (pytree like ``params``).
    """

    count: torch.Tensor
    mu: PyTree
    nu: PyTree


class RMSPropState(NamedTuple):
    """State of :func:`rmsprop`.

    Attributes:
        nu: running average of the squared gradients (pytree like ``params``).
        mu: running average of the gradients (``centered=True``), else ``None``.
        momentum: the momentum buffer (``momentum`` given), else ``None``.
    """

    nu: PyTree
    mu: PyTree
    momentum: PyTree


# --------------------------------------------------------------------------- validation
def _check_positive(api: str, name: str, value: Any) -> None:
    """``value`` must be a positive finite number, a tensor, or (for lr) a pytree of those."""
    if isinstance(value, bool):
        raise TypeError(f"{api}: `{name}` must be a number or a tensor, got a bool.")
    if isinstance(value, (int, float)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{api}: `{name}` must be positive and finite, got {value}.")
        return
    if isinstance(value, torch.Tensor):
        if value.is_complex():
            raise TypeError(f"{api}: `{name}` must be real, got a complex tensor.")
        return
    raise TypeError(
        f"{api}: `{name}` must be a positive number or a real tensor, got {type(value).__name__}."
    )


def _check_unit(api: str, name: str, value: Any, allow_zero: bool = True) -> None:
    """``value`` must lie in ``[0, 1)`` (a number) or be a real tensor."""
    if isinstance(value, torch.Tensor) and not isinstance(value, bool):
        if value.is_complex():
            raise TypeError(f"{api}: `{name}` must be real, got a complex tensor.")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{api}: `{name}` must be a number in [0, 1) or a real tensor.")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value < 1):
        bound = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{api}: `{name}` must lie in {bound}, got {value}.")


def _check_nonneg(api: str, name: str, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{api}: `{name}` must be a non-negative number or a tensor.")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{api}: `{name}` must be non-negative and finite, got {value}.")


def _check_lr(api: str, lr: Any) -> None:
    """``lr`` is a scalar (number / tensor) or a pytree of them (checked against params later)."""
    if isinstance(lr, (int, float, torch.Tensor)):
        _check_positive(api, "lr", lr)
        return
    leaves = tree.leaves(lr)
    if not leaves:
        raise TypeError(f"{api}: `lr` must be a number, a tensor or a pytree of those.")
    for leaf in leaves:
        _check_positive(api, "lr", leaf)


def _flat_like(api: str, name: str, value: PyTree, spec: optree.PyTreeSpec) -> list[Any]:
    """Leaves of ``value``, which must have the pytree structure ``spec``."""
    leaves, value_spec = tree.flatten(value)
    if value_spec != spec:
        raise ValueError(
            f"{api}: `{name}` must have the same pytree structure as `params`; "
            f"got {value_spec} and {spec}."
        )
    return leaves


def _lr_leaves(api: str, lr: Scalar | PyTree, spec: optree.PyTreeSpec, n: int) -> list[Scalar]:
    """One step size per leaf: broadcast a scalar, or match a pytree of step sizes."""
    if isinstance(lr, (int, float, torch.Tensor)):
        return [lr] * n
    return _flat_like(api, "lr", lr, spec)


def _flatten_params(api: str, params: PyTree) -> tuple[list[torch.Tensor], optree.PyTreeSpec]:
    leaves, spec = tree.flatten(params)
    if not leaves:
        raise ValueError(f"{api}: `params` has no tensor leaves; pass a pytree of tensors.")
    for leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(
                f"{api}: every leaf of `params` must be a tensor, got {type(leaf).__name__}."
            )
    return leaves, spec


def _check_state(api: str, state: PyTree, cls: type) -> None:
    if not isinstance(state, cls):
        raise TypeError(
            f"{api}: `state` must be the {cls.__name__} returned by `init` (or a previous "
            f"`update`), got {type(state).__name__}."
        )


# --------------------------------------------------------------------------- sgd
def sgd(lr: Scalar | PyTree) -> GradientTransformation:
    r"""Plain gradient descent, :math:`\theta_{k+1} = \theta_k - \eta\, g_k`.

    Args:
        lr: step size :math:`\eta > 0`: a number, a 0-dim tensor (may require grad: a learned
            step size) or a pytree with the structure of ``params`` (one step size per leaf,
            each broadcast against its leaf, as in Meta-SGD).

    Returns:
        A :class:`GradientTransformation` with state :class:`EmptyState`; matches
        ``torch.optim.SGD(lr=lr)``.

    Example:
        >>> import torch
        >>> opt = sgd(0.5)
        >>> p = {"w": torch.ones(2)}
        >>> p, s = opt.update({"w": torch.full((2,), 2.0)}, opt.init(p), p)
        >>> p["w"]
        tensor([0., 0.])
    """
    api = "unroll.optimizers.sgd"
    _check_lr(api, lr)

    def init(params: PyTree) -> EmptyState:
        _flatten_params(api, params)
        return EmptyState()

    def update(grads: PyTree, state: EmptyState, params: PyTree) -> tuple[PyTree, EmptyState]:
        _check_state(api, state, EmptyState)
        p, spec = _flatten_params(api, params)
        g = _flat_like(api, "grads", grads, spec)
        lrs = _lr_leaves(api, lr, spec, len(p))
        new = [pi - li * gi for pi, gi, li in zip(p, g, lrs)]
        return tree.unflatten(spec, new), state

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------- momentum
def momentum(
    lr: Scalar | PyTree, beta: Scalar = 0.9, nesterov: bool = False
) -> GradientTransformation:
    r"""Heavy-ball (or Nesterov) momentum, in PyTorch's convention.

    .. math::
        v_{k+1} = \beta v_k + g_k, \qquad
        \theta_{k+1} = \theta_k - \eta\, d_k, \qquad
        d_k = \begin{cases} v_{k+1} & \text{heavy ball} \\
                            g_k + \beta v_{k+1} & \text{Nesterov} \end{cases}

    with :math:`v_0 = 0`.

    Args:
        lr: step size :math:`\eta > 0` (number, tensor, or pytree like ``params``; see
            :func:`sgd`).
        beta: momentum coefficient :math:`\beta \in [0, 1)` (number or tensor).
        nesterov: use Nesterov's look-ahead direction.

    Returns:
        A :class:`GradientTransformation` with state :class:`MomentumState`; matches
        ``torch.optim.SGD(lr=lr, momentum=beta, nesterov=nesterov)``.

    Example:
        >>> import torch
        >>> opt = momentum(0.1, beta=0.9)
        >>> p = torch.zeros(3)
        >>> s = opt.init(p)
        >>> p, s = opt.update(torch.ones(3), s, p)
    """
    api = "unroll.optimizers.momentum"
    _check_lr(api, lr)
    _check_unit(api, "beta", beta)
    if not isinstance(nesterov, bool):
        raise TypeError(f"{api}: `nesterov` must be a bool, got {type(nesterov).__name__}.")

    def init(params: PyTree) -> MomentumState:
        _flatten_params(api, params)
        return MomentumState(tree.zeros_like(params))

    def update(grads: PyTree, state: MomentumState, params: PyTree) -> tuple[PyTree, MomentumState]:
        _check_state(api, state, MomentumState)
        p, spec = _flatten_params(api, params)
        g = _flat_like(api, "grads", grads, spec)
        v = _flat_like(api, "state.momentum", state.momentum, spec)
        lrs = _lr_leaves(api, lr, spec, len(p))
        new_v = [beta * vi + gi for vi, gi in zip(v, g)]
        d = [gi + beta * vi for gi, vi in zip(g, new_v)] if nesterov else new_v
        new_p = [pi - li * di for pi, di, li in zip(p, d, lrs)]
        return tree.unflatten(spec, new_p), MomentumState(tree.unflatten(spec, new_v))

    return GradientTransformation(init, update)


# --------------------------------------------------------------------------- adam
def adam(
    lr: Scalar | PyTree,
    b1: Scalar = 0.9,
    b2: Scalar = 0.999,
    eps: Scalar = 1e-8,
    eps_root: Scalar = 0.0,
) -> GradientTransformation:
    r"""Adam (Kingma & Ba), in PyTorch's convention.

    With :math:`t = k + 1`:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) g, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) g^2,

        \theta_t = \theta_{t-1} - \eta\,
        \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}.

    Args:
        lr: step size :math:`\eta > 0` (number, tensor, or pytree like ``params``; see
            :func:`sgd`).
        b1: first-moment decay :math:`\beta_1 \in [0, 1)` (number or tensor).
        b2: second-moment decay :math:`\beta_2 \in [0, 1)` (number or tensor).
        eps: :math:`\epsilon \ge 0` added to the denominator.
        eps_root: :math:`\epsilon_{root} \ge 0` added under the square root. Keep 0 to match
            ``torch.optim.Adam``; when differentiating *through* Adam (meta-gradients), a
            gradient entry that is exactly zero makes :math:`\sqrt{\cdot}` non-differentiable
            at 0 (NaN meta-gradients); a tiny ``eps_root`` (e.g. ``1e-16``) avoids that.

    Returns:
        A :class:`GradientTransformation` with state :class:`AdamState`; with
        ``eps_root=0`` it matches ``torch.optim.Adam(lr=lr, betas=(b1, b2), eps=eps)``.

    Example:
        >>> import torch
        >>> opt = adam(1e-2)
        >>> p = {"w": torch.zeros(3), "b": torch.zeros(())}
        >>> s = opt.init(p)
        >>> p, s = opt.update({"w": torch.ones(3), "b": torch.ones(())}, s, p)
        >>> int(s.count)
        1
    """
    api = "unroll.optimizers.adam"
    _check_lr(api, lr)
    _check_unit(api, "b1", b1)
    _check_unit(api, "b2", b2)
    _check_nonneg(api, "eps", eps)
    _check_nonneg(api, "eps_root", eps_root)

    def init(params: PyTree) -> AdamState:
        leaves, _ = _flatten_params(api, params)
        count = torch.zeros((), dtype=torch.int64, device=leaves[0].device)
        return AdamState(count, tree.zeros_like(params), tree.zeros_like(params))

    def update(grads: PyTree, state: AdamState, params: PyTree) -> tuple[PyTree, AdamState]:
        _check_state(api, state, AdamState)
        p, spec = _flatten_params(api, params)
        if any(pi.is_complex() for pi in p):
            raise TypeError(
                f"{api}: complex parameters are not supported; optimise the real view "
                "`torch.view_as_real(p)` instead."
            )
        g = _flat_like(api, "grads", grads, spec)
        m = _flat_like(api, "state.mu", state.mu, spec)
        v = _flat_like(api, "state.nu", state.nu, spec)
        lrs = _lr_leaves(api, lr, spec, len(p))
        count = state.count + 1
        new_m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        new_v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        new_p = [
            pi - _adam_direction(mi, vi, count, li, b1, b2, eps, eps_root)
            for pi, mi, vi, li in zip(p, new_m, new_v, lrs)
        ]
        new_state = AdamState(count, tree.unflatten(spec, new_m), tree.unflatten(spec, new_v))
        return tree.unflatten(spec, new_p), new_state

    return GradientTransformation(init, update)


def _adam_direction(
    m: torch.Tensor,
    v: torch.Tensor,
    count: torch.Tensor,
    lr: Scalar,
    b1: Scalar,
    b2: Scalar,
    eps: Scalar,
    eps_root: Scalar,
) -> torch.Tensor:
    """``lr * m̂ / (sqrt(v̂ + eps_root) + eps)`` with bias corrections in ``m``'s dtype."""
    t = count.to(m.dtype)
    bc1 = 1 - b1**t
    bc2 = 1 - b2**t
    if isinstance(eps_root, torch.Tensor) or eps_root != 0:
        denom = torch.sqrt(v / bc2 + eps_root) + eps
    else:
        denom = torch.sqrt(v) / torch.sqrt(bc2) + eps
    return (lr / bc1) * (m / denom)


# --------------------------------------------------------------------------- rmsprop
def rmsprop(
    lr: Scalar | PyTree,
    alpha: Scalar = 0.99,
    eps: Scalar = 1e-8,
    momentum: Scalar = 0.0,
    centered: bool = False,
    nesterov: bool = False,
    initial_scale: Scalar = 0.0,
    eps_root: Scalar = 0.0,
) -> GradientTransformation:
    r"""RMSProp (Tieleman & Hinton), in PyTorch's convention.

    .. math::
        s_{k+1} = \alpha s_k + (1-\alpha) g_k^2, \qquad
        \bar g_{k+1} = \alpha \bar g_k + (1-\alpha) g_k \quad (\text{centered}),

        u_k = \frac{g_k}{\sqrt{s_{k+1} - \bar g_{k+1}^2 + \epsilon_{root}} + \epsilon}
        \quad (\bar g \equiv 0 \text{ unless centered}),

        b_{k+1} = \mu b_k + u_k, \qquad
        \theta_{k+1} = \theta_k - \eta\, d_k, \qquad
        d_k = \begin{cases} u_k & \mu = 0 \\ b_{k+1} & \text{momentum} \\
                            u_k + \mu b_{k+1} & \text{Nesterov} \end{cases}

    with :math:`s_0 = ` ``initial_scale``, :math:`\bar g_0 = 0`, :math:`b_0 = 0`.

    Args:
        lr: step size :math:`\eta > 0` (number, tensor, or pytree like ``params``; see
            :func:`sgd`).
        alpha: smoothing constant :math:`\alpha \in [0, 1)` (number or tensor).
        eps: :math:`\epsilon \ge 0` added to the denominator.
        momentum: momentum coefficient :math:`\mu \in [0, 1)`; ``0`` (the default) keeps no
            momentum buffer.
        centered: normalise by the estimated variance :math:`s - \bar g^2` instead of the
            second moment :math:`s`.
        nesterov: use Nesterov's look-ahead direction (needs ``momentum > 0``; TorchOpt's
            option, not in ``torch.optim.RMSprop``).
        initial_scale: initial value :math:`s_0 \ge 0` of the squared-gradient average
            (PyTorch uses 0, TensorFlow 1.x uses 1).
        eps_root: :math:`\epsilon_{root} \ge 0` added under the square root. Keep 0 to
            match ``torch.optim.RMSprop``; a tiny value (e.g. ``1e-16``) keeps meta-gradients
            finite when a gradient entry is exactly zero (see :func:`adam`).

    Returns:
        A :class:`GradientTransformation` with state :class:`RMSPropState`; with
        ``nesterov=False``, ``initial_scale=0`` and ``eps_root=0`` it matches
        ``torch.optim.RMSprop(lr=lr, alpha=alpha, eps=eps, momentum=momentum,
        centered=centered)``.

    Example:
        >>> import torch
        >>> opt = rmsprop(0.01, alpha=0.9)
        >>> p = {"w": torch.zeros(2)}
        >>> p, s = opt.update({"w": torch.tensor([1.0, -2.0])}, opt.init(p), p)
        >>> p["w"]  # first step: -lr * g / sqrt((1 - alpha) g^2) = -lr * sign(g) / sqrt(0.1)
        tensor([-0.0316,  0.0316])
    """
    api = "unroll.optimizers.rmsprop"
    _check_lr(api, lr)
    _check_unit(api, "alpha", alpha)
    _check_nonneg(api, "eps", eps)
    _check_unit(api, "momentum", momentum)
    _check_nonneg(api, "initial_scale", initial_scale)
    _check_nonneg(api, "eps_root", eps_root)
    for name, flag in (("centered", centered), ("nesterov", nesterov)):
        if not isinstance(flag, bool):
            raise TypeError(f"{api}: `{name}` must be a bool, got {type(flag).__name__}.")
    use_momentum = isinstance(momentum, torch.Tensor) or momentum != 0
    if nesterov and not use_momentum:
        raise ValueError(f"{api}: `nesterov=True` needs `momentum` > 0; pass e.g. momentum=0.9.")

    def init(params: PyTree) -> RMSPropState:
        _flatten_params(api, params)
        nu = tree.map(lambda t: torch.zeros_like(t) + initial_scale, params)
        mu = tree.zeros_like(params) if centered else None
        buf = tree.zeros_like(params) if use_momentum else None
        return RMSPropState(nu, mu, buf)

    def update(grads: PyTree, state: RMSPropState, params: PyTree) -> tuple[PyTree, RMSPropState]:
        _check_state(api, state, RMSPropState)
        p, spec = _flatten_params(api, params)
        if any(pi.is_complex() for pi in p):
            raise TypeError(
                f"{api}: complex parameters are not supported; optimise the real view "
                "`torch.view_as_real(p)` instead."
            )
        g = _flat_like(api, "grads", grads, spec)
        s = _flat_like(api, "state.nu", state.nu, spec)
        lrs = _lr_leaves(api, lr, spec, len(p))
        new_s = [alpha * si + (1 - alpha) * gi * gi for si, gi in zip(s, g)]
        var = new_s
        new_mu = None
        if centered:
            m = _flat_like(api, "state.mu", state.mu, spec)
            new_mu = [alpha * mi + (1 - alpha) * gi for mi, gi in zip(m, g)]
            var = [si - mi * mi for si, mi in zip(new_s, new_mu)]
        if isinstance(eps_root, torch.Tensor) or eps_root != 0:
            u = [gi / (torch.sqrt(vi + eps_root) + eps) for gi, vi in zip(g, var)]
        else:
            u = [gi / (torch.sqrt(vi) + eps) for gi, vi in zip(g, var)]
        d, new_b = u, None
        if use_momentum:
            b = _flat_like(api, "state.momentum", state.momentum, spec)
            new_b = [momentum * bi + ui for bi, ui in zip(b, u)]
            d = [ui + momentum * bi for ui, bi in zip(u, new_b)] if nesterov else new_b
        new_p = [pi - li * di for pi, di, li in zip(p, d, lrs)]
        new_state = RMSPropState(
            tree.unflatten(spec, new_s),
            None if new_mu is None else tree.unflatten(spec, new_mu),
            None if new_b is None else tree.unflatten(spec, new_b),
        )
        return tree.unflatten(spec, new_p), new_state

    return GradientTransformation(init, update)
