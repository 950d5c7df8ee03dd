"""Run a job folder in NVFlare's simulator as a child process group with a hard deadline.

The simulator can hang (a client worker waiting forever) and can exit 0 on failure, so this module owns the whole
process group, kills it on timeout, and judges success by the outputs, not the exit code. Site scripts that NVFlare
runs as external processes get process groups of their own; they inherit a per-run marker in their environment
(`RUN_MARKER_ENV`), by which any left behind are found and killed too.

The simulator is started as NVFlare 2.9 starts it for a Recipe's ``SimEnv`` (``FedJob.simulator_run`` runs
``python -m nvflare.private.fed.app.simulator.simulator <job> -w ... -c ... -t ...``), not through the deprecated
``nvflare simulator`` command, which prints a deprecation warning; our jobs are exported folders, which ``SimEnv``
cannot take.

While it runs, the log is read for progress: each round's start (`ROUND_STARTED`) and, once training is over, the
server audit's drain lines (`medpfl_app.audit.drain_progress`), so a progress display can say what the run is
waiting for.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from medpfl_app.audit.drain_progress import DrainProgress
from medpfl_app.errors import MedPFLError

ROUND_STARTED = re.compile(r"Round (\d+) started")
SITE_FAILURE = re.compile(r"MedPFL site (\S+) cannot train: (.*?\n\s*fix: [^\n]*)", re.DOTALL)
GLOBAL_MODEL_FILE = "FL_global_model.pt"
#: The module NVFlare 2.9's ``SimEnv`` runs (through ``FedJob.simulator_run``) to simulate a job folder.
SIMULATOR_MODULE = "nvflare.private.fed.app.simulator.simulator"
#: Set to a fresh random value for each simulation; every process it starts inherits it.
RUN_MARKER_ENV = "MEDPFL_SIMULATION_RUN"


@dataclass(frozen=True)
class SimulationResult:
    """Where a finished simulation left its outputs."""

    workspace: Path
    server_run_dir: Path
    global_model: Path
    round_metrics: tuple[dict[str, Any], ...]
    log_file: Path
    wall_seconds: float
    #: The `RUN_MARKER_ENV` value every process of this run inherited.
    run_marker: str = ""


def run_simulation(
    job_dir: str | Path,
    workspace: str | Path,
    *,
    sites: Sequence[str],
    threads: int | None = None,
    timeout_s: float = 1800.0,
    env: Mapping[str, str] | None = None,
    on_round: Callable[[int], None] | None = None,
    on_drain: Callable[[DrainProgress], None] | None = None,
) -> SimulationResult:
    """Run ``job_dir`` with ``sites`` in the NVFlare simulator under ``workspace``.

    Args:
        job_dir: An exported job folder (meta.json, app/...).
        workspace: Simulator workspace; emptied first if it exists.
        sites: Site names, e.g. ``["site-1", "site-2"]``.
        threads: Sites run in parallel (default: one per site; fewer threads occasionally hang the simulator).
        timeout_s: Hard deadline for the whole run.
        env: Extra environment variables for the simulator (e.g. where the sites find their data).
        on_round: Called with the round number each time the server starts a round.
        on_drain: Called with the server audit's backlog each time it changes after training (the end of the run
            waits for it), and once more when it is done.

    Raises:
        MedPFLError: The simulator timed out, failed, or produced no global model.
    """
    job_dir = Path(job_dir).resolve()
    workspace = Path(workspace).resolve()
    if not (job_dir / "meta.json").is_file():
        raise MedPFLError(f"{job_dir} is not an NVFlare job folder (no meta.json)", fix="export the job first")
    workspace.mkdir(parents=True, exist_ok=True)
    log_file = workspace / "simulator_console.log"
    command = [
        sys.executable,
        "-m",
        SIMULATOR_MODULE,
        str(job_dir),
        "-w",
        str(workspace / "sim"),
        "-c",
        ",".join(sites),
        "-t",
        str(threads or len(sites)),
    ]
    marker = secrets.token_hex(16)
    child_env = {**os.environ, **(env or {}), RUN_MARKER_ENV: marker}
    started = time.monotonic()
    with open(log_file, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=child_env, start_new_session=True, cwd=workspace
        )
        try:
            _wait(process, log_file, started + timeout_s, _LogWatcher(log_file, on_round, on_drain))
        finally:
            _kill_group(process)
            _kill_marked(marker)
    wall = time.monotonic() - started
    return replace(_collect(workspace / "sim", log_file, wall, process.returncode), run_marker=marker)


def _wait(process: subprocess.Popen[bytes], log_file: Path, deadline: float, watcher: _LogWatcher) -> None:
    while process.poll() is None:
        if time.monotonic() > deadline:
            raise MedPFLError(
                f"the NVFlare simulator did not finish in time (log: {log_file})",
                fix="look at the log for a site that failed or hung; raise the timeout for large jobs",
            )
        watcher.poll()
        time.sleep(1.0)
    watcher.poll()


class _LogWatcher:
    """Reads only what the simulator appended to its log since the last look (logs grow to megabytes) and reports
    new round starts and audit drain lines to the callbacks."""

    def __init__(
        self,
        log_file: Path,
        on_round: Callable[[int], None] | None = None,
        on_drain: Callable[[DrainProgress], None] | None = None,
    ) -> None:
        self.log_file = log_file
        self.on_round = on_round
        self.on_drain = on_drain
        self._offset = 0
        self._partial = ""
        self._seen: set[int] = set()

    def poll(self) -> None:
        """Read the new complete lines and call the callbacks, in the order the lines were logged."""
        if self.on_round is None and self.on_drain is None:
            return
        for line in self._new_lines():
            if self.on_round is not None:
                for number in sorted({int(m) for m in ROUND_STARTED.findall(line)} - self._seen):
                    self._seen.add(number)
                    self.on_round(number)
            if self.on_drain is not None:
                progress = DrainProgress.parse(line)
                if progress is not None:
                    self.on_drain(progress)

    def _new_lines(self) -> list[str]:
        try:
            with open(self.log_file, errors="replace") as handle:
                handle.seek(self._offset)
                chunk = handle.read()
                self._offset = handle.tell()
        except OSError:
            return []
        lines = (self._partial + chunk).split("\n")
        self._partial = lines.pop()  # an unfinished last line is read again next time
        return lines


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    # The simulator forks client workers; killing only the parent would leave them running.
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def marked_processes(marker: str) -> list[int]:
    """Ids of this user's processes whose environment holds ``RUN_MARKER_ENV=marker`` (Linux ``/proc``; else none)."""
    needle = f"{RUN_MARKER_ENV}={marker}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile, or another user's
    return found


def _kill_marked(marker: str) -> None:
    # External-process site scripts run in process groups of their own, outside the simulator's.
    for pid in marked_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _collect(sim_dir: Path, log_file: Path, wall: float, returncode: int | None) -> SimulationResult:
    server_run_dir = sim_dir / "server" / "simulate_job"
    models = sorted(server_run_dir.rglob(GLOBAL_MODEL_FILE))
    failures = site_failures(log_file)
    if failures:
        raise MedPFLError(
            "the simulation stopped because a site could not train:\n" + "\n".join(failures),
            fix=f"fix the site's data as the message says, then run again (full log: {log_file})",
        )
    if not models:
        raise MedPFLError(
            f"the simulation produced no global model (exit code {returncode}; log: {log_file})",
            fix="search the log for 'MedPFL site' or 'ERROR' to find the failing site and its reason",
        )
    return SimulationResult(
        workspace=sim_dir,
        server_run_dir=server_run_dir,
        global_model=models[0],
        round_metrics=tuple(read_round_metrics(server_run_dir)),
        log_file=log_file,
        wall_seconds=wall,
    )


def site_failures(log_file: Path) -> list[str]:
    """The one-message reasons sites logged for refusing to train (see `medpfl_app.nvflare.site.client`)."""
    try:
        text = log_file.read_text(errors="replace")
    except OSError:
        return []
    reasons: dict[str, str] = {}
    for site, reason in SITE_FAILURE.findall(text):
        reasons.setdefault(site, f"{site}: {reason.strip()}")
    return list(reasons.values())


def read_round_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-round records NVFlare's MetricsArtifactWriter appended under ``run_dir``."""
    records: list[dict[str, Any]] = []
    for path in sorted(Path(run_dir).rglob("round_metrics.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records
