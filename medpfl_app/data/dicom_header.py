"""DICOM headers, read without decoding pixels: legacy files, frame counts and the decompression-bomb guard.

`read_dicom` accepts legacy files written without the 128-byte preamble and file meta when they hold an image.
`dicom_frame_count` refuses a Number of Frames the file is too small to hold; `check_dicom_size` refuses a file
whose rows × columns × samples × frames (× slices of a series) exceed the ``max_pixels`` limit, before any decoding.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medpfl_app.errors import MedPFLError

CORRUPT_FIX = (
    "replace or remove the corrupt file (check that it opens in an image viewer), or convert it to NIfTI/PNG; "
    "`medpfl data check <datalist>` lists every unreadable file"
)


def read_dicom_header(path: str | Path) -> Dataset:
    """Read a DICOM file's elements without its pixel data, refusing a file that is not DICOM."""
    return read_dicom(path, stop_before_pixels=True)


def read_dicom(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """Read a DICOM file; a legacy file without the 128-byte preamble and file meta is accepted if it is an image.

    Such files (older scanner exports) are re-read with ``force=True`` and kept only when they have ``Rows``; their
    transfer syntax is set from the encoding pydicom detected (implicit/explicit VR, little/big endian).
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as error:
        first_error: Exception = error
    except (OSError, ValueError, EOFError, KeyError, TypeError) as error:
        raise MedPFLError(f"cannot read image file {path}: {type(error).__name__}: {error}", fix=CORRUPT_FIX) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            legacy = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
    except Exception:
        legacy = None
    if legacy is None or "Rows" not in legacy or "TransferSyntaxUID" in legacy.file_meta:
        raise MedPFLError(
            f"cannot read image file {path}: {type(first_error).__name__}: {first_error}", fix=CORRUPT_FIX
        ) from None
    implicit, little = legacy.original_encoding
    syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    legacy.file_meta.TransferSyntaxUID = syntax
    return legacy


def dicom_frame_count(path: str | Path, header: Dataset | None = None) -> int:
    """Number of frames of a DICOM file, refusing a Number of Frames its file is too small to hold.

    Natively encoded frames need rows × columns × samples × bits allocated / 8 bytes each, encapsulated (compressed)
    frames at least one 8-byte item each; a header claiming more would otherwise expand into millions of samples.
    """
    header = header if header is not None else read_dicom_header(path)
    frames = _frames_claimed(header)
    if frames < 1:
        raise MedPFLError(
            f"DICOM file {path} has an invalid Number of Frames {header.get('NumberOfFrames')!r}", fix=CORRUPT_FIX
        )
    if frames > 1 and frames * _min_frame_bytes(header, path) > Path(path).stat().st_size:
        raise MedPFLError(
            f"DICOM file {path} claims {frames} frames, which its {Path(path).stat().st_size} bytes cannot hold",
            fix="the header is corrupt or the file truncated: re-export it from the scanner or PACS",
        )
    return frames


def _frames_claimed(header: Dataset) -> int:
    """The header's Number of Frames (1 when absent, 0 when unreadable)."""
    try:
        return int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 0


def _min_frame_bytes(header: Dataset, path: str | Path) -> float:
    """Fewest bytes one frame can take: native frames their full size, compressed ones an 8-byte item header."""
    meta = getattr(header, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and syntax.is_compressed:
        return 8.0
    samples = _int(header, "SamplesPerPixel", path, 1)
    if header.get("PhotometricInterpretation") == "YBR_FULL_422":
        samples = 2  # natively 4:2:2 subsampled: two values per pixel
    bits = int(header.get("BitsAllocated") or 8)
    return _int(header, "Rows", path) * _int(header, "Columns", path) * samples * bits / 8


def check_dicom_size(header: Dataset, path: str | Path, *, max_pixels: int, slices: int = 1) -> None:
    """Refuse a file whose rows × columns × samples × frames (× ``slices``) exceed ``max_pixels``, before decoding.

    Args:
        header: The file's elements (pixel data not needed).
        path: The file or series folder, named in the error.
        max_pixels: The limit on values.
        slices: Number of such files stacked into one volume (a series folder).
    """
    rows, columns = _int(header, "Rows", path), _int(header, "Columns", path)
    samples = _int(header, "SamplesPerPixel", path, 1)
    frames = max(1, _frames_claimed(header))
    total = rows * columns * samples * frames * slices
    if total > max_pixels:
        what = f"{rows}×{columns}×{samples} samples" + (f" × {frames} frames" if frames > 1 else "")
        what += f" × {slices} slices" if slices > 1 else ""
        raise MedPFLError(
            f"DICOM image {path} is {what} = {total:,} values, over the limit of "
            f"{max_pixels:,} (max_megapixels, a decompression-bomb guard)",
            fix="downsample or crop the image before use, or raise the data setting max_megapixels if the size is "
            "genuine and the site has the memory",
        )


def _int(header: Dataset, keyword: str, path: str | Path, default: int | None = None) -> int:
    value = header.get(keyword, default)
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 1:
        raise MedPFLError(f"DICOM file {path}: {keyword} is missing or invalid ({value!r})", fix=CORRUPT_FIX)
    return number
