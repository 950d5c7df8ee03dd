"""Why a POC job did not complete, in the operator's terminal: the server log lines that say so.

NVFlare reports only a status (``FINISHED:EXECUTION_EXCEPTION``, ``FINISHED:ABORTED``); the reason (a site whose job
process died, a component that refused its configuration at deployment) is in the server's logs. These helpers pull
those lines out, so ``medpfl poc submit`` can print them next to the status.
"""

from __future__ import annotations

import re
from pathlib import Path

#: Server log phrases (NVFlare 2.9) that explain why a job ended or lost a site.
REASON_MARKERS = (
    "Failing job",
    "dead-job",
    "Fail the job run",
    "Re-login the client",
    "placed on dead client watch list",
    " - ERROR - ",
)
MAX_LINE = 400
_RELOGIN = re.compile(r"Client: (\S+) already registered\. Re-login the client with a new token")


def failure_lines(server_dir: Path, job_id: str, *, limit: int = 12) -> list[str]:
    """The server log lines about ``job_id`` (or a site re-login) that explain a failure, oldest first."""
    lines: list[str] = []
    main_log, job_log = server_dir / "log.txt", server_dir / job_id / "log.txt"
    seen_job = False
    for line in _read_lines(main_log):
        seen_job = seen_job or job_id in line  # a site re-login matters only once the job exists
        relevant = job_id in line or (seen_job and "Re-login the client" in line)
        if relevant and any(marker in line for marker in REASON_MARKERS):
            lines.append(line)
    lines += [line for line in _read_lines(job_log) if any(marker in line for marker in REASON_MARKERS)]
    unique = list(dict.fromkeys(line.strip()[:MAX_LINE] for line in lines))
    return unique[:limit]


def relogged_sites(server_dir: Path, job_id: str) -> set[str]:
    """Sites that logged in again (a restarted site process) after ``job_id`` first appeared in the server log."""
    sites: set[str] = set()
    seen_job = False
    for line in _read_lines(server_dir / "log.txt"):
        seen_job = seen_job or job_id in line
        match = _RELOGIN.search(line) if seen_job else None
        if match:
            sites.add(match.group(1))
    return sites


def log_locations(prod_dir: Path, job_id: str, sites: list[str]) -> list[Path]:
    """Where the full story is: the server's log, the job's server log and each site's job log."""
    candidates = [prod_dir / "server" / "log.txt", prod_dir / "server" / job_id / "log.txt"]
    candidates += [prod_dir / site / job_id / "log.txt" for site in sites]
    return [path for path in candidates if path.is_file()]


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
