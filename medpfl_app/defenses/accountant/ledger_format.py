"""What a MedPFL DP ledger file holds: its format names, where a site keeps it, and the checks of its contents."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from medpfl_app.defenses.update_arrays import is_positive_number
from medpfl_app.errors import MedPFLError

LEDGER_FORMAT = "medpfl-dp-ledger/1"
ANCHOR_FORMAT = "medpfl-dp-ledger-anchor/1"
RESET_FORMAT = "medpfl-dp-ledger-reset/1"
#: The site's ledgers, by kind, relative to the site workspace (the default places; see `SiteLedgers`).
LEDGER_KINDS: dict[str, Path] = {
    "client_dp": Path("medpfl") / "client_dp_ledger.json",
    "dp_sgd": Path("medpfl") / "dp_sgd_ledger.json",
}
#: Where a site keeps the anchors of its ledgers and the reset log: apart from the ledgers, beside the site's config.
GUARD_DIR = Path("local") / "medpfl_privacy"
RESET_LOG_NAME = "ledger_resets.jsonl"


def check_format(state: Any) -> None:
    """Refuse a state that is not a MedPFL ledger.

    Raises:
        MedPFLError: Not a JSON object of format `LEDGER_FORMAT`.
    """
    if not isinstance(state, dict) or state.get("format") != LEDGER_FORMAT:
        raise MedPFLError(
            f"not a MedPFL DP ledger (expected format {LEDGER_FORMAT!r})",
            fix="restore the site's ledger from a backup, or have the site admin run "
            "`medpfl privacy reset-ledger` (recorded); never point a site at another file",
        )


def validated_history(state: Any, mechanism: str) -> list[tuple[float, float, int]]:
    """The ``(noise_multiplier, sample_rate, steps)`` history of a ledger state kept with ``mechanism``.

    A ledger with no steps yet and no mechanism (a new ledger after a reset) suits every mechanism.

    Raises:
        MedPFLError: Not a MedPFL ledger, kept with another accounting mechanism, or a malformed history.
    """
    check_format(state)
    if state.get("mechanism") is None and state.get("history") == []:
        return []
    if state.get("mechanism") != mechanism:
        raise MedPFLError(
            f"the ledger was kept with mechanism {state.get('mechanism')!r}, this accountant uses "
            f"{mechanism!r}; the two cannot be combined",
            fix="keep using the original accountant, or start a new ledger file and count both budgets",
        )
    history = state.get("history")
    valid = isinstance(history, list) and all(
        isinstance(e, list | tuple)
        and len(e) == 3
        and is_positive_number(e[0])
        and 0 < float(e[1]) <= 1
        and isinstance(e[2], int)
        and e[2] > 0
        for e in history
    )
    if not valid:
        raise MedPFLError(
            "the ledger history is malformed",
            fix="restore the ledger file from a backup, or have the site admin run "
            "`medpfl privacy reset-ledger` (recorded)",
        )
    return [(float(z), float(q), int(n)) for z, q, n in history]


def steps_of(state: dict[str, Any] | None) -> int:
    """Mechanism steps recorded in a ledger state (releases for client-level DP, local steps for DP-SGD)."""
    history = (state or {}).get("history") or []
    try:
        return sum(int(entry[2]) for entry in history)
    except (TypeError, ValueError, IndexError):
        return 0


def ledger_identity(state: dict[str, Any] | None, kind: str | None) -> dict[str, Any]:
    """The identity fields of a ledger (kind, id, creation time, resets), new ones for a new or legacy ledger."""
    state = state or {}
    if isinstance(state.get("ledger_id"), str) and state["ledger_id"]:
        return {
            "kind": state.get("kind", kind),
            "ledger_id": state["ledger_id"],
            "created": state.get("created"),
            "resets": list(state.get("resets") or []),
        }
    return {
        "kind": kind,
        "ledger_id": uuid.uuid4().hex,
        "created": time.time(),
        "resets": list(state.get("resets") or []),
    }
