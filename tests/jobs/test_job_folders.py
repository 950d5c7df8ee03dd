"""The committed ``jobs/`` folders are exactly what the generator writes, and they follow NVFlare 2.9's rules."""

from __future__ import annotations

import filecmp
import json
from dataclasses import replace
from pathlib import Path

import pytest

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.jobs import JOB_CATALOG, JobSpec, TrainingSpec
from medpfl_app.nvflare.jobs.builder import export_job, site_script_path
from medpfl_app.nvflare.jobs.catalog_io import export_catalog

REPO = Path(__file__).resolve().parents[2]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_committed_jobs_match_the_generator(tmp_path: Path) -> None:
    """Regenerate every job into tmp_path; any difference from jobs/ means someone forgot `medpfl jobs export`."""
    export_catalog(tmp_path)
    committed = _tree(REPO / "jobs")
    generated = _tree(tmp_path)
    assert sorted(generated) == sorted(committed), "run `medpfl jobs export` and commit jobs/"
    drifted = [name for name in generated if generated[name] != committed[name]]
    assert not drifted, f"jobs/ drifted from the generator in {drifted}; run `medpfl jobs export`"


def test_every_job_is_a_complete_nvflare_folder() -> None:
    for name in JOB_CATALOG:
        job = REPO / "jobs" / name
        meta = json.loads((job / "meta.json").read_text())
        assert meta["name"] == name
        assert meta["deploy_map"] == {"app": ["@ALL"]}
        client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
        executor = client["executors"][0]["executor"]
        assert executor["args"]["params_transfer_type"] == "DIFF"
        assert executor["args"]["task_script_path"] == "medpfl_site.py"
        assert filecmp.cmp(job / "app" / "custom" / "medpfl_site.py", site_script_path())
        # medpfl_app is an installed app package: the job must not ship a partial copy that would shadow it
        assert not (job / "app" / "custom" / "medpfl_app").exists()
        for config in (job / "app" / "config").glob("*.json"):
            content = json.loads(config.read_text())
            for chain in content.get("task_result_filters", []) + content.get("task_data_filters", []):
                assert chain["tasks"] == ["train"], f"{config}: '*' filter chains are never applied by NVFlare"


def test_filters_scope_and_grace_reach_the_exported_configs(tmp_path: Path) -> None:
    """Every part of a spec lands where NVFlare reads it: chains on ``train`` in the right direction, meta, grace."""
    laplace = {"path": "medpfl_app.nvflare.filters.noise.LaplaceNoiseFilter", "args": {"scale": 0.01}}
    recorder = {"path": "medpfl_app.nvflare.filters.received.ReceivedUpdateRecorder", "args": {}}
    cache = {"path": "medpfl_app.nvflare.server.global_weights.GlobalWeightsCache", "args": {}}
    scorer = {"id": "scorer", "path": "medpfl_app.nvflare.site.scorer.AuditSiteScorer", "args": {"wait_at_end_s": 7.0}}
    spec = replace(
        JOB_CATALOG["fedavg_small_cnn"],
        name="with_filters",
        client_result_filters=(laplace,),
        server_result_filters=(recorder,),
        server_data_filters=(cache,),
        client_components=(scorer,),
        scope="strict",
        end_run_readiness_timeout=120.0,
        client_end_run_readiness_timeout=60.0,
    )
    job = export_job(spec, tmp_path)
    client = json.loads((job / "app" / "config" / "config_fed_client.json").read_text())
    server = json.loads((job / "app" / "config" / "config_fed_server.json").read_text())
    # NVFlare's chain defaults (nvflare/private/fed_json_config.py): result chains "out" on a site and "in" on the
    # server, data chains "out" on the server.
    assert _chains(client["task_result_filters"], "out") == [(["train"], [laplace])]
    assert _chains(server["task_result_filters"], "in") == [(["train"], [recorder])]
    assert _chains(server["task_data_filters"], "out") == [(["train"], [cache])]
    assert client["task_data_filters"] == []
    assert {"id": "scorer", "path": scorer["path"], "args": scorer["args"]} in client["components"]
    assert server["end_run_readiness_timeout"] == 120.0 and client["end_run_readiness_timeout"] == 60.0
    meta = json.loads((job / "meta.json").read_text())
    assert (meta["scope"], meta["description"], meta["min_clients"]) == ("strict", spec.description, spec.min_clients)


def _chains(chains: list[dict], default_direction: str) -> list[tuple[list[str], list[dict]]]:
    assert all(chain.get("direction", default_direction) == default_direction for chain in chains), chains
    return [(chain["tasks"], chain["filters"]) for chain in chains]


def test_re_export_replaces_the_old_folder(tmp_path: Path) -> None:
    spec = JOB_CATALOG["fedavg_small_cnn"]
    job = export_job(spec, tmp_path)
    (job / "stale.txt").write_text("left over")
    export_job(spec, tmp_path)
    assert not (job / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [spec.name]


@pytest.mark.parametrize(
    "build",
    [
        lambda: JobSpec(name="Bad Name", description="x"),
        lambda: JobSpec(name="ok", description="x", num_rounds=0),
        lambda: TrainingSpec(network="vgg"),
        lambda: TrainingSpec(max_steps=0),
        lambda: TrainingSpec(learning_rate=-1.0),
    ],
)
def test_bad_job_specs_are_one_clear_error(build) -> None:
    with pytest.raises(MedPFLError):
        build()
