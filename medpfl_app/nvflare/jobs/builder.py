"""Turn a `JobSpec` into a ready-to-submit NVFlare job folder through NVFlare 2.9's Recipe API.

The recipe (`medpfl_app.nvflare.jobs.recipe`) ships only the site entry script (package data
``medpfl_app/nvflare/jobs/site_script/medpfl_site.py``, written to ``app/custom/medpfl_site.py``); ``medpfl_app`` is
declared an app package (installed at every site and on the server), so the exporter does not copy it into the job.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import tempfile
from pathlib import Path

from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.jobs.check import check_job_folder
from medpfl_app.nvflare.jobs.spec import JobSpec

SITE_SCRIPT_NAME = "medpfl_site.py"


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
    from medpfl_app.nvflare.jobs.recipe import build_recipe

    jobs_dir = Path(jobs_dir).resolve()
    jobs_dir.mkdir(parents=True, exist_ok=True)
    destination = jobs_dir / spec.name
    staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=jobs_dir))
    try:
        # The recipe resolves the script when it first builds the client app and the exporter copies it to
        # app/custom/<path as given>: a bare file name, resolved from the script's own folder, puts it at
        # app/custom/medpfl_site.py. A component refusing its arguments fails in build_recipe, before any export.
        with contextlib.chdir(site_script_path().parent):
            build_recipe(spec).export(str(staging))
        exported = staging / spec.name
        check_job_folder(exported)  # a bad audit plan or count fails here, not at deployment in the server log
        if destination.exists():
            retired = staging / "previous"
            os.replace(destination, retired)
        os.replace(exported, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination
