"""NVFlare adapters of the server-side audit: the audit result filter and the read-only global-weights cache.

Both are thin: the work happens in `medpfl_app.audit.worker` (threads) and `medpfl_app.audit.update_audit` (pure).

- `GlobalWeightsCache` (`medpfl_app.nvflare.server.global_weights`): server task-DATA filter (direction ``out``,
  task ``train``). The first time a round's global model goes out it copies the arrays once (the payload is shared
  between clients: never touched in place) and keeps the last few rounds, so the audit knows what each site
  started from. The audit filter finds it through an event when it starts: no process-global state.
- `AuditFilter`: server task-RESULT filter (direction ``in``, task ``train``). ``process()`` checks what arrived
  (`receiving`), copies the update as received and hands it to the worker through a bounded queue (`audit_queue`),
  then returns the shareable unchanged, or emptied when the policy keeps it out of aggregation (`policy_action`);
  it never raises (a raising server result filter would drop the site's result). Every update gets one ledger
  record (`arrival_record`): ``<run dir>/medpfl/audit_ledger.jsonl``, which ``download_job`` delivers. The worker
  asks the sites to score its reconstructions (`site_requests`). At the end of the job it holds the run while
  audits remain, at most ``drain_timeout_s`` (`medpfl_app.nvflare.end_of_run`: NVFlare's "not ready" property, not
  an exception, so a designed wait logs no traceback; set ``end_run_readiness_timeout`` in the server config), and
  says how far it is in one INFO line per change (`medpfl_app.audit.drain_progress`).

Thumbnails (off by default): with ``store_reconstructions`` on, the audit also writes the reconstructions it
produced as owner-only PNGs (`medpfl_app.audit.thumbnail_store`) under ``<run dir>/medpfl/thumbnails``, asks each
site for matching originals, which only a site that opted in and trains on the synthetic demo set releases, and
embeds both in the end-of-run report.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from medpfl_app.audit.facts import ModelSpec
from medpfl_app.audit.update_audit import AuditItem, copy_arrays
from medpfl_app.nvflare.end_of_run import CHECK_WAIT_S
from medpfl_app.nvflare.server.arrival_record import (
    POLICY_ACTION_KEY,
    RECORD_FOLDER,
    REJECTED_NON_FINITE,
    ArrivalNote,
    ledger_path,
    note_arrival,
    note_internal_error,
)
from medpfl_app.nvflare.server.audit_queue import EndOfRunDrain, open_worker, render_report, stop_worker
from medpfl_app.nvflare.server.global_weights import GlobalWeightsCache, GlobalWeightsStore, find_global_weights
from medpfl_app.nvflare.server.policy_action import (
    HIGH_RISK_ACTIONS,
    HighRiskPolicy,
    check_high_risk_action,
    excluded_result,
)
from medpfl_app.nvflare.server.receiving import check_arrival, non_finite_entry, round_of, sender_of
from medpfl_app.nvflare.server.site_requests import ask_site, score_at_site

__all__ = [
    "HIGH_RISK_ACTIONS",
    "POLICY_ACTION_KEY",
    "RECORD_FOLDER",
    "REJECTED_NON_FINITE",
    "AuditFilter",
    "GlobalWeightsCache",
    "ledger_path",
    "non_finite_entry",
]


class AuditFilter(Filter):
    """Server task-result filter on ``train``: queue each received update for the background audit.

    Args:
        plan: `medpfl_app.audit.plan.AuditPlan` fields (plain JSON; defaults when None).
        risk_policy: `medpfl_app.audit.risk.RiskPolicy` fields (plain JSON; defaults when None).
        max_queue: Updates waiting for the attack thread at most; more are recorded ``not_audited``.
        drain_timeout_s: Longest the end of the job is held for the audits still queued.
        ssim_threshold: SSIM at which the sites count an image as reconstructed.
        on_high_risk: Policy action on a ``high`` record: ``report`` (default: the ledger only), ``stop_job``
            (end the run through NVFlare's fatal-error event, with the site, round and scores as the reason) or
            ``exclude_site`` (every later update of that site is still audited, then handed to the workflow with
            its weights emptied, which NVFlare's ``FedAvg`` skips as an empty result: the site keeps training but no
            longer contributes; the ledger record says ``policy_action: excluded_from_aggregation``; if every
            connected site ends up excluded the job is stopped instead). The audit runs behind training, so later
            rounds may already have started when it acts.
        store_reconstructions: Default off. When on, the reconstructions the audit produced are written as
            owner-only PNGs (0600, folders 0700) to ``<run dir>/medpfl/thumbnails/<site>/round_<n>/recon_<i>.png``,
            each site is asked for matching originals (written as ``original_<i>.png`` beside them; a site sends
            them only when its own scorer allows it and its data is the synthetic demo set) and the end-of-run
            report embeds them. Reconstructions of real data are patient data: turn this on for demo data only.
        isolate: Default on: the attack work runs in a separate worker process at lower CPU priority
            (`medpfl_app.audit.isolation.AuditProcess`), so training keeps the CPU and an attack that overruns its
            budget is stopped; off runs it on a thread of the server process.
        model: The job's model ``{"network", "image_size", "in_channels", "num_classes"}`` (the job generator
            writes it). The audit rebuilds the network from this, never from what a site declares; a site whose
            meta claims another model is recorded ``not_audited: invalid meta``. None (older job folders): the
            site's declared model facts are used after bounds checks.
        memory_limit_mb: Memory one audit may allocate in the isolated worker process (None: no limit); past it
            the audit is recorded ``not_audited`` with the reason.
    """

    def __init__(
        self,
        plan: dict[str, Any] | None = None,
        risk_policy: dict[str, Any] | None = None,
        max_queue: int = 8,
        drain_timeout_s: float = 300.0,
        ssim_threshold: float = 0.9,
        on_high_risk: str = "report",
        store_reconstructions: bool = False,
        isolate: bool = True,
        model: dict[str, Any] | None = None,
        memory_limit_mb: float | None = 4096.0,
    ) -> None:
        super().__init__()
        from medpfl_app.audit.plan import AuditPlan
        from medpfl_app.audit.risk import RiskPolicy

        # Stored unchanged under their own names: NVFlare's exporter reads them back (derived state below).
        self.plan = plan
        self.risk_policy = risk_policy
        self.max_queue = max_queue
        self.drain_timeout_s = drain_timeout_s
        self.ssim_threshold = ssim_threshold
        self.on_high_risk = on_high_risk
        if not isinstance(store_reconstructions, bool):
            raise TypeError(f"store_reconstructions must be true or false, got {store_reconstructions!r}")
        self.store_reconstructions = store_reconstructions
        if not isinstance(isolate, bool):
            raise TypeError(f"isolate must be true or false, got {isolate!r}")
        self.isolate = isolate
        self.model = model
        self._model = ModelSpec.from_dict(model)
        self.memory_limit_mb = memory_limit_mb
        check_high_risk_action(on_high_risk)
        # Validated eagerly so a bad job config fails at deployment, not silently mid-run.
        self._plan = AuditPlan.from_dict(plan)
        self._policy = RiskPolicy.from_dict(risk_policy)
        self._thumbnail_dir: str | None = None
        self._high_risk = HighRiskPolicy(self)
        self._worker: Any = None
        self._engine: Any = None
        self._weights: GlobalWeightsStore | None = None  # the job's GlobalWeightsCache store, found at start
        self._drain = EndOfRunDrain(self, drain_timeout_s)
        #: Longest one readiness check waits inside the handler (see `medpfl_app.nvflare.end_of_run.CHECK_WAIT_S`).
        self.check_wait_s = CHECK_WAIT_S
        self._lock = threading.Lock()

    # --- events ---------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif event_type == EventType.CHECK_END_RUN_READINESS:
            self._drain.check(fl_ctx, self._worker, limit_s=self.drain_timeout_s, wait_s=self.check_wait_s)
        elif event_type == EventType.END_RUN:
            stop_worker(self, self._worker, fl_ctx)
            self._render_report(fl_ctx)

    def _render_report(self, fl_ctx: FLContext) -> None:
        """Write the reports beside the ledger at END_RUN (`medpfl_app.nvflare.server.audit_queue.render_report`)."""
        render_report(self, fl_ctx, self._thumbnail_dir if self.store_reconstructions else None)

    def _ensure_worker(self, fl_ctx: FLContext) -> Any:
        with self._lock:
            if self._worker is None:
                self._start(fl_ctx)
            return self._worker

    def _start(self, fl_ctx: FLContext) -> None:
        from medpfl_app.audit.ledger import AuditLedger

        if self._worker is not None:
            return
        self._engine = fl_ctx.get_engine()
        ledger = AuditLedger(ledger_path(fl_ctx))
        if self.store_reconstructions:
            from medpfl_app.audit.thumbnail_store import THUMBNAILS_FOLDER

            self._thumbnail_dir = os.path.join(os.path.dirname(ledger.path), THUMBNAILS_FOLDER)
        self._weights = find_global_weights(self, fl_ctx)
        self._worker = open_worker(
            fl_ctx,
            ledger,
            plan=self._plan,
            policy=self._policy,
            scorer=self._score_at_site,
            on_record=self._act_on_record,
            max_queue=self.max_queue,
            ssim_threshold=self.ssim_threshold,
            isolate=self.isolate,
            memory_limit_mb=self.memory_limit_mb,
        )
        self.log_info(fl_ctx, f"MedPFL audit: ledger at {ledger.path}; plan {self._plan.to_dict()}")

    # --- the filter -----------------------------------------------------------------------------------------
    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        action = self._high_risk.action_for(shareable, fl_ctx)
        try:
            self._queue(shareable, fl_ctx, action)
        except Exception as error:  # noqa: BLE001 - never cost a site its contribution
            note_internal_error(
                self, self._worker, fl_ctx, error, round_number=round_of(shareable), policy_action=action
            )
        if action is not None:
            return excluded_result(self, shareable, action, fl_ctx)
        return shareable

    def _queue(self, shareable: Shareable, fl_ctx: FLContext, policy_action: dict[str, str] | None = None) -> None:
        """Check what arrived and queue a copy of it for the audit, or record why not (one record either way)."""
        worker = self._ensure_worker(fl_ctx)
        site, round_number, job_id = sender_of(shareable, fl_ctx), round_of(shareable), fl_ctx.get_job_id()
        global_weights = self._global_weights(job_id, round_number)
        checked = check_arrival(
            shareable,
            selected=self._plan.selects(site, round_number),
            model=self._model,
            policy_action=policy_action,
            global_weights=global_weights,
        )
        if isinstance(checked, ArrivalNote):
            note_arrival(worker, site, round_number, checked)
            return
        item = AuditItem(
            site=site,
            round=round_number,
            job_id=job_id,
            data_kind=checked.dxo.data_kind,
            update=copy_arrays(checked.dxo.data),
            global_weights=global_weights,
            meta=checked.meta,
            received_at=time.time(),
        )
        worker.submit(item)

    def _global_weights(self, job_id: str | None, round_number: int | None) -> dict[str, Any] | None:
        """The global weights the job's cache kept for the round (None: no cache in this job, or not kept)."""
        return None if self._weights is None else self._weights.get(job_id, round_number)

    # --- policy action (runs on the ledger thread, after the record is durable) --------------------------------
    def _act_on_record(self, record: dict[str, Any]) -> None:
        self._high_risk.act_on_record(record, on_high_risk=self.on_high_risk, engine=self._engine)

    # --- the site round-trip (runs on the worker thread) ----------------------------------------------------
    def _score_at_site(self, item: AuditItem, reconstructions: Any, labels: Any) -> dict[str, Any]:
        """The site's scalar scores of the reconstructions of its update (`site_requests.score_at_site`)."""
        return score_at_site(
            item,
            reconstructions,
            labels,
            ask=self._ask_site,
            thumbnail_dir=self._thumbnail_dir,
            store_reconstructions=self.store_reconstructions,
            logger=self.logger,
        )

    def _ask_site(
        self,
        site: str,
        round_number: int | None,
        reconstructions: Any,
        labels: Any,
        *,
        update_digest: str | None = None,
    ) -> tuple[dict[str, Any], Any]:
        """``(scores, originals)`` from the site (`medpfl_app.nvflare.server.site_requests.ask_site`)."""
        return ask_site(
            self._engine,
            site,
            round_number,
            reconstructions,
            labels,
            update_digest=update_digest,
            ssim_threshold=self.ssim_threshold,
            originals_wanted=self.store_reconstructions,
            timeout_s=self._plan.score_timeout_s,
            logger=self.logger,
        )
