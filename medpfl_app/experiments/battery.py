"""The verdict battery: synthetic site updates whose true risk is known, audited exactly as the server does.

Each `BatteryCase` trains the job's own default-initialised network on seeded phantoms as a site would (batch
size, local steps, an optional defense on the update), audits the update with `medpfl_app.audit.update_audit.audit_update`
(screening + attack ladder), scores the reconstructions against the site's images as the site's scorer does
(`medpfl_app.audit.scoring.score_reconstructions`) and derives the verdict with the risk policy. The battery test
(`tests/audit/test_verdict_battery.py`) pins what each verdict may be; `benchmarks/bench_verdicts.py` puts the
audit's verdict next to a much stronger reference attack on the same update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.risk import AttackEvidence, RiskPolicy, assess_verdict
from medpfl_app.audit.scoring import score_reconstructions
from medpfl_app.audit.synthetic_round import RoundShape, SyntheticRound, synthetic_round
from medpfl_app.audit.update_audit import AuditOutcome, audit_update
from medpfl_app.contracts.verdict import Verdict

IMAGE_SIZE = 32
NUM_CLASSES = 4


@dataclass(frozen=True)
class BatteryCase:
    """One synthetic site round.

    Attributes:
        name: Row name in the battery and the calibration table.
        network: Registered network (default-initialised with the job's seed, as the server builds it).
        batch_size: Images per local step.
        local_steps: Local SGD steps.
        distinct_images: Images the site's steps cycle through (default ``batch_size * local_steps``).
        pool_size: The site's training images (identifiability is measured among them).
        defense: ``None``, ``("laplace", scale)`` or ``("client_dp", clip_norm, noise_multiplier)``.
        learning_rate: Local SGD learning rate.
        plan: Audit plan overrides for this case (e.g. a 1-iteration budget).
    """

    name: str
    network: str = "lenet_sigmoid"
    batch_size: int = 1
    local_steps: int = 1
    distinct_images: int | None = None
    pool_size: int = 24
    defense: tuple[Any, ...] | None = None
    learning_rate: float = 0.05
    plan: Mapping[str, Any] = field(default_factory=dict)

    @property
    def images(self) -> int:
        return self.distinct_images or self.batch_size * self.local_steps


#: Each case's audit budget: the default plan with a per-update time budget that lets its ladder finish on a
#: 2-core CPU where that is affordable (noise cases run all three stages), and a bounded one where it is not.
CASES: tuple[BatteryCase, ...] = (
    BatteryCase("batch 1 x 1 step, no defense", plan={"time_limit_s": 60.0}),
    BatteryCase("batch 6 x 1 step, no defense", batch_size=6, plan={"time_limit_s": 60.0}),
    BatteryCase(
        "batch 16 x 5 steps, BatchNorm (small_cnn)",
        network="small_cnn",
        batch_size=16,
        local_steps=5,
        distinct_images=16,
        plan={"time_limit_s": 60.0},
    ),
    BatteryCase("batch 1, strong Laplace noise (b = 0.1)", defense=("laplace", 0.1), plan={"time_limit_s": 240.0}),
    BatteryCase("batch 1, client DP (C = 1, z = 1)", defense=("client_dp", 1.0, 1.0), plan={"time_limit_s": 240.0}),
    BatteryCase("batch 1, 1-iteration budget", plan={"iterations": 1, "escalations": 0, "screening_iterations": 0}),
)


@dataclass(frozen=True, eq=False)
class CaseOutcome:
    """The audit of one case: outcome, the site's scores and the verdict."""

    case: BatteryCase
    outcome: AuditOutcome
    scores: dict[str, Any]
    verdict: Verdict


def site_round(case: BatteryCase, *, seed: int = 0) -> SyntheticRound:
    """Train the default-initialised network on ``case``'s phantoms as a site would; apply its defense."""
    shape = RoundShape(
        network=case.network,
        in_channels=1,
        num_classes=NUM_CLASSES,
        image_size=IMAGE_SIZE,
        batch_size=case.batch_size,
        local_steps=case.local_steps,
        learning_rate=case.learning_rate,
        images=case.images,
        pool_size=case.pool_size,
    )

    def defend(update: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
        if case.defense is None:
            return update, []
        defended, record = _defend(update, case.defense, seed=seed)
        return defended, [{"defense": case.defense[0], **record}]

    return synthetic_round(shape, defend=defend, site="site-1", job_id="battery", seed=seed)


def _defend(update: dict[str, np.ndarray], defense: tuple[Any, ...], *, seed: int):
    from medpfl_app.defenses import client_dp, laplace_noise

    kind, *params = defense
    if kind == "laplace":
        return laplace_noise(update, float(params[0]), seed=seed)
    if kind == "client_dp":
        return client_dp(update, float(params[0]), float(params[1]), seed=seed)
    raise ValueError(f"unknown battery defense {kind!r}")


def score_at_site(rnd: SyntheticRound, reconstructions: np.ndarray | None, labels: np.ndarray | None) -> dict[str, Any]:
    """What the site's scorer would reply for these reconstructions (scalars only)."""
    if reconstructions is None:
        return {"status": "unavailable", "reason": "no reconstruction to score"}
    used = list(rnd.used_positions)
    return score_reconstructions(
        reconstructions,
        rnd.pool[used],
        used_positions=used,
        pool=rnd.pool,
        recovered_labels=None if labels is None else [int(v) for v in labels],
        true_labels=[rnd.labels[i] for i in used],
    )


def verdict_for(outcome: AuditOutcome, scores: Mapping[str, Any], policy: RiskPolicy = RiskPolicy()) -> Verdict:
    """The verdict the ledger record of this outcome would carry."""
    return assess_verdict(
        status="audited",
        reason=None,
        site_scores=scores,
        policy=policy,
        attack=AttackEvidence.from_record(outcome.server_indicators, outcome.attack_budget),
    )


def run_case(case: BatteryCase, plan: AuditPlan | None = None, *, seed: int = 0) -> CaseOutcome:
    """Audit ``case`` with ``plan`` (default: the default plan with the case's overrides)."""
    plan = plan or replace(AuditPlan(), **dict(case.plan))
    rnd = site_round(case, seed=seed)
    outcome = audit_update(rnd.item, plan)
    scores = score_at_site(rnd, outcome.reconstructions, outcome.labels)
    return CaseOutcome(case, outcome, scores, verdict_for(outcome, scores))
