"""Turn a `JobSpec` into a ready-to-submit NVFlare job folder with NVFlare's own FedJob exporter.

The job ships only the site entry script (package data ``medpfl_app/nvflare/jobs/site_script/medpfl_site.py``, written to
``app/custom/medpfl_site.py``); ``medpfl_app`` is declared an app package (installed at every site and on the
server), so the exporter does not copy it into the job.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.jobs.check import check_job_folder
from medpfl_app.nvflare.jobs.spec import JobSpec

SITE_SCRIPT_NAME = "medpfl_site.py"
TRAIN_TASK = "train"


def site_script_path() -> Path:
    """The site entry script every job ships, from the installed package (a checkout or a wheel alike)."""
    script = Path(str(importlib.resources.files("medpfl_app.nvflare.jobs") / "site_script" / SITE_SCRIPT_NAME))
    if not script.is_file():
        raise MedPFLError(
            f"the site entry script {script} is missing from the installed medpfl_app package",
            fix="reinstall MedPFL (`pip install .` from a checkout); the script is package data of medpfl_app.nvflare.jobs",
        )
    return script


def export_job(spec: JobSpec, jobs_dir: str | Path) -> Path:
    """Write ``<jobs_dir>/<spec.name>/`` (meta.json, app/config, app/custom), replacing any previous version.

    The folder is built next to its destination, checked (`medpfl_app.nvflare.jobs.check.check_job_folder`) and only then
    moved into place, so a failed export or a bad parameter never leaves a half-written or undeployable job.
    """
    jobs_dir = Path(jobs_dir).resolve()
    jobs_dir.mkdir(parents=True, exist_ok=True)
    destination = jobs_dir / spec.name
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=jobs_dir))
    try:
        # The exporter copies the script to app/custom/<path as given>; a bare file name, resolved from the
        # script's own folder, puts it at app/custom/medpfl_site.py.
        with contextlib.chdir(site_script_path().parent):
            _build_fed_job(spec).export_job(str(staging))
        exported = staging / spec.name
        _finish_job_folder(spec, exported)
        check_job_folder(exported)  # a bad audit plan or count fails here, not at deployment in the server log
        if destination.exists():
            retired = staging / "previous"
            os.replace(destination, retired)
        os.replace(exported, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def _build_fed_job(spec: JobSpec):
    from nvflare.app_common.workflows.fedavg import FedAvg
    from nvflare.app_opt.pt.job_config.base_fed_job import BaseFedJob
    from nvflare.client.config import TransferType
    from nvflare.job_config.script_runner import ScriptRunner

    from medpfl_app.models.global_model import GlobalNetwork

    training = spec.training
    initial_model = GlobalNetwork(
        network=training.network,
        in_channels=training.in_channels,
        num_classes=training.num_classes,
        image_size=training.image_size,
        seed=training.seed,
        dp_sgd=training.dp_sgd,
    )
    job = BaseFedJob(initial_model=initial_model, name=spec.name, min_clients=spec.min_clients, key_metric="accuracy")
    job.set_app_packages(["medpfl_app"])
    job.to_server(
        FedAvg(
            num_clients=spec.min_clients,
            num_rounds=spec.num_rounds,
            persistor_id=job.comp_ids["persistor_id"],
            task_name=TRAIN_TASK,
        )
    )
    job.to_clients(
        ScriptRunner(
            script=SITE_SCRIPT_NAME,
            script_args=training.script_args(),
            params_transfer_type=TransferType.DIFF,
            # The external process is `python3 -u custom/medpfl_site.py ...` in the site's app folder; it needs
            # medpfl_app installed for that python3, like the client itself.
            launch_external_process=spec.launch_external_process,
        )
    )
    return job


def _finish_job_folder(spec: JobSpec, job_dir: Path) -> None:
    """Add what the exporter does not write: filter chains, scope, description, end-of-run grace."""
    meta_path = job_dir / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["description"] = spec.description
    if spec.scope:
        meta["scope"] = spec.scope
    _write_json(meta_path, meta)

    client_config_path = job_dir / "app" / "config" / "config_fed_client.json"
    client_config = json.loads(client_config_path.read_text())
    client_config["task_result_filters"] = _chains(spec.client_result_filters, "out")
    if spec.client_components:
        existing = {component.get("id") for component in client_config.get("components", [])}
        clashes = sorted(existing & {component["id"] for component in spec.client_components})
        if clashes:
            raise MedPFLError(
                f"job {spec.name}: client component id(s) {clashes} already used by the exporter",
                fix="choose other ids",
            )
        client_config.setdefault("components", []).extend(dict(c) for c in spec.client_components)
    if spec.client_end_run_readiness_timeout is not None:
        client_config["end_run_readiness_timeout"] = spec.client_end_run_readiness_timeout
    _write_json(client_config_path, client_config)

    server_config_path = job_dir / "app" / "config" / "config_fed_server.json"
    server_config = json.loads(server_config_path.read_text())
    server_config["task_result_filters"] = _chains(spec.server_result_filters, "in")
    server_config["task_data_filters"] = _chains(spec.server_data_filters, "out")
    if spec.end_run_readiness_timeout is not None:
        server_config["end_run_readiness_timeout"] = spec.end_run_readiness_timeout
    _write_json(server_config_path, server_config)


def _chains(filters: tuple[dict[str, Any], ...], direction: str) -> list[dict[str, Any]]:
    # NVFlare looks chains up by exact "<task>/<direction>": a "*" task list is silently never applied.
    if not filters:
        return []
    return [{"tasks": [TRAIN_TASK], "direction": direction, "filters": [dict(f) for f in filters]}]


def _write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent=4, sort_keys=False) + "\n")
