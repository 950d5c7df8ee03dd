"""Identifiability is zero for noise: uninformative reconstructions identify at chance, real ones far above it."""

from __future__ import annotations

import itertools

import pytest
import torch
from scipy.stats import binom

from medpfl_app.data.phantoms import generate_phantoms
from medpfl_app.errors import MedPFLError
from medpfl_app.metrics import IDENTIFIABILITY_ALPHA, identifiability, pairwise_ssim, poisson_binomial_tail, ssim

SIZE = 32
POOL = 48


def _phantoms(count: int, size: int, seed: int = 0) -> torch.Tensor:
    labels = [i % 4 for i in range(count)]
    return torch.from_numpy(generate_phantoms(labels, seed=seed, image_size=size))[:, None].double()


@pytest.fixture(scope="module")
def pool() -> torch.Tensor:
    """48 seeded 32×32 phantoms: the site's images."""
    return _phantoms(POOL, SIZE)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pixel_nearest(images: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """The old statistic: index of the pool image nearest to each image in pixel L2."""
    return torch.cdist(images.flatten(1), pool.flatten(1)).argmin(dim=1)


def _blur(images: torch.Tensor) -> torch.Tensor:
    """A slight blur: 3×3 binomial filter with replicated borders."""
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64) / 4
    kernel = (taps[:, None] * taps[None])[None, None]
    return torch.nn.functional.conv2d(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), kernel)


def _uninformative(kind: str, count: int, pool: torch.Tensor, seed: int) -> torch.Tensor:
    generator = _generator(seed)
    shape = (count, *pool.shape[1:])
    average = pool.mean(dim=0, keepdim=True)
    if kind == "uniform noise":
        return torch.rand(shape, generator=generator, dtype=torch.float64)
    if kind == "gaussian noise":
        return (0.5 + 0.25 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    if kind == "constant":
        return torch.rand((count, 1, 1, 1), generator=generator, dtype=torch.float64).expand(shape).clone()
    if kind == "site average":
        return average.expand(shape).clone()
    if kind == "site average plus noise":
        return (average + 0.05 * torch.randn(shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    raise ValueError(kind)


UNINFORMATIVE = ["uniform noise", "gaussian noise", "constant", "site average", "site average plus noise"]


@pytest.mark.parametrize("shape", [(3, 1, 16, 16), (2, 3, 12, 14), (2, 1, 12, 12, 12)])
def test_pairwise_ssim_equals_per_pair_ssim(shape: tuple[int, ...]) -> None:
    """The batched N×P matrix equals `ssim` pair by pair (2-D, RGB, 3-D); float32 within 1e-5."""
    images = torch.rand(shape, generator=_generator(1), dtype=torch.float64)
    others = torch.rand((4, *shape[1:]), generator=_generator(2), dtype=torch.float64)

    matrix = pairwise_ssim(images, others, max_chunk_elements=1000)  # several chunks
    single = pairwise_ssim(images, others, dtype=torch.float32)

    reference = torch.stack([ssim(image[None].expand_as(others), others) for image in images])
    assert matrix.shape == (shape[0], 4)
    assert torch.allclose(matrix, reference, atol=1e-10, rtol=0)
    assert torch.allclose(single, reference, atol=1e-5, rtol=0)


def test_pairwise_ssim_refuses_small_or_mismatched_images() -> None:
    with pytest.raises(MedPFLError):
        pairwise_ssim(torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8))
    with pytest.raises(MedPFLError):
        pairwise_ssim(torch.rand(2, 1, 16, 16), torch.rand(3, 1, 16, 15))


@pytest.mark.parametrize(("trials", "probability"), [(1, 0.3), (5, 0.02), (8, 0.25), (20, 0.5), (60, 0.1)])
def test_poisson_binomial_tail_equals_binomial_for_equal_chances(trials: int, probability: float) -> None:
    """With equal chances the tail is scipy's binomial survival function ``P(X >= k) = sf(k - 1)``."""
    for hits in range(trials + 2):
        expected = 1.0 if hits == 0 else float(binom.sf(hits - 1, trials, probability))
        assert poisson_binomial_tail([probability] * trials, hits) == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize(
    "probabilities", [(0.9,), (0.1, 0.7), (0.05, 0.5, 0.99), (0.02, 0.3, 0.6, 1.0), (0, 0.2, 0.4, 0.8)]
)
def test_poisson_binomial_tail_equals_enumeration(probabilities: tuple[float, ...]) -> None:
    """For unequal chances the tail equals brute-force enumeration of every hit pattern."""
    for hits in range(len(probabilities) + 1):
        expected = 0.0
        for pattern in itertools.product((0, 1), repeat=len(probabilities)):
            if sum(pattern) >= hits:
                weight = 1.0
                for hit, p in zip(pattern, probabilities):
                    weight *= p if hit else 1 - p
                expected += weight
        assert poisson_binomial_tail(probabilities, hits) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(MedPFLError):
        poisson_binomial_tail([1.2], 1)


@pytest.mark.parametrize("kind", UNINFORMATIVE)
def test_uninformative_reconstructions_identify_at_chance(kind: str, pool: torch.Tensor) -> None:
    """Noise, constants and the prior identify at chance, also when the round contains the most central image."""
    central = int(_pixel_nearest(pool.mean(dim=0, keepdim=True), pool)[0])
    for seed in range(3):
        used = torch.randperm(POOL, generator=_generator(100 + seed))[:6]
        used[0] = central  # the image the old statistic "identified" from any uninformative input

        result = identifiability(_uninformative(kind, 6, pool, seed), used, pool)

        assert result.p_value >= IDENTIFIABILITY_ALPHA and not result.significant, (kind, seed, result)
        assert result.excess <= 0.25, (kind, seed, result)
        assert result.share <= result.chance_mean + 0.25, (kind, seed, result)


@pytest.mark.parametrize("kind", ["uniform noise", "constant", "site average"])
def test_old_pixel_hit_fires_where_the_new_statistic_is_not_significant(kind: str) -> None:
    """The old failure: an uninformative image is 'identified' as its pixel-nearest site image; now it is chance.

    A 200-image pool puts the blind guess (1/200) below the 0.01 level, so not being significant is earned.
    """
    big_pool = _phantoms(200, 16, seed=3)
    for seed in range(3):
        recon = _uninformative(kind, 1, big_pool, seed)
        nearest = int(_pixel_nearest(recon, big_pool)[0])
        central = int(_pixel_nearest(big_pool.mean(dim=0, keepdim=True), big_pool)[0])
        for used in {nearest, central}:
            old_hit = int(_pixel_nearest(recon, big_pool)[0]) == used
            result = identifiability(recon, [used], big_pool, seed=seed)
            assert not result.significant and result.p_value >= IDENTIFIABILITY_ALPHA, (kind, seed, used, result)
            if used == nearest:
                assert old_hit  # the old statistic reported identifiability 1.0 here
        if kind != "uniform noise":  # deterministic images: even where the new hit fires, chance covers it
            favourite = int(pairwise_ssim(recon, big_pool).argmax())
            result = identifiability(recon, [favourite], big_pool, seed=seed)
            assert result.identified == (True,)
            assert result.chance[0] == 1.0 and result.excess == 0.0 and result.p_value == 1.0


@pytest.mark.parametrize("count", [4, 6, 8])
@pytest.mark.parametrize("kind", ["mild noise", "slight blur"])
def test_genuine_reconstructions_are_identified_far_above_chance(kind: str, count: int, pool: torch.Tensor) -> None:
    """The true images plus mild noise, or slightly blurred, identify every image: excess ≥ 0.8, p < 0.01."""
    for seed in range(2):
        generator = _generator(seed)
        used = torch.randperm(POOL, generator=generator)[:count]
        truth = pool[used]
        if kind == "mild noise":
            recon = (truth + 0.05 * torch.randn(truth.shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
        else:
            recon = _blur(truth)

        result = identifiability(recon, used, pool)

        assert result.excess >= 0.8, (kind, count, seed, result)
        assert result.p_value < IDENTIFIABILITY_ALPHA and result.significant, (kind, count, seed, result)
        assert all(margin > 0 for margin in result.margins)


def test_half_identified_batch_scores_between(pool: torch.Tensor) -> None:
    """Two real reconstructions and two noise images: about half the round identified, chance far lower."""
    used = [5, 11, 23, 40]
    recon = torch.cat([pool[[5, 23]], _uninformative("uniform noise", 2, pool, 0)])

    result = identifiability(recon, used, pool)

    assert result.identified[used.index(5)] and result.identified[used.index(23)]
    assert 0.5 <= result.share <= 0.75
    assert 0.0 < result.excess < 1.0
    assert result.chance_mean < 0.5


def test_identifiability_is_invariant_to_order(pool: torch.Tensor) -> None:
    """Reordering the reconstructions, the round's images or the whole pool changes nothing."""
    used = [3, 17, 29, 44, 8]
    recon = torch.cat([(pool[[3, 17, 29]] + 0.05).clamp(0, 1), _uninformative("uniform noise", 2, pool, 7)])
    reference = identifiability(recon, used, pool)

    shuffled = identifiability(recon[torch.tensor([4, 2, 0, 3, 1])], used[::-1], pool)
    permutation = torch.randperm(POOL, generator=_generator(5))
    position = torch.argsort(permutation)  # new position of each old index
    moved = identifiability(recon, [int(position[i]) for i in used], pool[permutation])

    for other in (shuffled, moved):
        assert other.share == reference.share
        assert other.p_value == pytest.approx(reference.p_value, rel=1e-9)
        assert other.chance_mean == pytest.approx(reference.chance_mean, rel=1e-9)
        assert other.excess == pytest.approx(reference.excess, rel=1e-9)
    assert shuffled.identified == reference.identified
    assert shuffled.chance == pytest.approx(reference.chance, rel=1e-12)


def test_identifiability_is_deterministic_and_checks_its_inputs(pool: torch.Tensor) -> None:
    recon = pool[[1, 2]]
    assert identifiability(recon, [1, 2], pool) == identifiability(recon, [1, 2], pool)
    with pytest.raises(MedPFLError):
        identifiability(recon, [1, POOL], pool)
    with pytest.raises(MedPFLError):
        identifiability(recon, [], pool)
    with pytest.raises(MedPFLError):
        identifiability(recon[:, :, :16], [1, 2], pool)
    with pytest.raises(MedPFLError):
        identifiability(recon[:0], [1, 2], pool)


def test_a_pool_barely_larger_than_the_round_is_not_significant(pool: torch.Tensor) -> None:
    """Six perfect reconstructions among only eight site images: chance identifies most of them too."""
    small = pool[:8]

    result = identifiability(small[:6], range(6), small)

    assert result.share == 1.0 and result.chance_mean >= 0.5
    assert not result.significant and result.p_value >= IDENTIFIABILITY_ALPHA


def test_identifiability_works_on_volumes() -> None:
    """3-D volumes: exact reconstructions identify their volumes among 30, noise does not."""
    volumes = torch.rand((30, 1, 12, 12, 12), generator=_generator(4), dtype=torch.float64)
    used = [2, 11, 19]

    exact = identifiability(volumes[used], used, volumes)
    noise = identifiability(torch.rand((3, 1, 12, 12, 12), generator=_generator(6), dtype=torch.float64), used, volumes)

    assert exact.share == 1.0 and exact.significant
    assert not noise.significant and noise.excess <= 0.25
