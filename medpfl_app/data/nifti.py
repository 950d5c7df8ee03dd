"""NIfTI (``.nii``, ``.nii.gz``) pixels as MedPFL reads them: ``float32 [1, X, Y]`` or ``[1, X, Y, Z]``.

Orientation: every image is reoriented to the closest canonical (RAS+) orientation with nibabel's
``as_closest_canonical`` (axis flips and permutations only, no resampling; a 2-D image gets the same reorientation
as the one-slice volume its affine describes), so a file stored with a flipped or
permuted affine gives the same array as its canonical twin. After that, axis 0 runs left→right, axis 1
posterior→anterior and axis 2 inferior→superior: the default ``DataConfig.slice_axis = 2`` cuts axial slices, and
``slice_index = None`` takes the middle one (the transforms' slice policy).

Values: ``get_fdata`` as float32, so the header's ``scl_slope``/``scl_inter`` are applied; float64 values beyond
float32's range become ±Inf and are refused by the NaN/Inf guard.

Dimensions: 2-D and 3-D images are used as they are. A 4-D image (X, Y, Z, T) is refused unless
``DataConfig.volume_index`` picks one of its T volumes; a 4-D image with T = 1 is a 3-D image. Five or more
dimensions (e.g. vector-valued images) are refused. Before any voxel is read, the header's shape (of the volume
used) is checked against the ``max_pixels`` decompression-bomb limit.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from medpfl_app.data.dicom_header import CORRUPT_FIX
from medpfl_app.errors import MedPFLError


def read_nifti_header(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily (header only; voxels are read on demand)."""
    try:
        image = nib.load(str(path))
    except Exception as error:  # nibabel raises ImageFileError, OSError, EOFError, zlib/gzip errors...
        raise MedPFLError(f"cannot read image file {path}: {type(error).__name__}: {error}", fix=CORRUPT_FIX) from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MedPFLError(f"cannot read image file {path}: it is not a NIfTI image", fix=CORRUPT_FIX)
    return image


def select_volume(image: nib.Nifti1Image, path: str | Path, volume_index: int | None) -> nib.Nifti1Image:
    """Return the 2-D/3-D image to use: ``image`` itself, or volume ``volume_index`` of a 4-D image.

    Raises:
        MedPFLError: For a 4-D image without ``volume_index`` or with one out of range, and for 5-D or more.
    """
    shape = tuple(int(size) for size in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        return image.slicer[..., 0]
    if len(shape) <= 3:
        return image
    if len(shape) > 4:
        raise MedPFLError(
            f"NIfTI image {path} has {len(shape)} dimensions {shape}; MedPFL reads 2-D, 3-D and 4-D images",
            fix="split it into 3-D volumes (e.g. with fslsplit or nibabel) and list the one to use",
        )
    if volume_index is None:
        raise MedPFLError(
            f"NIfTI image {path} is 4-D {shape}: {shape[3]} volumes, and no volume is chosen",
            fix=f"set the data setting volume_index to the volume to use (0..{shape[3] - 1}), or split the file into "
            "3-D volumes",
        )
    if volume_index >= shape[3]:
        raise MedPFLError(
            f"NIfTI image {path} has {shape[3]} volumes; volume_index {volume_index} is outside it",
            fix=f"set volume_index to 0..{shape[3] - 1}",
        )
    return image.slicer[..., volume_index]


def load_nifti_pixels(path: str | Path, *, volume_index: int | None = None, max_pixels: int) -> np.ndarray:
    """Load a NIfTI image as ``float32 [1, *spatial]`` in closest canonical orientation (see the module docstring).

    Raises:
        MedPFLError: On an unreadable file, an unusable number of dimensions, or more voxels than ``max_pixels``.
    """
    image = select_volume(read_nifti_header(path), path, volume_index)
    voxels = int(np.prod(image.shape))
    if voxels > max_pixels:
        raise MedPFLError(
            f"NIfTI image {path} has {'×'.join(str(size) for size in image.shape)} = {voxels:,} voxels, "
            f"over the limit of {max_pixels:,} (max_megapixels, a decompression-bomb guard)",
            fix="downsample or crop the volume before use, or raise the data setting max_megapixels if the size is "
            "genuine and the site has the memory",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # float64 beyond float32 becomes Inf: refused later
            pixels = _canonical_pixels(image)
    except Exception as error:
        raise MedPFLError(f"cannot read image file {path}: {type(error).__name__}: {error}", fix=CORRUPT_FIX) from None
    return np.ascontiguousarray(pixels)[None]


def _canonical_pixels(image: nib.Nifti1Image) -> np.ndarray:
    """Voxels in closest canonical orientation: ``as_closest_canonical`` for 3-D images; a 2-D image is reoriented
    as the one-slice volume its 4×4 affine describes (the same flips/permutation), then squeezed back to 2-D."""
    if len(image.shape) == 3:
        canonical: np.ndarray = nib.as_closest_canonical(image).get_fdata(dtype=np.float32)
        return canonical
    orientation: np.ndarray = nib.io_orientation(image.affine)
    pixels: np.ndarray = nib.apply_orientation(image.get_fdata(dtype=np.float32)[..., None], orientation)
    return np.squeeze(pixels, axis=int(orientation[2, 0]))
