"""The pre-flight before round 1: a batch-1 undefended site is high, a batch-16 BN-local DP site is not.

Probes run on synthetic phantoms with an iteration-bounded plan (no wall-clock limit), so the verdicts do not depend
on how loaded the machine is.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.preflight import Factor, JobTraining, assess_job, assess_site, site_risk_facts
from medpfl_app.contracts.preflight import DeclaredDefense
from medpfl_app.contracts.verdict import RiskLevel

LENET = JobTraining(network="lenet_sigmoid", num_classes=4, image_size=32, learning_rate=0.05)
SMALL_CNN = JobTraining(network="small_cnn", num_classes=4, image_size=32, learning_rate=0.05)
#: The audit's default attack, bounded by iterations only.
ITERATION_PLAN = AuditPlan(time_limit_s=None)
BN_LOCAL_DP = (
    DeclaredDefense("drop_bn_stats", {}),
    DeclaredDefense("client_dp", {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5}),
)


@pytest.mark.slow
def test_batch_one_site_without_defense_is_flagged_high_before_round_one() -> None:
    """The literature's worst case, declared by the site: the probe reconstructs the synthetic image."""
    facts = site_risk_facts("site-1", [6, 6, 6, 6], batch_size=1, local_epochs=1, max_steps=1)

    result = assess_site(LENET, facts, plan=ITERATION_PLAN, what_ifs=False)

    assert result.level is RiskLevel.HIGH, result.summary
    assert result.probe is not None and result.probe.ssim_mean is not None and result.probe.ssim_mean > 0.9
    assert {factor.factor for factor in result.factors} >= {Factor.BATCH_OF_ONE, Factor.NO_DEFENSE}


def test_batch_sixteen_bn_local_dp_site_is_not_flagged_high() -> None:
    """Batch 16, BatchNorm statistics kept local, client-level DP: the probe attack does not reconstruct."""
    facts = site_risk_facts("site-2", [4, 4, 4, 4], batch_size=16, local_epochs=1, scope_defenses=BN_LOCAL_DP)
    plan = replace(ITERATION_PLAN, iterations=40, escalations=0, screening_iterations=0)

    result = assess_site(SMALL_CNN, facts, plan=plan, what_ifs=False)

    assert result.level is not RiskLevel.HIGH, result.summary
    assert result.probe is not None and result.probe.images == 16
    factors = {factor.factor for factor in result.factors}
    assert Factor.BN_STATS_SHARED not in factors and Factor.NO_DEFENSE not in factors
    assert Factor.BATCH_OF_ONE not in factors


def test_what_the_probe_cannot_simulate_makes_a_reconstruction_inconclusive() -> None:
    """DP-SGD is not simulated: a reconstruction without it is no evidence about the DP-SGD site."""
    facts = site_risk_facts(
        "site-1", [6, 6, 6, 6], batch_size=1, local_epochs=1, max_steps=1, dp_sgd_noise_multiplier=1.0
    )

    result = assess_site(LENET, facts, plan=ITERATION_PLAN, what_ifs=False)

    assert result.level is RiskLevel.INCONCLUSIVE
    assert result.probe is not None and any("DP-SGD" in limit for limit in result.probe.limits)


def test_a_missing_or_bad_site_reply_is_an_entry_not_an_error() -> None:
    """Untrusted replies: nothing sent, a reply naming another site, garbage — each gets its own entry."""
    good = site_risk_facts("site-1", [30, 30], batch_size=32, local_epochs=1, max_steps=1).to_json()
    plan = AuditPlan(attack="none")

    result = assess_job(
        LENET,
        {"site-1": good, "site-2": dict(good, site="site-1"), "site-3": {"schema": "x"}},
        expected_sites=("site-1", "site-2", "site-3", "site-4"),
        plan=plan,
        what_ifs=False,
    )

    by_site = {entry.site: entry for entry in result.sites}
    assert by_site["site-1"].problem is None and by_site["site-1"].probe is not None
    assert "site-1" in str(by_site["site-2"].problem)
    assert "schema" in str(by_site["site-3"].problem)
    assert by_site["site-4"].problem == "the site sent no pre-flight facts"
    assert all(by_site[s].level is RiskLevel.INCONCLUSIVE for s in ("site-2", "site-3", "site-4"))
    assert result.to_json()["schema"] == "medpfl.preflight/1"


def test_refusal_needs_the_policy_and_a_high_site() -> None:
    """The refuse policy is off by default; on, it refuses only when a site is high."""
    from medpfl_app.audit.preflight import JobPreflight, SitePreflight

    quiet = JobPreflight(job=LENET, sites=(SitePreflight("site-1", None, problem="none sent"),), refuse_high_risk=True)
    assert not quiet.refused and quiet.high_risk_sites == ()
