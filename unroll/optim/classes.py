"""Convenience classes ``GD, PGD, FISTA, HQS, ADMM, DRS, PDCP`` with the seeds' keywords.

Each is an :class:`unroll.unfolded.Unfolded` module: ``model(y, physics)``; ``unfold=True``
makes the listed ``trainable_params`` learnable (a prior's network is always trainable);
``DEQ=DEQConfig(...)`` turns it into a deep-equilibrium model whose ``trainable_params`` are
learnable too (with or without ``unfold=True``, as in DeepInverse); ``unfold=False`` and no
``DEQ`` (the default) runs the classical algorithm with early stopping at ``tol``.

Hyperparameters follow DeepInverse's rule: a number or a tensor of any shape is one value
shared by all iterations (``g_param=torch.tensor([[1.0]])`` is one non-scalar value); a list
or tuple of ``max_iter`` values holds one value per iteration; a one-element list is one
shared value; a list of another length raises.

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

from collections.abc import Sequence
from typing import Any

from unroll.algorithms.base import closest
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
)


def _reject_unknown_keywords(api: str, kwargs: dict, known: Sequence[str]) -> None:
    """Raise a TypeError naming ``api`` for the first unexpected keyword, with the closest
    known keyword (Python's own message suggests none)."""
    for key in kwargs:
        match = closest(key, known)
        hint = f" (did you mean '{match}'?)" if match else ""
        raise TypeError(f"{api}: unexpected keyword '{key}'{hint}; known: {list(known)}.")


class _Optim(Unfolded):
    iteration_name = ""
    extra: tuple[str, ...] = ()

    @property
    def _api(self) -> str:
        return f"unroll.optim.{type(self).__name__}"

    def __init__(
        self,
        data_fidelity: Any = None,
        prior: Any = None,
        *,
        stepsize: Any = 1.0,
        lambda_reg: Any = 1.0,
        sigma_denoiser: Any = _UNSET,
        g_param: Any = _UNSET,
        beta: Any = _UNSET,
        stepsize_dual: Any = _UNSET,
        max_iter: int = 100,
        unfold: bool = False,
        trainable_params: Sequence[str] | str | None = None,
        DEQ: Any = None,  # noqa: N803
        tol: float | None = 1e-5,
        **kwargs: Any,
    ):
        name = type(self).__name__
        api = f"unroll.optim.{name}"
        known = [k for k in _KEYWORDS if k not in ("beta", "stepsize_dual") or k in self.extra]
        _reject_unknown_keywords(api, kwargs, known)
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
        if trainable_params is None:
            trainable_params = ["stepsize", "lambda_reg"]
        super().__init__(
            self.iteration_name,
            data_fidelity=data_fidelity,
            prior=prior,
            params_algo=params,
            trainable_params=trainable_params,
            max_iter=max_iter,
            DEQ=DEQ,
            unfold=unfold,
            tol=tol,
        )


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
    ``beta`` the extrapolation θ."""

    iteration_name = "PDCP"
    extra = ("beta", "stepsize_dual")
