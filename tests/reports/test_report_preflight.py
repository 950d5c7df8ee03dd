"""The pre-flight opens the audit report: read from ``preflight.json`` beside the ledger, validated, escaped."""

from __future__ import annotations

import json
from pathlib import Path

from report_cases import write_job

from medpfl_app.audit.preflight import JobPreflight, JobTraining, ProbeResult, SitePreflight, site_risk_facts
from medpfl_app.audit.preflight.assessment import WhatIf
from medpfl_app.audit.preflight.factors import Change, Factor, RiskFactor
from medpfl_app.contracts.verdict import RiskLevel, Verdict
from medpfl_app.reports.render import build_report
from medpfl_app.reports.terminal import summary_text


def _preflight(site: str = "site-hr") -> dict:
    probe = ProbeResult(
        Verdict(RiskLevel.HIGH, "probe reconstructed"), 0.97, 1.0, 1.0, "gradinv, 120 iterations", 1, 3.0
    )
    after = ProbeResult(Verdict(RiskLevel.INCONCLUSIVE, "nothing"), 0.12, 0.0, 1.0, "gradinv", 16, 3.0)
    entry = SitePreflight(
        site=site,
        facts=site_risk_facts(site, [6, 6], batch_size=1, local_epochs=1, max_steps=1),
        factors=(RiskFactor(Factor.BATCH_OF_ONE, "batch size 1: one image per gradient", Change.BATCH_16),),
        probe=probe,
        what_ifs=(WhatIf(Change.BATCH_16, after),),
    )
    silent = SitePreflight(site="site-dp", facts=None, problem="the site sent no pre-flight facts")
    return JobPreflight(job=JobTraining(network="lenet_sigmoid"), sites=(entry, silent)).to_json()


def _render(tmp_path: Path, preflight: object | None) -> tuple[str, dict]:
    html, summary, _ = _render_all(tmp_path, preflight)
    return html, summary


def _render_all(tmp_path: Path, preflight: object | None) -> tuple[str, dict, str]:
    ledger = write_job(tmp_path)
    if preflight is not None:
        text = preflight if isinstance(preflight, str) else json.dumps(preflight)
        (ledger.parent / "preflight.json").write_text(text)
    report = build_report(ledger, tmp_path / "out")
    return report.paths.html.read_text(), dict(report.verdict), summary_text(report)


def test_the_preflight_is_the_first_section_with_measured_advice(tmp_path: Path) -> None:
    html, summary = _render(tmp_path, _preflight())

    assert html.index('id="preflight"') < html.index('id="verdict"')
    row = html[html.index('data-site="site-hr"', html.index('id="preflight-table"')) :]
    row = row[: row.index("</tr>")]
    assert "HIGH RISK" in row and "mean SSIM 0.97" in row
    assert "batch size 1: one image per gradient" in row
    assert "If you train with batch size 16: mean SSIM 0.12" in row
    assert "no pre-flight: the site sent no pre-flight facts" in html
    assert summary["preflight"] == {
        "present": True,
        "refused": False,
        "sites": {"site-hr": "high", "site-dp": "inconclusive"},
        "note": None,
    }


def test_the_terminal_summary_names_each_site_preflight_level(tmp_path: Path) -> None:
    _, _, text = _render_all(tmp_path, _preflight())

    assert "Pre-flight before round 1 (probe attack on synthetic data): site-hr high, site-dp inconclusive" in text


def test_without_a_preflight_the_report_says_so(tmp_path: Path) -> None:
    html, summary = _render(tmp_path, None)

    assert 'id="preflight-none"' in html and "ran without the pre-flight check" in html
    assert summary["preflight"]["present"] is False


def test_a_foreign_or_broken_preflight_is_named_not_shown(tmp_path: Path) -> None:
    html, _ = _render(tmp_path, {"schema": "someone-else/1", "sites": [{"site": "x", "level": "high"}]})
    assert "is not a medpfl.preflight/1 pre-flight" in html and 'id="preflight-table"' not in html

    html, _ = _render(tmp_path / "b", "{not json")
    assert "preflight.json is unreadable" in html


def test_site_text_in_the_preflight_is_escaped(tmp_path: Path) -> None:
    content = _preflight()
    content["sites"][0]["summary"] = "evil\x1b[31m <script>alert(1)</script>"

    html, _ = _render(tmp_path, content)

    assert "<script>alert(1)" not in html and "\x1b" not in html
    assert "&lt;script&gt;" in html
