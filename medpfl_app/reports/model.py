"""The ledger's records as a site × round view: cells, coverage and audit configurations.

Records come typed from the record contract (`medpfl_app.contracts.record.AuditRecord`, read by
`medpfl_app.reports.sources.read_ledger_records`), but they are still untrusted input (a site name or reason can be
smuggled into the ledger): a number outside its valid range is read as missing and noted
(`medpfl_app.reports.fields.checked`). Nothing is escaped here: the HTML
template escapes, and the terminal summary passes every line through `medpfl_app.reports.fields.printable`.

Levels are `medpfl_app.contracts.verdict.RiskLevel` values, worst first; schema-1 records are mapped as
`medpfl_app.reports.levels` describes. The report's verdict is built from this view by
`medpfl_app.reports.verdict`; audit configurations by `medpfl_app.reports.configs`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medpfl_app.contracts.record import AuditRecord
from medpfl_app.contracts.verdict import RiskLevel
from medpfl_app.reports.configs import AuditConfig, build_configs, config_key
from medpfl_app.reports.coverage import Coverage, build_coverage
from medpfl_app.reports.empirical import EmpiricalCheck
from medpfl_app.reports.fields import mapping as _mapping
from medpfl_app.reports.fields import number, text
from medpfl_app.reports.records import LEVEL_RANK, LEVELS, MEANINGS, RecordView, record_view
from medpfl_app.reports.sources import ArrivalsRead, LedgerEntry
from medpfl_app.reports.yardstick import Yardstick, build_yardstick

__all__ = ["RISK_MEANINGS", "RISK_ORDER", "AuditConfig", "AuditView", "Cell", "build_view", "number", "text"]

#: Worst first: the order of `RiskLevel` (high, medium, unscored, inconclusive, low, not_audited, not_auditable).
RISK_ORDER: tuple[str, ...] = LEVELS
RISK_RANK: dict[str, int] = LEVEL_RANK
#: What each level means (`medpfl_app.contracts.verdict.LEVEL_MEANINGS`).
RISK_MEANINGS: dict[str, str] = MEANINGS


@dataclass(frozen=True)
class Cell:
    """What the report shows for one site in one round (the worst of its records, if several).

    ``risk`` is the level (a `RiskLevel` value); ``detail`` the worst record's full view (evidence, settle, ladder).
    """

    site: str
    round: int
    status: str
    risk: str
    reason: str | None
    scores_status: str | None
    scores_reason: str | None
    ssim_max: float | None
    psnr_max: float | None
    success_rate: float | None
    label_accuracy: float | None
    epsilon_client: float | None
    epsilon_sample: float | None
    delta: float | None
    config: AuditConfig | None
    defenses: tuple[Mapping[str, Any], ...]
    record_count: int
    detail: RecordView = field(repr=False)
    record: AuditRecord = field(repr=False)

    @property
    def measured(self) -> bool:
        """Whether the level rests on a measurement of this update (high, medium or low)."""
        return RiskLevel(self.risk).measured

    @property
    def scored(self) -> bool:
        """Whether the site scored the reconstructions (leakage numbers exist for the plots)."""
        return self.status == "audited" and self.scores_status == "scored"

    @property
    def evidence(self) -> str:
        return self.detail.evidence

    @property
    def settle(self) -> str | None:
        return self.detail.settle

    @property
    def invalid(self) -> tuple[str, ...]:
        """The record's values outside their valid range (read as missing), one note each."""
        return self.detail.invalid

    def epsilon_text(self) -> str:
        """Formal ε so far, naming its level; "none" when no formal DP was applied (or "invalid", see `invalid`)."""
        if any(note.startswith("epsilon.") for note in self.invalid):
            return "ε invalid (out of range, not used)"
        parts = []
        if self.epsilon_client is not None:
            parts.append(f"ε = {self.epsilon_client:.3g} (client-level)")
        if self.epsilon_sample is not None:
            parts.append(f"ε = {self.epsilon_sample:.3g} (sample-level)")
        if not parts:
            return "none (no formal DP)"
        text = ", ".join(parts) + (f", δ = {self.delta:.0e}" if self.delta is not None else "")
        return "; ".join([text, *(check.text() for check in self.detail.empirical)])

    @property
    def empirical_failed(self) -> bool:
        """Whether an empirical ε check of this record failed (ε̂ > ε: its formal ε is no valid guarantee)."""
        return any(check.failed for check in self.detail.empirical)


@dataclass(frozen=True)
class Note:
    """An audited site-round whose site scores are missing, and why (straight from the record)."""

    site: str
    round: int
    status: str
    reason: str


@dataclass(frozen=True)
class PolicyAction:
    """An update the audit policy acted on (e.g. kept out of aggregation), straight from its record."""

    site: str
    round: int
    action: str
    reason: str


@dataclass(frozen=True)
class AuditView:
    """Everything the reports show, computed once from the ledger's records and the server's arrivals.

    Attributes:
        sites, rounds: Every site and round with a record or an arrival.
        cells: The worst record per site-round.
        details: Every placed record, in ledger order (evidence, settle, ladder).
        coverage: Received vs recorded per site and round (unknown without an arrivals file).
        yardstick: Attack budget spent and metric settings, from the records.
        entries: Every record the contract read, in ledger order, with the object as written.
    """

    sites: tuple[str, ...]
    rounds: tuple[int, ...]
    cells: Mapping[tuple[str, int], Cell]
    configs: tuple[AuditConfig, ...]
    notes: tuple[Note, ...]
    malformed: tuple[str, ...]
    entries: tuple[LedgerEntry, ...]
    actions: tuple[PolicyAction, ...] = ()
    details: tuple[RecordView, ...] = ()
    coverage: Coverage = field(default_factory=lambda: build_coverage((), None))
    yardstick: Yardstick = field(default_factory=lambda: build_yardstick(()))

    @property
    def records(self) -> tuple[AuditRecord, ...]:
        """Every record, in ledger order."""
        return tuple(entry.record for entry in self.entries)

    def cell(self, site: str, round_number: int) -> Cell | None:
        """The cell of ``site`` in ``round_number``, or ``None`` when the ledger has no record for it."""
        return self.cells.get((site, round_number))

    def lost(self, site: str, round_number: int) -> bool:
        """Whether the server received an update of ``site`` in ``round_number`` that has no audit record."""
        return self.coverage.received_without_record(site, round_number)

    def missing(self) -> tuple[tuple[str, int], ...]:
        """Site-rounds with no record at all (lost ones included: see `lost`)."""
        return tuple((s, r) for r in self.rounds for s in self.sites if (s, r) not in self.cells)

    def unreported(self) -> tuple[tuple[str, int], ...]:
        """Site-rounds without a record that are not known to be lost (nothing arrived, or coverage unknown)."""
        return tuple((s, r) for s, r in self.missing() if not self.lost(s, r))

    def worst(self, round_number: int | None = None) -> Cell | None:
        """The record with the worst level (ties: highest SSIM, PSNR, success rate, then the latest round)."""
        cells = [c for c in self.cells.values() if round_number is None or c.round == round_number]
        return max(cells, key=_severity, default=None)

    def empirical_checks(self) -> tuple[EmpiricalCheck, ...]:
        """Every record's empirical ε checks, in ledger order (`medpfl_app.reports.empirical`)."""
        return tuple(check for detail in self.details for check in detail.empirical)

    def empirical_failures(self) -> tuple[EmpiricalCheck, ...]:
        """The checks where ε̂ exceeded the claimed ε (any record, not only each site-round's worst)."""
        return tuple(check for check in self.empirical_checks() if check.failed)

    def only_round(self, round_number: int) -> AuditView:
        """The view of one round (its cells, records, gaps and coverage)."""
        return dataclasses.replace(
            self,
            cells={key: cell for key, cell in self.cells.items() if key[1] == round_number},
            rounds=(round_number,),
            notes=tuple(n for n in self.notes if n.round == round_number),
            malformed=(),
            actions=tuple(a for a in self.actions if a.round == round_number),
            details=tuple(d for d in self.details if d.round == round_number),
            entries=tuple(e for e in self.entries if e.record.round == round_number),
            coverage=self.coverage.only_round(round_number),
        )


def _severity(cell: Cell) -> tuple[float, ...]:
    def score(value: float | None) -> float:
        return -math.inf if value is None else value

    return (
        RISK_RANK.get(cell.risk, 0),
        score(cell.ssim_max),
        score(cell.psnr_max),
        score(cell.success_rate),
        cell.round,
    )


def build_view(entries: Sequence[LedgerEntry], arrivals: ArrivalsRead | None = None) -> AuditView:
    """Group records by site and round, tag their audit configurations and match them against the arrivals.

    Args:
        entries: The records the contract read (`medpfl_app.reports.sources.read_ledger_records`), in ledger order.
        arrivals: The server's arrivals file, read; ``None`` when there is none (coverage unknown).

    Returns:
        The view. Records without a usable site or round are listed in ``malformed`` instead of the table.
    """
    views = [record_view(entry.record, index) for index, entry in enumerate(entries, start=1)]
    configs = build_configs(views)
    grouped: dict[tuple[str, int], list[Cell]] = {}
    malformed: list[str] = []
    placed: list[RecordView] = []
    for view in views:
        if view.site is None or view.round is None:
            record = view.record
            why = f"{record.status}: {record.reason or 'no reason recorded'}"
            malformed.append(
                f"record {view.index}: site {text(record.site)!s} / round {text(record.round)!s} unusable ({why})"
            )
            continue
        placed.append(view)
        grouped.setdefault((view.site, view.round), []).append(_cell(view, configs))
    cells: dict[tuple[str, int], Cell] = {}
    notes: list[Note] = []
    actions: list[PolicyAction] = []
    for key, group in grouped.items():
        worst = max(group, key=_severity)
        cells[key] = dataclasses.replace(worst, record_count=len(group))
        for cell in group:
            action = _mapping(cell.record.policy_action)
            if action:
                actions.append(
                    PolicyAction(
                        cell.site,
                        cell.round,
                        text(action.get("action")) or "unnamed action",
                        text(action.get("reason")) or "no reason recorded",
                    )
                )
            if cell.status == "audited" and cell.scores_status != "scored":
                why = cell.scores_reason or "no reason recorded"
                notes.append(Note(cell.site, cell.round, f"site scores {cell.scores_status or 'missing'}", why))
    coverage = build_coverage(placed, arrivals)
    return AuditView(
        sites=tuple(sorted({s for s, _ in cells} | set(coverage.sites))),
        rounds=tuple(sorted({r for _, r in cells} | set(coverage.rounds))),
        cells=cells,
        configs=tuple(configs.values()),
        notes=tuple(sorted(notes, key=lambda n: (n.round, n.site))),
        malformed=tuple(malformed),
        entries=tuple(entries),
        actions=tuple(sorted(actions, key=lambda a: (a.round, a.site))),
        details=tuple(placed),
        coverage=coverage,
        yardstick=build_yardstick(placed),
    )


def _cell(view: RecordView, configs: dict[str, AuditConfig]) -> Cell:
    record = view.record
    assert view.site is not None and view.round is not None
    return Cell(
        site=view.site,
        round=view.round,
        status=view.status,
        risk=view.level,
        reason=view.reason,
        scores_status=view.scores_status,
        scores_reason=view.scores_reason,
        ssim_max=view.ssim_max,
        psnr_max=view.psnr_max,
        success_rate=view.success_rate,
        label_accuracy=view.label_accuracy,
        epsilon_client=view.epsilon_client,
        epsilon_sample=view.epsilon_sample,
        delta=view.delta,
        config=configs.get(config_key(record)) if view.status == "audited" else None,
        defenses=tuple(d for d in record.defenses if isinstance(d, Mapping)),
        record_count=1,
        detail=view,
        record=record,
    )
