"""Poisoned pixels (adversarial sites, item 7): NaN/±Inf images are refused by `medpfl data check` and at load."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from datafiles import gradient, write_datalist, write_dicom, write_float_dicom, write_nifti, write_png

from medpfl_app.cli.main import main
from medpfl_app.data import DataConfig, build_dataloaders, build_dataset, build_transforms, load_site_data
from medpfl_app.data.check import NONFINITE_FIX, check_finite
from medpfl_app.errors import MedPFLError

POISONS = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}
KIND = {"nan": "1 NaN", "+inf": "1 +Inf", "-inf": "1 -Inf"}
ROW, COL = 3, 4  # where the poisoned pixel sits in every 12×10 test image


def _poisoned(value: float, shape: tuple[int, ...] = (12, 10), seed: int = 0) -> np.ndarray:
    array = gradient(shape, seed=seed)
    array[(ROW, COL) + (0,) * (len(shape) - 2)] = value
    return array


def _write_poisoned(folder: Path, fmt: str, poison: str) -> Path:
    value = POISONS[poison]
    if fmt == "nifti":
        return write_nifti(folder / "poisoned.nii.gz", _poisoned(value))
    if fmt == "nifti-f64":
        return write_nifti(folder / "poisoned.nii", _poisoned(value).astype(np.float64))
    if fmt == "nifti-3d":  # poison far from the middle slice that training uses: the whole volume is checked
        volume = gradient((12, 10, 6), seed=5)
        volume[ROW, COL, 0] = value
        return write_nifti(folder / "poisoned.nii.gz", volume)
    assert fmt == "dicom-float"
    return write_float_dicom(folder / "poisoned.dcm", _poisoned(value))


def _class_tree(root: Path, *, poisoned: tuple[str, str] | None = None) -> Path:
    """A class-per-folder tree (training/ and validation/ split), with one poisoned training image if asked."""
    for number in range(3):
        write_nifti(root / "training" / "a" / f"a{number}.nii.gz", gradient((12, 10), seed=number))
        write_png(root / "training" / "b" / f"b{number}.png", gradient((12, 10), seed=10 + number))
    write_nifti(root / "validation" / "a" / "va.nii.gz", gradient((12, 10), seed=20))
    write_dicom(root / "validation" / "b" / "vb.dcm", gradient((12, 10), seed=21))
    if poisoned is not None:
        _write_poisoned(root / "training" / "b", *poisoned)
    return root


# check_finite: the pure function


@pytest.mark.parametrize("poison", sorted(POISONS))
def test_check_finite_names_file_site_kind_and_index(poison: str) -> None:
    """One non-finite value is refused with the file, the site, its kind, its index and the fix."""
    array = np.zeros((1, 5, 6), dtype=np.float32)
    array[0, 2, 3] = POISONS[poison]
    with pytest.raises(MedPFLError) as caught:
        check_finite(array, "/data/x.nii.gz", site="site-2")
    error = caught.value
    assert error.site == "site-2" and error.fix == NONFINITE_FIX
    expected = f"image /data/x.nii.gz has 1 NaN/Inf pixel value ({KIND[poison]}; the first at index (0, 2, 3))"
    assert error.problem == expected
    assert str(error).startswith("[site-2] image /data/x.nii.gz") and "re-export the image" in str(error)


def test_check_finite_counts_every_kind_and_accepts_tensors() -> None:
    """NaN, +Inf and -Inf are counted separately; NumPy arrays, tensors and MetaTensors are all checked."""
    from monai.data import MetaTensor

    values = np.array([[np.nan, 1.0, np.inf], [np.nan, -np.inf, 0.0]], dtype=np.float64)
    for array in (values, torch.from_numpy(values), torch.from_numpy(values).half(), MetaTensor(values)):
        with pytest.raises(MedPFLError) as caught:
            check_finite(array, "p.nii")
        assert caught.value.problem == (
            "image p.nii has 4 NaN/Inf pixel values (2 NaN, 1 +Inf, 1 -Inf; the first at index (0, 0))"
        )
    with pytest.raises(MedPFLError, match="after intensity scaling"):
        check_finite(values, "p.nii", stage="intensity scaling")


def test_check_finite_passes_finite_and_integer_images() -> None:
    """Finite floats (including float32's extremes), integers and empty arrays pass."""
    finite = np.array([np.finfo(np.float32).max, np.finfo(np.float32).min, 0.0], dtype=np.float32)
    for array in (finite, torch.from_numpy(finite), np.arange(6, dtype=np.uint16), np.zeros(0, dtype=np.float32)):
        check_finite(array, "ok.nii")


# the transforms: every format that can hold NaN/Inf


@pytest.mark.parametrize("poison", sorted(POISONS))
@pytest.mark.parametrize("fmt", ["nifti", "nifti-f64", "nifti-3d", "dicom-float"])
def test_transforms_refuse_poisoned_image(tmp_path: Path, fmt: str, poison: str) -> None:
    """Loading a NIfTI (float32/64, 2-D/3-D) or float DICOM with one NaN/±Inf pixel raises one clear error."""
    path = _write_poisoned(tmp_path, fmt, poison)
    transform = build_transforms(DataConfig(image_size=8), train=True, site="site-1")
    with pytest.raises(MedPFLError) as caught:
        transform({"image": str(path), "label": 0, "index": 0})
    error = caught.value
    assert error.site == "site-1" and error.fix == NONFINITE_FIX
    index = (0, ROW, COL, 0) if fmt == "nifti-3d" else (0, ROW, COL)
    assert error.problem == f"image {path} has 1 NaN/Inf pixel value ({KIND[poison]}; the first at index {index})"
    assert error.__cause__ is None and error.__suppress_context__  # not MONAI's "applying transform" chain


def test_float_dicom_without_poison_still_loads(tmp_path: Path) -> None:
    """The float-DICOM writer above gives a readable file (pixels kept, rows first): the refusals are about pixels."""
    array = gradient((12, 12), seed=4)
    path = write_float_dicom(tmp_path / "f.dcm", array)
    item = build_transforms(DataConfig(image_size=12), train=False)({"image": str(path), "label": 0})
    np.testing.assert_allclose(item["image"][0].numpy(), (array - array.min()) / (array.max() - array.min()), atol=1e-5)
    assert item["image"].shape == (1, 12, 12) and bool(torch.isfinite(item["image"]).all())


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_values_overflowing_float32_are_refused(tmp_path: Path) -> None:
    """Finite float64 values beyond float32's range read as Inf; they are refused like Inf pixels."""
    array = gradient((12, 10)).astype(np.float64)
    array[ROW, COL] = 1e300
    path = write_nifti(tmp_path / "huge.nii", array)
    with pytest.raises(MedPFLError, match=r"1 NaN/Inf pixel value \(1 \+Inf") as caught:
        build_transforms(DataConfig(image_size=8), train=True)({"image": str(path), "label": 0})
    assert str(path) in caught.value.problem


def test_extreme_finite_range_that_scales_to_nan_is_refused(tmp_path: Path) -> None:
    """Finite float32 extremes (±3e38) overflow in min–max scaling; the second guard catches the NaN there."""
    array = gradient((12, 10))
    array[0, 0], array[ROW, COL] = -3e38, 3e38
    path = write_nifti(tmp_path / "extreme.nii.gz", array)
    with pytest.raises(MedPFLError) as caught:
        build_transforms(DataConfig(image_size=8), train=True, site="site-4")({"image": str(path), "label": 0})
    assert str(caught.value).startswith(f"[site-4] image {path} has ")
    assert "after intensity scaling and resizing" in caught.value.problem
    assert caught.value.fix == NONFINITE_FIX


# training load: the site's datasets and loaders


@pytest.mark.parametrize("cache_rate", [1.0, 0.5, 0.0])
def test_training_load_refuses_poisoned_image_before_any_batch(tmp_path: Path, cache_rate: float) -> None:
    """build_dataloaders (what the site's training uses) fails while building, naming site and file."""
    path = write_nifti(tmp_path / "images" / "bad.nii.gz", _poisoned(np.nan))
    training = [{"image": f"images/t{n}.nii.gz", "label": n % 2} for n in range(3)]
    for number in range(3):
        write_nifti(tmp_path / "images" / f"t{number}.nii.gz", gradient((12, 10), seed=number))
    datalist = write_datalist(
        tmp_path / "datalist.json", {"training": [*training, {"image": "images/bad.nii.gz", "label": 1}]}
    )
    config = DataConfig(image_size=8, batch_size=2, cache_rate=cache_rate)
    with pytest.raises(MedPFLError) as caught:
        build_dataloaders(load_site_data(datalist, site="site-3"), config, site="site-3")
    assert str(caught.value).startswith(f"[site-3] image {path.resolve()} has 1 NaN/Inf pixel value (1 NaN")
    assert caught.value.fix == NONFINITE_FIX


def test_lazy_dataset_never_yields_a_poisoned_image(tmp_path: Path) -> None:
    """Without the up-front pass (validate=False, as the audit's re-load uses) the item fails on access instead."""
    good = write_nifti(tmp_path / "good.nii.gz", gradient((12, 10)))
    bad = write_nifti(tmp_path / "bad.nii.gz", _poisoned(-np.inf))
    items = [{"image": str(good), "label": 0}, {"image": str(bad), "label": 1}]
    dataset = build_dataset(items, DataConfig(image_size=8, cache_rate=0.0), train=True, site="site-5", validate=False)
    assert bool(torch.isfinite(dataset[0]["image"]).all())
    with pytest.raises(MedPFLError, match=r"^\[site-5\] image .*bad\.nii\.gz has 1 NaN/Inf pixel value \(1 -Inf"):
        dataset[1]


# medpfl data check


def test_cli_check_refuses_poisoned_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`medpfl data check` exits 1; the poisoned file's row names the site's file, the NaN/Inf count and the fix."""
    root = _class_tree(tmp_path / "site", poisoned=("nifti", "+inf"))
    assert main(["data", "check", str(root), "--site", "site-2", "--image-size", "8"]) == 1
    out = capsys.readouterr().out
    poisoned = root / "training" / "b" / "poisoned.nii.gz"
    assert f"image {poisoned} has 1 NaN/Inf pixel value (1 +Inf" in out
    assert "fix: re-export the image; NaN/Inf pixels cannot be trained on" in out
    assert "[site-2] data NOT usable: 1 of 9 files have errors" in out
    assert "data OK" not in out


def test_cli_check_lists_every_bad_image_in_one_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Poisoned and corrupt files are all reported in one run, each in its own row with its fix."""
    root = _class_tree(tmp_path / "site", poisoned=("dicom-float", "nan"))
    nifti = write_nifti(root / "validation" / "a" / "vnan.nii", _poisoned(np.nan, seed=7))
    (root / "training" / "a" / "corrupt.nii.gz").write_bytes(b"not a nifti file")
    assert main(["data", "check", str(root), "--image-size", "8"]) == 1
    out = capsys.readouterr().out
    assert "data NOT usable: 3 of 11 files have errors" in out
    assert f"image {root / 'training' / 'b' / 'poisoned.dcm'} has 1 NaN/Inf pixel value (1 NaN" in out
    assert f"image {nifti} has 1 NaN/Inf pixel value (1 NaN" in out
    assert str(root / "training" / "a" / "corrupt.nii.gz") in out
    assert "re-export the image" in out and "fix: replace or re-export" in out


def test_cli_check_passes_a_clean_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same tree without the poisoned file passes, exit 0."""
    root = _class_tree(tmp_path / "site")
    assert main(["data", "check", str(root), "--site", "site-2", "--image-size", "8"]) == 0
    captured = capsys.readouterr()
    assert f"[site-2] data check: {root}" in captured.out and "6 training, 2 validation" in captured.out
    assert "[site-2] data OK: 8 files" in captured.out
    assert "error" not in captured.err


def test_nifti_writer_really_stores_the_poison(tmp_path: Path) -> None:
    """Guard against a vacuous test: the written NIfTI files hold the non-finite values on disk."""
    for poison, value in POISONS.items():
        stored = np.asarray(nib.load(_write_poisoned(tmp_path / poison, "nifti", poison)).dataobj)
        assert np.isnan(stored[ROW, COL]) if poison == "nan" else stored[ROW, COL] == value
