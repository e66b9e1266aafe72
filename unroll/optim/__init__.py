"""Data fidelities, priors and the convenience algorithm classes.

Data fidelities :class:`L2`, :class:`L1`, :class:`DataFidelity` (from a function); priors
:class:`PnP`, :class:`RED`, :class:`Tikhonov`, :class:`L1Prior`, :class:`L12Prior`,
:class:`TVPrior` (:func:`tv_prox`), :class:`ZeroPrior`, :class:`Prior` (``Prior(g=...)``);
modules :class:`GD`, :class:`PGD`, :class:`FISTA`, :class:`HQS`, :class:`ADMM`, :class:`DRS`,
:class:`PDCP`, :class:`MD`, :class:`PMD`; the wavelet prior :class:`WaveletPrior` (``wavelet``
extra); and :class:`DEQConfig`, :class:`AndersonAccelerationConfig` (re-exported from
:mod:`unroll.equilibrium`).
"""

from unroll.equilibrium import AndersonAccelerationConfig, DEQConfig
from unroll.optim.classes import ADMM, DRS, FISTA, GD, HQS, MD, PDCP, PGD, PMD
from unroll.optim.data_fidelity import L1, L2, DataFidelity, soft_threshold
from unroll.optim.prior import (
    RED,
    L1Prior,
    L12Prior,
    PnP,
    Prior,
    Tikhonov,
    TVPrior,
    TVProxResult,
    ZeroPrior,
    tv_prox,
)
from unroll.optim.wavelet import WaveletPrior

__all__ = [
    "ADMM",
    "DRS",
    "FISTA",
    "GD",
    "HQS",
    "MD",
    "PMD",
    "L1",
    "L2",
    "PDCP",
    "PGD",
    "RED",
    "AndersonAccelerationConfig",
    "DataFidelity",
    "DEQConfig",
    "L12Prior",
    "L1Prior",
    "PnP",
    "Prior",
    "TVPrior",
    "Tikhonov",
    "TVProxResult",
    "ZeroPrior",
    "tv_prox",
    "WaveletPrior",
    "soft_threshold",
]
