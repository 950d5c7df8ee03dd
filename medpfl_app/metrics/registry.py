"""Per-image metrics found by name, each with its declared direction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from medpfl_app.metrics import image
from medpfl_app.registry import Registry

PairMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MetricSpec:
    """A per-image metric: ``fn(reconstructions, originals) -> (N,)`` and which way is more leakage.

    Attributes:
        name: Registry key.
        fn: The metric function, in [0, 1] pixel space.
        higher_is_better: True when a higher value means a closer reconstruction (more leakage).
        unit: Unit for reports ("dB", "" ...).
    """

    name: str
    fn: PairMetric
    higher_is_better: bool
    unit: str = ""


METRICS: Registry[MetricSpec] = Registry("metric")

for _spec in (
    MetricSpec("mse", image.mse, higher_is_better=False),
    MetricSpec("psnr", image.psnr, higher_is_better=True, unit="dB"),
    MetricSpec("ssim", image.ssim, higher_is_better=True),
):
    METRICS.register(_spec.name)(_spec)


def worst_case(values: torch.Tensor, spec: MetricSpec) -> float:
    """The most-leaked image's value under ``spec``'s direction (max when higher is better, else min)."""
    return float(values.max() if spec.higher_is_better else values.min())
