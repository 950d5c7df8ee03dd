"""Phantom jobs: jobs the POC server's job store still calls RUNNING after the server that ran them died.

NVFlare 2.9 keeps the job store (``<workspace>/jobs-storage``) across restarts and does not revisit it when a server
starts: a job whose server crashed stays ``RUNNING`` for good. ``abort_job`` then fails ("Job ... is not running.
It can not be stopped."), ``delete_job`` refuses a running job, and ``nvflare poc stop`` aborts every running job
before it shuts the system down, so it fails (exit 5) before sending the shutdown, every time.

While no server of the workspace runs, no job can be running. `abandon_phantom_jobs` then gives each such job the
status NVFlare itself defines for a job its server lost, ``FINISHED:ABANDONED``, through NVFlare's own storage
class. It must only be called once every process of the workspace is gone.
"""

from __future__ import annotations

import json
from pathlib import Path

ABANDONED = "FINISHED:ABANDONED"
UNFINISHED = ("RUNNING", "DISPATCHED")
JOB_MANAGER_ID = "job_manager"


def job_store_root(workspace: Path, server_dir: Path) -> Path:
    """The job store's folder, from the server's ``local/resources.json`` (default ``<workspace>/jobs-storage``)."""
    try:
        resources = json.loads((server_dir / "local" / "resources.json").read_text())
        component = next(c for c in resources.get("components", []) if c.get("id") == JOB_MANAGER_ID)
        return Path(component["args"]["uri_root"])
    except (OSError, ValueError, StopIteration, KeyError, TypeError):
        return workspace / "jobs-storage"


def unfinished_jobs(store: Path) -> dict[str, str]:
    """job id → status of every job the store calls RUNNING or DISPATCHED."""
    found = {}
    for meta_file in sorted(store.glob("*/meta")) if store.is_dir() else []:
        try:
            status = json.loads(meta_file.read_text()).get("status")
        except (OSError, ValueError, AttributeError):
            continue
        if status in UNFINISHED:
            found[meta_file.parent.name] = status
    return found


def abandon_phantom_jobs(store: Path) -> list[str]:
    """Mark every unfinished job of a stopped system ``FINISHED:ABANDONED``; returns their ids."""
    from nvflare.app_common.storages.filesystem_storage import FilesystemStorage

    jobs = unfinished_jobs(store)
    storage = FilesystemStorage()  # the server's job store: absolute paths as object URIs
    for job_id in jobs:
        storage.update_meta(uri=str(store / job_id), meta={"status": ABANDONED}, replace=False)
    return list(jobs)
