"""``ImplicitModule``: the object form of :func:`unroll.implicit.custom_root`.

A bilevel problem written as an ``nn.Module``::

    θ* = argmin_θ  L_outer(w*(θ)),      w*(θ) = argmin_w  L_inner(w, θ)

The **inner parameters** ``w`` and the **meta-parameters** ``θ`` are told apart by
TorchOpt's rules (``ImplicitMetaGradientModule``), with one addition:

- a tensor that requires grad, or an ``nn.Module``, passed to the constructor and assigned as
  an attribute is a meta-parameter (a module: all its parameters);
- tensors or submodules declared with :meth:`ImplicitModule.register_inner` are the inner
  parameters, and then every other parameter of the module is a meta-parameter (e.g. a
  learnable ``self.log_lam = nn.Parameter(...)``);
- without ``register_inner``, every parameter that did not come from the constructor is an
  inner parameter (TorchOpt's ``self.net = copy.deepcopy(meta_net)``).

As in TorchOpt, ``parameters()`` / ``named_parameters()`` are the inner parameters and
``meta_parameters()`` / ``named_meta_parameters()`` the meta-parameters. The subclass
defines ``solve(self, *inputs)`` (any solver that leaves the inner parameters at a solution),
and either ``objective(self, *inputs)`` (the scalar inner loss; the optimality condition is its
gradient w.r.t. the inner parameters, taken with ``torch.func.grad``) or ``optimality(self,
*inputs)`` (a residual that is zero at the solution). After ``module.solve(...)`` the inner
parameters are the solution and carry the implicit meta-gradient:
``loss(module(x_val)).backward()`` fills ``θ.grad`` with

.. math::
    \\frac{d L}{d θ} = -\\frac{\\partial F}{\\partial θ}^{\\!\\top}
    \\Big(\\frac{\\partial F}{\\partial w}\\Big)^{-\\top} \\frac{\\partial L}{\\partial w},
    \\qquad F(w, θ) = 0 \\text{ at } w = w^*(θ),

computed by :func:`unroll.implicit.custom_root` with the class's ``linear_solve`` (default
:func:`unroll.linear_solve.solve_cg`, right for an ``objective``, whose Jacobian ``∂F/∂w`` is a
symmetric Hessian; pick e.g. ``solve_gmres`` / ``solve_normal_cg`` for a non-symmetric
``optimality``).

Design notes:

- ``solve`` runs with gradients enabled (so it may call ``loss.backward()`` or
  ``torch.autograd.grad`` on the inner parameters) while the meta-parameters are replaced by
  detached copies: the solver builds no graph into ``θ`` and cannot write ``θ.grad``.
- The optimality function is a pure function of ``(inner, meta, inputs)`` made with
  ``torch.func.functional_call`` on a *skeleton* of the module (a shallow copy of its module
  tree, sharing tensors and code but not the containers): the autograd graph stored in the
  solved inner parameters never refers back to the module, so a module built at every outer
  step is freed by reference counting as soon as it is dropped (no reference cycle, no leak).
- Tensor inputs of ``solve`` that require grad also receive implicit gradients.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import torch
from torch import nn

from unroll import tree
from unroll._typing import LinearSolver, PyTree
from unroll.implicit._rules import ClosedOverTensorError, custom_root

__all__ = ["ImplicitModule"]

_API = "unroll.ImplicitModule"


class ImplicitModule(nn.Module):
    r"""Base class for a module whose inner parameters are the solution of an inner problem.

    Subclass it and define:

    - ``solve(self, *inputs)``: moves the inner parameters to a solution (assigning
      ``self.w = ...`` for a registered inner tensor, or stepping ``torch.optim`` on an inner
      submodule's parameters); its return value is passed through. Create any inner
      optimizer inside ``solve``. Calling ``solve`` attaches the implicit gradient.
    - ``objective(self, *inputs)`` returning the scalar inner loss :math:`L(w, θ)` — the
      optimality condition is then :math:`F = \nabla_w L` — **or** ``optimality(self,
      *inputs)`` returning :math:`F(w, θ)` directly, as a dict keyed like
      :meth:`named_inner_parameters`, a tuple in that order, or a tensor when there is one
      inner tensor.
    - usually ``forward(self, x)``, which uses the inner parameters.

    The linear solver of the backward pass is a class keyword (or a ``linear_solve``
    attribute): ``class Inner(ImplicitModule, linear_solve=partial(solve_cg, rtol=1e-8))``.

    Which parameters are inner and which are meta (TorchOpt's rules plus ``register_inner``;
    see the module docstring): constructor arguments (tensors that require grad, modules) are
    meta-parameters; with :meth:`register_inner`, the declared tensors / submodules are inner
    and all other parameters meta; without it, every parameter not passed to the constructor
    is inner. :meth:`parameters` / :meth:`named_parameters` yield the **inner** parameters
    (TorchOpt's semantics: ``torch.optim.SGD(self.parameters())`` inside ``solve``), and
    :meth:`meta_parameters` the meta-parameters, for the outer optimizer:
    ``torch.optim.Adam(module.meta_parameters())``. (unroll 0.1.0 returned the
    meta-parameters from ``parameters()``; migrate with ``module.parameters()`` →
    ``module.meta_parameters()``.)

    A subclass must define ``solve`` and one of ``objective`` / ``optimality``: instantiating
    one that does not raises ``TypeError`` naming the missing method (an intermediate class
    may leave them to its subclasses). ``solve`` raises ``ValueError`` when the module has no
    inner parameters, or no meta-parameters and no input that requires grad.

    Threads: the inner solution is state of the module, so one module serves one thread at a
    time. ``solve`` and calls hold a per-module lock (they never interleave), and calling the
    module from a thread while its solution was last computed by another, still running,
    thread raises ``RuntimeError`` (that thread's solution would give wrong meta-gradients):
    give each thread its own copy (``copy.deepcopy(module)``).

    Meta-gradients also flow through ``torch.func``: with a ``forward`` that calls
    ``self.solve(...)``, ``torch.func.grad`` / ``vmap`` of a loss of
    ``torch.func.functional_call(module, meta_params, inputs)`` give (per-example)
    implicit meta-gradients. (The module then keeps the last solution, as any stateful
    module does.)

    Example (iMAML-style proximal inner problem, checked against its closed form):
        >>> import torch
        >>> from torch import nn
        >>> from unroll.implicit import ImplicitModule
        >>> class Inner(ImplicitModule):
        ...     def __init__(self, theta, lam):
        ...         super().__init__()
        ...         self.theta = nn.Parameter(theta)           # meta-parameter
        ...         self.lam = lam
        ...         self.register_inner("w", theta.detach())   # inner parameter
        ...     def objective(self, x, y):                     # ½‖xw − y‖² + ½λ‖w − θ‖²
        ...         fit = 0.5 * ((x @ self.w - y) ** 2).sum()
        ...         return fit + 0.5 * self.lam * ((self.w - self.theta) ** 2).sum()
        ...     def solve(self, x, y):
        ...         a = x.T @ x + self.lam * torch.eye(x.shape[1], dtype=x.dtype)
        ...         self.w = torch.linalg.solve(a, x.T @ y + self.lam * self.theta)
        ...     def forward(self, x):
        ...         return x @ self.w
        >>> x, y = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, dtype=torch.float64)
        >>> inner = Inner(torch.zeros(3, dtype=torch.float64), lam=2.0)
        >>> inner.solve(x, y)
        >>> inner(x).sum().backward()                      # outer loss: Σ x w*(θ)
        >>> a = x.T @ x + 2.0 * torch.eye(3, dtype=torch.float64)
        >>> expected = 2.0 * torch.linalg.solve(a, x.T @ torch.ones(10, dtype=torch.float64))
        >>> torch.allclose(inner.theta.grad, expected)
        True

    References:
        Rajeswaran et al., "Meta-Learning with Implicit Gradients" (iMAML), NeurIPS 2019.
        Blondel et al., "Efficient and Modular Implicit Differentiation", NeurIPS 2022.
        Ren et al., "TorchOpt: An Efficient Library for Differentiable Optimization", JMLR 2023
        (``ImplicitMetaGradientModule``).
    """

    linear_solve: LinearSolver | None = None
    _meta_inputs: dict[
        int, torch.Tensor | nn.Module
    ]  # id -> tensor / module passed to the constructor
    _meta_names: set[str]  # attribute paths known to hold meta-parameters

    def __init_subclass__(cls, linear_solve: LinearSolver | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        for method in _METHODS:
            _check_method_kind(cls, method)
        if linear_solve is not None:
            if not callable(linear_solve):
                raise TypeError(
                    f"{_API}: the class keyword `linear_solve` must be a callable "
                    f"`(matvec, b) -> x` such as unroll.linear_solve.solve_cg, got "
                    f"{type(linear_solve).__name__}."
                )
            cls.linear_solve = staticmethod(linear_solve)
        user_solve = cls.__dict__.get("solve")
        if callable(user_solve) and not getattr(user_solve, "_unroll_implicit", False):
            cls.solve = _implicit_solve_method(user_solve)

    def __new__(cls, *args: Any, **kwargs: Any) -> ImplicitModule:
        missing = _missing_methods(cls)
        if missing:
            raise TypeError(
                f"{_API}: cannot instantiate {cls.__name__}: it does not define {missing}. "
                "Subclass ImplicitModule and define `solve(self, *inputs)` and either "
                "`objective(self, *inputs)` (the scalar inner loss) or `optimality(self, "
                "*inputs)` (a residual, zero at the solution)."
            )
        instance = super().__new__(cls)
        # TorchOpt's rule: tensors that require grad and modules passed to the constructor
        # (with their parameters) are meta-parameters wherever they are assigned.
        instance.__dict__["_meta_inputs"] = _meta_inputs((args, kwargs))
        instance.__dict__["_meta_names"] = set()
        return instance

    def __init__(self) -> None:
        super().__init__()
        self._inner_tensors: list[str] = []
        self._inner_modules: list[str] = []
        self._solve_depth = 0
        self._lock = threading.RLock()
        self._solved_by: int | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        metas = self.__dict__.get("_meta_inputs")
        if not metas or not isinstance(value, (torch.Tensor, nn.Module)):
            super().__setattr__(name, value)
            return
        if metas.get(id(value)) is not value:
            self._meta_names.discard(name)
            super().__setattr__(name, value)
            return
        if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter):
            if "_parameters" not in self.__dict__:
                raise AttributeError(
                    f"{_API}: call `super().__init__()` before assigning meta-parameters."
                )
            self.__dict__.pop(name, None)
            self._buffers.pop(name, None)
            # a meta tensor (TorchOpt's rule), kept as is (not wrapped in a Parameter)
            cast(dict, self._parameters)[name] = value
        else:
            super().__setattr__(name, value)
        self._meta_names.add(name)

    # ------------------------------------------------------------------ threads
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_lock", None)  # a lock cannot be copied or pickled: a copy gets its own
        state["_solved_by"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._lock = threading.RLock()
        metas = self.__dict__.get("_meta_inputs") or {}
        self.__dict__["_meta_inputs"] = {id(m): m for m in metas.values()}  # copies: new ids

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        lock = self.__dict__.get("_lock")
        if lock is None:
            return super().__call__(*args, **kwargs)
        with lock:
            self._check_thread()
            return super().__call__(*args, **kwargs)

    def _check_thread(self) -> None:
        owner = self.__dict__.get("_solved_by")
        me = threading.get_ident()
        if owner is None or owner == me:
            return
        if any(t.ident == owner for t in threading.enumerate()):
            raise RuntimeError(
                f"{_API}: {type(self).__name__} was last solved by another running thread; "
                "its inner solution is module state, so this call would use that thread's "
                "solution and give wrong meta-gradients. Give each thread its own module "
                "(copy.deepcopy(module)), or call solve(...) in this thread first."
            )

    # ------------------------------------------------------------------ registration
    def register_inner(self, name: str, value: torch.Tensor | nn.Module) -> None:
        """Declare inner parameters: a floating tensor, or every parameter of a submodule.

        Args:
            name: attribute name (``self.<name>`` then reads the inner tensor / submodule).
            value: a floating-point tensor (stored detached, as a buffer: it moves with
                ``.to()`` and is saved in ``state_dict``), or an ``nn.Module`` whose
                parameters all become inner parameters (e.g. ``copy.deepcopy(meta_net)``;
                it must share no parameter with the meta-parameters).
        """
        if "_inner_tensors" not in self.__dict__:
            raise RuntimeError(
                f"{_API}.register_inner: call `super().__init__()` in your __init__ first."
            )
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{_API}.register_inner: `name` must be an identifier, got {name!r}.")
        if isinstance(value, nn.Module):
            inner_modules = tuple(self._inner_modules)
            meta_ids = {
                id(p)
                for n, p in nn.Module.named_parameters(self)
                if not n.startswith(tuple(m + "." for m in inner_modules))
            }
            if any(id(p) in meta_ids for p in value.parameters()):
                raise ValueError(
                    f"{_API}.register_inner: submodule {name!r} shares parameters with the "
                    "meta-parameters; register a copy (copy.deepcopy(module))."
                )
            self.add_module(name, value)
            self._inner_modules.append(name)
        elif isinstance(value, torch.Tensor):
            if not (value.is_floating_point() or value.is_complex()):
                raise TypeError(
                    f"{_API}.register_inner: inner tensor {name!r} must be floating point, "
                    f"got {value.dtype}."
                )
            self.register_buffer(name, value.detach().clone())
            self._inner_tensors.append(name)
        else:
            raise TypeError(
                f"{_API}.register_inner: `value` must be a tensor or an nn.Module, got "
                f"{type(value).__name__}."
            )

    def _explicit(self) -> bool:
        """Inner parameters were declared with :meth:`register_inner`."""
        return bool(self._inner_tensors or self._inner_modules)

    def _is_inner(self, name: str, tensor: torch.Tensor) -> bool:
        """Is the parameter ``name`` (relative to this module) an inner parameter?"""
        if name in self._inner_tensors or any(
            name.startswith(m + ".") for m in self._inner_modules
        ):
            return True
        if self._explicit():  # unroll's rule: every other parameter is a meta-parameter
            return False
        # TorchOpt's rule: what came from the constructor is meta, the rest is inner. The
        # names are remembered, so tensors swapped in by functional_call keep their role.
        if self._meta_inputs.get(id(tensor)) is tensor:
            self._meta_names.add(name)
            return False
        return not any(name == m or name.startswith(m + ".") for m in self._meta_names)

    def _classified(self, inner: bool) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` of every inner (or meta) parameter, each tensor once."""
        seen: set[int] = set()
        if inner:
            for name in self._inner_tensors:
                t = self.get_buffer(name)
                seen.add(id(t))
                yield name, t
        for name, t in nn.Module.named_parameters(self, remove_duplicate=False):
            if id(t) not in seen and self._is_inner(name, t) == inner:
                seen.add(id(t))
                yield name, t

    # ------------------------------------------------------------------ views
    def named_inner_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for every inner parameter :math:`w` (names as in ``state_dict``).

        The inner parameters are the tensors and submodules declared with
        :meth:`register_inner` when there are any; otherwise (TorchOpt's rule) every
        parameter that did not come from a constructor argument.
        """
        return self._classified(inner=True)

    def inner_parameters(self) -> Iterator[torch.Tensor]:
        """The inner parameters (see :meth:`named_inner_parameters`)."""
        for _, t in self.named_inner_parameters():
            yield t

    def named_meta_parameters(
        self, prefix: str = "", recurse: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, tensor)`` for every meta-parameter :math:`θ`: every parameter that is not
        an inner parameter (see :meth:`named_inner_parameters`).

        Args:
            prefix: prepended (with a dot) to every name.
            recurse: also the meta-parameters of submodules (else only direct attributes).
        """
        for name, t in self._classified(inner=False):
            if recurse or "." not in name:
                yield (f"{prefix}.{name}" if prefix else name), t

    def meta_parameters(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        """The meta-parameters (see :meth:`named_meta_parameters`): what an outer optimizer
        trains, e.g. ``torch.optim.Adam(module.meta_parameters())``."""
        for _, p in self.named_meta_parameters(recurse=recurse):
            yield p

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """The **inner** parameters, as TorchOpt's ``ImplicitMetaGradientModule`` (see
        :meth:`named_inner_parameters`); :meth:`named_meta_parameters` gives the others.

        Args:
            prefix: prepended (with a dot) to every name.
            recurse: also the inner parameters of submodules (else only direct attributes).
            remove_duplicate: accepted for ``nn.Module`` compatibility (each tensor is
                yielded once).
        """
        for name, t in self.named_inner_parameters():
            if recurse or "." not in name:
                yield (f"{prefix}.{name}" if prefix else name), t

    def parameters(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        """The **inner** parameters (TorchOpt's semantics; see :meth:`named_parameters`):
        ``torch.optim.SGD(self.parameters())`` inside :meth:`solve` optimises the inner
        problem. The outer optimizer takes :meth:`meta_parameters`."""
        for _, t in self.named_parameters(recurse=recurse):
            yield t

    # ------------------------------------------------------------------ implicit solve
    def _implicit_solve(self, user_solve: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        with self._lock:  # one solve at a time; it mutates the module's inner solution
            self._solved_by = threading.get_ident()
            return self._implicit_solve_locked(user_solve, args, kwargs)

    def _implicit_solve_locked(
        self, user_solve: Callable[..., Any], args: tuple, kwargs: dict
    ) -> Any:
        if self._solve_depth:  # super().solve() inside an overriding solve: plain call
            return user_solve(self, *args, **kwargs)
        names = [n for n, _ in self.named_inner_parameters()]
        if not names:
            raise ValueError(
                f"{_API}.solve: {type(self).__name__} has no inner parameters; declare them "
                "with self.register_inner(name, tensor_or_module) in __init__ (or, TorchOpt's "
                "way, assign an nn.Parameter or a submodule that is not a constructor "
                "argument, e.g. self.net = copy.deepcopy(meta_net))."
            )
        tensor_inputs, _ = _split_tensors((args, kwargs))
        if not any(True for _ in self.named_meta_parameters()) and not any(
            t.requires_grad for t in tensor_inputs
        ):
            raise ValueError(
                f"{_API}.solve: {type(self).__name__} has no meta-parameters and no input of "
                "solve requires grad, so nothing would get a meta-gradient. Pass the "
                "meta-parameters to the constructor and assign them (a tensor that requires "
                "grad, or an nn.Module: TorchOpt's rule), or declare the inner parameters "
                "with self.register_inner(...) so that the module's other nn.Parameters are "
                "the meta-parameters."
            )
        optimality_method = _optimality_method(type(self))
        self._detach_inner()
        self._solve_depth += 1
        try:
            out = self._run_user_solve(user_solve, args, kwargs)
        finally:
            self._solve_depth -= 1
        sol = {n: t.detach() for n, t in self.named_inner_parameters()}
        meta = dict(self.named_meta_parameters())
        tensors, rebuild = _split_tensors((args, kwargs))
        diff_inputs = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        if not torch.is_grad_enabled() or not (diff_inputs or _any_requires_grad(meta)):
            self._set_inner(sol)
            return out
        optimality = _make_optimality(_skeleton(self, sol), optimality_method, rebuild, names)
        solved = _attach_implicit_grad(
            optimality, sol, meta, tuple(tensors), diff_inputs, self.linear_solve
        )
        self._set_inner(solved)
        return out

    def _run_user_solve(self, user_solve: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        """Run the user's solver with gradients on and the meta-parameters detached."""
        detached = {"m." + n: p.detach() for n, p in self.named_meta_parameters()}
        with torch.enable_grad():
            return torch.func.functional_call(_Bound(self, user_solve), detached, args, kwargs)

    def _detach_inner(self) -> None:
        """Restart from the last solution as fresh leaves (warm start, no old graph)."""
        for name, t in list(self.named_inner_parameters()):
            if name in self._inner_tensors:
                _set_tensor(self, name, t.detach().clone())
            elif not isinstance(t, nn.Parameter):
                _set_tensor(self, name, nn.Parameter(t.detach().clone()))

    def _set_inner(self, values: dict[str, torch.Tensor]) -> None:
        for name, t in values.items():
            _set_tensor(self, name, t)


# --------------------------------------------------------------------------- helpers
def _implicit_solve_method(user_solve: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(user_solve)
    def solve(self: ImplicitModule, *args: Any, **kwargs: Any) -> Any:
        if "_inner_tensors" not in self.__dict__:
            raise RuntimeError(f"{_API}.solve: call `super().__init__()` in your __init__.")
        return self._implicit_solve(user_solve, args, kwargs)

    solve._unroll_implicit = True  # type: ignore[attr-defined]
    return solve


_METHODS = ("solve", "objective", "optimality")


def _missing_methods(cls: type) -> str:
    """The abstract methods ``cls`` lacks, in words ('' when it defines what it must)."""
    missing = []
    if not callable(getattr(cls, "solve", None)):
        missing.append("`solve`")
    if not any(callable(getattr(cls, m, None)) for m in ("objective", "optimality")):
        missing.append("`objective` or `optimality`")
    return " nor ".join(missing)


def _check_method_kind(cls: type, name: str) -> None:
    """``solve`` / ``objective`` / ``optimality`` defined by ``cls`` are plain methods."""
    attr = cls.__dict__.get(name)
    if attr is None:
        return
    if isinstance(attr, (staticmethod, classmethod)) or not callable(attr):
        kind = type(attr).__name__
        raise TypeError(
            f"{_API}: {cls.__name__}.{name} must be a method `def {name}(self, *inputs)`, "
            f"got a {kind}; define it as a regular method."
        )


def _meta_inputs(inputs: PyTree) -> dict[int, torch.Tensor | nn.Module]:
    """TorchOpt's meta-inputs of a constructor call, by id: every tensor that requires grad,
    every module with its submodules and their parameters."""
    found: dict[int, torch.Tensor | nn.Module] = {}
    for leaf in tree.leaves(inputs):
        if isinstance(leaf, nn.Module):
            for obj in (*leaf.modules(), *leaf.parameters()):
                found[id(obj)] = obj
        elif isinstance(leaf, torch.Tensor) and leaf.requires_grad:
            found[id(leaf)] = leaf
    return found


def _optimality_method(cls: type) -> tuple[str, Callable[..., Any]]:
    for kind in ("optimality", "objective"):
        method = getattr(cls, kind, None)
        if callable(method):
            return kind, method
    raise TypeError(
        f"{_API}: {cls.__name__} defines neither `objective(self, *inputs)` (the scalar inner "
        "loss) nor `optimality(self, *inputs)` (a residual, zero at the solution); define one."
    )


class _Bound(nn.Module):
    """``forward(*a, **k) = fn(module, *a, **k)``: lets ``functional_call`` run any method."""

    def __init__(self, module: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.m = module
        self._fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(self.m, *args, **kwargs)


def _make_optimality(
    skeleton: ImplicitModule,
    method: tuple[str, Callable[..., Any]],
    rebuild: Callable[[tuple], tuple],
    names: list[str],
) -> Callable[..., dict[str, torch.Tensor]]:
    """``F(inner, meta, tensors)``: a pure function of the inner/meta dicts and the inputs."""
    kind, fn = method
    bound = _Bound(skeleton, fn)

    def call(inner: dict, meta: dict, tensors: tuple) -> Any:
        args, kwargs = rebuild(tensors)
        params = {"m." + k: v for k, v in {**meta, **inner}.items()}
        return torch.func.functional_call(bound, params, args, kwargs)

    if kind == "objective":

        def optimality(inner: dict, meta: dict, tensors: tuple) -> dict:
            return torch.func.grad(lambda i: call(i, meta, tensors))(inner)

    else:

        def optimality(inner: dict, meta: dict, tensors: tuple) -> dict:
            return _as_inner_dict(call(inner, meta, tensors), names)

    return optimality


def _attach_implicit_grad(
    optimality: Callable[..., dict],
    sol: dict[str, torch.Tensor],
    meta: Mapping[str, torch.Tensor],
    tensors: tuple,
    diff_inputs: bool,
    linear_solve: LinearSolver | None,
) -> dict[str, torch.Tensor]:
    """Pass the solution through ``custom_root`` so it carries the implicit VJP."""
    options: dict[str, Any] = {"argnums": (1, 2) if diff_inputs else 1}
    if linear_solve is not None:
        options["solve"] = linear_solve

    def solver(init: dict, meta: dict, tensors: tuple) -> dict:
        return sol

    try:
        return custom_root(optimality, **options)(solver)(sol, meta, tensors)
    except ClosedOverTensorError as err:
        raise ClosedOverTensorError(
            f"{_API}.solve: the objective/optimality uses a tensor that requires grad but is "
            "neither a parameter of the module nor an input of `solve` (e.g. a plain tensor "
            "attribute); its gradient would be lost. Make it an nn.Parameter (a "
            "meta-parameter) or pass it to `solve`."
        ) from err


def _as_inner_dict(out: Any, names: list[str]) -> dict[str, torch.Tensor]:
    """Normalise the user's ``optimality`` output to a dict keyed by inner-parameter names."""
    if isinstance(out, dict):
        if sorted(out) != sorted(names):
            raise ValueError(
                f"{_API}.optimality: the returned dict must have the inner-parameter keys "
                f"{sorted(names)}, got {sorted(out)}."
            )
        return dict(out)
    if isinstance(out, torch.Tensor) and len(names) == 1:
        return {names[0]: out}
    if isinstance(out, (tuple, list)) and len(out) == len(names):
        return dict(zip(names, out))
    raise ValueError(
        f"{_API}.optimality: return one residual per inner parameter, as a dict keyed by "
        f"{names}, a tuple in that order, or a tensor when there is a single inner tensor; "
        f"got {type(out).__name__}."
    )


def _split_tensors(inputs: PyTree) -> tuple[list[torch.Tensor], Callable[[tuple], PyTree]]:
    """Tensor leaves of ``inputs`` and a function putting new tensors back in their places."""
    leaves, spec = tree.flatten(inputs)
    slots = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]

    def rebuild(tensors: tuple) -> PyTree:
        new = list(leaves)
        for i, t in zip(slots, tensors):
            new[i] = t
        return tree.unflatten(spec, new)

    return [leaves[i] for i in slots], rebuild


def _any_requires_grad(tensors: Mapping[str, torch.Tensor]) -> bool:
    return any(t.requires_grad for t in tensors.values())


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Write ``value`` into the parameter or buffer slot ``name`` (dotted path) of ``module``."""
    *path, leaf = name.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    # a plain tensor in a parameter slot: the functional solution replaces the parameter
    slots: dict[str, Any] = owner._buffers if leaf in owner._buffers else owner._parameters
    slots[leaf] = value


def _skeleton(module: ImplicitModule, sol: dict[str, torch.Tensor]) -> ImplicitModule:
    """A shallow copy of the module tree whose inner slots hold the (detached) solution.

    Tensors, hooks and code are shared; only the ``_parameters`` / ``_buffers`` / ``_modules``
    containers are new, so nothing in the copy points to the solved (graph-carrying) inner
    parameters of the original and no reference cycle goes through the autograd graph.
    """
    copy = cast(ImplicitModule, _copy_tree(module, {}))
    for name, t in sol.items():
        _set_tensor(copy, name, t)
    return copy


def _copy_tree(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    if id(module) in memo:
        return memo[id(module)]
    new = object.__new__(type(module))
    new.__dict__.update(module.__dict__)
    new.__dict__["_parameters"] = dict(module._parameters)
    new.__dict__["_buffers"] = dict(module._buffers)
    memo[id(module)] = new
    new.__dict__["_modules"] = {
        k: None if m is None else _copy_tree(m, memo) for k, m in module._modules.items()
    }
    return new
