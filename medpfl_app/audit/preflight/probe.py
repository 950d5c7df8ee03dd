"""The pre-flight probe: one site round on synthetic images, attacked exactly as the audit attacks real updates.

The server builds the job's network with its initial weights, trains a copy on seeded phantoms
(`medpfl_app.data.phantoms`) with the site's declared batch size and local steps (plain SGD at the job's learning
rate), applies every declared defense with MedPFL's own defense code, audits the result with
`medpfl_app.audit.update_audit.audit_update` under the plan, scores the reconstructions against the phantoms (the server
made them, so it knows them: no site data is involved) and derives the verdict with the audit's risk policy.

What the probe cannot simulate makes its verdict inconclusive rather than high: sample-level DP-SGD (Opacus
training) and filters MedPFL does not know.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.preflight.settings import ProbeSetting
from medpfl_app.audit.risk import AttackEvidence, RiskPolicy, assess_verdict
from medpfl_app.audit.scoring import score_reconstructions
from medpfl_app.audit.synthetic_round import RoundShape, synthetic_round
from medpfl_app.audit.update_audit import audit_update
from medpfl_app.contracts.verdict import RiskLevel, Verdict

#: The synthetic pool identifiability is measured in (at least this many phantoms, as a small site would hold).
MIN_POOL = 24


@dataclass(frozen=True)
class ProbeResult:
    """What the probe attack achieved on one simulated round.

    Attributes:
        verdict: The audit's verdict on the probe update, after the limits below.
        ssim_mean: Mean SSIM of the reconstructions to the phantoms (None: no reconstruction).
        attack_success_rate: Share of phantoms reconstructed at SSIM >= the threshold (None: not scored).
        label_accuracy: Share of labels recovered (None: not scored).
        attack: The attack, its budget and stages, in one phrase (the audit's own description).
        images: Distinct phantoms the round used.
        seconds: Wall time of the probe.
        limits: What the probe could not simulate (each makes a would-be "high" inconclusive).
    """

    verdict: Verdict
    ssim_mean: float | None
    attack_success_rate: float | None
    label_accuracy: float | None
    attack: str
    images: int
    seconds: float
    limits: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.to_json(),
            "ssim_mean": self.ssim_mean,
            "attack_success_rate": self.attack_success_rate,
            "label_accuracy": self.label_accuracy,
            "attack": self.attack,
            "images": self.images,
            "seconds": self.seconds,
            "limits": list(self.limits),
        }


def probe_limits(setting: ProbeSetting) -> tuple[str, ...]:
    """Why the probe's verdict may overstate the site's risk (it cannot simulate these)."""
    limits = []
    if setting.dp_sgd_noise_multiplier > 0:
        limits.append(
            f"sample-level DP-SGD (noise multiplier {setting.dp_sgd_noise_multiplier:g}) is not simulated by the probe"
        )
    limits += [f"the site's filter {key!r} is not modelled by the probe" for key in setting.unmodelled]
    return tuple(limits)


def run_probe(
    setting: ProbeSetting, plan: AuditPlan, *, seed: int = 0, policy: RiskPolicy = RiskPolicy()
) -> ProbeResult:
    """Simulate, defend, attack and score one site round on phantoms (see the module docstring)."""
    started = time.monotonic()
    item, pool, used, labels = _probe_update(setting, seed=seed)
    outcome = audit_update(item, plan)
    scores: dict[str, Any]
    if outcome.reconstructions is None:
        scores = {"status": "unavailable", "reason": "no reconstruction to score"}
    else:
        scores = score_reconstructions(
            outcome.reconstructions,
            pool[list(used)],
            used_positions=list(used),
            pool=pool,
            recovered_labels=None if outcome.labels is None else [int(v) for v in outcome.labels],
            true_labels=[labels[i] for i in used],
        )
    evidence = AttackEvidence.from_record(outcome.server_indicators, outcome.attack_budget)
    verdict = assess_verdict(status="audited", reason=None, site_scores=scores, attack=evidence, policy=policy)
    verdict = Verdict(verdict.level, _evidence(scores, evidence.description), settle=verdict.settle)
    limits = probe_limits(setting)
    if limits and verdict.level in (RiskLevel.HIGH, RiskLevel.MEDIUM, RiskLevel.UNSCORED):
        verdict = Verdict(
            RiskLevel.INCONCLUSIVE,
            f"the probe reconstructed the synthetic images ({verdict.evidence}), but {'; '.join(limits)}",
            settle="run the job with the audit: its first round's verdict measures the real defense",
        )
    return ProbeResult(
        verdict=verdict,
        ssim_mean=_number(scores.get("ssim_mean")),
        attack_success_rate=_number(scores.get("attack_success_rate")),
        label_accuracy=_number(scores.get("label_accuracy")),
        attack=evidence.description,
        images=len(used),
        seconds=round(time.monotonic() - started, 2),
        limits=limits,
    )


def _probe_update(setting: ProbeSetting, *, seed: int):
    """``(AuditItem, pool, used positions, labels)`` of the simulated round."""
    job = setting.job
    shape = RoundShape(
        network=job.network,
        in_channels=job.in_channels,
        num_classes=job.num_classes,
        image_size=job.image_size,
        batch_size=setting.batch_size,
        local_steps=setting.local_steps,
        learning_rate=job.learning_rate,
        images=setting.distinct_images,
        pool_size=max(MIN_POOL, setting.distinct_images),
    )

    def defend(update: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        applied: list[dict[str, Any]] = []
        for defense in setting.defenses:
            if defense.key in setting.unmodelled:
                continue
            update, record = _defend(update, defense.key, dict(defense.params), seed=seed)
            applied.append({"defense": defense.key, **record})
        return update, applied

    rnd = synthetic_round(shape, defend=defend, site="preflight", job_id="preflight", seed=seed)
    return rnd.item, rnd.pool, rnd.used_positions, rnd.labels


def _defend(update: dict[str, np.ndarray], key: str, params: dict[str, Any], *, seed: int):
    """Apply one declared defense with MedPFL's own code; filter-only arguments (ledger, seed, δ) are dropped."""
    from medpfl_app.defenses import DEFENSES, build_defense

    fields = {field.name for field in dataclasses.fields(DEFENSES.get(key))}
    defense = build_defense(key, **{name: value for name, value in params.items() if name in fields})
    output = defense.apply(update, seed=seed)
    return dict(output.update), dict(output.record)


def _evidence(scores: dict[str, Any], attack: str) -> str:
    """What the probe measured, in the pre-flight's own words (the audit's policy set the level)."""
    measured = [
        f"{label} {value:.3g}"
        for label, value in (
            ("best SSIM", _number(scores.get("ssim_max"))),
            ("mean SSIM", _number(scores.get("ssim_mean"))),
            ("attack success rate", _number(scores.get("attack_success_rate"))),
            ("label accuracy", _number(scores.get("label_accuracy"))),
        )
        if value is not None
    ]
    found = ", ".join(measured) if measured else "nothing scored"
    return f"probe attack on synthetic images with the job's model and this site's settings: {found}; {attack}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
