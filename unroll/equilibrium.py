r"""Deep equilibrium models: fixed points with implicit (or Jacobian-free) gradients.

:func:`deq` finds :math:`z^\star = f(z^\star, \theta)` with a forward fixed-point solver that
stores no iterations, and differentiates it with the implicit function theorem. For a
cotangent :math:`u = \partial L / \partial z^\star` the backward pass solves the adjoint
fixed-point equation

.. math::  v = \Big(\frac{\partial f}{\partial z}(z^\star, \theta)\Big)^{\!\top} v + u

by fixed-point iteration or Anderson acceleration and returns
:math:`\bar\theta = (\partial f / \partial \theta)^\top v`. With ``jacobian_free=True`` the
solve is skipped (:math:`v = u`, Jacobian-free backpropagation): the gradient of one
application of ``f`` at the detached fixed point, an approximation that is cheap and often
good enough for training.

The backward is :func:`unroll.custom_root` on :math:`F(z, \theta) = z - f(z, \theta)`, so
``deq`` composes with ``loss.backward()``, ``torch.func.grad / vjp / jacrev`` and
``torch.func.vmap``, whatever the state is (a tensor or an algorithm's NamedTuple state): any
algorithm step (GD, PGD, HQS, ADMM, DRS, ...) runs as a DEQ.

References:
    Bai, Kolter & Koltun, "Deep equilibrium models", NeurIPS 2019.
    Fung et al., "JFB: Jacobian-free backpropagation for implicit networks", AAAI 2022.
    Gilton, Ongie & Willett, "Deep equilibrium architectures for inverse problems in
    imaging", IEEE TCI 2021.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from unroll import tree
from unroll._failure import check_on_failure
from unroll._typing import PyTree
from unroll.fixed_point import (
    FixedPointInfo,
    anderson,
    fixed_point_iteration,
    report_fixed_point,
)
from unroll.implicit._rules import ClosedOverTensorError, _custom_fixed_point
from unroll.linear_solve import solve_anderson, solve_fixed_point

__all__ = ["AndersonAccelerationConfig", "DEQConfig", "deq", "DEQ"]


@dataclasses.dataclass
class AndersonAccelerationConfig:
    r"""Anderson acceleration of an algorithm's iterations (DeepInverse 0.4.1's fields and
    defaults), for ``anderson_acceleration=`` of :mod:`unroll.optim`'s classes,
    :class:`unroll.unfolded.Unfolded` and :func:`unroll.unfolded.unfold`.

    Each iteration mixes the last ``history_size`` iterates :math:`x_i` and their images
    :math:`f_i = T(x_i)`:

    .. math:: x_{k+1} = \sum_i \alpha_i\big(\beta f_i + (1-\beta) x_i\big),\qquad
              \alpha = \arg\min_{\sum_i \alpha_i = 1}\Big\|\sum_i\alpha_i(f_i - x_i)\Big\|^2
              + \lambda\|\alpha\|^2,

    with :math:`\lambda` = ``eps`` :math:`\cdot\,\frac1m\sum_i\|f_i - x_i\|^2` *relative* to
    the residuals (DeepInverse's ``eps`` is absolute), per sample (see
    :class:`unroll.algorithms.base.AndersonMixer`). With a ``DEQ`` it configures the DEQ's
    forward solve instead (:attr:`DEQConfig.anderson_acceleration_forward`).

    Attributes:
        history_size: number of past iterates mixed, ``m >= 1`` (default 10).
        beta: damping ``β > 0`` (default 0.9).
        eps: relative ridge ``>= 0`` of the mixing problem (default 0.1).
        full_backprop: backpropagate through every kept iterate (True) or only the current
            one, the history detached (False, the default, as DeepInverse).

    Example:
        >>> import torch
        >>> from unroll.algorithms import pgd, run
        >>> from unroll.optim import L2, Tikhonov
        >>> from unroll.physics import Denoising
        >>> y = torch.ones(1, 1, 4, 4, dtype=torch.float64)
        >>> x, _ = run(pgd(L2(), Tikhonov()), y, Denoising(), {"stepsize": 0.1}, 30,
        ...            acceleration=AndersonAccelerationConfig())
        >>> torch.allclose(x, y / 2)  # argmin ½‖x − y‖² + ½‖x‖²
        True
    """

    history_size: int = 10
    beta: float = 0.9
    eps: float = 0.1
    full_backprop: bool = False

    def __post_init__(self) -> None:
        api = "unroll.optim.AndersonAccelerationConfig"
        m = self.history_size
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"{api}: history_size must be an int >= 1, got {m!r}.")
        for name, low in (("beta", 0.0), ("eps", None)):
            v = getattr(self, name)
            number = isinstance(v, (int, float)) and not isinstance(v, bool)
            ok = number and v < float("inf") and (v > 0 if low is not None else v >= 0)
            if not ok:
                bound = "> 0" if low is not None else ">= 0"
                raise ValueError(f"{api}: {name} must be a finite number {bound}, got {v!r}.")
        if not isinstance(self.full_backprop, bool):
            raise TypeError(f"{api}: full_backprop must be a bool, got {self.full_backprop!r}.")


@dataclasses.dataclass
class DEQConfig:
    """How a deep equilibrium model is solved and differentiated.

    The first fields and their defaults follow DeepInverse's ``DEQConfig``; the ``eps_*``
    Anderson regularisers are *relative* to the Gram matrix here (see
    :func:`unroll.anderson`).

    Attributes:
        jacobian_free: skip the backward solve (Jacobian-free backprop, approximate).
        anderson_acceleration_forward: Anderson instead of plain iteration in the forward.
        history_size_forward: Anderson window of the forward.
        beta_anderson_acc_forward: Anderson damping of the forward.
        eps_anderson_acc_forward: relative Anderson regulariser of the forward.
        anderson_acceleration_backward: Anderson for the backward (adjoint) equation.
        history_size_backward: Anderson window of the backward.
        beta_anderson_acc_backward: Anderson damping of the backward.
        eps_anderson_acc_backward: relative Anderson regulariser of the backward.
        max_iter_backward: iteration cap of the backward solve.
        beta_backward, eps_backward: DeepInverse 0.4.1's names of ``beta_anderson_acc_backward``
            and ``eps_anderson_acc_backward``, accepted as keyword aliases (and readable /
            writable as properties); giving an alias and its field with different values
            raises a ``ValueError``.
        max_iter: iteration cap of the forward solve.
        tol: forward tolerance on the fixed-point residual (``stop_mode``).
        tol_backward: backward tolerance, ``‖v − Jᵀv − u‖ ≤ tol_backward·‖u‖``.
        stop_mode: ``"rel"`` or ``"abs"`` forward residual.
        batched: the leading dimension of every leaf of the state is a batch of independent
            problems (per-sample convergence, forward and backward).
        backward_solve: a linear solver ``solve(matvec, b, **opts)`` that replaces the
            fixed-point / Anderson backward (e.g. ``unroll.linear_solve.solve_gmres``); it
            solves ``(I − Jᵀ) v = u``.
        on_failure: a forward or backward solve that stops short of its tolerance, diverges
            or meets NaN/Inf ``"warn"`` (default; a
            :class:`~unroll.linear_solve.ConvergenceWarning` naming ``deq (forward)`` or
            ``deq (backward)``, once per cause and call site), ``"raise"``
            (:class:`~unroll.linear_solve.ConvergenceError`) or ``"ignore"`` it. A
            diverging backward returns the gradient of its last good iterate (finite,
            approximate), never NaN.
    """

    jacobian_free: bool = False
    anderson_acceleration_forward: bool = False
    history_size_forward: int = 5
    beta_anderson_acc_forward: float = 1.0
    eps_anderson_acc_forward: float = 1e-4
    anderson_acceleration_backward: bool = False
    history_size_backward: int = 5
    beta_anderson_acc_backward: float = 1.0
    eps_anderson_acc_backward: float = 1e-4
    max_iter_backward: int = 50
    max_iter: int = 100
    tol: float = 1e-5
    tol_backward: float = 1e-5
    stop_mode: str = "rel"
    batched: bool = False
    backward_solve: Callable[..., PyTree] | None = None
    on_failure: str = "warn"

    def __post_init__(self) -> None:
        check_on_failure("DEQConfig", self.on_failure)
        for name in (
            "jacobian_free",
            "anderson_acceleration_forward",
            "anderson_acceleration_backward",
            "batched",
        ):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"DEQConfig: {name} must be a bool, got {getattr(self, name)!r}.")
        for name in (
            "history_size_forward",
            "history_size_backward",
            "max_iter",
            "max_iter_backward",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DEQConfig: {name} must be an int >= 1, got {value!r}.")
        for name in ("beta_anderson_acc_forward", "beta_anderson_acc_backward"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (0 < value < float("inf"))
            ):
                raise ValueError(f"DEQConfig: {name} must be a finite float > 0, got {value!r}.")
        for name in (
            "eps_anderson_acc_forward",
            "eps_anderson_acc_backward",
            "tol",
            "tol_backward",
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (0 <= value < float("inf"))
            ):
                raise ValueError(f"DEQConfig: {name} must be a finite float >= 0, got {value!r}.")
        if self.stop_mode not in ("abs", "rel"):
            raise ValueError(
                f"DEQConfig: stop_mode must be 'abs' or 'rel', got {self.stop_mode!r}."
            )
        if self.backward_solve is not None and not callable(self.backward_solve):
            raise TypeError(
                "DEQConfig: backward_solve must be a linear solver "
                "solve(matvec, b, **options) -> x, or None."
            )

    @property
    def beta_backward(self) -> float:
        """Alias of :attr:`beta_anderson_acc_backward` (DeepInverse 0.4.1's name)."""
        return self.beta_anderson_acc_backward

    @beta_backward.setter
    def beta_backward(self, value: float) -> None:
        self.beta_anderson_acc_backward = value

    @property
    def eps_backward(self) -> float:
        """Alias of :attr:`eps_anderson_acc_backward` (DeepInverse 0.4.1's name)."""
        return self.eps_anderson_acc_backward

    @eps_backward.setter
    def eps_backward(self, value: float) -> None:
        self.eps_anderson_acc_backward = value

    def forward_solver(self) -> Callable[..., tuple[PyTree, FixedPointInfo]]:
        """The forward solver ``(f, z0, *args) -> (z, FixedPointInfo)`` this config names."""
        common = dict(
            maxiter=self.max_iter,
            tol=self.tol,
            stop_mode=self.stop_mode,
            batched=self.batched,
            on_failure="ignore",
        )  # deq reports it by name
        if self.anderson_acceleration_forward:
            return functools.partial(
                anderson,
                history_size=self.history_size_forward,
                beta=self.beta_anderson_acc_forward,
                ridge=self.eps_anderson_acc_forward,
                **common,
            )
        return functools.partial(fixed_point_iteration, **common)

    def backward_solver(self) -> Callable[..., PyTree]:
        """The linear solver of the adjoint system ``(I − Jᵀ) v = u`` this config names."""
        if self.backward_solve is not None:
            return self.backward_solve
        common = dict(rtol=self.tol_backward, maxiter=self.max_iter_backward, batched=self.batched)
        if self.anderson_acceleration_backward:
            return functools.partial(
                solve_anderson,
                history_size=self.history_size_backward,
                beta=self.beta_anderson_acc_backward,
                anderson_ridge=self.eps_anderson_acc_backward,
                **common,
            )
        return functools.partial(solve_fixed_point, **common)


_DEQ_ALIASES = {
    "beta_backward": "beta_anderson_acc_backward",
    "eps_backward": "eps_anderson_acc_backward",
}


def _accept_aliases(cls: type) -> None:
    """Let ``cls.__init__`` take DeepInverse's keyword aliases of some fields."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        aliases = {a: kwargs.pop(a) for a in _DEQ_ALIASES if a in kwargs}
        aliases = {a: v for a, v in aliases.items() if v is not None}  # None: not given
        if aliases:
            try:
                given = signature.bind_partial(self, *args, **kwargs).arguments
            except TypeError as err:
                raise TypeError(f"DEQConfig: {err}") from None
            for alias, value in aliases.items():
                name = _DEQ_ALIASES[alias]
                if name in given and given[name] != value:
                    raise ValueError(
                        f"DEQConfig: {alias}={value!r} and {name}={given[name]!r} name the same "
                        f"setting ({alias} is DeepInverse's name of {name}); pass only one."
                    )
                if name not in given:
                    kwargs[name] = value
        init(self, *args, **kwargs)

    params = list(signature.parameters.values())
    params += [
        inspect.Parameter(alias, inspect.Parameter.KEYWORD_ONLY, default=None)
        for alias in _DEQ_ALIASES
    ]
    __init__.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]


_accept_aliases(DEQConfig)


def deq(
    f: Callable[..., PyTree],
    z0: PyTree,
    *args: PyTree,
    config: DEQConfig | None = None,
    return_info: bool = False,
) -> PyTree:
    r"""Fixed point :math:`z^\star = f(z^\star, *\text{args})`, differentiable w.r.t. ``args``.

    The forward runs :func:`unroll.fixed_point_iteration` (or :func:`unroll.anderson`) from
    ``z0`` without recording a graph; memory does not grow with its iterations. Gradients
    reach every floating tensor in ``args`` (tensors, parameter dicts, physics objects,
    any pytree) through the adjoint equation :math:`v = J^\top v + u`,
    :math:`J = \partial f/\partial z\,(z^\star)`, solved by fixed-point iteration or Anderson
    (``config``), or skipped (``jacobian_free``: the gradient of one application of ``f`` at
    the detached fixed point, which is then the returned value). ``z0`` receives no gradient.
    A forward or backward solve that does not reach its tolerance, or diverges, emits a
    :class:`~unroll.linear_solve.ConvergenceWarning` with its residual.

    Args:
        f: ``f(z, *args) -> z`` with ``z`` a pytree of tensors (same structure and shapes);
            for a contraction in ``z`` the fixed point exists and both solves converge.
            Tensors that should receive gradients must be passed through ``args``, not
            closed over.
        z0: initial state.
        *args: the parameters and data of ``f``.
        config: :class:`DEQConfig` (default ``DEQConfig()``).
        return_info: also return the forward :class:`~unroll.FixedPointInfo`.

    Returns:
        ``z*`` (a pytree like ``z0``), or ``(z*, FixedPointInfo)``.

    Example:
        >>> import torch
        >>> from unroll import deq, DEQConfig
        >>> W = 0.5 * torch.eye(3, dtype=torch.float64)
        >>> x = torch.ones(3, dtype=torch.float64, requires_grad=True)
        >>> z = deq(lambda z, W, x: W @ z + x, torch.zeros(3, dtype=torch.float64), W, x,
        ...         config=DEQConfig(tol=1e-12, max_iter=200, tol_backward=1e-12))
        >>> z.sum().backward()                    # z* = 2x, so dL/dx = 2
        >>> torch.allclose(x.grad, torch.full((3,), 2.0, dtype=torch.float64))
        True

    References:
        Bai, Kolter & Koltun, "Deep equilibrium models", NeurIPS 2019.
    """
    cfg = DEQConfig() if config is None else config
    if not isinstance(cfg, DEQConfig):
        raise TypeError(f"deq: config must be a DEQConfig, got {type(cfg).__name__}.")
    if not callable(f):
        raise TypeError(f"deq: f must be callable f(z, *args) -> z, got {type(f).__name__}.")
    forward = cfg.forward_solver()
    infos: list[FixedPointInfo] = []

    def solver(z_init: PyTree, *a: PyTree) -> PyTree:
        z, info = forward(f, tree.detach(z_init), *a)
        infos.append(info)
        return z

    if cfg.jacobian_free or not args:
        with torch.no_grad():
            z = solver(z0, *args)
        if args:  # Jacobian-free: one differentiable application of f at the fixed point
            z = f(tree.detach(z), *args)
    else:
        implicit = _custom_fixed_point(  # F(z) = z − f(z): backward solves (I − Jᵀ) v = u
            "deq",
            f,
            tuple(range(1, len(args) + 1)),
            False,
            cfg.backward_solver(),
            cfg.on_failure,
            "deq (backward)",
            _BACKWARD_REMEDY,
        )
        try:
            z = implicit(solver)(z0, *args)
        except ClosedOverTensorError:
            raise ClosedOverTensorError(
                "deq: f uses a tensor that requires grad but is not one of its arguments "
                "(a closed-over tensor, e.g. a module's parameters); its gradient would be "
                "lost. Pass it through deq(f, z0, *args) as an argument of f, or use unroll.DEQ "
                "with an nn.Module."
            ) from None
    report_fixed_point(
        "deq (forward)", infos[0], cfg.tol, cfg.max_iter, cfg.on_failure, _FORWARD_REMEDY
    )
    return (z, infos[0]) if return_info else z


_FORWARD_REMEDY = (
    "The equilibrium map may not be contractive (spectral radius of ∂f/∂z ≥ 1): raise "
    "DEQConfig(max_iter=...), use anderson_acceleration_forward=True, or make f contractive "
    "(smaller stepsize, a denoiser with Lipschitz constant < 1)"
)
_BACKWARD_REMEDY = (
    "The adjoint iteration v ← Jᵀv + u did not settle: the gradient is approximate (from the "
    "last good iterate). Use DEQConfig(anderson_acceleration_backward=True, "
    "max_iter_backward=...), backward_solve=unroll.linear_solve.solve_gmres, "
    "jacobian_free=True, or make f contractive"
)


class DEQ(nn.Module):
    r"""``nn.Module`` wrapper of :func:`deq`: a layer whose output is the fixed point of ``f``.

    ``f`` is either an ``nn.Module`` called as ``f(z, *inputs)`` (its parameters are passed to
    :func:`deq` through ``torch.func.functional_call``, so they receive implicit gradients),
    or a step function ``f(z, params, *inputs)`` with ``params`` a dict of tensors that this
    module registers as ``nn.Parameter``\ s.

    Args:
        f: the equilibrium map (module or function).
        params: for a function ``f``: its parameters (dict name -> tensor), or ``None`` when
            ``f(z, *inputs)`` has none.
        config: :class:`DEQConfig` (default ``DEQConfig()``).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from unroll import DEQ
        >>> class Cell(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = nn.Linear(4, 4)
        ...     def forward(self, z, x):
        ...         return torch.tanh(0.5 * self.lin(z) + x)
        >>> layer = DEQ(Cell())
        >>> x = torch.randn(2, 4)
        >>> z = layer(torch.zeros(2, 4), x)
        >>> z.pow(2).sum().backward()   # implicit gradients in layer.f.lin.weight.grad
    """

    def __init__(
        self,
        f: nn.Module | Callable[..., PyTree],
        params: dict[str, torch.Tensor] | None = None,
        config: DEQConfig | None = None,
    ) -> None:
        super().__init__()
        if not callable(f):
            raise TypeError(f"DEQ: f must be an nn.Module or a function, got {type(f).__name__}.")
        if isinstance(f, nn.Module) and params is not None:
            raise ValueError("DEQ: params are taken from the module f; pass params=None.")
        self.f = f
        self.params = (
            None
            if params is None
            else nn.ParameterDict(
                {
                    k: v if isinstance(v, nn.Parameter) else nn.Parameter(v)
                    for k, v in params.items()
                }
            )
        )
        self.config = DEQConfig() if config is None else config

    def forward(self, z0: PyTree, *inputs: PyTree, return_info: bool = False) -> PyTree:
        """Fixed point of ``f`` from ``z0`` for the given inputs (see :func:`deq`)."""
        if isinstance(self.f, nn.Module):
            module = self.f
            buffers = dict(module.named_buffers())

            def step(z: PyTree, params: dict[str, torch.Tensor], *a: PyTree) -> PyTree:
                return torch.func.functional_call(module, (params, buffers), (z, *a))

            params = dict(module.named_parameters())
            return deq(step, z0, params, *inputs, config=self.config, return_info=return_info)
        if self.params is not None:
            return deq(
                self.f, z0, dict(self.params), *inputs, config=self.config, return_info=return_info
            )
        return deq(self.f, z0, *inputs, config=self.config, return_info=return_info)
