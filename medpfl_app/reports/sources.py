"""What a report is rendered from: the audit ledger (schemas 1 and 2) and the server's arrivals file.

The server writes both into ``<run dir>/medpfl/``: ``audit_ledger.jsonl`` (one record per audited, not audited or
not auditable update, `medpfl_app.audit.ledger`) and ``received_updates.jsonl`` (one line per update the server
received, written by `medpfl_app.nvflare.filters.received.ReceivedUpdateRecorder` before the audit sees it). Comparing the
two is what tells a complete audit from one whose server or worker stopped: an update received without an audit
record is a gap, not a zero.

Both files are append-only JSONL that a crash can leave with a truncated last line; every reader here skips such
lines and reports them by number, never raising on content. No NVFlare import: the recorder imports the line
format from here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.contracts.record import READABLE_SCHEMAS, AuditRecord
from medpfl_app.errors import MedPFLError

#: Ledger record schemas this report reads: ``/1`` (risk high|medium|low|unknown) and ``/2`` (`RiskLevel` with a
#: verdict, an attack ladder and metric settings); those of the record contract
#: (`medpfl_app.contracts.record.AuditRecord`). Every line is read by `AuditRecord.from_json`: a line it refuses is
#: listed as unreadable with its reason; the numbers of a record it reads are range-checked by the report
#: (`medpfl_app.reports.records`): a value out of range is shown as such, never fatal.
LEDGER_SCHEMAS: tuple[str, ...] = READABLE_SCHEMAS
#: The server's arrivals file, beside the ledger in ``<run dir>/medpfl/``.
ARRIVALS_FOLDER = "medpfl"
ARRIVALS_FILE = "received_updates.jsonl"
#: The return code of a task result that carries an update (NVFlare's ``ReturnCode.OK``).
OK_RETURN_CODE = "OK"


def arrival_line(record: Mapping[str, Any]) -> str:
    """One line of the arrivals file (the recorder writes exactly this; ``site`` and ``round`` identify it)."""
    return json.dumps(dict(record), default=str, sort_keys=True) + "\n"


def append_arrival(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one `arrival_line` to the arrivals file at ``path`` (flushed on close; the caller serialises writers)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # owner-only, like the ledger beside it
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write(arrival_line(record))


def unreadable_text(lines: Sequence[int], file: str = "audit_ledger.jsonl") -> str:
    """How many lines of ``file`` could not be read, and which: ``"1 line of audit_ledger.jsonl could not be read
    and was skipped (line 10)"``, or ``"every line of audit_ledger.jsonl was read"``."""
    count = len(lines)
    if not count:
        return f"every line of {file} was read"
    numbers = ", ".join(map(str, lines))
    return (
        f"{count} line{'s' if count != 1 else ''} of {file} could not be read and "
        f"{'were' if count != 1 else 'was'} skipped (line{'s' if count != 1 else ''} {numbers})"
    )


@dataclass(frozen=True)
class Unreadable:
    """A line a reader had to skip, and why."""

    line: int
    why: str


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger line the record contract read: the typed record, and the object as written (which the round JSON
    echoes verbatim; the report reads every field from ``record``)."""

    line: int
    record: AuditRecord
    written: Mapping[str, Any]


@dataclass(frozen=True)
class LedgerRead:
    """The ledger's records (both schemas, read by `AuditRecord.from_json`) and the lines that could not be read."""

    path: Path
    entries: tuple[LedgerEntry, ...]
    unreadable: tuple[Unreadable, ...]

    @property
    def records(self) -> tuple[AuditRecord, ...]:
        """The typed records, in ledger order."""
        return tuple(entry.record for entry in self.entries)

    @property
    def skipped_lines(self) -> tuple[int, ...]:
        """The numbers of the unreadable lines."""
        return tuple(u.line for u in self.unreadable)


def _json_lines(path: Path) -> list[tuple[int, Any | Unreadable]]:
    found: list[tuple[int, Any | Unreadable]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.append((number, json.loads(line)))
        except json.JSONDecodeError:
            found.append((number, Unreadable(number, "not JSON (a truncated or corrupt line)")))
    return found


def read_ledger_records(path: str | os.PathLike[str]) -> LedgerRead:
    """Every record `AuditRecord.from_json` reads (either schema); every other line is reported as unreadable, with
    the reader's reason, never fatal.

    Raises:
        MedPFLError: ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise MedPFLError(f"no audit ledger at {path}", fix="pass the downloaded job folder that holds the ledger")
    entries: list[LedgerEntry] = []
    unreadable: list[Unreadable] = []
    for number, value in _json_lines(path):
        if isinstance(value, Unreadable):
            unreadable.append(value)
            continue
        try:
            entries.append(LedgerEntry(number, AuditRecord.from_json(value), value))
        except MedPFLError as error:
            unreadable.append(Unreadable(number, f"not a valid audit record ({error.problem})"))
    return LedgerRead(path=path, entries=tuple(entries), unreadable=tuple(unreadable))


@dataclass(frozen=True)
class Arrival:
    """One update the server received (a line of the arrivals file)."""

    line: int
    site: str
    round: int
    data_kind: str | None
    return_code: str | None

    @property
    def failed(self) -> bool:
        """The site's task failed: the result carried no update (its return code is not OK)."""
        return self.return_code is not None and self.return_code != OK_RETURN_CODE


@dataclass(frozen=True)
class ArrivalsRead:
    """The arrivals with a usable site and round, and the lines that could not be placed or read."""

    path: Path
    arrivals: tuple[Arrival, ...]
    unreadable: tuple[Unreadable, ...]


def read_arrivals(path: str | os.PathLike[str]) -> ArrivalsRead:
    """Read the arrivals file; a truncated line or one without site or round is reported, never fatal.

    Raises:
        MedPFLError: ``path`` is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise MedPFLError(f"no arrivals file at {path}", fix=f"pass the folder that holds {ARRIVALS_FILE}")
    arrivals: list[Arrival] = []
    unreadable: list[Unreadable] = []
    for number, value in _json_lines(path):
        if isinstance(value, Unreadable):
            unreadable.append(value)
            continue
        if not isinstance(value, dict):
            unreadable.append(Unreadable(number, "not a JSON object"))
            continue
        site, round_number = value.get("site"), value.get("round")
        if isinstance(round_number, str) and round_number.strip().isdigit():
            round_number = int(round_number)
        if not isinstance(site, str) or not site or isinstance(round_number, bool) or not isinstance(round_number, int):
            unreadable.append(Unreadable(number, f"no usable site / round (site {site!r}, round {round_number!r})"))
            continue
        kind, code = value.get("data_kind"), value.get("return_code")
        arrivals.append(
            Arrival(
                line=number,
                site=site,
                round=round_number,
                data_kind=kind if isinstance(kind, str) else None,
                return_code=code if isinstance(code, str) else None,
            )
        )
    return ArrivalsRead(path=path, arrivals=tuple(arrivals), unreadable=tuple(unreadable))


def arrivals_beside(ledger: str | os.PathLike[str]) -> Path | None:
    """The arrivals file the same server run wrote beside ``ledger``, or ``None``."""
    candidate = Path(ledger).parent / ARRIVALS_FILE
    return candidate if candidate.is_file() else None
