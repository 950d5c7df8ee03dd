"""MONAI datasets and data loaders for one site, failing early and clearly on unreadable or NaN/Inf images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader, Dataset

from medpfl_app.data.config import DataConfig
from medpfl_app.data.datalist import SiteData
from medpfl_app.data.transforms import INDEX_KEY, build_transforms


def build_dataset(
    items: Sequence[dict[str, Any]],
    config: DataConfig,
    *,
    train: bool,
    site: str | None = None,
    validate: bool = True,
    progress: bool = False,
) -> Dataset:
    """Wrap items in a MONAI ``CacheDataset`` (``config.cache_rate > 0``) or a lazy ``Dataset``.

    Every image is read once here: cached images while the cache fills, the others (``cache_rate < 1``) by a
    validation pass that keeps nothing, so a corrupt file, or one with NaN/Inf pixels, stops the site before training
    starts. With ``validate=False`` the same checks run on first use of each item, so no such image is ever
    yielded.

    Args:
        items: ``{"image": path, "label": int}`` items; training items also get ``"index"``, their position in
            ``items`` (the site-local sample index recorded by the audit), unless they carry one already.
        config: Data settings.
        train: Whether these are training items.
        site: Site name shown in errors.
        validate: Read the images that are not cached once up front (default); ``False`` defers to first use.
        progress: Show a progress bar while images are read.

    Returns:
        A dataset of ``{"image": FloatTensor[C, H, W], "label": LongTensor[][, "index": LongTensor[]]}``.

    Raises:
        MedPFLError: If an image cannot be read, has an unusable shape or NaN/Inf pixels, naming the site and file.
    """
    data = [dict(item) for item in items]
    if train:
        for position, item in enumerate(data):
            item.setdefault(INDEX_KEY, position)
    transform = build_transforms(config, train=train, site=site)
    if config.cache_rate > 0:
        cache = CacheDataset(
            data,
            transform=transform,
            cache_rate=config.cache_rate,
            num_workers=max(1, config.num_workers),
            progress=progress,
            copy_cache=False,  # nothing after the cache mutates items, so copying each access is waste
        )
        dataset: Dataset = cache
        cached = cache.cache_num
    else:
        dataset = Dataset(data, transform=transform)
        cached = 0
    if validate and cached < len(data):
        from tqdm.auto import tqdm

        for item in tqdm(data[cached:], desc="checking images", unit="img", disable=not progress):
            transform(item)
    return dataset


def build_dataloaders(
    site_data: SiteData,
    config: DataConfig,
    *,
    site: str | None = None,
    progress: bool = False,
) -> tuple[DataLoader, DataLoader]:
    """Build the training and validation loaders of a site.

    Training batches are shuffled (when ``config.shuffle``) by a ``torch.Generator`` seeded with ``config.seed``,
    so the same config gives the same batch order in every run; each epoch continues that generator's sequence.
    Training items carry ``"index"``, their position in ``site_data.training``.

    Args:
        site_data: The site's items.
        config: Data settings.
        site: Site name shown in errors.
        progress: Show progress bars while images are read.

    Returns:
        ``(train_loader, val_loader)``; the validation loader is empty if the site has no validation items.

    Raises:
        MedPFLError: If an image cannot be read or has NaN/Inf pixels, naming the site and file.
    """
    train_set = build_dataset(site_data.training, config, train=True, site=site, progress=progress)
    val_set = build_dataset(site_data.validation, config, train=False, site=site, progress=progress)
    generator = torch.Generator()
    generator.manual_seed(config.seed)
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        shuffle=config.shuffle,
        num_workers=config.num_workers,
        generator=generator,
    )
    val_loader = DataLoader(val_set, batch_size=config.val_batch_size, shuffle=False, num_workers=config.num_workers)
    return train_loader, val_loader
