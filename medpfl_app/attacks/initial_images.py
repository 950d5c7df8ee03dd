"""Where a gradient-matching attack starts: noise, a CPL pattern or a noisy prior image, per restart."""

from __future__ import annotations

import torch

from medpfl_app.attacks.matching_config import MatchingConfig
from medpfl_app.errors import MedPFLError


def initial_images(
    config: MatchingConfig, shape: tuple[int, ...], prior: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """The attack's starting images ``shape = (R, N, C, ...)`` for the recipe's ``init``.

    ``randn``/``rand``: Gaussian or uniform noise; ``patterned``: a random tile of half the side repeated 2 × 2 per
    spatial axis (CPL); ``prior``: the prior image plus 1 % Gaussian noise, clipped to [0, 1].
    """
    if config.init == "randn":
        return torch.randn(shape, generator=generator)
    if config.init == "rand":
        return torch.rand(shape, generator=generator)
    if config.init == "patterned":
        tile_shape = shape[:3] + tuple(-(-s // 2) for s in shape[3:])
        tile = torch.rand(tile_shape, generator=generator)
        tiled = tile.repeat(1, 1, 1, *([2] * (len(shape) - 3)))
        return tiled[(...,) + tuple(slice(0, s) for s in shape[3:])].contiguous()
    if prior is None:
        raise MedPFLError("init 'prior' needs a prior image", fix="pass prior=... to run() or choose another init")
    base = prior.float().reshape(shape[-len(prior.shape) :]) if prior.ndim < len(shape) else prior.float()
    return (base.expand(shape) + 0.01 * torch.randn(shape, generator=generator)).clamp(0, 1)
