"""Classical splitting algorithms as pure ``Algorithm(init, step, output)`` triples.

``unroll.algorithms.<name>(data_fidelity, prior) -> Algorithm``; run one with :func:`run`
(classical use: early stopping, traces) or unfold it with :func:`unroll.unfolded.unfold`.

Example:
    >>> import torch
    >>> from unroll import algorithms, optim, physics
    >>> A = physics.Denoising()
    >>> y = torch.rand(1, 3, 16, 16)
    >>> alg = algorithms.pgd(optim.L2(), optim.L1Prior())
    >>> x, info = algorithms.run(alg, y, A, {"stepsize": 1.0, "lambda_reg": 0.1}, 20)
    >>> x.shape
    torch.Size([1, 3, 16, 16])
"""

from unroll.algorithms.admm import ADMMState, admm
from unroll.algorithms.base import Algorithm, RunInfo, params_at, run
from unroll.algorithms.drs import DRSState, drs
from unroll.algorithms.fista import FISTAState, fista
from unroll.algorithms.gd import GDState, gd
from unroll.algorithms.hqs import HQSState, hqs
from unroll.algorithms.md import (
    Bregman,
    BregmanL2,
    BurgEntropy,
    MDState,
    NegEntropy,
    PMDState,
    md,
    pmd,
)
from unroll.algorithms.pdhg import PDHGState, pdhg
from unroll.algorithms.pgd import PGDState, pgd

ALGORITHMS = {
    "GD": gd,
    "PGD": pgd,
    "FISTA": fista,
    "HQS": hqs,
    "ADMM": admm,
    "DRS": drs,
    "PDCP": pdhg,
    "PDHG": pdhg,
    "MD": md,
    "PMD": pmd,
}
"""Algorithm factories by the names used by :func:`unroll.unfolded.unfolded_builder`."""

__all__ = [
    "ALGORITHMS",
    "ADMMState",
    "Algorithm",
    "Bregman",
    "BregmanL2",
    "BurgEntropy",
    "MDState",
    "NegEntropy",
    "PMDState",
    "DRSState",
    "FISTAState",
    "GDState",
    "HQSState",
    "PDHGState",
    "PGDState",
    "RunInfo",
    "admm",
    "drs",
    "fista",
    "gd",
    "hqs",
    "md",
    "pmd",
    "params_at",
    "pdhg",
    "pgd",
    "run",
]
