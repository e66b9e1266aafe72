"""Implicit-differentiation benchmark: the backward of ``custom_root`` against its matvec floor.

Problem: ridge regression ``w*(λ) = argmin ½‖Xw − y‖² + ½λ‖w‖²`` with ``X`` of shape
(n=1000, d=200), float64, optimality ``F(w, λ) = Xᵀ(Xw − y) + λw``, backward solve
``solve_cg(rtol=1e-6)``. Measured side by side in one run (medians of interleaved repeats):

1. the backward pass of ``custom_root`` (``torch.autograd.grad`` of a scalar loss of ``w*``
   w.r.t. λ, X and y);
2. its *matvec floor*: the same number of the backward's matvecs ``u ↦ (∂F/∂w)ᵀu`` (VJPs of
   ``F``) run alone, plus the one VJP w.r.t. the arguments — what any implicit backward with
   this solver must do; target: backward ≤ 1.15× the floor;
3. TorchOpt 0.7.3's ``custom_root`` backward on the same problem and solver tolerance, when
   installed (the ``bench`` extra or the anchors venv).

Run: ``python benchmarks/implicit.py [--repeat 15]``. Prints one JSON line and a table.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import torch

import unroll
from unroll.linear_solve import solve_cg

try:  # the anchor, optional
    import torchopt
except ImportError:  # pragma: no cover - depends on the environment
    torchopt = None


def problem(n: int = 1000, d: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    lam = torch.tensor(1.0, dtype=torch.float64)
    return X, y, lam


def optimality(w, lam, X, y):
    return X.T @ (X @ w - y) + lam * w


def closed_form(lam, X, y):
    return torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1], dtype=X.dtype), X.T @ y)


def timeit(cases: dict, repeat: int) -> dict:
    times: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(repeat + 1):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            if i:
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    X, y, lam = problem()
    rtol = 1e-6
    solve = functools.partial(solve_cg, rtol=rtol)
    ridge = unroll.custom_root(optimality, argnums=(1, 2, 3), solve=solve)(
        lambda init, lam, X, y: closed_form(lam, X, y)
    )
    w = closed_form(lam, X, y)
    cot = torch.randn(w.shape, dtype=w.dtype, generator=torch.Generator().manual_seed(1))
    _, info = solve_cg(
        lambda u: torch.func.vjp(lambda w_: optimality(w_, lam, X, y), w)[1](u)[0],
        -cot,
        rtol=rtol,
        return_info=True,
    )
    iters = int(info.num_iter)

    leaves = [t.clone().requires_grad_() for t in (lam, X, y)]

    def ours():
        out = ridge(None, *leaves)
        return torch.autograd.grad(out, leaves, cot)

    def floor():
        _, vjp_w = torch.func.vjp(lambda w_: optimality(w_, lam, X, y), w)
        u = cot
        for _ in range(iters):
            u = vjp_w(u)[0]
        _, vjp_args = torch.func.vjp(lambda *a: optimality(w, *a), lam, X, y)
        return vjp_args(u)

    cases = {"unroll custom_root backward": ours, "matvec floor": floor}
    if torchopt is not None:
        to_ridge = torchopt.diff.implicit.custom_root(
            optimality, argnums=(1, 2, 3), solve=torchopt.linear_solve.solve_cg(rtol=rtol)
        )(lambda init, lam, X, y: closed_form(lam, X, y))

        def theirs():
            out = to_ridge(torch.zeros_like(w), *leaves)
            return torch.autograd.grad(out, leaves, cot)

        cases["torchopt custom_root backward"] = theirs
    # the forward (the closed-form solve) is in both; time it alone to subtract it
    cases["forward only"] = lambda: ridge(None, *leaves)
    med = timeit(cases, args.repeat)
    fwd = med["forward only"]
    ref = torch.autograd.grad(
        (closed_form(*[t for t in leaves]) * cot).sum(), leaves, allow_unused=True
    )
    got = ours()
    err = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(got, ref))
    result = {
        "benchmark": "implicit",
        "problem": {"n": 1000, "d": 200, "rtol": rtol, "cg_iterations": iters},
        "ms": {k: 1e3 * v for k, v in med.items()},
        "backward_vs_floor": (med["unroll custom_root backward"] - fwd) / med["matvec floor"],
        "grad_rel_err_vs_closed_form": err,
        "target": "<= 1.15",
    }
    if torchopt is not None:
        result["unroll_vs_torchopt"] = (med["unroll custom_root backward"] - fwd) / (
            med["torchopt custom_root backward"] - fwd
        )
    print(json.dumps(result))
    print(f"\n{'figure':44s} {'measured':>10s} {'target':>8s}")
    ratio = result["backward_vs_floor"]
    print(f"{'backward / its matvec floor':44s} {ratio:>10.3f} {'<= 1.15':>8s}")
    if "unroll_vs_torchopt" in result:
        print(f"{'backward, unroll / TorchOpt':44s} {result['unroll_vs_torchopt']:>10.3f}")
    print(f"{'gradient rel. error vs closed form':44s} {err:>10.2e}")
    return result


if __name__ == "__main__":
    main()
