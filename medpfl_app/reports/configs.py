"""Audit configurations: one attack + configured budget + threat model, tagged ``A1``, ``A2`` … and put in words.

Tags are deterministic: configurations are numbered in the sorted order of their content (the configured budget and
threat model as sorted-keys JSON), never in the order records reached the ledger. Audits finish in whatever order
the worker gets to them, so ledger order changes between runs of the same job; the tags must not.

Budget fields the audit measures per update (iterations run, wall time, why it stopped, …) are not part of a
configuration's identity: they are shown per record instead (`MEASURED_BUDGET_KEYS`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medpfl_app.contracts.record import AuditRecord
from medpfl_app.reports.fields import checked, mapping, text, value_words
from medpfl_app.reports.records import RecordView

#: Budget fields that are measured per audit (early stopping, timing), not configured.
MEASURED_BUDGET_KEYS = frozenset(
    {
        "iterations",
        "evaluations",
        "wall_time_s",
        "audit_wall_time_s",
        "queue_wait_s",
        "stop_reason",
        "time_spent_s",
        "stages_run",
        "best_stage",
        "ladder_complete",
        "settle",
        "not_attacked",
        "update_mode",
        "reduced",
    }
)

#: Budget fields in words (``{}`` takes the value); fields not listed are shown as "<name in words>: value".
_BUDGET_WORDS: dict[str, str] = {
    "max_images": "at most {} images attacked per update",
    "max_local_steps": "at most {} local steps unrolled",
    "escalations": "up to {} escalations",
    "escalation_factor": "×{} iterations per escalation",
    "stop_loss": "stops once the matching loss is below {}",
}
_OPTION_WORDS: dict[str, str] = {
    "lr": "learning rate",
    "tv": "total-variation weight",
    "objective": "objective",
    "signed": "signed gradients",
    "lr_decay": "learning-rate decay",
}
#: Threat-model facts in words, in the order shown.
_THREAT_WORDS: tuple[tuple[str, str], ...] = (
    ("batch_size", "batch size {}"),
    ("num_images", "{} image(s) in the update"),
    ("local_steps", "{} local step(s)"),
    ("learning_rate", "learning rate {}"),
    ("optimizer", "optimiser {}"),
    ("labels_known", "labels known: {}"),
    ("bn_buffers_shared", "BatchNorm buffers shared: {}"),
    ("bn_train_mode", "BatchNorm in training mode: {}"),
    ("image_shape", "image {}"),
    ("update_kind", "update kind {}"),
)


def budget_parts(budget: Mapping[str, Any]) -> list[str]:
    """The configured budget as short phrases (restarts, time limits, caps, optimiser options)."""
    parts: list[str] = []
    if (restarts := checked(budget.get("restarts"), "restarts")) is not None:
        parts.append(f"{restarts:g} restart{'s' if restarts != 1 else ''}")
    limit = checked(budget.get("time_limit_s"), "time_limit_s")
    whole = checked(budget.get("time_budget_s"), "time_budget_s")
    if whole is not None:
        parts.append(f"time budget {whole:g} s per update")
    if limit is not None and limit != whole:
        parts.append(f"≤ {limit:g} s")
    shown = {"attack", "restarts", "time_limit_s", "time_budget_s", "options"} | MEASURED_BUDGET_KEYS
    for key in sorted(k for k in budget if k not in shown and budget[k] is not None):
        words = _BUDGET_WORDS.get(key)
        parts.append(
            words.format(value_words(budget[key])) if words else f"{key.replace('_', ' ')}: {value_words(budget[key])}"
        )
    options = mapping(budget.get("options"))
    if options:
        parts.append(
            "optimiser "
            + ", ".join(
                f"{_OPTION_WORDS.get(k, k.replace('_', ' '))} {value_words(v)}" for k, v in sorted(options.items())
            )
        )
    return parts


def threat_name(threat: Any) -> str:
    """The threat model's headline (its declared adversary, up to the first colon or parenthesis)."""
    if isinstance(threat, Mapping):
        for key in ("name", "declared", "attacker", "adversary", "description"):
            if isinstance(threat.get(key), str):
                return threat[key].split(":")[0].split("(")[0].strip() or "not recorded"
    if isinstance(threat, str):
        return threat.split(":")[0].split("(")[0].strip() or "not recorded"
    return "not recorded"


def threat_facts(threat: Any) -> tuple[str, ...]:
    """What the attacker knew, one phrase per recorded fact (the declared text first when there is one)."""
    if isinstance(threat, str):
        return (threat,)
    if not isinstance(threat, Mapping):
        return ("not recorded",)
    facts: list[str] = []
    declared = threat.get("declared") or threat.get("attacker")
    if isinstance(declared, str):
        facts.append(declared)
    known = {"declared", "attacker", "name"}
    for key, words in _THREAT_WORDS:
        if threat.get(key) is not None:
            shown = words.format(value_words(threat[key]))
            facts.append(shown.replace("(s)", "" if threat[key] == 1 else "s"))
            known.add(key)
    worst = threat.get("assumed_worst_case")
    known.add("assumed_worst_case")
    if worst:
        facts.append(f"assumed worst case for: {value_words(worst)}")
    facts += [
        f"{k.replace('_', ' ')}: {value_words(v)}"
        for k, v in sorted(threat.items())
        if k not in known and v is not None
    ]
    return tuple(facts) or ("not recorded",)


@dataclass(frozen=True)
class AuditConfig:
    """One attack + configured budget + threat model; every leakage number carries its tag (``A1``, ``A2`` …).

    Attributes:
        tag: Short name shown next to each number (deterministic, see the module docstring).
        attack: The attack's registry name.
        budget: The configured budget, in words.
        threat_model: What the attacker knew or assumed, in words.
        threat_name: The threat model's headline (its declared adversary).
        iterations: The iterations the attack actually ran, over the records of this configuration.
        time_limited: How many of those attacks the wall-clock limit cut short (a weaker attack than configured).
        budget_items: The budget as separate phrases (the table's lines).
        threat_items: The threat model as separate phrases.
        uses: The site-rounds audited under this configuration, ``(site, round)`` in order.
    """

    tag: str
    attack: str
    budget: str
    threat_model: str
    threat_name: str
    iterations: tuple[int, ...] = ()
    time_limited: int = 0
    budget_items: tuple[str, ...] = ()
    threat_items: tuple[str, ...] = ()
    uses: tuple[tuple[str, int], ...] = ()

    def iterations_text(self) -> str:
        """The iterations actually run (one value or the range over records) and how many hit the time limit."""
        if not self.iterations:
            return "iterations not recorded"
        low, high = min(self.iterations), max(self.iterations)
        run = f"{low} iterations run" if low == high else f"{low}–{high} iterations run"
        return run + (f", {self.time_limited} stopped by the time limit" if self.time_limited else "")

    @property
    def threat_declared(self) -> str | None:
        """The threat model's declared sentence, when the record carries one (the first of `threat_items`)."""
        first = self.threat_items[0] if self.threat_items else None
        return first if first is not None and first.startswith(self.threat_name) and len(first) > 40 else None

    @property
    def threat_details(self) -> tuple[str, ...]:
        """The threat model's facts other than its declared sentence."""
        return self.threat_items[1:] if self.threat_declared else self.threat_items

    def uses_text(self) -> str:
        """Which sites and how many updates were audited under this configuration."""
        sites = sorted({site for site, _ in self.uses})
        count = len(self.uses)
        return f"{count} update{'s' if count != 1 else ''} of {', '.join(sites) or 'no site'}"

    def describe(self) -> str:
        """The full line: attack, configured budget, iterations run and the whole threat model."""
        return f"attack {self.attack} ({self.budget}; {self.iterations_text()}); threat model: {self.threat_model}"

    def short(self) -> str:
        """A compact line for headlines; the tag leads to the full description."""
        budget = f"{self.budget}; {self.iterations_text()}"
        return f"attack {self.attack} ({budget}), threat model {self.threat_name} [{self.tag}]"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {
            "tag": self.tag,
            "attack": self.attack,
            "budget": self.budget,
            "threat_model": self.threat_model,
            "threat_name": self.threat_name,
            "iterations_run": list(self.iterations),
            "stopped_by_time_limit": self.time_limited,
            "used_for": [{"site": site, "round": round_number} for site, round_number in self.uses],
        }


def config_key(record: AuditRecord) -> str:
    """A configuration's identity: its configured budget and threat model as sorted-keys JSON."""
    budget = {k: v for k, v in mapping(record.attack_budget).items() if k not in MEASURED_BUDGET_KEYS}
    threat = None if record.threat_model is None else dict(record.threat_model)
    return json.dumps([budget, threat], sort_keys=True, default=str)


def build_configs(views: Sequence[RecordView]) -> dict[str, AuditConfig]:
    """One `AuditConfig` per distinct configured budget + threat model among the audited records, keyed by
    `config_key` and tagged ``A1``, ``A2`` … in the sorted order of those keys (same content → same tag)."""
    grouped: dict[str, list[RecordView]] = {}
    for view in views:
        if view.status == "audited":
            grouped.setdefault(config_key(view.record), []).append(view)
    configs: dict[str, AuditConfig] = {}
    for index, key in enumerate(sorted(grouped), start=1):
        group = grouped[key]
        budget = mapping(group[0].record.attack_budget)
        threat = group[0].record.threat_model
        budget_items = tuple(budget_parts(budget))
        threat_items = threat_facts(threat)
        configs[key] = AuditConfig(
            tag=f"A{index}",
            attack=text(budget.get("attack")) or "not recorded",
            budget=", ".join(budget_items) or "budget not recorded",
            threat_model="; ".join(threat_items),
            threat_name=threat_name(threat),
            iterations=tuple(sorted({v.iterations for v in group if v.iterations is not None})),
            time_limited=sum(
                v.stop_reason == "time_limit" or any(s.stop_reason == "time_limit" for s in v.stages) for v in group
            ),
            budget_items=budget_items,
            threat_items=threat_items,
            uses=tuple(
                sorted(
                    {(v.site, v.round) for v in group if v.site is not None and v.round is not None},
                    key=lambda use: (use[1], use[0]),
                )
            ),
        )
    return configs
