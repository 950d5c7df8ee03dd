"""What an image file says about itself before any pixel is decoded, and its stored pixels for the data check.

`read_header` reads only headers (pydicom with ``stop_before_pixels``, nibabel's lazy header, PIL's lazy
``Image.open``, and a PNG's ``IHDR`` chunk directly), so a file declaring billions of pixels is refused by
`medpfl_app.data.preflight` before anything allocates them. `read_stored_pixels` then reads the values as stored in
the file (no inversion, palette lookup, or scaling to [0, 1]): the check's intensity range, blank-image test and
duplicate hash describe the file itself, whatever the training loader makes of it.
"""

from __future__ import annotations

import dataclasses
import math
import struct
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from medpfl_app.data.datalist import image_suffix

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: NumPy dtype of the values PIL stores per mode; modes not listed are shown by name only.
_PIL_DTYPES = {
    "1": "bool",
    "L": "uint8",
    "P": "uint8",
    "RGB": "uint8",
    "RGBA": "uint8",
    "CMYK": "uint8",
    "YCbCr": "uint8",
    "LA": "uint8",
    "PA": "uint8",
    "I;16": "uint16",
    "I;16B": "uint16",
    "I": "int32",
    "F": "float32",
}


class ImageFormat(StrEnum):
    """File formats the site pipeline reads."""

    NIFTI = "nifti"
    DICOM = "dicom"
    DICOM_SERIES = "dicom-series"
    PNG = "png"
    JPEG = "jpeg"


_FORMAT_BY_SUFFIX = {
    ".nii": ImageFormat.NIFTI,
    ".nii.gz": ImageFormat.NIFTI,
    ".dcm": ImageFormat.DICOM,
    ".png": ImageFormat.PNG,
    ".jpg": ImageFormat.JPEG,
    ".jpeg": ImageFormat.JPEG,
}


@dataclass(frozen=True)
class HeaderFacts:
    """One image file's header.

    Attributes:
        format: The file format.
        shape: The stored array shape: DICOM ``(rows, columns)``, ``(frames, rows, columns)``, plus a trailing
            samples-per-pixel axis when above 1; NIfTI the header's ``dim``; PNG/JPEG ``(height, width)`` plus a
            trailing band axis when above 1.
        in_plane: ``(height, width)`` of the 2-D images the file holds (a volume's slices, a DICOM's frames).
        frames: DICOM ``NumberOfFrames``; for NIfTI the volumes along the fourth axis (time points, echoes); 1
            otherwise.
        pixels: Pixels (voxels) the file declares, channels not counted: what decoding allocates per channel.
        dtype: Stored sample type (``uint16``, ``float32``, …), or ``None`` if the header does not say.
        photometric: DICOM ``PhotometricInterpretation`` or PIL mode; ``None`` for NIfTI.
        transfer_syntax: DICOM transfer syntax name (compressed or not); ``None`` for other formats.
    """

    format: ImageFormat
    shape: tuple[int, ...]
    in_plane: tuple[int, int]
    frames: int
    pixels: int
    dtype: str | None
    photometric: str | None = None
    transfer_syntax: str | None = None


def image_format(path: str | Path) -> ImageFormat | None:
    """The format implied by ``path``'s suffix (a folder is a DICOM series), or ``None`` for an unsupported one."""
    if Path(path).is_dir():
        return ImageFormat.DICOM_SERIES
    return _FORMAT_BY_SUFFIX.get(image_suffix(path) or "")


def read_header(path: str | Path, *, slice_axis: int = 2) -> HeaderFacts:
    """Read ``path``'s header without decoding its pixels.

    Args:
        path: An image file with a supported suffix.
        slice_axis: The axis a 3-D volume is cut along (`DataConfig.slice_axis`), which decides its in-plane size.

    Raises:
        ValueError: For an unsupported suffix or a header without an image geometry.
        Exception: Whatever the format library raises on a malformed header; the caller reports it per file.
    """
    fmt = image_format(path)
    if fmt is ImageFormat.DICOM:
        return _dicom_header(Path(path))
    if fmt is ImageFormat.DICOM_SERIES:
        return _series_header(Path(path))
    if fmt is ImageFormat.NIFTI:
        return _nifti_header(Path(path), slice_axis)
    if fmt in (ImageFormat.PNG, ImageFormat.JPEG):
        return _pil_header(Path(path), fmt)
    raise ValueError(f"unsupported image file type {Path(path).name!r}")


def read_stored_pixels(path: str | Path, fmt: ImageFormat) -> np.ndarray:
    """The pixel values as stored in the file, all frames and channels, without any conversion.

    Call only after `read_header` and the size guard: this decodes the whole file.

    Raises:
        ValueError: For a DICOM series folder (its slices are decoded by the training loader only).
    """
    if fmt is ImageFormat.DICOM_SERIES:
        raise ValueError("the stored pixels of a DICOM series are not read by the check")
    if fmt is ImageFormat.DICOM:
        import pydicom

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(pydicom.dcmread(path).pixel_array)
    if fmt is ImageFormat.NIFTI:
        import nibabel as nib

        # nib.load is typed as any file-based image; every NIfTI image class is a SpatialImage
        return np.asarray(cast("SpatialImage", nib.load(path)).dataobj)
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set before opening: PIL warns about large images at open
        with Image.open(path) as image:
            return np.asarray(image)


def _dicom_header(path: Path) -> HeaderFacts:
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    rows, columns = dataset.get("Rows"), dataset.get("Columns")
    if not rows or not columns:
        raise ValueError("the DICOM header has no Rows/Columns: the file holds no image (a report or structure set?)")
    frames = max(int(dataset.get("NumberOfFrames") or 1), 1)
    samples = int(dataset.get("SamplesPerPixel") or 1)
    shape = ((frames,) if frames > 1 else ()) + (int(rows), int(columns)) + ((samples,) if samples > 1 else ())
    meta = getattr(dataset, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return HeaderFacts(
        format=ImageFormat.DICOM,
        shape=shape,
        in_plane=(int(rows), int(columns)),
        frames=frames,
        pixels=frames * int(rows) * int(columns),
        dtype=_dicom_dtype(dataset),
        photometric=str(dataset.get("PhotometricInterpretation") or "") or None,
        transfer_syntax=(syntax.name if syntax is not None else None),
    )


def _series_header(folder: Path) -> HeaderFacts:
    """A folder of single-frame slices: the first slice's header, times the number of ``.dcm`` files."""
    files = sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_file() and entry.name.lower().endswith(".dcm") and not entry.name.startswith(".")
    )
    if not files:
        raise ValueError(f"the folder {folder} holds no .dcm files (a DICOM series folder needs its slices)")
    first = _dicom_header(files[0])
    return dataclasses.replace(
        first,
        format=ImageFormat.DICOM_SERIES,
        shape=(len(files), *first.shape),
        frames=1,
        pixels=first.pixels * len(files),
    )


def _dicom_dtype(dataset: object) -> str | None:
    bits = getattr(dataset, "BitsAllocated", None)
    if bits is None:
        return None
    representation = getattr(dataset, "PixelRepresentation", None)
    if representation is None:  # Float / Double Float Pixel Data carry no PixelRepresentation
        return {32: "float32", 64: "float64"}.get(int(bits))
    if int(bits) == 1:
        return "bool"
    return f"{'int' if int(representation) == 1 else 'uint'}{int(bits)}"


def _nifti_header(path: Path, slice_axis: int) -> HeaderFacts:
    import nibabel as nib

    # Lazy: reads the header, maps or streams the data only on access. Typed as any file-based image by nibabel;
    # every NIfTI image class is a SpatialImage.
    image = cast("SpatialImage", nib.load(path))
    shape = tuple(int(size) for size in image.header.get_data_shape())
    if not shape or any(size < 1 for size in shape):
        raise ValueError(f"the NIfTI header declares an empty image of shape {shape}")
    spatial = shape[:3]
    return HeaderFacts(
        format=ImageFormat.NIFTI,
        shape=shape,
        in_plane=_volume_in_plane(spatial, slice_axis),
        frames=shape[3] if len(shape) > 3 else 1,
        pixels=math.prod(shape[:4]),  # axis 5 holds vector components (channels), not pixels
        dtype=str(image.header.get_data_dtype()),
    )


def _volume_in_plane(spatial: tuple[int, ...], slice_axis: int) -> tuple[int, int]:
    """The size of the 2-D image the pipeline cuts from a volume (see `medpfl_app.data.transforms.slice_volume`)."""
    if len(spatial) == 1:
        return (spatial[0], 1)
    if len(spatial) == 2:
        return (spatial[0], spatial[1])
    singletons = [axis for axis, size in enumerate(spatial) if size == 1]
    dropped = singletons[0] if len(singletons) == 1 else slice_axis
    kept = [size for axis, size in enumerate(spatial) if axis != dropped]
    return (kept[0], kept[1])


def _pil_header(path: Path, fmt: ImageFormat) -> HeaderFacts:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning at open: our own size guard decides
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
                bands = len(image.getbands())
    except Image.DecompressionBombError:
        declared = _png_declared_size(path) if fmt is ImageFormat.PNG else None
        if declared is None:
            raise
        # Too large for PIL even to open: report the geometry the PNG declares, for the size guard to refuse.
        height, width = declared
        return HeaderFacts(fmt, (height, width), (height, width), 1, height * width, None, None)
    shape = (height, width) + ((bands,) if bands > 1 else ())
    return HeaderFacts(fmt, shape, (height, width), 1, height * width, _PIL_DTYPES.get(mode), mode)


def _png_declared_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from a PNG's ``IHDR`` chunk, or ``None`` if the file does not start like a PNG."""
    with open(path, "rb") as stream:
        head = stream.read(24)
    if len(head) < 24 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return height, width
