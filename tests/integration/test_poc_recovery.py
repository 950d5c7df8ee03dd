"""Recovery in NVFlare POC mode: a site that restarts mid-job, then a server crash.

One real 2-site POC system on loopback (port 8002). A site whose process restarts during an audited job does not
rejoin it (NVFlare 2.9): ``medpfl poc submit`` must name the site, abort the job rather than wait forever, and still
download the audit ledger. Then, while a job runs, the server process is killed with SIGKILL,
as in a crash; its ``sub_start.sh`` watchdog restarts it, a server that knows neither the sites nor the job, which
its job store still calls RUNNING (``abort_job`` cannot end it, so ``nvflare poc stop`` fails). ``medpfl poc
stop`` must leave no server, site or watchdog process and no port taken, must not touch an open admin console or
another process running in the workspace, and must mark the phantom job abandoned; a fresh ``medpfl poc start``
must bring every site back, and the next stop must be clean. Everything is stopped in the end even when an
assertion fails.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from medpfl_app.cli.main import main
from medpfl_app.nvflare.jobs.builder import export_job
from medpfl_app.nvflare.poc import system
from medpfl_app.nvflare.poc.processes import ProcessRole, find_poc_processes, port_holders
from medpfl_app.nvflare.poc.sites import configure_site_data

from .conftest import small_job

pytestmark = [pytest.mark.nvflare_run, pytest.mark.slow]

SITES = ["site-1", "site-2"]


@pytest.fixture(scope="module")
def running_poc(tmp_path_factory: pytest.TempPathFactory):
    """One POC system for the module (the site-restart test runs first, the server crash last)."""
    root = tmp_path_factory.mktemp("poc_recovery")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(root / "home"))
        patch.setenv(system.POC_WORKSPACE_ENV, str(root / "ws"))
        yield from _running_poc(root)


def _running_poc(root: Path):
    layout = system.prepare(root / "ws", SITES).layout
    bystanders: list[subprocess.Popen] = []
    try:
        configure_site_data(layout, demo=True, data_root=None)
        system.start(layout, timeout_s=300)
        admin = layout.admin_dir
        bystanders.append(
            subprocess.Popen(  # stands in for an admin console the operator left open
                [
                    sys.executable,
                    "-c",
                    "import time; time.sleep(7200)",  # outlives the module, however slow the machine
                    "-m",
                    "nvflare.fuel.hci.tools.admin",
                    "-m",
                    f"{admin}/startup/..",
                    "-s",
                    "fed_admin.json",
                ],  # fl_admin.sh's command line
                cwd=admin,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
            )
        )
        bystanders.append(subprocess.Popen(["sleep", "7200"], cwd=layout.site_dir("site-1"), start_new_session=True))
        yield layout, bystanders
    finally:
        final = system.stop(layout)
        for process in bystanders:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        assert final.stopped, final.lines()


def test_a_site_restarting_mid_job_is_named_and_the_job_ends_with_its_ledger(running_poc, tmp_path: Path) -> None:
    from dataclasses import replace

    from medpfl_app.audit.ledger import find_ledgers
    from medpfl_app.nvflare.jobs import JOB_CATALOG
    from medpfl_app.nvflare.poc.submit import submit_and_wait

    layout, _ = running_poc
    spec = replace(JOB_CATALOG["fedavg_audit"], name="poc_site_restart", num_rounds=6, min_clients=2)
    job = export_job(spec, tmp_path / "jobs")
    killer = threading.Thread(target=_kill_site_2_in_round_1, args=(layout,), daemon=True)
    killer.start()
    outcome = submit_and_wait(layout, job, timeout_s=900, download_to=tmp_path / "download")
    killer.join(timeout=60)
    assert (outcome.status, outcome.lost_sites) == ("FINISHED:ABORTED", ("site-2",)), outcome
    assert any("Re-login the client" in line for line in outcome.reasons), outcome.reasons
    assert outcome.result_dir is not None and list(find_ledgers(outcome.result_dir))
    # the restarted site-2 is connected again (the next test needs it)
    with system.admin_session(layout) as session:
        assert {client.name for client in session.get_system_info().client_info} == set(SITES)


def _kill_site_2_in_round_1(layout: system.PocLayout) -> None:
    """SIGKILL site-2's site process once round 1 has started; its watchdog restarts it."""
    import time

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        logs = layout.site_dir("server").glob("*/log.txt")
        if any("Round 1 started" in path.read_text(errors="replace") for path in logs):
            site = next(
                p for p in find_poc_processes(layout.prod_dir) if (p.service, p.role) == ("site-2", ProcessRole.SERVICE)
            )
            os.kill(site.pid, signal.SIGKILL)
            return
        time.sleep(1.0)


def test_stop_after_a_server_crash_leaves_nothing_running_and_start_works_again(
    running_poc, tmp_path: Path, capsys
) -> None:
    layout, bystanders = running_poc
    job = export_job(small_job("poc_crash", num_rounds=50), tmp_path / "jobs")  # still running when killed
    with system.admin_session(layout) as session:
        job_id = session.submit_job(str(job))
        _wait_for_status(session, job_id, "RUNNING")
    before = find_poc_processes(layout.prod_dir)
    assert {(p.service, p.role) for p in before if p.role in (ProcessRole.WATCHDOG, ProcessRole.SERVICE)} == {
        (service, role) for service in ("server", *SITES) for role in (ProcessRole.WATCHDOG, ProcessRole.SERVICE)
    }
    server = next(p for p in before if (p.service, p.role) == ("server", ProcessRole.SERVICE))
    os.kill(server.pid, signal.SIGKILL)

    exit_code = main(["poc", "--workspace", str(layout.workspace), "stop"])

    out = capsys.readouterr().out
    nvflare_failed = "`nvflare poc stop` FAILED" in out
    assert exit_code == (1 if nvflare_failed else 0), out
    assert "POC system stopped" in out, out
    assert f"job {job_id} was still marked RUNNING" in out, out
    assert find_poc_processes(layout.prod_dir) == [], "a server, site or watchdog process survived"
    assert port_holders(system.poc_ports(layout)) == []
    assert all(process.poll() is None for process in bystanders), "stop ended a process the POC did not start"
    for site in ("server", *SITES):
        assert not (layout.site_dir(site) / "daemon_pid.fl").exists()

    system.start(layout, timeout_s=300)  # every site connects again
    with system.admin_session(layout) as session:
        assert {client.name for client in session.get_system_info().client_info} == set(SITES)
        assert session.get_job_meta(job_id)["status"] == "FINISHED:ABANDONED"
    assert main(["poc", "--workspace", str(layout.workspace), "stop"]) == 0, capsys.readouterr().out


def _wait_for_status(session, job_id: str, wanted: str, timeout_s: float = 300.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while (status := session.get_job_meta(job_id).get("status")) != wanted:
        assert time.monotonic() < deadline and not str(status).startswith("FINISHED"), status
        time.sleep(2.0)
