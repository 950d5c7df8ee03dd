"""Drive NVFlare's own POC tooling (``nvflare poc``) and FLARE API for MedPFL.

Never `PocEnv`: its deploy() wipes the POC workspace, including the sites' hand-edited ``local/`` files.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medpfl_app.errors import MedPFLError

ADMIN_USER = "admin@nvidia.com"
PROJECT_NAME = "example_project"
POC_WORKSPACE_ENV = "NVFLARE_POC_WORKSPACE"
SITE_DATA_CONFIG_NAME = "medpfl_data.json"


def default_poc_workspace() -> Path:
    """``poc_workspace/`` of this checkout, unless NVFLARE_POC_WORKSPACE says otherwise."""
    configured = os.environ.get(POC_WORKSPACE_ENV)
    if configured:
        return Path(configured).resolve()
    return Path(__file__).resolve().parents[2] / "poc_workspace"


@dataclass(frozen=True)
class PocLayout:
    """Where ``nvflare poc prepare`` puts things under a POC workspace."""

    workspace: Path

    @property
    def prod_dir(self) -> Path:
        return self.workspace / PROJECT_NAME / "prod_00"

    @property
    def admin_dir(self) -> Path:
        return self.prod_dir / ADMIN_USER

    def site_dir(self, site: str) -> Path:
        return self.prod_dir / site

    def sites(self) -> list[str]:
        if not self.prod_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.prod_dir.iterdir()
            if p.is_dir() and p.name.startswith("site") and (p / "startup").is_dir()
        )


def nvflare_cli(args: Sequence[str], *, workspace: Path, timeout_s: float, check: bool = True) -> str:
    """Run ``nvflare <args>`` with the POC workspace set; returns its output, raises a MedPFLError on failure."""
    env = {**os.environ, POC_WORKSPACE_ENV: str(workspace)}
    command = [sys.executable, "-m", "nvflare.cli", *args]
    try:
        completed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise MedPFLError(
            f"`nvflare {' '.join(args)}` did not finish within {timeout_s:.0f} s",
            fix="check for stale NVFlare processes (`medpfl poc stop`) and ports 8002/8003 in use",
        ) from None
    output = (completed.stdout or "") + (completed.stderr or "")
    if check and completed.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise MedPFLError(
            f"`nvflare {' '.join(args)}` failed (exit {completed.returncode}):\n{tail}",
            fix="read the message above; `medpfl poc stop` clears a half-started system",
        )
    return output


def prepare(workspace: Path, sites: Sequence[str]) -> PocLayout:
    """``nvflare poc prepare`` for the named sites (replaces an existing POC workspace's startup kits)."""
    workspace.mkdir(parents=True, exist_ok=True)
    nvflare_cli(["poc", "prepare", "-c", *sites, "--force"], workspace=workspace, timeout_s=180)
    layout = PocLayout(workspace)
    missing = [site for site in sites if not layout.site_dir(site).is_dir()]
    if missing:
        raise MedPFLError(
            f"`nvflare poc prepare` did not create site folders for {', '.join(missing)} under {layout.prod_dir}",
            fix="check the NVFlare version (2.9 expected) and the POC workspace path",
        )
    return layout


def start(layout: PocLayout, *, timeout_s: float = 300.0) -> None:
    """Start server and sites (no admin console) and wait until every site has connected."""
    nvflare_cli(["poc", "start", "--no-wait", "-ex", ADMIN_USER], workspace=layout.workspace, timeout_s=120)
    expected = set(layout.sites())
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with admin_session(layout, timeout=10.0) as session:
                connected = {client.name for client in session.get_system_info().client_info}
            if expected <= connected:
                return
            last_error = MedPFLError(f"connected so far: {sorted(connected)}", fix="wait")
        except Exception as error:  # the server is not up yet: keep polling until the deadline
            last_error = error
        time.sleep(3.0)
    raise MedPFLError(
        f"the POC system did not come up within {timeout_s:.0f} s (last: {last_error})",
        fix=f"look at {layout.prod_dir}/*/log.txt; stop stale processes with `medpfl poc stop`",
    )


def stop(layout: PocLayout) -> None:
    """``nvflare poc stop``, then end any process still running from this workspace (2.9.0 leaves some)."""
    try:
        nvflare_cli(["poc", "stop"], workspace=layout.workspace, timeout_s=120, check=False)
    except MedPFLError:
        pass
    _kill_leftovers(layout.workspace)


def _kill_leftovers(workspace: Path) -> None:
    marker = str(workspace)
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
            continue
        try:
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and "nvflare" in cmdline:
            try:
                os.kill(int(pid_dir.name), 9)
            except OSError:
                pass


class admin_session:  # noqa: N801 - used as a context manager like open()
    """A FLARE API secure session as the POC project admin, closed on exit."""

    def __init__(self, layout: PocLayout, *, timeout: float = 30.0) -> None:
        self.layout = layout
        self.timeout = timeout
        self.session = None

    def __enter__(self):
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        self.session = new_secure_session(ADMIN_USER, str(self.layout.admin_dir), timeout=self.timeout)
        return self.session

    def __exit__(self, *exc_info) -> None:
        if self.session is not None:
            self.session.close()


@dataclass(frozen=True)
class JobOutcome:
    job_id: str
    status: str
    result_dir: Path | None


def submit_and_wait(
    layout: PocLayout, job_dir: Path, *, timeout_s: float = 1200.0, download_to: Path | None = None
) -> JobOutcome:
    """Submit ``job_dir`` through the FLARE API, wait for a terminal state, optionally download the result."""
    job_dir = Path(job_dir).resolve()
    if not (job_dir / "meta.json").is_file():
        raise MedPFLError(f"{job_dir} is not an NVFlare job folder (no meta.json)", fix="pass a folder from jobs/")
    with admin_session(layout) as session:
        job_id = session.submit_job(str(job_dir))
        meta = session.wait_for_job(job_id, timeout=timeout_s, poll_interval=3.0)
        status = str(meta.get("status", "UNKNOWN"))
        result_dir = None
        if download_to is not None:
            download_to.mkdir(parents=True, exist_ok=True)
            result_dir = Path(session.download_job_result(job_id, str(download_to)))
    return JobOutcome(job_id=job_id, status=status, result_dir=result_dir)
