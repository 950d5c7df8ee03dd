"""DICOM variants for the data-layer tests: files written with pydicom in ``tmp_path``, and pydicom's bundled files.

Bundled test files are taken from the installed wheel's ``pydicom/data/test_files`` folder only (`bundled` asserts
the file is there): nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

BUNDLED = Path(pydicom.__file__).parent / "data" / "test_files"
LOSSLESS_MR = ("MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm")


def bundled(name: str) -> Path:
    """Path of one of pydicom's bundled test files; fails (never downloads) if the wheel lacks it."""
    path = BUNDLED / name
    assert path.is_file(), f"pydicom's bundled test file {name} is missing from {BUNDLED}"
    return path


def base_dataset(*, modality: str = "MR", series_uid: str | None = None) -> Dataset:
    """An empty secondary-capture dataset with file meta (explicit VR little endian), ready for pixels."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = modality
    dataset.SeriesInstanceUID = series_uid or generate_uid()
    return dataset


def save(dataset: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)
    return path


def gray(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    signed: bool = False,
) -> Path:
    """A gray DICOM (single frame for 2-D ``pixels``, multi-frame for ``[frames, rows, columns]``), 16-bit."""
    dataset = base_dataset()
    stored = pixels.astype(np.int16 if signed else np.uint16)
    dataset.set_pixel_data(stored, photometric_interpretation=photometric, bits_stored=16)
    if slope is not None or intercept is not None:
        dataset.RescaleSlope = slope if slope is not None else 1
        dataset.RescaleIntercept = intercept if intercept is not None else 0
        dataset.RescaleType = "US"
    if window is not None:
        dataset.WindowCenter, dataset.WindowWidth = window
    return save(dataset, path)


def colour(path: Path, rgb: np.ndarray, *, photometric: str = "RGB") -> Path:
    """An 8-bit colour DICOM of ``rgb`` (``[rows, columns, 3]`` or ``[frames, rows, columns, 3]``), stored as RGB or
    converted to ``YBR_FULL`` by pydicom before writing."""
    dataset = base_dataset(modality="OT")
    stored = rgb.astype(np.uint8)
    if photometric == "YBR_FULL":
        stored = pydicom.pixels.convert_color_space(stored, "RGB", "YBR_FULL")
    dataset.set_pixel_data(stored, photometric_interpretation=photometric, bits_stored=8)
    return save(dataset, path)


def enhanced_multiframe(path: Path, frames: np.ndarray, slopes: Sequence[float], intercept: float) -> Path:
    """A multi-frame gray DICOM whose rescale sits in functional groups: shared intercept, per-frame slopes."""
    dataset = base_dataset(modality="CT")
    dataset.set_pixel_data(frames.astype(np.uint16), photometric_interpretation="MONOCHROME2", bits_stored=16)
    shared = Dataset()
    shared_transform = Dataset()
    shared_transform.RescaleSlope, shared_transform.RescaleIntercept, shared_transform.RescaleType = 1, intercept, "HU"
    shared.PixelValueTransformationSequence = [shared_transform]
    dataset.SharedFunctionalGroupsSequence = [shared]
    per_frame = []
    for slope in slopes:
        group, transform = Dataset(), Dataset()
        transform.RescaleSlope = slope
        group.PixelValueTransformationSequence = [transform]
        per_frame.append(group)
    dataset.PerFrameFunctionalGroupsSequence = per_frame
    return save(dataset, path)


def series_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    series_uid: str,
    z: float | None,
    instance: int | None,
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
) -> Path:
    """One single-frame slice of a series at height ``z`` (or without position) with an Instance Number."""
    dataset = base_dataset(modality="CT", series_uid=series_uid)
    dataset.set_pixel_data(pixels.astype(np.uint16), photometric_interpretation="MONOCHROME2", bits_stored=16)
    if z is not None:
        dataset.ImagePositionPatient = [0.0, 0.0, z]
        dataset.ImageOrientationPatient = list(orientation)
    if instance is not None:
        dataset.InstanceNumber = instance
    return save(dataset, path)


def ramp(shape: tuple[int, ...], *, seed: int = 0, high: int = 4000) -> np.ndarray:
    """Seeded integer pixels in ``[0, high]`` with no two rows alike (so flips and transposes show)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, high * 0.8, int(np.prod(shape))).reshape(shape)
    return np.round(base + rng.random(shape) * high * 0.2).astype(np.int64)


def legacy(path: Path, pixels: np.ndarray) -> Path:
    """A gray image written as a bare implicit-VR little-endian dataset: no preamble, no "DICM", no file meta."""
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    dataset = pydicom.dcmread(gray(path, pixels))
    del dataset.file_meta
    path.unlink()
    with path.open("wb") as handle:
        stream = DicomFileLike(handle)
        stream.is_little_endian, stream.is_implicit_VR = True, True
        write_dataset(stream, dataset)
    return path
