"""Fixtures with real MRI: the sample set of `medpfl_app.data.samples`, cut from images inside installed packages.

Imported by name (``from real_images import real_samples``): a module with a unique name, not ``conftest``. Tests
that use these fixtures are skipped, with the install command, when dipy is missing.
"""

from __future__ import annotations

import pytest

from medpfl_app.data.samples import SampleDataset, write_real_samples


def require_real_images() -> None:
    """Skip the calling test when the packages that carry the real images are not installed."""
    pytest.importorskip("dipy", reason="real MRI samples need dipy: pip install 'medpfl_app[realdata]'")


@pytest.fixture(scope="session")
def real_samples(tmp_path_factory: pytest.TempPathFactory) -> SampleDataset:
    """The default real-MRI sample set: 3 sites (NIfTI, PNG, NIfTI), 72 images of 3 classes, 64x64."""
    require_real_images()
    return write_real_samples(tmp_path_factory.mktemp("real_samples") / "samples")
