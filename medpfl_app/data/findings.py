"""Site-level findings of the data check: duplicated images and classes too small to learn from.

* The same file listed twice, or two files with identical stored pixels (`medpfl_app.data.preflight.FileCheck.digest`),
  are a warning when their labels agree (the image weighs double, and a copy in both training and validation
  inflates validation scores) and an error when they disagree (the model is taught two answers for one image).
* A site whose training images all carry one class is a warning (its local model learns a constant answer), as is
  each class with fewer than `MIN_IMAGES_PER_CLASS` training images.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from medpfl_app.data.preflight import CheckStatus, FileCheck

MIN_IMAGES_PER_CLASS = 2


class FindingKind(StrEnum):
    """What a site-level finding is about."""

    DUPLICATE_FILE = "duplicate_file"
    DUPLICATE_PIXELS = "duplicate_pixels"
    SINGLE_CLASS = "single_class"
    SMALL_CLASS = "small_class"


@dataclass(frozen=True)
class SiteFinding:
    """A problem of the site's data as a whole.

    Attributes:
        kind: What it is about.
        status: ``warning`` or ``error``.
        message: What is wrong, naming the files concerned.
        fix: What to do about it.
        paths: The files concerned (absolute), empty for findings about classes.
    """

    kind: FindingKind
    status: CheckStatus
    message: str
    fix: str
    paths: tuple[str, ...] = ()


def duplicate_findings(
    rows: Sequence[FileCheck], *, name: Callable[[FileCheck], str] = lambda row: row.path
) -> list[SiteFinding]:
    """Findings for samples listed more than once and for distinct samples with identical stored pixels.

    A sample is a file, or one frame of a multi-frame file (`FileCheck.frame`).

    Args:
        rows: Every sample's row, in listing order.
        name: How to show a row's sample in a message (e.g. relative to the data folder, with its frame).
    """
    findings = []
    by_sample: dict[tuple[str, int | None], list[FileCheck]] = {}
    for row in rows:
        by_sample.setdefault((row.path, row.frame), []).append(row)
    for listed in by_sample.values():
        if len(listed) > 1:
            findings.append(
                _duplicate(FindingKind.DUPLICATE_FILE, listed, name, f"{name(listed[0])} is listed {len(listed)} times")
            )
    by_digest: dict[str, list[FileCheck]] = {}
    for listed in by_sample.values():
        if listed[0].digest is not None:
            by_digest.setdefault(listed[0].digest, []).append(listed[0])
    for same in by_digest.values():
        if len(same) > 1:
            samples = _enumerate(name(row) for row in same)
            every = [entry for row in same for entry in by_sample[(row.path, row.frame)]]
            findings.append(
                _duplicate(
                    FindingKind.DUPLICATE_PIXELS, every, name, f"{len(same)} images hold identical pixels: {samples}"
                )
            )
    return findings


def _enumerate(names: Iterable[str], *, at_most: int = 6) -> str:
    shown = list(names)
    extra = f", … ({len(shown) - at_most} more)" if len(shown) > at_most else ""
    return ", ".join(shown[:at_most]) + extra


def _duplicate(
    kind: FindingKind, listed: Sequence[FileCheck], name: Callable[[FileCheck], str], what: str
) -> SiteFinding:
    labels = sorted({row.label for row in listed})
    paths = tuple(dict.fromkeys(row.path for row in listed))
    if len(labels) > 1:
        entries = _enumerate(f"{name(row)} as {row.split} label {row.label}" for row in listed)
        return SiteFinding(
            kind,
            CheckStatus.ERROR,
            f"{what}, with conflicting labels ({entries})",
            "keep one copy with its correct label and delete the others (the model cannot learn two answers for "
            "one image)",
            paths,
        )
    splits = sorted({row.split for row in listed})
    leak = "; it is in both training and validation, which inflates validation scores" if len(splits) > 1 else ""
    return SiteFinding(
        kind,
        CheckStatus.WARNING,
        f"{what}, all with label {labels[0]}{leak}",
        "keep one copy (a duplicate weighs double in training)",
        paths,
    )


def class_findings(class_names: Sequence[str], training_counts: Sequence[int]) -> list[SiteFinding]:
    """Warnings for a single-class site and for classes with fewer than `MIN_IMAGES_PER_CLASS` training images."""
    present = [name for name, count in zip(class_names, training_counts) if count > 0]
    findings = []
    if len(present) == 1:
        findings.append(
            SiteFinding(
                FindingKind.SINGLE_CLASS,
                CheckStatus.WARNING,
                f"every training image is of class {present[0]!r}: the site's local model learns one constant answer",
                "add images of the other classes if the site has them; otherwise expect this site's updates to pull the "
                "global model towards that class",
            )
        )
    small = [f"{name} ({count})" for name, count in zip(class_names, training_counts) if count < MIN_IMAGES_PER_CLASS]
    if small and len(present) > 1:
        findings.append(
            SiteFinding(
                FindingKind.SMALL_CLASS,
                CheckStatus.WARNING,
                f"class(es) with fewer than {MIN_IMAGES_PER_CLASS} training images: {', '.join(small)}",
                "add training images of those classes, or check the labels (a class with 0 images may be misspelt or "
                "mislabelled)",
            )
        )
    return findings
