"""Empirical ε lower bounds: Clopper–Pearson against SciPy's exact binomial test, the bound's behaviour, the
`EmpiricalEpsilon` contract, and the audit of the real `ClientDP` (honest and with its noise switched off)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from medpfl_app.defenses.accountant import epsilon_per_release
from medpfl_app.defenses.client_dp import ClientDP, clip_update
from medpfl_app.defenses.epsilon_audit import (
    SCHEMA,
    EmpiricalEpsilon,
    audit_defense,
    clopper_pearson,
    cp_lower,
    cp_upper,
    epsilon_lower_bound,
    max_certifiable_epsilon,
)
from medpfl_app.defenses.noise import GaussianNoise
from medpfl_app.errors import MedPFLError


@dataclasses.dataclass(frozen=True)
class NoiselessClientDP(ClientDP):
    """A broken ClientDP: clips but adds no noise, while its noise_multiplier still makes the accountant claim z."""

    def _apply(self, update, rng):
        return clip_update(update, self.clip_norm)


@pytest.mark.parametrize("k, n", [(0, 1), (0, 20), (1, 20), (7, 20), (19, 20), (20, 20), (0, 500), (498, 500)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy_exact_binomial_interval(k, n, confidence) -> None:
    """Two-sided and both one-sided bounds agree with binomtest(...).proportion_ci(method="exact")."""
    expected = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    low, high = clopper_pearson(k, n, confidence)
    assert low == pytest.approx(expected.low, abs=1e-10) and high == pytest.approx(expected.high, abs=1e-10)
    alpha = 1 - confidence
    greater = binomtest(k, n, alternative="greater").proportion_ci(confidence_level=confidence, method="exact")
    less = binomtest(k, n, alternative="less").proportion_ci(confidence_level=confidence, method="exact")
    assert float(cp_lower(k, n, alpha)) == pytest.approx(greater.low, abs=1e-10)
    assert float(cp_upper(k, n, alpha)) == pytest.approx(less.high, abs=1e-10)


def test_clopper_pearson_rejects_impossible_counts() -> None:
    with pytest.raises(MedPFLError, match="successes"):
        clopper_pearson(5, 4, 0.95)
    with pytest.raises(MedPFLError, match="confidence"):
        clopper_pearson(1, 4, 1.0)


def test_perfectly_separated_scores_give_the_trial_limited_bound_and_overlapping_ones_give_zero() -> None:
    """Separable scores reach the value the held-out half can certify; identical distributions certify nothing."""
    rng = np.random.default_rng(0)
    n = 1000
    separated = epsilon_lower_bound(rng.normal(10, 1, n), rng.normal(0, 1, n), delta=1e-5, confidence=0.95)
    # held-out half: 500 positives all above the threshold, 500 negatives all below, α/2 per one-sided bound
    expected = math.log((0.025 ** (1 / 500) - 1e-5) / (1 - 0.025 ** (1 / 500)))
    assert separated == pytest.approx(expected, rel=1e-6)
    assert separated <= max_certifiable_epsilon(2 * n, 0.95)
    same = epsilon_lower_bound(rng.normal(0, 1, n), rng.normal(0, 1, n), delta=1e-5, confidence=0.95)
    assert same < 0.3
    lower_is_in = epsilon_lower_bound(rng.normal(-10, 1, n), rng.normal(0, 1, n), delta=1e-5, confidence=0.95)
    assert lower_is_in == pytest.approx(expected, rel=1e-6)  # the other test direction is tried too


def test_gaussian_scores_never_exceed_the_true_epsilon() -> None:
    """Scores from a Gaussian mechanism with μ = 1 (true ε at δ = 1e-5 below 4.8): ε̂ is positive and below."""
    rng = np.random.default_rng(1)
    epsilon = epsilon_lower_bound(rng.normal(1, 1, 5000), rng.normal(0, 1, 5000), delta=1e-5, confidence=0.95)
    assert 0.2 < epsilon < epsilon_per_release(1.0, 1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"scores_with_canary": [1.0], "scores_without": [0.0, 1.0]}, "at least 2"),
        ({"scores_with_canary": [1.0, np.nan], "scores_without": [0.0, 1.0]}, "finite"),
        ({"scores_with_canary": [[1.0, 2.0]], "scores_without": [0.0, 1.0]}, "1-D"),
        ({"scores_with_canary": [1.0, 2.0], "scores_without": [0.0, 1.0], "delta": 0.0}, "delta"),
        ({"scores_with_canary": [1.0, 2.0], "scores_without": [0.0, 1.0], "confidence": 1.5}, "confidence"),
    ],
)
def test_epsilon_lower_bound_rejects_bad_input(kwargs, match) -> None:
    with pytest.raises(MedPFLError, match=match):
        epsilon_lower_bound(**{"delta": 1e-5, **kwargs})


def test_noiseless_client_dp_is_caught_far_above_its_claim() -> None:
    """Noise switched off while the accountant still claims z = 2: ε̂ far above the claimed per-release ε."""
    result = audit_defense(NoiselessClientDP(clip_norm=1.0, noise_multiplier=2.0), trials=2000, seed=3, delta=1e-5)
    assert result.claimed_epsilon == pytest.approx(epsilon_per_release(2.0, 1e-5))
    assert result.epsilon_lower > 2 * result.claimed_epsilon
    assert result.exceeds_claim


@pytest.mark.parametrize("clip_norm", [0.05, 1.0, 20.0])
@pytest.mark.parametrize("noise_multiplier", [0.5, 1.0, 2.0, 4.0])
def test_real_client_dp_stays_below_its_claim(clip_norm, noise_multiplier) -> None:
    """The honest mechanism across its parameter range: ε̂ ≤ claimed ε (not flagged)."""
    result = audit_defense(
        ClientDP(clip_norm=clip_norm, noise_multiplier=noise_multiplier), trials=1000, seed=11, delta=1e-5
    )
    assert result.epsilon_lower <= result.claimed_epsilon
    assert not result.exceeds_claim
    assert result.trials == 1000 and result.confidence == 0.95 and result.delta == 1e-5


def test_the_audit_finds_the_signal_of_weak_noise() -> None:
    """At z = 0.5 the honest mechanism leaks measurably: ε̂ > 1 (the audit is not blind)."""
    assert audit_defense(ClientDP(clip_norm=1.0, noise_multiplier=0.5), trials=2000, seed=5).epsilon_lower > 1.0


def test_audit_is_reproducible_by_seed_and_refuses_what_it_cannot_audit() -> None:
    defense = ClientDP(clip_norm=1.0, noise_multiplier=1.0)
    assert audit_defense(defense, trials=400, seed=7) == audit_defense(defense, trials=400, seed=7)
    with pytest.raises(MedPFLError, match="no client-level"):
        audit_defense(GaussianNoise(sigma=1.0), trials=100)
    with pytest.raises(MedPFLError, match="trials"):
        audit_defense(defense, trials=2)
    with pytest.raises(MedPFLError, match="base_norm_fraction"):
        audit_defense(defense, trials=100, base_norm_fraction=1.0)


def _valid() -> EmpiricalEpsilon:
    return EmpiricalEpsilon(
        epsilon_lower=1.25, confidence=0.95, trials=4000, delta=1e-5, claimed_epsilon=4.73, method="canary test"
    )


def test_empirical_epsilon_json_round_trip() -> None:
    value = _valid()
    data = json.loads(json.dumps(value.to_json()))
    assert data["schema"] == SCHEMA
    assert EmpiricalEpsilon.from_json(data) == value
    assert not value.exceeds_claim
    assert dataclasses.replace(value, epsilon_lower=5.0).exceeds_claim


@pytest.mark.parametrize(
    "change, match",
    [
        ({"schema": "medpfl-empirical-epsilon/9"}, "schema"),
        ({"extra": 1}, "unknown keys"),
        ({"epsilon_lower": float("nan")}, "epsilon_lower"),
        ({"epsilon_lower": -0.5}, "epsilon_lower"),
        ({"epsilon_lower": 50.0}, "can certify"),
        ({"claimed_epsilon": "4.7"}, "claimed_epsilon"),
        ({"confidence": 1.0}, "confidence"),
        ({"delta": 0}, "delta"),
        ({"trials": True}, "trials"),
        ({"trials": 3.5}, "trials"),
        ({"trials": 10**9}, "trials"),
        ({"method": ""}, "method"),
        ({"method": "x" * 501}, "method"),
    ],
)
def test_empirical_epsilon_rejects_bad_input(change, match) -> None:
    data = {**_valid().to_json(), **change}
    with pytest.raises(MedPFLError, match=match):
        EmpiricalEpsilon.from_json(data)


def test_empirical_epsilon_rejects_non_objects_and_missing_keys() -> None:
    with pytest.raises(MedPFLError, match="JSON object"):
        EmpiricalEpsilon.from_json([1, 2])
    data = _valid().to_json()
    del data["method"]
    with pytest.raises(MedPFLError, match="missing keys"):
        EmpiricalEpsilon.from_json(data)
