"""DICOM pixels as MedPFL reads them: one frame of one file, or a folder of one series' slices, as float32 arrays.

Supported: any transfer syntax pydicom decodes with the installed plugins (pylibjpeg-libjpeg, -openjpeg, -rle, and
Pillow): uncompressed little/big endian, implicit/explicit VR, deflated; JPEG baseline (8-bit), extended (12-bit),
lossless; JPEG-LS lossless and near-lossless; JPEG 2000 (lossless and lossy); RLE lossless. A file that is still
undecodable (e.g. a JPEG stream the plugins reject, or a video syntax) is refused with one `MedPFLError` naming the
file, its transfer syntax (name and UID), pydicom's full message and the package that would decode it.

Pixel policy, in order (pydicom's own functions do each step):

1. Decode one frame (``index``); multi-frame files are read frame by frame, each frame being its own sample.
2. Colour: ``PALETTE COLOR`` through its lookup table (``apply_color_lut``), ``YBR_FULL``/``YBR_FULL_422`` to RGB
   (``convert_color_space``); RGB stays RGB. Colour images come back as 3 channels; the transforms turn them to
   gray by ITU-R BT.601 luminance when the model has one input channel.
3. Gray (``MONOCHROME1/2``): the modality LUT or Rescale Slope/Intercept (``apply_modality_lut``), so CT is in
   Hounsfield units; for enhanced multi-frame files the frame's Pixel Value Transformation from the (per-frame or
   shared) functional groups is used.
4. VOI (``DataConfig.dicom_voi``): ``"file"`` (default) applies the file's first VOI view, the VOI LUT Sequence
   if present, else Window Center/Width (``apply_voi_lut``, which prefers the LUT); a file with neither keeps the
   full modality range. ``"none"`` always keeps the full modality range.
5. ``MONOCHROME1`` (where low values are bright) is negated, so bright = dense as in ``MONOCHROME2``; negating
   (rather than mirroring about a per-image pivot) keeps frames and slices of one series on one scale, and the
   later min–max scaling maps it to [0, 1].

Arrays keep DICOM's ``[rows, columns]`` orientation, channel first: ``[C, rows, columns]`` for a frame and
``[C, rows, columns, slices]`` for a series folder, slices ordered along the slice normal (Image Position Patient ·
(row × column direction cosines)), else by Instance Number, else by file name.

Before any pixel is decoded the header is checked (`medpfl_app.data.dicom_header`): rows × columns × samples ×
frames of a file (× slices for a series) must not exceed the ``max_pixels`` limit (``DataConfig.max_megapixels``),
and a header's Number of Frames must fit the file's size. Legacy files without preamble and file meta are read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    as_pixel_options,
    convert_color_space,
    get_decoder,
)

from medpfl_app.data.config import DicomVoi
from medpfl_app.data.dicom_header import (
    CORRUPT_FIX,
    check_dicom_size,
    dicom_frame_count,
    read_dicom,
    read_dicom_header,
)
from medpfl_app.errors import MedPFLError

__all__ = [  # header functions re-exported from dicom_header
    "CORRUPT_FIX", "check_dicom_size", "dicom_frame_count", "load_dicom_pixels", "read_dicom", "read_dicom_header",
    "to_display",
]  # fmt: skip

_GRAY = ("MONOCHROME1", "MONOCHROME2")
_YBR = ("YBR_FULL", "YBR_FULL_422")
_RESCALE = ("RescaleSlope", "RescaleIntercept", "RescaleType")
_WINDOW = ("WindowCenter", "WindowWidth", "VOILUTFunction")
# Transfer syntax UID prefix → the package that decodes it when the installed plugins cannot.
_DECODER_PACKAGES = (
    ("1.2.840.10008.1.2.4.5", "python-gdcm (`pip install python-gdcm`; pydicom uses it automatically)"),
    ("1.2.840.10008.1.2.4.7", "python-gdcm (`pip install python-gdcm`; pydicom uses it automatically)"),
    ("1.2.840.10008.1.2.4.8", "pylibjpeg-libjpeg or python-gdcm (`pip install python-gdcm`)"),
    ("1.2.840.10008.1.2.4.9", "pylibjpeg-openjpeg or python-gdcm (`pip install python-gdcm`)"),
    ("1.2.840.10008.1.2.4.20", "pylibjpeg-openjpeg (HTJ2K) or python-gdcm"),
    ("1.2.840.10008.1.2.5", "pylibjpeg-rle or python-gdcm (`pip install python-gdcm`)"),
)
_NO_DECODER = "no pydicom plugin (video and JPEG XL syntaxes): extract the frames with ffmpeg or dcmtk first"


def load_dicom_pixels(
    path: str | Path, *, frame: int | None = None, voi: DicomVoi = DicomVoi.FILE, max_pixels: int
) -> np.ndarray:
    """Load one frame of a DICOM file as ``float32 [C, rows, columns]`` following the module's pixel policy.

    Args:
        path: The ``.dcm`` file.
        frame: Frame index (0-based); ``None`` for a single-frame file. A multi-frame file needs a frame.
        voi: The intensity window policy (see the module docstring).
        max_pixels: Decompression-bomb limit on the file's rows × columns × samples × frames.

    Returns:
        ``[1, rows, columns]`` for gray images (modality values, windowed per ``voi``, MONOCHROME1 negated),
        ``[3, rows, columns]`` RGB for colour ones; before any min–max scaling.

    Raises:
        MedPFLError: On an unreadable, oversized or undecodable file, a missing or out-of-range frame, or an
            unsupported photometric interpretation, naming the file.
    """
    header = read_dicom_header(path)
    _require_image(header, path)
    check_dicom_size(header, path, max_pixels=max_pixels)
    frames = dicom_frame_count(path, header)
    index = _frame_index(path, frame, frames)
    dataset = read_dicom(path)
    _require_image(dataset, path, pixels=True)
    pixels, photometric = _decode(dataset, path, index)
    return to_display(pixels, _frame_view(dataset, index), photometric, voi=voi, path=path)


def to_display(
    pixels: np.ndarray, dataset: Dataset, photometric: str, *, voi: DicomVoi, path: str | Path
) -> np.ndarray:
    """Apply the colour, modality, VOI and MONOCHROME1 steps to one decoded frame; return ``float32 [C, H, W]``."""
    if photometric == "PALETTE COLOR":
        return _channels_first(apply_color_lut(pixels, dataset))
    if photometric in _YBR:
        return _channels_first(convert_color_space(pixels, photometric, "RGB"))
    if photometric == "RGB":
        return _channels_first(pixels)
    if photometric not in _GRAY:
        raise MedPFLError(
            f"DICOM file {path} has photometric interpretation {photometric!r}, which MedPFL does not convert",
            fix="re-export it as MONOCHROME2, RGB or YBR_FULL (e.g. with dcmtk or gdcmconv)",
        )
    values = apply_modality_lut(pixels, dataset)
    if voi is DicomVoi.FILE:
        values = apply_voi_lut(values, dataset, index=0)
    values = np.asarray(values, dtype=np.float64)
    if photometric == "MONOCHROME1":
        values = -values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # float64 beyond float32 becomes Inf: refused later
        return values.astype(np.float32)[None]


def _decode(dataset: Dataset, path: str | Path, index: int) -> tuple[np.ndarray, str]:
    """Decode frame ``index`` without colour conversion; return it and its photometric interpretation as decoded."""
    syntax = dataset.file_meta.get("TransferSyntaxUID")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as error:
        raise _undecodable(path, syntax, error) from None
    try:
        pixels, meta = decoder.as_array(dataset, index=index, raw=True, **as_pixel_options(dataset))
    except Exception as error:
        if syntax is not None and syntax.is_compressed:
            raise _undecodable(path, syntax, error) from None
        raise MedPFLError(f"cannot read image file {path}: {type(error).__name__}: {error}", fix=CORRUPT_FIX) from None
    return pixels, str(meta.get("photometric_interpretation", dataset.get("PhotometricInterpretation", "")))


def _undecodable(path: str | Path, syntax: object, error: BaseException) -> MedPFLError:
    uid = str(syntax)
    name = getattr(syntax, "name", uid)
    package = next((hint for prefix, hint in _DECODER_PACKAGES if uid.startswith(prefix)), _NO_DECODER)
    return MedPFLError(
        f"cannot decode DICOM file {path}: transfer syntax {name} ({uid}) failed with the installed decoders: "
        f"{type(error).__name__}: {error}",
        fix=f"install {package}, or re-export the file uncompressed (e.g. `gdcmconv --raw in.dcm out.dcm` or "
        "dcmtk's `dcmdjpeg`/`dcmdrle`)",
    )


def _require_image(dataset: Dataset, path: str | Path, *, pixels: bool = False) -> None:
    has_pixels = any(keyword in dataset for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if "Rows" not in dataset or (pixels and not has_pixels):
        kind = getattr(dataset.get("SOPClassUID"), "name", "unknown SOP class")
        raise MedPFLError(
            f"DICOM file {path} holds no image ({kind})",
            fix="list only image files (not reports, RT plans, segmentations without pixels or DICOMDIRs) in the "
            "site's data",
        )


def _frame_index(path: str | Path, frame: int | None, frames: int) -> int:
    if frame is None:
        if frames > 1:
            raise MedPFLError(
                f"DICOM file {path} has {frames} frames but the item names none",
                fix='load the site data with `load_site_data` (it makes one sample per frame), or add "frame": k '
                f"(0..{frames - 1}) to the datalist item",
            )
        return 0
    if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < frames:
        raise MedPFLError(
            f"DICOM file {path}: frame {frame!r} is not one of its {frames} frames",
            fix=f'use "frame": 0..{frames - 1} in the datalist item, or leave it out to use every frame',
        )
    return frame


def _frame_view(dataset: Dataset, index: int) -> Dataset:
    """Lift frame ``index``'s rescale and window from enhanced multi-frame functional groups to the top level.

    pydicom's ``apply_modality_lut``/``apply_voi_lut`` read top-level elements only; enhanced CT/MR files keep them
    in the Shared and Per-frame Functional Groups (per-frame values win). ``dataset`` is this load's own copy, so it
    is updated in place.
    """
    shared = dataset.get("SharedFunctionalGroupsSequence") or []
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence") or []
    groups = [*shared[:1], *([per_frame[index]] if index < len(per_frame) else [])]
    for group in groups:
        for sequence, keywords in (("PixelValueTransformationSequence", _RESCALE), ("FrameVOILUTSequence", _WINDOW)):
            for element in group.get(sequence) or []:
                for keyword in keywords:
                    if keyword in element:
                        setattr(dataset, keyword, element[keyword].value)
    return dataset


def _channels_first(rgb: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(rgb, dtype=np.float32), -1, 0)
