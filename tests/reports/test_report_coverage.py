"""Coverage: updates the server received vs the audit records, per site and round, with every gap named.

(a) Hand-written arrivals + ledger files. (b) A real kill: a child process plays the server (the arrivals recorder
and a slow audit worker appending to the project's `AuditLedger`), is killed with SIGKILL mid-job, and the re-rendered
report must show received vs audited per round with the gap named.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from report_cases import SCHEMA_2, LedgerFile, record2, stage, write_arrivals

from medpfl_app.cli.main import main
from medpfl_app.errors import MedPFLError
from medpfl_app.reports import build_report, render_report
from medpfl_app.reports.coverage import LOST_CAUSE
from medpfl_app.reports.sources import read_arrivals

HERE = Path(__file__).resolve().parent


def _low(site: str, round_number: int) -> dict:
    return record2(
        site,
        round_number,
        "low",
        f"{site} r{round_number}: ladder complete, matched, best SSIM 0.10",
        ladder=[stage("screening", "stalled", 0.4, 0.01), stage("full", "matched", 0.5, 1e-11)],
    )


def _round(paths_or_dir: Path, round_number: int) -> dict:
    folder = paths_or_dir
    return json.loads((folder / f"report_round_{round_number}.json").read_text())["summary"]


def _html_text(html: str) -> str:
    """The page's text with tags removed and whitespace collapsed (what a reader sees)."""
    import re
    from html import unescape

    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_lost_updates_truncated_line_and_rounds_without_records(tmp_path: Path) -> None:
    """Arrivals for 3 sites × 3 rounds, records for 4 of them and a truncated last line: 5 lost, named per round."""
    run = tmp_path / "run" / "medpfl"
    write_arrivals(run, [(s, r) for r in range(3) for s in ("site-a", "site-b", "site-c")])
    ledger = LedgerFile(run / "audit_ledger.jsonl", schema=SCHEMA_2)
    for site, round_number in (("site-a", 0), ("site-b", 0), ("site-c", 0), ("site-a", 1)):
        ledger.append(_low(site, round_number))
    with open(ledger.path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(_low("site-b", 1))[:60])  # the server died mid-write

    report = build_report(tmp_path / "run", tmp_path / "out")

    coverage = report.verdict["coverage"]
    assert coverage["known"] is True
    assert [(r["round"], r["received"], r["audited"], r["lost"]) for r in coverage["rounds"]] == [
        (0, 3, 3, 0),
        (1, 3, 1, 2),
        (2, 3, 0, 3),
    ]
    assert coverage["total"]["received"] == 9 and coverage["total"]["lost"] == 5
    assert (
        coverage["unreadable_ledger_text"] == "1 line of audit_ledger.jsonl could not be read and was skipped (line 5)"
    )
    lost = [(g["site"], g["round"], g["count"]) for g in coverage["gaps"] if g["kind"] == "lost"]
    assert lost == [("site-b", 1, 1), ("site-c", 1, 1), ("site-a", 2, 1), ("site-b", 2, 1), ("site-c", 2, 1)]
    assert {g["cause"] for g in coverage["gaps"]} == {LOST_CAUSE}
    # every audited update measured low, but 5 of 9 received updates were not: never a "low" verdict
    assert report.verdict["risk"] == "inconclusive"
    assert "5 received updates lost (no audit record)" in report.verdict["headline"]
    # round 2 has no record at all: it still gets its JSON report
    round_2 = _round(tmp_path / "out", 2)
    assert round_2["coverage"]["rounds"] == [
        {
            "round": 2,
            "received": 3,
            "records": 0,
            "audited": 0,
            "not_audited": 0,
            "not_auditable": 0,
            "lost": 3,
            "measured": 0,
            "levels": round_2["coverage"]["rounds"][0]["levels"],
        }
    ]
    assert round_2["sites_lost"] == ["site-a", "site-b", "site-c"]
    text = _html_text(report.paths.html.read_text())
    assert (
        "Coverage: 9 received, 4 audited (0 high, 0 medium, 0 unscored, 0 inconclusive, 4 low), 0 not audited, "
        "0 not auditable, 5 lost" in text
    )
    assert f"2 site-b lost 1 {LOST_CAUSE}" in text  # the gaps table row: round, site, gap, updates, cause
    assert "Audit ledger: 1 line of audit_ledger.jsonl could not be read and was skipped (line 5)" in text


def test_every_received_update_measured_low_is_low(tmp_path: Path) -> None:
    """All received updates have a record measured low: the verdict may say low, with the coverage beside it."""
    run = tmp_path / "medpfl"
    write_arrivals(run, [("site-a", 0), ("site-b", 0)])
    ledger = LedgerFile(run / "audit_ledger.jsonl", schema=SCHEMA_2)
    ledger.append(_low("site-a", 0))
    ledger.append(_low("site-b", 0))
    report = build_report(ledger.path)
    assert report.verdict["risk"] == "low"
    assert report.verdict["headline"].startswith("LOW: all 2 received updates were measured low under attack gradinv")
    assert report.verdict["coverage"]["text"].startswith(
        "Coverage: 2 received, 2 audited (0 high, 0 medium, "
        "0 unscored, 0 inconclusive, 2 low), 0 not audited, "
        "0 not auditable, 0 lost"
    )


def test_without_arrivals_coverage_is_unknown_never_all_measured(tmp_path: Path, capsys) -> None:
    """A ledger alone: the report says coverage is unknown and refuses a low verdict."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl", schema=SCHEMA_2)
    for site in ("site-a", "site-b"):
        ledger.append(_low(site, 0))
    assert main(["report", str(ledger.path)]) == 0
    out = capsys.readouterr().out
    assert "Coverage unknown (no arrivals file beside the ledger): 2 records in the ledger" in out
    assert "received and lost: unknown" in out and "Arrivals: none beside the ledger (coverage unknown)" in out
    summary = _round(tmp_path, 0)
    assert summary["verdict"]["risk"] == "inconclusive" and summary["coverage"]["known"] is False
    assert summary["coverage"]["rounds"][0]["received"] is None and summary["coverage"]["rounds"][0]["lost"] is None
    html = (tmp_path / "audit_report.html").read_text()
    assert 'id="coverage-unknown"' in html and "measured 2 of 2" not in html
    assert "all 2 received" not in _html_text(html)


def test_not_audited_not_auditable_failed_tasks_and_unmatched_records_are_named(tmp_path: Path) -> None:
    """Each gap carries its cause: a record's reason, a failed task's return code, a record without an arrival."""
    run = tmp_path / "medpfl"
    write_arrivals(run, [("site-a", 0), ("site-b", 0), ("site-c", 0)])
    write_arrivals(run, [("site-d", 0)], return_code="EXECUTION_EXCEPTION")
    with open(run / "received_updates.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"site": null, "round": 0}\n{"site": "site-a", "rou')  # unplaceable, then truncated
    ledger = LedgerFile(run / "audit_ledger.jsonl", schema=SCHEMA_2)
    ledger.append(
        record2(
            "site-a",
            0,
            "not_audited",
            "audit queue full",
            status="not_audited",
            reason="audit queue full (8 updates waiting): the attack thread is behind",
            ladder=[],
        )
    )
    ledger.append(
        record2(
            "site-b",
            0,
            "not_auditable",
            "encrypted",
            status="not_auditable",
            reason="update is HE-encrypted (CKKS)",
            ladder=[],
        )
    )
    ledger.append(_low("site-c", 0))
    ledger.append(_low("site-e", 0))  # the arrivals file does not list it
    report = build_report(ledger.path, tmp_path / "out")
    gaps = {(g["site"], g["kind"]): g["cause"] for g in report.verdict["coverage"]["gaps"]}
    assert gaps[("site-a", "not_audited")] == "audit queue full (8 updates waiting): the attack thread is behind"
    assert gaps[("site-b", "not_auditable")] == "update is HE-encrypted (CKKS)"
    assert gaps[("site-d", "lost")].startswith("received a failed task result (return code EXECUTION_EXCEPTION)")
    assert gaps[("site-e", "no_arrival")].startswith("audit record without a matching line in the arrivals file")
    assert report.verdict["coverage"]["unreadable_arrival_lines"] == [5, 6]
    total = report.verdict["coverage"]["total"]
    assert (total["received"], total["audited"], total["not_audited"], total["not_auditable"], total["lost"]) == (
        4,
        2,
        1,
        1,
        1,
    )
    assert report.verdict["risk"] == "inconclusive"  # lows, but not every received update was measured
    text = _html_text(report.paths.html.read_text())
    assert "Arrivals file: 2 lines of received_updates.jsonl could not be read and were skipped: line 5" in text


def test_arrivals_alone_name_the_possible_crash(tmp_path: Path) -> None:
    """No ledger, but an arrivals file: the error says updates arrived and the audit may have died before writing."""
    write_arrivals(tmp_path / "run" / "medpfl", [("site-a", 0), ("site-b", 0)])
    with pytest.raises(
        MedPFLError,
        match="lists 2 received updates: either the job ran without the audit, or its "
        "server stopped before writing the first audit record",
    ):
        render_report(tmp_path / "run")


def test_the_recorder_writes_what_the_report_reads(tmp_path: Path) -> None:
    """`ReceivedUpdateRecorder` on a DXO (no NVFlare runtime): its line is read back as site and round."""
    import numpy as np
    from nvflare.apis.dxo import DXO, DataKind
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.app_common.app_constant import AppConstants

    from medpfl_app.nvflare.filters.received import ReceivedUpdateRecorder

    class _Workspace:
        def get_run_dir(self, job_id: str) -> str:
            return str(tmp_path / job_id)

    class _Engine:
        def get_workspace(self) -> _Workspace:
            return _Workspace()

    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, "site-7", sticky=False)
    fl_ctx = FLContext()
    fl_ctx.set_prop(ReservedKey.PEER_CTX, peer, sticky=False)
    fl_ctx.set_prop(ReservedKey.ENGINE, _Engine(), sticky=False)
    fl_ctx.set_prop(ReservedKey.RUN_NUM, "job-1", sticky=False)
    shareable = DXO(DataKind.WEIGHT_DIFF, {"w": np.zeros(2, dtype=np.float32)}, meta={}).to_shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, 4)

    assert ReceivedUpdateRecorder().process(shareable, fl_ctx) is shareable

    read = read_arrivals(tmp_path / "job-1" / "medpfl" / "received_updates.jsonl")
    assert [(a.site, a.round, a.data_kind, a.failed) for a in read.arrivals] == [("site-7", 4, "WEIGHT_DIFF", False)]


#: The child plays the server: `ReceivedUpdateRecorder`'s line format for each arrival, a FIFO audit worker thread
#: that appends records with the project's `AuditLedger`, and a slow audit that never ends on the stuck update.
CHILD = r"""
import queue, sys, threading, time
from pathlib import Path

sys.path.insert(0, sys.argv[5])
from report_cases import record2, stage
from medpfl_app.audit.ledger import AuditLedger
from medpfl_app.reports.sources import ARRIVALS_FILE, append_arrival

folder = Path(sys.argv[1]) / "medpfl"
sites, rounds = sys.argv[2].split(","), int(sys.argv[3])
stuck_site, stuck_round = sys.argv[4].split(":")
folder.mkdir(parents=True, exist_ok=True)
ledger = AuditLedger(folder / "audit_ledger.jsonl")
items = queue.Queue()

def audit_loop():
    while True:
        site, round_number = items.get()
        if (site, round_number) == (stuck_site, int(stuck_round)):
            (folder / "stuck_in_audit").write_text(f"{site} {round_number}")
            threading.Event().wait()  # an attack that runs until the server is killed
        time.sleep(0.05)  # a slow audit: training runs ahead of it
        ledger.append(record2(site, round_number, "low", "ladder complete, matched; best SSIM 0.1",
                              ladder=[stage("screening", "matched", 0.5, 1e-11)]))

threading.Thread(target=audit_loop, daemon=True).start()
for round_number in range(rounds):
    for site in sites:
        append_arrival(folder / ARRIVALS_FILE, {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "site": site,
                                                "round": round_number, "return_code": "OK",
                                                "data_kind": "WEIGHT_DIFF"})
        items.put((site, round_number))
(folder / "training_done").write_text("all rounds received")
threading.Event().wait()  # the server waits for its audit at the end of the run
"""


def _wait_for(condition, child: subprocess.Popen, what: str, deadline_s: float = 120.0) -> None:
    """Poll ``condition`` until true; fail early if the child died, or after a generous deadline."""
    end = time.monotonic() + deadline_s
    while not condition():
        if child.poll() is not None:
            raise AssertionError(
                f"the server process exited ({child.returncode}) before {what}: "
                f"{child.stderr.read() if child.stderr else ''}"
            )
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def test_server_killed_mid_job_report_shows_received_vs_audited_with_the_gap(tmp_path: Path, capsys) -> None:
    """SIGKILL while the audit is stuck in round 2: rounds 0–1 fully audited, round 2 one of three, round 3 none."""
    run = tmp_path / "server_run"
    folder = run / "medpfl"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(run), "site-a,site-b,site-c", "4", "site-b:2", str(HERE)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: (folder / "training_done").exists() and (folder / "stuck_in_audit").exists(),
            child,
            "all rounds arrived and the audit got stuck",
        )
        os.killpg(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=60)
        if child.stderr:
            child.stderr.close()

    assert main(["report", str(run), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert (
        "by round: round 0: 3 received, 3 audited; round 1: 3 received, 3 audited; round 2: 3 received, "
        "1 audited, 2 lost; round 3: 3 received, 0 audited, 3 lost"
    ) in out
    assert f"gap: site-b round 2: lost: {LOST_CAUSE}" in out
    assert "Verdict: INCONCLUSIVE: every audited update measured low" in out

    expected = {0: (3, 3, 0), 1: (3, 3, 0), 2: (3, 1, 2), 3: (3, 0, 3)}
    for round_number, (received, audited, lost) in expected.items():
        summary = _round(tmp_path / "out", round_number)
        counts = summary["coverage"]["rounds"][0]
        assert (counts["received"], counts["audited"], counts["lost"]) == (received, audited, lost), round_number
        assert summary["verdict"]["risk"] == ("low" if lost == 0 else "inconclusive" if audited else "not_audited")
    gaps = _round(tmp_path / "out", 2)["coverage"]["gaps"]
    assert gaps == [
        {"site": "site-b", "round": 2, "kind": "lost", "count": 1, "cause": LOST_CAUSE},
        {"site": "site-c", "round": 2, "kind": "lost", "count": 1, "cause": LOST_CAUSE},
    ]

    paths = render_report(run, tmp_path / "again")
    html = paths.html.read_text()
    text = _html_text(html)
    assert (
        "Coverage: 12 received, 7 audited (0 high, 0 medium, 0 unscored, 0 inconclusive, 7 low), 0 not audited, "
        "0 not auditable, 5 lost" in text
    )
    for round_number, (received, audited, lost) in expected.items():
        row = html[html.index(f'<tr data-round="{round_number}">', html.index('id="coverage-rounds"')) :]
        row = row[: row.index("</tr>")]
        assert f'<td class="received">{received}</td>' in row and f'<td class="audited">{audited}</td>' in row
        assert f'<td class="lost">{lost}</td>' in row
    assert f"2 site-b lost 1 {LOST_CAUSE}" in text and f"3 site-a lost 1 {LOST_CAUSE}" in text
    assert html.count('data-risk="lost"') == 5  # the table's lost cells
