"""The ledger's records as a site × round view: cells, audit configurations and the verdict.

Records are untrusted input (the ledger is plain JSON a site name or reason can be smuggled into), so every field
is read defensively here: a wrong type becomes ``None`` or a note, never an exception, and nothing is escaped here
(the HTML template escapes; the terminal prints plain text).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Worst first. ``unknown`` (nothing measured) ranks below every measured level: the verdict names the worst
#: *measured* risk and counts the unknown site-rounds separately, so they are never hidden behind a "low".
RISK_ORDER: tuple[str, ...] = ("high", "medium", "low", "unknown")
RISK_RANK: dict[str, int] = {level: len(RISK_ORDER) - index for index, level in enumerate(RISK_ORDER)}
RISK_MEANINGS: dict[str, str] = {
    "high": "images were reconstructed: the site measured a close reconstruction (SSIM or identifiability above the "
    "policy's high thresholds, or any image counted as a successful attack), or, without site scores, the server saw "
    "a single-image update with its BatchNorm statistics exposed",
    "medium": "partial leakage: some structure (SSIM above the medium threshold) or leakage beyond an uninformed "
    "prior, or, without site scores, labels recovered or BatchNorm statistics exposed",
    "low": "the site measured no meaningful reconstruction under this attack and budget (evidence, not a guarantee "
    "against stronger attacks)",
    "unknown": "no level could be set: not audited, not auditable, or no site scores and no server-side indicator",
}


def number(value: Any) -> float | None:
    """A finite float from a JSON value, or ``None`` (bools, strings, NaN and infinities are not scores)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def text(value: Any) -> str | None:
    """A string field as text (``None`` stays ``None``; other JSON values are shown as compact JSON)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


#: Budget fields that are measured per audit (early stopping, timing), not configured: they stay out of the
#: configuration's identity and are shown per record instead.
MEASURED_BUDGET_KEYS = frozenset(
    {"iterations", "evaluations", "wall_time_s", "audit_wall_time_s", "queue_wait_s", "stop_reason"}
)


@dataclass(frozen=True)
class AuditConfig:
    """One attack + configured budget + threat model; every leakage number carries its tag (``A1``, ``A2`` …).

    Attributes:
        tag: Short name shown next to each number.
        attack: The attack's registry name.
        budget: The configured budget (restarts, time limit, image cap, …) as text.
        threat_model: What the attacker knew or assumed, as text (every recorded field).
        threat_name: The threat model's headline (its declared adversary).
        iterations: The iterations the attack actually ran, over the records of this configuration.
        time_limited: How many of those attacks the wall-clock limit cut short (a weaker attack than configured).
    """

    tag: str
    attack: str
    budget: str
    threat_model: str
    threat_name: str
    iterations: tuple[int, ...] = ()
    time_limited: int = 0

    def iterations_text(self) -> str:
        """The iterations actually run (one value or the range over records) and how many hit the time limit."""
        if not self.iterations:
            return "iterations not recorded"
        low, high = min(self.iterations), max(self.iterations)
        run = f"{low} iterations run" if low == high else f"{low}–{high} iterations run"
        return run + (f", {self.time_limited} stopped by the time limit" if self.time_limited else "")

    def describe(self) -> str:
        """The full line: attack, configured budget, iterations run and the whole threat model."""
        return f"attack {self.attack} ({self.budget}; {self.iterations_text()}); threat model: {self.threat_model}"

    def short(self) -> str:
        """A compact line for headlines; the tag leads to the full description."""
        budget = f"{self.budget}; {self.iterations_text()}"
        return f"attack {self.attack} ({budget}), threat model {self.threat_name} [{self.tag}]"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON."""
        return {"tag": self.tag, "attack": self.attack, "budget": self.budget, "threat_model": self.threat_model,
                "threat_name": self.threat_name, "iterations_run": list(self.iterations),
                "stopped_by_time_limit": self.time_limited}


def _budget_text(budget: Mapping[str, Any]) -> str:
    parts: list[str] = []
    if (restarts := number(budget.get("restarts"))) is not None:
        parts.append(f"{restarts:g} restart{'s' if restarts != 1 else ''}")
    if (limit := number(budget.get("time_limit_s"))) is not None:
        parts.append(f"≤ {limit:g} s")
    shown = {"attack", "restarts", "time_limit_s"} | MEASURED_BUDGET_KEYS
    for key in sorted(k for k in budget if k not in shown and budget[k] is not None):
        parts.append(f"{key}={text(budget[key])}")
    return ", ".join(parts) or "budget not recorded"


def _threat_name(threat: Any) -> str:
    if isinstance(threat, Mapping):
        for key in ("name", "declared", "attacker", "adversary", "description"):
            if isinstance(threat.get(key), str):
                return threat[key].split(":")[0].split("(")[0].strip() or "not recorded"
    if isinstance(threat, str):
        return threat.split(":")[0].split("(")[0].strip() or "not recorded"
    return "not recorded"


def _threat_text(threat: Any) -> str:
    if isinstance(threat, str):
        return threat
    if isinstance(threat, Mapping):
        return "; ".join(f"{k}={text(v)}" for k, v in sorted(threat.items())) or "not recorded"
    return "not recorded" if threat is None else (text(threat) or "not recorded")


def _config_key(record: Mapping[str, Any]) -> str:
    budget = {k: v for k, v in _mapping(record.get("attack_budget")).items() if k not in MEASURED_BUDGET_KEYS}
    return json.dumps([budget, record.get("threat_model")], sort_keys=True, default=str)


def _configs(records: Sequence[Mapping[str, Any]]) -> dict[str, AuditConfig]:
    """One `AuditConfig` per distinct configured budget + threat model among the audited records, in ledger order."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        if record.get("status") == "audited":
            grouped.setdefault(_config_key(record), []).append(record)
    configs: dict[str, AuditConfig] = {}
    for index, (key, group) in enumerate(grouped.items(), start=1):
        budget = _mapping(group[0].get("attack_budget"))
        iterations = sorted({int(v) for r in group
                             if (v := number(_mapping(r.get("attack_budget")).get("iterations"))) is not None})
        configs[key] = AuditConfig(
            tag=f"A{index}",
            attack=text(budget.get("attack")) or "not recorded",
            budget=_budget_text(budget),
            threat_model=_threat_text(group[0].get("threat_model")),
            threat_name=_threat_name(group[0].get("threat_model")),
            iterations=tuple(iterations),
            time_limited=sum(_mapping(r.get("attack_budget")).get("stop_reason") == "time_limit" for r in group),
        )
    return configs


@dataclass(frozen=True)
class Cell:
    """What the report shows for one site in one round (the worst of its records, if several)."""

    site: str
    round: int
    status: str
    risk: str
    reason: str | None
    scores_status: str | None
    scores_reason: str | None
    ssim_max: float | None
    psnr_max: float | None
    success_rate: float | None
    label_accuracy: float | None
    epsilon_client: float | None
    epsilon_sample: float | None
    delta: float | None
    config: AuditConfig | None
    defenses: tuple[Mapping[str, Any], ...]
    record_count: int
    record: Mapping[str, Any] = field(repr=False)

    @property
    def measured(self) -> bool:
        """Whether any leakage was actually scored at the site."""
        return self.status == "audited" and self.scores_status == "scored"

    def epsilon_text(self) -> str:
        """Formal ε so far, naming its level; "none" when no formal DP was applied."""
        parts = []
        if self.epsilon_client is not None:
            parts.append(f"ε={self.epsilon_client:.3g} (client-level)")
        if self.epsilon_sample is not None:
            parts.append(f"ε={self.epsilon_sample:.3g} (sample-level)")
        if not parts:
            return "none (no formal DP)"
        return ", ".join(parts) + (f", δ={self.delta:.0e}" if self.delta is not None else "")


@dataclass(frozen=True)
class Note:
    """A site-round that was not measured, and why (status and reason straight from the record)."""

    site: str
    round: int
    status: str
    reason: str


@dataclass(frozen=True)
class PolicyAction:
    """An update the audit policy acted on (e.g. kept out of aggregation), straight from its record."""

    site: str
    round: int
    action: str
    reason: str


@dataclass(frozen=True)
class AuditView:
    """Everything the reports show, computed once from the ledger's records."""

    sites: tuple[str, ...]
    rounds: tuple[int, ...]
    cells: Mapping[tuple[str, int], Cell]
    configs: tuple[AuditConfig, ...]
    notes: tuple[Note, ...]
    malformed: tuple[str, ...]
    records: tuple[Mapping[str, Any], ...]
    actions: tuple[PolicyAction, ...] = ()

    def cell(self, site: str, round_number: int) -> Cell | None:
        """The cell of ``site`` in ``round_number``, or ``None`` when the ledger has no record for it."""
        return self.cells.get((site, round_number))

    def missing(self) -> tuple[tuple[str, int], ...]:
        """Site-rounds with no record at all (e.g. the site dropped out, or the audit never wrote one)."""
        return tuple((s, r) for r in self.rounds for s in self.sites if (s, r) not in self.cells)

    def worst(self, round_number: int | None = None) -> Cell | None:
        """The record with the worst risk (ties: highest SSIM, PSNR, success rate, then the latest round)."""
        cells = [c for c in self.cells.values() if round_number is None or c.round == round_number]
        return max(cells, key=_severity, default=None)

    def counts(self, round_number: int | None = None) -> dict[str, dict[str, int]]:
        """Site-rounds by status, risk and site-score status."""
        cells = [c for c in self.cells.values() if round_number is None or c.round == round_number]
        result: dict[str, dict[str, int]] = {"status": {}, "risk": {}, "site_scores": {}}
        for cell in cells:
            result["status"][cell.status] = result["status"].get(cell.status, 0) + 1
            result["risk"][cell.risk] = result["risk"].get(cell.risk, 0) + 1
            key = cell.scores_status or "none"
            result["site_scores"][key] = result["site_scores"].get(key, 0) + 1
        return result


def _severity(cell: Cell) -> tuple[float, ...]:
    def score(value: float | None) -> float:
        return -math.inf if value is None else value

    return (RISK_RANK.get(cell.risk, 0), score(cell.ssim_max), score(cell.psnr_max), score(cell.success_rate),
            cell.round)


def build_view(records: Sequence[Mapping[str, Any]]) -> AuditView:
    """Group records by site and round, tag their audit configurations and collect the not-measured reasons.

    Args:
        records: Intact ledger records (`medpfl_app.audit.ledger.read_ledger`), in ledger order.

    Returns:
        The view. Records without a usable site or round are listed in ``malformed`` instead of the table.
    """
    configs = _configs(records)
    grouped: dict[tuple[str, int], list[Cell]] = {}
    malformed: list[str] = []
    for index, record in enumerate(records, start=1):
        site, round_number = record.get("site"), record.get("round")
        if not isinstance(site, str) or not site or isinstance(round_number, bool) or not isinstance(round_number, int):
            why = f"{text(record.get('status'))}: {text(record.get('reason')) or 'no reason recorded'}"
            malformed.append(f"record {index}: site {text(site)!s} / round {text(round_number)!s} unusable ({why})")
            continue
        cell = _cell(record, site, round_number, configs)
        grouped.setdefault((site, round_number), []).append(cell)
    cells: dict[tuple[str, int], Cell] = {}
    notes: list[Note] = []
    actions: list[PolicyAction] = []
    for key, group in grouped.items():
        worst = max(group, key=_severity)
        cells[key] = dataclasses.replace(worst, record_count=len(group))
        for cell in group:
            action = _mapping(cell.record.get("policy_action"))
            if action:
                actions.append(PolicyAction(cell.site, cell.round, text(action.get("action")) or "unnamed action",
                                            text(action.get("reason")) or "no reason recorded"))
            if cell.status != "audited":
                notes.append(Note(cell.site, cell.round, cell.status, cell.reason or "no reason recorded"))
            elif cell.scores_status != "scored":
                why = cell.scores_reason or "no reason recorded"
                notes.append(Note(cell.site, cell.round, f"site scores {cell.scores_status or 'missing'}", why))
    return AuditView(
        sites=tuple(sorted({s for s, _ in cells})),
        rounds=tuple(sorted({r for _, r in cells})),
        cells=cells,
        configs=tuple(configs.values()),
        notes=tuple(sorted(notes, key=lambda n: (n.round, n.site))),
        malformed=tuple(malformed),
        records=tuple(records),
        actions=tuple(sorted(actions, key=lambda a: (a.round, a.site))),
    )


def _cell(record: Mapping[str, Any], site: str, round_number: int, configs: dict[str, AuditConfig]) -> Cell:
    status = text(record.get("status")) or "missing"
    risk = record.get("risk") if record.get("risk") in RISK_ORDER else "unknown"
    scores = _mapping(record.get("site_scores"))
    epsilon = _mapping(record.get("epsilon"))
    defenses = record.get("defenses")
    config = configs.get(_config_key(record)) if status == "audited" else None
    return Cell(
        site=site,
        round=round_number,
        status=status,
        risk=str(risk),
        reason=text(record.get("reason")),
        scores_status=text(scores.get("status")),
        scores_reason=text(scores.get("reason")),
        ssim_max=number(scores.get("ssim_max")),
        psnr_max=number(scores.get("psnr_max")),
        success_rate=number(scores.get("attack_success_rate")),
        label_accuracy=number(scores.get("label_accuracy")),
        epsilon_client=number(epsilon.get("client_dp")),
        epsilon_sample=number(epsilon.get("dp_sgd")),
        delta=number(epsilon.get("delta")),
        config=config,
        defenses=tuple(d for d in defenses if isinstance(d, Mapping)) if isinstance(defenses, list) else (),
        record_count=1,
        record=record,
    )


def defense_chains(view: AuditView) -> dict[str, list[tuple[tuple[int, ...], tuple[Mapping[str, Any], ...]]]]:
    """Per site, each distinct defense chain and the rounds it was applied in (chains can change mid-job)."""
    chains: dict[str, list[tuple[tuple[int, ...], tuple[Mapping[str, Any], ...]]]] = {}
    for site in view.sites:
        seen: dict[str, tuple[list[int], tuple[Mapping[str, Any], ...]]] = {}
        for round_number in view.rounds:
            cell = view.cell(site, round_number)
            if cell is None:
                continue
            key = json.dumps(cell.defenses, sort_keys=True, default=str)
            seen.setdefault(key, ([], cell.defenses))[0].append(round_number)
        chains[site] = [(tuple(rounds), chain) for rounds, chain in seen.values()]
    return chains


def defense_label(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    """(name, stated guarantee, installed by) of one ``medpfl_defenses`` entry, as plain text."""
    name = text(entry.get("defense")) or "unnamed defense"
    guarantee = text(entry.get("guarantee")) or "guarantee not stated (treat as heuristic)"
    installed = text(entry.get("installed_by")) or "not recorded"
    return name, guarantee, installed


def params_text(entry: Mapping[str, Any]) -> str:
    """The defense's parameters as ``key=value`` pairs."""
    params = _mapping(entry.get("params"))
    return ", ".join(f"{k}={text(v)}" for k, v in sorted(params.items()))


def verdict(view: AuditView, skipped_lines: Iterable[int] = ()) -> dict[str, Any]:
    """The summary verdict: the worst measured risk, where, under which attack, budget and threat model.

    Returns:
        Plain JSON: ``risk``, ``site``, ``round``, ``scores``, ``config``, ``epsilon``, ``headline`` (one sentence)
        and ``coverage`` (counts of what could not be measured, so a "low" is never read as complete).
    """
    skipped = list(skipped_lines)
    counts = view.counts()
    total = len(view.cells)
    unmeasured = sum(1 for c in view.cells.values() if not c.measured)
    coverage = {
        "site_rounds": total,
        "measured": total - unmeasured,
        "not_measured": unmeasured,
        "missing_site_rounds": len(view.missing()),
        "skipped_ledger_lines": len(skipped),
        "malformed_records": len(view.malformed),
        **counts,
    }
    worst = view.worst()
    if worst is None:
        return {"risk": "unknown", "site": None, "round": None, "scores": None, "config": None, "epsilon": None,
                "headline": "The ledger holds no usable audit record.", "coverage": coverage}
    scores = {"ssim_max": worst.ssim_max, "psnr_max": worst.psnr_max, "attack_success_rate": worst.success_rate,
              "label_accuracy": worst.label_accuracy}
    if worst.risk == "unknown":
        headline = f"No measured risk: none of the {total} site-rounds has site-scored leakage."
    else:
        shown = ", ".join(filter(None, [
            f"SSIM {worst.ssim_max:.2f}" if worst.ssim_max is not None else None,
            f"PSNR {worst.psnr_max:.1f} dB" if worst.psnr_max is not None else None,
            f"attack success {worst.success_rate:.0%}" if worst.success_rate is not None else None,
        ])) or "no site scores"
        if worst.measured:
            shown += "; worst image"
        else:
            shown = f"{shown}; level from server-side indicators: {_indicators_text(worst.record)}"
        under = worst.config.short() if worst.config else "attack not recorded"
        run = number(_mapping(worst.record.get("attack_budget")).get("iterations"))
        if run is not None and worst.config and len(worst.config.iterations) > 1:
            under += f", this record {run:g} iterations"
        headline = (f"Worst risk {worst.risk.upper()}: {worst.site}, round {worst.round} ({shown}) "
                    f"under {under}; formal ε: {worst.epsilon_text()}.")
    return {
        "risk": worst.risk,
        "site": worst.site,
        "round": worst.round,
        "scores": scores,
        "config": worst.config.to_dict() if worst.config else None,
        "epsilon": {"client_dp": worst.epsilon_client, "dp_sgd": worst.epsilon_sample, "delta": worst.delta},
        "headline": headline,
        "coverage": coverage,
    }


def _indicators_text(record: Mapping[str, Any]) -> str:
    indicators = _mapping(record.get("server_indicators"))
    return ", ".join(f"{k}={text(v)}" for k, v in sorted(indicators.items())) or "none recorded"
