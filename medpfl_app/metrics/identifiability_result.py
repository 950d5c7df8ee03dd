"""What identification found for one round: per round image, per reconstruction, and against chance."""

from __future__ import annotations

from dataclasses import dataclass


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
