"""MedPFL's data layer: site data discovery, MONAI transforms and loaders, partitioning and the demo data set.

Names are imported lazily, so ``from medpfl_app.data import DataConfig`` does not pull in MONAI or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "DataConfig": "config",
    "SiteData": "datalist",
    "SUPPORTED_SUFFIXES": "datalist",
    "load_site_data": "datalist",
    "build_transforms": "transforms",
    "build_dataset": "loaders",
    "build_dataloaders": "loaders",
    "SiteDataSettings": "site_config",
    "resolve_site_data": "site_config",
    "read_site_data_config": "site_config",
    "write_site_data_config": "site_config",
    "PHANTOM_CLASSES": "phantoms",
    "generate_phantom": "phantoms",
    "generate_phantoms": "phantoms",
    "DemoDataset": "demo",
    "generate_demo_dataset": "demo",
    "partition_indices": "partition",
    "DataCheckReport": "check",
    "DataCheckSummary": "check",
    "check_site_data": "check",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from medpfl_app.data.check import DataCheckReport, DataCheckSummary, check_site_data
    from medpfl_app.data.config import DataConfig
    from medpfl_app.data.datalist import SUPPORTED_SUFFIXES, SiteData, load_site_data
    from medpfl_app.data.demo import DemoDataset, generate_demo_dataset
    from medpfl_app.data.loaders import build_dataloaders, build_dataset
    from medpfl_app.data.partition import partition_indices
    from medpfl_app.data.phantoms import PHANTOM_CLASSES, generate_phantom, generate_phantoms
    from medpfl_app.data.site_config import (
        SiteDataSettings,
        read_site_data_config,
        resolve_site_data,
        write_site_data_config,
    )
    from medpfl_app.data.transforms import build_transforms


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
