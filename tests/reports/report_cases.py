"""Synthetic audit ledgers for the report tests: 3 sites × 3 rounds with every status, score state and defense.

Ledgers are written line by line as each schema's producer wrote them (`LedgerFile`), so a fixture of an older
run stays an older run's ledger whatever today's `medpfl_app.audit.ledger.AuditLedger` stamps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medpfl_app.contracts.verdict import Verdict
from medpfl_app.reports.sources import arrival_line

SCHEMA_1 = "medpfl.audit/1"
SCHEMA_2 = "medpfl.audit/2"


class LedgerFile:
    """An ``audit_ledger.jsonl`` written as a producer of ``schema`` wrote it: one sorted-keys JSON line per record."""

    def __init__(self, path: str | os.PathLike[str], schema: str = SCHEMA_1) -> None:
        self.path = Path(path)
        self.schema = schema
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        written = {"schema": self.schema, "time": "2025-01-01T00:00:00Z", **record}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(written, sort_keys=True) + "\n")
        return written


def write_arrivals(folder: Path, updates: list[tuple[str, int]], *, return_code: str = "OK") -> Path:
    """``received_updates.jsonl`` in ``folder`` with one line per ``(site, round)``, as the server's recorder writes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "received_updates.jsonl"
    with open(path, "a", encoding="utf-8") as handle:
        for site, round_number in updates:
            handle.write(
                arrival_line(
                    {
                        "time": "2025-01-01T00:00:00+0000",
                        "site": site,
                        "round": round_number,
                        "return_code": return_code,
                        "data_kind": "WEIGHT_DIFF" if return_code == "OK" else None,
                    }
                )
            )
    return path


MALICIOUS_SITE = '<script>alert("x")</script><img src=x onerror=alert(1)>'
# Shaped like the audit worker's records: configured budget fields plus measured ones (iterations run, times).
BUDGET = {
    "attack": "invertinggradients",
    "iterations": 300,
    "restarts": 1,
    "time_limit_s": 60,
    "max_images": 4,
    "reduced": None,
    "evaluations": 300,
    "wall_time_s": 12.5,
    "audit_wall_time_s": 13.0,
    "queue_wait_s": 0.2,
}
THREAT = {
    "declared": "honest-but-curious server: knows the architecture and the update as received",
    "attacker": "honest-but-curious server (knows architecture, weights before the update and the update)",
    "batch_size": 8,
    "labels_known": False,
}
POLICY = {
    "ssim_high": 0.6,
    "ssim_medium": 0.3,
    "identifiability_high": 0.5,
    "relative_leakage_medium": 0.5,
    "epsilon_caps_at_medium": 1.0,
}
CLIENT_DP = {
    "defense": "client_dp",
    "guarantee": "(ε, δ)-DP at client level",
    "installed_by": "site",
    "params": {"clip_norm": 1.0, "noise_multiplier": 1.0},
}
LAPLACE = {
    "defense": "laplace_noise",
    "guarantee": "heuristic (no formal guarantee)",
    "installed_by": "job",
    "params": {"b": 0.001},
}


#: What `AuditFilter(on_high_risk="exclude_site")` writes into the records of a site it keeps out of aggregation.
EXCLUDED = {
    "action": "excluded_from_aggregation",
    "reason": "high privacy risk for site-hr in round 1 (attack invertinggradients, best SSIM 0.93)",
}


def record(site: str, round_number: int, **overrides: Any) -> dict[str, Any]:
    """One audited, site-scored, low-risk record; ``overrides`` change any field."""
    base: dict[str, Any] = {
        "job_id": "job-42",
        "site": site,
        "round": round_number,
        "status": "audited",
        "reason": None,
        "model": {"network": "small_cnn", "config_hash": "abc", "num_parameters": 1000},
        "threat_model": THREAT,
        "defenses": [],
        "epsilon": {"client_dp": None, "dp_sgd": None, "delta": None},
        "server_indicators": {"labels_recovered": 1},
        "site_scores": {
            "status": "scored",
            "reason": None,
            "psnr_mean": 12.0,
            "psnr_max": 13.0,
            "ssim_mean": 0.1,
            "ssim_max": 0.15,
            "attack_success_rate": 0.0,
            "label_accuracy": 1.0,
        },
        "risk": "low",
        "attack_budget": BUDGET,
        "risk_policy": POLICY,
    }
    base.update(overrides)
    return base


def scores(ssim: float, psnr: float, success: float) -> dict[str, Any]:
    """Scored site scores with the given worst-image SSIM / PSNR and success rate."""
    return {
        "status": "scored",
        "reason": None,
        "psnr_mean": psnr - 1,
        "psnr_max": psnr,
        "ssim_mean": ssim - 0.05,
        "ssim_max": ssim,
        "attack_success_rate": success,
        "label_accuracy": 1.0,
    }


def write_job(root: Path, *, truncated_tail: bool = True, metrics: bool = True) -> Path:
    """A downloaded-job-like folder of an older run: ``<root>/workspace/audit/audit_ledger.jsonl`` (schema 1,
    no arrivals file) + round metrics.

    site-hr (batch size 1, no defense; audit configuration A1, 300 then 180 (time limit) then 240 iterations run;
    round 2 excluded from aggregation by the audit policy): high risk,
    worst in round 1 (SSIM 0.93). The other sites share configuration A2 (batch size 8).
    site-dp (client DP): low risk, ε growing; round 2 site scores unavailable.
    MALICIOUS_SITE (Laplace): round 0 not audited (queue full), round 1 not auditable (HE), round 2 medium.
    """
    ledger = LedgerFile(root / "workspace" / "audit" / "audit_ledger.jsonl")
    for r in range(3):
        hr = {0: (0.85, 24.0, 0.5), 1: (0.93, 29.5, 1.0), 2: (0.88, 26.0, 1.0)}[r]
        ledger.append(
            record(
                "site-hr",
                r,
                risk="high",
                site_scores=scores(*hr),
                threat_model={**THREAT, "batch_size": 1},
                attack_budget={
                    **BUDGET,
                    "iterations": (300, 180, 240)[r],
                    "wall_time_s": 7.0 + r,
                    "stop_reason": ("budget", "time_limit", "stop_loss")[r],
                },
                policy_action=EXCLUDED if r == 2 else None,
            )
        )
        dp_scores = (
            scores(0.05 + 0.01 * r, 9.0, 0.0)
            if r < 2
            else {"status": "unavailable", "reason": "site-dp did not answer within 30 s"}
        )
        ledger.append(
            record(
                "site-dp",
                r,
                defenses=[CLIENT_DP],
                risk="low" if r < 2 else "unknown",
                epsilon={"client_dp": 1.5 * (r + 1), "dp_sgd": None, "delta": 1e-5},
                site_scores=dp_scores,
            )
        )
    ledger.append(
        record(
            MALICIOUS_SITE,
            0,
            status="not_audited",
            reason="audit queue full <b>bold</b>",
            risk="unknown",
            site_scores=None,
            defenses=[LAPLACE],
        )
    )
    ledger.append(
        record(
            MALICIOUS_SITE,
            1,
            status="not_auditable",
            reason="update is HE-encrypted (CKKS)",
            risk="unknown",
            site_scores=None,
            defenses=[LAPLACE],
        )
    )
    ledger.append(record(MALICIOUS_SITE, 2, risk="medium", site_scores=scores(0.45, 17.0, 0.25), defenses=[LAPLACE]))
    if truncated_tail:
        with open(ledger.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record("site-hr", 3))[:40])
    if metrics:
        folder = root / "workspace" / "metrics"
        folder.mkdir(parents=True)
        lines = [
            {
                "round": r,
                "aggregated_metrics": [{"name": "accuracy", "value": 0.3 + 0.2 * r}],
                "sites": [{"name": "site-hr", "metrics": [{"name": "accuracy", "value": 0.25 + 0.2 * r}]}],
            }
            for r in range(3)
        ]
        (folder / "round_metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return ledger.path


#: What today's audit records as its yardstick (`medpfl_app.audit.worker.metric_settings` plus the significance).
METRIC_SETTINGS = {
    "ssim": {
        "gaussian_kernel": True,
        "sigma": 1.5,
        "kernel_size": 11,
        "data_range": 1.0,
        "implementation": "torchmetrics structural_similarity_index_measure",
    },
    "psnr": {"data_range": 1.0},
    "success_threshold_ssim": 0.9,
    "identifiability": "share of reconstructions whose most similar site image is the true one, against chance",
    "significance": 0.01,
}


def stage(
    name: str,
    status: str,
    initial: float | str,
    final: float | str,
    *,
    iterations: int = 200,
    restarts: int = 1,
    wall: float = 3.0,
    stop: str = "budget",
    whole: bool = True,
) -> dict[str, Any]:
    """One ``ladder`` entry as `medpfl_app.audit.ladder.StageResult.to_json` writes it."""
    return {
        "stage": name,
        "attack": "gradinv",
        "images": 1,
        "local_steps": 1,
        "update_mode": "exact",
        "iterations": iterations,
        "restarts": restarts,
        "wall_time_s": wall,
        "stop_reason": stop,
        "whole_update": whole,
        "convergence": {
            "status": status,
            "initial_loss": initial,
            "final_loss": final,
            "iterations": iterations,
            "reduction": "inf" if final == 0 else 1.0,
            "recent_improvement": 0.0,
            "moved": 0.5,
        },
    }


def record2(
    site: str,
    round_number: int,
    level: str,
    evidence: str,
    *,
    settle: str | None = None,
    ladder: list[dict[str, Any]] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A schema-2 record: ``record`` plus verdict, ladder, ladder_complete, metric settings and time budget."""
    stages = ladder if ladder is not None else [stage("screening", "matched", 0.5, 1e-11, stop="stop_loss")]
    base = record(site, round_number, risk=level)
    base.update(
        verdict=Verdict(level, evidence, settle).to_json(),  # type: ignore[arg-type]
        ladder=stages,
        ladder_complete=True,
        metric_settings=METRIC_SETTINGS,
        attack_budget={
            "attack": "gradinv",
            "iterations": sum(s["iterations"] for s in stages),
            "restarts": 1,
            "stages_run": len(stages),
            "time_budget_s": 240.0,
            "time_limit_s": 240.0,
            "time_spent_s": sum(s["wall_time_s"] for s in stages),
            "ladder_complete": True,
            "max_images": 4,
        },
    )
    base.update(overrides)
    return base


#: The representative run: what the settings and thresholds shown in its report must include (page text).
REPRESENTATIVE_TEXTS = (
    "SSIM ≥ 0.9",  # success threshold
    "Gaussian window σ = 1.5, 11 px, data range 1",  # SSIM settings
    "PSNR: data range 1",
    "significance level 0.01",
    "the share of the round's images that the attack reconstructed with an SSIM at or above the success threshold",
    "high when the worst-image SSIM is at least 0.6",  # risk policy
    "at least medium when the worst-image SSIM is at least 0.3",
    "high when identification exceeds chance by at least 0.5",
    "1 restart",
    "time budget 10 s per update",
    "at most 4 images attacked per update",  # attack budget
    "iterations run",
    "ε = 12.3 (client-level) at δ = 1e-05",
    "very weak (little formal protection)",
    "ε ≤ 1: strong; ε ≤ 3: moderate; ε ≤ 8: weak; ε > 8: very weak (little formal protection)",
    "formal (ε, δ) guarantee only for the differential-privacy defenses",
    "The model did not learn",
)


def _png(path: Path, value: int, size: int = 16) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (size, size), color=value).save(path)


def write_representative_run(root: Path, *, rounds: int = 5, thumbnails: bool = True) -> Path:
    """A simulator-like server run folder (``<root>/server/simulate_job``) as the audited demo job leaves it.

    meta.json names the job ``fedavg_audit_demo``; the records say only ``simulate_job``. site-1 (batch size 1, no
    defense) is low in round 0 and high after; site-2 and site-3 (batch size 8) are inconclusive: their ladders
    stopped at the 10 s time limit. site-3 runs client DP whose ε reaches 12.3 at δ = 1e-5. The model does not
    learn (accuracy at chance for 4 classes, validation loss up to 33.5). With ``thumbnails``, the run stored a
    released demo original and its reconstruction for site-1 in round 1.
    """
    run = root / "server" / "simulate_job"
    run.mkdir(parents=True)
    (run / "meta.json").write_text(
        json.dumps(
            {
                "name": "fedavg_audit_demo",
                "min_clients": 3,
                "description": "Server-side audit of FedAvg on the synthetic demo data, no defense on site-1 and site-2.",
            }
        )
    )
    sites = ("site-1", "site-2", "site-3")
    write_arrivals(run / "medpfl", [(s, r) for r in range(rounds) for s in sites])
    ledger = LedgerFile(run / "medpfl" / "audit_ledger.jsonl", schema=SCHEMA_2)
    budget = {"attack": "gradinv", "restarts": 1, "time_budget_s": 10.0, "time_limit_s": 10.0, "max_images": 4}
    for r in range(rounds):
        for site in sites:
            ledger.append(_representative_record(site, r, budget))
    metrics = run / "metrics"
    metrics.mkdir()
    lines = [
        {
            "round": r,
            "aggregated_metrics": [{"name": "val_loss", "value": 1.4 + 8.0 * r}, {"name": "accuracy", "value": 0.25}],
        }
        for r in range(rounds)
    ]
    (metrics / "round_metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if thumbnails:
        _png(run / "medpfl" / "thumbnails" / "site-1" / "round_1" / "original_0.png", 200)
        _png(run / "medpfl" / "thumbnails" / "site-1" / "round_1" / "recon_0.png", 180)
    return run


def _representative_record(site: str, round_number: int, budget: dict[str, Any]) -> dict[str, Any]:
    threat = {**THREAT, "batch_size": 1 if site == "site-1" else 8, "local_steps": 1 if site == "site-1" else 2}
    facts = {
        "batch_size": threat["batch_size"],
        "local_steps": threat["local_steps"],
        "learning_rate": 0.05,
        "optimizer": "sgd",
        "num_train_images": 32,
    }
    common = {
        "job_id": "simulate_job",
        "threat_model": threat,
        "training_facts": facts,
        "model": {"network": "lenet_sigmoid", "num_parameters": 10612, "num_classes": 4},
    }
    if site == "site-1":
        high = round_number > 0
        level = "high" if high else "low"
        evidence = (
            "the site measured a reconstruction close to a true image: best SSIM 0.97"
            if high
            else "ladder complete and matched; the site measured best SSIM 0.12"
        )
        return record2(
            site,
            round_number,
            level,
            evidence,
            site_scores=scores(0.97, 31.0, 1.0) if high else scores(0.12, 9.0, 0.0),
            attack_budget={**budget, "iterations": 120, "time_spent_s": 1.5},
            **common,
        )
    ladder = [stage("screening", "improving", 0.9, 0.5, iterations=20, wall=10.0, stop="time_limit")]
    extra: dict[str, Any] = {}
    if site == "site-3":
        epsilon = round(12.3 * (round_number + 1) / 5, 2)
        extra = {"defenses": [CLIENT_DP], "epsilon": {"client_dp": epsilon, "dp_sgd": None, "delta": 1e-5}}
    result = record2(
        site,
        round_number,
        "inconclusive",
        "the attack was still improving when its 10 s time limit ended",
        settle="raise time_limit_s in the audit plan to about 40 s (now 10 s)",
        ladder=ladder,
        site_scores=scores(0.05, 6.0, 0.0),
        attack_budget={**budget, "iterations": 20, "time_spent_s": 10.0, "stop_reason": "time_limit"},
        **common,
        **extra,
    )
    result["ladder_complete"] = False
    return result
