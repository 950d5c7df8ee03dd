"""Compressed DICOM transfer syntaxes: decoded by the installed pylibjpeg plugins, or refused with the full message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_variants import LOSSLESS_MR, bundled
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medpfl_app.data import DataConfig, build_transforms
from medpfl_app.data.transforms import load_pixels
from medpfl_app.errors import MedPFLError

CONFIG = DataConfig()


@pytest.mark.parametrize("name", LOSSLESS_MR)
def test_lossless_syntaxes_equal_the_uncompressed_original(name: str) -> None:
    """JPEG-LS lossless, RLE and JPEG 2000 lossless copies of MR_small load exactly as the uncompressed file."""
    compressed = pydicom.dcmread(bundled(name), stop_before_pixels=True)
    assert compressed.file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(load_pixels(bundled(name), CONFIG), load_pixels(bundled("MR_small.dcm"), CONFIG))


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("JPGExtended.dcm", "1.2.840.10008.1.2.4.51"),  # 12-bit JPEG extended
        ("JPEG2000.dcm", "1.2.840.10008.1.2.4.91"),
        ("JPEGLSNearLossless_16.dcm", "1.2.840.10008.1.2.4.81"),
        ("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.70"),  # JPEG lossless, RGB
        ("SC_rgb_jpeg_dcmtk.dcm", "1.2.840.10008.1.2.4.50"),  # JPEG baseline, YBR_FULL
    ],
)
def test_compressed_files_match_pydicom_decoding(name: str, syntax: str) -> None:
    """Each syntax decodes to pydicom's own reference (modality + VOI for gray, RGB for colour), rows first."""
    path = bundled(name)
    dataset = pydicom.dcmread(path)
    assert dataset.file_meta.TransferSyntaxUID == syntax
    loaded = load_pixels(path, CONFIG)
    pixels = dataset.pixel_array
    if dataset.SamplesPerPixel == 3:
        expected = np.moveaxis(pixels.astype(np.float32), -1, 0)
    else:
        expected = apply_voi_lut(apply_modality_lut(pixels, dataset), dataset)[None]
    assert loaded.shape == expected.shape == (loaded.shape[0], dataset.Rows, dataset.Columns)
    np.testing.assert_allclose(loaded, expected, atol=1e-3)


def test_jpeg_baseline_ybr_multiframe_frame_by_frame() -> None:
    """examples_ybr_color.dcm (JPEG baseline, YBR_FULL_422, 30 frames): frame k equals pydicom's RGB frame k."""
    path = bundled("examples_ybr_color.dcm")
    dataset = pydicom.dcmread(path)
    for frame in (0, 17, 29):
        expected = np.moveaxis(dataset.pixel_array[frame].astype(np.float32), -1, 0)
        np.testing.assert_allclose(load_pixels(path, CONFIG, frame=frame), expected)


def test_rle_rgb_two_frames() -> None:
    """SC_rgb_rle_2frame.dcm: both RLE frames decode to pydicom's RGB frames, and they differ."""
    path = bundled("SC_rgb_rle_2frame.dcm")
    reference = pydicom.dcmread(path).pixel_array
    frames = [load_pixels(path, CONFIG, frame=index) for index in (0, 1)]
    for index, frame in enumerate(frames):
        np.testing.assert_array_equal(frame, np.moveaxis(reference[index], -1, 0).astype(np.float32))
    assert not np.array_equal(frames[0], frames[1])


def test_undecodable_jpeg_is_one_error_with_syntax_package_and_full_message() -> None:
    """JPEG-lossy.dcm fails in every installed plugin: one MedPFLError naming file, syntax, UID, every plugin's
    complaint (not cut at the first line) and python-gdcm as the decoder to install."""
    path = bundled("JPEG-lossy.dcm")
    with pytest.raises(MedPFLError) as caught:
        build_transforms(DataConfig(image_size=8), train=False, site="site-9")({"image": str(path), "label": 0})
    error = caught.value
    assert error.site == "site-9" and str(path) in error.problem
    assert "JPEG Extended (Process 2 and 4) (1.2.840.10008.1.2.4.51)" in error.problem
    assert "pylibjpeg:" in error.problem and "pillow:" in error.problem  # both plugin lines, nothing truncated
    assert "python-gdcm" in error.fix and "gdcmconv --raw" in error.fix
    assert error.__cause__ is None and error.__suppress_context__


def test_missing_dependency_message_is_kept_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """pydicom's "missing dependencies:" text lists the packages on later lines; they reach the user intact."""
    from pydicom.pixels.decoders.base import Decoder

    message = "Unable to decode as the plugins are all missing dependencies:\n    gdcm - requires gdcm>=3.0.10"

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError(message)

    monkeypatch.setattr(Decoder, "as_array", fail)
    with pytest.raises(MedPFLError) as caught:
        load_pixels(bundled("MR_small_RLE.dcm"), CONFIG)
    assert message in caught.value.problem and "RLE Lossless (1.2.840.10008.1.2.5)" in caught.value.problem
    assert "pylibjpeg-rle" in caught.value.fix


def test_truncated_native_file_is_a_corrupt_file_error(tmp_path: Path) -> None:
    """An uncompressed file cut short is "cannot read image file", with pydicom's reason and the corrupt-file fix."""
    data = bundled("MR_small.dcm").read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) - 4000])
    with pytest.raises(MedPFLError) as caught:
        load_pixels(path, CONFIG)
    assert caught.value.problem.startswith(f"cannot read image file {path}")
    assert "replace or remove the corrupt file" in caught.value.fix
