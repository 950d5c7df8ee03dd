"""build_dataset / build_dataloaders: batches, sample indices, seeded order, corrupt files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datafiles import gradient, write_datalist, write_png

from medpfl_app.data import DataConfig, build_dataloaders, build_dataset, load_site_data
from medpfl_app.errors import MedPFLError


@pytest.mark.parametrize("cache_rate", [1.0, 0.5, 0.0])
def test_loaders_yield_batches_with_indices(small_datalist: Path, cache_rate: float) -> None:
    """Batches hold [0, 1] images of the configured shape, long labels and each sample's training index."""
    data = load_site_data(small_datalist)
    config = DataConfig(image_size=8, batch_size=3, val_batch_size=5, cache_rate=cache_rate)
    train_loader, val_loader = build_dataloaders(data, config, site="site-1")
    batches = list(train_loader)
    assert [batch["image"].shape for batch in batches] == [(3, 1, 8, 8), (1, 1, 8, 8)]
    indices = torch.cat([batch["index"] for batch in batches])
    assert sorted(indices.tolist()) == [0, 1, 2, 3]
    labels = torch.cat([batch["label"] for batch in batches])
    assert labels.dtype == torch.long
    assert labels.tolist() == [data.training[i]["label"] for i in indices.tolist()]
    assert all(0.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0 for batch in batches)
    val = list(val_loader)
    assert len(val) == 1 and val[0]["image"].shape == (2, 1, 8, 8) and "index" not in val[0]


def test_shuffle_is_seeded(small_datalist: Path) -> None:
    """The same seed gives the same batch order; shuffle=False keeps the datalist order."""

    def order(**settings: object) -> list[int]:
        config = DataConfig(image_size=8, batch_size=1, **settings)
        loader, _ = build_dataloaders(load_site_data(small_datalist), config)
        return [int(batch["index"]) for epoch in range(3) for batch in loader]

    assert order(seed=1) == order(seed=1)
    assert order(seed=1) != order(seed=2)
    assert order(shuffle=False) == [0, 1, 2, 3] * 3


@pytest.mark.parametrize("cache_rate", [1.0, 0.0])
def test_corrupt_image_is_one_clear_error(tmp_path: Path, cache_rate: float) -> None:
    """A corrupt file fails while the dataset is built, naming site and file, without MONAI's chain."""
    write_png(tmp_path / "good.png", gradient((8, 8)))
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti file")
    path = write_datalist(
        tmp_path / "d.json",
        {"training": [{"image": "good.png", "label": 0}, {"image": "bad.nii.gz", "label": 1}]},
    )
    with pytest.raises(MedPFLError) as caught:
        build_dataloaders(load_site_data(path), DataConfig(image_size=8, cache_rate=cache_rate), site="site-3")
    message = str(caught.value)
    assert message.startswith("[site-3] cannot read image file") and "bad.nii.gz" in message
    assert "applying transform" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_build_dataset_keeps_given_index(small_datalist: Path) -> None:
    """Items that already carry an index keep it (a caller may pass a subset of the training list)."""
    data = load_site_data(small_datalist)
    subset = [dict(data.training[2], index=2), dict(data.training[3], index=3)]
    dataset = build_dataset(subset, DataConfig(image_size=8), train=True)
    assert [int(dataset[i]["index"]) for i in range(2)] == [2, 3]
