"""Convenience classes ``GD, PGD, FISTA, HQS, ADMM, DRS, PDCP, MD, PMD`` with the seeds' keywords.

Each is an :class:`unroll.unfolded.Unfolded` module: ``model(y, physics)``; ``unfold=True``
makes the listed ``trainable_params`` learnable (a prior's network is always trainable);
``DEQ=DEQConfig(...)`` turns it into a deep-equilibrium model whose ``trainable_params`` are
learnable too (with or without ``unfold=True``, as in DeepInverse); ``unfold=False`` and no
``DEQ`` (the default) runs the classical algorithm with early stopping at ``tol`` (the relative
change of the iterate; DeepInverse's ``thres_conv=`` is the same threshold,
``crit_conv="residual"`` its only rule, and ``early_stop=False`` runs all ``max_iter``
iterations; ``verbose=True`` prints the iterations run and how the solver stopped).

Hyperparameters follow DeepInverse's list rule: a number or a tensor of any shape is one value
shared by all iterations (``g_param=torch.tensor([[1.0]])`` is one non-scalar value); a list
or tuple of ``max_iter`` values holds one value per iteration; a one-element list is one
shared value; a list of another length raises. ``params_algo={...}`` (DeepInverse's keys
``stepsize``, ``lambda``, ``g_param``, ``beta``, ...) replaces those keywords. ``prior`` and
``data_fidelity`` may be lists of ``max_iter`` (untied layers); ``g_first``,
``anderson_acceleration`` and ``custom_init`` are those of :class:`unroll.unfolded.Unfolded`;
``model(y, physics, init=x0)`` starts from ``x0``.

Example:
    >>> import torch
    >>> from unroll.models import DnCNN
    >>> from unroll.optim import L2, PGD, PnP
    >>> from unroll.physics import Denoising
    >>> model = PGD(unfold=True, data_fidelity=L2(), prior=PnP(DnCNN(depth=3, nf=8)),
    ...             stepsize=[1.0, 0.9, 0.8], sigma_denoiser=0.1, lambda_reg=1, max_iter=3,
    ...             trainable_params=["stepsize", "sigma_denoiser", "lambda_reg"])
    >>> x_hat = model(torch.rand(1, 3, 16, 16), Denoising())
    >>> x_hat.shape, model.hyper.per_iteration_names
    (torch.Size([1, 3, 16, 16]), ('stepsize',))
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from unroll._typing import DataFidelityLike, DistanceFidelityLike, PhysicsLike, PriorLike, PyTree
from unroll.algorithms.base import Algorithm, closest
from unroll.algorithms.md import Bregman, md, pmd
from unroll.algorithms.pdhg import pdhg
from unroll.equilibrium import AndersonAccelerationConfig, DEQConfig
from unroll.unfolded import Unfolded

_UNSET = object()
_KEYWORDS = (
    "data_fidelity",
    "prior",
    "stepsize",
    "lambda_reg",
    "sigma_denoiser",
    "g_param",
    "beta",
    "stepsize_dual",
    "max_iter",
    "unfold",
    "trainable_params",
    "DEQ",
    "tol",
    "params_algo",
    "g_first",
    "anderson_acceleration",
    "custom_init",
    "early_stop",
    "crit_conv",
    "thres_conv",
    "verbose",
)


def _reject_unknown_keywords(api: str, kwargs: dict, known: Sequence[str]) -> None:
    """Raise a TypeError naming ``api`` for the first unexpected keyword, with the closest
    known keyword (Python's own message suggests none)."""
    for key in kwargs:
        match = closest(key, known)
        hint = f" (did you mean '{match}'?)" if match else ""
        raise TypeError(f"{api}: unexpected keyword '{key}'{hint}; known: {list(known)}.")


def _stopping_tol(
    api: str, tol: float | None, early_stop: Any, crit_conv: Any, thres_conv: Any
) -> float | None:
    """The early-stopping ``tol`` from unroll's keyword and DeepInverse's: ``thres_conv`` is
    ``tol`` under its name, ``crit_conv="residual"`` is the only rule (the relative change of
    the iterate, DeepInverse's ``‖x_k − x_{k−1}‖ / (‖x_k‖ + 1e-6)`` without the 1e-6), and
    ``early_stop=False`` runs all ``max_iter`` iterations (DeepInverse's default; unroll's
    default stops at ``tol``)."""
    if crit_conv != "residual":
        raise ValueError(
            f"{api}: crit_conv={crit_conv!r} is not supported; the stopping rule is the relative "
            "change of the iterate (crit_conv='residual'), its threshold tol= (or thres_conv=)."
        )
    if early_stop is not None and not isinstance(early_stop, bool):
        raise TypeError(f"{api}: early_stop must be True, False or None, got {early_stop!r}.")
    if thres_conv is not None:
        if tol not in (None, _DEFAULT_TOL) and tol != thres_conv:
            raise ValueError(
                f"{api}: tol={tol!r} and thres_conv={thres_conv!r} name the same threshold; "
                "pass one of them."
            )
        tol = thres_conv
    if early_stop is False:
        return None
    return tol


_DEFAULT_TOL = 1e-5


class _Optim(Unfolded):
    iteration_name = ""
    extra: tuple[str, ...] = ()

    @property
    def _api(self) -> str:
        return f"unroll.optim.{type(self).__name__}"

    def _iteration(self) -> str | Callable[..., Algorithm]:
        """The algorithm name, or a factory with this class's options bound, for Unfolded."""
        return self.iteration_name

    def __init__(
        self,
        data_fidelity: DataFidelityLike | Sequence[DataFidelityLike] | None = None,
        prior: PriorLike | Sequence[PriorLike] | None = None,
        *,
        stepsize: float | Tensor | Sequence[float | Tensor] = 1.0,
        lambda_reg: float | Tensor | Sequence[float | Tensor] = 1.0,
        sigma_denoiser: Any = _UNSET,
        g_param: Any = _UNSET,
        beta: Any = _UNSET,
        stepsize_dual: Any = _UNSET,
        max_iter: int = 100,
        unfold: bool = False,
        trainable_params: Sequence[str] | str | None = None,
        DEQ: DEQConfig | bool | None = None,  # noqa: N803
        tol: float | None = _DEFAULT_TOL,
        params_algo: dict | None = None,
        g_first: bool = False,
        anderson_acceleration: AndersonAccelerationConfig | bool | None = None,
        custom_init: PyTree | Callable[[Tensor, PhysicsLike], PyTree] = None,
        early_stop: bool | None = None,
        crit_conv: str = "residual",
        thres_conv: float | None = None,
        verbose: bool = False,
        **kwargs: Any,
    ):
        name = type(self).__name__
        api = f"unroll.optim.{name}"
        known = [k for k in _KEYWORDS if k not in ("beta", "stepsize_dual") or k in self.extra]
        _reject_unknown_keywords(api, kwargs, known)
        tol = _stopping_tol(api, tol, early_stop, crit_conv, thres_conv)
        if not isinstance(verbose, bool):
            raise TypeError(f"{api}: verbose must be True or False, got {verbose!r}.")
        if sigma_denoiser is not _UNSET and g_param is not _UNSET:
            raise ValueError(f"{api}: pass sigma_denoiser or g_param, not both.")
        for key, value in (("beta", beta), ("stepsize_dual", stepsize_dual)):
            if value is not _UNSET and key not in self.extra:
                raise TypeError(f"{api}: unexpected keyword '{key}'.")
        params = {"stepsize": stepsize, "lambda_reg": lambda_reg}
        sigma = sigma_denoiser if sigma_denoiser is not _UNSET else g_param
        if sigma is not _UNSET:
            params["sigma_denoiser"] = sigma
        for key, value in (("beta", beta), ("stepsize_dual", stepsize_dual)):
            if value is not _UNSET:
                params[key] = value
        if params_algo is not None:  # DeepInverse: it overrides the keywords
            if not isinstance(params_algo, dict):
                raise TypeError(
                    f"{api}: params_algo must be a dict such as {{'stepsize': 1.0, "
                    f"'lambda': 0.1}}, got {type(params_algo).__name__}."
                )
            params = self._take_operator(dict(params_algo))
        if trainable_params is None:
            trainable_params = [n for n in params if n in ("stepsize", "lambda_reg", "lambda")]
        super().__init__(
            self._iteration(),
            data_fidelity=data_fidelity,
            prior=prior,
            params_algo=params,
            trainable_params=trainable_params,
            max_iter=max_iter,
            DEQ=DEQ,
            unfold=unfold,
            tol=tol,
            g_first=g_first,
            anderson_acceleration=anderson_acceleration,
            custom_init=custom_init,
        )
        self.verbose = verbose  # the classical solver prints its iterations (DeepInverse's)

    def _take_operator(self, params: dict) -> dict:
        """``params_algo`` without the entries that are options of the iteration (PDCP's
        ``K`` / ``K_adjoint``), which are not hyperparameters."""
        return params


class GD(_Optim):
    """Gradient descent (:func:`unroll.algorithms.gd`) as a module."""

    iteration_name = "GD"


class PGD(_Optim):
    """Proximal gradient descent (:func:`unroll.algorithms.pgd`) as a module."""

    iteration_name = "PGD"


class FISTA(_Optim):
    """FISTA (:func:`unroll.algorithms.fista`) as a module."""

    iteration_name = "FISTA"


class HQS(_Optim):
    """Half-quadratic splitting (:func:`unroll.algorithms.hqs`) as a module."""

    iteration_name = "HQS"


class ADMM(_Optim):
    """ADMM (:func:`unroll.algorithms.admm`) as a module; ``beta`` is the relaxation."""

    iteration_name = "ADMM"
    extra = ("beta",)


class DRS(_Optim):
    """Douglas–Rachford (:func:`unroll.algorithms.drs`) as a module; ``beta`` relaxation."""

    iteration_name = "DRS"
    extra = ("beta",)


class PDCP(_Optim):
    """Chambolle–Pock (:func:`unroll.algorithms.pdhg`); ``stepsize`` τ, ``stepsize_dual`` σ,
    ``beta`` the extrapolation θ; ``K`` / ``K_adjoint`` an explicit linear operator and its
    adjoint (as keywords or, as in DeepInverse, in ``params_algo``; default none: the
    splitting on ``A``, see :func:`unroll.algorithms.pdhg`)."""

    iteration_name = "PDCP"
    extra = ("beta", "stepsize_dual")

    def __init__(
        self,
        data_fidelity: DistanceFidelityLike | Sequence[DistanceFidelityLike] | None = None,
        prior: PriorLike | Sequence[PriorLike] | None = None,
        *,
        K: Callable[[Tensor], Tensor] | None = None,  # noqa: N803
        K_adjoint: Callable[[Tensor], Tensor] | None = None,  # noqa: N803
        **kwargs: Any,
    ) -> None:
        self._operator = {"K": K, "K_adjoint": K_adjoint}
        super().__init__(data_fidelity, prior, **kwargs)

    def _take_operator(self, params: dict) -> dict:
        for key in ("K", "K_adjoint"):
            if key in params:
                value = params.pop(key)
                if self._operator[key] is not None and value is not self._operator[key]:
                    raise ValueError(
                        f"{self._api}: {key} given both as a keyword and in params_algo; "
                        "pass it once."
                    )
                self._operator[key] = value
        return params

    def _iteration(self) -> str | Callable[..., Algorithm]:
        if self._operator["K"] is None and self._operator["K_adjoint"] is None:
            return self.iteration_name
        return functools.partial(pdhg, **self._operator)


class MD(_Optim):
    """Mirror descent (:func:`unroll.algorithms.md`) as a module; ``bregman_potential`` φ
    (default :class:`unroll.algorithms.BregmanL2`: gradient descent), DeepInverse's first
    argument."""

    iteration_name = "MD"
    _factory = staticmethod(md)

    def __init__(
        self,
        bregman_potential: Bregman | None = None,
        data_fidelity: DataFidelityLike | Sequence[DataFidelityLike] | None = None,
        prior: PriorLike | Sequence[PriorLike] | None = None,
        **kwargs: Any,
    ) -> None:
        self._potential = bregman_potential
        super().__init__(data_fidelity, prior, **kwargs)

    def _iteration(self) -> str | Callable[..., Algorithm]:
        return functools.partial(type(self)._factory, bregman_potential=self._potential)


class PMD(MD):
    """Proximal mirror descent (:func:`unroll.algorithms.pmd`) as a module;
    ``bregman_potential`` φ (default :class:`unroll.algorithms.BregmanL2`: PGD)."""

    iteration_name = "PMD"
    _factory = staticmethod(pmd)
