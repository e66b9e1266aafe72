"""The training pipeline behind ``python -m unroll demo|train``.

Learns an unfolded network (an algorithm from :mod:`unroll.optim` with a DnCNN plug-and-play
prior) for an imaging inverse problem on random crops of scikit-image's bundled natural
images, compares it with the classical algorithm (TV-regularised FISTA with its weight tuned
on training crops) on held-out crops, and writes a figure, a JSON of the figures and a
checkpoint. Runs on one process or under ``torchrun`` (DistributedDataParallel).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unroll._checkpoint import (
    atomic_write,
    atomic_write_text,
    config_differences,
    read_checkpoint,
    save_checkpoint,
    state_checksum,
)

ALGORITHMS = ("GD", "PGD", "FISTA", "HQS", "ADMM", "DRS")
PHYSICS = ("blur", "inpainting", "denoising")
#: The TrainConfig fields that define the model (its architecture and the physics it inverts):
#: a checkpoint loads only into a model whose configuration agrees on all of them.
MODEL_FIELDS = ("algorithm", "iterations", "channels", "depth", "nf", "deq", "physics",
                "noise", "blur_sigma")
#: The files whose presence marks a folder as holding a finished run.
RUN_FILES = ("model.pt", "results.json")


@dataclasses.dataclass
class TrainConfig:
    """Settings of one training run (the ``train`` command's options)."""

    algorithm: str = "HQS"
    physics: str = "blur"
    iterations: int = 5
    epochs: int = 6
    batch_size: int = 8
    num_train: int = 256
    num_test: int = 32
    crop_size: int = 40
    channels: int = 3
    depth: int = 7
    nf: int = 32
    lr: float = 2e-3
    noise: float = 0.03
    blur_sigma: float = 1.5
    cg_iters: int = 50
    cg_tol: float = 1e-6
    backward: str = "implicit"
    deq: bool = False
    device: str = "cpu"
    threads: int = 1
    seed: int = 0
    out: str = "unroll-out"
    ddp: bool = False
    progress: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        if self.algorithm.upper() not in ALGORITHMS:
            raise ValueError(f"unroll train: --algorithm must be one of {ALGORITHMS}, got "
                             f"{self.algorithm!r}.")
        if self.physics not in PHYSICS:
            raise ValueError(f"unroll train: --physics must be one of {PHYSICS}, got "
                             f"{self.physics!r}.")
        if self.backward not in ("implicit", "full"):
            raise ValueError("unroll train: --backward must be 'implicit' or 'full'.")
        for name in ("threads", "iterations", "epochs", "batch_size", "num_train", "num_test",
                     "crop_size", "depth", "nf", "cg_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"unroll train: --{name.replace('_', '-')} must be >= 1.")
        if self.channels not in (1, 3):
            raise ValueError("unroll train: --channels must be 1 or 3.")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("unroll train: --device cuda was asked for but CUDA is not "
                             "available here; use --device cpu.")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"unroll train: --device must be 'cpu' or 'cuda[:N]', got "
                             f"{self.device!r}.")


# --------------------------------------------------------------------------- building blocks
def make_physics(cfg: TrainConfig, device: torch.device):
    """The forward operator with Gaussian noise."""
    from unroll import physics as P

    noise = P.GaussianNoise(cfg.noise)
    implicit = cfg.backward == "implicit"
    if cfg.physics == "blur":
        kernel = P.gaussian_blur(cfg.blur_sigma).to(device)
        return P.Blur(kernel, padding="replicate", noise_model=noise, max_iter=cfg.cg_iters,
                      tol=cfg.cg_tol, implicit_backward_solver=implicit)
    if cfg.physics == "inpainting":
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        shape = (cfg.channels, cfg.crop_size, cfg.crop_size)
        mask = (torch.rand(shape[1:], generator=g) > 0.5).to(torch.get_default_dtype())
        return P.Inpainting(mask.expand(shape).to(device), noise_model=noise)
    return P.Denoising(noise_model=noise)


def make_model(cfg: TrainConfig) -> nn.Module:
    """The unfolded network: ``cfg.algorithm`` with a DnCNN PnP prior."""
    from unroll import optim
    from unroll.equilibrium import DEQConfig
    from unroll.models import DnCNN

    cls = getattr(optim, cfg.algorithm.upper())
    denoiser = DnCNN(in_channels=cfg.channels, out_channels=cfg.channels, depth=cfg.depth,
                     nf=cfg.nf)
    nn.init.zeros_(denoiser.out_conv.weight)  # start as the identity: the plain algorithm
    prior = optim.PnP(denoiser)
    extra = {"beta": 1.0} if cfg.algorithm.upper() in ("ADMM", "DRS") else {}
    deq = DEQConfig(max_iter=max(30, cfg.iterations), tol=1e-4) if cfg.deq else None
    return cls(unfold=True, data_fidelity=optim.L2(), prior=prior, stepsize=1.0,
               sigma_denoiser=cfg.noise, lambda_reg=1.0, max_iter=cfg.iterations,
               trainable_params=["stepsize"], DEQ=deq, **extra)


def classical(cfg: TrainConfig, x_train: torch.Tensor, physics: Any, gen_seed: int):
    """TV-regularised FISTA with its weight λ tuned by a grid search on training crops.

    Returns ``(reconstruct, best_lambda)`` with ``reconstruct(y) -> x``.
    """
    from unroll import metrics, optim

    torch.manual_seed(gen_seed)
    y = physics(x_train)

    def make(lam: float):
        return optim.FISTA(data_fidelity=optim.L2(), prior=optim.TVPrior(n_it_max=20),
                           stepsize=1.0, lambda_reg=lam, max_iter=60, unfold=False, tol=1e-5)

    grid = [cfg.noise * f for f in (0.05, 0.1, 0.2, 0.4, 0.8)]
    with torch.no_grad():
        scores = [float(metrics.psnr(make(lam)(y, physics).clamp(0, 1), x_train).mean())
                  for lam in grid]
    best = grid[max(range(len(grid)), key=scores.__getitem__)]
    model = make(best)

    def reconstruct(y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(y, physics)

    return reconstruct, best


def measurement_image(y: torch.Tensor, physics: Any, like: torch.Tensor) -> torch.Tensor:
    """The measurement shown as an image (``Aᵀy`` where ``y`` is not shaped like ``x``)."""
    return y if y.shape == like.shape else physics.A_adjoint(y)


# --------------------------------------------------------------------------- distributed
def _ddp_setup(cfg: TrainConfig) -> tuple[int, int]:
    if not cfg.ddp:
        return 0, 1
    import torch.distributed as dist

    if "RANK" not in os.environ:
        raise ValueError(
            "unroll train: --ddp must be launched by torchrun, e.g. "
            "torchrun --nproc_per_node=2 -m unroll train --ddp"
        )
    backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    if cfg.device.startswith("cuda"):
        cfg.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return dist.get_rank(), dist.get_world_size()


# --------------------------------------------------------------------------- the run
def train(cfg: TrainConfig) -> dict:
    """Train, evaluate and save; returns the figures (also written to ``out/results.json``)."""
    from unroll import data, metrics

    cfg.validate()
    out = Path(cfg.out)
    previous = previous_run(out)
    if previous and not cfg.overwrite:
        raise ValueError(f"unroll train: {out} already holds a run ({', '.join(previous)}); "
                         "pass --overwrite (overwrite=True) to replace it, or another --out.")
    torch.set_num_threads(cfg.threads)
    rank, world = _ddp_setup(cfg)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{rank}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"unroll train: cannot write to output folder {out} ({err}); pass "
                         "--out with a writable folder.") from err
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    x_train, x_test = data.train_test_crops(cfg.num_train, cfg.num_test, cfg.crop_size,
                                            channels=cfg.channels, seed=cfg.seed)
    x_train, x_test = x_train.to(device), x_test.to(device)
    physics = make_physics(cfg, device)
    torch.manual_seed(cfg.seed + 1)
    y_test = physics(x_test)

    model = make_model(cfg).to(device)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    steps_per_epoch = max(1, cfg.num_train // (cfg.batch_size * world))
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, total)
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1000 * (rank + 1))
    losses: list[float] = []
    bar = _progress(total, cfg.progress and rank == 0, "training")
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        perm = torch.randperm(cfg.num_train, generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[(s * world + rank) * cfg.batch_size:][: cfg.batch_size]
            x = x_train[idx.to(device)]
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
            y = physics(x)
            loss = nn.functional.mse_loss(net(y, physics), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.2e}")
                bar.update()
    train_time = time.perf_counter() - t0
    if bar is not None:
        bar.close()

    model.eval()
    with torch.no_grad():
        x_net = model(y_test, physics).clamp(0, 1)
    recon, lam = classical(cfg, x_train[:16], physics, cfg.seed + 7)
    x_cls = recon(y_test).clamp(0, 1)
    y_img = measurement_image(y_test, physics, x_test).clamp(0, 1)
    results = {
        "config": dataclasses.asdict(cfg),
        "world_size": world,
        "psnr_measurement": float(metrics.psnr(y_img, x_test).mean()),
        "psnr_classical": float(metrics.psnr(x_cls, x_test).mean()),
        "classical": f"FISTA + TV, lambda={lam:.4g} (tuned on training crops)",
        "psnr_unfolded": float(metrics.psnr(x_net, x_test).mean()),
        "final_train_loss": losses[-1] if losses else math.nan,
        "train_seconds": train_time,
        "steps": total,
        "learned_stepsize": model.hyper.stepsize.detach().cpu().flatten().tolist(),
    }
    if cfg.ddp:  # every rank's checksum: the ranks must end with the same weights
        results["state_sha256_per_rank"] = _gather(state_checksum(model.state_dict()), world)
    if rank == 0:  # only rank 0 writes; each file is replaced atomically
        save_checkpoint(out / "model.pt", model.state_dict(), cfg)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2))
        _figure(out / "figure.png", x_test, y_img, x_cls, x_net, results, losses)
    if cfg.ddp:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return results


def previous_run(out: str | Path) -> list[str]:
    """The files of an earlier run in a folder.

    Args:
        out: an output folder (it need not exist).

    Returns:
        The names in :data:`RUN_FILES` present in ``out`` (empty: the folder holds no run).
    """
    return [name for name in RUN_FILES if (Path(out) / name).exists()]


def next_free_folder(base: str | Path) -> Path:
    """``base`` if it holds no run, else the first of ``base-2``, ``base-3``, ... that holds none.

    Args:
        base: the preferred output folder.

    Returns:
        A folder that :func:`previous_run` finds empty (it may not exist yet).
    """
    base = Path(base)
    candidate, n = base, 1
    while previous_run(candidate):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def config_from_dict(saved: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` of a saved configuration (unknown keys are ignored).

    Args:
        saved: a configuration as stored in a checkpoint or in ``results.json``.

    Returns:
        The configuration, with defaults for fields the saved one lacks.
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in saved.items() if k in names})


def load_model(cfg: TrainConfig | None, path: str | Path) -> nn.Module:
    """Rebuild a trained model from its checkpoint (``weights_only=True``, checksum verified).

    Args:
        cfg: the configuration the model should have; it must agree with the checkpoint's on
            :data:`MODEL_FIELDS` (other fields such as ``epochs`` or ``lr`` may differ).
            ``None`` rebuilds the model from the checkpoint's own configuration.
        path: the checkpoint (``RUN/model.pt``).

    Returns:
        The model with the saved weights, on the CPU.

    Raises:
        ValueError: the file is missing, empty, cut off, damaged or not a checkpoint, or it
            was trained with a different model configuration (each differing field named).
    """
    ckpt = read_checkpoint(path, "unroll load_model")
    if cfg is None:
        cfg = config_from_dict(ckpt.config)
    diffs = config_differences(_model_view(ckpt.config), _model_view(dataclasses.asdict(cfg)),
                               MODEL_FIELDS)
    if diffs:
        saved = ", ".join(f"{name}={old!r}" for name, old, _ in diffs)
        asked = ", ".join(f"{name}={new!r}" for name, _, new in diffs)
        raise ValueError(f"unroll load_model: checkpoint {path} was trained with {saved}, this "
                         f"model has {asked}; pass the checkpoint's settings, or cfg=None to "
                         "rebuild the model from the checkpoint's configuration.")
    model = make_model(cfg)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"unroll load_model: the weights in {path} do not fit the model "
                         f"({first}); was it written by another version of unroll "
                         f"({ckpt.unroll_version})? Re-run training.") from err
    return model


def _model_view(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration with names normalised for comparison (algorithm names ignore case)."""
    view = dict(config)
    if isinstance(view.get("algorithm"), str):
        view["algorithm"] = view["algorithm"].upper()
    return view


def _gather(value: str, world: int) -> list[str]:
    """Every rank's ``value`` (all ranks call it), in rank order."""
    import torch.distributed as dist

    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return [str(v) for v in values]


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step")


def _figure(path: Path, x, y, x_cls, x_net, results: dict, losses: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(3, x.shape[0])
    cols = [("ground truth", x), (f"measurement\n{results['psnr_measurement']:.2f} dB", y),
            (f"classical (FISTA-TV)\n{results['psnr_classical']:.2f} dB", x_cls),
            (f"unfolded ({results['config']['algorithm']})\n{results['psnr_unfolded']:.2f} dB",
             x_net)]
    fig, axes = plt.subplots(n, len(cols) + 1, figsize=(3 * (len(cols) + 1), 3 * n),
                             squeeze=False)
    for i in range(n):
        for j, (title, img) in enumerate(cols):
            im = img[i].detach().cpu().float().permute(1, 2, 0).squeeze(-1).numpy()
            axes[i, j].imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=1)
            axes[i, j].set_axis_off()
            if i == 0:
                axes[i, j].set_title(title + ("" if j == 0 else " (mean)"), fontsize=9)
        axes[i, -1].set_axis_off()
    ax = axes[0, -1]
    ax.set_axis_on()
    ax.semilogy(losses)
    ax.set_title("training loss (MSE)", fontsize=9)
    ax.set_xlabel("step")
    fig.tight_layout()
    try:
        atomic_write(path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    finally:
        plt.close(fig)
