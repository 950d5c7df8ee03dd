"""Images that carry no information about which site images a round used: the chance baselines of identification.

Nearest-image identification is biased (noise, a flat image or the attack's prior lands on a few "central" site
images whichever images were used), so `medpfl_app.metrics.identification` scores these images the same way and
counts where they land.
"""

from __future__ import annotations

import torch

#: Draws per random null family (uniform noise, noisy site average) and at most per reconstruction's shuffles.
DEFAULT_NULL_DRAWS = 32
#: Seed of the null images: fixed, so a score can be recomputed exactly.
NULL_SEED = 0
#: Grey levels of the flat null images.
FLAT_GREY_LEVELS = tuple(level / 10 for level in range(11))
#: Standard deviations of the Gaussian noise added to the site's average image (cycled over the draws).
AVERAGE_NOISE_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.3)


def null_reconstructions(
    pool: torch.Tensor, *, draws: int = DEFAULT_NULL_DRAWS, seed: int = NULL_SEED
) -> dict[str, torch.Tensor]:
    """Fixed, seeded families of images that carry no information about which site images were used.

    Args:
        pool: ``(P, ...)`` the site's images.
        draws: Images per random family.
        seed: Seed of the random families.

    Returns:
        ``{family: (K, ...) images}``: ``uniform noise`` (``draws``), ``flat grey`` (`FLAT_GREY_LEVELS`),
        ``site average`` (the pool's mean image, the attack's usual prior; one image) and ``site average plus
        noise`` (``draws``, Gaussian noise of `AVERAGE_NOISE_SIGMAS`, clipped to [0, 1]). Each reconstruction's
        own family (its pixels shuffled) is drawn in `identifiability`.
    """
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(pool.shape[1:])
    ones = (1,) * len(shape)
    average = pool.detach().double().mean(dim=0)
    sigmas = torch.tensor([AVERAGE_NOISE_SIGMAS[k % len(AVERAGE_NOISE_SIGMAS)] for k in range(draws)]).double()
    uniform = torch.rand((draws, *shape), generator=generator, dtype=torch.float64)
    gaussian = torch.randn((draws, *shape), generator=generator, dtype=torch.float64)
    return {
        "uniform noise": uniform,
        "flat grey": torch.tensor(FLAT_GREY_LEVELS, dtype=torch.float64).view(-1, *ones).expand(-1, *shape).clone(),
        "site average": average[None].clone(),
        "site average plus noise": (average + sigmas.view(-1, *ones) * gaussian).clamp(0.0, 1.0),
    }
