"""The escalating attack ladder: invert the whole update, then spend more budget only where it is not settled.

Pure (no NVFlare). Every stage attacks the site's update exactly as received, with the batch size, image count and
local steps its training facts declare (``whole_update``): a reduced attack is never the basis of a verdict.

0. ``screening``: a short probe of the same attack on the whole update (``plan.screening_iterations``). It
   settles the update when it already matches it, and it measures the attack's speed on this update: a later
   stage whose projected time does not fit the remaining budget is not started (it would only be cut short).
1. ``full``: the plan's attack at its base budget (``iterations``, ``restarts``).
2. ``escalation`` (up to ``plan.escalations`` times): ``escalation_factor``× the iterations and 2× the restarts
   of the previous stage, while no stage has matched the update and the per-update time budget
   (``plan.time_limit_s``) has room. One stall does not end the ladder (more restarts may find a better minimum);
   an escalation that stalls no lower than the stalled stage before it has reached a plateau and ends it.

The ladder is ``complete`` when a stage matched the update, reached a plateau, or when every stage ran to its own
end (none cut or skipped for time). `LadderOutcome.settle` says what would settle an incomplete ladder (a larger time budget,
projected from the measured speed, or more iterations). The probe keeps the audit's cost bounded where the budget
cannot settle anything: an update too large for the budget costs the probe, not the whole budget.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

from medpfl_app.attacks.convergence import MATCH_TOLERANCE, STALL_TOLERANCE, Convergence
from medpfl_app.attacks.knowledge import AttackerKnowledge
from medpfl_app.attacks.result import AttackResult
from medpfl_app.audit.ladder_stages import (
    LadderOutcome,
    Stage,
    StageBudget,
    StageResult,
    StageRunner,
    stage_budgets,
)
from medpfl_app.audit.plan import AuditPlan

__all__ = [
    "LadderOutcome",
    "Stage",
    "StageBudget",
    "StageResult",
    "StageRunner",
    "attack_stage",
    "run_ladder",
    "stage_budgets",
]


def run_ladder(
    knowledge: AttackerKnowledge,
    plan: AuditPlan,
    run_stage: StageRunner,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> LadderOutcome:
    """Run the full-update attack and escalate while it is unsettled and the time budget allows.

    Args:
        knowledge: The whole update as the server holds it.
        plan: Budget, escalation and time limit.
        run_stage: Runs one attack at one budget (e.g. `attack_stage`).
        clock: Monotonic seconds (injected for tests).
    """
    started = clock()
    deadline = None if plan.time_limit_s is None else started + plan.time_limit_s
    stages: list[StageResult] = []
    results: list[AttackResult] = []
    settle: str | None = None
    plateau = False
    budgets = stage_budgets(plan)
    for index, budget in enumerate(budgets):
        remaining = None if deadline is None else deadline - clock()
        projected = _projected_seconds(stages, budget)
        if stages and remaining is not None and (remaining <= 0 or (projected is not None and projected > remaining)):
            settle = _more_time_hint(plan, stages, budget)
            break
        if remaining is not None:  # the first stage always runs (at least one step): it measures the speed
            remaining = max(remaining, 1e-6)
        result = run_stage(knowledge, replace(budget, time_limit_s=remaining))
        stage = _stage_result(budget, result)
        stages.append(stage)
        results.append(result)
        if stage.convergence.status is Convergence.MATCHED or _plateaued(stages):
            settle = None  # a match, or a stronger stage that stalled no lower than the one before: settled
            plateau = stage.convergence.status is not Convergence.MATCHED
            break
        if stage.cut_by_time:
            settle = _more_time_hint(plan, stages, budgets[index + 1] if index + 1 < len(budgets) else budget)
            break
        if index == len(budgets) - 1 and stage.convergence.status is not Convergence.STALLED:
            settle = (
                f"the attack was still {stage.convergence.status} after {stage.iterations} iterations at the "
                f"last escalation: raise iterations or escalations in the audit plan"
            )
    best_index = min(range(len(results)), key=lambda i: _loss_key(results[i]))
    matched = any(stage.convergence.status is Convergence.MATCHED for stage in stages)
    complete = matched or plateau or (len(stages) == len(budgets) and not stages[-1].cut_by_time)
    return LadderOutcome(
        stages=tuple(stages),
        best=results[best_index],
        best_stage=best_index,
        complete=complete,
        time_budget_s=plan.time_limit_s,
        time_spent_s=clock() - started,
        settle=None if complete and stages[best_index].convergence.status.settled else settle,
    )


def attack_stage(plan: AuditPlan) -> StageRunner:
    """The stage runner for ``plan``'s registered attack (exact whole-update matching)."""
    import torch

    from medpfl_app.attacks import build_attack

    def run(knowledge: AttackerKnowledge, budget: StageBudget) -> AttackResult:
        attack = build_attack(
            plan.attack,
            **plan.options,
            iterations=budget.iterations,
            restarts=budget.restarts,
            seed=plan.seed,
            stop_loss=plan.stop_loss,
            time_limit_s=budget.time_limit_s,
        )
        torch.manual_seed(plan.seed)
        return attack.run(knowledge)

    return run


def _stage_result(budget: StageBudget, result: AttackResult) -> StageResult:
    config = dict(result.config or {})
    convergence = result.convergence
    if convergence is None:  # an attack that records no trace cannot show convergence: never settled
        from medpfl_app.attacks.convergence import assess_convergence

        convergence = assess_convergence([math.inf, result.matching_loss], moved=0.0)
    return StageResult(
        stage=budget.stage,
        attack=result.attack,
        images=int(result.reconstructions.shape[0]),
        local_steps=int(config.get("simulated_steps", 1)),
        update_mode=str(config.get("resolved_update_mode", "")),
        iterations=int(result.iterations),
        restarts=budget.restarts,
        wall_time_s=float(result.wall_time_s),
        stop_reason=result.stop_reason,
        convergence=convergence,
    )


def _plateaued(stages: list[StageResult]) -> bool:
    """Whether the last stage, stronger than the one before it (more iterations and restarts), stalled at a loss
    no more than `STALL_TOLERANCE` below that stage's stalled loss: escalating further cannot be expected to help
    (e.g. the floor a noise defense leaves). The screening probe never counts."""
    if len(stages) < 2 or Stage.SCREENING in (stages[-1].stage, stages[-2].stage):
        return False
    previous, last = stages[-2].convergence, stages[-1].convergence
    if previous.status is not Convergence.STALLED or last.status is not Convergence.STALLED:
        return False
    return last.final_loss >= (1 - STALL_TOLERANCE) * previous.final_loss


def _projected_seconds(stages: list[StageResult], budget: StageBudget) -> float | None:
    """Seconds ``budget`` would take at the speed measured so far (None before any stage ran).

    A stage stops early on a match: when the last stage was still improving fast enough that, continued at its
    average log-rate, it would reach `MATCH_TOLERANCE` within the budget, only those iterations are projected, so
    the probe's speed under load does not keep a nearly matched update from its base stage.
    """
    work = sum(max(s.iterations, 1) * s.restarts for s in stages)
    if not work:
        return None
    iterations = float(budget.iterations)
    last = stages[-1].convergence
    if (
        last.status is Convergence.IMPROVING
        and last.iterations > 0
        and 0 < last.final_loss < last.initial_loss
        and math.isfinite(last.initial_loss)
    ):
        rate = math.log(last.initial_loss / last.final_loss) / last.iterations
        to_match = math.log(max(last.final_loss / MATCH_TOLERANCE, 1.0)) / rate
        iterations = max(1.0, min(iterations, to_match))
    return sum(s.wall_time_s for s in stages) / work * iterations * budget.restarts


def _more_time_hint(plan: AuditPlan, stages: list[StageResult], next_budget: StageBudget) -> str:
    """ "raise time_limit_s to N s", N projected from the measured seconds per iteration-restart so far."""
    spent = sum(s.wall_time_s for s in stages)
    projected = _projected_seconds(stages, next_budget)
    needed = spent + (projected or 0.0)
    if projected is None or not math.isfinite(needed):
        return "raise time_limit_s in the audit plan (no stage finished within it)"
    return (
        f"raise time_limit_s in the audit plan to about {math.ceil(needed * 1.2)} s (now "
        f"{plan.time_limit_s:g} s) so the {next_budget.stage} stage of {next_budget.iterations} iterations × "
        f"{next_budget.restarts} restarts can finish"
    )


def _loss_key(result: AttackResult) -> float:
    loss = float(result.matching_loss)
    return loss if math.isfinite(loss) else math.inf
