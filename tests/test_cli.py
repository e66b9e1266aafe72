"""The command line: ``python -m unroll demo|train`` end to end, help, errors, extras, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unroll.__main__ import TINY, _out_folder, build_parser, main
from unroll._checkpoint import load_checkpoint, state_checksum
from unroll._tasks import make_data, measure, stream_seed
from unroll._train import TrainConfig, load_model, make_physics

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "unroll", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    proc = run("demo", "--tiny", "--out", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return out


def test_demo_writes_figure_json_and_its_loss_falls(tiny_demo):
    assert (tiny_demo / "figure.png").stat().st_size > 10_000
    res = json.loads((tiny_demo / "results.json").read_text())
    for key in ("psnr_measurement", "psnr_classical", "psnr_unfolded"):
        assert 5.0 < res[key] < 60.0
    assert res["psnr_classical"] > res["psnr_measurement"]  # the tuned baseline does its job
    # a 16-step smoke run need not beat anything yet, but it must be learning
    losses = [
        json.loads(line)["loss"]
        for line in (tiny_demo / "metrics.jsonl").read_text().splitlines()
        if '"event"' not in line
    ]
    assert len(losses) == res["steps"] == 16
    assert sum(losses[-4:]) < sum(losses[:4])


def test_checkpoint_reloads_with_weights_only(tiny_demo):
    res = json.loads((tiny_demo / "results.json").read_text())
    cfg = TrainConfig(**{**res["config"], "progress": False})
    model = load_model(cfg, tiny_demo / "model.pt")
    # the reloaded network reproduces the reported held-out PSNR, recomputed here
    from unroll import metrics

    x_test = make_data(cfg).test
    physics = make_physics(cfg, torch.device("cpu"), x_test.shape[-1])
    y = measure(
        physics, x_test, cfg.noise, torch.Generator().manual_seed(stream_seed(cfg.seed, "test"))
    )
    with torch.no_grad():
        psnr = float(metrics.psnr(model(y, physics).clamp(0, 1), x_test).mean())
    assert abs(psnr - res["psnr_unfolded"]) < 1e-4
    # the checkpoint holds its configuration: no TrainConfig needed to rebuild the model
    rebuilt = load_model(None, tiny_demo / "model.pt")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), rebuilt.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    ckpt = load_checkpoint(tiny_demo / "model.pt")
    assert ckpt.config == res["config"]
    assert ckpt.extra["classical_lambda"] == res["classical_lambda"]
    assert not list(tiny_demo.glob(".*.tmp"))  # atomic writes left no temporary file
    assert not (tiny_demo / "checkpoint.pt").exists()  # the resumable state of a finished run


def test_second_run_into_the_same_folder_is_refused(tiny_demo, capsys):
    before = {p.name: p.read_bytes() for p in tiny_demo.iterdir()}
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--tiny", "--out", str(tiny_demo), "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "already holds a run (model.pt, results.json, metrics.jsonl)" in err
    assert "--overwrite" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in tiny_demo.iterdir()} == before  # untouched


def test_overwrite_replaces_a_previous_run(tmp_path):
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "model.pt").write_bytes(b"")  # a previous run's (even a broken) checkpoint
    argv = [
        "train",
        "--out",
        str(tmp_path),
        *_tiny_flags(),
        "--epochs",
        "1",
        "--num-train",
        "8",
        "--num-test",
        "4",
        "--crop-size",
        "16",
        "--iterations",
        "2",
        "--no-progress",
    ]
    with pytest.raises(SystemExit):
        main(argv)
    assert main([*argv, "--overwrite"]) == 0
    assert load_checkpoint(tmp_path / "model.pt").config["iterations"] == 2
    assert json.loads((tmp_path / "results.json").read_text())["config"]["overwrite"] is True


def test_default_out_folder_never_overwrites_an_earlier_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _out_folder(None, overwrite=False) == "unroll-out"  # a fresh machine
    (tmp_path / "unroll-out").mkdir()
    assert _out_folder(None, overwrite=False) == "unroll-out"  # an empty folder holds no run
    (tmp_path / "unroll-out" / "results.json").write_text("{}")
    (tmp_path / "unroll-out-2").mkdir()
    (tmp_path / "unroll-out-2" / "model.pt").write_bytes(b"x")
    assert _out_folder(None, overwrite=False) == "unroll-out-3"
    assert "writing this one to unroll-out-3" in capsys.readouterr().out
    assert _out_folder(None, overwrite=True) == "unroll-out"
    assert _out_folder("mine", overwrite=False) == "mine"  # an explicit --out: train() decides


def test_help_explains_overwrite_and_the_default_folder(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "unroll-out-2" in text and "is refused" in text


@pytest.mark.parametrize("command", ["demo", "train", "eval", "bench"])
def test_every_option_has_help_and_its_default_is_shown(command, capsys):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        assert action.help, f"{command} {action.option_strings} has no help text"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    if command in ("demo", "train"):
        for shown in (
            "default per physics: blur 0.001, inpainting 0.002",
            "default per physics: blur HQS, inpainting DRS",
            "(default: blur)",
            "(default: unfolded)",
            "(default: 50)",
        ):
            assert shown in text, shown


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--device", "cuda"], "CUDA is not available"),
        (["train", "--epochs", "0"], "--epochs must be an integer >= 1; got 0"),
        (["train", "--noise", "-1"], "--noise must be a finite number > 0; got -1.0"),
        (["train", "--lr", "-1"], "--lr must be a finite number > 0; got -1.0"),
        (["train", "--lr", "nan"], "--lr must be a finite number > 0; got nan"),
        (["train", "--center-fraction", "1.5"], "--center-fraction must be in (0, 1]; got 1.5"),
        (["train", "--val-data", "x"], "--val-data needs --data"),
        (["train", "--data", "/no/such/folder"], "--data /no/such/folder: no such folder"),
        (["train", "--model", "varnet", "--deq"], "--deq needs --model unfolded"),
        (["train", "--threads", "0"], "argument --threads: must be >= 1"),
        (["train", "--out", "/proc/unroll-cannot-write"], "cannot write to output folder"),
        (["train", "--ddp"], "must be launched by torchrun"),
    ],
)
def test_clear_errors(argv, message, capsys, tmp_path):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is present: the error under test cannot occur")
    with pytest.raises(SystemExit) as exc:  # later flags win: the flag under test comes last
        main([argv[0], "--out", str(tmp_path), *_tiny_flags(), *argv[1:], "--no-progress"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "module, argv, words",
    [
        (
            "matplotlib",
            ["demo", "--tiny"],
            "needs matplotlib, not installed here: pip install 'unroll[demo]'",
        ),
        ("skimage", ["train", "--physics", "blur"], "needs scikit-image"),
        ("tqdm", ["train"], "needs tqdm"),
        ("h5py", ["train", "--physics", "mri", "--data", "."], "pip install 'unroll[mri]'"),
    ],
)
def test_missing_extra_is_one_line(module, argv, words, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    progress = [] if module == "tqdm" else ["--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "run"), *progress])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()  # refused before any work


def test_unknown_option_is_rejected():
    proc = run("demo", "--nonsense")
    assert proc.returncode == 2 and "unrecognized arguments: --nonsense" in proc.stderr


def _tiny_flags() -> list[str]:
    return [
        item for key, value in TINY.items() for item in (f"--{key.replace('_', '-')}", str(value))
    ]


def test_ddp_two_processes_keep_parameters_identical(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "unroll",
        "train",
        "--ddp",
        *_tiny_flags(),
        "--epochs",
        "1",
        "--out",
        str(tmp_path),
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "figure.png",
        "metrics.jsonl",
        "model.pt",
        "results.json",
    ]  # no rank files
    assert "find_unused_parameters" not in proc.stderr  # no DDP warning spam
    per_rank = json.loads((tmp_path / "results.json").read_text())["state_sha256_per_rank"]
    state = load_checkpoint(tmp_path / "model.pt").state_dict
    assert per_rank == [state_checksum(state)] * 2  # both ranks ended with the saved weights
    # training moved the learnable step size away from its initial value 1.0
    assert not torch.equal(state["hyper.stepsize"], torch.ones_like(state["hyper.stepsize"]))


def test_bench_collects_ratios_into_a_markdown_table(tmp_path, capsys):
    scripts = tmp_path / "benchmarks"
    scripts.mkdir()
    (scripts / "fake.py").write_text(
        "import json\nprint('noise')\n"
        "print(json.dumps({'a': {'ratio_x_over_y': 0.25, 'ms': 3.0}, 'speedup_z': 8.0}))\n"
    )
    (scripts / "broken.py").write_text("raise SystemExit('boom')\n")
    assert main(["bench", "--benchmarks", str(scripts), "--out", str(tmp_path / "o")]) == 0
    table = (tmp_path / "o" / "bench.md").read_text().splitlines()
    assert "| fake | a.ratio_x_over_y | 0.25 |" in table
    assert "| fake | speedup_z | 8 |" in table
    assert not any("ms" in row for row in table)
    assert any(row.startswith("| broken | failed") for row in table)
