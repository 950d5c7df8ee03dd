"""The data check's parts without the CLI: header facts, the size guard, per-file rules, pixel agreement, findings."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from datafiles import gradient, write_dicom, write_nifti
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from medpfl_app.data.agreement import MIN_PIXEL_AGREEMENT, pixel_agreement, render_planes
from medpfl_app.data.check_report import DataCheckReport
from medpfl_app.data.config import DataConfig
from medpfl_app.data.findings import FindingKind, class_findings, duplicate_findings
from medpfl_app.data.headers import HeaderFacts, ImageFormat, read_header
from medpfl_app.data.preflight import CheckStatus, FileCheck, Loaded, StoredPixels
from medpfl_app.data.rules import MAX_PIXELS_PER_FILE, assess_file, far_from_input_size, pixel_limit, size_guard


def huge_png(path: Path, width: int, height: int) -> Path:
    """A valid PNG whose IHDR declares ``width × height`` pixels, with a few bytes of image data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )
    return path


def huge_dicom(path: Path, rows: int = 60000, columns: int = 60000) -> Path:
    """A DICOM header claiming ``rows × columns`` 16-bit pixels, with only 16×16 pixels of data behind it."""
    write_dicom(path, gradient((16, 16)))
    dataset = pydicom.dcmread(path)
    dataset.Rows, dataset.Columns = rows, columns
    dataset.save_as(path)
    return path


def _header(shape: tuple[int, ...] = (32, 32), fmt: ImageFormat = ImageFormat.NIFTI, frames: int = 1) -> HeaderFacts:
    return HeaderFacts(fmt, shape, (shape[0], shape[1]), frames, int(np.prod(shape)), "float32")


def _stored(low: float = 0.0, high: float = 1.0) -> StoredPixels:
    return StoredPixels(low, high, 0, "digest")


# headers


def test_dicom_header_facts_from_pydicom_test_files(tmp_path: Path) -> None:
    """Frames, samples, photometric and transfer syntax come from the header alone."""
    mr = read_header(get_testdata_file("MR_small.dcm"))
    assert (mr.shape, mr.frames, mr.dtype, mr.photometric) == ((64, 64), 1, "int16", "MONOCHROME2")
    rgb = read_header(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    assert (rgb.shape, rgb.frames, rgb.in_plane, rgb.pixels) == ((2, 100, 100, 3), 2, (100, 100), 20000)
    assert (rgb.photometric, rgb.transfer_syntax) == ("RGB", "RLE Lossless")
    assert read_header(get_testdata_file("examples_palette.dcm")).photometric == "PALETTE COLOR"
    inverted = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    inverted.PhotometricInterpretation = "MONOCHROME1"
    inverted.save_as(tmp_path / "mono1.dcm")
    assert read_header(tmp_path / "mono1.dcm").photometric == "MONOCHROME1"
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / "plan.dcm")
    with pytest.raises(ValueError, match="no Rows/Columns"):
        read_header(tmp_path / "plan.dcm")


def test_nifti_and_pil_header_facts(tmp_path: Path) -> None:
    """4-D NIfTI volumes, palette PNG and CMYK JPEG are described by their headers."""
    four = read_header(write_nifti(tmp_path / "four.nii.gz", gradient((8, 9, 5, 3))), slice_axis=2)
    assert (four.shape, four.frames, four.in_plane, four.pixels) == ((8, 9, 5, 3), 3, (8, 9), 8 * 9 * 5 * 3)
    assert read_header(write_nifti(tmp_path / "v.nii", gradient((8, 9, 5))), slice_axis=0).in_plane == (9, 5)
    pixels = (gradient((16, 12)) * 200).astype(np.uint8)
    Image.fromarray(pixels).convert("P").save(tmp_path / "palette.png")
    Image.fromarray(pixels).convert("CMYK").save(tmp_path / "cmyk.jpg")
    palette = read_header(tmp_path / "palette.png")
    assert (palette.format, palette.shape, palette.photometric, palette.dtype) == ("png", (16, 12), "P", "uint8")
    cmyk = read_header(tmp_path / "cmyk.jpg")
    assert (cmyk.format, cmyk.shape, cmyk.photometric) == ("jpeg", (16, 12, 4), "CMYK")


def test_dicom_series_folder_header(tmp_path: Path) -> None:
    """A folder of single-frame slices is one DICOM series: slices × rows × columns from the first header."""
    for number in range(3):
        write_dicom(tmp_path / "series" / f"s{number}.dcm", gradient((12, 10), seed=number))
    series = read_header(tmp_path / "series")
    assert (series.format, series.shape, series.pixels, series.photometric) == (
        "dicom-series",
        (3, 12, 10),
        360,
        "MONOCHROME2",
    )
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .dcm files"):
        read_header(tmp_path / "empty")


def test_bomb_headers_are_read_without_decoding(tmp_path: Path) -> None:
    """A PNG too large for PIL to open and a DICOM with forged Rows/Columns: the declared size is still known."""
    png = read_header(huge_png(tmp_path / "bomb.png", 100_000, 90_000))
    assert png.shape == (90_000, 100_000) and png.pixels == 9_000_000_000
    dicom = read_header(huge_dicom(tmp_path / "bomb.dcm"))
    assert dicom.pixels == 3_600_000_000
    for header, path in ((png, "bomb.png"), (dicom, "bomb.dcm")):
        refused = size_guard(header, path)
        assert refused is not None and refused.status is CheckStatus.ERROR
        assert path in refused.message and "not decoded" in refused.message


def test_size_guard_limit() -> None:
    """The named limit applies, and a site's lower max_megapixels setting lowers it."""
    assert size_guard(_header((MAX_PIXELS_PER_FILE // 4, 4)), "ok.nii") is None
    assert size_guard(_header((MAX_PIXELS_PER_FILE // 4 + 1, 4)), "big.nii") is not None
    assert pixel_limit(DataConfig()) <= MAX_PIXELS_PER_FILE
    if hasattr(DataConfig(), "max_megapixels"):
        assert pixel_limit(DataConfig(max_megapixels=1)) == 1_000_000


# per-file rules


def test_rules_for_tiny_blank_and_resized_images() -> None:
    """Tiny and blank images are errors; far enlarged or shrunk ones are warnings naming a better image_size."""
    config = DataConfig(image_size=64)
    tiny = assess_file(_header((1, 1)), _stored(3, 3), Loaded(shape=(1, 64, 64)), config, "t.png")
    assert [issue.status for issue in tiny] == [CheckStatus.ERROR] and "1×1-pixel" in tiny[0].message
    blank = assess_file(_header(), _stored(7, 7), Loaded(shape=(1, 64, 64), blank=True), config, "b.nii")
    assert len(blank) == 1 and "blank: every stored pixel is 7" in blank[0].message
    blank_slice = assess_file(_header((32, 32, 9)), _stored(), Loaded(blank=True), config, "v.nii")
    assert "slice_axis" in blank_slice[0].fix
    small = assess_file(_header((12, 40)), _stored(), Loaded(agreement=0.99), config, "s.nii")
    assert [issue.status for issue in small] == [CheckStatus.WARNING] and "enlarged 5.3×" in small[0].message
    large = assess_file(_header((600, 520)), _stored(), Loaded(agreement=0.99), config, "l.nii")
    assert [issue.status for issue in large] == [CheckStatus.WARNING] and "≥ 75" in large[0].fix
    assert assess_file(_header((40, 500)), _stored(), Loaded(agreement=0.99), config, "ok.nii") == []
    assert far_from_input_size((12, 40), 64) and far_from_input_size((600, 520), 64)
    assert not far_from_input_size((40, 500), 64)


def test_rule_for_a_model_input_that_does_not_match_the_file() -> None:
    """A low correlation with the file's own picture is an error; a loader error suppresses size warnings."""
    config = DataConfig(image_size=32)
    header = _header((32, 32), ImageFormat.DICOM)
    wrong = assess_file(header, _stored(), Loaded(agreement=MIN_PIXEL_AGREEMENT - 0.01), config, "m.dcm")
    assert wrong[0].status is CheckStatus.ERROR and "does not show the picture stored in the file" in wrong[0].message
    assert assess_file(header, _stored(), Loaded(agreement=MIN_PIXEL_AGREEMENT), config, "m.dcm") == []
    failed = Loaded(error=assess_file(header, _stored(), Loaded(agreement=0.0), config, "m.dcm")[0])
    assert assess_file(_header((2000, 2000)), _stored(), failed, config, "m.dcm") == [failed.error]


def _smooth(seed: int, size: int = 32) -> np.ndarray:
    coarse = torch.as_tensor(np.random.default_rng(seed).random((6, 6)))[None, None]
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")[0, 0].numpy()


def _resize(picture: np.ndarray, size: int = 16) -> np.ndarray:
    tensor = torch.as_tensor(picture)[None, None]
    return torch.nn.functional.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True)[0].numpy()


def test_pixel_agreement_tells_a_frame_from_a_strip_a_negative_and_a_transpose() -> None:
    """The right frame scores ~1; frames stacked into a strip, an inverted or a transposed picture score low."""
    frames = [_smooth(1), _smooth(2)]
    assert pixel_agreement(_resize(frames[1]), frames) > 0.99
    assert pixel_agreement(_resize(np.concatenate(frames, axis=0)), frames) < MIN_PIXEL_AGREEMENT
    assert pixel_agreement(1 - _resize(frames[0]), frames[:1]) < 0
    assert pixel_agreement(_resize(frames[0].T), frames[:1]) < MIN_PIXEL_AGREEMENT
    assert pixel_agreement(np.zeros((1, 16, 16)), frames) is None and pixel_agreement(_resize(frames[0]), []) is None


def test_rendering_inverts_monochrome1_and_looks_up_palettes(tmp_path: Path) -> None:
    """The check's own rendering: MONOCHROME1 is the negative of its stored values, a palette shows its colours."""
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    source.PhotometricInterpretation = "MONOCHROME1"
    source.save_as(tmp_path / "mono1.dcm")
    plane, windowed = render_planes(tmp_path / "mono1.dcm", ImageFormat.DICOM)
    np.testing.assert_array_equal(plane, -source.pixel_array.astype(np.float64))
    # MR_small carries a window: the file as a viewer shows it is a candidate too (the loader applies it)
    shown = apply_voi_lut(apply_modality_lut(source.pixel_array, source), source)
    np.testing.assert_allclose(windowed, -np.asarray(shown, dtype=np.float64))
    indices = np.arange(64, dtype=np.uint8).reshape(8, 8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([value for index in range(256) for value in ((255 - index) % 256,) * 3])
    image.save(tmp_path / "palette.png")
    (gray,) = render_planes(tmp_path / "palette.png", ImageFormat.PNG)
    np.testing.assert_array_equal(gray, 255.0 - indices)
    volume = gradient((6, 7, 8))
    planes = render_planes(write_nifti(tmp_path / "v.nii.gz", volume), ImageFormat.NIFTI, slice_axis=2, slice_index=1)
    assert [plane.shape for plane in planes] == [(7, 8), (6, 8), (6, 7)]
    np.testing.assert_allclose(planes[2], volume[:, :, 1])
    assert np.asarray(nib.load(tmp_path / "v.nii.gz").dataobj).shape == (6, 7, 8)


# site findings


def _row(path: str, label: int, *, split: str = "training", digest: str | None = None, frame: int | None = None):
    return FileCheck(path=path, split=split, label=label, format="nifti", digest=digest, frame=frame)


def test_duplicates_same_label_warn_conflicting_labels_error() -> None:
    """Listed twice with one label: warning (and a leak note across splits); identical pixels, two labels: error."""
    rows = [
        _row("/d/a.nii", 0, digest="x"),
        _row("/d/a.nii", 0, split="validation", digest="x"),
        _row("/d/b.nii", 1, digest="y"),
        _row("/d/c.nii", 0, digest="y"),
        _row("/d/e.nii", 1, digest="z"),
    ]
    listed, pixels = duplicate_findings(rows)
    assert (listed.kind, listed.status) == (FindingKind.DUPLICATE_FILE, CheckStatus.WARNING)
    assert "/d/a.nii is listed 2 times" in listed.message and "both training and validation" in listed.message
    assert (pixels.kind, pixels.status, pixels.paths) == (
        FindingKind.DUPLICATE_PIXELS,
        CheckStatus.ERROR,
        ("/d/b.nii", "/d/c.nii"),
    )
    assert "conflicting labels" in pixels.message and "/d/c.nii as training label 0" in pixels.message


def test_frames_of_one_file_are_not_duplicates() -> None:
    """One sample per frame of a multi-frame file: distinct frames are distinct samples."""
    rows = [_row("/d/m.dcm", 0, frame=0, digest="f0"), _row("/d/m.dcm", 0, frame=1, digest="f1")]
    assert duplicate_findings(rows) == []


def test_class_findings() -> None:
    """A single-class site and classes under the minimum are warnings; a balanced site has none."""
    (single,) = class_findings(("a", "b"), (5, 0))
    assert single.kind is FindingKind.SINGLE_CLASS and "'a'" in single.message
    (small,) = class_findings(("a", "b", "c"), (5, 1, 4))
    assert small.kind is FindingKind.SMALL_CLASS and "b (1)" in small.message
    assert class_findings(("a", "b"), (2, 2)) == []


def test_report_exit_codes() -> None:
    """Errors exit 1; warnings exit 0 unless strict."""

    def report(*statuses: CheckStatus) -> DataCheckReport:
        rows = tuple(
            FileCheck(path=f"/d/{n}.nii", split="training", label=0, format="nifti", status=status)
            for n, status in enumerate(statuses)
        )
        return DataCheckReport(Path("/d/datalist.json"), Path("/d"), ("a",), (len(rows),), (0,), (1, 8, 8), rows)

    assert report(CheckStatus.OK).exit_code() == 0
    assert report(CheckStatus.OK, CheckStatus.WARNING).exit_code() == 0
    assert report(CheckStatus.WARNING).exit_code(strict=True) == 1
    assert report(CheckStatus.OK, CheckStatus.ERROR).exit_code() == 1
