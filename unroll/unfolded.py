"""Unfolded (unrolled) networks and deep-equilibrium models built from any algorithm.

* :func:`unfold` turns an :class:`unroll.algorithms.Algorithm` into a pure function
  ``(params, y, physics) -> x`` running ``max_iter`` differentiable iterations, or, with a
  :class:`unroll.DEQConfig`, solving for the algorithm's fixed point with an implicit backward
  (:func:`unroll.deq`) — for any state (GD, PGD, FISTA, HQS, ADMM, DRS, PDHG).
* :class:`Unfolded` is the ``nn.Module`` convenience layer: it owns the hyperparameters
  (exactly the ``trainable_params`` are ``nn.Parameter``\\ s, the others buffers) and the
  prior's network, and calls the pure core. :func:`unfolded_builder` builds one by name.

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

import functools
from collections.abc import Callable, Collection, Sequence
from typing import Any

import torch
from torch import nn

from unroll import algorithms as _alg
from unroll import equilibrium, tree
from unroll.algorithms.base import (
    ALIASES,
    PRIOR_KEY,
    Algorithm,
    canonical,
    check_count,
    check_hyperparameters,
    check_keys,
    check_per_iteration,
    check_tol,
    known_params,
    params_at,
    per_iteration_names,
)
from unroll.equilibrium import DEQConfig

Tensor = torch.Tensor


# --------------------------------------------------------------------------- pure core
__all__ = [
    "unfold",
    "unfolded_builder",
    "Unfolded",
]


def unfold(
    algorithm: Algorithm,
    max_iter: int,
    *,
    deq: DEQConfig | None = None,
    per_iteration: str | Collection[str] = (),
) -> Callable[[dict, Tensor, Any], Tensor]:
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

    Returns:
        ``apply(params, y, physics) -> x``; composes with ``torch.func.grad``/``vmap``.

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
    if not isinstance(algorithm, Algorithm):
        raise TypeError(
            f"{api}: algorithm must be an unroll.algorithms.Algorithm (e.g. "
            f"unroll.algorithms.pgd(L2(), prior)), got {type(algorithm).__name__}."
        )
    check_count(api, "max_iter", max_iter)
    if deq is not None and not isinstance(deq, DEQConfig):
        raise TypeError(
            f"{api}: deq must be None or an unroll.DEQConfig (e.g. deq=unroll.DEQConfig()), "
            f"got {type(deq).__name__}."
        )
    known = known_params(algorithm)
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
        check_dtypes(api, params, y)
        return params

    def apply_unrolled(params: dict, y: Tensor, physics: Any) -> Tensor:
        params = prepare(params, y)
        state = algorithm.init(y, physics, params_at(params, 0, names))
        for k in range(max_iter):
            state = algorithm.step(state, y, physics, params_at(params, k, names))
        return algorithm.output(state)

    fixed = algorithm.equilibrium or algorithm  # FISTA: PGD's map (same fixed points)

    def apply_deq(params: dict, y: Tensor, physics: Any) -> Tensor:
        params = prepare(params, y)
        state0 = fixed.init(y, physics, params)
        state = equilibrium.deq(_deq_map(fixed), state0, y, physics, params, config=deq)
        return fixed.output(state)

    return apply_deq if deq is not None else apply_unrolled


def _network(
    algorithm: Algorithm, max_iter: int, config: DEQConfig | None, per_iteration: tuple
) -> Callable[[dict, Tensor, Any], Tensor]:
    """:func:`unfold` for :class:`Unfolded`, whose ``unfold`` and ``DEQ`` arguments (the
    seeds' keyword names) shadow the functions inside its ``__init__``."""
    return unfold(algorithm, max_iter, deq=config, per_iteration=per_iteration)


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


class Unfolded(nn.Module):
    """An algorithm as an ``nn.Module``: unfolded network, DEQ, or classical solver.

    Args:
        iteration: algorithm name (``"GD"``, ``"PGD"``, ``"FISTA"``, ``"HQS"``, ``"ADMM"``,
            ``"DRS"``, ``"PDCP"``) or a factory ``(data_fidelity, prior) -> Algorithm``.
        data_fidelity: ``f`` (default :class:`unroll.optim.L2`).
        prior: ``g`` (a :class:`unroll.optim.Prior`; a network inside it is a submodule,
            trainable by default).
        params_algo: hyperparameters: ``stepsize``, ``lambda_reg``, ``sigma_denoiser`` (alias
            ``g_param``), ``beta``, ``stepsize_dual`` (those the algorithm reads; another key
            raises, suggesting the closest name). As in DeepInverse, a number or a tensor of
            any shape is one value shared by all iterations; a list or tuple of ``max_iter``
            numbers or tensors holds one value per iteration; a one-element list is one
            shared value. Not mutated.
        trainable_params: names in ``params_algo`` (a list, or one name as a str) that become
            ``nn.Parameter``\\ s when ``unfold=True`` or ``DEQ`` is set; the others are
            buffers. Not mutated. Unknown or unset names raise.
        max_iter: iterations (unrolled layers, or the cap of a classical or DEQ run).
        DEQ: None / False, True (the default :class:`unroll.DEQConfig`) or a
            :class:`unroll.DEQConfig` (implicit backward at the fixed point).
        unfold: False for a classical solver (early stopping at ``tol``; its hyperparameters
            are trainable only with a ``DEQ``, as in DeepInverse).
        tol: early-stopping tolerance of the classical solver (relative change).

    Call ``model(y, physics)``; the pure form is ``model.apply(params, y, physics)`` with
    ``params`` a dict of the model's named parameters/buffers (as in
    :func:`torch.func.functional_call`). Hyperparameters are cast to the dtype of ``y``; the
    prior's network must already have it (a TypeError says to call ``model.double()`` or
    ``y.float()``). ``stepsize``, ``stepsize_dual`` and ``sigma_denoiser`` must be > 0,
    ``lambda_reg`` >= 0 and all of them finite (checked at construction).

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
        data_fidelity: Any = None,
        prior: Any = None,
        params_algo: dict | None = None,
        trainable_params: Sequence[str] | str | None = None,
        max_iter: int = 5,
        DEQ: Any = None,  # noqa: N803
        unfold: bool = True,
        tol: float | None = None,
    ):
        super().__init__()
        from unroll.optim.data_fidelity import L2

        api = self._api
        self.iteration = iteration
        self.factory = _resolve(iteration)
        self.data_fidelity = L2() if data_fidelity is None else data_fidelity
        if prior is None:
            raise ValueError(f"{api}: a prior is required, e.g. prior=unroll.optim.PnP(DnCNN()).")
        self.prior = prior
        check_count(api, "max_iter", max_iter)
        check_tol(api, tol)
        DEQ = deq_config(api, DEQ)  # noqa: N806
        self.max_iter, self.deq_config, self.unfold, self.tol = max_iter, DEQ, unfold, tol
        self.algorithm = self.factory(self.data_fidelity, prior)
        if not isinstance(self.algorithm, Algorithm):
            raise TypeError(
                f"{api}: the iteration factory must return an unroll.algorithms.Algorithm, "
                f"got {type(self.algorithm).__name__}."
            )
        known = tuple(n for n in known_params(self.algorithm) if n != PRIOR_KEY)
        self.hyper = _Hyper(
            api,
            params_algo or {},
            trainable_names(api, trainable_params),
            max_iter,
            learnable=unfold or DEQ is not None,
            known=known,
        )
        per_it = self.hyper.per_iteration_names
        if DEQ is not None and per_it:
            raise ValueError(
                f"{api}: a DEQ has one set of parameters, but {list(per_it)} are per-iteration "
                "lists; pass single numbers or tensors (or one-element lists)."
            )
        self._core = _network(self.algorithm, max_iter, DEQ, per_it)

    def params(self, dtype: torch.dtype | None = None) -> dict:
        """The algorithm's parameters: hyperparameters (cast to ``dtype``) and prior weights."""
        params = self.hyper.as_dict(dtype)
        weights = self.prior.weights() if hasattr(self.prior, "weights") else {}
        if weights:
            params[PRIOR_KEY] = weights
        return params

    def forward(self, y: Tensor, physics: Any, **kwargs: Any) -> Tensor:
        if kwargs:
            raise TypeError(
                f"{self._api}: unexpected keyword arguments {sorted(kwargs)}; call "
                "model(y, physics)."
            )
        if not isinstance(y, Tensor):
            raise TypeError(
                f"{self._api}: y must be a tensor of measurements, got {type(y).__name__}; "
                "call model(y, physics)."
            )
        params = self.params(_real_dtype(y))
        check_dtypes(self._api, params, y)
        if self.unfold or self.deq_config is not None:
            return self._core(params, y, physics)
        return _alg.run(
            self.algorithm,
            y,
            physics,
            params,
            self.max_iter,
            tol=self.tol,
            per_iteration=self.hyper.per_iteration_names,
        )[0]

    def apply(self, params: dict, y: Tensor, physics: Any) -> Tensor:
        """Pure form: ``torch.func.functional_call(self, params, (y, physics))``."""
        return torch.func.functional_call(self, params, (y, physics))


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
    data_fidelity: Any = None,
    prior: Any = None,
    max_iter: int = 5,
    trainable_params: Sequence[str] | str | None = None,
    DEQ: Any = None,  # noqa: N803
) -> Unfolded:
    """Build a trainable unfolded network (or DEQ) from an algorithm name.

    Args:
        iteration: ``"GD"``, ``"PGD"``, ``"FISTA"``, ``"HQS"``, ``"ADMM"``, ``"DRS"``,
            ``"PDCP"`` or a factory.
        params_algo: hyperparameters (see :class:`Unfolded`): a number or a tensor is one
            shared value, a list of ``max_iter`` values one per iteration; not mutated.
        data_fidelity: ``f`` (default ``L2()``).
        prior: ``g``.
        max_iter: number of unfolded iterations.
        trainable_params: names of the learnable hyperparameters (default: ``stepsize`` and
            ``lambda_reg`` when given); the prior's network weights are always trainable.
        DEQ: None, True or a ``DEQConfig``.

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
        trainable_params = [n for n in ("stepsize", "lambda_reg") if n in params_algo]
    return Unfolded(
        iteration,
        data_fidelity=data_fidelity,
        prior=prior,
        params_algo=params_algo,
        trainable_params=trainable_params,
        max_iter=max_iter,
        DEQ=DEQ,
        unfold=True,
    )
