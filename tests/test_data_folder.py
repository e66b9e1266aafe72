"""unroll.data.ImageFolder: your own images (any size, grey or colour, PNG / JPEG / TIFF)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from unroll import data


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """Colour PNG, grey PNG, 16-bit grey TIFF, colour JPEG (nested), a corrupt and a tiny file."""
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(_rgb(50, 70, 0)).save(tmp_path / "a.png")
    Image.fromarray(_rgb(60, 40, 1)[..., 0]).save(tmp_path / "b.PNG")
    tifffile.imwrite(
        tmp_path / "sub" / "c.tif",
        np.random.default_rng(2).integers(0, 65536, (45, 45), dtype=np.uint16),
    )
    Image.fromarray(_rgb(48, 48, 3)).save(tmp_path / "sub" / "deeper" / "d.jpg", quality=95)
    (tmp_path / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.fromarray(_rgb(10, 10, 4)).save(tmp_path / "tiny.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_reads_every_format_recursively_and_counts_what_it_skips(folder):
    with pytest.warns(UserWarning) as record:
        ds = data.ImageFolder(folder, crop_size=32, channels=3)
    assert len(record) == 1  # one line for all skipped files
    message = str(record[0].message)
    assert "\n" not in message
    assert "skipped 2 of 6" in message
    assert "1 unreadable: broken.png" in message and "1 too small: tiny.png" in message
    assert [p.relative_to(folder).as_posix() for p in ds.files] == [
        "a.png",
        "b.PNG",
        "sub/c.tif",
        "sub/deeper/d.jpg",
    ]
    assert len(ds) == 4 and ds.name(2) == "sub/c.tif"
    assert isinstance(ds, torch.utils.data.Dataset)


def test_pixels_match_the_files(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = data.ImageFolder(folder, crop_size=None, channels=3)
        grey = data.ImageFolder(folder, crop_size=None, channels=1)
    a = whole[0].double()
    np.testing.assert_allclose(a.permute(1, 2, 0).numpy(), _rgb(50, 70, 0) / 255.0, atol=1e-6)
    b = grey[1].double()  # an 8-bit grey file stays as it is
    np.testing.assert_allclose(b[0].numpy(), _rgb(60, 40, 1)[..., 0] / 255.0, atol=1e-6)
    assert torch.equal(whole[1][0], whole[1][2])  # grey to colour: repeated
    c16 = np.random.default_rng(2).integers(0, 65536, (45, 45), dtype=np.uint16)
    np.testing.assert_allclose(grey[2][0].double().numpy(), c16 / 65535.0, atol=1e-6)
    luma = (_rgb(50, 70, 0) / 255.0) @ np.array([0.2125, 0.7154, 0.0721])  # rgb2gray weights
    np.testing.assert_allclose(grey[0][0].double().numpy(), luma, atol=1e-6)


def test_random_crops_are_subimages_and_reproducible(folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = data.ImageFolder(folder, crop_size=16, num_crops=25, channels=3, seed=5)
        again = data.ImageFolder(folder, crop_size=16, num_crops=25, channels=3, seed=5)
        whole = data.ImageFolder(folder, crop_size=None, channels=3)
    crops = ds.stack()
    assert crops.shape == (25, 3, 16, 16) and crops.min() >= 0 and crops.max() <= 1
    assert torch.equal(crops, again.stack())
    images = [whole[i] for i in range(len(whole))]
    for crop in crops:  # each crop is found verbatim in one of the images
        found = any(
            (im.unfold(1, 16, 1).unfold(2, 16, 1) == crop[:, None, None])
            .all(0)
            .all(-1)
            .all(-1)
            .any()
            for im in images
        )
        assert found
    assert torch.equal(ds[7], ds[7]) and not torch.equal(ds[7], ds[8])
    centre = data.ImageFolder(folder / "a.png", crop_size=16)
    assert torch.equal(centre[0], whole[0][:, 17:33, 27:43])


def test_empty_and_unusable_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"no images in .* \(looked recursively for \.png"):
        data.ImageFolder(tmp_path, crop_size=8)
    (tmp_path / "x.png").write_bytes(b"garbage")
    with pytest.raises(
        ValueError,
        match="none of the 1 image files .* is usable "
        r"\(1 unreadable: x.png\)",
    ):
        data.ImageFolder(tmp_path, crop_size=8)
    with pytest.raises(ValueError, match="is not a folder"):
        data.ImageFolder(tmp_path / "missing", crop_size=8)
    with pytest.raises(ValueError, match="crop_size must be a positive int"):
        data.ImageFolder(tmp_path, crop_size=0)


def test_split_files_holds_out_whole_files():
    files = [f"img{i}.png" for i in range(10)]
    train, held = data.split_files(files, 0.2, seed=3)
    assert len(held) == 2 and len(train) == 8 and not set(train) & set(held)
    assert sorted(train + held) == sorted(files)
    assert data.split_files(files, 0.2, seed=3) == (train, held)
    assert data.split_files(files[:2], 0.9)[0]  # at least one training file is kept
    with pytest.raises(ValueError, match="--val-data"):
        data.split_files(files[:1], 0.2)
