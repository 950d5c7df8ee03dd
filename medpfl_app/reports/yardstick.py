"""The yardstick, in words: the attack and threat model, the budget spent, and how leakage was measured.

Every value comes from the records (``attack_budget``, ``ladder``, ``metric_settings``, the site scores' own
``ssim_threshold``); what the records do not carry (schema ``medpfl.audit/1`` ledgers carry no metric settings) is
stated as not recorded, never filled in from today's defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medpfl_app.reports.configs import value_words
from medpfl_app.reports.fields import checked, mapping, number, text
from medpfl_app.reports.records import RecordView

NOT_RECORDED = "not recorded in these records"
#: What each risk-policy threshold means, in words (``{}`` takes the value); `medpfl_app.audit.risk.RiskPolicy`.
POLICY_WORDS: dict[str, str] = {
    "ssim_high": "high when the worst-image SSIM is at least {}",
    "ssim_medium": "at least medium when the worst-image SSIM is at least {}",
    "identifiability_high": (
        "high when identification exceeds chance by at least {} (with every label recovered and the excess significant)"
    ),
    "significance": "identification counts as above chance when its p-value is below {}",
    "relative_leakage_medium": "at least medium when the leakage relative to an uninformed prior is at least {}",
    "epsilon_caps_at_medium": (
        "a formal ε at or below {} caps the level at medium (never a formal ε whose empirical check failed)"
    ),
}
#: How the attack success rate is defined (the site scores' ``attack_success_rate``).
ASR_DEFINITION = (
    "attack success rate: the share of the round's images that the attack reconstructed with an SSIM at "
    "or above the success threshold"
)


def policy_lines(thresholds: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The risk policy's thresholds as (name, meaning with its value) rows."""
    rows = []
    for name, value in thresholds.items():
        shown = f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else text(value)
        words = POLICY_WORDS.get(name)
        rows.append((name.replace("_", " "), words.format(shown) if words else f"{shown}"))
    return rows


@dataclass(frozen=True)
class MetricSettings:
    """One distinct ``metric_settings`` of the audited records, in words, and how many records used it."""

    records: int
    recorded: bool
    lines: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Yardstick:
    """What a reader needs to judge the numbers: spent budget, attack ladder, metric settings."""

    audited: int
    spent: str
    ladder: str
    settings: tuple[MetricSettings, ...]

    def summary(self) -> str:
        """One line for the terminal."""
        if not self.settings:
            return "no audited record"
        parts = []
        for group in self.settings:
            if group.recorded:
                shown = "; ".join(f"{label} {value}" for label, value in group.lines)
            else:
                threshold = dict(group.lines).get("success threshold:", NOT_RECORDED)
                shown = (
                    "metric settings not recorded by these records (ledger schema medpfl.audit/1, or no "
                    "metric_settings): SSIM/PSNR settings, identifiability definition and significance rule "
                    "unknown; success threshold: " + threshold
                )
            parts.append(shown if len(self.settings) == 1 else f"[{group.records} records] {shown}")
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "audited_records": self.audited,
            "spent": self.spent,
            "ladder": self.ladder,
            "metric_settings": [
                {"records": g.records, "recorded": g.recorded, "settings": dict(g.lines)} for g in self.settings
            ],
        }


def _num(value: Any) -> str | None:
    found = number(value)
    return None if found is None else f"{found:g}"


def _ssim_words(ssim: Mapping[str, Any]) -> str:
    if not ssim:
        return NOT_RECORDED
    kernel = ssim.get("gaussian_kernel")
    size = _num(ssim.get("kernel_size"))
    sigma = _num(ssim.get("sigma"))
    if kernel is True:
        window = f"Gaussian window σ = {sigma or '(σ not recorded)'}, {size + ' px' if size else 'size not recorded'}"
    elif kernel is False:
        window = f"uniform window, {size + ' px' if size else 'size not recorded'}"
    else:
        window = "window not recorded"
    data_range = _num(ssim.get("data_range"))
    words = f"{window}, data range {data_range if data_range is not None else 'not recorded'}"
    if isinstance(ssim.get("implementation"), str):
        words += f" (implementation: {ssim['implementation']})"
    extra = {
        k: v
        for k, v in ssim.items()
        if k not in ("gaussian_kernel", "kernel_size", "sigma", "data_range", "implementation")
    }
    if extra:
        words += "; " + ", ".join(f"{k.replace('_', ' ')} {value_words(v)}" for k, v in sorted(extra.items()))
    return words


def _policy_significance(views: Sequence[RecordView]) -> str | None:
    """The significance level the records' risk policy states (``risk_policy.significance``), if they agree."""
    found = {
        f"{v:g}"
        for view in views
        if (v := checked(mapping(view.record.risk_policy).get("significance"), "significance")) is not None
    }
    return found.pop() if len(found) == 1 else None


def _settings_lines(settings: Mapping[str, Any], views: Sequence[RecordView]) -> tuple[tuple[str, str], ...]:
    threshold = _num(checked(settings.get("success_threshold_ssim"), "ssim_threshold"))
    psnr = mapping(settings.get("psnr"))
    psnr_range = _num(psnr.get("data_range"))
    significance = _num(checked(settings.get("significance"), "significance"))
    if significance is None and (from_policy := _policy_significance(views)) is not None:
        significance = f"{from_policy} (from the records' risk policy)"
    ident = settings.get("identifiability")
    lines = [
        (
            "success threshold:",
            f"an image counts as reconstructed at SSIM ≥ {threshold}" if threshold is not None else NOT_RECORDED,
        ),
        ("SSIM:", _ssim_words(mapping(settings.get("ssim")))),
        (
            "PSNR:",
            (f"data range {psnr_range}" if psnr_range is not None else f"data range {NOT_RECORDED}")
            + "".join(f", {k.replace('_', ' ')} {value_words(v)}" for k, v in sorted(psnr.items()) if k != "data_range")
            if psnr
            else NOT_RECORDED,
        ),
        ("identifiability:", ident if isinstance(ident, str) and ident else NOT_RECORDED),
        (
            "significance:",
            f"identification counts as above chance at significance level {significance}"
            if significance is not None
            else NOT_RECORDED,
        ),
    ]
    known = {"success_threshold_ssim", "ssim", "psnr", "identifiability", "significance"}
    lines += [
        (f"{key.replace('_', ' ')}:", value_words(value)) for key, value in sorted(settings.items()) if key not in known
    ]
    return tuple(lines)


def _legacy_lines(views: Sequence[RecordView]) -> tuple[tuple[str, str], ...]:
    thresholds = sorted(
        {
            f"{t:g}"
            for v in views
            if (t := checked(mapping(v.record.site_scores).get("ssim_threshold"), "ssim_threshold")) is not None
        }
    )
    threshold = (
        f"an image counts as reconstructed at SSIM ≥ {' / '.join(thresholds)} (as the site scores state)"
        if thresholds
        else NOT_RECORDED
    )
    return (
        ("success threshold:", threshold),
        ("SSIM:", NOT_RECORDED),
        ("PSNR:", NOT_RECORDED),
        ("identifiability:", NOT_RECORDED),
        ("significance:", NOT_RECORDED),
    )


def build_yardstick(views: Sequence[RecordView]) -> Yardstick:
    """The yardstick of the audited records (every value as recorded)."""
    audited = [v for v in views if v.status == "audited"]
    groups: dict[str, list[RecordView]] = {}
    for view in audited:
        settings = view.record.metric_settings
        key = json.dumps(dict(settings), sort_keys=True, default=str) if isinstance(settings, Mapping) else ""
        groups.setdefault(key, []).append(view)
    settings_out = []
    for key, members in groups.items():
        if key:
            settings_out.append(MetricSettings(len(members), True, _settings_lines(json.loads(key), members)))
        else:
            settings_out.append(MetricSettings(len(members), False, _legacy_lines(members)))
    return Yardstick(audited=len(audited), spent=_spent(audited), ladder=_ladder(audited), settings=tuple(settings_out))


def _spent(audited: Sequence[RecordView]) -> str:
    if not audited:
        return "no attack ran"
    iterations = sum(v.iterations or 0 for v in audited)
    restarts = sum(v.restarts or 0 for v in audited)
    wall = sum(v.wall_time_s or 0.0 for v in audited)
    words = (
        f"{iterations} iterations and {restarts} restarts over {len(audited)} audited updates, "
        f"{wall:.1f} s of attack wall time"
    )
    budgets = sorted({v.time_budget_s for v in audited if v.time_budget_s is not None})
    spent = [v.time_spent_s for v in audited if v.time_spent_s is not None]
    if budgets or spent:
        words += (
            f"; time budget per update {' / '.join(f'{b:g} s' for b in budgets) or 'not recorded'}, "
            f"{sum(spent):.1f} s spent in total"
            if spent
            else f"; time budget per update {' / '.join(f'{b:g} s' for b in budgets)}, time spent not recorded"
        )
    else:
        limits = sorted({v.time_limit_s for v in audited if v.time_limit_s is not None})
        words += (
            f"; wall-clock limit per attack {' / '.join(f'{b:g} s' for b in limits)}"
            if limits
            else "; no time budget recorded"
        )
    return words


def _ladder(audited: Sequence[RecordView]) -> str:
    if not audited:
        return "no attack ran"
    with_ladder = [v for v in audited if v.ladder_recorded]
    if not with_ladder:
        return "no attack ladder recorded (each update was attacked once, as these records' schema did)"
    stage_counts: dict[str, int] = {}
    for view in with_ladder:
        for stage in dict.fromkeys(s.stage for s in view.stages):
            stage_counts[stage] = stage_counts.get(stage, 0) + 1
    stages = ", ".join(f"{name} on {count}" for name, count in stage_counts.items()) or "no stage ran"
    complete = sum(v.ladder_complete is True for v in with_ladder)
    whole = sum(any(s.whole_update is True for s in v.stages) for v in with_ladder)
    converged = {}
    for view in with_ladder:
        status = view.convergence or "not recorded"
        converged[status] = converged.get(status, 0) + 1
    ends = ", ".join(f"{count} {status.replace('_', ' ')}" for status, count in sorted(converged.items()))
    words = (
        f"stages run: {stages} of {len(with_ladder)} updates; ladder complete on {complete}; whole update "
        f"attacked on {whole}; last stage ended {ends}"
    )
    if len(with_ladder) < len(audited):
        words += f"; {len(audited) - len(with_ladder)} audited records carry no ladder (older schema)"
    return words
