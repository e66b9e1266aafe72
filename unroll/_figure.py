"""The comparison figure of ``unroll demo | train | eval``.

One row per held-out image: ground truth, measurement, the classical baseline and the trained
network, each with its PSNR and a zoomed inset of the same detail (the most textured patch of
the ground truth), under a title that states the task and the mean PSNRs; a training run adds
its loss curve in a column of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from unroll._checkpoint import atomic_write


class Panel(NamedTuple):
    """One column of the figure.

    Attributes:
        label: the column's title.
        images: ``(N, C, H, W)`` pictures in ``[0, 1]`` (``C`` = 1 or 3).
        psnr: per-image PSNR in dB, or ``None`` (the ground truth).
    """

    label: str
    images: torch.Tensor
    psnr: Sequence[float] | None


def zoom_box(img: torch.Tensor, frac: float = 0.25) -> tuple[int, int, int]:
    """The most textured square of side ``frac × H`` in a ``(C, H, W)`` image.

    Args:
        img: the picture (the ground truth).
        frac: side of the square relative to the image's height.

    Returns:
        ``(top, left, side)``.

    Example:
        >>> img = torch.zeros(1, 16, 16)
        >>> img[0, 8:12, 4:8] = torch.tensor([[1.0, -1.0] * 2, [-1.0, 1.0] * 2] * 2)  # texture
        >>> zoom_box(img)
        (8, 4, 4)
    """
    side = max(4, int(img.shape[-2] * frac))
    grey = img.mean(0, keepdim=True)[None]
    pool = torch.nn.functional.avg_pool2d
    var = pool(grey.square(), side, stride=1) - pool(grey, side, stride=1).square()
    h, w = var.shape[-2:]
    H, W = img.shape[-2:]
    # not under the inset, which covers the top-right 40% x 40% of the panel
    tops = torch.arange(h).reshape(-1, 1)
    lefts = torch.arange(w).reshape(1, -1)
    covered = (tops < 0.4 * H) & (lefts + side > 0.6 * W)
    if not bool(covered.all()):
        var = var.masked_fill(covered, -1.0)
    flat = int(var.flatten().argmax())
    return flat // w, flat % w, side


def draw(
    path: str | Path,
    title: str,
    panels: Sequence[Panel],
    losses: Sequence[float] | None = None,
    rows: int = 3,
) -> Path:
    """Write the comparison figure as a PNG (atomically).

    Args:
        path: the PNG to write.
        title: the task, in one line (a second line with the mean PSNRs is added).
        panels: the columns; the first is the ground truth.
        losses: training losses per step, drawn in an extra column (``None``: no column).
        rows: how many images (the first ones) to show.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = min(rows, panels[0].images.shape[0])
    cols = len(panels) + (1 if losses is not None else 0)
    fig = plt.figure(figsize=(3.1 * cols, 3.1 * n + 0.9), layout="constrained")
    grid = fig.add_gridspec(n, cols)
    means = " · ".join(
        f"{p.label.splitlines()[0]} {sum(p.psnr) / len(p.psnr):.2f} dB" for p in panels if p.psnr
    )
    count = panels[0].images.shape[0]
    fig.suptitle(f"{title}\nmean PSNR over {count} held-out images: {means}", fontsize=11)
    for i in range(n):
        top, left, side = zoom_box(panels[0].images[i])
        for j, panel in enumerate(panels):
            ax = fig.add_subplot(grid[i, j])
            _image(ax, panel.images[i])
            ax.add_patch(
                Rectangle(
                    (left - 0.5, top - 0.5),
                    side,
                    side,
                    fill=False,
                    edgecolor="yellow",
                    linewidth=1.2,
                )
            )
            inset = ax.inset_axes((0.6, 0.6, 0.4, 0.4))
            _image(
                inset,
                panel.images[i][..., top : top + side, left : left + side],
                interpolation="nearest",
            )
            for spine in inset.spines.values():
                spine.set_edgecolor("yellow")
                spine.set_linewidth(1.5)
            if i == 0:
                ax.set_title(panel.label, fontsize=10)
            if panel.psnr is not None:
                ax.text(
                    0.02,
                    0.03,
                    f"{panel.psnr[i]:.2f} dB",
                    transform=ax.transAxes,
                    color="white",
                    fontsize=10,
                    va="bottom",
                    bbox={"facecolor": "black", "alpha": 0.6, "pad": 2, "linewidth": 0},
                )
    if losses is not None:
        ax = fig.add_subplot(grid[:, -1])
        steps = range(1, len(losses) + 1)
        ax.semilogy(steps, losses, linewidth=0.6, alpha=0.35, label="per step")
        ax.semilogy(steps, moving_average(losses), linewidth=1.6, label="moving average")
        ax.legend(fontsize=8)
        ax.set_title("training loss (MSE)", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    try:
        return atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    finally:
        plt.close(fig)


def moving_average(values: Sequence[float], window: int | None = None) -> list[float]:
    """Trailing mean over ``window`` values (default: a tenth of the run, at least 1).

    Example:
        >>> moving_average([1.0, 3.0, 5.0, 7.0], 2)
        [1.0, 2.0, 4.0, 6.0]
    """
    window = window or max(1, len(values) // 10)
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _image(ax, img: torch.Tensor, interpolation: str = "antialiased") -> None:
    pic = img.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
    ax.imshow(
        pic, cmap="gray" if pic.ndim == 2 else None, vmin=0, vmax=1, interpolation=interpolation
    )
    ax.set_xticks([])
    ax.set_yticks([])
