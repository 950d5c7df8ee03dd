"""Check a site's data before a run: every file listed, every image readable, and a summary to show."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medpfl_app.data.config import DataConfig
from medpfl_app.data.datalist import load_site_data
from medpfl_app.errors import MedPFLError


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

    Unlike training, which stops at the first bad file, this reads all images and reports every unreadable one
    in a single error.

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
            fix=failures[0].fix,
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
