"""`medpfl data check` end to end: per-file table, findings, verdict, exit status and JSON on tiny written files.

Outcomes that depend on how the loader decodes a format are asserted only as "this file's row is an error naming
it"; everything else (headers, duplicates, counts, exit codes) is decided by the check itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from datafiles import gradient, write_datalist, write_dicom, write_nifti, write_png
from test_data_check_rules import huge_dicom, huge_png

from medpfl_app.cli.main import main
from medpfl_app.data import check as check_module
from medpfl_app.data.agreement import MIN_PIXEL_AGREEMENT
from medpfl_app.data.check_report import FULL_TABLE_UP_TO
from medpfl_app.data.findings import MIN_IMAGES_PER_CLASS
from medpfl_app.data.preflight import MIN_IMAGE_SIDE
from medpfl_app.data.rules import MAX_DOWNSCALE, MAX_PIXELS_PER_FILE, MAX_UPSCALE
from medpfl_app.errors import MedPFLError


def _good(folder: Path, count: int, *, first_seed: int = 0) -> list[Path]:
    return [
        write_nifti(folder / f"g{first_seed + n}.nii.gz", gradient((16, 16), seed=first_seed + n)) for n in range(count)
    ]


def _datalist(
    root: Path,
    training: list[tuple[Path, int]],
    validation: list[tuple[Path, int]] = (),
    classes: tuple[str, ...] = ("a", "b"),
) -> Path:
    def items(pairs):
        return [{"image": str(path.relative_to(root)), "label": label} for path, label in pairs]

    return write_datalist(
        root / "datalist.json", {"classes": list(classes), "training": items(training), "validation": items(validation)}
    )


def _check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["data", "check", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def mixed(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """Four good images and one of each kind of bad file."""
    images = tmp_path / "images"
    good = _good(images, 4)
    bad = {
        "blank": write_nifti(images / "blank.nii.gz", np.full((16, 16), 7.0, np.float32)),
        "nan": write_nifti(images / "nan.nii.gz", np.where(np.eye(16) > 0, np.nan, gradient((16, 16)))),
        "corrupt": images / "corrupt.png",
        "one_pixel": write_png(images / "one_pixel.png", np.full((1, 1), 0.5)),
        "dicom_bomb": huge_dicom(images / "bomb.dcm"),
        "png_bomb": huge_png(images / "bomb.png", 100_000, 100_000),
    }
    bad["corrupt"].write_bytes(b"this is not a PNG")
    training = [(path, n % 2) for n, path in enumerate(good[:3])] + [(path, 1) for path in bad.values()]
    return _datalist(tmp_path, training, [(good[3], 0)]), bad


def test_mixed_folder_names_every_bad_file_and_exits_1(
    mixed: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """One row per file; every bad file is named with its fix, the good ones are OK, the verdict refuses the data."""
    datalist, bad = mixed
    code, out, err = _check(
        capsys, str(datalist), "--site", "site-1", "--image-size", "16", "--json", str(tmp_path / "out" / "check.json")
    )
    assert code == 1, out + err
    assert "Traceback" not in out + err
    for path in bad.values():
        assert str(path) in out, path
    rows = {Path(line.split()[0]).name: line.split()[-1] for line in out.splitlines() if line.startswith("  images/")}
    assert rows == {
        "g0.nii.gz": "OK",
        "g1.nii.gz": "OK",
        "g2.nii.gz": "OK",
        "g3.nii.gz": "OK",
        **{path.name: "ERROR" for path in bad.values()},
    }
    assert "is blank: every stored pixel is 7" in out
    assert out.count("fix: ") >= len(bad)
    assert "[site-1] data NOT usable: 6 of 10 files have errors" in out
    report = json.loads((tmp_path / "out" / "check.json").read_text())
    assert report["schema"] == "medpfl.data_check/1" and report["status"] == "error"
    assert (report["errors"], report["warnings"]) == (6, 0) and report["verdict"].startswith("[site-1] data NOT usable")
    by_name = {Path(row["path"]).name: row for row in report["files"]}
    assert by_name["blank.nii.gz"]["constant"] is True
    assert by_name["nan.nii.gz"]["nonfinite"] is True
    assert by_name["one_pixel.png"]["tiny"] is True and by_name["one_pixel.png"]["shape"] == [1, 1]
    assert by_name["bomb.dcm"]["shape"] == [60000, 60000] and by_name["bomb.png"]["shape"] == [100000, 100000]
    assert by_name["g0.nii.gz"]["intensity_max"] > by_name["g0.nii.gz"]["intensity_min"] >= 0
    assert [c["training"] for c in report["classes"]] == [2, 7]
    assert [c["validation"] for c in report["classes"]] == [1, 0]
    assert not list((tmp_path / "out").glob(".*tmp*")), "the JSON is written through a temp file, then renamed"


def test_bombs_are_refused_before_any_decoding(
    mixed: tuple[Path, dict[str, Path]], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the check's own pixel read nor the training transforms ever see a file over the pixel limit."""
    datalist, bad = mixed
    decoded: list[str] = []
    read = check_module.read_stored_pixels
    monkeypatch.setattr(
        check_module, "read_stored_pixels", lambda path, fmt: decoded.append(str(path)) or read(path, fmt)
    )
    from medpfl_app.data import transforms

    build = transforms.build_transforms

    def spying_build(*args, **kwargs):
        chain = build(*args, **kwargs)
        return lambda item: decoded.append(str(item["image"])) or chain(item)

    monkeypatch.setattr(transforms, "build_transforms", spying_build)
    code, out, _ = _check(capsys, str(datalist), "--image-size", "16")
    assert code == 1
    assert str(bad["blank"]) in decoded
    assert str(bad["dicom_bomb"]) not in decoded and str(bad["png_bomb"]) not in decoded
    for bomb in ("bomb.dcm", "bomb.png"):
        assert f"{bomb} declares" in out and f"above the limit of {MAX_PIXELS_PER_FILE:,} per file; not decoded" in out


def test_all_good_class_folder_tree_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A clean tree: every row OK, class counts, `data OK`, exit 0."""
    for name, seed in (("a", 0), ("b", 10)):
        _good(tmp_path / "site" / "training" / name, 3, first_seed=seed)
        _good(tmp_path / "site" / "validation" / name, 1, first_seed=seed + 5)
    write_dicom(tmp_path / "site" / "training" / "b" / "d.dcm", gradient((16, 16), seed=42))
    code, out, err = _check(capsys, str(tmp_path / "site"), "--site", "site-3", "--image-size", "16")
    assert code == 0, out + err
    assert "[site-3] data OK: 9 files, 2 classes, no problems found" in out
    assert "training/b/d.dcm" in out and "MONOCHROME2" in out and "ERROR" not in out and "WARNING" not in out
    assert "  a             3           1" in out and "  b             4           1" in out


def test_identical_pixels_with_conflicting_labels_are_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy of an image under another name and label: exit 1, both files named."""
    good = _good(tmp_path / "images", 4)
    copy = tmp_path / "images" / "copy.nii.gz"
    shutil.copy(good[0], copy)
    datalist = _datalist(tmp_path, [(good[0], 0), (good[1], 1), (good[2], 0), (good[3], 1), (copy, 1)])
    code, out, _ = _check(capsys, str(datalist), "--image-size", "16")
    assert code == 1
    assert "ERROR  2 images hold identical pixels: images/g0.nii.gz, images/copy.nii.gz, with conflicting labels" in out


def test_the_same_file_with_two_labels_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One file listed with labels 0 and 1: refused (by the datalist reader, exit 2, or as a finding, exit 1)."""
    good = _good(tmp_path / "images", 3)
    datalist = _datalist(tmp_path, [(good[0], 0), (good[1], 1), (good[2], 0), (good[0], 1)])
    code, out, err = _check(capsys, str(datalist), "--image-size", "16")
    assert code in (1, 2) and "g0.nii.gz" in out + err and "Traceback" not in err


def test_same_label_duplicate_and_single_class_warn_exit_0_unless_strict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Warnings alone exit 0 and say so; --strict turns them into exit 1."""
    good = _good(tmp_path / "images", 3)
    copy = tmp_path / "images" / "copy.nii.gz"
    shutil.copy(good[0], copy)
    datalist = _datalist(tmp_path, [(path, 0) for path in (*good, copy)])
    code, out, _ = _check(capsys, str(datalist), "--image-size", "16")
    assert code == 0
    assert "WARNING  2 images hold identical pixels: images/g0.nii.gz, images/copy.nii.gz, all with label 0" in out
    assert "WARNING  every training image is of class 'a'" in out
    assert "data usable (--strict refuses warnings): 4 files, 2 warning(s) above" in out
    code, out, _ = _check(capsys, str(datalist), "--image-size", "16", "--strict")
    assert code == 1 and "refused because of --strict" in out


def test_many_files_list_only_problems_unless_all(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Above the table limit only rows with problems are listed, with a count of the rest; --all lists every row."""
    good = _good(tmp_path / "images", FULL_TABLE_UP_TO + 2)
    blank = write_nifti(tmp_path / "images" / "blank.nii.gz", np.zeros((16, 16), np.float32))
    datalist = _datalist(tmp_path, [(path, n % 2) for n, path in enumerate(good)] + [(blank, 0)])
    code, out, _ = _check(capsys, str(datalist), "--image-size", "16")
    assert code == 1 and "images/blank.nii.gz" in out and "images/g0.nii.gz" not in out
    assert f"… and {len(good)} more file(s) OK (--all lists every file)" in out
    code, out, _ = _check(capsys, str(datalist), "--image-size", "16", "--all")
    assert code == 1 and all(f"images/{path.name}" in out for path in good) and "more file(s) OK" not in out


def test_a_loader_that_misreads_pixels_is_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the training transforms handed the model the negative of a file, the check refuses it (exit 1)."""
    from medpfl_app.data import transforms

    build = transforms.build_transforms

    def inverting_build(*args, **kwargs):
        chain = build(*args, **kwargs)

        def run(item):
            out = chain(item)
            return {**out, "image": 1 - out["image"]} if item["image"].endswith("g1.nii.gz") else out

        return run

    monkeypatch.setattr(transforms, "build_transforms", inverting_build)
    good = _good(tmp_path / "images", 4)
    datalist = _datalist(tmp_path, [(path, n % 2) for n, path in enumerate(good)])
    code, out, _ = _check(capsys, str(datalist), "--image-size", "16")
    assert code == 1
    assert f"{good[1]}: the image the model gets does not show the picture stored in the file" in out
    assert "data NOT usable: 1 of 4 files have errors" in out


def test_loader_crash_becomes_an_error_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even a raw exception from the pipeline ends as that file's error row, not a traceback."""
    from medpfl_app.data import transforms

    build = transforms.build_transforms

    def crashing_build(*args, **kwargs):
        chain = build(*args, **kwargs)
        return lambda item: (_ for _ in ()).throw(MemoryError("boom")) if "g2" in item["image"] else chain(item)

    monkeypatch.setattr(transforms, "build_transforms", crashing_build)
    good = _good(tmp_path / "images", 4)
    datalist = _datalist(tmp_path, [(path, n % 2) for n, path in enumerate(good)])
    code, out, err = _check(capsys, str(datalist), "--image-size", "16")
    assert code == 1 and "Traceback" not in err
    assert f"the training pipeline cannot load {good[2]}: MemoryError: boom" in out


def test_an_unusable_description_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huge label without a class list, or any crash while reading the datalist: exit 2, one message, no traceback."""
    good = _good(tmp_path / "images", 2)
    write_datalist(
        tmp_path / "huge.json",
        {"training": [{"image": "images/g0.nii.gz", "label": 0}, {"image": "images/g1.nii.gz", "label": 10**9}]},
    )
    code, _, err = _check(capsys, str(tmp_path / "huge.json"))
    assert code == 2 and str(tmp_path / "huge.json") in err and "fix:" in err and "Traceback" not in err

    def exploding(*_args, **_kwargs):
        raise MemoryError("cannot allocate")

    monkeypatch.setattr(check_module, "load_site_data", exploding)
    code, _, err = _check(capsys, str(_datalist(tmp_path, [(good[0], 0), (good[1], 1)])))
    assert code == 2 and "Traceback" not in err
    assert f"cannot read the site data description {tmp_path / 'datalist.json'}: MemoryError" in err and "fix:" in err
    with pytest.raises(MedPFLError):
        check_module.check_site_data(tmp_path / "datalist.json")


def test_help_states_the_thresholds_in_force(capsys: pytest.CaptureFixture[str]) -> None:
    """The --help text quotes the named constants (it is hand-written to keep `medpfl --help` free of NumPy)."""
    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for stated in (
        f"more than {MAX_PIXELS_PER_FILE:,} pixels",
        f"under {MIN_IMAGE_SIDE} pixels a side",
        f"enlarged more than {MAX_UPSCALE:g}x",
        f"shrunk more than {MAX_DOWNSCALE:g}x",
        f"fewer than {MIN_IMAGES_PER_CLASS} training images",
        f"at least {MIN_PIXEL_AGREEMENT}",
        f"above {FULL_TABLE_UP_TO} files",
    ):
        assert stated in text, stated


def _multiframe_dicom(path: Path, frames: np.ndarray) -> Path:
    """An uncompressed MONOCHROME2 DICOM with one frame per entry of ``frames`` (values in [0, 1])."""
    write_dicom(path, frames[0])
    dataset = pydicom.dcmread(path)
    dataset.NumberOfFrames = len(frames)
    dataset.PixelData = np.round(frames * 4000).astype(np.uint16).tobytes()
    dataset.save_as(path)
    return path


def test_multi_frame_dicom_facts_and_no_false_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The header's frames are reported; however the loader splits the file, its frames are not duplicates of it."""
    frames = np.stack([gradient((16, 16), seed=seed) for seed in (1, 2, 3)])
    multi = _multiframe_dicom(tmp_path / "images" / "multi.dcm", frames)
    good = _good(tmp_path / "images", 3)
    datalist = _datalist(tmp_path, [(multi, 0), (good[0], 1), (good[1], 0), (good[2], 1)])
    code, out, err = _check(capsys, str(datalist), "--image-size", "16", "--json", str(tmp_path / "c.json"))
    rows = [row for row in json.loads((tmp_path / "c.json").read_text())["files"] if row["path"] == str(multi)]
    assert rows and all(row["shape"] == [3, 16, 16] and row["photometric"] == "MONOCHROME2" for row in rows)
    assert "listed" not in out and "identical pixels" not in out
    for row in rows:  # read frame by frame (one sample each) or refused, but never a strip the model trains on
        assert row["status"] == "error" and str(multi) in row["problems"][0] or row["pixel_agreement"] > 0.95
    assert code == (1 if any(row["status"] == "error" for row in rows) else 0), out + err
