"""The embedded demo data set: phantoms, determinism, datalist validity, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medpfl_app.data import (
    PHANTOM_CLASSES,
    DataConfig,
    build_dataloaders,
    generate_demo_dataset,
    generate_phantom,
    generate_phantoms,
    load_site_data,
    write_site_data_config,
)
from medpfl_app.errors import MedPFLError


def test_phantoms_are_seeded_and_in_unit_range() -> None:
    """Same seed → same pixels; other seed → other pixels; float32 spanning [0, 1]."""
    labels = [0, 1, 2, 3]
    first = generate_phantoms(labels, seed=3, image_size=32)
    assert first.shape == (4, 32, 32) and first.dtype == np.float32
    assert np.array_equal(first, generate_phantoms(labels, seed=3, image_size=32))
    assert not np.array_equal(first, generate_phantoms(labels, seed=4, image_size=32))
    assert first.min() == 0.0 and first.max() == 1.0
    with pytest.raises(MedPFLError, match="phantom class"):
        generate_phantom("astrocytoma", rng=np.random.default_rng(0))


def _bright_region(image: np.ndarray) -> tuple[int, float, float, float]:
    """Count, |column − centre|, mean row and mean distance from the centre of pixels above 0.9."""
    rows, cols = np.nonzero(image > 0.9)
    return rows.size, float(np.abs(cols.mean() - 32)), float(rows.mean()), float(np.hypot(rows - 32, cols - 32).mean())


def test_lesions_sit_where_each_class_puts_them() -> None:
    """The brightest pixels are the skull ring without a tumour, else the lesion in its class's place."""
    images = generate_phantoms(np.repeat(np.arange(4), 12), seed=0).reshape(4, 12, 64, 64)
    stats = np.array([[_bright_region(image) for image in group] for group in images])  # [class, subject, 4]
    count, lateral, row, radial = np.moveaxis(stats, -1, 0)
    assert (radial[0] > 22).all()  # no_tumor: only the skull ring
    assert (lateral[1] > 5).all() and (radial[1] < 17).all()  # glioma: intra-axial, off the midline
    assert (radial[2] > 15).all() and (count[2] > 40).all()  # meningioma: large, against the skull
    assert (row[3] > 36).all() and (lateral[3] < 7).all() and (count[3] < 30).all()  # pituitary: small, low centre


def test_no_single_pixel_separates_a_class() -> None:
    """The best one-pixel threshold rule stays well below perfect for every lesion class (positions vary)."""
    labels = np.repeat(np.arange(4), 30)
    pixels = generate_phantoms(labels, seed=0).reshape(labels.size, -1)
    for label in (1, 2, 3):
        positive = labels == label
        best = 0.0
        for threshold in np.linspace(0.3, 0.95, 14):
            bright = pixels > threshold
            balanced = (bright[positive].mean(axis=0) + 1 - bright[~positive].mean(axis=0)) / 2
            best = max(best, float(balanced.max()))
        assert best < 0.85, (PHANTOM_CLASSES[label], best)


def test_demo_dataset_is_deterministic_and_valid(tmp_path: Path) -> None:
    """Two runs write identical pixels; datalists load, IID sites are balanced, the manifest matches."""
    first = generate_demo_dataset(tmp_path / "a", num_sites=3, train_per_site=8, val_per_site=4, image_size=32)
    second = generate_demo_dataset(tmp_path / "b", num_sites=3, train_per_site=8, val_per_site=4, image_size=32)
    assert list(first.site_datalists) == ["site-1", "site-2", "site-3"]
    assert first.class_names == PHANTOM_CLASSES
    manifest = json.loads((first.root / "manifest.json").read_text())
    assert manifest["seed"] == 0 and manifest["partition"] == "iid"
    seen: set[str] = set()
    for site, datalist in first.site_datalists.items():
        data = load_site_data(datalist, site=site, num_classes=4)
        other = load_site_data(second.site_datalists[site])
        assert data.class_counts("training") == (2, 2, 2, 2) and len(data.validation) == 4
        assert list(data.class_counts("training")) == manifest["sites"][site]["label_counts"]["training"]
        for mine, theirs in zip(data.training + data.validation, other.training + other.validation):
            assert mine["label"] == theirs["label"]
            pixels = np.asarray(nib.load(mine["image"]).dataobj)
            assert pixels.shape == (32, 32) and pixels.dtype == np.float32
            assert np.array_equal(pixels, np.asarray(nib.load(theirs["image"]).dataobj))
            seen.add(pixels.tobytes())
    assert len(seen) == 3 * 12  # every image is a different subject


def test_demo_dirichlet_is_skewed_and_loads(tmp_path: Path) -> None:
    """A Dirichlet demo gives label-skewed sites whose data loads into batches."""
    demo = generate_demo_dataset(
        tmp_path, num_sites=3, train_per_site=16, val_per_site=4, partition="dirichlet", dirichlet_alpha=0.1, seed=1
    )
    counts = np.array([demo.label_counts[site]["training"] for site in demo.site_datalists])
    assert counts.sum() == 48 and (counts.sum(axis=1) >= 4).all()
    assert (counts.max(axis=1) / counts.sum(axis=1)).mean() > 0.5
    data = load_site_data(demo.site_datalists["site-1"])
    train_loader, val_loader = build_dataloaders(data, DataConfig(batch_size=4))
    batch = next(iter(train_loader))
    assert batch["image"].shape[1:] == (1, 64, 64)
    assert len(val_loader.dataset) == 4


def test_demo_images_survive_the_transforms_unchanged(tmp_path: Path) -> None:
    """Demo phantoms already span [0, 1] at the default size, so the pipeline hands the exact pixels to the model."""
    demo = generate_demo_dataset(tmp_path, num_sites=1, train_per_site=2, val_per_site=0)
    data = load_site_data(demo.site_datalists["site-1"])
    loader, _ = build_dataloaders(data, DataConfig(shuffle=False, batch_size=2))
    batch = next(iter(loader))
    for row, item in enumerate(data.training):
        written = np.asarray(nib.load(item["image"]).dataobj)
        np.testing.assert_allclose(batch["image"][row, 0].numpy(), written, atol=1e-6)


def test_demo_cli_and_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`medpfl data demo` writes the set and `medpfl data check` accepts it, or exits 1 on a corrupt file."""
    import argparse

    from medpfl_app.cli import data as data_cli

    parser = argparse.ArgumentParser(prog="medpfl")
    data_cli.register(parser.add_subparsers(dest="command"))

    def run(*argv: str) -> int:
        args = parser.parse_args(list(argv))
        try:
            return args.func(args)
        except MedPFLError as error:  # what medpfl_app.cli.main does
            print(error)
            return 2

    sizes = ("--sites", "2", "--train-per-site", "4", "--val-per-site", "2")
    assert run("data", "demo", "--out", str(tmp_path), *sizes) == 0
    out = capsys.readouterr().out
    assert "site-2" in out and str(tmp_path / "site-1" / "datalist.json") in out
    assert run("data", "check", str(tmp_path / "site-1"), "--site", "site-1") == 0
    assert "4 training, 2 validation" in capsys.readouterr().out
    workspace = tmp_path / "ws" / "site-1"
    write_site_data_config(workspace / "local" / "medpfl_data.json", tmp_path / "site-1", DataConfig(image_size=16))
    assert run("data", "check", "--site", "site-1", "--workspace", str(workspace)) == 0
    assert "model input shape (1, 16, 16)" in capsys.readouterr().out
    assert run("data", "check") == 2
    assert "needs a SOURCE or a --site" in capsys.readouterr().out
    victim = load_site_data(tmp_path / "site-2").training[1]["image"]
    Path(victim).write_bytes(b"corrupt")
    assert run("data", "check", str(tmp_path / "site-2"), "--site", "site-2") == 1
    out = capsys.readouterr().out
    assert "[site-2] data NOT usable: 1 of 6 files have errors" in out and victim in out
