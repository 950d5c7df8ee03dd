"""One cell of the study: federated training, the global model's utility, the audit of the received updates, ε.

Leakage is measured exactly as the server's audit and the site's scorer do: `medpfl_app.audit.update_audit.audit_update`
on the update as received (after the defense), `medpfl_app.audit.scoring.score_reconstructions` against the
images the site really used, and the verdict from `medpfl_app.audit.risk` (through the battery's `verdict_for`).
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import torch

from medpfl_app.errors import MedPFLError
from medpfl_app.experiments.study.config import CellConfig, DefenseKind, Engine, RunConfig
from medpfl_app.experiments.study.federated import (
    FederatedRun,
    ReceivedUpdate,
    run_federation,
    site_model,
    site_pools,
    validation_set,
)
from medpfl_app.experiments.study.result import CellResult, SiteLeakage

THREAT_MODEL = (
    "honest-but-curious server: knows the architecture, the global weights, the update as received after the "
    "site's defense and the declared training facts (B, S, lr); labels recovered, not given"
)


def evaluate_cell(run: RunConfig, cell: CellConfig) -> CellResult:
    """Run ``cell`` under ``run`` and measure utility, per-site leakage and formal ε (in this process)."""
    if run.engine is not Engine.IN_PROCESS:  # its result would be stored under the other engine's key
        raise MedPFLError(
            f"evaluate_cell runs cells in process, but the study's engine is {run.engine.value}",
            fix="use medpfl_app.nvflare.study_cells.simulate_cell for simulator cells (medpfl study --engine simulator)",
        )
    started = time.perf_counter()
    audited = set(run.audited_rounds)
    fed = run_federation(run, cell, keep=lambda site, rnd: site < run.audited_sites and rnd in audited)
    accuracy, auc = utility(run, cell, fed)
    trained_s = time.perf_counter() - started
    leakage = tuple(audit_received(run, cell, item) for item in fed.received)
    return CellResult(
        cell=cell,
        accuracy=accuracy,
        auc=auc,
        sites=leakage,
        epsilon=formal_epsilon(run, cell),
        delta=run.delta if cell.defense.kind in (DefenseKind.CLIENT_DP, DefenseKind.DP_SGD) else None,
        guarantee=str(cell.defense.guarantee) if cell.defense.guarantee else "none",
        threat_model=THREAT_MODEL,
        attack_budget=f"{cell.attack}: {run.audit.describe()}",
        train_s=trained_s,
        wall_s=time.perf_counter() - started,
        engine=str(Engine.IN_PROCESS),
    )


def utility(run: RunConfig, cell: CellConfig, fed: FederatedRun) -> tuple[float, float]:
    """Accuracy and macro one-vs-rest AUC (torchmetrics) on held-out phantoms, averaged over the sites' models.

    Every site deploys the same global model unless a defense kept keys local (FedBN), so the mean over sites is
    the global model's score in the usual case.
    """
    from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

    val = validation_set(run)
    accuracies, aucs = [], []
    for site in range(run.sites):
        with torch.no_grad():
            probs = torch.softmax(site_model(run, cell, fed, site)(val.images), dim=1)
        accuracy = MulticlassAccuracy(num_classes=run.num_classes, average="micro")
        auroc = MulticlassAUROC(num_classes=run.num_classes, average="macro")
        accuracies.append(float(accuracy(probs, val.labels)))
        aucs.append(float(auroc(probs, val.labels)))
    return sum(accuracies) / len(accuracies), sum(aucs) / len(aucs)


def audit_received(run: RunConfig, cell: CellConfig, received: ReceivedUpdate) -> SiteLeakage:
    """Audit one received update as the server does; score it as the site does; derive the verdict."""
    from medpfl_app.audit.plan import AuditPlan
    from medpfl_app.audit.synthetic_round import SyntheticRound
    from medpfl_app.audit.update_audit import AuditItem, audit_update
    from medpfl_app.experiments.battery import score_at_site, verdict_for

    item = AuditItem(
        site=f"site-{received.site + 1}",
        round=received.round,
        job_id="study",
        data_kind="WEIGHT_DIFF",
        update=received.update,
        global_weights=received.global_weights,
        meta=received.meta,
    )
    plan = replace(AuditPlan(), attack=cell.attack, seed=run.seed, **run.audit.plan_overrides())
    started = time.perf_counter()
    if not received.used_positions:  # a DP-SGD site whose Poisson batches drew no image: nothing to score
        return SiteLeakage.not_audited(item.site, received.round, "the site's Poisson batches drew no image", 0.0)
    try:
        outcome = audit_update(item, plan)
    except MedPFLError as error:  # the server records such an update as not audited, with the reason
        return SiteLeakage.not_audited(item.site, received.round, error.problem, time.perf_counter() - started)
    pool = site_pools(run)[received.site]
    rnd = SyntheticRound(item, pool.images, received.used_positions, tuple(int(v) for v in pool.labels))
    scores = score_at_site(rnd, outcome.reconstructions, outcome.labels)
    verdict = verdict_for(outcome, scores)
    return SiteLeakage(
        site=item.site,
        round=received.round,
        level=str(verdict.level),
        ssim_max=_num(scores.get("ssim_max")),
        psnr_max=_num(scores.get("psnr_max")),
        attack_success_rate=_num(scores.get("attack_success_rate")),
        label_accuracy=_num(scores.get("label_accuracy")),
        identifiability_excess=_num(scores.get("identifiability_excess")),
        convergence=str(outcome.server_indicators.get("attack_convergence")),
        ladder_complete=bool(outcome.attack_budget.get("ladder_complete")),
        audit_s=time.perf_counter() - started,
        ssim_mean=_num(scores.get("ssim_mean")),
    )


def formal_epsilon(run: RunConfig, cell: CellConfig) -> float | None:
    """ε after all rounds (Opacus RDP through `medpfl_app.defenses.epsilon_of`); None for heuristics.

    Client DP: one release per round at sample rate 1 (client level). DP-SGD: S Poisson-sampled steps per round
    at q = B / N (sample level, per site).
    """
    if cell.defense.strength is None or cell.defense.kind not in (DefenseKind.CLIENT_DP, DefenseKind.DP_SGD):
        return None
    from medpfl_app.defenses import epsilon_of
    from medpfl_app.defenses.accountant import SITE_SAMPLE_RATE
    from medpfl_app.experiments.study.dp_sgd_site import sample_rate

    z = float(cell.defense.strength)
    if cell.dp_sgd:
        return epsilon_of([(z, sample_rate(run, cell), cell.local_steps * run.rounds)], run.delta)
    return epsilon_of([(z, SITE_SAMPLE_RATE, run.rounds)], run.delta)


def _num(value: Any) -> float | None:
    return None if value is None else float(value)
