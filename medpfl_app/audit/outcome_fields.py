"""The plain-JSON fields of an audit outcome: the server's indicators and the attack budget planned and spent.

Screening reads the update without optimising anything (its size, recovered labels, exposed BatchNorm statistics);
the ladder's best stage adds how the attack ended.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from medpfl_app.audit.plan import AuditPlan
from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:
    from medpfl_app.attacks.knowledge import AttackerKnowledge
    from medpfl_app.audit.ladder_stages import LadderOutcome


def screening_indicators(knowledge: AttackerKnowledge) -> dict[str, Any]:
    """What the server can state about the update without an attack: its size, norm, labels and BN exposure."""
    from medpfl_app.attacks import recover_labels_from_update

    images_declared = knowledge.images
    indicators: dict[str, Any] = {
        "images_per_update": images_declared,
        "local_steps": knowledge.local_steps,
        "update_norm": float(
            np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in _update_arrays(knowledge)))
        ),
        "bn_statistics_exposed": bool(knowledge.bn_running_stats),
        "bn_layers_exposed": len([k for k in (knowledge.bn_running_stats or {}) if k.endswith("running_mean")]),
    }
    # Screening: labels from the last layer (negated weight difference ≈ gradient direction), BN exposure above.
    try:
        gradient_like = {name: -value for name, value in knowledge.update.items()}
        labels = recover_labels_from_update(knowledge.model, gradient_like, images_declared)
        indicators["labels_recovered"] = True
        indicators["recovered_label_histogram"] = np.bincount(
            labels.numpy().astype(int), minlength=knowledge.num_classes
        ).tolist()
    except MedPFLError as error:
        indicators["labels_recovered"] = False
        indicators["label_recovery_error"] = error.problem if hasattr(error, "problem") else str(error)
    return indicators


def planned_budget(plan: AuditPlan) -> dict[str, Any]:
    """The attack budget before any stage ran (what a record shows when the update was not attacked)."""
    return {
        "attack": plan.attack,
        "iterations": 0,
        "restarts": plan.restarts,
        "stages_run": 0,
        "time_budget_s": plan.time_limit_s,
        "time_limit_s": plan.time_limit_s,
        "escalations": plan.escalations,
        "escalation_factor": plan.escalation_factor,
        "max_images": plan.max_images,
        "max_local_steps": plan.max_local_steps,
        "stop_loss": plan.stop_loss,
        "options": dict(plan.options),
        "ladder_complete": False,
        "settle": None,
        "not_attacked": None,
    }


def not_attacked_reason(plan: AuditPlan, images: int, local_steps: int) -> str | None:
    """Why the plan does not attack this whole update (None: it does)."""
    if plan.attack == "none":
        return "the audit plan runs no attack (attack: none)"
    if images > plan.max_images:
        return f"the update covers {images} images, above the plan's max_images {plan.max_images}"
    if local_steps > plan.max_local_steps:
        return f"the update covers {local_steps} local steps, above the plan's max_local_steps {plan.max_local_steps}"
    return None


def ladder_indicators(ladder: LadderOutcome) -> dict[str, Any]:
    """The indicators the ladder's best stage adds: how its optimisation ended and what it reconstructed."""
    result, best = ladder.best, ladder.stages[ladder.best_stage]
    return {
        "attack_convergence": str(best.convergence.status),
        "attack_initial_loss": best.convergence.initial_loss,
        "attack_matching_loss": float(result.matching_loss),
        "attack_stopped_early": bool(result.stopped_early),
        "attack_stop_reason": result.stop_reason,
        "attack_wall_time_s": round(ladder.time_spent_s, 3),
        "reconstructed_images": int(result.reconstructions.shape[0]),
        "labels_source": result.labels_source,
    }


def spent_budget(ladder: LadderOutcome) -> dict[str, Any]:
    """What the ladder spent: stages, iterations, restarts, time, and whether (and how) it settled."""
    result, best = ladder.best, ladder.stages[ladder.best_stage]
    return {
        "stages_run": len(ladder.stages),
        "best_stage": ladder.best_stage,
        "iterations": sum(stage.iterations for stage in ladder.stages),
        "restarts": max(stage.restarts for stage in ladder.stages),
        "evaluations": int(result.evaluations),
        "update_mode": best.update_mode,
        "wall_time_s": round(ladder.time_spent_s, 3),
        "time_spent_s": round(ladder.time_spent_s, 3),
        "stop_reason": ladder.final.stop_reason,
        "ladder_complete": ladder.complete,
        "settle": ladder.settle,
    }


def _update_arrays(knowledge: AttackerKnowledge) -> list[np.ndarray]:
    return [value.detach().double().numpy() for value in knowledge.update.values()]
