"""Checkpoints: atomic saves, verified loads, clear errors, a kill -9 in the middle of a save."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import unroll._checkpoint as ck
from unroll._checkpoint import (
    FORMAT,
    atomic_write,
    atomic_write_text,
    load_checkpoint,
    save_checkpoint,
    state_checksum,
)
from unroll._train import TrainConfig, load_model, make_model

SMALL = TrainConfig(iterations=2, depth=2, nf=4, channels=1, progress=False)


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "w": torch.arange(1000, dtype=torch.float64),
        "b": torch.randn(3, 4, dtype=torch.float64, generator=g),
        "z": torch.randn(2, dtype=torch.complex128, generator=g),
        "n": torch.tensor(7),
        "empty": torch.zeros(0, 5),
    }


def _error(path: Path) -> str:
    with pytest.raises(ValueError) as exc:
        load_checkpoint(path)
    message = str(exc.value)
    assert "\n" not in message, message  # one line
    assert message.startswith(f"unroll load_checkpoint: cannot read checkpoint {path}")
    return message


# --------------------------------------------------------------------------- round trips
def test_round_trip_keeps_tensors_config_version_and_checksum(tmp_path):
    state = _state()
    extra = {"step": 12, "opt": {"exp_avg": torch.ones(3, dtype=torch.float64)}}
    save_checkpoint(tmp_path / "model.pt", state, SMALL, extra=extra)
    ckpt = load_checkpoint(tmp_path / "model.pt")
    assert ckpt.state_dict.keys() == state.keys()
    for key, value in state.items():
        assert ckpt.state_dict[key].dtype == value.dtype
        assert torch.equal(ckpt.state_dict[key], value), key
    assert ckpt.config["iterations"] == 2 and ckpt.config["depth"] == 2
    assert ckpt.unroll_version == ck.unroll_version() != ""
    assert ckpt.extra["step"] == 12 and torch.equal(
        ckpt.extra["opt"]["exp_avg"], torch.ones(3, dtype=torch.float64)
    )
    assert ckpt.sha256 == state_checksum({"state_dict": state, "extra": extra})
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["format"] == FORMAT and set(raw) >= {"unroll_version", "config", "sha256"}
    assert not [p for p in tmp_path.iterdir() if p.name != "model.pt"]  # no temp file left


def test_checksum_depends_on_values_not_on_key_order_or_layout():
    a = {"x": torch.arange(6.0).reshape(2, 3), "y": torch.ones(2)}
    b = {"y": torch.ones(2), "x": torch.arange(6.0).reshape(2, 3).t().contiguous().t()}
    assert not b["x"].is_contiguous()
    assert state_checksum(a) == state_checksum(b)
    assert state_checksum(a) != state_checksum({**a, "y": torch.ones(2, dtype=torch.float64)})
    assert state_checksum(a) != state_checksum({**a, "x": a["x"].reshape(3, 2)})
    c = {**a, "x": a["x"].clone()}
    c["x"][1, 2] = torch.nextafter(c["x"][1, 2], torch.tensor(100.0))
    assert state_checksum(a) != state_checksum(c)


def test_load_model_round_trip_and_rebuild_from_saved_config(tmp_path):
    torch.manual_seed(0)
    model = make_model(SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    save_checkpoint(tmp_path / "model.pt", model.state_dict(), SMALL)
    other = dict(vars(SMALL), epochs=1, lr=0.5, out="elsewhere")  # not model fields
    for cfg in (SMALL, TrainConfig(**other), None):
        loaded = load_model(cfg, tmp_path / "model.pt")
        for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
            assert k == k2 and torch.equal(v, v2), k


# --------------------------------------------------------------------------- config mismatch
def test_config_mismatch_names_every_differing_field(tmp_path):
    cfg5 = TrainConfig(**dict(vars(SMALL), iterations=5))
    save_checkpoint(tmp_path / "model.pt", make_model(cfg5).state_dict(), cfg5)
    with pytest.raises(ValueError) as exc:
        load_model(TrainConfig(**dict(vars(SMALL), iterations=7)), tmp_path / "model.pt")
    msg = str(exc.value)
    assert msg.startswith("unroll load_model: checkpoint")
    assert "trained with iterations=5, this model has iterations=7" in msg
    assert "depth" not in msg and "cfg=None" in msg
    with pytest.raises(ValueError) as exc:
        load_model(
            TrainConfig(**dict(vars(cfg5), depth=3, physics="inpainting")), tmp_path / "model.pt"
        )
    msg = str(exc.value)
    assert "depth=2" in msg and "depth=3" in msg
    assert "physics='blur'" in msg and "physics='inpainting'" in msg
    assert "iterations" not in msg


# --------------------------------------------------------------------------- unreadable files
def test_empty_file_is_one_clear_line(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    msg = _error(tmp_path / "model.pt")
    assert "the file is empty (0 bytes)" in msg and "re-run training" in msg


def test_truncated_file_is_one_clear_line(tmp_path):
    save_checkpoint(tmp_path / "model.pt", _state(), SMALL)
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "model.pt").write_bytes(data[: len(data) // 2])
    msg = _error(tmp_path / "model.pt")
    assert "truncated or damaged" in msg and "cut off while saving" in msg


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    (tmp_path / "model.pt").write_bytes(random.Random(0).randbytes(4096))
    msg = _error(tmp_path / "model.pt")
    assert "not a PyTorch checkpoint" in msg and "4096 bytes" in msg


def test_flipped_byte_in_tensor_data_fails_the_checksum(tmp_path):
    save_checkpoint(tmp_path / "model.pt", _state(), SMALL)
    data = bytearray((tmp_path / "model.pt").read_bytes())
    at = bytes(data).find(struct.pack("<d", 500.0))
    assert at > 0
    data[at + 3] ^= 0xFF  # torch's zip reader does not notice: the tensor loads changed
    (tmp_path / "model.pt").write_bytes(bytes(data))
    assert torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"]["w"][500] != 500.0
    msg = _error(tmp_path / "model.pt")
    assert "checksum does not match" in msg and "damaged" in msg


def test_tampered_checksum_entry_is_caught(tmp_path):
    state = _state()
    torch.save(
        {
            "format": FORMAT,
            "unroll_version": "0",
            "config": {},
            "state_dict": state,
            "extra": {},
            "sha256": "0" * 64,
        },
        tmp_path / "model.pt",
    )
    assert "checksum does not match" in _error(tmp_path / "model.pt")


@pytest.mark.parametrize(
    "content, words",
    [
        (lambda: _state(), "bare state_dict"),
        (lambda: {"weights": [1, 2]}, "not an unroll checkpoint"),
        (lambda: [torch.ones(2)], "not an unroll checkpoint"),
        (lambda: {"format": "unroll-checkpoint/99", "unroll_version": "9.0"}, "newer unroll"),
        (lambda: {"format": FORMAT, "state_dict": {}}, "lacks unroll_version, config, sha256"),
        (lambda: {"format": FORMAT, "obj": _Opaque()}, "objects other than tensors"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path, content, words):
    torch.save(content(), tmp_path / "model.pt")
    assert words in _error(tmp_path / "model.pt")


class _Opaque:
    pass


def test_missing_file_and_folder(tmp_path):
    assert "no such file" in _error(tmp_path / "model.pt")
    assert "it is a folder" in _error(tmp_path)


def test_load_model_errors_start_with_its_name(tmp_path):
    (tmp_path / "model.pt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"^unroll load_model: cannot read checkpoint .*empty"):
        load_model(SMALL, tmp_path / "model.pt")


# --------------------------------------------------------------------------- atomic writes
def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    atomic_write_text(tmp_path / "results.json", "old")

    def half_then_fail(handle):
        handle.write(b"new, half written")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "results.json", half_then_fail)
    assert (tmp_path / "results.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".model.pt.{int(dead.stdout)}.abcd.tmp"
    alive = tmp_path / f".model.pt.{os.getppid()}.abcd.tmp"  # a live writer: kept
    other = tmp_path / f".results.json.{int(dead.stdout)}.abcd.tmp"  # another file: kept
    for p in (stale, alive, other):
        p.write_bytes(b"partial")
    save_checkpoint(tmp_path / "model.pt", {"w": torch.ones(2)}, None)
    assert not stale.exists() and alive.exists() and other.exists()
    assert load_checkpoint(tmp_path / "model.pt").config == {}


_SAVER = textwrap.dedent("""
    import importlib.util, sys
    import torch
    spec = importlib.util.spec_from_file_location("ck", sys.argv[1])
    ck = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ck)
    big = torch.empty(12_500_000)  # 50 MB: a save takes long enough for a kill to land in it
    step = int(sys.argv[3])
    while True:
        big.fill_(step)
        ck.save_checkpoint(sys.argv[2], {"big": big, "step": torch.tensor(step)},
                           {"step": step})
        print(step, flush=True)
        step += 1
""")


def test_sigkill_while_saving_never_leaves_a_half_written_checkpoint(tmp_path):
    """A writer killed (SIGKILL) at random moments of its saves: the checkpoint always loads,
    verifies, and is the last completed save or the one being written when it was killed."""
    if os.name != "posix":
        pytest.skip("SIGKILL is POSIX-only")
    path = tmp_path / "model.pt"
    rng = random.Random(1)
    step, mid_write = 0, 0
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", _SAVER, ck.__file__, str(path), str(step)],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            done = int(proc.stdout.readline())  # one complete save in this round
            time.sleep(rng.uniform(0.0, 0.3))
            deadline = time.monotonic() + 5.0
            while not any(p.suffix == ".tmp" for p in tmp_path.iterdir()):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.001)
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            tail = proc.communicate()[0].split()
        done = int(tail[-1]) if tail else done
        mid_write += any(p.suffix == ".tmp" for p in tmp_path.iterdir())
        ckpt = load_checkpoint(path)  # verifies the checksum
        saved = int(ckpt.state_dict["step"])
        assert saved in (done, done + 1)  # the last finished save, or the one just renamed
        assert ckpt.config == {"step": saved}
        assert bool((ckpt.state_dict["big"] == saved).all())
        step = saved + 1
    assert mid_write >= 1  # the kills did land in the middle of writes
    save_checkpoint(path, {"step": torch.tensor(-1)}, {"step": -1})  # a re-run cleans up
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    assert int(load_checkpoint(path).state_dict["step"]) == -1
