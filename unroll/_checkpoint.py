"""Checkpoints a user can trust: atomic writes and verified loads.

A checkpoint is one ``torch.save`` file holding a plain dictionary::

    {"format": "unroll-checkpoint/1", "unroll_version": "0.1.0",
     "config": {...},          # the run's configuration (plain JSON-like values)
     "state_dict": {...},      # the model's tensors
     "extra": {...},           # optional further state (optimiser, step, RNG), may be empty
     "sha256": "..."}          # checksum of state_dict and extra (see state_checksum)

Every file is written to a temporary file in the destination folder, flushed and fsynced, then
moved over the destination with ``os.replace``: a process killed while saving leaves the
previous file intact (and at worst a ``.NAME.PID.XXXX.tmp`` file, removed by the next save once
its writer is gone). Loading uses ``torch.load(..., weights_only=True)``, verifies the checksum
and turns every way a file can be unreadable (missing, empty, cut off, random bytes, not a
checkpoint, damaged tensor data) into one ``ValueError`` line that says what to do.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import pickle
import secrets
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, NamedTuple

import torch

from unroll._typing import PyTree

FORMAT = "unroll-checkpoint/1"
_FORMAT_PREFIX = "unroll-checkpoint/"
_ZIP_MAGIC = b"PK\x03\x04"
_REQUIRED = ("format", "unroll_version", "config", "state_dict", "sha256")


class Checkpoint(NamedTuple):
    """A verified checkpoint, as returned by :func:`load_checkpoint`.

    Attributes:
        state_dict: the model's tensors (on ``map_location``).
        config: the configuration the model was saved with (plain values).
        unroll_version: the version of unroll that wrote the file.
        sha256: the verified checksum of ``state_dict`` and ``extra``.
        extra: further saved state (optimiser, step, RNG); ``{}`` when none was saved.
    """

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    unroll_version: str
    sha256: str
    extra: dict[str, Any]


# --------------------------------------------------------------------------- small helpers
def unroll_version() -> str:
    """The installed version of unroll (``"unknown"`` when it is not installed as a package).

    Returns:
        The version string from the package metadata.
    """
    from importlib import metadata

    try:
        return metadata.version("unroll")
    except metadata.PackageNotFoundError:
        return "unknown"


def plain_config(config: Any) -> dict[str, Any]:
    """A configuration as plain JSON-like values (what ``weights_only`` loading accepts).

    Args:
        config: a dataclass instance, a mapping, or ``None``.

    Returns:
        A dictionary of str / int / float / bool / None / list / dict values; anything else
        (a ``Path``, an enum) is stored as its string.
    """
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    if not isinstance(config, Mapping):
        raise TypeError(
            f"unroll save_checkpoint: config must be a dataclass or a mapping, got "
            f"{type(config).__name__}."
        )
    return json.loads(json.dumps(dict(config), default=str))


def state_checksum(tree: PyTree) -> str:
    """SHA-256 of a canonical serialisation of a state (nested dicts / lists of tensors).

    Each tensor contributes its dtype, shape and raw bytes (on the CPU, contiguous); mappings
    are walked in sorted key order, so the checksum depends on the values only, not on how
    ``torch.save`` lays out a file or on the device the tensors live on.

    Args:
        tree: a state dict, or any nesting of dicts, lists, tuples, tensors and plain values.

    Returns:
        The hexadecimal SHA-256 digest.
    """
    digest = hashlib.sha256()
    _feed(digest, tree)
    return digest.hexdigest()


def _feed(digest: Any, obj: PyTree) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        digest.update(f"T|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.cpu().resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8)
        if flat.numel():
            digest.update((ctypes.c_char * flat.numel()).from_address(flat.data_ptr()))
    elif isinstance(obj, Mapping):
        digest.update(f"D|{len(obj)}|".encode())
        for key in sorted(obj, key=repr):
            _feed(digest, key)
            _feed(digest, obj[key])
    elif isinstance(obj, (list, tuple)):
        digest.update(f"L|{len(obj)}|".encode())
        for item in obj:
            _feed(digest, item)
    else:
        digest.update(f"V|{type(obj).__name__}|{obj!r}|".encode())


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _stale_temp_files(path: Path) -> list[Path]:
    """Temporary files of earlier saves to ``path`` whose writing process is gone."""
    prefix = f".{path.name}."
    stale = []
    for tmp in path.parent.iterdir():
        if not (tmp.name.startswith(prefix) and tmp.name.endswith(".tmp")):
            continue
        pid = tmp.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            stale.append(tmp)
    return stale


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- atomic writes
def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write a file so that readers see either the old or the new content, never a mix.

    ``write`` fills a temporary file in the destination folder, which is flushed, fsynced and
    then moved over ``path`` with ``os.replace``. On an exception the temporary file is removed
    and ``path`` is left as it was; temporary files left by killed writers are removed.

    Args:
        path: the destination file; its folder must exist.
        write: called with the open binary temporary file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    for tmp in _stale_temp_files(path):
        tmp.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text.

    Args:
        path: the destination file.
        text: its new content.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    data = text.encode("utf-8")

    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    return atomic_write(path, write)


def save_checkpoint(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    config: Any = None,
    *,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Save a model's state with its configuration, unroll's version and a checksum, atomically.

    Args:
        path: the destination file (e.g. ``RUN/model.pt``); its folder must exist.
        state_dict: the model's ``state_dict()``.
        config: the configuration that rebuilds the model (a dataclass or a mapping).
        extra: further state to keep with it (optimiser state, step, RNG states), covered by
            the checksum.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    state = dict(state_dict)
    more = dict(extra or {})
    payload = {
        "format": FORMAT,
        "unroll_version": unroll_version(),
        "config": plain_config(config),
        "state_dict": state,
        "extra": more,
        "sha256": state_checksum({"state_dict": state, "extra": more}),
    }
    return atomic_write(path, lambda handle: torch.save(payload, handle))


# --------------------------------------------------------------------------- verified loads
def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device | None = "cpu"
) -> Checkpoint:
    """Load and verify a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        map_location: where the tensors go (as in ``torch.load``); the CPU by default.

    Returns:
        The :class:`Checkpoint` (state dict, configuration, version, checksum, extra).

    Raises:
        ValueError: one line saying why the file cannot be used (missing, empty, cut off,
            not a checkpoint, damaged) and what to do.
    """
    return read_checkpoint(path, "unroll load_checkpoint", map_location)


def read_checkpoint(
    path: str | Path, api: str, map_location: str | torch.device | None = "cpu"
) -> Checkpoint:
    """:func:`load_checkpoint` whose errors start with ``api`` (e.g. ``"unroll load_model"``)."""
    path = Path(path)
    where = f"{api}: cannot read checkpoint {path}"
    if not path.exists():
        raise ValueError(
            f"{where}: no such file; check the path (a training run writes RUN/model.pt)."
        )
    if path.is_dir():
        raise ValueError(
            f"{where}: it is a folder; pass the checkpoint file inside it (e.g. RUN/model.pt)."
        )
    size = path.stat().st_size
    if size == 0:
        raise ValueError(
            f"{where}: the file is empty (0 bytes) — it was probably cut off while "
            "saving; re-run training."
        )
    payload = _torch_load(path, where, size, map_location)
    _check_layout(payload, where)
    stored = payload["sha256"]
    extra = payload.get("extra") or {}
    actual = state_checksum({"state_dict": payload["state_dict"], "extra": extra})
    if actual != stored:
        raise ValueError(
            f"{where}: its checksum does not match its contents (stored sha256 "
            f"{str(stored)[:12]}…, computed {actual[:12]}…) — the file is damaged; "
            "re-run training or restore a copy."
        )
    return Checkpoint(
        dict(payload["state_dict"]),
        dict(payload["config"]),
        str(payload["unroll_version"]),
        actual,
        dict(extra),
    )


def _torch_load(path: Path, where: str, size: int, map_location: str | torch.device | None) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (MemoryError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as err:  # noqa: BLE001 — every unreadable file becomes one clear line
        raise ValueError(f"{where}: {_why_unreadable(path, err, size)}") from err


def _why_unreadable(path: Path, err: Exception, size: int) -> str:
    with open(path, "rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        return (
            f"it is not a PyTorch checkpoint ({size} bytes of unrecognised content); pass "
            "the model.pt written by a training run."
        )
    if isinstance(err, pickle.UnpicklingError) and "Weights only" in str(err):
        return (
            "it holds Python objects other than tensors and plain values, so it is not an "
            "unroll checkpoint and is not loaded (weights_only=True); pass the model.pt "
            "written by a training run."
        )
    return (
        f"the file is truncated or damaged ({size} bytes; {type(err).__name__}) — it was "
        "probably cut off while saving; re-run training."
    )


def _check_layout(payload: Any, where: str) -> None:
    if (
        isinstance(payload, Mapping)
        and payload
        and "format" not in payload
        and all(isinstance(v, torch.Tensor) for v in payload.values())
    ):
        raise ValueError(
            f"{where}: it holds a bare state_dict without configuration or "
            "checksum, not an unroll checkpoint; re-run training, or load it "
            "yourself with model.load_state_dict(torch.load(path, "
            "weights_only=True))."
        )
    fmt = payload.get("format") if isinstance(payload, Mapping) else None
    if not isinstance(fmt, str) or not fmt.startswith(_FORMAT_PREFIX):
        raise ValueError(
            f"{where}: it is not an unroll checkpoint (no 'format' entry "
            f"{FORMAT!r}); pass the model.pt written by a training run."
        )
    if fmt != FORMAT:
        raise ValueError(
            f"{where}: it has format {fmt!r}, written by a newer unroll (version "
            f"{payload.get('unroll_version')}); this unroll ({unroll_version()}) "
            f"reads {FORMAT!r} — upgrade unroll."
        )
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise ValueError(
            f"{where}: it lacks {', '.join(missing)} — the file is damaged; re-run training."
        )


# --------------------------------------------------------------------------- configurations
def config_differences(
    saved: Mapping[str, Any], wanted: Mapping[str, Any], fields: Iterable[str]
) -> list[tuple[str, Any, Any]]:
    """The fields whose saved and wanted values differ.

    A field missing from either side (a checkpoint from an older configuration) is skipped.

    Args:
        saved: the configuration stored in a checkpoint.
        wanted: the configuration asked for.
        fields: the names to compare.

    Returns:
        ``[(name, saved_value, wanted_value), ...]`` in the order of ``fields``.
    """
    return [
        (name, saved[name], wanted[name])
        for name in fields
        if name in saved and name in wanted and saved[name] != wanted[name]
    ]
