"""A folder of single-frame DICOM slices of one series, read as one volume ``float32 [C, rows, columns, slices]``.

A datalist item whose ``"image"`` is a folder holding ``.dcm`` files is such a series; the transforms then cut it
to one 2-D slice by the usual slice policy (``DataConfig.slice_axis``/``slice_index``; the default axis 2 with the
middle slice gives a slice in the acquisition plane).

Slice order: by position along the slice normal, ``ImagePositionPatient · (row × column direction cosines of
ImageOrientationPatient)``, when every slice has both; else by ``InstanceNumber`` when every slice has one; else by
file name. Every slice goes through `medpfl_app.data.dicom.load_dicom_pixels` (its own modality LUT, VOI and
MONOCHROME1 handling). Refused: a folder without ``.dcm`` files, slices of several series, multi-frame slices,
slices of different sizes or colour, two slices at one position, and a volume over the ``max_pixels`` limit
(checked from the headers before any pixel is decoded).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medpfl_app.data.config import DicomVoi
from medpfl_app.data.dicom import load_dicom_pixels
from medpfl_app.data.dicom_header import check_dicom_size, dicom_frame_count, read_dicom_header
from medpfl_app.errors import MedPFLError

_SERIES_FIX = "put the slices of exactly one series (one acquisition) in the folder, one single-frame .dcm file each"


def series_files(folder: str | Path) -> list[Path]:
    """The ``.dcm`` files directly in ``folder``, by name (hidden files skipped)."""
    return sorted(
        entry
        for entry in Path(folder).iterdir()
        if entry.is_file() and entry.name.lower().endswith(".dcm") and not entry.name.startswith(".")
    )


def order_series(folder: str | Path) -> list[Path]:
    """Check that ``folder`` holds one series of single-frame slices and return its files in slice order.

    Raises:
        MedPFLError: For an empty folder, mixed series, multi-frame files, or slices of different sizes, colour or
            duplicate positions, naming the folder (and the files concerned).
    """
    files = series_files(folder)
    if not files:
        raise MedPFLError(f"DICOM series folder {folder} holds no .dcm files", fix=_SERIES_FIX)
    headers = [read_dicom_header(path) for path in files]
    _check_one_series(folder, files, headers)
    positions = [_position_along_normal(header) for header in headers]
    if all(position is not None for position in positions):
        keys: list[float] = [float(position) for position in positions if position is not None]
        _refuse_duplicates(folder, files, keys, "position")
    elif all(header.get("InstanceNumber") is not None for header in headers):
        keys = [float(header.InstanceNumber) for header in headers]
        _refuse_duplicates(folder, files, keys, "InstanceNumber")
    else:
        keys = [float(number) for number in range(len(files))]
    return [path for _, path in sorted(zip(keys, files), key=lambda pair: pair[0])]


def load_dicom_series(folder: str | Path, *, voi: DicomVoi = DicomVoi.FILE, max_pixels: int) -> np.ndarray:
    """Load a series folder as ``float32 [C, rows, columns, slices]`` (see the module docstring for the order)."""
    files = order_series(folder)
    check_dicom_size(read_dicom_header(files[0]), folder, max_pixels=max_pixels, slices=len(files))
    slices = [load_dicom_pixels(path, voi=voi, max_pixels=max_pixels) for path in files]
    return np.stack(slices, axis=-1)


def _check_one_series(folder: str | Path, files: list[Path], headers: list[Dataset]) -> None:
    series = {str(header.get("SeriesInstanceUID", "")) for header in headers}
    if len(series) > 1:
        raise MedPFLError(
            f"DICOM series folder {folder} mixes {len(series)} series (SeriesInstanceUID {', '.join(sorted(series))})",
            fix=_SERIES_FIX,
        )
    for path, header in zip(files, headers):
        if dicom_frame_count(path, header) > 1:
            raise MedPFLError(
                f"DICOM series folder {folder}: {path.name} is a multi-frame file",
                fix="list multi-frame files as datalist items of their own (each frame becomes a sample)",
            )
    shapes = {(header.get("Rows"), header.get("Columns"), header.get("SamplesPerPixel", 1)) for header in headers}
    if len(shapes) > 1:
        raise MedPFLError(
            f"DICOM series folder {folder} has slices of different sizes (rows, columns, samples): "
            f"{', '.join(str(shape) for shape in sorted(shapes, key=str))}",
            fix=_SERIES_FIX,
        )


def _position_along_normal(header: Dataset) -> float | None:
    position, orientation = header.get("ImagePositionPatient"), header.get("ImageOrientationPatient")
    if position is None or orientation is None or len(position) != 3 or len(orientation) != 6:
        return None
    cosines = np.asarray(orientation, dtype=float)
    normal = np.cross(cosines[:3], cosines[3:])
    return float(np.dot(np.asarray(position, dtype=float), normal))


def _refuse_duplicates(folder: str | Path, files: list[Path], keys: list[float], what: str) -> None:
    seen: dict[float, Path] = {}
    for key, path in zip(keys, files):
        rounded = round(key, 4)
        if rounded in seen:
            raise MedPFLError(
                f"DICOM series folder {folder}: {seen[rounded].name} and {path.name} have the same slice {what} "
                f"({key:g})",
                fix=f"{_SERIES_FIX}; two slices at one {what} usually mean two acquisitions in one folder",
            )
        seen[rounded] = path
