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
HIGH_RISK_ACTIONS = ("report", "stop_job", "exclude_site")
#: Meta key (plain JSON, kept in the ledger record as ``policy_action``) on an update the policy kept out of FedAvg.
POLICY_ACTION_KEY = "medpfl_policy_action"
_KEEP_ROUNDS = 3

_cache_lock = threading.Lock()
_weights: dict[tuple[str | None, int], dict[str, Any]] = {}  # (job id, round) -> arrays


def _rounded(value: Any) -> Any:
    """A score for a log line: 3 decimals when it is a number, else as it is (e.g. None when unscored)."""
    return round(value, 3) if isinstance(value, float) else value


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
    """

    def __init__(
        self,
        plan: dict | None = None,
        risk_policy: dict | None = None,
        max_queue: int = 8,
        drain_timeout_s: float = 300.0,
        ssim_threshold: float = 0.9,
        on_high_risk: str = "report",
        store_reconstructions: bool = False,
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
        if not isinstance(store_reconstructions, bool):
            raise TypeError(f"store_reconstructions must be true or false, got {store_reconstructions!r}")
        self.store_reconstructions = store_reconstructions
        self._thumbnail_dir: str | None = None
        if on_high_risk not in HIGH_RISK_ACTIONS:
            from medpfl_app.errors import MedPFLError

            raise MedPFLError(f"unknown on_high_risk action {on_high_risk!r}", fix=f"use one of {HIGH_RISK_ACTIONS}")
        self._stopped = False
        self._released = False
        self._excluded: dict[str, str] = {}  # site -> why (set on the ledger thread, read in process())
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
            from medpfl_app.audit.thumbnail_store import stored_any
            from medpfl_app.reports import render_report

            ledger = ledger_path(fl_ctx)
            if os.path.isfile(ledger):
                thumbnails = self._thumbnail_dir if self.store_reconstructions else None
                paths = render_report(
                    os.path.dirname(os.path.dirname(ledger)), os.path.dirname(ledger),
                    # only this job's own, opted-in store: never a folder the job did not write
                    thumbnails_from=thumbnails if thumbnails and stored_any(thumbnails) else None,
                )
                self.log_info(fl_ctx, f"MedPFL audit: report written to {paths.html}"
                                      + (f" with {len(paths.thumbnails)} thumbnails" if paths.thumbnails else ""))
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
        if self.store_reconstructions:
            from medpfl_app.audit.thumbnail_store import THUMBNAILS_FOLDER

            self._thumbnail_dir = os.path.join(os.path.dirname(ledger.path), THUMBNAILS_FOLDER)
        self._worker = AuditWorker(
            ledger, self._plan, policy=self._policy, scorer=self._score_at_site, max_queue=self.max_queue,
            job_id=fl_ctx.get_job_id(), on_record=self._act_on_record,
        )
        self.log_info(fl_ctx, f"MedPFL audit: ledger at {ledger.path}; plan {self._plan.to_dict()}")

    # --- the filter -----------------------------------------------------------------------------------------
    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        excluded_because = self._exclusion_of(shareable, fl_ctx)
        try:
            self._queue(shareable, fl_ctx, excluded_because)
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
        if excluded_because is not None:
            return self._excluded_result(shareable, excluded_because, fl_ctx)
        return shareable

    def _exclusion_of(self, shareable: Shareable, fl_ctx: FLContext) -> str | None:
        """Why the policy keeps this site's update out of aggregation, or None (never raises)."""
        if not self._excluded:
            return None
        try:
            peer = fl_ctx.get_peer_context()
            site = peer.get_identity_name() if peer else shareable.get_peer_prop("__identity_name__", None)
            return self._excluded.get(site)
        except Exception:  # noqa: BLE001 - no site name: nothing to exclude by
            return None

    def _excluded_result(self, shareable: Shareable, reason: str, fl_ctx: FLContext) -> Shareable:
        """The result with its weights emptied (FedAvg skips it); the meta says why. Fails closed to an empty DXO."""
        from nvflare.apis.dxo import DXO, DataKind

        try:
            original = from_shareable(shareable)
            kind, meta = original.data_kind, dict(original.meta or {})
        except Exception:  # noqa: BLE001 - not a DXO: replace it all the same
            kind, meta = DataKind.WEIGHT_DIFF, {}
        meta[POLICY_ACTION_KEY] = {"action": "excluded_from_aggregation", "reason": reason}
        DXO(data_kind=kind, data={}, meta=meta).update_shareable(shareable)
        try:
            self.log_warning(fl_ctx, f"MedPFL audit policy exclude_site: update not aggregated ({reason})")
        except Exception:  # noqa: BLE001
            pass
        return shareable

    def _queue(self, shareable: Shareable, fl_ctx: FLContext, excluded_because: str | None = None) -> None:
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
        if excluded_because is not None:
            kept[POLICY_ACTION_KEY] = {"action": "excluded_from_aggregation", "reason": excluded_because}
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
        if self.on_high_risk == "report" or record.get("risk") != "high" or self._stopped or self._engine is None:
            return
        site = record.get("site")
        scores = record.get("site_scores") or {}
        finding = (
            f"high privacy risk for {site} in round {record.get('round')} "
            f"(attack {(record.get('attack_budget') or {}).get('attack')}, best SSIM {_rounded(scores.get('ssim_max'))}, "
            f"success rate {_rounded(scores.get('attack_success_rate'))})"
        )
        if self.on_high_risk == "exclude_site":
            if not isinstance(site, str) or site in self._excluded:
                return
            self._excluded = {**self._excluded, site: finding}  # replaced whole: process() reads it unlocked
            with self._engine.new_context() as fl_ctx:
                self.log_warning(fl_ctx, f"MedPFL audit policy exclude_site: {site}'s next updates will not be "
                                         f"aggregated: {finding}; see the audit ledger")
                if not self._sites_left(fl_ctx):
                    self._stop(f"MedPFL audit policy exclude_site: every site is excluded (last: {finding}); "
                               "see the audit ledger", fl_ctx)
            return
        with self._engine.new_context() as fl_ctx:
            self._stop(f"MedPFL audit policy stop_job: {finding}; see the audit ledger", fl_ctx)

    def _sites_left(self, fl_ctx: FLContext) -> bool:
        """Whether a connected site is not excluded (unknown client list: assume yes)."""
        try:
            clients = [c.name for c in self._engine.get_clients()]
        except Exception:  # noqa: BLE001
            return True
        return not clients or any(name not in self._excluded for name in clients)

    def _stop(self, reason: str, fl_ctx: FLContext) -> None:
        self._stopped = True
        self.log_error(fl_ctx, reason)
        self.system_panic(reason, fl_ctx)

    # --- the site round-trip (runs on the worker thread) ----------------------------------------------------
    def _score_at_site(self, site: str, round_number: int | None, reconstructions, labels) -> dict[str, Any]:
        """Ask ``site`` for scalar scores; with ``store_reconstructions``, also store the thumbnails.

        Raises:
            MedPFLError: The site's scores are not scalars (the worker records them unavailable).
        """
        originals = None
        try:
            scores, originals = self._ask_site(site, round_number, reconstructions, labels)
        finally:  # the reconstructions are stored even when the site cannot be reached
            if self.store_reconstructions:
                self._store_thumbnails(site, round_number, reconstructions, originals)
        return scores

    def _store_thumbnails(self, site: str, round_number: int | None, reconstructions, originals) -> None:
        """Write the round's PNGs owner-only; a failure is logged, never raised (the scores still count)."""
        from medpfl_app.audit.thumbnail_store import store_round

        try:
            if self._thumbnail_dir is None or round_number is None:
                self.logger.warning(f"MedPFL audit: no thumbnails for {site} round {round_number}: no run folder "
                                    "or no round number")
                return
            store_round(self._thumbnail_dir, site, int(round_number), reconstructions, originals)
        except Exception as error:  # noqa: BLE001 - thumbnails must never cost the audit record
            self.logger.warning(f"MedPFL audit: could not store thumbnails for {site} round {round_number}: {error!r}")

    def _ask_site(self, site: str, round_number: int | None, reconstructions, labels):
        """``(scores, originals)``: the site's scalar scores and any synthetic demo originals it released."""
        from medpfl_app.audit import site_scorer as sc
        from medpfl_app.audit.worker import unavailable_scores

        engine = self._engine
        if engine is None:
            return unavailable_scores("the server engine is not available"), None
        request = Shareable()
        request[sc.REQUEST_ROUND] = round_number
        request[sc.REQUEST_RECONSTRUCTIONS] = reconstructions
        request[sc.REQUEST_LABELS] = labels
        request[sc.REQUEST_THRESHOLD] = float(self.ssim_threshold)
        if self.store_reconstructions:  # only then: a server that stores nothing has no use for ground truth
            request[sc.REQUEST_ORIGINALS] = True
        timeout = self._plan.score_timeout_s
        with engine.new_context() as fl_ctx:
            replies = engine.send_aux_request(
                targets=[site], topic=sc.SCORE_TOPIC, request=request, timeout=timeout, fl_ctx=fl_ctx
            )
        reply = (replies or {}).get(site)
        if reply is None:
            return unavailable_scores(f"no reply from {site} within {timeout:g} s (unreachable or not running)"), None
        code = reply.get_return_code()
        if code != "OK":
            return unavailable_scores(f"{site} answered {code} (no scorer component, or it timed out)"), None
        scores = reply.get(sc.REPLY_SCORES)
        if not isinstance(scores, dict):
            return unavailable_scores(f"{site} sent no scores"), None
        from medpfl_app.audit.scoring import check_scalars_only

        check_scalars_only(scores)
        return dict(scores), self._originals_from(site, round_number, reply, reconstructions)

    def _originals_from(self, site: str, round_number: int | None, reply: Shareable, reconstructions):
        """The reply's released originals, checked; None when not asked for, refused or malformed (logged)."""
        from medpfl_app.audit import site_scorer as sc
        from medpfl_app.audit.release import accept_originals

        payload = reply.get(sc.REPLY_ORIGINALS)
        if not self.store_reconstructions or payload is None:
            refused = reply.get(sc.REPLY_ORIGINALS_REFUSED)
            if self.store_reconstructions and refused:
                self.logger.info(f"MedPFL audit: {site} released no originals for round {round_number}: "
                                 f"{str(refused)[:300]}")
            return None
        try:
            return accept_originals(payload, len(reconstructions))
        except Exception as error:  # noqa: BLE001 - a bad payload costs the originals, not the scores
            self.logger.warning(f"MedPFL audit: ignored the originals {site} sent for round {round_number}: {error!r}")
            return None
