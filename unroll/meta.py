"""Differentiable object-oriented meta-optimizers and state dictionaries (TorchOpt's API).

:class:`MetaSGD`, :class:`MetaAdam` and :class:`MetaRMSProp` own the parameters of an
``nn.Module`` like a ``torch.optim`` optimizer, but ``step(loss)`` is *differentiable*: it
computes :math:`g = \\nabla_\\theta \\ell` with ``create_graph=True``, runs one update of the
functional optimizer from :mod:`unroll.optimizers` out of place, and puts the new (non-leaf)
tensors :math:`\\theta' = U(\\theta, g; \\eta)` in the module in place of the old ones. After
:math:`K` steps the module holds :math:`\\theta_K(\\theta_0, \\eta)`, so an outer loss
computed with it backpropagates to the initial parameters :math:`\\theta_0` and to any
tensor hyperparameter :math:`\\eta` (MAML, learned step sizes)::

    net = Net()
    inner_opt = unroll.MetaAdam(net, lr=0.1)
    net_state = unroll.extract_state_dict(net)            # by reference
    opt_state = unroll.extract_state_dict(inner_opt)
    for task in tasks:
        for _ in range(inner_steps):
            inner_opt.step(inner_loss(net, task))         # differentiable update
        outer_loss(net, task).backward()                  # reaches the initial parameters
        unroll.recover_state_dict(net, net_state)         # back to the initial parameters
        unroll.recover_state_dict(inner_opt, opt_state)
    meta_opt.step()

:func:`extract_state_dict`, :func:`recover_state_dict` and :func:`stop_gradient` save,
restore and truncate the state of a module or meta-optimizer with TorchOpt's semantics
(``by="reference" | "copy" | "deepcopy"``). The names, hyperparameters and defaults are
TorchOpt's, so code written for ``torchopt`` runs with ``torchopt`` replaced by ``unroll``.

References:
    Ren et al., "TorchOpt: An Efficient Library for Differentiable Optimization", JMLR 2023.
    Finn et al., "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", ICML 2017.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from optree import PyTreeSpec
from torch import nn

from unroll import optimizers, tree
from unroll._typing import PyTree
from unroll.optimizers import GradientTransformation

__all__ = [
    "MetaAdam",
    "MetaOptimizer",
    "MetaRMSProp",
    "MetaSGD",
    "ModuleState",
    "extract_state_dict",
    "recover_state_dict",
    "stop_gradient",
]

_BY = {
    "reference": "reference",
    "ref": "reference",
    "copy": "copy",
    "clone": "copy",
    "deepcopy": "deepcopy",
    "deepclone": "deepcopy",
}


class ModuleState(NamedTuple):
    """The state of a module returned by :func:`extract_state_dict`.

    Attributes:
        params: one ``dict`` name → tensor per submodule that has parameters (in
            ``module.modules()`` order).
        buffers: the same for buffers (empty with ``with_buffers=False``).
        detach_buffers: the buffers were saved as detached copies; :func:`recover_state_dict`
            then puts detached copies of them back, so the saved ones are never modified.
    """

    params: tuple[dict[str, torch.Tensor], ...]
    buffers: tuple[dict[str, torch.Tensor], ...]
    detach_buffers: bool = False


# --------------------------------------------------------------------------- helpers
def _containers(module: nn.Module, with_buffers: bool = True) -> tuple[list[dict], list[dict]]:
    """References to the non-empty ``_parameters`` / ``_buffers`` dicts of every submodule."""
    params: list[dict] = []
    buffers: list[dict] = []
    for sub in module.modules():  # each submodule once, in a fixed order
        if len(sub._parameters) > 0:
            params.append(sub._parameters)
        if with_buffers and len(sub._buffers) > 0:
            buffers.append(sub._buffers)
    return params, buffers


def _clone_detach(t: torch.Tensor) -> torch.Tensor:
    if isinstance(t, nn.Parameter):
        return nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
    return t.detach().clone().requires_grad_(t.requires_grad)


def _replicator(
    api: str, by: str, device: torch.device | str | None
) -> Callable[[torch.Tensor], torch.Tensor]:
    if not isinstance(by, str) or by not in _BY:
        raise ValueError(
            f"{api}: `by` must be 'reference', 'copy' or 'deepcopy' (TorchOpt's aliases 'ref', "
            f"'clone', 'deepclone' are accepted too), got {by!r}."
        )
    mode = _BY[by]
    target = None if device is None else torch.device(device)

    def move(t: torch.Tensor) -> torch.Tensor:
        return t if target is None else t.to(device=target)

    if mode == "reference":
        return move
    if mode == "copy":
        return lambda t: move(t.clone())
    return lambda t: _clone_detach(move(t))


def _check_scalar_loss(api: str, loss: Any) -> None:
    if not isinstance(loss, torch.Tensor):
        raise TypeError(f"{api}: `loss` must be a tensor, got {type(loss).__name__}.")
    if loss.numel() != 1:
        raise ValueError(
            f"{api}: `loss` must be a scalar (one element), got shape {tuple(loss.shape)}; "
            "reduce it first, e.g. `loss.mean()`."
        )
    if not loss.requires_grad:
        raise ValueError(
            f"{api}: `loss` does not require grad: compute it from the module's parameters, "
            "outside `torch.no_grad()` and without `.detach()`."
        )


def _check_number(api: str, name: str, value: Any, low: float, high: float | None) -> None:
    """``value`` is a tensor, or a number in ``[low, high)`` (``high=None``: unbounded)."""
    if isinstance(value, torch.Tensor):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{api}: `{name}` must be a number or a tensor, got {type(value)}.")
    if not (value >= low and (high is None or value < high)):
        bound = f"[{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{api}: `{name}` must be {bound}, got {value}.")


def _check_bool(api: str, **flags: Any) -> None:
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TypeError(f"{api}: `{name}` must be a bool, got {type(flag).__name__}.")


class _PreState(NamedTuple):
    """State of the gradient pre-processing around a functional optimizer."""

    count: torch.Tensor  # steps taken (0-dim int64)
    inner: PyTree  # the functional optimizer's state


def _preprocessed(
    opt: GradientTransformation,
    weight_decay: float | torch.Tensor = 0.0,
    maximize: bool = False,
    dampening: float | torch.Tensor = 0.0,
) -> GradientTransformation:
    """``opt`` applied to ``±g + weight_decay * θ`` (torch.optim's order), with momentum
    dampening ``(1 - dampening)`` on every step but the first (torch.optim.SGD's rule)."""
    use_wd = isinstance(weight_decay, torch.Tensor) or weight_decay != 0
    use_damp = isinstance(dampening, torch.Tensor) or dampening != 0
    if not (use_wd or maximize or use_damp):
        return opt

    def init(params: PyTree) -> _PreState:
        inner = opt.init(params)
        device = tree.leaves(params)[0].device
        return _PreState(torch.zeros((), dtype=torch.int64, device=device), inner)

    def update(grads: PyTree, state: _PreState, params: PyTree) -> tuple[PyTree, _PreState]:
        g = tree.map(torch.neg, grads) if maximize else grads
        if use_wd:
            g = tree.map(lambda gi, pi: gi + weight_decay * pi, g, params)
        if use_damp:
            first = state.count == 0
            g = tree.map(lambda gi: torch.where(first, gi, (1 - dampening) * gi), g)
        new_params, inner = opt.update(g, state.inner, params)
        return new_params, _PreState(state.count + 1, inner)

    return GradientTransformation(init, update)


def _revert_unused(new: PyTree, old: PyTree, used: list[bool], spec: PyTreeSpec) -> PyTree:
    """Keep ``old``'s leaves where ``used`` is False in every sub-tree shaped like the params."""
    if new is None:
        return None
    if isinstance(new, tuple) and hasattr(new, "_fields"):
        return type(new)(*(_revert_unused(n, o, used, spec) for n, o in zip(new, old)))
    if isinstance(new, torch.Tensor) or tree.structure(new) != spec:
        return new
    new_leaves, old_leaves = tree.leaves(new), tree.leaves(old)
    kept = [n if u else o for n, o, u in zip(new_leaves, old_leaves, used)]
    return tree.unflatten(spec, kept)


# --------------------------------------------------------------------------- MetaOptimizer
class MetaOptimizer:
    r"""A differentiable optimizer for the parameters of an ``nn.Module`` (TorchOpt's base).

    ``step(loss)`` computes :math:`g = \nabla_\theta \ell` with ``create_graph=True``, the
    update :math:`(\theta', s') = U(g, s, \theta)` of the functional optimizer ``impl`` (out of
    place), and replaces each parameter of the module by its new, non-leaf tensor
    :math:`\theta'`: gradients of anything computed afterwards reach the initial parameters
    and the hyperparameters through all the steps taken.

    Parameters with ``requires_grad=False`` are not updated; a parameter that gets no gradient
    from ``loss`` is left as it is, and so are its moment estimates (step counts are shared
    within a parameter group). Tied parameters (one tensor in several modules) stay tied.

    Args:
        module: the ``nn.Module`` whose parameters are optimised (a first parameter group).
        impl: a functional optimizer from :mod:`unroll.optimizers` (any
            :class:`~unroll.optimizers.GradientTransformation`).

    Example:
        >>> import torch
        >>> from unroll import optimizers
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = MetaOptimizer(net, optimizers.sgd(0.1))
        >>> w0 = net.weight
        >>> opt.step(net(torch.ones(1, 2)).sum())
        >>> net.weight.grad_fn is not None  # a differentiable function of w0
        True
    """

    _api = "unroll.MetaOptimizer"

    def __init__(self, module: nn.Module, impl: GradientTransformation) -> None:
        if not isinstance(impl, GradientTransformation):
            raise TypeError(
                f"{self._api}: `impl` must be a GradientTransformation from unroll.optimizers "
                f"(e.g. unroll.optimizers.adam(1e-3)), got {type(impl).__name__}."
            )
        self.impl = impl
        self.param_containers_groups: list[list[dict]] = []
        self.state_groups: list[PyTree] = []
        self.add_param_group(module)

    # -- slots: every distinct tensor of a group and the (container, key) places holding it
    @staticmethod
    def _slots(containers: list[dict]) -> list[tuple[torch.Tensor, list[tuple[dict, str]]]]:
        index: dict[int, int] = {}
        slots: list[tuple[torch.Tensor, list[tuple[dict, str]]]] = []
        for container in containers:
            for key, value in container.items():
                if not isinstance(value, torch.Tensor):
                    continue
                if id(value) in index:
                    slots[index[id(value)]][1].append((container, key))
                else:
                    index[id(value)] = len(slots)
                    slots.append((value, [(container, key)]))
        return slots

    def add_param_group(self, module: nn.Module) -> None:
        """Add the parameters of ``module`` as a new group with its own optimizer state."""
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"{self._api}: expects an nn.Module whose parameters to optimise, got "
                f"{type(module).__name__}; for a pytree of tensors use the functional "
                "unroll.optimizers instead."
            )
        containers, _ = _containers(module, with_buffers=False)
        params = tuple(t for t, _ in self._slots(containers))
        if not params:
            raise ValueError(f"{self._api}: the module has no parameters to optimise.")
        self.param_containers_groups.append(containers)
        self.state_groups.append(self._init_state(params))

    def _init_state(self, params: tuple[torch.Tensor, ...]) -> PyTree:
        return self.impl.init(params)

    def step(self, loss: torch.Tensor) -> None:
        """One differentiable update of every group's parameters from ``loss``.

        Args:
            loss: a scalar tensor computed from the module's current parameters.
        """
        api = f"unroll.{type(self).__name__}.step"
        _check_scalar_loss(api, loss)
        groups = [self._slots(c) for c in self.param_containers_groups]
        wanted = [t for slots in groups for t, _ in slots if t.requires_grad]
        if not wanted:
            raise ValueError(f"{api}: no parameter requires grad; nothing to update.")
        found = torch.autograd.grad(loss, wanted, create_graph=True, allow_unused=True)
        grad_of = {id(t): g for t, g in zip(wanted, found)}
        for i, slots in enumerate(groups):
            params = tuple(t for t, _ in slots)
            grads = [grad_of.get(id(t)) for t in params]
            used = [g is not None for g in grads]
            if not any(used):
                continue
            full = tuple(g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params))
            state = self.state_groups[i]
            new_params, new_state = self.impl.update(full, state, params)
            if not all(used):
                spec = tree.structure(params)
                new_params = tuple(n if u else p for n, p, u in zip(new_params, params, used))
                new_state = _revert_unused(new_state, state, used, spec)
            self.state_groups[i] = new_state
            for (_, places), new in zip(slots, new_params):
                for container, key in places:
                    container[key] = new

    def state_dict(self) -> tuple[PyTree, ...]:
        """The optimizer state of every group, by reference (a tuple of NamedTuples)."""
        return tuple(self.state_groups)

    def load_state_dict(self, state_dict: Sequence[PyTree]) -> None:
        """Use ``state_dict`` (as returned by :meth:`state_dict`) as the optimizer state."""
        api = f"unroll.{type(self).__name__}.load_state_dict"
        if not isinstance(state_dict, (tuple, list)) or len(state_dict) != len(self.state_groups):
            raise ValueError(
                f"{api}: expected a sequence of {len(self.state_groups)} group state(s) as "
                "returned by `state_dict()` / `extract_state_dict(optimizer)`."
            )
        for new, old in zip(state_dict, self.state_groups):
            if tree.structure(new) != tree.structure(old):
                raise ValueError(
                    f"{api}: the state does not match this optimizer (different optimizer "
                    "or parameters); extract it from this optimizer."
                )
        self.state_groups[:] = list(state_dict)


def _moments_require_grad(state: PyTree) -> PyTree:
    def mark(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t.requires_grad_(True)
        return t

    return tree.map(mark, state)


class MetaSGD(MetaOptimizer):
    r"""Differentiable SGD with momentum (TorchOpt's ``MetaSGD``; ``torch.optim.SGD``'s math).

    .. math::
        \hat g_k = \pm g_k + \lambda \theta_k, \qquad
        b_{k+1} = \mu b_k + (1 - \tau_k) \hat g_k, \qquad
        \theta_{k+1} = \theta_k - \eta \begin{cases} \hat g_k & \mu = 0 \\ b_{k+1} &
        \text{momentum} \\ \hat g_k + \mu b_{k+1} & \text{Nesterov} \end{cases}

    with :math:`b_0 = 0`, :math:`\tau_0 = 0` and :math:`\tau_k` = ``dampening`` afterwards,
    the sign :math:`-` with ``maximize=True``. Built on :func:`unroll.optimizers.sgd` /
    :func:`unroll.optimizers.momentum`; each :meth:`~MetaOptimizer.step` equals one
    ``torch.optim.SGD`` step with the same settings.

    Args:
        module: the ``nn.Module`` to optimise.
        lr: step size :math:`\eta > 0` (a number, or a tensor that may require grad).
        momentum: :math:`\mu \in [0, 1)`.
        dampening: :math:`\tau \in [0, 1)` (``torch.optim.SGD``'s).
        nesterov: Nesterov momentum (needs ``momentum > 0`` and ``dampening = 0``).
        weight_decay: L2 coefficient :math:`\lambda \ge 0` added to the gradient.
        moment_requires_grad: the initial momentum buffer requires grad (TorchOpt's option;
            it does not change the values or the meta-gradients of the parameters).
        maximize: ascend instead of descend.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> _ = net.weight.data.fill_(1.0)
        >>> opt = MetaSGD(net, lr=0.5)
        >>> opt.step((net.weight**2).sum())  # w <- w - 0.5 * 2w
        >>> net.weight
        tensor([[0.]], grad_fn=<SubBackward0>)
    """

    _api = "unroll.MetaSGD"

    def __init__(
        self,
        module: nn.Module,
        lr: float | torch.Tensor,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        *,
        moment_requires_grad: bool = True,
        maximize: bool = False,
    ) -> None:
        api = self._api
        _check_number(api, "momentum", momentum, 0.0, 1.0)
        _check_number(api, "dampening", dampening, 0.0, 1.0)
        _check_number(api, "weight_decay", weight_decay, 0.0, None)
        _check_bool(
            api, nesterov=nesterov, moment_requires_grad=moment_requires_grad, maximize=maximize
        )
        use_momentum = isinstance(momentum, torch.Tensor) or momentum != 0
        if nesterov and (not use_momentum or isinstance(dampening, torch.Tensor) or dampening):
            raise ValueError(
                f"{api}: Nesterov momentum needs `momentum` > 0 and `dampening` = 0 "
                "(as torch.optim.SGD)."
            )
        _checked_lr(api, lr)
        if use_momentum:
            base = optimizers.momentum(lr, beta=momentum, nesterov=nesterov)
        else:
            base = optimizers.sgd(lr)
            dampening = 0.0  # no momentum buffer to dampen
        self.moment_requires_grad = moment_requires_grad
        super().__init__(module, _preprocessed(base, weight_decay, maximize, dampening))

    def _init_state(self, params: tuple[torch.Tensor, ...]) -> PyTree:
        state = self.impl.init(params)
        return _moments_require_grad(state) if self.moment_requires_grad else state


class MetaAdam(MetaOptimizer):
    r"""Differentiable Adam (TorchOpt's ``MetaAdam``; ``torch.optim.Adam``'s math).

    With :math:`t = k + 1` and :math:`\hat g = \pm g + \lambda \theta`:

    .. math::
        m_t = \beta_1 m_{t-1} + (1-\beta_1) \hat g, \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2) \hat g^2, \qquad
        \theta_t = \theta_{t-1} - \eta\,
        \frac{m_t / (1-\beta_1^t)}{\sqrt{v_t / (1-\beta_2^t) + \epsilon_{root}} + \epsilon}.

    Built on :func:`unroll.optimizers.adam`; each :meth:`~MetaOptimizer.step` equals one
    ``torch.optim.Adam`` step with the same settings (``eps_root=0``). The update of a group
    runs as ``torch._foreach_*`` operations over all its parameters (the same values, one
    autograd node per operation instead of one per parameter), which makes a MAML step of a
    small network ~1.5× faster than TorchOpt's (``benchmarks/meta.py``).

    Args:
        module: the ``nn.Module`` to optimise.
        lr: step size :math:`\eta > 0` (a number, or a tensor that may require grad).
        betas: :math:`(\beta_1, \beta_2)`, each in :math:`[0, 1)`.
        eps: :math:`\epsilon \ge 0` added to the denominator.
        weight_decay: L2 coefficient :math:`\lambda \ge 0` added to the gradient.
        eps_root: :math:`\epsilon_{root} \ge 0` under the square root; a tiny value (e.g.
            ``1e-16``) keeps meta-gradients finite when a gradient entry is exactly zero.
        moment_requires_grad: the initial moments require grad (TorchOpt's option; no effect
            on values or on the meta-gradients of the parameters).
        maximize: ascend instead of descend.
        use_accelerated_op: accepted for TorchOpt compatibility; has no effect.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(3, 1)
        >>> opt = MetaAdam(net, lr=0.1)
        >>> w0 = net.weight
        >>> for _ in range(2):
        ...     opt.step((net(torch.ones(4, 3)) ** 2).mean())
        >>> (g,) = torch.autograd.grad(net.weight.sum(), w0)  # through both steps
        >>> g.shape
        torch.Size([1, 3])
    """

    _api = "unroll.MetaAdam"

    def __init__(
        self,
        module: nn.Module,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        eps_root: float = 0.0,
        moment_requires_grad: bool = True,
        maximize: bool = False,
        use_accelerated_op: bool = False,
    ) -> None:
        api = self._api
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{api}: `betas` must be a pair (beta1, beta2), got {betas!r}.")
        _check_number(api, "betas[0]", betas[0], 0.0, 1.0)
        _check_number(api, "betas[1]", betas[1], 0.0, 1.0)
        _check_number(api, "eps", eps, 0.0, None)
        _check_number(api, "eps_root", eps_root, 0.0, None)
        _check_number(api, "weight_decay", weight_decay, 0.0, None)
        _check_bool(
            api,
            moment_requires_grad=moment_requires_grad,
            maximize=maximize,
            use_accelerated_op=use_accelerated_op,
        )
        _checked_lr(api, lr)
        base = _foreach_adam(lr, betas[0], betas[1], eps, eps_root)
        self.moment_requires_grad = moment_requires_grad
        super().__init__(module, _preprocessed(base, weight_decay, maximize))

    def _init_state(self, params: tuple[torch.Tensor, ...]) -> PyTree:
        state = self.impl.init(params)
        return _moments_require_grad(state) if self.moment_requires_grad else state


class MetaRMSProp(MetaOptimizer):
    r"""Differentiable RMSProp (TorchOpt's ``MetaRMSProp``; ``torch.optim.RMSprop``'s math).

    With :math:`\hat g = \pm g + \lambda \theta`, the update of
    :func:`unroll.optimizers.rmsprop`:

    .. math::
        s_{k+1} = \alpha s_k + (1-\alpha) \hat g^2, \qquad
        u = \frac{\hat g}{\sqrt{s_{k+1} - \bar g_{k+1}^2} + \epsilon}, \qquad
        b_{k+1} = \mu b_k + u, \qquad \theta_{k+1} = \theta_k - \eta\, b_{k+1}

    (:math:`\bar g` the running mean of :math:`\hat g` when ``centered``, else 0; without
    momentum :math:`\theta_{k+1} = \theta_k - \eta u`). Each :meth:`~MetaOptimizer.step`
    equals one ``torch.optim.RMSprop`` step with the same settings.

    Args:
        module: the ``nn.Module`` to optimise.
        lr: step size :math:`\eta > 0` (a number, or a tensor that may require grad).
        alpha: smoothing constant :math:`\alpha \in [0, 1)`.
        eps: :math:`\epsilon \ge 0` added to the denominator.
        weight_decay: L2 coefficient :math:`\lambda \ge 0` added to the gradient.
        momentum: :math:`\mu \in [0, 1)`.
        centered: normalise by the estimated variance of the gradient.
        initial_scale: initial value of :math:`s` (PyTorch 0, TensorFlow 1.x 1).
        nesterov: Nesterov momentum (TorchOpt's option; needs ``momentum > 0``).
        maximize: ascend instead of descend.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> _ = net.weight.data.fill_(1.0)
        >>> opt = MetaRMSProp(net, lr=0.1, alpha=0.9)
        >>> opt.step((net.weight**2).sum())  # w - 0.1 * g / sqrt(0.1 g^2) = 1 - 0.1 / sqrt(0.1)
        >>> net.weight
        tensor([[0.6838]], grad_fn=<SubBackward0>)
    """

    _api = "unroll.MetaRMSProp"

    def __init__(
        self,
        module: nn.Module,
        lr: float | torch.Tensor = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        *,
        initial_scale: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        api = self._api
        _check_number(api, "alpha", alpha, 0.0, 1.0)
        _check_number(api, "eps", eps, 0.0, None)
        _check_number(api, "weight_decay", weight_decay, 0.0, None)
        _check_number(api, "momentum", momentum, 0.0, 1.0)
        _check_number(api, "initial_scale", initial_scale, 0.0, None)
        _check_bool(api, centered=centered, nesterov=nesterov, maximize=maximize)
        _checked_lr(api, lr)
        try:
            base = optimizers.rmsprop(
                lr,
                alpha=alpha,
                eps=eps,
                momentum=momentum,
                centered=centered,
                nesterov=nesterov,
                initial_scale=initial_scale,
            )
        except ValueError as err:  # re-word with this API's name
            raise ValueError(str(err).replace("unroll.optimizers.rmsprop", api)) from None
        super().__init__(module, _preprocessed(base, weight_decay, maximize))


def _foreach_adam(
    lr: float | torch.Tensor,
    b1: float | torch.Tensor,
    b2: float | torch.Tensor,
    eps: float | torch.Tensor,
    eps_root: float | torch.Tensor,
) -> GradientTransformation:
    r""":func:`unroll.optimizers.adam` with its update done by ``torch._foreach_*`` operations.

    The same values (up to rounding) and the same :class:`~unroll.optimizers.AdamState`, but
    one kernel call and one autograd node per operation for *all* the parameters of a group
    instead of one per parameter: a differentiable inner loop over a small network is
    dominated by that per-operation overhead (forward and backward). With :math:`t = k + 1`
    and :math:`\hat b_i = 1 - \beta_i^t`:

    .. math::
        m_t = m_{t-1} + (1-\beta_1)(g - m_{t-1}), \qquad
        v_t = \beta_2 v_{t-1} + (1-\beta_2)\, g \odot g, \qquad
        \theta_t = \theta_{t-1} - \frac{m_t}{d_t}, \quad
        d_t = \frac{\hat b_1}{\eta}\Big(\frac{\sqrt{v_t}}{\sqrt{\hat b_2}} + \epsilon\Big)

    (:math:`\sqrt{v_t / \hat b_2 + \epsilon_{root}}` when :math:`\epsilon_{root} > 0`; a
    tensor :math:`\eta` that requires grad multiplies :math:`m_t / d_t` instead, so that it
    stays in the graph). Tensor :math:`\beta`, :math:`\epsilon` or :math:`\epsilon_{root}`,
    and parameters of mixed dtypes or devices, use the per-parameter update of
    :func:`unroll.optimizers.adam`. (Not ``torch._foreach_addcdiv``: its backward fails on
    lists of tensors of different shapes in PyTorch 2.13.)
    """
    base = optimizers.adam(lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root)
    if any(isinstance(h, torch.Tensor) for h in (b1, b2, eps, eps_root)):
        return base
    ops: Any = torch  # the private foreach namespace, untyped

    def update(grads: PyTree, state: PyTree, params: PyTree) -> tuple[PyTree, PyTree]:
        if not (
            isinstance(params, tuple)
            and isinstance(state, optimizers.AdamState)
            and len({(p.dtype, p.device) for p in params}) == 1
            and not params[0].is_complex()
        ):
            return base.update(grads, state, params)
        count = state.count + 1
        t = count.to(params[0].dtype)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        mu = ops._foreach_lerp(state.mu, grads, 1 - b1)
        nu = ops._foreach_addcmul(ops._foreach_mul(state.nu, b2), grads, grads, value=1 - b2)
        if eps_root != 0:
            root = ops._foreach_sqrt(ops._foreach_add(ops._foreach_div(nu, bc2), eps_root))
            eps_t = eps
        else:  # sqrt(v / bc2) + eps = (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2)
            root = ops._foreach_sqrt(nu)
            bc1 = bc1 / torch.sqrt(bc2)
            eps_t = eps * torch.sqrt(bc2)
        if isinstance(lr, torch.Tensor) and lr.requires_grad:  # keep lr in the graph
            steps = [lr / bc1] * len(params)
            ratio = ops._foreach_div(mu, ops._foreach_add(root, eps_t))
            new_params = ops._foreach_sub(params, ops._foreach_mul(ratio, steps))
        else:  # every scalar folded into the denominator d
            scale = bc1 / lr
            denom = ops._foreach_add(ops._foreach_mul(root, scale), eps_t * scale)
            new_params = ops._foreach_sub(params, ops._foreach_div(mu, denom))
        return tuple(new_params), optimizers.AdamState(count, tuple(mu), tuple(nu))

    return GradientTransformation(base.init, update)


def _checked_lr(api: str, lr: Any) -> None:
    """``lr`` must be a positive number or a real tensor (not a pytree: one per group)."""
    if isinstance(lr, torch.Tensor):
        if lr.is_complex() or lr.numel() != 1:
            raise ValueError(f"{api}: `lr` must be a real scalar tensor, got shape {lr.shape}.")
        return
    _check_number(api, "lr", lr, 0.0, None)
    if lr == 0:
        raise ValueError(f"{api}: `lr` must be positive, got 0.")
    if lr != lr or lr == float("inf"):
        raise ValueError(f"{api}: `lr` must be finite, got {lr}.")


# --------------------------------------------------------------------------- state dicts
def extract_state_dict(
    target: nn.Module | MetaOptimizer,
    *,
    by: str = "reference",
    device: torch.device | str | None = None,
    with_buffers: bool = True,
    detach_buffers: bool = False,
) -> ModuleState | tuple[PyTree, ...]:
    """Save the state of a module or a meta-optimizer (TorchOpt's ``extract_state_dict``).

    What the saved tensors are depends on ``by``:

    - ``"reference"``: the tensors themselves (no copy). The state restores the module to
      *these* tensors (e.g. the initial leaf parameters after a differentiable inner loop
      replaced them); an in-place change of them shows in the state.
    - ``"copy"``: ``t.clone()``: new memory, still attached to the autograd graph (gradients
      of a recovered copy flow back to the original tensor).
    - ``"deepcopy"``: ``t.detach().clone()`` with the same ``requires_grad`` (a
      ``Parameter`` stays a ``Parameter``): new memory, no autograd history.

    Args:
        target: an ``nn.Module`` or a :class:`MetaOptimizer` (``MetaSGD``, ``MetaAdam``, ...).
        by: ``"reference"``, ``"copy"`` or ``"deepcopy"`` (TorchOpt's ``"ref"``, ``"clone"``,
            ``"deepclone"`` are accepted too).
        device: move the saved tensors to this device.
        with_buffers: save the module's buffers too (modules only).
        detach_buffers: save detached copies of the buffers whatever ``by`` is (modules only),
            and have :func:`recover_state_dict` restore detached copies of them.

    Returns:
        For a module, a :class:`ModuleState`; for a meta-optimizer, the tuple of its group
        states (NamedTuples of tensors) as in :meth:`MetaOptimizer.state_dict`.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> ref = extract_state_dict(net)
        >>> ref.params[0]["weight"] is net.weight
        True
        >>> extract_state_dict(net, by="deepcopy").params[0]["weight"] is net.weight
        False
    """
    api = "unroll.extract_state_dict"
    replicate = _replicator(api, by, device)
    _check_bool(api, with_buffers=with_buffers, detach_buffers=detach_buffers)
    if isinstance(target, MetaOptimizer):
        return tree.map(replicate, target.state_dict())
    if not isinstance(target, nn.Module):
        raise TypeError(
            f"{api}: `target` must be an nn.Module or a meta-optimizer (unroll.MetaAdam, ...), "
            f"got {type(target).__name__}."
        )
    params_c, buffers_c = _containers(target, with_buffers)
    buf_fn = _replicator(api, "deepcopy", device) if detach_buffers else replicate

    def save(container: dict, fn: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        return {k: fn(v) for k, v in container.items() if isinstance(v, torch.Tensor)}

    return ModuleState(
        params=tuple(save(c, replicate) for c in params_c),
        buffers=tuple(save(c, buf_fn) for c in buffers_c),
        detach_buffers=detach_buffers,
    )


def recover_state_dict(
    target: nn.Module | MetaOptimizer, state: ModuleState | Sequence[PyTree]
) -> None:
    """Restore a state saved by :func:`extract_state_dict` (TorchOpt's ``recover_state_dict``).

    For a module, each parameter / buffer entry is set to the saved tensor (the tensors are
    put back, not copied into: a state saved ``by="reference"`` gives the module its original
    tensor objects back). Buffers saved with ``detach_buffers=True`` are restored as detached
    copies, so the saved state can be recovered again. For a meta-optimizer, the saved group
    states become its state (:meth:`MetaOptimizer.load_state_dict`). Together, recovering the
    module and its optimizer makes a rerun of the same steps reproduce the same trajectory.

    Args:
        target: the ``nn.Module`` or :class:`MetaOptimizer` the state was extracted from (or
            one with the same structure).
        state: the :class:`ModuleState` (module) or the tuple of group states (optimizer).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> saved = extract_state_dict(net, by="deepcopy")
        >>> _ = net.weight.data.zero_()
        >>> recover_state_dict(net, saved)
        >>> bool(net.weight.abs().sum() > 0)
        True
    """
    api = "unroll.recover_state_dict"
    if isinstance(target, MetaOptimizer):
        if isinstance(state, ModuleState):
            raise TypeError(f"{api}: got a module's state for a meta-optimizer; pass its own.")
        target.load_state_dict(state)
        return
    if not isinstance(target, nn.Module):
        raise TypeError(
            f"{api}: `target` must be an nn.Module or a meta-optimizer, "
            f"got {type(target).__name__}."
        )
    if not isinstance(state, ModuleState):
        raise TypeError(
            f"{api}: `state` must be the ModuleState returned by "
            f"extract_state_dict(module), got {type(state).__name__}."
        )
    params_c, buffers_c = _containers(target, with_buffers=True)
    buffers = state.buffers
    if state.detach_buffers:
        buffers = tuple({k: _clone_detach(v) for k, v in c.items()} for c in buffers)
    pairs = list(zip(params_c, state.params)) + list(zip(buffers_c, buffers))
    if len(params_c) != len(state.params) or (buffers and len(buffers_c) != len(buffers)):
        raise ValueError(
            f"{api}: the state does not match the module's structure; extract it from this "
            "module (or one built the same way)."
        )
    for tgt, src in pairs:
        unknown = set(src) - set(tgt)
        if unknown:
            raise ValueError(
                f"{api}: the state has entries {sorted(unknown)} the module does not have; "
                "extract it from this module."
            )
    for tgt, src in pairs:
        tgt.update(src)


def stop_gradient(target: nn.Module | MetaOptimizer | ModuleState | PyTree) -> None:
    """Detach tensors from their autograd history **in place** (TorchOpt's ``stop_gradient``).

    Each tensor keeps its value and its ``requires_grad`` flag but loses its ``grad_fn``: a
    later backward stops there (truncated back-propagation through a long inner loop). What
    is detached depends on ``target``: a module's parameters, a :class:`MetaOptimizer`'s state
    (:meth:`MetaOptimizer.state_dict`), the params and buffers of a :class:`ModuleState`, or
    every tensor of a pytree. Because it works in place, states extracted ``by="reference"``
    share the change.

    Args:
        target: an ``nn.Module``, a :class:`MetaOptimizer`, a :class:`ModuleState` or a
            pytree of tensors.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> MetaSGD(net, lr=0.1).step(net(torch.ones(1, 2)).sum())
        >>> net.weight.grad_fn is None
        False
        >>> stop_gradient(net)
        >>> net.weight.grad_fn is None, net.weight.requires_grad
        (True, True)
    """
    api = "unroll.stop_gradient"
    if isinstance(target, ModuleState):
        tensors: PyTree = (target.params, target.buffers)
    elif isinstance(target, nn.Module):
        tensors = tuple(target.parameters())
    elif isinstance(target, MetaOptimizer):
        tensors = target.state_dict()
    else:
        leaves = tree.leaves(target)
        if not leaves or not all(isinstance(t, torch.Tensor) for t in leaves):
            raise TypeError(
                f"{api}: `target` must be an nn.Module, a meta-optimizer, a ModuleState or a "
                f"pytree of tensors, got {type(target).__name__}."
            )
        tensors = target
    for t in tree.leaves(tensors):
        if isinstance(t, torch.Tensor):
            requires_grad = t.requires_grad
            t.detach_().requires_grad_(requires_grad)
