"""The study's seeded phantom pools as NVFlare site data: one folder and datalist per site.

Each site trains on exactly the pool the in-process engine gives it (`medpfl_app.experiments.study.federated.site_pools`),
so the site's scorer measures leakage against the same images; the held-out phantoms
(`medpfl_app.experiments.study.federated.validation_set`) are split across the sites as their validation images
(site ``k`` gets every K-th image from position ``k``), so the sites' validation of the global model covers the
same held-out set as the in-process utility.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medpfl_app.atomic_io import write_atomic, write_json_atomic
from medpfl_app.experiments.study.config import RunConfig


def write_site_pools(run: RunConfig, root: Path, sites: Sequence[str]) -> Path:
    """Write ``<root>/<site>/datalist.json`` and its NIfTI images for every site; returns ``root`` (the data root).

    The data are synthetic phantoms (no patient), generated from the run's seed.
    """
    from medpfl_app.data.datalist import DATALIST_NAME
    from medpfl_app.data.phantoms import PHANTOM_CLASSES
    from medpfl_app.experiments.study.federated import site_pools, validation_set

    root = Path(root).resolve()
    pools = site_pools(run)
    held_out = validation_set(run)
    classes = list(PHANTOM_CLASSES[: run.num_classes])
    for k, (site, pool) in enumerate(zip(sites, pools, strict=True)):
        site_dir = root / site
        training = _write_images(site_dir, "train", pool.images.numpy(), pool.labels.tolist())
        positions = range(k, len(held_out.labels), len(sites))
        validation = _write_images(
            site_dir,
            "val",
            held_out.images.numpy()[list(positions)],
            [int(held_out.labels[i]) for i in positions],
        )
        write_json_atomic(
            site_dir / DATALIST_NAME, {"classes": classes, "training": training, "validation": validation}
        )
    return root


def _write_images(site_dir: Path, split: str, images: np.ndarray, labels: list[int]) -> list[dict[str, str | int]]:
    """Write ``images`` (N, 1, H, W) as 2-D NIfTI files; returns their datalist entries (relative paths)."""
    import nibabel as nib

    entries: list[dict[str, str | int]] = []
    for number, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        relative = f"images/{split}_{number:05d}.nii.gz"
        _write_nifti(site_dir / relative, nib.Nifti1Image(np.asarray(pixels[0], dtype=np.float32), affine=np.eye(4)))
        entries.append({"image": relative, "label": int(label)})
    return entries


def _write_nifti(path: Path, image: Any) -> None:
    import nibabel as nib

    write_atomic(path, lambda temp: nib.save(image, temp), suffix=".nii.gz")
