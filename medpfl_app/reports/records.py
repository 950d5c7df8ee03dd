"""One ledger record as the report shows it: its level, the evidence and what would settle it, the attack ladder.

Schema ``medpfl.audit/2`` records carry a `medpfl_app.contracts.verdict.Verdict` (level, evidence, settle), the attack
``ladder`` (one entry per stage run, with its convergence evidence) and ``ladder_complete``; they are shown as
recorded. Schema ``medpfl.audit/1`` records of older runs carry only ``risk`` (``high|medium|low|unknown``): their
``unknown`` becomes ``not_audited`` / ``not_auditable`` from the record's status, or ``inconclusive`` for an audited
record, and their evidence is stated from the numbers they do carry (labelled as derived by the report; what they
did not record — the loss at the start, the convergence — is said to be not recorded, never filled in).

Every number is read through `medpfl_app.reports.fields.checked`, which holds it to its valid range
(`medpfl_app.reports.fields.BOUNDS`). A value outside (SSIM 1e308, an attack success rate of 500 %, a negative ε)
is read as missing and listed in the view's ``invalid``; the evidence says so, and a record whose level is a
measurement (high, medium, low) is shown as ``inconclusive`` instead: a level resting on impossible numbers is not a
measurement, and the report never states it as one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medpfl_app.contracts.record import RecordStatus
from medpfl_app.contracts.verdict import LEVEL_MEANINGS, RiskLevel, Verdict
from medpfl_app.errors import MedPFLError
from medpfl_app.reports.fields import BOUNDS, checked, flag, fmt, mapping, text
from medpfl_app.reports.legacy import derived_evidence
from medpfl_app.reports.stages import Stage, total

#: Every level, worst first (the order of `RiskLevel`).
LEVELS: tuple[str, ...] = tuple(str(level) for level in RiskLevel)
LEVEL_RANK: dict[str, int] = {level: len(LEVELS) - index for index, level in enumerate(LEVELS)}
MEANINGS: dict[str, str] = {str(level): meaning for level, meaning in LEVEL_MEANINGS.items()}
#: Levels of audited updates (the attack ran), worst first.
AUDITED_LEVELS: tuple[str, ...] = tuple(
    str(level) for level in RiskLevel if level not in (RiskLevel.NOT_AUDITED, RiskLevel.NOT_AUDITABLE)
)
_STATUS_LEVELS = {
    str(RecordStatus.NOT_AUDITED): RiskLevel.NOT_AUDITED,
    str(RecordStatus.NOT_AUDITABLE): RiskLevel.NOT_AUDITABLE,
}


def worse(a: RiskLevel, b: RiskLevel) -> RiskLevel:
    """The worse of two levels (earlier in `RiskLevel`)."""
    return a if LEVEL_RANK[str(a)] >= LEVEL_RANK[str(b)] else b


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
    not_attacked: str | None = None
    epsilon_client: float | None = None
    epsilon_sample: float | None = None
    delta: float | None = None
    invalid: tuple[str, ...] = ()
    record: Mapping[str, Any] = field(repr=False, default_factory=dict)

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
        }


def _json_float(value: float | None) -> float | str | None:
    """A float for plain JSON: non-finite values spelled ``"inf"``/``"nan"`` as the ledger spells them."""
    if value is None or math.isfinite(value):
        return value
    return fmt(value)


#: The record's sections whose numeric fields are held to `medpfl_app.reports.fields.BOUNDS` (every field of
#: theirs that has a bound, shown or not: an impossible value anywhere marks the record).
CHECKED_SECTIONS: tuple[str, ...] = ("site_scores", "epsilon", "attack_budget", "server_indicators")


def _checked_sections(record: Mapping[str, Any], problems: list[str]) -> dict[str, dict[str, float | None]]:
    """Every bounded number of `CHECKED_SECTIONS`, range-checked once (out of range: ``None`` and a note)."""
    return {
        name: {
            key: checked(value, key, problems, where=name)
            for key, value in mapping(record.get(name)).items()
            if key in BOUNDS
        }
        for name in CHECKED_SECTIONS
    }


def record_view(record: Mapping[str, Any], index: int) -> RecordView:
    """The report's view of one intact ledger record (never raises on its content)."""
    status = text(record.get("status")) or "missing"
    schema = text(record.get("schema")) or "schema not recorded"
    scores = mapping(record.get("site_scores"))
    budget = mapping(record.get("attack_budget"))
    indicators = mapping(record.get("server_indicators"))
    problems: list[str] = []
    numbers = _checked_sections(record, problems)
    score, spent, server, epsilon = (
        numbers["site_scores"].get,
        numbers["attack_budget"].get,
        numbers["server_indicators"].get,
        numbers["epsilon"].get,
    )
    raw_ladder = record.get("ladder")
    stages = (
        tuple(
            Stage.from_json(s, problems, where=f"ladder[{i}]")
            for i, s in enumerate(raw_ladder)
            if isinstance(s, Mapping)
        )
        if isinstance(raw_ladder, list)
        else ()
    )
    round_number = record.get("round")
    site = record.get("site")
    wall = spent("wall_time_s")
    base = RecordView(
        index=index,
        site=site if isinstance(site, str) and site else None,
        round=round_number if isinstance(round_number, int) and not isinstance(round_number, bool) else None,
        status=status,
        schema=schema,
        level=str(RiskLevel.INCONCLUSIVE),
        evidence="",
        settle=None,
        evidence_recorded=False,
        reason=text(record.get("reason")),
        scores_status=text(scores.get("status")),
        scores_reason=text(scores.get("reason")),
        ssim_max=score("ssim_max"),
        psnr_max=score("psnr_max"),
        success_rate=score("attack_success_rate"),
        label_accuracy=score("label_accuracy"),
        identifiability=score("identifiability"),
        identifiability_chance=score("identifiability_chance"),
        identifiability_excess=score("identifiability_excess"),
        identifiability_p_value=score("identifiability_p_value"),
        stages=stages,
        ladder_recorded=isinstance(raw_ladder, list),
        ladder_complete=flag(record.get("ladder_complete")),
        iterations=(_whole(total([s.iterations for s in stages])) if stages else _whole(spent("iterations"))),
        restarts=_whole(total([s.restarts for s in stages])) if stages else _whole(spent("restarts")),
        wall_time_s=total([s.wall_time_s for s in stages])
        if stages
        else (wall if wall is not None else server("attack_wall_time_s")),
        time_limit_s=spent("time_limit_s"),
        time_budget_s=spent("time_budget_s"),
        time_spent_s=spent("time_spent_s"),
        loss_start=stages[0].initial_loss if stages else None,
        loss_end=stages[-1].final_loss if stages else server("attack_matching_loss"),
        convergence=stages[-1].convergence if stages else None,
        stop_reason=(
            stages[-1].stop_reason
            if stages
            else text(budget.get("stop_reason")) or text(indicators.get("attack_stop_reason"))
        ),
        not_attacked=text(budget.get("not_attacked")),
        epsilon_client=epsilon("client_dp"),
        epsilon_sample=epsilon("dp_sgd"),
        delta=epsilon("delta"),
        invalid=tuple(problems),
        record=record,
    )
    level, evidence, settle, recorded = _verdict_of(record, base)
    if problems:
        level, evidence, settle = _invalid_values(level, evidence, settle, problems)
    return dataclasses.replace(base, level=str(level), evidence=evidence, settle=settle, evidence_recorded=recorded)


def _whole(value: float | None) -> int | None:
    return int(value) if value is not None and math.isfinite(value) else None


def _invalid_values(
    level: RiskLevel, evidence: str, settle: str | None, problems: Sequence[str]
) -> tuple[RiskLevel, str, str | None]:
    """A record with values outside their valid range: noted in the evidence; a measured level not shown as one."""
    note = f"values outside their valid range, not used: {'; '.join(problems)}"
    if not level.measured:
        return level, f"{evidence} [{note}]", settle
    return (
        RiskLevel.INCONCLUSIVE,
        f"the record's level {level} is not shown as a measurement: the record holds {note} (recorded "
        f"evidence: {evidence})",
        "a re-audit of this update whose record holds valid values (the site's scores or the audit's numbers "
        "were out of range)",
    )


def _verdict_of(record: Mapping[str, Any], view: RecordView) -> tuple[RiskLevel, str, str | None, bool]:
    """(level, evidence, settle, from the record's verdict?) — see the module docstring."""
    risk = record.get("risk")
    try:
        risk_level: RiskLevel | None = RiskLevel(risk) if isinstance(risk, str) else None
    except ValueError:
        risk_level = None  # schema 1's "unknown", or garbage
    raw = record.get("verdict")
    verdict: Verdict | None = None
    unreadable = None
    if raw is not None:
        try:
            verdict = Verdict.from_json(raw)
        except MedPFLError as error:
            unreadable = error.problem
    if verdict is not None:
        evidence = verdict.evidence or "no evidence recorded"
        level = verdict.level
        if risk_level is not None and risk_level != verdict.level:
            level = worse(risk_level, verdict.level)
            evidence += (
                f" (the record's risk {risk_level} and its verdict's level {verdict.level} differ; the worse is shown)"
            )
        return level, evidence, verdict.settle, True
    level = risk_level if risk_level is not None else _STATUS_LEVELS.get(view.status, RiskLevel.INCONCLUSIVE)
    if view.status in _STATUS_LEVELS and level not in (RiskLevel.NOT_AUDITED, RiskLevel.NOT_AUDITABLE):
        level = _STATUS_LEVELS[view.status]  # a record that says the attack did not run measured nothing
    evidence, settle = derived_evidence(view, level, risk)
    prefix = f"derived by the report from a {view.schema} record without a verdict"
    if unreadable:
        prefix += f" (its verdict is unreadable: {unreadable})"
    return level, f"{evidence} [{prefix}]", settle, False
