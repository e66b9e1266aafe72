"""Your own images as a dataset: a folder of PNG / JPEG / TIFF files, random or centre crops.

:class:`ImageFolder` reads every image under a folder (recursively), of any size, grey or
colour, 8- or 16-bit or floating point, and serves square crops as a
:class:`torch.utils.data.Dataset` of ``(C, s, s)`` tensors in ``[0, 1]``. Files that cannot be
read, or that are smaller than the crop, are skipped and counted in one warning line; a folder
without a usable image is an error that says what was found. Everything is deterministic given
``seed``: crop ``i`` depends only on ``(seed, i)``, so a dataset can be re-created anywhere.

Example:
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from unroll.data import ImageFolder
    >>> root = Path(tempfile.mkdtemp())
    >>> Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(root / "a.png")
    >>> ds = ImageFolder(root, crop_size=32, num_crops=5, channels=1)
    >>> len(ds), tuple(ds[0].shape)
    (5, (1, 32, 32))
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
"""The file suffixes :class:`ImageFolder` reads (any case)."""

_LUMA = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray weights (ITU-R BT.709)
_API = "unroll.data.ImageFolder"


def image_files(root: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Path]:
    """Every file under ``root`` (recursively) whose suffix is one of ``suffixes``, sorted.

    Args:
        root: a folder, or a single image file.
        suffixes: lower-case suffixes with the dot.

    Returns:
        The paths, sorted by their path relative to ``root``.

    Raises:
        ValueError: ``root`` does not exist.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise ValueError(f"{_API}: {root} is not a folder; pass the folder holding your images.")
    found = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def read_image(path: str | os.PathLike, channels: int = 3) -> torch.Tensor:
    """One image file as a float ``(channels, H, W)`` tensor in ``[0, 1]``.

    Integer images are divided by their type's maximum (255 for 8 bits, 65535 for 16 bits);
    floating-point TIFFs are clipped to ``[0, 1]``. Colour becomes grey with the
    ``skimage.color.rgb2gray`` weights, grey becomes colour by repetition; an alpha channel is
    dropped.

    Args:
        path: a PNG, JPEG or TIFF file.
        channels: 1 (grey) or 3 (RGB).

    Returns:
        The image, in the default floating dtype.

    Raises:
        ValueError: the file cannot be decoded (one line naming the file and the reason).
    """
    import numpy as np

    path = Path(path)
    try:
        array = _decode(path)
    except Exception as err:  # noqa: BLE001 — every unreadable file becomes one reason
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{_API}: cannot read {path} ({reason}).") from err
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] > 4:
        array = np.moveaxis(array, 0, -1)  # a channels-first TIFF
    if array.ndim not in (2, 3) or min(array.shape[:2]) < 1:
        raise ValueError(
            f"{_API}: cannot read {path} (array of shape {array.shape} is not an image)."
        )
    img = torch.as_tensor(_to_unit(array))
    img = img.unsqueeze(0) if img.dim() == 2 else img[..., :3].permute(2, 0, 1)
    return _convert_channels(img, channels).to(torch.get_default_dtype()).contiguous()


def _decode(path: Path) -> Any:
    import numpy as np

    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        return np.asarray(im)


def _to_unit(array: Any) -> Any:
    import numpy as np

    if array.dtype == np.bool_:
        return array.astype(np.float64)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float64) / float(np.iinfo(array.dtype).max)
    return np.clip(np.nan_to_num(array.astype(np.float64)), 0.0, 1.0)


def _convert_channels(img: torch.Tensor, channels: int) -> torch.Tensor:
    if channels not in (1, 3):
        raise ValueError(f"{_API}: channels must be 1 or 3, got {channels!r}.")
    if img.shape[0] == 2:  # grey + alpha
        img = img[:1]
    if channels == 1 and img.shape[0] == 3:
        w = torch.tensor(_LUMA, dtype=img.dtype).reshape(3, 1, 1)
        return (img * w).sum(0, keepdim=True)
    if channels == 3 and img.shape[0] == 1:
        return img.expand(3, -1, -1)
    return img


def split_files(
    files: Sequence[Path], val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Path], list[Path]]:
    """Split files into training and held-out sets, by file (crops never straddle the sets).

    Args:
        files: at least two files.
        val_fraction: the held-out share in ``(0, 1)``; at least one file is held out and at
            least one kept for training.
        seed: seed of the shuffle.

    Returns:
        ``(train_files, val_files)``, each sorted.

    Example:
        >>> from pathlib import Path
        >>> train, held_out = split_files([Path(f"{i}.png") for i in range(5)], 0.2)
        >>> len(train), [p.name for p in held_out]
        (4, ['4.png'])
    """
    if not 0 < val_fraction < 1:
        raise ValueError(
            f"unroll.data.split_files: val_fraction must be in (0, 1), got {val_fraction}."
        )
    if len(files) < 2:
        raise ValueError(
            f"unroll.data.split_files: {len(files)} image(s) cannot be split into "
            "training and held-out images; add images, or pass held-out images "
            "separately (--val-data DIR)."
        )
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(files) - 1, max(1, round(val_fraction * len(files))))
    val = sorted(files[i] for i in order[:n_val])
    train = sorted(files[i] for i in order[n_val:])
    return train, val


def centre_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size × size`` square of a ``(C, H, W)`` image."""
    top, left = (img.shape[-2] - size) // 2, (img.shape[-1] - size) // 2
    return img[..., top : top + size, left : left + size]


def crop_at(
    images: Sequence[torch.Tensor], index: int, size: int, seed: int, flip: bool
) -> torch.Tensor:
    """Crop ``index`` of a random-crop dataset: image, position and flips drawn from a generator
    seeded with ``(seed, index)`` only.

    Args:
        images: ``(C, H, W)`` images, each at least ``size`` on both sides.
        index: the crop's index.
        size: the crop's side.
        seed: the dataset's seed.
        flip: draw random horizontal / vertical flips.

    Returns:
        A ``(C, size, size)`` view or copy of one image.
    """
    gen = torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63 - 1))
    im = images[int(torch.randint(len(images), (1,), generator=gen))]
    top = int(torch.randint(im.shape[-2] - size + 1, (1,), generator=gen))
    left = int(torch.randint(im.shape[-1] - size + 1, (1,), generator=gen))
    crop = im[..., top : top + size, left : left + size]
    if flip:
        dims = [d for d, f in zip((-2, -1), torch.randint(2, (2,), generator=gen).tolist()) if f]
        crop = crop.flip(dims) if dims else crop
    return crop


class CropDataset(Dataset):
    """Square crops of in-memory ``(C, H, W)`` images: random crops, or one centre crop each.

    The shared core of :class:`ImageFolder` and :class:`unroll.data.FastMRISlices`.

    Args:
        images: the images, each at least ``crop_size`` on both sides.
        names: one name per image (a file, a file and slice), for tables.
        crop_size: side of the crops; ``None`` serves whole images (no ``num_crops``).
        num_crops: number of random crops; ``None`` for one centre crop per image, in order.
        seed: seed of the random crops (item ``i`` depends only on ``seed`` and ``i``).
        flip: random horizontal / vertical flips of random crops.
        skipped: ``(file, reason)`` of the files left out, for :meth:`skip_message`.
        where: the folder the images came from, for messages.
    """

    api = "unroll.data.CropDataset"

    def __init__(
        self,
        images: Sequence[torch.Tensor],
        names: Sequence[str],
        *,
        crop_size: int | None,
        num_crops: int | None = None,
        seed: int = 0,
        flip: bool = False,
        skipped: Sequence[tuple[Path, str]] = (),
        where: str | os.PathLike = "",
    ) -> None:
        _check_sizes(self.api, crop_size, num_crops)
        if not images or len(images) != len(names):
            raise ValueError(f"{self.api}: pass at least one image and one name per image.")
        self.images = list(images)
        self.names = tuple(names)
        self.skipped: tuple[tuple[Path, str], ...] = tuple(skipped)
        self.crop_size, self.num_crops, self.seed, self.flip = crop_size, num_crops, seed, flip
        self.where = str(where)

    def __len__(self) -> int:
        return len(self.images) if self.num_crops is None else self.num_crops

    def __getitem__(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise IndexError(f"{self.api}: index {index} out of range for {len(self)} items.")
        index %= len(self)
        if self.num_crops is None:
            img = self.images[index]
            return img.clone() if self.crop_size is None else centre_crop(img, self.crop_size)
        size = cast(int, self.crop_size)  # not None here: a cropped (training) set
        return crop_at(self.images, index, size, self.seed, self.flip).clone()

    def name(self, index: int) -> str:
        """Where item ``index`` comes from: its image's name, or ``"crop i"`` for random crops."""
        return f"crop {index}" if self.num_crops is not None else self.names[index]

    def stack(self) -> torch.Tensor:
        """All items as one ``(N, C, s, s)`` tensor (needs a ``crop_size``)."""
        if self.crop_size is None:
            raise ValueError(
                f"{self.api}: whole images of different sizes cannot be stacked; pass a crop_size."
            )
        return torch.stack([self[i] for i in range(len(self))])

    def skip_message(self) -> str:
        """One line counting the skipped files and why (empty when none was skipped)."""
        if not self.skipped:
            return ""
        files = {name.split(" [", 1)[0] for name in self.names}
        total = len(self.skipped) + len(files)
        return (
            f"{self.api}: skipped {len(self.skipped)} of {total} files in {self.where} "
            f"({skip_summary(self.skipped)})."
        )


class ImageFolder(CropDataset):
    """Square crops of the images in a folder (recursive), as a ``torch.utils.data.Dataset``.

    With ``num_crops`` the dataset holds that many random crops (item ``i`` is always the same
    crop for a given ``seed``); without it, one centre crop per image (or, with
    ``crop_size=None``, every whole image), in file order — for evaluation.

    Args:
        root: a folder searched recursively for :data:`IMAGE_SUFFIXES` files (any size, grey
            or colour), or one image file.
        crop_size: side of the square crops; ``None`` serves whole images (then items may
            differ in size).
        num_crops: number of random crops; ``None`` for one centre crop per image.
        channels: 1 (grey) or 3 (colour); images are converted.
        seed: seed of the crops.
        flip: random horizontal / vertical flips of random crops (augmentation).
        files: use these files instead of searching ``root`` (e.g. from :func:`split_files`).
        warn: warn (one line) about skipped files.

    Attributes:
        files: the files whose images are used, in order.
        skipped: ``(file, reason)`` of each file left out (unreadable, or smaller than the
            crop).

    Raises:
        ValueError: no usable image (an empty folder, only unreadable or too small files),
            ``crop_size`` or ``num_crops`` below 1, ``channels`` not 1 or 3.
    """

    api = _API

    def __init__(
        self,
        root: str | os.PathLike,
        crop_size: int | None = 64,
        num_crops: int | None = None,
        *,
        channels: int = 3,
        seed: int = 0,
        flip: bool = False,
        files: Sequence[str | os.PathLike] | None = None,
        warn: bool = True,
    ) -> None:
        _check_sizes(_API, crop_size, num_crops)
        if channels not in (1, 3):
            raise ValueError(f"{_API}: channels must be 1 or 3, got {channels!r}.")
        root = Path(root)
        candidates = image_files(root) if files is None else [Path(f) for f in files]
        if not candidates:
            raise ValueError(
                f"{_API}: no images in {root} (looked recursively for "
                f"{', '.join(IMAGE_SUFFIXES)} files); pass a folder of images."
            )
        images, used, skipped = _read_all(candidates, channels, crop_size)
        if not images:
            raise ValueError(
                f"{_API}: none of the {len(candidates)} image files in {root} "
                f"is usable ({skip_summary(skipped)}); pass a folder of readable "
                "images at least as large as the crop (--crop-size)."
            )
        super().__init__(
            images,
            [_relative(p, root) for p in used],
            crop_size=crop_size,
            num_crops=num_crops,
            seed=seed,
            flip=flip,
            skipped=skipped,
            where=root,
        )
        self.root = root
        self.files: tuple[Path, ...] = tuple(used)
        self.channels = channels
        if skipped and warn:
            warnings.warn(self.skip_message(), UserWarning, stacklevel=2)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix() if root.is_dir() else path.name
    except ValueError:
        return path.name


def _check_sizes(api: str, crop_size: int | None, num_crops: int | None) -> None:
    for name, value in (("crop_size", crop_size), ("num_crops", num_crops)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{api}: {name} must be a positive int or None, got {value!r}.")
    if num_crops is not None and crop_size is None:
        raise ValueError(f"{api}: random crops need a crop_size; pass crop_size=64, say.")


def _read_all(files: Sequence[Path], channels: int, crop_size: int | None):
    images, used, skipped = [], [], []
    for path in files:
        try:
            img = read_image(path, channels)
        except ValueError as err:
            skipped.append((path, "unreadable: " + str(err).split(f"{path} ", 1)[-1]))
            continue
        if crop_size is not None and min(img.shape[-2:]) < crop_size:
            skipped.append(
                (
                    path,
                    f"smaller than the {crop_size}×{crop_size} crop "
                    f"({img.shape[-1]}×{img.shape[-2]})",
                )
            )
            continue
        images.append(img)
        used.append(path)
    return images, used, skipped


def skip_summary(skipped: Sequence[tuple[Path, str]]) -> str:
    """``"2 unreadable (a.png, b.jpg), 1 too small (c.png)"`` for ``(file, reason)`` pairs."""
    groups: dict[str, list[str]] = {}
    for path, reason in skipped:
        kind = "unreadable" if reason.startswith("unreadable") else "too small"
        groups.setdefault(kind, []).append(path.name)
    parts = []
    for kind, names in groups.items():
        shown = ", ".join(names[:3]) + (f", … {len(names) - 3} more" if len(names) > 3 else "")
        parts.append(f"{len(names)} {kind}: {shown}")
    return "; ".join(parts)
