"""The audit's site scores when NVFlare runs the site script as an external process, in NVFlare's simulator.

The site script (`medpfl_app.nvflare.site.client`) then runs in a process of its own, launched by the client job
process that hosts the audit's site scorer; the scorer must still find which images each round used (the
site-local round record, `medpfl_app.audit.round_samples`) and load them itself.

Threat model: honest-but-curious server, the default `AuditPlan`; sigmoid LeNet at 32 px, SGD; site-1 trains one
image for one step per round; 2 sites x 2 rounds on the tiny demo set.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from medpfl_app.audit.ledger import find_ledgers, read_ledger
from medpfl_app.audit.round_samples import RECORD_FOLDER, RoundSamples
from medpfl_app.nvflare.jobs.builder import export_job
from medpfl_app.nvflare.jobs.simulate import RUN_MARKER_ENV, marked_processes, run_simulation
from medpfl_app.nvflare.jobs.spec import AUDIT_HIGH_RISK_SITE, audited

from .conftest import SIM_SITES

pytestmark = [pytest.mark.nvflare_run, pytest.mark.slow]

ROUNDS = (0, 1)


def _external_trainers(root) -> dict[int, bytes]:
    """``pid -> environment`` of the running site scripts launched from an app folder under ``root``."""
    found = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if b"custom/medpfl_site.py" in (entry / "cmdline").read_bytes() and Path(
                os.readlink(entry / "cwd")
            ).is_relative_to(root):
                found[int(entry.name)] = (entry / "environ").read_bytes()
        except (OSError, ValueError):
            continue
    return found


@pytest.fixture(scope="module")
def external_audit(tmp_path_factory: pytest.TempPathFactory, demo_data_2_sites):
    """The audited job with external-process site scripts, 2 sites x 2 rounds; also which site-script processes
    were seen while rounds started."""
    root = tmp_path_factory.mktemp("sim_external_audit")
    spec = replace(
        audited(
            "sim_external_audit",
            "audited job, site script as an external process",
            num_rounds=len(ROUNDS),
            launch_external_process=True,
        ),
        min_clients=len(SIM_SITES),
    )
    job = export_job(spec, root / "jobs")
    seen: dict[int, bytes] = {}
    simulation = run_simulation(
        job,
        root / "workspace",
        sites=SIM_SITES,
        timeout_s=900,
        env={"MEDPFL_DATA_ROOT": str(demo_data_2_sites.root)},
        on_round=lambda _: seen.update(_external_trainers(root.resolve())),
    )
    return job, simulation, seen


def test_the_job_runs_the_site_script_as_an_external_process(external_audit) -> None:
    job, simulation, _ = external_audit
    config = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    executor, _preflight = config["executors"]  # training ("*") first, then the pre-flight task's executor
    assert executor["executor"]["args"]["execution_mode"] == "external_process"
    assert "custom/medpfl_site.py" in executor["executor"]["args"]["command"]
    log = simulation.log_file.read_text(errors="replace")
    assert log.count("launching external trainer") >= len(SIM_SITES)


def test_every_audited_update_gets_real_site_scores(external_audit) -> None:
    _, simulation, _ = external_audit
    (ledger,) = list(find_ledgers(simulation.server_run_dir))
    contents = read_ledger(ledger)
    assert contents.skipped_lines == ()
    records = list(contents.records)
    assert sorted((r["site"], r["round"]) for r in records) == sorted(
        (site, round_) for site in SIM_SITES for round_ in ROUNDS
    )
    for record in records:
        assert record["status"] == "audited", record["reason"]
        scores = record["site_scores"]
        assert scores["status"] == "scored", scores
        assert isinstance(scores["ssim_max"], float) and isinstance(scores["ssim_mean"], float), scores
        assert scores["images_used"] >= 1
    for record in (r for r in records if r["site"] == AUDIT_HIGH_RISK_SITE):
        assert record["site_scores"]["images_used"] == 1  # one image, one step per round


def test_the_round_records_stay_at_the_site_owner_only_and_bounded(external_audit) -> None:
    """Written by the external process into the client's run folder, read there by the client job's scorer."""
    _, simulation, _ = external_audit
    for site in SIM_SITES:
        run_dir = simulation.workspace / site / "simulate_job"
        folder = run_dir / RECORD_FOLDER
        files = sorted(folder.iterdir())
        assert [p.name for p in files] == [f"round_{r}.json" for r in ROUNDS]
        for made in (folder.parent, folder):
            assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
        for path in files:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
            record = RoundSamples.from_dict(json.loads(path.read_text()))
            assert record.site == site and record.job_id == "simulate_job" and record.positions
        assert not list(simulation.workspace.rglob("server/**/round_samples"))  # nothing of it at the server


def test_no_external_process_outlives_the_simulation(external_audit) -> None:
    """The site scripts ran as processes of their own (outside the simulator's process group), carried the run's
    marker, and none is left once the simulation returned."""
    _, simulation, seen = external_audit
    assert len(seen) >= len(SIM_SITES), seen.keys()
    marker = f"{RUN_MARKER_ENV}={simulation.run_marker}".encode()
    assert simulation.run_marker and all(marker in env.split(b"\0") for env in seen.values())
    assert not marked_processes(simulation.run_marker)
    assert not set(seen) & set(_external_trainers(Path("/")))
