"""What the server's audit says while it drains its queue at the end of a run, as one parseable log line.

Training can finish before the audit has attacked the last round's updates; the server then holds the end of the
run until the queue is empty (`medpfl_app.nvflare.server.audit_filter.AuditFilter`). Without a word, a progress bar would sit at
100 % for that time. The audit logs one INFO line each time the backlog changes
(``MedPFL audit drain: auditing round 5: 2 of 3 updates left``) and one when it is done
(``MedPFL audit drain: done, 3 updates audited``); `medpfl_app.nvflare.jobs.simulate` reads them back with
`DrainProgress.parse`.

Pure: no NVFlare import, so the simulator watcher can use it without loading NVFlare.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Every drain line starts with this (after NVFlare's timestamp and level).
DRAIN_PREFIX = "MedPFL audit drain:"
_AUDITING = re.compile(re.escape(DRAIN_PREFIX) + r" auditing round (\d+|\?): (\d+) of (\d+) updates? left")
_DONE = re.compile(re.escape(DRAIN_PREFIX) + r" done, (\d+) updates? audited")


def _updates(count: int) -> str:
    return f"{count} update" + ("" if count == 1 else "s")


@dataclass(frozen=True)
class DrainProgress:
    """The audit's backlog at the end of the run.

    Attributes:
        round: The oldest round with an update still to audit (None: unknown, or nothing left).
        left: Updates still to audit (0: done).
        total: Updates that were waiting when the drain started.
    """

    round: int | None
    left: int
    total: int

    def __post_init__(self) -> None:
        if self.left < 0 or self.total < 0:
            raise ValueError(f"update counts must not be negative, got left={self.left}, total={self.total}")

    @property
    def done(self) -> bool:
        return self.left == 0

    def describe(self) -> str:
        """Short text for a progress bar: ``auditing round 5: 2 of 3 updates left`` or ``audit done``."""
        if self.done:
            return f"audit done ({_updates(self.total)} at the end)" if self.total else "audit done"
        where = "?" if self.round is None else str(self.round)
        return f"auditing round {where}: {self.left} of {_updates(self.total)} left"

    def log_line(self) -> str:
        """The INFO line the server logs (`parse` reads it back)."""
        if self.done:
            return f"{DRAIN_PREFIX} done, {_updates(self.total)} audited"
        return f"{DRAIN_PREFIX} {self.describe()}"

    @classmethod
    def parse(cls, line: str) -> DrainProgress | None:
        """The progress a log line reports, or None for any other line."""
        if DRAIN_PREFIX not in line:
            return None
        found = _AUDITING.search(line)
        if found:
            where, left, total = found.groups()
            return cls(round=None if where == "?" else int(where), left=int(left), total=int(total))
        found = _DONE.search(line)
        if found:
            return cls(round=None, left=0, total=int(found.group(1)))
        return None


def drain_progress(backlog: dict[int | None, int], total: int) -> DrainProgress:
    """The progress for a backlog ``{round: updates still to audit}`` out of ``total`` at the drain's start.

    ``total`` grows to the backlog if more arrived since (a late update is still counted).
    """
    left = sum(max(0, count) for count in backlog.values())
    rounds = [r for r, count in backlog.items() if r is not None and count > 0]
    return DrainProgress(round=min(rounds) if rounds else None, left=left, total=max(total, left))
