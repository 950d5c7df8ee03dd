"""Client-level DP accounting: a site ledger over Opacus' RDP accountant, persisted as JSON, with a budget.

Each released update is one step of the Gaussian mechanism with noise multiplier z and sample rate 1 (a site that
sends its update every round is "sampled" with probability 1). ε is Opacus' RDP → (ε, δ) conversion over the whole
history, so rounds with different z compose correctly.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medpfl_app.defenses._update import is_positive_number, require
from medpfl_app.atomic_io import write_json_atomic
from medpfl_app.errors import MedPFLError

LEDGER_FORMAT = "medpfl-dp-ledger/1"
SITE_SAMPLE_RATE = 1.0


def _rdp_accountant() -> Any:
    # Imported on use: opacus pulls in torch (seconds to import), which NumPy-only filter processes need not pay.
    from opacus.accountants import RDPAccountant

    return RDPAccountant()


class BudgetExceeded(MedPFLError):
    """The next release would push the site's cumulative ε above its budget: the update is not released."""


@dataclasses.dataclass(frozen=True)
class DPCost:
    """The privacy cost of one release and of everything the site released so far, for one δ."""

    epsilon_round: float
    epsilon_total: float
    delta: float
    releases: int
    mechanism: str = "rdp"

    def as_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_delta(delta: object) -> float:
    ok = isinstance(delta, int | float) and not isinstance(delta, bool)
    require(ok and 0 < delta < 1, f"delta must be in (0, 1), got {delta!r}",  # type: ignore[operator]
            "set delta well below 1/number-of-sites (e.g. 1e-5)")
    return float(delta)  # type: ignore[arg-type]


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
        require(is_positive_number(noise_multiplier), f"noise_multiplier must be > 0, got {noise_multiplier!r}",
                "set a positive noise_multiplier")
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


def validated_history(state: Any, mechanism: str) -> list[tuple[float, float, int]]:
    """The ``(noise_multiplier, sample_rate, steps)`` history of a ledger state kept with ``mechanism``.

    Raises:
        MedPFLError: Not a MedPFL ledger, kept with another accounting mechanism, or a malformed history.
    """
    if not isinstance(state, dict) or state.get("format") != LEDGER_FORMAT:
        raise MedPFLError(f"not a MedPFL DP ledger (expected format {LEDGER_FORMAT!r})",
                          fix="point the ledger path at a ledger written by MedPFL, or at a new file")
    if state.get("mechanism") != mechanism:
        raise MedPFLError(
            f"the ledger was kept with mechanism {state.get('mechanism')!r}, this accountant uses "
            f"{mechanism!r}; the two cannot be combined",
            fix="keep using the original accountant, or start a new ledger file and count both budgets",
        )
    history = state.get("history")
    valid = isinstance(history, list) and all(
        isinstance(e, list | tuple) and len(e) == 3 and is_positive_number(e[0]) and 0 < float(e[1]) <= 1
        and isinstance(e[2], int) and e[2] > 0 for e in history)
    if not valid:
        raise MedPFLError("the ledger history is malformed", fix="restore the ledger file from a backup")
    return [(float(z), float(q), int(n)) for z, q, n in history]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside ``path`` (``<name>.lock``): serialises the jobs of one site that share a ledger."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a", encoding="utf-8") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def read_state(path: Path) -> dict[str, Any] | None:
    """The JSON state of a ledger file, or None when it does not exist yet."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MedPFLError(
            f"cannot read the DP ledger {path}: {error}",
            fix="restore the ledger from a backup; deleting it resets the budget and voids the guarantee",
        ) from None


class PrivacyLedger:
    """A site's persistent client-level DP ledger with an optional ε budget.

    `charge` is write-ahead: the cost is saved before the update may leave the site, so a crash after charging
    over-counts (safe) but never under-counts. An exclusive file lock serialises concurrent jobs of one site.

    Args:
        path: The ledger JSON file (created on first charge). Keep it with the site's workspace; never delete it.
        delta: δ for which ε is reported and budgeted, in (0, 1).
        epsilon_max: Cumulative ε budget for this δ; None for no budget (ε is still reported).

    Notes:
        The budget holds only if every release of this site's data is charged to the same ledger file.
    """

    def __init__(self, path: str | os.PathLike[str], *, delta: float, epsilon_max: float | None = None) -> None:
        self.path = Path(path)
        self.delta = check_delta(delta)
        if epsilon_max is not None:
            require(is_positive_number(epsilon_max), f"epsilon_max must be > 0, got {epsilon_max!r}",
                    "set epsilon_max to a positive budget, or leave it unset for no budget")
        self.epsilon_max = None if epsilon_max is None else float(epsilon_max)

    def load(self) -> SiteAccountant:
        """The accountant as persisted (empty if the file does not exist yet)."""
        accountant = SiteAccountant()
        state = read_state(self.path)
        if state is not None:
            accountant.load_state_dict(state)
        return accountant

    def spent(self) -> float:
        """Cumulative ε (for this ledger's δ) of everything charged so far."""
        return self.load().get_epsilon(self.delta)

    def charge(self, *, noise_multiplier: float, context: dict[str, Any] | None = None) -> DPCost:
        """Account one release at ``noise_multiplier``, or refuse it if it would exceed the budget.

        Args:
            noise_multiplier: z of the Gaussian mechanism applied to the clipped update.
            context: Plain JSON values stored with the release (round, job id, ...).

        Raises:
            BudgetExceeded: cumulative ε after this release would exceed ``epsilon_max``; nothing is charged.
        """
        with locked(self.path):
            accountant = self.load()
            epsilon_total = accountant.epsilon_after_step(noise_multiplier=noise_multiplier, delta=self.delta)
            if self.epsilon_max is not None and epsilon_total > self.epsilon_max:
                raise BudgetExceeded(
                    f"privacy budget exhausted: releasing this update would raise cumulative ε to "
                    f"{epsilon_total:.4g} > epsilon_max {self.epsilon_max:.4g} (δ={self.delta:g}, "
                    f"{len(accountant)} releases so far, ledger {self.path}); the update is not released",
                    fix="stop training at this site, or have the data owner approve a larger epsilon_max / a larger "
                    "noise_multiplier; never delete the ledger to reset it",
                )
            epsilon_round = epsilon_per_release(noise_multiplier, self.delta)
            accountant.step(noise_multiplier=noise_multiplier)
            accountant.releases.append({
                **(context or {}),
                "noise_multiplier": float(noise_multiplier),
                "epsilon_round": epsilon_round,
                "epsilon_total": epsilon_total,
                "delta": self.delta,
                "time": time.time(),
            })
            write_json_atomic(self.path, accountant.state_dict(), durable=True)
        return DPCost(epsilon_round=epsilon_round, epsilon_total=epsilon_total, delta=self.delta,
                      releases=len(accountant))
