"""Do a round's reconstructions identify its patients among the site's images more often than chance?

A round image counts as identified when it is, for some reconstruction, the most similar site image by SSIM
(`medpfl_app.metrics.ssim_matrix.pairwise_ssim`), ahead of the runner-up by more than `TIE_TOLERANCE`. No
reconstruction is first paired with "its" original: pairing by distance to the originals already looks at them and
turns noise into hits. With one image and one reconstruction this is nearest-image identification (Yin et al. 2021)
with SSIM.

Nearest-image identification alone is biased: noise, a flat image or the attack's prior lands on the same few
"central" site images whichever images were used. So each round image gets its own chance: for each reconstruction
``i``, ``q_i`` is the largest share with which one of its null families lands on that image — ``i``'s own pixels
shuffled (its grey levels without its structure), and each family of
`medpfl_app.metrics.null_images.null_reconstructions` (uniform noise, flat greys, the site's average image, the
average plus noise) that ``i`` resembles at least as much as its most similar patient — and at least ``1/P`` (a
blind guess); the image's chance is ``1 - Π_i (1 - q_i)``, that any of the reconstructions lands on it by chance. The
p-value is the exact Poisson-binomial probability of at least the observed number of identified round images under
these chances (`medpfl_app.metrics.poisson_binomial.poisson_binomial_tail`). The resemblance condition keeps a flat
grey's or the average image's favourite patients from counting against a reconstruction that looks like neither.

Notes:
    Taking the largest family share keeps each chance conservative (it bounds any mixture of the families). A share
    estimated from ``K`` draws reads as zero below about ``1/K``, so a lucky noise hit can reach ``p ≈ N/P``: keep
    ``null_draws`` at 32 or more. Identifications are taken as independent across round images (one reconstruction
    identifies at most one image, so they are negatively dependent and large counts are, if anything, rarer than
    assumed). Not covered: a generic-anatomy reconstruction that is no one's image yet lands, unlike the average
    image, on particular patients. Cost: about ``(N + 2·null_draws + 12 + N·shuffles) × P`` SSIM maps, null images
    in float32 (about 10 s for N = 8, P = 300 at 64 px on two CPU cores).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from medpfl_app.errors import MedPFLError
from medpfl_app.metrics.identifiability_result import IdentifiabilityResult
from medpfl_app.metrics.null_images import DEFAULT_NULL_DRAWS, NULL_SEED, null_reconstructions
from medpfl_app.metrics.poisson_binomial import poisson_binomial_tail
from medpfl_app.metrics.ssim_matrix import pairwise_ssim

#: Significance level of the identification test: identification counts as above chance when its p-value is below.
IDENTIFIABILITY_ALPHA = 0.01
#: SSIM difference up to which two site images count as tied: a tie identifies no one.
TIE_TOLERANCE = 1e-6
#: Most shuffled copies over all reconstructions together (bounds the cost of large batches): each reconstruction
#: gets ``min(null_draws, max(4, MAX_SHUFFLED // N))`` of its own.
MAX_SHUFFLED = 256
#: Null family of reconstruction ``i``: its own pixels in random order (its grey levels without its structure).
SHUFFLED_FAMILY = "shuffled reconstruction"
#: Chance source when no null family beats a blind guess (1 / site images per reconstruction).
FLOOR_SOURCE = "blind guess"

#: The statistic in two sentences, for reports (`medpfl_app.metrics.leakage.identifiability`).
IDENTIFIABILITY_DEFINITION = (
    "A patient of the round counts as identified when some reconstruction resembles that patient's image more "
    "than any other of the site's images (SSIM). Chance is the rate at which images that carry no information "
    "(uniform noise, flat grey, the site's average image plain or noisy, the reconstructions' own pixels "
    "shuffled) identify the same patients, never less than a blind guess, and identification is significant when "
    "chance alone would identify at least as many of the round's patients with probability below 0.01."
)


def _best_matches(similarity: torch.Tensor) -> torch.Tensor:
    """Per row, the most similar site image, or -1 when the runner-up is within `TIE_TOLERANCE` (a tie)."""
    if similarity.shape[1] == 1:
        return torch.zeros(similarity.shape[0], dtype=torch.long)
    top = similarity.topk(2, dim=1)
    clear = (top.values[:, 0] - top.values[:, 1]) > TIE_TOLERANCE
    return torch.where(clear, top.indices[:, 0], torch.full_like(top.indices[:, 0], -1))


def _landing_shares(best: torch.Tensor, pool_size: int) -> torch.Tensor:
    """``(..., P)``: share of the images of the last axis of ``best`` (``(..., K)``) landing on each site image."""
    counts = torch.zeros(*best.shape[:-1], pool_size + 1, dtype=torch.float64)
    counts.scatter_add_(-1, best + 1, torch.ones(best.shape, dtype=torch.float64))  # ties (-1) go to column 0
    return counts[..., 1:] / best.shape[-1]


def _check_inputs(reconstructions: torch.Tensor, used: list[int], pool: torch.Tensor, null_draws: int) -> None:
    """Raise on no reconstruction or round image, shapes that differ, an index outside the pool, no null draws."""
    if reconstructions.ndim < 1 or reconstructions.shape[0] == 0:
        raise MedPFLError("no reconstruction to identify", fix="score at least one reconstruction")
    if not used:
        raise MedPFLError("no round image to identify", fix="give the pool positions of the round's images")
    if pool.shape[1:] != reconstructions.shape[1:]:
        raise MedPFLError(
            f"pool images {tuple(pool.shape[1:])} differ in shape from reconstructions "
            f"{tuple(reconstructions.shape[1:])}",
            fix="resize the pool to the reconstruction size",
        )
    if used[0] < 0 or used[-1] >= int(pool.shape[0]):
        raise MedPFLError("a round image lies outside the pool", fix="include every round image in the pool")
    if null_draws < 1:
        raise MedPFLError(f"null_draws must be at least 1, got {null_draws}", fix="e.g. 32")


def _shuffled_reconstructions(recon: torch.Tensor, null_draws: int, seed: int) -> torch.Tensor:
    """``(N · shuffles, ...)``: copies of each reconstruction with its pixels in random order, grouped by it."""
    count = recon.shape[0]
    shuffles = min(null_draws, max(4, MAX_SHUFFLED // count))
    generator = torch.Generator().manual_seed(seed + 1)
    # The same pixel orders for every reconstruction: the result does not depend on their order.
    orders = torch.stack([torch.randperm(recon[0].numel(), generator=generator) for _ in range(shuffles)])
    return recon.flatten(1)[:, orders].reshape(count * shuffles, *recon.shape[1:])


def _nearest_site_images(recon: torch.Tensor, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per reconstruction: its most similar site image (-1 on a tie), that SSIM, and its lead over the runner-up."""
    pool_size = int(pool.shape[0])
    similarity = pairwise_ssim(recon, pool)
    top = similarity.topk(min(2, pool_size), dim=1).values
    margins = top[:, 0] - top[:, 1] if pool_size > 1 else torch.full((recon.shape[0],), math.inf, dtype=torch.float64)
    return _best_matches(similarity), top[:, 0], margins


def _null_shares(
    families: dict[str, torch.Tensor],
    null_best: torch.Tensor,
    resemblance: torch.Tensor,
    nearest: torch.Tensor,
    used: list[int],
    pool_size: int,
) -> dict[str, torch.Tensor]:
    """``shares[f][i, c]``: probability that reconstruction i, were it a member of family f, lands on round image c.

    ``null_best`` holds where each global null image lands, then each reconstruction's shuffled copies (grouped by
    reconstruction); ``resemblance`` the SSIM of each reconstruction to each global null image; ``nearest`` each
    reconstruction's SSIM to its most similar site image.
    """
    count = resemblance.shape[0]
    columns = torch.as_tensor(used)
    shares: dict[str, torch.Tensor] = {FLOOR_SOURCE: torch.full((count, len(used)), 1.0 / pool_size)}
    start = 0
    for name, images in families.items():
        block = slice(start, start + images.shape[0])
        landing = _landing_shares(null_best[block], pool_size)[columns]
        # A family speaks for reconstruction i only when i resembles one of its images at least as much as its
        # most similar patient: the average image's favourite patient does not count against a sharp
        # reconstruction of that patient, but does against a reconstruction that looks like the average.
        applies = resemblance[:, block].max(dim=1).values >= nearest - TIE_TOLERANCE
        shares[name] = landing[None, :] * applies[:, None].double()
        start += images.shape[0]
    shares[SHUFFLED_FAMILY] = _landing_shares(null_best[start:].reshape(count, -1), pool_size)[:, columns]
    return shares


def _chance_per_image(shares: dict[str, torch.Tensor]) -> tuple[list[float], list[str]]:
    """Per round image: ``1 - Π_i (1 - q_i)`` with ``q_i`` the largest family share, and the family behind it."""
    names = list(shares)
    stacked = torch.stack([shares[name].double() for name in names])  # (families, N, M)
    q, family = stacked.max(dim=0)  # (N, M) largest share per reconstruction and round image, and its family
    chance = 1.0 - torch.prod(1.0 - q, dim=0)
    strongest = q.argmax(dim=0)  # the reconstruction whose null families most favour each round image
    sources = [names[int(family[int(strongest[c]), c])] for c in range(q.shape[1])]
    return [float(v) for v in chance.clamp(0.0, 1.0)], sources


def identifiability(
    reconstructions: torch.Tensor,
    used_indices: Sequence[int] | torch.Tensor,
    pool: torch.Tensor,
    *,
    null_draws: int = DEFAULT_NULL_DRAWS,
    seed: int = NULL_SEED,
    alpha: float = IDENTIFIABILITY_ALPHA,
) -> IdentifiabilityResult:
    """Identify the round's patients among the site's images and test the count against chance (see the module).

    Args:
        reconstructions: ``(N, ...)`` reconstructions in [0, 1], in any order.
        used_indices: Positions in ``pool`` of the images the round used (any order; repeats are merged).
        pool: ``(P, ...)`` the site's images, which must contain the round's images.
        null_draws: Images per random null family.
        seed: Seed of the null families (fixed, so a score can be recomputed exactly).
        alpha: Significance level stored with the result.

    Returns:
        Per round image: identified or not, and its chance; per reconstruction its best match and margin; the
        p-value.

    Raises:
        MedPFLError: No reconstruction or round image, an index outside the pool, shapes that differ, images
            under 11 px per side.

    Example:
        >>> pool = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> result = identifiability(pool[[3, 7, 9, 12]], [3, 7, 9, 12], pool)
        >>> result.share, result.significant
        (1.0, True)
    """
    used = sorted({int(i) for i in used_indices})
    _check_inputs(reconstructions, used, pool, null_draws)
    pool_size = int(pool.shape[0])
    recon = reconstructions.detach().double()
    families = null_reconstructions(pool, draws=null_draws, seed=seed)
    shuffled = _shuffled_reconstructions(recon, null_draws, seed)
    global_nulls = torch.cat(list(families.values()))
    with torch.no_grad():
        best, nearest, margins = _nearest_site_images(recon, pool)
        resemblance = pairwise_ssim(recon, global_nulls)  # (N, null images)
        # float32 suffices to tell where a null image lands, in half the time
        null_best = _best_matches(pairwise_ssim(torch.cat([global_nulls, shuffled]), pool, dtype=torch.float32))
    shares = _null_shares(families, null_best, resemblance, nearest, used, pool_size)
    chance_values, sources = _chance_per_image(shares)
    identified = [bool((best == u).any()) for u in used]
    return IdentifiabilityResult(
        used_indices=tuple(used),
        identified=tuple(identified),
        chance=tuple(chance_values),
        chance_source=tuple(sources),
        margins=tuple(float(m) for m in margins),
        best_matches=tuple(int(b) for b in best),
        p_value=poisson_binomial_tail(chance_values, sum(identified)),
        alpha=alpha,
        pool_size=pool_size,
    )
