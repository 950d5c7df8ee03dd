"""Client-level DP (DP-FedAvg style): clip the whole update to L2 norm C, add Gaussian noise σ = z·C.

The privacy cost is accounted separately (`medpfl_app.defenses.accountant`), once per released update.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from medpfl_app.defenses.base import DEFENSES, Defense, Guarantee
from medpfl_app.defenses.update_arrays import (
    DefenseOutput,
    Seed,
    Update,
    global_l2_norm,
    is_positive_number,
    map_floats,
    require,
)


def clip_update(update: Update, clip_norm: float) -> DefenseOutput:
    """Scale all float entries together by min(1, C / ‖update‖₂); integer entries are copied unchanged.

    The record holds only ``clip_norm``: the pre-clip norm is data-dependent and is not released.
    """
    require(
        is_positive_number(clip_norm),
        f"clip_update: clip_norm must be > 0, got {clip_norm!r}",
        "set clip_norm (C) to a positive number",
    )
    norm = global_l2_norm(update)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return DefenseOutput(map_floats(update, lambda _k, x: x * factor), {"clip_norm": float(clip_norm)})


@DEFENSES.register("client_dp")
@dataclasses.dataclass(frozen=True)
class ClientDP(Defense):
    """Clip the update to ‖·‖₂ ≤ C over all float entries, then add N(0, (z·C)²) to every float entry.

    Args:
        clip_norm: C > 0, the L2 bound of one site's whole update.
        noise_multiplier: z > 0; the noise standard deviation is z·C.

    Notes:
        (ε, δ)-DP at client level, only together with the accountant: each release costs one step of the Gaussian
        mechanism with sample rate 1 (the site always participates), with neighbouring datasets = this site's
        contribution present vs. replaced by a zero update (sensitivity C, the DP-FedAvg convention; for
        replace-one-site adjacency the sensitivity is 2C, i.e. ε of z/2). The guarantee is void if: an update is
        released without going through this defense and the ledger (another task, another job not using the ledger,
        a second filter chain); the ledger is deleted or reset; the noise seed is fixed or known; the update is full
        weights rather than the difference to the public global model; or anything data-dependent (e.g. the
        pre-clip norm, metrics) is sent alongside. It protects whole-site participation, not individual patients
        beyond that (group privacy applies).
    """

    key = "client_dp"
    guarantee = Guarantee.CLIENT_DP
    needs_difference = True
    clip_norm: float
    noise_multiplier: float

    def __post_init__(self) -> None:
        require(
            is_positive_number(self.clip_norm),
            f"client_dp: clip_norm must be > 0, got {self.clip_norm!r}",
            "set clip_norm (C) to a positive number, e.g. the median update norm of a few trial rounds",
        )
        require(
            is_positive_number(self.noise_multiplier),
            f"client_dp: noise_multiplier must be > 0, got {self.noise_multiplier!r}",
            "set noise_multiplier (z) to a positive number, e.g. 1.0",
        )

    @property
    def sigma(self) -> float:
        return float(self.noise_multiplier * self.clip_norm)

    def _apply(self, update: Update, rng: np.random.Generator) -> DefenseOutput:
        clipped, _ = clip_update(update, self.clip_norm)
        out = map_floats(clipped, lambda _k, x: x + rng.normal(0.0, self.sigma, size=x.shape))
        return DefenseOutput(out, {"clip_norm": float(self.clip_norm), "sigma": self.sigma})


def client_dp(update: Update, clip_norm: float, noise_multiplier: float, *, seed: Seed = None) -> DefenseOutput:
    """Functional form of `ClientDP` (no accounting: use `PrivacyLedger` for that)."""
    return ClientDP(clip_norm=clip_norm, noise_multiplier=noise_multiplier).apply(update, seed=seed)
