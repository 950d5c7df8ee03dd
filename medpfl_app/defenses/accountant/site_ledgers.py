"""`SiteLedgers`: where one site keeps its ε ledgers, their anchors and the reset log, and how it resets a ledger.

A site keeps one ledger per kind (``client_dp``, ``dp_sgd``) where the site decides, by default
``<site workspace>/medpfl/<kind>_ledger.json``; its anchor and the append-only reset log live apart from it in
``<site workspace>/local/medpfl_privacy/``. Only `SiteLedgers.reset` (``medpfl privacy reset-ledger``) starts a new
ledger.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from medpfl_app.defenses.accountant.anchor import LedgerAnchor
from medpfl_app.defenses.accountant.ledger_file import append_line_durable, locked
from medpfl_app.defenses.accountant.ledger_format import GUARD_DIR, LEDGER_KINDS, RESET_LOG_NAME
from medpfl_app.defenses.accountant.ledger_reset import (
    LedgerReset,
    archive_old_ledger,
    fresh_ledger_state,
    read_old_ledger,
    reset_record,
)
from medpfl_app.defenses.accountant.privacy_ledger import PrivacyLedger
from medpfl_app.errors import MedPFLError


class SiteLedgers:
    """Where one site keeps its ε ledgers, their anchors and the reset log: the site's decision, never a job's.

    Args:
        workspace: The site's NVFlare workspace (the folder holding ``startup/`` and ``local/``).

    Notes:
        Ledgers default to ``<workspace>/medpfl/<kind>_ledger.json``. A site admin may place the client-level
        ledger elsewhere with ``ledger_path`` in a privacy.json scope (a site-installed filter); the first charge
        anchors it, and every later component of the site, job-level filters included, charges the anchored file.
        Anchors and the reset log live in ``<workspace>/local/medpfl_privacy/``. Deleting the whole site workspace
        (ledger and anchor together) is a new site: that cannot be told apart from a fresh install.
    """

    def __init__(self, workspace: str | os.PathLike[str]) -> None:
        self.workspace = Path(workspace).expanduser().resolve()

    @property
    def guard_dir(self) -> Path:
        return self.workspace / GUARD_DIR

    @property
    def reset_log(self) -> Path:
        return self.guard_dir / RESET_LOG_NAME

    def anchor(self, kind: str) -> LedgerAnchor:
        return LedgerAnchor(self.guard_dir / f"{_kind(kind)}.anchor.json", kind=kind)

    def ledger_path(self, kind: str, configured: str | os.PathLike[str] | None = None) -> Path:
        """The ledger file of ``kind``: ``configured`` (a site admin's path, relative to the workspace) if given,
        else where the site's anchor says it is, else the default place."""
        if configured is not None:
            path = Path(configured).expanduser()
            return path if path.is_absolute() else self.workspace / path
        record = self.anchor(kind).read()
        return Path(record["path"]) if record is not None else self.workspace / LEDGER_KINDS[_kind(kind)]

    def client_dp_ledger(
        self, *, delta: float, epsilon_max: float | None = None, configured: str | os.PathLike[str] | None = None
    ) -> PrivacyLedger:
        """The site's anchored client-level ledger."""
        return PrivacyLedger(
            self.ledger_path("client_dp", configured),
            delta=delta,
            epsilon_max=epsilon_max,
            anchor=self.anchor("client_dp"),
        )

    def resets(self) -> list[dict[str, Any]]:
        """Every reset recorded in the site's reset log, oldest first.

        Raises:
            MedPFLError: A line of the log is not a JSON object.
        """
        return self._logged_resets(strict=True)

    def _logged_resets(self, *, strict: bool = False) -> list[dict[str, Any]]:
        try:
            lines = self.reset_log.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = "unreadable"
            if isinstance(record, dict):
                records.append(record)
            elif record is not None and strict:
                raise MedPFLError(
                    f"line {number} of the reset log {self.reset_log} is not a JSON record",
                    fix="restore the reset log from a backup; it is append-only",
                )
        return records

    def reset(self, kind: str, *, reason: str, operator: str | None = None) -> LedgerReset:
        """Start a new, empty ledger of ``kind``: the site admin's explicit, recorded ε reset.

        Under the ledger's lock: the old ledger's bytes are archived beside it, the reset is appended (fsynced)
        to ``local/medpfl_privacy/ledger_resets.jsonl``, then a new ledger whose ``resets`` list carries this
        record is written and anchored. Works on a missing or corrupt ledger (what the error tells a site to run).

        Raises:
            MedPFLError: Empty reason, unknown kind, or not a site workspace.
        """
        kind = _kind(kind)
        self._check_reset_request(reason)
        anchor = self.anchor(kind)
        try:
            record = anchor.read()
        except MedPFLError:
            record = None  # an unreadable anchor is replaced below
        path = Path(record["path"]) if record is not None else self.workspace / LEDGER_KINDS[kind]
        with locked(path) as lock:
            raw, old = read_old_ledger(path)
            reset_id = uuid.uuid4().hex
            archived = archive_old_ledger(path, raw, reset_id)
            reset = reset_record(
                reset_id=reset_id,
                kind=kind,
                path=path,
                reason=reason,
                operator=operator,
                raw=raw,
                old=old,
                anchored=record,
                archived=archived,
            )
            earlier = (old or {}).get("resets")
            if not isinstance(earlier, list):  # the old ledger is gone: its lineage is in the reset log
                earlier = [r for r in self._logged_resets() if r.get("kind") == kind]
            append_line_durable(self.reset_log, json.dumps(reset.to_json(), sort_keys=True))
            state = fresh_ledger_state(kind, reset, earlier)
            lock.commit(state)
            anchor.advance(state, path, replace=True)
        return reset

    def _check_reset_request(self, reason: object) -> None:
        if not isinstance(reason, str) or not reason.strip():
            raise MedPFLError("a ledger reset needs a reason", fix="pass --reason TEXT (it is kept in the reset log)")
        if not (self.workspace / "startup").is_dir():
            raise MedPFLError(
                f"{self.workspace} is not an NVFlare site workspace (no startup/ folder)",
                fix="pass the site's workspace, e.g. <poc workspace>/example_project/prod_00/site-1",
            )


def _kind(kind: str) -> str:
    if kind not in LEDGER_KINDS:
        raise MedPFLError(f"unknown ledger kind {kind!r}", fix=f"use one of {sorted(LEDGER_KINDS)}")
    return kind
