"""The data check's per-file rules: from a file's header, stored pixels and model input to ok / warning / error.

The rules are pure: they take what `medpfl_app.data.headers` read from the file and what the training transforms
made of it. An error means the site would train on wrong pixels or cannot read the file; a warning means the data is
usable but probably not what was meant.

Thresholds (named constants, so a site can read what is enforced):

* `MAX_PIXELS_PER_FILE` — the loaders' default decompression-bomb limit (`DataConfig.max_megapixels`, 256 million)
  in pixels (voxels × frames; channels not counted) per file, checked on the header before any decoding: a
  512×512×900 CT volume passes, a forged 65535×65535 DICOM header or a PNG declaring 100000×100000 pixels is refused
  without allocating them. A site's own ``max_megapixels`` replaces it, so the check and training refuse the same
  files.
* `medpfl_app.data.preflight.MIN_IMAGE_SIDE` — 8 pixels, the training loader's own minimum: a smaller 2-D image
  (1×1, 4×300) is a thumbnail, icon or placeholder, not anatomy; resizing smears it into bands.
* `MAX_UPSCALE` — 4×: an image whose shorter side is enlarged more than this to reach ``image_size`` gives the model
  interpolation, not detail (warning).
* `MAX_DOWNSCALE` — 8×: an image whose longer side is shrunk more than this loses fine structure (warning).
* `medpfl_app.data.agreement.MIN_PIXEL_AGREEMENT` — 0.8: the model input must correlate at least this well with the
  picture this check renders from the file itself, or the loader is reading it wrong (error).
"""

from __future__ import annotations

from medpfl_app.data.agreement import MIN_PIXEL_AGREEMENT
from medpfl_app.data.config import DEFAULT_MAX_MEGAPIXELS, DataConfig
from medpfl_app.data.headers import HeaderFacts, ImageFormat
from medpfl_app.data.preflight import MIN_IMAGE_SIDE, CheckStatus, Issue, Loaded, StoredPixels

MAX_PIXELS_PER_FILE = DEFAULT_MAX_MEGAPIXELS * 1_000_000
MAX_UPSCALE = 4.0
MAX_DOWNSCALE = 8.0

_CONVERT_FIX = (
    "convert the file to single-frame grayscale PNG or NIfTI (e.g. with dcm2niix or an image editor), or remove it "
    "from the site's data"
)
READ_FIX = (
    "replace or re-export the file (check that it opens in a DICOM/NIfTI/image viewer), convert it to NIfTI or PNG, "
    "or remove it from the site's data"
)


def pixel_limit(config: DataConfig) -> int:
    """The size guard's limit: the site's ``max_megapixels`` setting, the same limit its training loaders apply."""
    return int(config.max_megapixels) * 1_000_000


def size_guard(header: HeaderFacts, path: str, *, limit: int = MAX_PIXELS_PER_FILE) -> Issue | None:
    """Refuse a file whose header declares more than ``limit`` pixels, before it is decoded."""
    if header.pixels <= limit:
        return None
    geometry = "×".join(str(size) for size in header.shape)
    return Issue(
        CheckStatus.ERROR,
        f"{path} declares {header.pixels:,} pixels ({geometry}), above the limit of {limit:,} per file; not "
        "decoded (a forged header or decompression bomb, or a volume far larger than a 2-D model needs)",
        "crop or resample the image (or export the slices as separate files); if the header is wrong, re-export the "
        "file",
    )


def assess_file(
    header: HeaderFacts, stored: StoredPixels | None, loaded: Loaded, config: DataConfig, path: str
) -> list[Issue]:
    """Apply the per-file rules to one file that passed `size_guard`.

    Args:
        header: The file's header facts.
        stored: Facts about its stored pixels, ``None`` if this check could not decode them itself.
        loaded: What the training transforms made of it.
        config: The site's data settings (``image_size``, ``volume_index``).
        path: The file, named in every message.

    Returns:
        The problems found, worst first; empty when the file is fine. When the loader refused the file only errors
        are kept: size warnings about an unusable file are beside the point.
    """
    issues = [loaded.error] if loaded.error is not None else []
    short, long = min(header.in_plane), max(header.in_plane)
    if short < MIN_IMAGE_SIDE:
        if loaded.error is None:  # a loader error already names the size
            issues.append(
                Issue(
                    CheckStatus.ERROR,
                    f"{path} is a {header.in_plane[0]}×{header.in_plane[1]}-pixel image; under {MIN_IMAGE_SIDE} pixels "
                    "a side it holds no anatomy to learn from",
                    "re-export the full-resolution image (a thumbnail or a 1-pixel placeholder was exported), or remove "
                    "it",
                )
            )
    else:
        issues += _picture_issues(header, stored, loaded, path)
        issues += _resize_issues(short, long, config.image_size, path)
    if header.format is ImageFormat.NIFTI and header.frames > 1 and loaded.error is None:
        index = getattr(config, "volume_index", None)
        issues.append(
            Issue(
                CheckStatus.WARNING,
                f"{path} holds {header.frames} volumes ({'×'.join(map(str, header.shape))}); the model is trained on "
                f"one 2-D slice of {'one volume' if index is None else f'volume {index}'} and the others are ignored",
                "store each volume (time point, echo) that is a separate sample as its own file",
            )
        )
    if loaded.error is not None:
        issues = [issue for issue in issues if issue.status is CheckStatus.ERROR]
    return sorted(issues, key=lambda issue: -issue.status.severity)


def _picture_issues(header: HeaderFacts, stored: StoredPixels | None, loaded: Loaded, path: str) -> list[Issue]:
    """A blank file, a blank model input, or a model input that does not show the file's picture."""
    if stored is not None and stored.constant:
        return [
            Issue(
                CheckStatus.ERROR,
                f"{path} is blank: every stored pixel is {stored.minimum:g}",
                "re-export the image (the export wrote no pixel data), or remove it",
            )
        ]
    if loaded.blank:
        volume = header.format is ImageFormat.DICOM_SERIES or (
            header.format is ImageFormat.NIFTI and len(header.shape) >= 3 and min(header.shape[:3]) > 1
        )
        return [
            Issue(
                CheckStatus.ERROR,
                f"{path}: the 2-D image the model gets is blank (one value everywhere), although the file is not",
                "choose slice_axis / slice_index so that the slice cut from the volume shows anatomy, or remove the file"
                if volume
                else _CONVERT_FIX,
            )
        ]
    if loaded.agreement is not None and loaded.agreement < MIN_PIXEL_AGREEMENT:
        kind = header.photometric or str(header.format)
        return [
            Issue(
                CheckStatus.ERROR,
                f"{path}: the image the model gets does not show the picture stored in the file (best correlation "
                f"{loaded.agreement:.2f}, below {MIN_PIXEL_AGREEMENT}); the loader misreads this {kind} file (frames "
                "stacked into one strip, colour planes or palette indices read as gray levels, or MONOCHROME1 left "
                "inverted)",
                _CONVERT_FIX,
            )
        ]
    return []


def far_from_input_size(in_plane: tuple[int, int], image_size: int) -> bool:
    """Whether resizing ``in_plane`` to ``image_size`` enlarges beyond `MAX_UPSCALE` or shrinks beyond `MAX_DOWNSCALE`."""
    short, long = min(in_plane), max(in_plane)
    return short > 0 and (image_size / short > MAX_UPSCALE or long / image_size > MAX_DOWNSCALE)


def _resize_issues(short: int, long: int, image_size: int, path: str) -> list[Issue]:
    issues = []
    if image_size / short > MAX_UPSCALE:
        issues.append(
            Issue(
                CheckStatus.WARNING,
                f"{path} is enlarged {image_size / short:.1f}× (shorter side {short} px → image_size {image_size}); "
                "the model sees interpolation, not detail",
                f"use a smaller image_size (≤ {int(short * MAX_UPSCALE)}) or higher-resolution images",
            )
        )
    if long / image_size > MAX_DOWNSCALE:
        issues.append(
            Issue(
                CheckStatus.WARNING,
                f"{path} is shrunk {long / image_size:.1f}× (longer side {long} px → image_size {image_size}); fine "
                "structure is lost",
                f"use a larger image_size (≥ {-(-long // int(MAX_DOWNSCALE))}) or crop to the region of interest",
            )
        )
    return issues
