"""The data check's contracts: one `FileCheck` row per listed image, with its facts, outcome and fix.

`Issue`, `StoredPixels` and `Loaded` carry what the per-file rules (`medpfl_app.data.rules`) need and produce;
`file_row` assembles them into the row that the report prints and writes as JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict

from medpfl_app.data.headers import HeaderFacts, ImageFormat

#: Smallest rows/columns of a usable 2-D image; `medpfl_app.data.rules` explains the choice.
MIN_IMAGE_SIDE = 8


class CheckStatus(StrEnum):
    """Outcome of one check, ordered by severity."""

    OK = "ok"
    WARNING = "warning"
    ERROR = "error"

    @property
    def severity(self) -> int:
        """0 for ok, 1 for a warning, 2 for an error."""
        return (CheckStatus.OK, CheckStatus.WARNING, CheckStatus.ERROR).index(self)


@dataclass(frozen=True)
class Issue:
    """One problem found with a file: how bad, what, and what to do."""

    status: CheckStatus
    message: str
    fix: str


@dataclass(frozen=True)
class StoredPixels:
    """Facts about the values stored in a file (`medpfl_app.data.headers.read_stored_pixels`).

    Attributes:
        minimum: Smallest finite value, ``None`` if there is none.
        maximum: Largest finite value, ``None`` if there is none.
        nonfinite: Number of NaN/±Inf values.
        digest: SHA-256 of dtype, shape and bytes: equal digests mean identical pixel content.
    """

    minimum: float | None
    maximum: float | None
    nonfinite: int
    digest: str

    @property
    def constant(self) -> bool:
        """Whether every finite stored value is the same."""
        return self.minimum is not None and self.minimum == self.maximum


@dataclass(frozen=True)
class Loaded:
    """What the training transforms made of a file, or the error they raised.

    Attributes:
        shape: The model input's shape ``(C, H, W)``.
        blank: Whether the model input has one value everywhere.
        agreement: Best correlation of the model input with the file's picture
            (`medpfl_app.data.agreement.pixel_agreement`); ``None`` when not compared.
        error: The loader's error.
        model_input: The model input itself (NumPy), kept for the comparison with the file.
    """

    shape: tuple[int, ...] | None = None
    blank: bool = False
    agreement: float | None = None
    error: Issue | None = None
    model_input: Any = dataclasses.field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class FileCheck:
    """One row of the data check: one listed image file.

    Attributes:
        path: The image file (absolute).
        split: ``"training"`` or ``"validation"``.
        label: Its class index.
        frame: The frame of a multi-frame DICOM file the item names (one sample per frame), else ``None``.
        format: File format by suffix.
        shape: Stored shape from the header (see `HeaderFacts.shape`); ``None`` if the header is unreadable.
        frames: 2-D images per file (DICOM frames, NIfTI 4-D volumes); 1 for a plain image or 3-D volume.
        dtype: Stored sample type.
        photometric: DICOM photometric interpretation or PIL mode.
        transfer_syntax: DICOM transfer syntax.
        intensity_min: Smallest finite stored value.
        intensity_max: Largest finite stored value.
        nonfinite: Whether stored values include NaN/±Inf.
        constant: Whether the stored image, or the 2-D model input cut from it, has one value everywhere.
        tiny: Whether a side of the 2-D image is under `MIN_IMAGE_SIDE` pixels.
        resize_factor: ``image_size`` ÷ the shorter in-plane side (> 1 enlarges); ``None`` if unknown.
        far_from_input_size: Whether resizing to ``image_size`` enlarges or shrinks it beyond the check's limits
            (`medpfl_app.data.rules.far_from_input_size`).
        pixel_agreement: Best correlation of the model input with the file's own picture; ``None`` if not compared.
        status: Worst outcome of the file's checks.
        problems: What is wrong, worst first, each naming the file (empty when ok).
        fixes: What to do about it, one per distinct fix.
        digest: Hash of the stored pixels (`StoredPixels.digest`), for duplicate detection.
    """

    path: str
    split: str
    label: int
    format: str | None
    frame: int | None = None
    shape: tuple[int, ...] | None = None
    frames: int = 1
    dtype: str | None = None
    photometric: str | None = None
    transfer_syntax: str | None = None
    intensity_min: float | None = None
    intensity_max: float | None = None
    nonfinite: bool = False
    constant: bool = False
    tiny: bool = False
    resize_factor: float | None = None
    far_from_input_size: bool = False
    pixel_agreement: float | None = None
    status: CheckStatus = CheckStatus.OK
    problems: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()
    digest: str | None = None

    @property
    def message(self) -> str:
        """Every problem, joined by ``"; "`` (empty when ok)."""
        return "; ".join(self.problems)

    @property
    def fix(self) -> str:
        """Every fix, joined by ``"; "`` (empty when ok)."""
        return "; ".join(self.fixes)


class _FileFacts(TypedDict, total=False):
    """The optional `FileCheck` fields `file_row` fills from whatever was learnt about the file."""

    shape: tuple[int, ...] | None
    frames: int
    dtype: str | None
    photometric: str | None
    transfer_syntax: str | None
    tiny: bool
    resize_factor: float | None
    far_from_input_size: bool
    intensity_min: float | None
    intensity_max: float | None
    nonfinite: bool
    digest: str | None
    pixel_agreement: float | None


def file_row(
    path: str,
    split: str,
    label: int,
    *,
    fmt: ImageFormat | None,
    frame: int | None = None,
    header: HeaderFacts | None = None,
    stored: StoredPixels | None = None,
    loaded: Loaded | None = None,
    issues: Sequence[Issue] = (),
    image_size: int | None = None,
    far_from_input_size: bool = False,
) -> FileCheck:
    """Assemble one `FileCheck` row from what was learnt about the file."""
    worst = max((issue.status for issue in issues), key=lambda status: status.severity, default=CheckStatus.OK)
    facts: _FileFacts = {}
    if header is not None:
        short = min(header.in_plane)
        facts = {
            "shape": header.shape,
            "frames": header.frames,
            "dtype": header.dtype,
            "photometric": header.photometric,
            "transfer_syntax": header.transfer_syntax,
            "tiny": short < MIN_IMAGE_SIDE,
            "resize_factor": (round(image_size / short, 3) if image_size and short else None),
            "far_from_input_size": far_from_input_size,
        }
    if stored is not None:
        facts.update(
            {
                "intensity_min": stored.minimum,
                "intensity_max": stored.maximum,
                "nonfinite": stored.nonfinite > 0,
                "digest": stored.digest,
            }
        )
    constant = (stored is not None and stored.constant) or (loaded is not None and loaded.blank)
    if loaded is not None and loaded.agreement is not None:
        facts["pixel_agreement"] = round(loaded.agreement, 4)
    return FileCheck(
        path=path,
        split=split,
        label=label,
        format=(str(fmt) if fmt is not None else None),
        frame=frame,
        constant=constant,
        status=worst,
        problems=tuple(issue.message for issue in issues),
        fixes=tuple(dict.fromkeys(issue.fix for issue in issues)),
        **facts,
    )
