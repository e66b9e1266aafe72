r"""The exact least-squares prox of a separable 2-D blur, by Kronecker eigendecomposition.

A kernel of rank one, :math:`k = u v^\top` (a Gaussian without rotation, a box), blurs
rows and columns independently; with any boundary condition of :class:`~unroll.physics.Blur`
(each pads every dimension on its own) the operator is a Kronecker product,

.. math:: A\,\mathrm{vec}(X) = \mathrm{vec}(A_h X A_w^\top), \qquad
          A = A_h \otimes A_w,

where :math:`A_h` (:math:`H' \times H`) pads a column and convolves it with :math:`u`, and
:math:`A_w` (:math:`W' \times W`) does the same to a row with :math:`v` (a decimation after the
blur, as in :class:`~unroll.physics.Downsampling`, keeps every ``f``-th row of each). Then
:math:`A^\top A = N_h \otimes N_w` with the small symmetric :math:`N_h = A_h^\top A_h` and
:math:`N_w = A_w^\top A_w`; from their eigendecompositions :math:`N = U \Lambda U^\top`,

.. math:: (A^\top A + I/\gamma)^{-1} R
          = U_h \Bigl[\bigl(U_h^\top R\, U_w\bigr) \oslash
            \bigl(\lambda_h \lambda_w^\top + 1/\gamma\bigr)\Bigr] U_w^\top,

four small matrix products per channel instead of a conjugate-gradient solve (Hansen, Nagy &
O'Leary 2006, §4.4). The factorisation is built in float64 from the detached kernel; the prox
is differentiated implicitly (its backward applies the same solve to the cotangent), so
gradients reach ``z``, ``y``, ``γ`` and the kernel exactly.

References:
    P. C. Hansen, J. G. Nagy, D. P. O'Leary, "Deblurring Images: Matrices, Spectra, and
    Filtering", SIAM, 2006, §4.4 (separable blurs) and §4.5 (boundary conditions).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

#: A kernel counts as separable when its second singular value is at most this many machine
#: epsilons (of its dtype) times the first: Gaussian kernels without rotation measure 3e-8
#: (float32) and 7e-17 (float64) relative, a rotated anisotropic one 0.3.
RANK_ONE_EPS = 10


class Kronecker(NamedTuple):
    r"""A separable blur's factorisation: :math:`A_h`, :math:`A_w` (``(b, c, H', H)``,
    ``(b, c, W', W)``), and the eigenvectors and eigenvalues of :math:`N_h = A_h^\top A_h`
    and :math:`N_w = A_w^\top A_w` (``(b, c, H, H)``, ``(b, c, H)``, ...), in the images'
    dtype, detached."""

    a_h: torch.Tensor
    a_w: torch.Tensor
    u_h: torch.Tensor
    lam_h: torch.Tensor
    u_w: torch.Tensor
    lam_w: torch.Tensor

    def out_size(self) -> tuple[int, int]:
        """``(H', W')``, the spatial size of ``A x``."""
        return self.a_h.shape[-2], self.a_w.shape[-2]


def rank_one_factors(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(u, v)`` with ``kernel[..., i, j] = u[..., i] v[..., j]`` (float64, on the CPU, where
    the small factorisation is built whatever the kernel's device) when every 2-D kernel of the
    ``(b, c, h, w)`` stack has rank one (one host read), else ``None``."""
    k = kernel.detach().to(device="cpu", dtype=torch.float64)  # small: factorised on the host
    U, s, Vh = torch.linalg.svd(k, full_matrices=False)
    eps = torch.finfo(kernel.dtype).eps * RANK_ONE_EPS
    if s.shape[-1] > 1 and not bool((s[..., 1] <= eps * s[..., 0]).all()):
        return None
    root = s[..., :1].sqrt()
    return U[..., :, 0] * root, Vh[..., 0, :] * root


def axis_operator(f: torch.Tensor, n: int, before: int, after: int, index: torch.Tensor | None):
    r"""The 1-D blur :math:`A_1` (``(b, c, m, n)``) of a length-``n`` signal: extend it by
    ``before`` / ``after`` samples (``index``: the source of each extended sample, ``None`` for
    zeros outside), then the valid convolution :math:`y_i = \sum_j f_j\, x_{i + s - 1 - j}`
    with the ``(b, c, s)`` factor ``f``."""
    s = f.shape[-1]
    padded = n + before + after
    m = padded - s + 1
    rows = torch.arange(m, device=f.device)
    conv = f.new_zeros(*f.shape[:-1], m, padded)
    for j in range(s):  # diagonal s - 1 - j holds f_j
        conv[..., rows, rows + s - 1 - j] = f[..., j : j + 1]
    if index is None:  # zeros: the signal sits at before .. before + n - 1
        return conv[..., before : before + n]
    extend = torch.zeros(padded, n, dtype=f.dtype, device=f.device)
    extend[torch.arange(padded, device=f.device), index.to(f.device)] = 1
    return conv @ extend


def factorise(
    factors: tuple[torch.Tensor, torch.Tensor],
    axes: tuple[tuple[int, int, int, torch.Tensor | None], ...],
    like: torch.Tensor,
    stride: int = 1,
) -> Kronecker:
    """The :class:`Kronecker` factorisation from the float64 ``factors`` of
    :func:`rank_one_factors` and, per image axis (rows, then columns), ``(n, before, after,
    index)`` as :func:`axis_operator` takes them, keeping every ``stride``-th output sample
    (a decimation after the blur, as :class:`~unroll.physics.Downsampling`'s); cast to
    ``like``'s dtype and device."""
    mats = [axis_operator(f, *axis)[..., ::stride, :] for f, axis in zip(factors, axes)]
    out: list[torch.Tensor] = []
    for a in mats:
        lam, u = torch.linalg.eigh(a.transpose(-1, -2) @ a)
        out += [a, u, lam.clamp(min=0)]  # AᵀA is PSD: rounding may leave -1e-17

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype=like.dtype, device=like.device)

    a_h, u_h, lam_h, a_w, u_w, lam_w = (cast(t) for t in out)
    return Kronecker(a_h, a_w, u_h, lam_h, u_w, lam_w)


def adjoint(fac: Kronecker, y: torch.Tensor) -> torch.Tensor:
    r""":math:`A^\top y = A_h^\top Y A_w` per image (``y``: ``(B, C, H', W')``)."""
    return fac.a_h.transpose(-1, -2) @ y @ fac.a_w


def solve(fac: Kronecker, rhs: torch.Tensor, inv_gamma: torch.Tensor) -> torch.Tensor:
    r""":math:`(A^\top A + I/\gamma)^{-1} R` per image (see the module docstring);
    ``inv_gamma`` broadcasts against ``(B, 1, 1, 1)``."""
    spectral = fac.u_h.transpose(-1, -2) @ rhs @ fac.u_w
    den = fac.lam_h.unsqueeze(-1) * fac.lam_w.unsqueeze(-2) + inv_gamma
    return fac.u_h @ (spectral / den) @ fac.u_w.transpose(-1, -2)
