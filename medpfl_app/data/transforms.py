"""MONAI transforms: ``{"image": path, "label": int}`` → ``{"image": FloatTensor[C,H,W], "label": LongTensor[]}``.

Reading is MedPFL's own (`load_pixels`), one module per format, each documenting its policy:
`medpfl_app.data.dicom` (DICOM frames: modality LUT, VOI window, MONOCHROME1, colour),
`medpfl_app.data.dicom_series` (a folder of one series' slices as a volume), `medpfl_app.data.nifti` (canonical
orientation, 4-D volumes) and `medpfl_app.data.images` (PNG/JPEG modes). An item may carry ``"frame": k`` to name
one frame of a multi-frame DICOM file (`medpfl_app.data.datalist` adds it, one sample per frame).

There is deliberately no augmentation: the privacy audit compares reconstructions with the exact images a site
trained on, so training and validation use the same deterministic chain.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform, Resized, ScaleIntensityd, Transform

from medpfl_app.data.check import check_finite
from medpfl_app.data.config import DataConfig
from medpfl_app.data.dicom_header import CORRUPT_FIX
from medpfl_app.data.reading import FRAME_KEY, IMAGE_KEY, load_pixels, sample_name
from medpfl_app.errors import MedPFLError

__all__ = [  # load_pixels and sample_name live in reading.py; re-exported here
    "FRAME_KEY", "IMAGE_KEY", "INDEX_KEY", "LABEL_KEY", "LUMA_BT601", "MIN_IMAGE_SIDE", "AdaptChannelsd",
    "FiniteGuardd", "GuardedLoadImaged", "SiteCompose", "SliceVolumed", "ToPlainTensorsd", "adapt_channels",
    "build_transforms", "find_medpfl_error", "load_pixels", "sample_name", "slice_volume",
]  # fmt: skip
LABEL_KEY = "label"
INDEX_KEY = "index"
MIN_IMAGE_SIDE = 8
"""Smallest rows/columns of a 2-D sample: below it an "image" is a thumbnail, icon or corrupt header, not anatomy."""
LUMA_BT601 = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G, B, used for every RGB→gray conversion."""


def slice_volume(image: torch.Tensor, *, axis: int, index: int | None = None) -> torch.Tensor:
    """Cut a channel-first 3-D volume ``[C, X, Y, Z]`` to the 2-D slice ``[C, ·, ·]`` at ``index`` along ``axis``.

    Images that are already 2-D pass through, as do 3-D arrays with one singleton spatial axis (a 2-D image stored
    as a one-slice volume), which are squeezed.

    Args:
        image: Channel-first image with 2 or 3 spatial axes.
        axis: Spatial axis (0, 1, 2) to slice along.
        index: Slice index; ``None`` takes the middle slice.

    Raises:
        ValueError: If the image is not 2-D or 3-D, or ``index`` is outside the volume.
    """
    spatial = image.shape[1:]
    if len(spatial) == 2:
        return image
    if len(spatial) != 3:
        raise ValueError(f"expected a 2-D image or 3-D volume, got spatial shape {tuple(spatial)}")
    singletons = [dim for dim, size in enumerate(spatial) if size == 1]
    if len(singletons) == 1:
        return image.squeeze(1 + singletons[0])
    size = spatial[axis]
    position = size // 2 if index is None else index
    if not 0 <= position < size:
        raise ValueError(f"slice_index {position} is outside the volume's {size} slices along axis {axis}")
    return image.select(1 + axis, position)


def adapt_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Adapt a channel-first image to ``channels`` channels: RGB(A)→gray by BT.601 luma, gray→RGB by repetition.

    The luma ``0.299 R + 0.587 G + 0.114 B`` (`LUMA_BT601`) is what DICOM's YBR_FULL and JPEG's YCbCr store as Y,
    so a colour image and its YBR encoding give the same gray image.

    Raises:
        ValueError: For channel counts that have no sensible conversion.
    """
    have = image.shape[0]
    if have == channels:
        return image
    if have == 4:  # RGBA: transparency carries no anatomy
        image, have = image[:3], 3
        if channels == 3:
            return image
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA_BT601, dtype=image.dtype, device=image.device)
        return (image * weights.reshape(3, *([1] * (image.ndim - 1)))).sum(dim=0, keepdim=True)
    if have == 1 and channels == 3:
        return image.repeat(3, *([1] * (image.ndim - 1)))
    raise ValueError(f"cannot convert a {have}-channel image to {channels} channels")


class SliceVolumed(MapTransform):
    """Dictionary transform applying `slice_volume` to ``keys``."""

    def __init__(self, keys: KeysCollection, *, axis: int, index: int | None = None) -> None:
        super().__init__(keys)
        self.axis = axis
        self.index = index

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = slice_volume(out[key], axis=self.axis, index=self.index)
        return out


class AdaptChannelsd(MapTransform):
    """Dictionary transform applying `adapt_channels` to ``keys``."""

    def __init__(self, keys: KeysCollection, *, channels: int) -> None:
        super().__init__(keys)
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            out[key] = adapt_channels(out[key], self.channels)
        return out


class ToPlainTensorsd(Transform):
    """Final step: the image as a contiguous plain float32 tensor, label and index as long scalars.

    Plain tensors (not MONAI ``MetaTensor``) keep batches cheap to collate and pickle; the image's path and
    metadata are not needed after loading. The ``"frame"`` key is dropped: only frames of multi-frame DICOM files
    carry it, and a batch mixing items with and without it could not be collated.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        out.pop(FRAME_KEY, None)
        image = out[IMAGE_KEY]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        out[IMAGE_KEY] = image.to(torch.float32).contiguous()
        for key in (LABEL_KEY, INDEX_KEY):
            if key in out:
                out[key] = torch.as_tensor(np.asarray(out[key]), dtype=torch.long).reshape(())
        return out


class GuardedLoadImaged(MapTransform):
    """Read ``keys`` with `load_pixels` into channel-first ``MetaTensor``s; any failure is one `MedPFLError`.

    The item's optional ``"frame"`` picks a frame of a multi-frame DICOM file. The tensor's
    ``meta["filename_or_obj"]`` is `sample_name` (path and frame), which later guards name in their errors.
    """

    def __init__(self, keys: KeysCollection, config: DataConfig, *, site: str | None = None) -> None:
        super().__init__(keys)
        self.config = config
        self.site = site

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            source = sample_name({IMAGE_KEY: out[key], FRAME_KEY: out.get(FRAME_KEY)})
            try:
                pixels = load_pixels(out[key], self.config, frame=out.get(FRAME_KEY))
            except MedPFLError as error:
                raise MedPFLError(error.problem, fix=error.fix, site=self.site) from None
            except Exception as error:  # a reader's own failure on a corrupt file: name it, not a traceback
                raise MedPFLError(
                    f"cannot read image file {source}: {_root_cause(error)}", fix=CORRUPT_FIX, site=self.site
                ) from None
            out[key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(pixels)), meta={"filename_or_obj": source})
        return out


class FiniteGuardd(MapTransform):
    """Dictionary transform refusing images with NaN/Inf values (`check_finite`), naming the file and the site.

    Placed right after loading it checks every pixel of the file (the whole volume, not only the slice used);
    placed after scaling it catches finite but extreme intensities that overflow to NaN/Inf there.
    """

    def __init__(self, keys: KeysCollection, *, site: str | None = None, stage: str | None = None) -> None:
        super().__init__(keys)
        self.site = site
        self.stage = stage

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            source = getattr(image, "meta", {}).get("filename_or_obj", f"an image ({key})")
            check_finite(image, source, site=self.site, stage=self.stage)
        return out


def find_medpfl_error(error: BaseException) -> MedPFLError | None:
    """Return the `MedPFLError` that caused ``error`` (MONAI wraps transform errors in ``RuntimeError``s)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, MedPFLError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class SiteCompose(Compose):
    """A MONAI ``Compose`` that re-raises our one-line `MedPFLError` instead of MONAI's wrapped chain."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except Exception as error:
            clear = find_medpfl_error(error)
            if clear is None:
                raise
            raise clear from None


def _root_cause(error: BaseException) -> str:
    """The innermost cause's type and full message (several lines when a decoder lists every plugin it tried)."""
    while error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {str(error).strip()}"


class _ShapeGuardd(MapTransform):
    """Runs slicing and channel adaptation, reporting bad shapes as a `MedPFLError` naming the file."""

    def __init__(self, keys: KeysCollection, config: DataConfig, *, site: str | None) -> None:
        super().__init__(keys)
        self.site = site
        self.steps = Compose(
            [
                SliceVolumed(keys, axis=config.slice_axis, index=config.slice_index),
                AdaptChannelsd(keys, channels=config.in_channels),
            ],
            log_stats=False,
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        image = data.get(IMAGE_KEY)
        source = getattr(image, "meta", {}).get("filename_or_obj", "an image")
        try:
            out = dict(self.steps(dict(data)))
        except Exception as error:
            raise MedPFLError(
                f"image {source} has an unsupported shape {tuple(getattr(image, 'shape', ()))}: {_root_cause(error)}",
                fix="use 2-D images or 3-D volumes with 1, 3 or 4 channels, and a slice_index inside the volume",
                site=self.site,
            ) from None
        rows, columns = out[IMAGE_KEY].shape[-2:]
        if min(rows, columns) < MIN_IMAGE_SIDE:
            raise MedPFLError(
                f"image {source} is only {rows}×{columns} pixels (as used, after slicing); MedPFL needs at least "
                f"{MIN_IMAGE_SIDE}×{MIN_IMAGE_SIDE}",
                fix="remove the thumbnail/placeholder or corrupt file from the site's data, or, for a volume, slice "
                "it along an axis with more voxels (data setting slice_axis)",
                site=self.site,
            )
        return out


def build_transforms(config: DataConfig, *, train: bool, site: str | None = None) -> SiteCompose:
    """Build the deterministic transform chain for training (``train=True``) or validation items.

    Steps: load with `load_pixels` (NIfTI via nibabel in canonical orientation, DICOM frames and series via pydicom,
    PNG/JPEG via Pillow, all channel-first in row-major ``[rows, columns]`` order, after a decompression-bomb check
    of the header), refuse NaN/Inf pixels, 3-D volumes sliced to 2-D along ``config.slice_axis``, refuse samples
    under `MIN_IMAGE_SIDE` pixels a side, channels adapted to ``config.in_channels`` (RGB→gray by BT.601), min–max
    intensity scaling to [0, 1], resize to ``image_size × image_size``, refuse values that overflowed to NaN/Inf,
    plain tensors. Every bad image ends in one `MedPFLError` naming the
    site and the file, so a poisoned image never reaches the model.

    Args:
        config: Data settings.
        train: Whether the chain is for training items; both chains are identical today (no augmentation, so the
            audit sees exactly the trained images), the flag keeps call sites explicit.
        site: Site name shown in errors.

    Returns:
        A MONAI ``Compose`` mapping ``{"image": path, "label": int[, "index": int][, "frame": int]}`` to
        ``{"image": FloatTensor[C, H, W] in [0, 1], "label": LongTensor[][, "index": LongTensor[]]}``.
    """
    del train  # identical chains on purpose, see the module docstring
    keys = [IMAGE_KEY]
    size = (config.image_size, config.image_size)
    return SiteCompose(
        [
            GuardedLoadImaged(keys, config, site=site),
            FiniteGuardd(keys, site=site),
            _ShapeGuardd(keys, config, site=site),
            ScaleIntensityd(keys, minv=0.0, maxv=1.0),
            Resized(keys, spatial_size=size, mode="bilinear", anti_aliasing=True),
            FiniteGuardd(keys, site=site, stage="intensity scaling and resizing"),
            ToPlainTensorsd(),
        ],
        log_stats=False,  # our guards already name the file; MONAI's stats dump would bury that line
    )
