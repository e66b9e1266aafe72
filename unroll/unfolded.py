"""Unfolded (unrolled) networks and deep-equilibrium models built from any algorithm.

* :func:`unfold` turns an :class:`unroll.algorithms.Algorithm` into a pure function
  ``(params, y, physics) -> x`` running ``max_iter`` differentiable iterations, or, with a
  :class:`unroll.DEQConfig`, solving for the algorithm's fixed point with an implicit backward
  (:func:`unroll.deq`) — for any state (GD, PGD, FISTA, HQS, ADMM, DRS, PDHG).
* :class:`Unfolded` is the ``nn.Module`` convenience layer: it owns the hyperparameters
  (exactly the ``trainable_params`` are ``nn.Parameter``\\ s, the others buffers) and the
  prior's network, and calls the pure core. :func:`unfolded_builder` builds one by name.

Untied layers (DeepInverse's ``prior=[...]``): a list of ``max_iter`` priors or data
fidelities gives each iteration its own (registered as ``prior.0``, ``prior.1``, ...); in the
pure core, :func:`unfold` takes a list of algorithms and ``params["prior"]`` a list of weight
dicts. A DeepInverse ``state_dict`` (``params_algo.stepsize.0``, ...) loads into
:class:`Unfolded` (:meth:`Unfolded.load_deepinv_state_dict`); ``model(y, physics, init=x0)``,
``g_first`` and ``anderson_acceleration`` are DeepInverse's options.

Per-iteration or shared is never guessed from a shape. In the pure core it is explicit:
``unfold(algorithm, K, per_iteration=("stepsize",))`` reads ``params["stepsize"][k]`` at
iteration ``k``, and every other value is shared. In the modules it follows DeepInverse: a
list of ``max_iter`` values is per-iteration, a number or a tensor of any shape (or a
one-element list) is one shared value. Unknown keys raise, suggesting the closest name.

Example:
    >>> import torch
    >>> from unroll.models import DnCNN
    >>> from unroll.optim import L2, PnP
    >>> from unroll.physics import Denoising
    >>> y, physics = torch.rand(1, 3, 16, 16), Denoising()
    >>> model = unfolded_builder(iteration="HQS", data_fidelity=L2(),
    ...                          prior=PnP(DnCNN(depth=3, nf=8)),
    ...                          params_algo={"stepsize": 1.0, "g_param": 1.0},
    ...                          trainable_params=["stepsize", "g_param"], max_iter=3)
    >>> x_hat = model(y, physics)
    >>> x_pure = model.apply(dict(model.named_parameters()), y, physics)  # pure form
    >>> torch.allclose(x_hat, x_pure)
    True
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from torch import nn

from unroll import algorithms as _alg
from unroll import equilibrium, tree
from unroll._host import try_bool
from unroll._typing import DataFidelityLike, PhysicsLike, PriorLike, PyTree
from unroll.algorithms.base import (
    ALIASES,
    PRIOR_KEY,
    Algorithm,
    AndersonMixer,
    as_layers,
    canonical,
    check_count,
    check_hyperparameters,
    check_keys,
    check_per_iteration,
    check_prior_layers,
    check_tol,
    initial_state,
    layer_keys,
    params_at,
    per_iteration_names,
)
from unroll.equilibrium import AndersonAccelerationConfig, DEQConfig

Tensor = torch.Tensor


# --------------------------------------------------------------------------- pure core
__all__ = [
    "unfold",
    "unfolded_builder",
    "Unfolded",
]


def unfold(
    algorithm: Algorithm | Sequence[Algorithm],
    max_iter: int,
    *,
    deq: DEQConfig | None = None,
    per_iteration: str | Collection[str] = (),
    acceleration: AndersonAccelerationConfig | None = None,
) -> Callable[..., Tensor]:
    """A pure, differentiable ``(params, y, physics) -> x`` from an algorithm.

    Unrolled: ``x = output(s_K)``, ``s_{k+1} = step(s_k, y, physics, p_k)``,
    ``s_0 = init(y, physics, p_0)``, ``K = max_iter``, where the parameters of iteration ``k``
    are

    .. code-block:: text

        p_k[key] = params[key][k]    if key in per_iteration
        p_k[key] = params[key]       otherwise

    So a per-iteration step size is ``params["stepsize"]`` of shape ``(K,)`` with
    ``per_iteration=("stepsize",)``; any value not named there is shared by all iterations
    whatever its shape (a ``(C, 1, 1)`` tensor is one per-channel value, never mistaken for
    one value per iteration). ``"prior"`` may be named too: then every weight of the prior's
    network carries a leading dimension ``K`` (untied layers). Every iteration is kept for
    backpropagation.

    DEQ (``deq`` a :class:`unroll.DEQConfig`): ``x = output(s*)`` with ``s* = step(s*, y,
    physics, params)`` found by :func:`unroll.deq` (its forward runs to the config's
    ``max_iter`` / ``tol``; ``max_iter`` here is unused), the backward solving
    ``v = (∂step/∂s*)ᵀ v + u``; parameters are shared (``per_iteration`` must be empty). An
    algorithm whose state has no fixed point names the one its DEQ runs
    (:attr:`~unroll.algorithms.Algorithm.equilibrium`: FISTA's momentum counter grows forever,
    so a FISTA DEQ runs PGD's map, which has the same fixed points).

    Untied layers: ``algorithm`` may be a list of ``max_iter`` algorithms (e.g. one per
    prior, ``[pgd(L2(), prior_k) for prior_k in priors]``); iteration ``k`` runs the ``k``-th
    one's ``step``, and ``params["prior"]`` may then be a list of ``max_iter`` weight dicts,
    iteration ``k`` reading the ``k``-th. A DEQ runs the last layer.

    ``apply(params, y, physics, init=None)``: ``init`` starts from a given estimate instead of
    ``Aᵀy`` (a tensor ``x₀``, ``(x₀, z₀)``, DeepInverse's ``{"est": (x₀, z₀)}``, a callable
    ``init(y, physics)`` or a state; see :func:`unroll.algorithms.base.initial_state`).

    At each call, keys of ``params`` outside the algorithm's
    :attr:`~unroll.algorithms.Algorithm.param_names` raise a ValueError that suggests the
    closest known name, per-iteration values must have leading dimension ``max_iter``, and
    the prior's weights must have the dtype of ``y`` (a TypeError names both and the fix).

    Args:
        algorithm: an :class:`unroll.algorithms.Algorithm`.
        max_iter: number of unrolled iterations (an int >= 1).
        deq: None (unrolled) or a ``DEQConfig``.
        per_iteration: the keys of ``params`` that hold one value per iteration (a name or a
            collection of names; aliases such as ``"g_param"`` accepted).
        acceleration: None or an :class:`unroll.optim.AndersonAccelerationConfig`: Anderson
            acceleration of the unrolled iterations (differentiable; see
            :class:`unroll.algorithms.base.AndersonMixer`); with ``deq`` it turns on the DEQ's
            Anderson forward with these settings.

    Returns:
        ``apply(params, y, physics, init=None) -> x``; composes with
        ``torch.func.grad``/``vmap``.

    Example:
        >>> import torch
        >>> from unroll import algorithms
        >>> from unroll.optim import L2, Tikhonov
        >>> from unroll.physics import Denoising
        >>> y, physics = torch.rand(1, 3, 16, 16), Denoising()
        >>> alg = algorithms.pgd(L2(), Tikhonov())
        >>> f = unfold(alg, 10, per_iteration=("stepsize",))  # γ_0, ..., γ_9
        >>> loss = lambda p: f(p, y, physics).square().sum()
        >>> torch.func.grad(loss)({"stepsize": torch.ones(10)})["stepsize"].shape
        torch.Size([10])
        >>> shared = unfold(alg, 10)  # one γ for all iterations
        >>> torch.allclose(f({"stepsize": torch.full((10,), 0.5)}, y, physics),
        ...                shared({"stepsize": torch.tensor(0.5)}, y, physics))
        True
        >>> shared({"stepsize": torch.tensor(0.5), "lamda_reg": 0.1}, y, physics)
        Traceback (most recent call last):
        ...
        ValueError: ...: unknown parameter 'lamda_reg' (did you mean 'lambda_reg'?); known: ...
    """
    api = "unroll.unfolded.unfold"
    if not isinstance(algorithm, (Algorithm, list, tuple)):
        raise TypeError(
            f"{api}: algorithm must be an unroll.algorithms.Algorithm (e.g. "
            f"unroll.algorithms.pgd(L2(), prior)), got {type(algorithm).__name__}."
        )
    check_count(api, "max_iter", max_iter)
    layers = as_layers(api, algorithm, max_iter)
    if deq is not None and not isinstance(deq, DEQConfig):
        raise TypeError(
            f"{api}: deq must be None or an unroll.DEQConfig (e.g. deq=unroll.DEQConfig()), "
            f"got {type(deq).__name__}."
        )
    acceleration = anderson_config(api, acceleration)
    if deq is not None and acceleration is not None:
        deq = dataclasses.replace(
            deq,
            anderson_acceleration_forward=True,
            history_size_forward=acceleration.history_size,
            beta_anderson_acc_forward=acceleration.beta,
            eps_anderson_acc_forward=acceleration.eps,
        )
    known = layer_keys(layers)
    names = per_iteration_names(api, per_iteration, known)
    if deq is not None and names:
        raise ValueError(
            f"{api}: a DEQ has one set of parameters (its fixed point does not depend on an "
            f"iteration index), but per_iteration={names}; pass shared values and "
            "per_iteration=()."
        )

    def prepare(params: dict, y: Tensor) -> dict:
        if not isinstance(params, dict):
            canonical(params, api)  # raises the TypeError
        check_keys(api, params, known, "parameter")
        params = canonical(params, api)
        check_per_iteration(api, params, names, max_iter)
        check_prior_layers(api, params, max_iter)
        check_dtypes(api, params, y)
        return params

    def apply_unrolled(
        params: dict,
        y: Tensor,
        physics: PhysicsLike,
        init: PyTree | Callable[[Tensor, PhysicsLike], PyTree] = None,
    ) -> Tensor:
        params = prepare(params, y)
        state = initial_state(layers[0], y, physics, params_at(params, 0, names), init)
        mixer = AndersonMixer(acceleration) if acceleration is not None else None
        for k in range(max_iter):
            new = layers[k].step(state, y, physics, params_at(params, k, names))
            state = new if mixer is None else mixer(k, state, new)
        return layers[-1].output(state)

    fixed = layers[-1].equilibrium or layers[-1]  # FISTA: PGD's map (same fixed points)

    def apply_deq(
        params: dict,
        y: Tensor,
        physics: PhysicsLike,
        init: PyTree | Callable[[Tensor, PhysicsLike], PyTree] = None,
    ) -> Tensor:
        params = params_at(prepare(params, y), max_iter - 1)  # untied: the last layer's
        state0 = initial_state(fixed, y, physics, params, init)
        state = equilibrium.deq(_deq_map(fixed), state0, y, physics, params, config=deq)
        return fixed.output(state)

    return apply_deq if deq is not None else apply_unrolled


def _network(
    algorithm: Algorithm | Sequence[Algorithm],
    max_iter: int,
    config: DEQConfig | None,
    per_iteration: tuple,
    acceleration: AndersonAccelerationConfig | None = None,
) -> Callable[..., Tensor]:
    """:func:`unfold` for :class:`Unfolded`, whose ``unfold`` and ``DEQ`` arguments (the
    seeds' keyword names) shadow the functions inside its ``__init__``."""
    return unfold(
        algorithm, max_iter, deq=config, per_iteration=per_iteration, acceleration=acceleration
    )


def anderson_config(api: str, value: Any) -> AndersonAccelerationConfig | None:
    """``anderson_acceleration=`` as DeepInverse reads it: None / False → None, True → the
    default :class:`unroll.optim.AndersonAccelerationConfig`.

    Example:
        >>> anderson_config("api", True).history_size
        10
    """
    if value is None or value is False:
        return None
    if value is True:
        return AndersonAccelerationConfig()
    if not isinstance(value, AndersonAccelerationConfig):
        raise TypeError(
            f"{api}: anderson_acceleration must be None, a bool or an "
            "unroll.optim.AndersonAccelerationConfig (e.g. "
            f"AndersonAccelerationConfig(history_size=5)), got {type(value).__name__}."
        )
    return value


def _deq_map(algorithm: Algorithm) -> Callable:
    def fixed_point_map(state, y, physics, params):
        return algorithm.step(state, y, physics, params)

    return fixed_point_map


def _real_dtype(t: Tensor) -> torch.dtype:
    return t.real.dtype if t.is_complex() else t.dtype


def check_dtypes(api: str, params: dict, y: Any) -> None:
    """Raise a TypeError naming ``api`` when the prior's floating weights (``params["prior"]``)
    and ``y`` have different precisions (float32 vs float64): PyTorch would fail deep inside
    the network.

    Args:
        api: the API named in the message.
        params: the parameter dict.
        y: the measurements.

    Example:
        >>> import torch
        >>> check_dtypes("api", {"prior": {"w": torch.ones(2)}}, torch.ones(2, dtype=torch.float64))
        Traceback (most recent call last):
        ...
        TypeError: api: the model's parameters are torch.float32 but y is torch.float64; ...
    """
    if not isinstance(y, Tensor) or not (y.is_floating_point() or y.is_complex()):
        return
    if torch.is_autocast_enabled(y.device.type):
        return
    want = _real_dtype(y)
    for w in tree.leaves(params.get(PRIOR_KEY, {})):
        if isinstance(w, Tensor) and (w.is_floating_point() or w.is_complex()):
            have = _real_dtype(w)
            if have != want:
                raise TypeError(
                    f"{api}: the model's parameters are {have} but y is {y.dtype}; convert one "
                    f"so they match: model.to({want}) (e.g. model.double() / model.float()) or "
                    f"y.to({have})."
                )


# --------------------------------------------------------------------------- module
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _scalar_tensor(api: str, name: str, value: Any) -> Tensor:
    """A detached copy of a tensor, or a number as a 0-dim tensor of the default dtype."""
    if isinstance(value, Tensor):
        return value.detach().clone()
    if _number(value):
        return torch.tensor(float(value), dtype=torch.get_default_dtype())
    raise TypeError(
        f"{api}: parameter '{name}' must be a number, a tensor (one shared value) or a list "
        f"of them (one per iteration), got {type(value).__name__}."
    )


def hyper_value(api: str, name: str, value: Any, max_iter: int) -> tuple[Tensor, bool]:
    """A hyperparameter as a tensor, and whether it is per-iteration (DeepInverse's rule).

    A number or a tensor (of any shape) is one value shared by all iterations; a list or
    tuple holds one value per iteration (``max_iter`` of them, stacked along a new leading
    dimension), except that a one-element list is one shared value.

    Args:
        api: the API named in error messages.
        name: the parameter's name.
        value: a number, a tensor, or a list / tuple of numbers or equally-shaped tensors.
        max_iter: the number of iterations.

    Returns:
        ``(tensor, per_iteration)``; the tensor is a detached copy (the input is not mutated).

    Example:
        >>> import torch
        >>> hyper_value("api", "stepsize", [1.0, 0.5, 0.25], 3)
        (tensor([1.0000, 0.5000, 0.2500]), True)
        >>> hyper_value("api", "g_param", torch.tensor([[1.0]]), 3)
        (tensor([[1.]]), False)
        >>> hyper_value("api", "g_param", [0.1], 3)
        (tensor(0.1000), False)
    """
    if not isinstance(value, (list, tuple)):
        return _scalar_tensor(api, name, value), False
    if len(value) == 1:
        return _scalar_tensor(api, name, value[0]), False
    if len(value) != max_iter:
        raise ValueError(
            f"{api}: parameter '{name}' has {len(value)} per-iteration values but "
            f"max_iter={max_iter}; give a list of max_iter values (one per iteration), a "
            "one-element list, or a single number or tensor (one value shared by all "
            "iterations)."
        )
    items = [_scalar_tensor(api, name, v) for v in value]
    if len({t.shape for t in items}) > 1:
        raise ValueError(
            f"{api}: the per-iteration values of '{name}' have different shapes "
            f"{[tuple(t.shape) for t in items]}; give values of one shape."
        )
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in items])
    return torch.stack([t.to(dtype) for t in items]), True


def trainable_names(api: str, trainable: Any) -> tuple[str, ...]:
    """``trainable_params`` as a tuple of names: None → ``()``, a single name → ``(name,)``.

    Example:
        >>> trainable_names("api", "stepsize")
        ('stepsize',)
    """
    if trainable is None:
        return ()
    if isinstance(trainable, str):
        return (trainable,)
    if not isinstance(trainable, (list, tuple, set, frozenset)) or not all(
        isinstance(n, str) for n in trainable
    ):
        raise TypeError(
            f"{api}: trainable_params must be a list of parameter names such as "
            f"['stepsize', 'lambda_reg'], got {trainable!r}."
        )
    return tuple(trainable)


def deq_config(api: str, deq: Any) -> DEQConfig | None:
    """``DEQ=`` as DeepInverse reads it: None / False → None, True → ``DEQConfig()``.

    Example:
        >>> deq_config("api", True) == DEQConfig()
        True
    """
    if deq is None or deq is False:
        return None
    if deq is True:
        return DEQConfig()
    if not isinstance(deq, DEQConfig):
        raise TypeError(
            f"{api}: DEQ must be None, a bool or an unroll.DEQConfig (e.g. "
            f"DEQ=unroll.DEQConfig()), got {type(deq).__name__}."
        )
    return deq


def _as_list(api: str, what: str, value: Any, max_iter: int) -> list | None:
    """A list / tuple of priors or data fidelities: None for one object (or a one-element
    list, returned as a list of one), else the ``max_iter`` of them (untied layers)."""
    if not isinstance(value, (list, tuple)):
        return None
    if len(value) == 0 or len(value) not in (1, max_iter):
        raise ValueError(
            f"{api}: {what} is a list of {len(value)} but max_iter={max_iter}; give one per "
            f"iteration ({max_iter}, untied layers) or a single {what} (shared)."
        )
    return list(value)


def _hold(items: list) -> nn.ModuleList | tuple:
    """An ``nn.ModuleList`` when every item is a module (their weights are registered), else
    a tuple."""
    if all(isinstance(m, nn.Module) for m in items):
        return nn.ModuleList(items)
    return tuple(items)


_DEEPINV_KEY = re.compile(r"^(init_)?params_algo\.([A-Za-z_]+)\.(\d+)$")


class Unfolded(nn.Module):
    """An algorithm as an ``nn.Module``: unfolded network, DEQ, or classical solver.

    Args:
        iteration: algorithm name (``"GD"``, ``"PGD"``, ``"FISTA"``, ``"HQS"``, ``"ADMM"``,
            ``"DRS"``, ``"PDCP"``) or a factory ``(data_fidelity, prior) -> Algorithm``.
        data_fidelity: ``f`` (default :class:`unroll.optim.L2`), or a list of ``max_iter``
            of them (iteration ``k`` uses the ``k``-th; a one-element list is one shared).
        prior: ``g`` (a :class:`unroll.optim.Prior`; a network inside it is a submodule,
            trainable by default), or a list of ``max_iter`` priors: untied layers, each
            iteration with its own prior and weights (registered as ``prior.0``, ``prior.1``,
            ..., as DeepInverse). A DEQ uses the last one.
        params_algo: hyperparameters: ``stepsize``, ``lambda_reg`` (DeepInverse's key
            ``lambda``), ``sigma_denoiser`` (``g_param``), ``beta``, ``stepsize_dual`` (those
            the algorithm reads; another key raises, suggesting the closest name; a None value
            is "not set", as DeepInverse). As in DeepInverse, a number or a tensor of any shape
            is one value shared by all iterations; a list or tuple of ``max_iter`` numbers or
            tensors holds one value per iteration; a one-element list is one shared value. A
            DEQ uses the last of per-iteration values (as DeepInverse's equilibrium step).
            Not mutated.
        trainable_params: names in ``params_algo`` (a list, or one name as a str) that become
            ``nn.Parameter``\\ s when ``unfold=True`` or ``DEQ`` is set; the others are
            buffers. Not mutated. Unknown or unset names raise.
        max_iter: iterations (unrolled layers, or the cap of a classical or DEQ run).
        DEQ: None / False, True (the default :class:`unroll.DEQConfig`) or a
            :class:`unroll.DEQConfig` (implicit backward at the fixed point).
        unfold: False for a classical solver (early stopping at ``tol``; its hyperparameters
            are trainable only with a ``DEQ``, as in DeepInverse).
        tol: early-stopping tolerance of the classical solver (relative change).
        g_first: the step on the prior first (DeepInverse's ``g_first``; PGD, FISTA, HQS,
            ADMM, DRS: see :func:`unroll.algorithms.pgd` and the others).
        anderson_acceleration: None / False, True (the default
            :class:`unroll.optim.AndersonAccelerationConfig`) or a config: Anderson
            acceleration of the iterations (classical and unfolded; with a DEQ, of its
            forward solve).
        custom_init: DeepInverse's ``custom_init``: the ``init`` used when a call gives none
            (a callable ``custom_init(y, physics)`` or a fixed start; see ``forward``).

    Call ``model(y, physics)`` or ``model(y, physics, init=x0)`` (a tensor, ``(x0, z0)``,
    ``{"est": (x0, z0)}`` or a callable ``init(y, physics)``, as DeepInverse); the pure form is
    ``model.apply(params, y, physics)`` with ``params`` a dict of the model's named
    parameters/buffers (as in :func:`torch.func.functional_call`). Hyperparameters are cast to
    the dtype of ``y``; the prior's network must already have it (a TypeError says to call
    ``model.double()`` or ``y.float()``). ``stepsize``, ``stepsize_dual`` and
    ``sigma_denoiser`` must be > 0, ``lambda_reg`` >= 0 and all of them finite (checked at
    construction). After a classical run, :attr:`has_converged` says whether every sample
    reached ``tol``. A DeepInverse ``state_dict`` (keys ``params_algo.stepsize.0``, ...,
    ``prior.0.denoiser...``) loads with ``load_state_dict`` or
    :meth:`load_deepinv_state_dict`.

    Example:
        >>> import torch
        >>> from unroll.optim import Tikhonov
        >>> from unroll.physics import Denoising
        >>> model = Unfolded("PGD", prior=Tikhonov(), max_iter=3,
        ...                  params_algo={"stepsize": [1.0, 0.5, 0.25], "g_param": 0.1},
        ...                  trainable_params=["stepsize"])
        >>> model.hyper.per_iteration_names, tuple(model.hyper.stepsize.shape)
        (('stepsize',), (3,))
    """

    _api = "unroll.unfolded"  # the API named in error messages (subclasses override)

    def __init__(
        self,
        iteration: str | Callable[..., Algorithm],
        *,
        data_fidelity: DataFidelityLike | Sequence[DataFidelityLike] | None = None,
        prior: PriorLike | Sequence[PriorLike] | None = None,
        params_algo: dict | None = None,
        trainable_params: Sequence[str] | str | None = None,
        max_iter: int = 5,
        DEQ: DEQConfig | bool | None = None,  # noqa: N803
        unfold: bool = True,
        tol: float | None = None,
        g_first: bool = False,
        anderson_acceleration: AndersonAccelerationConfig | bool | None = None,
        custom_init: PyTree | Callable[[Tensor, PhysicsLike], PyTree] = None,
    ):
        super().__init__()
        from unroll.optim.data_fidelity import L2

        api = self._api
        self.iteration = iteration
        self.factory = _resolve(iteration)
        check_count(api, "max_iter", max_iter)
        check_tol(api, tol)
        if not isinstance(g_first, bool):
            raise TypeError(f"{api}: g_first must be a bool, got {g_first!r}.")
        DEQ = deq_config(api, DEQ)  # noqa: N806
        self.anderson_config = anderson_config(api, anderson_acceleration)
        self.max_iter, self.deq_config, self.unfold, self.tol = max_iter, DEQ, unfold, tol
        self.g_first, self.custom_init = g_first, custom_init
        self.has_converged = False
        self.verbose = False  # the classical solver's printout (the optim classes' verbose=)
        if prior is None or (isinstance(prior, (list, tuple)) and not prior):
            raise ValueError(f"{api}: a prior is required, e.g. prior=unroll.optim.PnP(DnCNN()).")
        priors = _as_list(api, "prior", prior, max_iter)
        fids = _as_list(api, "data_fidelity", data_fidelity, max_iter)
        untied_p = priors is not None and len(priors) > 1
        untied_f = fids is not None and len(fids) > 1
        if priors is not None and not untied_p:
            prior, priors = priors[0], None
        if fids is not None and not untied_f:
            data_fidelity, fids = fids[0], None
        self.data_fidelity = (
            _hold(fids) if fids is not None else L2() if data_fidelity is None else data_fidelity
        )
        self.prior = _hold(priors) if priors is not None else prior
        p_list = priors or [prior] * max_iter
        f_list = fids or [self.data_fidelity] * max_iter
        self.algorithms: tuple[Algorithm, ...]
        if untied_p or untied_f:
            self.algorithms = tuple(self._build(f, p) for f, p in zip(f_list, p_list))
        else:
            self.algorithms = (self._build(self.data_fidelity, prior),)
        self.algorithm = self.algorithms[-1]
        known = tuple(n for n in layer_keys(self.algorithms) if n != PRIOR_KEY)
        self.hyper = _Hyper(
            api,
            params_algo or {},
            trainable_names(api, trainable_params),
            max_iter,
            learnable=unfold or DEQ is not None,
            known=known,
        )
        per_it = () if DEQ is not None else self.hyper.per_iteration_names
        self._layers: Algorithm | tuple[Algorithm, ...] = (
            self.algorithms[-1] if len(self.algorithms) == 1 else self.algorithms
        )
        self._core = _network(self._layers, max_iter, DEQ, per_it, self.anderson_config)
        self.register_load_state_dict_pre_hook(_deepinv_keys_hook)

    def _build(self, data_fidelity: Any, prior: Any) -> Algorithm:
        api = self._api
        if self.g_first:
            try:
                accepts = "g_first" in inspect.signature(self.factory).parameters
            except (TypeError, ValueError):
                accepts = False
            if not accepts:
                raise ValueError(
                    f"{api}: g_first=True is not supported by iteration {self.iteration!r}; "
                    "use PGD, FISTA, HQS, ADMM or DRS, or g_first=False."
                )
            algorithm = self.factory(data_fidelity, prior, g_first=True)
        else:
            algorithm = self.factory(data_fidelity, prior)
        if not isinstance(algorithm, Algorithm):
            raise TypeError(
                f"{api}: the iteration factory must return an unroll.algorithms.Algorithm, "
                f"got {type(algorithm).__name__}."
            )
        return algorithm

    def params(self, dtype: torch.dtype | None = None) -> dict:
        """The algorithm's parameters: hyperparameters (cast to ``dtype``) and prior weights
        (a list of per-layer weight dicts for untied priors)."""
        params = self.hyper.as_dict(dtype)
        if isinstance(self.prior, (nn.ModuleList, tuple)):
            weights: list[dict] | dict | None = [_weights(p) for p in self.prior]
            if not any(weights):
                weights = None
        else:
            weights = _weights(self.prior)
        if weights:
            params[PRIOR_KEY] = weights
        return params

    def forward(
        self,
        y: Tensor,
        physics: PhysicsLike,
        init: PyTree | Callable[[Tensor, PhysicsLike], PyTree] = None,
        **kwargs: Any,
    ) -> Tensor:
        """``x̂`` from the measurements ``y`` (``init``: the start, see the class)."""
        if kwargs:
            raise TypeError(
                f"{self._api}: unexpected keyword arguments {sorted(kwargs)}; call "
                "model(y, physics) or model(y, physics, init=x0)."
            )
        if not isinstance(y, Tensor):
            raise TypeError(
                f"{self._api}: y must be a tensor of measurements, got {type(y).__name__}; "
                "call model(y, physics)."
            )
        params = self.params(_real_dtype(y))
        check_dtypes(self._api, params, y)
        init = self.custom_init if init is None else init
        if self.deq_config is not None:  # per-iteration values: the last (DeepInverse)
            params = {
                k: v[-1] if k in self.hyper.per_iteration_names else v for k, v in params.items()
            }
        if self.unfold or self.deq_config is not None:
            return self._core(params, y, physics, init)
        first = params_at(params, 0, self.hyper.per_iteration_names)
        state = None if init is None else initial_state(self.algorithms[0], y, physics, first, init)
        x, info = _alg.run(
            self._layers,
            y,
            physics,
            params,
            self.max_iter,
            tol=self.tol,
            per_iteration=self.hyper.per_iteration_names,
            init=state,
            acceleration=self.anderson_config,
        )
        if self.tol is not None:
            self.has_converged = try_bool(info.converged.all()) is True
        if self.verbose:
            if self.tol is None:
                end = "all max_iter iterations (no early stopping)"
            elif self.has_converged:
                end = f"every sample's relative change reached tol={self.tol:g}"
            else:
                end = f"stopped at max_iter above tol={self.tol:g}"
            print(f"{type(self).__name__}: {int(info.num_iter)} iteration(s), {end}")
        return x

    def apply(
        self,
        params: dict,
        y: Tensor,
        physics: PhysicsLike,
        init: PyTree | Callable[[Tensor, PhysicsLike], PyTree] = None,
    ) -> Tensor:
        """Pure form: ``torch.func.functional_call(self, params, (y, physics))``."""
        return torch.func.functional_call(self, params, (y, physics), {"init": init})

    def update_parameters(self, **values: Any) -> None:
        """Set hyperparameters in place (no gradient recorded): ``model.update_parameters(
        stepsize=0.5, g_param=torch.tensor(0.1))``.

        Each name (aliases such as ``g_param``, ``lambda`` accepted) must be one of the model's
        hyperparameters; a value (number or tensor) must broadcast to its shape (a per-iteration
        value takes ``max_iter`` entries or one shared). Values are checked as at construction.

        Example:
            >>> from unroll.optim import PGD, Tikhonov
            >>> model = PGD(prior=Tikhonov(), stepsize=1.0, max_iter=3)
            >>> model.update_parameters(stepsize=0.5)
            >>> float(model.hyper.stepsize)
            0.5
        """
        api = f"{self._api}.update_parameters"
        check_keys(api, values, [*self.hyper.names, *ALIASES], "hyperparameter")
        values = canonical(values, api)
        check_keys(api, values, self.hyper.names, "hyperparameter")
        check_hyperparameters(api, values)
        with torch.no_grad():
            for name, value in values.items():
                target = getattr(self.hyper, name)
                new = torch.as_tensor(value, dtype=target.dtype, device=target.device)
                try:
                    target.copy_(new.expand_as(target))
                except RuntimeError as err:
                    raise ValueError(
                        f"{api}: {name} has shape {tuple(target.shape)} but the new value has "
                        f"shape {tuple(new.shape)}; give a value of that shape (or a number)."
                    ) from err

    def load_deepinv_state_dict(self, state_dict: dict, strict: bool = True) -> Any:
        """Load a DeepInverse 0.4.1 ``state_dict`` of the equivalent unfolded model.

        DeepInverse stores hyperparameters as ``params_algo.<name>.<k>`` (an
        ``nn.ParameterDict`` of ``nn.ParameterList``\\ s, one entry per iteration, or one
        shared entry ``.0``; a copy under ``init_params_algo.``), with its names ``lambda`` and
        ``g_param``, and the priors as ``prior.<k>.<...>`` (an ``nn.ModuleList``). They map
        to ``hyper.<name>`` (entries stacked for a per-iteration value, reshaped to a shared
        value's shape) and to ``prior.<...>`` (``prior.<k>.<...>`` for untied priors).
        DeepInverse does not save non-trainable hyperparameters: the model's own values are
        kept for those. ``load_state_dict`` does the same conversion automatically when it
        sees DeepInverse's keys.

        Args:
            state_dict: DeepInverse's ``model.state_dict()`` (not mutated).
            strict: as :meth:`torch.nn.Module.load_state_dict`.

        Returns:
            ``load_state_dict``'s ``(missing_keys, unexpected_keys)``.

        Example:
            >>> import torch
            >>> from unroll.optim import PGD, Tikhonov
            >>> model = PGD(prior=Tikhonov(), stepsize=[1.0, 1.0], max_iter=2, unfold=True)
            >>> sd = {"params_algo.stepsize.0": torch.tensor(0.5),
            ...       "params_algo.stepsize.1": torch.tensor(0.25),
            ...       "params_algo.lambda.0": torch.tensor(2.0)}
            >>> _ = model.load_deepinv_state_dict(sd)
            >>> model.hyper.stepsize, model.hyper.lambda_reg
            (Parameter containing:
            tensor([0.5000, 0.2500], requires_grad=True), Parameter containing:
            tensor(2., requires_grad=True))
        """
        return self.load_state_dict(self.from_deepinv(state_dict), strict=strict)

    def from_deepinv(self, state_dict: dict, prefix: str = "") -> dict:
        """A copy of a DeepInverse ``state_dict`` with unroll's keys (see
        :meth:`load_deepinv_state_dict`); keys of another format are kept as they are."""
        api = f"{self._api}.load_deepinv_state_dict"
        out: dict = {}
        entries: dict[str, dict[int, Tensor]] = {}
        backup: dict[str, dict[int, Tensor]] = {}
        untied = isinstance(self.prior, nn.ModuleList)
        untied_f = isinstance(self.data_fidelity, nn.ModuleList)
        for key, value in state_dict.items():
            local = key[len(prefix) :] if key.startswith(prefix) else None
            match = _DEEPINV_KEY.match(local) if local is not None else None
            if match:
                name = ALIASES.get(match.group(2), match.group(2))
                (backup if match.group(1) else entries).setdefault(name, {})[
                    int(match.group(3))
                ] = value
                continue
            for part, keep in (("prior.", untied), ("data_fidelity.", untied_f)):
                if local is not None and local.startswith(part) and not keep:
                    head, _, rest = local[len(part) :].partition(".")
                    if head.isdigit() and rest:
                        if head != "0":
                            raise ValueError(
                                f"{api}: the checkpoint has untied {part[:-1]}s ({key}) but "
                                f"this model has one; build it with a list of max_iter."
                            )
                        key = prefix + part + rest
            out[key] = value
        for name, got in {**backup, **entries}.items():
            if name not in self.hyper.names:
                raise ValueError(
                    f"{api}: the checkpoint has hyperparameter '{name}' that this model does not "
                    f"have ({list(self.hyper.names)}); build the model with it in params_algo."
                )
            out[f"{prefix}hyper.{name}"] = self._deepinv_value(api, name, got)
        for name in self.hyper.names:  # DeepInverse saves only the trainable ones
            out.setdefault(f"{prefix}hyper.{name}", getattr(self.hyper, name).detach().clone())
        return out

    def _deepinv_value(self, api: str, name: str, got: dict[int, Tensor]) -> Tensor:
        target = getattr(self.hyper, name)
        count = len(got)
        if sorted(got) != list(range(count)):
            raise ValueError(f"{api}: entries of '{name}' are not 0..{count - 1}: {sorted(got)}.")
        per_it = name in self.hyper.per_iteration_names
        if per_it and count != self.max_iter and count != 1:
            raise ValueError(
                f"{api}: the checkpoint has {count} values of '{name}' but max_iter="
                f"{self.max_iter}; build the model with the same max_iter."
            )
        if not per_it and count != 1:
            raise ValueError(
                f"{api}: the checkpoint has {count} per-iteration values of '{name}' but this "
                f"model shares one; build it with a list of {count} values for '{name}'."
            )
        shape = target.shape[1:] if per_it else target.shape
        values = [got[k].detach() for k in range(count)]
        for v in values:
            if v.numel() != shape.numel():
                raise ValueError(
                    f"{api}: '{name}' has shape {tuple(v.shape)} in the checkpoint but "
                    f"{tuple(shape)} here; build the model with a value of that shape."
                )
        values = [v.reshape(shape).to(target.dtype) for v in values]
        if per_it:
            return torch.stack(values * (self.max_iter if count == 1 else 1))
        return values[0]


def _weights(prior: Any) -> dict:
    return prior.weights() if hasattr(prior, "weights") else {}


def _deepinv_keys_hook(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: convert DeepInverse's keys in place (PyTorch passes a copy
    of the user's dict)."""
    if not isinstance(module, Unfolded):
        return
    if any(k.startswith(prefix) and _DEEPINV_KEY.match(k[len(prefix) :]) for k in list(state_dict)):
        converted = module.from_deepinv(dict(state_dict), prefix)
        for key in [k for k in state_dict if k.startswith(prefix)]:
            del state_dict[key]
        state_dict.update({k: v for k, v in converted.items() if k.startswith(prefix)})


class _Hyper(nn.Module):
    """Holds hyperparameters: trainable ones as parameters, the others as buffers.

    ``per_iteration_names`` lists those given as per-iteration lists (leading dimension
    ``max_iter``)."""

    def __init__(
        self,
        api: str,
        params_algo: dict,
        trainable: tuple[str, ...],
        max_iter: int,
        *,
        learnable: bool,
        known: tuple[str, ...],
    ):
        super().__init__()
        if not isinstance(params_algo, dict):
            raise TypeError(f"{api}: params_algo must be a dict, got {type(params_algo).__name__}.")
        params_algo = {k: v for k, v in params_algo.items() if v is not None}  # None: not set
        check_keys(api, params_algo, known, "parameter")
        values = canonical(params_algo, api)
        check_keys(api, trainable, known, "name in trainable_params")
        names = {ALIASES.get(n, n) for n in trainable}
        missing = sorted(names - set(values))
        if missing:
            raise ValueError(
                f"{api}: trainable_params {missing} are not set; give them a value "
                f"(e.g. {missing[0]}=1.0 or params_algo={{'{missing[0]}': 1.0}})."
            )
        converted = {n: hyper_value(api, n, v, max_iter) for n, v in values.items()}
        check_hyperparameters(api, params_algo)  # names the keys as the user spelt them
        self.names = list(values)
        self.max_iter = max_iter
        self.per_iteration_names = tuple(n for n, (_, per_it) in converted.items() if per_it)
        for name, (t, _) in converted.items():
            if learnable and name in names:
                self.register_parameter(name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)

    def as_dict(self, dtype: torch.dtype | None) -> dict:
        out = {}
        for name in self.names:
            t = getattr(self, name)
            out[name] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
        return out


def _resolve(iteration: str | Callable[..., Algorithm]) -> Callable[..., Algorithm]:
    if callable(iteration):
        return iteration
    if isinstance(iteration, str) and iteration.upper() in _alg.ALGORITHMS:
        return _alg.ALGORITHMS[iteration.upper()]
    raise ValueError(
        f"unroll.unfolded: unknown iteration {iteration!r}; choose one of "
        f"{sorted(_alg.ALGORITHMS)} or pass a factory (data_fidelity, prior) -> Algorithm."
    )


def unfolded_builder(
    iteration: str | Callable[..., Algorithm] = "PGD",
    params_algo: dict | None = None,
    data_fidelity: DataFidelityLike | Sequence[DataFidelityLike] | None = None,
    prior: PriorLike | Sequence[PriorLike] | None = None,
    max_iter: int = 5,
    trainable_params: Sequence[str] | str | None = None,
    DEQ: DEQConfig | bool | None = None,  # noqa: N803
    g_first: bool = False,
    anderson_acceleration: AndersonAccelerationConfig | bool | None = None,
) -> Unfolded:
    """Build a trainable unfolded network (or DEQ) from an algorithm name.

    Args:
        iteration: ``"GD"``, ``"PGD"``, ``"FISTA"``, ``"HQS"``, ``"ADMM"``, ``"DRS"``,
            ``"PDCP"`` or a factory.
        params_algo: hyperparameters (see :class:`Unfolded`; DeepInverse's keys ``lambda``
            and ``g_param`` accepted): a number or a tensor is one shared value, a list of
            ``max_iter`` values one per iteration; not mutated.
        data_fidelity: ``f`` (default ``L2()``), or a list of ``max_iter``.
        prior: ``g``, or a list of ``max_iter`` priors (untied layers, each with its own
            weights).
        max_iter: number of unfolded iterations.
        trainable_params: names of the learnable hyperparameters (default: ``stepsize`` and
            ``lambda_reg`` when given); the prior's network weights are always trainable.
        DEQ: None, True or a ``DEQConfig``.
        g_first: the step on the prior first (see :class:`Unfolded`).
        anderson_acceleration: None, True or an
            :class:`unroll.optim.AndersonAccelerationConfig`.

    Returns:
        An :class:`Unfolded` module, called as ``model(y, physics)``.

    Example:
        >>> import torch
        >>> from unroll.models import DnCNN
        >>> from unroll.optim import L2, PnP
        >>> from unroll.physics import Denoising
        >>> model = unfolded_builder("HQS", params_algo={"stepsize": [1.0, 0.8, 0.6],
        ...                                              "g_param": 0.1},
        ...                          trainable_params=["stepsize", "g_param"],
        ...                          data_fidelity=L2(), prior=PnP(DnCNN(depth=3, nf=8)),
        ...                          max_iter=3)
        >>> model(torch.rand(1, 3, 16, 16), Denoising()).shape
        torch.Size([1, 3, 16, 16])
        >>> {n: tuple(p.shape) for n, p in model.named_parameters() if n.startswith("hyper")}
        {'hyper.stepsize': (3,), 'hyper.sigma_denoiser': ()}
    """
    if params_algo is None:
        params_algo = {"stepsize": 1.0}
    if trainable_params is None and isinstance(params_algo, dict):
        trainable_params = [
            n for n in params_algo if ALIASES.get(n, n) in ("stepsize", "lambda_reg")
        ]
    return Unfolded(
        iteration,
        data_fidelity=data_fidelity,
        prior=prior,
        params_algo=params_algo,
        trainable_params=trainable_params,
        max_iter=max_iter,
        DEQ=DEQ,
        unfold=True,
        g_first=g_first,
        anderson_acceleration=anderson_acceleration,
    )
