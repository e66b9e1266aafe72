"""Every docstring example in the ``unroll`` package runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import unroll

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(unroll.__path__, "unroll."))


def _tests(module_name: str) -> list[doctest.DocTest]:
    module = importlib.import_module(module_name)
    return [t for t in doctest.DocTestFinder().find(module) if t.examples]


@pytest.mark.parametrize("module_name", MODULES)
def test_module_doctests_pass(module_name):
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    reports: list[str] = []
    for test in _tests(module_name):
        failures = runner.run(test, out=reports.append).failed
        if failures:
            reports.append(f"-> {failures} failing example(s) in {test.name}\n")
    assert runner.failures == 0, "".join(reports)


@pytest.mark.parametrize(
    "module_name",
    ["unroll.algorithms", "unroll.algorithms.base", "unroll.optim.classes", "unroll.unfolded"],
)
def test_documented_modules_have_examples(module_name):
    # guards against the parametrised test passing vacuously (e.g. a broken module walk)
    assert module_name in MODULES
    assert _tests(module_name)
