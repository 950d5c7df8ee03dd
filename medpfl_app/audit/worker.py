"""The background audit: a bounded queue of received updates, one attack thread, one ledger-writer thread.

The server's result filter only calls `AuditWorker.submit` (a non-blocking ``put``) or `AuditWorker.note`; every
attack, site round-trip and fsync happens on the worker's own threads, so training never waits for the audit.
A full queue or a failing audit becomes a ``not_audited`` ledger record with the reason. The record itself is
built by `medpfl_app.audit.ledger_record` (`build_record`, `metric_settings` and `unavailable_scores` are
re-exported here).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from medpfl_app.audit.isolation import AuditRunner
from medpfl_app.audit.ledger import AuditLedger
from medpfl_app.audit.ledger_record import build_record, metric_settings, unavailable_scores
from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.risk import RiskPolicy
from medpfl_app.audit.update_audit import AuditItem, AuditOutcome, audit_update, library_versions, warm_up_audit
from medpfl_app.contracts.record import RecordStatus

logger = logging.getLogger("medpfl.audit")

#: ``scorer(item, reconstructions, labels) -> site_scores`` (a `ScoreReply.to_json`): asks ``item.site`` to
#: score the reconstructions of the update ``item`` holds (the request names that update by its digest).
SiteScorer = Callable[[AuditItem, np.ndarray, np.ndarray | None], Mapping[str, Any]]


class AuditWorker:
    """Runs the audit plan on queued updates and appends one ledger record per update.

    Args:
        ledger: Where records go.
        plan: The attack plan.
        policy: The risk policy.
        scorer: Asks the site to score the reconstructions of its own update (None: scores unavailable).
        max_queue: Updates waiting for the attack thread at most; more are recorded ``not_audited``.
        job_id: Written into every record.
        audit_fn: The audit of one update (default `medpfl_app.audit.update_audit.audit_update`, looked up at call time).
        on_record: Called on the ledger thread with each record once it is durably written (policy actions).
        ssim_threshold: SSIM at which the sites count an image as reconstructed (stated in every record).
        runner: Where the attack work runs (`medpfl_app.audit.isolation`): an `AuditProcess` (a lower-priority,
            killable worker process, so the audit yields CPU to training and a stalled attack can be stopped) or
            None to run it on the attack thread itself. The scorer round-trip always stays in this process.
    """

    def __init__(
        self,
        ledger: AuditLedger,
        plan: AuditPlan,
        *,
        policy: RiskPolicy | None = None,
        scorer: SiteScorer | None = None,
        max_queue: int = 8,
        job_id: str | None = None,
        audit_fn: Callable[[AuditItem, AuditPlan], AuditOutcome] | None = None,
        on_record: Callable[[dict[str, Any]], None] | None = None,
        ssim_threshold: float = 0.9,
        runner: AuditRunner | None = None,
    ) -> None:
        self.ledger = ledger
        self.ssim_threshold = ssim_threshold
        self.runner = runner
        self.plan = plan
        self.policy = policy or RiskPolicy()
        self.scorer = scorer
        self.job_id = job_id
        self._audit_fn = audit_fn
        self._on_record = on_record
        self._items: queue.Queue[AuditItem | None] = queue.Queue(maxsize=max_queue)
        self._queued: dict[str | None, int] = {}  # site -> updates waiting (fair share)
        self._backlog: Counter[int | None] = Counter()  # round -> updates queued or under attack
        self._sites_seen: set[str | None] = set()
        self._queued_lock = threading.Lock()
        self._records: queue.Queue[dict[str, Any] | None] = queue.Queue()  # small dicts: unbounded is safe
        self._versions = library_versions()
        # imports the metrics here, never in the filter's process()
        self._metric_settings = metric_settings(ssim_threshold, self.policy.significance)
        self.audited = 0
        self.audit_seconds = 0.0
        self._attacker = threading.Thread(target=self._attack_loop, name="medpfl-audit", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name="medpfl-audit-ledger", daemon=True)
        self._attacker.start()
        self._writer.start()

    # --- called from the NVFlare filter: never block, never raise -------------------------------------------
    def submit(self, item: AuditItem) -> bool:
        """Queue ``item`` for the attack thread; returns False (recorded ``not_audited``) when it cannot wait.

        Each site may hold at most its share of the queue (`site_share`), so one site sending many updates cannot
        crowd the others out; a full queue refuses whoever comes next.
        """
        with self._queued_lock:
            self._sites_seen.add(item.site)
            share = self.site_share()
            if self._queued.get(item.site, 0) >= share:
                reason = (
                    f"{item.site} already has {share} updates waiting, its share of the audit queue "
                    f"({self._items.maxsize} places over {len(self._sites_seen)} sites)"
                )
            else:
                try:
                    self._items.put_nowait(item)
                    self._queued[item.site] = self._queued.get(item.site, 0) + 1
                    self._backlog[item.round] += 1
                    return True
                except queue.Full:
                    reason = f"audit queue full ({self._items.maxsize} updates waiting): the attack thread is behind"
        self.note(
            site=item.site, round_number=item.round, status=RecordStatus.NOT_AUDITED, meta=item.meta, reason=reason
        )
        return False

    def expect_sites(self, sites: Iterable[str]) -> None:
        """Count these sites in the fair share from the start (the server knows its clients)."""
        with self._queued_lock:
            self._sites_seen.update(sites)

    def site_share(self) -> int:
        """Places one site may hold in the queue: an equal share over the sites seen so far (at least one)."""
        return max(1, self._items.maxsize // max(1, len(self._sites_seen)))

    def note(
        self,
        *,
        site: str | None,
        round_number: int | None,
        status: RecordStatus,
        reason: str,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        """Record an update that was not audited or is not auditable (written by the ledger thread)."""
        self._records.put(
            self._record(
                job_id=self.job_id,
                site=site,
                round_number=round_number,
                status=status,
                reason=reason,
                meta=meta or {},
                outcome=None,
                site_scores=None,
            )
        )

    def _record(self, **parts: Any) -> dict[str, Any]:
        return build_record(
            **parts, policy=self.policy, plan=self.plan, versions=self._versions, settings=self._metric_settings
        )

    def pending(self) -> int:
        """Updates and records not yet in the ledger."""
        return self._items.unfinished_tasks + self._records.unfinished_tasks

    def backlog(self) -> dict[int | None, int]:
        """Updates still to audit (queued or under attack), by round: what the end-of-run progress reports."""
        with self._queued_lock:
            return {round_number: count for round_number, count in self._backlog.items() if count > 0}

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything queued is in the ledger; returns whether it got there in time."""
        deadline = time.monotonic() + timeout_s
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.pending()

    def stop(self) -> None:
        """Finish what is queued, then end both threads and the runner (idempotent)."""
        for q, thread in ((self._items, self._attacker), (self._records, self._writer)):
            if thread.is_alive():
                q.put(None)
                thread.join(timeout=600)
        if self.runner is not None:
            self.runner.close()

    def hard_timeout_s(self) -> float | None:
        """Seconds after which the runner stops one audit outright: the plan's budget plus screening and slack."""
        limit = self.plan.time_limit_s
        return None if limit is None else 1.5 * limit + 60.0

    # --- worker threads ---------------------------------------------------------------------------------------
    def _attack_loop(self) -> None:
        try:
            import torch

            torch.set_num_threads(1)  # leave the other cores to training: the audit must not slow it
        except Exception:  # noqa: BLE001 - only a performance hint
            pass
        if self.runner is not None:
            try:  # before the first item: its speed must not include the process's warm-up
                seconds = self.runner.run(warm_up_audit, timeout_s=600)
                logger.info("MedPFL audit: worker process warmed up in %.1f s", seconds)
            except Exception as error:  # noqa: BLE001 - the audits themselves record any lasting failure
                logger.warning("MedPFL audit: could not warm up the worker process: %s", error)
        while True:
            item = self._items.get()
            if item is not None:
                with self._queued_lock:
                    self._queued[item.site] = max(0, self._queued.get(item.site, 0) - 1)
            try:
                if item is None:
                    return
                self._records.put(self._audit_one(item))
            except BaseException as error:  # noqa: BLE001 - a broken audit must still leave a record
                self.note(
                    site=getattr(item, "site", None),
                    round_number=getattr(item, "round", None),
                    status=RecordStatus.NOT_AUDITED,
                    reason=f"internal audit error: {error!r}",
                    meta=getattr(item, "meta", None),
                )
            finally:
                if item is not None:
                    with self._queued_lock:
                        self._backlog[item.round] -= 1
                        if self._backlog[item.round] <= 0:
                            del self._backlog[item.round]
                self._items.task_done()

    def _audit_one(self, item: AuditItem) -> dict[str, Any]:
        started = time.monotonic()
        audit_fn = self._audit_fn or audit_update
        try:
            if self.runner is None:
                outcome = audit_fn(item, self.plan)
            else:
                outcome = self.runner.run(audit_fn, item, self.plan, timeout_s=self.hard_timeout_s())
        except Exception as error:  # noqa: BLE001 - recorded, never raised into NVFlare
            from medpfl_app.errors import MedPFLError

            reason = f"{error.problem} ({error.fix})" if isinstance(error, MedPFLError) else f"audit failed: {error!r}"
            return self._record(
                job_id=self.job_id or item.job_id,
                site=item.site,
                round_number=item.round,
                status=RecordStatus.NOT_AUDITED,
                reason=reason,
                meta=item.meta,
                outcome=None,
                site_scores=None,
            )
        scores = self._site_scores(item, outcome)
        self.audited += 1
        self.audit_seconds += time.monotonic() - started
        record = self._record(
            job_id=self.job_id or item.job_id,
            site=item.site,
            round_number=item.round,
            status=RecordStatus.AUDITED,
            reason=None,
            meta=item.meta,
            outcome=outcome,
            site_scores=scores,
        )
        record["attack_budget"]["audit_wall_time_s"] = round(time.monotonic() - started, 3)
        record["attack_budget"]["queue_wait_s"] = round(max(0.0, started_wall(item, started)), 3)
        return record

    def _site_scores(self, item: AuditItem, outcome: AuditOutcome) -> Mapping[str, Any]:
        """The site's scores of this outcome's reconstructions, or why there are none (never raises)."""
        if outcome.reconstructions is None:
            return unavailable_scores("the plan ran no optimisation attack: nothing to score")
        if self.scorer is None:
            return unavailable_scores("no site scorer configured on the server")
        try:
            return self.scorer(item, outcome.reconstructions, outcome.labels)
        except Exception as error:  # noqa: BLE001
            return unavailable_scores(f"asking the site for scores failed: {error!r}")

    def _write_loop(self) -> None:
        while True:
            record = self._records.get()
            try:
                if record is None:
                    return
                written = self.ledger.append(record)
                if self._on_record is not None:
                    self._on_record(written)
            except Exception as error:  # noqa: BLE001 - the ledger thread must survive a bad record
                logger.error("MedPFL audit: could not append a ledger record: %r", error)
            finally:
                self._records.task_done()


def started_wall(item: AuditItem, started_monotonic: float) -> float:
    """Seconds the item waited in the queue (wall clock; 0 when the filter did not stamp it)."""
    if not item.received_at:
        return 0.0
    return time.time() - (time.monotonic() - started_monotonic) - item.received_at
