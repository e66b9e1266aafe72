"""A researcher's runs: your own images, ``eval`` of a saved run, ``--resume``, the per-step log.

Numbers are checked against references computed here: eval's PSNR against unroll.metrics.psnr
of the reloaded network, the resumed run's weights against an uninterrupted run's (bit for
bit), the logged learning rates against the cosine schedule's closed form.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unroll import metrics
from unroll.__main__ import main
from unroll._checkpoint import load_checkpoint
from unroll._eval import _eval_folder
from unroll._tasks import classical_model, make_data, make_physics, measure, stream_seed
from unroll._train import TrainConfig, config_from_dict, load_model, train

SMALL = [
    "--epochs",
    "2",
    "--lr",
    "2e-3",
    "--num-train",
    "16",
    "--num-test",
    "4",
    "--crop-size",
    "16",
    "--depth",
    "3",
    "--nf",
    "8",
    "--batch-size",
    "4",
    "--iterations",
    "2",
    "--cg-iters",
    "20",
    "--classical-iters",
    "30",
    "--threads",
    "1",
    "--no-progress",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished small run (8 steps), with a checkpoint every 3 steps while it ran."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", *SMALL, "--save-every", "3", "--out", str(out)]) == 0
    return out


def _steps(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "event" not in r]


def _smooth_images(folder: Path, n: int, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[: size[0], : size[1]] / max(size)
    for i in range(n):
        f = rng.uniform(1, 4, (3, 2))
        img = 0.5 + 0.4 * np.sin(2 * np.pi * (f[:, :1, None] * xx + f[:, 1:, None] * yy))
        Image.fromarray((img.transpose(1, 2, 0) * 255).astype(np.uint8)).save(
            folder / f"img{i}.png"
        )


# --------------------------------------------------------------------------- metrics.jsonl
def test_metrics_log_has_every_step_and_the_cosine_schedule(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    steps = _steps(run_dir)
    assert [r["step"] for r in steps] == list(range(1, 9)) == list(range(1, results["steps"] + 1))
    assert [r["epoch"] for r in steps] == [0] * 4 + [1] * 4
    lr0, total = 2e-3, 8
    for r in steps:  # the closed form of CosineAnnealingLR at the step's start
        assert r["lr"] == pytest.approx(
            lr0 * (1 + math.cos(math.pi * (r["step"] - 1) / total)) / 2, rel=1e-9
        )
    assert steps[-1]["loss"] == results["final_train_loss"]
    assert all(b["seconds"] >= a["seconds"] for a, b in zip(steps, steps[1:]))
    (test,) = [
        json.loads(x)
        for x in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "event" in json.loads(x)
    ]
    assert test["psnr_unfolded"] == results["psnr_unfolded"] and test["step"] == 8


# --------------------------------------------------------------------------- eval
def test_eval_reproduces_the_run_and_recomputes_by_hand(run_dir, capsys):
    assert main(["eval", "--checkpoint", str(run_dir / "model.pt")]) == 0
    out = capsys.readouterr().out
    results = json.loads((run_dir / "results.json").read_text())
    ev = json.loads((run_dir / "eval" / "eval.json").read_text())
    assert (run_dir / "eval" / "figure.png").stat().st_size > 10_000
    for key in ("psnr_measurement", "psnr_classical", "psnr_unfolded", "ssim_unfolded"):
        assert ev["mean"][key] == pytest.approx(results[key], abs=1e-6), key
    # by hand: the held-out crops, their noisy measurements, the reloaded network
    cfg = config_from_dict(load_checkpoint(run_dir / "model.pt").config)
    x = make_data(cfg).test
    physics = make_physics(cfg, "cpu", x.shape[-1])
    y = measure(physics, x, cfg.noise, torch.Generator().manual_seed(stream_seed(cfg.seed, "test")))
    with torch.no_grad():
        net = metrics.psnr(load_model(None, run_dir / "model.pt")(y, physics).clamp(0, 1), x)
        tv = metrics.psnr(classical_model(ev["classical_lambda"], 30)(y, physics).clamp(0, 1), x)
    assert [r["psnr_network"] for r in ev["images"]] == pytest.approx(net.tolist(), abs=1e-4)
    assert [r["psnr_classical"] for r in ev["images"]] == pytest.approx(tv.tolist(), abs=1e-4)
    assert "mean" in out and "crop 3" in out and "PSNR dB" in out
    # a second evaluation never overwrites the first: it goes to eval-2
    assert _eval_folder(run_dir / "model.pt", None, overwrite=False) == run_dir / "eval-2"
    assert _eval_folder(run_dir / "model.pt", None, overwrite=True) == run_dir / "eval"


def test_eval_on_a_folder_scores_each_image(run_dir, tmp_path, capsys):
    _smooth_images(tmp_path / "mine", 3, (30, 26), seed=1)
    (tmp_path / "mine" / "bad.jpg").write_bytes(b"\xff\xd8 broken")
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(run_dir / "model.pt"),
                "--data",
                str(tmp_path / "mine"),
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "skipped 1 of 4" in captured.err
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert [r["name"] for r in ev["images"]] == ["img0.png", "img1.png", "img2.png"]
    for name in ("img0.png", "img2.png"):
        assert name in captured.out
    # by hand: centre crops (16 x 16) read with PIL, measured with the run's test stream
    cfg = config_from_dict(load_checkpoint(run_dir / "model.pt").config)
    arrays = [
        np.asarray(Image.open(tmp_path / "mine" / f"img{i}.png"), dtype=np.float64)
        for i in range(3)
    ]
    x = torch.stack([torch.tensor(a[7:23, 5:21] / 255.0).permute(2, 0, 1) for a in arrays])
    x = x.to(torch.get_default_dtype())
    physics = make_physics(cfg, "cpu", 16)
    y = measure(physics, x, cfg.noise, torch.Generator().manual_seed(stream_seed(cfg.seed, "test")))
    with torch.no_grad():
        net = metrics.psnr(load_model(None, run_dir / "model.pt")(y, physics).clamp(0, 1), x)
    assert [r["psnr_network"] for r in ev["images"]] == pytest.approx(net.tolist(), abs=1e-4)
    assert ev["mean"]["psnr_unfolded"] == pytest.approx(float(net.mean()), abs=1e-4)


# --------------------------------------------------------------------------- resume
def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(run_dir, tmp_path):
    cfg = dataclasses.replace(
        config_from_dict(json.loads((run_dir / "results.json").read_text())["config"]),
        out=str(tmp_path / "cut"),
    )
    stopped = train(cfg, stop_after=5)
    assert stopped["stopped_at"] == 5
    assert not (tmp_path / "cut" / "model.pt").exists()
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt").extra["step"] == 5
    # the process died after logging two more steps (one line torn) but before a checkpoint
    with open(tmp_path / "cut" / "metrics.jsonl", "a") as log:
        log.write('{"step": 6, "epoch": 1, "loss": 1.0, "lr": 0.0, "seconds": 9.0}\n{"step": 7,')
    assert main(["train", "--resume", str(tmp_path / "cut"), "--no-progress"]) == 0
    full = load_checkpoint(run_dir / "model.pt").state_dict
    resumed = load_checkpoint(tmp_path / "cut" / "model.pt").state_dict
    assert full.keys() == resumed.keys()
    for key in full:  # bit for bit
        assert torch.equal(full[key], resumed[key]), key
    ours, theirs = _steps(tmp_path / "cut"), _steps(run_dir)
    assert [(r["step"], r["loss"], r["lr"]) for r in ours] == [
        (r["step"], r["loss"], r["lr"]) for r in theirs
    ]
    a = json.loads((run_dir / "results.json").read_text())
    b = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert b["psnr_unfolded"] == a["psnr_unfolded"] and b["steps"] == 8
    assert not (tmp_path / "cut" / "checkpoint.pt").exists()


def test_resume_refuses_what_it_cannot_continue(run_dir, tmp_path, capsys):
    def error(argv: list[str]) -> str:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        return capsys.readouterr().err

    assert "has finished" in error(["train", "--resume", str(run_dir)])
    assert "holds no checkpoint.pt" in error(["train", "--resume", str(tmp_path)])
    cfg = dataclasses.replace(
        config_from_dict(json.loads((run_dir / "results.json").read_text())["config"]),
        out=str(tmp_path / "cut"),
    )
    train(cfg, stop_after=2)
    msg = error(["train", "--resume", str(tmp_path / "cut"), "--lr", "0.1", "--epochs", "3"])
    assert "drop --epochs, --lr" in msg
    # a new run into the interrupted run's folder is refused, pointing at --resume
    msg = error(["train", *SMALL, "--out", str(tmp_path / "cut")])
    assert "already holds a run (checkpoint.pt, metrics.jsonl)" in msg and "--resume" in msg
    with pytest.raises(ValueError, match="--lr 0.002 \\(now 0.1\\)"):
        train(dataclasses.replace(cfg, lr=0.1), resume=True)


# --------------------------------------------------------------------------- your own images
def test_training_on_a_folder_of_images(tmp_path, capsys):
    _smooth_images(tmp_path / "photos" / "a", 3, (40, 36), seed=0)
    _smooth_images(tmp_path / "photos" / "b", 2, (24, 30), seed=2)
    (tmp_path / "photos" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *SMALL,
                "--epochs",
                "1",
                "--data",
                str(tmp_path / "photos"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    skip_lines = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skip_lines) == 1 and "1 unreadable: corrupt.png" in skip_lines[0]
    results = json.loads((out / "results.json").read_text())
    assert results["data"] == f"{tmp_path / 'photos'} (held out: 1 held-out files)"
    assert "held-out crops from" in captured.out
    # the crops really are from the folder: reproduce them and the reported PSNR
    cfg = config_from_dict(results["config"])
    data = make_data(cfg)
    assert data.train.shape == (16, 3, 16, 16) and data.test.shape == (4, 3, 16, 16)
    physics = make_physics(cfg, "cpu", 16)
    y = measure(
        physics, data.test, cfg.noise, torch.Generator().manual_seed(stream_seed(cfg.seed, "test"))
    )
    with torch.no_grad():
        net = metrics.psnr(load_model(None, out / "model.pt")(y, physics).clamp(0, 1), data.test)
    assert float(net.mean()) == pytest.approx(results["psnr_unfolded"], abs=1e-4)


def test_val_data_and_empty_folders(tmp_path, capsys):
    _smooth_images(tmp_path / "train", 2, (20, 20), seed=0)
    _smooth_images(tmp_path / "val", 1, (20, 20), seed=1)
    cfg = TrainConfig(
        data=str(tmp_path / "train"),
        val_data=str(tmp_path / "val"),
        crop_size=16,
        num_train=4,
        num_test=2,
    )
    data = make_data(cfg)
    val = torch.tensor(np.asarray(Image.open(tmp_path / "val" / "img0.png")) / 255.0)
    for crop in data.test:  # every held-out crop comes from the --val-data image
        windows = val.permute(2, 0, 1).unfold(1, 16, 1).unfold(2, 16, 1)
        assert ((windows - crop[:, None, None].double()).abs() < 1e-6).all(0).all(-1).all(-1).any()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["train", *SMALL, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "no images in" in err and "looked recursively" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- tensorboard
def test_tensorboard_logs_the_same_losses_or_says_what_to_install(tmp_path, capsys):
    argv = ["train", *SMALL, "--epochs", "1", "--tensorboard", "--out", str(tmp_path / "tb")]
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert "pip install tensorboard" in capsys.readouterr().err
        assert exc.value.code == 2
        return
    assert main(argv) == 0
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("train/loss")]
    steps = _steps(tmp_path / "tb")
    assert [s for s, _ in logged] == [r["step"] for r in steps]
    assert [v for _, v in logged] == pytest.approx([r["loss"] for r in steps], rel=1e-6)
