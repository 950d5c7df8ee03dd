"""torchmetrics `Metric`s that accumulate a registered per-image leakage score over many updates."""

from __future__ import annotations

from typing import ClassVar

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from medpfl_app.metrics.registry import METRICS


class ImageLeakage(Metric):
    """Accumulate per-image values of one registered metric; compute the mean and the most-leaked image's value.

    Subclasses fix ``metric_name`` and the class constant ``higher_is_better`` (torchmetrics forbids setting it per
    instance); build one by name with `image_leakage`.

    Example:
        >>> import torch
        >>> metric = image_leakage("mse")
        >>> metric.update(torch.zeros(2, 1, 16, 16), torch.full((2, 1, 16, 16), 0.5))
        >>> {k: round(float(v), 3) for k, v in metric.compute().items()}
        {'mean': 0.25, 'worst': 0.25}
    """

    metric_name: ClassVar[str] = ""
    is_differentiable = False
    full_state_update = False
    values: list[torch.Tensor]  # registered by add_state; Metric's __getattr__ would type it Tensor | Module

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.spec = METRICS.get(self.metric_name)
        self.add_state("values", default=[], dist_reduce_fx="cat")

    def update(self, reconstructions: torch.Tensor, originals: torch.Tensor) -> None:
        self.values.append(self.spec.fn(reconstructions, originals))

    def compute(self) -> dict[str, torch.Tensor]:
        values = dim_zero_cat(self.values)
        worst = values.max() if self.spec.higher_is_better else values.min()
        return {"mean": values.mean(), "worst": worst}


class MSELeakage(ImageLeakage):
    """Per-image MSE (lower = closer reconstruction)."""

    metric_name = "mse"
    higher_is_better = False


class PSNRLeakage(ImageLeakage):
    """Per-image PSNR in dB (higher = closer reconstruction)."""

    metric_name = "psnr"
    higher_is_better = True


class SSIMLeakage(ImageLeakage):
    """Per-image SSIM, data_range 1 (higher = closer reconstruction)."""

    metric_name = "ssim"
    higher_is_better = True


_CLASSES: dict[str, type[ImageLeakage]] = {c.metric_name: c for c in (MSELeakage, PSNRLeakage, SSIMLeakage)}


def image_leakage(name: str) -> ImageLeakage:
    """The accumulating metric for the registered per-image metric ``name``."""
    METRICS.get(name)  # one clear error for unknown names
    return _CLASSES[name]()
