"""End to end in NVFlare POC mode: prepare, configure site data, start, submit via the FLARE API, download, stop.

Only loopback is used (the POC server on localhost:8002); the system is stopped even when an assertion fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpfl_app.nvflare.jobs.builder import export_job
from medpfl_app.nvflare.poc import system
from medpfl_app.nvflare.poc.sites import configure_site_data, install_site_privacy
from medpfl_app.nvflare.poc.submit import submit_and_wait

from .conftest import SIM_SITES, received_updates, small_job

pytestmark = [pytest.mark.nvflare_run, pytest.mark.slow]


@pytest.fixture(scope="module")
def poc_layout(tmp_path_factory: pytest.TempPathFactory):
    """A prepared, started 2-site POC system with MedPFL's site privacy policy; always stopped afterwards."""
    root = tmp_path_factory.mktemp("poc")
    with pytest.MonkeyPatch.context() as patch:
        # `nvflare poc prepare` writes ~/.nvflare/config.conf: keep it out of the real home folder
        patch.setenv("HOME", str(root / "home"))
        patch.setenv(system.POC_WORKSPACE_ENV, str(root / "workspace"))
        layout = system.prepare(root / "workspace", SIM_SITES).layout
        try:
            configure_site_data(layout, demo=True, data_root=None)
            install_site_privacy(layout)  # scopes private (default) / strict, both client-level DP
            system.start(layout, timeout_s=300)
            yield layout
        finally:
            system.stop(layout)


def test_poc_job_completes_and_its_result_downloads(poc_layout, tmp_path: Path) -> None:
    """A job without defenses or scope completes; the sites' default scope still defended every update."""
    job = export_job(small_job("poc_fedavg"), tmp_path / "jobs")
    outcome = submit_and_wait(poc_layout, job, timeout_s=900, download_to=tmp_path / "download")
    assert outcome.status == "FINISHED:COMPLETED"
    assert outcome.result_dir is not None and outcome.result_dir.is_dir()
    models = list(outcome.result_dir.rglob("FL_global_model.pt"))
    assert models, f"no global model in the downloaded result {outcome.result_dir}"
    rounds = [
        json.loads(line)["round"]
        for path in outcome.result_dir.rglob("round_metrics.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    assert rounds == [0, 1]
    records = [r for r in received_updates(outcome.result_dir) if r.get("data_kind")]
    assert sorted((r["site"], r["round"]) for r in records) == sorted((s, n) for s in SIM_SITES for n in (0, 1))
    for record in records:  # the job asked for nothing: the site's default scope ("private") applied anyway
        assert [(e["defense"], e["installed_by"]) for e in record["medpfl_defenses"]] == [
            ("drop_bn_stats", "site"),
            ("client_dp", "site"),
        ]


def test_each_site_found_its_data_through_its_own_local_config(poc_layout) -> None:
    for site in SIM_SITES:
        config = json.loads((poc_layout.site_dir(site) / "local" / "medpfl_data.json").read_text())
        assert site in str(config["datalist"])


def test_a_job_asking_for_the_strict_scope_gets_its_site_filters(poc_layout, tmp_path: Path) -> None:
    job = export_job(small_job("poc_strict", num_rounds=1, scope="strict"), tmp_path / "jobs")
    assert json.loads((job / "meta.json").read_text())["scope"] == "strict"
    outcome = submit_and_wait(poc_layout, job, timeout_s=900, download_to=tmp_path / "download")
    assert outcome.status == "FINISHED:COMPLETED"
    records = [r for r in received_updates(outcome.result_dir) if r.get("data_kind")]
    assert sorted(r["site"] for r in records) == SIM_SITES
    for record in records:
        dp = record["medpfl_defenses"][-1]
        assert (dp["defense"], dp["installed_by"], dp["params"]["noise_multiplier"]) == ("client_dp", "site", 3.0)
        assert not [key for key in record["entries"] if key.endswith("num_batches_tracked")]


def test_admin_show_scopes_lists_the_site_policy(poc_layout) -> None:
    """What hospital IT sees in the admin console: every site reports private/strict, default private."""
    with system.admin_session(poc_layout) as session:
        reply = session.do_command("show_scopes client")
    text = json.dumps(reply)
    for site in SIM_SITES:
        assert site in text
    for scope in ("private", "strict"):
        assert scope in text


def test_an_audited_poc_job_downloads_with_its_ledger_and_html_report(poc_layout, tmp_path: Path) -> None:
    """The audited job in POC mode: the downloaded result holds the audit ledger and the rendered HTML report."""
    from dataclasses import replace

    from medpfl_app.audit.ledger import find_ledgers, read_ledger
    from medpfl_app.nvflare.jobs import JOB_CATALOG

    audited = replace(JOB_CATALOG["fedavg_audit"], name="poc_audit", num_rounds=1, min_clients=2)
    job = export_job(audited, tmp_path / "jobs")
    outcome = submit_and_wait(poc_layout, job, timeout_s=900, download_to=tmp_path / "download")
    assert outcome.status == "FINISHED:COMPLETED"
    ledgers = list(find_ledgers(outcome.result_dir))
    assert len(ledgers) == 1, f"expected one audit ledger in {outcome.result_dir}"
    records = read_ledger(ledgers[0]).records
    assert sorted(r["site"] for r in records) == SIM_SITES
    # in POC's secure mode the sites' scorers accept the server's requests (cellnet origin of the server's job cell)
    for record in records:
        assert record["site_scores"]["status"] == "scored", record["site_scores"]
    html = ledgers[0].parent / "audit_report.html"
    assert html.is_file() and "MedPFL privacy audit report" in html.read_text()
