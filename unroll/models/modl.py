"""MoDL: model-based deep learning (Aggarwal, Mani & Jacob, 2019)."""

from __future__ import annotations

import torch
from torch import nn

from unroll._typing import PhysicsLike
from unroll.models._utils import check_positive_int, from_channels, make_blocks, to_channels
from unroll.models.dncnn import DnCNN

_API = "unroll.models.MoDL"


class MoDL(nn.Module):
    r"""MoDL unrolled network (half-quadratic splitting with a learned denoiser).

    Starting from ``x^0 = A^H y``, for ``k = 0..K−1``:

    .. math::
        z^k = D_k(x^k, σ_k),\qquad
        x^{k+1} = \operatorname{prox}_{γ_k f}(z^k)
                = \arg\min_x \tfrac12\|A x − y\|^2 + \tfrac{1}{2γ_k}\|x − z^k\|^2
                = (A^H A + I/γ_k)^{-1}(A^H y + z^k/γ_k),

    the data-consistency step is ``physics.prox_l2(z, y, γ_k)`` (closed form for MRI,
    conjugate gradient with the physics' own backward setting otherwise). ``γ_k = 1/λ_k`` with
    ``λ`` the regularisation weight of the paper. Complex images are given to the denoiser as
    real channels (see :func:`~unroll.models._utils.to_channels`) and returned complex.

    Args:
        denoiser: network ``D(x, sigma)`` on real channels; default
            ``DnCNN(in_channels, in_channels, depth=7)``.
        num_iter: number of unrolled iterations ``K``.
        in_channels: real channels of the image, for the default denoiser (2 = one complex
            channel).
        stepsize: initial ``γ_k`` (learnable, one per iteration; must stay positive).
        sigma_denoiser: noise level ``σ_k`` given to the denoiser (a buffer, one per iteration).
        shared_weights: one denoiser for all iterations (as in the paper) or ``K`` copies; a
            list of ``K`` modules is used as given.

    Called as ``model(y, physics)``; uses ``physics.A_adjoint`` and ``physics.prox_l2``.

    Example:
        >>> import torch
        >>> from unroll.models import MoDL
        >>> class Identity:
        ...     def A_adjoint(self, y): return y
        ...     def prox_l2(self, z, y, gamma): return (y + z / gamma) / (1 + 1 / gamma)
        >>> MoDL(num_iter=2, in_channels=1)(torch.rand(2, 1, 8, 8), Identity()).shape
        torch.Size([2, 1, 8, 8])

    References:
        H. K. Aggarwal, M. P. Mani, M. Jacob, "MoDL: model-based deep learning architecture for
        inverse problems", IEEE TMI 38(2), 2019.
    """

    def __init__(
        self,
        denoiser: nn.Module | list[nn.Module] | None = None,
        num_iter: int = 3,
        in_channels: int = 2,
        stepsize: float = 1.0,
        sigma_denoiser: float = 0.01,
        shared_weights: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("num_iter", _API, num_iter)
        check_positive_int("in_channels", _API, in_channels)
        if not stepsize > 0:
            raise ValueError(f"{_API}: stepsize must be positive, got {stepsize}.")
        if denoiser is None:
            denoiser = DnCNN(in_channels, in_channels, depth=7)
        self.num_iter = num_iter
        self.denoisers = make_blocks(_API, denoiser, num_iter, shared_weights)
        self.stepsize = nn.Parameter(torch.full((num_iter,), float(stepsize)))
        self.register_buffer("sigma_denoiser", torch.full((num_iter,), float(sigma_denoiser)))

    def forward(self, y: torch.Tensor, physics: PhysicsLike) -> torch.Tensor:
        """Reconstruct from measurements ``y``."""
        x = physics.A_adjoint(y)
        for k, denoiser in enumerate(self.denoisers):
            x_c, layout = to_channels(x)
            sigma: torch.Tensor = self.get_buffer("sigma_denoiser")
            z = from_channels(denoiser(x_c, sigma[k]), layout)
            x = physics.prox_l2(z, y, self.stepsize[k])
        return x
