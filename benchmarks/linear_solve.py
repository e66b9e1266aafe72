"""Linear-solver benchmark: unroll's solve_cg against a bare loop, TorchOpt, and a Python loop.

Prints one JSON line and a table. Figures (all CPU, 1 thread, float64 unless stated):

1. time per CG iteration of ``solve_cg`` vs a bare hand-written tensor CG loop on the same
   problem, equal work (``rtol=atol=0``, fixed ``maxiter``); target ratio <= 1.10;
2. ``solve_cg`` vs TorchOpt 0.7.3's ``solve_cg`` on the ridge-regression Hessian
   (n=1000, d=200, given as a matvec), same tolerance; target <= 0.5;
3. ``vmap`` over 64 small systems vs a Python loop over them; target speed-up >= 5.

Run: ``python benchmarks/linear_solve.py`` (TorchOpt is used when importable: the ``bench``
extra, or the anchors venv with ``PYTHONPATH=.``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from unroll.linear_solve import solve_cg

try:  # the anchor, optional
    import torchopt
except ImportError:  # pragma: no cover - depends on the environment
    torchopt = None


def timeit(fn, repeat: int) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bare_cg(matvec, b, iters: int) -> torch.Tensor:
    """The reference: textbook CG on one tensor, no checks, no masks."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = r @ r
    for _ in range(iters):
        ap = matvec(p)
        alpha = rs / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = r @ r
        p = r + (rs_new / rs) * p
        rs = rs_new
    return x


def ridge_problem(n: int, d: int, dtype=torch.float64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randn(n, generator=g, dtype=dtype)
    lam = 1.0

    def matvec(v):
        return X.T @ (X @ v) + lam * v

    return matvec, X.T @ y


def per_iteration(repeat: int, iters: int = 200) -> dict:
    matvec, b = ridge_problem(1000, 200)
    t_bare = timeit(lambda: bare_cg(matvec, b, iters), repeat)
    t_ours = timeit(lambda: solve_cg(matvec, b, rtol=0.0, atol=0.0, maxiter=iters), repeat)
    return {
        "bare_us_per_iter": 1e6 * t_bare / iters,
        "unroll_us_per_iter": 1e6 * t_ours / iters,
        "ratio_unroll_over_bare": t_ours / t_bare,
        "target": "<= 1.10",
    }


def vs_torchopt(repeat: int, rtol: float = 1e-6) -> dict:
    matvec, b = ridge_problem(1000, 200)
    x, info = solve_cg(matvec, b, rtol=rtol, return_info=True)
    out = {"rtol": rtol, "unroll_iters": int(info.num_iter)}
    t_ours = timeit(lambda: solve_cg(matvec, b, rtol=rtol), repeat)
    out["unroll_ms"] = 1e3 * t_ours
    if torchopt is None:
        out["torchopt"] = "not installed"
        return out
    # The floor both solvers share: the matvecs alone (CG needs one per iteration).
    t_mv = timeit(lambda: [matvec(b) for _ in range(int(info.num_iter))], repeat)
    out["matvec_only_ms"] = 1e3 * t_mv
    solver = torchopt.linear_solve.solve_cg(rtol=rtol)
    x_to = solver(matvec, b)
    t_to = timeit(lambda: solver(matvec, b), repeat)
    ref = torch.linalg.solve(torch.func.jacrev(matvec)(torch.zeros_like(b)), b)
    out.update(
        {
            "torchopt_ms": 1e3 * t_to,
            "ratio_unroll_over_torchopt": t_ours / t_to,
            "ratio_matvec_floor_over_torchopt": t_mv / t_to,
            "unroll_rel_err": float((x - ref).norm() / ref.norm()),
            "torchopt_rel_err": float((x_to - ref).norm() / ref.norm()),
            "target": "<= 0.5",
        }
    )
    return out


def vmap_vs_loop(repeat: int, batch: int = 64, n: int = 16) -> dict:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(batch, n, n, generator=g, dtype=torch.float64)
    mats = m @ m.transpose(-1, -2) + n * torch.eye(n, dtype=torch.float64)
    bs = torch.randn(batch, n, generator=g, dtype=torch.float64)

    def one(a, b):
        return solve_cg(lambda v: a @ v, b, rtol=1e-10)

    vm = torch.func.vmap(one)
    t_vmap = timeit(lambda: vm(mats, bs), repeat)
    t_loop = timeit(lambda: [one(mats[i], bs[i]) for i in range(batch)], repeat)
    err = float((vm(mats, bs) - torch.linalg.solve(mats, bs)).abs().max())
    return {
        "batch": batch,
        "n": n,
        "vmap_ms": 1e3 * t_vmap,
        "loop_ms": 1e3 * t_loop,
        "speedup_vmap_over_loop": t_loop / t_vmap,
        "vmap_max_abs_err": err,
        "target": ">= 5",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = {
        "benchmark": "linear_solve",
        "torch": torch.__version__,
        "torchopt": getattr(torchopt, "__version__", None),
        "per_iteration": per_iteration(args.repeat),
        "vs_torchopt": vs_torchopt(args.repeat),
        "vmap_vs_loop": vmap_vs_loop(max(3, args.repeat // 3)),
    }
    print(json.dumps(result))
    pi, vt, vl = result["per_iteration"], result["vs_torchopt"], result["vmap_vs_loop"]
    rows = [
        ("CG time/iter, unroll / bare loop", f"{pi['ratio_unroll_over_bare']:.3f}", "<= 1.10"),
        (
            "CG solve, unroll / TorchOpt",
            f"{vt.get('ratio_unroll_over_torchopt', float('nan')):.3f}",
            "<= 0.5",
        ),
        (
            "  (matvecs alone / TorchOpt: the floor)",
            f"{vt.get('ratio_matvec_floor_over_torchopt', float('nan')):.3f}",
            "",
        ),
        ("vmap(64 systems) speed-up over loop", f"{vl['speedup_vmap_over_loop']:.1f}x", ">= 5x"),
    ]
    print(f"\n{'figure':42s} {'measured':>10s} {'target':>8s}")
    for name, val, tgt in rows:
        print(f"{name:42s} {val:>10s} {tgt:>8s}")
    return result


if __name__ == "__main__":
    main()
