"""The report shows each site's empirical ε (ε̂) next to its formal ε and flags a failed check everywhere."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from report_cases import SCHEMA_2, LedgerFile, record2

from medpfl_app.audit.provenance import empirical_epsilon, epsilon_so_far
from medpfl_app.contracts.record import EmpiricalStatus
from medpfl_app.defenses.accountant import epsilon_per_release
from medpfl_app.defenses.client_dp import ClientDP, clip_update
from medpfl_app.defenses.epsilon_audit import EmpiricalEpsilon, audit_defense
from medpfl_app.defenses.update_arrays import DefenseOutput
from medpfl_app.reports import build_report
from medpfl_app.reports.empirical import EmpiricalCheck
from medpfl_app.reports.terminal import summary_text

NOISE, DELTA, TRIALS = 4.0, 1e-5, 200  # ε ≈ 1.01 per release: 200 trials can disprove it
CLAIM = epsilon_per_release(NOISE, DELTA)


class NoiseOffClientDP(ClientDP):
    """Clips but adds no noise: a broken defense whose formal ε is false."""

    def _apply(self, update: Any, rng: Any) -> DefenseOutput:
        clipped, _ = clip_update(update, self.clip_norm)
        return DefenseOutput(clipped, {"clip_norm": float(self.clip_norm), "sigma": self.sigma})


def _value(defense_class: type[ClientDP]) -> dict[str, Any]:
    return audit_defense(defense_class(clip_norm=1.0, noise_multiplier=NOISE), trials=TRIALS, delta=DELTA).to_json()


def _dp_record(site: str, round_number: int, empirical: Any) -> dict[str, Any]:
    """A schema-2 low-risk record whose ``epsilon`` section the audit's own code built from a client-DP meta."""
    entry = {
        "defense": "client_dp",
        "guarantee": "(ε, δ)-DP at client level",
        "params": {"clip_norm": 1.0, "noise_multiplier": NOISE},
        "installed_by": "site",
        "epsilon_round": CLAIM,
        "epsilon_total": CLAIM * (round_number + 1),
        "delta": DELTA,
        "epsilon_empirical": empirical,
    }
    meta = {"medpfl_defenses": [entry]}
    formal = epsilon_so_far(meta)
    epsilon = {**formal, **empirical_epsilon(meta, formal)}
    return record2(site, round_number, "low", "no reconstruction", defenses=[entry], epsilon=epsilon)


def _html_text(path: Path) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", path.read_text())).split())


def _job(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    ledger = LedgerFile(tmp_path / "job" / "workspace" / "audit" / "audit_ledger.jsonl", SCHEMA_2)
    for item in records:
        ledger.append(item)
    return tmp_path / "job"


@pytest.fixture(scope="module")
def values() -> dict[str, dict[str, Any]]:
    return {"honest": _value(ClientDP), "broken": _value(NoiseOffClientDP)}


def test_consistent_value_is_shown_next_to_epsilon_with_its_looseness(tmp_path: Path, values: dict) -> None:
    """ε̂ per release vs ε per release, the ratio, and "no evidence against the claim" in HTML, terminal, JSON."""
    honest = values["honest"]
    job = _job(tmp_path, [_dp_record("site-ok", 0, honest), _dp_record("site-ok", 1, honest)])
    report = build_report(job, tmp_path / "out")
    expected = f"ε̂ ≥ {honest['epsilon_lower']:.3g} (95 %, {TRIALS} trials) per release vs ε = {CLAIM:.3g} per release"
    html, terminal = _html_text(report.paths.html), summary_text(report)
    for text in (html, terminal):
        assert expected in text
        assert "no evidence against the claim (this does not prove it)" in text
        assert "FAILED" not in text
    row = json.loads(report.paths.round_json[1].read_text())["summary"]["sites"][0]
    assert row["epsilon"]["empirical"][0]["status"] == "consistent"
    assert row["epsilon"]["empirical"][0]["epsilon_empirical"] == honest


def test_noise_off_value_is_flagged_in_html_terminal_and_json(tmp_path: Path, values: dict) -> None:
    """A noise-off ε̂ above the per-release ε names site and round; the site's ε is no longer called a guarantee."""
    broken = values["broken"]
    job = _job(
        tmp_path,
        [
            _dp_record("site-bad", 0, values["honest"]),
            _dp_record("site-bad", 1, broken),
            _dp_record("site-ok", 1, None),
        ],
    )
    report = build_report(job, tmp_path / "out")
    flag = (
        f"Empirical privacy check FAILED for site-bad in round 1: a canary test measured ε̂ = "
        f"{broken['epsilon_lower']:.3g} for one release (95 % confidence, {TRIALS} trials), above the ε = "
        f"{CLAIM:.3g} per release the accountant charges at δ = 1e-05. At this confidence the stated guarantee is "
        "false: the defense or its accounting is broken."
    )
    html, terminal = _html_text(report.paths.html), summary_text(report)
    for text in (html, terminal, report.plain):
        assert flag in text
    assert 'id="empirical-failed"' in report.paths.html.read_text()
    assert "not valid: the empirical check failed" in html  # the formal-privacy table's band for site-bad
    assert "strong" not in html.split("Formal privacy (ε, δ)")[1].split("Strength bands")[0]
    assert "site-ok round 1: client-level ε̂ not sent: no empirical check" in terminal
    summary = json.loads(report.paths.round_json[1].read_text())["summary"]
    assert summary["empirical_epsilon_failed"] == [flag]
    bad = next(row for row in summary["sites"] if row["site"] == "site-bad")
    assert bad["epsilon"]["empirical"][0]["status"] == "exceeds_claim"
    round_0 = json.loads(report.paths.round_json[0].read_text())["summary"]
    assert round_0["empirical_epsilon_failed"] == []


def test_tampered_status_cannot_hide_a_value_that_disproves_its_claim(tmp_path: Path, values: dict) -> None:
    """A ledger line that says "consistent" next to ε̂ > its own claimed ε is shown as failed."""
    tampered = _dp_record("site-bad", 0, values["broken"])
    tampered["epsilon"]["empirical_status"]["client_dp"] = "consistent"
    report = build_report(_job(tmp_path, [tampered]), tmp_path / "out")
    assert "Empirical privacy check FAILED for site-bad in round 0" in summary_text(report)


def test_mismatch_and_invalid_values_get_a_note_and_are_not_used(tmp_path: Path, values: dict) -> None:
    """A forged claimed ε is a mismatch and garbage is invalid: both are named, neither is compared."""
    forged = {**values["broken"], "claimed_epsilon": 6.0}
    job = _job(tmp_path, [_dp_record("site-forged", 0, forged), _dp_record("site-garbage", 0, "ε̂ is fine")])
    report = build_report(job, tmp_path / "out")
    terminal = summary_text(report)
    assert "site-forged round 0: client-level ε̂ not comparable" in terminal
    assert "differs from the server's own recomputation" in terminal
    assert "site-garbage round 0: client-level ε̂ invalid: the site's value is not a valid empirical ε" in terminal
    assert "FAILED" not in terminal
    statuses = {
        row["site"]: row["epsilon"]["empirical"][0]["status"]
        for row in json.loads(report.paths.round_json[0].read_text())["summary"]["sites"]
    }
    assert statuses == {"site-forged": "mismatch", "site-garbage": "invalid"}


def test_records_without_dp_show_nothing_new(tmp_path: Path) -> None:
    """No formal ε: no ε̂ text, no flag, and the round JSON has none of the new keys."""
    job = _job(tmp_path, [record2("site-plain", 0, "low", "no reconstruction")])
    report = build_report(job, tmp_path / "out")
    for text in (_html_text(report.paths.html), summary_text(report), report.plain):
        assert "ε̂" not in text and "Empirical" not in text
    summary = json.loads(report.paths.round_json[0].read_text())["summary"]
    assert "empirical_epsilon" not in summary and "empirical_epsilon_failed" not in summary
    assert summary["sites"][0]["epsilon"] == {"client_dp": None, "dp_sgd": None, "delta": None}
    assert "empirical" not in summary["details"][0]


def test_looseness_is_the_ratio_of_formal_to_measured_epsilon() -> None:
    """ε = 4.73 against ε̂ = 0.5: the formal bound overstates the true ε by at most 9.46×."""
    value = EmpiricalEpsilon(
        epsilon_lower=0.5, confidence=0.95, trials=4000, delta=DELTA, claimed_epsilon=4.73, method="canary test"
    )
    check = EmpiricalCheck("site-1", 3, "client_dp", "client-level", "release", EmpiricalStatus.CONSISTENT, value)
    assert check.text() == (
        "client-level ε̂ ≥ 0.5 (95 %, 4000 trials) per release vs ε = 4.73 per release (ε / ε̂ = 9.46: the "
        "accountant's ε overstates the true ε by at most 9.46×): no evidence against the claim (this does not prove it)"
    )
    assert check.flag_text() == "" and not check.failed
