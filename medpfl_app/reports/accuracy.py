"""Model accuracy and validation loss per round from NVFlare's ``metrics/round_metrics.jsonl``, shown next to leakage.

Each line: ``{"round": 0, "aggregated_metrics": [{"name": "accuracy", "value": 0.25}], "sites": [{"name":
"site-1", "metrics": [...]}]}``. Like the ledger, the file may end in a truncated line; bad lines are counted and
skipped and
reported by count and line number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medpfl_app.reports.fields import number

METRICS_FILE = "round_metrics.jsonl"
#: Metric names read as "accuracy", in order of preference (validation accuracy first).
ACCURACY_NAMES = ("val_accuracy", "accuracy", "val_acc", "acc")
#: Metric names read as the validation loss, in order of preference.
LOSS_NAMES = ("val_loss", "validation_loss", "loss")


@dataclass(frozen=True)
class Accuracy:
    """Accuracy by round: aggregated (the global model) and per site; empty when no metrics file was found.

    ``loss`` is the global model's validation loss by round (``loss_metric`` names it), when the file has one.
    """

    path: Path | None = None
    metric: str | None = None
    aggregated: Mapping[int, float] = field(default_factory=dict)
    per_site: Mapping[str, Mapping[int, float]] = field(default_factory=dict)
    skipped_lines: tuple[int, ...] = ()
    loss_metric: str | None = None
    loss: Mapping[int, float] = field(default_factory=dict)

    def skipped_text(self) -> str:
        """``"2 of the file's lines could not be read (lines 3, 7)"``, or ``""``."""
        count = len(self.skipped_lines)
        if not count:
            return ""
        lines = ", ".join(map(str, self.skipped_lines))
        return (
            f"{count} line{'s' if count != 1 else ''} of {self.path.name if self.path else METRICS_FILE} could "
            f"not be read and {'were' if count != 1 else 'was'} skipped (line{'s' if count != 1 else ''} "
            f"{lines})"
        )

    def __bool__(self) -> bool:
        return bool(self.aggregated or self.per_site)


def find_round_metrics(root: Path) -> Path | None:
    """The ``metrics/round_metrics.jsonl`` under ``root`` (the first in sorted order if several), or ``None``."""
    found = sorted(p for p in root.rglob(METRICS_FILE) if p.parent.name == "metrics" and p.is_file())
    return found[0] if found else None


def _pick(metrics: Any, names: tuple[str, ...] = ACCURACY_NAMES) -> tuple[str, float] | None:
    values = {}
    for entry in metrics if isinstance(metrics, list) else ():
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            value = number(entry.get("value"))
            if value is not None:
                values[entry["name"]] = value
    for name in names:
        if name in values:
            return name, values[name]
    return None


def read_accuracy(path: Path | None) -> Accuracy:
    """Read accuracy per round from ``path``; ``None`` gives an empty `Accuracy`."""
    if path is None:
        return Accuracy()
    aggregated: dict[int, float] = {}
    per_site: dict[str, dict[int, float]] = {}
    names: set[str] = set()
    loss: dict[int, float] = {}
    loss_names: set[str] = set()
    skipped: list[int] = []
    for number_, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            skipped.append(number_)
            continue
        round_number = row.get("round") if isinstance(row, dict) else None
        if isinstance(round_number, bool) or not isinstance(round_number, int):
            skipped.append(number_)
            continue
        if picked := _pick(row.get("aggregated_metrics")):
            names.add(picked[0])
            aggregated[round_number] = picked[1]
        if picked := _pick(row.get("aggregated_metrics"), LOSS_NAMES):
            loss_names.add(picked[0])
            loss[round_number] = picked[1]
        sites = row.get("sites")
        for site in sites if isinstance(sites, list) else ():
            if not isinstance(site, Mapping) or not isinstance(site.get("name"), str):
                continue
            if picked := _pick(site.get("metrics")):
                names.add(picked[0])
                per_site.setdefault(site["name"], {})[round_number] = picked[1]
    return Accuracy(
        path=path,
        metric=", ".join(sorted(names)) or None,
        aggregated=aggregated,
        per_site=per_site,
        skipped_lines=tuple(skipped),
        loss_metric=", ".join(sorted(loss_names)) or None,
        loss=loss,
    )
