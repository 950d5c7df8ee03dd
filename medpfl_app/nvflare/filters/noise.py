"""Additive-noise result filters (heuristics): Laplace at scale b and Gaussian at σ."""

from __future__ import annotations

from medpfl_app.defenses.noise import GaussianNoise, LaplaceNoise
from medpfl_app.nvflare.filters.defense_filter import DefenseFilter, seeded_rng


class LaplaceNoiseFilter(DefenseFilter):
    """Add Laplace(0, b) noise to every float entry of a WEIGHTS/WEIGHT_DIFF result (the seed paper's defense).

    Job config: ``{"path": "medpfl_app.nvflare.filters.noise.LaplaceNoiseFilter", "args": {"scale": 0.001}}``.

    Args:
        scale: Laplace scale b > 0.
        seed: Tests only: seeds this filter's generator (advanced every round). A known seed voids any protection.

    Notes:
        Heuristic (no formal guarantee): no clipping, so no ε. On full WEIGHTS the noise is added to the weights,
        which equals adding it to the difference (the global model is public); noise on BN running variances can
        make them negative: drop them first (`DropBatchNormStatsFilter`).
    """

    def __init__(self, scale: float, seed: int | None = None) -> None:
        super().__init__()
        self.scale = scale
        self.seed = seed
        self._defense = LaplaceNoise(scale=scale)
        self._rng = seeded_rng(seed, type(self).__name__)


class GaussianNoiseFilter(DefenseFilter):
    """Add N(0, σ²) noise, σ absolute or ``sigma`` × the ``percentile``-th percentile of |update|.

    Job config: ``{"path": "medpfl_app.nvflare.filters.noise.GaussianNoiseFilter", "args": {"sigma": 0.1,
    "percentile": 95}}`` (NVFlare's ``GaussianPrivacy`` behaviour, heuristic).

    Args:
        sigma: σ > 0, or the multiplier of the percentile when ``percentile`` is set.
        percentile: Optional percentile in [0, 100] of |update| over all float entries.
        seed: Tests only (see `LaplaceNoiseFilter`).

    Notes:
        Heuristic (no formal guarantee): no clipping, and a relative σ depends on the data. For a formal guarantee
        use `medpfl_app.nvflare.filters.client_dp.ClientDPFilter`.
    """

    def __init__(self, sigma: float, percentile: float | None = None, seed: int | None = None) -> None:
        super().__init__()
        self.sigma = sigma
        self.percentile = percentile
        self.seed = seed
        self._defense = GaussianNoise(sigma=sigma, percentile=percentile)
        self._rng = seeded_rng(seed, type(self).__name__)
