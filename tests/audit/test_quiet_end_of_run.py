"""The audit holds the end of a run quietly: NVFlare's "not ready" property, one progress line, a bounded wait.

The readiness events go through NVFlare's own dispatch (`fire_event_to_components`), which logs every exception a
handler raises with a traceback: these tests check that none is raised, so none is logged.
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from nvflare.apis.dxo import DXO, DataKind
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.apis.utils.event import fire_event_to_components
from nvflare.apis.workspace import Workspace
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.audit import worker as audit_worker
from medpfl_app.audit.drain_progress import DRAIN_PREFIX, DrainProgress, drain_progress
from medpfl_app.audit.update_audit import AuditOutcome
from medpfl_app.nvflare.end_of_run import EndOfRunHold, holds_end_of_run
from medpfl_app.nvflare.server.audit_filter import AuditFilter
from medpfl_app.nvflare.site.scorer import RELEASE_TOPIC, AuditSiteScorer

JOB = "job-quiet"
FACTS = {"network": "lenet_sigmoid", "image_size": 8, "in_channels": 1, "num_classes": 4, "batch_size": 1}


class _Engine:
    """The server engine parts the audit filter uses: a workspace and the release message to the sites."""

    def __init__(self, root) -> None:
        self.root = root
        self.released: list[str] = []

    def get_workspace(self) -> Workspace:
        for folder in ("startup", "local"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        return Workspace(root_dir=str(self.root), site_name="server")

    def get_clients(self) -> list:
        return []

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        del event_type, fl_ctx

    def send_aux_request(self, *, targets, topic, request, timeout, fl_ctx, optional=False):
        del targets, request, timeout, fl_ctx, optional
        self.released.append(topic)
        return {}


def _ctx(engine: _Engine) -> FLContext:
    ctx = FLContext()
    ctx.set_prop(ReservedKey.RUN_NUM, JOB, private=False, sticky=True)
    ctx.set_prop(ReservedKey.IDENTITY_NAME, "server", private=False, sticky=True)
    ctx.set_prop(ReservedKey.ENGINE, engine, private=True, sticky=True)
    peer = FLContext()
    peer.set_prop(ReservedKey.IDENTITY_NAME, "site-1", private=False, sticky=True)
    ctx.set_peer_context(peer)
    return ctx


def _update(round_number: int) -> Shareable:
    rng = np.random.default_rng(round_number)
    data = {"net.fc.weight": rng.normal(size=(4, 6)).astype(np.float32), "net.fc.bias": np.zeros(4, np.float32)}
    shareable = DXO(data_kind=DataKind.WEIGHT_DIFF, data=data, meta=dict(FACTS)).to_shareable()
    shareable.set_header(AppConstants.CURRENT_ROUND, round_number)
    return shareable


def _outcome() -> AuditOutcome:
    return AuditOutcome(
        server_indicators={"labels_recovered": True, "images_per_update": 1, "bn_statistics_exposed": False},
        attack_budget={"attack": "fake", "iterations": 0},
        threat_model={"attacker": "test"},
        model={"network": "lenet_sigmoid", "config_hash": "sha256:0", "num_parameters": 1},
    )


def _check(component, ctx: FLContext) -> bool:
    """One readiness check as NVFlare fires it; returns whether the component held the end of the run."""
    ctx.remove_prop(FLContextKey.NOT_READY_TO_END_RUN, force_removal=True)
    ctx.remove_prop(FLContextKey.EXCEPTIONS, force_removal=True)
    fire_event_to_components(EventType.CHECK_END_RUN_READINESS, [component], ctx)
    assert not ctx.get_prop(FLContextKey.EXCEPTIONS), "a designed wait must not raise"
    return holds_end_of_run(ctx)


def _messages(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    return [r.getMessage() for r in caplog.records if level is None or r.levelno == level]


@pytest.fixture
def blocked_audit(tmp_path, monkeypatch):
    """A started audit filter (attack on a thread) whose attacks wait for the returned event."""
    release = threading.Event()
    monkeypatch.setattr(audit_worker, "audit_update", lambda item, plan: (release.wait(30), _outcome())[1])
    engine = _Engine(tmp_path)
    audit = AuditFilter(isolate=False, drain_timeout_s=600.0)
    audit.check_wait_s = 0.0  # answer at once: the tests never depend on timing
    ctx = _ctx(engine)
    audit.handle_event(EventType.START_RUN, ctx)
    yield audit, ctx, engine, release
    release.set()
    audit._worker.stop()


# --- the progress line ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "progress",
    [
        DrainProgress(round=5, left=2, total=3),
        DrainProgress(round=None, left=1, total=1),
        DrainProgress(round=None, left=0, total=3),
    ],
)
def test_a_drain_line_is_read_back_from_an_nvflare_log_line(progress: DrainProgress) -> None:
    line = (
        f"2026-12-01 21:57:36,372 - AuditFilter - INFO - [identity=simulator_server, run=simulate_job]: "
        f"{progress.log_line()}"
    )
    assert DrainProgress.parse(line) == progress


def test_the_drain_line_says_round_and_updates_left() -> None:
    progress = DrainProgress(round=5, left=2, total=3)
    assert progress.log_line() == f"{DRAIN_PREFIX} auditing round 5: 2 of 3 updates left"
    assert progress.describe() == "auditing round 5: 2 of 3 updates left"
    assert DrainProgress(round=None, left=0, total=3).describe() == "audit done (3 updates at the end)"
    assert DrainProgress(round=1, left=1, total=1).describe() == "auditing round 1: 1 of 1 update left"


@pytest.mark.parametrize(
    "line",
    [
        "2026-12-01 21:57:36,372 - INFO - Round 4 started.",
        "MedPFL audit: ledger at /x/medpfl/audit_ledger.jsonl",
        f"{DRAIN_PREFIX} something else entirely",
        "",
    ],
)
def test_other_lines_are_no_drain_progress(line: str) -> None:
    assert DrainProgress.parse(line) is None


def test_progress_names_the_oldest_round_and_counts_every_update_left() -> None:
    assert drain_progress({4: 1, 3: 2, None: 1}, 3) == DrainProgress(round=3, left=4, total=4)
    assert drain_progress({}, 3) == DrainProgress(round=None, left=0, total=3)
    with pytest.raises(ValueError, match="negative"):
        DrainProgress(round=1, left=-1, total=0)


def test_the_hold_is_bounded_from_its_first_check() -> None:
    now = [100.0]
    hold = EndOfRunHold(10.0, clock=lambda: now[0])
    assert not hold.expired() and hold.left_s() == 10.0
    assert hold.start() and not hold.start()  # only the first call starts it
    now[0] = 109.0
    assert not hold.expired() and hold.left_s() == pytest.approx(1.0)
    now[0] = 110.0
    assert hold.expired() and hold.waited_s() == pytest.approx(10.0)
    assert EndOfRunHold(0.0).expired()


# --- the server's audit ----------------------------------------------------------------------------------------
def test_the_server_holds_the_end_quietly_and_reports_the_drain(blocked_audit, caplog) -> None:
    """While audits remain the server answers "not ready" without an exception, logs one progress line per change,
    and once drained it says so, is ready and releases the sites."""
    audit, ctx, engine, release = blocked_audit
    audit.process(_update(3), ctx)
    audit.process(_update(4), ctx)
    caplog.set_level(logging.INFO)
    assert _check(audit, ctx) and _check(audit, ctx)
    drain_lines = [m for m in _messages(caplog) if DRAIN_PREFIX in m]
    assert len(drain_lines) == 1, drain_lines  # once, not per check
    assert drain_lines[0].endswith(f"{DRAIN_PREFIX} auditing round 3: 2 of 2 updates left")
    assert engine.released == []  # the sites keep waiting while the server drains
    release.set()
    assert audit._worker.drain(60)
    assert not _check(audit, ctx)
    assert DrainProgress.parse(_messages(caplog)[-1]) == DrainProgress(round=None, left=0, total=2)
    assert engine.released == [RELEASE_TOPIC]
    assert not [m for m in _messages(caplog) if "Traceback" in m or "NotReadyToEndRun" in m]
    assert not _messages(caplog, logging.ERROR)


def test_the_server_stops_holding_at_its_bound_with_one_warning(blocked_audit, caplog) -> None:
    """Past drain_timeout_s the run may end, with one warning that names what is left; the audit never holds it
    longer, and later checks stay ready."""
    audit, ctx, engine, _ = blocked_audit
    audit.process(_update(0), ctx)
    audit.drain_timeout_s = 0.0
    caplog.set_level(logging.INFO)
    assert not _check(audit, ctx) and not _check(audit, ctx)
    warnings = _messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and "1 updates not yet audited" in warnings[0], warnings
    assert engine.released == [RELEASE_TOPIC]
    assert not _messages(caplog, logging.ERROR)


def test_a_server_with_nothing_to_audit_is_ready_at_once(tmp_path, caplog) -> None:
    engine = _Engine(tmp_path)
    audit = AuditFilter(isolate=False)
    ctx = _ctx(engine)
    audit.handle_event(EventType.START_RUN, ctx)
    caplog.set_level(logging.INFO)
    try:
        assert not _check(audit, ctx)
    finally:
        audit._worker.stop()
    assert not [m for m in _messages(caplog) if DRAIN_PREFIX in m]
    assert engine.released == [RELEASE_TOPIC]


def test_the_worker_backlog_counts_updates_by_round_until_recorded(blocked_audit) -> None:
    audit, ctx, _, release = blocked_audit
    audit.process(_update(2), ctx)
    audit.process(_update(2), ctx)
    assert audit._worker.backlog() == {2: 2}
    release.set()
    assert audit._worker.drain(60) and audit._worker.backlog() == {}


# --- the site's scorer -----------------------------------------------------------------------------------------
def _site_ctx(tmp_path) -> FLContext:
    """A site's context: NVFlare's warnings fire a log event through the engine."""
    return _ctx(_Engine(tmp_path / "engine"))


def _trained_site(tmp_path) -> AuditSiteScorer:
    """A scorer of site-1 whose training script recorded round 0 (the file's content is not read here)."""
    run_dir = tmp_path / "site-1" / JOB
    (run_dir / "medpfl" / "round_samples").mkdir(parents=True)
    (run_dir / "medpfl" / "round_samples" / "round_0.json").write_text("{}")
    scorer = AuditSiteScorer(wait_at_end_s=60.0)
    scorer.check_wait_s = 0.0
    scorer._bind("site-1", JOB, run_dir)
    return scorer


def test_a_site_holds_the_end_quietly_until_the_server_releases_it(tmp_path, caplog) -> None:
    scorer = _trained_site(tmp_path)
    caplog.set_level(logging.INFO)
    assert _check(scorer, _site_ctx(tmp_path)) and _check(scorer, _site_ctx(tmp_path))
    held = [m for m in _messages(caplog) if "holds the end of the run" in m]
    assert len(held) == 1 and "round 0 is not scored yet" in held[0], held
    scorer._on_release(RELEASE_TOPIC, Shareable(), FLContext(), origin=f"site-2.{JOB}")
    assert _check(scorer, _site_ctx(tmp_path)), "only the server may release a site"
    scorer._on_release(RELEASE_TOPIC, Shareable(), FLContext(), origin=f"server.{JOB}")
    assert not _check(scorer, _site_ctx(tmp_path))
    assert not _messages(caplog, logging.ERROR)


def test_a_site_stops_holding_at_its_bound_with_one_warning(tmp_path, caplog) -> None:
    scorer = _trained_site(tmp_path)
    scorer.wait_at_end_s = 1e-9  # the bound has passed by the first check
    caplog.set_level(logging.INFO)
    assert not _check(scorer, _site_ctx(tmp_path)) and not _check(scorer, _site_ctx(tmp_path))
    warnings = [m for m in _messages(caplog, logging.WARNING) if "stopped waiting" in m]
    assert len(warnings) == 1, _messages(caplog)
    assert not _messages(caplog, logging.ERROR)


def test_a_site_that_trained_nothing_or_never_waits_is_ready(tmp_path) -> None:
    untrained = AuditSiteScorer()
    untrained._bind("site-1", JOB, tmp_path / "no-rounds")
    assert not _check(untrained, _site_ctx(tmp_path))
    never = _trained_site(tmp_path)
    never.wait_at_end_s = 0.0
    assert not _check(never, _site_ctx(tmp_path))


# --- the simulator's watch of the log and the demo's progress bar ----------------------------------------------
def test_the_simulation_watch_reports_rounds_and_drain_lines_in_log_order(tmp_path) -> None:
    """Only complete lines count (the last one may still be written); each round is reported once."""
    from medpfl_app.nvflare.jobs.simulate import _LogWatcher

    log = tmp_path / "simulator_console.log"
    events: list[object] = []
    watcher = _LogWatcher(log, on_round=events.append, on_drain=events.append)
    stamp = "2026-12-01 21:57:36,372 - INFO - "
    log.write_text(
        f"{stamp}Round 0 started.\n{stamp}Round 1 started.\n{stamp}Round 1 started.\n"
        f"{stamp}[identity=simulator_server]: {DRAIN_PREFIX} auditing round 1: 2 of 3 upd"
    )
    watcher.poll()
    assert events == [0, 1]
    with open(log, "a") as handle:
        handle.write(f"ates left\n{stamp}{DrainProgress(round=None, left=0, total=3).log_line()} in 4 s\n")
    watcher.poll()
    assert events[2:] == [DrainProgress(round=1, left=2, total=3), DrainProgress(round=None, left=0, total=3)]


def test_the_progress_bar_counts_finished_rounds_then_names_the_drain() -> None:
    from medpfl_app.nvflare.jobs.progress import SimulationProgress

    with SimulationProgress(3, enabled=False) as progress:
        progress.round_started(0)
        assert (progress.finished_rounds, progress.status) == (0, "training round 0")
        progress.round_started(2)
        assert progress.finished_rounds == 2  # the last round is still training: not 100 %
        progress.draining(DrainProgress(round=2, left=2, total=3))
        assert (progress.finished_rounds, progress.status) == (3, "auditing round 2: 2 of 3 updates left")
    assert progress.finished_rounds == 3
