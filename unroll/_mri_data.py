r"""MRI training images: fastMRI-format HDF5 files (``h5py``, the ``mri`` extra) or synthetic
phantoms.

The images are magnitude images in ``[0, 1]`` (one per slice), which the command line measures
again with its own MRI operator (a Cartesian mask, synthetic coil maps, Gaussian noise):
a retrospective simulation, the usual way to train on fully sampled data.

* :func:`read_fastmri`: the slices of one fastMRI file. A file holds ``kspace`` — single-coil
  ``(slices, H, W)`` or multi-coil ``(slices, coils, H, W)``, complex — and, when present,
  ``reconstruction_esc`` (single-coil) or ``reconstruction_rss`` (multi-coil) of shape
  ``(slices, h, w)``, which are used as they are. Without them each slice is
  :math:`\sqrt{\sum_c |\mathcal F^{-1} k_c|^2}` (the root-sum-of-squares of the coil images; the
  magnitude for one coil), cropped to the central ``320 × 320`` like fastMRI's reconstructions.
  Each slice is divided by its maximum.
* :class:`FastMRISlices`: the slices of every ``.h5`` file under a folder, as crops (a
  :class:`~unroll.data.CropDataset`).
* :func:`mri_phantoms`: random ellipse phantoms with smooth intensity variations (a family
  around the Shepp-Logan phantom), for training without data.

Example:
    >>> from unroll.data import mri_phantoms
    >>> mri_phantoms(2, 32, seed=0).shape
    torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from unroll._image_folder import CropDataset, skip_summary

RECONSTRUCTIONS = ("reconstruction_rss", "reconstruction_esc")
"""The reference reconstructions of fastMRI files, used as targets when present."""
FASTMRI_CROP = 320
"""fastMRI's reconstructions are the central 320 × 320 of the image."""
_API = "unroll.data.FastMRISlices"


def require_h5py(api: str):
    """The ``h5py`` module, or an ImportError saying how to install it (one line)."""
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            f"{api}: reading fastMRI HDF5 files needs h5py: pip install "
            "'unroll[mri]' (or pip install h5py)."
        ) from err
    return h5py


def h5_files(root: str | os.PathLike) -> list[Path]:
    """The ``.h5`` / ``.hdf5`` files under ``root`` (recursively), sorted; ``root`` may be a file.

    Raises:
        ValueError: ``root`` does not exist.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ValueError(f"{_API}: {root} is not a folder; pass the folder of fastMRI .h5 files.")
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".h5", ".hdf5")
    )


def read_fastmri(path: str | os.PathLike) -> list[torch.Tensor]:
    """The slices of one fastMRI-format file as ``(1, h, w)`` magnitude images in ``[0, 1]``.

    Args:
        path: an HDF5 file with a ``kspace`` dataset (and optionally a reconstruction).

    Returns:
        One image per slice with a non-zero maximum, in the default floating dtype.

    Raises:
        ValueError: the file cannot be read or has no usable ``kspace`` (one line).
        ImportError: h5py is not installed.
    """
    h5py = require_h5py("unroll.data.read_fastmri")
    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            f: Any = handle
            recon = next((f[k][()] for k in RECONSTRUCTIONS if k in f), None)
            kspace = f["kspace"][()] if recon is None and "kspace" in f else None
    except Exception as err:  # noqa: BLE001 — a broken file is one line
        if isinstance(err, MemoryError):
            raise
        raise ValueError(
            f"unroll.data.read_fastmri: cannot read {path} "
            f"({str(err).strip() or type(err).__name__})."
        ) from err
    if recon is not None:
        mag = torch.as_tensor(recon).to(torch.float64).abs()
    elif kspace is not None:
        mag = _rss_from_kspace(path, torch.as_tensor(kspace))
    else:
        raise ValueError(
            f"unroll.data.read_fastmri: {path} has no 'kspace' dataset (nor "
            f"{' / '.join(RECONSTRUCTIONS)}); is it a fastMRI file?"
        )
    if mag.dim() == 2:
        mag = mag[None]
    if mag.dim() != 3:
        raise ValueError(
            f"unroll.data.read_fastmri: {path}: expected (slices, H, W) images, "
            f"got shape {tuple(mag.shape)}."
        )
    peaks = mag.reshape(mag.shape[0], -1).amax(1)
    dtype = torch.get_default_dtype()
    return [(m / p)[None].to(dtype) for m, p in zip(mag, peaks) if p > 0 and torch.isfinite(p)]


def _rss_from_kspace(path: Path, kspace: torch.Tensor) -> torch.Tensor:
    from unroll.physics import ifft2c

    if not kspace.is_complex():
        raise ValueError(
            f"unroll.data.read_fastmri: {path}: kspace must be complex, got {kspace.dtype}."
        )
    if kspace.dim() == 2:
        kspace = kspace[None]
    if kspace.dim() not in (3, 4):
        raise ValueError(
            f"unroll.data.read_fastmri: {path}: kspace must be (slices, H, W) or "
            f"(slices, coils, H, W), got shape {tuple(kspace.shape)}."
        )
    coils = ifft2c(kspace.to(torch.complex128))
    mag = coils.abs() if coils.dim() == 3 else coils.abs().square().sum(1).sqrt()
    h, w = min(FASTMRI_CROP, mag.shape[-2]), min(FASTMRI_CROP, mag.shape[-1])
    top, left = (mag.shape[-2] - h) // 2, (mag.shape[-1] - w) // 2
    return mag[..., top : top + h, left : left + w]


class FastMRISlices(CropDataset):
    """Crops of the slices of fastMRI-format HDF5 files (see :func:`read_fastmri`).

    Args:
        root: a folder searched recursively for ``.h5`` files, or one file.
        crop_size: side of the square crops (``None``: whole slices).
        num_crops: number of random crops; ``None`` for one centre crop per slice.
        seed: seed of the crops.
        flip: random flips of random crops.
        files: use these files instead of searching ``root``.

    Raises:
        ValueError: no ``.h5`` file, or no usable slice; ImportError without h5py.
    """

    api = _API

    def __init__(
        self,
        root: str | os.PathLike,
        crop_size: int | None = 64,
        num_crops: int | None = None,
        *,
        seed: int = 0,
        flip: bool = False,
        files: Sequence[str | os.PathLike] | None = None,
    ) -> None:
        require_h5py(_API)
        root = Path(root)
        candidates = h5_files(root) if files is None else [Path(f) for f in files]
        if not candidates:
            raise ValueError(
                f"{_API}: no .h5 files in {root} (looked recursively); pass a "
                "folder of fastMRI-format files."
            )
        images, names, skipped = [], [], []
        for path in candidates:
            try:
                slices = read_fastmri(path)
            except ValueError as err:
                skipped.append((path, "unreadable: " + str(err).split(f"{path}", 1)[-1]))
                continue
            small = [s for s in slices if crop_size and min(s.shape[-2:]) < crop_size]
            if small or not slices:
                size = f"{slices[0].shape[-1]}×{slices[0].shape[-2]}" if slices else "no slice"
                skipped.append((path, f"smaller than the {crop_size}×{crop_size} crop ({size})"))
                continue
            images += slices
            names += [f"{path.name} [slice {i}]" for i in range(len(slices))]
        if not images:
            raise ValueError(
                f"{_API}: none of the {len(candidates)} files in {root} is usable "
                f"({skip_summary(skipped)}); pass fastMRI-format files with slices "
                "at least as large as the crop (--crop-size)."
            )
        super().__init__(
            images,
            names,
            crop_size=crop_size,
            num_crops=num_crops,
            seed=seed,
            flip=flip,
            skipped=skipped,
            where=root,
        )
        self.root = root
        self.files: tuple[Path, ...] = tuple(
            p for p in candidates if p not in {s[0] for s in skipped}
        )


# --------------------------------------------------------------------------- phantoms
# The Shepp-Logan ellipses (intensity, semi-axes a, b, centre x0, y0, angle in degrees),
# with the "modified" intensities of Toft (1996) for visible contrast.
_SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


def mri_phantoms(
    num: int, size: int = 64, *, seed: int = 0, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Random head-like phantoms ``(num, 1, size, size)`` in ``[0, 1]``.

    Each is the Shepp-Logan phantom with every ellipse moved, resized, turned and re-weighted
    at random, a few extra random ellipses, a smooth random bias field and a fine random
    texture inside the head, so that images are not piecewise constant (as MR images are not).
    Phantom ``i`` depends only on ``(seed, i)``.

    Args:
        num: number of phantoms.
        size: side in pixels.
        seed: seed of the family (use disjoint seeds for training and held-out sets).
        dtype: floating dtype (default ``torch.get_default_dtype()``).

    Returns:
        The phantoms.
    """
    if num < 1 or size < 8:
        raise ValueError(
            f"unroll.data.mri_phantoms: need num >= 1 and size >= 8, got {num} and {size}."
        )
    dtype = torch.get_default_dtype() if dtype is None else dtype
    t = torch.linspace(-1, 1, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(-t, t, indexing="ij")
    out = [_phantom(xx, yy, torch.Generator().manual_seed(seed * 7919 + i)) for i in range(num)]
    return torch.stack(out)[:, None].to(dtype)


def _phantom(xx: torch.Tensor, yy: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    def u(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=gen, dtype=torch.float64))

    img = torch.zeros_like(xx)
    head = torch.zeros_like(xx, dtype=torch.bool)
    # the skull and the brain move together (one scale, shift and turn), keeping their values
    sa, sb, dx, dy, dth = u(0.85, 1.05), u(0.85, 1.05), u(-0.05, 0.05), u(-0.05, 0.05), u(-10, 10)
    ellipses = [
        (v, a * sa, b * sb, x + dx, y + dy, th + dth) for v, a, b, x, y, th in _SHEPP_LOGAN[:2]
    ]
    ellipses += [
        (
            v * u(0.5, 1.5),
            a * sa * u(0.8, 1.2),
            b * sb * u(0.8, 1.2),
            (x + u(-0.05, 0.05)) * sa + dx,
            (y + u(-0.05, 0.05)) * sb + dy,
            th + u(-15, 15),
        )
        for v, a, b, x, y, th in _SHEPP_LOGAN[2:]
    ]
    for _ in range(int(torch.randint(2, 6, (), generator=gen))):
        ellipses.append(
            (
                u(-0.1, 0.2),
                u(0.03, 0.15),
                u(0.03, 0.15),
                u(-0.35, 0.35) * sa + dx,
                u(-0.5, 0.5) * sb + dy,
                u(0, 180),
            )
        )
    for k, (v, a, b, x0, y0, th) in enumerate(ellipses):
        c, s = math.cos(math.radians(th)), math.sin(math.radians(th))
        xr, yr = (xx - x0) * c + (yy - y0) * s, -(xx - x0) * s + (yy - y0) * c
        inside = (xr / a).square() + (yr / b).square() <= 1
        img = img + v * inside
        if k == 0:
            head = inside
    field = _smooth_noise(xx.shape, 4, gen)
    texture = _smooth_noise(xx.shape, xx.shape[0] // 4, gen)
    img = img.clamp(min=0) * (1 + 0.25 * field) + 0.04 * texture * head
    img = img.clamp(min=0) * head
    return img / img.max().clamp(min=1e-12)


def _smooth_noise(shape: tuple[int, ...], cells: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-mean random field varying over about ``shape / cells`` pixels, values ~[-1, 1]."""
    coarse = torch.randn(1, 1, max(2, cells), max(2, cells), generator=gen, dtype=torch.float64)
    field = F.interpolate(coarse, size=shape, mode="bicubic", align_corners=True)[0, 0]
    return field / field.abs().amax().clamp(min=1e-12)
