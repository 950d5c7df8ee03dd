"""Per-image reconstruction metrics in [0, 1] pixel space, and optimal matching of a batch to its ground truth.

All functions take ``(N, C, H, W)`` (2-D) or ``(N, C, D, H, W)`` (3-D) tensors and return one value per image,
because leakage is a per-patient quantity: pooled batch scores hide the worst-leaked image.
"""

from __future__ import annotations

from typing import Literal

import torch
from scipy.optimize import linear_sum_assignment
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from medpfl_app.errors import MedPFLError

MatchBy = Literal["mse", "ssim"]
_SSIM_PAD = 5  # half of the 11 px window of a σ=1.5 Gaussian truncated at 3.5σ
#: How `ssim` measures, stated in every audit record and report (SSIM values differ across implementations and
#: windows: scikit-image's default 7 px uniform window gives values up to 0.29 apart on the same images).
SSIM_SETTINGS = {
    "implementation": "torchmetrics structural_similarity_index_measure, per image, mean over the valid region",
    "gaussian_kernel": True,
    "sigma": 1.5,
    "kernel_size": 11,
    "data_range": 1.0,
    "k1": 0.01,
    "k2": 0.03,
}


def check_image_pair(reconstructions: torch.Tensor, originals: torch.Tensor) -> None:
    """Raise a `MedPFLError` unless both are equally shaped 4-D/5-D finite image batches."""
    if reconstructions.shape != originals.shape:
        raise MedPFLError(
            f"reconstructions {tuple(reconstructions.shape)} and originals {tuple(originals.shape)} differ in shape",
            fix="pass one reconstruction per original image, both shaped (N, C, H, W) or (N, C, D, H, W)",
        )
    if reconstructions.ndim not in (4, 5) or reconstructions.shape[0] == 0:
        raise MedPFLError(
            f"image batches must be non-empty (N, C, H, W) or (N, C, D, H, W), got {tuple(reconstructions.shape)}",
            fix="add the batch and channel dimensions (e.g. images[None, None])",
        )
    for label, images in (("reconstructions", reconstructions), ("originals", originals)):
        if not torch.isfinite(images).all():
            raise MedPFLError(f"{label} contain NaN or Inf", fix="clip or drop non-finite images before scoring")


def _spatial_dims(images: torch.Tensor) -> tuple[int, ...]:
    return tuple(range(1, images.ndim))


def mse(reconstructions: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image: ``mean((x̂ - x)²)`` over channels and pixels, shape ``(N,)``."""
    check_image_pair(reconstructions, originals)
    diff = reconstructions.double() - originals.double()
    return diff.pow(2).mean(dim=_spatial_dims(diff))


def psnr(reconstructions: torch.Tensor, originals: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, ``10·log10(data_range² / MSE)``, shape ``(N,)``.

    torchmetrics pools the MSE over the batch unless ``dim`` is given; the per-image reduction here matches the
    mean-of-per-image PSNR that breaching and Inverting Gradients report.
    """
    check_image_pair(reconstructions, originals)
    return peak_signal_noise_ratio(
        reconstructions.double(),
        originals.double(),
        data_range=data_range,
        dim=_spatial_dims(reconstructions),
        reduction="none",
    )


def ssim(reconstructions: torch.Tensor, originals: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (Gaussian window σ=1.5, 11 px), 2-D or 3-D, shape ``(N,)``.

    ``data_range`` is always explicit: torchmetrics infers it from the data when it is None, which makes scores
    incomparable across images. Images need at least 11 px per spatial side.
    """
    check_image_pair(reconstructions, originals)
    if min(reconstructions.shape[2:]) < 11:
        raise MedPFLError(
            f"SSIM needs images of at least 11 px per side, got {tuple(reconstructions.shape[2:])}",
            fix="score images of 11 px or more (the Gaussian window is 11 px wide)",
        )
    _, full = structural_similarity_index_measure(
        reconstructions.double(), originals.double(), data_range=data_range, return_full_image=True
    )
    # Average only where the window lies inside the image, as scikit-image does; torchmetrics' own reduction
    # also averages the reflection-padded border and so differs from it by ~1e-2.
    inner = full[(slice(None), slice(None)) + (slice(_SSIM_PAD, -_SSIM_PAD),) * (full.ndim - 2)]
    return inner.reshape(inner.shape[0], -1).mean(dim=1)


def match_reconstructions(
    reconstructions: torch.Tensor, originals: torch.Tensor, *, by: MatchBy = "mse"
) -> torch.Tensor:
    """Order reconstructions to the originals by optimal assignment (Hungarian), as batch order is not recoverable.

    Returns:
        Indices ``order`` such that ``reconstructions[order[i]]`` is paired with ``originals[i]``.
    """
    check_image_pair(reconstructions, originals)
    n = originals.shape[0]
    if n == 1:
        return torch.zeros(1, dtype=torch.long)
    recon = reconstructions.double().unsqueeze(1).expand(n, n, *reconstructions.shape[1:])
    orig = originals.double().unsqueeze(0).expand(n, n, *originals.shape[1:])
    flat_recon = recon.reshape(n * n, *reconstructions.shape[1:])
    flat_orig = orig.reshape(n * n, *originals.shape[1:])
    if by == "mse":
        cost = mse(flat_recon, flat_orig).reshape(n, n)
    elif by == "ssim":
        cost = -ssim(flat_recon, flat_orig).reshape(n, n)
    else:
        raise MedPFLError(f"unknown matching criterion {by!r}", fix="use 'mse' or 'ssim'")
    rows, cols = linear_sum_assignment(cost.numpy())  # rows: reconstructions, cols: originals
    order = torch.empty(n, dtype=torch.long)
    order[torch.as_tensor(cols)] = torch.as_tensor(rows)
    return order
