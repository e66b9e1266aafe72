"""DeepInverse's ``deepinv.physics.functional`` names that unroll has, at the same path.

``from unroll.physics.functional import gaussian_blur`` works as
``from deepinv.physics.functional import gaussian_blur`` does (the functions themselves live in
the operator modules and are also exported from :mod:`unroll.physics`). Only functions with
DeepInverse's signatures are listed: unroll's ``conv2d(x, k)`` and ``conv_transpose2d`` take no
``padding`` argument (the :class:`~unroll.physics.Blur` operator holds the padding), so they are
not here.

Example:
    >>> from unroll.physics import functional
    >>> functional.gaussian_blur(sigma=(1.0, 1.0)).shape
    torch.Size([1, 1, 9, 9])
"""

from unroll.physics.blur import gaussian_blur
from unroll.physics.compressed_sensing import dst1
from unroll.physics.downsampling import bicubic_filter, bilinear_filter
from unroll.physics.spectral import power_method

__all__ = ["gaussian_blur", "bicubic_filter", "bilinear_filter", "dst1", "power_method"]
