"""Data fidelities, priors and the convenience algorithm classes.

Data fidelities :class:`L2`, :class:`L1`; priors :class:`PnP`, :class:`RED`,
:class:`Tikhonov`, :class:`L1Prior`, :class:`TVPrior`; modules :class:`GD`, :class:`PGD`,
:class:`FISTA`, :class:`HQS`, :class:`ADMM`, :class:`DRS`, :class:`PDCP`; and
:class:`DEQConfig` (re-exported from :mod:`unroll.equilibrium`).
"""

from unroll.equilibrium import DEQConfig
from unroll.optim.classes import ADMM, DRS, FISTA, GD, HQS, PDCP, PGD
from unroll.optim.data_fidelity import L1, L2, soft_threshold
from unroll.optim.prior import RED, L1Prior, PnP, Prior, Tikhonov, TVPrior

__all__ = [
    "ADMM",
    "DRS",
    "FISTA",
    "GD",
    "HQS",
    "L1",
    "L2",
    "PDCP",
    "PGD",
    "RED",
    "DEQConfig",
    "L1Prior",
    "PnP",
    "Prior",
    "TVPrior",
    "Tikhonov",
    "soft_threshold",
]
