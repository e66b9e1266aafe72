"""DEQ benchmark: unroll.deq against TorchDEQ 0.1.0 on a contractive tanh layer.

The layer is ``z = tanh(W z + U x + b)`` with ``W`` scaled to spectral radius ρ ∈ {0.9, 0.99},
width d ∈ {64, 256}, batch 32, float32, forward and backward tolerance 1e-5 (relative
residual), loss ``⟨c, z*⟩``. Measured side by side in one run (CPU, 1 thread, interleaved
repeats, medians):

1. forward and backward iteration counts, forward+backward wall time and the gradient error
   (max over W, U, b, x of ``‖g − g_ref‖/‖g_ref‖``; ``g_ref``: float64 fixed point to 1e-14
   and dense per-sample adjoint solves) for
   * unroll: plain iteration + fixed-point backward, and Anderson forward + backward
     (relative ridge 1e-4, window 5), per-sample (``batched=True``: every sample meets the
     tolerance, TorchDEQ's criterion) and whole-batch (one residual for the batch);
   * TorchDEQ (``core="indexing", ift=True``): fixed-point iteration; Anderson with its
     defaults (m=6, λ=1e-4 absolute); Anderson tuned (λ=1e-12, forward and backward);
2. per-step cost of ``fixed_point_iteration`` (and TorchDEQ's ``fixed_point_iter``) relative
   to a bare ``for`` loop over ``f``, equal work (``tol=0``, 300 steps, d=64).

Targets (issue 4): unroll Anderson fwd+bwd time ≤ 0.3× TorchDEQ Anderson (defaults) and
≤ 0.8× TorchDEQ tuned Anderson, with equal or better gradient error; per-step overhead ≤ 1.3×
the bare loop.

Run: ``python benchmarks/deq.py`` (TorchDEQ is used when importable: the ``bench`` extra, or
the anchors venv with ``PYTHONPATH=.``). ``--quick`` runs one small problem.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import statistics
import time
import warnings

import torch

from unroll.equilibrium import DEQConfig, deq
from unroll.fixed_point import fixed_point_iteration
from unroll.linear_solve import ConvergenceWarning, solve_anderson, solve_fixed_point

try:  # the anchor, optional
    import torchdeq
    from torchdeq.solver import anderson_solver, register_solver
except ImportError:  # pragma: no cover - depends on the environment
    torchdeq = None

TOL = 1e-5
MAX_ITER = 2000
BATCH = 32


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# =========================================================================== problem
def layer(d: int, rho: float, seed: int = 0):
    """``(W, U, b, x, c)`` in float64; ``W`` has spectral radius ``rho``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, d, generator=g, dtype=torch.float64)
    w = w * rho / torch.linalg.eigvals(w).abs().max()
    u = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    b = 0.01 * torch.randn(d, generator=g, dtype=torch.float64)
    x = 0.1 * torch.randn(BATCH, d, generator=g, dtype=torch.float64)
    c = torch.randn(BATCH, d, generator=g, dtype=torch.float64)
    return w, u, b, x, c


def f(z, w, u, b, x):
    return torch.tanh(z @ w.T + x @ u.T + b)


def reference_grads(w, u, b, x, c) -> list[torch.Tensor]:
    """Exact float64 gradients of ⟨c, z*⟩: z* to 1e-14, then per-sample dense adjoint solves
    ``(I − J_iᵀ) v_i = c_i`` with ``J_i = diag(1 − z_i*²) W``."""
    z = torch.zeros_like(x)
    with torch.no_grad():
        for _ in range(100000):
            z_new = f(z, w, u, b, x)
            done = float((z_new - z).norm() / z_new.norm()) < 1e-15
            z = z_new
            if done:
                break
    s = 1 - z**2
    jac_t = (s[:, :, None] * w[None]).transpose(1, 2)  # J_iᵀ
    eye = torch.eye(w.shape[0], dtype=w.dtype)
    v = torch.linalg.solve(eye - jac_t, c.unsqueeze(-1)).squeeze(-1)
    a = s * v
    return [a.T @ z, a.T @ x, a.sum(0), a @ u]


def grad_error(grads: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max(float((g.double() - r).norm() / r.norm()) for g, r in zip(grads, ref))


# =========================================================================== runners
class Recorder:
    """Wraps a linear solver to record the backward iteration count (diagnostics only)."""

    def __init__(self, solve):
        self.solve, self.num_iter = solve, None

    def __call__(self, matvec, b, return_info=False, **kw):
        x, info = self.solve(matvec, b, return_info=True, **kw)
        self.num_iter = int(info.num_iter.max())
        return (x, info) if return_info else x


def unroll_runner(anderson: bool, batched: bool):
    common = dict(rtol=TOL, maxiter=MAX_ITER, batched=batched)
    solve = functools.partial(solve_anderson if anderson else solve_fixed_point, **common)
    rec = Recorder(solve)
    cfg = DEQConfig(
        anderson_acceleration_forward=anderson,
        max_iter=MAX_ITER,
        tol=TOL,
        stop_mode="rel",
        batched=batched,
        backward_solve=rec,
    )

    def run(params, c):
        z, info = deq(f, torch.zeros_like(params[3]), *params, config=cfg, return_info=True)
        (z * c).sum().backward()
        return int(info.num_iter.max()), rec.num_iter

    return run


def torchdeq_runner(solver: str):
    if solver == "anderson_tuned":
        register_solver("anderson_tuned", functools.partial(anderson_solver, lam=1e-12))
    model = torchdeq.get_deq(
        core="indexing",
        ift=True,
        f_solver=solver,
        b_solver=solver,
        f_max_iter=MAX_ITER,
        b_max_iter=MAX_ITER,
        f_tol=TOL,
        b_tol=TOL,
        f_stop_mode="rel",
        b_stop_mode="rel",
    )
    box = {}

    def writer(info):
        box["b"] = int(info["nstep"].max())

    def run(params, c):
        w, u, b, x = params
        z_out, info = model(lambda z: f(z, w, u, b, x), torch.zeros_like(x), backward_writer=writer)
        (z_out[-1] * c).sum().backward()
        return int(info["nstep"].max()), box.get("b")

    return run


def runners() -> dict:
    out = {
        "unroll fixed-point": unroll_runner(False, False),
        "unroll fixed-point batched": unroll_runner(False, True),
        "unroll anderson": unroll_runner(True, False),
        "unroll anderson batched": unroll_runner(True, True),
    }
    if torchdeq is not None:
        out["torchdeq fixed-point"] = torchdeq_runner("fixed_point_iter")
        out["torchdeq anderson (defaults)"] = torchdeq_runner("anderson")
        out["torchdeq anderson (lam=1e-12)"] = torchdeq_runner("anderson_tuned")
    return out


def measure_problem(d: int, rho: float, repeat: int) -> dict:
    w, u, b, x, c = layer(d, rho)
    ref = reference_grads(w, u, b, x, c)
    c32 = c.float()
    table = {}
    times: dict[str, list[float]] = {}
    all_runners = runners()
    for _ in range(repeat + 1):  # interleaved; the first round is a warm-up
        for name, run in all_runners.items():
            params = [t.float().requires_grad_() for t in (w, u, b, x)]
            t0 = time.perf_counter()
            n_fwd, n_bwd = run(params, c32)
            elapsed = time.perf_counter() - t0
            if name not in table:
                table[name] = {
                    "fwd_iter": n_fwd,
                    "bwd_iter": n_bwd,
                    "grad_err": grad_error([p.grad for p in params], ref),
                }
                times[name] = []
            else:
                times[name].append(elapsed)
    for name in table:
        table[name]["time_ms"] = 1e3 * statistics.median(times[name])
    return table


# =========================================================================== overhead
def measure_overhead(repeat: int, steps: int = 300, d: int = 64) -> dict:
    w, u, b, x, _ = (t.float() for t in layer(d, 0.9))
    z0 = torch.zeros_like(x)

    def g(z):
        return f(z, w, u, b, x)

    def bare():
        z = z0
        for _ in range(steps):
            z = g(z)
        return z

    cases = {
        "bare loop": bare,
        "unroll fixed_point_iteration": lambda: fixed_point_iteration(
            f, z0, w, u, b, x, tol=0.0, maxiter=steps
        ),
        "unroll fixed_point_iteration batched": lambda: fixed_point_iteration(
            f, z0, w, u, b, x, tol=0.0, maxiter=steps, batched=True
        ),
    }
    if torchdeq is not None:
        fp_iter = torchdeq.solver.get_solver("fixed_point_iter")
        cases["torchdeq fixed_point_iter"] = lambda: fp_iter(g, z0, max_iter=steps, tol=0.0)
    times: dict[str, list[float]] = {k: [] for k in cases}
    with torch.no_grad():
        for i in range(repeat + 1):
            for name, fn in cases.items():
                t0 = time.perf_counter()
                fn()
                if i:
                    times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        k: {"us_per_step": 1e6 * v / steps, "vs_bare": v / med["bare loop"]} for k, v in med.items()
    }


# =========================================================================== main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one small problem")
    opts = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", ConvergenceWarning)
    problems = [(64, 0.9)] if opts.quick else [(64, 0.9), (64, 0.99), (256, 0.9), (256, 0.99)]
    result = {
        "torchdeq": _version("torchdeq"),
        "tol": TOL,
        "batch": BATCH,
        "problems": {},
        "overhead": measure_overhead(opts.repeat * 3),
    }
    for d, rho in problems:
        result["problems"][f"d={d} rho={rho}"] = measure_problem(d, rho, opts.repeat)
    ratios = {}
    for key, table in result["problems"].items():
        ours = table["unroll anderson batched"]["time_ms"]
        for anchor in ("torchdeq anderson (defaults)", "torchdeq anderson (lam=1e-12)"):
            if anchor in table:
                ratios[f"{key}: unroll anderson / {anchor}"] = ours / table[anchor]["time_ms"]
    result["ratios"] = ratios
    print(json.dumps(result))
    print_tables(result)


def print_tables(result: dict) -> None:
    for key, table in result["problems"].items():
        print(f"\n{key}  (batch {result['batch']}, tol {result['tol']}, float32)")
        print(f"{'method':32s} {'fwd it':>7s} {'bwd it':>7s} {'fwd+bwd ms':>11s} {'grad err':>9s}")
        for name, row in table.items():
            bwd = "-" if row["bwd_iter"] is None else str(row["bwd_iter"])
            print(
                f"{name:32s} {row['fwd_iter']:>7d} {bwd:>7s} {row['time_ms']:>11.2f} "
                f"{row['grad_err']:>9.1e}"
            )
    print(f"\n{'per-step cost, d=64, 300 steps':40s} {'us/step':>8s} {'vs bare':>8s}")
    for name, row in result["overhead"].items():
        print(f"{name:40s} {row['us_per_step']:>8.1f} {row['vs_bare']:>8.2f}")
    if result["ratios"]:
        print(f"\n{'time ratio (target <= 0.3 defaults, <= 0.8 tuned)':70s}")
        for name, val in result["ratios"].items():
            print(f"{name:70s} {val:>6.2f}")


if __name__ == "__main__":
    main()
