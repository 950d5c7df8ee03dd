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

import medpfl_app
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.poc.job_store import abandon_phantom_jobs, job_store_root
from medpfl_app.nvflare.poc.keep import (
    KeptAside,
    StateKind,
    WorkspaceState,
    interrupted_keeps,
    inventory,
    kept_across_prepare,
)
from medpfl_app.nvflare.poc.processes import find_poc_processes, port_holders
from medpfl_app.nvflare.poc.shutdown import StopReport, clear_watchdog_files, stop_poc

ADMIN_USER = "admin@nvidia.com"
PROJECT_NAME = "example_project"
POC_WORKSPACE_ENV = "NVFLARE_POC_WORKSPACE"
SITE_DATA_CONFIG_NAME = "medpfl_data.json"
DEFAULT_PORTS = (8002,)


def default_poc_workspace() -> Path:
    """Where POC mode lives: NVFLARE_POC_WORKSPACE if set, else ``poc_workspace/`` of the MedPFL checkout this
    package runs from (an editable install), else ``./poc_workspace`` (an installed wheel has no checkout)."""
    configured = os.environ.get(POC_WORKSPACE_ENV)
    if configured:
        return Path(configured).resolve()
    checkout = Path(medpfl_app.__file__).resolve().parents[1]
    if (checkout / "setup.cfg").is_file() and (checkout / "poc_workspace").is_dir():
        return checkout / "poc_workspace"
    return Path.cwd() / "poc_workspace"


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


def nvflare_cli_result(args: Sequence[str], *, workspace: Path, timeout_s: float) -> tuple[int | None, str]:
    """Run ``nvflare <args>`` with the POC workspace set; (exit code or None on timeout, output)."""
    env = {**os.environ, POC_WORKSPACE_ENV: str(workspace)}
    command = [sys.executable, "-m", "nvflare.cli", *args]
    try:
        completed = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout_s, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return None, f"`nvflare {' '.join(args)}` did not finish within {timeout_s:.0f} s"
    return completed.returncode, (completed.stdout or "") + (completed.stderr or "")


def nvflare_cli(args: Sequence[str], *, workspace: Path, timeout_s: float) -> str:
    """Run ``nvflare <args>`` with the POC workspace set; returns its output, raises a MedPFLError on failure."""
    exit_code, output = nvflare_cli_result(args, workspace=workspace, timeout_s=timeout_s)
    if exit_code is None:
        raise MedPFLError(output, fix="check for stale NVFlare processes (`medpfl poc stop`) and port 8002 in use")
    if exit_code != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise MedPFLError(
            f"`nvflare {' '.join(args)}` failed (exit {exit_code}):\n{tail}",
            fix="read the message above; `medpfl poc stop` clears a half-started system",
        )
    return output


@dataclass(frozen=True)
class Prepared:
    """What `prepare` did: the new layout, what it carried over, what ``--force`` discarded."""

    layout: PocLayout
    kept: tuple[Path, ...]
    discarded: tuple[WorkspaceState, ...]
    left_aside: tuple[Path, ...]


def prepare(workspace: Path, sites: Sequence[str], *, force: bool = False) -> Prepared:
    """``nvflare poc prepare`` for the named sites, never losing a site's DP ledger or the repository's files.

    NVFlare deletes the whole workspace folder before provisioning. Without ``force`` an existing workspace holding
    site state (DP ledgers, privacy.json, data configuration, job results) is refused, naming it all. With
    ``force`` that state is discarded except the DP ledgers (a site's spent ε), which are moved aside and put back;
    top-level entries that are not NVFlare's (this folder's README.md, templates/) are always kept.

    Raises:
        MedPFLError: The POC system of this workspace is running, or state would be lost without ``force``.
    """
    workspace = Path(workspace).resolve()
    layout = PocLayout(workspace)
    leftovers = interrupted_keeps(workspace)
    if leftovers:
        raise MedPFLError(
            f"an earlier `medpfl poc prepare` was interrupted and left what it kept (DP ledgers, this folder's "
            f"own files) in {', '.join(map(str, leftovers))}",
            fix=f"move its contents back into {workspace} (same relative paths), then delete that folder",
        )
    running = find_poc_processes(layout.prod_dir)
    if running:
        raise MedPFLError(
            f"the POC system of {workspace} is running ({', '.join(p.describe() for p in running[:4])}); "
            "preparing would delete the workspace under it",
            fix="run `medpfl poc stop` first",
        )
    at_risk = inventory(workspace, layout.prod_dir)
    if at_risk and not force:
        listed = "\n    ".join(state.describe(workspace) for state in at_risk[:20])
        more = f"\n    ... and {len(at_risk) - 20} more" if len(at_risk) > 20 else ""
        raise MedPFLError(
            f"{workspace} already holds site state that `nvflare poc prepare` would delete:\n    {listed}{more}",
            fix="copy what you need, then run again with --force (DP ledgers are kept, the rest is discarded); "
            "or keep using this workspace with `medpfl poc start`",
        )
    workspace.mkdir(parents=True, exist_ok=True)
    aside = KeptAside(workspace)
    kept = kept_across_prepare(workspace, layout.prod_dir)
    aside.move(kept)
    try:
        nvflare_cli(["poc", "prepare", "-c", *sites, "--force"], workspace=workspace, timeout_s=180)
    finally:
        blocked = aside.restore()
    missing = [site for site in sites if not layout.site_dir(site).is_dir()]
    if missing:
        raise MedPFLError(
            f"`nvflare poc prepare` did not create site folders for {', '.join(missing)} under {layout.prod_dir}",
            fix="check the NVFlare version (2.9 expected) and the POC workspace path",
        )
    discarded = tuple(state for state in at_risk if state.kind != StateKind.DP_LEDGER)
    return Prepared(layout, tuple(kept), discarded, tuple(blocked))


def start(layout: PocLayout, *, timeout_s: float = 300.0) -> list[str]:
    """Start server and sites (no admin console) and wait until every site has connected.

    Refuses, naming the process, when this workspace's POC is already running or a POC port is taken.

    Returns:
        The jobs a crashed server had left ``RUNNING``, marked abandoned before the start.
    """
    abandoned = check_can_start(layout)
    nvflare_cli(["poc", "start", "--no-wait", "-ex", ADMIN_USER], workspace=layout.workspace, timeout_s=120)
    expected = set(layout.sites())
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with admin_session(layout, timeout=10.0) as session:
                connected = {client.name for client in session.get_system_info().client_info}
            if expected <= connected:
                return abandoned
            last_error = MedPFLError(f"connected so far: {sorted(connected)}", fix="wait")
        except Exception as error:  # the server is not up yet: keep polling until the deadline
            last_error = error
        time.sleep(3.0)
    raise MedPFLError(
        f"the POC system did not come up within {timeout_s:.0f} s (last: {last_error})",
        fix=f"look at {layout.prod_dir}/*/log.txt; stop stale processes with `medpfl poc stop`",
    )


def check_can_start(layout: PocLayout) -> list[str]:
    """Refuse a start that cannot work; clear what a killed system left behind (nothing of it runs).

    Returns:
        The ids of jobs the job store still called running, now marked abandoned (`medpfl_app.nvflare.poc.job_store`).
    """
    if not layout.sites():
        raise MedPFLError(f"no POC sites under {layout.prod_dir}", fix="run `medpfl poc prepare` first")
    running = find_poc_processes(layout.prod_dir)
    if running:
        raise MedPFLError(
            f"the POC system of {layout.workspace} is already running: {', '.join(p.describe() for p in running[:6])}",
            fix="use it, or run `medpfl poc stop` first",
        )
    holders = port_holders(poc_ports(layout))
    if holders:
        raise MedPFLError(
            "; ".join(holder.describe() for holder in holders) + " - the POC server could not listen on it",
            fix="if that is another POC system, stop it from its own workspace (`medpfl poc stop --workspace DIR` "
            "or `nvflare poc stop`); otherwise end that process, then start again",
        )
    clear_watchdog_files(layout.prod_dir)
    return abandon_phantom_jobs(job_store_root(layout.workspace, layout.site_dir("server")))


def poc_ports(layout: PocLayout) -> tuple[int, ...]:
    """The server's ports from the workspace's project.yml (NVFlare 2.9 POC: 8002, which also serves admin)."""
    import yaml

    try:
        project = yaml.safe_load((layout.workspace / "project.yml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return DEFAULT_PORTS
    ports = {
        int(participant[key])
        for participant in project.get("participants", [])
        if isinstance(participant, dict) and participant.get("type") == "server"
        for key in ("fed_learn_port", "admin_port")
        if str(participant.get(key, "")).isdigit()
    }
    return tuple(sorted(ports)) or DEFAULT_PORTS


def stop(layout: PocLayout, *, settle_s: float | None = None) -> StopReport:
    """``nvflare poc stop``, then end whatever this workspace's POC left running (never an admin console).

    ``settle_s``: how long its processes get to end by themselves first (`medpfl_app.nvflare.poc.shutdown.SETTLE_S`).
    """

    def run_nvflare_stop() -> tuple[int | None, str]:
        return nvflare_cli_result(["poc", "stop"], workspace=layout.workspace, timeout_s=180)

    store = job_store_root(layout.workspace, layout.site_dir("server"))
    return stop_poc(layout.prod_dir, poc_ports(layout), run_nvflare_stop, job_store=store, settle_s=settle_s)


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
