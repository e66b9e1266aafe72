"""Predefined networks: the DnCNN denoiser and unrolled reconstruction networks.

All are ``nn.Module``s: ``DnCNN`` is called as ``denoiser(x, sigma)``; ``VarNet``, ``MoDL``
and ``PDNet`` as ``model(y, physics)`` and use only the physics protocol (``A``,
``A_adjoint``, ``prox_l2`` and, for MRI, the ``mask`` / ``coil_maps`` leaves).
"""

from unroll.models.dncnn import DnCNN
from unroll.models.modl import MoDL
from unroll.models.pdnet import PDNet, PDNet_DualBlock, PDNet_PrimalBlock, init_conv_block
from unroll.models.varnet import SensitivityModel, VarNet
from unroll.models.wavelet import WaveletDenoiser

__all__ = [
    "DnCNN",
    "MoDL",
    "PDNet",
    "PDNet_DualBlock",
    "PDNet_PrimalBlock",
    "SensitivityModel",
    "VarNet",
    "WaveletDenoiser",
    "init_conv_block",
]
