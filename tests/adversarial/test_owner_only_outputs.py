"""Everything the audit and `medpfl report` write is owner-only: files 0600, folders 0700 (patient leakage data)."""

from __future__ import annotations

import os
import stat

from medpfl_app.audit.ledger import AuditLedger
from medpfl_app.reports import render_report
from medpfl_app.reports.sources import append_arrival


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_ledger_arrivals_and_every_report_file_are_owner_only(tmp_path) -> None:
    """Even under a permissive umask, the ledger, the arrivals record, the HTML and each round JSON are 0600."""
    previous = os.umask(0o002)
    try:
        folder = tmp_path / "run" / "medpfl"
        ledger = AuditLedger(folder / "audit_ledger.jsonl")
        append_arrival(folder / "received_updates.jsonl", {"site": "site-1", "round": 0, "return_code": "OK"})
        ledger.append(
            {
                "job_id": "j",
                "site": "site-1",
                "round": 0,
                "status": "not_audited",
                "reason": "test",
                "risk": "not_audited",
            }
        )
        out = tmp_path / "report_out"
        paths = render_report(tmp_path / "run", out)
    finally:
        os.umask(previous)
    assert _mode(folder) == 0o700 and _mode(out) == 0o700
    for path in (ledger.path, folder / "received_updates.jsonl", paths.html, *paths.round_json):
        assert _mode(path) == 0o600, path
