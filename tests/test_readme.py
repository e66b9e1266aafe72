"""The README's Python examples run as written, and its commands match .ci/run."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from unroll.linear_solve import ConvergenceWarning

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_example_runs(index):
    torch.manual_seed(0)
    namespace: dict = {}
    with warnings.catch_warnings():  # the README's examples converge: no solve warns
        warnings.simplefilter("error", ConvergenceWarning)
        exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), namespace)
    if index == 0:  # the hypergradient equals autograd through the closed-form ridge solution
        X, y, Xv, yv = (namespace[k] for k in ("X", "y", "Xv", "yv"))

        def closed(lam):
            w = torch.linalg.solve(X.T @ X + lam * torch.eye(5), X.T @ y)
            return ((Xv @ w - yv) ** 2).mean()

        ref = torch.func.grad(closed)(torch.tensor(1.0))
        torch.testing.assert_close(namespace["g"], ref, rtol=1e-4, atol=1e-6)
    if "deq" in namespace:  # the DEQ's gradient reached its trainable parameters
        grads = [p.grad for p in namespace["deq"].parameters()]
        assert grads and all(g is not None and bool(torch.isfinite(g).all()) for g in grads)


def test_readme_commands_are_the_ci_commands():
    commands = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    assert any(c.endswith("python -m unroll demo") for c in commands)
    test_cmd = next(c for c in commands if c.endswith("python -m pytest"))
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
