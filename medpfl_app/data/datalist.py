"""Find a site's images and labels: a MONAI-style datalist JSON or a class-per-folder tree.

Paths and labels are checked here (existence, extension, label range, one label per image); pixels are read by the
transforms, and `medpfl_app.data.loaders` turns an unreadable image into a clear error.

Samples: each listed file is one sample, except multi-frame DICOM files, whose headers are read here: every frame
becomes its own sample with the file's label (items gain ``"frame": k``), unless the datalist item names one
``"frame"``. A datalist item (or a sub-folder of a class folder) that is a folder of ``.dcm`` files is one DICOM
series, read as a volume (`medpfl_app.data.dicom_series`). The 80/20 split of class folders splits files, not
frames, so frames of one file never land in both training and validation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.data.class_folders import DATALIST_NAME, SPLIT_FOLDERS, VALIDATION_FRACTION, scan_class_folders
from medpfl_app.data.sample_items import (
    FRAME_KEY,
    MAX_INFERRED_CLASSES,
    SUPPORTED_SUFFIXES,
    Sample,
    check_image_path,
    expand_frames,
    image_suffix,
    inferred_class_count,
    refuse_conflicting_labels,
)
from medpfl_app.errors import MedPFLError

__all__ = [
    "DATALIST_NAME",
    "FRAME_KEY",
    "MAX_INFERRED_CLASSES",
    "SUPPORTED_SUFFIXES",
    "VALIDATION_FRACTION",
    "SiteData",
    "image_suffix",
    "load_site_data",
]
_SPLIT_FOLDERS = SPLIT_FOLDERS
_EXAMPLE_DATALIST = (
    '{"classes": ["no_tumor", "glioma"], "training": [{"image": "images/a.nii.gz", "label": 0}], '
    '"validation": [{"image": "images/b.nii.gz", "label": 1}]}'
)


@dataclass(frozen=True)
class SiteData:
    """The images and labels of one site.

    Attributes:
        training: Items ``{"image": absolute path, "label": int}`` used for local training, in a fixed order (an
            item's position is its site-local sample index); frames of multi-frame DICOM files also carry
            ``"frame": int``, and ``"image"`` may be a DICOM series folder.
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
            label that is not an integer in ``[0, num_classes)`` (or, without ``"classes"``, one of
            `MAX_INFERRED_CLASSES` or more), one image listed with two labels, an unreadable multi-frame DICOM
            header, or zero training images.
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
    raw: dict[str, list[Sample]] = {}
    for split in _SPLIT_FOLDERS:
        entries = content.get(split, [])
        if not isinstance(entries, list):
            raise MedPFLError(
                f'datalist {path}: \'{split}\' must be a list of {{"image": ..., "label": ...}} items',
                fix=f"write the datalist as {_EXAMPLE_DATALIST}",
                site=site,
            )
        raw[split] = [_read_entry(entry, number, split, path, site=site) for number, entry in enumerate(entries)]
    labels = [(f"{split}[{number}]", sample[1]) for split in _SPLIT_FOLDERS for number, sample in enumerate(raw[split])]
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise MedPFLError(
            f"datalist {path} names {len(class_names)} classes but {num_classes} are expected",
            fix=f"list exactly {num_classes} class names under 'classes', or use a {len(class_names)}-class model",
            site=site,
        )
    inferred = class_names is None and num_classes is None
    count = num_classes or (inferred_class_count(labels, path, site=site) if inferred else len(class_names or ()))
    for split in _SPLIT_FOLDERS:
        for number, (image, label, _) in enumerate(raw[split]):
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


def _read_entry(entry: object, number: int, split: str, datalist: Path, *, site: str | None) -> Sample:
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
    frame = entry.get(FRAME_KEY)
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 0):
        raise MedPFLError(
            f"{where} ({image}) has frame {frame!r}, which is not a frame number",
            fix='use "frame": k with k = 0, 1, … for one frame of a multi-frame DICOM file, or leave it out',
            site=site,
        )
    check_image_path(image, f"{where} names", site=site)
    if frame is not None and not image.name.lower().endswith(".dcm"):
        raise MedPFLError(
            f"{where} ({image}) names frame {frame}, but only multi-frame DICOM files have frames",
            fix='remove "frame" from the item',
            site=site,
        )
    return image.resolve(), label, frame


def _load_class_folders(root: Path, *, site: str | None, num_classes: int | None) -> SiteData:
    training, validation, class_names = scan_class_folders(root, site=site)
    if num_classes is not None and num_classes != len(class_names):
        raise MedPFLError(
            f"data folder {root} has {len(class_names)} class folders ({', '.join(class_names)}) but "
            f"{num_classes} classes are expected",
            fix=f"provide exactly {num_classes} class folders (one per class)",
            site=site,
        )
    return _finish(training, validation, class_names, root, site=site)


def _finish(
    training: Sequence[Sample],
    validation: Sequence[Sample],
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
    expanded = {
        "training": expand_frames(training, site=site),
        "validation": expand_frames(validation, site=site),
    }
    refuse_conflicting_labels(expanded, source, site=site)
    return SiteData(
        training=tuple(_item(*sample) for _, sample in expanded["training"]),
        validation=tuple(_item(*sample) for _, sample in expanded["validation"]),
        class_names=tuple(class_names),
        source=source,
    )


def _item(image: Path, label: int, frame: int | None) -> dict[str, Any]:
    item: dict[str, Any] = {"image": str(image), "label": int(label)}
    if frame is not None:
        item[FRAME_KEY] = int(frame)
    return item
