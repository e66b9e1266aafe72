"""Download-free datasets: bundled natural-image crops, your own images, MRI data and phantoms.

Natural images come from the files bundled inside scikit-image (``skimage.data``: no pooch
download, no network). Images are split once, by image, into a training and a held-out test
set, so crops of the test set never overlap training crops. Everything is deterministic
given ``seed`` and returned as float tensors in ``[0, 1]`` of shape ``(B, C, H, W)``.

Your own data, as ``torch.utils.data.Dataset`` s of crops:

* :class:`ImageFolder`: a folder (recursive) of PNG / JPEG / TIFF images of any size, grey or
  colour; unreadable files are skipped and counted; :func:`split_files` holds files out.
* :class:`FastMRISlices`: fastMRI-format HDF5 files (``kspace``, and ``reconstruction_rss`` /
  ``reconstruction_esc`` when present; needs ``h5py``, the ``mri`` extra).
* :func:`mri_phantoms`: random head-like phantoms for MRI without data.

Example:
    >>> from unroll import data
    >>> x_train, x_test = data.train_test_crops(16, 4, crop_size=32, seed=0)
    >>> x_train.shape, x_test.shape
    (torch.Size([16, 3, 32, 32]), torch.Size([4, 3, 32, 32]))
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from unroll._image_folder import (
    IMAGE_SUFFIXES,
    CropDataset,
    ImageFolder,
    image_files,
    read_image,
    split_files,
)
from unroll._mri_data import FastMRISlices, h5_files, mri_phantoms, read_fastmri

__all__ = [
    "COLOR_IMAGES",
    "GRAY_IMAGES",
    "IMAGE_SUFFIXES",
    "CropDataset",
    "FastMRISlices",
    "ImageFolder",
    "cartesian_mask",
    "coil_maps",
    "h5_files",
    "image_files",
    "image_names",
    "load_image",
    "mri_phantoms",
    "natural_image_crops",
    "random_crops",
    "read_fastmri",
    "read_image",
    "shepp_logan",
    "split_files",
    "train_test_crops",
]

COLOR_IMAGES = {"train": ("astronaut", "coffee", "rocket", "motorcycle"), "test": ("chelsea",)}
"""Colour photographs shipped with scikit-image, split by image."""

GRAY_IMAGES = {
    "train": COLOR_IMAGES["train"] + ("camera", "moon", "brick", "gravel"),
    "test": COLOR_IMAGES["test"] + ("coins", "grass"),
}
"""Grayscale split: the colour photographs (converted) plus scikit-image's grayscale ones."""

_LUMA = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray weights (ITU-R BT.709)


def _skimage_data():
    try:
        import skimage.data as skdata
    except ImportError as err:  # pragma: no cover - exercised only without the demo extra
        raise ImportError(
            "unroll.data needs scikit-image (bundled images): pip install 'unroll[demo]'."
        ) from err
    return skdata


@functools.lru_cache(maxsize=16)
def _load_uint8(name: str):
    skdata = _skimage_data()
    if name == "motorcycle":
        return skdata.stereo_motorcycle()[0]
    loader = getattr(skdata, name, None) if name in _all_names() else None
    if loader is None:
        raise ValueError(
            f"unroll.data.load_image: unknown image {name!r}; choose one of {_all_names()}."
        )
    return loader()


def _all_names() -> tuple[str, ...]:
    return GRAY_IMAGES["train"] + GRAY_IMAGES["test"]


def image_names(split: str = "train", channels: int = 3) -> tuple[str, ...]:
    """Names of the images of ``split`` (``"train"``, ``"test"`` or ``"all"``)."""
    table = _table(channels)
    if split == "all":
        return table["train"] + table["test"]
    if split not in table:
        raise ValueError(
            f"unroll.data.image_names: split must be 'train', 'test' or 'all', got {split!r}."
        )
    return table[split]


def _table(channels: int) -> dict[str, tuple[str, ...]]:
    if channels == 3:
        return COLOR_IMAGES
    if channels == 1:
        return GRAY_IMAGES
    raise ValueError(f"unroll.data: channels must be 1 or 3, got {channels!r}.")


def load_image(
    name: str, channels: int = 3, scale: float = 1.0, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """One bundled image as a ``(C, H, W)`` tensor in ``[0, 1]``.

    Args:
        name: one of :func:`image_names` ``("all", 1)``.
        channels: 3 (grayscale images are repeated) or 1 (colour images converted with the
            ``skimage.color.rgb2gray`` weights).
        scale: resize factor in ``(0, 1]`` (antialiased bilinear), e.g. 0.5 for coarser
            textures in small crops.
        dtype: floating dtype (default ``torch.get_default_dtype()``).
    """
    _table(channels)
    if not 0 < scale <= 1:
        raise ValueError(f"unroll.data.load_image: scale must be in (0, 1], got {scale}.")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    img = torch.as_tensor(_load_uint8(name)).to(torch.float64) / 255.0
    img = img.unsqueeze(0) if img.dim() == 2 else img[..., :3].permute(2, 0, 1)
    if channels == 1 and img.shape[0] == 3:
        w = torch.tensor(_LUMA, dtype=img.dtype).reshape(3, 1, 1)
        img = (img * w).sum(0, keepdim=True)
    elif channels == 3 and img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    if scale < 1:
        size = (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[2] * scale)))
        img = F.interpolate(
            img[None], size=size, mode="bilinear", antialias=True, align_corners=False
        )[0]
    return img.clamp(0, 1).to(dtype).contiguous()


def random_crops(
    images: Sequence[torch.Tensor],
    num_crops: int,
    crop_size: int,
    *,
    seed: int = 0,
    flip: bool = False,
) -> torch.Tensor:
    """``num_crops`` random square crops, images drawn uniformly, positions uniformly.

    Args:
        images: ``(C, H, W)`` tensors with the same ``C``.
        num_crops: number of crops ``B``.
        crop_size: side of each crop; at most the smallest image side.
        seed: seed of the private ``torch.Generator`` (the global RNG is untouched).
        flip: also apply random horizontal/vertical flips.

    Returns:
        ``(B, C, crop_size, crop_size)`` tensor.
    """
    api = "unroll.data.random_crops"
    if not images:
        raise ValueError(f"{api}: pass at least one image.")
    if num_crops < 1 or crop_size < 1:
        raise ValueError(f"{api}: num_crops and crop_size must be positive.")
    small = min(min(im.shape[-2:]) for im in images)
    if crop_size > small:
        raise ValueError(f"{api}: crop_size {crop_size} exceeds the smallest image side {small}.")
    if len({im.shape[0] for im in images}) != 1:
        raise ValueError(f"{api}: all images must have the same number of channels.")
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(len(images), (num_crops,), generator=gen).tolist()
    crops = []
    for i in which:
        im = images[i]
        top = int(torch.randint(im.shape[1] - crop_size + 1, (1,), generator=gen))
        left = int(torch.randint(im.shape[2] - crop_size + 1, (1,), generator=gen))
        crop = im[:, top : top + crop_size, left : left + crop_size]
        if flip:
            hv = torch.randint(2, (2,), generator=gen).tolist()
            dims = [d for d, f in zip((1, 2), hv) if f]
            crop = crop.flip(dims) if dims else crop
        crops.append(crop)
    return torch.stack(crops)


def natural_image_crops(
    split: str = "train",
    num_crops: int = 64,
    crop_size: int = 32,
    *,
    channels: int = 3,
    scale: float = 0.5,
    seed: int = 0,
    flip: bool = False,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Random crops of the bundled natural images of one split, ``(B, C, s, s)`` in ``[0, 1]``.

    Args:
        split: ``"train"`` or ``"test"`` (disjoint sets of images) or ``"all"``.
        num_crops, crop_size, seed, flip: see :func:`random_crops`.
        channels, scale, dtype: see :func:`load_image`.
    """
    images = [load_image(n, channels, scale, dtype) for n in image_names(split, channels)]
    return random_crops(images, num_crops, crop_size, seed=seed, flip=flip)


def train_test_crops(
    num_train: int,
    num_test: int,
    crop_size: int = 32,
    *,
    channels: int = 3,
    scale: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, test)`` crops from disjoint images (training crops with random flips)."""
    train = natural_image_crops(
        "train",
        num_train,
        crop_size,
        channels=channels,
        scale=scale,
        seed=seed,
        flip=True,
        dtype=dtype,
    )
    test = natural_image_crops(
        "test", num_test, crop_size, channels=channels, scale=scale, seed=seed + 1, dtype=dtype
    )
    return train, test


# --------------------------------------------------------------------------- synthetic MRI
def shepp_logan(size: int = 64, dtype: torch.dtype | None = None) -> torch.Tensor:
    """The Shepp-Logan phantom (bundled with scikit-image), ``(1, 1, size, size)`` in [0, 1]."""
    dtype = torch.get_default_dtype() if dtype is None else dtype
    img = torch.as_tensor(_skimage_data().shepp_logan_phantom(), dtype=torch.float64)
    img = F.interpolate(
        img[None, None], size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    img = img.clamp(min=0)
    return (img / img.max()).to(dtype)


def coil_maps(
    num_coils: int,
    size: int,
    *,
    width: float = 0.6,
    normalize: bool = True,
    dtype: torch.dtype = torch.complex64,
) -> torch.Tensor:
    r"""Smooth synthetic coil sensitivities, complex ``(num_coils, size, size)``.

    Coil ``c`` sits at angle ``θ_c = 2πc/N`` on a circle of radius 1.2 (image in
    ``[-1, 1]^2``): ``S_c(r) = exp(−|r − p_c|²/(2 w²)) · exp(i (θ_c + π r·p_c / 2))``; with
    ``normalize`` the maps are scaled so that ``Σ_c |S_c|² = 1`` at every pixel.
    """
    if num_coils < 1 or size < 1:
        raise ValueError("unroll.data.coil_maps: num_coils and size must be positive.")
    real = torch.float64
    t = torch.linspace(-1, 1, size, dtype=real)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    maps = []
    for c in range(num_coils):
        th = 2 * math.pi * c / num_coils
        px, py = 1.2 * math.cos(th), 1.2 * math.sin(th)
        mag = torch.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * width**2))
        phase = th + 0.5 * math.pi * (xx * px + yy * py)
        maps.append(torch.polar(mag, phase))
    s = torch.stack(maps)
    if normalize:
        s = s / s.abs().square().sum(0, keepdim=True).sqrt()
    return s.to(dtype)


def cartesian_mask(
    size: int,
    acceleration: int = 4,
    center_fraction: float = 0.08,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Random Cartesian undersampling mask ``(size, size)``: fully sampled central columns
    (``center_fraction``) plus random columns, about ``size / acceleration`` in total.

    The k-space centre is at index ``size // 2`` (centred FFT convention).
    """
    if acceleration < 1 or not 0 <= center_fraction <= 1:
        raise ValueError(
            "unroll.data.cartesian_mask: need acceleration >= 1 and 0 <= center_fraction <= 1."
        )
    dtype = torch.get_default_dtype() if dtype is None else dtype
    gen = torch.Generator().manual_seed(seed)
    num_low = max(1, round(size * center_fraction))
    cols = torch.zeros(size, dtype=torch.bool)
    lo = size // 2 - num_low // 2
    cols[lo : lo + num_low] = True
    target = max(num_low, round(size / acceleration))
    rest = (~cols).nonzero().flatten()
    pick = rest[torch.randperm(rest.numel(), generator=gen)[: target - num_low]]
    cols[pick] = True
    return cols.to(dtype).expand(size, size).contiguous()
