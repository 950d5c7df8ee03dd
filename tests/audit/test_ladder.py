"""The attack ladder: escalate only while unsettled and within the time budget; say what would settle it."""

from __future__ import annotations

import math

import pytest
import torch

from medpfl_app.attacks.convergence import Convergence, assess_convergence
from medpfl_app.attacks.result import AttackResult
from medpfl_app.audit.ladder import Stage, StageBudget, run_ladder, stage_budgets
from medpfl_app.audit.plan import AuditPlan


class FakeClock:
    """Monotonic seconds advanced by the scripted stages, so no test depends on real timing."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _result(
    losses: list[float], *, moved: float = 0.5, stop_reason: str = "budget", seconds: float = 1.0, restarts: int = 1
) -> AttackResult:
    return AttackResult(
        attack="scripted",
        reconstructions=torch.zeros(2, 1, 8, 8),
        labels=torch.zeros(2, dtype=torch.long),
        matching_loss=min(losses),
        restart_losses=(min(losses),),
        iterations=len(losses) - 1,
        wall_time_s=seconds,
        config={"resolved_update_mode": "approximate", "simulated_steps": 1},
        threat_model={},
        stop_reason=stop_reason,
        convergence=assess_convergence(losses, moved=moved),
    )


def _improving(iterations: int) -> list[float]:
    return [1.0 / (1 + i) for i in range(iterations + 1)]  # still falling steadily at the end


def _scripted(outcomes: list[tuple[list[float], str, float]], clock: FakeClock):
    calls: list[StageBudget] = []

    def run(knowledge, budget: StageBudget) -> AttackResult:
        losses, stop_reason, seconds = outcomes[len(calls)]
        calls.append(budget)
        clock.now += seconds
        return _result(losses, stop_reason=stop_reason, seconds=seconds, restarts=budget.restarts)

    return run, calls


def test_budgets_escalate_iterations_and_restarts() -> None:
    """Each escalation multiplies the iterations by the factor and doubles the restarts."""
    budgets = stage_budgets(
        AuditPlan(screening_iterations=0, iterations=100, restarts=1, escalations=2, escalation_factor=4)
    )
    assert [(b.stage, b.iterations, b.restarts) for b in budgets] == [
        (Stage.FULL, 100, 1),
        (Stage.ESCALATION, 400, 2),
        (Stage.ESCALATION, 1600, 4),
    ]


def test_a_matched_full_stage_ends_the_ladder_complete() -> None:
    """A stage that matched the update settles it: no escalation, complete, nothing to settle."""
    clock = FakeClock()
    matched = [1.0, 1e-3, 1e-11]
    run, calls = _scripted([(matched, "stop_loss", 2.0)], clock)
    outcome = run_ladder(None, AuditPlan(screening_iterations=0, iterations=2, time_limit_s=60), run, clock=clock)
    assert len(calls) == 1 and outcome.complete and outcome.matched and outcome.settle is None
    assert outcome.stages[0].convergence.status is Convergence.MATCHED and outcome.time_spent_s == 2.0


def test_an_unsettled_stage_escalates_and_the_best_loss_is_kept() -> None:
    """Improving stages escalate with the remaining time; a stall does not end the ladder (more restarts may do
    better); the lowest loss is the one scored, and a ladder that ran every stage with a stall is complete."""
    clock = FakeClock()
    stalled = [1.0, 0.05] + [0.01] * 40
    run, calls = _scripted([(_improving(30), "budget", 1.0), (stalled, "budget", 3.0), (stalled, "budget", 5.0)], clock)
    outcome = run_ladder(None, AuditPlan(screening_iterations=0, iterations=30, time_limit_s=None), run, clock=clock)
    assert [b.stage for b in calls] == [Stage.FULL, Stage.ESCALATION, Stage.ESCALATION]
    assert outcome.complete and outcome.settled and outcome.best_stage == 1 and outcome.settle is None
    assert outcome.stages[1].convergence.status is Convergence.STALLED

    clock = FakeClock()
    run, calls = _scripted([(_improving(30), "budget", 1.0), (stalled, "budget", 3.0)], clock)
    outcome = run_ladder(None, AuditPlan(screening_iterations=0, iterations=30, time_limit_s=60), run, clock=clock)
    assert calls[0].time_limit_s == 60 and calls[1].time_limit_s == 59  # each stage gets what is left
    assert len(calls) == 2 and not outcome.complete and "raise time_limit_s" in outcome.settle


def test_a_ladder_cut_by_the_time_budget_is_incomplete_and_names_the_budget_needed() -> None:
    """The time budget ends the ladder mid-stage: incomplete, with 'raise time_limit_s to about N s'."""
    clock = FakeClock()
    run, calls = _scripted([(_improving(30), "budget", 1.0), (_improving(10), "time_limit", 9.0)], clock)
    outcome = run_ladder(None, AuditPlan(screening_iterations=0, iterations=30, time_limit_s=10), run, clock=clock)
    assert len(calls) == 2 and not outcome.complete and not outcome.settled
    assert "raise time_limit_s" in outcome.settle and "about" in outcome.settle


def test_every_escalation_still_improving_completes_but_stays_unsettled() -> None:
    """All stages ran to their end and the loss still fell: complete, yet nothing settled (more iterations)."""
    clock = FakeClock()
    outcomes = [(_improving(n), "budget", 1.0) for n in (30, 120, 480)]
    run, calls = _scripted(outcomes, clock)
    outcome = run_ladder(
        None, AuditPlan(screening_iterations=0, iterations=30, escalations=2, time_limit_s=None), run, clock=clock
    )
    assert len(calls) == 3 and outcome.complete and not outcome.settled
    assert "raise iterations" in outcome.settle


def test_a_no_progress_stage_escalates() -> None:
    """An attack that never moved is no evidence: the ladder escalates instead of stopping."""
    clock = FakeClock()
    stuck = [1.0] * 31
    run, calls = _scripted([(stuck, "budget", 1.0), ([1.0, 1e-6, 1e-10], "stop_loss", 1.0)], clock)
    outcome = run_ladder(None, AuditPlan(screening_iterations=0, iterations=30, time_limit_s=None), run, clock=clock)
    assert outcome.stages[0].convergence.status is Convergence.NO_PROGRESS
    assert len(calls) == 2 and outcome.matched


@pytest.mark.parametrize("losses", [[math.inf, 1.0], [2.0, 1.0]])
def test_stage_json_is_plain(losses) -> None:
    """Stage records are plain JSON with the convergence evidence."""
    import json

    clock = FakeClock()
    run, _ = _scripted([(losses, "budget", 1.0)] * 3, clock)
    outcome = run_ladder(None, AuditPlan(screening_iterations=0, iterations=1, time_limit_s=None), run, clock=clock)
    stage = outcome.stages[0].to_json()
    assert json.loads(json.dumps(stage))["convergence"]["status"] in {c.value for c in Convergence}
    assert stage["whole_update"] is True and stage["stage"] == "full"


def test_screening_settles_a_matched_update_and_skips_stages_that_cannot_fit() -> None:
    """The probe measures the attack's speed: a full stage projected past the budget is not started at all."""
    clock = FakeClock()
    slow_probe = (_improving(20), "budget", 4.0)  # 0.2 s per iteration: 100 iterations would need 20 s
    run, calls = _scripted([slow_probe], clock)
    outcome = run_ladder(None, AuditPlan(screening_iterations=20, iterations=100, time_limit_s=10), run, clock=clock)
    assert [b.stage for b in calls] == [Stage.SCREENING]
    assert not outcome.complete and "about 29 s" in outcome.settle  # 4 s spent + 20 s projected, 20 % margin

    clock = FakeClock()
    run, calls = _scripted([([1.0, 1e-5, 1e-11], "stop_loss", 0.5)], clock)
    outcome = run_ladder(None, AuditPlan(screening_iterations=20, iterations=100, time_limit_s=10), run, clock=clock)
    assert [b.stage for b in calls] == [Stage.SCREENING] and outcome.matched and outcome.complete


def test_a_stronger_stage_stalling_no_lower_is_a_plateau_that_completes_the_ladder() -> None:
    """Full and first escalation both stalled at the same floor (e.g. a noise defense): complete, no more stages."""
    clock = FakeClock()
    floor = [1.0] + [0.9971] * 5 + [0.997] * 60
    run, calls = _scripted([(floor, "budget", 1.0), (floor, "budget", 4.0), (floor, "budget", 16.0)], clock)
    outcome = run_ladder(None, AuditPlan(screening_iterations=0, iterations=65, time_limit_s=None), run, clock=clock)
    assert [b.stage for b in calls] == [Stage.FULL, Stage.ESCALATION]
    assert outcome.complete and outcome.settled and outcome.settle is None


def test_a_probe_heading_fast_for_a_match_is_not_kept_from_its_base_stage() -> None:
    """A slow probe (a loaded machine) whose loss falls by decades projects only the iterations it needs to match."""
    clock = FakeClock()
    fast_fall = [10.0 ** -(i / 2) for i in range(21)]  # 1 → 1e-10 in 20 iterations at 0.5 decade per iteration
    fast_fall[-1] = 2e-10  # just short of a match
    run, calls = _scripted([(fast_fall, "budget", 4.0), ([1.0, 1e-6, 1e-11], "stop_loss", 0.3)], clock)
    outcome = run_ladder(None, AuditPlan(screening_iterations=20, iterations=100, time_limit_s=10), run, clock=clock)
    assert [b.stage for b in calls] == [Stage.SCREENING, Stage.FULL] and outcome.matched
