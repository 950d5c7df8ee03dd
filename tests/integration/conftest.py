"""Real NVFlare runs, shared per session: each start-up costs a minute of imports on a 2-core machine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from medpfl_app.data import generate_demo_dataset
from medpfl_app.nvflare.jobs import JOB_CATALOG, JobSpec
from medpfl_app.nvflare.jobs.builder import export_job
from medpfl_app.nvflare.jobs.simulate import SimulationResult, run_simulation

SIM_SITES = ["site-1", "site-2"]


def small_job(name: str, *, num_rounds: int = 2, min_clients: int = 2, **changes) -> JobSpec:
    """The demo job shrunk for tests: 32 px images, one local epoch."""
    base = JOB_CATALOG["fedavg_small_cnn"]
    training = replace(base.training, image_size=32, local_epochs=1)
    return replace(base, name=name, num_rounds=num_rounds, min_clients=min_clients, training=training, **changes)


@pytest.fixture(scope="session")
def demo_data_2_sites(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("demo_data")
    return generate_demo_dataset(root, num_sites=2, train_per_site=16, val_per_site=8, image_size=32, seed=1)


@pytest.fixture(scope="session")
def simulated_fedavg(tmp_path_factory: pytest.TempPathFactory, demo_data_2_sites) -> SimulationResult:
    root = tmp_path_factory.mktemp("sim_fedavg")
    job = export_job(small_job("sim_fedavg"), root / "jobs")
    return run_simulation(
        job, root / "workspace", sites=SIM_SITES, timeout_s=900, env={"MEDPFL_DATA_ROOT": str(demo_data_2_sites.root)}
    )


def received_updates(root: Path) -> list[dict]:
    """The server-side ReceivedUpdateRecorder's records found anywhere under ``root``."""
    import json

    records = []
    for path in sorted(Path(root).rglob("received_updates.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


@pytest.fixture(scope="session")
def simulated_job_defenses(tmp_path_factory: pytest.TempPathFactory, demo_data_2_sites) -> SimulationResult:
    """The fedavg_client_dp job's filters plus a Laplace filter in front, 2 sites x 2 rounds."""
    root = tmp_path_factory.mktemp("sim_defenses")
    dp_job = JOB_CATALOG["fedavg_client_dp"]
    laplace = JOB_CATALOG["fedavg_laplace"].client_result_filters
    spec = small_job("sim_defenses", client_result_filters=laplace + dp_job.client_result_filters)
    job = export_job(spec, root / "jobs")
    return run_simulation(
        job, root / "workspace", sites=SIM_SITES, timeout_s=900, env={"MEDPFL_DATA_ROOT": str(demo_data_2_sites.root)}
    )


@pytest.fixture(scope="session")
def simulated_dp_sgd(tmp_path_factory: pytest.TempPathFactory, demo_data_2_sites) -> SimulationResult:
    """The fedavg_dp_sgd job (Opacus DP-SGD at every site), 2 sites x 2 rounds."""
    root = tmp_path_factory.mktemp("sim_dp_sgd")
    spec = small_job("sim_dp_sgd")
    spec = replace(spec, training=replace(spec.training, dp_noise_multiplier=1.0, dp_max_grad_norm=1.0))
    job = export_job(spec, root / "jobs")
    return run_simulation(
        job, root / "workspace", sites=SIM_SITES, timeout_s=900, env={"MEDPFL_DATA_ROOT": str(demo_data_2_sites.root)}
    )


AUDIT_SITES = ["site-1", "site-2", "site-3"]


@pytest.fixture(scope="session")
def demo_data_3_sites(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("demo_data_3")
    return generate_demo_dataset(root, num_sites=3, train_per_site=16, val_per_site=4, image_size=32, seed=2)


def _simulate_catalog_job(tmp_path_factory: pytest.TempPathFactory, data, name: str) -> SimulationResult:
    root = tmp_path_factory.mktemp(f"sim_{name}")
    job = export_job(JOB_CATALOG[name], root / "jobs")
    return run_simulation(
        job, root / "workspace", sites=AUDIT_SITES, timeout_s=600, env={"MEDPFL_DATA_ROOT": str(data.root)}
    )


@pytest.fixture(scope="session")
def simulated_audit(tmp_path_factory: pytest.TempPathFactory, demo_data_3_sites) -> SimulationResult:
    """The audited FedAvg job without defense (site-1: one image, one step per round), 3 sites x 2 rounds."""
    return _simulate_catalog_job(tmp_path_factory, demo_data_3_sites, "fedavg_audit")


@pytest.fixture(scope="session")
def simulated_audit_client_dp(tmp_path_factory: pytest.TempPathFactory, demo_data_3_sites) -> SimulationResult:
    """The audited FedAvg job under client-level DP (clip 1.0, z=1.0), 3 sites x 2 rounds."""
    return _simulate_catalog_job(tmp_path_factory, demo_data_3_sites, "fedavg_audit_client_dp")
