"""The attack's optimiser and its loop: budget, stop loss, divergence and deadline, with the best-loss trace."""

from __future__ import annotations

from collections.abc import Callable

import torch

from medpfl_app.attacks.convergence import MIN_REDUCTION
from medpfl_app.attacks.matching_config import MatchingConfig
from medpfl_app.attacks.scaled_closure import ScaledClosure, TimeLimitReached


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


def optimise(
    attack_name: str,
    config: MatchingConfig,
    closure: ScaledClosure,
    *,
    deadline: float | None,
    progress: bool,
    callback: Callable[[int, torch.Tensor], None] | None,
    clock: Callable[[], float],
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
        except TimeLimitReached:
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
        if deadline is not None and clock() >= deadline:
            stop_reason = "time_limit"
            break
    if bar is not None:
        bar.close()
    return iterations, stop_reason, trace
