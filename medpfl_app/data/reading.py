"""Read one listed image into a float32 array, whatever its format: the dispatch to the format modules.

`load_pixels` returns the pixels as the format's policy defines them (`medpfl_app.data.dicom`,
`medpfl_app.data.dicom_series`, `medpfl_app.data.nifti`, `medpfl_app.data.images`), before MedPFL's min–max
scaling, so tests and the data check can compare them with the reference readers.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medpfl_app.data.config import DataConfig
from medpfl_app.data.dicom import load_dicom_pixels
from medpfl_app.data.dicom_series import load_dicom_series
from medpfl_app.data.images import load_pil_pixels
from medpfl_app.data.nifti import load_nifti_pixels
from medpfl_app.data.sample_items import FRAME_KEY, image_suffix
from medpfl_app.errors import MedPFLError

IMAGE_KEY = "image"
__all__ = ["FRAME_KEY", "IMAGE_KEY", "load_pixels", "sample_name"]


def load_pixels(path: str | Path, config: DataConfig, *, frame: int | None = None) -> np.ndarray:
    """Read one image as ``float32 [C, *spatial]`` as stored (after the format's own policy, before any scaling).

    Args:
        path: A ``.dcm``/``.nii``/``.nii.gz``/``.png``/``.jpg``/``.jpeg`` file, or a folder of one DICOM series.
        config: Data settings (``dicom_voi``, ``volume_index``, ``max_megapixels``).
        frame: Frame of a multi-frame DICOM file (``None`` for single-frame files and other formats).

    Raises:
        MedPFLError: For any unreadable, oversized or unsupported file, naming it.
    """
    path = Path(path)
    max_pixels = config.max_megapixels * 1_000_000
    if path.is_dir():
        return load_dicom_series(path, voi=config.dicom_voi, max_pixels=max_pixels)
    suffix = image_suffix(path)
    if frame is not None and suffix != ".dcm":
        raise MedPFLError(
            f"image {path} is not DICOM, but its datalist item names frame {frame!r}",
            fix='remove "frame" from the item: only multi-frame DICOM files have frames',
        )
    if suffix == ".dcm":
        return load_dicom_pixels(path, frame=frame, voi=config.dicom_voi, max_pixels=max_pixels)
    if suffix in (".nii", ".nii.gz"):
        return load_nifti_pixels(path, volume_index=config.volume_index, max_pixels=max_pixels)
    if suffix in (".png", ".jpg", ".jpeg"):
        return load_pil_pixels(path, max_pixels=max_pixels)
    raise MedPFLError(f"image file {path} has an unsupported file type", fix="use .dcm, .nii(.gz), .png or .jpg")


def sample_name(item: Mapping[Hashable, Any]) -> str:
    """How errors name an item's image: its path, plus the frame of a multi-frame DICOM file."""
    frame = item.get(FRAME_KEY)
    return f"{item[IMAGE_KEY]}" + ("" if frame is None else f" (frame {frame})")
