"""The optimisation engine shared by every gradient-matching attack.

Restarts live in one tensor ``(R, N, C, H, W)`` and are simulated together (`medpfl_app.attacks.victim`), so R
restarts cost one vectorised forward/double-backward per iteration instead of R sequential ones. Gradients are
taken only with respect to the attack's variables (never accumulated into model parameters), and the best
iterate of every restart is kept in a preallocated buffer.

The optimiser sees each restart's objective divided by its value at the initialisation (a loss of 1 at the start),
so that its tolerances are relative to where the attack started: on a freshly initialised sigmoid LeNet random
noise already matches the gradient to a relative loss of ~5e-6, and L-BFGS on the unscaled objective stopped at
its first convergence check and returned the noise. Every recorded loss stays the unscaled `matching_loss`; the
result carries the evidence of convergence (`medpfl_app.attacks.convergence`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

import torch

from medpfl_app.attacks.allocator import reduce_allocator_churn as _reduce_allocator_churn  # benchmarks use this name
from medpfl_app.attacks.attack_labels import attack_labels
from medpfl_app.attacks.best_iterate import BestIterate
from medpfl_app.attacks.convergence import assess_convergence
from medpfl_app.attacks.initial_images import initial_images as _initial_images  # tests use this name
from medpfl_app.attacks.knowledge import AttackerKnowledge
from medpfl_app.attacks.matching_config import Init, MatchingConfig
from medpfl_app.attacks.objective import (
    MatchingObjective,
    matching_loss,
    select_layers,
    target_sq_norm,
    total_variation,
)
from medpfl_app.attacks.optimisation_loop import optimise
from medpfl_app.attacks.result import AttackResult
from medpfl_app.attacks.scaled_closure import ScaledClosure
from medpfl_app.attacks.victim import UpdateMode, Victim, resolve_mode, target_update
from medpfl_app.errors import MedPFLError

__all__ = [
    "Init",
    "MatchingConfig",
    "TRACE_POINTS",
    "downsample_trace",
    "matching_loss",
    "run_matching",
    "target_sq_norm",
    "total_variation",
]

#: The engine's clock (a module attribute so that tests can replace it without touching `time` globally).
_clock = time.perf_counter
#: At most this many points of the best-so-far loss trace are kept in the result (first and last always).
TRACE_POINTS = 256


def run_matching(
    attack_name: str,
    knowledge: AttackerKnowledge,
    config: MatchingConfig,
    *,
    prior: torch.Tensor | None = None,
    progress: bool = False,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> AttackResult:
    """Reconstruct the images behind ``knowledge.update`` with the recipe ``config``.

    Args:
        attack_name: Name recorded in the result.
        knowledge: What the attacker knows.
        config: The recipe and budget.
        prior: Prior image ``(C, H, W)`` for ``init='prior'``.
        progress: Show a tqdm progress bar.
        callback: Called as ``callback(iteration, matching_losses)`` after each iteration (e.g. for logging).
    """
    started = _clock()
    deadline = None if config.time_limit_s is None else started + config.time_limit_s
    _reduce_allocator_churn()
    victim = Victim(knowledge)
    mode = resolve_mode(knowledge, config.update_mode)
    observed_bn = _observed_bn_statistics(victim, knowledge, config)
    generator = torch.Generator().manual_seed(config.seed)
    shape = (config.restarts, knowledge.images, *knowledge.image_shape)
    images = _initial_images(config, shape, prior, generator).requires_grad_(True)
    initial_images = images.detach().clone()
    labels, soft_labels, labels_source = attack_labels(knowledge, config, victim, mode, generator)
    objective = MatchingObjective(
        victim,
        knowledge,
        config,
        mode=mode,
        labels=labels,
        observed_bn=observed_bn,
        target=select_layers(target_update(knowledge, mode), config.top_layers),
    )
    best = BestIterate.start(images, soft_labels)
    closure = ScaledClosure(objective, images, soft_labels, best, signed=config.signed, deadline=deadline, clock=_clock)
    iterations, stop_reason, trace = optimise(
        attack_name, config, closure, deadline=deadline, progress=progress, callback=callback, clock=_clock
    )
    if stop_reason != "time_limit":  # past the time limit it would be one more evaluation beyond it
        _score_final_iterate(objective, closure, trace)
    if best.soft is not None:
        labels = best.soft[best.restart()].argmax(dim=-1)
    return _result(
        attack_name,
        knowledge,
        config,
        mode=mode,
        closure=closure,
        initial_images=initial_images,
        labels=labels,
        labels_source=labels_source,
        run=(iterations, stop_reason, trace),
        started=started,
    )


def _score_final_iterate(objective: MatchingObjective, closure: ScaledClosure, trace: list[torch.Tensor]) -> None:
    """Score the final iterate too, so the last step is never lost (the best evaluated iterate is kept either way)."""
    images, soft = closure.images, closure.soft
    _, match = objective(images.detach(), None if soft is None else soft.detach())
    closure.best.record(match.detach(), images, soft)
    trace[-1] = closure.best.loss.clone()


def _observed_bn_statistics(
    victim: Victim, knowledge: AttackerKnowledge, config: MatchingConfig
) -> dict[str, torch.Tensor]:
    """The batch statistics the BN prior matches (none without it), or an error when the update cannot give them."""
    observed_bn = victim.observed_bn_stats(knowledge, knowledge.local_steps) if config.bn > 0 else {}
    if config.bn > 0 and not observed_bn:
        raise MedPFLError(
            "the BN-statistics prior needs BatchNorm running buffers in the update and BN in train mode",
            fix="attack an update that carries running_mean/running_var (bn_buffers_included) or set bn=0",
        )
    return observed_bn


def _result(
    attack_name: str,
    knowledge: AttackerKnowledge,
    config: MatchingConfig,
    *,
    mode: UpdateMode,
    closure: ScaledClosure,
    initial_images: torch.Tensor,
    labels: torch.Tensor,
    labels_source: str,
    run: tuple[int, str, list[torch.Tensor]],
    started: float,
) -> AttackResult:
    """The result of the best restart, with its loss trace and the evidence of convergence."""
    iterations, stop_reason, trace = run
    best = closure.best
    chosen = best.restart()
    losses = [float(closure.initial_match[chosen])] + [float(step[chosen]) for step in trace]
    moved = _relative_change(best.images[chosen], initial_images[chosen])
    return AttackResult(
        attack=attack_name,
        reconstructions=best.images[chosen].clamp(0, 1),
        labels=labels.detach().clone(),
        matching_loss=float(best.loss[chosen]),
        restart_losses=tuple(float(v) for v in best.loss),
        iterations=iterations,
        wall_time_s=_clock() - started,
        config={
            **asdict(config),
            "resolved_update_mode": mode,
            "simulated_steps": knowledge.local_steps if mode == "unrolled" else 1,
        },
        evaluations=closure.evaluations,
        threat_model=knowledge.threat_model(),
        labels_source=labels_source,
        stopped_early=stop_reason == "stop_loss",
        stop_reason=stop_reason,
        initial_loss=float(closure.initial_match[chosen]),
        loss_trace=downsample_trace(losses),
        moved_from_init=moved,
        convergence=assess_convergence(losses, moved=moved, diverged=stop_reason == "diverged"),
    )


def _relative_change(new: torch.Tensor, old: torch.Tensor) -> float:
    """``‖new − old‖ / ‖old‖`` (the absolute change when ``old`` is zero)."""
    change = float((new.double() - old.double()).norm())
    size = float(old.double().norm())
    return change / size if size > 0 else change


def downsample_trace(values: list[float], points: int = TRACE_POINTS) -> tuple[float, ...]:
    """At most ``points`` values of ``values`` at evenly spaced indices, always the first and the last.

    Point ``k`` of ``m`` is ``values[round(k · (len − 1) / (m − 1))]``; a trace of at most ``points`` values is
    returned whole.
    """
    if points < 2:
        raise MedPFLError(f"a loss trace needs at least 2 points, got {points}", fix="keep points >= 2")
    if len(values) <= points:
        return tuple(values)
    last = len(values) - 1
    return tuple(values[round(k * last / (points - 1))] for k in range(points))
