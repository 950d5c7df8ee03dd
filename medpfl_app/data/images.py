"""PNG and JPEG pixels as MedPFL reads them (Pillow): ``float32 [1, rows, columns]`` gray or ``[3, …]`` RGB.

Modes: ``L``/``1`` and 16/32-bit gray (``I;16``, ``I``, ``F``) load as gray with their stored values; ``LA`` drops
its alpha to gray; ``RGB``, ``RGBA`` (alpha dropped) and ``YCbCr`` load as RGB; palette (``P``/``PA``) images are
converted through their palette to RGB (never the palette indices); ``CMYK`` is converted to RGB by Pillow's
conversion (which ignores any embedded ICC profile). Other modes and animated (multi-frame) PNGs are refused.
A JPEG's EXIF orientation tag is applied, so the array is the image as a viewer shows it, rows first.

Before any pixel is decoded, width × height × bands from the header is checked against the ``max_pixels``
decompression-bomb limit (Pillow's own bomb check is not relied on: it only warns below 179 megapixels).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from medpfl_app.data.dicom_header import CORRUPT_FIX
from medpfl_app.errors import MedPFLError

_GRAY_MODES = ("L", "1", "I;16", "I;16L", "I;16B", "I", "F", "LA")
_RGB_MODES = ("RGB", "RGBA", "YCbCr", "P", "PA", "CMYK")


def load_pil_pixels(path: str | Path, *, max_pixels: int) -> np.ndarray:
    """Load a PNG/JPEG as ``float32 [C, rows, columns]`` following the module's mode policy.

    Raises:
        MedPFLError: For an unreadable file, an unsupported mode, an animated PNG or more values than ``max_pixels``,
            naming the file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            with Image.open(path) as image:
                _check_header(image, path, max_pixels)
                upright = ImageOps.exif_transpose(image) or image
                return _to_array(upright, path)
    except MedPFLError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise MedPFLError(f"cannot read image file {path}: {type(error).__name__}: {error}", fix=CORRUPT_FIX) from None


def _check_header(image: Image.Image, path: str | Path, max_pixels: int) -> None:
    width, height = image.size
    values = width * height * len(image.getbands())
    if values > max_pixels:
        raise MedPFLError(
            f"image {path} is {width}×{height} pixels × {len(image.getbands())} bands = {values:,} values, "
            f"over the limit of {max_pixels:,} (max_megapixels, a decompression-bomb guard)",
            fix="downsample or crop the image before use, or raise the data setting max_megapixels if the size is "
            "genuine and the site has the memory",
        )
    frames = getattr(image, "n_frames", 1)  # PIL defines n_frames only on formats that can hold several frames
    if frames > 1:
        raise MedPFLError(
            f"image {path} is animated ({frames} frames)",
            fix="save the frame to use as a still PNG, or export the sequence as a DICOM or NIfTI volume",
        )
    if image.mode not in _GRAY_MODES + _RGB_MODES:
        raise MedPFLError(
            f"image {path} has pixel mode {image.mode!r}, which MedPFL does not convert",
            fix="re-save it as an 8/16-bit grayscale or RGB PNG",
        )


def _to_array(image: Image.Image, path: str | Path) -> np.ndarray:
    if image.mode in _RGB_MODES:
        # Palette images through their palette (not their indices); CMYK/YCbCr/alpha to plain RGB.
        return np.moveaxis(np.asarray(image.convert("RGB"), dtype=np.float32), -1, 0)
    if image.mode in ("LA", "1"):  # drop alpha; bilevel to 0/255
        image = image.convert("L")
    pixels = np.asarray(image)
    if pixels.ndim != 2:
        raise MedPFLError(f"image {path} decoded to an unexpected shape {pixels.shape}", fix=CORRUPT_FIX)
    return pixels.astype(np.float32)[None]
