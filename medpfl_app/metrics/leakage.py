"""Leakage scores built on the per-image metrics: attack success, labels, relative leakage, LPIPS.

Identifiability against chance lives in `medpfl_app.metrics.identification` (with its parts: `ssim_matrix`,
`null_images`, `poisson_binomial`, `identifiability_result`); its names are re-exported here, where callers have
always imported them.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Sequence
from typing import Literal, TypeAlias

import torch

from medpfl_app.errors import MedPFLError
from medpfl_app.metrics.identifiability_result import IdentifiabilityResult
from medpfl_app.metrics.identification import (
    FLOOR_SOURCE,
    IDENTIFIABILITY_ALPHA,
    IDENTIFIABILITY_DEFINITION,
    MAX_SHUFFLED,
    SHUFFLED_FAMILY,
    TIE_TOLERANCE,
    identifiability,
)
from medpfl_app.metrics.image import check_image_pair, ssim
from medpfl_app.metrics.null_images import (
    AVERAGE_NOISE_SIGMAS,
    DEFAULT_NULL_DRAWS,
    FLAT_GREY_LEVELS,
    NULL_SEED,
    null_reconstructions,
)
from medpfl_app.metrics.poisson_binomial import poisson_binomial_tail
from medpfl_app.metrics.ssim_matrix import pairwise_ssim

__all__ = [
    "AVERAGE_NOISE_SIGMAS",
    "DEFAULT_NULL_DRAWS",
    "DEFAULT_SUCCESS_SSIM",
    "FLAT_GREY_LEVELS",
    "FLOOR_SOURCE",
    "IDENTIFIABILITY_ALPHA",
    "IDENTIFIABILITY_DEFINITION",
    "LPIPS_SKIPPED_REASON",
    "MAX_SHUFFLED",
    "NULL_SEED",
    "SHUFFLED_FAMILY",
    "TIE_TOLERANCE",
    "IdentifiabilityResult",
    "LpipsBackbone",
    "attack_success_rate",
    "identifiability",
    "label_accuracy",
    "lpips",
    "lpips_backbone_path",
    "null_reconstructions",
    "pairwise_ssim",
    "poisson_binomial_tail",
    "relative_leakage",
]

DEFAULT_SUCCESS_SSIM = 0.9  # the seed paper's ASR threshold

LpipsBackbone: TypeAlias = Literal["alex", "vgg", "squeeze"]  # the backbones torchmetrics' LPIPS offers


def attack_success_rate(ssim_values: torch.Tensor, *, threshold: float = DEFAULT_SUCCESS_SSIM) -> float:
    """Share of images whose reconstruction reaches ``SSIM >= threshold`` (the seed paper's ASR)."""
    if ssim_values.numel() == 0:
        raise MedPFLError("no SSIM values to compute an attack success rate from", fix="score at least one image")
    return float((ssim_values >= threshold).double().mean())


def label_accuracy(recovered: Sequence[int] | torch.Tensor, true: Sequence[int] | torch.Tensor) -> float:
    """Share of the true labels recovered, counted as a multiset: label order within a batch is not recoverable."""
    recovered_list = [int(v) for v in recovered]
    true_list = [int(v) for v in true]
    if not true_list:
        raise MedPFLError("no true labels to score label recovery against", fix="pass the batch's labels")
    overlap = collections.Counter(recovered_list) & collections.Counter(true_list)
    return sum(overlap.values()) / len(true_list)


def relative_leakage(
    reconstructions: torch.Tensor, originals: torch.Tensor, prior: torch.Tensor, *, data_range: float = 1.0
) -> torch.Tensor:
    """RDLV-style relative score per image: ``(SSIM(x̂, x) - SSIM(p, x)) / |SSIM(p, x)|``.

    ``prior`` is the uninformed guess (e.g. the mean training image), shaped like one image or like the batch.
    0 means "no better than the prior"; NVFlare's RDLV filter drops updates scoring above 1.
    """
    if prior.ndim == originals.ndim - 1:
        prior = prior.unsqueeze(0)
    prior = prior.expand_as(originals)
    baseline = ssim(prior, originals, data_range=data_range)
    gained = ssim(reconstructions, originals, data_range=data_range) - baseline
    return gained / baseline.abs().clamp_min(1e-8)


def lpips_backbone_path(net_type: LpipsBackbone = "alex") -> str | None:
    """Where LPIPS's backbone weights would sit locally, or None when they are absent (they are never downloaded)."""
    try:
        import torchvision  # noqa: F401  # torchmetrics' LPIPS builds its backbone from torchvision
    except ImportError:
        return None
    files = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth", "squeeze": "squeezenet1_1-b8a52dc0.pth"}
    path = os.path.join(torch.hub.get_dir(), "checkpoints", files.get(net_type, ""))
    return path if os.path.isfile(path) else None


def lpips(
    reconstructions: torch.Tensor, originals: torch.Tensor, *, net_type: LpipsBackbone = "alex"
) -> torch.Tensor | None:
    """LPIPS per image (lower is better) when the backbone weights are already on disk; None (skipped) otherwise."""
    check_image_pair(reconstructions, originals)
    if lpips_backbone_path(net_type) is None:
        return None
    from torchmetrics.functional.image.lpips import learned_perceptual_image_patch_similarity

    def rgb(images: torch.Tensor) -> torch.Tensor:
        return images.float().clamp(0, 1).expand(-1, 3, *images.shape[2:]) if images.shape[1] == 1 else images.float()

    values = [
        learned_perceptual_image_patch_similarity(rgb(r[None]), rgb(o[None]), net_type=net_type, normalize=True)
        for r, o in zip(reconstructions, originals)
    ]
    return torch.stack(values).double()


LPIPS_SKIPPED_REASON = "LPIPS skipped: torchvision backbone weights are not present locally and are never downloaded"
