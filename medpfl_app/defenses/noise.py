"""Additive noise on the update: Laplace at scale b (the seed paper's defense) and Gaussian at σ.

Neither clips the update, so neither has bounded sensitivity and neither carries a DP guarantee: both are
heuristics. Use `medpfl_app.defenses.client_dp` for a formal client-level guarantee.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from medpfl_app.defenses.base import DEFENSES, Defense, Guarantee
from medpfl_app.defenses.update_arrays import (
    DefenseOutput,
    Seed,
    Update,
    float_keys,
    is_positive_number,
    map_floats,
    require,
    to_float64,
)


@DEFENSES.register("laplace_noise")
@dataclasses.dataclass(frozen=True)
class LaplaceNoise(Defense):
    """Add i.i.d. Laplace(0, b) noise to every float entry.

    Args:
        scale: The Laplace scale b > 0 (standard deviation b·√2).

    Notes:
        Heuristic (no formal guarantee): without clipping the update's sensitivity is unbounded, so no ε follows
        from b. Gradient inversion still succeeds at small b (the seed paper's finding) and adaptive attacks
        average the noise out over rounds. A fixed seed makes the noise predictable, removing even this protection.
    """

    key = "laplace_noise"
    guarantee = Guarantee.HEURISTIC
    needs_difference = False
    scale: float

    def __post_init__(self) -> None:
        require(
            is_positive_number(self.scale),
            f"laplace_noise: scale must be > 0, got {self.scale!r}",
            "set scale (the Laplace b) to a positive number, e.g. 1e-3",
        )

    def _apply(self, update: Update, rng: np.random.Generator) -> DefenseOutput:
        out = map_floats(update, lambda _k, x: x + rng.laplace(0.0, self.scale, size=x.shape))
        return DefenseOutput(out, {"noised_tensors": len(float_keys(update)), "std": self.scale * float(np.sqrt(2))})


@DEFENSES.register("gaussian_noise")
@dataclasses.dataclass(frozen=True)
class GaussianNoise(Defense):
    """Add i.i.d. N(0, σ²) noise to every float entry, σ absolute or relative to a percentile of |update|.

    Args:
        sigma: σ > 0 itself, or the multiplier of the percentile when ``percentile`` is set.
        percentile: If set (in [0, 100]), σ_eff = sigma · percentile(|update|, percentile) over all float entries
            (NVFlare's ``GaussianPrivacy`` uses the 95th percentile).

    Notes:
        Heuristic (no formal guarantee): there is no clipping, and a relative σ depends on the data itself, so no ε
        follows. The effective σ is recorded because the server needs it for honest reports; it reveals one order
        statistic of the update.
    """

    key = "gaussian_noise"
    guarantee = Guarantee.HEURISTIC
    needs_difference = False
    sigma: float
    percentile: float | None = None

    def __post_init__(self) -> None:
        require(
            is_positive_number(self.sigma),
            f"gaussian_noise: sigma must be > 0, got {self.sigma!r}",
            "set sigma to a positive number",
        )
        if self.percentile is not None:
            ok = isinstance(self.percentile, int | float) and not isinstance(self.percentile, bool)
            require(
                ok and 0 <= self.percentile <= 100,
                f"gaussian_noise: percentile must be in [0, 100], got {self.percentile!r}",
                "set percentile between 0 and 100 (e.g. 95), or leave it unset for an absolute sigma",
            )

    def effective_sigma(self, update: Update) -> float:
        if self.percentile is None:
            return float(self.sigma)
        keys = float_keys(update)
        if not keys:
            return 0.0
        magnitudes = np.concatenate([np.abs(to_float64(update[k])).ravel() for k in keys])
        return float(self.sigma * np.percentile(magnitudes, self.percentile)) if magnitudes.size else 0.0

    def _apply(self, update: Update, rng: np.random.Generator) -> DefenseOutput:
        sigma = self.effective_sigma(update)
        out = map_floats(update, lambda _k, x: x + rng.normal(0.0, sigma, size=x.shape) if sigma > 0 else x)
        return DefenseOutput(out, {"noised_tensors": len(float_keys(update)), "effective_sigma": sigma})


def laplace_noise(update: Update, scale: float, *, seed: Seed = None) -> DefenseOutput:
    """Functional form of `LaplaceNoise`: ``laplace_noise(update, b, seed=0) -> (new_update, record)``.

    Example:
        >>> import numpy as np
        >>> new, record = laplace_noise({"w": np.zeros(3, np.float32)}, 0.1, seed=0)
        >>> new["w"].dtype, record["noised_tensors"]
        (dtype('float32'), 1)
    """
    return LaplaceNoise(scale=scale).apply(update, seed=seed)


def gaussian_noise(
    update: Update, sigma: float, *, percentile: float | None = None, seed: Seed = None
) -> DefenseOutput:
    """Functional form of `GaussianNoise`."""
    return GaussianNoise(sigma=sigma, percentile=percentile).apply(update, seed=seed)
