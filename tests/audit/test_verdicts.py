"""The risk policy's verdicts are true in both directions: low only after a settled ladder, high only on evidence."""

from __future__ import annotations

import pytest

from medpfl_app.attacks.convergence import Convergence
from medpfl_app.audit.risk import AttackEvidence, RiskPolicy, assess_verdict
from medpfl_app.contracts.verdict import RiskLevel, Verdict
from medpfl_app.errors import MedPFLError

SETTLED = AttackEvidence("gradinv on the whole update", Convergence.STALLED, complete=True)
MATCHED = AttackEvidence("gradinv on the whole update", Convergence.MATCHED, complete=True)
IMPROVING = AttackEvidence("gradinv", Convergence.IMPROVING, complete=False, settle="raise time_limit_s to about 90 s")
NO_PROGRESS = AttackEvidence("gradinv", Convergence.NO_PROGRESS, complete=True)
NOT_ATTACKED = AttackEvidence(
    "no attack", None, complete=False, not_attacked="the update covers 80 images, above the plan's max_images 64"
)

FAILED = {
    "status": "scored",
    "ssim_max": 0.05,
    "attack_success_rate": 0.0,
    "label_accuracy": 0.5,
    "identifiability_excess": 0.0,
    "identifiability_p_value": 0.7,
    "relative_leakage": -0.8,
}


def _level(scores, attack, policy=RiskPolicy()) -> RiskLevel:
    return assess_verdict(status="audited", reason=None, site_scores=scores, attack=attack, policy=policy).level


@pytest.mark.parametrize("attack", [SETTLED, MATCHED, IMPROVING, NO_PROGRESS, NOT_ATTACKED])
def test_a_close_reconstruction_is_high_whatever_the_ladder(attack) -> None:
    """SSIM at or above the high threshold, or any successful image, is high: noise cannot produce it."""
    assert _level({**FAILED, "ssim_max": 0.95, "attack_success_rate": 0.5}, attack) is RiskLevel.HIGH
    assert _level({**FAILED, "ssim_max": 0.7}, attack) is RiskLevel.HIGH


def test_identification_is_high_only_with_every_label_and_significance() -> None:
    """Identification alone makes high only with all labels right, significant and a large excess over chance."""
    identified = {**FAILED, "identifiability_excess": 0.9, "identifiability_p_value": 1e-4}
    assert _level({**identified, "label_accuracy": 1.0}, SETTLED) is RiskLevel.HIGH
    assert _level({**identified, "label_accuracy": 0.5}, SETTLED) is RiskLevel.MEDIUM
    # a hit rate at chance (noise nearest to a central image) is not significant: never high or medium
    at_chance = {**FAILED, "label_accuracy": 1.0, "identifiability_excess": 0.9, "identifiability_p_value": 0.3}
    assert _level(at_chance, SETTLED) is RiskLevel.LOW


def test_low_needs_a_settled_complete_ladder() -> None:
    """A failed attack is low only when the ladder settled; otherwise inconclusive with what would settle it."""
    assert _level(FAILED, SETTLED) is RiskLevel.LOW
    assert _level(FAILED, MATCHED) is RiskLevel.LOW  # matched the update and still failed: non-unique images
    for attack in (IMPROVING, NO_PROGRESS, NOT_ATTACKED):
        verdict = assess_verdict(status="audited", reason=None, site_scores=FAILED, attack=attack)
        assert verdict.level is RiskLevel.INCONCLUSIVE and verdict.settle
    assert "time_limit_s" in assess_verdict(status="audited", reason=None, site_scores=FAILED, attack=IMPROVING).settle
    assert "max_images" in assess_verdict(status="audited", reason=None, site_scores=FAILED, attack=NOT_ATTACKED).settle
    incomplete_stall = AttackEvidence("gradinv", Convergence.STALLED, complete=False)
    assert _level(FAILED, incomplete_stall) is RiskLevel.INCONCLUSIVE


def test_missing_site_scores_never_make_a_middle_rating() -> None:
    """Without site scores: unscored when the attack matched (likely high), else inconclusive; never medium."""
    missing = {"status": "unavailable", "reason": "no reply from site-2 within 30 s"}
    verdict = assess_verdict(status="audited", reason=None, site_scores=missing, attack=MATCHED)
    assert verdict.level is RiskLevel.UNSCORED and "high unless" in verdict.evidence
    assert "no reply from site-2" in verdict.settle
    for attack in (SETTLED, IMPROVING, NOT_ATTACKED):
        assert _level(missing, attack) is RiskLevel.INCONCLUSIVE


def test_unaudited_records_keep_their_reason() -> None:
    """Not audited / not auditable records are levels of their own, with the reason as evidence."""
    verdict = assess_verdict(status="not_audited", reason="audit queue full", site_scores=None, attack=SETTLED)
    assert verdict.level is RiskLevel.NOT_AUDITED and verdict.evidence == "audit queue full"
    assert (
        assess_verdict(status="not_auditable", reason="encrypted", site_scores=None, attack=SETTLED).level
        is RiskLevel.NOT_AUDITABLE
    )


def test_medium_for_partial_structure() -> None:
    assert _level({**FAILED, "ssim_max": 0.4}, SETTLED) is RiskLevel.MEDIUM
    assert _level({**FAILED, "relative_leakage": 0.6}, SETTLED) is RiskLevel.MEDIUM


def test_policy_is_configurable_and_validated() -> None:
    strict = RiskPolicy.from_dict({"ssim_high": 0.3, "ssim_medium": 0.1})
    assert _level({**FAILED, "ssim_max": 0.35}, SETTLED, strict) is RiskLevel.HIGH
    for bad in (
        {"ssim_high": 0.2, "ssim_medium": 0.5},
        {"nonsense": 1},
        {"significance": 0.9},
        {"ssim_high": float("nan")},
        {"identifiability_high": 0},
    ):
        with pytest.raises(MedPFLError):
            RiskPolicy.from_dict(bad)


def test_attack_evidence_reads_what_the_worker_wrote() -> None:
    indicators = {
        "attack_convergence": "matched",
        "attack_initial_loss": 0.5,
        "attack_matching_loss": 1e-11,
        "images_per_update": 6,
        "local_steps": 1,
    }
    budget = {"attack": "gradinv", "stages_run": 1, "iterations": 500, "ladder_complete": True}
    evidence = AttackEvidence.from_record(indicators, budget)
    assert evidence.convergence is Convergence.MATCHED and evidence.complete
    assert "6 images" in evidence.description and "0.5 → 1e-11" in evidence.description
    assert AttackEvidence.from_record({"attack_convergence": "bogus"}, {}).convergence is None


def test_verdict_round_trips_and_refuses_unknown_schemas() -> None:
    verdict = Verdict(RiskLevel.INCONCLUSIVE, "loss still falling", settle="raise iterations")
    assert Verdict.from_json(verdict.to_json()) == verdict
    for bad in ({"level": "low"}, {"schema": "medpfl.verdict/1", "level": "bogus"}, "low"):
        with pytest.raises(MedPFLError):
            Verdict.from_json(bad)
