"""Meta-optimizer benchmark: a MAML step with ``unroll.MetaAdam`` against TorchOpt's ``MetaAdam``.

Problem: a 4-layer MLP (1 → 40 → 40 → 40 → 1, tanh), one regression task with a support and
a query batch of 25 points each; one MAML step is

1. ``recover_state_dict`` of the network and of the meta-optimizer (back to the initial
   parameters θ₀ and to fresh moments), as in TorchOpt's tutorials;
2. 5 inner steps ``MetaAdam.step(support_loss)`` (lr 0.01, differentiable);
3. ``query_loss.backward()``: the meta-gradient ``d query_loss / d θ₀`` through the 5 steps.

Measured side by side in one run (CPU, one thread, interleaved repeats, medians), float32:
the time of a MAML step with unroll and with TorchOpt 0.7.3 (target: unroll ≤ 0.8× TorchOpt's
time). The meta-gradients of both are compared in float32 (target: max abs difference
≤ 1e-6; the largest entry is ~1) and in float64, where they differ by ~1e-5 relative because
TorchOpt computes Adam's bias correction ``1 − β^t`` in float32 whatever the dtype; with that
one computation done in float64 (patched within this script only) they agree to ~1e-15.
unroll's meta-gradient is also checked against central finite differences of the query loss
along a random direction (float64).

Run: ``python benchmarks/meta.py [--repeat 50]`` (TorchOpt is used when importable: the
``bench`` extra, or the anchors venv). Prints one JSON line and a table.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

import unroll

try:  # the anchor, optional
    import torchopt
except ImportError:  # pragma: no cover - depends on the environment
    torchopt = None

INNER_STEPS, BATCH, WIDTH, LR = 5, 25, 40, 0.01


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def mlp(dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """The 4-layer tanh MLP, 1 → 40 → 40 → 40 → 1."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    sizes = [1, WIDTH, WIDTH, WIDTH, 1]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers).to(dtype)


def task(dtype: torch.dtype, seed: int = 1) -> tuple[torch.Tensor, ...]:
    """A sine task: support (x, y) and query (x, y), BATCH points each."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(2 * BATCH, 1, dtype=dtype).uniform_(-5.0, 5.0, generator=g)
    y = 2.0 * torch.sin(x + 0.5)
    return x[:BATCH], y[:BATCH], x[BATCH:], y[BATCH:]


def maml_step(lib: Any, net: nn.Module, data: tuple[torch.Tensor, ...]) -> Callable[[], list]:
    """A closure running one MAML step with ``lib.MetaAdam``; returns the meta-gradient."""
    xs, ys, xq, yq = data
    opt = lib.MetaAdam(net, lr=LR)
    net_state = lib.extract_state_dict(net, by="reference")
    opt_state = lib.extract_state_dict(opt, by="reference")
    leaves = list(net.parameters())

    def step() -> list:
        lib.recover_state_dict(net, net_state)
        lib.recover_state_dict(opt, opt_state)
        for _ in range(INNER_STEPS):
            opt.step(((net(xs) - ys) ** 2).mean())
        query = ((net(xq) - yq) ** 2).mean()
        return list(torch.autograd.grad(query, leaves))

    return step


def query_loss_at(net: nn.Module, data: tuple[torch.Tensor, ...], params: list) -> float:
    """The query loss after the inner loop, from initial parameters ``params`` (no grad)."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        for p, v in zip(net.parameters(), params):
            p.copy_(v)
    xs, ys, xq, yq = data
    opt = unroll.MetaAdam(net, lr=LR)
    for _ in range(INNER_STEPS):
        opt.step(((net(xs) - ys) ** 2).mean())
    return float(((net(xq) - yq) ** 2).mean().detach())


def max_diff(a: list, b: list) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@contextlib.contextmanager
def torchopt_bias_correction_in_param_dtype() -> Iterator[None]:
    """TorchOpt 0.7.3 computes Adam's ``1 − β^t`` as ``1 - pow(β, count)`` with an int64
    ``count``, which is float32 whatever the parameters' dtype (``1 − 0.999`` then has a
    relative error of 1.3e-5). Within this block it is computed in the moment's dtype, to
    show that this is the only difference from unroll in float64."""
    module = sys.modules["torchopt.transform.scale_by_adam"]
    original = module._bias_correction

    def in_dtype(moment: Any, decay: float, count: Any, *, already_flattened: bool = False):
        def f(t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            return t.div(1 - pow(decay, c.to(t.dtype)))

        tree_map = module.tree_map_flat if already_flattened else module.pytree.tree_map
        return tree_map(f, moment, count)

    module._bias_correction = in_dtype
    try:
        yield
    finally:
        module._bias_correction = original


def timeit(cases: dict[str, Callable[[], Any]], repeat: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in cases}
    for i in range(repeat + 3):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    # ------------------------------------------------------------ accuracy (float64)
    dt = torch.float64
    data64 = task(dt)
    net64 = mlp(dt)
    g_unroll = maml_step(unroll, copy.deepcopy(net64), data64)()
    theta0 = [p.detach().clone() for p in net64.parameters()]
    gen = torch.Generator().manual_seed(2)
    direction = [torch.randn(p.shape, generator=gen, dtype=dt) for p in theta0]
    # Adam's first steps are nearly sign(g): the loss is smooth only on a tiny scale around
    # θ₀ (gradient entries of ~1e-6), so the difference step must be far below that.
    h = 1e-8
    plus = query_loss_at(net64, data64, [p + h * d for p, d in zip(theta0, direction)])
    minus = query_loss_at(net64, data64, [p - h * d for p, d in zip(theta0, direction)])
    fd = (plus - minus) / (2 * h)
    directional = float(sum((g * d).sum() for g, d in zip(g_unroll, direction)))
    fd_err = abs(directional - fd) / max(abs(fd), 1e-300)
    scale = max(float(g.abs().max()) for g in g_unroll)
    result: dict[str, Any] = {
        "benchmark": "meta",
        "versions": {"torch": torch.__version__, "torchopt": _version("torchopt")},
        "problem": {
            "mlp": [1, WIDTH, WIDTH, WIDTH, 1],
            "inner_steps": INNER_STEPS,
            "batch": BATCH,
            "lr": LR,
            "dtype_timing": "float32",
        },
        "meta_grad_rel_err_vs_finite_differences": fd_err,
    }
    if torchopt is not None:
        data32, net32 = task(torch.float32), mlp(torch.float32)
        result["meta_grad_max_abs_diff_vs_torchopt"] = max_diff(
            maml_step(unroll, copy.deepcopy(net32), data32)(),
            maml_step(torchopt, copy.deepcopy(net32), data32)(),
        )
        g_torchopt = maml_step(torchopt, copy.deepcopy(net64), data64)()
        result["float64_meta_grad_max_rel_diff_vs_torchopt"] = (
            max_diff(g_unroll, g_torchopt) / scale
        )
        with torchopt_bias_correction_in_param_dtype():
            g_fixed = maml_step(torchopt, copy.deepcopy(net64), data64)()
        result["float64_meta_grad_max_rel_diff_vs_torchopt_f64_bias_correction"] = (
            max_diff(g_unroll, g_fixed) / scale
        )

    # ------------------------------------------------------------ time (float32)
    data32 = task(torch.float32)
    cases = {"unroll MetaAdam": maml_step(unroll, mlp(torch.float32), data32)}
    if torchopt is not None:
        cases["torchopt MetaAdam"] = maml_step(torchopt, mlp(torch.float32), data32)
    med = timeit(cases, args.repeat)
    result["ms"] = {k: 1e3 * v for k, v in med.items()}
    if torchopt is not None:
        result["time_ratio_unroll_vs_torchopt"] = med["unroll MetaAdam"] / med["torchopt MetaAdam"]
    result["target"] = {"time_ratio": "<= 0.8", "meta_grad_max_abs_diff": "<= 1e-6"}
    print(json.dumps(result))

    print(f"\n{'figure':48s} {'measured':>10s} {'target':>9s}")
    for name, ms in result["ms"].items():
        print(f"{'MAML step, ' + name + ' (ms)':48s} {ms:>10.2f}")
    if torchopt is not None:
        ratio = result["time_ratio_unroll_vs_torchopt"]
        print(f"{'time, unroll / TorchOpt':48s} {ratio:>10.3f} {'<= 0.8':>9s}")
        diff = result["meta_grad_max_abs_diff_vs_torchopt"]
        print(f"{'meta-gradient max |unroll - TorchOpt| (f32)':48s} {diff:>10.2e} {'<= 1e-6':>9s}")
        rel = result["float64_meta_grad_max_rel_diff_vs_torchopt"]
        print(f"{'  same, float64, relative to max |g|':48s} {rel:>10.2e}")
        rel = result["float64_meta_grad_max_rel_diff_vs_torchopt_f64_bias_correction"]
        print(f"{'  float64, TorchOpt bias correction in float64':48s} {rel:>10.2e}")
    else:
        print("(TorchOpt not installed: unroll's figures only)")
    print(f"{'meta-gradient rel. error vs finite differences':48s} {fd_err:>10.2e}")
    return result


if __name__ == "__main__":
    main()
