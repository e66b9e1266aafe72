"""The common shape of every algorithm: ``Algorithm(init, step, output)`` and its runner.

Every algorithm in :mod:`unroll.algorithms` minimises (or, with learned priors, mimics the
minimisation of)

.. math::

    \\min_x \\; f(x; y, A) + \\lambda\\, g(x)

where ``f`` is a data fidelity (:class:`unroll.optim.L2`, :class:`unroll.optim.L1`) and ``g`` a
prior (:class:`unroll.optim.PnP`, :class:`unroll.optim.Tikhonov`, ...). An algorithm is three
pure functions over a NamedTuple state and a parameter pytree ``params`` (a dict):

* ``state = init(y, physics, params)``
* ``state = step(state, y, physics, params_k)``
* ``x = output(state)``

Parameter keys read by the algorithms: ``"stepsize"`` (required), ``"lambda_reg"`` (default 1),
``"sigma_denoiser"`` (alias ``"g_param"``, used by learned priors), ``"beta"`` (relaxation,
default 1), ``"stepsize_dual"`` (PDHG) and ``"prior"`` (the prior's network weights, a dict
passed to :func:`torch.func.functional_call`). An algorithm may declare the keys it reads
(:attr:`Algorithm.param_names`); :func:`run` and :func:`unroll.unfolded.unfold` reject any
other key, suggesting the closest known name (``"lamda_reg"`` → did you mean ``"lambda_reg"``).

Per-iteration parameters are explicit: a key named in ``per_iteration`` (an argument of
:func:`run` and :func:`unroll.unfolded.unfold`) holds one entry per iteration along its leading
dimension, and iteration ``k`` reads ``params[key][k]``; every other value is shared by all
iterations whatever its shape (a ``(C, 1, 1)`` tensor is one per-channel value, never read as
one value per iteration):

.. code-block:: text

    p_k[key] = params[key][k]    if key in per_iteration
    p_k[key] = params[key]       otherwise
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from unroll import tree
from unroll._host import host_any as _host_any
from unroll._host import try_bool as _try_bool
from unroll._typing import PhysicsLike, PyTree

if TYPE_CHECKING:
    from unroll.equilibrium import AndersonAccelerationConfig

PRIOR_KEY = "prior"
ALIASES = {"g_param": "sigma_denoiser", "lambda": "lambda_reg"}
"""DeepInverse's names of some keys: ``g_param`` (its prior parameter) and ``lambda`` (its
``params_algo`` key of the regularisation weight)."""
HYPERPARAMETERS = ("stepsize", "lambda_reg", "sigma_denoiser", "beta", "stepsize_dual")
STANDARD_PARAMS = (*HYPERPARAMETERS, PRIOR_KEY)
"""The keys an :class:`Algorithm` that declares no ``param_names`` may read."""
POSITIVE = ("stepsize", "stepsize_dual", "sigma_denoiser")
"""Hyperparameters that must be > 0 (``lambda_reg`` must be >= 0; ``beta`` is free). All
hyperparameters must be finite."""


class Algorithm(NamedTuple):
    """An iterative algorithm as three pure functions (see the module docstring).

    Attributes:
        init: ``(y, physics, params) -> state``.
        step: ``(state, y, physics, params_k) -> state``; one iteration.
        output: ``state -> x``; the current estimate.
        param_names: the parameter keys ``step`` reads (canonical names; their aliases, such
            as ``g_param``, are accepted too), or None for :data:`STANDARD_PARAMS`.
            :func:`run` and :func:`unroll.unfolded.unfold` reject any other key.
        equilibrium: the algorithm a deep equilibrium model of this one runs, when its own
            state has no fixed point (FISTA's momentum counter grows forever: its DEQ runs
            :func:`pgd`, which has the same fixed points); None: this algorithm itself.
        warm_start: ``(x0, aux) -> state``: the state whose estimate is ``x0`` (``aux``: the
            second variable of DeepInverse's ``(x0, z0)`` initialisations, e.g. ADMM's dual or
            DRS's governing sequence, or None for the algorithm's default), used by
            ``init=`` of :func:`initial_state`; None: the algorithm takes no such start.

    Example:
        >>> import torch
        >>> from unroll.physics import Denoising
        >>> damped = Algorithm(  # x_{k+1} = x_k - γ (x_k - y): a custom algorithm
        ...     init=lambda y, physics, p: y * 0,
        ...     step=lambda x, y, physics, p: x - p["gamma"] * (x - y),
        ...     output=lambda x: x,
        ...     param_names=("gamma",))
        >>> x, _ = run(damped, torch.ones(1, 2), Denoising(), {"gamma": 0.5}, 3)
        >>> x
        tensor([[0.8750, 0.8750]])
    """

    init: Callable[[torch.Tensor, PhysicsLike, dict], PyTree]
    step: Callable[[PyTree, torch.Tensor, PhysicsLike, dict], PyTree]
    output: Callable[[PyTree], torch.Tensor]
    param_names: tuple[str, ...] | None = None
    equilibrium: Algorithm | None = None
    warm_start: Callable[[torch.Tensor, PyTree], PyTree] | None = None


class RunInfo(NamedTuple):
    """Diagnostics of :func:`run`.

    Attributes:
        num_iter: iterations performed (0-dim tensor).
        residual: per-sample relative change of the state ``‖s_k − s_{k−1}‖ / ‖s_{k−1}‖`` at the
            end, ``(B,)``.
        converged: per-sample ``residual <= tol`` (all False when ``tol`` is None), ``(B,)``.
        residual_trace: ``(num_iter, B)`` residuals when ``trace=True``, else None.
        cost_trace: ``(num_iter, B)`` values of ``cost`` when ``trace=True`` and a ``cost`` is
            given, else None.
    """

    num_iter: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    residual_trace: torch.Tensor | None
    cost_trace: torch.Tensor | None


# --------------------------------------------------------------------------- parameters
def canonical(params: dict, api: str = "unroll.algorithms") -> dict:
    """Rename aliases (``g_param`` → ``sigma_denoiser``) in a parameter dict (a new dict).

    Args:
        params: a parameter dict (not mutated).
        api: the API named in error messages.

    Returns:
        A new dict with canonical keys.

    Example:
        >>> canonical({"g_param": 0.1, "stepsize": 1.0})
        {'sigma_denoiser': 0.1, 'stepsize': 1.0}
    """
    if not isinstance(params, dict):
        raise TypeError(
            f"{api}: params must be a dict such as {{'stepsize': 1.0}}, got "
            f"{type(params).__name__}."
        )
    out, given = {}, {}
    for key, value in params.items():
        name = ALIASES.get(key, key)
        if name in out:
            raise ValueError(
                f"{api}: both '{given[name]}' and '{key}' were given, two names of "
                f"'{name}'; pass one."
            )
        out[name], given[name] = value, key
    return out


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name`` (a likely misspelling), or None.

    Example:
        >>> closest("lamda_reg", ["stepsize", "lambda_reg"])
        'lambda_reg'
    """
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def known_params(algorithm: Algorithm) -> tuple[str, ...]:
    """The keys ``algorithm`` accepts: its ``param_names`` (or :data:`STANDARD_PARAMS`) and
    their aliases.

    Example:
        >>> from unroll.algorithms import pgd
        >>> from unroll.optim import L2, Tikhonov
        >>> known_params(pgd(L2(), Tikhonov()))
        ('stepsize', 'lambda_reg', 'sigma_denoiser', 'prior', 'g_param', 'lambda')
    """
    names = algorithm.param_names if algorithm.param_names is not None else STANDARD_PARAMS
    return (*names, *(alias for alias, name in ALIASES.items() if name in names))


def check_keys(api: str, keys: Iterable[str], known: Collection[str], what: str) -> None:
    """Raise a ValueError naming ``api`` for the first key not in ``known``.

    Args:
        api: the API named in the message.
        keys: the keys given (e.g. a params dict).
        known: the accepted keys.
        what: what the keys are, for the message (e.g. ``"parameter"``).

    Example:
        >>> check_keys("api", ["lamda_reg"], ["stepsize", "lambda_reg"], "parameter")
        Traceback (most recent call last):
        ...
        ValueError: api: unknown parameter 'lamda_reg' (did you mean 'lambda_reg'?); known: ...
    """
    for key in keys:
        if not isinstance(key, str) or key not in known:
            match = closest(key, known) if isinstance(key, str) else None
            hint = f" (did you mean '{match}'?)" if match else ""
            raise ValueError(
                f"{api}: unknown {what} {key!r}{hint}; known: {list(known)}. Fix or remove it."
            )


def per_iteration_names(
    api: str, per_iteration: str | Collection[str], known: Collection[str]
) -> tuple[str, ...]:
    """Validate ``per_iteration`` (one name or a collection of names) against ``known``.

    Args:
        api: the API named in error messages.
        per_iteration: a parameter name or a collection of names (aliases accepted).
        known: the accepted keys (see :func:`known_params`).

    Returns:
        The canonical names, without repeats, in the order given.

    Example:
        >>> per_iteration_names("api", "g_param", ("stepsize", "sigma_denoiser", "g_param"))
        ('sigma_denoiser',)
    """
    if isinstance(per_iteration, str):
        per_iteration = (per_iteration,)
    if not isinstance(per_iteration, (tuple, list, set, frozenset)) or not all(
        isinstance(n, str) for n in per_iteration
    ):
        raise TypeError(
            f"{api}: per_iteration must be a tuple of parameter names such as ('stepsize',), "
            f"got {per_iteration!r}."
        )
    check_keys(api, per_iteration, known, "per_iteration name")
    return tuple(dict.fromkeys(ALIASES.get(n, n) for n in per_iteration))


def check_per_iteration(api: str, params: dict, names: Collection[str], num_iter: int) -> None:
    """Raise a ValueError naming ``api`` unless every leaf of ``params[name]``, ``name`` in
    ``names``, is a tensor with leading dimension ``num_iter`` (shapes only: no host sync).

    Example:
        >>> check_per_iteration("api", {"stepsize": torch.ones(4)}, ("stepsize",), 5)
        Traceback (most recent call last):
        ...
        ValueError: api: per-iteration parameter 'stepsize' needs leading dimension max_iter=5 ...
    """
    for name in names:
        if name not in params:
            raise ValueError(
                f"{api}: per_iteration names '{name}' but params has no such key; add "
                f"params['{name}'] (leading dimension {num_iter}) or drop it from per_iteration."
            )
        for leaf in tree.leaves(params[name]):
            shape = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            if not isinstance(leaf, torch.Tensor) or leaf.dim() == 0 or leaf.shape[0] != num_iter:
                raise ValueError(
                    f"{api}: per-iteration parameter '{name}' needs leading dimension "
                    f"max_iter={num_iter} (one entry per iteration), got {shape}; pass a tensor "
                    f"of {num_iter} values such as torch.full(({num_iter},), 1.0), or drop "
                    f"'{name}' from per_iteration to share one value."
                )


def get(params: dict, name: str, default: Any = None) -> Any:
    """``params[name]`` (through aliases), ``default`` when absent; raises when required."""
    for key in (name, *[a for a, c in ALIASES.items() if c == name]):
        if key in params:
            return params[key]
    if default is None:
        raise ValueError(
            f"unroll.algorithms: parameter '{name}' is required; add it to params "
            f"(e.g. params['{name}'] = 1.0)."
        )
    return default


def _out_of_range(value: Any, strict: bool, tensors: bool) -> bool:
    """Whether a number / list / real tensor has an entry ``<= 0`` (strict) or ``< 0`` (NaN
    counts as out of range). Tensors are read on the host only when ``tensors``; a check
    that cannot run on the host (e.g. under some ``torch.func`` transforms) is skipped."""
    if isinstance(value, torch.Tensor):
        if not tensors or value.is_complex():
            return False
        ok = value.detach() > 0 if strict else value.detach() >= 0
        try:
            return _host_any(~ok)
        except RuntimeError:
            return False
    if isinstance(value, (list, tuple)):
        return any(_out_of_range(v, strict, tensors) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return not (value > 0 if strict else value >= 0)
    return False


def _non_finite(value: Any, tensors: bool) -> bool:
    """Whether a number / list / real tensor has an infinite or NaN entry (tensors read on the
    host only when ``tensors``; skipped where the host cannot read them)."""
    if isinstance(value, torch.Tensor):
        if not tensors or not value.is_floating_point():
            return False
        try:
            return _host_any(~torch.isfinite(value.detach()))
        except RuntimeError:
            return False
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v, tensors) for v in value)
    if isinstance(value, float):
        return not math.isfinite(value)
    return False


def check_hyperparameters(api: str, params: dict, *, tensors: bool = True) -> None:
    """Raise a ValueError naming ``api`` when a hyperparameter is infinite or NaN, when
    ``stepsize`` / ``stepsize_dual`` / ``sigma_denoiser`` is not > 0 or ``lambda_reg`` is
    negative (numbers, lists, and, when ``tensors``, tensors: a one-time host read, for
    construction time).

    Example:
        >>> check_hyperparameters("api", {"stepsize": float("inf")})
        Traceback (most recent call last):
        ...
        ValueError: api: stepsize must be finite, got inf; pass a finite value, e.g. stepsize=1.0.
    """
    for key, value in params.items():
        name = ALIASES.get(key, key)
        if name in HYPERPARAMETERS and _non_finite(value, tensors):
            raise ValueError(
                f"{api}: {key} must be finite, got {value!r}; pass a finite value, e.g. {key}=1.0."
            )
        if name in POSITIVE and _out_of_range(value, True, tensors):
            raise ValueError(
                f"{api}: {key} must be > 0 (every entry), got {value!r}; pass a positive "
                f"value, e.g. {key}=1.0."
            )
        if name == "lambda_reg" and _out_of_range(value, False, tensors):
            raise ValueError(
                f"{api}: lambda_reg must be >= 0 (every entry), got {value!r}; pass a "
                "non-negative regularisation weight."
            )


def params_at(params: dict, k: int, per_iteration: Collection[str] = ()) -> dict:
    """The parameters of iteration ``k``: ``params[key][k]`` for ``key`` in ``per_iteration``
    (every leaf indexed along its leading dimension), the other values as they are.

    Args:
        params: the parameter dict, canonical keys (see :func:`canonical`).
        k: iteration index.
        per_iteration: the keys that hold one entry per iteration.

    Returns:
        A new dict of the same keys.

    Example:
        >>> p = params_at({"stepsize": torch.tensor([0.1, 0.2]), "lambda_reg": torch.ones(2)},
        ...               1, per_iteration=("stepsize",))
        >>> p["stepsize"], p["lambda_reg"]
        (tensor(0.2000), tensor([1., 1.]))
    """
    if isinstance(per_iteration, int):
        raise TypeError(
            "unroll.algorithms.params_at: the third argument is the names of the per-iteration "
            "parameters, e.g. ('stepsize',); a leading dimension no longer marks one."
        )
    return {key: _at(key, value, k, per_iteration) for key, value in params.items()}


def _at(key: str, value: PyTree, k: int, per_iteration: Collection[str]) -> PyTree:
    if key == PRIOR_KEY and isinstance(value, (list, tuple)):
        return value[k]  # untied layers: one weight dict per iteration
    return tree.map(lambda x: x[k], value) if key in per_iteration else value


def as_layers(
    api: str, algorithm: Algorithm | Sequence[Algorithm], num_iter: int
) -> tuple[Algorithm, ...]:
    """One :class:`Algorithm` per iteration: ``algorithm`` repeated (weights tied), or a list /
    tuple of ``num_iter`` algorithms (untied layers; one element: tied).

    Example:
        >>> from unroll.algorithms import pgd
        >>> from unroll.optim import L2, Tikhonov
        >>> len(as_layers("api", pgd(L2(), Tikhonov()), 3))
        3
    """
    if isinstance(algorithm, Algorithm):
        return (algorithm,) * num_iter
    if isinstance(algorithm, (list, tuple)) and all(isinstance(a, Algorithm) for a in algorithm):
        if len(algorithm) == 1:
            return tuple(algorithm) * num_iter
        if len(algorithm) == num_iter:
            return tuple(algorithm)
        raise ValueError(
            f"{api}: {len(algorithm)} algorithms (untied layers) but max_iter={num_iter}; give "
            f"one per iteration ({num_iter}) or a single algorithm."
        )
    raise TypeError(
        f"{api}: algorithm must be an unroll.algorithms.Algorithm (e.g. "
        f"unroll.algorithms.pgd(L2(), prior)) or a list of them (one per iteration), got "
        f"{type(algorithm).__name__}."
    )


def layer_keys(layers: Iterable[Algorithm]) -> tuple[str, ...]:
    """The keys accepted by any of ``layers`` (see :func:`known_params`), in order."""
    return tuple(dict.fromkeys(n for a in layers for n in known_params(a)))


def check_prior_layers(api: str, params: dict, num_iter: int) -> None:
    """Raise a ValueError naming ``api`` unless ``params["prior"]``, when a list or tuple
    (untied layers: one weight dict per iteration), has ``num_iter`` entries."""
    weights = params.get(PRIOR_KEY)
    if isinstance(weights, (list, tuple)) and len(weights) != num_iter:
        raise ValueError(
            f"{api}: params['prior'] holds {len(weights)} weight dicts (untied layers) but "
            f"max_iter={num_iter}; give one per iteration, or one dict shared by all."
        )


def initial_state(
    algorithm: Algorithm,
    y: torch.Tensor,
    physics: PhysicsLike,
    params: dict,
    init: PyTree | Callable[[torch.Tensor, PhysicsLike], PyTree] = None,
) -> PyTree:
    """The first state of ``algorithm``, from ``init`` as DeepInverse's ``forward(init=...)``.

    ``init`` may be None (``algorithm.init``: ``x₀ = Aᵀy``), a tensor ``x₀``, a tuple
    ``(x₀,)`` or ``(x₀, z₀)`` (``z₀`` the second variable: ADMM's dual, DRS's governing
    sequence, FISTA's extrapolated point), a dict ``{"est": (x₀, z₀)}``, a callable
    ``init(y, physics)`` returning one of these, or a state of the algorithm (a NamedTuple
    such as :class:`~unroll.algorithms.pgd.PGDState`) used as it is.

    Args:
        algorithm: the algorithm (its :attr:`Algorithm.warm_start` builds the state).
        y: measurements.
        physics: the forward operator.
        params: the parameters of the first iteration.
        init: the initialisation (see above).

    Returns:
        The state.

    Example:
        >>> import torch
        >>> from unroll.algorithms import admm
        >>> from unroll.optim import L2, Tikhonov
        >>> from unroll.physics import Denoising
        >>> x0 = torch.ones(1, 2)
        >>> initial_state(admm(L2(), Tikhonov()), x0, Denoising(), {}, init=(x0, 2 * x0)).u
        tensor([[2., 2.]])
    """
    api = "unroll.algorithms.initial_state"
    if init is None:
        return algorithm.init(y, physics, params)
    if callable(init) and not isinstance(init, torch.Tensor):
        init = init(y, physics)
    if hasattr(init, "_fields"):  # a state (NamedTuple)
        return init
    if isinstance(init, dict):
        if "est" not in init:
            raise ValueError(
                f"{api}: a dict init must be DeepInverse's {{'est': (x0, z0)}}, got keys "
                f"{sorted(init)}."
            )
        init = init["est"]
    if isinstance(init, torch.Tensor):
        init = (init,)
    if (
        not isinstance(init, (tuple, list))
        or not 1 <= len(init) <= 2
        or not all(isinstance(t, torch.Tensor) or t is None for t in init)
        or not isinstance(init[0], torch.Tensor)
    ):
        raise TypeError(
            f"{api}: init must be a tensor x0, a tuple (x0,) or (x0, z0) of tensors, a dict "
            f"{{'est': (x0, z0)}}, a callable init(y, physics) returning one, or a state of the "
            f"algorithm; got {type(init).__name__}."
        )
    if algorithm.warm_start is None:
        raise TypeError(
            f"{api}: this algorithm has no warm_start, so it cannot start from an estimate x0; "
            "pass its full state (a NamedTuple) as init, or give the Algorithm a warm_start."
        )
    return algorithm.warm_start(init[0], init[1] if len(init) == 2 else None)


class AndersonMixer:
    r"""Anderson acceleration of an algorithm's iterations, one iteration at a time.

    At iteration ``k`` (from 0) with the state ``s_k`` and its image ``T(s_k)`` (one step),
    the array leaves (``dim >= 2``) of both are flattened per sample into ``x_k`` and
    ``f_k``, kept for the last ``m = history_size`` iterations, and the next state's leaves
    are replaced by

    .. math:: x_{k+1} = \sum_i \alpha_i \big(\beta f_i + (1 - \beta) x_i\big),\qquad
              \alpha = \arg\min_{\sum_i\alpha_i = 1} \Big\|\sum_i \alpha_i (f_i - x_i)
              \Big\|^2 + \lambda\|\alpha\|^2,

    ``λ = eps · mean_i ‖f_i − x_i‖²`` (relative, see :func:`unroll.anderson`); per-sample
    scalars (FISTA's momentum) are taken from ``T(s_k)``. With ``full_backprop=False`` the
    history is detached and gradients flow through the current iteration only (as
    DeepInverse); with True through every iterate kept. A new mixer starts each run.

    Args:
        config: an :class:`unroll.optim.AndersonAccelerationConfig` (``history_size``,
            ``beta``, ``eps``, ``full_backprop``).
    """

    def __init__(self, config: AndersonAccelerationConfig):
        self.m, self.beta = config.history_size, config.beta
        self.eps, self.full = config.eps, config.full_backprop
        self.xs: torch.Tensor | None = None
        self.fs: torch.Tensor | None = None

    def __call__(self, k: int, old: PyTree, new: PyTree) -> PyTree:
        from unroll.fixed_point import _Flat, _mixing_weights

        old_leaves = tree.leaves(old)
        new_leaves, spec = tree.flatten(new)
        idx = [i for i, t in enumerate(new_leaves) if isinstance(t, torch.Tensor) and t.dim() >= 2]
        if not idx:
            return new
        flat = _Flat([new_leaves[i] for i in idx], batched=True)
        x = flat.to_mat([old_leaves[i] for i in idx])
        fx = flat.to_mat([new_leaves[i] for i in idx])
        if self.xs is None or self.fs is None:
            self.xs = x.new_zeros(x.shape[0], self.m, x.shape[1])
            self.fs = x.new_zeros(x.shape[0], self.m, x.shape[1])
        slot = torch.tensor([k % self.m], device=x.device)
        xs = self.xs.index_copy(1, slot, x.unsqueeze(1))
        fs = self.fs.index_copy(1, slot, fx.unsqueeze(1))
        self.xs, self.fs = (xs, fs) if self.full else (xs.detach(), fs.detach())
        n = min(k + 1, self.m)
        xs, fs = xs[:, :n], fs[:, :n]
        floor = torch.full((), torch.finfo(xs.dtype).tiny ** 0.5, dtype=xs.dtype, device=x.device)
        alpha = _mixing_weights(fs - xs, torch.ones_like(xs[:, :, :1]), self.eps, floor)
        mixed = (alpha.transpose(1, 2) * (self.beta * fs + (1 - self.beta) * xs)).sum(dim=1)
        for i, leaf in zip(idx, flat.from_mat(mixed)):
            new_leaves[i] = leaf
        return tree.unflatten(spec, new_leaves)


# --------------------------------------------------------------------------- runner
def check_count(api: str, name: str, value: Any) -> None:
    """Raise a TypeError (not an int, or a bool) or ValueError (< 1) naming ``api``.

    Example:
        >>> check_count("api", "max_iter", True)
        Traceback (most recent call last):
        ...
        TypeError: api: max_iter must be an int >= 1, got True (a bool); pass e.g. max_iter=5.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "a bool" if isinstance(value, bool) else type(value).__name__
        raise TypeError(
            f"{api}: {name} must be an int >= 1, got {value!r} ({kind}); pass e.g. {name}=5."
        )
    if value < 1:
        raise ValueError(f"{api}: {name} must be an int >= 1, got {value!r}; pass e.g. {name}=5.")


def check_tol(api: str, tol: Any) -> None:
    """Raise a ValueError naming ``api`` unless ``tol`` is None or a finite number > 0.

    Example:
        >>> check_tol("api", 0.0)
        Traceback (most recent call last):
        ...
        ValueError: api: tol must be a finite number > 0 or None, got 0.0; pass e.g. tol=1e-5.
    """
    number = isinstance(tol, (int, float)) and not isinstance(tol, bool)
    if tol is not None and not (number and 0 < tol < math.inf):
        raise ValueError(
            f"{api}: tol must be a finite number > 0 or None, got {tol!r}; pass e.g. tol=1e-5."
        )


def _check_run_args(algorithm: Any, max_iter: int, tol: float | None, check_every: int) -> None:
    api = "unroll.algorithms.run"
    if not isinstance(algorithm, (Algorithm, list, tuple)):
        raise TypeError(
            f"{api}: algorithm must be an unroll.algorithms.Algorithm (e.g. "
            f"unroll.algorithms.pgd(L2(), prior)), got {type(algorithm).__name__}."
        )
    check_count(api, "max_iter", max_iter)
    check_tol(api, tol)
    check_count(api, "check_every", check_every)


def run(
    algorithm: Algorithm | Sequence[Algorithm],
    y: torch.Tensor,
    physics: PhysicsLike,
    params: dict,
    max_iter: int,
    *,
    tol: float | None = None,
    check_every: int = 10,
    trace: bool = False,
    cost: Callable[[torch.Tensor, torch.Tensor, PhysicsLike, dict], torch.Tensor] | None = None,
    init: PyTree = None,
    per_iteration: str | Collection[str] = (),
    acceleration: AndersonAccelerationConfig | None = None,
) -> tuple[torch.Tensor, RunInfo]:
    """Run ``algorithm`` for ``max_iter`` iterations, with optional early stopping and traces.

    Iterates ``state_{k+1} = step(state_k, y, physics, params_k)`` from
    ``state_0 = init(y, physics, params_0)``. With ``tol``, a sample whose relative change
    ``‖s_{k+1} − s_k‖ / ‖s_k‖`` of the state (all its iterates) falls to ``tol`` or below
    freezes (per-sample convergence), and
    the loop stops once every sample has converged; the test synchronises with the device only
    every ``check_every`` iterations, and never under ``torch.func.vmap`` (which then runs to
    ``max_iter`` with the same masked updates).

    Args:
        algorithm: an :class:`Algorithm`, or a list of ``max_iter`` of them (untied layers:
            iteration ``k`` runs ``algorithm[k].step``; ``params["prior"]`` may then be a list
            of ``max_iter`` weight dicts, iteration ``k`` reading the ``k``-th).
        y: measurements, leading dimension = batch.
        physics: the forward operator.
        params: parameter dict; keys outside the algorithm's :attr:`Algorithm.param_names`
            raise. Values are shared by all iterations, whatever their shape, except those named
            in ``per_iteration``.
        max_iter: number of iterations (>= 1).
        tol: relative-change tolerance for early stopping, or None (run ``max_iter``).
        check_every: iterations between two convergence checks on the host.
        trace: record per-iteration residuals (and ``cost``) in the returned info.
        cost: optional ``(x, y, physics, params_k) -> (B,)`` objective, traced when ``trace``.
        init: optional initial state, replacing ``algorithm.init``.
        per_iteration: keys of ``params`` that hold one value per iteration along their
            leading dimension (``max_iter`` long): iteration ``k`` reads ``params[key][k]``.
        acceleration: None, or an :class:`unroll.optim.AndersonAccelerationConfig`: Anderson
            acceleration of the iterations (see :class:`AndersonMixer`).

    Returns:
        ``(x, RunInfo)`` with ``x = output(state)``.

    Example:
        >>> import torch
        >>> from unroll.algorithms import pgd, run
        >>> from unroll.optim import L2, L1Prior
        >>> from unroll.physics import Denoising
        >>> y = torch.rand(2, 1, 8, 8)
        >>> x, info = run(pgd(L2(), L1Prior()), y, Denoising(), {"stepsize": 1.0}, 100, tol=1e-6)
        >>> bool(info.converged.all()), int(info.num_iter) < 100
        (True, True)
        >>> steps = torch.tensor([1.0, 0.5, 0.25])  # one step size per iteration
        >>> x, _ = run(pgd(L2(), L1Prior()), y, Denoising(), {"stepsize": steps}, 3,
        ...            per_iteration=("stepsize",))
    """
    api = "unroll.algorithms.run"
    _check_run_args(algorithm, max_iter, tol, check_every)
    layers = as_layers(api, algorithm, max_iter)
    known = layer_keys(layers)
    names = per_iteration_names(api, per_iteration, known)
    if not isinstance(params, dict):
        params = canonical(params, api)  # raises the TypeError
    check_keys(api, params, known, "parameter")
    params = canonical(params, api)
    check_per_iteration(api, params, names, max_iter)
    check_prior_layers(api, params, max_iter)
    check_hyperparameters(api, params, tensors=False)
    mixer = AndersonMixer(acceleration) if acceleration is not None else None
    first = layers[0]
    state = first.init(y, physics, params_at(params, 0, names)) if init is None else init
    x = first.output(state)
    if x.dim() == 0:
        raise ValueError("unroll.algorithms.run: the estimate needs a leading batch dimension.")
    batch = x.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=x.device)
    residual = torch.full((batch,), float("inf"), dtype=x.real.dtype, device=x.device)
    residuals, costs = [], []
    k = 0
    while k < max_iter:
        p_k = params_at(params, k, names)
        algorithm = layers[k]
        new_state = algorithm.step(state, y, physics, p_k)
        if mixer is not None:
            new_state = mixer(k, state, new_state)
        new_x = algorithm.output(new_state)
        if tol is not None or trace:
            residual = _relative_change(new_state, state)
        if tol is not None:
            residual = torch.where(done, torch.zeros_like(residual), residual)
            new_state = tree.batch_where(done, state, new_state)
            new_x = algorithm.output(new_state)
            done = done | (residual <= tol)
        state, x = new_state, new_x
        k += 1
        if trace:
            residuals.append(residual)
            if cost is not None:
                costs.append(cost(x, y, physics, p_k))
        if tol is not None and k % check_every == 0 and _try_bool(done.all()):
            break
    info = RunInfo(
        num_iter=torch.tensor(k),
        residual=residual,
        converged=done if tol is not None else torch.zeros_like(done),
        residual_trace=torch.stack(residuals) if trace else None,
        cost_trace=torch.stack(costs) if trace and cost is not None else None,
    )
    return x, info


def _relative_change(new: PyTree, old: PyTree) -> torch.Tensor:
    """Per-sample ``‖s_new − s_old‖ / ‖s_old‖`` over the state's array leaves (``dim >= 2``;
    per-sample scalars such as FISTA's momentum ``t`` are not iterates and are left out)."""
    new = [t for t in tree.leaves(new) if t.dim() >= 2]
    old = [t for t in tree.leaves(old) if t.dim() >= 2]
    diff = tree.batch_norm(tree.sub(new, old))
    scale = tree.batch_norm(old)
    return diff / torch.where(scale > 0, scale, torch.ones_like(scale))
