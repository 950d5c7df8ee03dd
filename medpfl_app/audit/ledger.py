"""The audit ledger: one JSON record per site per round, appended, flushed and fsynced, never rewritten.

Compliance teams read it (through `medpfl report`); nothing else may change it. A crash mid-write leaves at most
a truncated last line, which `read_ledger` detects and skips while keeping every earlier record.

Record schema ``medpfl.audit/1`` (plain JSON; unknown keys are allowed for forward compatibility):

``schema``, ``job_id``, ``site``, ``round``, ``time`` (UTC ISO 8601),
``status``: ``audited`` | ``not_audited`` (the audit could not run: queue full, internal error) |
``not_auditable`` (the update cannot be attacked: encrypted, non-numeric, no model),
``reason``: why not audited / not auditable (None when audited),
``model``: ``{"network", "config_hash", "num_parameters"}``,
``versions``: library versions (medpfl, nvflare, torch, monai),
``threat_model``: what the attacker knew or assumed (declared, e.g. honest-but-curious server with the update meta),
``defenses``: the update's ``medpfl_defenses`` entries (defense, guarantee, params, installed_by, ε ...),
``filter_history``: NVFlare's filter history of the update,
``epsilon``: ``{"client_dp": float | None, "dp_sgd": float | None, "delta": float | None}`` formal ε so far,
``server_indicators``: what the server alone can tell (labels recovered, BN-statistics exposure, attack matching
loss, ...),
``site_scores``: scalars returned by the site's scorer (``status`` ``scored`` | ``unavailable``, ``reason``,
``psnr_mean``, ``psnr_max``, ``ssim_mean``, ``ssim_max``, ``attack_success_rate``, ``label_accuracy``,
``identifiability``, ``relative_leakage``),
``risk``: ``low`` | ``medium`` | ``high`` | ``unknown`` (see the risk policy),
``attack_budget``: ``{"attack", "iterations", "restarts", "time_limit_s", "stop_reason", ...}``,
``policy_action``: None, or ``{"action": "excluded_from_aggregation", "reason"}`` when the audit policy kept the
update out of aggregation (the update was still audited).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpfl_app.errors import MedPFLError

SCHEMA = "medpfl.audit/1"
LEDGER_FILE = "audit_ledger.jsonl"
STATUSES = ("audited", "not_audited", "not_auditable")
RISK_LEVELS = ("low", "medium", "high", "unknown")


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class AuditLedger:
    """Append-only JSONL ledger; safe to share between threads of one process.

    Args:
        path: The ledger file; its folder is created. An existing ledger is appended to, never truncated.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Validate, stamp and durably append one record; returns what was written."""
        written = {"schema": SCHEMA, "time": utc_now(), **record}
        if written.get("status") not in STATUSES:
            raise MedPFLError(
                f"audit record status {written.get('status')!r} is not one of {STATUSES}",
                fix="set status to audited, not_audited or not_auditable",
            )
        if written.get("risk", "unknown") not in RISK_LEVELS:
            raise MedPFLError(f"audit record risk {written.get('risk')!r} is unknown", fix=f"use one of {RISK_LEVELS}")
        line = json.dumps(written, sort_keys=True, allow_nan=False, default=_plain) + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as handle:
                if handle.tell() > 0 and not _ends_with_newline(self.path):
                    handle.write("\n")  # a previous crash left a partial line: keep it isolated
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        return written


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


@dataclass(frozen=True)
class LedgerContents:
    """What `read_ledger` found: the intact records and the lines it had to skip."""

    records: tuple[dict[str, Any], ...]
    skipped_lines: tuple[int, ...]


def read_ledger(path: str | os.PathLike[str]) -> LedgerContents:
    """Read every intact record; a truncated or corrupt line is skipped and reported, never fatal."""
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
        if isinstance(record, dict) and record.get("schema") == SCHEMA:
            records.append(record)
        else:
            skipped.append(number)
    return LedgerContents(records=tuple(records), skipped_lines=tuple(skipped))


def find_ledgers(root: str | os.PathLike[str]) -> Iterator[Path]:
    """Every audit ledger under ``root`` (a downloaded job folder or a simulator workspace)."""
    yield from sorted(Path(root).rglob(LEDGER_FILE))
