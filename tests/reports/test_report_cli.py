"""``medpfl report``: terminal summary, files written, one clear error without a ledger."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from report_cases import MALICIOUS_SITE, write_job

from medpfl_app.cli.main import main


def test_report_prints_table_verdict_and_paths(tmp_path: Path, capsys) -> None:
    """The terminal summary: a row per site with level SSIM/PSNR/ε and tag per round, configs, verdict, coverage,
    yardstick, files."""
    write_job(tmp_path / "job")
    assert main(["report", str(tmp_path / "job"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.strip().startswith("site"))
    assert [w for w in header.split() if w.isdigit()] == ["0", "1", "2"]
    hr = next(line for line in lines if line.strip().startswith("site-hr"))
    assert hr.split()[1:4] == ["high", "0.85/24.0/-", "A1"]
    dp = next(line for line in lines if line.strip().startswith("site-dp"))
    assert "low 0.06/9.0/3 A2" in dp and "inconclusive (scores unavailable)" in dp
    bad = next(line for line in lines if "alert" in line and line.startswith("  <script>"))
    assert "not audited" in bad and "not auditable" in bad and "medium 0.45/17.0/- A2" in bad
    assert any(line.startswith("Verdict: Worst risk HIGH: site-hr, round 1") for line in lines)
    # an older run's ledger alone: coverage unknown, never "all measured"
    assert (
        "  Coverage unknown (no arrivals file beside the ledger): 9 records in the ledger: 7 audited (3 high, "
        "1 medium, 0 unscored, 1 inconclusive, 2 low), 1 not audited, 1 not auditable; received and lost: "
        "unknown."
    ) in lines
    assert (
        "  by round: round 0: 3 recorded, 2 audited, 1 not audited; round 1: 3 recorded, 2 audited, 1 not "
        "auditable; round 2: 3 recorded, 3 audited"
    ) in lines
    assert any(
        line.startswith("  audit ledger: 1 line of audit_ledger.jsonl could not be read and was skipped (line 10)")
        for line in lines
    )
    assert any(line.startswith("Yardstick: metric settings not recorded by these records") for line in lines)
    a1 = next(line for line in lines if line.strip().startswith("A1:"))
    assert (
        "(1 restart, ≤ 60 s, at most 4 images attacked per update; 180–300 iterations run, 1 stopped by the time limit)"
    ) in a1
    assert "batch size 1" in a1 and "threat model: honest-but-curious server: knows the architecture" in a1
    assert any(
        line.startswith("Policy: site-hr round 2 excluded from aggregation (high privacy risk") for line in lines
    )
    assert f"HTML report: {tmp_path / 'out' / 'audit_report.html'}" in out
    assert (tmp_path / "out" / "report_round_2.json").is_file()
    assert MALICIOUS_SITE in out  # printable text is kept as is; only control characters are replaced


def test_control_characters_in_site_names_do_not_reach_the_terminal(tmp_path: Path, capsys) -> None:
    """An escape sequence in a site name is printed escaped (``\\x1b``), never sent to the user's terminal."""
    from report_cases import LedgerFile, record

    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl")
    ledger.append(record("evil\x1b[2Jsite", 0))
    assert main(["report", str(ledger.path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "evil\\x1b[2Jsite" in out


def test_missing_ledger_is_one_clear_error(tmp_path: Path) -> None:
    """No ledger under the folder: exit 2 with one message and its fix, no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "medpfl_app.cli.main", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "no audit ledger (audit_ledger.jsonl) under" in done.stderr and "fix:" in done.stderr
    assert "Traceback" not in done.stderr


def test_records_without_site_or_round_and_garbage_lines_are_reported(tmp_path: Path, capsys) -> None:
    """A ledger with nothing usable still renders, and says what it could not place."""
    from report_cases import LedgerFile, record

    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl")
    ledger.append(record(None, None, status="not_audited", reason="peer context had no site name", risk="unknown"))
    with open(ledger.path, "a") as handle:
        handle.write("garbage\n")
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Verdict: The ledger holds no usable audit record." in out
    assert "audit ledger: 1 line of audit_ledger.jsonl could not be read and was skipped (line 2)" in out
    expected = "record 1: site None / round None unusable (not_audited: peer context had no site name)"
    assert expected in out
    html = (tmp_path / "audit_report.html").read_text()
    assert "peer context had no site name" in html and "line 2 not JSON (a truncated or corrupt line)" in html
