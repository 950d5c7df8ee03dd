"""Guards on real-world images and datalists: tiny images, palette/CMYK modes, decompression bombs, label sanity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from datafiles import gradient, write_datalist, write_dicom, write_nifti, write_png
from dicom_variants import gray, ramp, save
from PIL import Image

from medpfl_app.data import DataConfig, build_transforms, load_site_data
from medpfl_app.data.transforms import load_pixels
from medpfl_app.errors import MedPFLError


def _never_called(*args: object, **kwargs: object) -> None:
    raise AssertionError("pixels were decoded before the size check")


def _transform(path: Path, **settings: object) -> dict:
    return build_transforms(DataConfig(**{"image_size": 8, **settings}), train=False, site="site-1")(
        {"image": str(path), "label": 0}
    )


@pytest.mark.parametrize("fmt", ["png", "dcm", "nii"])
def test_one_pixel_images_are_refused(tmp_path: Path, fmt: str) -> None:
    """A 1×1 image in any format is one error naming the file, its size and the 8-pixel minimum."""
    writers = {"png": write_png, "dcm": write_dicom, "nii": write_nifti}
    path = writers[fmt](tmp_path / f"dot.{fmt}", np.full((1, 1), 0.5, dtype=np.float32))
    with pytest.raises(MedPFLError) as caught:
        _transform(path)
    assert caught.value.problem.startswith(f"image {path} is only 1×1 pixels")
    assert "at least 8×8" in caught.value.problem
    assert caught.value.site == "site-1"


def test_thin_images_and_thin_slices_are_refused(tmp_path: Path) -> None:
    """A 4×300 strip is refused; a 40×40×4 volume is fine along axis 2 but refused when sliced along axis 0."""
    with pytest.raises(MedPFLError, match=r"is only 4×300 pixels"):
        _transform(write_png(tmp_path / "strip.png", gradient((4, 300))))
    volume = write_nifti(tmp_path / "thin.nii", gradient((40, 40, 4)))
    assert _transform(volume)["image"].shape == (1, 8, 8)
    with pytest.raises(MedPFLError, match=r"is only 40×4 pixels \(as used, after slicing\)") as caught:
        _transform(volume, slice_axis=0)
    assert "slice_axis" in caught.value.fix


def test_palette_png_loads_its_colours_not_its_indices(tmp_path: Path) -> None:
    """A palette PNG whose palette reverses brightness loads as those colours (RGB), not as the index values."""
    indices = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    image = Image.fromarray(indices, mode="L").convert("P")
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:, 0] = 255 - np.arange(256)  # red falls as the index rises
    palette[:, 2] = np.arange(256) // 2
    image.putpalette(palette.flatten().tolist())
    image.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    loaded = load_pixels(tmp_path / "p.png", DataConfig())
    assert loaded.shape == (3, 8, 8)
    np.testing.assert_array_equal(loaded[0], 255 - indices)
    np.testing.assert_array_equal(loaded[2], indices // 2)


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path: Path) -> None:
    """A CMYK JPEG loads as Pillow's RGB conversion (3 channels), not 4 ink channels."""
    cmyk = np.stack([ramp((16, 16), seed=s, high=255) for s in range(4)], axis=-1).astype(np.uint8)
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "c.jpg", quality=95)
    loaded = load_pixels(tmp_path / "c.jpg", DataConfig())
    expected = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB"), dtype=np.float32)
    assert loaded.shape == (3, 16, 16)
    np.testing.assert_array_equal(loaded, np.moveaxis(expected, -1, 0))
    assert _transform(tmp_path / "c.jpg")["image"].shape == (1, 8, 8)


def test_gray_alpha_sixteen_bit_exif_and_animated_png(tmp_path: Path) -> None:
    """LA drops alpha, 16-bit keeps its values, EXIF orientation is applied, an animated PNG is refused."""
    la = Image.fromarray(np.full((10, 12), 100, dtype=np.uint8)).convert("LA")
    la.save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_pixels(tmp_path / "la.png", DataConfig()), np.full((1, 10, 12), 100))
    deep = ramp((10, 12), high=60000).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_array_equal(load_pixels(tmp_path / "deep.png", DataConfig())[0], deep)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8)).save(tmp_path / "r.jpg", exif=exif)
    assert load_pixels(tmp_path / "r.jpg", DataConfig()).shape == (3, 20, 10)
    frames = [Image.fromarray(np.full((10, 10), value, dtype=np.uint8)) for value in (0, 255)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:])
    with pytest.raises(MedPFLError, match="is animated \\(2 frames\\)"):
        load_pixels(tmp_path / "anim.png", DataConfig())


def test_png_bomb_is_refused_from_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small file declaring 2000×1000 pixels is refused under max_megapixels=1 without decoding a pixel."""
    Image.new("L", (2000, 1000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 20_000
    monkeypatch.setattr(Image.Image, "load", _never_called)
    with pytest.raises(MedPFLError) as caught:
        _transform(tmp_path / "bomb.png", max_megapixels=1)
    assert caught.value.problem == (
        f"image {tmp_path / 'bomb.png'} is 2000×1000 pixels × 1 bands = 2,000,000 values, over the limit of "
        "1,000,000 (max_megapixels, a decompression-bomb guard)"
    )


def test_dicom_bomb_header_is_refused_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DICOM header claiming 60000×60000 pixels (and 3 frames) is refused by the size guard, nothing decoded."""
    from pydicom.pixels.decoders.base import Decoder

    dataset = pydicom.dcmread(gray(tmp_path / "small.dcm", ramp((3, 10, 10))))
    dataset.Rows = dataset.Columns = 60000
    path = save(dataset, tmp_path / "bomb.dcm")
    monkeypatch.setattr(Decoder, "as_array", _never_called)
    with pytest.raises(MedPFLError) as caught:
        load_pixels(path, DataConfig(), frame=0)
    expected = f"DICOM image {path} is 60000×60000×1 samples × 3 frames = 10,800,000,000 values, over the limit"
    assert caught.value.problem.startswith(expected)
    assert "max_megapixels" in caught.value.fix


def test_image_size_upper_bound() -> None:
    """image_size above 1024 is one clear error, not a MONAI allocation traceback."""
    with pytest.raises(MedPFLError, match="image_size must be <= 1024"):
        DataConfig(image_size=100_000)
    assert DataConfig(image_size=1024).image_size == 1024


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"volume_index": -1}, "volume_index"),
        ({"volume_index": 1.0}, "volume_index"),
        ({"dicom_voi": "window"}, "dicom_voi"),
        ({"max_megapixels": 0}, "max_megapixels"),
        ({"max_megapixels": "64"}, "max_megapixels"),
    ],
)
def test_new_reader_settings_are_validated(settings: dict, name: str) -> None:
    """The reader settings are checked like the others, and survive the JSON round trip."""
    with pytest.raises(MedPFLError, match=name):
        DataConfig(**settings)
    config = DataConfig(volume_index=2, dicom_voi="none", max_megapixels=64)
    assert DataConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("label", [10**9, 10_000, -1])
def test_absurd_labels_without_classes_are_refused(tmp_path: Path, label: int) -> None:
    """Without a class list, a huge label (an ID in the label column) or a negative one is named, no MemoryError."""
    write_nifti(tmp_path / "a.nii.gz", gradient((10, 10)))
    datalist = write_datalist(
        tmp_path / "d.json", {"training": [{"image": "a.nii.gz", "label": 0}, {"image": "a.nii.gz", "label": label}]}
    )
    with pytest.raises(MedPFLError) as caught:
        load_site_data(datalist, site="site-1")
    assert f"label {label} of training[1]" in caught.value.problem and "'classes'" in caught.value.fix
    assert caught.value.site == "site-1"


def test_conflicting_labels_for_one_image_name_both_entries(tmp_path: Path) -> None:
    """The same image listed with labels 0 and 1 (here across splits) is refused naming both entries."""
    write_nifti(tmp_path / "a.nii.gz", gradient((10, 10)))
    write_nifti(tmp_path / "b.nii.gz", gradient((10, 10), seed=1))
    datalist = write_datalist(
        tmp_path / "d.json",
        {
            "classes": ["x", "y"],
            "training": [{"image": "a.nii.gz", "label": 0}, {"image": "b.nii.gz", "label": 1}],
            "validation": [{"image": "./a.nii.gz", "label": 1}],
        },
    )
    with pytest.raises(MedPFLError) as caught:
        load_site_data(datalist)
    path = (tmp_path / "a.nii.gz").resolve()
    assert caught.value.problem == (
        f"site data {datalist}: {path} is listed twice with conflicting labels: 0 (training[0]) and 1 (validation[0])"
    )
    same = write_datalist(tmp_path / "s.json", {"training": [{"image": "a.nii.gz", "label": 0}] * 2})
    assert len(load_site_data(same).training) == 2  # a repeat with the same label is not a conflict


def test_conflicting_label_for_one_frame(tmp_path: Path) -> None:
    """A whole multi-frame file (label 0) and its frame 1 listed again with label 1 conflict on that frame."""
    gray(tmp_path / "cine.dcm", np.stack([ramp((10, 10), seed=s) for s in range(3)]))
    datalist = write_datalist(
        tmp_path / "d.json",
        {"training": [{"image": "cine.dcm", "label": 0}, {"image": "cine.dcm", "label": 1, "frame": 1}]},
    )
    pattern = r"cine\.dcm \(frame 1\) is listed twice with conflicting labels: 0 \(training\[0\]\) and 1 "
    pattern += r"\(training\[1\]\)"
    with pytest.raises(MedPFLError, match=pattern):
        load_site_data(datalist)
