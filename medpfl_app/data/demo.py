"""The embedded demo data set: brain-MRI-like phantoms written as NIfTI files with one datalist per site."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medpfl_app.atomic_io import write_atomic, write_json_atomic
from medpfl_app.data.datalist import DATALIST_NAME
from medpfl_app.data.partition import partition_indices
from medpfl_app.data.phantoms import PHANTOM_CLASSES, generate_phantom
from medpfl_app.errors import MedPFLError

MANIFEST_NAME = "manifest.json"
#: Written into every demo ``manifest.json`` (``"dataset"``, with ``"synthetic": true``) so that a site can tell its
#: training data is this generated phantom set and not patient data (the audit's site scorer releases demo originals
#: only then).
DEMO_DATASET_ID = "medpfl.demo-phantoms/1"
_TRAINING_STREAM, _VALIDATION_STREAM = 0, 1


@dataclass(frozen=True)
class DemoDataset:
    """Where the demo data set was written.

    Attributes:
        root: The output folder (holds ``manifest.json`` and one folder per site).
        site_datalists: Site name → that site's ``datalist.json``.
        class_names: Name of each label.
        label_counts: Site name → ``{"training": counts per class, "validation": counts per class}``.
    """

    root: Path
    site_datalists: dict[str, Path]
    class_names: tuple[str, ...]
    label_counts: dict[str, dict[str, list[int]]] = field(default_factory=dict)


def generate_demo_dataset(
    out_dir: str | Path,
    *,
    num_sites: int = 3,
    train_per_site: int = 32,
    val_per_site: int = 16,
    image_size: int = 64,
    partition: str = "iid",
    dirichlet_alpha: float = 0.5,
    seed: int = 0,
    site_names: Sequence[str] | None = None,
    progress: bool = False,
) -> DemoDataset:
    """Write the phantom data set partitioned across sites.

    A balanced pool of ``num_sites * train_per_site`` training phantoms is split with `partition_indices`
    (``"iid"``: every site gets ``train_per_site`` images with balanced classes; ``"dirichlet"``: label-skewed
    sites whose sizes vary around ``train_per_site``, each with at least a quarter of it). Each site also gets
    ``val_per_site`` validation phantoms of its own, drawn with its training label mix. Images are written to
    ``<out_dir>/<site>/images/*.nii.gz``, the datalist to ``<out_dir>/<site>/datalist.json`` (relative paths),
    and a summary to ``<out_dir>/manifest.json`` that states the data is synthetic (``"synthetic": true``,
    ``"dataset":`` `DEMO_DATASET_ID`). The same arguments give byte-identical pixel data.

    Args:
        out_dir: Output folder (created if needed; existing files of the same names are replaced).
        num_sites: Number of sites.
        train_per_site: Training images per site (the mean, for ``"dirichlet"``).
        val_per_site: Validation images per site.
        image_size: Side length in pixels.
        partition: ``"iid"`` or ``"dirichlet"``.
        dirichlet_alpha: Dirichlet concentration for ``"dirichlet"``.
        seed: Random seed for labels, partition and pixels.
        site_names: Site names; default ``site-1`` … ``site-N`` as in NVFlare.
        progress: Show a progress bar while writing.

    Returns:
        The written data set.
    """
    from tqdm.auto import tqdm

    names = _site_names(num_sites, site_names)
    _check_sizes(train_per_site, val_per_site, seed)
    pool, parts = _training_pool(num_sites, train_per_site, partition, dirichlet_alpha, seed)
    root = Path(out_dir).expanduser().resolve()
    layout = _SiteLayout(seed=seed, image_size=image_size, val_per_site=val_per_site, partition=partition)
    site_datalists: dict[str, Path] = {}
    label_counts: dict[str, dict[str, list[int]]] = {}
    total = sum(part.size for part in parts) + num_sites * val_per_site
    bar = tqdm(total=total, desc="writing demo images", unit="img", disable=not progress)
    for site_number, (site, part) in enumerate(zip(names, parts)):
        site_datalists[site], label_counts[site] = _write_site(
            root / site, site_number, [int(index) for index in part], pool, layout, lambda: bar.update(1)
        )
    bar.close()
    manifest = _manifest(seed, partition, dirichlet_alpha, image_size, names, label_counts)
    write_json_atomic(root / MANIFEST_NAME, manifest)
    return DemoDataset(root=root, site_datalists=site_datalists, class_names=PHANTOM_CLASSES, label_counts=label_counts)


def _training_pool(
    num_sites: int, train_per_site: int, partition: str, dirichlet_alpha: float, seed: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The balanced pool's labels in seeded random order, and each site's positions in it."""
    rng = np.random.default_rng([seed, 7])
    pool = rng.permutation(np.arange(num_sites * train_per_site) % len(PHANTOM_CLASSES))
    parts = partition_indices(
        pool,
        num_sites,
        scheme=partition,
        alpha=dirichlet_alpha,
        seed=seed,
        min_per_site=max(1, train_per_site // 4),
    )
    return pool, parts


def _manifest(
    seed: int,
    partition: str,
    dirichlet_alpha: float,
    image_size: int,
    names: list[str],
    label_counts: dict[str, dict[str, list[int]]],
) -> dict[str, Any]:
    """The data set's ``manifest.json``: how it was generated, that it is synthetic, and each site's label counts."""
    return {
        "dataset": DEMO_DATASET_ID,
        "synthetic": True,  # generated phantoms, no patient: see DEMO_DATASET_ID
        "generator": "medpfl_app.data.phantoms",
        "seed": seed,
        "partition": partition,
        "dirichlet_alpha": dirichlet_alpha if partition == "dirichlet" else None,
        "image_size": image_size,
        "classes": list(PHANTOM_CLASSES),
        "sites": {site: {"datalist": f"{site}/{DATALIST_NAME}", "label_counts": label_counts[site]} for site in names},
    }


@dataclass(frozen=True)
class _SiteLayout:
    """The settings every site's images and datalist are written with."""

    seed: int
    image_size: int
    val_per_site: int
    partition: str


def _check_sizes(train_per_site: int, val_per_site: int, seed: int) -> None:
    for setting, value, minimum in (("train_per_site", train_per_site, 1), ("val_per_site", val_per_site, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise MedPFLError(
                f"{setting} must be an integer >= {minimum}, got {value!r}", fix=f"set {setting} >= {minimum}"
            )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise MedPFLError(f"seed must be a non-negative integer, got {seed!r}", fix="pass e.g. seed=0")


def _write_site(
    site_dir: Path,
    site_number: int,
    part: list[int],
    pool: np.ndarray,
    layout: _SiteLayout,
    on_image: Callable[[], None],
) -> tuple[Path, dict[str, list[int]]]:
    """Write one site's training images (pool positions ``part``), validation images and datalist.

    Returns:
        The datalist's path and the site's label counts per split.
    """
    num_classes = len(PHANTOM_CLASSES)
    training: list[dict[str, str | int]] = []  # datalist entries: image path and label
    for index in part:
        label = int(pool[index])
        relative = f"images/train_{index:05d}.nii.gz"
        pixel_rng = np.random.default_rng([layout.seed, _TRAINING_STREAM, index])
        _write_nifti(site_dir / relative, generate_phantom(label, rng=pixel_rng, image_size=layout.image_size))
        on_image()
        training.append({"image": relative, "label": label})
    train_counts = np.bincount(pool[part], minlength=num_classes)
    validation: list[dict[str, str | int]] = []  # datalist entries: image path and label
    for number, label in enumerate(_validation_labels(train_counts, layout.val_per_site, layout.partition)):
        relative = f"images/val_{number:05d}.nii.gz"
        pixel_rng = np.random.default_rng([layout.seed, _VALIDATION_STREAM, site_number, number])
        _write_nifti(site_dir / relative, generate_phantom(label, rng=pixel_rng, image_size=layout.image_size))
        on_image()
        validation.append({"image": relative, "label": label})
    datalist = {"classes": list(PHANTOM_CLASSES), "training": training, "validation": validation}
    counts = {
        "training": train_counts.tolist(),
        "validation": np.bincount([item["label"] for item in validation], minlength=num_classes).tolist(),
    }
    return write_json_atomic(site_dir / DATALIST_NAME, datalist), counts


def _write_nifti(path: Path, pixels: np.ndarray) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(pixels, affine=np.eye(4))
    write_atomic(path, lambda temp: nib.save(image, temp), suffix=".nii.gz")


def _site_names(num_sites: int, site_names: Sequence[str] | None) -> list[str]:
    if isinstance(num_sites, bool) or not isinstance(num_sites, int) or num_sites < 1:
        raise MedPFLError(f"num_sites must be a positive integer, got {num_sites!r}", fix="pass e.g. num_sites=3")
    if site_names is None:
        return [f"site-{number}" for number in range(1, num_sites + 1)]
    names = list(site_names)
    if len(names) != num_sites or len(set(names)) != len(names):
        raise MedPFLError(
            f"site_names must be {num_sites} distinct names, got {names!r}",
            fix="pass one distinct name per site, or leave site_names out for site-1 … site-N",
        )
    for name in names:
        if not isinstance(name, str) or not name or Path(name).name != name or name.startswith("."):
            raise MedPFLError(
                f"site name {name!r} cannot be used as a folder name", fix="use names like site-1 or hospital_a"
            )
    return names


def _validation_labels(train_counts: np.ndarray, count: int, partition: str) -> list[int]:
    """Balanced classes for IID sites; the site's training label mix (largest remainder) otherwise."""
    num_classes = train_counts.size
    if partition == "iid" or train_counts.sum() == 0:
        return [number % num_classes for number in range(count)]
    share = train_counts / train_counts.sum() * count
    counts = np.floor(share).astype(int)
    for label in np.argsort(-(share - counts), kind="stable")[: count - counts.sum()]:
        counts[label] += 1
    return [label for label in range(num_classes) for _ in range(counts[label])]
