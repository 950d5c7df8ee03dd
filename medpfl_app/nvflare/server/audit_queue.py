"""The bounded queue from the audit filter to the audit worker, and its drain at the end of the run.

`open_worker` starts the worker (`medpfl_app.audit.worker.AuditWorker`: a bounded queue, the attack thread, the
ledger thread; with ``isolate`` the attacks run in `medpfl_app.audit.isolation.AuditProcess`). At the end of the
job `EndOfRunDrain` holds the run while audits remain, at most ``drain_timeout_s`` (`medpfl_app.nvflare.end_of_run`:
NVFlare's "not ready" property, not an exception, so a designed wait logs no traceback), says how far it is in one
INFO line per change (`medpfl_app.audit.drain_progress`), then releases the sites' scorers. `render_report` writes
the reports beside the ledger at ``END_RUN``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from medpfl_app.audit.drain_progress import DrainProgress, drain_progress
from medpfl_app.nvflare.end_of_run import EndOfRunHold, hold_end_of_run
from medpfl_app.nvflare.server.arrival_record import ledger_path
from medpfl_app.nvflare.site.protocol import RELEASE_TOPIC


def open_worker(
    fl_ctx: FLContext,
    ledger: Any,
    *,
    plan: Any,
    policy: Any,
    scorer: Callable[..., dict[str, Any]],
    on_record: Callable[[dict[str, Any]], None],
    max_queue: int,
    ssim_threshold: float,
    isolate: bool,
    memory_limit_mb: float | None,
) -> Any:
    """Start the audit worker of this job, writing to ``ledger``; the sites the server knows share its queue."""
    from medpfl_app.audit.worker import AuditWorker

    runner = None
    if isolate:
        from medpfl_app.audit.isolation import AuditProcess

        runner = AuditProcess(memory_limit_mb=memory_limit_mb)
        runner.warm_up()  # torch imports in the child while the first round trains
    worker = AuditWorker(
        ledger,
        plan,
        policy=policy,
        scorer=scorer,
        max_queue=max_queue,
        job_id=fl_ctx.get_job_id(),
        on_record=on_record,
        ssim_threshold=ssim_threshold,
        runner=runner,
    )
    try:
        worker.expect_sites(client.name for client in fl_ctx.get_engine().get_clients())
    except Exception:  # noqa: BLE001 - the share then grows as sites are seen
        pass
    return worker


def stop_worker(owner: FLComponent, worker: Any, fl_ctx: FLContext) -> None:
    """At ``END_RUN``: say what is left, and stop the worker in the background (it finishes what is queued)."""
    if worker is None:
        return
    if worker.pending():
        owner.log_warning(fl_ctx, f"MedPFL audit: run ends with {worker.pending()} audits unfinished")
    threading.Thread(target=worker.stop, name="medpfl-audit-stop", daemon=True).start()


class EndOfRunDrain:
    """The audit's hold on the end of the run: bounded, reported once per change, and released once.

    Args:
        owner: The audit filter (its log lines are the drain's: the simulator watch parses them).
        limit_s: ``drain_timeout_s`` at construction (each check passes the value configured then).
    """

    def __init__(self, owner: FLComponent, limit_s: float) -> None:
        self._owner = owner
        self._hold = EndOfRunHold(limit_s)
        self._limit_s = limit_s
        self._total = 0
        self._reported: DrainProgress | None = None
        self._finished = False
        self._released = False

    def check(self, fl_ctx: FLContext, worker: Any, *, limit_s: float, wait_s: float) -> None:
        """Hold the end of the run while audits remain, at most ``limit_s`` from the first check; then release
        the sites. Never raises: a designed wait is no error (`medpfl_app.nvflare.end_of_run`)."""
        self._limit_s = limit_s
        if worker is not None and not self._finished and worker.pending():
            if not self._hold.started:
                self._hold.limit_s = limit_s  # as configured now, not at construction
            if self._hold.start():
                self._total = sum(worker.backlog().values())
            if not self._hold.expired():
                self._report(fl_ctx, worker)
                if not worker.drain(min(wait_s, self._hold.left_s())):
                    hold_end_of_run(fl_ctx)
                    return
            self._finish(fl_ctx, worker)
        elif worker is not None and self._hold.started:
            self._finish(fl_ctx, worker)  # drained between two checks
        self.release_sites(fl_ctx)

    def _report(self, fl_ctx: FLContext, worker: Any) -> None:
        """One INFO line each time the backlog changes (`DrainProgress.log_line`, parsed by the simulator watch)."""
        progress = drain_progress(worker.backlog(), self._total)
        self._total = progress.total
        if progress.left and progress != self._reported:
            self._reported = progress
            self._owner.log_info(fl_ctx, progress.log_line())

    def _finish(self, fl_ctx: FLContext, worker: Any) -> None:
        """Say once how the drain ended: done, or given up at the bound with audits left (a warning)."""
        if self._finished:
            return
        self._finished = True
        left = sum(worker.backlog().values())
        if worker.pending():
            self._owner.log_warning(
                fl_ctx,
                f"MedPFL audit: stopped holding the end of the run after "
                f"{self._hold.waited_s():.0f} s (drain_timeout_s {self._limit_s:g}) "
                f"with {left} updates not yet audited",
            )
        elif self._total:  # only ledger writes were left: nothing worth a line
            self._owner.log_info(
                fl_ctx,
                DrainProgress(round=None, left=0, total=self._total).log_line() + f" in {self._hold.waited_s():.0f} s",
            )

    def release_sites(self, fl_ctx: FLContext) -> None:
        """Tell every site the audit is done, so their scorers stop holding the end of the run (once)."""
        if self._released:
            return
        self._released = True
        try:
            fl_ctx.get_engine().send_aux_request(
                targets=None, topic=RELEASE_TOPIC, request=Shareable(), timeout=0.0, fl_ctx=fl_ctx, optional=True
            )
        except Exception as error:  # noqa: BLE001 - the sites then wait at most their wait_at_end_s
            self._owner.log_warning(fl_ctx, f"MedPFL audit: could not release the sites: {error!r}")


def render_report(owner: FLComponent, fl_ctx: FLContext, thumbnail_dir: str | None) -> None:
    """Write the HTML/JSON reports beside the ledger, so `download_job` delivers them with it.

    Runs once at END_RUN, after the readiness wait drained the queue; a failure is logged, never raised, and
    `medpfl report <downloaded job>` can always re-render from the ledger.

    Args:
        owner: The audit filter (logs).
        fl_ctx: The END_RUN context.
        thumbnail_dir: This job's own, opted-in thumbnail store (None: thumbnails off).
    """
    try:
        from medpfl_app.audit.thumbnail_store import stored_any
        from medpfl_app.reports import render_report as render

        ledger = ledger_path(fl_ctx)
        if os.path.isfile(ledger):
            paths = render(
                os.path.dirname(os.path.dirname(ledger)),
                os.path.dirname(ledger),
                # only this job's own, opted-in store: never a folder the job did not write
                thumbnails_from=thumbnail_dir if thumbnail_dir and stored_any(thumbnail_dir) else None,
            )
            owner.log_info(
                fl_ctx,
                f"MedPFL audit: report written to {paths.html}"
                + (f" with {len(paths.thumbnails)} thumbnails" if paths.thumbnails else ""),
            )
    except Exception as error:  # noqa: BLE001 - reporting must never disturb the end of the job
        owner.log_warning(fl_ctx, f"MedPFL audit: could not render the report: {error!r}")
