"""Constant-memory training of an unfolded HQS network: unroll vs DeepInverse 0.4.1.

DeepInverse's constant-memory example: HQS, 5 unfolded iterations, ``PnP(DnCNN(depth=7))``,
per-iteration ``stepsize`` and ``g_param`` trainable, ``Blur(gaussian_blur(2.5),
padding="valid")`` with ``GaussianNoise(0.1)``, CG ``max_iter=100``, ``tol=1e-8``, batch
8×3×32×32 (float32), Adam (lr 5e-4). Full backpropagation through CG ("explicit") vs the
closed-form implicit backward of the least-squares prox ("implicit"), side by side, one
thread, interleaved repeats, medians. unroll's CG prox is used throughout
(``separable_prox=False``: its default exact prox of this separable kernel has no CG to compare;
see ``least_squares.py``). Measured in one run:

* time per training step (zero_grad, forward, MSE, backward, Adam step);
* bytes of tensors saved for backward (``saved_tensors_hooks``) and peak RSS (a fresh
  subprocess per case: the peak VmHWM of two training steps above the RSS after setup);
* agreement of the two modes' gradients (same weights, same batch), and unroll vs DeepInverse;
* the floor: the same five DnCNN forward/backward passes alone (no physics);
* at ``tol=0`` (exactly ``K`` CG iterations), saved bytes for ``K`` = 25/100/400 and step
  times at ``K`` = 25.

DeepInverse is used when importable (``bench`` extra, or ``/work/shared/anchors`` for its
torchvision shim); otherwise only unroll's figures are printed.

Usage::

    python benchmarks/unfolded_training.py [--repeats 7] [--threads 1]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings

import torch
from _common import load_deepinv, saved_bytes  # benchmarks/_common.py

import unroll.physics as up
from unroll.models import DnCNN
from unroll.optim import L2, PnP
from unroll.unfolded import unfolded_builder

MAX_ITER = 5
BATCH, CHANNELS, SIZE = 8, 3, 32


# ---------------------------------------------------------------------- instrumentation
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the peak-RSS counter (VmHWM) to the current RSS (Linux ``clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------- the cases
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, CHANNELS, SIZE, SIZE, generator=g)
    physics = up.Blur(up.gaussian_blur(2.5), padding="valid")
    ax = physics.A(x)
    return x, ax + 0.1 * torch.randn(ax.shape, generator=g)


def params_algo() -> dict:
    return {"stepsize": [1.0] * MAX_ITER, "g_param": [0.01] * MAX_ITER}


class Case:
    """One training setup: ``step()`` runs a training step; ``forward()`` only the forward."""

    def __init__(self, model, physics, x, y, grad_params=None):
        self.model, self.physics, self.x, self.y = model, physics, x, y
        self.params = list(model.parameters())
        self.opt = torch.optim.Adam(self.params, lr=5e-4, weight_decay=1e-8)

    def loss(self) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.model(y=self.y, physics=self.physics), self.x)

    def step(self) -> None:
        self.opt.zero_grad()
        self.loss().backward()
        self.opt.step()

    def forward(self) -> None:
        self.loss()

    def grads(self) -> torch.Tensor:
        """Gradients in one library-independent order: stepsizes, g_params, network weights."""
        named = list(self.model.named_parameters())
        g = torch.autograd.grad(self.loss(), [p for _, p in named], allow_unused=True)
        flat = {
            n: (gi if gi is not None else torch.zeros_like(p)).reshape(-1)
            for (n, p), gi in zip(named, g)
        }
        groups = [
            [v for n, v in flat.items() if "stepsize" in n],
            [v for n, v in flat.items() if "g_param" in n or "sigma_denoiser" in n],
            [v for n, v in flat.items() if "denoiser." in n],
        ]
        return torch.cat([t for group in groups for t in group])


class FloorModel(torch.nn.Module):
    """Five DnCNN passes from ``Aᵀy`` with nothing else: the network's own cost."""

    def __init__(self, denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, y, physics):
        h = physics.A_adjoint(y)
        for _ in range(MAX_ITER):
            h = self.denoiser(h, 0.01)
        return h


def ours(implicit: bool, cg_iter: int, tol: float, x, y) -> Case:
    physics = up.Blur(
        up.gaussian_blur(2.5),
        padding="valid",
        noise_model=up.GaussianNoise(0.1),
        max_iter=cg_iter,
        tol=tol,
        implicit_backward_solver=implicit,
        separable_prox=False,  # CG against DeepInverse's CG (the Gaussian has an exact prox)
    )
    torch.manual_seed(42)
    prior = PnP(denoiser=DnCNN(depth=7, pretrained=None))
    model = unfolded_builder(
        iteration="HQS",
        params_algo=params_algo(),
        trainable_params=["g_param", "stepsize"],
        data_fidelity=L2(),
        max_iter=MAX_ITER,
        prior=prior,
    )
    return Case(model, physics, x, y)


def floor(x, y) -> Case:
    physics = up.Blur(up.gaussian_blur(2.5), padding="valid")
    torch.manual_seed(42)
    return Case(FloorModel(DnCNN(depth=7, pretrained=None)), physics, x, y)


def theirs(dinv, implicit: bool, cg_iter: int, tol: float, x, y) -> Case:
    physics = dinv.physics.Blur(
        filter=dinv.physics.functional.blur.gaussian_blur(sigma=(2.5, 2.5)),
        padding="valid",
        noise_model=dinv.physics.GaussianNoise(sigma=0.1),
        max_iter=cg_iter,
        tol=tol,
        implicit_backward_solver=implicit,
    )
    torch.manual_seed(42)
    denoiser = dinv.models.DnCNN(depth=7, pretrained=None)
    torch.manual_seed(42)
    denoiser.load_state_dict(DnCNN(depth=7, pretrained=None).state_dict())  # same weights
    prior = dinv.optim.prior.PnP(denoiser=denoiser)
    model = dinv.unfolded.unfolded_builder(
        iteration="HQS",
        params_algo=params_algo(),
        trainable_params=["g_param", "stepsize"],
        data_fidelity=dinv.optim.data_fidelity.L2(),
        max_iter=MAX_ITER,
        prior=prior,
    )
    return Case(model, physics, x, y)


def build(name: str, dinv, cg_iter: int = 100, tol: float = 1e-8) -> Case:
    x, y = data()
    lib, _, mode = name.partition("_")
    if lib == "floor":
        return floor(x, y)
    if lib == "unroll":
        return ours(mode == "implicit", cg_iter, tol, x, y)
    return theirs(dinv, mode == "implicit", cg_iter, tol, x, y)


# ---------------------------------------------------------------------- measurements
def time_steps(cases: dict[str, Case], repeats: int) -> dict[str, float]:
    for c in cases.values():  # warm-up
        c.step()
    times: dict[str, list[float]] = {n: [] for n in cases}
    for _ in range(repeats):
        for name, c in cases.items():
            t0 = time.perf_counter()
            c.step()
            times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(t) for n, t in times.items()}


def peak_rss_subprocess(name: str, threads: int) -> dict[str, float] | None:
    cmd = [sys.executable, __file__, "--rss-case", name, "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_case(name: str) -> None:
    dinv = load_deepinv() if name.startswith("deepinv") else None
    case = build(name, dinv)
    base = _status_kb("VmRSS")
    reset = reset_peak_rss()
    for _ in range(2):
        case.step()
    peak = _status_kb("VmHWM")
    print(
        json.dumps(
            {
                "peak_rss_mb": peak / 1024,
                "step_peak_above_setup_mb": (peak - base) / 1024 if reset else None,
            }
        )
    )


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rss-case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_case:
        rss_case(args.rss_case)
        return
    dinv = load_deepinv()
    names = ["unroll_implicit", "unroll_explicit", "floor"]
    if dinv is not None:
        names += ["deepinv_implicit", "deepinv_explicit"]

    cases = {n: build(n, dinv) for n in names}
    saved = {n: saved_bytes(c.forward) for n, c in cases.items()}
    grads = {n: c.grads() for n, c in cases.items() if n != "floor"}
    step = time_steps(cases, args.repeats)
    del cases

    # equal work: exactly K CG iterations (tol = 0; the solvers' "did not reach tol=0"
    # warnings are expected there)
    warnings.filterwarnings("ignore", message=".*(CG|conjugate).*")
    sweep_saved: dict[str, dict[int, int]] = {}
    for n in names:
        if n == "floor":
            continue
        ks = (25, 100, 400) if n.endswith("implicit") else (25, 100)
        sweep_saved[n] = {k: saved_bytes(build(n, dinv, k, 0.0).forward) for k in ks}
    step25 = time_steps({n: build(n, dinv, 25, 0.0) for n in names if n != "floor"}, args.repeats)
    rss = {} if args.no_rss else {n: peak_rss_subprocess(n, args.threads) for n in names}

    ratios: dict[str, float] = {
        "unroll_implicit_over_floor_time": step["unroll_implicit"] / step["floor"],
        "unroll_implicit_over_explicit_time_cg25": step25["unroll_implicit"]
        / step25["unroll_explicit"],
        "unroll_implicit_saved_400_over_25": sweep_saved["unroll_implicit"][400]
        / sweep_saved["unroll_implicit"][25],
    }
    agreement = {
        "unroll_implicit_vs_explicit_grad_rel": rel(
            grads["unroll_implicit"], grads["unroll_explicit"]
        )
    }
    if dinv is not None:
        ratios.update(
            {
                "unroll_implicit_over_deepinv_implicit_time": step["unroll_implicit"]
                / step["deepinv_implicit"],
                "unroll_explicit_over_deepinv_explicit_time": step["unroll_explicit"]
                / step["deepinv_explicit"],
                "unroll_implicit_over_deepinv_implicit_saved": saved["unroll_implicit"]
                / saved["deepinv_implicit"],
                "deepinv_implicit_over_explicit_time_cg25": step25["deepinv_implicit"]
                / step25["deepinv_explicit"],
            }
        )
        agreement.update(
            {
                "deepinv_implicit_vs_explicit_grad_rel": rel(
                    grads["deepinv_implicit"], grads["deepinv_explicit"]
                ),
                "unroll_vs_deepinv_explicit_grad_rel": rel(
                    grads["unroll_explicit"], grads["deepinv_explicit"]
                ),
            }
        )
    summary = {
        "benchmark": "unfolded_training",
        "threads": args.threads,
        "repeats": args.repeats,
        "deepinv": getattr(dinv, "__version__", None),
        "step_s": step,
        "saved_mb": {n: b / 1e6 for n, b in saved.items()},
        "saved_mb_tol0": {n: {k: b / 1e6 for k, b in v.items()} for n, v in sweep_saved.items()},
        "step_s_tol0_cg25": step25,
        "peak_rss": rss,
        "grad_agreement": agreement,
        "ratios": ratios,
    }
    print(json.dumps(summary))
    print()
    print(
        f"{'case':<18}{'step s':>9}{'saved MB':>10}{'step s @CG25':>14}"
        f"{'saved MB @CG 25/100/400 (tol=0)':>34}{'RSS peak MB':>13}"
    )
    for n in names:
        sw = sweep_saved.get(n, {})
        sweep = "/".join(f"{sw[k] / 1e6:.0f}" if k in sw else "-" for k in (25, 100, 400))
        r = rss.get(n) or {}
        print(
            f"{n:<18}{step[n]:>9.3f}{saved[n] / 1e6:>10.1f}"
            f"{step25.get(n, float('nan')):>14.3f}{sweep:>34}"
            f"{r.get('step_peak_above_setup_mb', float('nan')):>13.0f}"
        )
    print()
    for k, v in {**ratios, **agreement}.items():
        print(f"{k:<48}{v:>10.3g}")


if __name__ == "__main__":
    main()
