"""`medpfl poc prepare` never loses a site's DP ledger, and refuses to delete site state without --force.

Runs the real ``nvflare poc prepare`` (seconds, no system started) in a temporary workspace and home folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpfl_app.cli.main import main
from medpfl_app.defenses.accountant import SiteLedgers
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.poc import system
from medpfl_app.nvflare.poc.keep import StateKind, inventory

pytestmark = pytest.mark.slow  # each case runs `nvflare poc prepare` (~10 s on 2 cores)

SITES = ["site-1", "site-2"]
JOB_ID = "0d5c7b2e-1a2b-4c3d-9e8f-0123456789ab"


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A prepared 2-site POC workspace with the repository's own files, in a private HOME."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nvflare poc prepare writes ~/.nvflare/config.conf
    root = tmp_path / "poc_workspace"
    (root / "templates").mkdir(parents=True)
    (root / "README.md").write_text("the repository's README\n")
    (root / "templates" / "privacy.json").write_text("{}\n")
    monkeypatch.setenv(system.POC_WORKSPACE_ENV, str(root))
    system.prepare(root, SITES)
    return root


def _charge_site_1(workspace: Path) -> tuple[Path, float]:
    site = system.PocLayout(workspace).site_dir("site-1")
    ledger = SiteLedgers(site).client_dp_ledger(delta=1e-5)
    ledger.charge(noise_multiplier=1.0, context={"round": 0})
    return ledger.path, ledger.spent()


def test_prepare_with_force_keeps_the_sites_dp_ledger_and_the_repository_files(workspace: Path) -> None:
    ledger_path, spent = _charge_site_1(workspace)
    before = ledger_path.read_bytes()
    (system.PocLayout(workspace).site_dir("site-1") / "local" / "privacy.json").write_text("{}")

    prepared = system.prepare(workspace, SITES, force=True)

    assert ledger_path.read_bytes() == before
    assert ledger_path in prepared.kept
    assert [s.kind for s in prepared.discarded] == [StateKind.PRIVACY_POLICY]
    assert not (prepared.layout.site_dir("site-1") / "local" / "privacy.json").exists()
    # the anchored ledger is accepted as it stands: ε goes on from where it was, not from 0
    again = SiteLedgers(prepared.layout.site_dir("site-1")).client_dp_ledger(delta=1e-5)
    assert again.spent() == pytest.approx(spent) and spent > 0
    assert (workspace / "README.md").read_text() == "the repository's README\n"
    assert (workspace / "templates" / "privacy.json").is_file()
    assert (prepared.layout.site_dir("site-1") / "startup" / "fed_client.json").is_file()
    assert not list(workspace.parent.glob(".poc_workspace.kept-by-medpfl-*"))


def test_prepare_without_force_refuses_and_names_what_would_be_lost(workspace: Path, capsys) -> None:
    ledger_path, _ = _charge_site_1(workspace)
    site_2 = system.PocLayout(workspace).site_dir("site-2")
    (site_2 / "local" / "privacy.json").write_text("{}")
    (site_2 / JOB_ID).mkdir()
    (site_2 / JOB_ID / "log.txt").write_text("a finished job")

    assert main(["poc", "--workspace", str(workspace), "prepare", "--sites", "2"]) == 2
    message = capsys.readouterr().err
    assert "site-1: DP ledger example_project/prod_00/site-1/medpfl/client_dp_ledger.json" in message
    assert "site-2: privacy policy example_project/prod_00/site-2/local/privacy.json" in message
    assert f"site-2: job results example_project/prod_00/site-2/{JOB_ID}" in message
    assert "--force" in message
    assert ledger_path.is_file() and (site_2 / JOB_ID / "log.txt").is_file()


def test_prepare_of_a_workspace_without_site_state_needs_no_force(workspace: Path) -> None:
    assert inventory(workspace, system.PocLayout(workspace).prod_dir) == []
    prepared = system.prepare(workspace, ["site-1", "site-2", "site-3"])
    assert prepared.layout.sites() == ["site-1", "site-2", "site-3"]
    assert (workspace / "README.md").is_file()


def test_a_site_dropped_by_the_new_workspace_keeps_its_ledger(workspace: Path) -> None:
    site_2 = system.PocLayout(workspace).site_dir("site-2")
    ledger = SiteLedgers(site_2).client_dp_ledger(delta=1e-5)
    ledger.charge(noise_multiplier=1.0, context={"round": 0})
    system.prepare(workspace, ["site-1"], force=True)
    assert json.loads(ledger.path.read_text())  # still there, though site-2 has no startup kit any more
    assert system.PocLayout(workspace).sites() == ["site-1"]


def test_an_interrupted_prepare_is_noticed_before_anything_is_deleted(tmp_path: Path) -> None:
    root = tmp_path / "poc_workspace"
    root.mkdir()
    kept = tmp_path / ".poc_workspace.kept-by-medpfl-4242"
    (kept / "README.md").parent.mkdir(parents=True)
    (kept / "README.md").write_text("kept by the interrupted run\n")
    with pytest.raises(MedPFLError, match="interrupted.*kept-by-medpfl-4242"):
        system.prepare(root, SITES)
    assert (kept / "README.md").is_file()
