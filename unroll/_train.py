"""The training pipeline behind ``python -m unroll demo|train``.

Learns a network (an unfolded algorithm from :mod:`unroll.optim` with a DnCNN plug-and-play
prior, VarNet or MoDL) for an imaging inverse problem (blur, inpainting, denoising, single- and
multi-coil MRI) on random crops of bundled images or of your own (``data``), compares it with
the classical algorithm (TV-regularised FISTA, its weight tuned on training crops) on held-out
crops, and writes a figure, a JSON of the figures, a per-step log and a checkpoint. Runs on one
process or under ``torchrun`` (DistributedDataParallel).

A run is four steps, each its own function: :func:`setup` (folders, data, physics, network,
optimiser; a resumed run restores its checkpoint), :func:`fit` (the training loop, with a
resumable checkpoint every ``save_every`` steps), :func:`evaluate_run` (held-out PSNR / SSIM
against the measurement and the classical baseline) and :func:`save_run`. All randomness
comes from explicit generators seeded by ``(seed, purpose, rank, step)``, so a resumed run
ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from unroll._checkpoint import (
    atomic_write_text,
    config_differences,
    read_checkpoint,
    save_checkpoint,
    state_checksum,
)
from unroll._compare import compare, draw_comparison, summary
from unroll._runlog import METRICS_FILE, MetricsLog, truncate_log
from unroll._tasks import (
    MODELS,
    PHYSICS,
    Data,
    classical,
    describe,
    held_out_size,
    is_mri,
    learned_scalars,
    make_data,
    make_model,
    make_physics,
    measure,
    recipe_value,
    stream_seed,
)

__all__ = [
    "ALGORITHMS",
    "PHYSICS",
    "MODELS",
    "TrainConfig",
    "train",
    "setup",
    "fit",
    "evaluate_run",
    "save_run",
    "load_model",
    "config_from_dict",
    "previous_run",
    "next_free_folder",
    "make_model",
    "make_physics",
    "classical",
]

ALGORITHMS = ("GD", "PGD", "FISTA", "HQS", "ADMM", "DRS")
#: The settings whose default depends on the physics (see :data:`unroll._tasks.RECIPES`).
RECIPE_FIELDS = ("algorithm", "iterations", "epochs", "lr", "init_stepsize", "init_smoothing")
#: The TrainConfig fields that define the model (its architecture and the physics it inverts):
#: a checkpoint loads only into a model whose configuration agrees on all of them.
MODEL_FIELDS = (
    "model",
    "algorithm",
    "iterations",
    "channels",
    "depth",
    "nf",
    "deq",
    "physics",
    "noise",
    "blur_sigma",
    "acceleration",
    "center_fraction",
    "coils",
    "init_stepsize",
    "init_smoothing",
)
#: Fields that may differ between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = (
    "out",
    "progress",
    "overwrite",
    "threads",
    "tensorboard",
    "save_every",
    "device",
)
#: The files whose presence marks a folder as holding a run (finished or interrupted).
RUN_FILES = ("model.pt", "results.json", "checkpoint.pt", METRICS_FILE)
CHECKPOINT = "checkpoint.pt"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the ``train`` command's options, ``--flag-name`` for
    ``flag_name``); immutable: derive variants with :func:`dataclasses.replace`.

    ``algorithm``, ``iterations``, ``epochs``, ``lr``, ``init_stepsize`` and ``init_smoothing`` left
    unset (``None``) take the physics' recipe (:data:`unroll._tasks.RECIPES`) when the
    configuration is made, so a saved configuration always holds the values used.
    """

    model: str = "unfolded"
    algorithm: str | None = None
    physics: str = "blur"
    iterations: int | None = None
    epochs: int | None = None
    batch_size: int = 8
    num_train: int = 320
    num_test: int = 32
    crop_size: int = 40
    test_crop_size: int | None = None
    channels: int = 3
    depth: int = 7
    nf: int = 32
    lr: float | None = None
    noise: float = 0.03
    blur_sigma: float = 1.5
    acceleration: int = 4
    center_fraction: float = 0.08
    coils: int = 8
    cg_iters: int = 50
    cg_tol: float = 1e-4
    classical_iters: int = 100
    init_stepsize: float | None = None
    init_smoothing: float | None = None
    backward: str = "implicit"
    deq: bool = False
    data: str | None = None
    val_data: str | None = None
    val_fraction: float = 0.2
    device: str = "cpu"
    threads: int = 1
    seed: int = 0
    out: str = "unroll-out"
    save_every: int = 50
    tensorboard: bool = False
    ddp: bool = False
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in RECIPE_FIELDS:
            if getattr(self, name) is None:
                object.__setattr__(self, name, recipe_value(self.physics, name))

    def validate(self) -> None:
        """Raise a ValueError naming the flag and the fix for the first invalid setting."""
        for message in _problems(self):
            raise ValueError(f"unroll train: {message}")


_POSITIVE_INTS = (
    "iterations",
    "epochs",
    "batch_size",
    "num_train",
    "num_test",
    "crop_size",
    "nf",
    "cg_iters",
    "threads",
    "acceleration",
    "coils",
    "classical_iters",
)
_POSITIVE_FLOATS = ("lr", "noise", "blur_sigma", "cg_tol")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _problems(cfg: TrainConfig):
    """Every invalid setting of ``cfg``, as messages naming the flag."""
    choices = (("model", MODELS), ("physics", PHYSICS), ("backward", ("implicit", "full")))
    for name, allowed in choices:
        if getattr(cfg, name) not in allowed:
            yield f"{_flag(name)} must be one of {', '.join(allowed)}; got {getattr(cfg, name)!r}."
    if str(cfg.algorithm).upper() not in ALGORITHMS:
        yield f"--algorithm must be one of {', '.join(ALGORITHMS)}; got {cfg.algorithm!r}."
    for name in _POSITIVE_INTS:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            yield f"{_flag(name)} must be an integer >= 1; got {value!r}."
    if not isinstance(cfg.depth, int) or cfg.depth < 2:
        yield f"--depth must be an integer >= 2 (DnCNN layers); got {cfg.depth!r}."
    for name in _POSITIVE_FLOATS:
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            yield f"{_flag(name)} must be a finite number > 0; got {value!r}."
    for name, top in (("center_fraction", "1]"), ("val_fraction", "1)")):
        value = getattr(cfg, name)
        inside = (
            isinstance(value, (int, float))
            and 0 < value
            and (value <= 1 if top == "1]" else value < 1)
        )
        if not inside:
            yield f"{_flag(name)} must be in (0, {top}; got {value!r}."
    if not (
        isinstance(cfg.init_stepsize, (int, float))
        and math.isfinite(cfg.init_stepsize)
        and cfg.init_stepsize > 0
    ):
        yield f"--init-stepsize must be a finite number > 0; got {cfg.init_stepsize!r}."
    if not (isinstance(cfg.init_smoothing, (int, float)) and 0 <= cfg.init_smoothing <= 1):
        yield f"--init-smoothing must be in [0, 1]; got {cfg.init_smoothing!r}."
    if cfg.save_every < 0:
        yield f"--save-every must be >= 0 (0: no intermediate checkpoints); got {cfg.save_every}."
    if cfg.test_crop_size is not None and cfg.test_crop_size < 8:
        yield f"--test-crop-size must be >= 8 (or unset); got {cfg.test_crop_size}."
    if cfg.channels not in (1, 3):
        yield f"--channels must be 1 or 3; got {cfg.channels!r}."
    if cfg.deq and cfg.model != "unfolded":
        yield f"--deq needs --model unfolded (got --model {cfg.model})."
    yield from _path_problems(cfg)
    yield from _device_problems(cfg.device)


def _path_problems(cfg: TrainConfig):
    if cfg.val_data and not cfg.data:
        yield "--val-data needs --data (the training images)."
    for name in ("data", "val_data"):
        value = getattr(cfg, name)
        if value and not Path(value).exists():
            yield f"{_flag(name)} {value}: no such folder; pass a folder of " + (
                "fastMRI .h5 files." if is_mri(cfg) else "PNG / JPEG / TIFF images."
            )


def _device_problems(device: str):
    if device != "cpu" and not device.startswith("cuda"):
        yield f"--device must be 'cpu' or 'cuda[:N]'; got {device!r}."
    elif device.startswith("cuda") and not torch.cuda.is_available():
        yield "--device cuda was asked for but CUDA is not available here; use --device cpu."


class Run(NamedTuple):
    """Everything :func:`fit` and :func:`evaluate_run` need, built once by :func:`setup`."""

    cfg: TrainConfig
    out: Path
    rank: int
    world: int
    device: torch.device
    data: Data
    physics: Any
    test_physics: Any
    y_test: torch.Tensor
    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    steps_per_epoch: int
    total: int


class TrainState(NamedTuple):
    """Where training stands: steps done, the loss of each, the training time so far."""

    step: int
    losses: tuple[float, ...]
    seconds: float


# --------------------------------------------------------------------------- the run
def train(cfg: TrainConfig, *, resume: bool = False, stop_after: int | None = None) -> dict:
    """Train, evaluate and save; returns the figures (also written to ``out/results.json``).

    Args:
        cfg: the run's settings.
        resume: continue the interrupted run in ``cfg.out`` from its ``checkpoint.pt`` (its
            configuration must agree with ``cfg`` except on :data:`RESUMABLE_CHANGES`).
        stop_after: stop after this many steps, leaving a resumable checkpoint (as an
            interruption would); the returned dict then holds ``stopped_at``.

    Returns:
        The results: PSNR / SSIM means, the tuned classical weight, training time, ...

    Raises:
        ValueError: an invalid setting (naming the flag), a folder holding another run, an
            unreadable folder or checkpoint.

    Example:
        >>> cfg = TrainConfig(physics="inpainting", data="my_photos", out="runs/inp")
        >>> results = train(cfg)  # doctest: +SKIP
        >>> results["psnr_unfolded"] - results["psnr_classical"]  # doctest: +SKIP
        0.4...
    """
    cfg.validate()
    before = _suppressed_total()
    run, state = setup(cfg, resume=resume)
    try:
        state = fit(run, state, stop_after=stop_after)
        if state.step < run.total:
            return {
                "config": dataclasses.asdict(cfg),
                "stopped_at": state.step,
                "steps": run.total,
                "world_size": run.world,
            }
        results = evaluate_run(run, state) if run.rank == 0 else {}
        results["world_size"] = run.world
        if run.world > 1:  # every rank's checksum: the ranks must end with the same weights
            results["state_sha256_per_rank"] = _gather(
                state_checksum(run.model.state_dict()), run.world
            )
        if run.rank == 0:
            results["suppressed_convergence_warnings"] = _suppressed_total() - before
            save_run(run, results, state)
            _print_suppressed(results["suppressed_convergence_warnings"])
        return results
    finally:
        _ddp_teardown(run.world)


# --------------------------------------------------------------------------- setup
def setup(cfg: TrainConfig, *, resume: bool = False) -> tuple[Run, TrainState]:
    """Folders, data, physics, network and optimiser of a run (restored from its checkpoint
    when ``resume``).

    Args:
        cfg: the run's settings (validated).
        resume: restore ``cfg.out/checkpoint.pt``.

    Returns:
        ``(run, state)``: the run, and the state training starts from.
    """
    out = Path(cfg.out)
    _check_out_folder(out, cfg, resume)
    rank, world = _ddp_setup(cfg)
    device = _device(cfg, rank)
    _prepare_folder(out, rank, clear=cfg.overwrite and not resume)
    data = make_data(cfg)
    data = data._replace(train=data.train.to(device), test=data.test.to(device))
    physics = make_physics(cfg, device, cfg.crop_size)
    test_physics = make_physics(cfg, device, held_out_size(cfg))
    y_test = measure(
        test_physics,
        data.test,
        cfg.noise,
        torch.Generator().manual_seed(stream_seed(cfg.seed, "test")),
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights; the global RNG is left as it was
        torch.manual_seed(stream_seed(cfg.seed, "weights"))
        model = make_model(cfg).to(device)
    net = model
    if world > 1:  # every parameter takes part in every step: no unused-parameter search
        net = nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    optimizer = torch.optim.Adam(net.parameters(), lr=float(cast(float, cfg.lr)))
    steps_per_epoch = max(1, cfg.num_train // (cast(int, cfg.batch_size) * world))
    total = cast(int, cfg.epochs) * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    run = Run(
        cfg,
        out,
        rank,
        world,
        device,
        data,
        physics,
        test_physics,
        y_test,
        model,
        net,
        optimizer,
        scheduler,
        steps_per_epoch,
        total,
    )
    state = _restore(run) if resume else TrainState(0, (), 0.0)
    if data.skipped and rank == 0:
        print(data.skipped, file=sys.stderr)
    return run, state


def _check_out_folder(out: Path, cfg: TrainConfig, resume: bool) -> None:
    if resume:
        if (out / "model.pt").exists():
            raise ValueError(
                f"unroll train: --resume {out}: that run has finished (model.pt is "
                f"written); evaluate it with unroll eval --checkpoint "
                f"{out / 'model.pt'}, or train anew with another --out."
            )
        if not (out / CHECKPOINT).exists():
            raise ValueError(
                f"unroll train: --resume {out}: no {CHECKPOINT} there; pass the "
                "folder of an interrupted run (checkpoints are written every "
                "--save-every steps)."
            )
        return
    previous = previous_run(out)
    if previous and not cfg.overwrite:
        raise ValueError(
            f"unroll train: {out} already holds a run ({', '.join(previous)}); "
            "pass --overwrite (overwrite=True) to replace it, --resume to continue "
            "it, or another --out."
        )


def _prepare_folder(out: Path, rank: int, clear: bool) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{rank}-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ValueError(
            f"unroll train: cannot write to output folder {out} ({err}); pass "
            "--out with a writable folder."
        ) from err
    if clear and rank == 0:  # --overwrite: an old log or checkpoint must not mix with this run
        for name in (METRICS_FILE, CHECKPOINT):
            (out / name).unlink(missing_ok=True)


def _restore(run: Run) -> TrainState:
    """Load ``checkpoint.pt`` into the run's model, optimiser and schedule."""
    path = run.out / CHECKPOINT
    ckpt = read_checkpoint(path, "unroll train --resume", map_location=run.device)
    saved = config_from_dict(ckpt.config)
    fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in RESUMABLE_CHANGES]
    diffs = config_differences(dataclasses.asdict(saved), dataclasses.asdict(run.cfg), fields)
    if diffs:
        listed = ", ".join(f"{_flag(n)} {old!r} (now {new!r})" for n, old, new in diffs)
        raise ValueError(
            f"unroll train: --resume {run.out}: the run was started with {listed}; "
            "resume it with its own settings (unroll train --resume RUN alone)."
        )
    if ckpt.extra.get("world_size", 1) != run.world:
        raise ValueError(
            f"unroll train: --resume {run.out}: the run used "
            f"{ckpt.extra.get('world_size')} processes, this one {run.world}; "
            "resume it with the same number."
        )
    run.model.load_state_dict(ckpt.state_dict)
    run.optimizer.load_state_dict(ckpt.extra["optimizer"])
    run.scheduler.load_state_dict(ckpt.extra["scheduler"])
    step = int(ckpt.extra["step"])
    if run.rank == 0:
        truncate_log(run.out / METRICS_FILE, step)
    return TrainState(step, tuple(ckpt.extra["losses"]), float(ckpt.extra["seconds"]))


# --------------------------------------------------------------------------- the loop
def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The shuffled order of the ``n`` training crops in ``epoch`` (the same on every rank)."""
    return torch.randperm(
        n, generator=torch.Generator().manual_seed(stream_seed(seed, "order", epoch))
    )


def batch_indices(run: Run, step: int) -> torch.Tensor:
    """The training crops of this rank at global step ``step`` (0-based)."""
    epoch, s = divmod(step, run.steps_per_epoch)
    order = epoch_order(run.cfg.seed, epoch, run.cfg.num_train)
    start = (s * run.world + run.rank) * run.cfg.batch_size
    return order[start : start + run.cfg.batch_size]


def fit(run: Run, state: TrainState, *, stop_after: int | None = None) -> TrainState:
    """The training loop from ``state`` to ``run.total`` steps (or ``stop_after``).

    Each step draws its crops from :func:`epoch_order` and its noise from a generator seeded
    by ``(seed, "noise", rank, step)``, so any step can be replayed; a checkpoint holding the
    model, optimiser, schedule, step, losses and time is written every ``save_every`` steps,
    when ``stop_after`` is reached and on Ctrl-C.

    Returns:
        The state after the last step taken.
    """
    cfg, end = run.cfg, run.total if stop_after is None else min(run.total, stop_after)
    losses, seconds, step = list(state.losses), state.seconds, state.step
    bar = _progress(run.total, state.step, cfg.progress and run.rank == 0)
    log = MetricsLog(run.out, tensorboard=cfg.tensorboard, enabled=run.rank == 0)
    run.net.train()
    try:
        while step < end:
            t0 = time.perf_counter()
            loss, lr = _step(run, step)
            seconds += time.perf_counter() - t0
            step += 1
            losses.append(loss)
            log.step(
                {
                    "step": step,
                    "epoch": (step - 1) // run.steps_per_epoch,
                    "loss": loss,
                    "lr": lr,
                    "seconds": round(seconds, 4),
                }
            )
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.2e}")
                bar.update()
            if cfg.save_every and step % cfg.save_every == 0 and step < run.total:
                _save_training_state(run, TrainState(step, tuple(losses), seconds))
    except KeyboardInterrupt:
        _save_training_state(run, TrainState(step, tuple(losses), seconds))
        raise
    finally:
        log.close()
        if bar is not None:
            bar.close()
    final = TrainState(step, tuple(losses), seconds)
    if step < run.total:
        _save_training_state(run, final)
    return final


def _step(run: Run, step: int) -> tuple[float, float]:
    """One optimisation step; returns ``(loss, learning rate used)``."""
    cfg = run.cfg
    x = run.data.train[batch_indices(run, step).to(run.device)]
    gen = torch.Generator().manual_seed(stream_seed(cfg.seed, "noise", run.rank, step))
    y = measure(run.physics, x, cfg.noise, gen)
    loss = nn.functional.mse_loss(run.net(y, run.physics), x)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    lr = run.optimizer.param_groups[0]["lr"]
    run.optimizer.step()
    run.scheduler.step()
    return float(loss.detach()), float(lr)


def _save_training_state(run: Run, state: TrainState) -> None:
    if run.rank != 0:
        return
    extra = {
        "step": state.step,
        "losses": list(state.losses),
        "seconds": state.seconds,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "world_size": run.world,
    }
    save_checkpoint(run.out / CHECKPOINT, run.model.state_dict(), run.cfg, extra=extra)


# --------------------------------------------------------------------------- evaluate, save
def evaluate_run(run: Run, state: TrainState) -> dict:
    """Held-out figures of the trained network against the measurement and tuned TV-FISTA.

    Returns:
        The results dictionary (also holding the comparison for :func:`save_run`).
    """

    cfg = run.cfg
    run.model.eval()
    _, lam = classical(cfg, run.data.train, run.physics)
    comparison = compare(
        cfg, run.model, run.test_physics, run.data.test, run.y_test, lam, run.data.test_names
    )
    return {
        "config": dataclasses.asdict(cfg),
        "task": describe(cfg),
        "data": run.data.source,
        **summary(comparison),
        "classical": f"FISTA + TV, lambda={lam:.4g} (tuned on training crops)",
        "classical_lambda": lam,
        "final_train_loss": state.losses[-1] if state.losses else math.nan,
        "train_seconds": state.seconds,
        "steps": run.total,
        "learned": learned_scalars(run.model),
        "_comparison": comparison,
        "_losses": state.losses,
    }


def save_run(run: Run, results: dict, state: TrainState) -> None:
    """Write ``model.pt`` (weights, configuration, tuned classical weight), ``results.json``,
    ``figure.png`` and the test record of ``metrics.jsonl``; remove ``checkpoint.pt``."""

    comparison, losses = results.pop("_comparison"), results.pop("_losses")
    out = run.out
    save_checkpoint(
        out / "model.pt",
        run.model.state_dict(),
        run.cfg,
        extra={"classical_lambda": results["classical_lambda"], "step": state.step},
    )
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    draw_comparison(out / "figure.png", run.cfg, comparison, losses)
    with MetricsLog(out) as log:
        log.event(
            "test",
            {k: v for k, v in results.items() if k.startswith(("psnr", "ssim"))},
            step=state.step,
        )
    (out / CHECKPOINT).unlink(missing_ok=True)


# --------------------------------------------------------------------------- folders, loading
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
        The model with the saved weights, on the CPU, in evaluation mode.

    Raises:
        ValueError: the file is missing, empty, cut off, damaged or not a checkpoint, or it
            was trained with a different model configuration (each differing field named).
    """
    ckpt = read_checkpoint(path, "unroll load_model")
    saved = config_from_dict(ckpt.config)  # unset settings resolved as when it was trained
    if cfg is None:
        cfg = saved
    diffs = config_differences(
        _model_view(dataclasses.asdict(saved)), _model_view(dataclasses.asdict(cfg)), MODEL_FIELDS
    )
    if diffs:
        saved = ", ".join(f"{name}={old!r}" for name, old, _ in diffs)
        asked = ", ".join(f"{name}={new!r}" for name, _, new in diffs)
        raise ValueError(
            f"unroll load_model: checkpoint {path} was trained with {saved}, this "
            f"model has {asked}; pass the checkpoint's settings, or cfg=None to "
            "rebuild the model from the checkpoint's configuration."
        )
    model = make_model(cfg)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"unroll load_model: the weights in {path} do not fit the model "
            f"({first}); was it written by another version of unroll "
            f"({ckpt.unroll_version})? Re-run training."
        ) from err
    return model.eval()


def _model_view(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration with names normalised for comparison (algorithm names ignore case)."""
    view = dict(config)
    if isinstance(view.get("algorithm"), str):
        view["algorithm"] = view["algorithm"].upper()
    return view


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
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.device.startswith("cuda") else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _ddp_teardown(world: int) -> None:
    if world > 1 or _ddp_active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _ddp_active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _device(cfg: TrainConfig, rank: int) -> torch.device:
    if cfg.ddp and cfg.device.startswith("cuda"):
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}")
    return torch.device(cfg.device)


def _gather(value: str, world: int) -> list[str]:
    """Every rank's ``value`` (all ranks call it), in rank order."""
    import torch.distributed as dist

    values: list[Any] = [None] * world
    dist.all_gather_object(values, value)
    return [str(v) for v in values]


# --------------------------------------------------------------------------- reporting
def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="training", unit="step")


def _suppressed_total() -> int:
    from unroll._failure import suppressed_counts

    return sum(suppressed_counts().values())


def _print_suppressed(count: int) -> None:
    """One line counting the convergence warnings not shown again (once per cause and line)."""
    if count:
        print(
            f"unroll train: {count} repeated convergence warning(s) were not shown (each "
            "cause is shown once per call site; see unroll._failure.suppressed_counts()).",
            file=sys.stderr,
        )
