"""The ladder's vocabulary: its stages, what each may spend (`stage_budgets`), what each did, and the outcome.

Plain frozen data (`StageResult.to_json` is what an audit record's ``ladder`` holds); `medpfl_app.audit.ladder`
runs the stages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from medpfl_app.attacks.convergence import Convergence, ConvergenceEvidence
from medpfl_app.attacks.knowledge import AttackerKnowledge
from medpfl_app.attacks.result import AttackResult
from medpfl_app.audit.plan import AuditPlan


class Stage(StrEnum):
    """Where in the ladder an attack ran."""

    SCREENING = "screening"
    FULL = "full"
    ESCALATION = "escalation"


@dataclass(frozen=True)
class StageBudget:
    """What one stage may spend."""

    stage: Stage
    iterations: int
    restarts: int
    time_limit_s: float | None


@dataclass(frozen=True)
class StageResult:
    """What one stage did (plain JSON through `to_json`).

    Attributes:
        stage: Full or escalation.
        attack: Registered attack name.
        images: Images reconstructed (the whole update's declared images).
        local_steps: Local steps simulated or approximated.
        update_mode: How the update was simulated (``approximate`` is exact for one SGD step).
        iterations: Optimiser steps run.
        restarts: Initialisations.
        wall_time_s: Seconds the stage took.
        stop_reason: ``budget``, ``stop_loss``, ``time_limit`` or ``diverged``.
        convergence: Evidence of how the optimisation ended.
        whole_update: Always True for ladder stages (kept explicit in the record for readers).
    """

    stage: Stage
    attack: str
    images: int
    local_steps: int
    update_mode: str
    iterations: int
    restarts: int
    wall_time_s: float
    stop_reason: str
    convergence: ConvergenceEvidence
    whole_update: bool = True

    @property
    def cut_by_time(self) -> bool:
        return self.stop_reason == "time_limit"

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": str(self.stage),
            "attack": self.attack,
            "images": self.images,
            "local_steps": self.local_steps,
            "update_mode": self.update_mode,
            "iterations": self.iterations,
            "restarts": self.restarts,
            "wall_time_s": round(self.wall_time_s, 3),
            "stop_reason": self.stop_reason,
            "whole_update": self.whole_update,
            "convergence": self.convergence.to_json(),
        }


@dataclass(frozen=True, eq=False)
class LadderOutcome:
    """The stages run on one update and the reconstruction to score.

    Attributes:
        stages: Every stage run, in order.
        best: The attack result with the lowest matching loss (the reconstruction the site scores).
        best_stage: Index of ``best`` in ``stages``.
        complete: A stage matched the update, two stages plateaued, or every stage ran to its own end.
        time_budget_s: The per-update budget (None: unlimited).
        time_spent_s: Seconds all stages took.
        settle: What would settle an unsettled ladder (None when settled).
    """

    stages: tuple[StageResult, ...]
    best: AttackResult
    best_stage: int
    complete: bool
    time_budget_s: float | None
    time_spent_s: float
    settle: str | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> StageResult:
        return self.stages[-1]

    @property
    def settled(self) -> bool:
        """Whether the best stage's optimisation settled (matched or stalled)."""
        return self.stages[self.best_stage].convergence.status.settled

    @property
    def matched(self) -> bool:
        return self.stages[self.best_stage].convergence.status is Convergence.MATCHED


#: ``run_stage(knowledge, budget) -> AttackResult``: one attack at one budget (injected so tests can script it).
StageRunner = Callable[[AttackerKnowledge, StageBudget], AttackResult]


def stage_budgets(plan: AuditPlan) -> list[StageBudget]:
    """The budgets of the full stage and each escalation (time limits are filled in as the ladder runs)."""
    budgets = [StageBudget(Stage.SCREENING, plan.screening_iterations, 1, None)] if plan.screening_iterations else []
    budgets.append(StageBudget(Stage.FULL, plan.iterations, plan.restarts, None))
    for level in range(1, plan.escalations + 1):
        budgets.append(
            StageBudget(
                Stage.ESCALATION,
                plan.iterations * plan.escalation_factor**level,
                plan.restarts * 2**level,
                None,
            )
        )
    return budgets
