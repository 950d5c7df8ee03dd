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

import ctypes
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from medpfl_app.attacks.convergence import MIN_REDUCTION, assess_convergence
from medpfl_app.attacks.knowledge import AttackerKnowledge
from medpfl_app.attacks.labels import expected_probabilities, recover_labels_from_update
from medpfl_app.attacks.matching_config import Init, MatchingConfig
from medpfl_app.attacks.objective import (
    MatchingObjective,
    matching_loss,
    select_layers,
    target_sq_norm,
    total_variation,
)
from medpfl_app.attacks.result import AttackResult
from medpfl_app.attacks.victim import Victim, resolve_mode, target_update
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


class _TimeLimitReached(Exception):
    """Raised inside the closure to end an optimiser step once the attack's time limit has passed."""


def _initial_images(
    config: MatchingConfig, shape: tuple[int, ...], prior: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    if config.init == "randn":
        return torch.randn(shape, generator=generator)
    if config.init == "rand":
        return torch.rand(shape, generator=generator)
    if config.init == "patterned":
        tile_shape = shape[:3] + tuple(-(-s // 2) for s in shape[3:])
        tile = torch.rand(tile_shape, generator=generator)
        tiled = tile.repeat(1, 1, 1, *([2] * (len(shape) - 3)))
        return tiled[(...,) + tuple(slice(0, s) for s in shape[3:])].contiguous()
    if prior is None:
        raise MedPFLError("init 'prior' needs a prior image", fix="pass prior=... to run() or choose another init")
    base = prior.float().reshape(shape[-len(prior.shape) :]) if prior.ndim < len(shape) else prior.float()
    return (base.expand(shape) + 0.01 * torch.randn(shape, generator=generator)).clamp(0, 1)


_MALLOC_TUNED = False


def _reduce_allocator_churn() -> None:
    """Keep freed CPU tensor memory in the process heap instead of returning it to the OS (glibc only, once).

    The double backward allocates and frees dozens of multi-MB temporaries per iteration (at 64² with 8 restarts
    the first block's activations are 2 MB each). With glibc's defaults such blocks are served by ``mmap`` or
    trimmed from the heap on free, so every iteration page-faults fresh memory again (the profiler showed 2 MB
    ``fill_`` calls taking ~1.6 ms). Raising the mmap and trim thresholds lets them be reused: 4–20 % less wall
    time per iteration at 64² on a shared CPU (noisy), identical numbers. The cost is that the process keeps up to
    256 MB of freed heap, process-wide: so it is opt-in (``MEDPFL_MALLOC_TUNING=1``, as `benchmarks/bench_attacks.py`
    sets it), never a side effect inside a long-running NVFlare server that merely runs the audit. Applied once.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED or os.environ.get("MEDPFL_MALLOC_TUNING", "0") != "1" or not sys.platform.startswith("linux"):
        return
    _MALLOC_TUNED = True
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's maximum, 32 MB
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        pass


@dataclass
class _BestIterate:
    """Per restart: the best finite matching loss so far with its images (and soft labels), and the last loss."""

    loss: torch.Tensor
    images: torch.Tensor
    soft: torch.Tensor | None
    last: torch.Tensor

    @classmethod
    def start(cls, images: torch.Tensor, soft: torch.Tensor | None) -> _BestIterate:
        restarts = images.shape[0]
        return cls(
            loss=torch.full((restarts,), math.inf),
            images=images.detach().clone(),
            soft=None if soft is None else soft.detach().clone(),
            last=torch.full((restarts,), math.inf),
        )

    def record(self, match: torch.Tensor, images: torch.Tensor, soft: torch.Tensor | None) -> None:
        match = match.detach()
        improved = torch.isfinite(match) & (match < self.loss)
        if improved.any():
            self.loss.copy_(torch.where(improved, match, self.loss))
            mask = improved.reshape(-1, *([1] * (images.ndim - 1)))
            self.images.copy_(torch.where(mask, images.detach(), self.images))
            if self.soft is not None and soft is not None:
                self.soft.copy_(torch.where(improved[:, None, None], soft.detach(), self.soft))
        self.last.copy_(match)

    def restart(self) -> int:
        """The restart with the lowest finite loss (restart 0 when none is finite)."""
        finite = torch.where(torch.isfinite(self.loss), self.loss, torch.full_like(self.loss, math.inf))
        return int(torch.argmin(finite))


class _ScaledClosure:
    """The optimiser's closure: one evaluation of every restart, recorded, scaled, with gradients set.

    Each restart's objective is divided by its value at the first evaluation (the initialisation): the optimiser
    minimises the objective relative to where it started, a loss of 1 at the start whatever the update's scale.
    All terms (matching, TV, L2, BN) are divided by the same constant, so the priors keep their weight relative to
    the matching term. Past the deadline it raises `_TimeLimitReached` before a step's next evaluation.
    """

    def __init__(
        self,
        objective: MatchingObjective,
        images: torch.Tensor,
        soft: torch.Tensor | None,
        best: _BestIterate,
        *,
        signed: bool,
        deadline: float | None,
    ) -> None:
        self.objective, self.images, self.soft, self.best = objective, images, soft, best
        self.variables = [images] if soft is None else [images, soft]
        self.signed, self.deadline = signed, deadline
        self.evaluations = 0
        self.step_evaluations = 0
        self.scale: torch.Tensor | None = None
        self.initial_match = torch.full((images.shape[0],), math.nan)

    def __call__(self) -> torch.Tensor:
        if self.deadline is not None and self.step_evaluations > 0 and _clock() >= self.deadline:
            raise _TimeLimitReached  # ends an L-BFGS step (and its line search) before one more evaluation
        self.evaluations += 1
        self.step_evaluations += 1
        total, match = self.objective(self.images, self.soft)
        self.best.record(match, self.images, self.soft)
        if self.scale is None:
            first = total.detach()
            usable = torch.isfinite(first) & (first > 0)
            self.scale = torch.where(
                usable, 1 / torch.where(usable, first, torch.ones_like(first)), torch.ones_like(first)
            )
            self.initial_match.copy_(match.detach())
        loss = (total * self.scale).sum()
        if torch.isfinite(loss):
            grads = torch.autograd.grad(loss, self.variables)
        else:
            grads = tuple(torch.zeros_like(v) for v in self.variables)
        for variable, gradient in zip(self.variables, grads):
            variable.grad = gradient
        if self.signed:
            self.images.grad.sign_()  # type: ignore[union-attr]
        return loss.detach()


def _attack_labels(
    knowledge: AttackerKnowledge,
    config: MatchingConfig,
    victim: Victim,
    mode: str,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """``(labels, soft labels to optimise or None, where the labels came from)`` for the recipe's label policy."""
    n_images = knowledge.images
    if config.labels == "optimize":
        soft = torch.randn(config.restarts, n_images, knowledge.num_classes, generator=generator)
        return torch.zeros(n_images, dtype=torch.long), soft.requires_grad_(True), "optimised"
    if knowledge.labels is not None and config.labels == "auto":
        return knowledge.labels.long(), None, "known"
    gradient_scale = mode == "gradient" or knowledge.learning_rate is not None
    mean_probs = (
        expected_probabilities(lambda x: victim.logits(victim.params, x), knowledge.image_shape, seed=config.seed)
        if gradient_scale and n_images > 1
        else None
    )
    labels = recover_labels_from_update(
        knowledge.model,
        target_update(knowledge, "gradient" if mode == "gradient" else "approximate"),
        n_images,
        method=config.label_method,
        mean_probs=mean_probs,
    )
    return labels, None, "recovered"


def _build_optimizer(
    config: MatchingConfig, variables: list[torch.Tensor]
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler | None]:
    if config.optimizer == "lbfgs":
        # Tolerances are left to torch's defaults so that a converged step ends early; every evaluation is counted.
        optimizer: torch.optim.Optimizer = torch.optim.LBFGS(
            variables,
            lr=config.lr,
            max_iter=config.lbfgs_max_iter,
            history_size=100,
            line_search_fn=None if config.line_search == "none" else config.line_search,
        )
    else:
        optimizer = torch.optim.Adam(variables, lr=config.lr)
    if not config.lr_decay:
        return optimizer, None
    milestones = [int(config.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def _optimise(
    attack_name: str,
    config: MatchingConfig,
    closure: _ScaledClosure,
    *,
    deadline: float | None,
    progress: bool,
    callback: Callable[[int, torch.Tensor], None] | None,
) -> tuple[int, str, list[torch.Tensor]]:
    """Run the optimiser until the budget, the stop loss, divergence or the deadline; return
    ``(iterations, stop reason, best-so-far matching loss per restart after each iteration)``."""
    best, images = closure.best, closure.images
    optimizer, scheduler = _build_optimizer(config, closure.variables)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.iterations, desc=attack_name, unit="it", leave=False)
    iterations, stop_reason = 0, "budget"
    trace: list[torch.Tensor] = []
    for iterations in range(1, config.iterations + 1):
        closure.step_evaluations = 0
        try:
            loss = optimizer.step(closure)  # type: ignore[arg-type]
        except _TimeLimitReached:
            trace.append(best.loss.clone())
            stop_reason = "time_limit"
            break
        trace.append(best.loss.clone())
        if scheduler is not None:
            scheduler.step()
        if config.box:
            with torch.no_grad():
                images.clamp_(0, 1)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(best.loss.min()):.3g}")
        if callback is not None:
            callback(iterations, best.last.clone())
        if not torch.isfinite(torch.as_tensor(loss)):
            stop_reason = "diverged"  # DLG often does; the best finite iterate is kept
            break
        reduced = best.last * MIN_REDUCTION <= closure.initial_match
        if config.stop_loss > 0 and bool(((best.last < config.stop_loss) & reduced).all()):
            stop_reason = "stop_loss"
            break
        if deadline is not None and _clock() >= deadline:
            stop_reason = "time_limit"
            break
    if bar is not None:
        bar.close()
    return iterations, stop_reason, trace


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
    observed_bn = victim.observed_bn_stats(knowledge, knowledge.local_steps) if config.bn > 0 else {}
    if config.bn > 0 and not observed_bn:
        raise MedPFLError(
            "the BN-statistics prior needs BatchNorm running buffers in the update and BN in train mode",
            fix="attack an update that carries running_mean/running_var (bn_buffers_included) or set bn=0",
        )
    generator = torch.Generator().manual_seed(config.seed)
    shape = (config.restarts, knowledge.images, *knowledge.image_shape)
    images = _initial_images(config, shape, prior, generator).requires_grad_(True)
    initial_images = images.detach().clone()
    labels, soft_labels, labels_source = _attack_labels(knowledge, config, victim, mode, generator)
    objective = MatchingObjective(
        victim,
        knowledge,
        config,
        mode=mode,
        labels=labels,
        observed_bn=observed_bn,
        target=select_layers(target_update(knowledge, mode), config.top_layers),
    )
    best = _BestIterate.start(images, soft_labels)
    closure = _ScaledClosure(objective, images, soft_labels, best, signed=config.signed, deadline=deadline)
    iterations, stop_reason, trace = _optimise(
        attack_name, config, closure, deadline=deadline, progress=progress, callback=callback
    )
    if stop_reason != "time_limit":
        # Score the final iterate too, so the last step is never lost (skipped past the time limit: it would be
        # one more evaluation beyond it; the best evaluated iterate is kept either way).
        _, match = objective(images.detach(), None if soft_labels is None else soft_labels.detach())
        best.record(match.detach(), images, soft_labels)
        trace[-1] = best.loss.clone()
    chosen = best.restart()
    if best.soft is not None:
        labels = best.soft[chosen].argmax(dim=-1)
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
