"""End to end in NVFlare POC mode: prepare, configure site data, start, submit via the FLARE API, download, stop.

Only loopback is used (the POC server on localhost:8002); the system is stopped even when an assertion fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpfl_app.jobs.builder import export_job
from medpfl_app.poc import system
from medpfl_app.poc.sites import configure_site_data

from .conftest import SIM_SITES, small_job

pytestmark = [pytest.mark.nvflare_run, pytest.mark.slow]


@pytest.fixture(scope="module")
def poc_layout(tmp_path_factory: pytest.TempPathFactory):
    """A prepared, started 2-site POC system in a temporary workspace; always stopped afterwards."""
    root = tmp_path_factory.mktemp("poc")
    with pytest.MonkeyPatch.context() as patch:
        # `nvflare poc prepare` writes ~/.nvflare/config.conf: keep it out of the real home folder
        patch.setenv("HOME", str(root / "home"))
        patch.setenv(system.POC_WORKSPACE_ENV, str(root / "workspace"))
        layout = system.prepare(root / "workspace", SIM_SITES)
        try:
            configure_site_data(layout, demo=True, data_root=None)
            system.start(layout, timeout_s=300)
            yield layout
        finally:
            system.stop(layout)


def test_poc_job_completes_and_its_result_downloads(poc_layout, tmp_path: Path) -> None:
    job = export_job(small_job("poc_fedavg"), tmp_path / "jobs")
    outcome = system.submit_and_wait(poc_layout, job, timeout_s=900, download_to=tmp_path / "download")
    assert outcome.status == "FINISHED:COMPLETED"
    assert outcome.result_dir is not None and outcome.result_dir.is_dir()
    models = list(outcome.result_dir.rglob("FL_global_model.pt"))
    assert models, f"no global model in the downloaded result {outcome.result_dir}"
    rounds = [json.loads(line)["round"] for p in outcome.result_dir.rglob("round_metrics.jsonl") for line in p.read_text().splitlines() if line.strip()]
    assert rounds == [0, 1]


def test_each_site_found_its_data_through_its_own_local_config(poc_layout) -> None:
    for site in SIM_SITES:
        config = json.loads((poc_layout.site_dir(site) / "local" / "medpfl_data.json").read_text())
        assert site in str(config["datalist"])
