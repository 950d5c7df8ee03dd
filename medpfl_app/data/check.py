"""Check a site's data before a run: every file listed, every image readable and finite, and a summary to show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpfl_app.data.config import DataConfig
from medpfl_app.data.datalist import load_site_data
from medpfl_app.errors import MedPFLError


NONFINITE_FIX = (
    "re-export the image; NaN/Inf pixels cannot be trained on (nor can values beyond about ±3.4e38, which overflow "
    "to Inf as float32), or remove the file from the site's data"
)


def check_finite(array: Any, path: str | Path, *, site: str | None = None, stage: str | None = None) -> None:
    """Refuse an image holding NaN, +Inf or -Inf values, naming its file.

    One such pixel turns the whole image into NaN at min–max scaling, then the site's update and, once aggregated,
    the global model. Integer and boolean arrays are always finite and pass.

    Args:
        array: The pixels: a NumPy array, or a CPU torch tensor / MONAI ``MetaTensor``, of any shape.
        path: The file the pixels came from, shown in the error.
        site: Site name shown in the error.
        stage: ``None`` when ``array`` holds the pixels as read from the file; otherwise the pipeline steps they went
            through (e.g. ``"intensity scaling and resizing"``), named in the error.

    Raises:
        MedPFLError: If any value is not finite; the problem counts NaN, +Inf and -Inf and gives the index of the
            first one, the fix is `NONFINITE_FIX`.

    Examples:
        >>> check_finite(np.zeros((1, 4, 4), dtype=np.float32), "a.nii.gz")
        >>> try:
        ...     check_finite(np.array([[0.0, np.nan], [np.inf, 1.0]]), "b.nii.gz", site="site-1")
        ... except MedPFLError as error:
        ...     print(error.problem)
        image b.nii.gz has 2 NaN/Inf pixel values (1 NaN, 1 +Inf; the first at index (0, 1))
    """
    if hasattr(array, "as_tensor"):  # MONAI MetaTensor → plain tensor
        array = array.as_tensor()
    if hasattr(array, "detach"):  # torch tensor; half/bfloat16 have no NumPy twin, float keeps NaN and ±Inf
        array = array.detach().cpu()
        array = (array.float() if array.is_floating_point() else array).numpy()
    values = np.asarray(array)
    if not np.issubdtype(values.dtype, np.floating) or bool(np.isfinite(values).all()):
        return
    counts = {
        "NaN": int(np.isnan(values).sum()),
        "+Inf": int(np.isposinf(values).sum()),
        "-Inf": int(np.isneginf(values).sum()),
    }
    total = sum(counts.values())
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items() if count)
    first = tuple(int(position) for position in np.argwhere(~np.isfinite(values))[0])
    after = f" after {stage}" if stage else ""
    raise MedPFLError(
        f"image {path} has {total} NaN/Inf pixel value{'s' if total != 1 else ''}{after} "
        f"({kinds}; the first at index {first})",
        fix=NONFINITE_FIX,
        site=site,
    )


@dataclass(frozen=True)
class DataCheckSummary:
    """What `check_site_data` found.

    Attributes:
        source: The datalist or folder checked.
        class_names: Name of each label.
        training_counts: Training images per class.
        validation_counts: Validation images per class.
        image_shape: Shape ``(C, H, W)`` of the tensors the model will get.
        site: Site name, if given.
    """

    source: Path
    class_names: tuple[str, ...]
    training_counts: tuple[int, ...]
    validation_counts: tuple[int, ...]
    image_shape: tuple[int, ...]
    site: str | None = None

    def format(self) -> str:
        """A short human-readable report."""
        width = max(len(name) for name in self.class_names)
        lines = [
            f"{'[' + self.site + '] ' if self.site else ''}data OK: {self.source}",
            f"  {sum(self.training_counts)} training, {sum(self.validation_counts)} validation images; "
            f"model input shape {self.image_shape}",
            f"  {'class':<{width}}  training  validation",
        ]
        for name, train, val in zip(self.class_names, self.training_counts, self.validation_counts):
            lines.append(f"  {name:<{width}}  {train:>8}  {val:>10}")
        return "\n".join(lines)


def check_site_data(
    source: str | Path, config: DataConfig | None = None, *, site: str | None = None, progress: bool = False
) -> DataCheckSummary:
    """Validate a site's data description and read every image once through the transforms.

    Unlike training, which stops at the first bad file, this reads all images and reports every unreadable one, and
    every one with NaN/Inf pixels (`check_finite`, run by the transforms), in a single error.

    Raises:
        MedPFLError: On any bad input, naming the site, the file(s) and the fix.
    """
    from tqdm.auto import tqdm

    from medpfl_app.data.transforms import build_transforms

    config = config or DataConfig()
    site_data = load_site_data(source, site=site)
    transform = build_transforms(config, train=False, site=site)
    shapes: set[tuple[int, ...]] = set()
    failures: list[MedPFLError] = []
    items = [*site_data.training, *site_data.validation]
    for item in tqdm(items, desc="reading images", unit="img", disable=not progress):
        try:
            shapes.add(tuple(transform(item)["image"].shape))
        except MedPFLError as error:
            failures.append(error)
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise MedPFLError(
            f"{len(failures)} of {len(items)} images cannot be used:\n    "
            + "\n    ".join(error.problem for error in failures),
            fix="; ".join(dict.fromkeys(error.fix for error in failures)),
            site=site,
        )
    return DataCheckSummary(
        source=site_data.source,
        class_names=site_data.class_names,
        training_counts=site_data.class_counts("training"),
        validation_counts=site_data.class_counts("validation"),
        image_shape=next(iter(shapes)),
        site=site,
    )
