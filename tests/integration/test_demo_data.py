"""`medpfl demo --data`: the audited demo on the user's own images, and the demo's run-folder safety.

Fast tests check the argument validation (before anything starts) and the job a ``--data`` run exports; the
``nvflare_run`` test runs the audited demo on the real-MRI sample set in NVFlare's simulator.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.jobs import demo as demo_module
from medpfl_app.nvflare.jobs.demo import (
    RUN_PARTS,
    check_run_folder,
    prepare_run_folder,
    run_demo,
    with_num_classes,
    without_thumbnails,
)
from medpfl_app.nvflare.jobs.demo_data import SOURCES_NAME, prepare_demo_sites
from medpfl_app.nvflare.jobs.spec import JOB_CATALOG


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory):
    """The real-MRI sample set: three site folders, each with a datalist.json (site-2 in PNG)."""
    pytest.importorskip("dipy", reason="real MRI samples need dipy: pip install 'medpfl_app[realdata]'")
    from medpfl_app.data.samples import write_real_samples

    return write_real_samples(tmp_path_factory.mktemp("samples") / "real", per_class=12)


def _no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_module, "run_simulation", lambda *a, **k: pytest.fail("the simulator must not start"))
    monkeypatch.setattr(demo_module, "export_job", lambda *a, **k: pytest.fail("no job may be exported"))


def _all_args(path: Path) -> str:
    return " ".join(p.read_text() for p in sorted(path.rglob("*.json")))


def test_site_folders_become_site_1_to_n_with_absolute_paths(tmp_path: Path, samples) -> None:
    """One folder per site: each demo site lists exactly its folder's images, by absolute path."""
    prepared = prepare_demo_sites(samples.root, tmp_path / "data", num_sites=None, image_size=32, in_channels=1)

    assert list(prepared.site_datalists) == ["site-1", "site-2", "site-3"] and not prepared.split
    for site, datalist in prepared.site_datalists.items():
        written = json.loads(datalist.read_text())
        original = json.loads(samples.site_datalists[site].read_text())
        assert written["classes"] == original["classes"]
        assert [Path(i["image"]) for i in written["training"]] == [
            samples.site_datalists[site].parent / i["image"] for i in original["training"]
        ]
        assert all(Path(i["image"]).is_absolute() for i in written["training"])
    sources = json.loads((tmp_path / "data" / SOURCES_NAME).read_text())
    assert sources["synthetic"] is False and sources["sites"]["site-2"] == str(samples.root / "site-2")
    assert not (tmp_path / "data" / "manifest.json").exists()  # never looks like the synthetic demo set


def test_a_site_datalist_beside_its_images_makes_a_folder_of_sites(tmp_path: Path, samples) -> None:
    """`<site>/datalist.json` with the images directly beside it is still one folder per site, not a class tree."""
    for site in ("a_hospital", "b_hospital"):
        folder = tmp_path / "mine" / site
        folder.mkdir(parents=True)
        source = samples.site_datalists["site-1"]
        content = json.loads(source.read_text())
        for item in content["training"] + content["validation"]:
            shutil.copy(source.parent / item["image"], folder / Path(item["image"]).name)
            item["image"] = Path(item["image"]).name
        (folder / "datalist.json").write_text(json.dumps(content))

    prepared = prepare_demo_sites(tmp_path / "mine", tmp_path / "data", num_sites=None, image_size=32, in_channels=1)

    assert prepared.sources == {"site-1": tmp_path / "mine" / "a_hospital", "site-2": tmp_path / "mine" / "b_hospital"}
    assert prepared.class_names == ("t1_coronal", "dwi_b0_axial", "epi_axial") and not prepared.split


def test_one_class_folder_tree_is_split_across_sites(tmp_path: Path, samples) -> None:
    """A class-per-folder tree is dealt to --sites sites: disjoint, complete, every class everywhere."""
    tree = tmp_path / "tree"
    for item in json.loads(samples.site_datalists["site-2"].read_text())["training"]:
        target = tree / item["image"].split("/")[-1].rsplit("_", 1)[0] / Path(item["image"]).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(samples.site_datalists["site-2"].parent / item["image"], target)

    prepared = prepare_demo_sites(tree, tmp_path / "data", num_sites=2, image_size=32, in_channels=1)

    assert prepared.split and prepared.class_names == ("dwi_b0_axial", "epi_axial", "t1_coronal")
    listed = []
    for datalist in prepared.site_datalists.values():
        content = json.loads(datalist.read_text())
        assert {i["label"] for i in content["training"]} == {0, 1, 2}
        listed += [i["image"] for i in content["training"] + content["validation"]]
    assert sorted(listed) == sorted(str(p) for p in tree.rglob("*.png"))


def test_unusable_data_is_refused_before_the_simulator_starts(tmp_path: Path, samples, monkeypatch) -> None:
    """A corrupt image, a missing folder, mismatched classes and a wrong --sites each end in one clear error."""
    _no_simulation(monkeypatch)
    data = Path(shutil.copytree(samples.root, tmp_path / "mine"))
    broken = next((data / "site-2" / "images").glob("*.png"))
    broken.write_bytes(b"not a png")
    with pytest.raises(MedPFLError) as error:
        run_demo(tmp_path / "run", data=data, num_rounds=1, show_progress=False)
    assert "1 of 36 images" in error.value.problem and broken.name in error.value.problem
    assert "[site-2]" in error.value.problem and "nothing was started" in error.value.problem

    with pytest.raises(MedPFLError, match="does not exist"):
        run_demo(tmp_path / "run2", data=tmp_path / "nowhere", show_progress=False)
    with pytest.raises(MedPFLError, match="3 site folders .* --sites 2") as error:
        run_demo(tmp_path / "run3", data=samples.root, num_sites=2, show_progress=False)
    assert "leave --sites out" in error.value.fix

    content = json.loads((data / "site-3" / "datalist.json").read_text())
    content["classes"] = ["a", "b", "c"]
    (data / "site-3" / "datalist.json").write_text(json.dumps(content))
    shutil.copy(samples.root / "site-2" / "images" / broken.name, broken)  # readable again
    with pytest.raises(MedPFLError, match="site folder site-3 has classes"):
        run_demo(tmp_path / "run4", data=data, show_progress=False)


def test_existing_run_folder_is_refused_unless_force(tmp_path: Path, monkeypatch, capsys) -> None:
    """`medpfl demo` into a non-empty --out stops before anything runs, naming the folder, --force and --out."""
    from medpfl_app.cli.main import main

    monkeypatch.setattr(demo_module, "run_demo", lambda *a, **k: pytest.fail("run_demo must not start"))
    out = tmp_path / "demo"
    (out / "jobs").mkdir(parents=True)
    (out / "notes.txt").write_text("keep me")

    assert main(["demo", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"the run folder {out} already exists" in err and "--force" in err and "--out" in err
    assert (out / "jobs").is_dir()

    for part in RUN_PARTS:
        (out / part).mkdir(exist_ok=True)
        (out / part / "old.txt").write_text("old run")
    prepare_run_folder(out, force=True)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # only the demo's own folders go
    check_run_folder(tmp_path / "new", force=False)  # a new folder is fine
    with pytest.raises(MedPFLError, match="already exists"):
        check_run_folder(out, force=False)  # the user's notes.txt still makes it non-empty


def test_data_inside_the_run_folder_is_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    """--force would remove out/data: data inside --out is refused before anything is touched."""
    from medpfl_app.cli.main import main

    monkeypatch.setattr(demo_module, "run_demo", lambda *a, **k: pytest.fail("run_demo must not start"))
    (tmp_path / "run" / "data" / "site-1").mkdir(parents=True)

    assert main(["demo", "--out", str(tmp_path / "run"), "--data", str(tmp_path / "run" / "data"), "--force"]) == 2
    assert "lies inside the run folder" in capsys.readouterr().err
    assert (tmp_path / "run" / "data" / "site-1").is_dir()


def test_a_data_run_exports_a_job_without_reconstructions_for_its_classes(tmp_path: Path) -> None:
    """The audited job stores reconstructions and releases originals for the phantoms; for --data both are off,
    the audit itself stays on, and the sites and the audit use the data's number of classes."""
    from medpfl_app.nvflare.jobs.builder import export_job

    base = JOB_CATALOG["fedavg_audit"]
    assert "store_reconstructions" in json.dumps(base.server_result_filters)
    assert "release_demo_originals" in json.dumps(base.client_components)

    spec = with_num_classes(without_thumbnails(base), 3)
    job_dir = export_job(spec, tmp_path / "jobs")

    exported = _all_args(job_dir)
    assert "store_reconstructions" not in exported and "release_demo_originals" not in exported
    assert "medpfl_app.nvflare.server.audit_filter.AuditFilter" in exported and "AuditSiteScorer" in exported
    assert spec.training.num_classes == 3 and "--num_classes 3" in exported
    assert "synthetic demo data only" not in spec.description and "no reconstructions" in spec.description
    audit = next(f for f in spec.server_result_filters if f["path"].endswith("AuditFilter"))
    assert audit["args"]["model"]["num_classes"] == 3


def test_every_demo_option_states_its_default(capsys) -> None:
    """`medpfl demo --help` gives a default for every option; the CLI's job default is the library's."""
    from medpfl_app.cli import demo as demo_cli
    from medpfl_app.cli.main import build_parser, main, parsers_of

    parser = dict(parsers_of(build_parser()))[("demo",)]
    formatter = parser.formatter_class(prog="medpfl demo")
    options = [action for action in parser._actions if action.option_strings and action.dest != "help"]
    assert {action.dest for action in options} >= {"out", "force", "data", "sites", "rounds", "seed", "timeout", "job"}
    for action in options:
        assert "default" in formatter._get_help_string(action) % vars(action), action.option_strings
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: off, an existing non-empty --out is refused)" in text and "(default: 3, or one per site" in text
    assert demo_cli._DEMO_JOB == demo_module.DEMO_JOB


@pytest.mark.slow
@pytest.mark.nvflare_run
def test_demo_on_real_mri_audits_every_site_and_stores_no_images(tmp_path: Path, samples) -> None:
    """`run_demo(data=...)` on the real sample set: the simulator finishes one round, the ledger has a record for
    every site, and no reconstruction or original image is stored anywhere in the run."""
    from medpfl_app.audit.ledger import read_ledger

    outcome = run_demo(tmp_path / "run", data=samples.root, num_rounds=1, show_progress=False, timeout_s=900)

    assert outcome.audit_ledger is not None
    records = list(read_ledger(outcome.audit_ledger).records)
    assert sorted(r["site"] for r in records) == ["site-1", "site-2", "site-3"]
    assert all(r["status"] == "audited" for r in records), [r.get("reason") for r in records]
    assert outcome.data_sources == {site: samples.root / site for site in ("site-1", "site-2", "site-3")}
    run = tmp_path / "run"
    assert not list(run.rglob("recon_*.png")) and not list(run.rglob("original_*.png"))
    assert not [p for p in run.rglob("thumbnails") if p.is_dir() and any(p.iterdir())]
