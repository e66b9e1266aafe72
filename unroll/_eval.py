"""Held-out comparison of a trained network (``unroll eval`` and the end of ``unroll train``).

:func:`compare` reconstructs held-out images with the network and with TV-FISTA (its weight
tuned on training crops) and scores both, and the measurement, with PSNR and SSIM per image
(for MRI on the magnitude); :func:`evaluate_checkpoint` does it for a saved run, on the run's
own held-out crops or on one centre crop of every image of a folder, prints the table and
writes ``eval.json`` and ``figure.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from unroll._checkpoint import atomic_write_text, read_checkpoint
from unroll._tasks import (
    as_picture,
    classical_model,
    describe,
    eval_data,
    held_out_size,
    make_data,
    make_physics,
    measure,
    measurement_picture,
    stream_seed,
    tune_classical,
)

METHODS = ("measurement", "classical", "network")
EVAL_FILES = ("eval.json", "figure.png")


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


# --------------------------------------------------------------------------- unroll eval
def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    data: str | None = None,
    out: str | Path | None = None,
    crop_size: int | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Evaluate a saved run: per-image and mean PSNR / SSIM against the measurement and the
    tuned classical baseline; writes ``eval.json`` and ``figure.png``.

    Args:
        checkpoint: ``RUN/model.pt``; the network is rebuilt from its saved configuration.
        data: a folder of images (fastMRI ``.h5`` files for MRI) to evaluate on, one centre
            crop each; ``None``: the run's own held-out crops (the figures of its
            ``results.json``).
        out: the output folder; default ``RUN/eval`` (or ``RUN/eval-2``, ... when taken).
        crop_size: side of the centre crops of ``data`` (default: the run's
            ``test_crop_size``, else its ``crop_size``).
        device: ``"cpu"`` or ``"cuda[:N]"``.
        overwrite: replace an earlier evaluation in ``out``.

    Returns:
        The evaluation: configuration, classical weight, per-image records and means.

    Raises:
        ValueError: an unreadable checkpoint or folder, an output folder already used.
    """
    from unroll._train import config_from_dict, load_model

    ckpt = read_checkpoint(checkpoint, "unroll eval")
    cfg = config_from_dict(ckpt.config)
    folder = _eval_folder(Path(checkpoint), out, overwrite)
    dev = torch.device(device)
    model = load_model(None, checkpoint).to(dev)
    size = crop_size or (cfg.test_crop_size or cfg.crop_size if data else held_out_size(cfg))
    if data:
        x, names, skipped = eval_data(cfg, data, size)
        source = str(data)
    else:
        run_data = make_data(cfg)
        x, names, skipped = run_data.test, run_data.test_names, ""
        source = run_data.source
    physics = make_physics(cfg, dev, x.shape[-1])
    y = measure(
        physics, x.to(dev), cfg.noise, torch.Generator().manual_seed(stream_seed(cfg.seed, "test"))
    )
    lam = ckpt.extra.get("classical_lambda")
    if lam is None:  # an older checkpoint: tune again on the run's training crops
        lam = tune_classical(
            cfg, make_data(cfg).train.to(dev), make_physics(cfg, dev, cfg.crop_size)
        )
    comparison = compare(cfg, model, physics, x.to(dev), y, float(lam), names)
    result = {
        "checkpoint": str(checkpoint),
        "config": dataclasses.asdict(cfg),
        "task": describe(cfg),
        "data": source,
        "skipped": skipped,
        "classical": f"FISTA + TV, lambda={float(lam):.4g} (tuned on training crops)",
        "classical_lambda": float(lam),
        "network": network_label(cfg),
        "images": per_image(comparison),
        "mean": summary(comparison),
        "out": str(folder),
        "_table": format_table(comparison),
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        folder / "eval.json",
        json.dumps({k: v for k, v in result.items() if k != "_table"}, indent=2),
    )
    draw_comparison(folder / "figure.png", cfg, comparison)
    return result


def _eval_folder(checkpoint: Path, out: str | Path | None, overwrite: bool) -> Path:
    if out is not None:
        folder = Path(out)
        if any((folder / n).exists() for n in EVAL_FILES) and not overwrite:
            raise ValueError(
                f"unroll eval: {folder} already holds an evaluation; pass "
                "--overwrite to replace it, or another --out."
            )
        return folder
    base, n = checkpoint.parent / "eval", 1
    folder = base
    while (folder / "eval.json").exists() and not overwrite:
        n += 1
        folder = base.with_name(f"eval-{n}")
    return folder
