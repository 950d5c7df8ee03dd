"""MONAI transforms: ``{"image": path, "label": int}`` → ``{"image": FloatTensor[C,H,W], "label": LongTensor[]}``.

There is deliberately no augmentation: the privacy audit compares reconstructions with the exact images a site
trained on, so training and validation use the same deterministic chain.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import NibabelReader, PILReader, PydicomReader
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    LoadImaged,
    MapTransform,
    Resized,
    ScaleIntensityd,
    Transform,
)

from medpfl_app.data.check import check_finite
from medpfl_app.data.config import DataConfig
from medpfl_app.data.datalist import image_suffix
from medpfl_app.errors import MedPFLError

IMAGE_KEY = "image"
LABEL_KEY = "label"
INDEX_KEY = "index"
_READER_BY_SUFFIX = {".nii": "nifti", ".nii.gz": "nifti", ".dcm": "dicom", ".png": "pil", ".jpg": "pil", ".jpeg": "pil"}


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
    """Adapt a channel-first image to ``channels`` channels: RGB(A)→gray by mean, gray→RGB by repetition.

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
        return image.mean(dim=0, keepdim=True)
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
    metadata are not needed after loading.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image = out[IMAGE_KEY]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        out[IMAGE_KEY] = image.to(torch.float32).contiguous()
        for key in (LABEL_KEY, INDEX_KEY):
            if key in out:
                out[key] = torch.as_tensor(np.asarray(out[key]), dtype=torch.long).reshape(())
        return out


class GuardedLoadImaged(MapTransform):
    """`LoadImaged` + `EnsureChannelFirstd` that turns any failure into one `MedPFLError` naming the file.

    Without this, a corrupt file surfaces as a chain of MONAI ``RuntimeError``s listing every reader tried.
    """

    def __init__(self, keys: KeysCollection, *, site: str | None = None) -> None:
        super().__init__(keys)
        self.site = site
        self.readers = {
            "nifti": NibabelReader(),
            "dicom": PydicomReader(swap_ij=False),  # keep [rows, columns] like the other formats
            "pil": PILReader(reverse_indexing=False),
        }
        with warnings.catch_warnings():
            # MONAI registers its optional GPU DICOM decoder too and warns that it is absent; irrelevant here.
            warnings.simplefilter("ignore", UserWarning)
            # MONAI tries the last matching reader first; each reader claims its own suffixes.
            self.load = Compose(
                [
                    LoadImaged(keys, reader=[self.readers["dicom"], self.readers["pil"], self.readers["nifti"]]),
                    EnsureChannelFirstd(keys),
                ],
                log_stats=False,
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return dict(self.load(dict(data)))
        except Exception as error:
            paths = [str(data[key]) for key in self.key_iterator(dict(data))]
            raise MedPFLError(
                f"cannot read image file {', '.join(paths)}: {self._diagnose(paths, error)}",
                fix="replace or remove the corrupt file (check that it opens in an image viewer), or convert it to "
                "NIfTI/PNG; `medpfl data check <datalist>` lists every unreadable file",
                site=self.site,
            ) from None

    def _diagnose(self, paths: list[str], error: Exception) -> str:
        """Name the format reader's own complaint instead of MONAI's list of every reader it fell back to."""
        for path in paths:
            suffix = image_suffix(path)
            reader = self.readers.get(_READER_BY_SUFFIX.get(suffix or "", ""))
            if reader is not None:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        reader.get_data(reader.read(path))
                except Exception as reader_error:
                    return _root_cause(reader_error)
        return _root_cause(error)


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
    while error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


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
        try:
            return dict(self.steps(dict(data)))
        except Exception as error:
            image = data.get(IMAGE_KEY)
            source = getattr(image, "meta", {}).get("filename_or_obj", "an image")
            raise MedPFLError(
                f"image {source} has an unsupported shape {tuple(getattr(image, 'shape', ()))}: {_root_cause(error)}",
                fix="use 2-D images or 3-D volumes with 1, 3 or 4 channels, and a slice_index inside the volume",
                site=self.site,
            ) from None


def build_transforms(config: DataConfig, *, train: bool, site: str | None = None) -> SiteCompose:
    """Build the deterministic transform chain for training (``train=True``) or validation items.

    Steps: load (NIfTI via nibabel, DICOM via pydicom, PNG/JPEG via PIL, all in row-major ``[rows, columns]``
    order), channel-first, refuse NaN/Inf pixels, 3-D volumes sliced to 2-D along ``config.slice_axis``, channels
    adapted to ``config.in_channels``, min–max intensity scaling to [0, 1], resize to ``image_size × image_size``,
    refuse values that overflowed to NaN/Inf, plain tensors. Every bad image ends in one `MedPFLError` naming the
    site and the file, so a poisoned image never reaches the model.

    Args:
        config: Data settings.
        train: Whether the chain is for training items; both chains are identical today (no augmentation, so the
            audit sees exactly the trained images), the flag keeps call sites explicit.
        site: Site name shown in errors.

    Returns:
        A MONAI ``Compose`` mapping ``{"image": path, "label": int[, "index": int]}`` to
        ``{"image": FloatTensor[C, H, W] in [0, 1], "label": LongTensor[][, "index": LongTensor[]]}``.
    """
    del train  # identical chains on purpose, see the module docstring
    keys = [IMAGE_KEY]
    size = (config.image_size, config.image_size)
    return SiteCompose(
        [
            GuardedLoadImaged(keys, site=site),
            FiniteGuardd(keys, site=site),
            _ShapeGuardd(keys, config, site=site),
            ScaleIntensityd(keys, minv=0.0, maxv=1.0),
            Resized(keys, spatial_size=size, mode="bilinear", anti_aliasing=True),
            FiniteGuardd(keys, site=site, stage="intensity scaling and resizing"),
            ToPlainTensorsd(),
        ],
        log_stats=False,  # our guards already name the file; MONAI's stats dump would bury that line
    )
