"""DICOM pixel policy: modality LUT, VOI window, MONOCHROME1, colour spaces, orientation, checked against pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from dicom_variants import bundled, colour, enhanced_multiframe, gray, legacy, ramp
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, convert_color_space

from medpfl_app.data import DataConfig, build_transforms
from medpfl_app.data.transforms import LUMA_BT601, load_pixels
from medpfl_app.errors import MedPFLError

NO_WINDOW = DataConfig(dicom_voi="none")
FILE_WINDOW = DataConfig()


def _rgb_first(rgb: np.ndarray) -> np.ndarray:
    return np.moveaxis(rgb.astype(np.float32), -1, 0)


def test_monochrome2_rescale_gives_modality_values_rows_first(tmp_path: Path) -> None:
    """Rescale slope/intercept are applied (CT-style HU), and the array keeps [rows, columns] of a 12×10 image."""
    stored = ramp((12, 10))
    path = gray(tmp_path / "ct.dcm", stored, slope=0.5, intercept=-1024)
    loaded = load_pixels(path, NO_WINDOW)
    assert loaded.shape == (1, 12, 10) and loaded.dtype == np.float32
    np.testing.assert_allclose(loaded[0], stored * 0.5 - 1024, atol=1e-3)
    reference = apply_modality_lut(pydicom.dcmread(path).pixel_array, pydicom.dcmread(path))
    np.testing.assert_allclose(loaded[0], reference, atol=1e-3)


def test_monochrome1_is_negated_so_dense_is_bright(tmp_path: Path) -> None:
    """MONOCHROME1 (low = bright) is negated: the stored minimum becomes the brightest pixel after scaling."""
    stored = ramp((12, 12), seed=1)
    path = gray(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", slope=2.0, intercept=10)
    loaded = load_pixels(path, NO_WINDOW)
    np.testing.assert_allclose(loaded[0], -(stored * 2.0 + 10), atol=1e-3)
    config = DataConfig(image_size=12, dicom_voi="none")
    scaled = build_transforms(config, train=False)({"image": str(path), "label": 0})
    image = scaled["image"][0]
    assert image.flatten().argmax() == int(np.argmin(stored)) and image.flatten().argmin() == int(np.argmax(stored))
    monochrome2 = gray(tmp_path / "m2.dcm", stored, photometric="MONOCHROME2")
    twin = build_transforms(DataConfig(image_size=12), train=False)({"image": str(monochrome2), "label": 0})
    np.testing.assert_allclose(image.numpy(), 1.0 - twin["image"][0].numpy(), atol=1e-5)


def test_voi_window_policy_file_versus_none(tmp_path: Path) -> None:
    """dicom_voi="file" applies the file's window like pydicom's apply_voi_lut; "none" keeps the full range."""
    stored = ramp((16, 16), seed=2)
    path = gray(tmp_path / "w.dcm", stored, slope=1.0, intercept=-1000, window=(400.0, 800.0))
    dataset = pydicom.dcmread(path)
    modality = apply_modality_lut(dataset.pixel_array, dataset)
    windowed = load_pixels(path, FILE_WINDOW)[0]
    np.testing.assert_allclose(windowed, apply_voi_lut(modality, dataset), atol=1e-3)
    assert not np.allclose(windowed, modality)  # the window really changed the values (clipped both ends)
    np.testing.assert_allclose(load_pixels(path, NO_WINDOW)[0], modality, atol=1e-3)
    no_window = gray(tmp_path / "nw.dcm", stored)  # a file without a window keeps its full range either way
    np.testing.assert_allclose(load_pixels(no_window, FILE_WINDOW)[0], stored, atol=1e-3)


def test_bundled_mr_and_ct_match_pydicom_reference() -> None:
    """MR_small (with a window) and CT_small (rescale, no window) load as pydicom's modality + VOI conversion."""
    for name in ("MR_small.dcm", "CT_small.dcm"):
        dataset = pydicom.dcmread(bundled(name))
        reference = apply_voi_lut(apply_modality_lut(dataset.pixel_array, dataset), dataset)
        np.testing.assert_allclose(load_pixels(bundled(name), FILE_WINDOW)[0], reference, atol=1e-3)


@pytest.mark.parametrize("photometric", ["RGB", "YBR_FULL"])
def test_colour_files_load_as_rgb_and_gray_by_bt601(tmp_path: Path, photometric: str) -> None:
    """RGB and YBR_FULL files come back as the RGB pixels; a 1-channel model gets their BT.601 luma."""
    red, green = ramp((12, 10), seed=3, high=255), ramp((12, 10), seed=4, high=255)[::-1]
    rgb = np.stack([red, green, np.full((12, 10), 40)], axis=-1)
    path = colour(tmp_path / f"{photometric}.dcm", rgb, photometric=photometric)
    loaded = load_pixels(path, FILE_WINDOW)
    assert loaded.shape == (3, 12, 10)
    np.testing.assert_allclose(loaded, _rgb_first(rgb), atol=2.0 if photometric == "YBR_FULL" else 0)
    np.testing.assert_allclose(loaded, _rgb_first(pydicom.dcmread(path).pixel_array), atol=1e-4)
    as_gray = build_transforms(DataConfig(image_size=12), train=False)({"image": str(path), "label": 0})["image"]
    luma = np.tensordot(np.asarray(LUMA_BT601, dtype=np.float32), loaded, axes=1)
    expected = (luma - luma.min()) / (luma.max() - luma.min())
    resized = torch.nn.functional.interpolate(torch.from_numpy(expected)[None, None], size=(12, 12), mode="bilinear")
    assert as_gray.shape == (1, 12, 12)
    assert float((as_gray[0] - resized[0, 0]).abs().mean()) < 0.02  # only the 10→12 column resize differs
    as_rgb = build_transforms(DataConfig(image_size=12, in_channels=3), train=False)({"image": str(path), "label": 0})
    assert as_rgb["image"].shape == (3, 12, 12) and not torch.allclose(as_rgb["image"][0], as_rgb["image"][1])


def test_ybr_full_422_bundled_matches_pydicom() -> None:
    """The bundled uncompressed YBR_FULL_422 file is upsampled and converted to RGB as pydicom does."""
    path = bundled("SC_ybr_full_422_uncompressed.dcm")
    dataset = pydicom.dcmread(path)
    raw = pydicom.pixels.pixel_array(dataset, raw=True)
    expected = _rgb_first(convert_color_space(raw, "YBR_FULL_422", "RGB"))
    np.testing.assert_allclose(load_pixels(path, FILE_WINDOW), expected)
    np.testing.assert_allclose(load_pixels(path, FILE_WINDOW), _rgb_first(dataset.pixel_array))


def test_palette_colour_goes_through_its_lut_not_indices() -> None:
    """PALETTE COLOR loads as the palette's RGB colours (apply_color_lut), never the stored indices."""
    path = bundled("examples_palette.dcm")
    dataset = pydicom.dcmread(path)
    loaded = load_pixels(path, FILE_WINDOW)
    assert loaded.shape == (3, dataset.Rows, dataset.Columns)
    np.testing.assert_allclose(loaded, _rgb_first(apply_color_lut(dataset.pixel_array, dataset)))
    assert float(loaded.max()) > 255  # 16-bit palette entries, not 8-bit indices
    assert not np.allclose(loaded[0], dataset.pixel_array)


def test_enhanced_multiframe_rescale_from_functional_groups(tmp_path: Path) -> None:
    """Enhanced files keep rescale in functional groups: each frame gets its own slope and the shared intercept."""
    frames = np.stack([ramp((10, 10), seed=s) for s in range(3)])
    path = enhanced_multiframe(tmp_path / "enh.dcm", frames, slopes=[1.0, 2.0, 0.5], intercept=-1024)
    for index, slope in enumerate([1.0, 2.0, 0.5]):
        loaded = load_pixels(path, NO_WINDOW, frame=index)
        np.testing.assert_allclose(loaded[0], frames[index] * slope - 1024, atol=1e-3)


def test_legacy_file_without_preamble_loads_and_garbage_is_refused(tmp_path: Path) -> None:
    """An image written without preamble and file meta (older exports) loads; a non-DICOM .dcm is one clear error."""
    stored = ramp((12, 10), seed=5)
    path = legacy(tmp_path / "old.dcm", stored)
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(path)  # pydicom alone refuses it
    np.testing.assert_array_equal(load_pixels(path, NO_WINDOW)[0], stored)
    (tmp_path / "text.dcm").write_text("patient list, not an image\n" * 20)
    with pytest.raises(MedPFLError) as caught:
        load_pixels(tmp_path / "text.dcm", NO_WINDOW)
    assert caught.value.problem.startswith(f"cannot read image file {tmp_path / 'text.dcm'}: InvalidDicomError")


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm"])
def test_dicom_without_an_image_is_named(name: str) -> None:
    """Reports, plans and waveforms are refused as "holds no image" with their SOP class."""
    with pytest.raises(MedPFLError, match=r"holds no image \(.+\)"):
        load_pixels(bundled(name), NO_WINDOW)
