"""From listed files to samples: multi-frame DICOM expansion, conflicting labels and label bounds.

A sample is ``(image, label, frame)``: ``image`` a file or a DICOM series folder, ``frame`` the frame of a
multi-frame DICOM file (``None`` otherwise). Every frame of a multi-frame DICOM file is its own sample with the
file's label, in frame order at the file's place in the list, unless the datalist item names one ``"frame"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from medpfl_app.data.dicom_header import dicom_frame_count
from medpfl_app.errors import MedPFLError

FRAME_KEY = "frame"
"""Datalist item key naming one frame of a multi-frame DICOM file."""
SUPPORTED_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg")
MAX_INFERRED_CLASSES = 10_000
"""Most classes inferred from labels when a datalist lists no ``"classes"`` (a larger label is almost surely an ID)."""

Sample = tuple[Path, int, "int | None"]


def image_suffix(path: str | Path) -> str | None:
    """Return the supported suffix of ``path`` (lower case, ``".nii.gz"`` as one), or ``None`` if unsupported."""
    name = Path(path).name.lower()
    return next((suffix for suffix in SUPPORTED_SUFFIXES if name.endswith(suffix)), None)


def holds_dicom(folder: Path) -> bool:
    """Whether ``folder`` directly holds a ``.dcm`` file (it is then read as one DICOM series)."""
    return any(entry.is_file() and entry.name.lower().endswith(".dcm") for entry in folder.iterdir())


def check_image_path(image: Path, context: str, *, site: str | None) -> None:
    """Refuse a listed image that does not exist, has an unsupported type, or is a folder without ``.dcm`` files.

    Args:
        image: The listed path.
        context: How the message starts, e.g. ``"datalist d.json: training[3] names"``.
        site: Site name shown in errors.
    """
    if image.is_dir():
        if not holds_dicom(image):
            raise MedPFLError(
                f"{context} the folder {image}, which holds no .dcm files (a folder is read as one DICOM series)",
                fix="name an image file, or a folder holding the .dcm slices of one series",
                site=site,
            )
        return
    if image_suffix(image) is None:
        raise MedPFLError(
            f"{context} {image}, whose file type is not supported",
            fix=f"convert it to one of {', '.join(SUPPORTED_SUFFIXES)} (DICOM files need the .dcm extension)",
            site=site,
        )
    if not image.is_file():
        raise MedPFLError(
            f"{context} {image}, which does not exist",
            fix="correct the path (relative paths resolve against the datalist's folder) or remove the item",
            site=site,
        )


def is_dicom_file(image: Path) -> bool:
    """Whether ``image`` is a ``.dcm`` file (not a series folder)."""
    return image.name.lower().endswith(".dcm") and not image.is_dir()


def expand_frames(samples: Iterable[Sample], *, site: str | None = None) -> list[tuple[int, Sample]]:
    """Replace each multi-frame DICOM file without a frame by one sample per frame; check named frames exist.

    Returns:
        ``(entry, sample)`` pairs: ``entry`` is the position in ``samples`` the sample came from (for messages).

    Raises:
        MedPFLError: For an unreadable DICOM header, an implausible frame count, or a named frame outside the file.
    """
    expanded: list[tuple[int, Sample]] = []
    for entry, (image, label, frame) in enumerate(samples):
        if not is_dicom_file(image):
            expanded.append((entry, (image, label, frame)))
            continue
        try:
            frames = dicom_frame_count(image)
        except MedPFLError as error:
            raise MedPFLError(error.problem, fix=error.fix, site=site) from None
        if frame is not None and frame >= frames:
            raise MedPFLError(
                f"DICOM file {image} has {frames} frame(s); the datalist names frame {frame}",
                fix=f'use "frame": 0..{frames - 1}, or leave "frame" out to use every frame',
                site=site,
            )
        if frames == 1:
            expanded.append((entry, (image, label, None)))  # frame 0 of a single-frame file is the file
        elif frame is not None:
            expanded.append((entry, (image, label, frame)))
        else:
            expanded.extend((entry, (image, label, number)) for number in range(frames))
    return expanded


def describe(image: Path, frame: int | None) -> str:
    """A sample's name in messages: its path, plus its frame if any."""
    return str(image) if frame is None else f"{image} (frame {frame})"


def refuse_conflicting_labels(
    samples_by_split: Mapping[str, Sequence[tuple[int, Sample]]], source: Path, *, site: str | None = None
) -> None:
    """Refuse one sample (image and frame) listed twice with different labels, naming both entries.

    Args:
        samples_by_split: `expand_frames` output per split; entries are named ``split[entry]`` in the message.
        source: The datalist or folder, named in the message.
        site: Site name shown in errors.

    A whole multi-frame file and one of its frames listed separately count as the same sample for that frame.
    """
    seen: dict[tuple[Path, int | None], tuple[str, int]] = {}
    for split, samples in samples_by_split.items():
        for entry, (image, label, frame) in samples:
            where = f"{split}[{entry}]"
            key = (image, frame)
            if key in seen and seen[key][1] != label:
                first, first_label = seen[key]
                raise MedPFLError(
                    f"site data {source}: {describe(image, frame)} is listed twice with conflicting labels: "
                    f"{first_label} ({first}) and {label} ({where})",
                    fix="keep one entry per image with its correct label (an image cannot belong to two classes)",
                    site=site,
                )
            seen.setdefault(key, (where, label))


def inferred_class_count(labels: Sequence[tuple[str, int]], source: Path, *, site: str | None = None) -> int:
    """Number of classes implied by labels when no class list is given: the largest label plus one.

    Args:
        labels: ``(where, label)`` pairs, ``where`` naming the entry in messages.
        source: The datalist, named in messages.
        site: Site name shown in errors.

    Raises:
        MedPFLError: For a negative label, or one of `MAX_INFERRED_CLASSES` or more (such a label is usually a
            patient or study ID in the label column; inferring ``label + 1`` classes from it would exhaust memory).
    """
    for where, label in labels:
        if label < 0 or label >= MAX_INFERRED_CLASSES:
            raise MedPFLError(
                f"datalist {source}: label {label} of {where} is "
                + ("negative" if label < 0 else f"{MAX_INFERRED_CLASSES} or more, and the datalist lists no classes"),
                fix="use labels 0..num_classes-1 (one per class) and list the class names under 'classes', e.g. "
                '"classes": ["no_tumor", "glioma"]',
                site=site,
            )
    return max((label for _, label in labels), default=-1) + 1
