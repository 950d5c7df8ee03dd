"""NVFlare adapters of the server-side audit: a read-only global-weights cache and the audit result filter.

Both are thin: the work happens in `medpfl_app.audit.worker` (threads) and `medpfl_app.audit.core` (pure).

- `GlobalWeightsCache`: server task-DATA filter (direction ``out``, task ``train``). The first time a round's global
  model goes out it copies the arrays once (the payload is shared between clients: never touched in place) and
  keeps the last few rounds, so the audit knows what each site started from.
- `AuditFilter`: server task-RESULT filter (direction ``in``, task ``train``). ``process()`` copies the update as
  received and hands it to the worker through a bounded queue, then returns the shareable unchanged; it never
  raises (a raising server result filter would drop the site's result). The ledger is
  ``<run dir>/medpfl/audit_ledger.jsonl``, which ``download_job`` delivers. At the end of the job it raises
  ``NotReadyToEndRun`` while audits remain (set ``end_run_readiness_timeout`` in the server config).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_exception import NotReadyToEndRun
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.audit.core import (
    AuditItem,
    copy_arrays,
    not_auditable_reason,
    plain_meta,
)
from medpfl_app.audit.ledger import LEDGER_FILE

RECORD_FOLDER = "medpfl"
HIGH_RISK_ACTIONS = ("report", "stop_job")
_KEEP_ROUNDS = 3

_cache_lock = threading.Lock()
_weights: dict[tuple[str | None, int], dict[str, Any]] = {}  # (job id, round) -> arrays


def cached_global_weights(job_id: str | None, round_number: int | None) -> dict[str, Any] | None:
    """The global weights sent for ``round_number`` of ``job_id`` (read-only by convention), or None."""
    if round_number is None:
        return None
    with _cache_lock:
        return _weights.get((job_id, int(round_number)))


def cache_global_weights(job_id: str | None, round_number: int, arrays: dict[str, Any]) -> None:
    with _cache_lock:
        _weights[(job_id, int(round_number))] = arrays
        rounds = sorted(r for j, r in _weights if j == job_id)
        for old in rounds[:-_KEEP_ROUNDS]:
            _weights.pop((job_id, old), None)


def ledger_path(fl_ctx: FLContext) -> str:
    """``<run dir>/medpfl/audit_ledger.jsonl`` of the current job (see `ReceivedUpdateRecorder`)."""
    run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
    return os.path.join(run_dir, RECORD_FOLDER, LEDGER_FILE)


class GlobalWeightsCache(Filter):
    """Read-only server task-data filter: copies each round's outgoing global weights once for the audit."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            round_number = shareable.get_header(AppConstants.CURRENT_ROUND)
            job_id = fl_ctx.get_job_id()
            if round_number is not None and cached_global_weights(job_id, round_number) is None:
                dxo = from_shareable(shareable)
                if isinstance(dxo.data, dict) and dxo.data:
                    cache_global_weights(job_id, int(round_number), copy_arrays(dxo.data))
        except Exception as error:  # noqa: BLE001 - the cache must never stop a round
            self.log_warning(fl_ctx, f"MedPFL audit: could not cache the global weights: {error!r}")
        return shareable


class AuditFilter(Filter):
    """Server task-result filter on ``train``: queue each received update for the background audit.

    Args:
        plan: `medpfl_app.audit.plan.AuditPlan` fields (plain JSON; defaults when None).
        risk_policy: `medpfl_app.audit.risk.RiskPolicy` fields (plain JSON; defaults when None).
        max_queue: Updates waiting for the attack thread at most; more are recorded ``not_audited``.
        drain_timeout_s: Longest the end of the job is held for the audits still queued.
        ssim_threshold: SSIM at which the sites count an image as reconstructed.
        on_high_risk: Policy action on the first ``high`` record: ``report`` (default: the ledger only) or
            ``stop_job`` (end the run through NVFlare's fatal-error event, with the site, round and scores as the
            reason). The audit runs behind training, so later rounds may already have started when it acts.
    """

    def __init__(
        self,
        plan: dict | None = None,
        risk_policy: dict | None = None,
        max_queue: int = 8,
        drain_timeout_s: float = 300.0,
        ssim_threshold: float = 0.9,
        on_high_risk: str = "report",
    ) -> None:
        super().__init__()
        from medpfl_app.audit.plan import AuditPlan
        from medpfl_app.audit.risk import RiskPolicy

        self.plan = plan
        self.risk_policy = risk_policy
        self.max_queue = max_queue
        self.drain_timeout_s = drain_timeout_s
        self.ssim_threshold = ssim_threshold
        self.on_high_risk = on_high_risk
        if on_high_risk not in HIGH_RISK_ACTIONS:
            from medpfl_app.errors import MedPFLError

            raise MedPFLError(f"unknown on_high_risk action {on_high_risk!r}", fix=f"use one of {HIGH_RISK_ACTIONS}")
        self._stopped = False
        self._released = False
        # Validated eagerly so a bad job config fails at deployment, not silently mid-run.
        self._plan = AuditPlan.from_dict(plan)
        self._policy = RiskPolicy.from_dict(risk_policy)
        self._worker = None
        self._engine = None
        self._end_wait_started: float | None = None
        self._lock = threading.Lock()

    # --- events ---------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif event_type == EventType.CHECK_END_RUN_READINESS:
            worker = self._worker
            if worker is not None and worker.pending():
                now = time.monotonic()
                if self._end_wait_started is None:
                    self._end_wait_started = now
                if now - self._end_wait_started < self.drain_timeout_s:
                    raise NotReadyToEndRun(f"MedPFL audit: {worker.pending()} audits still running")
            self._release_sites(fl_ctx)
        elif event_type == EventType.END_RUN:
            worker = self._worker
            if worker is not None:
                if worker.pending():
                    self.log_warning(fl_ctx, f"MedPFL audit: run ends with {worker.pending()} audits unfinished")
                threading.Thread(target=worker.stop, name="medpfl-audit-stop", daemon=True).start()
            self._render_report(fl_ctx)

    def _render_report(self, fl_ctx: FLContext) -> None:
        """Write the HTML/JSON reports beside the ledger, so `download_job` delivers them with it.

        Runs once at END_RUN, after the readiness wait drained the queue; a failure is logged, never raised, and
        `medpfl report <downloaded job>` can always re-render from the ledger.
        """
        try:
            from medpfl_app.reports import render_report

            ledger = ledger_path(fl_ctx)
            if os.path.isfile(ledger):
                paths = render_report(os.path.dirname(os.path.dirname(ledger)), os.path.dirname(ledger))
                self.log_info(fl_ctx, f"MedPFL audit: report written to {paths.html}")
        except Exception as error:  # noqa: BLE001 - reporting must never disturb the end of the job
            self.log_warning(fl_ctx, f"MedPFL audit: could not render the report: {error!r}")

    def _release_sites(self, fl_ctx: FLContext) -> None:
        """Tell every site the audit is done, so their scorers stop holding the end of the run (once)."""
        if self._released:
            return
        self._released = True
        from medpfl_app.audit.site_scorer import RELEASE_TOPIC

        try:
            fl_ctx.get_engine().send_aux_request(
                targets=None, topic=RELEASE_TOPIC, request=Shareable(), timeout=0.0, fl_ctx=fl_ctx, optional=True
            )
        except Exception as error:  # noqa: BLE001 - the sites then wait at most their wait_at_end_s
            self.log_warning(fl_ctx, f"MedPFL audit: could not release the sites: {error!r}")

    def _ensure_worker(self, fl_ctx: FLContext):
        with self._lock:
            if self._worker is None:
                self._start(fl_ctx)
            return self._worker

    def _start(self, fl_ctx: FLContext) -> None:
        from medpfl_app.audit.ledger import AuditLedger
        from medpfl_app.audit.worker import AuditWorker

        if self._worker is not None:
            return
        self._engine = fl_ctx.get_engine()
        ledger = AuditLedger(ledger_path(fl_ctx))
        self._worker = AuditWorker(
            ledger, self._plan, policy=self._policy, scorer=self._score_at_site, max_queue=self.max_queue,
            job_id=fl_ctx.get_job_id(), on_record=self._act_on_record,
        )
        self.log_info(fl_ctx, f"MedPFL audit: ledger at {ledger.path}; plan {self._plan.to_dict()}")

    # --- the filter -----------------------------------------------------------------------------------------
    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            self._queue(shareable, fl_ctx)
        except Exception as error:  # noqa: BLE001 - never cost a site its contribution
            try:
                self.log_warning(fl_ctx, f"MedPFL audit: could not queue the update: {error!r}")
                worker = self._worker
                if worker is not None:
                    peer = fl_ctx.get_peer_context()
                    worker.note(site=peer.get_identity_name() if peer else None,
                                round_number=shareable.get_header(AppConstants.CURRENT_ROUND),
                                status="not_audited", reason=f"internal error in the audit filter: {error!r}")
            except Exception:  # noqa: BLE001
                pass
        return shareable

    def _queue(self, shareable: Shareable, fl_ctx: FLContext) -> None:
        worker = self._ensure_worker(fl_ctx)
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else shareable.get_peer_prop("__identity_name__", None)
        round_number = shareable.get_header(AppConstants.CURRENT_ROUND)
        if not self._plan.selects(site, round_number):
            return
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            worker.note(site=site, round_number=round_number, status="not_auditable",
                        reason=not_auditable_reason(None, None, None))
            return
        meta = dict(dxo.meta or {})
        reason = not_auditable_reason(dxo.data_kind, dxo.data, meta)
        kept = plain_meta(meta)
        if reason is not None:
            worker.note(site=site, round_number=round_number, status="not_auditable", reason=reason, meta=kept)
            return
        job_id = fl_ctx.get_job_id()
        item = AuditItem(
            site=site, round=None if round_number is None else int(round_number), job_id=job_id,
            data_kind=dxo.data_kind, update=copy_arrays(dxo.data),
            global_weights=cached_global_weights(job_id, round_number), meta=kept, received_at=time.time(),
        )
        worker.submit(item)

    # --- policy action (runs on the ledger thread, after the record is durable) --------------------------------
    def _act_on_record(self, record: dict[str, Any]) -> None:
        if self.on_high_risk != "stop_job" or record.get("risk") != "high" or self._stopped or self._engine is None:
            return
        self._stopped = True
        scores = record.get("site_scores") or {}
        reason = (
            f"MedPFL audit policy stop_job: high privacy risk for {record.get('site')} in round {record.get('round')} "
            f"(attack {(record.get('attack_budget') or {}).get('attack')}, best SSIM {scores.get('ssim_max')}, "
            f"success rate {scores.get('attack_success_rate')}); see the audit ledger"
        )
        with self._engine.new_context() as fl_ctx:
            self.log_error(fl_ctx, reason)
            self.system_panic(reason, fl_ctx)

    # --- the site round-trip (runs on the worker thread) ----------------------------------------------------
    def _score_at_site(self, site: str, round_number: int | None, reconstructions, labels) -> dict[str, Any]:
        from medpfl_app.audit import site_scorer as sc
        from medpfl_app.audit.worker import unavailable_scores

        engine = self._engine
        if engine is None:
            return unavailable_scores("the server engine is not available")
        request = Shareable()
        request[sc.REQUEST_ROUND] = round_number
        request[sc.REQUEST_RECONSTRUCTIONS] = reconstructions
        request[sc.REQUEST_LABELS] = labels
        request[sc.REQUEST_THRESHOLD] = float(self.ssim_threshold)
        timeout = self._plan.score_timeout_s
        with engine.new_context() as fl_ctx:
            replies = engine.send_aux_request(
                targets=[site], topic=sc.SCORE_TOPIC, request=request, timeout=timeout, fl_ctx=fl_ctx
            )
        reply = (replies or {}).get(site)
        if reply is None:
            return unavailable_scores(f"no reply from {site} within {timeout:g} s (unreachable or not running)")
        code = reply.get_return_code()
        if code != "OK":
            return unavailable_scores(f"{site} answered {code} (no scorer component, or it timed out)")
        scores = reply.get(sc.REPLY_SCORES)
        if not isinstance(scores, dict):
            return unavailable_scores(f"{site} sent no scores")
        from medpfl_app.audit.scoring import check_scalars_only

        check_scalars_only(scores)
        return dict(scores)
