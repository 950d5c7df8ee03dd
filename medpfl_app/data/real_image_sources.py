"""The real MRI files that ship inside installed packages, and how each is cut into tissue-filled 2-D windows.

`medpfl_app.data.samples` turns these windows into the multi-site sample set.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:
    from nibabel.spatialimages import SpatialImage

#: The fraction of a window's pixels that must be tissue for it to be kept; tissue is any pixel above 10 % of its
#: slice's 99th percentile (a percentile, not the maximum: bright CSF and vessels would hide grey matter).
MIN_TISSUE_FRACTION = 0.6
_INSTALL_FIX = "install the packages that carry the images: pip install 'medpfl_app[realdata]' (dipy) and nibabel"


@dataclass(frozen=True)
class RealImageSource:
    """One real image file inside an installed package and how it is cut into 2-D windows.

    Attributes:
        class_name: The label given to every window of this source (the source's contrast and orientation).
        package: The installed package that ships the file.
        resource: The file's path inside that package.
        description: What the image is, for the manifest.
        window: Side of the square windows in source pixels (the slice's shorter side at most).
        stride: Step between windows in source pixels.
    """

    class_name: str
    package: str
    resource: str
    description: str
    window: int
    stride: int

    def path(self) -> Path:
        """The file on disk, or a `MedPFLError` naming the missing package or file."""
        try:
            root = resources.files(self.package)
        except ModuleNotFoundError:
            raise MedPFLError(
                f"the real sample images need the Python package {self.package!r}, which is not installed",
                fix=_INSTALL_FIX,
            ) from None
        path = Path(str(root.joinpath(self.resource)))
        if not path.is_file():
            raise MedPFLError(f"{self.package} has no bundled file {self.resource} ({path})", fix=_INSTALL_FIX)
        return path

    def slices(self) -> list[np.ndarray]:
        """The source's 2-D slices as float64 arrays, scaled by the whole source's maximum to [0, 1]."""
        path = self.path()
        if path.suffix == ".npy":
            volume = np.load(path, allow_pickle=False).astype(np.float64)[..., None]
        else:
            import nibabel as nib

            # nib.load is typed as any file-based image; every NIfTI image class is a SpatialImage
            volume = np.asarray(cast("SpatialImage", nib.load(path)).dataobj, dtype=np.float64)
            volume = volume.reshape(*volume.shape[:3], -1)[..., 0]  # first time point / b-value of 4-D files
        volume = np.clip(volume, 0.0, None) / max(float(volume.max()), 1e-12)
        return [volume[:, :, index] for index in range(volume.shape[2])]


#: The sources, in label order.
SAMPLE_SOURCES: tuple[RealImageSource, ...] = (
    RealImageSource(
        "t1_coronal",
        "dipy",
        "data/files/t1_coronal_slice.npy",
        "T1-weighted coronal brain slice, 256x256 (dipy test data)",
        window=96,
        stride=16,
    ),
    RealImageSource(
        "dwi_b0_axial",
        "dipy",
        "data/files/S0_10slices.nii.gz",
        "b=0 diffusion-weighted axial brain slices, 128x128x10 (dipy test data)",
        window=64,
        stride=16,
    ),
    RealImageSource(
        "epi_axial",
        "nibabel",
        "tests/data/example4d.nii.gz",
        "functional gradient-echo EPI axial brain slices, 128x96x24, first time point (nibabel test data)",
        window=64,
        stride=16,
    ),
)
SAMPLE_CLASSES: tuple[str, ...] = tuple(source.class_name for source in SAMPLE_SOURCES)


def source_windows(source: RealImageSource, *, image_size: int = 64) -> np.ndarray:
    """Every tissue-filled window of ``source``, resized to ``image_size``: float32 ``(N, image_size, image_size)``.

    Windows are taken slice by slice, top to bottom and left to right in steps of ``source.stride``; a window is kept
    when at least `MIN_TISSUE_FRACTION` of its pixels are tissue (above 10 % of its slice's 99th percentile).
    """
    from skimage.transform import resize

    windows = []
    for slice_ in source.slices():
        side = min(source.window, *slice_.shape)
        level = float(np.percentile(slice_, 99))
        tissue = slice_ > 0.1 * level if level > 0 else np.zeros_like(slice_, dtype=bool)
        for top in range(0, slice_.shape[0] - side + 1, source.stride):
            for left in range(0, slice_.shape[1] - side + 1, source.stride):
                if tissue[top : top + side, left : left + side].mean() < MIN_TISSUE_FRACTION:
                    continue
                window = slice_[top : top + side, left : left + side]
                resized = resize(window, (image_size, image_size), order=1, anti_aliasing=side > image_size)
                windows.append(np.clip(resized, 0.0, 1.0).astype(np.float32))
    return np.stack(windows) if windows else np.zeros((0, image_size, image_size), np.float32)
