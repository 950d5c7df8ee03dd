"""A ledger is written from what sites send: the report holds its numbers to their valid range and never lets its
text drive the terminal (or reorder the HTML page).

Values outside their range (SSIM 1e308, an attack success rate of 500 %, a p-value of 2, a negative ε) are read as
missing and flagged in the report, the round JSON and the terminal; a level resting on them is not shown as a
measurement. Control characters (ANSI escapes, carriage returns, NUL, DEL, bidi overrides) are shown escaped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from medpfl_app.cli.main import main
from medpfl_app.reports import build_report
from medpfl_app.reports.fields import BOUNDS, checked, printable
from medpfl_app.reports.terminal import summary_text

SCORES = {
    "status": "scored",
    "reason": None,
    "psnr_mean": 12.0,
    "psnr_max": 13.0,
    "ssim_mean": 0.1,
    "ssim_max": 0.15,
    "attack_success_rate": 0.0,
    "label_accuracy": 1.0,
}


def _record(site: str, round_number: int = 0, **overrides: Any) -> dict[str, Any]:
    """A schema-1 audited, site-scored low record, as an older audit server wrote it."""
    return {
        "schema": "medpfl.audit/1",
        "job_id": "job-1",
        "site": site,
        "round": round_number,
        "status": "audited",
        "reason": None,
        "threat_model": {"declared": "honest-but-curious server"},
        "defenses": [],
        "epsilon": {"client_dp": None, "dp_sgd": None, "delta": None},
        "site_scores": dict(SCORES),
        "risk": "low",
        "attack_budget": {"attack": "gradinv", "iterations": 100, "restarts": 1},
        **overrides,
    }


def _ledger(tmp_path: Path, *records: dict[str, Any]) -> Path:
    path = tmp_path / "audit_ledger.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize(
    ("name", "value", "valid"),
    [
        ("ssim_max", 1.0, True),
        ("ssim_max", -1.0, True),
        ("ssim_max", 1.0000001, True),
        ("ssim_max", 1e308, False),
        ("ssim_max", 1.01, False),
        ("ssim_max", -1.5, False),
        ("ssim_max", math.nan, False),
        ("attack_success_rate", 0.0, True),
        ("attack_success_rate", 1.0, True),
        ("attack_success_rate", 5.0, False),
        ("attack_success_rate", -0.1, False),
        ("label_accuracy", 1.5, False),
        ("identifiability", 2.0, False),
        ("identifiability_p_value", 0.004, True),
        ("identifiability_p_value", 2.0, False),
        ("identifiability_excess", -0.5, True),
        ("identifiability_excess", 1.5, False),
        ("psnr_max", 31.0, True),
        ("psnr_max", -3.0, True),
        ("psnr_max", math.inf, False),
        ("client_dp", 0.0, True),
        ("client_dp", 8.0, True),
        ("client_dp", -1.0, False),
        ("client_dp", math.inf, False),
        ("delta", 1e-5, True),
        ("delta", 1.5, False),
        ("iterations", 300, True),
        ("iterations", -1, False),
        ("iterations", 2.5, False),
        ("wall_time_s", -3.0, False),
        ("final_loss", "inf", True),
        ("final_loss", "nan", True),
        ("final_loss", -1.0, False),
        ("ssim_max", "0.9", False),
        ("ssim_max", True, False),
    ],
)
def test_checked_holds_each_field_to_its_range(name: str, value: Any, valid: bool) -> None:
    """Valid values pass (with float slack at the ends); anything else is None plus one note naming field and range."""
    problems: list[str] = []
    found = checked(value, name, problems, where="site_scores")
    if valid:
        assert found is not None and problems == []
    else:
        assert found is None and len(problems) == 1 and problems[0].startswith(f"site_scores.{name} = ")
    assert checked(None, name, problems) is None  # absent is not invalid
    assert name in BOUNDS


def test_out_of_range_scores_are_flagged_and_never_a_measurement(tmp_path: Path) -> None:
    """SSIM 1e308 / ASR 500 % on a HIGH record: the level is not shown as measured, the numbers are not used."""
    ledger = _ledger(
        tmp_path,
        _record("site-a", risk="high", site_scores={**SCORES, "ssim_max": 1e308, "attack_success_rate": 5.0}),
        _record("site-b"),
    )
    report = build_report(ledger, tmp_path / "out")
    cell = report.view.cell("site-a", 0)
    assert cell is not None and cell.risk == "inconclusive"
    assert cell.ssim_max is None and cell.success_rate is None and cell.psnr_max == 13.0
    assert cell.invalid == (
        "site_scores.ssim_max = 1e+308 is outside the valid range [-1, 1]",
        "site_scores.attack_success_rate = 5 is outside the valid range [0, 1]",
    )
    assert "the record's level high is not shown as a measurement" in cell.evidence
    verdict = report.verdict
    assert verdict["risk"] == "inconclusive" and verdict["invalid_records"] == 1
    assert "1 record holds values outside their valid range" in verdict["headline"]
    assert "1e+308" not in verdict["headline"] and "500%" not in verdict["headline"]
    assert verdict["invalid_values"] == [{"site": "site-a", "round": 0, "values": list(cell.invalid)}]
    round_json = json.loads((tmp_path / "out" / "report_round_0.json").read_text())
    site_a = next(s for s in round_json["summary"]["sites"] if s["site"] == "site-a")
    assert site_a["ssim_max"] is None and site_a["risk"] == "inconclusive" and len(site_a["invalid_values"]) == 2
    html = report.paths.html.read_text()
    assert 'id="invalid-values"' in html and "invalid values (not used)" in html and "1e+308 is outside" in html
    text = summary_text(report)
    assert "inconclusive (invalid values)" in text
    assert "site-a round 0: site_scores.ssim_max = 1e+308 is outside the valid range [-1, 1]" in text


def test_a_low_record_with_an_impossible_p_value_is_not_low(tmp_path: Path) -> None:
    """Every other record low, one low with p = 2: the report cannot say LOW."""
    ledger = _ledger(
        tmp_path,
        _record("site-a"),
        _record("site-b", site_scores={**SCORES, "identifiability": 0.2, "identifiability_p_value": 2.0}),
    )
    report = build_report(ledger, tmp_path / "out")
    assert report.verdict["risk"] == "inconclusive"
    assert report.view.cell("site-b", 0).detail.identifiability_p_value is None  # type: ignore[union-attr]


def test_invalid_epsilon_is_not_shown_as_no_dp(tmp_path: Path) -> None:
    """A negative ε is flagged invalid, never read as "no formal DP"."""
    ledger = _ledger(tmp_path, _record("site-a", epsilon={"client_dp": -1.0, "dp_sgd": None, "delta": 1e-5}))
    cell = build_report(ledger, tmp_path / "out").view.cell("site-a", 0)
    assert cell is not None and cell.epsilon_client is None
    assert cell.epsilon_text() == "ε invalid (out of range, not used)"
    assert cell.invalid == ("epsilon.client_dp = -1 is outside the valid range [0, inf)",)


def test_invalid_values_of_an_unattacked_record_keep_its_level(tmp_path: Path) -> None:
    """A not-audited record measured nothing: it stays not audited, with the note in its evidence."""
    ledger = _ledger(
        tmp_path,
        _record(
            "site-a",
            status="not_audited",
            reason="queue full",
            risk="unknown",
            site_scores=None,
            attack_budget={"attack": "gradinv", "iterations": -5},
        ),
    )
    detail = build_report(ledger, tmp_path / "out").view.details[0]
    assert detail.level == "not_audited"
    assert "attack_budget.iterations = -5 is outside the valid range [0, inf)" in detail.evidence


def test_ladder_stages_are_range_checked(tmp_path: Path) -> None:
    """Counts and times of a schema-2 ladder stage are checked like every other number."""
    stage = {
        "stage": "screening",
        "attack": "gradinv",
        "images": -1,
        "local_steps": 1,
        "iterations": 20,
        "restarts": 1,
        "wall_time_s": -2.0,
        "stop_reason": "budget",
        "whole_update": True,
        "convergence": {"status": "matched", "initial_loss": 0.5, "final_loss": "inf", "reduction": 0.0},
    }
    ledger = _ledger(tmp_path, _record("site-a", schema="medpfl.audit/2", ladder=[stage], ladder_complete=True))
    detail = build_report(ledger, tmp_path / "out").view.details[0]
    assert detail.invalid == (
        "ladder[0].images = -1 is outside the valid range [0, inf)",
        "ladder[0].wall_time_s = -2 is outside the valid range [0, inf)",
    )
    assert detail.stages[0].final_loss == math.inf  # a diverged loss is a valid record


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("evil\x1b[2Jsite", "evil\\x1b[2Jsite"),
        ("a\rb", "a\\rb"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("csi\x9b31m", "csi\\x9b31m"),
        ("rtl\u202eexe.pdf", "rtl\\u202eexe.pdf"),
        ("iso\u2066x\u2069", "iso\\u2066x\\u2069"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("line\nforged", "line\\nforged"),
        ("tab\there", "tab\\there"),
        ("no\u00a0break", "no break"),
        ("plain <b>text</b> ε → ×", "plain <b>text</b> ε → ×"),
    ],
)
def test_printable_escapes_every_control_character(raw: str, shown: str) -> None:
    """Control characters become visible escapes; printable text (HTML, Greek, arrows) is kept as is."""
    assert printable(raw) == shown
    assert printable(printable(raw)) == shown  # idempotent
    assert printable("error\n  fix: x", newlines=True) == "error\n  fix: x"


def test_terminal_summary_prints_no_control_character_from_the_ledger(tmp_path: Path, capsys) -> None:
    """Site names, reasons, policy actions and evidence carry escapes, a CR and a forged line; none reaches the
    terminal raw, and no ledger value starts a line of its own."""
    nasty = "\x1b[2J\x1b]0;owned\x07\r\u202e\x00"
    records = [
        _record(f"site{nasty}a", policy_action={"action": f"excluded{nasty}", "reason": f"why\nVerdict: LOW{nasty}"}),
        _record("site-b", status="not_audited", reason=f"queue{nasty}\nfull", risk="unknown", site_scores=None),
        _record(
            "site-c",
            schema="medpfl.audit/2",
            risk="high",
            verdict={"schema": "medpfl.verdict/1", "level": "high", "evidence": f"ev{nasty}\nidence", "settle": None},
        ),
        _record(None, status=f"odd{nasty}"),
    ]
    ledger = _ledger(tmp_path, *records)
    assert main(["report", str(ledger), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert all(line.isprintable() for line in out.splitlines()), [
        line for line in out.splitlines() if not line.isprintable()
    ]
    assert "\r" not in out and "\x1b" not in out and "\u202e" not in out
    assert not any(line.startswith("Verdict: LOW") for line in out.splitlines())
    assert "site\\x1b[2J\\x1b]0;owned\\x07\\r\\u202e\\x00a" in out
    html = (tmp_path / "out" / "audit_report.html").read_text()
    assert "\x1b" not in html and "\u202e" not in html and "\x00" not in html and "\x07" not in html
