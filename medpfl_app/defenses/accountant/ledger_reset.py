"""The record of an explicit ledger reset and the pieces `SiteLedgers.reset` builds it from.

A reset keeps what it replaces: the old ledger's bytes are archived beside it, and the `LedgerReset` record (who,
when, why, what the old ledger held) is appended to the site's reset log and written into the new ledger.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from medpfl_app.defenses.accountant.ledger_file import write_new_file
from medpfl_app.defenses.accountant.ledger_format import LEDGER_FORMAT, RESET_FORMAT, steps_of


@dataclasses.dataclass(frozen=True)
class LedgerReset:
    """One explicit reset of a site ledger, as appended to the reset log and written into the new ledger."""

    reset_id: str
    time: float
    kind: str
    ledger_path: str
    reason: str
    operator: str
    host: str
    previous_ledger_id: str | None
    previous_steps: int | None  # on file; None if the file was missing or unreadable
    anchored_steps: int | None  # what the anchor recorded; None without an anchor
    previous_epsilon_total: float | None  # the last release's ε, as recorded
    previous_delta: float | None
    archived_to: str | None  # the old ledger file's bytes, kept
    previous_sha256: str | None
    format: str = RESET_FORMAT

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_old_ledger(path: Path) -> tuple[bytes, dict[str, Any] | None]:
    """The bytes of the ledger being reset and its JSON object, None when it is empty or not a JSON object."""
    raw = path.read_bytes()
    try:
        old = json.loads(raw) if raw.strip() else None
        old = old if isinstance(old, dict) else None
    except ValueError:
        old = None
    return raw, old


def archive_old_ledger(path: Path, raw: bytes, reset_id: str) -> Path | None:
    """Keep the old ledger's bytes beside it (fsynced, never overwriting); None when there is nothing to keep."""
    if not raw.strip():
        return None
    archived = path.with_name(f"{path.name}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{reset_id[:8]}.reset")
    write_new_file(archived, raw)
    return archived


def reset_record(
    *,
    reset_id: str,
    kind: str,
    path: Path,
    reason: str,
    operator: str | None,
    raw: bytes,
    old: dict[str, Any] | None,
    anchored: dict[str, Any] | None,
    archived: Path | None,
) -> LedgerReset:
    """The `LedgerReset` of replacing ``old`` (bytes ``raw``, anchor record ``anchored``) at ``path``."""
    last = ((old or {}).get("releases") or [{}])[-1]
    last = last if isinstance(last, dict) else {}
    return LedgerReset(
        reset_id=reset_id,
        time=time.time(),
        kind=kind,
        ledger_path=str(path),
        reason=reason.strip(),
        operator=operator or _operator(),
        host=socket.gethostname(),
        previous_ledger_id=(old or {}).get("ledger_id"),
        previous_steps=steps_of(old) if old is not None else None,
        anchored_steps=None if anchored is None else int(anchored["steps"]),
        previous_epsilon_total=_number(last.get("epsilon_total")),
        previous_delta=_number(last.get("delta")),
        archived_to=None if archived is None else str(archived),
        previous_sha256=hashlib.sha256(raw).hexdigest() if raw.strip() else None,
    )


def fresh_ledger_state(kind: str, reset: LedgerReset, earlier: list[Any]) -> dict[str, Any]:
    """A new, empty ledger whose ``resets`` list carries the lineage: the ``earlier`` resets, then ``reset``."""
    return {
        "format": LEDGER_FORMAT,
        "kind": kind,
        "ledger_id": uuid.uuid4().hex,
        "created": reset.time,
        "resets": [*earlier, reset.to_json()],
        "mechanism": "rdp" if kind == "client_dp" else None,
        "history": [],
        "releases": [],
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (e.g. a container without passwd entry)
        return f"uid {os.getuid()}"
