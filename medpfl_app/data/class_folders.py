"""Class-per-folder trees: ``root/<class>/<image>``, optionally split into ``training/`` and ``validation/``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medpfl_app.data.sample_items import Sample, check_image_path, holds_dicom
from medpfl_app.errors import MedPFLError

DATALIST_NAME = "datalist.json"
SPLIT_FOLDERS = ("training", "validation")
VALIDATION_FRACTION = 0.2


def scan_class_folders(root: Path, *, site: str | None = None) -> tuple[list[Sample], list[Sample], tuple[str, ...]]:
    """List the files of a class-per-folder tree as ``(training, validation, class_names)``.

    ``root/<class>/<file>`` is split per class 80/20 (`VALIDATION_FRACTION`, fixed seed);
    ``root/training/<class>/…`` and ``root/validation/<class>/…`` give the split explicitly. A sub-folder of a class
    folder holding ``.dcm`` files is one DICOM series sample; any other sub-folder is refused.

    Raises:
        MedPFLError: For an empty tree, validation classes without training folder, unsupported files or sub-folders.
    """
    split_dirs = {split: root / split for split in SPLIT_FOLDERS}
    if split_dirs["training"].is_dir():
        class_names = _class_folders(split_dirs["training"], site=site)
        training = _scan_tree(split_dirs["training"], class_names, site=site)
        validation: list[Sample] = []
        if split_dirs["validation"].is_dir():
            val_names = _class_folders(split_dirs["validation"], site=site, allow_empty=True)
            extra = sorted(set(val_names) - set(class_names))
            if extra:
                raise MedPFLError(
                    f"validation class folder(s) {', '.join(extra)} in {split_dirs['validation']} have no training "
                    f"folder in {split_dirs['training']}",
                    fix="use the same class folder names under training/ and validation/",
                    site=site,
                )
            validation = _scan_tree(split_dirs["validation"], class_names, site=site)
    else:
        class_names = _class_folders(root, site=site)
        training, validation = _split(_scan_tree(root, class_names, site=site))
    return training, validation, class_names


def _class_folders(root: Path, *, site: str | None, allow_empty: bool = False) -> tuple[str, ...]:
    names = tuple(
        sorted(
            entry.name
            for entry in root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in SPLIT_FOLDERS
        )
    )
    if not names and not allow_empty:
        raise MedPFLError(
            f"data folder {root} is empty: it has no class sub-folders (and no {DATALIST_NAME})",
            fix=f"put the images in one sub-folder per class (e.g. {root}/glioma/img001.nii.gz), or add a "
            f"{DATALIST_NAME}",
            site=site,
        )
    return names


def _scan_tree(root: Path, class_names: Sequence[str], *, site: str | None) -> list[Sample]:
    found: list[Sample] = []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue  # .DS_Store, editor swap files
            if entry.is_dir() and not holds_dicom(entry):
                raise MedPFLError(
                    f"class folder {folder} contains a sub-folder {entry.name} without .dcm files; images must sit "
                    "directly in it (a sub-folder is read as one DICOM series)",
                    fix=f"move the images of {entry} up into {folder} (one 2-D image or 3-D volume per file)",
                    site=site,
                )
            check_image_path(entry, f"class folder {folder} contains", site=site)
            found.append((entry.resolve(), label, None))
    return found


def _split(items: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """Per class, hold out round(20 %) of the sorted files, chosen by a fixed seed, keeping ≥1 for training."""
    rng = np.random.default_rng(0)
    training: list[Sample] = []
    validation: list[Sample] = []
    by_label: dict[int, list[Sample]] = {}
    for item in items:
        by_label.setdefault(item[1], []).append(item)
    for label in sorted(by_label):
        group = by_label[label]
        held_out = min(int(round(VALIDATION_FRACTION * len(group))), len(group) - 1)
        chosen = set(rng.permutation(len(group))[:held_out].tolist())
        for position, item in enumerate(group):
            (validation if position in chosen else training).append(item)
    return training, validation
