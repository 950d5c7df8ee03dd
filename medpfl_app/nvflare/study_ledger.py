"""A simulated study cell's result, read from what the run left on the server: the audit ledger and round metrics.

- Leakage: for every audited site and round (`RunConfig.audited_sites` × `RunConfig.audited_rounds`, as the
  in-process engine reports them) the ledger record of that update: the verdict level and the site's scores
  (SSIM max/mean, PSNR, attack success rate, label accuracy, identifiability excess). An update without a record,
  or one the audit did not attack, is reported as not audited with the reason.
- Formal ε: the largest client-level or sample-level ε any record states (the ε accounted so far when that update
  was sent), with its δ; None without client DP or DP-SGD.
- Utility: the aggregated ``accuracy`` and ``auroc`` of the last round in ``metrics/round_metrics.jsonl``: the sites'
  validation of the global model they received at the start of that round, i.e. after all but the last
  aggregation (NVFlare's FedAvg validates before training). AUC is None when the run did not report one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from medpfl_app.errors import MedPFLError
from medpfl_app.experiments.study.config import CellConfig, DefenseKind, Engine, RunConfig
from medpfl_app.experiments.study.result import CellResult, SiteLeakage

#: Metric names read as the AUC, in order of preference.
AUC_NAMES = ("auroc", "val_auroc", "auc", "val_auc")
NO_RECORD = "the audit ledger holds no record of this update"


def cell_result(run: RunConfig, cell: CellConfig, server_run_dir: Path, *, train_s: float) -> CellResult:
    """The `CellResult` of a finished simulation whose server run folder is ``server_run_dir``.

    Raises:
        MedPFLError: No audit ledger or no round metrics under ``server_run_dir``.
    """
    from medpfl_app.audit.ledger import find_ledgers, read_ledger
    from medpfl_app.experiments.study.evaluate import THREAT_MODEL

    ledgers = list(find_ledgers(server_run_dir))
    if not ledgers:
        raise MedPFLError(
            f"the simulated study cell left no audit ledger under {server_run_dir}",
            fix="look at the simulator log next to that folder for the server audit's error",
        )
    records = [record for ledger in ledgers for record in read_ledger(ledger).records]
    accuracy, auc = final_utility(server_run_dir)
    epsilon, delta = ledger_epsilon(records)
    formal = cell.defense.kind in (DefenseKind.CLIENT_DP, DefenseKind.DP_SGD)
    return CellResult(
        cell=cell,
        accuracy=accuracy,
        auc=auc,
        sites=site_leakage(run, records),
        epsilon=epsilon if formal else None,
        delta=(delta if delta is not None else run.delta) if formal else None,
        guarantee=str(cell.defense.guarantee) if cell.defense.guarantee else "none",
        threat_model=THREAT_MODEL,
        attack_budget=f"{cell.attack}: {run.audit.describe()}",
        train_s=train_s,
        wall_s=train_s,
        engine=str(Engine.SIMULATOR),
    )


def site_leakage(run: RunConfig, records: Sequence[Mapping[str, Any]]) -> tuple[SiteLeakage, ...]:
    """One `SiteLeakage` per audited (round, site), round by round, from the matching ledger record."""
    latest = {(record.get("site"), record.get("round")): record for record in records}
    found = []
    for round_index in sorted(run.audited_rounds):
        for number in range(1, run.audited_sites + 1):
            site = f"site-{number}"
            record = latest.get((site, round_index))
            found.append(
                SiteLeakage.not_audited(site, round_index, NO_RECORD, 0.0) if record is None else record_leakage(record)
            )
    return tuple(found)


def record_leakage(record: Mapping[str, Any]) -> SiteLeakage:
    """The leakage one ledger record states (scores None when the site could not score it)."""
    site, round_index = str(record["site"]), int(record["round"])
    budget = _mapping(record.get("attack_budget"))
    seconds = _num(budget.get("audit_wall_time_s")) or 0.0
    if record.get("status") != "audited":
        reason = str(record.get("reason") or record.get("status"))
        unmeasured = SiteLeakage.not_audited(site, round_index, reason, seconds)
        return replace(unmeasured, level=str(record["risk"]))
    scores = _mapping(record.get("site_scores"))
    verdict = _mapping(record.get("verdict"))
    return SiteLeakage(
        site=site,
        round=round_index,
        level=str(verdict.get("level") or record["risk"]),
        ssim_max=_num(scores.get("ssim_max")),
        psnr_max=_num(scores.get("psnr_max")),
        attack_success_rate=_num(scores.get("attack_success_rate")),
        label_accuracy=_num(scores.get("label_accuracy")),
        identifiability_excess=_num(scores.get("identifiability_excess")),
        convergence=str(_mapping(record.get("server_indicators")).get("attack_convergence")),
        ladder_complete=bool(record.get("ladder_complete")),
        audit_s=seconds,
        note=None if scores.get("status") in (None, "scored") else str(scores.get("reason") or scores["status"]),
        ssim_mean=_num(scores.get("ssim_mean")),
    )


def ledger_epsilon(records: Sequence[Mapping[str, Any]]) -> tuple[float | None, float | None]:
    """The largest formal ε (client DP or DP-SGD) the records state, and its δ; (None, None) without one."""
    best: tuple[float | None, float | None] = (None, None)
    for record in records:
        section = _mapping(record.get("epsilon"))
        for key in ("client_dp", "dp_sgd"):
            value = _num(section.get(key))
            if value is not None and (best[0] is None or value > best[0]):
                best = (value, _num(section.get("delta")))
    return best


def final_utility(server_run_dir: Path) -> tuple[float, float | None]:
    """Aggregated accuracy and AUC of the last round in the run's ``metrics/round_metrics.jsonl``.

    Raises:
        MedPFLError: No metrics file, or no round with an aggregated accuracy.
    """
    from medpfl_app.reports.accuracy import find_round_metrics, read_accuracy

    path = find_round_metrics(server_run_dir)
    accuracy = read_accuracy(path)
    if path is None or not accuracy.aggregated:
        raise MedPFLError(
            f"the simulated study cell reported no global-model accuracy under {server_run_dir}",
            fix="look at the simulator log for a site whose validation failed",
        )
    last = max(accuracy.aggregated)
    return accuracy.aggregated[last], _round_metric(path, last, AUC_NAMES)


def _round_metric(path: Path, round_index: int, names: tuple[str, ...]) -> float | None:
    """The first of ``names`` among the aggregated metrics of ``round_index`` (None: not reported)."""
    import json

    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(entry, dict) or entry.get("round") != round_index:
            continue
        values = {m.get("name"): m.get("value") for m in entry.get("aggregated_metrics") or () if isinstance(m, dict)}
        for name in names:
            if _num(values.get(name)) is not None:
                return _num(values[name])
    return None


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _num(value: Any) -> float | None:
    """A finite-or-not float from a JSON number; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
