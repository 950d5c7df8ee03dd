"""What a gradient-matching attack minimises: the distance between simulated and observed updates, plus priors.

`MatchingObjective` evaluates every restart at once (or one after another, same values) and returns the total
objective and the matching term per restart; the engine (`medpfl_app.attacks.engine`) optimises it.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F

from medpfl_app.attacks.knowledge import AttackerKnowledge
from medpfl_app.attacks.matching_config import MatchingConfig
from medpfl_app.attacks.victim import UpdateMode, Victim


def total_variation(images: torch.Tensor, *, per_restart: bool = False) -> torch.Tensor:
    """Anisotropic TV: mean absolute difference of neighbouring pixels along the last two axes.

    With ``per_restart`` the leading axis indexes restarts and one value per restart is returned.
    """
    dims = tuple(range(1, images.ndim)) if per_restart else tuple(range(images.ndim))
    # sum() starts at 0, so its static type includes int; both terms are tensors.
    return cast(torch.Tensor, sum(images.diff(dim=d).abs().mean(dim=dims) for d in (images.ndim - 2, images.ndim - 1)))


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
        # sum() starts at 0, so its static type includes int; target is never empty, so these are tensors.
        distance = cast(torch.Tensor, sum(_per_restart_sum((simulated[n] - t).pow(2)) for n, t in target.items()))
        return distance / max(tgt_sq, 1e-30)
    dot = cast(torch.Tensor, sum(_per_restart_sum(simulated[n] * t) for n, t in target.items()))
    sim_norm = cast(torch.Tensor, sum(_per_restart_sum(simulated[n].pow(2)) for n in target))
    tgt_norm = math.sqrt(tgt_sq)
    return 1 - dot / (torch.sqrt(sim_norm) * tgt_norm + 1e-12)


def target_sq_norm(target: dict[str, torch.Tensor]) -> float:
    """``‖target‖²`` over all tensors of ``target`` (the constant of `matching_loss`)."""
    return sum(float(t.pow(2).sum()) for t in target.values())


def select_layers(target: dict[str, torch.Tensor], top: int | None) -> dict[str, torch.Tensor]:
    if top is None or top >= len(target):
        return target
    ranked = sorted(target, key=lambda n: float(target[n].norm()), reverse=True)[:top]
    return {n: target[n] for n in target if n in ranked}


class MatchingObjective:
    """The attack's objective per restart: weighted update matching, BN-statistics term, TV and L2 priors.

    Args:
        victim: The model simulated on the candidate images.
        knowledge: What the attacker knows (local steps, learning rate, batch size, optimiser).
        config: The recipe (weights of each term, matching distance, batched or sequential restarts).
        mode: The resolved update mode (`medpfl_app.attacks.victim.resolve_mode`).
        target: The observed update tensors to match (already reduced to ``config.top_layers``).
        labels: Hard labels used when no soft labels are optimised.
        observed_bn: BatchNorm statistics observed in the update (empty unless ``config.bn > 0``).
    """

    def __init__(
        self,
        victim: Victim,
        knowledge: AttackerKnowledge,
        config: MatchingConfig,
        *,
        mode: UpdateMode,
        target: dict[str, torch.Tensor],
        labels: torch.Tensor,
        observed_bn: dict[str, torch.Tensor],
    ) -> None:
        self.victim, self.knowledge, self.config, self.mode = victim, knowledge, config, mode
        self.target, self.labels, self.observed_bn = target, labels, observed_bn
        self.target_sq = target_sq_norm(target)  # constant over the run: computed once, not per evaluation

    def __call__(self, images: torch.Tensor, soft: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(total, match)`` per restart for candidate ``images`` ``(R, N, C, H, W)`` and soft labels or None."""
        if self.config.batched:
            return self._evaluate(images, soft)
        pairs = [
            self._evaluate(images[r : r + 1], None if soft is None else soft[r : r + 1]) for r in range(images.shape[0])
        ]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])

    def _evaluate(self, images: torch.Tensor, soft: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        config, knowledge = self.config, self.knowledge
        targets = self.labels if soft is None else F.softmax(soft, dim=-1)
        simulated = self.victim.simulate(
            images,
            targets,
            mode=self.mode,
            steps=knowledge.local_steps if self.mode != "gradient" else 1,
            learning_rate=knowledge.learning_rate,
            batch_size=knowledge.batch_size,
            optimizer=knowledge.optimizer,
            bn_stats=config.bn > 0,  # only the BN prior reads them; skipping saves a variance per BN layer
        )
        match = matching_loss(simulated.update, self.target, config.objective, target_sq=self.target_sq)
        total = config.gradient_weight * match
        if config.bn > 0:
            bn_term = sum(
                (simulated.bn_stats[k] - v).reshape(images.shape[0], -1).norm(dim=1)
                for k, v in self.observed_bn.items()
            )
            total = total + config.bn * bn_term
        if config.tv > 0:
            total = total + config.tv * total_variation(images, per_restart=True)
        if config.l2 > 0:
            total = total + config.l2 * _per_restart_sum(images.pow(2))
        return total, match
