"""A record's level: from its verdict (schema ``medpfl.audit/2``) or derived from the numbers it carries (schema 1).

Schema-1 records of older runs carry only ``risk`` (``high|medium|low|unknown``): their ``unknown`` becomes
``not_audited`` / ``not_auditable`` from the record's status, or ``inconclusive`` for an audited record, and their
evidence is stated from the numbers they do carry (`medpfl_app.reports.legacy`), labelled as derived by the report.
A record holding values outside their valid range is never shown at a measured level (`invalid_values`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from medpfl_app.contracts.record import AuditRecord, RecordStatus
from medpfl_app.contracts.verdict import LEVEL_MEANINGS, RiskLevel
from medpfl_app.reports.legacy import derived_evidence

if TYPE_CHECKING:
    from medpfl_app.reports.records import RecordView

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


def invalid_values(
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


def record_level(record: AuditRecord, view: RecordView) -> tuple[RiskLevel, str, str | None, bool]:
    """(level, evidence, settle, from the record's verdict?) — see the module docstring."""
    try:
        risk_level: RiskLevel | None = RiskLevel(record.risk)
    except ValueError:
        risk_level = None  # schema 1's "unknown"
    verdict = record.verdict
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
    evidence, settle = derived_evidence(view, level, record.risk)
    return level, f"{evidence} [derived by the report from a {view.schema} record without a verdict]", settle, False
