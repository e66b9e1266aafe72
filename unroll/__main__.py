"""Command line: ``python -m unroll demo``."""

from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    import torch

    from unroll.linear_solve import solve_cg

    torch.manual_seed(args.seed)
    n, d = 1000, 200
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.randn(n, dtype=torch.float64)
    lam = 1.0
    w, info = solve_cg(lambda v: x.T @ (x @ v), x.T @ y, ridge=lam, rtol=1e-10, return_info=True)
    ref = torch.linalg.solve(x.T @ x + lam * torch.eye(d, dtype=torch.float64), x.T @ y)
    err = float(torch.linalg.norm(w - ref) / torch.linalg.norm(ref))
    print(f"ridge regression n={n} d={d}: CG iterations {int(info.num_iter)}, "
          f"relative error vs dense solve {err:.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unroll", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demonstration")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
