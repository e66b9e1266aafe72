"""Small shared checks and helpers of the physics package (private).

Validation here is cheap: Python numbers are checked on the host for free, a tensor-valued
argument costs at most one host read per call (through :func:`unroll._host.host_any`, which
also works inside ``torch.func.vmap`` by asking the whole underlying batch), and nothing here
runs inside a solver's iterations.
"""

from __future__ import annotations

import difflib
import math
import numbers
from typing import Any, NamedTuple, cast

import torch

from unroll._failure import check_on_failure
from unroll._host import host_any, unwrap

SOLVERS = ("CG", "BiCGStab", "lsqr", "minres")
"""The least-squares solvers of :func:`least_squares` (DeepInverse 0.4.1's names)."""

SOLVE_OPTIONS = ("max_iter", "tol", "implicit_backward_solver", "on_failure", "solver", "verbose")
"""The per-call options of ``prox_l2`` / ``A_dagger`` (every physics accepts the same names;
closed forms validate and then ignore them; ``verbose=True`` prints a conjugate-gradient
solve's iterations and residual, DeepInverse's keyword)."""


def require_tensor(api: str, name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{api}: {name} must be a torch.Tensor, got {type(x).__name__}.")
    return x


def require_real(api: str, name: str, x: torch.Tensor) -> None:
    require_tensor(api, name, x)
    if x.is_complex():
        raise TypeError(
            f"{api}: {name} is complex but this operator acts on real tensors; pass "
            f"{name}.real / {name}.imag separately, or use an MRI operator for complex data."
        )
    if not x.is_floating_point():
        raise TypeError(f"{api}: {name} must be floating point, got {x.dtype}; use .float().")


def require_image(api: str, name: str, x: torch.Tensor) -> None:
    """A real (B, C, H, W) tensor."""
    require_real(api, name, x)
    if x.dim() != 4:
        raise ValueError(
            f"{api}: {name} must be a (B, C, H, W) image batch, got shape {tuple(x.shape)}; "
            "add the missing batch/channel dimensions with unsqueeze."
        )


def real_dtype(x: torch.Tensor) -> torch.dtype:
    return x.real.dtype if x.is_complex() else x.dtype


def require_same_precision(
    api: str, what: str, held: torch.Tensor, name: str, x: torch.Tensor
) -> None:
    """Raise a TypeError when the operator's tensor ``held`` (its ``what``: filter, mask, ...)
    and the input ``x`` differ in precision (float32 vs float64; complex64 counts as float32).

    Only dtypes are compared: no host read."""
    ours, theirs = real_dtype(held), real_dtype(x)
    if ours != theirs:
        raise TypeError(
            f"{api}: the operator's {what} is {held.dtype} but {name} is {x.dtype}; use one "
            f"precision: convert the operator with physics.to({theirs}) (or the input with "
            f"{name}.to({complex_of(ours) if x.is_complex() else ours}))."
        )


def complex_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype whose parts are ``dtype`` (float64 -> complex128)."""
    return {
        torch.float16: torch.complex32,
        torch.float32: torch.complex64,
        torch.float64: torch.complex128,
    }.get(dtype, dtype)


def expand_per_sample(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A 1-dim ``(B,)`` tensor reshaped to broadcast against a ``(B, ...)`` tensor; other shapes
    are returned unchanged (0-dim, or already broadcastable)."""
    if s.dim() == 1 and like.dim() > 1 and s.shape[0] == like.shape[0]:
        return s.reshape(s.shape + (1,) * (like.dim() - 1))
    return s


def is_scalar_or_per_sample(gamma: torch.Tensor, like: torch.Tensor) -> bool:
    """True for a 0-dim or ``(B,)`` gamma (one value per sample)."""
    if gamma.dim() == 0:
        return True
    return gamma.dim() == 1 and like.dim() > 1 and gamma.shape[0] == like.shape[0]


# ---------------------------------------------------------------------- numbers and levels
def is_number(value: Any) -> bool:
    """A real Python / NumPy number (``bool`` excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _describe(strict: bool) -> str:
    return "> 0 and finite" if strict else ">= 0 and finite"


def number_in_range(value: float, strict: bool) -> bool:
    """Whether a Python number is finite and > 0 (``strict``) or >= 0; NaN fails."""
    value = float(value)
    return math.isfinite(value) and (value > 0 if strict else value >= 0)


def _in_range(v: torch.Tensor, strict: bool) -> torch.Tensor:
    ok = (v > 0) if strict else (v >= 0)
    return ok & torch.isfinite(v) if v.is_floating_point() else ok


def tensor_out_of_range(value: torch.Tensor, strict: bool) -> bool:
    """Whether any entry of a real tensor is non-finite or <= 0 (``strict``) / < 0: one host
    read, also inside ``torch.func`` transforms (the whole underlying batch under ``vmap``)."""
    return host_any(~_in_range(value.detach(), strict))


def first_bad_entry(value: torch.Tensor, strict: bool) -> float:
    """The first out-of-range entry of ``value`` (for error messages only: a host read)."""
    v = unwrap(value)
    return float(v[~_in_range(v, strict)].reshape(-1)[0])


def check_level(
    api: str, name: str, value: Any, *, strict: bool, fix: str, allow_none: bool = False
) -> None:
    """Validate a scalar-like level (a step, threshold, noise level): a real number or a real
    tensor, every entry finite and > 0 (``strict``) or >= 0. ``fix`` ends the message. A
    number costs no host read, a tensor one (``torch.func``-safe)."""
    if value is None and allow_none:
        return
    if isinstance(value, torch.Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{api}: {name} must be a real number or tensor, got {value.dtype}.")
        if tensor_out_of_range(value, strict):
            bad = first_bad_entry(value, strict)
            raise ValueError(
                f"{api}: {name} must be {_describe(strict)} (every entry), got an entry {bad}. "
                f"{fix}"
            )
        return
    if not is_number(value):
        raise TypeError(
            f"{api}: {name} must be a real number or a tensor, got {type(value).__name__}."
        )
    if not number_in_range(cast(float, value), strict):
        raise ValueError(f"{api}: {name} must be {_describe(strict)}, got {value!r}. {fix}")


# ---------------------------------------------------------------------- gamma of prox_l2
def _gamma_shape_ok(gamma: torch.Tensor, like: torch.Tensor) -> bool:
    if is_scalar_or_per_sample(gamma, like):
        return True
    try:
        return torch.broadcast_shapes(gamma.shape, like.shape) == like.shape
    except RuntimeError:
        return False


def _gamma_fix(bad: float) -> str:
    if bad == math.inf:
        return (
            "For exact data consistency (the gamma -> inf limit) pass a large finite gamma, "
            "e.g. 1e8 (A_dagger(y) gives the minimum-norm solution)."
        )
    return "Pass a positive step, e.g. gamma=1.0."


def validate_prox_gamma(api: str, gamma: Any, like: torch.Tensor) -> None:
    """Validate the ``gamma`` of a least-squares prox without converting it.

    ``gamma``: a real number, a 0-dim tensor, a per-sample ``(B,)`` tensor or one broadcastable
    to ``like``; every entry finite and > 0. A number costs no host read, a tensor one
    (``torch.func``-safe).
    """
    if isinstance(gamma, torch.Tensor):
        if gamma.is_complex() or gamma.dtype == torch.bool:
            raise TypeError(f"{api}: gamma must be real, got a {gamma.dtype} tensor.")
        if not _gamma_shape_ok(gamma, like):
            raise ValueError(
                f"{api}: gamma has shape {tuple(gamma.shape)}; use a number, a 0-dim tensor, "
                f"a per-sample ({like.shape[0]},) tensor, or one broadcastable to "
                f"{tuple(like.shape)}."
            )
        if tensor_out_of_range(gamma, strict=True):
            bad = first_bad_entry(gamma, strict=True)
            raise ValueError(
                f"{api}: gamma must be > 0 everywhere and finite, got an entry {bad}. "
                f"{_gamma_fix(bad)}"
            )
        return
    if not is_number(gamma):
        raise TypeError(f"{api}: gamma must be a number or a tensor, got {type(gamma).__name__}.")
    if not number_in_range(gamma, strict=True):
        raise ValueError(
            f"{api}: gamma must be > 0 and finite, got {gamma!r}. {_gamma_fix(float(gamma))}"
        )


def check_prox_gamma(api: str, gamma: Any, like: torch.Tensor) -> torch.Tensor:
    """:func:`validate_prox_gamma`, then ``gamma`` as a tensor (a number becomes a 0-dim
    tensor of ``like``'s real dtype and device; a tensor is returned as it is)."""
    validate_prox_gamma(api, gamma, like)
    if isinstance(gamma, torch.Tensor):
        return gamma
    return torch.as_tensor(float(gamma), dtype=real_dtype(like), device=like.device)


def safe_denominator(den: torch.Tensor) -> torch.Tensor:
    """``den`` with exact zeros replaced by one (where the numerator is zero too), so that
    neither the value nor its gradient is NaN."""
    return torch.where(den == 0, torch.ones_like(den), den)


# ---------------------------------------------------------------------- per-call options
class SolveOptions(NamedTuple):
    """Validated per-call options of ``prox_l2`` / ``A_dagger`` (``None``: the object's)."""

    max_iter: int | None
    tol: float | None
    implicit_backward_solver: bool | None
    on_failure: str | None
    solver: str | None = None
    verbose: bool = False

    def least_squares_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`unroll.physics.least_squares` (unset ones left
        out, so that its defaults apply)."""
        out: dict[str, Any] = {
            "max_iter": self.max_iter,
            "tol": self.tol,
            "implicit_backward_solver": self.implicit_backward_solver,
        }
        if self.on_failure is not None:
            out["on_failure"] = self.on_failure
        if self.solver is not None:
            out["solver"] = self.solver
        return out


def check_solve_options(
    api: str,
    max_iter: Any = None,
    tol: Any = None,
    implicit_backward_solver: Any = None,
    on_failure: Any = None,
    unknown: dict[str, Any] | None = None,
    *,
    solver: Any = None,
) -> SolveOptions:
    """Reject unknown option names (with "did you mean") and bad values; closed-form methods
    call this too, so that a misspelt option never passes silently (a ``solver`` among their
    ``**unknown`` options is validated and, with nothing to solve iteratively, ignored)."""
    unknown = dict(unknown or {})
    solver = unknown.pop("solver", solver)
    verbose = unknown.pop("verbose", False)
    if not isinstance(verbose, bool):
        raise TypeError(f"{api}: verbose must be True or False, got {verbose!r}.")
    for key in unknown:
        hint = difflib.get_close_matches(key, SOLVE_OPTIONS, n=1, cutoff=0.5)
        if key in ("maxiter", "max_iters", "num_iter", "n_iter"):
            hint = ["max_iter"]
        elif key in ("rtol", "atol"):
            hint = ["tol"]
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise TypeError(
            f"{api}: unknown option {key!r}{extra}. Valid options: {', '.join(SOLVE_OPTIONS)}."
        )
    if max_iter is not None and (
        isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter <= 0
    ):
        raise ValueError(f"{api}: max_iter must be a positive int or None, got {max_iter!r}.")
    if tol is not None and not (is_number(tol) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"{api}: tol must be a finite number >= 0 or None, got {tol!r}.")
    if implicit_backward_solver is not None and not isinstance(implicit_backward_solver, bool):
        raise TypeError(
            f"{api}: implicit_backward_solver must be True, False or None, got "
            f"{implicit_backward_solver!r}."
        )
    if on_failure is not None:
        check_on_failure(api, on_failure)
    if solver is not None:
        solver = check_solver(api, solver)
    return SolveOptions(
        max_iter,
        None if tol is None else float(tol),
        implicit_backward_solver,
        on_failure,
        solver,
        verbose,
    )


def check_solver(api: str, solver: Any) -> str:
    """Validate a least-squares ``solver`` name (case-insensitive) and return its canonical
    spelling, one of :data:`SOLVERS`."""
    if isinstance(solver, str):
        for name in SOLVERS:
            if solver.lower() == name.lower():
                return name
    raise ValueError(
        f"{api}: solver must be one of {', '.join(map(repr, SOLVERS))} (DeepInverse's names), "
        f"got {solver!r}."
    )
