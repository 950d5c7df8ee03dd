"""The ledger's records as a site × round view: cells, coverage, audit configurations and the verdict.

Records are untrusted input (the ledger is plain JSON a site name or reason can be smuggled into), so every field
is read defensively here: a wrong type becomes ``None`` or a note, never an exception; a number outside its valid
range is read as missing and noted (`medpfl_app.reports.fields.checked`). Nothing is escaped here: the HTML
template escapes, and the terminal summary passes every line through `medpfl_app.reports.fields.printable`.

Levels are `medpfl_app.audit.verdict.RiskLevel` values, worst first; schema-1 records are mapped as
`medpfl_app.reports.records` describes. The verdict of a report names the worst level; it is ``low`` only when every
update the server received was measured low, and it always states beside it how many updates are inconclusive,
unscored, not audited, not auditable or lost.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from medpfl_app.audit.verdict import RiskLevel
from medpfl_app.reports.coverage import UNKNOWN_CAUSE, Coverage, build_coverage
from medpfl_app.reports.fields import mapping as _mapping
from medpfl_app.reports.fields import checked, number, text
from medpfl_app.reports.records import LEVEL_RANK, LEVELS, MEANINGS, RecordView, indicators_text, record_view
from medpfl_app.reports.sources import ArrivalsRead, unreadable_text
from medpfl_app.reports.yardstick import Yardstick, build_yardstick

__all__ = ["RISK_MEANINGS", "RISK_ORDER", "AuditConfig", "AuditView", "Cell", "build_view", "number", "text",
           "verdict"]

#: Worst first: the order of `RiskLevel` (high, medium, unscored, inconclusive, low, not_audited, not_auditable).
RISK_ORDER: tuple[str, ...] = LEVELS
RISK_RANK: dict[str, int] = LEVEL_RANK
#: What each level means (`medpfl_app.audit.verdict.LEVEL_MEANINGS`).
RISK_MEANINGS: dict[str, str] = MEANINGS


#: Budget fields that are measured per audit (early stopping, timing), not configured: they stay out of the
#: configuration's identity and are shown per record instead.
MEASURED_BUDGET_KEYS = frozenset(
    {"iterations", "evaluations", "wall_time_s", "audit_wall_time_s", "queue_wait_s", "stop_reason", "time_spent_s",
     "stages_run", "best_stage", "ladder_complete", "settle", "not_attacked", "update_mode", "reduced"}
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
    if (restarts := checked(budget.get("restarts"), "restarts")) is not None:
        parts.append(f"{restarts:g} restart{'s' if restarts != 1 else ''}")
    limit, whole = checked(budget.get("time_limit_s"), "time_limit_s"), checked(budget.get("time_budget_s"),
                                                                               "time_budget_s")
    if whole is not None:
        parts.append(f"time budget {whole:g} s per update")
    if limit is not None and limit != whole:
        parts.append(f"≤ {limit:g} s")
    shown = {"attack", "restarts", "time_limit_s", "time_budget_s"} | MEASURED_BUDGET_KEYS
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


def _configs(views: Sequence[RecordView]) -> dict[str, AuditConfig]:
    """One `AuditConfig` per distinct configured budget + threat model among the audited records, in ledger order."""
    grouped: dict[str, list[RecordView]] = {}
    for view in views:
        if view.status == "audited":
            grouped.setdefault(_config_key(view.record), []).append(view)
    configs: dict[str, AuditConfig] = {}
    for index, (key, group) in enumerate(grouped.items(), start=1):
        budget = _mapping(group[0].record.get("attack_budget"))
        configs[key] = AuditConfig(
            tag=f"A{index}",
            attack=text(budget.get("attack")) or "not recorded",
            budget=_budget_text(budget),
            threat_model=_threat_text(group[0].record.get("threat_model")),
            threat_name=_threat_name(group[0].record.get("threat_model")),
            iterations=tuple(sorted({v.iterations for v in group if v.iterations is not None})),
            time_limited=sum(v.stop_reason == "time_limit" or any(s.stop_reason == "time_limit" for s in v.stages)
                             for v in group),
        )
    return configs


@dataclass(frozen=True)
class Cell:
    """What the report shows for one site in one round (the worst of its records, if several).

    ``risk`` is the level (a `RiskLevel` value); ``detail`` the worst record's full view (evidence, settle, ladder).
    """

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
    detail: RecordView = field(repr=False)
    record: Mapping[str, Any] = field(repr=False)

    @property
    def measured(self) -> bool:
        """Whether the level rests on a measurement of this update (high, medium or low)."""
        return RiskLevel(self.risk).measured

    @property
    def scored(self) -> bool:
        """Whether the site scored the reconstructions (leakage numbers exist for the plots)."""
        return self.status == "audited" and self.scores_status == "scored"

    @property
    def evidence(self) -> str:
        return self.detail.evidence

    @property
    def settle(self) -> str | None:
        return self.detail.settle

    @property
    def invalid(self) -> tuple[str, ...]:
        """The record's values outside their valid range (read as missing), one note each."""
        return self.detail.invalid

    def epsilon_text(self) -> str:
        """Formal ε so far, naming its level; "none" when no formal DP was applied (or "invalid", see `invalid`)."""
        if any(note.startswith("epsilon.") for note in self.invalid):
            return "ε invalid (out of range, not used)"
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
    """An audited site-round whose site scores are missing, and why (straight from the record)."""

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
    """Everything the reports show, computed once from the ledger's records and the server's arrivals.

    Attributes:
        sites, rounds: Every site and round with a record or an arrival.
        cells: The worst record per site-round.
        details: Every placed record, in ledger order (evidence, settle, ladder).
        coverage: Received vs recorded per site and round (unknown without an arrivals file).
        yardstick: Attack budget spent and metric settings, from the records.
    """

    sites: tuple[str, ...]
    rounds: tuple[int, ...]
    cells: Mapping[tuple[str, int], Cell]
    configs: tuple[AuditConfig, ...]
    notes: tuple[Note, ...]
    malformed: tuple[str, ...]
    records: tuple[Mapping[str, Any], ...]
    actions: tuple[PolicyAction, ...] = ()
    details: tuple[RecordView, ...] = ()
    coverage: Coverage = field(default_factory=lambda: build_coverage((), None))
    yardstick: Yardstick = field(default_factory=lambda: build_yardstick(()))

    def cell(self, site: str, round_number: int) -> Cell | None:
        """The cell of ``site`` in ``round_number``, or ``None`` when the ledger has no record for it."""
        return self.cells.get((site, round_number))

    def lost(self, site: str, round_number: int) -> bool:
        """Whether the server received an update of ``site`` in ``round_number`` that has no audit record."""
        return self.coverage.received_without_record(site, round_number)

    def missing(self) -> tuple[tuple[str, int], ...]:
        """Site-rounds with no record at all (lost ones included: see `lost`)."""
        return tuple((s, r) for r in self.rounds for s in self.sites if (s, r) not in self.cells)

    def unreported(self) -> tuple[tuple[str, int], ...]:
        """Site-rounds without a record that are not known to be lost (nothing arrived, or coverage unknown)."""
        return tuple((s, r) for s, r in self.missing() if not self.lost(s, r))

    def worst(self, round_number: int | None = None) -> Cell | None:
        """The record with the worst level (ties: highest SSIM, PSNR, success rate, then the latest round)."""
        cells = [c for c in self.cells.values() if round_number is None or c.round == round_number]
        return max(cells, key=_severity, default=None)

    def only_round(self, round_number: int) -> AuditView:
        """The view of one round (its cells, records, gaps and coverage)."""
        return dataclasses.replace(
            self,
            cells={key: cell for key, cell in self.cells.items() if key[1] == round_number},
            rounds=(round_number,),
            notes=tuple(n for n in self.notes if n.round == round_number),
            malformed=(),
            actions=tuple(a for a in self.actions if a.round == round_number),
            details=tuple(d for d in self.details if d.round == round_number),
            records=tuple(r for r in self.records
                          if r.get("round") == round_number and not isinstance(r.get("round"), bool)),
            coverage=self.coverage.only_round(round_number),
        )


def _severity(cell: Cell) -> tuple[float, ...]:
    def score(value: float | None) -> float:
        return -math.inf if value is None else value

    return (RISK_RANK.get(cell.risk, 0), score(cell.ssim_max), score(cell.psnr_max), score(cell.success_rate),
            cell.round)


def build_view(records: Sequence[Mapping[str, Any]], arrivals: ArrivalsRead | None = None) -> AuditView:
    """Group records by site and round, tag their audit configurations and match them against the arrivals.

    Args:
        records: Intact ledger records (`medpfl_app.reports.sources.read_ledger_records`), in ledger order.
        arrivals: The server's arrivals file, read; ``None`` when there is none (coverage unknown).

    Returns:
        The view. Records without a usable site or round are listed in ``malformed`` instead of the table.
    """
    views = [record_view(record, index) for index, record in enumerate(records, start=1)]
    configs = _configs(views)
    grouped: dict[tuple[str, int], list[Cell]] = {}
    malformed: list[str] = []
    placed: list[RecordView] = []
    for view in views:
        if view.site is None or view.round is None:
            record = view.record
            why = f"{text(record.get('status'))}: {text(record.get('reason')) or 'no reason recorded'}"
            malformed.append(f"record {view.index}: site {text(record.get('site'))!s} / round "
                             f"{text(record.get('round'))!s} unusable ({why})")
            continue
        placed.append(view)
        grouped.setdefault((view.site, view.round), []).append(_cell(view, configs))
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
            if cell.status == "audited" and cell.scores_status != "scored":
                why = cell.scores_reason or "no reason recorded"
                notes.append(Note(cell.site, cell.round, f"site scores {cell.scores_status or 'missing'}", why))
    coverage = build_coverage(placed, arrivals)
    return AuditView(
        sites=tuple(sorted({s for s, _ in cells} | set(coverage.sites))),
        rounds=tuple(sorted({r for _, r in cells} | set(coverage.rounds))),
        cells=cells,
        configs=tuple(configs.values()),
        notes=tuple(sorted(notes, key=lambda n: (n.round, n.site))),
        malformed=tuple(malformed),
        records=tuple(records),
        actions=tuple(sorted(actions, key=lambda a: (a.round, a.site))),
        details=tuple(placed),
        coverage=coverage,
        yardstick=build_yardstick(placed),
    )


def _cell(view: RecordView, configs: dict[str, AuditConfig]) -> Cell:
    record = view.record
    defenses = record.get("defenses")
    assert view.site is not None and view.round is not None
    return Cell(
        site=view.site,
        round=view.round,
        status=view.status,
        risk=view.level,
        reason=view.reason,
        scores_status=view.scores_status,
        scores_reason=view.scores_reason,
        ssim_max=view.ssim_max,
        psnr_max=view.psnr_max,
        success_rate=view.success_rate,
        label_accuracy=view.label_accuracy,
        epsilon_client=view.epsilon_client,
        epsilon_sample=view.epsilon_sample,
        delta=view.delta,
        config=configs.get(_config_key(record)) if view.status == "audited" else None,
        defenses=tuple(d for d in defenses if isinstance(d, Mapping)) if isinstance(defenses, list) else (),
        record_count=1,
        detail=view,
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
        if seen:
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


def _scores_shown(cell: Cell) -> str:
    return ", ".join(filter(None, [
        f"SSIM {cell.ssim_max:.2f}" if cell.ssim_max is not None else None,
        f"PSNR {cell.psnr_max:.1f} dB" if cell.psnr_max is not None else None,
        f"attack success {cell.success_rate:.0%}" if cell.success_rate is not None else None,
        f"identifiability {cell.detail.identifiability_text()}" if cell.detail.identifiability is not None else None,
    ]))


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
            blockers.append(f"{len(view.malformed)} record{'s' if len(view.malformed) != 1 else ''} without a usable "
                            "site or round")
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
        result["headline"] += (f" {len(invalid)} record{'s' if len(invalid) != 1 else ''} "
                               f"hold{'s' if len(invalid) == 1 else ''} values outside their valid range: read as "
                               "missing, never as measurements (listed under invalid values).")
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
    coverage = {**view.coverage.to_dict(), "malformed_records": len(view.malformed),
                "unreadable_ledger_lines": unreadable,
                "unreadable_ledger_text": unreadable_text(unreadable)}
    level, blockers = _overall_level(view, unreadable)
    total = view.coverage.total()
    result: dict[str, Any] = {
        "risk": str(level) if level is not None else "none", "meaning": MEANINGS.get(str(level), ""),
        "site": None, "round": None, "scores": None, "config": None, "epsilon": None, "evidence": None,
        "settle": None, "coverage": coverage, "unreadable_ledger_lines": unreadable,
        "configs": [c.to_dict() for c in view.configs],
    }
    if level is None:
        result["headline"] = "The ledger holds no usable audit record."
        result["meaning"] = "nothing was received or recorded that the report could place"
        return result
    if level in (RiskLevel.NOT_AUDITED, RiskLevel.NOT_AUDITABLE) and not total.audited:
        known = view.coverage.known
        received = f"{total.received} received update{'s' if total.received != 1 else ''}" if known else \
            f"{total.records} recorded update{'s' if total.records != 1 else ''}"
        result["headline"] = (f"{level.upper().replace('_', ' ')}: none of the {received} was measured"
                              + ("" if total.records else ": the ledger holds no usable audit record") + ".")
        return result
    worst = view.worst()
    assert worst is not None
    if level == RiskLevel.LOW or (level == RiskLevel.INCONCLUSIVE and blockers):
        under = "; ".join(c.short() for c in view.configs) or "attack not recorded"
        if level == RiskLevel.LOW:
            headline = (f"LOW: all {total.received} received updates were measured low under {under}: evidence "
                        "under this attack and budget, not a guarantee against stronger attacks.")
        else:
            headline = (f"INCONCLUSIVE: every audited update measured low under {under}, but not every received "
                        f"update was measured: {'; '.join(blockers)}.")
            result["settle"] = ("audit the updates that were lost or not audited (re-run the job with the audit "
                                "running to the end)" if view.coverage.known else
                                "render from the server's run folder that holds received_updates.jsonl beside the "
                                "ledger")
        result.update(headline=headline, config=worst.config.to_dict() if worst.config else None)
        return result
    scores = {"ssim_max": worst.ssim_max, "psnr_max": worst.psnr_max, "attack_success_rate": worst.success_rate,
              "label_accuracy": worst.label_accuracy, "identifiability": worst.detail.identifiability,
              "identifiability_p_value": worst.detail.identifiability_p_value}
    under = worst.config.short() if worst.config else "attack not recorded"
    if worst.config and len(worst.config.iterations) > 1 and worst.detail.iterations is not None:
        under += f", this record {worst.detail.iterations} iterations"
    if level in (RiskLevel.HIGH, RiskLevel.MEDIUM):
        shown = _scores_shown(worst) or "no site scores"
        if worst.scored:
            shown += "; worst image"
        else:
            shown = f"{shown}; level from server-side indicators: {indicators_text(worst.record)}"
        headline = (f"Worst risk {level.upper()}: {worst.site}, round {worst.round} ({shown}) "
                    f"under {under}; formal ε: {worst.epsilon_text()}.")
    else:
        count = total.levels.get(str(level), 0)
        headline = (f"{level.upper()}: {count} audited update{'s' if count != 1 else ''} "
                    f"{'are' if count != 1 else 'is'} {level}, e.g. {worst.site}, round {worst.round}, under {under}.")
    result.update(
        site=worst.site, round=worst.round, scores=scores,
        config=worst.config.to_dict() if worst.config else None,
        epsilon={"client_dp": worst.epsilon_client, "dp_sgd": worst.epsilon_sample, "delta": worst.delta},
        headline=headline, evidence=worst.evidence, settle=worst.settle,
    )
    return result
