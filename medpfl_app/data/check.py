"""Check a site's data before a run: every listed file's header, stored pixels and model input, and the site as a whole.

`check_site_data` is the pre-flight behind ``medpfl data check``. For every listed image it reads the header
(refusing files that declare more than `medpfl_app.data.rules.MAX_PIXELS_PER_FILE` pixels before decoding
them), the stored pixel values, and the model input exactly as training builds it (`build_transforms`), and turns
each failure into an error row naming the file and the fix instead of stopping. Then it looks at the site as a
whole (duplicates, class balance; `medpfl_app.data.findings`). `check_finite` lives here too: the transforms use it
to refuse NaN/Inf pixels at load time.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medpfl_app.data.agreement import pixel_agreement, render_planes
from medpfl_app.data.check_report import DataCheckReport as DataCheckReport  # re-exported (medpfl_app.data)
from medpfl_app.data.config import DataConfig
from medpfl_app.data.datalist import SiteData, load_site_data
from medpfl_app.data.findings import class_findings, duplicate_findings
from medpfl_app.data.headers import ImageFormat, image_format, read_header, read_stored_pixels
from medpfl_app.data.preflight import CheckStatus, FileCheck, Issue, Loaded, StoredPixels, file_row
from medpfl_app.data.rules import READ_FIX, assess_file, far_from_input_size, pixel_limit, size_guard
from medpfl_app.errors import MedPFLError

#: The report's former name, kept for existing imports.
DataCheckSummary = DataCheckReport


NONFINITE_FIX = (
    "re-export the image; NaN/Inf pixels cannot be trained on (nor can values beyond about ±3.4e38, which overflow "
    "to Inf as float32), or remove the file from the site's data"
)


def check_finite(array: Any, path: str | Path, *, site: str | None = None, stage: str | None = None) -> None:
    """Refuse an image holding NaN, +Inf or -Inf values, naming its file.

    One such pixel turns the whole image into NaN at min–max scaling, then the site's update and, once aggregated,
    the global model. Integer and boolean arrays are always finite and pass.

    Args:
        array: The pixels: a NumPy array, or a CPU torch tensor / MONAI ``MetaTensor``, of any shape.
        path: The file the pixels came from, shown in the error.
        site: Site name shown in the error.
        stage: ``None`` when ``array`` holds the pixels as read from the file; otherwise the pipeline steps they went
            through (e.g. ``"intensity scaling and resizing"``), named in the error.

    Raises:
        MedPFLError: If any value is not finite; the problem counts NaN, +Inf and -Inf and gives the index of the
            first one, the fix is `NONFINITE_FIX`.

    Examples:
        >>> check_finite(np.zeros((1, 4, 4), dtype=np.float32), "a.nii.gz")
        >>> try:
        ...     check_finite(np.array([[0.0, np.nan], [np.inf, 1.0]]), "b.nii.gz", site="site-1")
        ... except MedPFLError as error:
        ...     print(error.problem)
        image b.nii.gz has 2 NaN/Inf pixel values (1 NaN, 1 +Inf; the first at index (0, 1))
    """
    if hasattr(array, "as_tensor"):  # MONAI MetaTensor → plain tensor
        array = array.as_tensor()
    if hasattr(array, "detach"):  # torch tensor; half/bfloat16 have no NumPy twin, float keeps NaN and ±Inf
        array = array.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.floating) or bool(np.isfinite(values).all()):
        return
    counts = {
        "NaN": int(np.isnan(values).sum()),
        "+Inf": int(np.isposinf(values).sum()),
        "-Inf": int(np.isneginf(values).sum()),
    }
    total = sum(counts.values())
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)
    first = tuple(int(position) for position in np.argwhere(~np.isfinite(values))[0])
    after = f" after {stage}" if stage else ""
    raise MedPFLError(
        f"image {path} has {total} NaN/Inf pixel value{'s' if total != 1 else ''}{after} "
        f"({kinds}; the first at index {first})",
        fix=NONFINITE_FIX,
        site=site,
    )


def check_site_data(
    source: str | Path, config: DataConfig | None = None, *, site: str | None = None, progress: bool = False
) -> DataCheckReport:
    """Check every image of a site's data and the data as a whole; never stops at a bad file.

    Args:
        source: The site's datalist JSON or class-per-folder root.
        config: The site's data settings (image size, channels, slicing); defaults when ``None``.
        site: Site name shown in the report and errors.
        progress: Show a progress bar on stderr.

    Returns:
        The report: one `FileCheck` row per listed file (ok / warning / error, with message and fix), site findings
        (duplicates, class balance) and class counts. ``report.exit_code()`` is 1 when any file or finding is an
        error.

    Raises:
        MedPFLError: Only when the data description itself cannot be used (missing source, invalid datalist, a
            listed file that does not exist): then there is no file list to check.
    """
    from tqdm.auto import tqdm

    from medpfl_app.data.transforms import build_transforms

    config = config or DataConfig()
    site_data = _load_description(source, site=site)
    transform = build_transforms(config, train=False, site=site)
    items = [("training", item) for item in site_data.training]
    items += [("validation", item) for item in site_data.validation]
    rows: list[FileCheck] = []
    shapes: list[tuple[int, ...]] = []
    decoded = _LastDecoded()
    for split, item in tqdm(items, desc="checking images", unit="img", disable=not progress):
        row, shape = _check_file(item, split, transform, config, decoded)
        rows.append(row)
        shapes.extend([shape] if shape is not None else [])
    root = site_data.source.parent if site_data.source.is_file() else site_data.source
    report = DataCheckReport(
        source=site_data.source,
        root=root,
        class_names=site_data.class_names,
        training_counts=site_data.class_counts("training"),
        validation_counts=site_data.class_counts("validation"),
        image_shape=shapes[0] if shapes else (config.in_channels, config.image_size, config.image_size),
        rows=tuple(rows),
        site=site,
    )
    findings = duplicate_findings(rows, name=report.sample_name)
    findings += class_findings(site_data.class_names, report.training_counts)
    return dataclasses.replace(report, findings=tuple(findings))


def _load_description(source: str | Path, *, site: str | None) -> SiteData:
    """`load_site_data`, with any unexpected failure (a huge label, a deeply nested JSON) as one clear error."""
    try:
        return load_site_data(source, site=site)
    except MedPFLError:
        raise
    except Exception as error:  # MemoryError, RecursionError, …: the description is unusable, say where
        raise MedPFLError(
            f"cannot read the site data description {source}: {_cause(error)}",
            fix="check the datalist: image paths must exist and labels must be integers 0..N-1 for N classes "
            '(list the classes, e.g. "classes": ["no_tumor", "glioma"])',
            site=site,
        ) from None


def _check_file(
    item: Mapping[str, Any],
    split: str,
    transform: Callable[[dict[str, Any]], Any],
    config: DataConfig,
    decoded: _LastDecoded,
) -> tuple[FileCheck, tuple[int, ...] | None]:
    """One item's row, and the model input shape when the transforms produced one."""
    path, label, frame = str(item["image"]), int(item["label"]), item.get("frame")
    frame = frame if isinstance(frame, int) and not isinstance(frame, bool) else None
    fmt = image_format(path)
    named: dict[str, Any] = {"fmt": fmt, "frame": frame}
    try:
        header = read_header(path, slice_axis=config.slice_axis)
    except Exception as error:  # any library's complaint about a malformed header becomes this file's error row
        problem = Issue(CheckStatus.ERROR, f"cannot read the header of {path}: {_cause(error)}", READ_FIX)
        return file_row(path, split, label, **named, issues=[problem]), None
    too_large = size_guard(header, path, limit=pixel_limit(config))
    if too_large is not None:
        return file_row(
            path, split, label, **named, header=header, issues=[too_large], image_size=config.image_size
        ), None
    stored = decoded.stored(path, header.format, frame)
    loaded = _load(transform, dict(item), path)
    if loaded.error is None and not loaded.blank and stored is not None and not stored.nonfinite:
        loaded = _compare_with_file(loaded, path, header.format, config, frame)
    issues = assess_file(header, stored, loaded, config, path)
    row = file_row(
        path,
        split,
        label,
        **named,
        header=header,
        stored=stored,
        loaded=loaded,
        issues=issues,
        image_size=config.image_size,
        far_from_input_size=far_from_input_size(header.in_plane, config.image_size),
    )
    return row, loaded.shape


class _LastDecoded:
    """The stored pixels of the last file read: the items of a multi-frame file (one per frame) decode it once."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._values: np.ndarray | None = None

    def stored(self, path: str, fmt: ImageFormat, frame: int | None) -> StoredPixels | None:
        """`StoredPixels` of the file, or of its ``frame``; ``None`` if this check cannot decode it itself."""
        if path != self._path:
            self._path, self._values = path, None
            try:
                self._values = np.asarray(read_stored_pixels(path, fmt))
            except Exception:  # e.g. a codec only the training loader has; the loader's own outcome is reported
                return None
        if self._values is None:
            return None
        values = self._values
        if frame is not None:
            if values.ndim < 3 or not 0 <= frame < len(values):
                return None
            values = values[frame]
        try:
            return _describe(np.ascontiguousarray(values))
        except Exception:  # an exotic dtype (structured, object) has no range or byte view
            return None


def _describe(values: np.ndarray) -> StoredPixels:
    """Range, NaN/Inf count and content hash of stored pixel values."""
    digest = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
    # An ndarray is a buffer; NumPy's stubs declare __buffer__ only for Python >= 3.12.
    digest.update(values.view(np.uint8).reshape(-1) if values.size else b"")  # type: ignore[arg-type]
    if values.dtype.kind not in "biuf":
        return StoredPixels(None, None, 0, digest.hexdigest())
    kept = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    nonfinite = int(values.size - kept.size)
    if kept.size == 0:
        return StoredPixels(None, None, nonfinite, digest.hexdigest())
    return StoredPixels(float(kept.min()), float(kept.max()), nonfinite, digest.hexdigest())


def _load(transform: Callable[[dict[str, Any]], Any], item: dict[str, Any], path: str) -> Loaded:
    """Run the training transforms on one item; any failure becomes an error naming the file."""
    try:
        image = transform(item)["image"]
        model_input = np.asarray(image.detach().cpu().numpy() if hasattr(image, "detach") else image)
    except MedPFLError as error:
        named = error.problem if path in error.problem else f"{path}: {error.problem}"
        return Loaded(error=Issue(CheckStatus.ERROR, named, error.fix))
    except Exception as error:  # a loader bug or a library's raw exception: still one row, never a traceback
        return Loaded(
            error=Issue(CheckStatus.ERROR, f"the training pipeline cannot load {path}: {_cause(error)}", READ_FIX)
        )
    blank = bool(model_input.max() == model_input.min())
    return Loaded(shape=tuple(int(size) for size in model_input.shape), blank=blank, model_input=model_input)


def _compare_with_file(loaded: Loaded, path: str, fmt: ImageFormat, config: DataConfig, frame: int | None) -> Loaded:
    """Add how well the model input matches the picture rendered here from the file (`pixel_agreement`)."""
    try:
        planes = render_planes(
            path,
            fmt,
            slice_axis=config.slice_axis,
            slice_index=config.slice_index,
            volume_index=getattr(config, "volume_index", None),
            frame=frame,
        )
        agreement = pixel_agreement(loaded.model_input, planes)
    except Exception:  # a file this check cannot render itself is judged by the loader's outcome alone
        return loaded
    return dataclasses.replace(loaded, agreement=agreement)


def _cause(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause, at most 300 characters."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]
