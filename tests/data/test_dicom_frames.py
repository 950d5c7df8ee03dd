"""Multi-frame DICOM: every frame is its own sample (datalists and class folders), addressed by "frame"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from datafiles import gradient, write_datalist, write_nifti
from dicom_variants import base_dataset, bundled, colour, gray, ramp, save

from medpfl_app.data import DataConfig, build_dataset, build_transforms, load_site_data
from medpfl_app.data.transforms import load_pixels
from medpfl_app.errors import MedPFLError


def _frames(seed: int = 0, count: int = 4) -> np.ndarray:
    return np.stack([ramp((12, 10), seed=seed + index) for index in range(count)])


def test_datalist_expands_each_frame_with_the_file_label(tmp_path: Path) -> None:
    """A 4-frame file becomes 4 samples in place (frames 0..3, the file's label); pixels are frame k, not a strip."""
    frames = _frames()
    gray(tmp_path / "cine.dcm", frames)
    write_nifti(tmp_path / "a.nii.gz", gradient((12, 10)))
    datalist = write_datalist(
        tmp_path / "d.json",
        {"training": [{"image": "a.nii.gz", "label": 0}, {"image": "cine.dcm", "label": 1}], "validation": []},
    )
    data = load_site_data(datalist)
    assert [item.get("frame") for item in data.training] == [None, 0, 1, 2, 3]
    assert [item["label"] for item in data.training] == [0, 1, 1, 1, 1]
    assert "frame" not in data.training[0]
    for item in data.training[1:]:
        loaded = load_pixels(item["image"], DataConfig(), frame=item["frame"])
        assert loaded.shape == (1, 12, 10)
        np.testing.assert_array_equal(loaded[0], frames[item["frame"]])
    dataset = build_dataset(data.training, DataConfig(image_size=12), train=True)
    assert [int(dataset[i]["index"]) for i in range(5)] == [0, 1, 2, 3, 4]
    assert dataset[2]["image"].shape == (1, 12, 12)


def test_explicit_frame_picks_one_frame_and_is_checked(tmp_path: Path) -> None:
    """ "frame": k keeps only that frame; a frame past the end, or on a non-DICOM file, is refused by name."""
    gray(tmp_path / "cine.dcm", _frames())
    write_nifti(tmp_path / "a.nii.gz", gradient((12, 10)))
    picked = write_datalist(tmp_path / "p.json", {"training": [{"image": "cine.dcm", "label": 0, "frame": 2}]})
    assert [item["frame"] for item in load_site_data(picked).training] == [2]
    past = write_datalist(tmp_path / "x.json", {"training": [{"image": "cine.dcm", "label": 0, "frame": 4}]})
    with pytest.raises(MedPFLError, match=r"has 4 frame\(s\); the datalist names frame 4"):
        load_site_data(past)
    not_dicom = write_datalist(tmp_path / "n.json", {"training": [{"image": "a.nii.gz", "label": 0, "frame": 0}]})
    with pytest.raises(MedPFLError, match="only multi-frame DICOM files have frames"):
        load_site_data(not_dicom)
    bad = write_datalist(tmp_path / "b.json", {"training": [{"image": "cine.dcm", "label": 0, "frame": "2"}]})
    with pytest.raises(MedPFLError, match="not a frame number"):
        load_site_data(bad)


def test_multiframe_rgb_frames_in_a_class_folder_stay_on_one_side_of_the_split(tmp_path: Path) -> None:
    """Class folders expand multi-frame files too; the 80/20 split is by file, so a file's frames share a split."""
    rgb = np.stack([np.stack([ramp((10, 10), seed=s, high=255)] * 3, axis=-1) for s in range(3)])
    colour(tmp_path / "a" / "cine.dcm", rgb)
    for number in range(4):
        gray(tmp_path / "a" / f"single{number}.dcm", ramp((10, 10), seed=10 + number))
        gray(tmp_path / "b" / f"b{number}.dcm", ramp((10, 10), seed=20 + number))
    data = load_site_data(tmp_path)
    cine = str((tmp_path / "a" / "cine.dcm").resolve())
    splits = [split for split in (data.training, data.validation) if any(item["image"] == cine for item in split)]
    assert len(splits) == 1
    assert [item["frame"] for item in splits[0] if item["image"] == cine] == [0, 1, 2]
    frame = load_pixels(cine, DataConfig(), frame=1)
    np.testing.assert_array_equal(frame, np.moveaxis(rgb[1], -1, 0).astype(np.float32))


def test_multiframe_item_without_frame_is_refused_at_load(tmp_path: Path) -> None:
    """An item given straight to the transforms must name a frame of a multi-frame file (never a tall strip)."""
    path = gray(tmp_path / "cine.dcm", _frames())
    with pytest.raises(MedPFLError, match=r"has 4 frames but the item names none") as caught:
        build_transforms(DataConfig(image_size=8), train=False)({"image": str(path), "label": 0})
    assert '"frame": k (0..3)' in caught.value.fix
    item = build_transforms(DataConfig(image_size=8), train=False)({"image": str(path), "label": 0, "frame": 3})
    assert item["image"].shape == (1, 8, 8)


def test_frame_count_the_file_cannot_hold_is_refused_before_expansion(tmp_path: Path) -> None:
    """A header claiming a million frames in a few kilobytes is refused, instead of listing a million samples."""
    dataset = pydicom.dcmread(gray(tmp_path / "ok.dcm", _frames(count=2)))
    dataset.NumberOfFrames = 1_000_000
    path = save(dataset, tmp_path / "liar.dcm")
    datalist = write_datalist(tmp_path / "d.json", {"training": [{"image": "liar.dcm", "label": 0}]})
    with pytest.raises(MedPFLError, match=r"claims 1000000 frames, which its \d+ bytes cannot hold") as caught:
        load_site_data(datalist, site="site-1")
    assert str(path) in caught.value.problem and caught.value.site == "site-1"


def test_bundled_multiframe_files_expand(tmp_path: Path) -> None:
    """pydicom's 2-frame RLE RGB file and 15-frame RT dose expand to 2 and 15 samples."""
    datalist = write_datalist(
        tmp_path / "d.json",
        {
            "training": [
                {"image": str(bundled("SC_rgb_rle_2frame.dcm")), "label": 0},
                {"image": str(bundled("rtdose.dcm")), "label": 1},
            ]
        },
    )
    frames = [item["frame"] for item in load_site_data(datalist).training]
    assert frames == [0, 1, *range(15)]


def test_single_frame_with_number_of_frames_one(tmp_path: Path) -> None:
    """A file with Number of Frames = 1 is a plain sample (no "frame" key), like one without the element."""
    dataset = base_dataset()
    dataset.set_pixel_data(ramp((10, 10)).astype(np.uint16), photometric_interpretation="MONOCHROME2", bits_stored=16)
    dataset.NumberOfFrames = 1
    save(dataset, tmp_path / "one.dcm")
    datalist = write_datalist(tmp_path / "d.json", {"training": [{"image": "one.dcm", "label": 0, "frame": 0}]})
    assert "frame" not in load_site_data(datalist).training[0]


def test_batches_mix_frames_and_plain_images(tmp_path: Path) -> None:
    """Training batches collate frames of a multi-frame file together with single images (no "frame" key left)."""
    from medpfl_app.data import build_dataloaders

    gray(tmp_path / "cine.dcm", _frames(count=3))
    for number in range(3):
        write_nifti(tmp_path / f"n{number}.nii.gz", gradient((12, 10), seed=number))
    # the frames come first: a batch collates the keys of its first item, so a leftover "frame" would fail here
    training = [{"image": "cine.dcm", "label": 1}] + [{"image": f"n{n}.nii.gz", "label": 0} for n in range(3)]
    datalist = write_datalist(tmp_path / "d.json", {"training": training})
    config = DataConfig(image_size=8, batch_size=6, shuffle=False, cache_rate=0.0)
    train_loader, _ = build_dataloaders(load_site_data(datalist), config)
    batch = next(iter(train_loader))
    assert batch["image"].shape == (6, 1, 8, 8) and batch["label"].tolist() == [1, 1, 1, 0, 0, 0]
    assert batch["index"].tolist() == list(range(6)) and "frame" not in batch
