"""Slow: with their default settings the demo and every physics of ``train`` beat the tuned
classical baseline (TV-FISTA) on held-out crops; the demo by at least 1.5 dB.

Run one at a time (``-m slow -k ...``): each trains for one to three minutes on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _run(tmp_path, *args: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "unroll", *args, "--out", str(tmp_path / "run"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=1800,
        env=ENV,
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    return json.loads((tmp_path / "run" / "results.json").read_text()), seconds


@pytest.mark.slow
def test_default_demo_beats_tuned_tv_by_1_5_db(tmp_path):
    res, seconds = _run(tmp_path, "demo")
    print(f"demo: {seconds:.0f} s wall")
    assert res["psnr_classical"] > res["psnr_measurement"]
    assert res["psnr_unfolded"] - res["psnr_classical"] >= 1.5, res
    assert res["ssim_unfolded"] > res["ssim_classical"]


@pytest.mark.slow
@pytest.mark.parametrize("physics", ["inpainting", "denoising", "mri", "mri-multicoil"])
def test_every_physics_beats_tuned_tv_with_default_settings(tmp_path, physics):
    res, seconds = _run(tmp_path, "train", "--physics", physics)
    print(f"{physics}: {seconds:.0f} s wall")
    assert res["psnr_unfolded"] > res["psnr_classical"] > res["psnr_measurement"], res
