"""Forward + backward of the least-squares prox, unroll vs DeepInverse 0.4.1, side by side.

Problem (DeepInverse's constant-memory example): ``Blur(gaussian_blur(σ=2.5), padding="valid")``,
images 8×3×32×32 (float32), ``h = argmin ½‖Ax − y‖² + 1/(2γ)‖x − z‖²`` with γ = 1, CG
``max_iter=100``, ``tol=1e-8``; the loss is a fixed random projection of ``h`` and gradients
flow to ``z`` and ``γ``. Measured, in one run with interleaved repeats (medians):

* wall time of forward + backward, implicit and explicit (unrolled) backward;
* bytes of tensors saved for backward (``torch.autograd.graph.saved_tensors_hooks``);
* CG iterations of the forward and the backward solves;
* the same at equal work (``tol=0``: exactly 100 forward + 100 backward iterations), giving
  the per-iteration cost ratio;
* ``unroll_exact``: the default ``Blur`` prox of this separable (Gaussian) kernel, exact by
  Kronecker eigendecomposition instead of CG (the CG cases pass ``separable_prox=False``);
* the demo's prox (replicate padding, σ = 1.5, 8×3×40×40, γ = 20, CG ``tol=1e-4``): exact vs
  CG time and the CG result's relative error.

DeepInverse is used when importable (``bench`` extra; ``/work/shared/anchors`` shim for its
torchvision import); otherwise only unroll's figures are printed.

Usage::

    python benchmarks/least_squares.py [--repeats 15] [--batch 8] [--size 32]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import load_deepinv, saved_bytes  # benchmarks/_common.py

import unroll.physics as up

LS_MODULE = importlib.import_module("unroll.physics.prox")


# ---------------------------------------------------------------------- anchors


# ---------------------------------------------------------------------- instrumentation
class IterCounter:
    """Counts CG iterations per solve by wrapping the CG functions the two libraries call."""

    def __init__(self) -> None:
        self.solves: list[int] = []

    def install_unroll(self) -> None:
        original = LS_MODULE.solve_cg

        def counting(matvec, b, **kw):
            want = kw.get("return_info", False)
            kw["return_info"] = True
            x, info = original(matvec, b, **kw)
            self.solves.append(int(info.num_iter.max()))
            return (x, info) if want else x

        LS_MODULE.solve_cg = counting
        LS_MODULE._SYSTEM_SOLVERS["CG"] = counting  # the table prox_l2 looks CG up in

    def install_deepinv(self) -> None:
        mod = sys.modules["deepinv.optim.linear.least_squares"]
        original = mod.conjugate_gradient

        def counting(A, b, **kw):
            calls = [0]

            def counted(x):
                calls[0] += 1
                return A(x)

            out = original(counted, b, **kw)
            self.solves.append(calls[0] - 1)  # minus the initial residual b - A x0
            return out

        mod.conjugate_gradient = counting

    def take(self) -> list[int]:
        out, self.solves = self.solves, []
        return out


# ---------------------------------------------------------------------- the cases
def make_cases(args, dinv, tol: float) -> dict[str, Callable[[], tuple]]:
    torch.manual_seed(0)
    B, C, N = args.batch, 3, args.size
    kernel = up.gaussian_blur(2.5)
    x = torch.rand(B, C, N, N)
    ours: dict[Any, Any] = {
        imp: up.Blur(
            kernel,
            padding="valid",
            max_iter=args.max_iter,
            tol=tol,
            implicit_backward_solver=imp,
            separable_prox=False,  # CG against CG
        )
        for imp in (True, False)
    }
    ours["exact"] = up.Blur(kernel, padding="valid")  # Gaussian: separable, exact prox
    y = ours[True].A(x) + 0.01 * torch.randn(
        B, C, N - kernel.shape[-1] + 1, N - kernel.shape[-1] + 1
    )
    z0 = x + 0.1 * torch.randn_like(x)
    proj = torch.randn_like(x)
    cases: dict[str, Callable[[], tuple]] = {}

    def runner(prox):
        def run():
            z = z0.clone().requires_grad_()
            gamma = torch.tensor(1.0, requires_grad=True)
            h = prox(z, gamma)
            (h * proj).sum().backward()
            return h.detach(), z.grad, gamma.grad

        def forward_only():
            z = z0.clone().requires_grad_()
            gamma = torch.tensor(1.0, requires_grad=True)
            return prox(z, gamma)

        return run, forward_only

    for imp in (True, False):
        name = "unroll_" + ("implicit" if imp else "explicit")
        cases[name] = runner(lambda z, g, p=ours[imp]: p.prox_l2(z, y, g))
    cases["unroll_exact"] = runner(lambda z, g, p=ours["exact"]: p.prox_l2(z, y, g))
    if dinv is not None:
        dk = dinv.physics.functional.blur.gaussian_blur(sigma=(2.5, 2.5))
        assert torch.allclose(dk, kernel, atol=1e-6), "kernels differ"
        for imp in (True, False):
            phys = dinv.physics.Blur(
                filter=dk,
                padding="valid",
                max_iter=args.max_iter,
                tol=tol,
                implicit_backward_solver=imp,
            )
            name = "deepinv_" + ("implicit" if imp else "explicit")
            cases[name] = runner(lambda z, g, p=phys: p.prox_l2(z, y, g))
    return cases


def measure(args, dinv, counter: IterCounter, tol: float) -> dict[str, dict[str, Any]]:
    cases = make_cases(args, dinv, tol)
    results: dict[str, dict[str, Any]] = {name: {"times": []} for name in cases}
    for name, (run, fwd) in cases.items():  # warm-up, iteration counts, saved bytes, outputs
        counter.take()
        h, gz, gg = run()
        solves = counter.take()
        results[name].update(
            fwd_iters=solves[0] if solves else None,
            bwd_iters=sum(solves[1:]) if len(solves) > 1 else None,
            saved_bytes=saved_bytes(fwd),
            h=h,
            gz=gz,
            gg=gg,
        )
    for _ in range(args.repeats):  # interleaved repeats
        for name, (run, _) in cases.items():
            t0 = time.perf_counter()
            run()
            results[name]["times"].append(time.perf_counter() - t0)
    counter.take()
    for r in results.values():
        r["time_ms"] = 1e3 * statistics.median(r.pop("times"))
    return results


def demo_problem(repeats: int) -> dict[str, float]:
    """The demo's prox (``python -m unroll demo``): replicate padding, σ = 1.5, 8×3×40×40,
    γ = 20, CG ``tol=1e-4`` (the demo's settings), forward + backward; exact vs CG."""
    torch.manual_seed(0)
    kernel = up.gaussian_blur(1.5)
    ops = {
        "exact": up.Blur(kernel, padding="replicate", max_iter=50, tol=1e-4),
        "cg": up.Blur(kernel, padding="replicate", max_iter=50, tol=1e-4, separable_prox=False),
    }
    x = torch.rand(8, 3, 40, 40)
    y = ops["exact"].A(x) + 0.03 * torch.randn_like(x)
    z0, proj = torch.rand_like(x), torch.randn_like(x)
    times: dict[str, list[float]] = {name: [] for name in ops}
    outs = {}
    for _ in range(repeats + 1):  # the first round warms up
        for name, op in ops.items():
            z = z0.clone().requires_grad_()
            gamma = torch.tensor(20.0, requires_grad=True)
            t0 = time.perf_counter()
            h = op.prox_l2(z, y, gamma)
            (h * proj).sum().backward()
            times[name].append(time.perf_counter() - t0)
            outs[name] = h.detach()
    ms = {name: 1e3 * statistics.median(t[1:]) for name, t in times.items()}
    return {
        "exact_ms": ms["exact"],
        "cg_ms": ms["cg"],
        "exact_vs_cg_time": ms["exact"] / ms["cg"],
        "cg_h_rel_error": rel(outs["cg"], outs["exact"]),
    }


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dinv = load_deepinv()
    counter = IterCounter()
    counter.install_unroll()
    if dinv is not None:
        counter.install_deepinv()

    default = measure(args, dinv, counter, tol=1e-8)
    equal = measure(args, dinv, counter, tol=0.0)

    summary: dict[str, Any] = {
        "benchmark": "least_squares",
        "problem": {
            "batch": [args.batch, 3, args.size, args.size],
            "kernel": "gaussian 2.5",
            "padding": "valid",
            "gamma": 1.0,
            "max_iter": args.max_iter,
            "dtype": "float32",
            "threads": args.threads,
            "repeats": args.repeats,
        },
        "deepinv": None if dinv is None else dinv.__version__,
    }
    for label, res in (("tol_1e-8", default), ("tol_0", equal)):
        summary[label] = {
            name: {k: v for k, v in r.items() if k not in ("h", "gz", "gg")}
            for name, r in res.items()
        }
    ratios: dict[str, float] = {}
    if dinv is not None:
        d, e = default, equal
        ratios["implicit_time_vs_deepinv_implicit"] = (
            d["unroll_implicit"]["time_ms"] / d["deepinv_implicit"]["time_ms"]
        )
        ratios["explicit_time_vs_deepinv_explicit"] = (
            d["unroll_explicit"]["time_ms"] / d["deepinv_explicit"]["time_ms"]
        )
        ratios["implicit_per_iteration_vs_deepinv_at_tol0"] = (
            e["unroll_implicit"]["time_ms"] / e["deepinv_implicit"]["time_ms"]
        )
        ratios["implicit_saved_bytes_vs_deepinv_implicit"] = (
            d["unroll_implicit"]["saved_bytes"] / d["deepinv_implicit"]["saved_bytes"]
        )
        ratios["h_rel_diff_vs_deepinv"] = rel(d["unroll_implicit"]["h"], d["deepinv_implicit"]["h"])
        ratios["exact_time_vs_deepinv_implicit"] = (
            d["unroll_exact"]["time_ms"] / d["deepinv_implicit"]["time_ms"]
        )
        ratios["exact_h_rel_diff_vs_deepinv"] = rel(
            d["unroll_exact"]["h"], d["deepinv_implicit"]["h"]
        )
        ratios["exact_grad_z_rel_diff_vs_deepinv"] = rel(
            d["unroll_exact"]["gz"], d["deepinv_implicit"]["gz"]
        )
        ratios["grad_z_rel_diff_vs_deepinv"] = rel(
            d["unroll_implicit"]["gz"], d["deepinv_implicit"]["gz"]
        )
    ratios["exact_vs_implicit_cg_time"] = (
        default["unroll_exact"]["time_ms"] / default["unroll_implicit"]["time_ms"]
    )
    ratios["exact_h_rel_diff_vs_cg_1e-8"] = rel(
        default["unroll_exact"]["h"], default["unroll_implicit"]["h"]
    )
    ratios["implicit_vs_explicit_time"] = (
        default["unroll_implicit"]["time_ms"] / default["unroll_explicit"]["time_ms"]
    )
    ratios["grad_z_rel_diff_implicit_vs_explicit"] = rel(
        default["unroll_implicit"]["gz"], default["unroll_explicit"]["gz"]
    )
    summary["ratios"] = ratios
    summary["demo_problem"] = demo = demo_problem(args.repeats)
    print(json.dumps(summary))

    print()
    print(f"{'case':<20}{'tol':>6}{'time ms':>10}{'saved KiB':>11}{'fwd it':>8}{'bwd it':>8}")
    for label, res in (("1e-8", default), ("0", equal)):
        for name, r in res.items():
            print(
                f"{name:<20}{label:>6}{r['time_ms']:>10.2f}{r['saved_bytes'] / 1024:>11.1f}"
                f"{str(r['fwd_iters']):>8}{str(r['bwd_iters']):>8}"
            )
    print()
    for k, v in ratios.items():
        print(f"{k:<48}{v:>10.3g}")
    print("\nthe demo's prox (replicate, σ=1.5, 8×3×40×40, γ=20, CG tol 1e-4):")
    for k, v in demo.items():
        print(f"{k:<48}{v:>10.3g}")


if __name__ == "__main__":
    main()
