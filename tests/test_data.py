"""unroll.data: bundled images, deterministic crops, the train/test split, MRI helpers."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.color
import skimage.data
import torch

from unroll import data


def test_load_image_matches_skimage():
    img = data.load_image("astronaut", channels=3, dtype=torch.float64)
    ref = skimage.data.astronaut().astype(np.float64) / 255
    np.testing.assert_allclose(img.permute(1, 2, 0).numpy(), ref, rtol=0, atol=1e-15)
    gray = data.load_image("coffee", channels=1, dtype=torch.float64)
    np.testing.assert_allclose(
        gray[0].numpy(), skimage.color.rgb2gray(skimage.data.coffee()), atol=1e-12
    )
    cam = data.load_image("camera", channels=3)
    assert cam.shape == (3, 512, 512) and cam.dtype == torch.get_default_dtype()
    torch.testing.assert_close(cam[0], cam[2])


def test_load_image_scale_and_errors():
    img = data.load_image("chelsea", scale=0.5)
    assert img.shape == (3, 150, 226) and 0 <= img.min() and img.max() <= 1
    with pytest.raises(ValueError, match="unknown image"):
        data.load_image("lena")
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        data.load_image("camera", channels=2)
    with pytest.raises(ValueError, match="scale must be in"):
        data.load_image("camera", scale=2.0)


def test_random_crops_are_exact_subimages_and_deterministic():
    h, w = 13, 17
    im = torch.arange(2 * h * w, dtype=torch.float64).reshape(2, h, w)
    crops = data.random_crops([im], 20, 5, seed=3)
    assert crops.shape == (20, 2, 5, 5)
    for c in crops:
        top, left = divmod(int(c[0, 0, 0]), w)
        torch.testing.assert_close(c, im[:, top : top + 5, left : left + 5], rtol=0, atol=0)
    torch.testing.assert_close(data.random_crops([im], 20, 5, seed=3), crops, rtol=0, atol=0)
    assert not torch.equal(data.random_crops([im], 20, 5, seed=4), crops)
    flipped = data.random_crops([im], 50, 5, seed=3, flip=True)
    assert flipped.shape == (50, 2, 5, 5)
    with pytest.raises(ValueError, match="exceeds the smallest image side"):
        data.random_crops([im], 2, 14)


def test_train_test_split_disjoint_and_in_range():
    for channels in (1, 3):
        train, test = data.image_names("train", channels), data.image_names("test", channels)
        assert train and test and not set(train) & set(test)
    x_train, x_test = data.train_test_crops(8, 4, crop_size=24, seed=0)
    assert x_train.shape == (8, 3, 24, 24) and x_test.shape == (4, 3, 24, 24)
    for t in (x_train, x_test):
        assert t.min() >= 0 and t.max() <= 1 and t.dtype == torch.get_default_dtype()
    again, _ = data.train_test_crops(8, 4, crop_size=24, seed=0)
    torch.testing.assert_close(again, x_train, rtol=0, atol=0)
    g = data.natural_image_crops("test", 3, 16, channels=1, dtype=torch.float64)
    assert g.shape == (3, 1, 16, 16) and g.dtype == torch.float64


def test_mri_helpers():
    ph = data.shepp_logan(32)
    assert ph.shape == (1, 1, 32, 32) and ph.min() >= 0 and ph.max() == 1
    maps = data.coil_maps(4, 16, dtype=torch.complex128)
    torch.testing.assert_close(maps.abs().square().sum(0), torch.ones(16, 16, dtype=torch.float64))
    mask = data.cartesian_mask(32, acceleration=4, center_fraction=0.125, seed=1)
    cols = mask[0]
    assert int(cols.sum()) == 8 and (mask == cols).all()
    assert cols[14:18].eq(1).all()  # the 4 central columns
