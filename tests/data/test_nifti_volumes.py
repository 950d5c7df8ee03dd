"""NIfTI: closest-canonical orientation, explicit 4-D handling (volume_index) and the header size guard."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from datafiles import gradient

from medpfl_app.data import DataConfig, build_transforms
from medpfl_app.data.transforms import load_pixels
from medpfl_app.errors import MedPFLError


def _never_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("voxels were read before the size check")


def _save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def test_four_d_is_refused_without_volume_index(tmp_path: Path) -> None:
    """A 4-D image (X, Y, Z, T) needs volume_index; the error names the file, its shape and the setting."""
    path = _save(tmp_path / "fmri.nii.gz", gradient((10, 10, 4, 3)))
    with pytest.raises(MedPFLError) as caught:
        build_transforms(DataConfig(image_size=8), train=False, site="site-2")({"image": str(path), "label": 0})
    assert caught.value.problem == f"NIfTI image {path} is 4-D (10, 10, 4, 3): 3 volumes, and no volume is chosen"
    assert "volume_index" in caught.value.fix and "0..2" in caught.value.fix and caught.value.site == "site-2"


def test_volume_index_picks_that_volume(tmp_path: Path) -> None:
    """volume_index=k loads volume k (then the usual slice policy applies); out of range is refused."""
    volumes = gradient((10, 10, 4, 3), seed=1)
    path = _save(tmp_path / "dwi.nii", volumes)
    for index in range(3):
        np.testing.assert_array_equal(load_pixels(path, DataConfig(volume_index=index))[0], volumes[..., index])
    item = build_transforms(DataConfig(image_size=10, volume_index=2, slice_index=1), train=False)(
        {"image": str(path), "label": 0}
    )
    expected = volumes[:, :, 1, 2]
    np.testing.assert_allclose(item["image"][0].numpy(), (expected - expected.min()) / np.ptp(expected), atol=1e-5)
    with pytest.raises(MedPFLError, match="has 3 volumes; volume_index 3 is outside it"):
        load_pixels(path, DataConfig(volume_index=3))


def test_trailing_singleton_fourth_axis_and_five_d(tmp_path: Path) -> None:
    """(X, Y, Z, 1) is a 3-D volume without any setting; five dimensions are refused."""
    volume = gradient((10, 10, 4), seed=2)
    np.testing.assert_array_equal(load_pixels(_save(tmp_path / "t1.nii", volume[..., None]), DataConfig())[0], volume)
    with pytest.raises(MedPFLError, match="has 5 dimensions"):
        load_pixels(_save(tmp_path / "vec.nii", gradient((10, 10, 4, 1, 3))), DataConfig(volume_index=0))


def test_flipped_and_permuted_affines_load_the_canonical_pixels(tmp_path: Path) -> None:
    """A volume stored flipped (LAS) or with permuted axes loads the same pixels as its canonical (RAS) twin."""
    canonical = gradient((10, 12, 6), seed=3)
    reference = load_pixels(_save(tmp_path / "ras.nii.gz", canonical), DataConfig())
    np.testing.assert_array_equal(reference[0], canonical)
    flipped_affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    flipped_affine[0, 3] = 9.0  # voxel 0 of the flipped file is the canonical voxel 9 along x
    flipped = _save(tmp_path / "las.nii.gz", canonical[::-1].copy(), flipped_affine)
    np.testing.assert_array_equal(load_pixels(flipped, DataConfig()), reference)
    permuted_affine = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    permuted = _save(tmp_path / "perm.nii.gz", canonical.transpose(1, 0, 2).copy(), permuted_affine)
    np.testing.assert_array_equal(load_pixels(permuted, DataConfig()), reference)


def test_flipped_two_d_image_is_reoriented_too(tmp_path: Path) -> None:
    """A 2-D image whose affine flips x loads like the canonical one, still 2-D."""
    image = gradient((12, 10), seed=4)
    affine = np.diag([-1.0, 1.0, 1.0, 1.0])
    loaded = load_pixels(_save(tmp_path / "f2.nii", image[::-1].copy(), affine), DataConfig())
    assert loaded.shape == (1, 12, 10)
    np.testing.assert_array_equal(loaded[0], image)


def test_header_shape_is_checked_before_reading_voxels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A volume over max_megapixels is refused from its header (the error gives shape, count and limit)."""
    path = _save(tmp_path / "big.nii.gz", np.zeros((200, 100, 60), dtype=np.uint8))
    with monkeypatch.context() as patch, pytest.raises(MedPFLError) as caught:
        patch.setattr(nib.Nifti1Image, "get_fdata", _never_called)
        load_pixels(path, DataConfig(max_megapixels=1))
    assert caught.value.problem == (
        f"NIfTI image {path} has 200×100×60 = 1,200,000 voxels, over the limit of 1,000,000 (max_megapixels, a "
        "decompression-bomb guard)"
    )
    assert "max_megapixels" in caught.value.fix
    assert load_pixels(path, DataConfig(max_megapixels=2)).shape == (1, 200, 100, 60)
