"""`PrivacyLedger`: a site's persistent client-level DP ledger with an ε budget, charged before each release."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from medpfl_app.defenses.accountant.anchor import LedgerAnchor
from medpfl_app.defenses.accountant.ledger_file import locked, read_state
from medpfl_app.defenses.accountant.ledger_format import LEDGER_FORMAT, ledger_identity
from medpfl_app.defenses.accountant.rdp import DPCost, SiteAccountant, check_delta, epsilon_per_release
from medpfl_app.defenses.update_arrays import is_positive_number, require
from medpfl_app.errors import MedPFLError


class BudgetExceeded(MedPFLError):
    """The next release would push the site's cumulative ε above its budget: the update is not released."""


class PrivacyLedger:
    """A site's persistent client-level DP ledger with an optional ε budget.

    `charge` is write-ahead: the cost is saved before the update may leave the site, so a crash after charging
    over-counts (safe) but never under-counts. An exclusive lock on the ledger file itself serialises concurrent
    jobs of one site.

    Args:
        path: The ledger JSON file (created on first charge). Keep it with the site's workspace; never delete it.
        delta: δ for which ε is reported and budgeted, in (0, 1).
        epsilon_max: Cumulative ε budget for this δ; None for no budget (ε is still reported).
        anchor: The site's anchor of this ledger (`SiteLedgers.client_dp_ledger` passes it). Without one, a deleted
            ledger file silently starts again at ε = 0: only for experiments outside a site.

    Notes:
        The budget holds only if every release of this site's data is charged to the same ledger file.
    """

    kind = "client_dp"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        delta: float,
        epsilon_max: float | None = None,
        anchor: LedgerAnchor | None = None,
    ) -> None:
        self.path = Path(path)
        self.delta = check_delta(delta)
        if epsilon_max is not None:
            require(
                is_positive_number(epsilon_max),
                f"epsilon_max must be > 0, got {epsilon_max!r}",
                "set epsilon_max to a positive budget, or leave it unset for no budget",
            )
        self.epsilon_max = None if epsilon_max is None else float(epsilon_max)
        self.anchor = anchor

    def _checked_state(self) -> dict[str, Any] | None:
        state = read_state(self.path)
        if self.anchor is not None:
            self.anchor.check(state, self.path)
        return state

    def load(self) -> SiteAccountant:
        """The accountant as persisted (empty for a new site; refused if the anchor says ε would restart)."""
        accountant = SiteAccountant()
        state = self._checked_state()
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
            MedPFLError: The ledger is unreadable, or missing / replaced / rolled back while the site's anchor
                records it (nothing is charged, the update is not released).
        """
        self._checked_state()  # refuse before locking, which would create the file
        with locked(self.path) as lock:
            state = self._checked_state()
            accountant = SiteAccountant()
            if state is not None:
                accountant.load_state_dict(state)
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
            accountant.releases.append(
                {
                    **(context or {}),
                    "noise_multiplier": float(noise_multiplier),
                    "epsilon_round": epsilon_round,
                    "epsilon_total": epsilon_total,
                    "delta": self.delta,
                    "time": time.time(),
                }
            )
            new_state = {"format": LEDGER_FORMAT, **ledger_identity(state, self.kind), **accountant.state_dict()}
            lock.commit(new_state)
            if self.anchor is not None:
                self.anchor.advance(new_state, self.path)
        return DPCost(
            epsilon_round=epsilon_round,
            epsilon_total=epsilon_total,
            delta=self.delta,
            releases=len(accountant),
            ledger_resets=len(new_state["resets"]),
        )
