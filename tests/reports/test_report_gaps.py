"""Coverage against the job's plan: a failed or aborted job's report names the expected sites that sent nothing, the
rounds that never ran and how the job ended; a complete job reports no gap; without the job's files, the plan is
unknown and the report says so.

Each case is a tiny downloaded-job folder as ``nvflare job download`` leaves it: ``<job id>/meta.json`` (the server's
copy, with ``status``), ``<job id>/workspace/`` (the server's run folder: a deployed ``meta.json`` without status,
``app_server/config/config_fed_server.json`` and ``medpfl/`` with the ledger and the arrivals file).
"""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from typing import Any

from report_cases import SCHEMA_2, LedgerFile, record2, stage, write_arrivals

from medpfl_app.cli.main import main
from medpfl_app.reports import build_report
from medpfl_app.reports.plan import read_plan, span_text
from medpfl_app.reports.terminal import summary_text

JOB_ID = "2f1c7a9e-0d5b-4c1e-9a43-7b1d2f0e8c11"


def _low(site: str, round_number: int) -> dict[str, Any]:
    return record2(
        site,
        round_number,
        "low",
        f"{site} r{round_number}: ladder complete, matched, best SSIM 0.10",
        ladder=[stage("screening", "stalled", 0.4, 0.01), stage("full", "matched", 0.5, 1e-11)],
    )


def _server_config(num_rounds: Any, **args: Any) -> dict[str, Any]:
    return {
        "format_version": 2,
        "workflows": [
            {
                "id": "controller",
                "path": "nvflare.app_common.workflows.fedavg.FedAvg",
                "args": {"num_rounds": num_rounds, **args},
            },
            {
                "id": "cross_site_validate",
                "path": "nvflare.app_common.workflows.cross_site_model_eval.CrossSiteModelEval",
                "args": {},
            },
        ],
    }


def _downloaded_job(
    root: Path,
    updates: list[tuple[str, int]],
    *,
    meta: dict[str, Any] | None,
    config: dict[str, Any] | None,
    arrivals: bool = True,
) -> Path:
    """``<root>/<job id>/`` with the server's meta (``meta``), the run folder and its ledger + arrivals."""
    job = root / JOB_ID
    run = job / "workspace"
    (run / "medpfl").mkdir(parents=True)
    if meta is not None:
        (job / "meta.json").write_text(json.dumps(meta))
        deployed = {k: v for k, v in meta.items() if k != "status"}  # NVFlare's run-folder copy: no status
        (run / "meta.json").write_text(json.dumps(deployed))
    if config is not None:
        (run / "app_server" / "config").mkdir(parents=True)
        (run / "app_server" / "config" / "config_fed_server.json").write_text(json.dumps(config))
    if arrivals:
        write_arrivals(run / "medpfl", updates)
    ledger = LedgerFile(run / "medpfl" / "audit_ledger.jsonl", schema=SCHEMA_2)
    for site, round_number in updates:
        ledger.append(_low(site, round_number))
    return job


def _meta(status: str, sites: list[Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "name": "fedavg_audit",
        "job_id": JOB_ID,
        "status": status,
        "min_clients": 2,
        "deploy_map": {"app_server": ["server"], "app_site": sites or ["site-1", "site-2"]},
        **extra,
    }


def _html_text(path: Path) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", path.read_text())).split())


def test_aborted_job_names_the_missing_site_the_rounds_never_run_and_the_end_status(tmp_path: Path) -> None:
    """site-2 sent round 0 and never rejoined; the job was aborted in round 1 of a 6-round plan (rounds 0–5)."""
    job = _downloaded_job(
        tmp_path,
        [("site-1", 0), ("site-2", 0), ("site-1", 1)],
        meta=_meta("FINISHED:ABORTED"),
        config=_server_config(6),
    )

    report = build_report(job, tmp_path / "out")

    ended = "The job ended FINISHED:ABORTED after round 1 (rounds 0–5 were planned)."
    for text in (report.plain, summary_text(report), _html_text(report.paths.html)):
        assert ended in text
        assert "site-2 sent nothing in round 1." in text
        assert "Rounds 2–5 never ran." in text
        assert "Every expected site" not in text
    summary = summary_text(report)
    assert "  against the plan: site-2 sent nothing in round 1." in summary.splitlines()
    html = report.paths.html.read_text()
    assert 'data-has-gap="yes"' in html
    assert re.search(r'<tr data-site="site-2">.*?data-round="1" data-state="missing">nothing sent<', html, re.S)
    assert re.search(r'<tr data-site="site-1">.*?data-round="5" data-state="never_ran">round never ran<', html, re.S)
    plan = report.verdict["job"]["plan"]
    assert (plan["sites"], plan["rounds"], plan["status"]) == (
        ["site-1", "site-2"],
        [0, 1, 2, 3, 4, 5],
        "FINISHED:ABORTED",
    )
    assert plan["status_file"] == str(job / "meta.json")  # the run folder's copy has no status
    assert plan["server_config"] == str(job / "workspace" / "app_server" / "config" / "config_fed_server.json")
    round_1 = json.loads((tmp_path / "out" / "report_round_1.json").read_text())
    assert round_1["job"]["plan"]["status"] == "FINISHED:ABORTED"


def test_complete_job_reports_no_gap(tmp_path: Path) -> None:
    """Both sites in all 3 planned rounds, FINISHED:COMPLETED: no missing site, no round that never ran."""
    job = _downloaded_job(
        tmp_path,
        [(s, r) for r in range(3) for s in ("site-1", "site-2")],
        meta=_meta("FINISHED:COMPLETED"),
        config=_server_config(3),
    )

    report = build_report(job, tmp_path / "out")

    complete = "Every expected site (site-1 and site-2) sent an update in every planned round (rounds 0–2)."
    for text in (report.plain, summary_text(report), _html_text(report.paths.html)):
        assert "The job ended FINISHED:COMPLETED after round 2 (rounds 0–2 were planned)." in text
        assert complete in text
        assert "sent nothing" not in text and "never ran" not in text and "unknown for" not in text
    assert 'data-has-gap="no"' in report.paths.html.read_text()


def test_job_without_meta_or_config_says_coverage_against_the_plan_is_unknown(tmp_path: Path) -> None:
    """No meta.json, no server config: nothing is invented, the report says the plan is unknown and why."""
    job = _downloaded_job(tmp_path, [("site-1", 0), ("site-1", 1)], meta=None, config=None)

    report = build_report(job, tmp_path / "out")

    unknown = "Coverage against the job's plan is unknown for the expected sites and the planned rounds"
    for text in (report.plain, summary_text(report), _html_text(report.paths.html)):
        assert unknown in text
        assert "sent nothing" not in text and "never ran" not in text and "Every expected site" not in text
    assert "The job's end status is not recorded" in summary_text(report)
    assert "The job's end status" not in report.plain  # the paragraph only states a status that is known
    assert 'data-plan-known="no"' in report.paths.html.read_text()
    assert report.verdict["job"]["plan"]["sites"] is None and report.verdict["job"]["plan"]["rounds"] is None


def test_all_sites_deploy_map_uses_the_job_clients_and_a_silent_round(tmp_path: Path) -> None:
    """``@ALL`` resolves through ``job_clients``; site-3 never sent; round 1 had nothing from anyone; with
    ``start_round`` 1 the plan is rounds 1–3 (round 0 ran outside it)."""
    meta = {
        "name": "fedavg_audit",
        "status": "FINISHED:EXECUTION_EXCEPTION",
        "deploy_map": {"app": ["@ALL"]},
        "job_clients": [{"name": "site-1"}, {"name": "site-2"}, {"name": "site-3"}],
    }
    job = _downloaded_job(
        tmp_path,
        [("site-1", 0), ("site-2", 0), ("site-1", 2), ("site-2", 2)],
        meta=meta,
        config=_server_config(3, start_round=1),
    )

    text = summary_text(build_report(job, tmp_path / "out"))

    assert "The job ended FINISHED:EXECUTION_EXCEPTION after round 2 (rounds 1–3 were planned)." in text
    assert "site-3 sent nothing in round 2." in text
    assert "No site sent anything in round 1." in text
    assert "Round 3 never ran." in text
    assert "Round 0 ran outside the planned rounds 1–3." in text


def test_without_arrivals_a_missing_site_is_a_missing_record_not_a_site_that_sent_nothing(tmp_path: Path) -> None:
    """Only the ledger: whether site-2 sent anything is unknown, and the words say so."""
    job = _downloaded_job(
        tmp_path,
        [("site-1", 0), ("site-2", 0), ("site-1", 1)],
        meta=_meta("FINISHED:ABORTED"),
        config=_server_config(2),
        arrivals=False,
    )

    text = summary_text(build_report(job, tmp_path / "out"))

    assert "site-2 has no audit record (no arrivals file says if it sent any) in round 1." in text
    assert "sent nothing" not in text


def test_hostile_plan_values_are_bounded_and_shown_escaped(tmp_path: Path, capsys) -> None:
    """A status that is not a status, a billion rounds and a site name with a terminal escape: none is believed or
    reaches the terminal raw."""
    evil = "site-2\x1b[2J<b>"
    job = _downloaded_job(
        tmp_path,
        [("site-1", 0)],
        meta=_meta("FINISHED:ABORTED\x1b[31m<script>", sites=["site-1", evil]),
        config=_server_config(10**9),
    )

    assert main(["report", str(job), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out

    plan = read_plan(job / "workspace" / "medpfl" / "audit_ledger.jsonl")
    assert plan.status is None and plan.rounds is None and plan.sites == ("site-1", evil)
    assert "\x1b" not in out
    assert "site-2\\x1b[2J<b> sent nothing in round 0." in out
    assert "num_rounds / start_round are not usable round numbers" in out
    assert f"The job's end status is unknown: the status in {job / 'meta.json'} is not an NVFlare job status" in out
    html = (tmp_path / "out" / "audit_report.html").read_text()
    assert "\x1b" not in html and "site-2\x1b[2J<b>" not in html and "ABORTED" not in html
    assert "site-2\\x1b[2J&lt;b&gt; sent nothing in round 0." in html


def test_span_text_groups_consecutive_rounds() -> None:
    """Rounds read as runs."""
    assert span_text([3]) == "round 3"
    assert span_text([5, 2, 3, 4]) == "rounds 2–5"
    assert span_text([1, 3, 4, 7]) == "rounds 1, 3–4, 7"


def test_a_fedavg_workflow_without_num_rounds_plans_nvflares_default() -> None:
    """NVFlare's exporter leaves out num_rounds when it equals the default (a 5-round job): still 5 planned rounds."""
    import inspect

    from nvflare.app_common.workflows.base_fedavg import BaseFedAvg

    from medpfl_app.reports.plan import WORKFLOW_ROUND_DEFAULTS, planned_rounds

    parameters = inspect.signature(BaseFedAvg.__init__).parameters
    fedavg = "nvflare.app_common.workflows.fedavg.FedAvg"
    assert WORKFLOW_ROUND_DEFAULTS[fedavg] == {name: parameters[name].default for name in ("num_rounds", "start_round")}
    preflight = {"path": "medpfl_app.nvflare.preflight.controller.PreflightController", "args": {"min_clients": 3}}
    config = {"workflows": [preflight, {"path": fedavg, "args": {"aggregation_weights": {}}}]}

    assert planned_rounds(config) == (tuple(range(5)), None)
    assert planned_rounds({"workflows": [{"path": "x.Other", "args": {}}]})[0] is None
