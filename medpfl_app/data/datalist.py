"""Find a site's images and labels: a MONAI-style datalist JSON or a class-per-folder tree.

Only paths and labels are checked here (existence, extension, label range); pixels are read by the transforms, and
`medpfl_app.data.loaders` turns an unreadable image into a clear error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpfl_app.errors import MedPFLError

SUPPORTED_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg")
DATALIST_NAME = "datalist.json"
VALIDATION_FRACTION = 0.2
_SPLIT_FOLDERS = ("training", "validation")
_EXAMPLE_DATALIST = (
    '{"classes": ["no_tumor", "glioma"], "training": [{"image": "images/a.nii.gz", "label": 0}], '
    '"validation": [{"image": "images/b.nii.gz", "label": 1}]}'
)


@dataclass(frozen=True)
class SiteData:
    """The images and labels of one site.

    Attributes:
        training: Items ``{"image": absolute path, "label": int}`` used for local training, in a fixed order (an
            item's position is its site-local sample index).
        validation: Items of the same form used for validation.
        class_names: Name of each label, index = label.
        source: The datalist JSON or folder the items came from.
    """

    training: tuple[dict[str, Any], ...]
    validation: tuple[dict[str, Any], ...]
    class_names: tuple[str, ...]
    source: Path

    @property
    def num_classes(self) -> int:
        """Number of classes (labels are in ``[0, num_classes)``)."""
        return len(self.class_names)

    def class_counts(self, split: str = "training") -> tuple[int, ...]:
        """Number of items per class in ``split`` (``"training"`` or ``"validation"``)."""
        items = self.training if split == "training" else self.validation
        counts = [0] * self.num_classes
        for item in items:
            counts[item["label"]] += 1
        return tuple(counts)


def image_suffix(path: str | Path) -> str | None:
    """Return the supported suffix of ``path`` (lower case, ``".nii.gz"`` as one), or ``None`` if unsupported."""
    name = Path(path).name.lower()
    return next((suffix for suffix in SUPPORTED_SUFFIXES if name.endswith(suffix)), None)


def load_site_data(source: str | Path, *, site: str | None = None, num_classes: int | None = None) -> SiteData:
    """Read a site's data description and check that every file exists and every label is valid.

    Args:
        source: A datalist JSON (``{"training": [{"image", "label"}], "validation": [...], "classes": [...]}``,
            relative image paths resolve against the JSON's folder), or a folder. A folder holding a
            ``datalist.json`` is read through it; otherwise it is a class-per-folder tree
            ``root/<class>/<image>`` (optionally ``root/training/<class>/…`` and ``root/validation/<class>/…``;
            without that split a deterministic, per-class 80/20 split is made).
        site: Site name shown in error messages.
        num_classes: Expected number of classes; by default the datalist's ``"classes"``, else the largest label
            plus one (datalists) or the number of class folders (trees).

    Returns:
        The site's items and class names.

    Raises:
        MedPFLError: For a missing source, an empty folder, a missing or unsupported image file, invalid JSON, a
            label that is not an integer in ``[0, num_classes)``, or zero training images.
    """
    bad_count = isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    if num_classes is not None and bad_count:
        raise MedPFLError(f"num_classes must be a positive integer, got {num_classes!r}", fix="pass num_classes >= 1")
    path = Path(source).expanduser()
    if not path.exists():
        raise MedPFLError(
            f"site data source {path} does not exist",
            fix="point the site data configuration's 'datalist' at an existing datalist JSON or class-per-folder "
            "root (or create the demo data with `medpfl data demo --out DIR`)",
            site=site,
        )
    path = path.resolve()
    if path.is_dir() and (path / DATALIST_NAME).is_file():
        path = path / DATALIST_NAME
    if path.is_dir():
        return _load_class_folders(path, site=site, num_classes=num_classes)
    if path.suffix.lower() != ".json":
        raise MedPFLError(
            f"site data source {path} is neither a datalist JSON (*.json) nor a folder",
            fix=f"pass a datalist JSON such as {_EXAMPLE_DATALIST} or a folder with one sub-folder per class",
            site=site,
        )
    return _load_datalist(path, site=site, num_classes=num_classes)


def _load_datalist(path: Path, *, site: str | None, num_classes: int | None) -> SiteData:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise MedPFLError(
            f"cannot read datalist {path}: {error}", fix="check the file's permissions and encoding (UTF-8)", site=site
        ) from None
    except json.JSONDecodeError as error:
        raise MedPFLError(
            f"datalist {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
            fix=f"correct the JSON; the expected form is {_EXAMPLE_DATALIST}",
            site=site,
        ) from None
    if not isinstance(content, dict) or "training" not in content:
        raise MedPFLError(
            f"datalist {path} has no 'training' list",
            fix=f"write the datalist as {_EXAMPLE_DATALIST}",
            site=site,
        )
    class_names = _read_class_names(content.get("classes"), path, site=site)
    raw: dict[str, list[tuple[Path, Any]]] = {}
    for split in _SPLIT_FOLDERS:
        entries = content.get(split, [])
        if not isinstance(entries, list):
            raise MedPFLError(
                f"datalist {path}: '{split}' must be a list of {{\"image\": ..., \"label\": ...}} items",
                fix=f"write the datalist as {_EXAMPLE_DATALIST}",
                site=site,
            )
        raw[split] = [_read_entry(entry, number, split, path, site=site) for number, entry in enumerate(entries)]
    labels = [label for split in _SPLIT_FOLDERS for _, label in raw[split]]
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise MedPFLError(
            f"datalist {path} names {len(class_names)} classes but {num_classes} are expected",
            fix=f"list exactly {num_classes} class names under 'classes', or use a {len(class_names)}-class model",
            site=site,
        )
    count = num_classes or (len(class_names) if class_names is not None else max(labels, default=-1) + 1)
    for split in _SPLIT_FOLDERS:
        for number, (image, label) in enumerate(raw[split]):
            if not 0 <= label < count:
                raise MedPFLError(
                    f"datalist {path}: label {label} of {split}[{number}] ({image}) is out of range [0, {count})",
                    fix=f"use labels 0..{count - 1} (one per class), or list every class under 'classes'",
                    site=site,
                )
    names = class_names if class_names is not None else tuple(str(index) for index in range(count))
    return _finish(raw["training"], raw["validation"], names, path, site=site)


def _read_class_names(value: object, path: Path, *, site: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(name, str) and name for name in value)
        or len(set(value)) != len(value)
    ):
        raise MedPFLError(
            f"datalist {path}: 'classes' must be a non-empty list of distinct names, got {value!r}",
            fix='write e.g. "classes": ["no_tumor", "glioma"] (label i is the i-th name) or leave it out',
            site=site,
        )
    return tuple(value)


def _read_entry(entry: object, number: int, split: str, datalist: Path, *, site: str | None) -> tuple[Path, int]:
    where = f"datalist {datalist}: {split}[{number}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or "label" not in entry:
        raise MedPFLError(
            f"{where} must be an object with a string 'image' path and an integer 'label', got {entry!r}",
            fix='write each item as {"image": "images/a.nii.gz", "label": 0}',
            site=site,
        )
    image = Path(entry["image"]).expanduser()
    if not image.is_absolute():
        image = datalist.parent / image
    label = entry["label"]
    if isinstance(label, bool) or not isinstance(label, int):
        raise MedPFLError(
            f"{where} ({image}) has label {label!r}, which is not an integer",
            fix="use integer class indices 0..num_classes-1 as labels (not names, floats or one-hot lists)",
            site=site,
        )
    _check_image_file(image, f"{where} names", site=site)
    return image.resolve(), label


def _check_image_file(image: Path, context: str, *, site: str | None) -> None:
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


def _load_class_folders(root: Path, *, site: str | None, num_classes: int | None) -> SiteData:
    split_dirs = {split: root / split for split in _SPLIT_FOLDERS}
    if split_dirs["training"].is_dir():
        class_names = _class_folders(split_dirs["training"], site=site)
        training = _scan_tree(split_dirs["training"], class_names, site=site)
        validation: list[tuple[Path, int]] = []
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
    if num_classes is not None and num_classes != len(class_names):
        raise MedPFLError(
            f"data folder {root} has {len(class_names)} class folders ({', '.join(class_names)}) but "
            f"{num_classes} classes are expected",
            fix=f"provide exactly {num_classes} class folders (one per class)",
            site=site,
        )
    return _finish(training, validation, class_names, root, site=site)


def _class_folders(root: Path, *, site: str | None, allow_empty: bool = False) -> tuple[str, ...]:
    names = tuple(
        sorted(
            entry.name
            for entry in root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and entry.name not in _SPLIT_FOLDERS
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


def _scan_tree(root: Path, class_names: Sequence[str], *, site: str | None) -> list[tuple[Path, int]]:
    found: list[tuple[Path, int]] = []
    for label, name in enumerate(class_names):
        folder = root / name
        if not folder.is_dir():
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue  # .DS_Store, editor swap files
            if entry.is_dir():
                raise MedPFLError(
                    f"class folder {folder} contains a sub-folder {entry.name}; images must sit directly in it",
                    fix=f"move the images of {entry} up into {folder} (one 2-D image or 3-D volume per file)",
                    site=site,
                )
            _check_image_file(entry, f"class folder {folder} contains", site=site)
            found.append((entry.resolve(), label))
    return found


def _split(items: list[tuple[Path, int]]) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Per class, hold out round(20 %) of the sorted files, chosen by a fixed seed, keeping ≥1 for training."""
    rng = np.random.default_rng(0)
    training: list[tuple[Path, int]] = []
    validation: list[tuple[Path, int]] = []
    by_label: dict[int, list[tuple[Path, int]]] = {}
    for item in items:
        by_label.setdefault(item[1], []).append(item)
    for label in sorted(by_label):
        group = by_label[label]
        held_out = min(int(round(VALIDATION_FRACTION * len(group))), len(group) - 1)
        chosen = set(rng.permutation(len(group))[:held_out].tolist())
        for position, item in enumerate(group):
            (validation if position in chosen else training).append(item)
    return training, validation


def _finish(
    training: Sequence[tuple[Path, int]],
    validation: Sequence[tuple[Path, int]],
    class_names: Sequence[str],
    source: Path,
    *,
    site: str | None,
) -> SiteData:
    if not training:
        raise MedPFLError(
            f"site data {source} has zero training images",
            fix="add training images (datalist 'training' items or files in the class folders); a site cannot "
            "train on nothing",
            site=site,
        )
    return SiteData(
        training=tuple(_item(image, label) for image, label in training),
        validation=tuple(_item(image, label) for image, label in validation),
        class_names=tuple(class_names),
        source=source,
    )


def _item(image: Path, label: int) -> dict[str, Any]:
    return {"image": str(image), "label": int(label)}

