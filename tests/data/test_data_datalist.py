"""load_site_data: datalists, class-per-folder trees, and one clear error per kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from datafiles import gradient, write_datalist, write_dicom, write_nifti, write_png

from medpfl_app.data import load_site_data
from medpfl_app.errors import MedPFLError


def test_datalist_resolves_relative_paths(small_datalist: Path) -> None:
    """Relative image paths resolve against the JSON's folder; classes and counts are read."""
    data = load_site_data(small_datalist, site="site-1")
    assert data.class_names == ("a", "b") and data.num_classes == 2
    assert len(data.training) == 4 and len(data.validation) == 2
    assert data.training[0] == {"image": str((small_datalist.parent / "images/t0.nii.gz").resolve()), "label": 0}
    assert all(Path(item["image"]).is_absolute() for item in data.training + data.validation)
    assert data.class_counts("training") == (2, 2) and data.class_counts("validation") == (1, 1)
    assert data.source == small_datalist.resolve()
    # A folder holding a datalist.json is read through it.
    assert load_site_data(small_datalist.parent).training == data.training


def test_datalist_without_classes_infers_them(tmp_path: Path) -> None:
    """Without "classes", num_classes is the largest label + 1 (or the given num_classes)."""
    write_png(tmp_path / "x.png", gradient((8, 8)))
    path = write_datalist(tmp_path / "d.json", {"training": [{"image": "x.png", "label": 2}]})
    assert load_site_data(path).class_names == ("0", "1", "2")
    assert load_site_data(path, num_classes=4).num_classes == 4


def test_class_folder_tree_with_deterministic_split(tmp_path: Path) -> None:
    """A class-per-folder tree mixes formats, splits 80/20 per class, identically every time."""
    for number in range(5):
        write_nifti(tmp_path / "glioma" / f"g{number}.nii.gz", gradient((8, 8), seed=number))
        write_png(tmp_path / "no_tumor" / f"n{number}.png", gradient((8, 8), seed=9 + number))
    write_dicom(tmp_path / "no_tumor" / "n9.dcm", gradient((8, 8)))
    (tmp_path / "no_tumor" / ".DS_Store").write_bytes(b"\0")
    data = load_site_data(tmp_path, site="site-2")
    assert data.class_names == ("glioma", "no_tumor")
    assert data.class_counts("training") == (4, 5) and data.class_counts("validation") == (1, 1)
    assert load_site_data(tmp_path) == data
    images = {item["image"] for item in data.training + data.validation}
    assert len(images) == 11


def test_class_folder_tree_with_explicit_split(tmp_path: Path) -> None:
    """training/ and validation/ sub-trees are used as given."""
    for split, count in (("training", 3), ("validation", 1)):
        for name in ("a", "b"):
            for number in range(count):
                write_png(tmp_path / split / name / f"{number}.png", gradient((8, 8), seed=number))
    data = load_site_data(tmp_path)
    assert data.class_counts("training") == (3, 3) and data.class_counts("validation") == (1, 1)
    assert all("/validation/" in item["image"] for item in data.validation)


def _error(source: Path, **kwargs: object) -> str:
    with pytest.raises(MedPFLError) as caught:
        load_site_data(source, site="site-7", **kwargs)
    message = str(caught.value)
    assert message.startswith("[site-7] ") and "\n  fix: " in message
    assert caught.value.site == "site-7"
    return message


def test_missing_source(tmp_path: Path) -> None:
    """A missing source names the path."""
    assert "nowhere does not exist" in _error(tmp_path / "nowhere")


def test_empty_folder(tmp_path: Path) -> None:
    """An empty data folder says so."""
    (tmp_path / "empty").mkdir()
    assert "empty" in _error(tmp_path / "empty")


def test_datalist_naming_missing_file(small_datalist: Path) -> None:
    """A datalist entry pointing nowhere names the entry and the missing file."""
    (small_datalist.parent / "images" / "t2.nii.gz").unlink()
    message = _error(small_datalist)
    assert "training[2]" in message and "t2.nii.gz" in message and "does not exist" in message


def test_invalid_json(tmp_path: Path) -> None:
    """Broken JSON names the file and the position."""
    path = tmp_path / "broken.json"
    path.write_text('{"training": [', encoding="utf-8")
    message = _error(path)
    assert "broken.json" in message and "not valid JSON" in message and "line 1" in message


@pytest.mark.parametrize("label", ["1", 1.0, True, [0, 1]])
def test_label_not_an_int(small_datalist: Path, label: object) -> None:
    """Non-integer labels are rejected, naming the file."""
    write_png(small_datalist.parent / "x.png", gradient((8, 8)))
    path = write_datalist(small_datalist.parent / "bad.json", {"training": [{"image": "x.png", "label": label}]})
    message = _error(path)
    assert "not an integer" in message and "x.png" in message


def test_label_out_of_range(small_datalist: Path) -> None:
    """A label outside [0, num_classes) names the item and the range."""
    write_png(small_datalist.parent / "x.png", gradient((8, 8)))
    content = {"classes": ["a", "b"], "training": [{"image": "x.png", "label": 2}]}
    message = _error(write_datalist(small_datalist.parent / "bad.json", content))
    assert "label 2" in message and "[0, 2)" in message and "x.png" in message
    negative = {"training": [{"image": "x.png", "label": -1}]}
    assert "label -1" in _error(write_datalist(small_datalist.parent / "neg.json", negative))
    one = write_datalist(small_datalist.parent / "one.json", {"training": [{"image": "x.png", "label": 1}]})
    assert "[0, 1)" in _error(one, num_classes=1)
    assert "names 2 classes but 1 are expected" in _error(small_datalist, num_classes=1)


def test_zero_training_images(tmp_path: Path) -> None:
    """A site with nothing to train on is an error, in both source kinds."""
    write_png(tmp_path / "v.png", gradient((8, 8)))
    path = write_datalist(tmp_path / "d.json", {"training": [], "validation": [{"image": "v.png", "label": 0}]})
    assert "zero training images" in _error(path)
    (tmp_path / "tree" / "training" / "a").mkdir(parents=True)
    assert "zero training images" in _error(tmp_path / "tree")


def test_unsupported_extension(tmp_path: Path) -> None:
    """Unsupported file types are named in datalists and in class folders."""
    (tmp_path / "scan.mha").write_bytes(b"x")
    path = write_datalist(tmp_path / "d.json", {"training": [{"image": "scan.mha", "label": 0}]})
    assert "scan.mha" in _error(path) and "not supported" in _error(path)
    (tmp_path / "tree" / "a").mkdir(parents=True)
    (tmp_path / "tree" / "a" / "notes.txt").write_text("x")
    assert "notes.txt" in _error(tmp_path / "tree")
