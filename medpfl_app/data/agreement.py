"""Does the model input show the picture stored in the file? An independent rendering to compare the loader against.

A loader can read every byte of a file and still hand the model the wrong picture: frames of a multi-frame DICOM
stacked into one tall strip, palette indices or CMYK planes read as gray levels, a MONOCHROME1 image left inverted.
No header check sees that. So the check renders the file's picture here, with the format libraries directly and
independently of the training loader (`render_planes`: gray levels as a viewer shows them, one 2-D plane per frame,
volume slice or time point), and correlates each candidate plane with the model input (`pixel_agreement`). The
training image should match one of them closely; a best Pearson correlation under `MIN_PIXEL_AGREEMENT` means the
model would train on wrong pixels.

Correlation, not equality, so that the loader's own choices (min–max scaling, bilinear resizing, windowing, RGB→gray
weights) do not matter: all of them keep the picture, and all of the failures above destroy or invert it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from medpfl_app.data.headers import ImageFormat

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

#: Lowest acceptable Pearson correlation between the model input and the best-matching rendered plane.
MIN_PIXEL_AGREEMENT = 0.8
#: Side of the coarse grid both pictures are averaged onto before they are correlated.
AGREEMENT_GRID = 16
#: At most this many frames / volumes of one file are rendered as candidates (the check must stay fast).
MAX_CANDIDATE_FRAMES = 64
_LUMA_BT601 = (0.299, 0.587, 0.114)
_NUMERIC_PIL_MODES = ("1", "L", "I", "I;16", "I;16B", "I;16L", "F")


def render_planes(
    path: str | Path,
    fmt: ImageFormat,
    *,
    slice_axis: int = 2,
    slice_index: int | None = None,
    volume_index: int | None = None,
    frame: int | None = None,
) -> list[np.ndarray]:
    """The 2-D gray pictures the file holds, as a viewer would show them; a volume gives its slice(s).

    Args:
        path: An image file that passed the size guard.
        fmt: Its format.
        slice_axis: The configured slice axis of 3-D volumes.
        slice_index: The configured slice index (``None``: middle).
        volume_index: The configured volume of a 4-D NIfTI file (``None``: every volume is a candidate).
        frame: The one frame of a multi-frame DICOM file to render (the item names it); ``None``: every frame.

    Returns:
        Candidate planes (float64): one per DICOM frame, per NIfTI time point, and for a 3-D volume the configured
        slice along each of the three axes (the loader's orientation is its own business; its picture must be one of
        them). Empty if the file cannot be rendered here (nothing is then compared).
    """
    if fmt is ImageFormat.DICOM_SERIES:
        return []  # its slice order is the loader's own (positions, instance numbers); not re-derived here
    if fmt is ImageFormat.DICOM:
        return _dicom_planes(Path(path), frame)
    if fmt is ImageFormat.NIFTI:
        import nibabel as nib

        # nib.load is typed as any file-based image; every NIfTI image class is a SpatialImage
        values = np.asarray(cast("SpatialImage", nib.load(path)).dataobj, dtype=np.float64)
        if values.ndim == 4 and volume_index is not None and volume_index < values.shape[3]:
            values = values[..., volume_index]
        return _volume_planes(values, slice_axis, slice_index)
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # set before opening: PIL warns about large images at open
        with Image.open(path) as image:
            picture = image if image.mode in _NUMERIC_PIL_MODES else image.convert("L")
            return [np.asarray(picture, dtype=np.float64)]


def pixel_agreement(model_input: np.ndarray, planes: Sequence[np.ndarray]) -> float | None:
    """Best Pearson correlation between the model input (``C×H×W``, channels averaged) and any candidate plane.

    Both are first box-averaged onto a common coarse grid (`AGREEMENT_GRID` a side at most), so that how the
    loader resized (bilinear, anti-aliasing) does not matter, while a misread picture still differs. Returns
    ``None`` when nothing can be compared (no plane, or every pair has a constant side).

    Examples:
        >>> picture = np.outer(np.arange(8.0), np.ones(8)) + np.eye(8)
        >>> round(pixel_agreement(picture[None] / 8, [picture]), 3)
        1.0
        >>> round(pixel_agreement(-picture[None], [picture]), 3)
        -1.0
    """
    model_gray = np.asarray(model_input, dtype=np.float64).mean(axis=0)
    grid = (min(AGREEMENT_GRID, model_gray.shape[0]), min(AGREEMENT_GRID, model_gray.shape[1]))
    target = _on_grid(model_gray, grid)
    best: float | None = None
    for plane in planes:
        if plane.ndim != 2 or min(plane.shape) < 1:
            continue
        score = _correlation(target, _on_grid(np.nan_to_num(plane), grid))
        if score is not None and (best is None or score > best):
            best = score
    return best


def _on_grid(picture: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """``picture`` resized to ``grid``: box averages when shrinking, bilinear when enlarging."""
    import torch

    tensor = torch.as_tensor(picture, dtype=torch.float64)[None, None]
    if picture.shape[0] >= grid[0] and picture.shape[1] >= grid[1]:
        return torch.nn.functional.adaptive_avg_pool2d(tensor, grid)[0, 0].numpy()
    return torch.nn.functional.interpolate(tensor, size=grid, mode="bilinear", align_corners=False)[0, 0].numpy()


def _correlation(first: np.ndarray, second: np.ndarray) -> float | None:
    a, b = first - first.mean(), second - second.mean()
    scale = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / scale) if scale > 0 else None


def _dicom_planes(path: Path, frame: int | None) -> list[np.ndarray]:
    import pydicom
    from pydicom.pixels import apply_color_lut, pixel_array

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = pydicom.dcmread(path)
        # pydicom converts YBR to RGB; with an index it decodes that frame only
        pixels = pixel_array(dataset, index=frame) if frame is not None else dataset.pixel_array
        photometric = str(dataset.get("PhotometricInterpretation", ""))
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, dataset)
    pixels = np.asarray(pixels, dtype=np.float64)
    if photometric == "MONOCHROME1":  # low values are white: a viewer shows the negative
        pixels = -pixels
    if int(dataset.get("SamplesPerPixel") or 1) == 1 and photometric != "PALETTE COLOR":
        planes = list(pixels.reshape(-1, *pixels.shape[-2:])[:MAX_CANDIDATE_FRAMES])
        return planes + _windowed_planes(dataset, pixels, photometric)
    # Colour: BT.601 luma (what PIL and most viewers show as gray) and the plain channel mean, both acceptable
    frames = pixels.reshape(-1, *pixels.shape[-3:])[:MAX_CANDIDATE_FRAMES]
    return [gray for frame in frames for gray in (frame @ np.asarray(_LUMA_BT601), frame.mean(axis=-1))]


def _windowed_planes(dataset: Any, pixels: np.ndarray, photometric: str) -> list[np.ndarray]:
    """A single-frame gray image as a viewer shows it by default: through the file's VOI LUT or window, which
    the loader applies too (``DataConfig.dicom_voi="file"``); a narrow CT window clips the raw range."""
    if pixels.ndim != 2 or not ("WindowCenter" in dataset or "VOILUTSequence" in dataset):
        return []
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    raw = -pixels if photometric == "MONOCHROME1" else pixels  # undo the negation above before windowing
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            windowed = np.asarray(apply_voi_lut(apply_modality_lut(raw, dataset), dataset), dtype=np.float64)
    except Exception:  # a malformed VOI module: the raw candidates above still stand
        return []
    return [-windowed if photometric == "MONOCHROME1" else windowed]


def _volume_planes(values: np.ndarray, slice_axis: int, slice_index: int | None) -> list[np.ndarray]:
    """Candidate planes of a NIfTI array: 2-D as is, 3-D by slicing, 4-D per time point."""
    if values.ndim == 2:
        return [values]
    if values.ndim == 3:
        if sorted(values.shape).count(1) == 1:  # a 2-D image stored as a one-slice volume
            return [values.squeeze()]
        planes = []
        for axis in range(3):
            size = values.shape[axis]
            index = slice_index if axis == slice_axis and slice_index is not None and slice_index < size else size // 2
            planes.append(np.take(values, index, axis=axis))
        return planes
    if values.ndim == 4:
        return [
            plane
            for t in range(min(values.shape[3], MAX_CANDIDATE_FRAMES))
            for plane in _volume_planes(values[..., t], slice_axis, slice_index)
        ]
    return []
