"""The pure implicit-differentiation rules (see :mod:`unroll.implicit`)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, cast

import torch

from unroll import tree
from unroll._failure import SolveInfo, check_on_failure, report, report_failure
from unroll._host import host_any_nonfinite, unwrap_if_dead
from unroll._typing import PyTree
from unroll.linear_solve import solve_cg, solve_gmres

Solve = Callable[..., PyTree]

__all__ = [
    "root_vjp",
    "root_jvp",
    "custom_root",
    "custom_fixed_point",
    "ClosedOverTensorError",
]


class ClosedOverTensorError(ValueError):
    """The optimality (or fixed-point) function uses a tensor that requires grad but is not
    one of its arguments; its gradient would silently be lost."""


class _Report(NamedTuple):
    """How a backward (or forward-mode) linear solve reports failures: under which name,
    with which policy (``None``: the solver's own ``on_failure`` if it was configured with
    one, else ``"warn"``) and remedy."""

    label: str
    on_failure: str | None = None
    remedy: str = ""


_SOLVE_REMEDY = (
    "The gradient is inexact. Pass solve=functools.partial(solver, maxiter=..., rtol=...) with "
    "more iterations, or a solver suited to the Jacobian (solve_gmres for a non-symmetric one)"
)


# =========================================================================== pure rules
def _split_tensors(args: Sequence[PyTree]):
    """Flatten ``args`` and separate the differentiable (floating) tensor leaves.

    Returns ``(tensor_leaves, rebuild)`` with ``rebuild(new_tensor_leaves) -> tuple(args)``.
    """
    leaves, spec = tree.flatten(tuple(args))
    is_t = [
        isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex()) for x in leaves
    ]
    tensors = [x for x, t in zip(leaves, is_t) if t]

    def rebuild(new: Sequence[torch.Tensor]) -> tuple:
        it = iter(new)
        return tree.unflatten(spec, [next(it) if t else x for x, t in zip(leaves, is_t)])

    def scatter(values: Sequence[Any]) -> tuple:
        """Put one value per tensor leaf back in place; ``None`` at the other leaves."""
        it = iter(values)
        return tree.unflatten(spec, [next(it) if t else None for t in is_t])

    return tensors, rebuild, scatter


def _call_solve(solve: Solve, matvec: Callable, b: PyTree, rep: _Report) -> PyTree:
    """``solve(matvec, b)`` under the failure policy: the solver is asked for diagnostics
    (and to stay quiet) when it supports them, and a failure is reported under
    ``rep.label`` — the name the user knows (``custom_root backward``, ``deq (backward)``)."""
    policy = rep.on_failure or _configured_policy(solve)
    if not _accepts(solve, "return_info"):
        x = solve(matvec, b)
        if host_any_nonfinite(tree.leaves(x)):
            report(
                rep.label,
                "non_finite",
                "the linear solve returned NaN or Inf",
                (rep.remedy or _SOLVE_REMEDY) + ".",
                policy,
            )
        return x
    kwargs: dict[str, Any] = {"return_info": True}
    if _accepts(solve, "on_failure"):
        kwargs["on_failure"] = "ignore"  # reported here, under the user's name for it
    x, info = solve(matvec, b, **kwargs)
    if isinstance(info, SolveInfo):
        report_failure(rep.label, info, policy, remedy=rep.remedy or _SOLVE_REMEDY)
    return x


_SOLVER_OPTIONS = ("return_info", "on_failure")


def _configured_policy(solve: Solve) -> str:
    """The ``on_failure`` a ``functools.partial`` solver was configured with, else "warn"."""
    while isinstance(solve, functools.partial):
        if "on_failure" in solve.keywords:
            return check_on_failure("solve", solve.keywords["on_failure"])
        solve = solve.func
    return "warn"


def _accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword ``name`` (no cache: a cache would keep every solver
    closure, and the tensors it captures, alive; unroll's own solvers, possibly wrapped in
    ``functools.partial``, are recognised without inspecting a signature)."""
    base = fn
    while isinstance(base, functools.partial):
        base = base.func
    module = str(getattr(base, "__module__", ""))
    if module.startswith("unroll.linear_solve") and name in _SOLVER_OPTIONS:
        return True
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _nonfinite_cotangent(leaves: list[torch.Tensor], rep: _Report) -> bool:
    """Report an incoming cotangent holding NaN/Inf (one host sync); True when it does."""
    if not host_any_nonfinite(leaves):
        return False
    report(
        rep.label,
        "non_finite",
        "the incoming gradient already holds NaN or Inf (produced upstream of this "
        "implicit layer), so the gradient it returns is NaN",
        "Find where the NaN starts (torch.autograd.set_detect_anomaly(True)); if an outer "
        "DEQ or solver diverged, see its warning.",
        rep.on_failure or "warn",
    )
    return True


def _check_structure(api: str, out: PyTree, sol: PyTree) -> None:
    if tree.structure(out) != tree.structure(sol) or any(
        tuple(o.shape) != tuple(s.shape) for o, s in zip(tree.leaves(out), tree.leaves(sol))
    ):
        raise ValueError(
            f"{api}: optimality_fn(params, *args) must return a pytree with the structure and "
            f"shapes of params; got {tree.structure(out)} for params {tree.structure(sol)}."
        )


def root_vjp(
    optimality_fn: Callable[..., PyTree],
    sol: PyTree,
    args: Sequence[PyTree],
    cotangent: PyTree,
    solve: Solve = solve_cg,
    *,
    on_failure: str | None = None,
) -> tuple[PyTree, ...]:
    r"""Vector-Jacobian product of a root ``x*(θ)`` of ``F(x, *args) = 0`` w.r.t. ``args``.

    Solves :math:`(\partial_x F)^\top u = -\bar x` with ``solve`` and returns
    :math:`(\partial_{\text{args}} F)^\top u`, the cotangent of each argument.

    Args:
        optimality_fn: ``F(params, *args)``, zero at the solution; returns a pytree shaped like
            ``params``.
        sol: the root ``x*`` (a pytree).
        args: the arguments of ``F`` after ``params`` (a tuple of pytrees).
        cotangent: ``x̄``, shaped like ``sol``.
        solve: a linear solver ``solve(matvec, b) -> x`` (see :mod:`unroll.linear_solve`);
            ``solve_cg`` needs a symmetric positive-definite ``∂ₓF`` (e.g. a Hessian),
            otherwise use ``solve_gmres`` / ``solve_normal_cg``.
        on_failure: when the linear solve stops short, breaks down or meets NaN/Inf (or the
            cotangent holds NaN/Inf): ``"warn"``, ``"raise"`` or ``"ignore"``; default: the
            ``on_failure`` the solver was configured with by ``functools.partial``, else warn.

    Returns:
        A tuple with one pytree per element of ``args``: tensors where the argument has a
        floating tensor leaf, ``None`` at other leaves.

    Example:
        >>> import torch
        >>> from unroll.implicit import root_vjp
        >>> F = lambda x, a: a * x - 1.0          # root x* = 1/a, dx*/da = -1/a²
        >>> a = torch.tensor(2.0)
        >>> root_vjp(F, 1 / a, (a,), torch.tensor(1.0))
        (tensor(-0.2500),)
    """
    if on_failure is not None:
        check_on_failure("root_vjp", on_failure)
    return _root_vjp(optimality_fn, sol, args, cotangent, solve, _Report("root_vjp", on_failure))


def _root_vjp(optimality_fn, sol, args, cotangent, solve, rep: _Report) -> tuple[PyTree, ...]:
    sol_leaves, sol_spec = tree.flatten(sol)
    tensors, rebuild, scatter = _split_tensors(args)

    def f_sol(*sl):
        return tree.leaves(optimality_fn(tree.unflatten(sol_spec, list(sl)), *rebuild(tensors)))

    out, vjp_sol = _vjp(f_sol, *sol_leaves)
    if len(out) != len(sol_leaves):
        _check_structure("root_vjp", tree.unflatten(tree.structure(out), out), sol)

    def matvec(u: PyTree) -> PyTree:
        return tree.unflatten(sol_spec, list(vjp_sol(tree.leaves(u))))

    if _nonfinite_cotangent(tree.leaves(cotangent), rep):
        u = tree.map(lambda c: torch.full_like(c, float("nan")), cotangent)
    else:
        u = _call_solve(solve, matvec, tree.neg(cotangent), rep)
    if not tensors:
        return scatter([])
    _, vjp_args = _vjp(lambda *t: tree.leaves(optimality_fn(sol, *rebuild(t))), *tensors)
    return scatter(vjp_args(tree.leaves(u)))


def root_jvp(
    optimality_fn: Callable[..., PyTree],
    sol: PyTree,
    args: Sequence[PyTree],
    tangents: Sequence[PyTree],
    solve: Solve = solve_cg,
    *,
    on_failure: str | None = None,
) -> PyTree:
    r"""Jacobian-vector product of a root ``x*(θ)`` of ``F(x, *args) = 0``.

    Solves :math:`(\partial_x F)\,\dot x = -(\partial_{\text{args}} F)\,\dot{\text{args}}`.

    Args:
        optimality_fn: ``F(params, *args)``, zero at the solution.
        sol: the root ``x*``.
        args: the arguments of ``F`` after ``params``.
        tangents: one tangent pytree per element of ``args`` (``None`` leaves, or a ``None``
            tangent for a whole argument, mean zero).
        solve: linear solver for ``∂ₓF`` (not transposed).
        on_failure: as :func:`root_vjp`.

    Returns:
        ``ẋ``, shaped like ``sol``.

    Example:
        >>> import torch
        >>> from unroll.implicit import root_jvp
        >>> F = lambda x, a: a * x - 1.0
        >>> a = torch.tensor(2.0)
        >>> root_jvp(F, 1 / a, (a,), (torch.tensor(1.0),))
        tensor(-0.2500)
    """
    if on_failure is not None:
        check_on_failure("root_jvp", on_failure)
    return _root_jvp(optimality_fn, sol, args, tangents, solve, _Report("root_jvp", on_failure))


def _root_jvp(optimality_fn, sol, args, tangents, solve, rep: _Report) -> PyTree:
    args = tuple(args)
    if len(tangents) != len(args):
        raise ValueError(
            f"root_jvp: got {len(tangents)} tangents for {len(args)} args; pass one per arg."
        )
    tensors, rebuild, _ = _split_tensors(args)
    tan = _tangent_leaves(args, tangents, tensors)
    sol_leaves, sol_spec = tree.flatten(sol)

    def f_args(*t):
        return tuple(tree.leaves(optimality_fn(sol, *rebuild(t))))

    if tensors:
        rhs = _jvp(f_args, tuple(tensors), tuple(tan))
    else:
        rhs = tuple(torch.zeros_like(x) for x in sol_leaves)

    def matvec(v: PyTree) -> PyTree:
        def f_sol(*sl):
            return tuple(
                tree.leaves(optimality_fn(tree.unflatten(sol_spec, list(sl)), *rebuild(tensors)))
            )

        return tree.unflatten(sol_spec, list(_jvp(f_sol, tuple(sol_leaves), tuple(tree.leaves(v)))))

    b = tree.unflatten(sol_spec, [-r for r in rhs])
    return _call_solve(solve, matvec, b, rep)


def _vjp(fn: Callable, *primals: Any) -> tuple[Any, Callable[..., Any]]:
    """``torch.func.vjp(fn, *primals)`` (no aux): the output and the VJP function."""
    out, vjp_fn = torch.func.vjp(fn, *primals)[:2]
    return out, vjp_fn


def _jvp(fn: Callable, primals: tuple, tangents: tuple) -> tuple:
    """``J t`` for ``fn`` at ``primals``, by the double-VJP trick: ``u ↦ Jᵀu`` is linear, and
    its VJP with cotangent ``t`` is ``J t``. Unlike ``torch.func.jvp`` this runs inside an
    active ``torch.autograd.forward_ad`` level (a forward-mode rule may not nest forward AD).
    Tangents are cast to their output's dtype (forward AD can promote 0-dim float32 tangents
    to float64 through Python scalars)."""
    out, vjp_fn = _vjp(fn, *primals)
    tangents = tuple(t.to(p.dtype) for p, t in zip(primals, tangents))

    def transpose(*u: torch.Tensor) -> tuple:
        return tuple(vjp_fn(tuple(u)))

    _, vjp_t = _vjp(transpose, *(torch.zeros_like(o) for o in out))
    return tuple(t.to(o.dtype) for o, t in zip(out, vjp_t(tangents)))


def _tangent_leaves(args: tuple, tangents: Sequence[PyTree], tensors: list[torch.Tensor]):
    """Align ``tangents`` with the floating tensor leaves of ``args`` (zeros where missing)."""
    out: list[torch.Tensor] = []
    for i, (arg, tan) in enumerate(zip(args, tangents)):
        a_leaves = tree.leaves(arg)
        if tan is None:
            t_leaves: list[Any] = [None] * len(a_leaves)
        else:
            t_leaves, _ = tree.flatten(tan)
            if len(t_leaves) != len(a_leaves):  # None leaves were dropped by optree
                t_leaves = _fill_none(arg, tan)
        if len(t_leaves) != len(a_leaves):
            raise ValueError(
                f"root_jvp: tangents[{i}] does not have the structure of args[{i}] (got "
                f"{tree.structure(tan)} for {tree.structure(arg)}); pass a tangent pytree "
                "shaped like each argument (None, or a None leaf, for a zero tangent)."
            )
        for a, t in zip(a_leaves, t_leaves):
            if isinstance(a, torch.Tensor) and (a.is_floating_point() or a.is_complex()):
                if t is not None and (not isinstance(t, torch.Tensor) or t.shape != a.shape):
                    got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                    raise ValueError(
                        f"root_jvp: a tangent leaf of args[{i}] has shape {got} where the "
                        f"argument has {tuple(a.shape)}; tangents must be shaped like args."
                    )
                out.append(torch.zeros_like(a) if t is None else t)
    return out


def _fill_none(arg: PyTree, tan: PyTree) -> list[Any]:
    import optree

    return optree.tree_flatten(tan, none_is_leaf=True, namespace=tree.NAMESPACE)[0]


# =========================================================================== custom_root
class _Plan:
    """Everything the autograd rule needs besides tensors (a non-tensor Function input).

    ``rest`` are the solver's arguments after ``init_params``; those at positions ``nums``
    are rebuilt from their differentiable tensor leaves by ``rebuild_diff``.
    """

    def __init__(
        self, optimality_fn, solve, sol_spec, n_sol, rest, nums, rebuild_diff, report: _Report
    ):
        self.report = report
        self.optimality_fn = optimality_fn
        self.solve = solve
        self.sol_spec = sol_spec
        self.n_sol = n_sol
        self.rest = tuple(rest)
        self.nums = nums
        self.rebuild_diff = rebuild_diff

    def fn(self, sol_leaves, arg_tensors, rest=None):
        """``F`` as a function of flat solution leaves and the differentiable arg tensors."""
        args = list(self.rest if rest is None else rest)
        for i, value in zip(self.nums, self.rebuild_diff(arg_tensors)):
            args[i - 1] = value
        return self.optimality_fn(tree.unflatten(self.sol_spec, list(sol_leaves)), *args)

    def _bound(self):
        """``F(x, *arg_tensors)`` with the constant arguments unwrapped if their level died."""
        rest = tree.map(lambda t: _alive([t])[0], self.rest)
        return lambda x, *t: self.fn(tree.leaves(x), t, rest)

    def vjp(self, sol_leaves, arg_tensors, cotangents):
        cot = tree.unflatten(
            self.sol_spec,
            [torch.zeros_like(s) if c is None else c for s, c in zip(sol_leaves, cotangents)],
        )
        sol = tree.unflatten(self.sol_spec, list(sol_leaves))
        return list(_root_vjp(self._bound(), sol, tuple(arg_tensors), cot, self.solve, self.report))

    def jvp(self, sol_leaves, arg_tensors, tangents):
        sol = tree.unflatten(self.sol_spec, list(sol_leaves))
        tan = tuple(torch.zeros_like(a) if t is None else t for a, t in zip(arg_tensors, tangents))
        out = _root_jvp(self._bound(), sol, tuple(arg_tensors), tan, self.solve, self.report)
        return tree.leaves(out)


class _ImplicitIdentity(torch.autograd.Function):
    """Identity on the solution leaves whose derivative is the implicit-function rule.

    Inputs: ``(plan, *solution_leaves, *differentiable_arg_leaves)``; outputs: the solution
    leaves. The outputs (not the inputs) are saved, so a second backward differentiates
    through the solution's own dependence on the arguments.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(plan: _Plan, *tensors: torch.Tensor):  # type: ignore[override]
        return tuple(t.view_as(t) for t in tensors[: plan.n_sol])

    @staticmethod
    def setup_context(ctx, inputs, output):
        plan, *tensors = inputs
        ctx.plan = plan
        ctx.save_for_backward(*output, *tensors[plan.n_sol :])
        ctx.save_for_forward(*output, *tensors[plan.n_sol :])

    @staticmethod
    def backward(ctx, *grads):
        plan = ctx.plan
        saved = _alive(ctx.saved_tensors)
        sol, arg_tensors = saved[: plan.n_sol], saved[plan.n_sol :]
        arg_grads = plan.vjp(sol, arg_tensors, grads) if arg_tensors else []
        return (None, *([None] * plan.n_sol), *arg_grads)

    @staticmethod
    def jvp(ctx, _plan_tangent, *tangents):
        plan = ctx.plan
        saved = _alive(ctx.saved_tensors)
        sol, arg_tensors = saved[: plan.n_sol], saved[plan.n_sol :]
        return tuple(plan.jvp(sol, arg_tensors, tangents[plan.n_sol :]))


def _alive(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Unwrap tensors whose ``torch.func`` level has exited.

    When this rule runs inside another implicit backward (a DEQ whose step calls a CG prox),
    it is reached through a ``torch.func.vjp`` function called after its level exited; the
    saved tensors are then dead wrappers of that level, which must not meet new levels.
    """
    return [unwrap_if_dead(t) for t in tensors]


def _normalize_argnums(api: str, argnums: int | Sequence[int]) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    if not nums or not all(isinstance(i, int) and not isinstance(i, bool) for i in nums):
        raise TypeError(
            f"{api}: argnums must be an int or a non-empty tuple of ints, got {argnums!r}."
        )
    if any(i == 0 for i in nums):
        raise ValueError(
            f"{api}: argnums=0 names the initial params, which are not differentiated; the "
            "first differentiable argument is argnums=1."
        )
    if any(i < 0 for i in nums):
        raise ValueError(f"{api}: argnums must be positive (>= 1), got {argnums!r}.")
    return tuple(sorted(set(nums)))


def _bind(api: str, optimality_fn: Callable, solver: Callable, args: tuple, kwargs: dict):
    """Positional arguments ``(init, *args)`` with keyword arguments bound by the optimality
    function's signature (falling back to the solver's)."""
    if not kwargs:
        return list(args)
    for fn in (optimality_fn, solver):
        try:
            sig = inspect.signature(fn)
            bound = sig.bind(*args, **kwargs)
        except (TypeError, ValueError):
            continue
        bound.apply_defaults()
        if not bound.kwargs:
            return list(bound.args)
    raise TypeError(
        f"{api}: could not bind keyword arguments {sorted(kwargs)} to the signature of "
        "optimality_fn(params, *args); give optimality_fn and the solver the same argument "
        "names, or pass them positionally."
    )


def _check_signature(api: str, optimality_fn: Callable, n_args: int) -> None:
    """The optimality function must accept ``(params, *args)`` as the solver was called."""
    try:
        sig = inspect.signature(optimality_fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(*([None] * (n_args + 1)))
    except TypeError as err:
        raise TypeError(
            f"{api}: optimality_fn{sig} cannot take (params, *args) with the solver's "
            f"{n_args} argument(s) after init_params ({err}); give it the signature "
            "F(params, *args) with the solver's arguments in the same order."
        ) from None


def _check_solution(api: str, init: PyTree, sol_leaves: list, sol_spec: Any) -> None:
    """The solver's output must be shaped like ``init_params`` when those are given."""
    init_leaves, init_spec = tree.flatten(init)
    if not init_leaves or not all(isinstance(t, torch.Tensor) for t in init_leaves):
        return
    shapes = [tuple(t.shape) for t in sol_leaves]
    want = [tuple(t.shape) for t in init_leaves]
    if init_spec != sol_spec or shapes != want:
        raise ValueError(
            f"{api}: the solver returned params with leaf shapes {shapes} where init_params "
            f"has {want}; the solver must return a pytree shaped like init_params (its "
            "initial guess)."
        )


def _closure_check(api: str, plan: _Plan, sol_leaves, args_all) -> None:
    """Reject optimality functions that depend on a tensor requiring grad that they close over
    (its gradient would silently be lost)."""
    if not torch.is_grad_enabled():
        return
    detached_args = tree.map(
        lambda x: x.detach() if isinstance(x, torch.Tensor) else x, tuple(args_all)
    )
    sol = tree.unflatten(plan.sol_spec, [s.detach() for s in sol_leaves])
    out = plan.optimality_fn(sol, *detached_args)
    _check_structure(api, out, sol)
    if any(isinstance(o, torch.Tensor) and o.requires_grad for o in tree.leaves(out)):
        raise ClosedOverTensorError(
            f"{api}: optimality_fn uses a tensor that requires grad but is not one of its "
            "arguments (a closed-over tensor); its gradient would be lost. Pass it as an "
            "argument of the solver and optimality_fn and list its position in argnums."
        )


def custom_root(
    optimality_fn: Callable[..., PyTree],
    argnums: int | Sequence[int] = 1,
    has_aux: bool = False,
    solve: Solve = solve_cg,
    on_failure: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    r"""Decorator attaching implicit differentiation to a root-finding / minimisation solver.

    The decorated ``solver(init_params, *args, **kwargs)`` returns ``params`` (or
    ``(params, aux)`` with ``has_aux``) satisfying :math:`F(\text{params}, *\text{args}) = 0`
    with ``F = optimality_fn``. The solver runs without recording an autograd graph; the
    derivative w.r.t. the arguments named in ``argnums`` is given by the implicit function
    theorem (:func:`root_vjp`, :func:`root_jvp`), so memory does not grow with the solver's
    iterations.

    Args:
        optimality_fn: ``F(params, *args)`` returning a pytree shaped like ``params``; for an
            argmin, the gradient of the objective w.r.t. ``params`` (then ``∂ₓF`` is the
            symmetric Hessian and the default ``solve_cg`` applies).
        argnums: index or indices (``>= 1``) of the solver's positional arguments to
            differentiate (``0`` is ``init_params``, never differentiated). Arguments may be
            any pytrees (dicts of tensors, parameter dicts, physics objects). Tensors in other
            arguments are treated as constants.
        has_aux: the solver returns ``(params, aux)``; ``aux`` is passed through detached.
        solve: linear solver for the backward system ``(∂ₓF)ᵀ u = −x̄``, e.g.
            ``functools.partial(solve_cg, rtol=1e-8)``.
        on_failure: when the backward solve stops short of its tolerance, breaks down or
            meets NaN/Inf (or the incoming gradient holds NaN/Inf): ``"warn"`` (a
            :class:`~unroll.linear_solve.ConvergenceWarning` named ``custom_root backward``,
            once per cause and call site), ``"raise"``
            (:class:`~unroll.linear_solve.ConvergenceError`) or ``"ignore"``. Default: the
            ``on_failure`` ``solve`` was configured with, else ``"warn"``.

    Returns:
        A decorator; the decorated solver has the same call signature.

    Example:
        >>> import functools, torch
        >>> from unroll import custom_root
        >>> from unroll.linear_solve import solve_cg
        >>> def grad_ridge(w, lam, X, y):  # ∇ of ½‖Xw − y‖² + ½λ‖w‖²
        ...     return X.T @ (X @ w - y) + lam * w
        >>> @custom_root(grad_ridge, argnums=1, solve=functools.partial(solve_cg, rtol=1e-10))
        ... def ridge(init, lam, X, y):
        ...     return torch.linalg.solve(X.T @ X + lam * torch.eye(X.shape[1]), X.T @ y)
        >>> X, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
        >>> lam = torch.tensor(1.0, dtype=torch.float64)
        >>> g = torch.func.grad(lambda l: ridge(None, l, X, y).sum())(lam)
        >>> A = X.T @ X + lam * torch.eye(3, dtype=torch.float64)
        >>> w = torch.linalg.solve(A, X.T @ y)
        >>> torch.allclose(g, -torch.linalg.solve(A, w).sum())
        True

    References:
        Blondel et al., "Efficient and modular implicit differentiation", NeurIPS 2022.
    """
    return _custom_root("custom_root", optimality_fn, argnums, has_aux, solve, on_failure)


def custom_fixed_point(
    fixed_point_fn: Callable[..., PyTree],
    argnums: int | Sequence[int] = 1,
    has_aux: bool = False,
    solve: Solve = solve_gmres,
    on_failure: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    r"""Decorator attaching implicit differentiation to a fixed-point solver.

    The decorated ``solver(init_params, *args)`` returns ``x`` with
    :math:`x = T(x, *\text{args})`, ``T = fixed_point_fn``. It is :func:`custom_root` with
    :math:`F(x, \theta) = x - T(x, \theta)`, so ``solve`` receives the operator
    :math:`u \mapsto (I - \partial_x T)^\top u`: for a contractive ``T`` a fixed-point
    (Richardson) or Anderson solve of it converges, as do GMRES and BiCGStab.

    Args:
        fixed_point_fn: ``T(params, *args)`` returning a pytree shaped like ``params``; with
            ``has_aux`` it may also return ``(params, aux)`` (the map given to
            ``fixed_point_iteration(..., has_aux=True)``; ``aux`` is then ignored here).
        argnums, on_failure: as :func:`custom_root`.
        has_aux: the decorated solver returns ``(params, aux)`` (JAXopt's meaning); ``aux``
            is passed through untouched and detached (no gradient).
        solve: linear solver for the (non-symmetric) backward system; default
            :func:`~unroll.linear_solve.solve_gmres`.

    Example:
        >>> import torch
        >>> from unroll import custom_fixed_point
        >>> T = lambda x, a: 0.5 * x + a          # fixed point x* = 2a
        >>> @custom_fixed_point(T)
        ... def solve(x, a):
        ...     for _ in range(100):
        ...         x = T(x, a)
        ...     return x
        >>> a = torch.tensor(3.0, dtype=torch.float64)
        >>> g = torch.func.grad(lambda a: solve(torch.zeros_like(a), a))(a)
        >>> torch.allclose(g, torch.tensor(2.0, dtype=torch.float64))
        True
    """
    return _custom_fixed_point(
        "custom_fixed_point", fixed_point_fn, argnums, has_aux, solve, on_failure
    )


def _custom_fixed_point(
    api, fixed_point_fn, argnums, has_aux, solve, on_failure=None, label=None, remedy=""
):
    """:func:`custom_fixed_point` reporting backward failures under ``label`` (``deq`` passes
    ``"deq (backward)"``)."""
    if not callable(fixed_point_fn):
        raise TypeError(f"{api}: fixed_point_fn must be callable T(params, *args).")

    def optimality_fn(x, *args, **kwargs):
        out = fixed_point_fn(x, *args, **kwargs)
        if has_aux and _is_pair_with_aux(out, x):  # T(x) -> (x, aux), as the solver's f
            out = cast(tuple, out)[0]
        return tree.sub(x, out)

    functools.update_wrapper(optimality_fn, fixed_point_fn)
    optimality_fn.__wrapped__ = fixed_point_fn  # signature binding uses T's names
    return _custom_root(api, optimality_fn, argnums, has_aux, solve, on_failure, label, remedy)


def _is_pair_with_aux(out: Any, x: PyTree) -> bool:
    """``out`` is ``(T(x), aux)`` rather than ``T(x)``: a pair whose first element, not
    ``out`` itself, has the structure of ``x``."""
    return (
        isinstance(out, tuple)
        and len(out) == 2
        and tree.structure(out) != tree.structure(x)
        and tree.structure(out[0]) == tree.structure(x)
    )


def _custom_root(
    api, optimality_fn, argnums, has_aux, solve, on_failure=None, label=None, remedy=""
):
    """:func:`custom_root` with the name (``label``) and remedy its backward failures are
    reported under (``deq`` passes ``"deq (backward)"``)."""
    if on_failure is not None:
        check_on_failure(api, on_failure)
    report_as = _Report(label or f"{api} backward", on_failure, remedy)
    if not callable(optimality_fn):
        raise TypeError(f"{api}: optimality_fn must be callable F(params, *args).")
    if not callable(solve):
        raise TypeError(
            f"{api}: solve must be a linear solver solve(matvec, b) -> x, e.g. "
            f"unroll.linear_solve.solve_cg; got {type(solve).__name__}."
        )
    nums = _normalize_argnums(api, argnums)

    def decorator(solver: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(solver):
            raise TypeError(f"{api}: decorate a solver function solver(init_params, *args).")

        @functools.wraps(solver)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            full = _bind(api, optimality_fn, solver, args, kwargs)
            _check_signature(api, optimality_fn, len(full) - 1)
            if max(nums) >= len(full):
                raise ValueError(
                    f"{api}: argnums={argnums!r} is out of range for a call with "
                    f"{len(full)} positional arguments (init_params is 0)."
                )
            with torch.no_grad():
                result = solver(*args, **kwargs)
            if has_aux:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise TypeError(
                        f"{api}: has_aux=True needs the solver to return (params, aux)."
                    )
                sol, aux = result
                aux = tree.detach(aux)
            else:
                sol = result
            sol_leaves, sol_spec = tree.flatten(sol)
            if not sol_leaves or not all(isinstance(s, torch.Tensor) for s in sol_leaves):
                raise TypeError(f"{api}: the solver must return a pytree of tensors (params).")
            sol_leaves = [s.detach() for s in sol_leaves]
            _check_solution(api, full[0], sol_leaves, sol_spec)
            diff_args = [full[i] for i in nums]
            tensors, rebuild_diff, _ = _split_tensors(diff_args)

            plan = _Plan(
                optimality_fn,
                solve,
                sol_spec,
                len(sol_leaves),
                full[1:],
                nums,
                rebuild_diff,
                report_as,
            )
            _closure_check(api, plan, sol_leaves, full[1:])
            out = _ImplicitIdentity.apply(plan, *sol_leaves, *tensors)
            sol = tree.unflatten(sol_spec, list(out))
            return (sol, aux) if has_aux else sol

        return wrapped

    return decorator
