"""`medpfl poc submit` follows a job: a site that restarted mid-job is named and the job aborted, not waited for
forever; a site leaving at the normal end of a run is not mistaken for one. Fake FLARE sessions, no NVFlare run."""

from __future__ import annotations

from pathlib import Path

import pytest

from medpfl_app.nvflare.poc import submit, system

JOB = "e699945e-3239-4a55-bbfa-e80e3dded75e"
RELOGIN = (
    "2026-12-01 23:04:21,054 - ClientManager - INFO - Client: site-2 already registered. "
    "Re-login the client with a new token."
)


class _Session:
    """The FLARE API calls `_follow` makes, scripted: site-2 stops reporting the job after the first check."""

    def __init__(self, finish_after_checks: int | None, *, site_2_seen: bool = True) -> None:
        self.checks = 0
        self.aborted = False
        self.finish_after_checks = finish_after_checks
        self.site_2_seen = site_2_seen  # False: site-2 restarted before the first look

    def get_job_meta(self, job_id: str) -> dict:
        if self.aborted:
            return {"status": "FINISHED:ABORTED"}
        if self.finish_after_checks is not None and self.checks >= self.finish_after_checks:
            return {"status": "FINISHED:COMPLETED"}
        return {"status": "RUNNING", "deploy_map": {"app": ["server", "site-1", "site-2"]}}

    def get_client_job_status(self) -> list[dict]:
        self.checks += 1
        site_2 = {"client_name": "site-2", "job_id": JOB, "status": "started"}
        return [
            {"client_name": "site-1", "job_id": JOB, "status": "started"},
            site_2 if self.checks == 1 and self.site_2_seen else {"client_name": "site-2", "status": "no_jobs"},
        ]

    def abort_job(self, job_id: str) -> None:
        self.aborted = True


@pytest.fixture
def server_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(submit, "SITE_CHECK_S", 0.0)
    monkeypatch.setattr(submit, "POLL_S", 0.0)
    (tmp_path / "server").mkdir()
    return tmp_path / "server"


def test_a_site_that_restarted_mid_job_is_named_and_the_job_aborted(server_dir: Path) -> None:
    (server_dir / "log.txt").write_text(f"... Started run: {JOB} for clients: site-1,site-2\n{RELOGIN}\n")
    session = _Session(finish_after_checks=None)
    assert submit._follow(session, JOB, 60.0, server_dir, all_sites=["site-1", "site-2"]) == (
        "FINISHED:ABORTED",
        ["site-2"],
    )
    assert session.aborted


def test_a_site_that_restarted_before_it_was_ever_seen_running_the_job_is_named_too(server_dir: Path) -> None:
    """The deploy map says which sites must run the job; a restart before the first look is not missed."""
    (server_dir / "log.txt").write_text(f"... Started run: {JOB} for clients: site-1,site-2\n{RELOGIN}\n")
    session = _Session(finish_after_checks=None, site_2_seen=False)
    assert submit._follow(session, JOB, 60.0, server_dir, all_sites=["site-1", "site-2"])[1] == ["site-2"]


def test_a_dropped_admin_connection_is_asked_again_not_a_crash(server_dir: Path) -> None:
    """A busy server may drop the admin link for a moment: the follower polls again instead of failing."""
    from nvflare.fuel.flare_api.api_spec import NoConnection

    (server_dir / "log.txt").write_text(f"... Started run: {JOB} for clients: site-1,site-2\n{RELOGIN}\n")

    class _Flaky(_Session):
        drops = 2

        def get_client_job_status(self) -> list[dict]:
            if self.drops:
                self.drops -= 1
                raise NoConnection("cannot connect to server: ERROR_SERVER_CONNECTION")
            return super().get_client_job_status()

    session = _Flaky(finish_after_checks=None, site_2_seen=False)
    assert submit._follow(session, JOB, 60.0, server_dir, all_sites=["site-1", "site-2"]) == (
        "FINISHED:ABORTED",
        ["site-2"],
    )


def test_deployed_sites_reads_the_deploy_map() -> None:
    meta = {"deploy_map": {"app_server": ["server"], "app": ["site-2", "site-1"]}}
    assert submit.deployed_sites(meta, ["site-1", "site-2", "site-3"]) == {"site-1", "site-2"}
    assert submit.deployed_sites({"deploy_map": {"app": ["@ALL"]}}, ["site-1", "site-3"]) == {"site-1", "site-3"}
    assert submit.deployed_sites({"deploy_map": "junk"}, ["site-1"]) == set() == submit.deployed_sites(None, [])


def test_a_site_leaving_without_a_restart_is_not_treated_as_lost(server_dir: Path) -> None:
    """At the end of a run sites finish before the server (e.g. while the audit drains): keep waiting."""
    (server_dir / "log.txt").write_text(f"{RELOGIN}\n... Started run: {JOB} for clients: site-1,site-2\n")
    session = _Session(finish_after_checks=5)
    assert submit._follow(session, JOB, 60.0, server_dir, all_sites=["site-1", "site-2"]) == ("FINISHED:COMPLETED", [])
    assert not session.aborted


def test_the_outcome_of_a_failed_job_carries_the_servers_reasons(tmp_path: Path, monkeypatch) -> None:
    layout = system.PocLayout(tmp_path / "ws")
    server = layout.site_dir("server")
    for site in ("site-1", "site-2"):
        (layout.site_dir(site) / "startup").mkdir(parents=True)
    server.mkdir(parents=True)
    reason = (
        f"2026-12-01 23:01:46,544 - FederatedServer - INFO - Failing job {JOB} due to reported failure from site-2: "
        "exception"
    )
    (server / "log.txt").write_text(f"noise\n{reason}\n")

    class Failing(_Session):
        def submit_job(self, path: str) -> str:
            return JOB

        def get_job_meta(self, job_id: str) -> dict:
            return {"status": "FINISHED:EXECUTION_EXCEPTION"}

        def __enter__(self):
            return self

        def __exit__(self, *exc_info) -> None:
            return None

    monkeypatch.setattr(system, "admin_session", lambda layout, **kwargs: Failing(None))
    job = Path(__file__).resolve().parents[2] / "jobs" / "fedavg_small_cnn"
    monkeypatch.setattr(submit, "check_job_folder", lambda *a, **k: None)  # a 3-site job on this 2-site layout
    outcome = submit.submit_and_wait(layout, job, timeout_s=5)
    assert (outcome.status, outcome.completed, outcome.reasons) == ("FINISHED:EXECUTION_EXCEPTION", False, (reason,))
