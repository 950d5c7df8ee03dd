"""Evidence for records of older runs (schema ``medpfl.audit/1``, no verdict): stated from the numbers they carry.

What such records did not record (the loss at the start, the convergence) is said to be not recorded, never filled
in; `medpfl_app.reports.levels` labels the result as derived by the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medpfl_app.contracts.record import AuditRecord
from medpfl_app.contracts.verdict import RiskLevel
from medpfl_app.reports.fields import fmt, mapping, text, value_words

if TYPE_CHECKING:
    from medpfl_app.reports.records import RecordView


def derived_evidence(view: RecordView, level: RiskLevel, risk: Any) -> tuple[str, str | None]:
    """Evidence and what would settle it for a record without a verdict, stated from the numbers it carries."""
    if level in (RiskLevel.NOT_AUDITED, RiskLevel.NOT_AUDITABLE):
        return f"{view.status.replace('_', ' ')}: {view.reason or 'no reason recorded'}", None
    if view.status != "audited":
        return (
            f"status {view.status!r} is not a known audit status",
            "re-render with the MedPFL version that wrote the ledger",
        )
    attack = (
        f"attack {text(mapping(view.record.attack_budget).get('attack')) or 'not recorded'}, "
        f"{fmt(view.iterations, 'd', '?')} iterations, final matching loss "
        f"{fmt(view.loss_end, missing='not recorded')}, stopped: {view.stop_reason or 'not recorded'}; "
        "loss at the start and convergence not recorded"
    )
    if view.scores_status == "scored":
        scores = (
            ", ".join(
                filter(
                    None,
                    [
                        f"best SSIM {view.ssim_max:.2f}" if view.ssim_max is not None else None,
                        f"best PSNR {view.psnr_max:.1f} dB" if view.psnr_max is not None else None,
                        f"attack success {view.success_rate:.0%}" if view.success_rate is not None else None,
                        f"identifiability {view.identifiability_text()}" if view.identifiability is not None else None,
                    ],
                )
            )
            or "no score values"
        )
        evidence = f"site scores: {scores}; {attack}"
    else:
        evidence = (
            f"site scores {view.scores_status or 'missing'}: {view.scores_reason or 'no reason recorded'}; "
            f"server indicators: {indicators_text(view.record)}; {attack}"
        )
    if level == RiskLevel.INCONCLUSIVE:
        why = "the record set no level" if risk == "unknown" else f"the record's risk {str(risk)[:40]!r} is unknown"
        settle = (
            "the site's scores of this update (re-score or re-audit with the site reachable)"
            if view.scores_status != "scored"
            else "a re-audit that records the attack's convergence"
        )
        return f"{why}; {evidence}", settle
    if level == RiskLevel.UNSCORED:
        return evidence, "the site's scores of this update"
    return f"level {level} as recorded; {evidence}", None


def indicators_text(record: AuditRecord) -> str:
    """The record's server-side indicators in words (``labels recovered: yes; update norm: 102``)."""
    indicators = mapping(record.server_indicators)
    return (
        "; ".join(f"{k.replace('_', ' ')}: {value_words(v)}" for k, v in sorted(indicators.items())) or "none recorded"
    )
