"""The demo on a user's own images: find the sites in ``--data``, check every image, write one datalist per site.

Two layouts are accepted:

* **one folder per site**: ``DATA/<site>/`` each holding a ``datalist.json`` or a class-per-folder tree
  (``<site>/<class>/<image>`` or ``<site>/training/<class>/…`` + ``<site>/validation/<class>/…``). ``DATA`` is read
  this way when one of its sub-folders holds a ``datalist.json`` or a ``training/`` folder (then every sub-folder is
  a site), or when none of them holds an image file directly and they hold sub-folders of their own.
* **one data set split across sites**: a datalist JSON, a folder holding ``datalist.json``, or a class-per-folder
  tree; its training and validation items are dealt to ``--sites`` sites class by class
  (`medpfl_app.data.partition.partition_indices`, ``"iid"``).

The user's files are never changed or copied: the demo writes ``<out>/data/site-<k>/datalist.json`` listing
absolute paths into ``DATA`` (the simulator's sites find them through ``MEDPFL_DATA_ROOT``), and
``<out>/data/sources.json`` recording which folder each demo site came from. Sites are always named ``site-1`` …
``site-N`` (sorted folder names), so the audited job's high-risk site is ``site-1`` whatever the folders are called.

Before anything runs, every image is loaded once through the training transforms, so that unreadable data ends in
one error naming the files, not in a site failing inside the simulator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from medpfl_app.atomic_io import write_json_atomic
from medpfl_app.data.datalist import DATALIST_NAME, SiteData, image_suffix, load_site_data
from medpfl_app.errors import MedPFLError

SOURCES_NAME = "sources.json"
DEFAULT_SITES = 3
#: Bad images listed by name in the one error (the count says how many more there are).
_LISTED_FAILURES = 10
_LAYOUTS = (
    "DATA/<site>/datalist.json or DATA/<site>/<class>/<image> (one folder per site), or one datalist JSON / "
    "class-per-folder tree DATA/<class>/<image> split across --sites sites"
)


@dataclass(frozen=True)
class DemoSites:
    """The user's data as the demo's sites.

    Attributes:
        root: ``MEDPFL_DATA_ROOT`` for the simulator (``<out>/data``).
        site_datalists: Demo site name → its written ``datalist.json``.
        class_names: Name of each label (the same at every site).
        sources: Demo site name → the user's folder or datalist its items came from.
        split: Whether one data set was dealt to the sites (``False``: one folder per site).
    """

    root: Path
    site_datalists: dict[str, Path]
    class_names: tuple[str, ...]
    sources: dict[str, Path]
    split: bool


def prepare_demo_sites(
    data: str | Path,
    data_root: str | Path,
    *,
    num_sites: int | None,
    image_size: int,
    in_channels: int,
    seed: int = 0,
    progress: bool = False,
) -> DemoSites:
    """Read ``data``, check every image and write the demo's per-site datalists under ``data_root``.

    Args:
        data: The user's data (see the module docstring for the layouts).
        data_root: Folder to write ``site-<k>/datalist.json`` and `SOURCES_NAME` into (emptied by the caller).
        num_sites: Sites to split one data set across (default `DEFAULT_SITES`); with one folder per site it must
            be ``None`` or the number of folders.
        image_size: The job's input size, used to load every image once as training will.
        in_channels: The job's input channels.
        seed: Seed of the split.
        progress: Show a progress bar while the images are checked.

    Raises:
        MedPFLError: On a missing or unrecognised ``data``, sites with different classes, fewer than two classes,
            too few images for the sites, or any image that cannot be loaded (all of them in one message).
    """
    path = Path(data).expanduser()
    if not path.exists():
        raise MedPFLError(f"--data {path} does not exist", fix=f"point --data at your images: {_LAYOUTS}")
    path = path.resolve()
    site_dirs = _site_folders(path)
    if site_dirs:
        if num_sites is not None and num_sites != len(site_dirs):
            raise MedPFLError(
                f"--data {path} holds {len(site_dirs)} site folders ({', '.join(d.name for d in site_dirs)}) but "
                f"--sites {num_sites} was given",
                fix=f"leave --sites out (one site per folder) or pass --sites {len(site_dirs)}",
            )
        per_site = [load_site_data(folder, site=folder.name) for folder in site_dirs]
        _same_classes(per_site, site_dirs, path)
        sources = list(site_dirs)
    else:
        whole = load_site_data(path, site=None)
        per_site = _split(whole, num_sites or DEFAULT_SITES, seed=seed, source=path)
        sources = [whole.source] * len(per_site)
    class_names = per_site[0].class_names
    if len(class_names) < 2:
        raise MedPFLError(
            f"--data {path} has one class ({class_names[0]}); a classifier needs at least two",
            fix="add a second class (another class folder, or labels 0 and 1 in the datalist)",
        )
    names = [f"site-{number}" for number in range(1, len(per_site) + 1)]
    _load_every_image(per_site, names, image_size=image_size, in_channels=in_channels, progress=progress)
    return _write(Path(data_root), names, per_site, sources, class_names, split=not site_dirs)


def _site_folders(path: Path) -> list[Path]:
    """The site folders of ``path`` in sorted order, or ``[]`` when ``path`` is one data set."""
    if not path.is_dir() or (path / DATALIST_NAME).is_file() or (path / "training").is_dir():
        return []
    children = sorted(entry for entry in path.iterdir() if not entry.name.startswith("."))
    folders = [entry for entry in children if entry.is_dir()]
    if any(_describes_itself(folder) for folder in folders):
        return folders  # a datalist (its images may sit beside it) or a split tree: every sub-folder is a site
    if any(entry.is_file() and image_suffix(entry) for entry in children):
        return []  # images at the top: not a folder of sites (load_site_data explains what is wrong)
    if any(_holds_images(folder) for folder in folders):
        return []  # class folders with images directly inside: one class-per-folder tree
    return [folder for folder in folders if _has_sub_folders(folder)]


def _describes_itself(folder: Path) -> bool:
    return (folder / DATALIST_NAME).is_file() or (folder / "training").is_dir()


def _holds_images(folder: Path) -> bool:
    return any(entry.is_file() and image_suffix(entry) for entry in folder.iterdir())


def _has_sub_folders(folder: Path) -> bool:
    return any(entry.is_dir() and not entry.name.startswith(".") for entry in folder.iterdir())


def _same_classes(per_site: Sequence[SiteData], site_dirs: Sequence[Path], path: Path) -> None:
    first = per_site[0].class_names
    for folder, site_data in zip(site_dirs, per_site):
        if site_data.class_names != first:
            raise MedPFLError(
                f"--data {path} was read as one folder per site (its sub-folders hold no images directly), but site "
                f"folder {folder.name} has classes [{', '.join(site_data.class_names)}] and {site_dirs[0].name} has "
                f"[{', '.join(first)}]",
                fix="give every site the same classes in the same order (the same class folder names, an empty "
                'folder for a class a site lacks, or the same "classes" list in each datalist.json); if --data is '
                "one class-per-folder tree whose classes hold DICOM series folders, write a datalist.json for it",
            )


def _split(whole: SiteData, num_sites: int, *, seed: int, source: Path) -> list[SiteData]:
    """Deal training and validation items to ``num_sites`` sites, class-balanced (each site >= 1 training item)."""
    from medpfl_app.data.partition import partition_indices

    if len(whole.training) < num_sites:
        raise MedPFLError(
            f"--data {source} has {len(whole.training)} training images, too few for {num_sites} sites",
            fix=f"pass --sites {max(len(whole.training), 1)} or fewer, or add images",
        )
    parts = {}
    for split, items in (("training", whole.training), ("validation", whole.validation)):
        labels = np.asarray([item["label"] for item in items], dtype=np.int64)
        minimum = 1 if split == "training" else 0
        parts[split] = partition_indices(labels, num_sites, scheme="iid", seed=seed, min_per_site=minimum)
    return [
        replace(
            whole,
            training=tuple(whole.training[int(i)] for i in parts["training"][site]),
            validation=tuple(whole.validation[int(i)] for i in parts["validation"][site]),
        )
        for site in range(num_sites)
    ]


def _load_every_image(
    per_site: Sequence[SiteData], names: Sequence[str], *, image_size: int, in_channels: int, progress: bool
) -> None:
    """Load every item through the training transforms; raise one error listing every image that fails."""
    from tqdm.auto import tqdm

    from medpfl_app.data.config import DataConfig
    from medpfl_app.data.transforms import build_transforms

    config = DataConfig(image_size=image_size, in_channels=in_channels)
    failures: list[MedPFLError] = []
    total = sum(len(data.training) + len(data.validation) for data in per_site)
    with tqdm(total=total, desc="checking images", unit="img", leave=False, disable=not progress) as bar:
        for site, site_data in zip(names, per_site):
            transform = build_transforms(config, train=False, site=site)
            for item in (*site_data.training, *site_data.validation):
                try:
                    transform(dict(item))
                except MedPFLError as error:
                    failures.append(error)
                except Exception as error:  # noqa: BLE001 - any reader failure is the user's file, named below
                    failures.append(MedPFLError(f"image {item['image']} cannot be loaded: {error}", fix="", site=site))
                bar.update(1)
    if failures:
        listed = "\n    ".join(str(error).split("\n  fix:")[0] for error in failures[:_LISTED_FAILURES])
        more = f"\n    … and {len(failures) - _LISTED_FAILURES} more" if len(failures) > _LISTED_FAILURES else ""
        fixes = "; ".join(dict.fromkeys(error.fix for error in failures if error.fix)) or "re-export or remove them"
        if "medpfl data check" not in fixes:
            fixes += "; `medpfl data check <site folder>` lists every file's problem"
        raise MedPFLError(
            f"{len(failures)} of {total} images in --data cannot be used (nothing was started):\n    {listed}{more}",
            fix=fixes,
        )


def _write(
    root: Path,
    names: Sequence[str],
    per_site: Sequence[SiteData],
    sources: Sequence[Path],
    class_names: tuple[str, ...],
    *,
    split: bool,
) -> DemoSites:
    root = root.expanduser().resolve()
    site_datalists: dict[str, Path] = {}
    for site, site_data in zip(names, per_site):
        content: dict[str, Any] = {
            "classes": list(class_names),
            "training": [dict(item) for item in site_data.training],
            "validation": [dict(item) for item in site_data.validation],
        }
        site_datalists[site] = write_json_atomic(root / site / DATALIST_NAME, content)
    mapping = {site: str(source) for site, source in zip(names, sources)}
    # Not the demo's manifest.json: this data is the user's, never recognised as synthetic demo data.
    write_json_atomic(root / SOURCES_NAME, {"synthetic": False, "split": split, "sites": mapping})
    return DemoSites(root, site_datalists, class_names, dict(zip(names, sources)), split)
