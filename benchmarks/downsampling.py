"""The least-squares prox of ``Downsampling``: unroll vs DeepInverse 0.4.1, side by side.

Problem (issue 14's check): ``Downsampling(img_size=(3, 64, 64), filter="gaussian",
factor=2)`` (σ = 2, a 15×15 kernel), images 8×3×64×64 (float32),

.. math:: h = \\arg\\min_x \\tfrac12\\|Ax - y\\|^2 + \\tfrac1{2\\gamma}\\|x - z\\|^2,
          \\qquad \\gamma = 1,

for each boundary condition DeepInverse's ``Downsampling`` supports:

* ``circular``: a closed form in both libraries (Zhao et al., 2016; FFTs, no iterations);
* ``valid``, ``reflect``, ``replicate``: conjugate gradient in DeepInverse (``max_iter=100``,
  ``tol=1e-8``, implicit backward); in unroll the exact prox of a separable filter by default
  (``unroll``, Kronecker eigendecomposition) and the same CG (``unroll_cg``,
  ``separable_prox=False``).

The loss is a fixed random projection of ``h``; gradients flow to ``z`` and ``γ``. Measured in
one process, one thread, interleaved repeats (medians):

* wall time of forward + backward (median, and the minimum: less sensitive to a busy
  machine) and of the forward alone (median);
* bytes of tensors saved for backward (``torch.autograd.graph.saved_tensors_hooks``);
* the largest absolute difference of ``h`` and of the gradients between the two libraries;
* for the CG paddings, ``unroll_cg``'s time at equal work (``tol=0``: exactly ``max_iter``
  iterations in the forward and in the backward solve of both), the per-iteration cost ratio.

DeepInverse is used when importable (``bench`` extra; ``/work/shared/anchors`` shim for its
torchvision import); otherwise only unroll's figures are printed.

Usage::

    python benchmarks/downsampling.py [--repeats 15] [--paddings circular valid]

Prints one JSON line, then a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from _common import load_deepinv, saved_bytes  # benchmarks/_common.py

import unroll.physics as up

PADDINGS = ("circular", "valid", "reflect", "replicate")


def make_cases(args, dinv, padding: str, tol: float) -> dict[str, tuple[Callable, Callable]]:
    """``{name: (forward + backward, forward only)}`` for one padding."""
    torch.manual_seed(0)
    B, C, N = args.batch, 3, args.size
    ours = up.Downsampling(
        (C, N, N), filter="gaussian", factor=args.factor, padding=padding,
        max_iter=args.max_iter, tol=tol,
    )  # fmt: skip
    x = torch.rand(B, C, N, N)
    y0 = ours.A(x)
    y = y0 + 0.01 * torch.randn_like(y0)
    z0 = x + 0.1 * torch.randn_like(x)
    proj = torch.randn_like(x)

    def runner(prox):
        def run():
            z = z0.clone().requires_grad_()
            gamma = torch.tensor(args.gamma, requires_grad=True)
            h = prox(z, gamma)
            (h * proj).sum().backward()
            return h.detach(), z.grad, gamma.grad

        def forward_only():
            z = z0.clone().requires_grad_()
            gamma = torch.tensor(args.gamma, requires_grad=True)
            return prox(z, gamma)

        return run, forward_only

    cases = {"unroll": runner(lambda z, g: ours.prox_l2(z, y, g))}
    if padding != "circular":  # unroll's default is exact there (separable filter); CG too
        cg = ours.replace(separable_prox=False)
        cases["unroll_cg"] = runner(lambda z, g: cg.prox_l2(z, y, g))
    if dinv is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = dinv.physics.Downsampling(
                img_size=(C, N, N), filter="gaussian", factor=args.factor, padding=padding,
                max_iter=args.max_iter, tol=tol, implicit_backward_solver=True,
            )  # fmt: skip
        assert torch.allclose(theirs.filter, ours.filter, atol=1e-7), "filters differ"
        assert torch.allclose(theirs.A(x), y0, atol=1e-5), "operators differ"
        cases["deepinv"] = runner(lambda z, g: theirs.prox_l2(z, y, g))
    return cases


def measure(args, dinv, padding: str, tol: float, repeats: int) -> dict[str, dict[str, Any]]:
    cases = make_cases(args, dinv, padding, tol)
    results: dict[str, dict[str, Any]] = {n: {"times": [], "fwd_times": []} for n in cases}
    for name, (run, fwd) in cases.items():  # warm-up, saved bytes, outputs
        h, gz, gg = run()
        results[name].update(saved_bytes=saved_bytes(fwd), h=h, gz=gz, gg=gg)
    for _ in range(repeats):  # interleaved repeats
        for name, (run, fwd) in cases.items():
            t0 = time.perf_counter()
            run()
            t1 = time.perf_counter()
            with torch.no_grad():
                fwd()
            results[name]["times"].append(t1 - t0)
            results[name]["fwd_times"].append(time.perf_counter() - t1)
    for r in results.values():
        times, fwd_times = r.pop("times"), r.pop("fwd_times")
        r["time_ms"] = 1e3 * statistics.median(times)
        r["min_time_ms"] = 1e3 * min(times)
        r["time_ms_range"] = [1e3 * min(times), 1e3 * max(times)]
        r["fwd_time_ms"] = 1e3 * statistics.median(fwd_times)
    return results


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--paddings", nargs="*", default=list(PADDINGS), choices=PADDINGS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dinv = load_deepinv()

    summary: dict[str, Any] = {
        "benchmark": "downsampling",
        "problem": {
            "batch": [args.batch, 3, args.size, args.size],
            "filter": "gaussian",
            "factor": args.factor,
            "gamma": args.gamma,
            "max_iter": args.max_iter,
            "tol": args.tol,
            "dtype": "float32",
            "threads": args.threads,
            "repeats": args.repeats,
        },
        "deepinv": None if dinv is None else dinv.__version__,
    }
    table = []
    for padding in args.paddings:
        res = measure(args, dinv, padding, args.tol, args.repeats)
        entry: dict[str, Any] = {
            name: {k: v for k, v in r.items() if k not in ("h", "gz", "gg")}
            for name, r in res.items()
        }
        if dinv is not None:
            u, d = res["unroll"], res["deepinv"]
            entry["ratios"] = {
                "time_ratio_vs_deepinv": u["time_ms"] / d["time_ms"],
                "min_time_ratio_vs_deepinv": u["min_time_ms"] / d["min_time_ms"],
                "forward_time_ratio_vs_deepinv": u["fwd_time_ms"] / d["fwd_time_ms"],
                "saved_bytes_ratio_vs_deepinv": u["saved_bytes"] / max(d["saved_bytes"], 1),
                "h_max_abs_diff": max_diff(u["h"], d["h"]),
                "grad_z_max_abs_diff": max_diff(u["gz"], d["gz"]),
                "grad_gamma_rel_diff": float((u["gg"] - d["gg"]).abs() / d["gg"].abs()),
            }
            if "unroll_cg" in res:
                c = res["unroll_cg"]
                entry["ratios"]["cg_time_ratio_vs_deepinv"] = c["time_ms"] / d["time_ms"]
                entry["ratios"]["cg_h_max_abs_diff"] = max_diff(c["h"], d["h"])
        if dinv is not None and padding != "circular":  # equal work: max_iter CG iterations
            with warnings.catch_warnings():  # tol=0 never converges: expected, not reported
                warnings.simplefilter("ignore")
                eq = measure(args, dinv, padding, 0.0, max(3, args.repeats // 3))
            entry["equal_work_tol_0"] = {n: eq[n]["time_ms"] for n in eq}
            entry["ratios"]["cg_equal_work_time_ratio_vs_deepinv"] = (
                eq["unroll_cg"]["time_ms"] / eq["deepinv"]["time_ms"]
            )
        summary[padding] = entry
        table.append((padding, res, entry.get("ratios")))
    print(json.dumps(summary))

    print()
    print(
        f"{'padding':<10}{'case':<11}{'fwd+bwd ms':>12}{'range':>16}{'fwd ms':>9}{'saved KiB':>11}"
    )
    for padding, res, _ in table:
        for name, r in res.items():
            lo, hi = r["time_ms_range"]
            print(
                f"{padding:<10}{name:<11}{r['time_ms']:>12.2f}{f'{lo:.1f}-{hi:.1f}':>16}"
                f"{r['fwd_time_ms']:>9.2f}{r['saved_bytes'] / 1024:>11.1f}"
            )
    for padding, _, ratios in table:
        if ratios:
            print()
            for k, v in ratios.items():
                print(f"{padding + '.' + k:<48}{v:>10.3g}")


if __name__ == "__main__":
    main()
