"""The report's verdict: the worst level with its evidence, under which attack, and the coverage beside it.

The level names the worst record; it is ``low`` only when every update the server received was measured low, and
the verdict always states beside it how many updates are inconclusive, unscored, not audited, not auditable or lost.
`medpfl_app.reports.plain` turns it into the paragraph a reader sees first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from medpfl_app.contracts.verdict import RiskLevel
from medpfl_app.reports.coverage import UNKNOWN_CAUSE
from medpfl_app.reports.legacy import indicators_text
from medpfl_app.reports.model import AuditView, Cell
from medpfl_app.reports.records import LEVELS, MEANINGS
from medpfl_app.reports.sources import unreadable_text

__all__ = ["verdict"]


def _scores_shown(cell: Cell) -> str:
    return ", ".join(
        filter(
            None,
            [
                f"SSIM {cell.ssim_max:.2f}" if cell.ssim_max is not None else None,
                f"PSNR {cell.psnr_max:.1f} dB" if cell.psnr_max is not None else None,
                f"attack success {cell.success_rate:.0%}" if cell.success_rate is not None else None,
                f"identifiability {cell.detail.identifiability_text()}"
                if cell.detail.identifiability is not None
                else None,
            ],
        )
    )


def _overall_level(view: AuditView, unreadable: Sequence[int]) -> tuple[RiskLevel | None, list[str]]:
    """The report's level and, when a measured ``low`` cannot stand, the reasons it does not."""
    coverage = view.coverage
    total = coverage.total()
    present = [RiskLevel(level) for level in LEVELS if total.levels.get(level, 0)]
    for level in (RiskLevel.HIGH, RiskLevel.MEDIUM, RiskLevel.UNSCORED, RiskLevel.INCONCLUSIVE):
        if level in present:
            return level, []
    if RiskLevel.LOW in present:
        blockers = []
        if not coverage.known:
            blockers.append(UNKNOWN_CAUSE)
        if total.lost:
            blockers.append(f"{total.lost} received update{'s' if total.lost != 1 else ''} lost (no audit record)")
        if total.not_audited:
            blockers.append(f"{total.not_audited} not audited")
        if total.not_auditable:
            blockers.append(f"{total.not_auditable} not auditable")
        if view.malformed:
            blockers.append(
                f"{len(view.malformed)} record{'s' if len(view.malformed) != 1 else ''} without a usable site or round"
            )
        if unreadable and not coverage.known:
            blockers.append(f"ledger: {unreadable_text(unreadable)}")
        return (RiskLevel.INCONCLUSIVE if blockers else RiskLevel.LOW), blockers
    if RiskLevel.NOT_AUDITED in present or total.lost:
        return RiskLevel.NOT_AUDITED, []
    if RiskLevel.NOT_AUDITABLE in present:
        return RiskLevel.NOT_AUDITABLE, []
    return None, []


def verdict(view: AuditView, skipped_lines: Iterable[int] = ()) -> dict[str, Any]:
    """The report's verdict: the worst level with its evidence, under which attack, and the coverage beside it.

    Records holding values outside their valid range are counted in ``invalid_records`` and listed in
    ``invalid_values``; the headline then says how many there are (their numbers are never quoted as measured).

    See `_verdict` for the fields.
    """
    result = _verdict(view, skipped_lines)
    invalid = [d for d in view.details if d.invalid]
    result["invalid_records"] = len(invalid)
    result["invalid_values"] = [{"site": d.site, "round": d.round, "values": list(d.invalid)} for d in invalid]
    if invalid:
        result["headline"] += (
            f" {len(invalid)} record{'s' if len(invalid) != 1 else ''} "
            f"hold{'s' if len(invalid) == 1 else ''} values outside their valid range: read as "
            "missing, never as measurements (listed under invalid values)."
        )
    return result


def _verdict(view: AuditView, skipped_lines: Iterable[int] = ()) -> dict[str, Any]:
    """The verdict without the note on invalid values (see `verdict`).

    The level is the worst of the records (`RiskLevel` order); ``low`` only when every update the server received
    was measured low (coverage known, nothing lost, not audited or not auditable) — a low with such gaps is
    ``inconclusive``.

    Returns:
        Plain JSON: ``risk`` (the level), ``meaning``, ``site``, ``round``, ``scores``, ``config`` (of the record
        behind the headline), ``configs`` (all), ``epsilon``,
        ``headline`` (the level's sentence), ``evidence`` and ``settle`` (of the record behind it), ``coverage``
        (counts and gaps, `Coverage.to_dict`, with ``text``, the sentence shown next to the headline) and
        ``unreadable_ledger_lines``.
    """
    unreadable = list(skipped_lines)
    coverage = {
        **view.coverage.to_dict(),
        "malformed_records": len(view.malformed),
        "unreadable_ledger_lines": unreadable,
        "unreadable_ledger_text": unreadable_text(unreadable),
    }
    level, blockers = _overall_level(view, unreadable)
    result: dict[str, Any] = {
        "risk": str(level) if level is not None else "none",
        "meaning": MEANINGS.get(str(level), ""),
        "site": None,
        "round": None,
        "scores": None,
        "config": None,
        "epsilon": None,
        "evidence": None,
        "settle": None,
        "coverage": coverage,
        "unreadable_ledger_lines": unreadable,
        "configs": [c.to_dict() for c in view.configs],
    }
    if level is None:
        result["headline"] = "The ledger holds no usable audit record."
        result["meaning"] = "nothing was received or recorded that the report could place"
        return result
    if level in (RiskLevel.NOT_AUDITED, RiskLevel.NOT_AUDITABLE) and not view.coverage.total().audited:
        result["headline"] = _unmeasured_headline(view, level)
        return result
    worst = view.worst()
    assert worst is not None
    if level == RiskLevel.LOW or (level == RiskLevel.INCONCLUSIVE and blockers):
        result.update(_low_verdict(view, level, blockers, worst))
    else:
        result.update(_worst_verdict(view, level, worst))
    return result


def _unmeasured_headline(view: AuditView, level: RiskLevel) -> str:
    """The headline when no update was measured (every record not audited or not auditable)."""
    total = view.coverage.total()
    received = (
        f"{total.received} received update{'s' if total.received != 1 else ''}"
        if view.coverage.known
        else f"{total.records} recorded update{'s' if total.records != 1 else ''}"
    )
    return (
        f"{level.upper().replace('_', ' ')}: none of the {received} was measured"
        + ("" if total.records else ": the ledger holds no usable audit record")
        + "."
    )


def _low_verdict(view: AuditView, level: RiskLevel, blockers: Sequence[str], worst: Cell) -> dict[str, Any]:
    """A low verdict, or an inconclusive one when every audited update measured low but not every one was measured."""
    under = "; ".join(c.short() for c in view.configs) or "attack not recorded"
    found: dict[str, Any] = {}
    if level == RiskLevel.LOW:
        headline = (
            f"LOW: all {view.coverage.total().received} received updates were measured low under {under}: evidence "
            "under this attack and budget, not a guarantee against stronger attacks."
        )
    else:
        headline = (
            f"INCONCLUSIVE: every audited update measured low under {under}, but not every received "
            f"update was measured: {'; '.join(blockers)}."
        )
        found["settle"] = (
            "audit the updates that were lost or not audited (re-run the job with the audit running to the end)"
            if view.coverage.known
            else "render from the server's run folder that holds received_updates.jsonl beside the ledger"
        )
    return {**found, "headline": headline, "config": worst.config.to_dict() if worst.config else None}


def _worst_verdict(view: AuditView, level: RiskLevel, worst: Cell) -> dict[str, Any]:
    """The verdict naming the worst record: its site and round, scores, attack configuration, ε and evidence."""
    under = worst.config.short() if worst.config else "attack not recorded"
    if worst.config and len(worst.config.iterations) > 1 and worst.detail.iterations is not None:
        under += f", this record {worst.detail.iterations} iterations"
    if level in (RiskLevel.HIGH, RiskLevel.MEDIUM):
        shown = _scores_shown(worst) or "no site scores"
        if worst.scored:
            shown += "; worst image"
        else:
            shown = f"{shown}; level from server-side indicators: {indicators_text(worst.record)}"
        headline = (
            f"Worst risk {level.upper()}: {worst.site}, round {worst.round} ({shown}) "
            f"under {under}; formal ε: {worst.epsilon_text()}."
        )
    else:
        count = view.coverage.total().levels.get(str(level), 0)
        headline = (
            f"{level.upper()}: {count} audited update{'s' if count != 1 else ''} "
            f"{'are' if count != 1 else 'is'} {level}, e.g. {worst.site}, round {worst.round}, under {under}."
        )
    return {
        "site": worst.site,
        "round": worst.round,
        "scores": {
            "ssim_max": worst.ssim_max,
            "psnr_max": worst.psnr_max,
            "attack_success_rate": worst.success_rate,
            "label_accuracy": worst.label_accuracy,
            "identifiability": worst.detail.identifiability,
            "identifiability_p_value": worst.detail.identifiability_p_value,
        },
        "config": worst.config.to_dict() if worst.config else None,
        "epsilon": {"client_dp": worst.epsilon_client, "dp_sgd": worst.epsilon_sample, "delta": worst.delta},
        "headline": headline,
        "evidence": worst.evidence,
        "settle": worst.settle,
    }
