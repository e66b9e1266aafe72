"""The command line: ``python -m unroll demo|train`` end to end, errors, checkpoints, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unroll.__main__ import TINY, main
from unroll._train import TrainConfig, load_model, make_physics

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unroll", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    proc = run("demo", "--tiny", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out


def test_demo_writes_figure_json_and_beats_the_measurement(tiny_demo):
    assert (tiny_demo / "figure.png").stat().st_size > 10_000
    res = json.loads((tiny_demo / "results.json").read_text())
    for key in ("psnr_measurement", "psnr_classical", "psnr_unfolded"):
        assert 5.0 < res[key] < 60.0
    assert res["psnr_unfolded"] > res["psnr_measurement"]


def test_checkpoint_reloads_with_weights_only(tiny_demo):
    res = json.loads((tiny_demo / "results.json").read_text())
    cfg = TrainConfig(**{**res["config"], "progress": False})
    model = load_model(cfg, tiny_demo / "model.pt")
    # the reloaded network reproduces the reported held-out PSNR
    from unroll import data, metrics

    torch.set_num_threads(1)
    _, x_test = data.train_test_crops(cfg.num_train, cfg.num_test, cfg.crop_size,
                                      channels=cfg.channels, seed=cfg.seed)
    physics = make_physics(cfg, torch.device("cpu"))
    torch.manual_seed(cfg.seed + 1)
    y = physics(x_test)
    with torch.no_grad():
        psnr = float(metrics.psnr(model(y, physics).clamp(0, 1), x_test).mean())
    assert abs(psnr - res["psnr_unfolded"]) < 1e-3


@pytest.mark.parametrize("argv, message", [
    (["train", "--device", "cuda"], "CUDA is not available"),
    (["train", "--epochs", "0"], "--epochs must be >= 1"),
    (["train", "--out", "/proc/unroll-cannot-write"], "cannot write to output folder"),
    (["train", "--ddp"], "must be launched by torchrun"),
])
def test_clear_errors(argv, message, capsys, tmp_path):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is present: the error under test cannot occur")
    with pytest.raises(SystemExit) as exc:  # later flags win: the flag under test comes last
        main([argv[0], "--out", str(tmp_path), *_tiny_flags(), *argv[1:], "--no-progress"])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_unknown_option_is_rejected():
    proc = run("demo", "--nonsense")
    assert proc.returncode == 2 and "unrecognized arguments: --nonsense" in proc.stderr


def _tiny_flags() -> list[str]:
    return [item for key, value in TINY.items() for item in (f"--{key.replace('_', '-')}",
                                                             str(value))]


@pytest.mark.slow
def test_full_demo_beats_classical(tmp_path):
    proc = run("demo", "--out", str(tmp_path), "--no-progress", timeout=1800)
    assert proc.returncode == 0, proc.stderr
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["psnr_unfolded"] > res["psnr_classical"] > res["psnr_measurement"]


def test_ddp_two_processes_keep_parameters_identical(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "unroll", "train", "--ddp", *_tiny_flags(), "--epochs", "1", "--out",
           str(tmp_path), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s0 = torch.load(tmp_path / "model-rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "model-rank1.pt", weights_only=True)
    assert s0.keys() == s1.keys()
    for key in s0:
        assert torch.equal(s0[key], s1[key]), key
    # training moved the learnable step size away from its initial value 1.0 on both ranks
    assert not torch.equal(s0["hyper.stepsize"], torch.ones_like(s0["hyper.stepsize"]))


def test_bench_collects_ratios_into_a_markdown_table(tmp_path, capsys):
    scripts = tmp_path / "benchmarks"
    scripts.mkdir()
    (scripts / "fake.py").write_text(
        "import json\nprint('noise')\n"
        "print(json.dumps({'a': {'ratio_x_over_y': 0.25, 'ms': 3.0}, 'speedup_z': 8.0}))\n")
    (scripts / "broken.py").write_text("raise SystemExit('boom')\n")
    assert main(["bench", "--benchmarks", str(scripts), "--out", str(tmp_path / "o")]) == 0
    table = (tmp_path / "o" / "bench.md").read_text().splitlines()
    assert "| fake | a.ratio_x_over_y | 0.25 |" in table
    assert "| fake | speedup_z | 8 |" in table
    assert not any("ms" in row for row in table)
    assert any(row.startswith("| broken | failed") for row in table)
