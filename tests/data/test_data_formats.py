"""Loading every supported format through the MONAI transforms, with pixel checks against what was written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import gradient, write_dicom, write_nifti, write_png

from medpfl_app.data import DataConfig, build_transforms

SIZE = 12  # written images are 12×10; the transforms resize to 12×12 (or keep 12×10 data when checking pixels)


def _load(path: Path, **settings: object) -> dict:
    config = DataConfig(**{"image_size": SIZE, **settings})
    return build_transforms(config, train=True)({"image": str(path), "label": 1, "index": 4})


def _scaled(array: np.ndarray) -> np.ndarray:
    return (array - array.min()) / (array.max() - array.min())


def test_nifti_2d_round_trip_keeps_pixels(tmp_path: Path) -> None:
    """A 2-D NIfTI written with nibabel comes back pixel-exact (after min–max scaling), rows first."""
    array = gradient((SIZE, SIZE))
    item = _load(write_nifti(tmp_path / "a.nii.gz", array))
    assert item["image"].shape == (1, SIZE, SIZE)
    assert item["image"].dtype == torch.float32 and type(item["image"]) is torch.Tensor
    np.testing.assert_allclose(item["image"][0].numpy(), _scaled(array), atol=1e-5)
    assert item["label"].dtype == torch.long and item["label"].shape == () and int(item["label"]) == 1
    assert int(item["index"]) == 4


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_nifti_3d_volume_is_sliced_along_axis(tmp_path: Path, axis: int) -> None:
    """A 3-D .nii volume gives the requested slice: the middle one by default, or slice_index."""
    volume = gradient((SIZE, SIZE, SIZE), seed=1)
    path = write_nifti(tmp_path / "v.nii", volume)
    middle = _load(path, slice_axis=axis)["image"][0].numpy()
    np.testing.assert_allclose(middle, _scaled(np.take(volume, SIZE // 2, axis=axis)), atol=1e-5)
    third = _load(path, slice_axis=axis, slice_index=3)["image"][0].numpy()
    np.testing.assert_allclose(third, _scaled(np.take(volume, 3, axis=axis)), atol=1e-5)


def test_single_slice_volume_is_treated_as_2d(tmp_path: Path) -> None:
    """A 2-D image stored as an X×Y×1 volume is not sliced across its thin axis."""
    array = gradient((SIZE, SIZE))
    item = _load(write_nifti(tmp_path / "s.nii.gz", array[:, :, None]), slice_axis=0)
    np.testing.assert_allclose(item["image"][0].numpy(), _scaled(array), atol=1e-5)


def test_png_gray_and_rgb_and_jpeg(tmp_path: Path) -> None:
    """PNG/JPEG load rows-first in [0, 1]; RGB becomes gray by BT.601 luma, gray becomes RGB by repetition."""
    array = gradient((SIZE, SIZE), seed=2)
    gray = _load(write_png(tmp_path / "g.png", array))["image"]
    expected = _scaled(np.clip(array * 255, 0, 255).astype(np.uint8).astype(np.float32))
    np.testing.assert_allclose(gray[0].numpy(), expected, atol=1e-5)
    rgb_path = write_png(tmp_path / "c.png", array, rgb=True)
    as_gray = _load(rgb_path)["image"]
    assert as_gray.shape == (1, SIZE, SIZE)
    as_rgb = _load(rgb_path, in_channels=3)["image"]
    assert as_rgb.shape == (3, SIZE, SIZE)
    assert not torch.allclose(as_rgb[0], as_rgb[2])  # real colour channels, not repeats
    repeated = _load(tmp_path / "g.png", in_channels=3)["image"]
    assert torch.equal(repeated[0], repeated[1]) and torch.equal(repeated[1], repeated[2])


def test_jpeg_is_close_to_its_source(tmp_path: Path) -> None:
    """A (lossy) JPEG of a smooth RGB image loads as gray close to the BT.601 luma of its source pixels."""
    from PIL import Image

    rows, cols = np.meshgrid(np.linspace(0, 1, SIZE), np.linspace(0, 1, SIZE), indexing="ij")
    pixels = np.stack([rows, cols, (rows + cols) / 2], axis=-1)
    pixels = np.round(pixels * 200 + 20).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "j.jpeg", quality=100, subsampling=0)
    item = _load(tmp_path / "j.jpeg")["image"]
    assert item.shape == (1, SIZE, SIZE)
    assert float(item.min()) >= 0.0 and float(item.max()) <= 1.0
    expected = _scaled(pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32))
    assert float(np.abs(item[0].numpy() - expected).max()) < 0.03


def test_dicom_written_with_pydicom(tmp_path: Path) -> None:
    """A single-frame DICOM comes back with the written pixel values, rows first."""
    array = gradient((SIZE, SIZE), seed=3)
    item = _load(write_dicom(tmp_path / "d.dcm", array))
    expected = _scaled(np.round(array * 4000).astype(np.float32))
    np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-5)


def test_resize_to_image_size_stays_in_unit_range(tmp_path: Path) -> None:
    """Non-square images of another size are resized to image_size × image_size and stay in [0, 1]."""
    item = _load(write_nifti(tmp_path / "r.nii.gz", gradient((20, 30)) * 900 - 50), image_size=16)
    image = item["image"]
    assert image.shape == (1, 16, 16)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float(image.max()) > 0.9 and float(image.min()) < 0.1
