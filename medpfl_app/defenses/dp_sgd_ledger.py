"""`SampleLevelLedger`: a site's DP-SGD steps kept in a file, so ε keeps adding up across jobs and restarts.

`site_dp_sgd_ledger` is the site's own one, anchored so that deleting it stops training instead of resetting ε.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medpfl_app.defenses.accountant import (
    LEDGER_FORMAT,
    LedgerAnchor,
    SiteLedgers,
    ledger_identity,
    locked,
    read_state,
    validated_history,
)
from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:  # dp_sgd imports this module (and torch/Opacus): the session type is for annotations only
    from medpfl_app.defenses.dp_sgd import DPSGDSession


class SampleLevelLedger:
    """A site's persistent record of its DP-SGD steps: ε keeps adding up across jobs and process restarts.

    Opacus' accountant lives in the training process; without this file a new job (or a restarted site) would
    start counting at ε = 0 although the same patients' images were trained on before. `restore` puts the recorded
    history in front of a new session's accountant; `record` writes the session's whole history back (atomic,
    fsynced, under a lock on the ledger file itself) — call it before the update leaves the site, so a crash can
    over-count but never under-count.

    Args:
        path: The ledger JSON file (same format as the client-level ledger, kept separately). Keep it with the
            site's workspace; never delete it. One `SampleLevelLedger` serves one session.
        anchor: The site's anchor of this ledger (`site_dp_sgd_ledger` passes it): with it, a missing,
            unreadable, replaced or rolled-back ledger stops training instead of restarting ε at 0. Without one, a
            deleted file silently starts again at 0: only for experiments outside a site.

    Notes:
        The guarantee spans only the steps recorded here: every DP-SGD run on this site's data must use the same
        file and the same accountant (a file kept with another mechanism is refused).
    """

    kind = "dp_sgd"

    def __init__(self, path: str | os.PathLike[str], *, anchor: LedgerAnchor | None = None) -> None:
        self.path = Path(path)
        self.anchor = anchor
        self._session: DPSGDSession | None = None  # the one session restored from (and recorded to) this file
        self._expected: list[tuple[float, float, int]] = []  # what the file should hold now

    def _checked_state(self) -> dict[str, Any] | None:
        state = read_state(self.path)
        if self.anchor is not None:
            self.anchor.check(state, self.path)
        return state

    def restore(self, session: DPSGDSession) -> int:
        """Prepend the recorded history to ``session``'s (fresh) accountant; returns the steps restored.

        Raises:
            MedPFLError: The session already took steps, or the ledger is unreadable, of another mechanism, or
                missing / replaced / rolled back while the site's anchor records it.
        """
        accountant = session.privacy_engine.accountant
        if getattr(accountant, "history", None):
            raise MedPFLError(
                "the DP-SGD session has already taken steps; restore its ledger before training",
                fix="call restore right after make_private / enable_dp_sgd",
            )
        state = self._checked_state()
        history = validated_history(state, session.config.accountant) if state is not None else []
        accountant.history = list(history)
        self._session, self._expected = session, list(history)
        return _steps(history)

    def record(self, session: DPSGDSession, context: dict[str, Any] | None = None) -> None:
        """Write ``session``'s whole history (the restored steps included) and one release entry.

        Raises:
            MedPFLError: The session was not restored from this ledger (writing would drop earlier steps), the
                file changed underneath (another process recorded steps since this session restored it), or the
                ledger went missing / was replaced (site anchor).
        """
        if session is not self._session:
            raise MedPFLError(
                f"this DP-SGD session was not restored from {self.path}; recording it would drop the "
                "steps already in the ledger",
                fix="call restore(session) before training",
            )
        history = [(float(z), float(q), int(n)) for z, q, n in session.privacy_engine.accountant.history]
        self._checked_state()  # refuse before locking, which would create the file
        with locked(self.path) as lock:
            state = self._checked_state()
            on_file = validated_history(state, session.config.accountant) if state is not None else []
            if on_file != self._expected:
                raise MedPFLError(
                    f"the DP-SGD ledger {self.path} changed while this job trained (another process recorded "
                    "steps); writing this job's history would lose them",
                    fix="run one DP-SGD job per site at a time, or give each its own ledger and count both budgets",
                )
            releases = list((state or {}).get("releases", []))
            releases.append(
                {
                    **(context or {}),
                    "steps_total": _steps(history),
                    "epsilon_total": session.epsilon(),
                    "delta": session.config.delta,
                    "time": time.time(),
                }
            )
            new_state = {
                "format": LEDGER_FORMAT,
                **ledger_identity(state, self.kind),
                "mechanism": session.config.accountant,
                "history": [list(e) for e in history],
                "releases": releases,
            }
            lock.commit(new_state)
            if self.anchor is not None:
                self.anchor.advance(new_state, self.path)
            self._expected = history


def site_dp_sgd_ledger(site: SiteLedgers) -> SampleLevelLedger:
    """The site's anchored DP-SGD ledger (where the site keeps it; a job cannot move it)."""
    return SampleLevelLedger(site.ledger_path("dp_sgd"), anchor=site.anchor("dp_sgd"))


def _steps(history: list[tuple[float, float, int]]) -> int:
    return sum(int(n) for _, _, n in history)
