"""VarNet and E2E-VarNet for (multi-coil) MRI, with a coil-sensitivity estimator."""

from __future__ import annotations

import torch
from torch import nn

from unroll import tree
from unroll._typing import PhysicsLike
from unroll.models._utils import check_positive_int, from_channels, make_blocks, to_channels
from unroll.models.dncnn import DnCNN
from unroll.physics.mri import ifft2c

_API = "unroll.models.VarNet"


class VarNet(nn.Module):
    r"""VarNet (image-domain cascades) or E2E-VarNet (k-space cascades), ``model(y, physics)``.

    With learned networks ``D_t`` (``R_t(x) = x − D_t(x)`` is the learned regulariser
    gradient) and data-consistency weights ``η_t`` (initialised at 1):

    * ``mode="varnet"`` (Hammernik et al.): ``x^0 = A^H y`` and

      .. math:: x^{t+1} = x^t − η_t A^H(A x^t − y) − R_t(x^t),

    * ``mode="e2e-varnet"`` (Sriram et al.): ``k^0 = y`` (k-space, the shape of ``y``) and

      .. math:: k^{t+1} = k^t − η_t M ⊙ (k^t − y) − F E_S\, R_t(E_S^H F^{-1} k^t),

      where ``F E_S = A_full`` is the operator with a fully sampled mask (``physics`` with its
      ``mask`` leaf replaced by ones) and ``M`` the sampling mask; the output is
      ``A_full^H k^T``.

    If ``sensitivity_model`` is given (e.g. :class:`SensitivityModel`), the coil maps ``S``
    are estimated from ``y`` and replace ``physics.coil_maps`` (in both modes). Only
    ``physics.A``, ``physics.A_adjoint`` and the leaves ``mask`` / ``coil_maps`` of the physics
    pytree are used; the physics object is never modified. Complex images are given to the
    networks as real channels.

    Args:
        denoiser: ``D`` on real channels, called ``D(x)``; default
            ``DnCNN(in_channels, in_channels, depth=7)``.
        sensitivity_model: optional network ``(y, physics) -> coil maps``.
        num_cascades: number of cascades ``T``.
        mode: ``"varnet"`` or ``"e2e-varnet"``.
        in_channels: real channels of the image for the default denoiser (2 = complex).
        shared_weights: one denoiser for all cascades (DeepInverse's choice) or ``T`` copies
            (fastMRI's); a list of ``T`` modules is used as given.

    Example:
        >>> model = VarNet(num_cascades=4, mode="e2e-varnet",  # doctest: +SKIP
        ...                sensitivity_model=SensitivityModel())
        >>> x_hat = model(y, physics)  # physics: unroll.physics.MultiCoilMRI  # doctest: +SKIP

    References:
        K. Hammernik et al., "Learning a variational network for reconstruction of accelerated
        MRI data", MRM 79(6), 2018. A. Sriram et al., "End-to-end variational networks for
        accelerated MRI reconstruction", MICCAI 2020.
    """

    def __init__(
        self,
        denoiser: nn.Module | list[nn.Module] | None = None,
        sensitivity_model: nn.Module | None = None,
        num_cascades: int = 12,
        mode: str = "varnet",
        in_channels: int = 2,
        shared_weights: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int("num_cascades", _API, num_cascades)
        check_positive_int("in_channels", _API, in_channels)
        if not isinstance(mode, str) or mode.lower() not in ("varnet", "e2e-varnet"):
            raise ValueError(f"{_API}: mode must be 'varnet' or 'e2e-varnet', got {mode!r}.")
        if sensitivity_model is not None and not isinstance(sensitivity_model, nn.Module):
            raise TypeError(f"{_API}: sensitivity_model must be an nn.Module or None.")
        if denoiser is None:
            denoiser = DnCNN(in_channels, in_channels, depth=7)
        self.mode = mode.lower()
        self.num_cascades = num_cascades
        self.denoisers = make_blocks(_API, denoiser, num_cascades, shared_weights)
        self.sensitivity_model = sensitivity_model
        self.dc_weight = nn.Parameter(torch.ones(num_cascades))

    def forward(self, y: torch.Tensor, physics: PhysicsLike) -> torch.Tensor:
        """Reconstruct the image from k-space measurements ``y``."""
        if self.sensitivity_model is not None:
            if not hasattr(physics, "coil_maps"):
                raise ValueError(
                    f"{_API}: a sensitivity_model needs multi-coil physics with `coil_maps`; "
                    f"pass sensitivity_model=None for single-coil MRI."
                )
            physics = replace_leaves(physics, coil_maps=self.sensitivity_model(y, physics))
        if self.mode == "varnet":
            return self._image_cascades(y, physics)
        return self._kspace_cascades(y, physics)

    def _denoise(self, t: int, x: torch.Tensor) -> torch.Tensor:
        x_c, layout = to_channels(x)
        return from_channels(self.denoisers[t](x_c), layout)

    def _image_cascades(self, y: torch.Tensor, physics: PhysicsLike) -> torch.Tensor:
        x = physics.A_adjoint(y)
        for t in range(self.num_cascades):
            dc = physics.A_adjoint(physics.A(x) - y)
            x = self._denoise(t, x) - self.dc_weight[t] * dc  # = x - η dc - (x - D(x))
        return x

    def _kspace_cascades(self, y: torch.Tensor, physics: PhysicsLike) -> torch.Tensor:
        mask = _require_leaf(physics, "mask")
        full = replace_leaves(physics, mask=torch.ones_like(mask))
        m = broadcast_mask(mask, y)
        k = y
        for t in range(self.num_cascades):
            x = full.A_adjoint(k)
            reg = full.A(x - self._denoise(t, x))
            k = k - self.dc_weight[t] * (m * (k - y)) - reg
        return full.A_adjoint(k)


class SensitivityModel(nn.Module):
    r"""Coil-sensitivity estimator of E2E-VarNet: ``(y, physics) -> S`` (complex ``(B, N, H, W)``).

    The auto-calibration region (the contiguous sampled band around the k-space centre, found
    from ``physics.mask`` along each axis through the centre, or ``num_low_freqs`` central
    columns) is kept, each coil is transformed to the image domain with the centred
    orthonormal inverse FFT, refined by a CNN (on the two real channels of each coil) and
    normalised by the root-sum-of-squares over coils:

    .. math:: \tilde S_c = \mathrm{CNN}\big(F^{-1}(M_{ACS} ⊙ y_c)\big),\qquad
              S_c = \tilde S_c \Big/ \sqrt{\textstyle\sum_{c'} |\tilde S_{c'}|^2 + ε}.

    Args:
        cnn: network on ``(B·N, 2, H, W)`` real tensors; default
            ``DnCNN(2, 2, depth=5, nf=16)`` (residual, so it starts near the plain low-resolution
            estimate).
        num_low_freqs: width of the central band of columns; ``None`` finds it from the mask.
        eps: added under the square root of the normalisation.

    References:
        A. Sriram et al., "End-to-end variational networks for accelerated MRI
        reconstruction", MICCAI 2020.
    """

    def __init__(
        self, cnn: nn.Module | None = None, num_low_freqs: int | None = None, eps: float = 1e-12
    ) -> None:
        super().__init__()
        if num_low_freqs is not None:
            check_positive_int("num_low_freqs", "unroll.models.SensitivityModel", num_low_freqs)
        self.cnn = DnCNN(2, 2, depth=5, nf=16) if cnn is None else cnn
        self.num_low_freqs = num_low_freqs
        self.eps = eps

    def forward(self, y: torch.Tensor, physics: PhysicsLike) -> torch.Tensor:
        """Estimated coil maps, complex of shape ``(B, N, H, W)``."""
        k = _complex_multicoil(y)
        acs = self._acs_mask(physics, k)
        coil_images = ifft2c(k * acs)
        b, n, h, w = coil_images.shape
        t = torch.stack((coil_images.real, coil_images.imag), dim=2).reshape(b * n, 2, h, w)
        t = self.cnn(t).reshape(b, n, 2, h, w)
        s = torch.complex(t[:, :, 0], t[:, :, 1])
        rss = (s.real.square() + s.imag.square()).sum(1, keepdim=True)
        return s / torch.sqrt(rss + self.eps)

    def _acs_mask(self, physics: PhysicsLike, k: torch.Tensor) -> torch.Tensor:
        h, w = k.shape[-2:]
        if self.num_low_freqs is not None:
            cols = torch.arange(w, device=k.device)
            lo = w // 2 - self.num_low_freqs // 2
            band = (cols >= lo) & (cols < lo + self.num_low_freqs)
            return band.to(k.real.dtype).expand(h, w)
        mask = _require_leaf(physics, "mask").to(k.real.dtype)
        mask = broadcast_mask(mask, k)
        rows = _central_run(mask[..., :, w // 2 : w // 2 + 1].transpose(-1, -2))  # (.., 1, H)
        cols = _central_run(mask[..., h // 2 : h // 2 + 1, :])  # (.., 1, W)
        return rows.transpose(-1, -2) * cols


def _central_run(line: torch.Tensor) -> torch.Tensor:
    """1 on the contiguous run of non-zeros through the centre of the last axis, else 0."""
    n = line.shape[-1]
    c = n // 2
    s = (line != 0).to(line.dtype)
    right = torch.cumprod(s[..., c:], dim=-1)
    left = torch.cumprod(s[..., : c + 1].flip(-1), dim=-1).flip(-1)[..., :c]
    return torch.cat((left, right), dim=-1)


# --------------------------------------------------------------------------- MRI helpers
def broadcast_mask(mask: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Reshape a sampling mask ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)`` to broadcast
    against k-space ``k`` of shape ``(B, ..., H, W)`` (coil and real/imag axes in between)."""
    if mask.dim() <= 2:
        return mask
    if mask.numel() != mask.shape[0] * mask.shape[-2] * mask.shape[-1]:
        raise ValueError(
            f"{_API}: cannot broadcast a mask of shape {tuple(mask.shape)} to k-space of shape "
            f"{tuple(k.shape)}; use a mask of shape (H, W), (B, H, W) or (B, 1, H, W)."
        )
    return mask.reshape(mask.shape[0], *([1] * (k.dim() - 3)), *mask.shape[-2:])


def replace_leaves(physics: PhysicsLike, **new: torch.Tensor) -> PhysicsLike:
    """A copy of the physics pytree with the leaves held as attributes ``new`` replaced.

    The physics object is not modified. Each attribute must be exactly one leaf of the
    pytree (``unroll.tree.register``), e.g. ``mask`` or ``coil_maps``.
    """
    leaves, spec = tree.flatten(physics)
    leaves = list(leaves)
    for name, value in new.items():
        target = _require_leaf(physics, name)
        hits = [i for i, leaf in enumerate(leaves) if leaf is target]
        if len(hits) != 1:
            raise TypeError(
                f"{_API}: physics.{name} is not a leaf of the physics pytree; register the "
                f"physics class with unroll.tree.register so that `{name}` is a child."
            )
        leaves[hits[0]] = value
    return tree.unflatten(spec, leaves)


def _require_leaf(physics: PhysicsLike, name: str) -> torch.Tensor:
    value = getattr(physics, name, None)
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{_API}: the physics has no tensor attribute `{name}` (MRI needed).")
    return value


def _complex_multicoil(y: torch.Tensor) -> torch.Tensor:
    """Multi-coil k-space as complex ``(B, N, H, W)`` (from complex or real ``(B, 2, N, H, W)``)."""
    if y.is_complex() and y.dim() == 4:
        return y
    if not y.is_complex() and y.dim() == 5 and y.shape[1] == 2:
        return torch.complex(y[:, 0], y[:, 1])
    raise ValueError(
        f"unroll.models.SensitivityModel: expected multi-coil k-space, complex (B, N, H, W) or "
        f"real (B, 2, N, H, W); got {'complex' if y.is_complex() else 'real'} "
        f"{tuple(y.shape)}."
    )
