"""Unfolded (unrolled) networks and deep-equilibrium models built from any algorithm.

* :func:`unfold` turns an :class:`unroll.algorithms.Algorithm` into a pure function
  ``(params, y, physics) -> x`` running ``max_iter`` differentiable iterations, or, with a
  :class:`unroll.DEQConfig`, solving for the algorithm's fixed point with an implicit backward
  (:func:`unroll.deq`) — for any state (GD, PGD, FISTA, HQS, ADMM, DRS, PDHG).
* :class:`Unfolded` is the ``nn.Module`` convenience layer: it owns the hyperparameters
  (exactly the ``trainable_params`` are ``nn.Parameter``\\ s, the others buffers) and the
  prior's network, and calls the pure core. :func:`unfolded_builder` builds one by name.

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

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from unroll import algorithms as _alg
from unroll.algorithms.base import (
    ALIASES,
    HYPERPARAMETERS,
    PRIOR_KEY,
    Algorithm,
    canonical,
    check_hyperparameters,
    has_per_iteration,
    params_at,
)

Tensor = torch.Tensor


# --------------------------------------------------------------------------- pure core
def unfold(
    algorithm: Algorithm, max_iter: int, *, deq: Any = None
) -> Callable[[dict, Tensor, Any], Tensor]:
    """A pure, differentiable ``(params, y, physics) -> x`` from an algorithm.

    Unrolled: ``x = output(step_{K−1}(… step_0(init(y, physics, p_0)) …))``, ``K = max_iter``,
    where ``p_k = params_at(params, k, K)`` (leaves with leading dimension ``K`` are
    per-iteration). Every iteration is kept for backpropagation.

    DEQ (``deq`` a :class:`unroll.DEQConfig`): ``x = output(s*)`` with ``s* = step(s*, y,
    physics, params)`` found by :func:`unroll.deq` (its forward runs to the config's
    ``max_iter`` / ``tol``; ``max_iter`` here is unused), the backward solving
    ``v = (∂step/∂s*)ᵀ v + u``; parameters must be shared. FISTA's state carries a momentum
    counter that never reaches a fixed point: :class:`Unfolded` runs a FISTA DEQ on PGD's map,
    which has the same fixed points.

    Args:
        algorithm: an :class:`unroll.algorithms.Algorithm`.
        max_iter: number of unrolled iterations (>= 1).
        deq: None (unrolled) or a ``DEQConfig``.

    Returns:
        ``apply(params, y, physics) -> x``; composes with ``torch.func.grad``/``vmap``.

    Example:
        >>> import torch
        >>> from unroll import algorithms
        >>> from unroll.optim import L2, Tikhonov
        >>> from unroll.physics import Denoising
        >>> y, physics = torch.rand(1, 3, 16, 16), Denoising()
        >>> f = unfold(algorithms.pgd(L2(), Tikhonov()), 10)
        >>> loss = lambda p: f(p, y, physics).square().sum()
        >>> torch.func.grad(loss)({"stepsize": torch.ones(10)})["stepsize"].shape
        torch.Size([10])
    """
    if not isinstance(algorithm, Algorithm):
        raise TypeError(
            "unroll.unfolded.unfold: algorithm must be an unroll.algorithms.Algorithm (e.g. "
            f"unroll.algorithms.pgd(L2(), prior)), got {type(algorithm).__name__}."
        )
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
        raise ValueError(f"unroll.unfolded.unfold: max_iter must be an int >= 1, got {max_iter!r}.")

    def apply_unrolled(params: dict, y: Tensor, physics: Any) -> Tensor:
        params = canonical(params)
        state = algorithm.init(y, physics, params_at(params, 0, max_iter))
        for k in range(max_iter):
            state = algorithm.step(state, y, physics, params_at(params, k, max_iter))
        return algorithm.output(state)

    def apply_deq(params: dict, y: Tensor, physics: Any) -> Tensor:
        from unroll.equilibrium import deq as deq_fn

        params = canonical(params)
        if max_iter > 1 and has_per_iteration(params, max_iter):
            raise ValueError(
                "unroll.unfolded.unfold: a DEQ has one set of parameters; pass shared "
                "(scalar) hyperparameters, not per-iteration ones."
            )
        state0 = algorithm.init(y, physics, params)
        state = deq_fn(_deq_map(algorithm), state0, y, physics, params, config=deq)
        return algorithm.output(state)

    return apply_deq if deq is not None else apply_unrolled


_unfold = unfold


def _deq_map(algorithm: Algorithm) -> Callable:
    def fixed_point_map(state, y, physics, params):
        return algorithm.step(state, y, physics, params)

    return fixed_point_map


# --------------------------------------------------------------------------- module
def _as_tensor(api: str, name: str, value: Any, max_iter: int) -> Tensor:
    if isinstance(value, Tensor):
        t = value.detach().clone()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        t = torch.tensor(float(value), dtype=torch.get_default_dtype())
    elif isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float, Tensor)) and not isinstance(v, bool) for v in value
    ):
        t = torch.stack([
            v.detach().clone() if isinstance(v, Tensor)
            else torch.tensor(float(v), dtype=torch.get_default_dtype())
            for v in value
        ])
    else:
        raise TypeError(
            f"{api}: parameter '{name}' must be a number, a list of numbers (one per "
            f"iteration) or a tensor, got {type(value).__name__}."
        )
    if t.dim() >= 1 and t.shape[0] != max_iter:
        raise ValueError(
            f"{api}: parameter '{name}' has {t.shape[0]} per-iteration values but "
            f"max_iter={max_iter}; give one value per iteration or a single number "
            "(a 0-dim tensor)."
        )
    return t


class Unfolded(nn.Module):
    """An algorithm as an ``nn.Module``: unfolded network, DEQ, or classical solver.

    Args:
        iteration: algorithm name (``"GD"``, ``"PGD"``, ``"FISTA"``, ``"HQS"``, ``"ADMM"``,
            ``"DRS"``, ``"PDCP"``) or a factory ``(data_fidelity, prior) -> Algorithm``.
        data_fidelity: ``f`` (default :class:`unroll.optim.L2`).
        prior: ``g`` (a :class:`unroll.optim.Prior`; a network inside it is a submodule,
            trainable by default).
        params_algo: hyperparameters: ``stepsize``, ``lambda_reg``, ``sigma_denoiser`` (alias
            ``g_param``), ``beta``, ``stepsize_dual``; a number, a tensor, or a list of
            ``max_iter`` numbers (per-iteration). Not mutated.
        trainable_params: names in ``params_algo`` that become ``nn.Parameter``\\ s; the others
            are buffers. Not mutated. Ignored names raise.
        max_iter: iterations (unrolled layers, or the cap of a classical or DEQ run).
        DEQ: None or a :class:`unroll.DEQConfig` (implicit backward at the fixed point).
        unfold: False for a classical solver (no trainable hyperparameters; early stopping at
            ``tol``).
        tol: early-stopping tolerance of the classical solver (relative change).

    Call ``model(y, physics)``; the pure form is ``model.apply(params, y, physics)`` with
    ``params`` a dict of the model's named parameters/buffers (as in
    :func:`torch.func.functional_call`). Hyperparameters are cast to the dtype of ``y``.
    ``stepsize``, ``stepsize_dual`` and ``sigma_denoiser`` must be > 0 and ``lambda_reg`` >= 0
    (checked at construction).
    """

    _api = "unroll.unfolded"  # the API named in error messages (subclasses override)

    def __init__(
        self,
        iteration: str | Callable[..., Algorithm],
        *,
        data_fidelity: Any = None,
        prior: Any = None,
        params_algo: dict | None = None,
        trainable_params: Sequence[str] | None = None,
        max_iter: int = 5,
        DEQ: Any = None,  # noqa: N803
        unfold: bool = True,
        tol: float | None = None,
    ):
        super().__init__()
        from unroll.optim.data_fidelity import L2

        self.iteration = iteration
        self.factory = _resolve(iteration)
        self.data_fidelity = L2() if data_fidelity is None else data_fidelity
        api = self._api
        if prior is None:
            raise ValueError(
                f"{api}: a prior is required, e.g. prior=unroll.optim.PnP(DnCNN())."
            )
        self.prior = prior
        if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 1:
            raise ValueError(f"{api}: max_iter must be an int >= 1, got {max_iter!r}.")
        self.max_iter, self.deq_config, self.unfold, self.tol = max_iter, DEQ, unfold, tol
        self.hyper = _Hyper(api, params_algo or {}, trainable_params or [], max_iter, unfold)
        if DEQ is not None and self.hyper.per_iteration():
            raise ValueError(
                f"{api}: a DEQ has one set of parameters; pass single numbers, not "
                "per-iteration lists."
            )
        deq_factory = _alg.pgd if self.factory is _alg.fista else self.factory
        self.algorithm = (deq_factory if DEQ is not None else self.factory)(
            self.data_fidelity, prior
        )
        self._core = _unfold(self.algorithm, max_iter, deq=DEQ)

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
        params = self.params(y.real.dtype)
        if self.unfold or self.deq_config is not None:
            return self._core(params, y, physics)
        return _alg.run(self.algorithm, y, physics, params, self.max_iter, tol=self.tol)[0]

    def apply(self, params: dict, y: Tensor, physics: Any) -> Tensor:
        """Pure form: ``torch.func.functional_call(self, params, (y, physics))``."""
        return torch.func.functional_call(self, params, (y, physics))


class _Hyper(nn.Module):
    """Holds hyperparameters: trainable ones as parameters, the others as buffers."""

    def __init__(
        self, api: str, params_algo: dict, trainable: Sequence[str], max_iter: int, unfold: bool
    ):
        super().__init__()
        if not isinstance(params_algo, dict):
            raise TypeError(f"{api}: params_algo must be a dict, got {type(params_algo).__name__}.")
        if isinstance(trainable, str):
            raise TypeError(f"{api}: trainable_params must be a list of names, not a str.")
        values = canonical(dict(params_algo))
        unknown = sorted(set(values) - set(HYPERPARAMETERS))
        if unknown:
            raise ValueError(
                f"{api}: unknown parameter(s) {unknown}; known: {list(HYPERPARAMETERS)} "
                "(g_param is an alias of sigma_denoiser)."
            )
        names = [ALIASES.get(n, n) for n in trainable]
        missing = sorted(set(names) - set(values))
        if missing:
            raise ValueError(
                f"{api}: trainable_params {missing} are not set; give them a value "
                "(e.g. stepsize=1.0 or params_algo={'stepsize': 1.0})."
            )
        self.names = list(values)
        self.max_iter = max_iter
        tensors = {name: _as_tensor(api, name, value, max_iter) for name, value in values.items()}
        check_hyperparameters(api, params_algo)  # names the keys as the user spelt them
        for name, t in tensors.items():
            if unfold and name in names:
                self.register_parameter(name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)

    def per_iteration(self) -> bool:
        return any(getattr(self, n).dim() >= 1 for n in self.names)

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
    trainable_params: Sequence[str] | None = None,
    DEQ: Any = None,  # noqa: N803
) -> Unfolded:
    """Build a trainable unfolded network (or DEQ) from an algorithm name.

    Args:
        iteration: ``"GD"``, ``"PGD"``, ``"FISTA"``, ``"HQS"``, ``"ADMM"``, ``"DRS"``,
            ``"PDCP"`` or a factory.
        params_algo: hyperparameters (see :class:`Unfolded`); not mutated.
        data_fidelity: ``f`` (default ``L2()``).
        prior: ``g``.
        max_iter: number of unfolded iterations.
        trainable_params: names of the learnable hyperparameters (default: ``stepsize`` and
            ``lambda_reg`` when given); the prior's network weights are always trainable.
        DEQ: None or a ``DEQConfig``.

    Returns:
        An :class:`Unfolded` module, called as ``model(y, physics)``.

    Example:
        >>> import torch
        >>> from unroll.models import DnCNN
        >>> from unroll.optim import L2, PnP
        >>> from unroll.physics import Denoising
        >>> model = unfolded_builder("HQS", params_algo={"stepsize": 1.0, "g_param": 0.1},
        ...                          trainable_params=["stepsize", "g_param"],
        ...                          data_fidelity=L2(), prior=PnP(DnCNN(depth=3, nf=8)),
        ...                          max_iter=3)
        >>> model(torch.rand(1, 3, 16, 16), Denoising()).shape
        torch.Size([1, 3, 16, 16])
        >>> sorted(n for n, _ in model.named_parameters() if n.startswith("hyper"))
        ['hyper.sigma_denoiser', 'hyper.stepsize']
    """
    params_algo = dict(params_algo) if params_algo is not None else {"stepsize": 1.0}
    if trainable_params is None:
        trainable_params = [n for n in ("stepsize", "lambda_reg") if n in params_algo]
    return Unfolded(
        iteration,
        data_fidelity=data_fidelity,
        prior=prior,
        params_algo=params_algo,
        trainable_params=list(trainable_params),
        max_iter=max_iter,
        DEQ=DEQ,
        unfold=True,
    )
