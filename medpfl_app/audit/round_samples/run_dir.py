"""Where the training script finds the client's run folder of the job, in either NVFlare execution mode."""

from __future__ import annotations

import os
from pathlib import Path

from medpfl_app.errors import MedPFLError


def find_client_run_dir(
    job_id: str, site: str, *, cwd: str | os.PathLike[str], script: str | os.PathLike[str] | None = None
) -> Path:
    """The client's run folder of ``job_id`` at ``site`` (``<site workspace>/<job_id>``), as the training script
    can see it in either NVFlare execution mode.

    NVFlare runs the script from the app folder ``<run dir>/app_<site>``: an external process has it as its
    working folder, and the script itself sits in its ``custom/`` folder in both modes (``sys.argv[0]``, made
    absolute against ``cwd``); an in-process script runs in the client job process, whose working folder is the
    site workspace. The first of these that is an existing ``<job_id>/app_<site>`` folder wins.

    Args:
        job_id: ``flare.get_job_id()``.
        site: ``flare.get_site_name()``.
        cwd: The working folder.
        script: The script's path (``sys.argv[0]``), or None.

    Raises:
        MedPFLError: No candidate is the job's app folder of this site.
    """
    if not job_id or not site:
        raise MedPFLError(
            "the training script knows no job id or site name", fix="run it through NVFlare's Client API (flare.init())"
        )
    app = f"app_{site}"
    here = Path(cwd).resolve()
    starts: list[Path] = []
    if script:
        path = Path(script)
        starts.append((path if path.is_absolute() else here / path).resolve().parent)
    starts += [here, here / job_id / app]
    looked_at: list[str] = []
    for start in starts:
        for folder in (start, *start.parents):
            if folder.name == app and folder.parent.name == job_id and folder.is_dir():
                return folder.parent
        looked_at.append(str(start))
    raise MedPFLError(
        f"cannot find the run folder of job {job_id} for site {site} (no {job_id}/{app} folder at or above "
        f"{', '.join(looked_at)})",
        fix="run the site script through NVFlare's ClientAPIExecutor (in_process or external_process mode)",
        site=site,
    )
