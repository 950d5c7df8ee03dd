"""The verdict battery: on updates whose true risk is known, the audit's verdict is true in both directions.

Each case trains the job's default-initialised network on seeded phantoms as a site would, audits the update with
the default plan and the case's time budget (screening + attack ladder) and scores the reconstructions as the
site does.
Verdicts that depend on how much of the ladder fits the time budget are pinned by what they may never be.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.risk import AttackEvidence, RiskPolicy, assess_verdict
from medpfl_app.contracts.verdict import RiskLevel
from medpfl_app.experiments.battery import CASES, run_case, score_at_site, site_round, verdict_for

pytestmark = pytest.mark.slow

PLAN = AuditPlan()
BY_NAME = {case.name: case for case in CASES}


def _run(name: str):
    case = BY_NAME[name]
    return run_case(case, replace(PLAN, **dict(case.plan)))


def _not_significant(scores) -> bool:
    p_value = scores.get("identifiability_p_value")
    return p_value is None or p_value >= RiskPolicy().significance


def test_batch_1_one_step_without_defense_is_high() -> None:
    """The literature's worst case: one image, one step, no defense. The attack matches it and the site sees it."""
    result = _run("batch 1 x 1 step, no defense")
    assert result.verdict.level is RiskLevel.HIGH, result.verdict
    assert result.scores["ssim_max"] >= 0.9
    assert result.outcome.server_indicators["attack_convergence"] == "matched"


def test_batch_6_one_step_is_never_low() -> None:
    """Six images in one step: the whole-update attack reconstructs some of them; never rated low."""
    result = _run("batch 6 x 1 step, no defense")
    assert result.verdict.level is not RiskLevel.LOW, result.verdict
    assert result.outcome.attack_budget["stages_run"] >= 1
    assert all(stage["whole_update"] and stage["images"] == 6 for stage in result.outcome.ladder)


def test_batch_16_five_steps_with_batchnorm_is_low_only_after_a_completed_ladder() -> None:
    """A realistic update: low only when the ladder completed on the whole update, else inconclusive."""
    result = _run("batch 16 x 5 steps, BatchNorm (small_cnn)")
    level = result.verdict.level
    assert level in (RiskLevel.LOW, RiskLevel.INCONCLUSIVE, RiskLevel.MEDIUM, RiskLevel.HIGH), result.verdict
    if level is RiskLevel.LOW:
        assert result.outcome.attack_budget["ladder_complete"] is True
    if level is RiskLevel.INCONCLUSIVE:
        assert result.verdict.settle
    assert all(stage["local_steps"] == 5 and stage["images"] == 16 for stage in result.outcome.ladder)


@pytest.mark.parametrize("name", ["batch 1, strong Laplace noise (b = 0.1)", "batch 1, client DP (C = 1, z = 1)"])
def test_noise_defenses_are_never_high_and_identify_at_chance(name) -> None:
    """Strong noise: SSIM near zero, identification at chance; the verdict is never high (low or inconclusive)."""
    result = _run(name)
    assert result.verdict.level not in (RiskLevel.HIGH, RiskLevel.UNSCORED), result.verdict
    assert result.scores["ssim_max"] < 0.3
    assert _not_significant(result.scores)


@pytest.mark.parametrize("kind", ["uniform noise", "constant grey", "the site's mean image"])
def test_uninformative_reconstructions_identify_at_chance(kind) -> None:
    """Noise, a constant image or the prior as 'reconstructions' are never evidence of identification."""
    rnd = site_round(BY_NAME["batch 6 x 1 step, no defense"])
    shape = (6, *rnd.pool.shape[1:])
    rng = np.random.default_rng(3)
    fake = {
        "uniform noise": rng.random(shape),
        "constant grey": np.full(shape, 0.5),
        "the site's mean image": np.broadcast_to(rnd.pool.mean(0).numpy(), shape),
    }[kind].astype(np.float32)
    scores = score_at_site(rnd, fake, np.array([rnd.labels[i] for i in rnd.used_positions]))
    assert _not_significant(scores) and scores["ssim_max"] < 0.6
    settled = AttackEvidence("gradinv", None, complete=True)

    verdict = assess_verdict(status="audited", reason=None, site_scores=scores, attack=settled)
    assert verdict.level is not RiskLevel.HIGH, (kind, scores)


def test_a_non_converging_attack_is_inconclusive() -> None:
    """A one-iteration budget with no escalation cannot settle anything: inconclusive, never low."""
    result = _run("batch 1, 1-iteration budget")
    assert result.verdict.level in (RiskLevel.INCONCLUSIVE, RiskLevel.HIGH, RiskLevel.MEDIUM), result.verdict
    assert result.verdict.level is RiskLevel.INCONCLUSIVE or result.scores["ssim_max"] >= 0.3
    assert result.outcome.attack_budget["iterations"] == 1
    if result.verdict.level is RiskLevel.INCONCLUSIVE:
        assert verdict_for(result.outcome, result.scores).settle
