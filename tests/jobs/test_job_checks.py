"""Bad job parameters are one clear error at export and at submit, before anything is written or submitted;
submitting never writes into the job folder it was given."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from medpfl_app.cli.main import main
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.jobs import JOB_CATALOG
from medpfl_app.nvflare.jobs.builder import export_job
from medpfl_app.nvflare.jobs.check import AUDIT_FILTER_PATH, check_job_folder
from medpfl_app.nvflare.poc import submit, system

REPO = Path(__file__).resolve().parents[2]


def _with_audit_plan(plan: dict):
    spec = JOB_CATALOG["fedavg_audit"]
    filters = tuple(
        {**f, "args": {**f["args"], "plan": plan}} if f["path"] == AUDIT_FILTER_PATH else f
        for f in spec.server_result_filters
    )
    return replace(spec, name="bad_plan", server_result_filters=filters)


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        ({"sites": "site-1"}, r"audit plan sites must be a list of site names, got 'site-1'"),
        ({"iterations": 0}, r"audit plan iterations must be an integer >= 1, got 0"),
    ],
)
def test_export_refuses_a_bad_audit_plan_and_writes_nothing(tmp_path: Path, plan: dict, expected: str) -> None:
    with pytest.raises(
        MedPFLError, match=r"job bad_plan: app/config/config_fed_server.json: AuditFilter plan: " + expected
    ) as error:
        export_job(_with_audit_plan(plan), tmp_path)
    assert error.value.fix  # the fix names what to write instead
    assert list(tmp_path.iterdir()) == []


def _hand_edited_job(tmp_path: Path, edit) -> Path:
    job = shutil.copytree(REPO / "jobs" / "fedavg_audit", tmp_path / "fedavg_audit")
    config_path = job / "app" / "config" / "config_fed_server.json"
    config = json.loads(config_path.read_text())
    edit(config)
    config_path.write_text(json.dumps(config))
    return job


def _set_plan(plan: dict):
    def edit(config: dict) -> None:
        audit = next(f for f in config["task_result_filters"][0]["filters"] if f["path"] == AUDIT_FILTER_PATH)
        audit["args"]["plan"] = plan

    return edit


def test_submit_refuses_a_hand_edited_plan_before_contacting_the_server(tmp_path: Path, monkeypatch, capsys) -> None:
    """`"sites": "site-1"` used to audit nothing; now `medpfl poc submit` stops with one message, exit 2."""
    job = _hand_edited_job(tmp_path, _set_plan({"sites": "site-1"}))
    monkeypatch.setattr(system, "admin_session", _no_server)
    assert main(["poc", "--workspace", str(tmp_path / "ws"), "submit", str(job)]) == 2
    err = capsys.readouterr().err
    assert "job fedavg_audit: app/config/config_fed_server.json: AuditFilter plan: audit plan sites" in err
    assert 'fix: write e.g. "sites": ["site-1"]' in err


def test_zero_rounds_in_a_hand_edited_job_is_refused(tmp_path: Path) -> None:
    def zero_rounds(config: dict) -> None:
        fedavg = next(w for w in config["workflows"] if w["path"].endswith(".FedAvg"))  # after the pre-flight
        fedavg["args"]["num_rounds"] = 0

    with pytest.raises(MedPFLError, match="job fedavg_audit: .*FedAvg num_rounds must be an integer >= 1, got 0"):
        check_job_folder(_hand_edited_job(tmp_path, zero_rounds))


def test_a_job_needing_more_sites_than_the_poc_has_is_refused(tmp_path: Path) -> None:
    job = _hand_edited_job(tmp_path, lambda config: None)
    with pytest.raises(MedPFLError, match="min_clients is 3 but this POC system has 2 site"):
        check_job_folder(job, available_sites=["site-1", "site-2"])
    check_job_folder(job, available_sites=["site-1", "site-2", "site-3"])


def test_every_committed_job_passes_the_checks() -> None:
    for name in JOB_CATALOG:
        check_job_folder(REPO / "jobs" / name)


def test_submit_signs_a_staged_copy_and_leaves_the_repositorys_jobs_untouched(tmp_path: Path, monkeypatch) -> None:
    """NVFlare writes its signature files into the folder it submits: that folder must be a temporary copy."""
    before = _snapshot_of_jobs()
    submitted: list[Path] = []
    monkeypatch.setattr(system, "admin_session", lambda layout, **kwargs: _SigningSession(submitted))
    layout = system.PocLayout(tmp_path / "ws")
    for site in ("site-1", "site-2", "site-3"):
        (layout.site_dir(site) / "startup").mkdir(parents=True)
    outcome = submit.submit_and_wait(layout, REPO / "jobs" / "fedavg_small_cnn", timeout_s=5)
    assert outcome.status == "FINISHED:COMPLETED"
    (staged,) = submitted
    assert REPO not in staged.parents and staged.name == "fedavg_small_cnn"
    assert not staged.exists(), "the staged copy is removed after submission"
    assert not list((REPO / "jobs").rglob(".__nvfl_*"))
    assert _snapshot_of_jobs() == before


def _snapshot_of_jobs() -> dict[str, bytes]:
    """Every file under jobs/ with its bytes (works in a git checkout and in a copy of the tests alike)."""
    return {
        str(path.relative_to(REPO)): path.read_bytes() for path in sorted((REPO / "jobs").rglob("*")) if path.is_file()
    }


class _SigningSession:
    """Stands in for a FLARE API session: signs the submitted folder in place, as NVFlare's submit does."""

    def __init__(self, submitted: list[Path]) -> None:
        self.submitted = submitted

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        return None

    def submit_job(self, path: str) -> str:
        folder = Path(path)
        assert (folder / "meta.json").is_file()
        for sub in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
            (sub / ".__nvfl_sig.json").write_text("{}")
        self.submitted.append(folder)
        return "job-1"

    def get_job_meta(self, job_id: str) -> dict:
        return {"status": "FINISHED:COMPLETED"}


def _no_server(*args, **kwargs):
    raise AssertionError("the job was submitted although its check failed")
