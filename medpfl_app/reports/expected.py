"""Coverage against the job's plan: expected sites that sent nothing, rounds that never ran, and how the job ended.

`medpfl_app.reports.coverage.Coverage` compares what the server received with what the audit recorded, so it only
sees sites and rounds that left a trace. A site whose process died and never rejoined, or rounds an aborted job never
reached, leave none: they are found here by comparing the coverage with `medpfl_app.reports.plan.JobPlan` (the
deploy map's sites, the server workflow's rounds, the job's end status). A round *ran* when anything of it was
received or recorded. Without an arrivals file only records are seen, and the words say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medpfl_app.reports.plan import COMPLETED, JobPlan, span_text

if TYPE_CHECKING:
    from medpfl_app.reports.coverage import Coverage

#: Sentences per kind of finding before the rest is counted (the JSON lists all of them).
MAX_SITE_SENTENCES = 12
#: The plan grid (site × round) is drawn only up to this many cells; the sentences name every gap anyway.
MAX_GRID_CELLS = 600


@dataclass(frozen=True)
class GridCell:
    """One site-round of the plan grid: ``state`` is ``sent``, ``missing``, ``never_ran`` or ``silent``."""

    round: int
    state: str
    text: str


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass(frozen=True)
class PlanCoverage:
    """What the job planned against what left a trace (each finding empty when its part of the plan is unknown).

    Attributes:
        plan: The job's plan.
        arrivals_known: Whether an arrivals file was read (else "sent" can only be "recorded").
        ran: Rounds with anything received or recorded.
        missing: ``(site, rounds)``: an expected site with nothing in rounds that ran.
        never_ran: Planned rounds after the last round that ran (all of them when none ran).
        silent: Planned rounds before the last round that ran with nothing from any site.
        unplanned_sites: Sites that sent updates but are not in the deploy map.
        unplanned_rounds: Rounds that ran but are outside the planned rounds.
        traces: Per ``(site, round)`` that left a trace: updates received (records, without an arrivals file).
    """

    plan: JobPlan
    arrivals_known: bool
    ran: tuple[int, ...]
    missing: tuple[tuple[str, tuple[int, ...]], ...]
    never_ran: tuple[int, ...]
    silent: tuple[int, ...]
    unplanned_sites: tuple[str, ...]
    unplanned_rounds: tuple[int, ...]
    traces: Mapping[tuple[str, int], int] = field(default_factory=dict)

    @property
    def has_gap(self) -> bool:
        """Whether an expected site or a planned round is missing, or the job did not complete."""
        ended_badly = self.plan.status is not None and self.plan.status != COMPLETED
        return bool(self.missing or self.never_ran or self.silent or ended_badly)

    def status_sentence(self) -> str:
        """``"The job ended FINISHED:ABORTED after round 1 (rounds 0–5 were planned)."`` or why it is unknown."""
        planned = (
            f" ({span_text(self.plan.rounds)} {'were' if len(self.plan.rounds) != 1 else 'was'} planned)"
            if self.plan.rounds
            else ""
        )
        if self.plan.status is None:
            bad = next((note for note in self.plan.notes if "end status" in note), None)
            why = (
                f"is unknown: {bad.split(', so')[0]}"
                if bad
                else "is not recorded: no meta.json beside the ledger holds one"
            )
            return f"The job's end status {why}" + (f"; {planned[2:-1]}." if planned else ".")
        when = f" after round {max(self.ran)}" if self.ran else " before any update was received or recorded"
        return f"The job ended {self.plan.status}{when}{planned}."

    def gap_sentences(self) -> list[str]:
        """One sentence per missing site, then silent, never-run and unplanned rounds and sites."""
        sent = "sent nothing" if self.arrivals_known else "has no audit record (no arrivals file says if it sent any)"
        sentences = [f"{site} {sent} in {span_text(rounds)}." for site, rounds in self.missing[:MAX_SITE_SENTENCES]]
        if len(self.missing) > MAX_SITE_SENTENCES:
            sentences.append(f"{len(self.missing) - MAX_SITE_SENTENCES} more expected sites are missing rounds.")
        if self.silent:
            sentences.append(
                f"No site {'sent anything' if self.arrivals_known else 'has a record'} in {span_text(self.silent)}."
            )
        if self.never_ran:
            verb = (
                "never ran"
                if self.arrivals_known
                else "have no trace (without an arrivals file, whether they ran is unknown)"
            )
            words = span_text(self.never_ran)
            sentences.append(
                f"{words[0].upper()}{words[1:]} {verb if len(self.never_ran) != 1 else _singular(verb)}"
                + (": the workflow stopped before them." if self.plan.status == COMPLETED else ".")
            )
        if self.unplanned_sites:
            sentences.append(
                f"{_join(list(self.unplanned_sites))} sent updates but "
                f"{'are' if len(self.unplanned_sites) != 1 else 'is'} not in the job's deploy map."
            )
        if self.unplanned_rounds:
            sentences.append(
                f"{span_text(self.unplanned_rounds).capitalize()} ran outside the planned {self.plan.rounds_text()}."
            )
        return sentences

    def unknown_sentence(self) -> str:
        """Which part of the plan is unknown and why, or ``""`` when both are known."""
        if self.plan.known:
            return ""
        parts = [
            part
            for part, value in (("the expected sites", self.plan.sites), ("the planned rounds", self.plan.rounds))
            if value is None
        ]
        why = "; ".join(note for note in self.plan.notes if "end status" not in note)
        return f"Coverage against the job's plan is unknown for {' and '.join(parts)}" + (f": {why}." if why else ".")

    def complete_sentence(self) -> str:
        """``"Every expected site (…) sent an update in every planned round (rounds 0–2)."`` or ``""``."""
        if not self.plan.known or self.has_gap or self.unplanned_sites or self.unplanned_rounds:
            return ""
        sites = _join(list(self.plan.sites or ()))
        verb = "sent an update" if self.arrivals_known else "has an audit record"
        return f"Every expected site ({sites}) {verb} in every planned round ({self.plan.rounds_text()})."

    def sentences(self, *, with_unknown_status: bool = True) -> list[str]:
        """Status, gaps, unknown parts and completeness, in that order."""
        status = self.status_sentence() if self.plan.status is not None or with_unknown_status else ""
        found = [status, *self.gap_sentences(), self.unknown_sentence(), self.complete_sentence()]
        return [s for s in found if s]

    def text(self) -> str:
        return " ".join(self.sentences())

    def grid(self) -> list[tuple[str, list[GridCell]]]:
        """Rows of expected (then unplanned) sites over planned and run rounds; empty if unknown or too large."""
        if not self.plan.known:
            return []
        sites = [*(self.plan.sites or ()), *self.unplanned_sites]
        rounds = sorted({*(self.plan.rounds or ()), *self.ran})
        if len(sites) * len(rounds) > MAX_GRID_CELLS:
            return []
        noun = "received" if self.arrivals_known else "recorded"
        rows = []
        for site in sites:
            cells = []
            for r in rounds:
                if (count := self.traces.get((site, r))) is not None:
                    cells.append(GridCell(r, "sent", f"{count} {noun}"))
                elif r in self.never_ran:
                    cells.append(GridCell(r, "never_ran", "round never ran"))
                elif r in self.silent:
                    cells.append(GridCell(r, "silent", "nothing from any site"))
                else:
                    cells.append(GridCell(r, "missing", "nothing sent" if self.arrivals_known else "no record"))
            rows.append((site, cells))
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "plan": self.plan.to_dict(),
            "arrivals_known": self.arrivals_known,
            "rounds_ran": list(self.ran),
            "missing": [{"site": s, "rounds": list(r)} for s, r in self.missing],
            "never_ran": list(self.never_ran),
            "silent_rounds": list(self.silent),
            "unplanned_sites": list(self.unplanned_sites),
            "unplanned_rounds": list(self.unplanned_rounds),
            "has_gap": self.has_gap,
            "text": self.text(),
        }


def _singular(verb: str) -> str:
    return verb.replace("have no trace", "has no trace")


def against_plan(coverage: Coverage, plan: JobPlan) -> PlanCoverage:
    """Compare ``coverage`` (what left a trace) with ``plan`` (what was expected)."""
    ran = coverage.rounds
    seen = set(coverage.cells)
    planned = set(plan.rounds) if plan.rounds is not None else None
    checked = [r for r in ran if planned is None or r in planned]
    missing: list[tuple[str, tuple[int, ...]]] = []
    for site in plan.sites or ():
        rounds = tuple(r for r in checked if (site, r) not in seen)
        if rounds:
            missing.append((site, rounds))
    last = max(ran) if ran else None
    never_ran = tuple(r for r in sorted(planned) if last is None or r > last) if planned is not None else ()
    silent = (
        tuple(r for r in sorted(planned) if last is not None and r < last and r not in ran)
        if planned is not None
        else ()
    )
    unplanned_sites = tuple(s for s in coverage.sites if plan.sites is not None and s not in plan.sites)
    unplanned_rounds = tuple(r for r in ran if planned is not None and r not in planned)
    return PlanCoverage(
        plan=plan,
        arrivals_known=coverage.known,
        ran=ran,
        missing=tuple(missing),
        never_ran=never_ran,
        silent=silent,
        unplanned_sites=unplanned_sites,
        unplanned_rounds=unplanned_rounds,
        traces={key: (c.received if c.received is not None else c.records) for key, c in coverage.cells.items()},
    )
