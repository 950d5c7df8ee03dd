"""The demo: embedded phantom data at 3 sites, the audited FedAvg job, NVFlare's simulator, a per-round summary.

By default the demo runs ``fedavg_audit``: site-1 is the literature's high-risk configuration (one image, one local
step per round) next to two ordinary sites, and the server-side audit writes its ledger under the server run dir.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from medpfl_app.jobs.builder import export_job
from medpfl_app.jobs.simulate import SimulationResult, run_simulation
from medpfl_app.jobs.spec import JOB_CATALOG

DEMO_JOB = "fedavg_audit"


@dataclass(frozen=True)
class DemoOutcome:
    data_root: Path
    job_dir: Path
    simulation: SimulationResult
    network: str

    @property
    def audit_ledger(self) -> Path | None:
        """The server-side audit ledger of the run (None when the job had no audit)."""
        from medpfl_app.audit.ledger import find_ledgers

        return next(iter(find_ledgers(self.simulation.server_run_dir)), None)


def run_demo(
    out_dir: str | Path,
    *,
    num_sites: int = 3,
    num_rounds: int = 3,
    seed: int = 0,
    timeout_s: float = 1800.0,
    show_progress: bool = True,
    job: str = DEMO_JOB,
) -> DemoOutcome:
    """Generate the demo data, export the demo job sized to ``num_sites``/``num_rounds``, and simulate it.

    Args:
        job: A `JOB_CATALOG` name (default: the audited FedAvg job).
    """
    from tqdm import tqdm

    from medpfl_app.data import generate_demo_dataset

    if job not in JOB_CATALOG:
        from medpfl_app.errors import MedPFLError

        raise MedPFLError(f"unknown demo job {job!r}", fix=f"use one of {', '.join(JOB_CATALOG)}")
    out_dir = Path(out_dir).resolve()
    dataset = generate_demo_dataset(out_dir / "data", num_sites=num_sites, seed=seed)
    base = JOB_CATALOG[job]
    spec = replace(
        base,
        num_rounds=num_rounds,
        min_clients=num_sites,
        training=replace(base.training, seed=seed),
    )
    job_dir = export_job(spec, out_dir / "jobs")
    with tqdm(total=num_rounds, desc="FedAvg rounds", unit="round", disable=not show_progress) as bar:
        simulation = run_simulation(
            job_dir,
            out_dir / "simulation",
            sites=list(dataset.site_datalists),
            timeout_s=timeout_s,
            env={"MEDPFL_DATA_ROOT": str(dataset.root)},
            on_round=lambda number: bar.update(1),
        )
    return DemoOutcome(data_root=dataset.root, job_dir=job_dir, simulation=simulation, network=spec.training.network)
