"""MRI from the command line: fastMRI-format HDF5 files (written here), single- and multi-coil,
``--model unfolded|varnet|modl``; PSNRs recomputed by hand on the magnitude images."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from unroll import metrics
from unroll.__main__ import main
from unroll._tasks import as_picture, make_data, make_physics, measure, stream_seed
from unroll._train import config_from_dict, load_model
from unroll.models import MoDL, VarNet

if os.environ.get("CI"):
    import h5py  # the mri extra is part of the CI install: never skip there
else:
    h5py = pytest.importorskip("h5py")

SMALL = [
    "--epochs",
    "1",
    "--num-train",
    "8",
    "--num-test",
    "3",
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
    "10",
    "--classical-iters",
    "20",
    "--coils",
    "3",
    "--threads",
    "1",
    "--no-progress",
]


def _fft2c(x: np.ndarray) -> np.ndarray:
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=axes), norm="ortho"), axes=axes)


def _slices(n: int, seed: int) -> np.ndarray:
    from unroll.data import mri_phantoms

    return mri_phantoms(n, 24, seed=seed).double().numpy()[:, 0]


@pytest.fixture(scope="module")
def h5_folders(tmp_path_factory) -> dict[str, Path]:
    """Three single-coil and three multi-coil files (two 24 x 24 slices each)."""
    root = tmp_path_factory.mktemp("fastmri")
    rng = np.random.default_rng(0)
    for i in range(3):
        img = _slices(2, seed=10 + i) * np.exp(1j * rng.uniform(0, 0.3))  # a smooth phase
        (root / "single").mkdir(exist_ok=True)
        with h5py.File(root / "single" / f"file{i}.h5", "w") as f:
            f.create_dataset("kspace", data=_fft2c(img).astype(np.complex64))
        maps = np.exp(1j * rng.uniform(0, 1, (1, 4, 1, 1))) * rng.uniform(0.5, 1, (1, 4, 24, 24))
        (root / "multi").mkdir(exist_ok=True)
        with h5py.File(root / "multi" / f"file{i}.h5", "w") as f:
            f.create_dataset("kspace", data=_fft2c(maps * img[:, None]).astype(np.complex64))
            if i == 0:
                f.create_dataset("reconstruction_rss", data=np.abs(img).astype(np.float32))
    return {"single": root / "single", "multi": root / "multi"}


def _by_hand(run: Path) -> tuple[float, float]:
    """The network's and the zero-filled mean PSNR on the run's held-out crops (magnitudes)."""
    cfg = config_from_dict(json.loads((run / "results.json").read_text())["config"])
    x = make_data(cfg).test
    physics = make_physics(cfg, "cpu", x.shape[-1])
    y = measure(physics, x, cfg.noise, torch.Generator().manual_seed(stream_seed(cfg.seed, "test")))
    with torch.no_grad():
        out = load_model(None, run / "model.pt")(y, physics)
        zero_filled = physics.A_adjoint(y)
    truth = x[:, :1].abs()  # the targets are real magnitudes with zero phase
    assert torch.equal(x[:, 1], torch.zeros_like(x[:, 1]))

    def mag(t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(t[:, :1] ** 2 + t[:, 1:] ** 2).clamp(0, 1)

    return (
        float(metrics.psnr(mag(out), truth).mean()),
        float(metrics.psnr(mag(zero_filled), truth).mean()),
    )


def test_single_coil_mri_from_hdf5(h5_folders, tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--physics",
                "mri",
                "--data",
                str(h5_folders["single"]),
                *SMALL,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    assert res["data"].startswith(str(h5_folders["single"]))
    assert "1 held-out files" in res["data"]  # 3 files: one held out, whole
    cfg = config_from_dict(res["config"])
    data = make_data(cfg)
    assert data.train.shape == (8, 2, 16, 16) and data.test.shape == (3, 2, 16, 16)
    # the crops are magnitudes of the files' images, each slice scaled to a maximum of 1
    slices = [s / s.max() for i in range(3) for s in np.abs(_slices(2, 10 + i))]
    windows = [np.lib.stride_tricks.sliding_window_view(s, (16, 16)) for s in slices]
    for crop in data.train[:, 0].double().numpy():  # training crops may be flipped
        flips = (crop, crop[::-1], crop[:, ::-1], crop[::-1, ::-1])
        assert any(np.abs(w - f).max((-1, -2)).min() < 1e-5 for w in windows for f in flips)
    net, zero_filled = _by_hand(out)
    assert net == pytest.approx(res["psnr_unfolded"], abs=1e-4)
    assert zero_filled == pytest.approx(res["psnr_measurement"], abs=1e-4)
    assert res["task"].startswith("Single-coil MRI: 4× Cartesian undersampling")


@pytest.mark.parametrize("model, cls", [("varnet", VarNet), ("modl", MoDL)])
def test_multi_coil_mri_with_varnet_and_modl(h5_folders, tmp_path, model, cls, capsys):
    out = tmp_path / model
    # MoDL's prox runs CG: with 2 iterations it stops short at every call, which is shown
    # once and then counted in one line at the end of the run
    cg = ["--cg-iters", "2"] if model == "modl" else []
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("default")
        assert (
            main(
                [
                    "train",
                    "--physics",
                    "mri-multicoil",
                    "--model",
                    model,
                    "--data",
                    str(h5_folders["multi"]),
                    *SMALL,
                    *cg,
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    res = json.loads((out / "results.json").read_text())
    err = capsys.readouterr().err
    if model == "modl":
        count = res["suppressed_convergence_warnings"]
        assert count > 0 and len(shown) < count
        assert f"unroll train: {count} repeated convergence warning(s) were not shown" in err
        assert err.count("repeated convergence warning") == 1
    assert isinstance(load_model(None, out / "model.pt"), cls)
    net, zero_filled = _by_hand(out)
    assert net == pytest.approx(res["psnr_unfolded"], abs=1e-4)
    assert zero_filled == pytest.approx(res["psnr_measurement"], abs=1e-4)
    physics = make_physics(config_from_dict(res["config"]), "cpu", 16)
    assert physics.coil_maps.shape == (3, 16, 16)


def test_mri_without_data_trains_on_phantoms(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--physics", "mri", *SMALL, "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["data"] == "synthetic phantoms (unroll.data.mri_phantoms)"
    cfg = config_from_dict(res["config"])
    x = make_data(cfg).test
    from unroll.data import mri_phantoms

    assert torch.equal(as_picture(x, cfg), mri_phantoms(3, 16, seed=cfg.seed + 100_003))
