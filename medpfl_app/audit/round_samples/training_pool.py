"""The site's training set: its digest as training loaded it, and its images loaded again for the scorer."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from medpfl_app.audit.round_samples.records import TrainingSet
from medpfl_app.audit.round_samples.unavailable import RoundSamplesUnavailable
from medpfl_app.data.config import DataConfig
from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:
    import torch


def training_set_digest(items: Iterable[Mapping[str, Any]]) -> str:
    """``sha256:`` of the training list as loaded: each item's image path, label, file size and modification time.

    Two loads of the same, unchanged files give the same digest; a reordered, edited or rewritten list or image
    file gives another.
    """
    entries = []
    for item in items:
        image = str(item["image"])
        try:
            status = os.stat(image)
            stamp: list[int] | None = [int(status.st_size), int(status.st_mtime_ns)]
        except OSError:
            stamp = None
        frame = item.get("frame")  # frames of one multi-frame file are separate samples
        entries.append([image, int(item["label"]), stamp] + ([int(frame)] if frame is not None else []))
    payload = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    return "sha256:" + hashlib.sha256(payload).hexdigest()


def describe_training_set(items: Sequence[Mapping[str, Any]], data: DataConfig, num_classes: int | None) -> TrainingSet:
    """The `TrainingSet` of ``items`` loaded with ``data`` (what the training script records)."""
    return TrainingSet(num_images=len(items), digest=training_set_digest(items), data=data, num_classes=num_classes)


@dataclass(frozen=True)
class TrainingPool:
    """All of a site's training images, as training saw them.

    Attributes:
        images: ``(P, C, H, W)`` float32, position ``i`` = item ``i`` of the training list.
        labels: The label of each image.
        training_set: What was loaded.
    """

    images: torch.Tensor
    labels: tuple[int, ...]
    training_set: TrainingSet


def load_training_pool(
    site: str,
    training_set: TrainingSet,
    *,
    workspace_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> TrainingPool:
    """Load the site's training images through the training script's own data resolution and transforms.

    The site's data is found by `medpfl_app.data.resolve_site_data` (as the training script does, with the same
    ``workspace_dir``), the list is read by `medpfl_app.data.load_site_data`, and each image goes through
    `medpfl_app.data.build_dataset` with the data settings training used (the transforms are deterministic; only
    caching and loader workers differ, which do not change pixels).

    Raises:
        RoundSamplesUnavailable: The data is not found, cannot be read, or is not the list training used.
    """
    import torch

    from medpfl_app.data import build_dataset, load_site_data, resolve_site_data

    try:
        settings = resolve_site_data(site, workspace_dir=workspace_dir, environ=environ)
    except MedPFLError as error:
        raise RoundSamplesUnavailable("the site's training data was not found", detail=str(error)) from None
    try:
        site_data = load_site_data(settings.datalist, site=site, num_classes=training_set.num_classes)
    except MedPFLError as error:
        raise RoundSamplesUnavailable("the site's training list could not be read", detail=str(error)) from None
    if (len(site_data.training), training_set_digest(site_data.training)) != (
        training_set.num_images,
        training_set.digest,
    ):
        raise RoundSamplesUnavailable(
            "the site's training data is not what it trained on (the list or its files changed since)",
            detail=f"{settings.datalist}: {len(site_data.training)} training items now, "
            f"{training_set.num_images} when trained",
        )
    config = replace(training_set.data, cache_rate=0.0, num_workers=0)
    try:
        dataset = build_dataset(site_data.training, config, train=True, site=site, validate=False)
        items = [dataset[i] for i in range(len(dataset))]
        images = torch.stack([torch.as_tensor(item["image"]).float() for item in items])
        labels = tuple(int(torch.as_tensor(item["label"]).reshape(-1)[0]) for item in items)
    except Exception as error:  # noqa: BLE001 - any loader failure becomes one path-free reason
        raise RoundSamplesUnavailable(
            f"the site's training images could not be loaded ({type(error).__name__})", detail=str(error)
        ) from None
    return TrainingPool(images=images, labels=labels, training_set=training_set)
