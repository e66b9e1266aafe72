"""Held-out comparison of a trained network (the end of ``unroll train`` and ``unroll eval``).

:func:`compare` reconstructs held-out images with the network and with TV-FISTA (its weight
tuned on training crops) and scores both, and the measurement, with PSNR and SSIM per image
(for MRI on the magnitude); :func:`format_table` and :func:`draw_comparison` show it.

Layering: ``_compare`` ← ``_train`` ← ``_eval`` (``unroll eval`` loads a run with ``_train``),
so neither of the two command modules imports the other lazily.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from unroll._tasks import (
    as_picture,
    classical_model,
    describe,
    measurement_picture,
)

METHODS = ("measurement", "classical", "network")


class Comparison(NamedTuple):
    """Per-image scores of the measurement, the classical baseline and the network.

    Attributes:
        names: one label per image.
        labels: the column title of each method in :data:`METHODS` order.
        truth: ground-truth pictures ``(N, C, H, W)`` in ``[0, 1]``.
        pictures: method -> pictures.
        psnr: method -> per-image PSNR (dB).
        ssim: method -> per-image SSIM.
    """

    names: tuple[str, ...]
    labels: tuple[str, ...]
    truth: torch.Tensor
    pictures: dict[str, torch.Tensor]
    psnr: dict[str, list[float]]
    ssim: dict[str, list[float]]


def network_label(cfg: Any) -> str:
    """``"unfolded HQS"``, ``"VarNet"`` or ``"MoDL"``."""
    return {"varnet": "VarNet", "modl": "MoDL"}.get(cfg.model, f"unfolded {cfg.algorithm}")


def reconstruct(
    model: torch.nn.Module, y: torch.Tensor, physics: Any, batch: int = 16
) -> torch.Tensor:
    """``model(y, physics)`` without gradients, ``batch`` images at a time (bounded memory)."""
    with torch.no_grad():
        return torch.cat([model(y[i : i + batch], physics) for i in range(0, y.shape[0], batch)])


def compare(
    cfg: Any,
    model: torch.nn.Module,
    physics: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    lam: float,
    names: Sequence[str],
) -> Comparison:
    """Reconstruct ``y`` with the network and with TV-FISTA (weight ``lam``) and score them.

    Args:
        cfg: the run's configuration.
        model: the trained network (``model(y, physics)``).
        physics: the operator that measured ``y``.
        x: the ground truth.
        y: the measurements.
        lam: the TV weight of the classical baseline.
        names: one label per image.

    Returns:
        The :class:`Comparison`.
    """
    from unroll import metrics

    model.eval()
    with torch.no_grad():
        estimates = {
            "classical": classical_model(lam, cfg.classical_iters)(y, physics),
            "network": reconstruct(model, y, physics),
        }
    truth = as_picture(x, cfg).cpu()
    pictures = {"measurement": measurement_picture(y, physics, cfg).cpu()}
    pictures.update({k: as_picture(v, cfg).cpu() for k, v in estimates.items()})
    psnr = {k: metrics.psnr(v, truth).tolist() for k, v in pictures.items()}
    ssim = {k: _ssim(v, truth) for k, v in pictures.items()}
    labels = (
        "measurement" if not cfg.physics.startswith("mri") else "zero-filled (Aᵀy)",
        "TV-FISTA (λ tuned)",
        network_label(cfg),
    )
    return Comparison(tuple(names), labels, truth, pictures, psnr, ssim)


def _ssim(x: torch.Tensor, ref: torch.Tensor) -> list[float]:
    from unroll import metrics

    side = min(ref.shape[-2:])
    window = min(11, side if side % 2 else side - 1)
    return metrics.ssim(x, ref, window_size=window).tolist()


def summary(c: Comparison) -> dict[str, float]:
    """Mean PSNR and SSIM of each method, as ``psnr_measurement``, ``psnr_classical``,
    ``psnr_unfolded`` (the network, whatever its kind), ``ssim_...``."""
    key = {"measurement": "measurement", "classical": "classical", "network": "unfolded"}
    out = {}
    for metric, table in (("psnr", c.psnr), ("ssim", c.ssim)):
        for method in METHODS:
            out[f"{metric}_{key[method]}"] = _mean(table[method])
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def per_image(c: Comparison) -> list[dict[str, Any]]:
    """One record per image: its name and each method's PSNR and SSIM."""
    return [
        {
            "name": name,
            **{
                f"{m}_{method}": round(table[method][i], 4)
                for m, table in (("psnr", c.psnr), ("ssim", c.ssim))
                for method in METHODS
            },
        }
        for i, name in enumerate(c.names)
    ]


def format_table(c: Comparison) -> str:
    """The per-image and mean PSNR / SSIM table, as printed by ``unroll eval``."""
    width = max(12, *(len(n) for n in c.names))
    head = f"{'image':<{width}}" + "".join(f"  {label[:22]:>22}" for label in c.labels)
    sub = f"{'':<{width}}" + "  " + "  ".join(f"{'PSNR dB':>10} {'SSIM':>11}" for _ in METHODS)
    lines = [head, sub]
    rows = [(name, i) for i, name in enumerate(c.names)] + [("mean", None)]
    for name, i in rows:
        cells = []
        for method in METHODS:
            p = c.psnr[method][i] if i is not None else _mean(c.psnr[method])
            s = c.ssim[method][i] if i is not None else _mean(c.ssim[method])
            cells.append(f"{p:10.2f} {s:11.4f}")
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def draw_comparison(
    path: str | Path, cfg: Any, c: Comparison, losses: Sequence[float] | None = None
) -> Path:
    """The figure of a comparison (see :func:`unroll._figure.draw`)."""
    from unroll._figure import Panel, draw

    panels = [Panel("ground truth", c.truth, None)]
    panels += [Panel(label, c.pictures[m], c.psnr[m]) for label, m in zip(c.labels, METHODS)]
    return draw(path, describe(cfg), panels, losses)
