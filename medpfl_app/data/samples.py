"""A small multi-site data set of real MRI, cut from scanner images that ship inside installed packages.

The images are real acquisitions, not phantoms: dipy's T1-weighted coronal brain slice (``t1_coronal_slice.npy``),
dipy's b=0 diffusion volume (``S0_10slices.nii.gz``, 10 axial slices) and nibabel's functional EPI test volume
(``example4d.nii.gz``, first of its two time points, 24 axial slices). Nothing is downloaded: the files are read from
the installed ``dipy`` (``pip install 'medpfl_app[realdata]'``) and ``nibabel`` packages.

The **labels are for exercising the pipeline only**: each class is the source the image was cut from (its MRI
contrast and orientation), which any classifier can learn from intensity statistics alone. They carry no diagnosis.
Crops of one slice overlap, and the ``t1_coronal`` class comes from a single slice, so training and validation
images are not independent: accuracies on this set say nothing about a model.

Each image is a square window of a 2-D slice (windows slide in fixed steps and are kept only where most pixels are
tissue), resized to ``image_size`` and scaled by its source volume's maximum to [0, 1]. The same arguments always
give the same images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medpfl_app.atomic_io import write_atomic, write_json_atomic
from medpfl_app.data.datalist import DATALIST_NAME
from medpfl_app.data.partition import partition_indices
from medpfl_app.data.real_image_sources import (
    MIN_TISSUE_FRACTION,
    SAMPLE_CLASSES,
    SAMPLE_SOURCES,
    RealImageSource,
    source_windows,
)
from medpfl_app.errors import MedPFLError

__all__ = [
    "MANIFEST_NAME",
    "MIN_TISSUE_FRACTION",
    "SAMPLES_DATASET_ID",
    "SAMPLE_CLASSES",
    "SAMPLE_SOURCES",
    "ImageFormat",
    "RealImageSource",
    "SampleDataset",
    "real_sample_images",
    "source_windows",
    "write_real_samples",
]

MANIFEST_NAME = "manifest.json"
#: ``"dataset"`` of every sample ``manifest.json``; it states ``"synthetic": false`` (these are scanner images).
SAMPLES_DATASET_ID = "medpfl.real-mri-samples/1"
ImageFormat = Literal["nifti", "png"]
_SUFFIX: dict[str, str] = {"nifti": ".nii.gz", "png": ".png"}


@dataclass(frozen=True)
class SampleDataset:
    """Where `write_real_samples` wrote the data set.

    Attributes:
        root: The output folder (``manifest.json`` and one folder per site).
        site_datalists: Site name → that site's ``datalist.json``.
        class_names: Name of each label (`SAMPLE_CLASSES`).
        label_counts: Site name → ``{"training": counts per class, "validation": counts per class}``.
    """

    root: Path
    site_datalists: dict[str, Path]
    class_names: tuple[str, ...]
    label_counts: dict[str, dict[str, list[int]]]


def real_sample_images(*, per_class: int = 24, image_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` windows of every source, spread evenly over its windows (hence over its slices).

    Returns:
        Images, float32 ``(per_class * len(SAMPLE_CLASSES), image_size, image_size)`` in [0, 1], class by class,
        and their int64 labels (index into `SAMPLE_CLASSES`).

    Raises:
        MedPFLError: A source package or file is missing, ``per_class``/``image_size`` is not a positive integer,
            or a source has fewer than ``per_class`` tissue-filled windows.
    """
    for name, value in (("per_class", per_class), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MedPFLError(f"{name} must be a positive integer, got {value!r}", fix=f"pass {name} >= 1")
    images, labels = [], []
    for label, source in enumerate(SAMPLE_SOURCES):
        windows = source_windows(source, image_size=image_size)
        if len(windows) < per_class:
            raise MedPFLError(
                f"{source.resource} of {source.package} gives {len(windows)} windows, fewer than the {per_class} "
                f"images per class asked for",
                fix=f"ask for at most {len(windows)} images per class",
            )
        chosen = np.unique(np.linspace(0, len(windows) - 1, per_class).round().astype(int))
        images.append(windows[chosen])
        labels += [label] * len(chosen)
    return np.concatenate(images), np.asarray(labels, dtype=np.int64)


def write_real_samples(
    out_dir: str | Path,
    *,
    num_sites: int = 3,
    per_class: int = 24,
    image_size: int = 64,
    validation_fraction: float = 0.25,
    formats: Sequence[ImageFormat] = ("nifti", "png"),
    seed: int = 0,
) -> SampleDataset:
    """Write the real-MRI sample set as ``<out_dir>/<site>/images/*`` plus one ``datalist.json`` per site.

    The pooled images (`real_sample_images`) are dealt to sites class-balanced (`partition_indices`, ``"iid"``);
    within each site, a class-stratified ``validation_fraction`` (at least one training image per class kept) is
    listed under ``"validation"``. Site ``k`` (from 0) writes its images in ``formats[k % len(formats)]``: NIfTI
    (float32 in [0, 1]) or 8-bit grayscale PNG, so one run exercises both readers. ``<out_dir>/manifest.json``
    records the sources, that the data is real (``"synthetic": false``) and that the labels are for pipeline
    exercise only.

    Args:
        out_dir: Output folder (created if needed; files of the same names are replaced).
        num_sites: Number of sites, named ``site-1`` … ``site-N``.
        per_class: Images per class in the pool.
        image_size: Side of the square images in pixels.
        validation_fraction: Share of each site's images per class held out for validation, in [0, 1).
        formats: Image formats, cycled over sites.
        seed: Seed of the partition and of the validation choice (the pixels do not depend on it).

    Returns:
        The written data set.

    Raises:
        MedPFLError: On bad arguments, missing source packages, or too few images for the sites.
    """
    _check_arguments(num_sites, validation_fraction, formats, seed)
    images, labels = real_sample_images(per_class=per_class, image_size=image_size)
    parts = partition_indices(labels, num_sites, scheme="iid", seed=seed, min_per_site=len(SAMPLE_CLASSES))
    root = Path(out_dir).expanduser().resolve()
    site_datalists: dict[str, Path] = {}
    label_counts: dict[str, dict[str, list[int]]] = {}
    rng = np.random.default_rng([seed, 11])
    for number, part in enumerate(parts):
        site = f"site-{number + 1}"
        image_format = formats[number % len(formats)]
        entries: dict[str, list[dict[str, Any]]] = {"training": [], "validation": []}
        held_out = _validation_choice(labels[part], validation_fraction, rng)
        for position, index in enumerate(part):
            relative = f"images/{SAMPLE_CLASSES[labels[index]]}_{int(index):03d}{_SUFFIX[image_format]}"
            _write_image(root / site / relative, images[index], image_format)
            split = "validation" if position in held_out else "training"
            entries[split].append({"image": relative, "label": int(labels[index])})
        datalist = {"classes": list(SAMPLE_CLASSES), **entries}
        site_datalists[site] = write_json_atomic(root / site / DATALIST_NAME, datalist)
        label_counts[site] = {
            split: np.bincount([item["label"] for item in items], minlength=len(SAMPLE_CLASSES)).tolist()
            for split, items in entries.items()
        }
    write_json_atomic(root / MANIFEST_NAME, _manifest(label_counts, image_size, per_class, seed, formats))
    return SampleDataset(root, site_datalists, SAMPLE_CLASSES, label_counts)


def _check_arguments(num_sites: int, validation_fraction: float, formats: Sequence[str], seed: int) -> None:
    if isinstance(num_sites, bool) or not isinstance(num_sites, int) or num_sites < 1:
        raise MedPFLError(f"num_sites must be a positive integer, got {num_sites!r}", fix="pass e.g. num_sites=3")
    if not 0.0 <= validation_fraction < 1.0:
        raise MedPFLError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}", fix="pass e.g. 0.25")
    unknown = [name for name in formats if name not in _SUFFIX]
    if not formats or unknown:
        raise MedPFLError(f"unknown image format(s) {unknown or formats!r}", fix=f"use some of {', '.join(_SUFFIX)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MedPFLError(f"seed must be a non-negative integer, got {seed!r}", fix="pass e.g. seed=0")


def _validation_choice(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> set[int]:
    """Positions held out for validation: per class, round(fraction × count), keeping at least one for training."""
    held_out: set[int] = set()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(int(round(fraction * members.size)), members.size - 1)
        held_out.update(int(position) for position in rng.permutation(members)[:count])
    return held_out


def _write_image(path: Path, pixels: np.ndarray, image_format: str) -> None:
    if image_format == "png":
        from PIL import Image

        grey = Image.fromarray(np.round(pixels * 255.0).astype(np.uint8), mode="L")
        write_atomic(path, lambda temp: grey.save(temp, format="PNG"), suffix=".png")
        return
    import nibabel as nib

    image = nib.Nifti1Image(pixels.astype(np.float32), affine=np.eye(4))
    write_atomic(path, lambda temp: nib.save(image, temp), suffix=".nii.gz")


def _manifest(
    label_counts: dict[str, dict[str, list[int]]], image_size: int, per_class: int, seed: int, formats: Sequence[str]
) -> dict[str, Any]:
    return {
        "dataset": SAMPLES_DATASET_ID,
        "synthetic": False,  # real scanner images: never treated as releasable demo data
        "generator": __name__,
        "labels": (
            "for pipeline exercise only: each label is the source image an image was cut from (contrast and "
            "orientation), not a diagnosis; windows of one slice overlap, so training and validation images are "
            "not independent"
        ),
        "sources": [
            {"class": s.class_name, "package": s.package, "file": s.resource, "description": s.description}
            for s in SAMPLE_SOURCES
        ],
        "image_size": image_size,
        "per_class": per_class,
        "seed": seed,
        "formats": list(formats),
        "classes": list(SAMPLE_CLASSES),
        "sites": {
            site: {"datalist": f"{site}/{DATALIST_NAME}", "label_counts": counts}
            for site, counts in label_counts.items()
        },
    }
