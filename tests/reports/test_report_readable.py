"""A report a reader understands unaided: job name and purpose, a plain verdict, tables in words, stable tags,
ε in words, model utility, counts of unreadable lines, and the run's own reconstructions."""

from __future__ import annotations

import json
import random
import re
from html import unescape
from pathlib import Path

import pytest
from report_cases import (
    REPRESENTATIVE_TEXTS,
    SCHEMA_2,
    THREAT,
    LedgerFile,
    record,
    record2,
    write_job,
    write_representative_run,
)

from medpfl_app.errors import MedPFLError
from medpfl_app.reports import build_report
from medpfl_app.reports.privacy import EPSILON_BANDS, epsilon_band
from medpfl_app.reports.terminal import summary_text

KEY_VALUE = re.compile(r"\b[a-z_]+=[\w.-]")


def _text(html: str) -> str:
    """What a reader sees: style and tags dropped, entities decoded, whitespace collapsed."""
    html = re.sub(r"<style>.*?</style>", " ", html, flags=re.DOTALL)
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def _section(html: str, section_id: str) -> str:
    start = html.index(f'<section id="{section_id}"')
    return html[start : html.index("</section>", start)]


def test_header_names_the_job_from_its_meta_not_the_simulator_run(tmp_path: Path) -> None:
    """The simulator's records say ``simulate_job``; the header names the job and its purpose from meta.json."""
    report = build_report(write_representative_run(tmp_path / "sim"), tmp_path / "out")
    html = report.paths.html.read_text()
    assert "<title>MedPFL privacy audit report — fedavg_audit_demo</title>" in html
    header = _text(html[html.index("<header>") : html.index("</header>")])
    assert "MedPFL privacy audit report: fedavg_audit_demo" in header
    assert "What this job does: Server-side audit of FedAvg on the synthetic demo data" in header
    assert "Job name from the job's meta.json" in header and "run id in the records: simulate_job" in header
    assert report.verdict["job"]["name"] == "fedavg_audit_demo"


def test_without_meta_the_simulator_run_name_is_never_shown_as_the_job(tmp_path: Path) -> None:
    """No meta.json and only ``simulate_job`` in the records: the name is 'not recorded', and why."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl")
    ledger.append(record("site-a", 0, job_id="simulate_job"))
    report = build_report(ledger.path)
    assert report.job is not None and report.job.name is None
    assert "records name only the simulator's run folder (simulate_job)" in report.job.source
    assert "<h1>MedPFL privacy audit report: job name not recorded</h1>" in report.paths.html.read_text()
    other = LedgerFile(tmp_path / "b" / "audit_ledger.jsonl")
    other.append(record("site-a", 0, job_id="449ed2ed"))
    named = build_report(other.path).job
    assert named is not None and named.name == "449ed2ed" and "records' job id" in named.source


def test_plain_verdict_says_per_site_what_leaked_and_what_would_settle_it(tmp_path: Path) -> None:
    """One paragraph first: rounds, the high site and how often, the inconclusive sites with why and the hint."""
    report = build_report(write_representative_run(tmp_path / "sim"), tmp_path / "out")
    plain = report.plain
    assert plain.startswith(
        "Overall HIGH. In 5 rounds of the job fedavg_audit_demo with 3 sites, the server could "
        "reconstruct recognisable images from site-1's updates in 4 of 5 rounds (high"
    )
    assert (
        "site-2 and site-3 were inconclusive in 10 updates: the attack did not finish within its 10 s budget. "
        "What would settle it: raise time_limit_s in the audit plan to about 40 s (now 10 s)."
    ) in plain
    assert "site-3 ended at ε = 12.3 (client-level, δ = 1e-05): very weak (little formal protection)" in plain
    assert "the model did not learn" in plain
    assert not KEY_VALUE.search(plain), plain
    verdict = _text(_section(report.paths.html.read_text(), "verdict"))
    assert verdict.index("Verdict: HIGH") < verdict.index("Overall HIGH. In 5 rounds") < verdict.index("In detail:")
    assert report.verdict["plain"] == plain
    assert "In plain words: " + plain in summary_text(report)


def test_configuration_tags_do_not_depend_on_record_order(tmp_path: Path) -> None:
    """Shuffling the ledger's lines (audits finish in any order) keeps every site-round's configuration tag."""
    ledger = write_job(tmp_path / "job", truncated_tail=False, metrics=False)
    lines = ledger.read_text().splitlines(keepends=True)
    tags = []
    for seed in range(4):
        random.Random(seed).shuffle(lines)
        shuffled = tmp_path / f"shuffled_{seed}" / "audit_ledger.jsonl"
        shuffled.parent.mkdir()
        shuffled.write_text("".join(lines))
        view = build_report(shuffled).view
        tags.append({key: cell.config.tag for key, cell in view.cells.items() if cell.config is not None})
        assert [c.tag for c in view.configs] == ["A1", "A2"]
    assert all(found == tags[0] for found in tags[1:])
    assert tags[0][("site-hr", 1)] == "A1" and tags[0][("site-dp", 0)] == "A2"


def test_measured_budget_fields_do_not_split_a_configuration(tmp_path: Path) -> None:
    """Records that differ only in what the audit measured (best stage, iterations, time spent) share one tag."""
    ledger = LedgerFile(tmp_path / "audit_ledger.jsonl", schema=SCHEMA_2)
    for r, best in enumerate((0, 1, 2)):
        base = record2("site-a", r, "low", "matched")
        base["attack_budget"] = {**base["attack_budget"], "best_stage": best, "time_spent_s": 1.0 + r}
        ledger.append(base)
    view = build_report(ledger.path).view
    assert [c.tag for c in view.configs] == ["A1"] and view.configs[0].uses_text() == "3 updates of site-a"


def test_configuration_and_site_tables_are_in_words(tmp_path: Path) -> None:
    """One row per configuration and per site: model, batch size, local steps, defenses with their parameters."""
    report = build_report(write_representative_run(tmp_path / "sim"), tmp_path / "out")
    html = report.paths.html.read_text()
    sites = _section(html, "defenses")
    rows = dict(re.findall(r'<tr data-site="([^"]+)">(.*?)</tr>', sites, re.DOTALL))
    assert list(rows) == ["site-1", "site-2", "site-3"]
    site_3 = _text(rows["site-3"])
    assert site_3.startswith("site-3 0–4 lenet_sigmoid (10,612 parameters) 8 2 learning rate 0.05, optimiser sgd")
    assert "client dp (clipping norm 1, noise multiplier 1) — formal guarantee: (ε, δ)-DP at client level" in site_3
    configs = _text(html[html.index('<table id="configs"') :].split("</table>")[0])
    assert "A1 gradinv 1 restart, time budget 10 s per update, at most 4 images attacked per update" in configs
    assert "batch size 1" in configs and "batch size 8" in configs
    for table in (sites, configs):
        assert not KEY_VALUE.search(_text(table)), table


def test_epsilon_is_stated_with_delta_band_and_a_warning_when_weak(tmp_path: Path) -> None:
    """ε 12.3 at δ 1e-5: 'very weak' in the privacy table, a visible warning, and the formal-only scope."""
    html = build_report(write_representative_run(tmp_path / "sim"), tmp_path / "out").paths.html.read_text()
    warning = _text(html[html.index('id="weak-epsilon"') :].split("</div>")[0])
    assert "site-3: ε = 12.3 (client-level) at δ = 1e-05 after round 4: very weak (little formal protection)" in warning
    privacy = _text(_section(html, "privacy"))
    assert "site-3 12.3 client-level 1e-05 4 very weak (little formal protection)" in privacy
    assert "only for the differential-privacy defenses" in privacy and "heuristics" in privacy


@pytest.mark.parametrize(
    ("epsilon", "band"),
    [
        (0.5, "strong"),
        (1.0, "strong"),
        (2.9, "moderate"),
        (8.0, "weak"),
        (8.01, "very weak (little formal protection)"),
        (12.3, "very weak (little formal protection)"),
    ],
)
def test_epsilon_bands(epsilon: float, band: str) -> None:
    """Band edges are inclusive at 1, 3 and 8; the bands run in increasing ε."""
    assert epsilon_band(epsilon)[0] == band
    bounds = [bound for bound, _, _ in EPSILON_BANDS]
    assert bounds == sorted(bounds)


def test_a_model_that_did_not_learn_is_flagged_next_to_the_leakage(tmp_path: Path) -> None:
    """Accuracy at chance for 4 classes and a validation loss rising to 33.4: warned in the verdict and utility."""
    report = build_report(write_representative_run(tmp_path / "sim"), tmp_path / "out")
    assert report.utility is not None and report.utility.learned is False
    assert report.utility.num_classes == 4
    html = report.paths.html.read_text()
    utility = _text(_section(html, "utility"))
    assert "4 classes (from the audit records): a blind guess scores accuracy 0.25" in utility
    assert "4 0.250 33.4" in utility  # round, accuracy, loss
    assert "validation loss did not decrease: 1.4 in round 0, 33.4 in round 4" in utility
    assert "far above any model that learned" in utility
    assert 'id="model-not-learned"' in _section(html, "verdict")
    assert report.verdict["model_learned"] is False


def test_a_model_that_learned_is_not_flagged(tmp_path: Path) -> None:
    """Accuracy well above chance and a falling loss: no warning."""
    write_job(tmp_path / "job")
    metrics = tmp_path / "job" / "workspace" / "metrics" / "round_metrics.jsonl"
    metrics.write_text(
        "".join(
            json.dumps(
                {
                    "round": r,
                    "aggregated_metrics": [
                        {"name": "accuracy", "value": 0.4 + 0.2 * r},
                        {"name": "val_loss", "value": 1.2 - 0.3 * r},
                    ],
                }
            )
            + "\n"
            for r in range(3)
        )
    )
    ledger = next((tmp_path / "job").rglob("audit_ledger.jsonl"))
    with open(ledger, "a", encoding="utf-8") as handle:  # after the truncated tail: a record naming 4 classes
        handle.write(
            "\n"
            + json.dumps(
                {**record("site-x", 0, model={"network": "cnn", "num_classes": 4}), "schema": "medpfl.audit/1"}
            )
            + "\n"
        )
    report = build_report(tmp_path / "job", tmp_path / "out")
    assert report.utility is not None and report.utility.learned is True and not report.utility.warnings
    assert 'id="model-not-learned"' not in report.paths.html.read_text()


def test_unreadable_lines_are_counted_and_named_by_file(tmp_path: Path) -> None:
    """'N lines of FILE could not be read (lines …)': a count and the file, never a bare line number."""
    run = write_representative_run(tmp_path / "sim")
    metrics = run / "metrics" / "round_metrics.jsonl"
    metrics.write_text(metrics.read_text() + "{broken\nnot json either\n")
    with open(run / "medpfl" / "audit_ledger.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"schema": "medpfl.au')
    report = build_report(run, tmp_path / "out")
    text = _text(report.paths.html.read_text())
    assert "1 line of audit_ledger.jsonl could not be read and was skipped (line 16)" in text
    assert "Validation metrics: 2 lines of round_metrics.jsonl could not be read and were skipped (lines 6, 7)" in text


def test_the_runs_own_stored_reconstructions_are_shown(tmp_path: Path) -> None:
    """A run that stored reconstructions (demo job) shows them re-rendered; --no-thumbnails hides them, with why."""
    run = write_representative_run(tmp_path / "sim")
    shown = build_report(run).paths.html.read_text()  # re-rendered beside the ledger, as `medpfl demo` does
    section = _section(shown, "thumbnails")
    assert section.count("data:image/png;base64,") == 2 and '<tr class="originals">' in section
    hidden = build_report(run, tmp_path / "out", stored_thumbnails=False).paths.html.read_text()
    assert "data:image" not in hidden and "rendered with reconstructions turned off (--no-thumbnails)" in hidden
    bare = build_report(write_representative_run(tmp_path / "bare", thumbnails=False)).paths.html.read_text()
    assert "Not shown (default): this run stored no reconstructions" in _text(_section(bare, "thumbnails"))


def test_pdf_without_chromium_is_one_clear_error_naming_how_to_install(tmp_path: Path, monkeypatch, capsys) -> None:
    """`medpfl report --pdf` without a browser fails before any work, naming the package to install."""
    from medpfl_app.cli.main import main

    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("MEDPFL_CHROMIUM", raising=False)
    run = write_representative_run(tmp_path / "sim")
    with pytest.raises(MedPFLError, match="needs headless Chromium") as error:
        from medpfl_app.reports.pdf import find_chromium

        find_chromium()
    assert "apt-get install chromium" in (error.value.fix or "")
    assert main(["report", str(run), "--out", str(tmp_path / "out"), "--pdf"]) != 0
    assert "apt-get install chromium" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_every_threshold_and_setting_is_in_the_page_text(tmp_path: Path) -> None:
    """The success threshold, metric settings, risk thresholds, budget, ε and bands are all stated in words."""
    text = _text(build_report(write_representative_run(tmp_path / "sim"), tmp_path / "out").paths.html.read_text())
    missing = [needle for needle in REPRESENTATIVE_TEXTS if needle not in text]
    assert missing == []
    assert THREAT["declared"] in text


def test_plain_verdict_of_an_all_low_run_with_a_lost_update(tmp_path: Path) -> None:
    """Every audited update low, one received update lost: inconclusive, the lows counted, the gap named."""
    from report_cases import write_arrivals

    run = tmp_path / "medpfl"
    write_arrivals(run, [("site-a", 0), ("site-b", 0), ("site-a", 1), ("site-b", 1)])
    ledger = LedgerFile(run / "audit_ledger.jsonl", schema=SCHEMA_2)
    for round_number in (0, 1):
        ledger.append(record2("site-a", round_number, "low", "matched; best SSIM 0.1"))
    ledger.append(record2("site-b", 0, "low", "matched; best SSIM 0.1"))
    plain = build_report(ledger.path).plain
    assert plain.startswith(
        "Overall INCONCLUSIVE. In 2 rounds of the job job-42 with 2 sites, the attack on every "
        "audited update of site-a and site-b (3 updates) ran to the end without reconstructing "
        "any image (low: under this attack and budget, not a guarantee"
    )
    assert "1 update was received but lost before the audit recorded it: gaps in the audit, not evidence" in plain
    assert "No site used a formal differential-privacy defense" in plain
    assert "Whether the model learned is unknown: no validation metrics were recorded." in plain
    assert not KEY_VALUE.search(plain)
