"""Defensive readers of untrusted JSON fields: a wrong type becomes ``None``, never an exception.

Two kinds of defence live here, each in one place:

* `checked` holds every numeric ledger field to its valid range (`BOUNDS`: SSIM in [-1, 1], shares and p-values in
  [0, 1], ε ≥ 0, counts ≥ 0, PSNR finite, …). A value outside becomes ``None`` plus a note, so the report shows it
  as invalid and never as a measurement.
* `printable` (`medpfl_app.text`, re-exported here) escapes control characters in text printed on a terminal:
  ledger strings (site names, reasons, evidence) are written by the audit from what sites send.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medpfl_app.text import printable

#: How non-finite floats are spelled in plain JSON records (``allow_nan=False``), e.g. a matching loss of ``inf``.
NON_FINITE = {
    "inf": math.inf,
    "+inf": math.inf,
    "infinity": math.inf,
    "-inf": -math.inf,
    "-infinity": -math.inf,
    "nan": math.nan,
}


def number(value: Any) -> float | None:
    """A finite float from a JSON value, or ``None`` (bools, strings, NaN and infinities are not scores)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def loss_number(value: Any) -> float | None:
    """A float that may be non-finite (a loss: ``"inf"``/``"nan"`` strings are read back), or ``None``."""
    if isinstance(value, str):
        return NON_FINITE.get(value.strip().lower())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def integer(value: Any) -> int | None:
    """A whole number from a JSON value, or ``None``."""
    found = number(value)
    return int(found) if found is not None and found == int(found) else None


def flag(value: Any) -> bool | None:
    """A JSON boolean, or ``None``."""
    return value if isinstance(value, bool) else None


def text(value: Any) -> str | None:
    """A string field as text (``None`` stays ``None``; other JSON values are shown as compact JSON)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def value_words(value: Any) -> str:
    """A JSON value in words: yes/no for booleans, ``1×32×32`` for a shape, ``%g`` for numbers."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:g}"
    if isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return "×".join(f"{v:g}" for v in value) or "none"
    if isinstance(value, list):
        return ", ".join(value_words(v) for v in value) or "none"
    if isinstance(value, Mapping):
        return "; ".join(f"{k.replace('_', ' ')} {value_words(v)}" for k, v in sorted(value.items())) or "none"
    return "not recorded" if value is None else str(value)


def mapping(value: Any) -> Mapping[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if isinstance(value, Mapping) else {}


def fmt(value: float | None, spec: str = ".3g", missing: str = "–") -> str:
    """``value`` formatted with ``spec`` (non-finite values as ``inf``/``nan``), or ``missing``."""
    if value is None:
        return missing
    if not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return format(value, spec)


#: Slack at the ends of a range, for float rounding in the producer (an SSIM of 1.0000001 is 1).
TOLERANCE = 1e-6


@dataclass(frozen=True)
class Bounds:
    """The valid values of one numeric field.

    Attributes:
        low, high: Inclusive range.
        whole: Only whole numbers (counts).
        non_finite: ``inf`` / ``nan`` are valid too (a matching loss that diverged), read with `loss_number`.
    """

    low: float = -math.inf
    high: float = math.inf
    whole: bool = False
    non_finite: bool = False

    def text(self) -> str:
        """The valid range: ``[-1, 1]``, ``[0, inf)``, or ``finite`` (any finite number)."""
        if math.isinf(self.low) and math.isinf(self.high):
            return "finite"
        low = "(-inf" if math.isinf(self.low) else f"[{self.low:g}"
        high = "inf)" if math.isinf(self.high) else f"{self.high:g}]"
        return f"{low}, {high}"

    def problem(self, value: float) -> str | None:
        """Why ``value`` is invalid (``"is outside [-1, 1]"``), or ``None``."""
        if not math.isfinite(value):
            return None if self.non_finite else "is not finite"
        if not self.low - TOLERANCE <= value <= self.high + TOLERANCE:
            return f"is outside the valid range {self.text()}"
        if self.whole and value != int(value):
            return "is not a whole number"
        return None


_SHARE = Bounds(0.0, 1.0)
_COUNT = Bounds(0.0, whole=True)
_SECONDS = Bounds(0.0)
_LOSS = Bounds(0.0, non_finite=True)

#: The valid range of every numeric ledger field the report reads, by field name (the same name in
#: ``site_scores``, ``epsilon``, ``attack_budget``, ``ladder`` entries and their ``convergence``).
BOUNDS: Mapping[str, Bounds] = {
    # site scores (medpfl_app.audit.scoring): SSIM is a correlation-like index, PSNR a finite number of dB
    "ssim_max": Bounds(-1.0, 1.0),
    "ssim_mean": Bounds(-1.0, 1.0),
    "ssim_threshold": Bounds(-1.0, 1.0),
    "psnr_max": Bounds(),
    "psnr_mean": Bounds(),
    "attack_success_rate": _SHARE,
    "label_accuracy": _SHARE,
    "identifiability": _SHARE,
    "identifiability_chance": _SHARE,
    "identifiability_excess": Bounds(-1.0, 1.0),
    "identifiability_p_value": _SHARE,
    "significance": _SHARE,
    # formal privacy (epsilon): ε >= 0, δ a probability
    "client_dp": Bounds(0.0),
    "dp_sgd": Bounds(0.0),
    "delta": _SHARE,
    # attack budget and ladder stages
    "iterations": _COUNT,
    "restarts": _COUNT,
    "images": _COUNT,
    "local_steps": _COUNT,
    "stages_run": _COUNT,
    "evaluations": _COUNT,
    "max_images": _COUNT,
    "wall_time_s": _SECONDS,
    "attack_wall_time_s": _SECONDS,
    "time_limit_s": _SECONDS,
    "time_budget_s": _SECONDS,
    "time_spent_s": _SECONDS,
    # matching losses (relative, >= 0) and their start / end ratio; inf and nan are recorded for a diverged attack
    "initial_loss": _LOSS,
    "final_loss": _LOSS,
    "attack_matching_loss": _LOSS,
    "reduction": _LOSS,
}


def checked(value: Any, name: str, problems: list[str] | None = None, *, where: str = "") -> float | None:
    """``value`` read as the number field ``name`` and held to ``BOUNDS[name]``; ``None`` when absent or invalid.

    An absent value (``None``) is not a problem. A wrong type (text, a boolean, an object) or a number outside the
    field's range is: it is read as ``None`` and, when ``problems`` is given, a note naming the field, the value and
    the valid range is appended (``site_scores.ssim_max = 1e+308 is outside [-1, 1]``).

    Args:
        value: The JSON value.
        name: The field's name, a key of `BOUNDS` (unknown names are only held to being finite).
        problems: Where notes on invalid values are collected.
        where: The field's place in the record, prefixed to its name in the note (e.g. ``site_scores``).
    """
    if value is None:
        return None
    bounds = BOUNDS.get(name, Bounds())
    found = (
        loss_number(value)
        if bounds.non_finite
        else (None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value))
    )
    label = f"{where}.{name}" if where else name
    if found is None:
        if problems is not None:
            problems.append(f"{label} = {printable(text(value) or '')[:40]} is not a number")
        return None
    problem = bounds.problem(found)
    if problem is None:
        return found
    if problems is not None:
        problems.append(f"{label} = {fmt(found, '.6g')} {problem}")
    return None


def checked_integer(value: Any, name: str, problems: list[str] | None = None, *, where: str = "") -> int | None:
    """`checked` for a whole-number field (a count), as ``int``."""
    found = checked(value, name, problems, where=where)
    return int(found) if found is not None and math.isfinite(found) and found == int(found) else None
