"""Command line: ``python -m unroll demo | train | bench`` (also the ``unroll`` script).

* ``demo``: trains a small unfolded network (HQS, DnCNN prior, 5 iterations) for deblurring
  on crops of scikit-image's bundled images, in a few minutes on 2 CPU cores, and reports the
  PSNR of the measurement, of classical TV-regularised FISTA (tuned) and of the trained
  network on held-out crops; writes ``figure.png``, ``results.json`` and ``model.pt``.
* ``train``: the same pipeline with every option; ``--ddp`` under ``torchrun``::

      torchrun --nproc_per_node=2 -m unroll train --ddp --out runs/ddp

  Runs never overwrite each other: without ``--out``, ``demo`` and ``train`` write into
  ``unroll-out``, or, when that folder already holds a run, into the first free
  ``unroll-out-2``, ``unroll-out-3``, ...; an ``--out`` folder that holds a run
  (``model.pt`` or ``results.json``) is refused unless ``--overwrite`` is given. Every file is
  written atomically, and ``model.pt`` holds the run's configuration, unroll's version and a
  checksum, verified when it is loaded.

* ``bench``: runs the scripts in ``benchmarks/`` and writes a markdown table of their ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from unroll._train import ALGORITHMS, PHYSICS, TrainConfig, next_free_folder

TINY = {"epochs": 2, "num_train": 32, "num_test": 8, "crop_size": 24, "depth": 3, "nf": 8,
        "batch_size": 4, "cg_iters": 20}


def _add_train_options(p: argparse.ArgumentParser, defaults: TrainConfig) -> None:
    p.add_argument("--algorithm", default=defaults.algorithm, choices=ALGORITHMS,
                   type=str.upper, help="unfolded algorithm")
    p.add_argument("--physics", default=defaults.physics, choices=PHYSICS)
    p.add_argument("--iterations", type=int, default=defaults.iterations,
                   help="unfolded iterations (layers)")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--num-train", type=int, default=defaults.num_train)
    p.add_argument("--num-test", type=int, default=defaults.num_test)
    p.add_argument("--crop-size", type=int, default=defaults.crop_size)
    p.add_argument("--channels", type=int, default=defaults.channels, choices=(1, 3))
    p.add_argument("--depth", type=int, default=defaults.depth, help="DnCNN depth")
    p.add_argument("--nf", type=int, default=defaults.nf, help="DnCNN features")
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--noise", type=float, default=defaults.noise, help="noise std")
    p.add_argument("--blur-sigma", type=float, default=defaults.blur_sigma)
    p.add_argument("--cg-iters", type=int, default=defaults.cg_iters)
    p.add_argument("--backward", default=defaults.backward, choices=("implicit", "full"),
                   help="least-squares prox backward: implicit (O(1) memory) or full autograd")
    p.add_argument("--deq", action="store_true", help="train as a deep equilibrium model")
    p.add_argument("--device", default=defaults.device, help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help="intra-op CPU threads (1 is fastest for these small tensors)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--out", default=None,
                   help=f"output folder (default: {defaults.out}, or the first free "
                   f"{defaults.out}-2, {defaults.out}-3, ... when it already holds a run)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in the output folder (without it, a folder "
                   "holding model.pt or results.json is refused; without --out, the default "
                   "folder is reused instead of a numbered one)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


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
        print(f"{default} holds an earlier run; writing this one to {chosen} (pass --overwrite "
              "to replace it, or --out DIR)")
    return chosen


def _report(results: dict) -> None:
    print(f"PSNR on {results['config']['num_test']} held-out crops "
          f"({results['config']['physics']}, noise {results['config']['noise']}):")
    print(f"  measurement           {results['psnr_measurement']:6.2f} dB")
    print(f"  classical             {results['psnr_classical']:6.2f} dB   "
          f"({results['classical']})")
    print(f"  unfolded {results['config']['algorithm']:<12s} {results['psnr_unfolded']:6.2f} dB"
          f"   ({results['steps']} steps, {results['train_seconds']:.0f} s)")
    print(f"wrote {results['config']['out']}/figure.png, results.json, model.pt")


def _demo(args: argparse.Namespace) -> int:
    from unroll._train import train

    overrides = dict(TINY) if args.tiny else {}
    results = train(_config(args, **overrides))
    _report(results)
    return 0


def _train_cmd(args: argparse.Namespace) -> int:
    from unroll._train import train

    results = train(_config(args, ddp=args.ddp))
    if results["world_size"] == 1 or not args.ddp or _rank() == 0:
        _report(results)
    return 0


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def _bench(args: argparse.Namespace) -> int:
    folder = Path(args.benchmarks)
    scripts = sorted(folder.glob("*.py")) if folder.is_dir() else []
    if not scripts:
        raise SystemExit(f"unroll bench: no benchmark scripts in {folder}; run from a checkout of "
                         "the repository or pass --benchmarks PATH.")
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
        record = next((json.loads(line) for line in proc.stdout.splitlines()
                       if line.startswith("{")), {})
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unroll", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train and evaluate a small unfolded network")
    _add_train_options(demo, TrainConfig())
    demo.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration")
    demo.set_defaults(func=_demo)
    train = sub.add_parser("train", help="train an unfolded network with options")
    _add_train_options(train, TrainConfig())
    train.add_argument("--ddp", action="store_true",
                       help="DistributedDataParallel; launch with torchrun --nproc_per_node=N")
    train.set_defaults(func=_train_cmd)
    bench = sub.add_parser("bench", help="run benchmarks/ and write a markdown table")
    bench.add_argument("--benchmarks", default=str(Path(__file__).resolve().parent.parent
                                                   / "benchmarks"))
    bench.add_argument("--only", nargs="*", help="benchmark names (file stems) to run")
    bench.add_argument("--out", default="unroll-out")
    bench.set_defaults(func=_bench)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:
        parser.exit(2, f"{err}\n")


if __name__ == "__main__":
    sys.exit(main())
