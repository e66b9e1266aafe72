"""Command line: ``python -m unroll demo | train | eval | bench`` (also the ``unroll`` script).

* ``demo``: trains a small unfolded network (HQS, DnCNN prior) for deblurring on crops of
  scikit-image's bundled images in about two minutes on 2 CPU cores, and compares it with the
  measurement and with classical TV-regularised FISTA (tuned on training crops) on held-out
  crops: ``figure.png``, ``results.json``, ``metrics.jsonl``, ``model.pt``.
* ``train``: the same pipeline with every option: your own images (``--data DIR``),
  ``--physics blur|inpainting|denoising|mri|mri-multicoil``, ``--model unfolded|varnet|modl``,
  checkpoints every ``--save-every`` steps and ``--resume RUN``; ``--ddp`` under ``torchrun``::

      torchrun --nproc_per_node=2 -m unroll train --ddp --out runs/ddp

* ``eval``: ``unroll eval --checkpoint RUN/model.pt [--data DIR]`` rebuilds the network from
  its saved configuration and prints per-image and mean PSNR / SSIM against the measurement
  and the tuned classical baseline (``eval.json``, ``figure.png``).
* ``bench``: runs the scripts in ``benchmarks/`` and writes a markdown table of their ratios.

Runs never overwrite each other: without ``--out``, ``demo`` and ``train`` write into
``unroll-out``, or, when that folder already holds a run, into the first free ``unroll-out-2``,
``unroll-out-3``, ...; an ``--out`` folder that holds a run (``model.pt``, ``results.json``,
``checkpoint.pt`` or ``metrics.jsonl``) is refused unless ``--overwrite`` is given. Every file
is written atomically, and ``model.pt`` holds the run's configuration, unroll's version and a
checksum, verified when it is loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

from unroll._tasks import MODELS, PHYSICS
from unroll._train import ALGORITHMS, RESUMABLE_CHANGES, TrainConfig, next_free_folder

TINY = {
    "epochs": 2,
    "num_train": 32,
    "num_test": 8,
    "crop_size": 24,
    "depth": 3,
    "nf": 8,
    "batch_size": 4,
    "cg_iters": 20,
    "classical_iters": 30,
}
#: Modules each command may need, and how to get them.
EXTRAS = {
    "skimage": ("scikit-image", "demo"),
    "matplotlib": ("matplotlib", "demo"),
    "tqdm": ("tqdm", "demo"),
    "PIL": ("pillow", "demo"),
    "tifffile": ("tifffile", "demo"),
    "h5py": ("h5py", "mri"),
    "tensorboard": ("tensorboard", None),
}


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows every option's default (an unset default or
    an off switch is explained by the help text itself)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


# --------------------------------------------------------------------------- options
def _add_train_options(p: argparse.ArgumentParser, d: TrainConfig) -> None:
    net = p.add_argument_group("network")
    net.add_argument(
        "--model",
        default=d.model,
        choices=MODELS,
        help="unfolded: --algorithm with a DnCNN prior; varnet / modl: VarNet or "
        "MoDL with the same DnCNN",
    )
    net.add_argument(
        "--algorithm",
        default=None,
        choices=ALGORITHMS,
        type=str.upper,
        help="the unfolded algorithm (--model unfolded); default per physics: "
        + _recipe("algorithm"),
    )
    net.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="unfolded iterations / cascades (layers); default per physics: "
        + _recipe("iterations"),
    )
    net.add_argument("--depth", type=int, default=d.depth, help="DnCNN convolution layers")
    net.add_argument("--nf", type=int, default=d.nf, help="DnCNN feature channels")
    net.add_argument(
        "--init-stepsize",
        type=float,
        default=None,
        metavar="GAMMA",
        help="initial step size γ of every iteration (learned); default per "
        "physics: " + _recipe("init_stepsize"),
    )
    net.add_argument(
        "--init-smoothing",
        type=float,
        default=None,
        metavar="ALPHA",
        help="initial weight α in [0, 1] of a Gaussian smoothing in the prior step "
        "(learned), so that the untrained network already regularises; default "
        "per physics: " + _recipe("init_smoothing"),
    )
    net.add_argument(
        "--deq", action="store_true", help="train as a deep equilibrium model (--model unfolded)"
    )
    net.add_argument(
        "--backward",
        default=d.backward,
        choices=("implicit", "full"),
        help="least-squares prox backward: implicit (O(1) memory) or full autograd",
    )
    net.add_argument(
        "--cg-iters",
        type=int,
        default=d.cg_iters,
        help="conjugate-gradient iterations of the prox (blur, multi-coil MRI)",
    )
    net.add_argument(
        "--cg-tol", type=float, default=d.cg_tol, help="conjugate-gradient tolerance of the prox"
    )
    net.add_argument(
        "--classical-iters",
        type=int,
        default=d.classical_iters,
        help="FISTA iterations of the classical TV baseline (it also stops at a "
        "relative change of 1e-5)",
    )
    task = p.add_argument_group("inverse problem")
    task.add_argument("--physics", default=d.physics, choices=PHYSICS, help="the forward operator")
    task.add_argument(
        "--noise",
        type=float,
        default=d.noise,
        help="standard deviation of the Gaussian noise on the measurements",
    )
    task.add_argument(
        "--blur-sigma",
        type=float,
        default=d.blur_sigma,
        help="width (pixels) of the Gaussian blur (--physics blur)",
    )
    task.add_argument(
        "--acceleration",
        type=int,
        default=d.acceleration,
        help="MRI undersampling factor of the Cartesian mask",
    )
    task.add_argument(
        "--center-fraction",
        type=float,
        default=d.center_fraction,
        help="MRI: fraction of fully sampled central k-space columns",
    )
    task.add_argument(
        "--coils",
        type=int,
        default=d.coils,
        help="coils of the synthetic sensitivity maps (--physics mri-multicoil)",
    )
    data = p.add_argument_group("data")
    data.add_argument(
        "--data",
        default=d.data,
        metavar="DIR",
        help="train on your own images: a folder (searched recursively) of PNG / "
        "JPEG / TIFF images, or of fastMRI .h5 files for MRI; default: "
        "scikit-image's bundled images (MRI: synthetic phantoms)",
    )
    data.add_argument(
        "--val-data",
        default=d.val_data,
        metavar="DIR",
        help="held-out images; default: hold out --val-fraction of --data's files",
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        default=d.val_fraction,
        help="share of --data's files held out when --val-data is not given",
    )
    data.add_argument(
        "--channels",
        type=int,
        default=d.channels,
        choices=(1, 3),
        help="1: grey, 3: colour (images are converted; MRI: ignored)",
    )
    data.add_argument(
        "--crop-size",
        type=int,
        default=d.crop_size,
        help="side of the random training crops (pixels)",
    )
    data.add_argument(
        "--test-crop-size",
        type=int,
        default=d.test_crop_size,
        help="side of the held-out crops; unset: 96 for the bundled photographs "
        "(larger pictures in the figure), else --crop-size",
    )
    data.add_argument("--num-train", type=int, default=d.num_train, help="training crops")
    data.add_argument("--num-test", type=int, default=d.num_test, help="held-out crops")
    opt = p.add_argument_group("training")
    opt.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="passes over the crops; default per physics: " + _recipe("epochs"),
    )
    opt.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="crops per step (per process with --ddp)",
    )
    opt.add_argument(
        "--lr",
        type=float,
        default=None,
        help="Adam learning rate (cosine decay to 0); default per physics: " + _recipe("lr"),
    )
    opt.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help="seed of the crops, masks and noise (same seed: same run)",
    )
    opt.add_argument("--device", default=d.device, help="cpu or cuda[:N]")
    opt.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op CPU threads; default: 2 where the machine has them (the "
        "demo's timing is for 2 cores), 1 per process under --ddp",
    )
    run = p.add_argument_group("output")
    run.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help=f"output folder (default: {d.out}, or the first free {d.out}-2, "
        f"{d.out}-3, ... when it already holds a run)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run already in the output folder (without it, a folder "
        "holding model.pt, results.json, checkpoint.pt or metrics.jsonl is "
        "refused; without --out, the default folder is reused instead of a "
        "numbered one)",
    )
    run.add_argument(
        "--save-every",
        type=int,
        default=d.save_every,
        metavar="STEPS",
        help="write a resumable RUN/checkpoint.pt every STEPS steps (0: never)",
    )
    run.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log to RUN/tensorboard (needs the tensorboard package); the "
        "per-step log RUN/metrics.jsonl is always written",
    )
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _recipe(name: str) -> str:
    from unroll._tasks import RECIPES

    return ", ".join(
        f"{physics} {values[name]:g}"
        if not isinstance(values[name], str)
        else f"{physics} {values[name]}"
        for physics, values in RECIPES.items()
    )


def _config(args: argparse.Namespace, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of parsed options; no ``--out`` picks a folder with no run.

    Args:
        args: the parsed ``demo`` / ``train`` options.
        **overrides: fields set over the options (``--tiny``'s sizes, ``ddp``).

    Returns:
        The configuration.
    """
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values["progress"] = not args.no_progress
    values.update(overrides)
    values["out"] = _out_folder(args.out, args.overwrite)
    return TrainConfig(**values)


def _out_folder(out: str | None, overwrite: bool) -> str:
    """The output folder: ``--out``; without it the default, or its first free numbered twin.

    Args:
        out: the ``--out`` option (``None`` when not given).
        overwrite: ``--overwrite``: without ``--out``, reuse the default folder.

    Returns:
        The folder to write to.
    """
    if out is not None:
        return out
    default = TrainConfig.out
    if overwrite:
        return default
    chosen = str(next_free_folder(default))
    if chosen != default and _rank() == 0:
        print(
            f"{default} holds an earlier run; writing this one to {chosen} (pass --overwrite "
            "to replace it, or --out DIR)"
        )
    return chosen


def _explicit_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options written on the command line (abbreviations are off)."""
    flags = {opt: action.dest for action in parser._actions for opt in action.option_strings}
    return {flags[tok.split("=", 1)[0]] for tok in argv if tok.split("=", 1)[0] in flags}


def _resume_config(args: argparse.Namespace, explicit: set[str]) -> TrainConfig:
    """The saved configuration of ``--resume RUN``, with the options that may change."""
    from unroll._checkpoint import read_checkpoint
    from unroll._train import CHECKPOINT, config_from_dict

    allowed = set(RESUMABLE_CHANGES) | {"resume", "no_progress", "ddp"}
    extra = sorted(explicit - allowed - {"out"})
    if extra:
        flags = ", ".join("--" + name.replace("_", "-") for name in extra)
        raise ValueError(
            f"unroll train: --resume continues a run with its saved settings; drop "
            f"{flags} (only --no-progress, --threads, --device, --save-every and "
            "--tensorboard may change)."
        )
    if "out" in explicit:
        raise ValueError("unroll train: --resume RUN writes into RUN; drop --out.")
    run = Path(args.resume)
    path = run / CHECKPOINT
    if not path.exists():
        what = (
            "has finished (model.pt is written)"
            if (run / "model.pt").exists()
            else (f"holds no {CHECKPOINT}")
        )
        raise ValueError(
            f"unroll train: --resume {run}: that folder {what}; pass the folder of "
            "an interrupted run."
        )
    saved = config_from_dict(read_checkpoint(path, "unroll train --resume").config)
    changes = {
        name: getattr(args, name)
        for name in RESUMABLE_CHANGES
        if name in explicit and name not in ("out", "overwrite")
    }
    changes["progress"] = not args.no_progress
    return dataclasses.replace(saved, out=str(run), overwrite=False, **changes)


# --------------------------------------------------------------------------- commands
def _report(results: dict) -> None:
    cfg = results["config"]
    print(f"{results['task']}; {cfg['num_test']} held-out crops from {results['data']}:")
    print(f"  {'':<24}{'PSNR':>9}{'SSIM':>9}")
    rows = (
        ("measurement", "measurement", ""),
        ("classical (TV-FISTA)", "classical", f"   ({results['classical']})"),
        (
            _network(cfg),
            "unfolded",
            f"   ({results['steps']} steps, {results['train_seconds']:.0f} s training)",
        ),
    )
    for label, key, note in rows:
        print(f"  {label:<24}{results[f'psnr_{key}']:6.2f} dB{results[f'ssim_{key}']:9.4f}{note}")
    print(f"wrote {cfg['out']}/figure.png, results.json, metrics.jsonl, model.pt")


def _network(cfg: dict) -> str:
    return {"varnet": "VarNet", "modl": "MoDL"}.get(cfg["model"], f"unfolded {cfg['algorithm']}")


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    from unroll._train import train

    overrides = dict(TINY) if args.tiny else {}
    cfg = _config(args, **overrides)
    _require_extras("demo", cfg)
    _report(train(cfg))
    return 0


def _train_cmd(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    from unroll._train import train

    if args.resume:
        cfg = _resume_config(args, _explicit_options(parser, argv))
        import torch

        torch.set_num_threads(cfg.threads)  # the run's own count: same threads, same numbers
    else:
        cfg = _config(args, ddp=args.ddp)
    cfg = dataclasses.replace(cfg, ddp=args.ddp)
    _require_extras("train", cfg)
    try:
        results = train(cfg, resume=bool(args.resume))
    except KeyboardInterrupt:
        if _rank() == 0:
            print(
                f"\nunroll train: interrupted; continue with: python -m unroll train --resume "
                f"{cfg.out}",
                file=sys.stderr,
            )
        return 130
    if _rank() == 0:
        _report(results)
    return 0


def _eval_cmd(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    from unroll._eval import evaluate_checkpoint

    _check_extras("eval", ["matplotlib"] + (_data_modules(args.data) if args.data else ["skimage"]))
    result = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        out=args.out,
        crop_size=args.crop_size,
        device=args.device,
        overwrite=args.overwrite,
    )
    if result["skipped"]:
        print(result["skipped"], file=sys.stderr)
    print(f"{result['task']}; {result['network']} from {args.checkpoint} on {result['data']}:")
    print(result["_table"])
    print(f"classical: {result['classical']}")
    print(f"wrote {result['out']}/eval.json, figure.png")
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


# --------------------------------------------------------------------------- extras
def _data_modules(folder: str) -> list[str]:
    """The readers a folder needs: h5py for fastMRI files, else the image readers."""
    from unroll.data import h5_files

    path = Path(folder)
    return ["h5py"] if path.exists() and h5_files(path) else ["PIL", "tifffile"]


def _require_extras(command: str, cfg: TrainConfig) -> None:
    """Fail in one line, before any work, when a module the run needs is missing."""
    needed = ["matplotlib"] + (["tqdm"] if cfg.progress else [])
    if cfg.data:
        needed += ["h5py"] if cfg.physics.startswith("mri") else ["PIL", "tifffile"]
    elif not cfg.physics.startswith("mri"):
        needed.append("skimage")
    if cfg.tensorboard:
        needed.append("tensorboard")
    _check_extras(command, needed)


def _check_extras(command: str, modules: list[str]) -> None:
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if not missing:
        return
    packages = ", ".join(EXTRAS[m][0] for m in missing)
    extras = sorted({EXTRAS[m][1] for m in missing if EXTRAS[m][1]})
    how = " and ".join(f"pip install 'unroll[{e}]'" for e in extras) or f"pip install {packages}"
    if "tensorboard" in missing and extras:
        how += " and pip install tensorboard"
    raise _MissingExtra(f"unroll {command}: needs {packages}, not installed here: {how}")


class _MissingExtra(ImportError):
    """A module of an optional extra is missing (reported in one line)."""


# --------------------------------------------------------------------------- bench
def _bench(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    folder = Path(args.benchmarks)
    scripts = sorted(folder.glob("*.py")) if folder.is_dir() else []
    if not scripts:
        raise SystemExit(
            f"unroll bench: no benchmark scripts in {folder}; run from a checkout of "
            "the repository or pass --benchmarks PATH."
        )
    rows = []
    for script in scripts:
        if args.only and script.stem not in args.only:
            continue
        print(f"running {script.name} ...", flush=True)
        proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append((script.stem, "failed", last.replace("|", "/")))
            continue
        record = next(
            (json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")), {}
        )
        rows.extend((script.stem, key, value) for key, value in _ratios(record))
    table = ["| benchmark | figure | value |", "|---|---|---|"]
    table += [f"| {b} | {k} | {v if isinstance(v, str) else f'{v:.3g}'} |" for b, k, v in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"wrote {out / 'bench.md'}")
    return 0


def _ratios(record: dict, prefix: str = ""):
    """Numeric leaves of a benchmark's JSON whose key names a ratio or speed-up."""
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _ratios(value, name + ".")
        elif isinstance(value, (int, float)) and any(w in key for w in ("ratio", "speedup")):
            yield name, float(value)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The ``unroll`` argument parser (every option documented, defaults shown)."""
    parser = argparse.ArgumentParser(prog="unroll", description=__doc__, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = {"formatter_class": _Formatter, "allow_abbrev": False}
    demo = sub.add_parser(
        "demo",
        help="train and evaluate a small unfolded network (~2 min)",
        description="Train a small unfolded network for deblurring and compare "
        "it with tuned TV-FISTA on held-out crops.",
        **common,
    )
    _add_train_options(demo, TrainConfig())
    demo.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration")
    demo.set_defaults(func=_demo, subparser=demo)
    train = sub.add_parser(
        "train",
        help="train a network with every option",
        description="Train a network for an inverse problem and compare it "
        "with tuned TV-FISTA on held-out crops.",
        **common,
    )
    _add_train_options(train, TrainConfig())
    train.add_argument(
        "--resume",
        metavar="RUN",
        default=None,
        help="continue the interrupted run in folder RUN from its checkpoint.pt, "
        "with its saved settings (ends with the weights of an uninterrupted run)",
    )
    train.add_argument(
        "--ddp",
        action="store_true",
        help="DistributedDataParallel; launch with torchrun --nproc_per_node=N",
    )
    train.set_defaults(func=_train_cmd, subparser=train)
    _add_eval_parser(sub, common)
    bench = sub.add_parser(
        "bench",
        help="run benchmarks/ and write a markdown table",
        description="Run the benchmark scripts and tabulate their ratios.",
        **common,
    )
    bench.add_argument(
        "--benchmarks",
        default=str(Path(__file__).resolve().parent.parent / "benchmarks"),
        help="folder of benchmark scripts",
    )
    bench.add_argument("--only", nargs="*", help="benchmark names (file stems) to run")
    bench.add_argument("--out", default="unroll-out", help="folder of bench.md")
    bench.set_defaults(func=_bench, subparser=bench)
    return parser


def _add_eval_parser(sub, common: dict) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate a trained run's model.pt",
        description="Rebuild a trained network from its checkpoint and compare "
        "it with the measurement and tuned TV-FISTA, per image and on average.",
        **common,
    )
    ev.add_argument(
        "--checkpoint", required=True, metavar="RUN/model.pt", help="the model.pt of a finished run"
    )
    ev.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="evaluate on one centre crop of every image of DIR (fastMRI .h5 files "
        "for MRI); default: the run's own held-out crops",
    )
    ev.add_argument(
        "--crop-size",
        type=int,
        default=None,
        help="side of the centre crops of --data (unset: the run's --test-crop-size, "
        "else its --crop-size)",
    )
    ev.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output folder (default: RUN/eval, or RUN/eval-2, ... when taken)",
    )
    ev.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier evaluation in the output folder",
    )
    ev.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ev.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op CPU threads; default: 2 where the machine has them",
    )
    ev.set_defaults(func=_eval_cmd, subparser=ev)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = args.subparser
    if getattr(args, "threads", None) is not None and args.threads < 1:
        sub.error(f"argument --threads: must be >= 1, got {args.threads}")
    if hasattr(args, "threads"):
        args.threads = args.threads or default_threads(getattr(args, "ddp", False))
    import torch

    before = torch.get_num_threads()
    if hasattr(args, "threads"):
        torch.set_num_threads(args.threads)  # the CLI's choice (train() leaves it alone)
    try:
        return args.func(args, sub, argv)
    except ValueError as err:
        parser.exit(2, f"{err}\n")
    except _MissingExtra as err:
        parser.exit(2, f"{err}\n")
    finally:
        torch.set_num_threads(before)  # main() called from Python leaves the process as it was


def default_threads(ddp: bool) -> int:
    """Intra-op threads when ``--threads`` is not given: 1 per process under ``--ddp`` (the
    processes share the cores), else 2 where the machine has them."""
    import os

    return 1 if ddp else max(1, min(2, os.cpu_count() or 1))


if __name__ == "__main__":
    sys.exit(main())
