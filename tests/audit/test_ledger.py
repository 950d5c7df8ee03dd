"""The audit ledger only ever appends, and survives a crash mid-write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpfl_app.audit.ledger import SCHEMA, AuditLedger, read_ledger
from medpfl_app.errors import MedPFLError


def _record(site: str, round_number: int) -> dict:
    return {"job_id": "j", "site": site, "round": round_number, "status": "audited", "risk": "low"}


def test_records_are_appended_in_order_and_read_back(tmp_path: Path) -> None:
    ledger = AuditLedger(tmp_path / "audit" / "audit_ledger.jsonl")
    for number in range(3):
        ledger.append(_record("site-1", number))
    contents = read_ledger(ledger.path)
    assert [r["round"] for r in contents.records] == [0, 1, 2]
    assert all(r["schema"] == SCHEMA and r["time"].endswith("Z") for r in contents.records)
    assert contents.skipped_lines == ()


def test_a_truncated_last_line_is_skipped_and_earlier_records_survive(tmp_path: Path) -> None:
    """Simulate a crash mid-write: half a JSON line at the end; the next append starts on a fresh line."""
    ledger = AuditLedger(tmp_path / "audit_ledger.jsonl")
    ledger.append(_record("site-1", 0))
    ledger.append(_record("site-2", 0))
    with open(ledger.path, "a") as handle:
        handle.write(json.dumps(_record("site-1", 1))[:25])
    contents = read_ledger(ledger.path)
    assert [(r["site"], r["round"]) for r in contents.records] == [("site-1", 0), ("site-2", 0)]
    assert contents.skipped_lines == (3,)
    ledger.append(_record("site-1", 1))
    after = read_ledger(ledger.path)
    assert [(r["site"], r["round"]) for r in after.records] == [("site-1", 0), ("site-2", 0), ("site-1", 1)]
    assert after.skipped_lines == (3,)


def test_reopening_appends_instead_of_truncating(tmp_path: Path) -> None:
    path = tmp_path / "audit_ledger.jsonl"
    AuditLedger(path).append(_record("site-1", 0))
    AuditLedger(path).append(_record("site-1", 1))
    assert len(read_ledger(path).records) == 2


@pytest.mark.parametrize("bad", [{"status": "done"}, {"status": "audited", "risk": "severe"}])
def test_bad_records_are_refused(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(MedPFLError):
        AuditLedger(tmp_path / "l.jsonl").append({"site": "s", "round": 0, **bad})


def test_a_missing_ledger_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MedPFLError, match="no audit ledger"):
        read_ledger(tmp_path / "nothing.jsonl")
