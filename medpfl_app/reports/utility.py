"""Did the model learn? Validation accuracy and loss per round beside the leakage, and a warning when it did not.

Low leakage from a model that never trained is no achievement: a defense that stops learning also stops leakage.
The report therefore warns when the global model's last validation accuracy is at chance for the number of classes
(within `CHANCE_MARGIN`), when its validation loss did not decrease from the first round to the last, or when that
loss is absurd: above `ABSURD_LOSS_FACTOR` × ln(classes), the cross-entropy of a uniform guess (above
`ABSURD_LOSS_UNKNOWN_CLASSES` when the number of classes is not known).

The number of classes comes from the records (``model.num_classes``, ``threat_model.num_classes``, or the length of
the label histogram the audit recovered), else from the job's server config beside the ledger.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.contracts.record import AuditRecord
from medpfl_app.reports.accuracy import Accuracy
from medpfl_app.reports.fields import integer, mapping

#: Accuracy this close to 1 / classes (absolute) counts as chance.
CHANCE_MARGIN = 0.05
#: A validation loss above this many times ln(classes) is worse than guessing uniformly by far.
ABSURD_LOSS_FACTOR = 3.0
ABSURD_LOSS_UNKNOWN_CLASSES = 10.0
#: Where the server's job config sits under the run folder (`medpfl_app.nvflare.server.audit_filter.AuditFilter` args).
SERVER_CONFIG = "config_fed_server.json"


@dataclass(frozen=True)
class Utility:
    """The model's utility next to the leakage: per-round values, chance level and warnings."""

    rounds: tuple[int, ...]
    accuracy: Mapping[int, float]
    loss: Mapping[int, float]
    accuracy_metric: str | None
    loss_metric: str | None
    num_classes: int | None
    classes_source: str
    warnings: tuple[str, ...]

    @property
    def chance(self) -> float | None:
        """The accuracy of a blind guess (1 / classes)."""
        return 1.0 / self.num_classes if self.num_classes else None

    @property
    def learned(self) -> bool | None:
        """False when a warning says the model did not learn; None when nothing was measured."""
        if not self.accuracy and not self.loss:
            return None
        return not self.warnings


def _from_records(records: Iterable[AuditRecord]) -> int | None:
    for record in records:
        for section in (record.model, record.threat_model, record.training_facts):
            found = integer(mapping(section).get("num_classes"))
            if found and found > 1:
                return found
    lengths = {
        len(h) for r in records if isinstance(h := mapping(r.server_indicators).get("recovered_label_histogram"), list)
    }
    found = lengths.pop() if len(lengths) == 1 else 0
    return found if found > 1 else None


def _find_key(value: Any, key: str) -> int | None:
    if isinstance(value, Mapping):
        if (found := integer(value.get(key))) is not None and found > 1:
            return found
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            if (found := _find_key(item, key)) is not None:
                return found
    return None


def _from_config(ledger: Path) -> int | None:
    for path in sorted(ledger.parent.parent.glob(f"app*/config/{SERVER_CONFIG}")):
        try:
            found = _find_key(json.loads(path.read_text(encoding="utf-8")), "num_classes")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if found is not None:
            return found
    return None


def number_of_classes(records: Iterable[AuditRecord], ledger: Path) -> tuple[int | None, str]:
    """(classes, where that came from) — see the module docstring."""
    records = list(records)
    if (found := _from_records(records)) is not None:
        return found, "the audit records"
    if (found := _from_config(ledger)) is not None:
        return found, f"the job's {SERVER_CONFIG}"
    return None, "not recorded"


def _warnings(accuracy: Mapping[int, float], loss: Mapping[int, float], classes: int | None) -> list[str]:
    found: list[str] = []
    if accuracy and classes:
        last_round = max(accuracy)
        last, chance = accuracy[last_round], 1.0 / classes
        if last <= chance + CHANCE_MARGIN:
            found.append(
                f"validation accuracy in the last round ({last_round}) is {last:.2f}, at or below chance for "
                f"{classes} classes ({chance:.2f})"
            )
    if len(loss) >= 2:
        first, last_round = min(loss), max(loss)
        if loss[last_round] >= loss[first]:
            found.append(
                f"validation loss did not decrease: {loss[first]:.3g} in round {first}, "
                f"{loss[last_round]:.3g} in round {last_round}"
            )
    if loss:
        last_round = max(loss)
        limit = ABSURD_LOSS_FACTOR * math.log(classes) if classes else ABSURD_LOSS_UNKNOWN_CLASSES
        if loss[last_round] > limit or not math.isfinite(loss[last_round]):
            guess = f" (a uniform guess over {classes} classes scores {math.log(classes):.2f})" if classes else ""
            found.append(
                f"validation loss in the last round ({last_round}) is {loss[last_round]:.3g}, far above "
                f"any model that learned{guess}"
            )
    return found


def assess_utility(accuracy: Accuracy, records: Iterable[AuditRecord], ledger: Path) -> Utility:
    """The global model's per-round accuracy and loss, the chance level, and why it did not learn (if so)."""
    classes, source = number_of_classes(records, ledger)
    return Utility(
        rounds=tuple(sorted(set(accuracy.aggregated) | set(accuracy.loss))),
        accuracy=dict(accuracy.aggregated),
        loss=dict(accuracy.loss),
        accuracy_metric=accuracy.metric,
        loss_metric=accuracy.loss_metric,
        num_classes=classes,
        classes_source=source,
        warnings=tuple(_warnings(accuracy.aggregated, accuracy.loss, classes)),
    )
