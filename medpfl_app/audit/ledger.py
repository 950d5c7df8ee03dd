"""The audit ledger: one JSON record per site per round, appended, flushed and fsynced, never rewritten.

Compliance teams read it (through `medpfl report`); nothing else may change it. A crash mid-write leaves at most
a truncated last line, which `read_ledger` detects and skips while keeping every earlier record.

Record schema ``medpfl.audit/2``, the contract `medpfl_app.contracts.record.AuditRecord` (plain JSON; unknown
keys are allowed for forward compatibility; ``read_ledger`` also returns records of the older ``medpfl.audit/1``,
whose ``risk`` was ``low|medium|high|unknown``):

``schema``, ``job_id``, ``site``, ``round``, ``time`` (UTC ISO 8601),
``status``: ``audited`` | ``not_audited`` (the audit could not run: queue full, internal error) |
``not_auditable`` (the update cannot be attacked: encrypted, non-numeric, no model),
``reason``: why not audited / not auditable (None when audited),
``model``: ``{"network", "num_classes", "config_hash", "num_parameters"}``,
``versions``: library versions (medpfl, nvflare, torch, monai),
``threat_model``: what the attacker knew or assumed (declared, e.g. honest-but-curious server with the update meta),
``defenses``: the update's ``medpfl_defenses`` entries (defense, guarantee, params, installed_by, ε ...),
``filter_history``: NVFlare's filter history of the update,
``epsilon``: ``{"client_dp": float | None, "dp_sgd": float | None, "delta": float | None}`` formal ε so far; records
with a formal ε also carry ``client_dp_empirical`` / ``dp_sgd_empirical`` (the site's ``EmpiricalEpsilon`` JSON or
None) and ``empirical_status`` ``{"client_dp": S, "dp_sgd": S}``, S one of ``consistent | exceeds_claim | invalid |
mismatch | absent`` (`medpfl_app.contracts.record.EmpiricalStatus`),
``server_indicators``: what the server alone can tell (labels recovered, BN-statistics exposure, attack matching
loss, ...),
``site_scores``: scalars returned by the site's scorer (``status`` ``scored`` | ``unavailable``, ``reason``,
``psnr_mean``, ``psnr_max``, ``ssim_mean``, ``ssim_max``, ``attack_success_rate``, ``label_accuracy``,
``identifiability``, ``relative_leakage``),
``risk``: a `medpfl_app.contracts.verdict.RiskLevel` (``high`` | ``medium`` | ``unscored`` | ``inconclusive`` | ``low`` |
``not_audited`` | ``not_auditable``), ``verdict``: ``{"schema", "level", "evidence", "settle"}`` (see the risk policy),
``attack_budget``: ``{"attack", "iterations", "restarts", "stages_run", "time_budget_s", "time_spent_s",
"ladder_complete", "settle", "not_attacked", "stop_reason", ...}``,
``ladder``: the attack stages run on the whole update (`medpfl_app.audit.ladder.StageResult.to_json`),
``ladder_complete``: whether the ladder completed,
``metric_settings``: SSIM window and data range, PSNR data range, success threshold, identifiability definition,
``policy_action``: None, or ``{"action": "excluded_from_aggregation", "reason"}`` when the audit policy kept the
update out of aggregation (the update was still audited).
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.contracts.record import (
    AUDIT_RECORD_SCHEMA,
    READABLE_SCHEMAS,
    RISK_LEVELS,
    STATUSES,
    AuditRecord,
)
from medpfl_app.errors import MedPFLError

__all__ = [
    "LEDGER_FILE",
    "READABLE_SCHEMAS",
    "RISK_LEVELS",
    "SCHEMA",
    "STATUSES",
    "AuditLedger",
    "LedgerContents",
    "bounded_json",
    "find_ledgers",
    "read_ledger",
]

#: The schema every record is written with (`medpfl_app.contracts.record.AuditRecord`).
SCHEMA = AUDIT_RECORD_SCHEMA
LEDGER_FILE = "audit_ledger.jsonl"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


#: Bounds on what one record may hold: fields copied from a site's meta are untrusted and are cut to these.
MAX_STRING = 2000
MAX_ITEMS = 64
MAX_DEPTH = 8


class AuditLedger:
    """Append-only JSONL ledger, owner-only (file 0600, folder 0700); safe to share between threads of one process.

    Args:
        path: The ledger file; its folder is created. An existing ledger is appended to, never truncated.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, stamp, bound and durably append one record; returns what was written.

        Values a site controls (training facts, filter history, reasons) may be non-finite, huge or of odd types:
        they are made plain JSON within `MAX_STRING` / `MAX_ITEMS` / `MAX_DEPTH` and the record is flagged
        ``sanitized: true`` — a record is always written, never lost to an encoding error.
        """
        written = {"schema": SCHEMA, "time": utc_now(), **record}
        if written["schema"] != SCHEMA:
            raise MedPFLError(
                f"audit record schema {str(written['schema'])[:40]!r} is not {SCHEMA}",
                fix="build records with medpfl_app.audit.worker.build_record",
            )
        changed: list[bool] = []
        written = bounded_json(written, changed)
        if changed:
            written["sanitized"] = True
        AuditRecord.from_json(written)  # the contract's reader: a record it would refuse is never written
        line = json.dumps(written, sort_keys=True, allow_nan=False) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as handle:
                if handle.tell() > 0 and not _ends_with_newline(self.path):
                    handle.write("\n")  # a previous crash left a partial line: keep it isolated
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        return written


def bounded_json(value: Any, changed: list[bool], depth: int = 0) -> Any:
    """``value`` as plain, finite, bounded JSON; appends to ``changed`` whenever something had to be altered.

    Non-finite floats become the strings ``"nan"``/``"inf"``/``"-inf"``, strings are cut to `MAX_STRING`
    characters, lists and dicts to `MAX_ITEMS` entries, nesting to `MAX_DEPTH`, NumPy/torch scalars and arrays
    become numbers and lists, anything else its (cut) ``str``.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        changed.append(True)
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        if len(value) <= MAX_STRING:
            return value
        changed.append(True)
        return value[:MAX_STRING] + "…"
    if depth >= MAX_DEPTH:
        changed.append(True)
        return "<nested too deep>"
    if isinstance(value, Mapping):
        items = list(value.items())
        if len(items) > MAX_ITEMS:
            changed.append(True)
            items = items[:MAX_ITEMS]
        return {bounded_json(str(k), changed, depth + 1): bounded_json(v, changed, depth + 1) for k, v in items}
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            changed.append(True)
        return [bounded_json(v, changed, depth + 1) for v in list(value)[:MAX_ITEMS]]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return bounded_json(value.item(), changed, depth)
    if hasattr(value, "tolist"):
        return bounded_json(value.tolist(), changed, depth)
    changed.append(True)
    return bounded_json(str(value), changed, depth)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


@dataclass(frozen=True)
class LedgerContents:
    """What `read_ledger` found: the intact records and the lines it had to skip."""

    records: tuple[dict[str, Any], ...]
    skipped_lines: tuple[int, ...]


def read_ledger(path: str | os.PathLike[str]) -> LedgerContents:
    """Read every intact record; a truncated or corrupt line, or one `AuditRecord.from_json` refuses (another
    schema, a field of the wrong type), is skipped and reported, never fatal."""
    path = Path(path)
    if not path.is_file():
        raise MedPFLError(f"no audit ledger at {path}", fix="pass the downloaded job folder that holds the ledger")
    records: list[dict[str, Any]] = []
    skipped: list[int] = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped.append(number)
            continue
        try:
            AuditRecord.from_json(record)  # a record of either readable schema, its fields of the right types
        except MedPFLError:
            skipped.append(number)
            continue
        records.append(record)
    return LedgerContents(records=tuple(records), skipped_lines=tuple(skipped))


def find_ledgers(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Every audit ledger under ``root`` (a downloaded job folder or a simulator workspace)."""
    yield from sorted(Path(root).rglob(LEDGER_FILE))
