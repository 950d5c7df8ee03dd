"""Site scoring reports identifiability against chance, as scalars only, and noise never identifies."""

from __future__ import annotations

import json

import pytest
import torch

from medpfl_app.audit.scoring import SCORE_KEYS, check_scalars_only, pair_reconstructions, score_reconstructions
from medpfl_app.data.phantoms import generate_phantoms
from medpfl_app.metrics.leakage import IDENTIFIABILITY_ALPHA, pairwise_ssim

IDENTIFIABILITY_KEYS = (
    "identifiability",
    "identifiability_chance",
    "identifiability_excess",
    "identifiability_p_value",
)


@pytest.fixture(scope="module")
def pool() -> torch.Tensor:
    """40 seeded 32×32 phantoms (float32, as the site holds them)."""
    labels = [i % 4 for i in range(40)]
    return torch.from_numpy(generate_phantoms(labels, seed=2, image_size=32))[:, None]


def _noise(count: int, seed: int) -> torch.Tensor:
    return torch.rand((count, 1, 32, 32), generator=torch.Generator().manual_seed(seed))


def _assert_scalars(scores: dict) -> None:
    check_scalars_only(scores)
    assert set(scores) <= set(SCORE_KEYS)
    assert json.loads(json.dumps(scores)) == scores


def test_score_keys_include_identifiability_against_chance() -> None:
    assert set(IDENTIFIABILITY_KEYS) <= set(SCORE_KEYS)


def test_exact_reconstructions_identify_significantly(pool: torch.Tensor) -> None:
    """Reconstructions equal to the used images: every image identified, far above chance, scalars only."""
    used = [3, 9, 17, 30]
    scores = score_reconstructions(
        pool[used].numpy(),
        pool[used],
        used_positions=used,
        pool=pool,
        recovered_labels=[3, 1, 1, 2],
        true_labels=[3, 1, 1, 2],
    )

    _assert_scalars(scores)
    assert all(isinstance(scores[key], float) for key in IDENTIFIABILITY_KEYS)
    assert scores["identifiability"] == 1.0
    assert 0.0 < scores["identifiability_chance"] < 0.5
    assert scores["identifiability_excess"] >= 0.8
    assert scores["identifiability_p_value"] < IDENTIFIABILITY_ALPHA


@pytest.mark.parametrize("seed", range(4))
def test_noise_reconstructions_are_not_identified_above_chance(seed: int, pool: torch.Tensor) -> None:
    """Noise scored exactly as the site scores an attack: not significant, excess near zero.

    The Hungarian pairing used for SSIM/PSNR looks at the originals, so pairing noise to the used images first and
    then asking "is the nearest image the paired one?" produces hits; identifiability does not pair.
    """
    used = [int(i) for i in torch.randperm(40, generator=torch.Generator().manual_seed(seed))[:6]]
    used[0] = int(torch.cdist(pool.mean(0, keepdim=True).flatten(1), pool.flatten(1)).argmin())  # most central

    scores = score_reconstructions(_noise(6, seed).numpy(), pool[used], used_positions=used, pool=pool)

    _assert_scalars(scores)
    assert scores["identifiability_p_value"] >= IDENTIFIABILITY_ALPHA
    assert scores["identifiability_excess"] <= 0.25
    assert scores["ssim_max"] < 0.3


def test_pairing_would_favour_noise_hits(pool: torch.Tensor) -> None:
    """Why identifiability does not use the pairing: noise paired by MSE hits its partner more often than unpaired.

    Summed over seeds, the paired per-reconstruction hit count exceeds the count of the same noise images against
    randomly assigned used images (the pairing's selection effect the statistic avoids).
    """
    paired_hits = unpaired_hits = 0
    for seed in range(12):
        used = torch.randperm(40, generator=torch.Generator().manual_seed(seed))[:6]
        noise = _noise(6, 50 + seed)
        rows, cols = pair_reconstructions(noise, pool[used])
        best = pairwise_ssim(noise.double(), pool.double()).argmax(dim=1)
        paired_hits += sum(int(best[r]) == int(used[c]) for r, c in zip(rows, cols))
        unpaired_hits += sum(int(best[k]) == int(used[k]) for k in range(6))
    assert paired_hits > unpaired_hits


def test_identifiability_is_withheld_with_fewer_reconstructions_than_images(pool: torch.Tensor) -> None:
    """Two reconstructions for five used images could identify at most 2/5: nothing is reported."""
    used = [0, 1, 2, 3, 4]
    scores = score_reconstructions(pool[[0, 1]].numpy(), pool[used], used_positions=used, pool=pool)

    _assert_scalars(scores)
    assert scores["reconstructions_scored"] == 2 and scores["images_used"] == 5
    assert all(scores[key] is None for key in IDENTIFIABILITY_KEYS)


def test_extra_reconstructions_are_all_used_for_identification(pool: torch.Tensor) -> None:
    """More reconstructions than images: all of them count, and the extra noise does not make it significant."""
    used = [6, 21]
    recon = torch.cat([pool[[6]], _noise(5, 9)])

    scores = score_reconstructions(recon.numpy(), pool[used], used_positions=used, pool=pool)

    _assert_scalars(scores)
    assert scores["reconstructions_scored"] == 2
    assert scores["identifiability"] == 0.5  # image 6 is identified, image 21 is not
    assert scores["identifiability_p_value"] >= IDENTIFIABILITY_ALPHA  # one hit in two among 40 is weak
