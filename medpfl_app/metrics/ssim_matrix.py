"""SSIM of every image against every image of a pool at once, as `medpfl_app.metrics.image.ssim` scores one pair.

Identification compares each reconstruction with every site image; computing the SSIM maps pair by pair costs a
Python loop per pair, so the Gaussian window is applied as one matrix product per axis and the pairs are done in
blocks of bounded memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medpfl_app.errors import MedPFLError

# SSIM settings of `medpfl_app.metrics.image.ssim` (torchmetrics: Gaussian window σ = 1.5 truncated to 11 px, K1,
# K2, mean over the valid region): `pairwise_ssim` reproduces it for all pairs at once (tested against it).
_SSIM_SIGMA = 1.5
_SSIM_WINDOW = 11
_SSIM_K1, _SSIM_K2 = 0.01, 0.03


def _valid_gaussian_filter(length: int, dtype: torch.dtype) -> torch.Tensor:
    """The ``(length - 10, length)`` matrix of the valid 11-tap Gaussian filter (σ = 1.5) along one axis."""
    offsets = torch.arange(_SSIM_WINDOW, dtype=dtype) - (_SSIM_WINDOW - 1) / 2
    taps = torch.exp(-((offsets / _SSIM_SIGMA) ** 2) / 2)
    taps = taps / taps.sum()
    matrix = torch.zeros(length - _SSIM_WINDOW + 1, length, dtype=dtype)
    for row in range(matrix.shape[0]):
        matrix[row, row : row + _SSIM_WINDOW] = taps
    return matrix


def _filter(images: torch.Tensor, matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """Filter the last ``len(matrices)`` axes of ``images``: a separable filter as one matrix product per axis."""
    first = images.ndim - len(matrices)
    for offset, matrix in enumerate(matrices):
        axis = first + offset
        if axis == images.ndim - 1:
            images = images @ matrix.T
        else:
            images = (matrix @ images.movedim(axis, -2)).movedim(-2, axis)
    return images


def _check_comparable(images: torch.Tensor, pool: torch.Tensor) -> None:
    """Raise unless ``images`` and ``pool`` are 4-D/5-D batches of one image shape, each side at least 11 px."""
    if images.ndim not in (4, 5) or pool.ndim != images.ndim or pool.shape[1:] != images.shape[1:]:
        raise MedPFLError(
            f"cannot compare images {tuple(images.shape)} with pool {tuple(pool.shape)}",
            fix="pass (N, C, H, W) or (N, C, D, H, W) batches of equally sized images",
        )
    if min(images.shape[2:]) < _SSIM_WINDOW:
        raise MedPFLError(
            f"SSIM needs images of at least {_SSIM_WINDOW} px per side, got {tuple(images.shape[2:])}",
            fix="score images of 11 px or more (the Gaussian window is 11 px wide)",
        )


def pairwise_ssim(
    images: torch.Tensor,
    pool: torch.Tensor,
    *,
    data_range: float = 1.0,
    dtype: torch.dtype = torch.float64,
    max_chunk_elements: int = 2**23,
) -> torch.Tensor:
    """SSIM of every image against every pool image, as `medpfl_app.metrics.image.ssim` computes it per pair.

    Args:
        images: ``(N, C, H, W)`` or ``(N, C, D, H, W)``.
        pool: ``(P, ...)`` shaped like ``images`` past the first axis.
        data_range: Value range of the images (1 for [0, 1]).
        dtype: Working precision: float64 agrees with `ssim` to ~1e-12, float32 to ~1e-6 in half the time.
        max_chunk_elements: Largest block of pair voxels held at once (bounds the memory).

    Returns:
        The ``(N, P)`` float64 SSIM matrix.

    Raises:
        MedPFLError: Shapes that differ or are not 4-D/5-D, or a side shorter than the 11 px window.

    Example:
        >>> images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> matrix = pairwise_ssim(images, images)
        >>> bool(torch.allclose(matrix.diagonal(), torch.ones(3, dtype=torch.float64)))
        True
    """
    _check_comparable(images, pool)
    a, b = images.detach().to(dtype), pool.detach().to(dtype)
    matrices = [_valid_gaussian_filter(length, dtype) for length in a.shape[2:]]
    c1, c2 = (_SSIM_K1 * data_range) ** 2, (_SSIM_K2 * data_range) ** 2
    mu_a, mu_b = _filter(a, matrices), _filter(b, matrices)
    var_a = (_filter(a * a, matrices) - mu_a**2).clamp_min(0.0)
    var_b = (_filter(b * b, matrices) - mu_b**2).clamp_min(0.0)
    mu_b2_c1, var_b_c2 = mu_b**2 + c1, var_b + c2
    step = max(1, max_chunk_elements // max(1, b.numel()))
    rows = []
    for start in range(0, a.shape[0], step):
        block = slice(start, start + step)
        mu_a_block = mu_a[block, None]
        mu_ab = mu_a_block * mu_b  # (n, P, C, ...) local means' product
        numerator = _filter(a[block, None] * b, matrices)  # local E[ab]
        numerator.sub_(mu_ab).mul_(2.0).add_(c2)  # 2·cov + c2
        numerator.mul_(mu_ab.mul_(2.0).add_(c1))  # × (2·μa·μb + c1)
        denominator = mu_a_block**2 + mu_b2_c1
        denominator.mul_(var_a[block, None] + var_b_c2)
        rows.append(numerator.div_(denominator).flatten(2).mean(dim=2))
    return torch.cat(rows).double()
