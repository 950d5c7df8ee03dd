"""The JSON report of one round: its records verbatim plus a summary (verdict, coverage, details, accuracy)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medpfl_app.reports.accuracy import Accuracy
from medpfl_app.reports.model import RISK_MEANINGS, AuditView, Cell
from medpfl_app.reports.sources import unreadable_text
from medpfl_app.reports.verdict import verdict

REPORT_SCHEMA = "medpfl.audit-report/2"


def round_report(
    view: AuditView,
    round_number: int,
    ledger: Path,
    skipped_lines: Sequence[int],
    accuracy: Accuracy,
    job: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report of one round: its records verbatim plus a summary (verdict, coverage, details, accuracy).

    ``job``: the job's name, purpose and where they came from (`medpfl_app.reports.job.JobInfo.to_dict`).
    """
    only = view.only_round(round_number)
    cells = [view.cell(site, round_number) for site in view.sites]
    return {
        "schema": REPORT_SCHEMA,
        "round": round_number,
        "ledger": str(ledger),
        "job": dict(job) if job is not None else None,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": {
            "verdict": verdict(only),
            "coverage": only.coverage.to_dict(),
            "sites": [_site_row(c) for c in cells if c is not None],
            "details": [d.to_dict() for d in only.details],
            "sites_without_record": [s for s, c in zip(view.sites, cells, strict=True) if c is None],
            "sites_lost": [s for s in view.sites if view.lost(s, round_number)],
            "policy_actions": [dataclasses.asdict(a) for a in view.actions if a.round == round_number],
            "audit_configs": [c.to_dict() for c in view.configs],
            "yardstick": view.yardstick.to_dict(),
            "model_accuracy": accuracy.aggregated.get(round_number),
            "model_accuracy_metric": accuracy.metric,
            "model_validation_loss": accuracy.loss.get(round_number),
            "ledger_lines_unreadable": list(skipped_lines),
            "ledger_lines_unreadable_text": unreadable_text(skipped_lines),
            "risk_levels": RISK_MEANINGS,
            # only where a record carries an empirical ε check: reports without formal DP read as before
            **_empirical(only),
        },
        "records": [dict(entry.written) for entry in only.entries],
    }


def _site_row(c: Cell) -> dict[str, Any]:
    """One site's line of the round summary (its worst record)."""
    return {
        "site": c.site,
        "status": c.status,
        "risk": c.risk,
        "evidence": c.evidence,
        "settle": c.settle,
        "reason": c.reason,
        "site_scores": c.scores_status,
        "ssim_max": c.ssim_max,
        "psnr_max": c.psnr_max,
        "attack_success_rate": c.success_rate,
        "identifiability": c.detail.identifiability,
        "identifiability_chance": c.detail.identifiability_chance,
        "identifiability_excess": c.detail.identifiability_excess,
        "identifiability_p_value": c.detail.identifiability_p_value,
        "epsilon": {
            "client_dp": c.epsilon_client,
            "dp_sgd": c.epsilon_sample,
            "delta": c.delta,
            **({"empirical": [check.to_dict() for check in c.detail.empirical]} if c.detail.empirical else {}),
        },
        "audit_config": c.config.tag if c.config else None,
        "records": c.record_count,
        "invalid_values": list(c.invalid),
    }


def _empirical(view: AuditView) -> dict[str, Any]:
    """The round's empirical ε checks and the failed ones' flags (``{}`` when no record carries a check)."""
    checks = view.empirical_checks()
    if not checks:
        return {}
    return {
        "empirical_epsilon": [check.to_dict() for check in checks],
        "empirical_epsilon_failed": [check.flag_text() for check in checks if check.failed],
    }
