"""One ledger record (`AuditRecord`) from the audit's parts: outcome, site scores, verdict, and the yardstick.

`AuditWorker` builds every record with `build_record`; what the record states but the audit did not measure
(the declared threat model, the metric settings, scores that could not be obtained) is defined here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.provenance import empirical_epsilon, epsilon_so_far
from medpfl_app.audit.risk import AttackEvidence, RiskPolicy, assess_verdict
from medpfl_app.audit.update_audit import AuditOutcome
from medpfl_app.contracts.record import AuditRecord, RecordStatus
from medpfl_app.contracts.score import ScoreReply
from medpfl_app.contracts.training_facts import RECORDED_FACT_KEYS

THREAT_MODEL = (
    "honest-but-curious server: knows the architecture, the global weights the site started from, the update exactly "
    "as received (after every client-side defense) and the training facts the site declared in the update meta"
)


def unavailable_scores(reason: str) -> dict[str, Any]:
    """Site scores that could not be obtained, with the reason (server indicators still stand)."""
    return ScoreReply.unavailable(reason).to_json()


def metric_settings(ssim_threshold: float, significance: float = RiskPolicy().significance) -> dict[str, Any]:
    """The yardstick every leakage number of a record was measured with (stated in every report)."""
    from medpfl_app.metrics.image import SSIM_SETTINGS
    from medpfl_app.metrics.leakage import IDENTIFIABILITY_DEFINITION

    return {
        "ssim": dict(SSIM_SETTINGS),
        "psnr": {"data_range": 1.0, "per_image": True},
        "success_threshold_ssim": float(ssim_threshold),
        "identifiability": IDENTIFIABILITY_DEFINITION,
        "significance": float(significance),
    }


def build_record(
    *,
    job_id: str | None,
    site: str | None,
    round_number: int | None,
    status: RecordStatus | str,
    reason: str | None,
    meta: Mapping[str, Any],
    outcome: AuditOutcome | None,
    site_scores: Mapping[str, Any] | None,
    policy: RiskPolicy,
    plan: AuditPlan,
    versions: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One ledger record (`AuditRecord`, schema ``medpfl.audit/2``, see `medpfl_app.audit.ledger`) from the audit's
    parts, as the ledger takes it (`AuditRecord.to_json`: the ledger stamps the time)."""
    epsilon: dict[str, Any] = dict(epsilon_so_far(meta))
    epsilon.update(empirical_epsilon(meta, epsilon))  # adds nothing without a formal ε
    indicators = dict(outcome.server_indicators) if outcome else {}
    budget = dict(outcome.attack_budget) if outcome else {"attack": plan.attack, "iterations": 0}
    scores = dict(site_scores) if site_scores else unavailable_scores(reason or "no reconstruction to score")
    threat = {"declared": THREAT_MODEL, **(dict(outcome.threat_model) if outcome else {})}
    verdict = assess_verdict(
        status=status,
        reason=reason,
        site_scores=scores,
        attack=AttackEvidence.from_record(indicators, budget),
        policy=policy,
    )
    return AuditRecord(
        job_id=job_id,
        site=site,
        round=round_number,
        status=RecordStatus(status),
        reason=reason,
        model=dict(outcome.model) if outcome else _declared_model(meta),
        versions=dict(versions),
        threat_model=threat,
        defenses=tuple(meta.get("medpfl_defenses") or ()),
        filter_history=tuple(meta.get("filter_history") or ()),
        epsilon=epsilon,
        server_indicators=indicators,
        site_scores=scores,
        risk=str(verdict.level),
        verdict=verdict,
        risk_policy=policy.to_dict(),
        attack_budget=budget,
        ladder=tuple(dict(stage) for stage in outcome.ladder) if outcome else (),
        ladder_complete=bool(budget.get("ladder_complete")),
        metric_settings=dict(settings) if settings is not None else metric_settings(0.9),
        training_facts={key: meta.get(key) for key in RECORDED_FACT_KEYS},
        # Set when the audit policy kept this update out of aggregation (`AuditFilter(on_high_risk="exclude_site")`).
        policy_action=meta.get("medpfl_policy_action"),
    ).to_json()


def _declared_model(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The record's model section when no audit ran: what the meta declares, nothing measured."""
    return {
        "network": meta.get("network"),
        "num_classes": meta.get("num_classes"),
        "config_hash": None,
        "num_parameters": None,
    }
