"""The study's simulator engine: one study cell as an exported NVFlare job, run by the NVFlare simulator.

`simulate_cell` is the ``evaluate`` function of `medpfl_app.experiments.study.run_study` for
``Engine.SIMULATOR``: the cell's network, sites, rounds, batch size, local steps and learning rate become the job's
`TrainingSpec`; its defense a job-level client result filter (DP-SGD: the sites' Opacus training; BN-local:
`DropBatchNormStatsFilter`); the server audit runs with the plan the in-process engine uses (same attack, budget
and seed, restricted to the audited sites and rounds), without pre-flight or thumbnails. The sites train on the
study's own seeded phantom pools (`medpfl_app.experiments.study.federated.site_pools`), written as one datalist per
site, and validate on the study's held-out phantoms split across the sites.

Leakage and formal ε are read from the server's audit ledger (`medpfl_app.nvflare.study_ledger`), utility from the
run's ``metrics/round_metrics.jsonl``.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from medpfl_app.errors import MedPFLError
from medpfl_app.experiments.study.config import STRENGTH_FIELD, CellConfig, DefenseKind, Engine, RunConfig, WeightInit
from medpfl_app.experiments.study.result import CellResult
from medpfl_app.nvflare.jobs.spec import AUDIT_FILTER, JobSpec, audited
from medpfl_app.nvflare.jobs.training_spec import TrainingSpec

JOB_NAME = "medpfl_study_cell"
#: Fixed part of one cell's hard simulation deadline (a tiny cell takes 1–2 minutes, almost all NVFlare start-up).
SIMULATOR_TIMEOUT_S = 1800.0
#: Heuristic filters whose noise or rounding takes a seed (the run's, for reproducible cells). Client DP is never
#: seeded: a known noise seed voids its guarantee.
_SEEDED = (DefenseKind.LAPLACE, DefenseKind.GAUSSIAN, DefenseKind.QUANTIZATION)


def site_names(run: RunConfig) -> list[str]:
    """NVFlare's site names of the run's K sites, ``site-1`` … ``site-K`` (site index ``k`` is ``site-{k+1}``)."""
    return [f"site-{number}" for number in range(1, run.sites + 1)]


def audit_plan(run: RunConfig, cell: CellConfig) -> dict[str, Any]:
    """The audit filter's ``plan``: the in-process engine's plan, restricted to the audited sites and rounds.

    The plan selects rounds 0, n, 2n, …; n is the greatest common divisor of the audited rounds (the rounds count
    when only round 0 is audited), so every audited round is attacked; others it also selects are ignored.
    """
    from medpfl_app.audit.plan import AuditPlan

    every = math.gcd(*run.audited_rounds) or run.rounds
    plan = {
        **run.audit.plan_overrides(),
        "attack": cell.attack,
        "seed": run.seed,
        "sites": site_names(run)[: run.audited_sites],
        "every_n_rounds": every,
    }
    AuditPlan.from_dict(plan)  # an attack or budget the audit refuses fails here, before any simulation
    return plan


def defense_filters(run: RunConfig, cell: CellConfig) -> tuple[dict[str, Any], ...]:
    """The cell's defense as job-level client result filters (none for no defense and for DP-SGD)."""
    from medpfl_app.nvflare.filters import filter_config

    kind = cell.defense.kind
    if kind in (DefenseKind.NONE, DefenseKind.DP_SGD):
        return ()
    strength = STRENGTH_FIELD[kind]
    args: dict[str, Any] = {} if strength is None else {strength: cell.defense.strength}
    if kind is DefenseKind.QUANTIZATION:
        args["bits"] = int(args["bits"])
    if kind is DefenseKind.CLIENT_DP:
        args.update(clip_norm=run.clip_norm, delta=run.delta)
    if kind in _SEEDED:
        args["seed"] = run.seed
    return (filter_config(kind.value, **args),)


def training_spec(run: RunConfig, cell: CellConfig) -> TrainingSpec:
    """Every site's training: plain SGD, ``B`` images per step, exactly ``S`` steps per round."""
    epochs = max(1, math.ceil(cell.local_steps * cell.batch_size / run.train_per_site))
    return TrainingSpec(
        network=cell.network,
        num_classes=run.num_classes,
        image_size=run.image_size,
        in_channels=1,
        learning_rate=run.learning_rate,
        optimizer="sgd",
        local_epochs=epochs,
        max_steps=cell.local_steps,
        batch_size=cell.batch_size,
        seed=run.seed,
        dp_noise_multiplier=float(cell.defense.strength or 0.0) if cell.dp_sgd else 0.0,
        dp_max_grad_norm=run.clip_norm,
        dp_delta=run.delta,
    )


def check_expressible(run: RunConfig, cell: CellConfig) -> None:
    """Refuse what an NVFlare job of this engine cannot express, naming it (nothing is simulated)."""
    if cell.init is not WeightInit.JOB:
        raise MedPFLError(
            f"study cell {cell.label}: the {cell.init.value} initial weights cannot be expressed in an NVFlare job "
            "(jobs start from the seeded network's own initialisation)",
            fix="run this preset with --engine in-process, or use cells with init=job",
        )
    if cell.dp_sgd and not cell.defense.strength:
        raise MedPFLError(f"study cell {cell.label}: DP-SGD needs a noise multiplier > 0", fix="set the strength")


def cell_job(run: RunConfig, cell: CellConfig) -> JobSpec:
    """The job of ``cell``: its training, its defense filter, the audit with the study's plan, no pre-flight."""
    check_expressible(run, cell)
    training = training_spec(run, cell)
    model = {key: getattr(training, key) for key in ("network", "image_size", "in_channels", "num_classes")}
    plan = audit_plan(run, cell)
    base = audited(JOB_NAME, f"MedPFL study cell: {cell.label}.", defense_filters(run, cell))

    def audit_args(entry: dict[str, Any]) -> dict[str, Any]:
        if entry["path"] != AUDIT_FILTER["path"]:
            return entry
        return {**entry, "args": {**entry["args"], "model": model, "plan": plan}}

    return replace(
        base,
        description=f"MedPFL study cell: {cell.label}; server-side audit of {', '.join(plan['sites'])}.",
        num_rounds=run.rounds,
        min_clients=run.sites,
        training=training,
        server_result_filters=tuple(audit_args(entry) for entry in base.server_result_filters),
        preflight=None,
    )


def simulation_timeout_s(run: RunConfig) -> float:
    """The cell's hard deadline: start-up, 30 s per round, and 4x the audit's time limit per audited update."""
    audited_updates = run.audited_sites * len(run.audited_rounds)
    return SIMULATOR_TIMEOUT_S + 30.0 * run.rounds + 4.0 * run.audit.time_limit_s * audited_updates


def simulate_cell(run: RunConfig, cell: CellConfig, *, work_dir: Path | None = None) -> CellResult:
    """Run ``cell`` as an NVFlare job in the simulator and read its utility, per-site leakage and formal ε.

    Args:
        run: The study's shared run (its engine must be ``simulator``: the result is stored under that key).
        cell: The cell.
        work_dir: Where the job, the sites' data and the simulator workspace go (default: a temporary folder,
            removed after a successful cell and kept after a failure for its log).

    Raises:
        MedPFLError: Something the job cannot express, or a failed simulation (nothing is stored for the cell).
    """
    from medpfl_app.nvflare.jobs.builder import export_job
    from medpfl_app.nvflare.jobs.simulate import run_simulation
    from medpfl_app.nvflare.study_data import write_site_pools
    from medpfl_app.nvflare.study_ledger import cell_result

    if run.engine is not Engine.SIMULATOR:  # its result would be stored under the in-process key
        raise MedPFLError(
            f"simulate_cell runs cells in the NVFlare simulator, but the study's engine is {run.engine.value}",
            fix="set RunConfig.engine to simulator (medpfl study --engine simulator)",
        )
    spec = cell_job(run, cell)
    started = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="medpfl-study-cell-")) if work_dir is None else Path(work_dir)
    data_root = write_site_pools(run, folder / "data", site_names(run))
    job_dir = export_job(spec, folder / "jobs")
    simulation = run_simulation(
        job_dir,
        folder / "simulation",
        sites=site_names(run),
        timeout_s=simulation_timeout_s(run),
        env={"MEDPFL_DATA_ROOT": str(data_root)},
    )
    result = cell_result(run, cell, simulation.server_run_dir, train_s=simulation.wall_seconds)
    result = replace(result, wall_s=time.perf_counter() - started)
    if work_dir is None:
        shutil.rmtree(folder, ignore_errors=True)
    return result
