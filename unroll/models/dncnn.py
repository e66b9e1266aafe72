"""DnCNN: a residual convolutional denoiser (Zhang et al., 2017), without batch norm."""

from __future__ import annotations

import os

import torch
from torch import nn

from unroll.models._utils import check_positive_int, conv3x3

_API = "unroll.models.DnCNN"


class DnCNN(nn.Module):
    r"""DnCNN denoiser: ``D(x) = x + f_θ(x)`` with ``f_θ`` a stack of 3x3 convolutions.

    .. math::
        h_1 = \operatorname{ReLU}(W_1 * x + b_1),\quad
        h_l = \operatorname{ReLU}(W_l * h_{l-1} + b_l)\ (l = 2..d-1),\quad
        D(x) = x + W_d * h_{d-1} + b_d

    (residual learning: the network predicts the noise and subtracts it; here ``f_θ`` is the
    negated noise estimate, so the skip connection is a plain sum). There is no batch
    normalisation (as in DeepInverse's DnCNN), so the network is a deterministic function of
    its input, which unrolled and DEQ models need. Weights are initialised with Kaiming
    normal (fan-in, ReLU gain) and biases at zero. Parameter count with bias:
    ``9·c_in·nf + nf + (d−2)(9·nf² + nf) + 9·nf·c_out + c_out`` (668,227 for the defaults).

    Args:
        in_channels: channels of the input image.
        out_channels: channels of the output; must equal ``in_channels`` when ``residual``.
        depth: number of convolution layers ``d >= 2``.
        bias: learnable biases in every convolution.
        nf: feature channels of the hidden layers.
        residual: add the input to the output (residual learning).
        pretrained: ``None`` (random initialisation) or the path to a local state dict (keys
            ``in_conv``, ``conv_list.i``, ``out_conv`` as in DeepInverse), loaded with
            ``torch.load(weights_only=True)``. Nothing is ever downloaded.

    Called as ``denoiser(x, sigma=None)``: ``x`` of shape ``(B, in_channels, H, W)``; ``sigma``
    (float, 0-dim or per-sample ``(B,)`` noise level) is accepted for the denoiser protocol
    and not used by this network.

    Example:
        >>> import torch
        >>> from unroll.models import DnCNN
        >>> net = DnCNN(in_channels=1, out_channels=1, depth=5, nf=16)
        >>> net(torch.rand(2, 1, 8, 8), 0.1).shape
        torch.Size([2, 1, 8, 8])

    References:
        K. Zhang, W. Zuo, Y. Chen, D. Meng, L. Zhang, "Beyond a Gaussian denoiser: residual
        learning of deep CNN for image denoising", IEEE TIP 26(7), 2017.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        depth: int = 20,
        bias: bool = True,
        nf: int = 64,
        residual: bool = True,
        pretrained: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", _API, in_channels)
        check_positive_int("out_channels", _API, out_channels)
        check_positive_int("depth", _API, depth, minimum=2)
        check_positive_int("nf", _API, nf)
        if residual and in_channels != out_channels:
            raise ValueError(
                f"{_API}: residual learning needs in_channels == out_channels (got "
                f"{in_channels} and {out_channels}); pass residual=False or equal channels."
            )
        self.depth = depth
        self.residual = residual
        self.in_conv = conv3x3(in_channels, nf, bias)
        self.conv_list = nn.ModuleList([conv3x3(nf, nf, bias) for _ in range(depth - 2)])
        self.out_conv = conv3x3(nf, out_channels, bias)
        self.reset_parameters()
        if pretrained is not None:
            self.load_state_dict(_load_local_state_dict(pretrained), strict=True)

    def reset_parameters(self) -> None:
        """Kaiming-normal weights (fan-in, ReLU), zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.0, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        """Denoise ``x`` (``(B, C, H, W)`` or unbatched ``(C, H, W)``); ``sigma`` is not used."""
        _check_input(x, self.in_conv.in_channels, sigma)
        h = torch.relu(self.in_conv(x))
        for conv in self.conv_list:
            h = torch.relu(conv(h))
        out = self.out_conv(h)
        return out + x if self.residual else out


def _check_input(x: torch.Tensor, channels: int, sigma: float | torch.Tensor | None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{_API}: x must be a tensor, got {type(x).__name__}.")
    if x.dim() not in (3, 4) or x.shape[-3] != channels:
        raise ValueError(
            f"{_API}: expected x of shape (B, {channels}, H, W) (or (C, H, W) unbatched, e.g. "
            f"under vmap), got {tuple(x.shape)}."
        )
    if x.is_complex():
        raise TypeError(
            f"{_API}: x is complex; pass real channels (e.g. torch.view_as_real and move the "
            f"last dimension to the channels)."
        )
    if isinstance(sigma, torch.Tensor) and sigma.dim() > 0:
        batch = x.shape[0] if x.dim() == 4 else 1
        if sigma.numel() not in (1, batch):
            raise ValueError(
                f"{_API}: sigma must be a float, a 0-dim tensor or hold one value per sample "
                f"(B = {batch}); got shape {tuple(sigma.shape)}."
            )


def _load_local_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    if isinstance(path, str) and path.startswith("download"):
        raise ValueError(
            f"{_API}: unroll never downloads weights; pass pretrained=None or the path to a "
            f"local state dict."
        )
    if not os.path.isfile(path):
        raise ValueError(f"{_API}: pretrained weights file {path!r} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state
