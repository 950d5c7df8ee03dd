"""No site, job or deletion can reset ε: every way to restart a site's privacy budget at 0 is refused or recorded.

Covered: a job-level ``ledger_path``; ``--dp_ledger none`` / a path; a deleted, empty, corrupt, rolled-back or
replaced ledger (client-level DP and DP-SGD); a deleted lock file with two processes racing to record; the
site admin's recorded reset (``medpfl privacy reset-ledger``); the privacy template's default scope.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import threading
from pathlib import Path

import pytest

from medpfl_app.defenses.accountant import (
    SiteLedgers,
    epsilon_per_release,
    locked,
)
from medpfl_app.errors import MedPFLError

LEDGER = Path("medpfl") / "client_dp_ledger.json"
DP_SGD_LEDGER = Path("medpfl") / "dp_sgd_ledger.json"


def _site(tmp_path: Path, name: str = "site-1") -> Path:
    site = tmp_path / name
    for folder in ("startup", "local"):
        (site / folder).mkdir(parents=True, exist_ok=True)
    return site


def _ctx(site: Path):
    """An FLContext of a client at ``site`` (workspace, job, identity), as NVFlare hands it to a result filter."""
    from nvflare.apis.fl_constant import FLContextKey, ReservedKey
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.workspace import Workspace

    class _Engine:
        def get_workspace(self) -> Workspace:
            return Workspace(root_dir=str(site), site_name=site.name)

        def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
            del event_type, fl_ctx

    ctx = FLContext()
    ctx.set_prop(ReservedKey.ENGINE, _Engine(), private=True, sticky=True)
    ctx.set_prop(ReservedKey.RUN_NUM, "job-1", private=False, sticky=True)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, site.name, private=False, sticky=True)
    ctx.set_prop(FLContextKey.TASK_ID, "t-1", private=True, sticky=False)
    return ctx


def _update():
    import numpy as np

    return {"w": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)}


def _release(dp_filter, site: Path) -> dict:
    """Run one update through ``dp_filter`` at ``site``; returns its client_dp meta entry."""
    from nvflare.apis.dxo import DXO, DataKind, from_shareable

    out = from_shareable(dp_filter.process(DXO(DataKind.WEIGHT_DIFF, _update()).to_shareable(), _ctx(site)))
    return next(e for e in out.meta["medpfl_defenses"] if e["defense"] == "client_dp")


def _job_filter(**args):
    """A ClientDPFilter as NVFlare installs it from a job's config (source ``job``)."""
    from nvflare.apis.filter import FilterContextKey, FilterSource

    from medpfl_app.nvflare.filters.client_dp import ClientDPFilter

    dp_filter = ClientDPFilter(**{"clip_norm": 1.0, "noise_multiplier": 2.0, **args})
    dp_filter.set_prop(FilterContextKey.SOURCE, FilterSource.JOB)  # what nvflare.private.fed_json_config does
    return dp_filter


def _site_scope_filter(site: Path, policy: dict):
    """The ClientDPFilter of the 'private' scope, built by NVFlare's own privacy manager from the site's policy."""
    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    from medpfl_app.nvflare.filters.client_dp import ClientDPFilter
    from medpfl_app.nvflare.privacy_policy import install_privacy_policy

    (site / "custom_privacy.json").write_text(json.dumps(policy))
    install_privacy_policy(site, site / "custom_privacy.json")
    scope = create_privacy_manager(Workspace(str(site), site.name), names_only=False).get_scope("private")
    return next(f for f in scope.task_result_filters["out"] if isinstance(f, ClientDPFilter))


def _policy_with_ledger_path(ledger_path: str | None) -> dict:
    from medpfl_app.nvflare.privacy_policy import load_privacy_template

    policy = load_privacy_template()
    for scope in policy["scopes"]:
        for entry in scope["task_result_filters"]:
            if entry["path"].endswith("ClientDPFilter") and ledger_path is not None:
                entry["args"]["ledger_path"] = ledger_path
    return policy


# --- 1. the ledger's location is the site's decision ----------------------------------------------------------


def test_a_job_level_ledger_path_is_refused_and_nothing_is_released_or_charged(tmp_path) -> None:
    """A job's ClientDPFilter with ledger_path raises (NVFlare then sends no update) and writes no ledger at all."""
    site = _site(tmp_path)
    elsewhere = tmp_path / "fresh_ledger.json"
    with pytest.raises(MedPFLError, match="set by the job.*cannot move it") as error:
        _release(_job_filter(ledger_path=str(elsewhere)), site)
    assert "privacy.json" in error.value.fix
    assert not elsewhere.exists() and not (site / LEDGER).exists()

    from medpfl_app.nvflare.filters.client_dp import ClientDPFilter

    unknown_source = ClientDPFilter(clip_norm=1.0, noise_multiplier=2.0, ledger_path=str(elsewhere))
    with pytest.raises(MedPFLError, match="not installed from the site's privacy.json"):
        _release(unknown_source, site)
    assert not elsewhere.exists()


def test_the_site_admin_places_the_ledger_and_job_filters_follow_it(tmp_path) -> None:
    """ledger_path in privacy.json (installed_by site) is honoured and anchored; a job's filter without ledger_path
    then charges that same file; a site scope pointing at yet another file is refused."""
    site = _site(tmp_path)
    site_filter = _site_scope_filter(site, _policy_with_ledger_path("budget/dp.json"))
    first = _release(site_filter, site)
    assert first["installed_by"] == "site" and first["releases"] == 1
    second = _release(_job_filter(), site)  # NVFlare would run it after the site's filter
    assert second["installed_by"] == "job" and second["releases"] == 2
    ledger = json.loads((site / "budget" / "dp.json").read_text())
    assert ledger["history"] == [[1.0, 1.0, 1], [2.0, 1.0, 1]]  # the scope's z = 1, then the job's z = 2
    assert not (site / LEDGER).exists()

    moved = _site_scope_filter(site, _policy_with_ledger_path("budget/other.json"))
    with pytest.raises(MedPFLError, match="two ledgers would split the site's budget"):
        _release(moved, site)
    assert not (site / "budget" / "other.json").exists()


# --- 2. a DP run cannot opt out of the site's ledger --------------------------------------------------------------


def test_dp_sgd_at_a_site_refuses_dp_ledger_none_and_a_path(tmp_path, monkeypatch) -> None:
    """Through the site script's own argument handling: none and a path end the job before any data is read."""
    from medpfl_app.nvflare.site.client import _prepare, build_arg_parser, dp_sgd_site_ledger

    site = _site(tmp_path)
    monkeypatch.setenv("MEDPFL_SITE_WORKSPACE", str(site))
    for value, match in (
        ("none", "--dp_ledger none is refused at a site"),
        (str(tmp_path / "mine.json"), "a job cannot choose where the site's DP-SGD ledger is"),
    ):
        args = build_arg_parser().parse_args(["--dp_noise_multiplier", "1.0", "--dp_ledger", value])
        with pytest.raises(MedPFLError, match=match):
            _prepare(args, "site-1")
    assert not (tmp_path / "mine.json").exists()
    run_dir = site / "job-3" / "app_site-1"  # found from the run folder too, without the environment variable
    run_dir.mkdir(parents=True)
    with pytest.raises(MedPFLError, match="refused at a site"):
        dp_sgd_site_ledger("none", workspace_dir=None, start=run_dir)
    ledger = dp_sgd_site_ledger("auto", workspace_dir=None, start=run_dir)
    assert ledger.path == site.resolve() / DP_SGD_LEDGER and ledger.anchor is not None
    outside = tmp_path / "notebook"  # no NVFlare site anywhere above: an explicit experiment, ε for this run only
    outside.mkdir()
    assert dp_sgd_site_ledger("none", workspace_dir=None, start=outside) is None


# --- 3. a missing or corrupt ledger stops training -------------------------------------------------------------


def test_a_fresh_site_starts_at_zero(tmp_path) -> None:
    """No ledger, no anchor: the first release costs exactly one release's ε, as before."""
    site = _site(tmp_path)
    entry = _release(_job_filter(), site)
    assert entry["epsilon_total"] == pytest.approx(epsilon_per_release(2.0, 1e-5)) and entry["ledger_resets"] == 0
    anchor = json.loads((site / "local" / "medpfl_privacy" / "client_dp.anchor.json").read_text())
    assert anchor["steps"] == 1 and anchor["path"] == str((site / LEDGER).resolve())


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda ledger: ledger.unlink(), "missing"),
        (lambda ledger: shutil.rmtree(ledger.parent), "missing"),
        (lambda ledger: ledger.write_text(""), "missing"),
        (lambda ledger: ledger.write_text("{not json"), "cannot read the DP ledger"),
        (lambda ledger: ledger.write_text('{"format": "something else"}'), "not a MedPFL DP ledger"),
    ],
    ids=["deleted", "folder-deleted", "emptied", "corrupt", "foreign"],
)
def test_a_missing_or_corrupt_client_dp_ledger_stops_releases(tmp_path, damage, match) -> None:
    """After two releases, a damaged ledger refuses the third (the update is not sent) and names the reset command."""
    site = _site(tmp_path)
    for _ in range(2):
        _release(_job_filter(), site)
    damage(site / LEDGER)
    damaged = (site / LEDGER).read_bytes() if (site / LEDGER).exists() else None
    with pytest.raises(MedPFLError, match=match) as error:
        _release(_job_filter(), site)
    assert "reset-ledger" in error.value.fix
    assert ((site / LEDGER).read_bytes() if (site / LEDGER).exists() else None) == damaged  # nothing written


def test_a_rolled_back_or_swapped_ledger_is_refused(tmp_path) -> None:
    """An older copy of the site's ledger, or another (fresh) ledger file in its place, cannot lower ε."""
    site, other = _site(tmp_path), _site(tmp_path, "site-2")
    _release(_job_filter(), site)
    backup = (site / LEDGER).read_text()
    _release(_job_filter(), site)
    (site / LEDGER).write_text(backup)
    with pytest.raises(MedPFLError, match="rolled back"):
        _release(_job_filter(), site)
    _release(_job_filter(), other)
    shutil.copy(other / LEDGER, site / LEDGER)
    with pytest.raises(MedPFLError, match="replaced"):
        _release(_job_filter(), site)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_a_deleted_or_corrupt_dp_sgd_ledger_stops_training(tmp_path) -> None:
    """DP-SGD: once steps were recorded, the next job cannot restore from a deleted or corrupt ledger."""
    from medpfl_app.defenses.dp_sgd import site_dp_sgd_ledger

    site = SiteLedgers(_site(tmp_path))
    session, ledger = _dp_session(), site_dp_sgd_ledger(site)
    assert ledger.restore(session) == 0
    _train(session)
    ledger.record(session, {"round": 0})
    steps = sum(n for _, _, n in session.privacy_engine.accountant.history)
    assert json.loads(site.anchor("dp_sgd").path.read_text())["steps"] == steps > 0
    ledger.path.unlink()
    with pytest.raises(MedPFLError, match="missing"):
        site_dp_sgd_ledger(site).restore(_dp_session())
    ledger.path.write_text("[1, 2")
    with pytest.raises(MedPFLError, match="cannot read the DP ledger"):
        site_dp_sgd_ledger(site).restore(_dp_session())


def _dp_session():
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from medpfl_app.defenses.dp_sgd import DPSGDConfig, make_private

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    data = TensorDataset(torch.randn(16, 1, 4, 4), torch.randint(0, 2, (16,)))
    return make_private(
        model,
        lambda params: torch.optim.SGD(params, lr=0.1),
        DataLoader(data, batch_size=4),
        DPSGDConfig(noise_multiplier=1.0, max_grad_norm=1.0),
    )


def _train(session) -> None:
    from torch import nn

    for images, labels in session.data_loader:
        if len(labels):
            session.optimizer.zero_grad()
            nn.functional.cross_entropy(session.module(images), labels).backward()
            session.optimizer.step()


# --- 4. locking survives a deleted lock file --------------------------------------------------------------------


def _charge_many(workspace: str, worker: int, count: int, barrier) -> None:
    """Child process: charge ``count`` releases to the site's ledger, starting together with the other worker."""
    ledger = SiteLedgers(workspace).client_dp_ledger(delta=1e-5)
    barrier.wait(timeout=120)
    for index in range(count):
        ledger.charge(noise_multiplier=2.0, context={"worker": worker, "index": index})


def test_two_processes_racing_lose_no_release_while_lock_files_are_deleted(tmp_path) -> None:
    """Two processes charge the same ledger concurrently while a third party keeps deleting (and planting) .lock
    files beside it: every release is in the ledger, in the anchor, and nothing depends on a lock file."""
    site = _site(tmp_path)
    ledger_dir = site / LEDGER.parent
    ledger_dir.mkdir()
    stale = ledger_dir / (LEDGER.name + ".lock")  # what the old implementation locked
    stale.write_text("")
    count = 12
    context = multiprocessing.get_context("spawn")  # a clean interpreter per site job, like NVFlare's processes
    barrier = context.Barrier(2)
    workers = [context.Process(target=_charge_many, args=(str(site), worker, count, barrier)) for worker in (0, 1)]
    stop = threading.Event()

    def vandal() -> None:
        while not stop.is_set():
            for lock_file in ledger_dir.glob("*.lock"):
                lock_file.unlink(missing_ok=True)
            stale.write_text("")

    thread = threading.Thread(target=vandal, daemon=True)
    thread.start()
    try:
        for process in workers:
            process.start()
        for process in workers:
            process.join(timeout=300)
    finally:
        stop.set()
        thread.join()
    assert [process.exitcode for process in workers] == [0, 0]
    state = json.loads((site / LEDGER).read_text())
    assert state["history"] == [[2.0, 1.0, 2 * count]]
    recorded = sorted((r["worker"], r["index"]) for r in state["releases"])
    assert recorded == [(worker, index) for worker in (0, 1) for index in range(count)]
    totals = [r["epsilon_total"] for r in state["releases"]]
    assert totals == sorted(totals) and len(set(totals)) == 2 * count  # each saw the other's releases
    assert json.loads(SiteLedgers(site).anchor("client_dp").path.read_text())["steps"] == 2 * count


def test_the_lock_is_held_on_the_ledger_file_itself(tmp_path) -> None:
    """While one holder has the lock, the ledger file cannot be flocked by anyone else, whatever lock files exist."""
    import fcntl

    path = tmp_path / "ledger.json"
    with locked(path):
        for lock_file in tmp_path.glob("*.lock"):
            lock_file.unlink()
        assert not list(tmp_path.glob("*.lock"))
        fd = os.open(path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)


# --- 5. the only reset is explicit and recorded -----------------------------------------------------------------


def test_reset_ledger_command_is_recorded_and_the_new_ledger_says_so(tmp_path, capsys) -> None:
    """The admin's reset: old ledger archived byte for byte, one line appended to the reset log per reset, the new
    ledger starts with the reset record, ε restarts at 0 and every later update's meta counts the reset."""
    import hashlib

    from medpfl_app.cli.main import main

    site = _site(tmp_path)
    for _ in range(3):
        _release(_job_filter(), site)
    old_bytes = (site / LEDGER).read_bytes()
    argv = [
        "privacy",
        "reset-ledger",
        "--site-workspace",
        str(site),
        "--kind",
        "client_dp",
        "--reason",
        "new data release approved by the DPO",
        "--operator",
        "dpo@hospital",
    ]
    assert main(argv) == 0
    assert "old ledger kept as" in capsys.readouterr().out
    (record,) = SiteLedgers(site).resets()
    assert record["reason"] == "new data release approved by the DPO" and record["operator"] == "dpo@hospital"
    assert record["previous_steps"] == record["anchored_steps"] == 3 and record["previous_epsilon_total"] > 0
    assert Path(record["archived_to"]).read_bytes() == old_bytes
    assert record["previous_sha256"] == hashlib.sha256(old_bytes).hexdigest()
    new = json.loads((site / LEDGER).read_text())
    assert new["history"] == [] and [r["reset_id"] for r in new["resets"]] == [record["reset_id"]]
    assert new["ledger_id"] != json.loads(old_bytes)["ledger_id"]

    entry = _release(_job_filter(), site)
    assert entry["epsilon_total"] == pytest.approx(epsilon_per_release(2.0, 1e-5)) and entry["ledger_resets"] == 1

    (site / LEDGER).unlink()  # lost again: refused until the next recorded reset
    with pytest.raises(MedPFLError, match="missing"):
        _release(_job_filter(), site)
    assert main([*argv[:-4], "--reason", "disk failure"]) == 0
    log_lines = SiteLedgers(site).reset_log.read_text().splitlines()
    assert len(log_lines) == 2 and json.loads(log_lines[0]) == record  # appended, the first line untouched
    second = json.loads(log_lines[1])
    assert second["previous_steps"] is None and second["anchored_steps"] == 1 and second["archived_to"] is None
    assert _release(_job_filter(), site)["ledger_resets"] == 2


def test_reset_ledger_needs_a_reason_and_a_site(tmp_path, capsys) -> None:
    """No reason, a blank reason or a folder that is not a site workspace: nothing is reset."""
    from medpfl_app.cli.main import main

    site = _site(tmp_path)
    _release(_job_filter(), site)
    before = (site / LEDGER).read_bytes()
    with pytest.raises(SystemExit) as exited:
        main(["privacy", "reset-ledger", "--site-workspace", str(site), "--kind", "client_dp"])
    assert exited.value.code == 2
    assert (
        main(["privacy", "reset-ledger", "--site-workspace", str(site), "--kind", "client_dp", "--reason", "  "]) == 2
    )
    assert (
        main(
            [
                "privacy",
                "reset-ledger",
                "--site-workspace",
                str(tmp_path / "nowhere"),
                "--kind",
                "client_dp",
                "--reason",
                "x",
            ]
        )
        == 2
    )
    assert "needs a reason" in capsys.readouterr().err
    assert (site / LEDGER).read_bytes() == before and SiteLedgers(site).resets() == []


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_reset_repairs_a_corrupt_dp_sgd_ledger(tmp_path) -> None:
    """A corrupt DP-SGD ledger stops training until the recorded reset; then a new session starts from 0 steps."""
    from medpfl_app.defenses.dp_sgd import site_dp_sgd_ledger

    site = SiteLedgers(_site(tmp_path))
    session, ledger = _dp_session(), site_dp_sgd_ledger(site)
    ledger.restore(session)
    _train(session)
    ledger.record(session)
    ledger.path.write_text("{garbage")
    with pytest.raises(MedPFLError):
        site_dp_sgd_ledger(site).restore(_dp_session())
    reset = site.reset("dp_sgd", reason="ledger corrupted by a full disk", operator="it")
    assert reset.previous_steps is None and reset.anchored_steps > 0
    fresh = _dp_session()
    assert site_dp_sgd_ledger(site).restore(fresh) == 0
    assert Path(reset.archived_to).read_text() == "{garbage"


# --- 6. the shipped policy's default scope is DP -----------------------------------------------------------------


def test_the_template_has_no_scope_without_dp_and_a_job_cannot_ask_for_public(tmp_path) -> None:
    """Every scope of the shipped privacy.json applies ClientDPFilter; 'public' is unknown to NVFlare, so a job
    asking for it is rejected at deploy; a site admin's own non-DP default is installed with a warning."""
    from nvflare.apis.workspace import Workspace
    from nvflare.private.fed.app.fl_conf import create_privacy_manager

    from medpfl_app.nvflare.privacy_policy import dp_scopes, install_privacy_policy, load_privacy_template

    policy = load_privacy_template()
    assert dp_scopes(policy) == [scope["name"] for scope in policy["scopes"]]
    assert policy["default_scope"] in dp_scopes(policy) and "public" not in dp_scopes(policy)
    site = _site(tmp_path)
    install_privacy_policy(site)
    manager = create_privacy_manager(Workspace(str(site), site.name), names_only=False)
    assert manager.get_scope("public") is None and manager.get_scope(None).name == "private"


def test_a_site_admins_own_non_dp_default_scope_is_installed_with_a_warning(tmp_path, caplog) -> None:
    """A no-DP scope exists only if the site admin writes it; making it the default is logged."""
    from medpfl_app.nvflare.privacy_policy import install_privacy_policy, load_privacy_template

    policy = load_privacy_template()
    policy["scopes"].append(
        {
            "name": "public",
            "task_result_filters": [
                {"path": "medpfl_app.nvflare.filters.batchnorm.DropBatchNormStatsFilter", "args": {}}
            ],
        }
    )
    policy["default_scope"] = "public"
    own = tmp_path / "own_privacy.json"
    own.write_text(json.dumps(policy))
    with caplog.at_level(logging.WARNING, logger="medpfl.privacy"):
        install_privacy_policy(_site(tmp_path), own)
    assert "has no client-level DP" in caplog.text
