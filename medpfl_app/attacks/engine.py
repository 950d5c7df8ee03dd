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
from typing import Literal

import torch
import torch.nn.functional as F

from medpfl_app.attacks.convergence import MIN_REDUCTION, assess_convergence
from medpfl_app.attacks.knowledge import AttackerKnowledge
from medpfl_app.attacks.labels import LabelMethod, expected_probabilities, recover_labels_from_update
from medpfl_app.attacks.result import AttackResult
from medpfl_app.attacks.victim import Victim, resolve_mode, target_update
from medpfl_app.errors import MedPFLError

Init = Literal["randn", "rand", "patterned", "prior"]

#: The engine's clock (a module attribute so that tests can replace it without touching `time` globally).
_clock = time.perf_counter
#: At most this many points of the best-so-far loss trace are kept in the result (first and last always).
TRACE_POINTS = 256


class _TimeLimitReached(Exception):
    """Raised inside the closure to end an optimiser step once the attack's time limit has passed."""


@dataclass(frozen=True)
class MatchingConfig:
    """Budget and recipe of a gradient-matching attack; every attack preset is one of these.

    Attributes:
        iterations: Optimiser steps. An Adam step is one matching-loss evaluation; an L-BFGS step runs up to
            ``lbfgs_max_iter`` quasi-Newton updates (torch's ``max_iter``, 20 in the DLG/iDLG/CPL code).
        lbfgs_max_iter: Quasi-Newton updates per L-BFGS step.
        line_search: L-BFGS step length: ``none`` (the fixed ``lr``, as the DLG/iDLG/CPL code) or ``strong_wolfe``
            (torch's strong-Wolfe line search: more evaluations per update, far fewer updates to converge).
        restarts: Independent initialisations, simulated together; the best by matching loss is returned.
        optimizer: ``lbfgs`` (DLG/iDLG/CPL) or ``adam`` (Inverting Gradients and later).
        lr: Step size.
        objective: ``l2`` (sum of squared differences relative to ``‖target‖²``) or ``cosine`` (1 − cosine
            similarity over the layers).
        signed: Step along the sign of the image gradient (Inverting Gradients).
        lr_decay: Multiply the step size by 0.1 at 3/8, 5/8 and 7/8 of the iterations.
        tv: Weight of the anisotropic total-variation prior.
        l2: Weight of the squared-norm image prior.
        bn: Weight of the BatchNorm-statistics term (needs BN buffers in the update).
        gradient_weight: Weight of the update-matching term (0 = BN statistics and priors only).
        box: Clamp images to [0, 1] after every step.
        init: ``randn`` N(0,1), ``rand`` U(0,1), ``patterned`` (CPL: a half-size random tile repeated 2×2),
            ``prior`` (a given image plus small noise).
        labels: ``auto`` (known labels if granted, else recovered), ``recover`` (always recover) or ``optimize``
            (DLG: soft labels optimised jointly).
        label_method: Method for label recovery (see `medpfl_app.attacks.labels.recover_labels`).
        top_layers: Match only the k update tensors with the largest norm (None = all).
        update_mode: For weight differences: ``auto``, ``approximate`` (−Δ/(η·S) as a gradient) or ``unrolled``
            (simulate the S local steps and match Δ).
        stop_loss: Stop once every restart's matching loss is below this and at least
            `~medpfl_app.attacks.convergence.MIN_REDUCTION` times below its value at the initialisation (0 disables
            early stopping). The loss is relative (see `matching_loss`), so the tolerance does not depend on the
            update's scale; the reduction condition keeps it meaningful where the initialisation already matches
            closely (random noise on a freshly initialised sigmoid LeNet: ~5e-6, below iDLG's 1e-6 after a
            five-fold reduction).
        time_limit_s: Stop once this many seconds of wall time were used (None: no limit). Checked between
            optimiser steps and before every evaluation of the matching loss inside a step (an L-BFGS step runs up
            to ``lbfgs_max_iter`` of them, more with a line search), so the limit is overrun by at most the one
            evaluation in progress when it passes. Every step runs at least one evaluation, and a run stopped by
            the limit is not re-scored after its last evaluation.
        batched: Simulate all restarts in one vectorised call (False runs them one after another; same results).
        seed: Seed of the initialisation.
    """

    iterations: int = 300
    lbfgs_max_iter: int = 1
    line_search: Literal["none", "strong_wolfe"] = "none"
    restarts: int = 1
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float = 1.0
    objective: Literal["l2", "cosine"] = "l2"
    signed: bool = False
    lr_decay: bool = False
    tv: float = 0.0
    l2: float = 0.0
    bn: float = 0.0
    gradient_weight: float = 1.0
    box: bool = False
    init: Init = "randn"
    labels: Literal["auto", "recover", "optimize"] = "auto"
    label_method: LabelMethod = "auto"
    top_layers: int | None = None
    update_mode: Literal["auto", "approximate", "unrolled"] = "auto"
    stop_loss: float = 0.0
    time_limit_s: float | None = None
    batched: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        import numbers

        def is_number(value: object) -> bool:  # NumPy scalars too; a bool is not a number here
            return isinstance(value, numbers.Real) and not isinstance(value, bool)

        def is_whole(value: object) -> bool:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        max_seed = 2**63 - 1  # torch.Generator.manual_seed takes any non-negative int64
        for name in ("iterations", "restarts", "lbfgs_max_iter"):
            value = getattr(self, name)
            if not is_whole(value) or value < 1:
                raise MedPFLError(f"attack {name} must be a whole number >= 1, got {value!r}",
                                  fix=f"give the attack a positive budget (e.g. {name}=1)")
        if self.top_layers is not None and (not is_whole(self.top_layers) or self.top_layers < 1):
            raise MedPFLError(
                f"top_layers must be a whole number >= 1 or None, got {self.top_layers!r}",
                fix="match the k update tensors with the largest norm with top_layers=k (k >= 1), or all with none",
            )
        if not is_whole(self.seed) or not 0 <= self.seed <= max_seed:
            raise MedPFLError(f"attack seed must be a whole number in [0, 2**63 - 1], got {self.seed!r}",
                              fix="set e.g. seed=0")
        if self.time_limit_s is not None and not (is_number(self.time_limit_s) and self.time_limit_s > 0
                                                  and math.isfinite(self.time_limit_s)):
            raise MedPFLError(
                f"time_limit_s must be a positive, finite number of seconds, got {self.time_limit_s!r}",
                fix="set e.g. time_limit_s=60, or None for no limit",
            )
        if not (is_number(self.lr) and self.lr > 0 and math.isfinite(self.lr)):
            raise MedPFLError(f"attack lr must be a positive, finite number, got {self.lr!r}", fix="set e.g. lr=0.1")
        for name in ("tv", "l2", "bn", "gradient_weight", "stop_loss"):
            value = getattr(self, name)
            if not (is_number(value) and value >= 0 and math.isfinite(value)):  # NaN fails every comparison
                raise MedPFLError(f"{name} must be a finite number >= 0, got {value!r}", fix=f"set {name} >= 0, e.g. 0")
        choices = {
            "optimizer": ("lbfgs", "adam"),
            "line_search": ("none", "strong_wolfe"),
            "objective": ("l2", "cosine"),
            "init": ("randn", "rand", "patterned", "prior"),
            "labels": ("auto", "recover", "optimize"),
            "update_mode": ("auto", "approximate", "unrolled"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise MedPFLError(f"unknown {name} {getattr(self, name)!r}", fix=f"use one of: {', '.join(allowed)}")


def total_variation(images: torch.Tensor, *, per_restart: bool = False) -> torch.Tensor:
    """Anisotropic TV: mean absolute difference of neighbouring pixels along the last two axes.

    With ``per_restart`` the leading axis indexes restarts and one value per restart is returned.
    """
    dims = tuple(range(1, images.ndim)) if per_restart else tuple(range(images.ndim))
    return sum(images.diff(dim=d).abs().mean(dim=dims) for d in (images.ndim - 2, images.ndim - 1))  # type: ignore[return-value]


def _per_restart_sum(values: torch.Tensor) -> torch.Tensor:
    return values.reshape(values.shape[0], -1).sum(dim=1)


def matching_loss(
    simulated: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    objective: str,
    *,
    target_sq: float | None = None,
) -> torch.Tensor:
    """Distance per restart ``(R,)`` between simulated updates ``(R, …)`` and the observed one, over ``target``.

    ``l2`` is the DLG squared distance divided by ``‖target‖²``: the same minimisers, but scale-free, so that the
    stopping tolerance means the same on a saturated model whose gradient is ~1e-6 as on a fresh one. (L-BFGS's
    own tolerances are absolute; `run_matching` also divides the objective by its value at the initialisation,
    because the relative loss of random noise can itself be ~5e-6.)

    ``target_sq`` is ``‖target‖²`` as computed by `target_sq_norm`; pass it when calling this every iteration
    against the same target, so the constant is not recomputed.
    """
    tgt_sq = target_sq_norm(target) if target_sq is None else target_sq
    if objective == "l2":
        distance = sum(_per_restart_sum((simulated[n] - t).pow(2)) for n, t in target.items())
        return distance / max(tgt_sq, 1e-30)  # type: ignore[return-value]
    dot = sum(_per_restart_sum(simulated[n] * t) for n, t in target.items())
    sim_norm = sum(_per_restart_sum(simulated[n].pow(2)) for n in target)
    tgt_norm = math.sqrt(tgt_sq)
    return 1 - dot / (torch.sqrt(sim_norm) * tgt_norm + 1e-12)  # type: ignore[operator]


def target_sq_norm(target: dict[str, torch.Tensor]) -> float:
    """``‖target‖²`` over all tensors of ``target`` (the constant of `matching_loss`)."""
    return sum(float(t.pow(2).sum()) for t in target.values())


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


def _select_layers(target: dict[str, torch.Tensor], top: int | None) -> dict[str, torch.Tensor]:
    if top is None or top >= len(target):
        return target
    ranked = sorted(target, key=lambda n: float(target[n].norm()), reverse=True)[:top]
    return {n: target[n] for n in target if n in ranked}


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
    target = _select_layers(target_update(knowledge, mode), config.top_layers)
    target_sq = target_sq_norm(target)  # constant over the run: computed once, not per evaluation
    observed_bn = victim.observed_bn_stats(knowledge, knowledge.local_steps) if config.bn > 0 else {}
    if config.bn > 0 and not observed_bn:
        raise MedPFLError(
            "the BN-statistics prior needs BatchNorm running buffers in the update and BN in train mode",
            fix="attack an update that carries running_mean/running_var (bn_buffers_included) or set bn=0",
        )
    n_images = knowledge.images
    generator = torch.Generator().manual_seed(config.seed)
    shape = (config.restarts, n_images, *knowledge.image_shape)
    images = _initial_images(config, shape, prior, generator).requires_grad_(True)
    initial_images = images.detach().clone()
    variables = [images]

    labels_source = "known"
    soft_labels = None
    if config.labels == "optimize":
        soft_labels = torch.randn(config.restarts, n_images, knowledge.num_classes, generator=generator)
        soft_labels.requires_grad_(True)
        variables.append(soft_labels)
        labels = torch.zeros(n_images, dtype=torch.long)
        labels_source = "optimised"
    elif knowledge.labels is not None and config.labels == "auto":
        labels = knowledge.labels.long()
    else:
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
        labels_source = "recovered"

    steps = knowledge.local_steps if mode == "unrolled" else 1

    def objective(x: torch.Tensor, soft: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        targets = labels if soft is None else F.softmax(soft, dim=-1)
        sim = victim.simulate(
            x,
            targets,
            mode=mode,
            steps=knowledge.local_steps if mode != "gradient" else 1,
            learning_rate=knowledge.learning_rate,
            batch_size=knowledge.batch_size,
            optimizer=knowledge.optimizer,
            bn_stats=config.bn > 0,  # only the BN prior reads them; skipping saves a variance per BN layer
        )
        match = matching_loss(sim.update, target, config.objective, target_sq=target_sq)
        total = config.gradient_weight * match
        if config.bn > 0:
            bn_term = sum((sim.bn_stats[k] - v).reshape(x.shape[0], -1).norm(dim=1) for k, v in observed_bn.items())
            total = total + config.bn * bn_term
        if config.tv > 0:
            total = total + config.tv * total_variation(x, per_restart=True)
        if config.l2 > 0:
            total = total + config.l2 * _per_restart_sum(x.pow(2))
        return total, match

    def evaluate(x: torch.Tensor, soft: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if config.batched:
            return objective(x, soft)
        pairs = [objective(x[r : r + 1], None if soft is None else soft[r : r + 1]) for r in range(x.shape[0])]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    best_loss = torch.full((config.restarts,), math.inf)
    best_images = images.detach().clone()
    best_soft = soft_labels.detach().clone() if soft_labels is not None else None
    last_match = torch.full((config.restarts,), math.inf)

    def record(match: torch.Tensor) -> None:
        match = match.detach()
        improved = torch.isfinite(match) & (match < best_loss)
        if improved.any():
            best_loss.copy_(torch.where(improved, match, best_loss))
            mask = improved.reshape(-1, *([1] * (images.ndim - 1)))
            best_images.copy_(torch.where(mask, images.detach(), best_images))
            if best_soft is not None and soft_labels is not None:
                best_soft.copy_(torch.where(improved[:, None, None], soft_labels.detach(), best_soft))
        last_match.copy_(match)

    evaluations = 0
    step_evaluations = 0
    # Per-restart 1 / objective at the first evaluation (the initialisation): the optimiser minimises the objective
    # relative to where it started, a loss of 1 at the start whatever the update's scale. All terms (matching, TV,
    # L2, BN) are divided by the same constant, so the priors keep their weight relative to the matching term.
    scale: torch.Tensor | None = None
    initial_match = torch.full((config.restarts,), math.nan)

    def closure() -> torch.Tensor:
        nonlocal evaluations, step_evaluations, scale
        if deadline is not None and step_evaluations > 0 and _clock() >= deadline:
            raise _TimeLimitReached  # ends an L-BFGS step (and its line search) before one more evaluation
        evaluations += 1
        step_evaluations += 1
        total, match = evaluate(images, soft_labels)
        record(match)
        if scale is None:
            first = total.detach()
            usable = torch.isfinite(first) & (first > 0)
            scale = torch.where(usable, 1 / torch.where(usable, first, torch.ones_like(first)), torch.ones_like(first))
            initial_match.copy_(match.detach())
        loss = (total * scale).sum()
        if torch.isfinite(loss):
            grads = torch.autograd.grad(loss, variables)
        else:
            grads = tuple(torch.zeros_like(v) for v in variables)
        for variable, gradient in zip(variables, grads):
            variable.grad = gradient
        if config.signed:
            images.grad.sign_()  # type: ignore[union-attr]
        return loss.detach()

    if config.optimizer == "lbfgs":
        # Tolerances are left to torch's defaults so that a converged step ends early; every evaluation is counted.
        optimizer: torch.optim.Optimizer = torch.optim.LBFGS(
            variables, lr=config.lr, max_iter=config.lbfgs_max_iter, history_size=100,
            line_search_fn=None if config.line_search == "none" else config.line_search,
        )
    else:
        optimizer = torch.optim.Adam(variables, lr=config.lr)
    scheduler = (
        torch.optim.lr_scheduler.MultiStepLR(
            optimizer, milestones=[int(config.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)], gamma=0.1
        )
        if config.lr_decay
        else None
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.iterations, desc=attack_name, unit="it", leave=False)
    iterations = 0
    stop_reason = "budget"
    trace: list[torch.Tensor] = []  # best-so-far matching loss per restart after each iteration
    for iterations in range(1, config.iterations + 1):
        step_evaluations = 0
        try:
            loss = optimizer.step(closure)  # type: ignore[arg-type]
        except _TimeLimitReached:
            trace.append(best_loss.clone())
            stop_reason = "time_limit"
            break
        trace.append(best_loss.clone())
        if scheduler is not None:
            scheduler.step()
        if config.box:
            with torch.no_grad():
                images.clamp_(0, 1)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{float(best_loss.min()):.3g}")
        if callback is not None:
            callback(iterations, last_match.clone())
        if not torch.isfinite(torch.as_tensor(loss)):
            stop_reason = "diverged"  # DLG often does; the best finite iterate is kept
            break
        if config.stop_loss > 0 and bool(
            ((last_match < config.stop_loss) & (last_match * MIN_REDUCTION <= initial_match)).all()
        ):
            stop_reason = "stop_loss"
            break
        if deadline is not None and _clock() >= deadline:
            stop_reason = "time_limit"
            break
    if stop_reason != "time_limit":
        # Score the final iterate too, so the last step is never lost (skipped past the time limit: it would be
        # one more evaluation beyond it; the best evaluated iterate is kept either way).
        _, match = evaluate(images.detach(), None if soft_labels is None else soft_labels.detach())
        record(match.detach())
        trace[-1] = best_loss.clone()
    if bar is not None:
        bar.close()
    best = int(torch.argmin(torch.where(torch.isfinite(best_loss), best_loss, torch.full_like(best_loss, math.inf))))
    if best_soft is not None:
        labels = best_soft[best].argmax(dim=-1)
    losses = [float(initial_match[best])] + [float(step[best]) for step in trace]
    moved = _relative_change(best_images[best], initial_images[best])
    evidence = assess_convergence(losses, moved=moved, diverged=stop_reason == "diverged")
    return AttackResult(
        attack=attack_name,
        reconstructions=best_images[best].clamp(0, 1),
        labels=labels.detach().clone(),
        matching_loss=float(best_loss[best]),
        restart_losses=tuple(float(v) for v in best_loss),
        iterations=iterations,
        wall_time_s=_clock() - started,
        config={**asdict(config), "resolved_update_mode": mode, "simulated_steps": steps},
        evaluations=evaluations,
        threat_model=knowledge.threat_model(),
        labels_source=labels_source,
        stopped_early=stop_reason == "stop_loss",
        stop_reason=stop_reason,
        initial_loss=float(initial_match[best]),
        loss_trace=downsample_trace(losses),
        moved_from_init=moved,
        convergence=evidence,
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
