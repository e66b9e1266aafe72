"""MRI data: fastMRI-format HDF5 files (written here, small) and the synthetic phantoms."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from unroll import data

if os.environ.get("CI"):
    import h5py  # the mri extra is part of the CI install: never skip there
else:
    h5py = pytest.importorskip("h5py")


def _ifft2c(k: np.ndarray) -> np.ndarray:
    """Centred orthonormal inverse FFT over the last two axes (numpy, the reference)."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=axes), norm="ortho"), axes=axes)


def _kspace(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)


def write_fastmri(
    path, kspace: np.ndarray, recon: np.ndarray | None = None, name: str = "reconstruction_rss"
) -> None:
    """A file in fastMRI's layout: ``kspace`` and, optionally, a reconstruction."""
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        if recon is not None:
            f.create_dataset(name, data=recon)
        f.attrs["acquisition"] = "CORPD_FBK"


def test_single_coil_without_reconstruction_is_the_magnitude(tmp_path):
    k = _kspace((3, 24, 20), 0)
    write_fastmri(tmp_path / "single.h5", k)
    slices = data.read_fastmri(tmp_path / "single.h5")
    ref = np.abs(_ifft2c(k.astype(np.complex128)))
    assert len(slices) == 3
    for s, r in zip(slices, ref):
        assert s.shape == (1, 24, 20) and s.dtype == torch.get_default_dtype()
        np.testing.assert_allclose(s[0].double().numpy(), r / r.max(), atol=1e-6)


def test_multi_coil_is_the_root_sum_of_squares_cropped_to_320(tmp_path):
    k = _kspace((1, 4, 330, 324), 1)
    write_fastmri(tmp_path / "multi.h5", k)
    (s,) = data.read_fastmri(tmp_path / "multi.h5")
    rss = np.sqrt((np.abs(_ifft2c(k.astype(np.complex128))) ** 2).sum(1))[0]
    ref = rss[5:325, 2:322]
    assert s.shape == (1, 320, 320)
    np.testing.assert_allclose(s[0].double().numpy(), ref / ref.max(), atol=1e-6)


@pytest.mark.parametrize("name", ["reconstruction_rss", "reconstruction_esc"])
def test_a_stored_reconstruction_is_used_as_the_target(tmp_path, name):
    recon = np.random.default_rng(2).random((2, 16, 16)).astype(np.float32) * 1e-4
    write_fastmri(tmp_path / "r.h5", _kspace((2, 4, 32, 24), 3), recon, name)
    slices = data.read_fastmri(tmp_path / "r.h5")
    for s, r in zip(slices, recon):
        np.testing.assert_allclose(s[0].double().numpy(), r / r.max(), rtol=1e-6)


def test_fastmri_slices_dataset_skips_broken_files(tmp_path):
    write_fastmri(tmp_path / "a.h5", _kspace((2, 40, 40), 4))
    write_fastmri(tmp_path / "b.h5", _kspace((3, 36, 40), 5))
    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with h5py.File(tmp_path / "nokspace.h5", "w") as f:
        f.create_dataset("image", data=np.zeros((2, 8, 8)))
    ds = data.FastMRISlices(tmp_path, crop_size=32, num_crops=10, seed=1)
    assert len(ds) == 10 and ds.stack().shape == (10, 1, 32, 32)
    assert len(ds.images) == 5 and "a.h5 [slice 1]" in ds.names
    assert "skipped 2 of 4 files" in ds.skip_message()
    assert "2 unreadable" in ds.skip_message()
    centre = data.FastMRISlices(tmp_path / "b.h5", crop_size=32)
    assert len(centre) == 3 and centre.name(2) == "b.h5 [slice 2]"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .h5 files"):
        data.FastMRISlices(tmp_path / "empty", crop_size=8)


def test_phantoms_are_deterministic_images_in_the_unit_range():
    a = data.mri_phantoms(4, 48, seed=0)
    assert a.shape == (4, 1, 48, 48) and a.min() >= 0 and a.amax(dim=(1, 2, 3)).eq(1).all()
    assert torch.equal(a, data.mri_phantoms(4, 48, seed=0))
    assert torch.equal(a[2:], data.mri_phantoms(4, 48, seed=0)[2:])
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, data.mri_phantoms(4, 48, seed=1))
    # not piecewise constant: many distinct grey levels inside the head
    assert torch.unique((a[0] * 255).round()).numel() > 40
