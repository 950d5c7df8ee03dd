"""DataConfig: defaults, validation and the dict round trip."""

from __future__ import annotations

import pytest

from medpfl_app.data import DataConfig
from medpfl_app.errors import MedPFLError


def test_defaults_round_trip_through_dict() -> None:
    """to_dict/from_dict reproduce the config, and overrides win."""
    config = DataConfig(image_size=32, slice_index=3, cache_rate=0)
    assert DataConfig.from_dict(config.to_dict()) == config
    assert config.cache_rate == 0.0 and isinstance(config.cache_rate, float)
    assert DataConfig.from_dict({"batch_size": 4}, batch_size=2).batch_size == 2
    assert DataConfig().to_dict()["image_size"] == 64


def test_unknown_key_is_named() -> None:
    """A typo in a setting name is reported with the known names."""
    with pytest.raises(MedPFLError, match="batchsize") as caught:
        DataConfig.from_dict({"batchsize": 4})
    assert "batch_size" in caught.value.fix


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"image_size": 0}, "image_size"),
        ({"in_channels": 2}, "in_channels"),
        ({"slice_axis": 3}, "slice_axis"),
        ({"slice_index": -1}, "slice_index"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"cache_rate": 1.5}, "cache_rate"),
        ({"shuffle": "yes"}, "shuffle"),
        ({"num_workers": True}, "num_workers"),
    ],
)
def test_invalid_values_are_rejected(settings: dict, name: str) -> None:
    """Each invalid value gives a MedPFLError naming the setting."""
    with pytest.raises(MedPFLError, match=name):
        DataConfig(**settings)
