"""Learned primal-dual network (PDNet / LPD, Adler & Öktem, 2018) and its blocks."""

from __future__ import annotations

import torch
from torch import nn

from unroll._typing import PhysicsLike
from unroll.models._utils import (
    check_positive_int,
    conv3x3,
    from_channels,
    make_blocks,
    to_channels,
)


def init_conv_block(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every convolution in ``module``.

    This is the initialisation of the original learned primal-dual code. (DeepInverse's
    ``init_weights`` only touches ``nn.Linear`` layers, so its convolutional blocks keep
    PyTorch's default initialisation.)
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class _ResidualConvBlock(nn.Module):
    """``out = skip + conv_d(PReLU(... PReLU(conv_1(cat(inputs)))))``."""

    def __init__(
        self, in_channels: int, out_channels: int, depth: int, bias: bool, nf: int, api: str
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", api, in_channels)
        check_positive_int("out_channels", api, out_channels)
        check_positive_int("depth", api, depth, minimum=2)
        check_positive_int("nf", api, nf)
        self._api = api
        self.depth = depth
        self.in_conv = conv3x3(in_channels, nf, bias)
        self.conv_list = nn.ModuleList([conv3x3(nf, nf, bias) for _ in range(depth - 2)])
        self.out_conv = conv3x3(nf, out_channels, bias)
        self.nl_list = nn.ModuleList([nn.PReLU() for _ in range(depth - 1)])
        init_conv_block(self)

    def _run(self, skip: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        if skip.shape[-3] != self.out_conv.out_channels:
            raise ValueError(
                f"{self._api}: the carried variable has {skip.shape[-3]} channels but the block "
                f"outputs {self.out_conv.out_channels}; build it with matching out_channels."
            )
        x = torch.cat(inputs, dim=-3)
        if x.shape[-3] != self.in_conv.in_channels:
            raise ValueError(
                f"{self._api}: the concatenated input has {x.shape[-3]} channels, the block "
                f"expects in_channels={self.in_conv.in_channels}."
            )
        h = self.nl_list[0](self.in_conv(x))
        for conv, act in zip(self.conv_list, self.nl_list[1:]):
            h = act(conv(h))
        return self.out_conv(h) + skip


class PDNet_PrimalBlock(_ResidualConvBlock):  # noqa: N801 (name of the public contract)
    r"""Primal block of the learned primal-dual network.

    .. math:: x^{k+1} = x^k + \Lambda_θ\big([x^k, A^\top u^{k+1}_{[1]}]\big)

    where ``[·,·]`` concatenates channels and ``Λ_θ`` is ``depth`` 3x3 convolutions with PReLU
    activations. Convolutions use Xavier-uniform weights and zero biases
    (:func:`init_conv_block`).

    Args:
        in_channels: channels of ``cat(x, Atu)`` (default 6 = 5 primal + 1 back-projection).
        out_channels: channels of the primal variable ``x`` (default 5).
        depth: number of convolutions (>= 2).
        bias: biases in the convolutions.
        nf: hidden feature channels.

    Called as ``block(x, Atu)``.

    Example:
        >>> import torch
        >>> block = PDNet_PrimalBlock()
        >>> block(torch.zeros(1, 5, 8, 8), torch.ones(1, 1, 8, 8)).shape
        torch.Size([1, 5, 8, 8])

    References:
        J. Adler, O. Öktem, "Learned primal-dual reconstruction", IEEE TMI 37(6), 2018.
    """

    def __init__(
        self,
        in_channels: int = 6,
        out_channels: int = 5,
        depth: int = 3,
        bias: bool = True,
        nf: int = 32,
    ) -> None:
        super().__init__(
            in_channels, out_channels, depth, bias, nf, "unroll.models.PDNet_PrimalBlock"
        )

    def forward(self, x: torch.Tensor, Atu: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """One primal update: ``x + Λ(cat(x, Atu))``."""
        return self._run(x, x, Atu)


class PDNet_DualBlock(_ResidualConvBlock):  # noqa: N801 (name of the public contract)
    r"""Dual block of the learned primal-dual network.

    .. math:: u^{k+1} = u^k + \Gamma_θ\big([u^k, A x^k_{[1]}, y]\big)

    Args:
        in_channels: channels of ``cat(u, Ax, y)`` (default 7 = 5 dual + 1 + 1).
        out_channels: channels of the dual variable ``u`` (default 5).
        depth: number of convolutions (>= 2).
        bias: biases in the convolutions.
        nf: hidden feature channels.

    Called as ``block(u, Ax_cur, y)``.

    References:
        J. Adler, O. Öktem, "Learned primal-dual reconstruction", IEEE TMI 37(6), 2018.
    """

    def __init__(
        self,
        in_channels: int = 7,
        out_channels: int = 5,
        depth: int = 3,
        bias: bool = True,
        nf: int = 32,
    ) -> None:
        super().__init__(
            in_channels, out_channels, depth, bias, nf, "unroll.models.PDNet_DualBlock"
        )

    def forward(self, u: torch.Tensor, Ax_cur: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """One dual update: ``u + Γ(cat(u, Ax_cur, y))``."""
        return self._run(u, u, Ax_cur, y)


class PDNet(nn.Module):
    r"""Learned primal-dual reconstruction network, called as ``model(y, physics)``.

    With ``C`` image channels and ``C_y`` measurement channels (complex tensors count twice,
    see :func:`unroll.models._utils.to_channels`), primal memory ``x ∈ R^{n_p C×H×W}`` and
    dual memory ``u ∈ R^{n_d C_y×H_y×W_y}`` start at zero and for ``k = 0..K−1``:

    .. math::
        u^{k+1} = u^k + \Gamma_k\big([u^k, A x^k_{[1]}, y]\big),\qquad
        x^{k+1} = x^k + \Lambda_k\big([x^k, A^\top u^{k+1}_{[1]}]\big),

    where ``x_{[1]}`` (``u_{[1]}``) are the first ``C`` (``C_y``) channels. The output is
    ``x^K_{[1]}`` in the layout of ``physics.A_adjoint(y)`` (complex stays complex). Only
    ``physics.A`` and ``physics.A_adjoint`` are used, so any linear physics with image-shaped
    measurements works (denoising, inpainting, blur, MRI).

    Args:
        num_iter: number of unrolled iterations ``K``.
        in_channels: real channels ``C`` of the image (2 for a complex single-coil image).
        meas_channels: real channels ``C_y`` of the measurements (defaults to ``in_channels``;
            ``2 N`` for complex ``N``-coil MRI data).
        n_primal, n_dual: memory copies ``n_p``, ``n_d`` of the primal and dual variables.
        depth, nf, bias: of every block (see :class:`PDNet_PrimalBlock`).
        shared_weights: one primal and one dual block for every iteration instead of ``K``
            independent ones.
        primal_blocks, dual_blocks: optional modules to use instead (one module, or a list of
            ``num_iter``), called as ``primal(x, Atu)`` and ``dual(u, Ax, y)``.

    Example:
        >>> import torch
        >>> from unroll.models import PDNet
        >>> class Identity:
        ...     def A(self, x): return x
        ...     def A_adjoint(self, y): return y
        >>> model = PDNet(num_iter=2, nf=8)
        >>> model(torch.rand(2, 1, 8, 8), Identity()).shape
        torch.Size([2, 1, 8, 8])

    References:
        J. Adler, O. Öktem, "Learned primal-dual reconstruction", IEEE TMI 37(6), 2018.
    """

    def __init__(
        self,
        num_iter: int = 10,
        in_channels: int = 1,
        meas_channels: int | None = None,
        n_primal: int = 5,
        n_dual: int = 5,
        depth: int = 3,
        nf: int = 32,
        bias: bool = True,
        shared_weights: bool = False,
        primal_blocks: nn.Module | list[nn.Module] | None = None,
        dual_blocks: nn.Module | list[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        api = "unroll.models.PDNet"
        check_positive_int("num_iter", api, num_iter)
        check_positive_int("in_channels", api, in_channels)
        check_positive_int("n_primal", api, n_primal)
        check_positive_int("n_dual", api, n_dual)
        meas_channels = in_channels if meas_channels is None else meas_channels
        check_positive_int("meas_channels", api, meas_channels)
        self.num_iter = num_iter
        self.in_channels, self.meas_channels = in_channels, meas_channels
        self.n_primal, self.n_dual = n_primal, n_dual
        c, cy = in_channels, meas_channels
        if primal_blocks is None:
            primal_blocks = PDNet_PrimalBlock(n_primal * c + c, n_primal * c, depth, bias, nf)
        if dual_blocks is None:
            dual_blocks = PDNet_DualBlock(n_dual * cy + 2 * cy, n_dual * cy, depth, bias, nf)
        self.primal_blocks = make_blocks(api, primal_blocks, num_iter, shared_weights)
        self.dual_blocks = make_blocks(api, dual_blocks, num_iter, shared_weights)

    def forward(self, y: torch.Tensor, physics: PhysicsLike) -> torch.Tensor:
        """Reconstruct from measurements ``y`` with forward operator ``physics``."""
        y_c, y_layout = to_channels(y)
        c, cy = self.in_channels, self.meas_channels
        _check_channels("measurement", y_c.shape[1], cy, "meas_channels")
        u = torch.zeros_like(y_c).repeat(1, self.n_dual, 1, 1)
        x: torch.Tensor | None = None
        x_layout = y_layout
        for primal, dual in zip(self.primal_blocks, self.dual_blocks):
            if x is None:  # x^0 = 0 and A is linear, so A x^0 = 0 (no operator call)
                ax = torch.zeros_like(y_c)
            else:
                ax, _ = to_channels(physics.A(from_channels(x[:, :c], x_layout)))
            u = dual(u, ax, y_c)
            atu, x_layout = to_channels(physics.A_adjoint(from_channels(u[:, :cy], y_layout)))
            if x is None:
                _check_channels("image", atu.shape[1], c, "in_channels")
                x = atu.new_zeros(atu.shape[0], self.n_primal * c, *atu.shape[-2:])
            x = primal(x, atu)
        if x is None:  # unreachable: the constructor requires num_iter >= 1 blocks
            raise RuntimeError("unroll.models.PDNet: the network has no primal/dual blocks.")
        return from_channels(x[:, :c], x_layout)


def _check_channels(what: str, got: int, expected: int, option: str) -> None:
    if got != expected:
        raise ValueError(
            f"unroll.models.PDNet: the {what} has {got} real channels but the network was "
            f"built for {expected}; pass {option}={got}."
        )
