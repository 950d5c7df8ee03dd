"""Verdicts with their evidence, the attack ladder and the yardstick, for schema-2 records and older schema-1 ones."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path

from report_cases import SCHEMA_1, SCHEMA_2, LedgerFile, record, record2, scores, stage, write_arrivals

from medpfl_app.contracts.verdict import LEVEL_MEANINGS, RiskLevel
from medpfl_app.reports import build_report
from medpfl_app.reports.terminal import summary_text


def _text(html: str) -> str:
    """What a reader sees: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _section(html: str, section_id: str) -> str:
    start = html.index(f'<section id="{section_id}"')
    return html[start : html.index("</section>", start)]


def _ledger(tmp_path: Path) -> LedgerFile:
    """site-a high (matched), site-b inconclusive (improving, settle), site-c unscored, site-d low — all received."""
    run = tmp_path / "medpfl"
    write_arrivals(run, [(s, 0) for s in ("site-a", "site-b", "site-c", "site-d")])
    ledger = LedgerFile(run / "audit_ledger.jsonl", schema=SCHEMA_2)
    ledger.append(
        record2(
            "site-a",
            0,
            "high",
            "screening matched the update (loss 0.5 → 1e-11); the site measured SSIM 0.97",
            site_scores={
                **scores(0.97, 31.0, 1.0),
                "identifiability": 1.0,
                "identifiability_chance": 0.25,
                "identifiability_excess": 0.75,
                "identifiability_p_value": 0.004,
            },
        )
    )
    ledger.append(
        record2(
            "site-b",
            0,
            "inconclusive",
            "the full attack was still improving when its 240 s budget ended",
            settle="raise time_limit_s to 480 s",
            ladder=[
                stage("screening", "stalled", 0.4, 0.02, stop="stalled"),
                stage("full", "improving", 0.6, 0.003, iterations=500, restarts=2, wall=236.5, stop="time_limit"),
            ],
            site_scores=scores(0.2, 12.0, 0.0),
        )
    )
    ledger.append(
        record2(
            "site-c",
            0,
            "unscored",
            "the attack matched the update but site-c did not answer",
            settle="site-c's scores of this update",
            ladder=[stage("screening", "diverged", "inf", "nan", stop="diverged")],
            site_scores={"status": "unavailable", "reason": "no reply from site-c within 30 s"},
        )
    )
    ledger.append(record2("site-d", 0, "low", "ladder complete and matched; the site measured best SSIM 0.12"))
    return ledger


def test_headline_is_the_worst_level_with_the_counts_beside_it(tmp_path: Path) -> None:
    """HIGH headline with its meaning, evidence and the inconclusive/unscored/not audited/lost counts next to it."""
    report = build_report(_ledger(tmp_path).path, tmp_path / "out")
    verdict = report.verdict
    assert verdict["risk"] == "high" and verdict["meaning"] == LEVEL_MEANINGS[RiskLevel.HIGH]
    assert verdict["headline"].startswith(
        "Worst risk HIGH: site-a, round 0 (SSIM 0.97, PSNR 31.0 dB, attack "
        "success 100%, identifiability 1.00 (chance 0.25, excess +0.75, p = 0.004)"
    )
    assert verdict["evidence"].startswith("screening matched the update")
    section = _text(_section(report.paths.html.read_text(), "verdict"))
    assert "Verdict: HIGH" in section and LEVEL_MEANINGS[RiskLevel.HIGH] in section
    assert (
        "Coverage: 4 received, 4 audited (1 high, 0 medium, 1 unscored, 1 inconclusive, 1 low), 0 not audited, "
        "0 not auditable, 0 lost"
    ) in section


def test_each_record_shows_evidence_settle_and_its_ladder(tmp_path: Path) -> None:
    """Cell tooltips carry evidence + settle; the details table has stages, spent budget, losses, convergence."""
    html = build_report(_ledger(tmp_path).path, tmp_path / "out").paths.html.read_text()
    cell = re.search(
        r'<td class="cell risk-inconclusive" data-site="site-b" data-round="0" '
        r'data-risk="inconclusive" title="([^"]*)"',
        html,
    )
    assert cell is not None
    assert cell.group(1) == (
        "the full attack was still improving when its 240 s budget ended — would settle it: raise time_limit_s to 480 s"
    )
    details = _section(html, "records")
    row_b = details[details.index('data-site="site-b"') :]
    row_b = _text(row_b[: row_b.index("</tr>")])
    assert (
        "inconclusive the full attack was still improving when its 240 s budget ended raise time_limit_s to "
        "480 s" in row_b
    )
    assert "screening → full (ladder complete)" in row_b
    assert (
        "full: gradinv on 1 image × 1 local step, exact update, whole update; 500 iterations × 2 restarts, "
        "236.5 s; matching loss 0.6 → 0.003; improving; stopped: time_limit"
    ) in row_b
    assert "700 iterations, 3 restarts, 239.5 s attack wall time, 239.5 s of a 240 s time budget" in row_b
    assert "0.4 → 0.003; improving; stopped: time_limit" in row_b  # start of the first stage → end of the last
    row_c = details[details.index('data-site="site-c"') :]
    row_c = _text(row_c[: row_c.index("</tr>")])
    assert "inf → nan; diverged; stopped: diverged" in row_c and "site-c's scores of this update" in row_c
    row_a = _text(details[details.index('data-site="site-a"') :].split("</tr>")[0])
    assert "1.00 (chance 0.25, excess +0.75, p = 0.004)" in row_a


def test_the_yardstick_is_stated_in_words_from_the_records(tmp_path: Path) -> None:
    """Attack, threat model, budget spent, success threshold, SSIM/PSNR settings, identifiability, significance."""
    report = build_report(_ledger(tmp_path).path, tmp_path / "out")
    section = _text(_section(report.paths.html.read_text(), "yardstick"))
    assert (
        "A1: attack gradinv (threat model: honest-but-curious server) on 4 updates of site-a, site-b, site-c, "
        "site-d" in section
    )
    assert (
        "Attack success rate: the share of the round's images that the attack reconstructed with an SSIM at or "
        "above the success threshold" in section
    )
    assert (
        "Budget spent: 1300 iterations and 6 restarts over 4 audited updates, 248.5 s of attack wall time; "
        "time budget per update 240 s, 248.5 s spent in total" in section
    )
    assert "success threshold: an image counts as reconstructed at SSIM ≥ 0.9" in section
    assert "SSIM: Gaussian window σ = 1.5, 11 px, data range 1 (implementation: torchmetrics" in section
    assert "PSNR: data range 1" in section
    assert "identifiability: share of reconstructions whose most similar site image is the true one" in section
    assert "significance: identification counts as above chance at significance level 0.01" in section
    assert (
        "stages run: screening on 4, full on 1 of 4 updates; ladder complete on 4; whole update attacked on 4; "
        "last stage ended 1 diverged, 1 improving, 2 matched" in section
    )
    line = next(x for x in summary_text(report).splitlines() if x.startswith("Yardstick: "))
    assert "SSIM ≥ 0.9" in line and "σ = 1.5, 11 px, data range 1" in line and "significance level 0.01" in line


def test_round_json_carries_evidence_settle_details_and_yardstick(tmp_path: Path) -> None:
    """The round JSON holds per-site evidence and settle, per-record ladder details and the yardstick."""
    build_report(_ledger(tmp_path).path, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "report_round_0.json").read_text())["summary"]
    sites = {s["site"]: s for s in summary["sites"]}
    assert sites["site-b"]["risk"] == "inconclusive" and sites["site-b"]["settle"] == "raise time_limit_s to 480 s"
    assert sites["site-a"]["identifiability_p_value"] == 0.004
    details = {d["site"]: d for d in summary["details"]}
    assert details["site-b"]["ladder"] == ["screening", "full"] and details["site-b"]["iterations"] == 700
    assert details["site-c"]["loss_start"] == "inf" and details["site-c"]["loss_end"] == "nan"
    settings = summary["yardstick"]["metric_settings"]
    assert settings[0]["recorded"] is True and settings[0]["settings"]["significance:"].endswith("level 0.01")


def test_unscored_and_inconclusive_lead_when_nothing_was_measured_worse(tmp_path: Path) -> None:
    """Without high or medium, the headline is UNSCORED, then INCONCLUSIVE, with what would settle it."""
    run = tmp_path / "medpfl"
    write_arrivals(run, [("site-b", 0), ("site-d", 0)])
    ledger = LedgerFile(run / "audit_ledger.jsonl", schema=SCHEMA_2)
    ledger.append(record2("site-b", 0, "inconclusive", "still improving", settle="raise time_limit_s to 480 s"))
    ledger.append(record2("site-d", 0, "low", "ladder complete"))
    report = build_report(ledger.path)
    assert report.verdict["risk"] == "inconclusive"
    assert report.verdict["headline"].startswith("INCONCLUSIVE: 1 audited update is inconclusive, e.g. site-b, round 0")
    assert report.verdict["settle"] == "raise time_limit_s to 480 s"
    assert "would settle it: raise time_limit_s to 480 s" in summary_text(report)


def test_schema_1_levels_are_mapped_and_their_yardstick_is_not_invented(tmp_path: Path) -> None:
    """An older ledger's unknown becomes not audited / not auditable / inconclusive; no metric setting is filled in."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl", schema=SCHEMA_1)
    ledger.append(record("a", 0, status="not_audited", reason="queue full", risk="unknown", site_scores=None))
    ledger.append(record("b", 0, status="not_auditable", reason="HE", risk="unknown", site_scores=None))
    ledger.append(record("c", 0, risk="unknown", site_scores={"status": "unavailable", "reason": "site offline"}))
    ledger.append(record("d", 0, risk="low", site_scores={**scores(0.1, 10.0, 0.0), "ssim_threshold": 0.9}))
    report = build_report(ledger.path)
    levels = {c.site: c.risk for c in report.view.cells.values()}
    assert levels == {"a": "not_audited", "b": "not_auditable", "c": "inconclusive", "d": "low"}
    c = report.view.cell("c", 0)
    assert c is not None and c.settle is not None and "site's scores" in c.settle
    assert "derived by the report from a medpfl.audit/1 record without a verdict" in c.evidence
    assert report.verdict["risk"] == "inconclusive"
    html = report.paths.html.read_text()
    section = _text(_section(html, "yardstick"))
    assert "Metric settings: not recorded by these records" in section
    assert "success threshold: an image counts as reconstructed at SSIM ≥ 0.9 (as the site scores state)" in section
    assert "σ" not in section and "significance level" not in section
    assert "SSIM: not recorded in these records" in section


def test_verdict_and_risk_disagreeing_show_the_worse_and_say_so(tmp_path: Path) -> None:
    """A record whose risk and verdict level differ is shown at the worse one, with the disagreement stated."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl", schema=SCHEMA_2)
    ledger.append(record2("a", 0, "low", "ladder complete", risk="medium"))
    cell = build_report(ledger.path).view.cell("a", 0)
    assert cell is not None and cell.risk == "medium"
    assert "the record's risk medium and its verdict's level low differ" in cell.evidence
