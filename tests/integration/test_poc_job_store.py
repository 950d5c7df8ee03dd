"""A job a crashed server left RUNNING in the POC job store is marked abandoned once nothing runs (no NVFlare run)."""

from __future__ import annotations

import json
from pathlib import Path

from medpfl_app.nvflare.poc import system
from medpfl_app.nvflare.poc.job_store import ABANDONED, abandon_phantom_jobs, job_store_root, unfinished_jobs
from medpfl_app.nvflare.poc.shutdown import stop_poc

PHANTOM = "945a0c87-7487-4e03-9678-9e73f0e336c3"
DONE = "1b2c3d4e-0000-4000-8000-000000000001"


def _store(tmp_path: Path) -> Path:
    store = tmp_path / "jobs-storage"
    for job_id, status in ((PHANTOM, "RUNNING"), (DONE, "FINISHED:COMPLETED")):
        (store / job_id).mkdir(parents=True)
        (store / job_id / "data").write_bytes(b"zip")
        (store / job_id / "meta").write_text(json.dumps({"job_id": job_id, "name": "poc_job", "status": status}))
    return store


def test_only_unfinished_jobs_are_abandoned_and_the_rest_of_their_meta_is_kept(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert unfinished_jobs(store) == {PHANTOM: "RUNNING"}
    assert abandon_phantom_jobs(store) == [PHANTOM]
    assert json.loads((store / PHANTOM / "meta").read_text()) == {
        "job_id": PHANTOM,
        "name": "poc_job",
        "status": ABANDONED,
    }
    assert json.loads((store / DONE / "meta").read_text())["status"] == "FINISHED:COMPLETED"
    assert abandon_phantom_jobs(store) == []


def test_the_store_is_found_in_the_servers_resources(tmp_path: Path) -> None:
    server = tmp_path / "server"
    (server / "local").mkdir(parents=True)
    resources = {"components": [{"id": "job_manager", "args": {"uri_root": str(tmp_path / "elsewhere")}}]}
    (server / "local" / "resources.json").write_text(json.dumps(resources))
    assert job_store_root(tmp_path, server) == tmp_path / "elsewhere"
    assert job_store_root(tmp_path, tmp_path / "missing") == tmp_path / "jobs-storage"


def test_stop_of_a_dead_system_marks_its_phantom_job_and_says_so(tmp_path: Path) -> None:
    layout = system.PocLayout(tmp_path)
    (layout.site_dir("server") / "startup").mkdir(parents=True)
    (layout.site_dir("server") / "startup" / "sub_start.sh").write_text("#!/usr/bin/env bash\n")
    store = _store(tmp_path)
    report = stop_poc(layout.prod_dir, (), lambda: (0, ""), job_store=store, settle_s=0)
    assert report.ok and report.abandoned_jobs == (PHANTOM,)
    assert f"job {PHANTOM} was still marked RUNNING" in "\n".join(report.lines())
