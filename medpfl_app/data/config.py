"""How images are turned into tensors and batched: one frozen, validated, JSON-serialisable config."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from medpfl_app.errors import MedPFLError

_CHANNEL_CHOICES = (1, 3)
MAX_IMAGE_SIZE = 1024
"""Largest ``image_size``: a batch of 8 float32 1024×1024 images is 32 MiB per channel before any activation."""
DEFAULT_MAX_MEGAPIXELS = 256
"""Default ``max_megapixels``: 256 million values are 1 GiB as float32, more than any 2-D scan or CT volume needs."""


class DicomVoi(StrEnum):
    """Which DICOM intensity window (VOI) is applied; see ``DataConfig.dicom_voi``."""

    FILE = "file"
    NONE = "none"


@dataclass(frozen=True)
class DataConfig:
    """Settings of the data pipeline of one site.

    Attributes:
        image_size: Side length in pixels of the square images fed to the model (1 … `MAX_IMAGE_SIZE`).
        in_channels: Channels of the model input; 1 (grayscale) or 3 (RGB). Images are adapted (RGB→gray by
            ITU-R BT.601 luminance ``0.299 R + 0.587 G + 0.114 B``, gray→RGB by repetition).
        slice_axis: Spatial axis (0, 1 or 2) along which 3-D volumes are cut to one 2-D slice.
        slice_index: Index of that slice; ``None`` takes the middle slice.
        volume_index: Which 3-D volume of a 4-D NIfTI file (e.g. one time point of an fMRI or one b-value of a DWI
            series) to use; ``None`` refuses 4-D files. 2-D and 3-D files ignore it.
        dicom_voi: DICOM intensity window: ``"file"`` applies the file's own VOI LUT or Window Center/Width when it
            has one (what a DICOM viewer shows), ``"none"`` keeps the full modality range (e.g. all Hounsfield
            units).
        max_megapixels: Decompression-bomb limit, in millions of values, checked from the header before any pixel
            is decoded: DICOM rows × columns × samples × frames per file (× slices for a series folder), NIfTI voxels
            of the (chosen) 3-D volume, PNG/JPEG width × height × bands. The default 256 (1 GiB as float32) passes
            a 512×512×900 CT volume.
        batch_size: Training batch size.
        val_batch_size: Validation batch size.
        num_workers: DataLoader worker processes (0 loads in the main process).
        cache_rate: Fraction of the images kept in memory after loading (MONAI ``CacheDataset``); 0 disables caching.
        shuffle: Whether training batches are shuffled (seeded by ``seed``).
        seed: Seed of the shuffling order.
    """

    image_size: int = 64
    in_channels: int = 1
    slice_axis: int = 2
    slice_index: int | None = None
    volume_index: int | None = None
    dicom_voi: DicomVoi = DicomVoi.FILE
    max_megapixels: int = DEFAULT_MAX_MEGAPIXELS
    batch_size: int = 8
    val_batch_size: int = 32
    num_workers: int = 0
    cache_rate: float = 1.0
    shuffle: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("image_size", self.image_size, minimum=1)
        if self.image_size > MAX_IMAGE_SIZE:
            raise MedPFLError(
                f"data setting image_size must be <= {MAX_IMAGE_SIZE} pixels, got {self.image_size}",
                fix=f"set image_size to at most {MAX_IMAGE_SIZE} (64–256 is typical); images are resized to it",
            )
        _check_int("in_channels", self.in_channels, minimum=1)
        if self.in_channels not in _CHANNEL_CHOICES:
            raise MedPFLError(
                f"data setting in_channels must be 1 or 3, got {self.in_channels}",
                fix="use in_channels=1 for grayscale models or 3 for RGB models",
            )
        _check_int("slice_axis", self.slice_axis, minimum=0)
        if self.slice_axis > 2:
            raise MedPFLError(
                f"data setting slice_axis must be 0, 1 or 2 (a spatial axis of a 3-D volume), got {self.slice_axis}",
                fix="set slice_axis to 0, 1 or 2 (2 = axial slices of a RAS volume)",
            )
        if self.slice_index is not None:
            _check_int("slice_index", self.slice_index, minimum=0)
        if self.volume_index is not None:
            _check_int("volume_index", self.volume_index, minimum=0)
        if self.dicom_voi not in tuple(DicomVoi):
            raise MedPFLError(
                f"data setting dicom_voi must be one of {', '.join(DicomVoi)}, got {self.dicom_voi!r}",
                fix='set dicom_voi to "file" (apply the DICOM file\'s window) or "none" (full intensity range)',
            )
        object.__setattr__(self, "dicom_voi", DicomVoi(self.dicom_voi))
        _check_int("max_megapixels", self.max_megapixels, minimum=1)
        _check_int("batch_size", self.batch_size, minimum=1)
        _check_int("val_batch_size", self.val_batch_size, minimum=1)
        _check_int("num_workers", self.num_workers, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        if isinstance(self.cache_rate, bool) or not isinstance(self.cache_rate, (int, float)):
            raise MedPFLError(
                f"data setting cache_rate must be a number in [0, 1], got {self.cache_rate!r}",
                fix="set cache_rate between 0 (no caching) and 1 (cache every image)",
            )
        if not 0.0 <= float(self.cache_rate) <= 1.0:
            raise MedPFLError(
                f"data setting cache_rate must be in [0, 1], got {self.cache_rate}",
                fix="set cache_rate between 0 (no caching) and 1 (cache every image)",
            )
        object.__setattr__(self, "cache_rate", float(self.cache_rate))
        if not isinstance(self.shuffle, bool):
            raise MedPFLError(
                f"data setting shuffle must be true or false, got {self.shuffle!r}", fix="set shuffle to true or false"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None, **overrides: Any) -> DataConfig:
        """Build a config from a mapping of overrides (missing keys keep their defaults).

        Args:
            values: Settings by name, e.g. the ``"data"`` section of a site data configuration file.
            **overrides: Further settings that take precedence over ``values``.

        Raises:
            MedPFLError: On unknown keys or invalid values.
        """
        merged = {**dict(values or {}), **overrides}
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(merged) - set(known))
        if unknown:
            raise MedPFLError(
                f"unknown data setting(s): {', '.join(unknown)}",
                fix=f"remove them or use the known settings: {', '.join(known)}",
            )
        return cls(**merged)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MedPFLError(
            f"data setting {name} must be an integer, got {value!r}", fix=f"set {name} to an integer >= {minimum}"
        )
    if value < minimum:
        raise MedPFLError(f"data setting {name} must be >= {minimum}, got {value}", fix=f"set {name} >= {minimum}")
