"""The pre-flight (``preflight.json``, schema medpfl.preflight/1) as plain text and as report rows.

Reads the JSON the server or `medpfl preflight` wrote, so the terminal and the HTML report say the same thing.
Values are escaped (`medpfl_app.text.printable`): a site's facts are untrusted input.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.text import printable

#: A pre-flight of a few hundred sites is well under this; anything larger is not what the server writes.
MAX_PREFLIGHT_BYTES = 4 * 1024 * 1024

LEVEL_WORDS = {
    "high": "HIGH RISK",
    "medium": "medium risk",
    "low": "low risk",
    "inconclusive": "inconclusive",
}


def probe_numbers(probe: Mapping[str, Any] | None) -> str:
    """``SSIM 0.99, attack success 100 %, labels 100 %`` (what the probe measured), or why nothing was measured."""
    if not isinstance(probe, Mapping):
        return "no probe"
    parts = []
    for key, label, percent in (
        ("ssim_mean", "mean SSIM", False),
        ("attack_success_rate", "attack success", True),
        ("label_accuracy", "labels recovered", True),
    ):
        value = probe.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{label} {value:.0%}" if percent else f"{label} {value:.2f}")
    return ", ".join(parts) if parts else "nothing reconstructed"


def site_rows(preflight: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One plain-text row per site: level, summary, factors, measured advice."""
    rows = []
    sites = preflight.get("sites", [])
    for site in sites if isinstance(sites, list) else []:
        if not isinstance(site, Mapping):
            continue
        probe = site.get("probe")
        verdict = probe.get("verdict", {}) if isinstance(probe, Mapping) else {}
        advice = []
        what_ifs = site.get("what_ifs")
        for what_if in what_ifs if isinstance(what_ifs, list) else []:
            if isinstance(what_if, Mapping):
                after = what_if.get("probe")
                level = after.get("verdict", {}).get("level") if isinstance(after, Mapping) else None
                advice.append(printable(f"{what_if.get('text')}: {probe_numbers(after)} (probe verdict {level})"))
        rows.append(
            {
                "site": printable(str(site.get("site"))),
                "level": printable(str(site.get("level"))),
                "summary": printable(str(site.get("summary"))),
                "measured": probe_numbers(probe),
                "settle": printable(str(verdict.get("settle"))) if verdict.get("settle") else None,
                "factors": [
                    printable(str(f.get("text"))) for f in _list(site.get("factors")) if isinstance(f, Mapping)
                ],
                "advice": advice,
            }
        )
    return rows


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def preflight_text(preflight: Mapping[str, Any], job_name: str) -> str:
    """The pre-flight as the terminal shows it."""
    lines = [f"Pre-flight of {printable(job_name)} (probe attack on synthetic images; no site data used)"]
    for row in site_rows(preflight):
        lines.append("")
        lines.append(f"{row['site']}: {LEVEL_WORDS.get(row['level'], row['level'])} — probe: {row['measured']}")
        lines.append(f"  evidence: {row['summary']}")
        if row["settle"]:
            lines.append(f"  would settle it: {row['settle']}")
        lines += [f"  risk factor: {text}" for text in row["factors"]]
        lines += [f"  if you {text}" for text in row["advice"]]
    if preflight.get("refused"):
        lines.append("")
        lines.append(
            "The job's policy refuses to start it: " + ", ".join(map(str, preflight.get("high_risk_sites", [])))
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class PreflightReading:
    """The pre-flight beside a ledger: its rows for the page, or why there is none."""

    rows: tuple[dict[str, Any], ...] = ()
    refused: bool = False
    note: str = "this job ran without the pre-flight check (no preflight.json beside the ledger)"

    @property
    def present(self) -> bool:
        return bool(self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "present": self.present,
            "refused": self.refused,
            "sites": {row["site"]: row["level"] for row in self.rows},
            "note": None if self.present else self.note,
        }


def read_preflight(ledger: Path) -> PreflightReading:
    """The pre-flight the server wrote next to ``ledger`` (``preflight.json``), validated before use."""
    from medpfl_app.audit.preflight import PREFLIGHT_FILE, PREFLIGHT_REPORT_SCHEMA

    path = ledger.parent / PREFLIGHT_FILE
    if not path.is_file():
        return PreflightReading()
    try:
        if path.stat().st_size > MAX_PREFLIGHT_BYTES:
            return PreflightReading(note=f"{PREFLIGHT_FILE} is larger than {MAX_PREFLIGHT_BYTES} bytes; not read")
        content = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return PreflightReading(note=printable(f"{PREFLIGHT_FILE} is unreadable: {error}"))
    if not isinstance(content, Mapping) or content.get("schema") != PREFLIGHT_REPORT_SCHEMA:
        return PreflightReading(note=f"{PREFLIGHT_FILE} is not a {PREFLIGHT_REPORT_SCHEMA} pre-flight; not shown")
    rows = tuple(site_rows(content))
    if not rows:
        return PreflightReading(note=f"{PREFLIGHT_FILE} lists no site")
    return PreflightReading(rows=rows, refused=content.get("refused") is True)
