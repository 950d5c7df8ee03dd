"""`LedgerAnchor`: the site's second record of each ledger (path, id, steps), kept apart from the ledger itself.

Once a site has an anchor, a missing, unreadable, replaced or rolled-back ledger stops training with a clear error
instead of restarting ε at 0.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from medpfl_app.defenses.accountant.ledger_file import locked
from medpfl_app.defenses.accountant.ledger_format import ANCHOR_FORMAT, check_format, steps_of
from medpfl_app.errors import MedPFLError


class LedgerAnchor:
    """The site's record, kept apart from a ledger, that the ledger exists: its path, id and steps so far.

    Once an anchor exists, the ledger it names must be there, be readable, carry the same id and hold at least the
    recorded steps; otherwise `check` stops training with an error instead of letting ε restart at 0. A missing
    anchor with no ledger is a fresh site; a missing anchor beside an existing ledger adopts that ledger.

    Args:
        path: The anchor JSON file (``<site workspace>/local/medpfl_privacy/<kind>.anchor.json``).
        kind: ``client_dp`` or ``dp_sgd``.
    """

    def __init__(self, path: str | os.PathLike[str], *, kind: str) -> None:
        self.path = Path(path)
        self.kind = kind

    def read(self) -> dict[str, Any] | None:
        """The anchor record, or None when the site has none yet.

        Raises:
            MedPFLError: The anchor exists but is unreadable.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._unreadable(error) from None
        if not text.strip():
            return None
        try:
            record = json.loads(text)
        except ValueError as error:
            raise self._unreadable(error) from None
        if not (
            isinstance(record, dict)
            and record.get("format") == ANCHOR_FORMAT
            and record.get("kind") == self.kind
            and isinstance(record.get("path"), str)
            and isinstance(record.get("ledger_id"), str)
            and isinstance(record.get("steps"), int)
        ):
            raise self._unreadable(ValueError(f"not a {ANCHOR_FORMAT} record of a {self.kind} ledger"))
        return record

    def _unreadable(self, error: Exception) -> MedPFLError:
        return MedPFLError(
            f"cannot read the site's {self.kind} ledger anchor {self.path}: {error}",
            fix="restore it from a backup, or have the site admin run `medpfl privacy reset-ledger` (recorded)",
        )

    def check(self, state: dict[str, Any] | None, ledger_path: Path) -> None:
        """Refuse a ledger state that would restart or lower the site's recorded ε.

        Raises:
            MedPFLError: The ledger is missing, another ledger than anchored, kept elsewhere, of another kind, or
                holds fewer steps than the site recorded.
        """
        if state is not None:
            check_format(state)
        record = self.check_location(ledger_path)
        kind = (state or {}).get("kind")
        if kind is not None and kind != self.kind:
            raise MedPFLError(
                f"{ledger_path} is a {kind} ledger, not the site's {self.kind} ledger",
                fix="restore the site's own ledger file; ledgers of different kinds are not exchangeable",
            )
        if record is None:
            return
        fix = (
            "restore the ledger file from a backup (it must hold at least the recorded steps), or have the site "
            f"admin run `medpfl privacy reset-ledger --kind {self.kind} --reason TEXT` (recorded)"
        )
        if state is None:
            raise MedPFLError(
                f"the site's {self.kind} ledger {ledger_path} is missing (or empty), but the site recorded "
                f"{record['steps']} DP steps in it (anchor {self.path}); training stops rather than restart ε at 0",
                fix=fix,
            )
        if state.get("ledger_id") != record["ledger_id"]:
            raise MedPFLError(
                f"{ledger_path} is not the ledger the site recorded (id {state.get('ledger_id')!r}, anchored "
                f"{record['ledger_id']!r}): it was replaced; training stops rather than restart ε",
                fix=fix,
            )
        if steps_of(state) < record["steps"]:
            raise MedPFLError(
                f"the site's {self.kind} ledger {ledger_path} holds {steps_of(state)} DP steps, fewer than the "
                f"{record['steps']} recorded (anchor {self.path}): it was rolled back; training stops rather than "
                "under-count ε",
                fix=fix,
            )

    def check_location(self, ledger_path: Path) -> dict[str, Any] | None:
        """The anchor record (None for none yet), if it names ``ledger_path``.

        Raises:
            MedPFLError: The site keeps this kind of ledger in another file, or the anchor is unreadable.
        """
        record = self.read()
        if record is not None and not _same_file(Path(record["path"]), ledger_path):
            raise MedPFLError(
                f"the site keeps its {self.kind} ledger at {record['path']} (anchor {self.path}), but this component "
                f"would charge {ledger_path}; two ledgers would split the site's budget",
                fix="leave ledger_path unset, or set the same ledger_path in every privacy.json scope of the site",
            )
        return record

    def advance(self, state: dict[str, Any], ledger_path: Path, *, replace: bool = False) -> None:
        """Record ``state`` (after it was committed to the ledger); the steps of one ledger id never decrease.

        Args:
            state: The ledger state just written.
            ledger_path: Where it was written.
            replace: Anchor a new ledger id even if another is anchored (only an explicit reset does this).
        """
        with locked(self.path) as lock:
            try:
                current = self.read()
            except MedPFLError:
                if not replace:
                    raise
                current = None
            if current is not None and current["ledger_id"] != state["ledger_id"] and not replace:
                raise MedPFLError(
                    f"the anchor {self.path} names ledger {current['ledger_id']!r}, not {state['ledger_id']!r}",
                    fix="have the site admin run `medpfl privacy reset-ledger` (recorded)",
                )
            steps = steps_of(state)
            if current is not None and current["ledger_id"] == state["ledger_id"]:
                steps = max(steps, int(current["steps"]))  # a concurrent writer may have anchored more already
            lock.commit(
                {
                    "format": ANCHOR_FORMAT,
                    "kind": self.kind,
                    "path": str(ledger_path.resolve()),
                    "ledger_id": state["ledger_id"],
                    "created": state.get("created"),
                    "steps": steps,
                    "resets": len(state.get("resets") or []),
                    "updated": time.time(),
                }
            )


def _same_file(anchored: Path, path: Path) -> bool:
    return anchored.expanduser().resolve() == path.expanduser().resolve()
