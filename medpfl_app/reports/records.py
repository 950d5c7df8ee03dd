"""One ledger record as the report shows it: its level, the evidence and what would settle it, the attack ladder.

Records reach the report through the record contract (`medpfl_app.contracts.record.AuditRecord.from_json`, in
`medpfl_app.reports.sources.read_ledger_records`), which types status, schema, site, round, risk, verdict and
ladder; a line it refuses is listed as unreadable, never shown here. Levels: `medpfl_app.reports.levels`.

The sections hold what sites and attacks reported, so every number of theirs is held to its valid range by
`medpfl_app.reports.fields.checked` (`medpfl_app.reports.fields.BOUNDS`). A value outside (SSIM 1e308, an attack
success rate of 500 %, a negative ε) is read as missing and listed in the view's ``invalid``; the evidence says so,
and a record whose level is a measurement (high, medium, low) is shown as ``inconclusive`` instead: a level resting
on impossible numbers is not a measurement, and the report never states it as one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from medpfl_app.contracts.record import AuditRecord
from medpfl_app.contracts.verdict import RiskLevel
from medpfl_app.reports.empirical import EmpiricalCheck, empirical_checks
from medpfl_app.reports.fields import fmt, mapping
from medpfl_app.reports.levels import (
    AUDITED_LEVELS,
    LEVEL_RANK,
    LEVELS,
    MEANINGS,
    invalid_values,
    record_level,
    worse,
)
from medpfl_app.reports.record_numbers import CHECKED_SECTIONS, attack_fields, checked_sections, score_fields
from medpfl_app.reports.stages import Stage

__all__ = [
    "AUDITED_LEVELS",
    "CHECKED_SECTIONS",
    "LEVELS",
    "LEVEL_RANK",
    "MEANINGS",
    "RecordView",
    "record_view",
    "worse",
]


@dataclass(frozen=True)
class RecordView:
    """One ledger record: level, evidence, what would settle it, scores and the attack ladder it ran.

    Attributes:
        index: 1-based position among the ledger's intact records.
        schema: The record's schema (``medpfl.audit/1`` or ``/2``).
        level: A `RiskLevel` value (schema-1 ``unknown`` mapped, see the module docstring).
        evidence: The numbers the level rests on (as recorded, or derived by the report for schema 1).
        settle: What would settle an inconclusive or unscored level (None otherwise or when not recorded).
        evidence_recorded: Whether evidence and settle come from the record's verdict (else derived here).
        stages: The attack ladder's stages in order (empty when the record has no ladder).
        ladder_recorded: Whether the record carries a ladder at all (schema 2).
        ladder_complete: Whether the audit completed its ladder on this update (None: not recorded).
        iterations: Optimiser iterations spent on this update (all stages).
        restarts: Restarts spent (all stages).
        wall_time_s: Attack wall time (all stages).
        loss_start: Matching loss at the start of the first stage (None: not recorded).
        loss_end: Matching loss at the end of the last stage.
        convergence: The last stage's convergence status.
        stop_reason: Why the last stage (or the single attack of a schema-1 record) stopped.
        not_attacked: Why the audit did not attack this (audited) update, when it says so.
        epsilon_client, epsilon_sample, delta: Formal client-level ε, sample-level ε and δ so far (None: none).
        empirical: The empirical ε checks of the formal ε (`medpfl_app.reports.empirical`; empty: none recorded).
        record: The record as the contract read it.
        invalid: One note per value outside its valid range, read as missing (`medpfl_app.reports.fields.checked`).
    """

    index: int
    site: str | None
    round: int | None
    status: str
    schema: str
    level: str
    evidence: str
    settle: str | None
    evidence_recorded: bool
    reason: str | None
    scores_status: str | None
    scores_reason: str | None
    ssim_max: float | None
    psnr_max: float | None
    success_rate: float | None
    label_accuracy: float | None
    identifiability: float | None
    identifiability_chance: float | None
    identifiability_excess: float | None
    identifiability_p_value: float | None
    stages: tuple[Stage, ...]
    ladder_recorded: bool
    ladder_complete: bool | None
    iterations: int | None
    restarts: int | None
    wall_time_s: float | None
    time_limit_s: float | None
    time_budget_s: float | None
    time_spent_s: float | None
    loss_start: float | None
    loss_end: float | None
    convergence: str | None
    stop_reason: str | None
    record: AuditRecord = field(repr=False)
    not_attacked: str | None = None
    epsilon_client: float | None = None
    epsilon_sample: float | None = None
    delta: float | None = None
    invalid: tuple[str, ...] = ()
    empirical: tuple[EmpiricalCheck, ...] = ()

    @property
    def meaning(self) -> str:
        """What the level means (`medpfl_app.contracts.verdict.LEVEL_MEANINGS`)."""
        return MEANINGS.get(self.level, "")

    def invalid_text(self) -> str:
        """The values outside their valid range, one note each (empty when there are none)."""
        return "; ".join(self.invalid)

    def tooltip(self) -> str:
        """Evidence and, where there is one, what would settle it (the table cell's title)."""
        return self.evidence + (f" — would settle it: {self.settle}" if self.settle else "")

    def identifiability_text(self) -> str:
        """Identifiability with its chance baseline, excess over chance and p-value, as recorded."""
        if self.identifiability is None:
            return "not measured"
        extra = [
            f"chance {fmt(self.identifiability_chance, '.2f')}" if self.identifiability_chance is not None else None,
            f"excess {fmt(self.identifiability_excess, '+.2f')}" if self.identifiability_excess is not None else None,
            f"p = {fmt(self.identifiability_p_value, '.2g')}" if self.identifiability_p_value is not None else None,
        ]
        shown = [e for e in extra if e]
        return f"{self.identifiability:.2f}" + (f" ({', '.join(shown)})" if shown else "")

    def spent_text(self) -> str:
        """Iterations and restarts spent, wall time and the time budget."""
        if self.status != "audited":
            return "no attack ran"
        parts = [
            f"{fmt(self.iterations, 'd', '?')} iteration{'s' if self.iterations != 1 else ''}",
            f"{fmt(self.restarts, 'd', '?')} restart{'s' if self.restarts != 1 else ''}",
            f"{fmt(self.wall_time_s, '.1f', '?')} s attack wall time",
        ]
        if self.time_spent_s is not None or self.time_budget_s is not None:
            parts.append(
                f"{fmt(self.time_spent_s, '.1f', '?')} s of a {fmt(self.time_budget_s, 'g', '?')} s time budget"
            )
        elif self.time_limit_s is not None:
            parts.append(f"limit {self.time_limit_s:g} s per attack")
        return ", ".join(parts)

    def loss_text(self) -> str:
        """Matching loss at start and end, the convergence status and why the attack stopped."""
        if self.status != "audited":
            return "no attack ran"
        start = fmt(self.loss_start, missing="not recorded")
        end = fmt(self.loss_end, missing="not recorded")
        convergence = (self.convergence or "convergence not recorded").replace("_", " ")
        return f"{start} → {end}; {convergence}; stopped: {self.stop_reason or 'not recorded'}"

    def ladder_text(self) -> str:
        """Stages run and whether the ladder completed."""
        if self.status != "audited":
            return "no attack ran"
        if self.not_attacked:
            return f"not attacked: {self.not_attacked}"
        if not self.ladder_recorded:
            return f"no ladder recorded ({self.schema}): one attack"
        if not self.stages:
            return "no stage ran"
        complete = {True: "ladder complete", False: "ladder not complete", None: "completion not recorded"}
        return f"{' → '.join(s.stage for s in self.stages)} ({complete[self.ladder_complete]})"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON of what the report shows for this record."""
        return {
            "site": self.site,
            "round": self.round,
            "status": self.status,
            "schema": self.schema,
            "level": self.level,
            "evidence": self.evidence,
            "settle": self.settle,
            "evidence_recorded": self.evidence_recorded,
            "ladder": [s.stage for s in self.stages],
            "ladder_complete": self.ladder_complete,
            "iterations": self.iterations,
            "restarts": self.restarts,
            "wall_time_s": self.wall_time_s,
            "time_budget_s": self.time_budget_s,
            "time_spent_s": self.time_spent_s,
            "loss_start": _json_float(self.loss_start),
            "loss_end": _json_float(self.loss_end),
            "convergence": self.convergence,
            "stop_reason": self.stop_reason,
            "identifiability": self.identifiability,
            "identifiability_chance": self.identifiability_chance,
            "identifiability_excess": self.identifiability_excess,
            "identifiability_p_value": self.identifiability_p_value,
            "invalid_values": list(self.invalid),
            # only where the record carries a check: records without a formal ε read as before
            **({"empirical": [check.to_dict() for check in self.empirical]} if self.empirical else {}),
        }


def _json_float(value: float | None) -> float | str | None:
    """A float for plain JSON: non-finite values spelled ``"inf"``/``"nan"`` as the ledger spells them."""
    if value is None or math.isfinite(value):
        return value
    return fmt(value)


def record_view(record: AuditRecord, index: int) -> RecordView:
    """The report's view of one record the contract read (never raises on its sections' content)."""
    problems: list[str] = []
    numbers = checked_sections(record, problems)
    stages = tuple(
        Stage.from_json(stage, problems, where=f"ladder[{i}]") for i, stage in enumerate(record.ladder or ())
    )
    epsilon = numbers["epsilon"].get
    base = RecordView(
        index=index,
        site=record.site or None,
        round=record.round,
        status=str(record.status),
        schema=record.schema,
        level=str(RiskLevel.INCONCLUSIVE),
        evidence="",
        settle=None,
        evidence_recorded=False,
        reason=record.reason,
        stages=stages,
        ladder_recorded=record.ladder is not None,
        ladder_complete=record.ladder_complete,
        epsilon_client=epsilon("client_dp"),
        epsilon_sample=epsilon("dp_sgd"),
        delta=epsilon("delta"),
        empirical=empirical_checks(record),
        invalid=tuple(problems),
        record=record,
        **score_fields(numbers["site_scores"], mapping(record.site_scores)),
        **attack_fields(record, stages, numbers),
    )
    level, evidence, settle, recorded = record_level(record, base)
    if problems:
        level, evidence, settle = invalid_values(level, evidence, settle, problems)
    return dataclasses.replace(base, level=str(level), evidence=evidence, settle=settle, evidence_recorded=recorded)
