r"""The linear-physics protocol, its pytree registration, and composition of operators.

A physics object describes a linear forward operator :math:`A` of an inverse problem
:math:`y = \mathcal N(A x)`. It is a *pytree*: its tensors (blur kernel, mask, coil maps, ...)
are leaves, its settings (padding, ``max_iter``, ``tol``, ...) are static data. So
``torch.func.vmap`` can map over a batch of physics objects, and :func:`unroll.custom_root`
can differentiate a least-squares step with respect to every tensor the physics holds.

Physics objects never change during a call: solver options passed to a method apply to that
call only (use :meth:`LinearPhysics.replace` for a modified copy).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any, ClassVar, cast

import optree
import torch

from unroll import tree
from unroll._failure import SolveInfo, summary
from unroll._typing import PyTree
from unroll.physics import spectral
from unroll.physics._utils import (
    SolveOptions,
    check_solve_options,
    complex_of,
    is_number,
    require_tensor,
    validate_prox_gamma,
)
from unroll.physics.prox import _least_squares, check_solver

__all__ = ["LinearPhysics", "ComposedPhysics", "compose"]

_NOISE_IN_CHILDREN = "<noise model is a pytree child>"
_SETTINGS = ("max_iter", "tol", "implicit_backward_solver", "solver")


class LinearPhysics:
    r"""A linear forward operator :math:`A` with its adjoint, noise model and prox.

    Subclasses name their tensor attributes in ``leaves`` and their static settings in
    ``static`` and implement :meth:`A` and :meth:`A_adjoint`; they are registered as pytrees
    automatically. The base class can also wrap two callables directly.

    Methods:
        ``A(x)``, ``A_adjoint(y)``, ``A_adjoint_A(x)``; ``physics(x)`` = ``noise_model(A(x))``;
        ``prox_l2(z, y, gamma)`` = :math:`\arg\min_x \tfrac12\|Ax-y\|^2 +
        \tfrac1{2\gamma}\|x-z\|^2` (per sample); ``A_dagger(y)`` = :math:`A^\dagger y`, the
        minimum-norm least-squares solution. Both default to conjugate gradient through
        :func:`unroll.physics.least_squares`; subclasses override them with closed forms.

    Args:
        A: ``x ↦ A x`` (only when using the base class directly).
        A_adjoint: ``y ↦ Aᵀ y``, the exact adjoint of ``A``.
        noise_model: ``y ↦ ỹ`` applied by ``__call__`` (e.g. :class:`GaussianNoise`); ``None``
            for noiseless measurements.
        max_iter: conjugate-gradient iteration cap of ``prox_l2`` / ``A_dagger`` (forward and
            backward solves).
        tol: relative residual tolerance of those solves, ``‖r‖ ≤ tol·‖b‖`` per sample.
        implicit_backward_solver: differentiate the CG solves implicitly (O(1) memory in the
            number of iterations) rather than through the iterations.
        solver: the least-squares method of those solves: ``"CG"`` (default), ``"BiCGStab"``,
            ``"lsqr"`` or ``"minres"`` (DeepInverse's names; see :func:`least_squares`).
        device: where the operator's tensors (kernel, mask, coil maps, ...) live; the same as
            building it and calling :meth:`to` (every subclass takes these keywords).

    Example:
        >>> import torch
        >>> from unroll.physics import LinearPhysics
        >>> D = torch.tensor([1.0, 2.0, 3.0])
        >>> physics = LinearPhysics(lambda x: D * x, lambda y: D * y, tol=1e-8)
        >>> y = torch.ones(2, 3)
        >>> physics.prox_l2(torch.zeros(2, 3), y, 1.0)   # D y / (D^2 + 1)
        tensor([[0.5000, 0.4000, 0.3000],
                [0.5000, 0.4000, 0.3000]])

    Tensors captured by the callables ``A`` / ``A_adjoint`` are constants for the implicit
    backward; subclass and list them in ``leaves`` to differentiate with respect to them.
    """

    leaves: ClassVar[tuple[str, ...]] = ()
    static: ClassVar[tuple[str, ...]] = ("_A_fn", "_At_fn")
    _A_fn: Callable | None = None
    _At_fn: Callable | None = None

    def __init__(
        self,
        A: Callable[[torch.Tensor], torch.Tensor] | None = None,
        A_adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        noise_model: Callable[[torch.Tensor], torch.Tensor] | None = None,
        max_iter: int = 100,
        tol: float = 1e-5,
        implicit_backward_solver: bool = True,
        solver: str = "CG",
        device: torch.device | str | None = None,
    ) -> None:
        if type(self) is LinearPhysics and (not callable(A) or not callable(A_adjoint)):
            raise TypeError(
                "LinearPhysics: pass both A and A_adjoint as callables, or subclass "
                "LinearPhysics and implement A / A_adjoint."
            )
        self._A_fn = A
        self._At_fn = A_adjoint
        self._init_settings(noise_model, max_iter, tol, implicit_backward_solver, solver, device)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)

    # ------------------------------------------------------------------ settings
    def _init_settings(
        self,
        noise_model: Callable | None,
        max_iter: int,
        tol: float,
        implicit_backward_solver: bool,
        solver: str = "CG",
        device: torch.device | str | None = None,
    ) -> None:
        """Validate and set the solve settings; with ``device`` (DeepInverse's constructor
        keyword), move the operator's tensors there (as :meth:`to`, on the new object)."""
        name = type(self).__name__
        if noise_model is not None and not callable(noise_model):
            raise TypeError(f"{name}: noise_model must be callable y -> noisy y, or None.")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter <= 0:
            raise ValueError(f"{name}: max_iter must be a positive int, got {max_iter!r}.")
        if not (is_number(tol) and math.isfinite(tol) and tol >= 0):
            raise ValueError(f"{name}: tol must be a finite number >= 0, got {tol!r}.")
        if not isinstance(implicit_backward_solver, bool):
            raise TypeError(f"{name}: implicit_backward_solver must be True or False.")
        self.noise_model = noise_model
        self.max_iter = max_iter
        self.tol = float(tol)
        self.implicit_backward_solver = implicit_backward_solver
        self.solver = check_solver(name, solver)
        if device is not None:
            self.__dict__.update(self.to(device=device).__dict__)

    def replace(self, **changes: Any) -> LinearPhysics:
        """A copy with some attributes replaced (the original is left untouched).

        Example: ``physics.replace(max_iter=400, implicit_backward_solver=False)``.
        """
        cls = type(self)
        known = set(cls.leaves) | set(cls.static) | set(_SETTINGS) | {"noise_model"}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(
                f"{cls.__name__}.replace: unknown attribute(s) {unknown}; valid: {sorted(known)}."
            )
        children, aux = _flatten(self)
        new = _make_unflatten(cls)(aux, children)
        probe = LinearPhysics.__new__(LinearPhysics)
        settings = {k: changes.get(k, getattr(self, k)) for k in (*_SETTINGS, "noise_model")}
        probe._init_settings(
            settings["noise_model"],
            settings["max_iter"],
            settings["tol"],
            settings["implicit_backward_solver"],
            settings["solver"],
        )
        for key, value in changes.items():
            setattr(new, key, value)
        return new

    # ------------------------------------------------------------------ operator
    def A(self, x: torch.Tensor) -> torch.Tensor:
        """The forward operator ``A x``."""
        if self._A_fn is None:
            raise NotImplementedError(f"{type(self).__name__}.A: subclasses must implement A.")
        return self._A_fn(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """The adjoint ``Aᵀ y`` (``Aᴴ y`` for complex operators)."""
        if self._At_fn is None:
            raise NotImplementedError(
                f"{type(self).__name__}.A_adjoint: subclasses must implement A_adjoint."
            )
        return self._At_fn(y)

    def A_adjoint_A(self, x: torch.Tensor) -> torch.Tensor:
        """The normal operator ``AᵀA x`` (subclasses override it when cheaper)."""
        return self.A_adjoint(self.A(x))

    def normal_operator(self, like: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``x ↦ AᵀA x`` for inputs shaped like ``like``, with whatever does not depend on
        ``x`` (e.g. a kernel's spectrum) computed once; iterative solvers call it once per
        solve. Default: :meth:`A_adjoint_A`."""
        return self.A_adjoint_A

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Noisy measurements ``noise_model(A x)``."""
        y = self.A(x)
        return y if self.noise_model is None else self.noise_model(y)

    # ------------------------------------------------------------------ solves
    def prox_l2(
        self,
        z: torch.Tensor,
        y: torch.Tensor,
        gamma: float | torch.Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        on_failure: str | None = None,
        solver: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        r"""Proximal step of the data fidelity :math:`f(x) = \tfrac12\|Ax-y\|^2`:

        .. math:: h = \arg\min_x \tfrac12\|Ax-y\|^2 + \tfrac1{2\gamma}\|x-z\|^2
                    = (A^\top A + I/\gamma)^{-1}(A^\top y + z/\gamma),

        per sample. ``gamma``: a finite ``γ > 0``: a number, a 0-dim tensor, a per-sample
        ``(B,)`` tensor or a tensor shaped like ``z`` (a large finite ``γ`` gives the
        data-consistent limit: the least-squares solution nearest ``z``). This default runs
        conjugate gradient through :func:`least_squares`; the keyword options
        ``max_iter``, ``tol``, ``implicit_backward_solver``, ``solver`` override the object's
        settings for
        this call only and ``on_failure`` (``"warn"`` / ``"raise"`` / ``"ignore"``, default
        ``"warn"``) says what an unconverged solve does; closed-form subclasses validate and
        ignore them (they cannot fail). Any other name raises a ``TypeError``.
        """
        api = f"{type(self).__name__}.prox_l2"
        opts = check_solve_options(
            api, max_iter, tol, implicit_backward_solver, on_failure, unknown, solver=solver
        )
        require_tensor(api, "z", z)
        validate_prox_gamma(api, gamma, z)
        return self._cg_prox(z, y, gamma, opts)

    def _cg_prox(
        self, z: torch.Tensor, y: torch.Tensor, gamma: float | torch.Tensor, opts: SolveOptions
    ) -> torch.Tensor:
        """The CG prox of :func:`least_squares` for an already validated ``gamma``."""
        api = f"{type(self).__name__}.prox_l2"
        return self._solve(api, opts, y, z, gamma, gamma_checked=True)

    def _solve(
        self,
        api: str,
        opts: SolveOptions,
        y: torch.Tensor,
        z: torch.Tensor | None,
        gamma: float | torch.Tensor | None,
        **extra: Any,
    ) -> torch.Tensor:
        """:func:`least_squares` with the call's options; ``opts.verbose`` prints the CG's
        iterations and residual (DeepInverse's convergence printout)."""
        kwargs = {**opts.least_squares_kwargs(), **extra}
        if not opts.verbose:
            return cast(torch.Tensor, _least_squares(self, y, z, gamma, **kwargs))
        x, info = cast(
            "tuple[torch.Tensor, SolveInfo]",
            _least_squares(self, y, z, gamma, return_info=True, **kwargs),
        )
        print(f"{api}: CG {summary(info)}")
        return x

    def A_dagger(
        self,
        y: torch.Tensor,
        *,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        on_failure: str | None = None,
        solver: str | None = None,
        **unknown: Any,
    ) -> torch.Tensor:
        r"""Minimum-norm least-squares solution :math:`A^\dagger y = \arg\min \|x\|` over
        :math:`\arg\min_x \|Ax-y\|`, here by conjugate gradient on :math:`A^\top A x =
        A^\top y` from zero (subclasses with a closed form override it). Options as in
        :meth:`prox_l2`."""
        api = f"{type(self).__name__}.A_dagger"
        opts = check_solve_options(
            api, max_iter, tol, implicit_backward_solver, on_failure, unknown, solver=solver
        )
        return self._solve(api, opts, y, None, None)

    # ------------------------------------------------------------------ checks and norms
    def adjointness_test(
        self, u: torch.Tensor, *, rng: torch.Generator | None = None
    ) -> torch.Tensor:
        r""":math:`\overline{\langle v, Au\rangle} - \langle u, A^\top v\rangle` for a random
        normal ``v`` (zero for an exact adjoint); see
        :func:`unroll.physics.spectral.adjointness_test`."""
        return spectral.adjointness_test(self, u, rng=rng)

    def compute_sqnorm(
        self,
        x0: torch.Tensor,
        *,
        max_iter: int = 100,
        tol: float = 1e-3,
        verbose: bool = False,
        rng: torch.Generator | None = None,
        on_failure: str = "warn",
        **unknown: Any,
    ) -> torch.Tensor:
        r""":math:`\|A\|_2^2 = \|A^\top A\|_2` by the power method (``x0``: an input-shaped
        tensor, values ignored); see :func:`unroll.physics.spectral.compute_sqnorm`."""
        return spectral.compute_sqnorm(
            self,
            x0,
            max_iter=max_iter,
            tol=tol,
            verbose=verbose,
            rng=rng,
            on_failure=on_failure,
            **unknown,
        )

    def compute_norm(
        self,
        x0: torch.Tensor,
        max_iter: int = 100,
        tol: float = 1e-3,
        verbose: bool = False,
        squared: bool = True,
        **kwargs: Any,
    ) -> torch.Tensor:
        r""":math:`\|A\|_2` (``squared=False``) or, DeepInverse's deprecated default,
        :math:`\|A^\top A\|_2`; see :func:`unroll.physics.spectral.compute_norm`."""
        return spectral.compute_norm(self, x0, max_iter, tol, verbose, squared, **kwargs)

    # ------------------------------------------------------------------ copies
    def clone(self) -> LinearPhysics:
        """An independent copy (DeepInverse's ``clone``): every tensor cloned (a differentiable
        copy: gradients still reach the original's tensors), the settings copied, a noise
        generator copied with its state. Plain callables (``LinearPhysics(A, A_adjoint)``) and
        what they capture are shared."""
        out = tree.map(torch.clone, self)
        noise = getattr(out, "noise_model", None)
        rng = getattr(noise, "rng", None)
        if rng is not None:
            noise.rng = copy.deepcopy(rng)  # type: ignore[union-attr]  # the copy's own noise
        return out

    # ------------------------------------------------------------------ precision / device
    def to(
        self,
        *args: torch.dtype | torch.device | str,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> LinearPhysics:
        """A copy whose tensors (kernel, mask, coil maps, matrix, a tensor noise level) are
        converted; the original is left untouched.

        ``physics.to(torch.float64)``, ``physics.to("cuda")``, ``physics.to(device, dtype)``.
        A real ``dtype`` converts real floating tensors to it and complex ones to the matching
        complex dtype (``float64`` → ``complex128``); integer and bool tensors keep their
        dtype. Tensors captured by plain callables (``LinearPhysics(A, A_adjoint)``) are not
        reached.
        """
        name = f"{type(self).__name__}.to"
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif isinstance(arg, (torch.device, str)):
                device = arg
            else:
                raise TypeError(
                    f"{name}: pass a torch.dtype and/or a device, got {type(arg).__name__}."
                )
        if dtype is not None and dtype.is_complex:
            dtype = torch.empty((), dtype=dtype).real.dtype
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"{name}: dtype must be a floating dtype, got {dtype}.")

        def convert(t: Any) -> Any:
            if not isinstance(t, torch.Tensor):
                return t
            target = t.dtype
            if dtype is not None and t.is_complex():
                target = complex_of(dtype)
            elif dtype is not None and t.is_floating_point():
                target = dtype
            return t.to(device=device, dtype=target)

        return tree.map(convert, self)

    # ------------------------------------------------------------------ composition
    def __mul__(self, other: LinearPhysics) -> ComposedPhysics:
        """``self * other`` is the composition ``x ↦ A_self(A_other(x))``."""
        if not isinstance(other, LinearPhysics):
            return NotImplemented
        return compose(self, other)

    def __repr__(self) -> str:
        parts = [f"{k}={getattr(self, k)!r}" for k in type(self).static if not k.startswith("_")]
        parts += [f"max_iter={self.max_iter}", f"tol={self.tol}"]
        return f"{type(self).__name__}({', '.join(parts)})"


# ---------------------------------------------------------------------- pytree plumbing
def _is_node(obj: Any) -> bool:
    return obj is not None and not optree.treespec_is_leaf(tree.structure(obj))


def _flatten(obj: LinearPhysics) -> tuple[tuple[PyTree, ...], tuple[Any, ...]]:
    cls = type(obj)
    children = tuple(getattr(obj, name) for name in cls.leaves)
    noise = obj.noise_model
    if _is_node(noise):
        children += (noise,)
        noise_aux: Any = _NOISE_IN_CHILDREN
    else:
        noise_aux = noise
    aux = tuple(getattr(obj, name) for name in (*cls.static, *_SETTINGS)) + (noise_aux,)
    return children, aux


def _make_unflatten(cls: type) -> Callable:
    names = (*cls.static, *_SETTINGS)
    n_leaves = len(cls.leaves)

    def unflatten(aux: tuple[Any, ...], children: tuple[PyTree, ...]) -> LinearPhysics:
        obj = object.__new__(cls)
        for name, value in zip(cls.leaves, children):
            setattr(obj, name, value)
        for name, value in zip(names, aux):
            setattr(obj, name, value)
        noise_aux = aux[-1]
        in_children = isinstance(noise_aux, str) and noise_aux == _NOISE_IN_CHILDREN
        obj.noise_model = children[n_leaves] if in_children else noise_aux
        return obj

    return unflatten


def _register(cls: type) -> None:
    tree.register(cls, _flatten, _make_unflatten(cls))


_register(LinearPhysics)
_DEFAULT = object()


class ComposedPhysics(LinearPhysics):
    r"""Composition :math:`A = A_1 A_2 \cdots A_k` of linear operators (applied right to left).

    ``A(x) = A_1(A_2(...A_k(x)))`` and ``A_adjoint(y) = A_kᵀ(...A_1ᵀ(y))``. Its prox and
    pseudo-inverse use conjugate gradient. The operators are pytree children, so gradients
    reach all their tensors.

    Args:
        *operators: the factors ``A_1, ..., A_k`` (outermost first).
        noise_model, max_iter, tol, implicit_backward_solver, solver: default to those of
            ``A_1``.

    Example:
        >>> import torch
        >>> from unroll.physics import Blur, Inpainting, gaussian_blur
        >>> blur = Blur(gaussian_blur(1.0), padding="circular")
        >>> mask = (torch.rand(1, 1, 16, 16) > 0.5).float()
        >>> physics = Inpainting(mask) * blur          # mask after blur
        >>> physics.A(torch.rand(2, 1, 16, 16)).shape
        torch.Size([2, 1, 16, 16])
    """

    leaves = ("operators",)
    static = ()

    def __init__(
        self,
        *operators: LinearPhysics,
        noise_model: Any = _DEFAULT,
        max_iter: int | None = None,
        tol: float | None = None,
        implicit_backward_solver: bool | None = None,
        solver: str | None = None,
    ) -> None:
        if not operators:
            raise ValueError("ComposedPhysics: pass at least one operator.")
        flat: list[LinearPhysics] = []
        for op in operators:
            if not isinstance(op, LinearPhysics):
                raise TypeError(
                    f"ComposedPhysics: every operator must be a LinearPhysics, got "
                    f"{type(op).__name__}."
                )
            flat.extend(op.operators if isinstance(op, ComposedPhysics) else (op,))
        outer = operators[0]
        self.operators = tuple(flat)
        self._init_settings(
            outer.noise_model if noise_model is _DEFAULT else noise_model,
            outer.max_iter if max_iter is None else max_iter,
            outer.tol if tol is None else tol,
            outer.implicit_backward_solver
            if implicit_backward_solver is None
            else implicit_backward_solver,
            outer.solver if solver is None else solver,
        )

    def A(self, x: torch.Tensor) -> torch.Tensor:
        for op in reversed(self.operators):
            x = op.A(x)
        return x

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        for op in self.operators:
            y = op.A_adjoint(y)
        return y

    def __repr__(self) -> str:
        return " * ".join(repr(op) for op in self.operators)


def compose(*operators: LinearPhysics, **settings: Any) -> ComposedPhysics:
    """``compose(A1, A2, ...)``: the operator ``x ↦ A1(A2(...(x)))``; see
    :class:`ComposedPhysics`."""
    return ComposedPhysics(*operators, **settings)
