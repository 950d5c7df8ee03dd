"""Coverage: per site and round, the updates the server received against the audit records it wrote.

An update received but not audited is a gap to report, not a zero. The arrivals file
(`medpfl_app.reports.sources.ARRIVALS_FILE`) says what the server received; the ledger says what the audit
recorded. Per site and round: ``received`` (arrival lines), ``audited`` / ``not_audited`` / ``not_auditable``
(records by status) and ``lost`` (received, no record: the server or its audit stopped before auditing it). Without
an arrivals file the coverage is *unknown*: the records are counted, but nothing says how many updates arrived.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medpfl_app.reports.records import AUDITED_LEVELS, LEVELS, RecordView
from medpfl_app.reports.sources import ARRIVALS_FILE, Arrival, ArrivalsRead, Unreadable

if TYPE_CHECKING:
    from medpfl_app.reports.expected import PlanCoverage
    from medpfl_app.reports.plan import JobPlan

LOST_CAUSE = "received, no audit record: the server or its audit stopped before auditing it"
FAILED_TASK_CAUSE = (
    "received a failed task result (return code {codes}), no audit record: the site sent no update to audit"
)
NO_ARRIVAL_CAUSE = (
    "audit record without a matching line in the arrivals file: the arrivals file is incomplete (its "
    "recorder failed or is not in the job)"
)
UNKNOWN_CAUSE = (
    f"coverage unknown: no arrivals file ({ARRIVALS_FILE}) beside the ledger, so updates the server "
    "received but never recorded cannot be counted"
)


@dataclass(frozen=True)
class Counts:
    """Updates of one site-round, one round or the whole job.

    Attributes:
        received: Updates the server received (arrival lines); None when coverage is unknown.
        records: Audit records.
        audited, not_audited, not_auditable: Records by status.
        lost: Received without a record (``received - records``, at least 0); None when coverage is unknown.
        levels: Records by level (every `RiskLevel` value, zeros included).
    """

    received: int | None
    records: int
    audited: int
    not_audited: int
    not_auditable: int
    lost: int | None
    levels: Mapping[str, int] = field(default_factory=dict)

    @property
    def measured(self) -> int:
        """Records measured high, medium or low."""
        return sum(self.levels.get(level, 0) for level in ("high", "medium", "low"))

    def __add__(self, other: Counts) -> Counts:
        def both(a: int | None, b: int | None) -> int | None:
            return None if a is None or b is None else a + b

        return Counts(
            received=both(self.received, other.received),
            records=self.records + other.records,
            audited=self.audited + other.audited,
            not_audited=self.not_audited + other.not_audited,
            not_auditable=self.not_auditable + other.not_auditable,
            lost=both(self.lost, other.lost),
            levels={level: self.levels.get(level, 0) + other.levels.get(level, 0) for level in LEVELS},
        )

    def audited_text(self) -> str:
        """``"7 audited (2 high, 0 medium, 0 unscored, 1 inconclusive, 4 low)"``."""
        levels = ", ".join(f"{self.levels.get(level, 0)} {level}" for level in AUDITED_LEVELS)
        return f"{self.audited} audited ({levels})"

    def text(self) -> str:
        """Received, audited by level, not audited, not auditable and lost, in words."""
        if self.received is None:
            return (
                f"{self.records} record{'s' if self.records != 1 else ''} in the ledger: {self.audited_text()}, "
                f"{self.not_audited} not audited, {self.not_auditable} not auditable; received and lost: unknown"
            )
        return (
            f"{self.received} received, {self.audited_text()}, {self.not_audited} not audited, "
            f"{self.not_auditable} not auditable, {self.lost} lost"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "records": self.records,
            "audited": self.audited,
            "not_audited": self.not_audited,
            "not_auditable": self.not_auditable,
            "lost": self.lost,
            "measured": self.measured,
            "levels": dict(self.levels),
        }


def _empty(known: bool) -> Counts:
    return Counts(
        received=0 if known else None,
        records=0,
        audited=0,
        not_audited=0,
        not_auditable=0,
        lost=0 if known else None,
        levels={level: 0 for level in LEVELS},
    )


@dataclass(frozen=True)
class Gap:
    """One update (or several of one site-round) that was not measured, and why."""

    site: str
    round: int
    kind: str
    count: int
    cause: str

    def to_dict(self) -> dict[str, Any]:
        return {"site": self.site, "round": self.round, "kind": self.kind, "count": self.count, "cause": self.cause}


@dataclass(frozen=True)
class Coverage:
    """Received vs recorded, per site-round, per round and in total, with every gap named.

    Attributes:
        known: Whether an arrivals file was read (else ``received`` and ``lost`` are None everywhere).
        arrivals_path: The arrivals file read.
        cells: Per ``(site, round)``.
        gaps: Lost, not audited, not auditable and unmatched updates, with their causes, by round and site.
        unreadable_arrivals: Lines of the arrivals file that could not be read or placed.
    """

    known: bool
    arrivals_path: Path | None
    cells: Mapping[tuple[str, int], Counts]
    gaps: tuple[Gap, ...]
    unreadable_arrivals: tuple[Unreadable, ...] = ()

    @property
    def rounds(self) -> tuple[int, ...]:
        return tuple(sorted({r for _, r in self.cells}))

    @property
    def sites(self) -> tuple[str, ...]:
        return tuple(sorted({s for s, _ in self.cells}))

    def round_counts(self, round_number: int) -> Counts:
        """Counts of one round over every site."""
        total = _empty(self.known)
        for (_, r), counts in sorted(self.cells.items()):
            if r == round_number:
                total = total + counts
        return total

    def total(self) -> Counts:
        """Counts of the whole job."""
        total = _empty(self.known)
        for counts in self.cells.values():
            total = total + counts
        return total

    def received_without_record(self, site: str, round_number: int) -> bool:
        """Whether the server received an update of ``site`` in ``round_number`` that has no record."""
        counts = self.cells.get((site, round_number))
        return bool(counts and counts.lost)

    def only_round(self, round_number: int) -> Coverage:
        """The coverage of one round."""
        return Coverage(
            known=self.known,
            arrivals_path=self.arrivals_path,
            cells={k: v for k, v in self.cells.items() if k[1] == round_number},
            gaps=tuple(g for g in self.gaps if g.round == round_number),
            unreadable_arrivals=(),
        )

    def against(self, plan: JobPlan | None) -> PlanCoverage:
        """This coverage against the job's plan (expected sites, planned rounds, end status); see
        `medpfl_app.reports.expected`. ``None``: nothing is known of the plan."""
        from medpfl_app.reports.expected import against_plan  # it imports this module
        from medpfl_app.reports.plan import JobPlan

        return against_plan(self, plan if plan is not None else JobPlan(notes=("the job's files were not read",)))

    def text(self) -> str:
        """One sentence: the counts, the causes of loss, or why the coverage is unknown."""
        total = self.total()
        if not self.known:
            return f"Coverage unknown (no arrivals file beside the ledger): {total.text()}."
        sentence = f"Coverage: {total.text()} (updates the server received, from its arrivals file)."
        if total.lost:
            causes = sorted({g.cause for g in self.gaps if g.kind == "lost"})
            sentence += f" Lost means {'; '.join(causes)}."
        return sentence

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: totals, per round, per site-round and the gaps."""
        return {
            "known": self.known,
            "arrivals_file": str(self.arrivals_path) if self.arrivals_path else None,
            "unknown_because": None if self.known else UNKNOWN_CAUSE,
            "total": self.total().to_dict(),
            "rounds": [{"round": r, **self.round_counts(r).to_dict()} for r in self.rounds],
            "sites": [
                {"site": s, "round": r, **c.to_dict()}
                for (s, r), c in sorted(self.cells.items(), key=lambda i: (i[0][1], i[0][0]))
            ],
            "gaps": [g.to_dict() for g in self.gaps],
            "unreadable_arrival_lines": [u.line for u in self.unreadable_arrivals],
            "text": self.text(),
        }


def build_coverage(records: Iterable[RecordView], arrivals: ArrivalsRead | None) -> Coverage:
    """Match the placed records (usable site and round) against the arrivals, per site and round."""
    by_key: dict[tuple[str, int], list[RecordView]] = {}
    for view in records:
        if view.site is not None and view.round is not None:
            by_key.setdefault((view.site, view.round), []).append(view)
    arrived: dict[tuple[str, int], list[Arrival]] = {}
    if arrivals is not None:
        for arrival in arrivals.arrivals:
            arrived.setdefault((arrival.site, arrival.round), []).append(arrival)
    known = arrivals is not None
    cells: dict[tuple[str, int], Counts] = {}
    gaps: list[Gap] = []
    for key in sorted(set(by_key) | set(arrived), key=lambda k: (k[1], k[0])):
        site, round_number = key
        views = by_key.get(key, [])
        lines = arrived.get(key, [])
        levels = {level: 0 for level in LEVELS}
        for view in views:
            levels[view.level] = levels.get(view.level, 0) + 1
        received = len(lines) if known else None
        lost = max(0, len(lines) - len(views)) if known else None
        cells[key] = Counts(
            received=received,
            records=len(views),
            audited=sum(v.status == "audited" for v in views),
            not_audited=sum(v.status == "not_audited" for v in views),
            not_auditable=sum(v.status == "not_auditable" for v in views),
            lost=lost,
            levels=levels,
        )
        if lost:
            failed = [a for a in lines if a.failed]
            # failed task results (no update in them) explain the missing records only if there are enough of them
            cause = (
                FAILED_TASK_CAUSE.format(codes=", ".join(sorted({str(a.return_code) for a in failed})))
                if failed and len(failed) >= lost
                else LOST_CAUSE
            )
            gaps.append(Gap(site, round_number, "lost", lost, cause))
        if known and len(views) > len(lines):
            gaps.append(Gap(site, round_number, "no_arrival", len(views) - len(lines), NO_ARRIVAL_CAUSE))
        for view in views:
            if view.status in ("not_audited", "not_auditable"):
                gaps.append(Gap(site, round_number, view.status, 1, view.reason or "no reason recorded"))
    return Coverage(
        known=known,
        arrivals_path=arrivals.path if arrivals else None,
        cells=cells,
        gaps=tuple(gaps),
        unreadable_arrivals=arrivals.unreadable if arrivals else (),
    )


def gap_label(kind: str) -> str:
    """A gap kind in words."""
    return {
        "lost": "lost",
        "no_arrival": "no arrival line",
        "not_audited": "not audited",
        "not_auditable": "not auditable",
    }.get(kind, kind.replace("_", " "))
