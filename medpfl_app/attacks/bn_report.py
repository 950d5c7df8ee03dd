"""What shared BatchNorm buffers alone reveal, without any optimisation.

From the running-statistics update the server recovers every BN layer's batch mean and (unbiased) variance of the
site's batch (exact for one local step, a momentum-weighted mixture over S steps). Those are per-channel
statistics of the private images' feature maps; for the first BN layer they are linear (mean) and quadratic
(variance) functions of the pixels. Pair this report with the ``bn_only`` attack, which tries to turn them into
images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medpfl_app.attacks.knowledge import AttackerKnowledge
from medpfl_app.attacks.victim import Victim
from medpfl_app.errors import MedPFLError


@dataclass(frozen=True)
class BNLayerLeak:
    """One BN layer's statistics as recovered by the server (and, in simulation, how exact they are)."""

    layer: str
    channels: int
    mean: tuple[float, ...]
    var: tuple[float, ...]
    mean_rel_error: float | None = None
    var_rel_error: float | None = None


@dataclass(frozen=True)
class BNLeakReport:
    """Per-layer statistics recoverable from the shared BN buffers."""

    local_steps: int
    exact: bool  # True when one BN update makes the inversion exact
    layers: tuple[BNLayerLeak, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "local_steps": self.local_steps,
            "exact": self.exact,
            "numbers_revealed": sum(2 * layer.channels for layer in self.layers),
            "layers": [layer.__dict__ for layer in self.layers],
        }


def bn_statistics_report(knowledge: AttackerKnowledge, originals: torch.Tensor | None = None) -> BNLeakReport:
    """Recover the site's BN batch statistics from its update; with ``originals`` (simulation), score them.

    Args:
        knowledge: Must carry ``bn_running_stats`` (BN buffers were shared) and BN in train mode.
        originals: The site's images ``(N, C, H, W)``; the true first-step batch statistics are computed from
            them at the pre-update weights to report the relative error of the recovery.
    """
    if not knowledge.bn_running_stats or not knowledge.bn_train_mode:
        raise MedPFLError(
            "the update carries no BatchNorm running statistics (or BN ran in eval mode): nothing to report",
            fix="report on an update that shares BN buffers",
        )
    victim = Victim(knowledge)
    observed = victim.observed_bn_stats(knowledge, knowledge.local_steps)
    true_stats: dict[str, torch.Tensor] = {}
    if originals is not None:
        with torch.no_grad():
            _, stats = victim.forward(victim.expanded(1), originals[None].float())
        true_stats = {k: v[0] for k, v in victim._stats_dict(stats).items()}

    def rel(a: torch.Tensor, b: torch.Tensor | None) -> float | None:
        return None if b is None else float((a - b).norm() / b.norm().clamp_min(1e-12))

    layers = []
    for prefix in victim.bn_layers:
        mean, var = observed.get(prefix + "running_mean"), observed.get(prefix + "running_var")
        if mean is None or var is None:
            continue
        layers.append(
            BNLayerLeak(
                layer=prefix.rstrip("."),
                channels=int(mean.numel()),
                mean=tuple(float(v) for v in mean),
                var=tuple(float(v) for v in var),
                mean_rel_error=rel(mean, true_stats.get(prefix + "running_mean")),
                var_rel_error=rel(var, true_stats.get(prefix + "running_var")),
            )
        )
    return BNLeakReport(local_steps=knowledge.local_steps, exact=knowledge.local_steps == 1, layers=tuple(layers))
