"""Fixtures of the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from datafiles import gradient, write_datalist, write_nifti


@pytest.fixture
def small_datalist(tmp_path: Path) -> Path:
    """A datalist of six 2-D NIfTI images (two classes) with relative paths."""
    training = []
    for number in range(4):
        write_nifti(tmp_path / "images" / f"t{number}.nii.gz", gradient((12, 10), seed=number))
        training.append({"image": f"images/t{number}.nii.gz", "label": number % 2})
    validation = []
    for number in range(2):
        write_nifti(tmp_path / "images" / f"v{number}.nii.gz", gradient((12, 10), seed=10 + number))
        validation.append({"image": f"images/v{number}.nii.gz", "label": number})
    return write_datalist(
        tmp_path / "datalist.json", {"classes": ["a", "b"], "training": training, "validation": validation}
    )
