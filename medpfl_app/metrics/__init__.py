"""Leakage metrics in [0, 1] pixel space: per-image MSE/PSNR/SSIM, ASR, labels, relative leakage, identifiability
against chance.

Pure PyTorch, torchmetrics and SciPy; nothing here imports NVFlare.
"""

from medpfl_app.metrics.evaluation import LeakageReport, evaluate_reconstruction
from medpfl_app.metrics.image import match_reconstructions, mse, psnr, ssim
from medpfl_app.metrics.leakage import (
    DEFAULT_SUCCESS_SSIM,
    IDENTIFIABILITY_ALPHA,
    IDENTIFIABILITY_DEFINITION,
    IdentifiabilityResult,
    attack_success_rate,
    identifiability,
    label_accuracy,
    lpips,
    pairwise_ssim,
    poisson_binomial_tail,
    relative_leakage,
)
from medpfl_app.metrics.registry import METRICS, MetricSpec

__all__ = [
    "DEFAULT_SUCCESS_SSIM",
    "IDENTIFIABILITY_ALPHA",
    "IDENTIFIABILITY_DEFINITION",
    "METRICS",
    "IdentifiabilityResult",
    "LeakageReport",
    "MetricSpec",
    "attack_success_rate",
    "evaluate_reconstruction",
    "identifiability",
    "label_accuracy",
    "lpips",
    "match_reconstructions",
    "mse",
    "pairwise_ssim",
    "poisson_binomial_tail",
    "psnr",
    "relative_leakage",
    "ssim",
]
