"""Every ledger line reaches the report through the record contract (`AuditRecord.from_json`): a line it refuses is
never dropped silently, but listed as unreadable with the contract's reason, counted, and kept out of the verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from report_cases import LedgerFile, record, write_arrivals

from medpfl_app.contracts.record import AuditRecord
from medpfl_app.errors import MedPFLError
from medpfl_app.reports import build_report
from medpfl_app.reports.sources import read_ledger_records
from medpfl_app.reports.terminal import summary_text

EVIL = "\x1b[2J\u202e"


def _low(site: str, **overrides: Any) -> dict[str, Any]:
    """A schema-1, site-scored low record of round 0 (as an older audit server wrote it)."""
    return record(site, 0, **overrides)


def _ledger_with_refused_lines(path: Path) -> LedgerFile:
    """Lines 1 and 6 are valid; 2-5 are JSON the record contract refuses, 7 is not JSON at all."""
    ledger = LedgerFile(path)
    ledger.append(_low("site-a"))
    ledger.append(_low("site-b", round="two"))  # wrong type
    ledger.append(_low("site-c", schema="medpfl.audit/9"))  # a schema this version does not read
    ledger.append(_low("site-d", status=f"odd{EVIL}"))  # unknown status, with control characters
    ledger.append(_low("site-e", schema="medpfl.audit/2", verdict={"level": "low"}))  # not a verdict
    ledger.append(_low("site-f"))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"schema": "medpfl.audit/1", "site": "site-g", "rou\n')
    return ledger


def test_the_reader_lists_refused_lines_with_the_contracts_reason(tmp_path: Path) -> None:
    """Refused lines are unreadable (by number, with `AuditRecord.from_json`'s message); the rest are typed records."""
    ledger = _ledger_with_refused_lines(tmp_path / "audit_ledger.jsonl")
    read = read_ledger_records(ledger.path)
    assert [type(r) for r in read.records] == [AuditRecord, AuditRecord]
    assert [(e.line, e.record.site) for e in read.entries] == [(1, "site-a"), (6, "site-f")]
    assert read.skipped_lines == (2, 3, 4, 5, 7)
    refused = [json.loads(line) for line in ledger.path.read_text().splitlines()[1:5]]
    for unreadable, line in zip(read.unreadable, refused, strict=False):
        with pytest.raises(MedPFLError) as error:
            AuditRecord.from_json(line)
        assert unreadable.why == f"not a valid audit record ({error.value.problem})"
    assert "'round' is a str, not a int" in read.unreadable[0].why
    assert "schema 'medpfl.audit/9' is not one of" in read.unreadable[1].why
    assert read.unreadable[4].why == "not JSON (a truncated or corrupt line)"


def test_refused_lines_are_shown_counted_and_escaped_in_every_output(tmp_path: Path) -> None:
    """HTML, round JSON and terminal name each refused line; its untrusted text is shown escaped."""
    ledger = _ledger_with_refused_lines(tmp_path / "audit_ledger.jsonl")
    report = build_report(ledger.path, tmp_path / "out")
    assert report.skipped_lines == (2, 3, 4, 5, 7)
    assert report.view.sites == ("site-a", "site-f")
    html = report.paths.html.read_text()
    assert "5 lines of audit_ledger.jsonl could not be read and were skipped (lines 2, 3, 4, 5, 7)" in html
    assert "line 2 not a valid audit record (audit record field &#39;round&#39; is a str, not a int)" in html
    assert "line 5 not a valid audit record" in html and "not a medpfl.verdict/1 verdict" in html
    assert "\x1b" not in html and "\u202e" not in html
    assert "odd\\x1b[2J\\u202e" in html
    round_json = json.loads((tmp_path / "out" / "report_round_0.json").read_text())
    assert round_json["summary"]["ledger_lines_unreadable"] == [2, 3, 4, 5, 7]
    assert [r["site"] for r in round_json["records"]] == ["site-a", "site-f"]
    text = summary_text(report)
    assert "audit ledger: 5 lines of audit_ledger.jsonl could not be read and were skipped" in text
    assert "  unreadable: line 4: not a valid audit record (audit record status 'odd\\x1b[2J\\u202e'" in text
    assert all(line.isprintable() for line in text.splitlines())


def test_a_refused_line_keeps_an_all_low_ledger_from_reading_low(tmp_path: Path) -> None:
    """Without an arrivals file a refused line may hide any level: the verdict is not LOW, and says why."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl")
    ledger.append(_low("site-a"))
    ledger.append(_low("site-b", risk="catastrophic"))  # a risk this schema does not have
    report = build_report(ledger.path, tmp_path / "out")
    assert [c.risk for c in report.view.cells.values()] == ["low"]
    assert report.verdict["risk"] == "inconclusive"
    assert report.verdict["unreadable_ledger_lines"] == [2]
    assert (
        "ledger: 1 line of audit_ledger.jsonl could not be read and was skipped (line 2)" in report.verdict["headline"]
    )


def test_a_refused_line_with_an_arrival_is_a_lost_update(tmp_path: Path) -> None:
    """With the arrivals file, the update behind a refused line is received without a usable record: lost."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl")
    ledger.append(_low("site-a"))
    ledger.append(_low("site-b", site_scores=[0.9]))  # a section that is not a mapping
    write_arrivals(tmp_path, [("site-a", 0), ("site-b", 0)])
    report = build_report(ledger.path, tmp_path / "out")
    assert report.skipped_lines == (2,)
    assert report.view.lost("site-b", 0)
    assert report.verdict["risk"] != "low"
