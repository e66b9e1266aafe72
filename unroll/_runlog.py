"""The per-step log of a training run: ``metrics.jsonl`` and, on request, TensorBoard.

Each line of ``RUN/metrics.jsonl`` is one JSON object, ``{"step": 12, "epoch": 0, "loss":
..., "lr": ..., "seconds": ...}`` for a training step (``step`` counts from 1) and
``{"event": "test", ...}`` for the held-out figures at the end. A resumed run first drops the
lines past its checkpoint's step, so the file reads as if the run had never stopped.

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> run = Path(tempfile.mkdtemp())
    >>> with MetricsLog(run) as log:
    ...     log.step({"step": 1, "loss": 0.5})
    >>> [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    [0.5]
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def require_tensorboard(api: str):
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line ImportError saying what to
    install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ImportError(
            f"{api}: --tensorboard needs the tensorboard package: pip install "
            "tensorboard (or run without --tensorboard; metrics.jsonl has the "
            "same figures)."
        ) from err
    return SummaryWriter


def truncate_log(path: str | os.PathLike, last_step: int) -> None:
    """Keep the records of ``path`` up to step ``last_step`` (and nothing after a torn line).

    Args:
        path: a ``metrics.jsonl`` file (missing: nothing to do).
        last_step: the last step to keep.
    """
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut off by the interruption, and whatever follows it
        if "step" in record and "event" not in record and record["step"] <= last_step:
            kept.append(line)
    path.write_text("".join(f"{line}\n" for line in kept))


class MetricsLog:
    """Appends per-step records to ``RUN/metrics.jsonl`` (and TensorBoard scalars).

    Args:
        run: the run's folder.
        tensorboard: also write TensorBoard event files to ``RUN/tensorboard``.
        enabled: ``False`` writes nothing (the other ranks of a distributed run).
    """

    def __init__(
        self, run: str | os.PathLike, *, tensorboard: bool = False, enabled: bool = True
    ) -> None:
        self.path = Path(run) / METRICS_FILE
        self._file: IO[str] | None = open(self.path, "a") if enabled else None  # noqa: SIM115
        self._writer: Any = None
        if enabled and tensorboard:
            writer = require_tensorboard("unroll train")
            self._writer = writer(log_dir=str(Path(run) / TENSORBOARD_DIR))

    def step(self, record: dict[str, Any]) -> None:
        """Write one record (a line, flushed); numbers other than ``step`` / ``epoch`` also
        become TensorBoard scalars ``train/NAME``."""
        self._write(record, "train")

    def event(self, name: str, record: dict[str, Any], step: int) -> None:
        """Write a record ``{"event": name, "step": step, ...}`` (scalars as ``name/KEY``)."""
        self._write({"event": name, "step": step, **record}, name)

    def _write(self, record: dict[str, Any], group: str) -> None:
        if self._file is None:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in record.items():
                if key not in ("step", "epoch", "event") and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{group}/{key}", value, record.get("step", 0))

    def close(self) -> None:
        """Close the file and the TensorBoard writer."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
