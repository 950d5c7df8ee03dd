"""The optimiser's closure: every restart evaluated at once, its objective scaled to 1 at the initialisation."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from medpfl_app.attacks.best_iterate import BestIterate
from medpfl_app.attacks.objective import MatchingObjective


class TimeLimitReached(Exception):
    """Raised inside the closure to end an optimiser step once the attack's time limit has passed."""


class ScaledClosure:
    """The optimiser's closure: one evaluation of every restart, recorded, scaled, with gradients set.

    Each restart's objective is divided by its value at the first evaluation (the initialisation): the optimiser
    minimises the objective relative to where it started, a loss of 1 at the start whatever the update's scale.
    All terms (matching, TV, L2, BN) are divided by the same constant, so the priors keep their weight relative to
    the matching term. Past the deadline (read on ``clock``, the engine's replaceable clock) it raises
    `TimeLimitReached` before a step's next evaluation.
    """

    def __init__(
        self,
        objective: MatchingObjective,
        images: torch.Tensor,
        soft: torch.Tensor | None,
        best: BestIterate,
        *,
        signed: bool,
        deadline: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.objective, self.images, self.soft, self.best = objective, images, soft, best
        self.variables = [images] if soft is None else [images, soft]
        self.signed, self.deadline, self.clock = signed, deadline, clock
        self.evaluations = 0
        self.step_evaluations = 0
        self.scale: torch.Tensor | None = None
        self.initial_match = torch.full((images.shape[0],), math.nan)

    def __call__(self) -> torch.Tensor:
        if self.deadline is not None and self.step_evaluations > 0 and self.clock() >= self.deadline:
            raise TimeLimitReached  # ends an L-BFGS step (and its line search) before one more evaluation
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
