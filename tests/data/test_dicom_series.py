"""A folder of single-frame DICOM slices of one series is one volume, ordered by position, then sliced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from datafiles import write_datalist
from dicom_variants import gray, ramp, save, series_slice
from pydicom.uid import generate_uid

from medpfl_app.data import DataConfig, build_transforms, load_site_data
from medpfl_app.data.dicom_series import load_dicom_series, order_series
from medpfl_app.errors import MedPFLError

SLICES = np.stack([ramp((12, 10), seed=index) for index in range(5)])
HEIGHTS = [-20.0, -17.5, -15.0, -12.5, -10.0]  # slice k sits at HEIGHTS[k]


def _write_shuffled(folder: Path, *, positions: bool = True, instances: bool = True) -> str:
    """Write the 5 slices under names whose order is not the slice order; InstanceNumber disagrees with position."""
    uid = generate_uid()
    for index, name in zip(range(5), ["c", "a", "e", "b", "d"]):
        series_slice(
            folder / f"{name}.dcm",
            SLICES[index],
            series_uid=uid,
            z=HEIGHTS[index] if positions else None,
            instance=(5 - index) if instances else None,
        )
    return uid


def test_series_is_ordered_by_position_along_the_normal(tmp_path: Path) -> None:
    """Position wins over InstanceNumber and file names; the volume is [1, rows, columns, slices]."""
    _write_shuffled(tmp_path / "s")
    volume = load_dicom_series(tmp_path / "s", max_pixels=10**6)
    assert volume.shape == (1, 12, 10, 5)
    np.testing.assert_array_equal(np.moveaxis(volume[0], -1, 0), SLICES)


def test_tilted_orientation_uses_the_normal(tmp_path: Path) -> None:
    """With a flipped normal (row × column = −z) increasing z means decreasing position: the order reverses."""
    uid = generate_uid()
    for index in range(5):
        series_slice(
            tmp_path / f"{index}.dcm",
            SLICES[index],
            series_uid=uid,
            z=HEIGHTS[index],
            instance=None,
            orientation=(0, 1, 0, 1, 0, 0),
        )
    volume = load_dicom_series(tmp_path, max_pixels=10**6)
    np.testing.assert_array_equal(np.moveaxis(volume[0], -1, 0), SLICES[::-1])


def test_instance_number_then_file_name_fallbacks(tmp_path: Path) -> None:
    """Without positions InstanceNumber orders the slices; without either, file names do."""
    _write_shuffled(tmp_path / "inst", positions=False)
    by_instance = [path.name for path in order_series(tmp_path / "inst")]
    assert by_instance == ["d.dcm", "b.dcm", "e.dcm", "a.dcm", "c.dcm"]  # InstanceNumber 1..5 = slices 4..0
    _write_shuffled(tmp_path / "names", positions=False, instances=False)
    assert [path.name for path in order_series(tmp_path / "names")] == ["a.dcm", "b.dcm", "c.dcm", "d.dcm", "e.dcm"]


def test_series_folder_in_a_datalist_is_sliced_by_the_slice_policy(tmp_path: Path) -> None:
    """A datalist item naming the folder loads the middle slice by default, slice_index otherwise."""
    _write_shuffled(tmp_path / "series")
    datalist = write_datalist(tmp_path / "d.json", {"training": [{"image": "series", "label": 0}]})
    item = load_site_data(datalist).training[0]
    assert item["image"] == str((tmp_path / "series").resolve()) and "frame" not in item
    for index, expected in ((None, SLICES[2]), (4, SLICES[4])):
        config = DataConfig(image_size=12, slice_index=index)
        image = build_transforms(config, train=False)(dict(item))["image"][0].numpy()
        scaled = (expected - expected.min()) / (expected.max() - expected.min())
        assert image.shape == (12, 12)
        np.testing.assert_allclose(image[:, 0], scaled[:, 0], atol=1e-5)  # first column survives the 10→12 resize


def test_bad_series_folders_are_refused_by_name(tmp_path: Path) -> None:
    """Mixed series, duplicate positions, a multi-frame slice, mixed sizes and an empty folder each get one error."""
    _write_shuffled(tmp_path / "mixed")
    series_slice(tmp_path / "mixed" / "z.dcm", SLICES[0], series_uid=generate_uid(), z=0.0, instance=9)
    with pytest.raises(MedPFLError, match="mixes 2 series"):
        order_series(tmp_path / "mixed")
    uid = _write_shuffled(tmp_path / "dup")
    series_slice(tmp_path / "dup" / "f.dcm", SLICES[0], series_uid=uid, z=HEIGHTS[1], instance=7)
    with pytest.raises(MedPFLError, match=r"a\.dcm and f\.dcm have the same slice position"):
        order_series(tmp_path / "dup")
    uid = _write_shuffled(tmp_path / "sizes")
    series_slice(tmp_path / "sizes" / "f.dcm", ramp((8, 8)), series_uid=uid, z=0.0, instance=8)
    with pytest.raises(MedPFLError, match="slices of different sizes"):
        order_series(tmp_path / "sizes")
    (tmp_path / "empty").mkdir()
    datalist = write_datalist(tmp_path / "d.json", {"training": [{"image": "empty", "label": 0}]})
    with pytest.raises(MedPFLError, match="holds no .dcm files"):
        load_site_data(datalist)


def test_multiframe_file_in_a_series_and_series_bomb_guard(tmp_path: Path) -> None:
    """A multi-frame file inside a series folder is refused; so is a series over the pixel limit, before decoding."""
    uid = _write_shuffled(tmp_path / "s")
    with pytest.raises(MedPFLError, match=r"12×10×1 samples × 5 slices = 600 values, over the limit of 500"):
        load_dicom_series(tmp_path / "s", max_pixels=500)
    multi = pydicom.dcmread(gray(tmp_path / "s" / "multi.dcm", np.stack([SLICES[0], SLICES[1]])))
    multi.SeriesInstanceUID = uid
    save(multi, tmp_path / "s" / "multi.dcm")
    with pytest.raises(MedPFLError, match="multi.dcm is a multi-frame file"):
        order_series(tmp_path / "s")


def test_series_sub_folder_in_a_class_folder_is_one_sample(tmp_path: Path) -> None:
    """In a class-per-folder tree a sub-folder of .dcm slices is one series sample; other sub-folders are refused."""
    _write_shuffled(tmp_path / "tree" / "training" / "a" / "patient1")
    gray(tmp_path / "tree" / "training" / "b" / "b.dcm", ramp((12, 10), seed=9))
    data = load_site_data(tmp_path / "tree")
    assert [item["image"] for item in data.training] == [
        str((tmp_path / "tree" / "training" / "a" / "patient1").resolve()),
        str((tmp_path / "tree" / "training" / "b" / "b.dcm").resolve()),
    ]
    item = build_transforms(DataConfig(image_size=8), train=True)(dict(data.training[0], index=0))
    assert item["image"].shape == (1, 8, 8)
    (tmp_path / "tree" / "training" / "b" / "notes").mkdir()
    (tmp_path / "tree" / "training" / "b" / "notes" / "x.txt").write_text("x")
    with pytest.raises(MedPFLError, match="contains a sub-folder notes without .dcm files"):
        load_site_data(tmp_path / "tree")
