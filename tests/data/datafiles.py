"""Writers of tiny seeded images in every supported format, shared by the data-layer tests.

A module with a unique name (not ``conftest``) so that ``import`` cannot pick up another folder's conftest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image


def gradient(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A seeded float image with a known range (0 … 1) and no constant regions."""
    rng = np.random.default_rng(seed)
    values = np.linspace(0.0, 1.0, int(np.prod(shape))).reshape(shape)
    return (0.8 * values + 0.2 * rng.random(shape)).astype(np.float32)


def write_nifti(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine=np.eye(4)), path)
    return path


def write_png(path: Path, array: np.ndarray, *, rgb: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.clip(array * 255, 0, 255).astype(np.uint8)
    if rgb:
        pixels = np.stack([pixels, pixels // 2, 255 - pixels], axis=-1)
    Image.fromarray(pixels).save(path)
    return path


def _dicom_dataset(array: np.ndarray):
    """A single-frame MONOCHROME2 MR secondary capture with file meta, without pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "MR"
    dataset.Rows, dataset.Columns = array.shape
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    return dataset


def write_dicom(path: Path, array: np.ndarray) -> Path:
    """16-bit unsigned DICOM of ``array`` (values in [0, 1] scaled by 4000)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = _dicom_dataset(array)
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.PixelData = np.round(array * 4000).astype(np.uint16).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def write_float_dicom(path: Path, array: np.ndarray) -> Path:
    """A single-frame DICOM with 32-bit Float Pixel Data (7FE0,0008), the one DICOM form that can hold NaN/Inf."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = _dicom_dataset(array)
    dataset.BitsAllocated = 32
    dataset.FloatPixelData = array.astype(np.float32).tobytes()
    dataset.save_as(path, enforce_file_format=True)
    return path


def write_datalist(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content), encoding="utf-8")
    return path
