"""The numbers of a record's sections as the report reads them: each held to its valid range once.

The sections (`CHECKED_SECTIONS`) hold what sites and attacks reported: every number of theirs that has a bound in
`medpfl_app.reports.fields.BOUNDS` is read through `medpfl_app.reports.fields.checked` (out of range: ``None`` and a
note), whether the report shows it or not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from medpfl_app.contracts.record import AuditRecord
from medpfl_app.reports.fields import BOUNDS, checked, mapping, text
from medpfl_app.reports.stages import Stage, total

#: The record's sections whose numeric fields are held to `medpfl_app.reports.fields.BOUNDS` (every field of
#: theirs that has a bound, shown or not: an impossible value anywhere marks the record).
CHECKED_SECTIONS: tuple[str, ...] = ("site_scores", "epsilon", "attack_budget", "server_indicators")


def checked_sections(record: AuditRecord, problems: list[str]) -> dict[str, dict[str, float | None]]:
    """Every bounded number of `CHECKED_SECTIONS`, range-checked once (out of range: ``None`` and a note)."""
    return {
        name: {
            key: checked(value, key, problems, where=name)
            for key, value in mapping(getattr(record, name)).items()
            if key in BOUNDS
        }
        for name in CHECKED_SECTIONS
    }


def score_fields(numbers: Mapping[str, float | None], scores: Mapping[str, Any]) -> dict[str, Any]:
    """The view's fields from the site's (range-checked) scores."""
    return {
        "scores_status": text(scores.get("status")),
        "scores_reason": text(scores.get("reason")),
        "ssim_max": numbers.get("ssim_max"),
        "psnr_max": numbers.get("psnr_max"),
        "success_rate": numbers.get("attack_success_rate"),
        "label_accuracy": numbers.get("label_accuracy"),
        "identifiability": numbers.get("identifiability"),
        "identifiability_chance": numbers.get("identifiability_chance"),
        "identifiability_excess": numbers.get("identifiability_excess"),
        "identifiability_p_value": numbers.get("identifiability_p_value"),
    }


def attack_fields(
    record: AuditRecord, stages: tuple[Stage, ...], numbers: Mapping[str, Mapping[str, float | None]]
) -> dict[str, Any]:
    """The view's fields on the attack: its ladder (stage totals) or, without one, the budget and indicators."""
    spent, server = numbers["attack_budget"].get, numbers["server_indicators"].get
    budget, indicators = mapping(record.attack_budget), mapping(record.server_indicators)
    wall = spent("wall_time_s")
    return {
        "iterations": _whole(total([s.iterations for s in stages])) if stages else _whole(spent("iterations")),
        "restarts": _whole(total([s.restarts for s in stages])) if stages else _whole(spent("restarts")),
        "wall_time_s": total([s.wall_time_s for s in stages])
        if stages
        else (wall if wall is not None else server("attack_wall_time_s")),
        "time_limit_s": spent("time_limit_s"),
        "time_budget_s": spent("time_budget_s"),
        "time_spent_s": spent("time_spent_s"),
        "loss_start": stages[0].initial_loss if stages else None,
        "loss_end": stages[-1].final_loss if stages else server("attack_matching_loss"),
        "convergence": stages[-1].convergence if stages else None,
        "stop_reason": (
            stages[-1].stop_reason
            if stages
            else text(budget.get("stop_reason")) or text(indicators.get("attack_stop_reason"))
        ),
        "not_attacked": text(budget.get("not_attacked")),
    }


def _whole(value: float | None) -> int | None:
    """A count from a float total (None when missing or not finite)."""
    return int(value) if value is not None and math.isfinite(value) else None
