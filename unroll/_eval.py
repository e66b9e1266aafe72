"""``unroll eval``: score a saved run on held-out crops or a folder of images.

:func:`evaluate_checkpoint` rebuilds the network from the run's saved configuration, compares
it (:func:`unroll._compare.compare`) with the measurement and the tuned classical baseline on
the run's own held-out crops or on one centre crop of every image of a folder, prints the
table and writes ``eval.json`` and ``figure.png``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from unroll._checkpoint import atomic_write_text, read_checkpoint
from unroll._compare import (
    compare,
    draw_comparison,
    format_table,
    network_label,
    per_image,
    summary,
)
from unroll._tasks import (
    describe,
    eval_data,
    held_out_size,
    make_data,
    make_physics,
    measure,
    stream_seed,
    tune_classical,
)
from unroll._train import config_from_dict, load_model

EVAL_FILES = ("eval.json", "figure.png")


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
