"""What the attack grid attacks: demo or datalist images, and updates with the seed paper's Laplace noise."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from medpfl_app.errors import MedPFLError


def load_demo_images(
    datalist: Path | None, *, count: int, image_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` images ``(N, 1, S, S)`` in [0, 1] and labels from a datalist, or from freshly generated demo data."""
    from medpfl_app.data import DataConfig, build_transforms, generate_demo_dataset, load_site_data

    with tempfile.TemporaryDirectory() as tmp:
        if datalist is None:
            per_site = max(count, 8)
            demo = generate_demo_dataset(
                Path(tmp) / "demo", num_sites=1, train_per_site=per_site, val_per_site=2, seed=seed
            )
            datalist = Path(next(iter(demo.site_datalists.values())))
        items = load_site_data(datalist).training
        if len(items) < count:
            raise MedPFLError(
                f"the datalist {datalist} has {len(items)} training images, the grid needs {count}",
                fix="use a larger datalist or fewer images (--seed-images / --noised-images)",
            )
        transform = build_transforms(DataConfig(image_size=image_size), train=False)
        loaded = [transform(dict(item)) for item in items[:count]]
    images = torch.stack([torch.as_tensor(x["image"]).float() for x in loaded]).clamp(0, 1)
    labels = torch.tensor([int(torch.as_tensor(x["label"])) for x in loaded])
    return images, labels


def noisy_update(update: dict[str, torch.Tensor], scale: float, seed: int) -> dict[str, torch.Tensor]:
    """``update`` with seeded Laplace noise of scale ``scale`` on every tensor (unchanged for a scale of 0)."""
    if scale <= 0:
        return update
    from medpfl_app.defenses.noise import laplace_noise

    noised, _record = laplace_noise({k: v.numpy() for k, v in update.items()}, scale, seed=seed)
    return {k: torch.as_tensor(v) for k, v in noised.items()}
