"""Leakage scores built on the per-image metrics: attack success, labels, relative leakage, identifiability, LPIPS."""

from __future__ import annotations

import collections
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch

from medpfl_app.errors import MedPFLError
from medpfl_app.metrics.image import check_image_pair, ssim

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


#: Significance level of the identification test: identification counts as above chance when its p-value is below.
IDENTIFIABILITY_ALPHA = 0.01
#: SSIM difference up to which two site images count as tied: a tie identifies no one.
TIE_TOLERANCE = 1e-6
#: Draws per random null family (uniform noise, noisy site average) and at most per reconstruction's shuffles.
DEFAULT_NULL_DRAWS = 32
#: Most shuffled copies over all reconstructions together (bounds the cost of large batches): each reconstruction
#: gets ``min(null_draws, max(4, MAX_SHUFFLED // N))`` of its own.
MAX_SHUFFLED = 256
#: Seed of the null images: fixed, so a score can be recomputed exactly.
NULL_SEED = 0
#: Grey levels of the flat null images.
FLAT_GREY_LEVELS = tuple(level / 10 for level in range(11))
#: Standard deviations of the Gaussian noise added to the site's average image (cycled over the draws).
AVERAGE_NOISE_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.3)
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


def poisson_binomial_tail(probabilities: Sequence[float] | torch.Tensor, hits: int) -> float:
    """``P(X >= hits)`` for ``X`` the number of successes of independent Bernoulli trials with ``probabilities``.

    Exact, by dynamic programming over the trials (``O(N²)``).

    Example:
        >>> round(poisson_binomial_tail([0.5, 0.5], 1), 4)
        0.75
    """
    probs = [float(p) for p in probabilities]
    if any(not 0.0 <= p <= 1.0 for p in probs):
        raise MedPFLError(f"chance probabilities must lie in [0, 1], got {probs}", fix="pass probabilities")
    if hits <= 0:
        return 1.0
    if hits > len(probs):
        return 0.0
    distribution = torch.zeros(len(probs) + 1, dtype=torch.float64)  # distribution[k] = P(k successes so far)
    distribution[0] = 1.0
    for p in probs:
        shifted = torch.zeros_like(distribution)
        shifted[1:] = distribution[:-1] * p
        distribution = distribution * (1.0 - p) + shifted
    return float(min(1.0, float(distribution[hits:].sum())))


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


@dataclass(frozen=True)
class IdentifiabilityResult:
    """Identification of the round's patients among the site's images, against chance (one entry per round image).

    Attributes:
        used_indices: Positions in the pool of the round's distinct images, ascending.
        identified: Per round image: some reconstruction's most similar site image (SSIM) is this one.
        chance: Per round image: probability that reconstructions carrying no information identify it
            (``1 - Π_i (1 - q_i)`` over the reconstructions, ``q_i`` the largest share of reconstruction ``i``'s
            null families landing on it, at least ``1/P``).
        chance_source: Per round image: the null family that set its chance (`FLOOR_SOURCE` for the blind guess).
        margins: Per reconstruction: SSIM to its most similar site image minus SSIM to the runner-up.
        best_matches: Per reconstruction: position of its most similar site image (-1 on a tie).
        p_value: Probability of at least ``sum(identified)`` identified round images by chance (Poisson-binomial).
        alpha: Significance level.
        pool_size: ``P``, the site images identification is made among.
    """

    used_indices: tuple[int, ...]
    identified: tuple[bool, ...]
    chance: tuple[float, ...]
    chance_source: tuple[str, ...]
    margins: tuple[float, ...]
    best_matches: tuple[int, ...]
    p_value: float
    alpha: float
    pool_size: int

    @property
    def share(self) -> float:
        """Share of the round's images identified by some reconstruction (the hit share)."""
        return sum(self.identified) / len(self.identified)

    @property
    def chance_mean(self) -> float:
        """Hit share expected by chance (mean of ``chance``)."""
        return sum(self.chance) / len(self.chance)

    @property
    def excess(self) -> float:
        """``max(0, (share - chance) / (1 - chance))``: 0 at or below chance, 1 when every round image is hit."""
        chance = self.chance_mean
        if chance >= 1.0:
            return 0.0
        return max(0.0, (self.share - chance) / (1.0 - chance))

    @property
    def significant(self) -> bool:
        """Identification is above chance at level ``alpha`` (``p_value < alpha``)."""
        return self.p_value < self.alpha

    def summary(self) -> dict[str, float | bool]:
        """The scalars a report carries."""
        return {
            "identifiability": self.share,
            "identifiability_chance": self.chance_mean,
            "identifiability_excess": self.excess,
            "identifiability_p_value": self.p_value,
            "identifiability_significant": self.significant,
        }


def identifiability(
    reconstructions: torch.Tensor,
    used_indices: Sequence[int] | torch.Tensor,
    pool: torch.Tensor,
    *,
    null_draws: int = DEFAULT_NULL_DRAWS,
    seed: int = NULL_SEED,
    alpha: float = IDENTIFIABILITY_ALPHA,
) -> IdentifiabilityResult:
    """Do the reconstructions identify the round's patients among the site's images more often than chance?

    A round image counts as identified when it is, for some reconstruction, the most similar site image by SSIM
    (`pairwise_ssim`), ahead of the runner-up by more than `TIE_TOLERANCE`. No reconstruction is first paired with
    "its" original: pairing by distance to the originals already looks at them and turns noise into hits. With
    one image and one reconstruction this is nearest-image identification (Yin et al. 2021) with SSIM.

    Nearest-image identification alone is biased: noise, a flat image or the attack's prior lands on the same few
    "central" site images whichever images were used. So each round image gets its own chance: for each
    reconstruction ``i``, ``q_i`` is the largest share with which one of its null families lands on that image —
    ``i``'s own pixels shuffled (its grey levels without its structure), and each family of `null_reconstructions`
    (uniform noise, flat greys, the site's average image, the average plus noise) that ``i`` resembles at least
    as much as its most similar patient — and at least ``1/P`` (a blind guess); the image's chance is
    ``1 - Π_i (1 - q_i)``, that any of the reconstructions lands on it by chance. The p-value is the exact
    Poisson-binomial probability of at least the observed number of identified round images under these chances
    (`poisson_binomial_tail`). The resemblance condition keeps a flat grey's or the average image's favourite
    patients from counting against a reconstruction that looks like neither.

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

    Notes:
        Taking the largest family share keeps each chance conservative (it bounds any mixture of the families).
        A share estimated from ``K`` draws reads as zero below about ``1/K``, so a lucky noise hit can reach
        ``p ≈ N/P``: keep ``null_draws`` at 32 or more. Identifications are taken as independent across round
        images (one reconstruction identifies at most one image, so they are negatively dependent and large counts
        are, if anything, rarer than assumed). Not covered: a generic-anatomy reconstruction that is no one's
        image yet lands, unlike the average image, on particular patients. Cost: about
        ``(N + 2·null_draws + 12 + N·shuffles) × P`` SSIM maps, null images in float32 (about 10 s for N = 8,
        P = 300 at 64 px on two CPU cores).

    Example:
        >>> pool = torch.rand(40, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> result = identifiability(pool[[3, 7, 9, 12]], [3, 7, 9, 12], pool)
        >>> result.share, result.significant
        (1.0, True)
    """
    used = sorted({int(i) for i in used_indices})
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
    pool_size = int(pool.shape[0])
    if used[0] < 0 or used[-1] >= pool_size:
        raise MedPFLError("a round image lies outside the pool", fix="include every round image in the pool")
    if null_draws < 1:
        raise MedPFLError(f"null_draws must be at least 1, got {null_draws}", fix="e.g. 32")
    recon = reconstructions.detach().double()
    count = recon.shape[0]
    families = null_reconstructions(pool, draws=null_draws, seed=seed)
    shuffles = min(null_draws, max(4, MAX_SHUFFLED // count))
    generator = torch.Generator().manual_seed(seed + 1)
    # The same pixel orders for every reconstruction: the result does not depend on their order.
    orders = torch.stack([torch.randperm(recon[0].numel(), generator=generator) for _ in range(shuffles)])
    shuffled = recon.flatten(1)[:, orders].reshape(count * shuffles, *recon.shape[1:])
    global_nulls = torch.cat(list(families.values()))
    with torch.no_grad():
        similarity = pairwise_ssim(recon, pool)
        best = _best_matches(similarity)
        top = similarity.topk(min(2, pool_size), dim=1).values
        margins = top[:, 0] - top[:, 1] if pool_size > 1 else torch.full((count,), math.inf, dtype=torch.float64)
        resemblance = pairwise_ssim(recon, global_nulls)  # (N, null images)
        # float32 suffices to tell where a null image lands, in half the time
        null_best = _best_matches(pairwise_ssim(torch.cat([global_nulls, shuffled]), pool, dtype=torch.float32))

    columns = torch.as_tensor(used)
    # shares[f][i, c]: probability that reconstruction i, were it a member of family f, lands on round image c
    shares: dict[str, torch.Tensor] = {FLOOR_SOURCE: torch.full((count, len(used)), 1.0 / pool_size)}
    start = 0
    for name, images in families.items():
        block = slice(start, start + images.shape[0])
        landing = _landing_shares(null_best[block], pool_size)[columns]
        # A family speaks for reconstruction i only when i resembles one of its images at least as much as its
        # most similar patient: the average image's favourite patient does not count against a sharp
        # reconstruction of that patient, but does against a reconstruction that looks like the average.
        applies = resemblance[:, block].max(dim=1).values >= top[:, 0] - TIE_TOLERANCE
        shares[name] = landing[None, :] * applies[:, None].double()
        start += images.shape[0]
    shares[SHUFFLED_FAMILY] = _landing_shares(null_best[start:].reshape(count, shuffles), pool_size)[:, columns]
    names = list(shares)
    stacked = torch.stack([shares[name].double() for name in names])  # (families, N, M)
    q, family = stacked.max(dim=0)  # (N, M) largest share per reconstruction and round image, and its family
    chance = 1.0 - torch.prod(1.0 - q, dim=0)
    strongest = q.argmax(dim=0)  # the reconstruction whose null families most favour each round image
    sources = [names[int(family[int(strongest[c]), c])] for c in range(len(used))]
    identified = [bool((best == u).any()) for u in used]
    chance_values = [float(v) for v in chance.clamp(0.0, 1.0)]
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
