"""Submit a job to the POC system and follow it to the end: checked, staged, watched for lost sites, explained.

* The job folder is checked first (`medpfl_app.nvflare.jobs.check`): a bad parameter is one error before anything is sent.
* A staged copy is submitted: NVFlare signs the submitted folder in place, which must not touch ``jobs/``.
* While it runs, every site the job was deployed to must still run it. NVFlare 2.9 does not bring a restarted site back into a
  running job (the site logs in again with a new token, reports ``no_jobs``, and the job keeps waiting for the old
  token), so a job that lost a site that way waits forever. A site the job was deployed to (its deploy map, not
  only the sites seen running it: a site can restart before the first look) that logged in again since and no
  longer runs it is reported and the job is aborted, which also lets the server's end-of-run components (the audit
  ledger) finish. (A site whose job process dies while the site process lives is reported by NVFlare itself: the
  job fails within seconds.)
* When it did not complete, the server log lines that say why come back with the outcome (`job_logs`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nvflare.fuel.flare_api.api_spec import NoConnection

from medpfl_app.nvflare.jobs.check import check_job_folder
from medpfl_app.nvflare.poc import system
from medpfl_app.nvflare.poc.job_logs import failure_lines, relogged_sites

COMPLETED = "FINISHED:COMPLETED"
#: What NVFlare's submit writes into every folder of the job it signs (`nvflare.lighter.utils.sign_folders`).
NVFLARE_SIGNATURE_FILES = (".__nvfl_sig.json", ".__nvfl_submitter.crt")
POLL_S = 3.0
SITE_CHECK_S = 15.0
ABORT_WAIT_S = 300.0


@dataclass(frozen=True)
class JobOutcome:
    """How a submitted job ended, where its result went, and what the server said when it did not complete."""

    job_id: str
    status: str
    result_dir: Path | None
    lost_sites: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()

    @property
    def completed(self) -> bool:
        return self.status == COMPLETED


def submit_and_wait(
    layout: system.PocLayout, job_dir: Path, *, timeout_s: float = 1200.0, download_to: Path | None = None
) -> JobOutcome:
    """Check ``job_dir``, submit a staged copy, wait for the end (aborting a job that lost a site), download."""
    job_dir = Path(job_dir).resolve()
    check_job_folder(job_dir, available_sites=layout.sites())
    with staged_job(job_dir) as staged, system.admin_session(layout) as session:
        job_id = session.submit_job(str(staged))
    with system.admin_session(layout) as session:
        status, lost = _follow(session, job_id, timeout_s, layout.site_dir("server"), all_sites=layout.sites())
        result_dir = None
        if download_to is not None and status.startswith("FINISHED"):
            download_to.mkdir(parents=True, exist_ok=True)
            result_dir = Path(session.download_job_result(job_id, str(download_to)))
    reasons = () if status == COMPLETED else tuple(failure_lines(layout.site_dir("server"), job_id))
    return JobOutcome(job_id, status, result_dir, tuple(lost), reasons)


@contextlib.contextmanager
def staged_job(job_dir: Path) -> Iterator[Path]:
    """A private copy of ``job_dir`` under the system's temporary folder, removed afterwards."""
    stage = Path(tempfile.mkdtemp(prefix="medpfl-submit-"))
    try:
        copy = stage / job_dir.name
        shutil.copytree(job_dir, copy, ignore=shutil.ignore_patterns(*NVFLARE_SIGNATURE_FILES), symlinks=False)
        yield copy
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _follow(session, job_id: str, timeout_s: float, server_dir: Path, *, all_sites: list[str]) -> tuple[str, list[str]]:
    """Poll until the job is finished; returns (status, sites it lost). Status ``RUNNING`` means the timeout hit."""
    deadline = time.monotonic() + timeout_s
    next_site_check = time.monotonic() + SITE_CHECK_S
    joined: set[str] = set()
    status = "RUNNING"
    while time.monotonic() <= deadline:
        try:
            meta = session.get_job_meta(job_id)
            status = str(meta.get("status", "UNKNOWN"))
            if status.startswith("FINISHED"):
                return status, []
            if status == "RUNNING" and time.monotonic() >= next_site_check:
                next_site_check = time.monotonic() + SITE_CHECK_S
                running = _sites_running(session, job_id)
                joined |= running | deployed_sites(meta, all_sites)
                # Only a site that restarted counts: at the end of a run sites leave before the server (audit drain).
                lost = sorted((joined - running) & relogged_sites(server_dir, job_id))
                if lost:
                    session.abort_job(job_id)
                    return _wait_finished(session, job_id), lost
        except NoConnection:
            pass  # the admin link to the server dropped for a moment (a busy server): ask again at the next poll
        time.sleep(POLL_S)
    return status, []


def deployed_sites(meta: object, all_sites: list[str]) -> set[str]:
    """The sites a job's meta deploys it to (``deploy_map``; ``@ALL`` is every POC site); the server is not a site."""
    deploy_map = meta.get("deploy_map") if isinstance(meta, dict) else None
    sites: set[str] = set()
    for targets in deploy_map.values() if isinstance(deploy_map, dict) else ():
        for target in targets if isinstance(targets, list) else ():
            if target == "@ALL":
                sites.update(all_sites)
            elif isinstance(target, str) and target != "server":
                sites.add(target)
    return sites


def _sites_running(session, job_id: str) -> set[str]:
    """Sites that report ``job_id`` among their running jobs (``check_status client``)."""
    entries = session.get_client_job_status() or []
    return {
        str(entry.get("client_name")) for entry in entries if isinstance(entry, dict) and entry.get("job_id") == job_id
    }


def _wait_finished(session, job_id: str) -> str:
    deadline = time.monotonic() + ABORT_WAIT_S
    status = "RUNNING"
    while time.monotonic() < deadline:
        status = str(session.get_job_meta(job_id).get("status", "UNKNOWN"))
        if status.startswith("FINISHED"):
            break
        time.sleep(POLL_S)
    return status
