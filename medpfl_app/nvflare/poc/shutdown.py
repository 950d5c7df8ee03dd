"""Stop a POC system and say what really happened: NVFlare's stop, then every process it left behind.

``nvflare poc stop`` asks the server to shut the system down. After a server crash that request reaches a
restarted server that knows no sites, or fails outright (a job the restarted server believes RUNNING cannot be
aborted): the sites and the ``sub_start.sh`` watchdogs that restart them keep running, and a watchdog restarts
any process ended without it. `stop_poc` therefore runs NVFlare's stop, waits for the processes this workspace
started to end (`medpfl_app.nvflare.poc.processes`), ends the rest itself (watchdogs first, SIGTERM then SIGKILL),
removes the watchdogs' stale control files, marks the jobs a dead server left ``RUNNING`` as abandoned
(`medpfl_app.nvflare.poc.job_store`), and reports each step. Admin consoles and any process the POC did not
start are never touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from medpfl_app.nvflare.poc.job_store import ABANDONED, abandon_phantom_jobs
from medpfl_app.nvflare.poc.processes import (
    PocProcess,
    PortHolder,
    end_processes,
    find_poc_processes,
    port_holders,
    service_dirs,
)

#: Files the ``sub_start.sh`` watchdog loop reads; left behind by a killed loop, a ``shutdown.fl`` would stop the
#: next start's service and a ``daemon_pid.fl`` naming a reused pid would refuse to start it.
WATCHDOG_FILES = ("pid.fl", "daemon_pid.fl", "shutdown.fl", "restart.fl")
#: How long processes get to end by themselves after NVFlare's stop returned (its watchdog loop polls every 5 s
#: and waits 5 s more before killing its service).
SETTLE_S = 20.0


@dataclass(frozen=True)
class StopReport:
    """What `stop_poc` did. ``nvflare_exit`` None: NVFlare's stop was not run (nothing was running) or hung."""

    nvflare_exit: int | None
    nvflare_message: str
    running_before: tuple[PocProcess, ...]
    ended_by_nvflare: tuple[PocProcess, ...]
    terminated: tuple[PocProcess, ...]
    killed: tuple[PocProcess, ...]
    survivors: tuple[PocProcess, ...]
    ports_in_use: tuple[PortHolder, ...]
    abandoned_jobs: tuple[str, ...] = ()

    @property
    def nvflare_failed(self) -> bool:
        """NVFlare's stop returned an error and did not end the system by itself (MedPFL had to, or could not).

        An error while NVFlare only waited for a shutdown it had sent (exit 2 on a slow machine) is not a failure
        when every process then ended by itself.
        """
        error = bool(self.running_before) and self.nvflare_exit != 0
        return error and bool(self.terminated or self.killed or self.survivors)

    @property
    def stopped(self) -> bool:
        """No process of this workspace runs any more."""
        return not self.survivors

    @property
    def ok(self) -> bool:
        return self.stopped and not self.nvflare_failed

    def lines(self) -> list[str]:
        if not self.running_before:
            lines = ["nothing of this POC workspace was running"]
        elif self.nvflare_failed:
            lines = [f"`nvflare poc stop` FAILED ({self.nvflare_message})"]
        else:
            lines = [f"`nvflare poc stop` ended {len(self.ended_by_nvflare)} of {len(self.running_before)} processes"]
            if self.nvflare_exit != 0:
                lines[0] += f" (it reported {self.nvflare_message}, but every process ended by itself)"
        if self.terminated or self.killed:
            ended = [p.describe() for p in self.terminated] + [f"{p.describe()} [SIGKILL]" for p in self.killed]
            lines.append(f"MedPFL ended what NVFlare left running: {', '.join(ended)}")
        if self.survivors:
            lines.append("STILL RUNNING (could not be stopped): " + ", ".join(p.describe() for p in self.survivors))
        lines += [f"{holder.describe()} (not a process of this workspace)" for holder in self.ports_in_use]
        lines += [
            f"job {job_id} was still marked RUNNING with no server left to run it (`abort_job` cannot end such a "
            f"job): now {ABANDONED}"
            for job_id in self.abandoned_jobs
        ]
        if self.stopped:
            lines.append("POC system stopped: no server, site or watchdog process of this workspace is left")
        return lines


def stop_poc(
    prod_dir: Path,
    ports: tuple[int, ...],
    run_nvflare_stop,
    *,
    job_store: Path | None = None,
    settle_s: float | None = None,
) -> StopReport:
    """Stop everything the POC under ``prod_dir`` started.

    Args:
        prod_dir: The workspace's ``example_project/prod_00``.
        ports: The server's ports, reported when something else still holds one.
        run_nvflare_stop: Runs NVFlare's stop; returns (exit code or None when it hung, output).
        job_store: The server's job store; once nothing runs, jobs it still calls running are marked abandoned
            (`medpfl_app.nvflare.poc.job_store`).
        settle_s: How long processes get to end by themselves after NVFlare's stop (default `SETTLE_S`).
    """
    before = find_poc_processes(prod_dir)
    exit_code, message = None, "not run: nothing was running"
    if before:
        exit_code, output = run_nvflare_stop()
        message = _summary(exit_code, output)
    left = _settle(prod_dir, SETTLE_S if settle_s is None else settle_s) if before else []
    ended_by_nvflare = tuple(p for p in before if p not in left)
    terminated: list[PocProcess] = []
    killed: list[PocProcess] = []
    for _ in range(3):  # a watchdog may have restarted its service just before it was ended: look again
        if not left:
            break
        by_term, by_kill, _alive = end_processes(left)
        terminated += by_term
        killed += by_kill
        left = find_poc_processes(prod_dir)
    survivors = left
    abandoned: list[str] = []
    if not survivors:
        clear_watchdog_files(prod_dir)
        abandoned = abandon_phantom_jobs(job_store) if job_store is not None else []
    return StopReport(
        nvflare_exit=exit_code,
        nvflare_message=message,
        running_before=tuple(before),
        ended_by_nvflare=ended_by_nvflare,
        terminated=tuple(terminated),
        killed=tuple(killed),
        survivors=tuple(survivors),
        ports_in_use=tuple(port_holders(ports)),
        abandoned_jobs=tuple(abandoned),
    )


def clear_watchdog_files(prod_dir: Path) -> list[Path]:
    """Remove the watchdog control files of every service (only call this when none of its processes runs)."""
    removed = []
    for folder in service_dirs(prod_dir).values():
        for name in WATCHDOG_FILES:
            path = folder / name
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def _settle(prod_dir: Path, settle_s: float) -> list[PocProcess]:
    """The processes of this workspace still alive after a grace period (new pids count: a watchdog restarted)."""
    deadline = time.monotonic() + settle_s
    left = find_poc_processes(prod_dir)
    while left and time.monotonic() < deadline:
        time.sleep(1.0)
        left = find_poc_processes(prod_dir)
    for folder in {p.service for p in left if p.role == "watchdog"}:
        # A watchdog that sees shutdown.fl ends its loop instead of restarting the service it guards.
        (prod_dir / folder / "shutdown.fl").touch()
    return left


def _summary(exit_code: int | None, output: str) -> str:
    if exit_code is None:
        return output
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Stopping POC system", "Connecting to FLARE"))]
    detail = " | ".join(lines) or "no output"
    return f"exit {exit_code}: {detail[:400]}"
