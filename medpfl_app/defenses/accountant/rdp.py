"""ε of the Gaussian mechanism by Opacus' RDP accountant, and `SiteAccountant`, an in-memory ledger over it.

Each released update is one step of the Gaussian mechanism with noise multiplier z and sample rate 1 (a site that
sends its update every round is "sampled" with probability 1). ε is Opacus' RDP → (ε, δ) conversion over the whole
history, so rounds with different z compose correctly.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from medpfl_app.defenses.accountant.ledger_format import LEDGER_FORMAT, validated_history
from medpfl_app.defenses.update_arrays import is_positive_number, require

SITE_SAMPLE_RATE = 1.0


def _rdp_accountant() -> Any:
    # Imported on use: opacus pulls in torch (seconds to import), which NumPy-only filter processes need not pay.
    from opacus.accountants import RDPAccountant

    return RDPAccountant()


@dataclasses.dataclass(frozen=True)
class DPCost:
    """The privacy cost of one release and of everything the site released so far, for one δ."""

    epsilon_round: float
    epsilon_total: float
    delta: float
    releases: int
    mechanism: str = "rdp"
    #: Explicit resets (``medpfl privacy reset-ledger``) in this ledger's lineage: ε counts since the last one.
    ledger_resets: int = 0

    def as_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_delta(delta: object) -> float:
    ok = isinstance(delta, int | float) and not isinstance(delta, bool) and 0 < delta < 1
    require(ok, f"delta must be in (0, 1), got {delta!r}", "set delta well below 1/number-of-sites (e.g. 1e-5)")
    return float(delta)  # type: ignore[arg-type]  # a number here: `require` raised otherwise


def epsilon_of(history: list[tuple[float, float, int]], delta: float) -> float:
    """ε for δ of a history of (noise_multiplier, sample_rate, steps), computed by Opacus' RDP accountant."""
    accountant = _rdp_accountant()
    accountant.history = [tuple(entry) for entry in history]
    return float(accountant.get_epsilon(delta=delta)) if history else 0.0


def epsilon_per_release(noise_multiplier: float, delta: float) -> float:
    """ε of a single release at noise multiplier z (sample rate 1), in isolation."""
    return epsilon_of([(float(noise_multiplier), SITE_SAMPLE_RATE, 1)], delta)


class SiteAccountant:
    """In-memory RDP ledger in Opacus' `IAccountant` style (``step`` / ``get_epsilon`` / ``state_dict``).

    The state also lists each release (round, job, ε) so a site can show what it spent.
    """

    def __init__(self) -> None:
        self._rdp = _rdp_accountant()
        self.releases: list[dict[str, Any]] = []

    @staticmethod
    def mechanism() -> str:
        return "rdp"  # opacus.accountants.RDPAccountant.mechanism()

    @property
    def history(self) -> list[tuple[float, float, int]]:
        return list(self._rdp.history)

    def step(self, *, noise_multiplier: float, sample_rate: float = SITE_SAMPLE_RATE) -> None:
        require(
            is_positive_number(noise_multiplier),
            f"noise_multiplier must be > 0, got {noise_multiplier!r}",
            "set a positive noise_multiplier",
        )
        self._rdp.step(noise_multiplier=float(noise_multiplier), sample_rate=float(sample_rate))

    def get_epsilon(self, delta: float) -> float:
        return epsilon_of(self.history, check_delta(delta))

    def epsilon_after_step(self, *, noise_multiplier: float, delta: float) -> float:
        """Cumulative ε if one more release at ``noise_multiplier`` happened; the state is not changed."""
        trial = _rdp_accountant()
        trial.history = copy.deepcopy(self._rdp.history)
        trial.step(noise_multiplier=float(noise_multiplier), sample_rate=SITE_SAMPLE_RATE)
        return epsilon_of(trial.history, check_delta(delta))

    def __len__(self) -> int:
        return sum(int(steps) for _, _, steps in self.history)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": LEDGER_FORMAT,
            "mechanism": self.mechanism(),
            "history": [list(entry) for entry in self.history],
            "releases": copy.deepcopy(self.releases),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a state; refuse one from another format or accounting mechanism (ε would be meaningless)."""
        self._rdp.history = validated_history(state, self.mechanism())
        self.releases = list(state.get("releases", []))
