"""The real-MRI sample set: real pixels, deterministic, multi-site, and read back by the normal loaders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from real_images import real_samples, require_real_images  # noqa: F401 (fixtures)

from medpfl_app.data import DataConfig, build_transforms, load_site_data
from medpfl_app.data.samples import (
    SAMPLE_CLASSES,
    SAMPLE_SOURCES,
    RealImageSource,
    real_sample_images,
    write_real_samples,
)
from medpfl_app.errors import MedPFLError


def _pool() -> tuple[np.ndarray, np.ndarray]:
    require_real_images()
    return real_sample_images()


def test_pool_holds_distinct_real_images_of_every_class() -> None:
    """24 distinct 64x64 windows per source, in [0, 1], each with tissue texture (not blank, not a flat phantom)."""
    images, labels = _pool()

    assert images.shape == (72, 64, 64) and images.dtype == np.float32
    assert np.bincount(labels).tolist() == [24, 24, 24]
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert len({image.tobytes() for image in images}) == 72
    # Real anatomy: many grey levels in every image, not the few of a piecewise-constant phantom.
    assert min(len(np.unique(np.round(image, 3))) for image in images) > 200


def test_pool_is_deterministic_and_cut_from_the_packaged_files() -> None:
    """Two calls give identical pixels; each class's images come from its own packaged source file."""
    first, labels = _pool()
    second, _ = real_sample_images()

    assert np.array_equal(first, second)
    for label, source in enumerate(SAMPLE_SOURCES):
        assert source.path().is_file() and source.class_name == SAMPLE_CLASSES[label]
    # The sources differ in contrast: their mean intensities are far apart (T1 bright, b=0 DWI dark).
    means = [float(first[labels == label].mean()) for label in range(len(SAMPLE_CLASSES))]
    assert means[0] > 2 * means[1]


def test_sites_partition_the_pool_and_load_through_load_site_data(real_samples) -> None:
    """Three sites, every class at every site, all 72 images listed exactly once, manifest says real data."""
    listed = []
    for site, datalist in real_samples.site_datalists.items():
        data = load_site_data(datalist, site=site)
        assert data.class_names == SAMPLE_CLASSES
        assert all(count >= 1 for count in data.class_counts("training"))
        assert all(count >= 1 for count in data.class_counts("validation"))
        listed += [item["image"] for item in (*data.training, *data.validation)]
    assert len(listed) == len(set(listed)) == 72
    manifest = json.loads((real_samples.root / "manifest.json").read_text())
    assert manifest["synthetic"] is False and "pipeline exercise only" in manifest["labels"]
    suffixes = {
        site: {Path(p).suffix for p in Path(d).parent.joinpath("images").iterdir()}
        for site, d in real_samples.site_datalists.items()
    }
    assert suffixes == {"site-1": {".gz"}, "site-2": {".png"}, "site-3": {".gz"}}


def test_transforms_return_the_written_pixels_in_the_same_orientation(real_samples) -> None:
    """NIfTI and PNG files come back through build_transforms as the pool's pixels, rows and columns unswapped."""
    images, labels = _pool()
    transform = build_transforms(DataConfig(image_size=64), train=False)
    for site in ("site-1", "site-2"):  # NIfTI, then 8-bit PNG
        data = load_site_data(real_samples.site_datalists[site], site=site)
        for item in data.training[:4]:
            index = int(Path(item["image"]).name.split("_")[-1].split(".")[0])
            loaded = transform(dict(item))
            assert tuple(loaded["image"].shape) == (1, 64, 64) and int(loaded["label"]) == labels[index]
            expected = images[index]
            expected = (expected - expected.min()) / (expected.max() - expected.min())  # the chain's min-max scaling
            tolerance = 1e-5 if site == "site-1" else 2.5 / 255  # PNG stores 8 bits
            assert torch.allclose(loaded["image"][0], torch.from_numpy(expected), atol=tolerance), (site, item)


def test_same_arguments_write_the_same_files(tmp_path: Path, real_samples) -> None:
    """Writing again gives byte-identical datalists and identical pixels."""
    again = write_real_samples(tmp_path / "again")

    for site, datalist in real_samples.site_datalists.items():
        assert json.loads(Path(datalist).read_text()) == json.loads(again.site_datalists[site].read_text())
    assert again.label_counts == real_samples.label_counts


def test_the_audit_never_treats_the_samples_as_releasable_demo_data(real_samples) -> None:
    """Sites release originals for thumbnails only for the synthetic phantoms: never for these real images."""
    from medpfl_app.audit.demo_originals import demo_data_refusal

    for site, datalist in real_samples.site_datalists.items():
        reason = demo_data_refusal(datalist, site)
        assert reason is not None and "synthetic" in reason


def test_bad_arguments_and_missing_packages_end_in_one_clear_error(tmp_path: Path) -> None:
    """Too many images per class, zero sites, an unknown format, and a missing package are refused with a fix."""
    require_real_images()
    with pytest.raises(MedPFLError, match="fewer than the 1000 images per class") as error:
        real_sample_images(per_class=1000)
    assert "at most" in error.value.fix
    with pytest.raises(MedPFLError, match="num_sites"):
        write_real_samples(tmp_path / "x", num_sites=0)
    with pytest.raises(MedPFLError, match="unknown image format"):
        write_real_samples(tmp_path / "x", formats=("dicom",))  # type: ignore[arg-type]
    missing = RealImageSource("x", "medpfl_no_such_package", "a.npy", "none", window=8, stride=8)
    with pytest.raises(MedPFLError, match="not installed") as error:
        missing.path()
    assert "medpfl_app[realdata]" in error.value.fix
    assert not (tmp_path / "x").exists()


def test_cli_writes_the_samples(tmp_path: Path, capsys) -> None:
    """`medpfl data samples --out DIR --sites 2` (parser from cli/samples.py) writes two sites and says what next."""
    from medpfl_app.cli.options import MedPFLArgumentParser
    from medpfl_app.cli.samples import register_samples

    require_real_images()
    parser = MedPFLArgumentParser(prog="medpfl data")
    register_samples(parser.add_subparsers(dest="data_command"))
    args = parser.parse_args(["samples", "--out", str(tmp_path / "s"), "--sites", "2", "--per-class", "6"])

    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert f"medpfl demo --data {tmp_path / 's'}" in out
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["manifest.json", "site-1", "site-2"]
