"""NVFlare adapters of the server-side audit: a read-only global-weights cache and the audit result filter.

Both are thin: the work happens in `medpfl_app.audit.worker` (threads) and `medpfl_app.audit.core` (pure).

- `GlobalWeightsCache`: server task-DATA filter (direction ``out``, task ``train``). The first time a round's global
  model goes out it copies the arrays once (the payload is shared between clients: never touched in place) and
  keeps the last few rounds, so the audit knows what each site started from.
- `AuditFilter`: server task-RESULT filter (direction ``in``, task ``train``). ``process()`` copies the update as
  received and hands it to the worker through a bounded queue, then returns the shareable unchanged; it never
  raises (a raising server result filter would drop the site's result). The ledger is
  ``<run dir>/medpfl/audit_ledger.jsonl``, which ``download_job`` delivers. At the end of the job it holds the
  run while audits remain, at most ``drain_timeout_s`` (`medpfl_app.nvflare.end_of_run`: NVFlare's "not ready"
  property, not an exception, so a designed wait logs no traceback; set ``end_run_readiness_timeout`` in the server
  config), and says how far it is in one INFO line per change (`medpfl_app.audit.drain_progress`).

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

import numpy as np
from nvflare.apis.dxo import from_shareable
from nvflare.apis.event_type import EventType
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.audit.core import AuditItem, copy_arrays, not_auditable_reason
from medpfl_app.audit.drain_progress import DrainProgress, drain_progress
from medpfl_app.audit.facts import InvalidMeta, ModelSpec, validate_meta
from medpfl_app.audit.ledger import LEDGER_FILE
from medpfl_app.contracts.record import RecordStatus
from medpfl_app.contracts.score import ScoreReply, ScoreRequest
from medpfl_app.nvflare.end_of_run import CHECK_WAIT_S, EndOfRunHold, hold_end_of_run

RECORD_FOLDER = "medpfl"
HIGH_RISK_ACTIONS = ("report", "stop_job", "exclude_site")
#: Meta key (plain JSON, kept in the ledger record as ``policy_action``) on an update the policy kept out of FedAvg.
POLICY_ACTION_KEY = "medpfl_policy_action"
#: Policy action on an update carrying NaN or Inf: never aggregated, whatever the job's on_high_risk says.
REJECTED_NON_FINITE = "rejected_non_finite"
_KEEP_ROUNDS = 3

_cache_lock = threading.Lock()
_weights: dict[tuple[str | None, int], dict[str, Any]] = {}  # (job id, round) -> arrays


def _rounded(value: Any) -> Any:
    """A score for a log line: 3 decimals when it is a number, else as it is (e.g. None when unscored)."""
    return round(value, 3) if isinstance(value, float) else value


def _round_of(shareable: Shareable) -> int | None:
    """The round header as an int (a site controls what it sends back: anything else is None)."""
    value = shareable.get_header(AppConstants.CURRENT_ROUND)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**9:
        return None
    return value


def _values_in(value: Any) -> int:
    """Number of values in a NumPy array or torch tensor (0 for anything else)."""
    if hasattr(value, "numel"):
        return int(value.numel())
    size = getattr(value, "size", 0)
    return int(size) if isinstance(size, (int, np.integer)) else 0


def non_finite_entry(shareable: Shareable) -> str | None:
    """The name of the first floating-point update entry holding NaN or Inf, or None (never raises).

    One vectorised pass per array: the only per-update work `AuditFilter.process` does beyond the copy.
    """
    try:
        data = from_shareable(shareable).data
    except Exception:  # noqa: BLE001 - not a DXO: nothing numeric to check
        return None
    if not isinstance(data, dict):
        return None
    for name, value in data.items():
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else value
        if isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return str(name)[:200]
    return None


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
        plan: dict | None = None,
        risk_policy: dict | None = None,
        max_queue: int = 8,
        drain_timeout_s: float = 300.0,
        ssim_threshold: float = 0.9,
        on_high_risk: str = "report",
        store_reconstructions: bool = False,
        isolate: bool = True,
        model: dict | None = None,
        memory_limit_mb: float | None = 4096.0,
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
        if not isinstance(isolate, bool):
            raise TypeError(f"isolate must be true or false, got {isolate!r}")
        self.isolate = isolate
        self.model = model
        self._model = ModelSpec.from_dict(model)
        self.memory_limit_mb = memory_limit_mb
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
        self._hold = EndOfRunHold(drain_timeout_s)
        self._drain_total = 0
        self._drain_reported: DrainProgress | None = None
        self._drain_finished = False
        #: Longest one readiness check waits inside the handler (see `medpfl_app.nvflare.end_of_run.CHECK_WAIT_S`).
        self.check_wait_s = CHECK_WAIT_S
        self._lock = threading.Lock()

    # --- events ---------------------------------------------------------------------------------------------
    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif event_type == EventType.CHECK_END_RUN_READINESS:
            self._check_end(fl_ctx)
        elif event_type == EventType.END_RUN:
            worker = self._worker
            if worker is not None:
                if worker.pending():
                    self.log_warning(fl_ctx, f"MedPFL audit: run ends with {worker.pending()} audits unfinished")
                threading.Thread(target=worker.stop, name="medpfl-audit-stop", daemon=True).start()
            self._render_report(fl_ctx)

    def _check_end(self, fl_ctx: FLContext) -> None:
        """Hold the end of the run while audits remain, at most ``drain_timeout_s`` from the first check; then
        release the sites. Never raises: a designed wait is no error (`medpfl_app.nvflare.end_of_run`)."""
        worker = self._worker
        if worker is not None and not self._drain_finished and worker.pending():
            if not self._hold.started:
                self._hold.limit_s = self.drain_timeout_s  # as configured now, not at construction
            if self._hold.start():
                self._drain_total = sum(worker.backlog().values())
            if not self._hold.expired():
                self._report_drain(fl_ctx, worker)
                if not worker.drain(min(self.check_wait_s, self._hold.left_s())):
                    hold_end_of_run(fl_ctx)
                    return
            self._finish_drain(fl_ctx, worker)
        elif worker is not None and self._hold.started:
            self._finish_drain(fl_ctx, worker)  # drained between two checks
        self._release_sites(fl_ctx)

    def _report_drain(self, fl_ctx: FLContext, worker) -> None:
        """One INFO line each time the backlog changes (`DrainProgress.log_line`, parsed by the simulator watch)."""
        progress = drain_progress(worker.backlog(), self._drain_total)
        self._drain_total = progress.total
        if progress.left and progress != self._drain_reported:
            self._drain_reported = progress
            self.log_info(fl_ctx, progress.log_line())

    def _finish_drain(self, fl_ctx: FLContext, worker) -> None:
        """Say once how the drain ended: done, or given up at the bound with audits left (a warning)."""
        if self._drain_finished:
            return
        self._drain_finished = True
        left = sum(worker.backlog().values())
        if worker.pending():
            self.log_warning(
                fl_ctx,
                f"MedPFL audit: stopped holding the end of the run after "
                f"{self._hold.waited_s():.0f} s (drain_timeout_s {self.drain_timeout_s:g}) "
                f"with {left} updates not yet audited",
            )
        elif self._drain_total:  # only ledger writes were left: nothing worth a line
            self.log_info(
                fl_ctx,
                DrainProgress(round=None, left=0, total=self._drain_total).log_line()
                + f" in {self._hold.waited_s():.0f} s",
            )

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
                    os.path.dirname(os.path.dirname(ledger)),
                    os.path.dirname(ledger),
                    # only this job's own, opted-in store: never a folder the job did not write
                    thumbnails_from=thumbnails if thumbnails and stored_any(thumbnails) else None,
                )
                self.log_info(
                    fl_ctx,
                    f"MedPFL audit: report written to {paths.html}"
                    + (f" with {len(paths.thumbnails)} thumbnails" if paths.thumbnails else ""),
                )
        except Exception as error:  # noqa: BLE001 - reporting must never disturb the end of the job
            self.log_warning(fl_ctx, f"MedPFL audit: could not render the report: {error!r}")

    def _release_sites(self, fl_ctx: FLContext) -> None:
        """Tell every site the audit is done, so their scorers stop holding the end of the run (once)."""
        if self._released:
            return
        self._released = True
        from medpfl_app.nvflare.site.scorer import RELEASE_TOPIC

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
        runner = None
        if self.isolate:
            from medpfl_app.audit.isolation import AuditProcess

            runner = AuditProcess(memory_limit_mb=self.memory_limit_mb)
            runner.warm_up()  # torch imports in the child while the first round trains
        self._worker = AuditWorker(
            ledger,
            self._plan,
            policy=self._policy,
            scorer=self._score_at_site,
            max_queue=self.max_queue,
            job_id=fl_ctx.get_job_id(),
            on_record=self._act_on_record,
            ssim_threshold=self.ssim_threshold,
            runner=runner,
        )
        try:
            self._worker.expect_sites(client.name for client in self._engine.get_clients())
        except Exception:  # noqa: BLE001 - the share then grows as sites are seen
            pass
        self.log_info(fl_ctx, f"MedPFL audit: ledger at {ledger.path}; plan {self._plan.to_dict()}")

    # --- the filter -----------------------------------------------------------------------------------------
    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        action = self._policy_action_for(shareable, fl_ctx)
        try:
            self._queue(shareable, fl_ctx, action)
        except Exception as error:  # noqa: BLE001 - never cost a site its contribution
            try:
                self.log_warning(fl_ctx, f"MedPFL audit: could not queue the update: {error!r}")
                worker = self._worker
                if worker is not None:
                    peer = fl_ctx.get_peer_context()
                    worker.note(
                        site=peer.get_identity_name() if peer else None,
                        round_number=_round_of(shareable),
                        status=RecordStatus.NOT_AUDITED,
                        reason=f"internal error in the audit filter: {error!r}",
                        meta={POLICY_ACTION_KEY: action} if action else None,
                    )
            except Exception:  # noqa: BLE001
                pass
        if action is not None:
            return self._excluded_result(shareable, action, fl_ctx)
        return shareable

    def _policy_action_for(self, shareable: Shareable, fl_ctx: FLContext) -> dict[str, str] | None:
        """What keeps this update out of aggregation: non-finite values, or the exclude_site policy (never raises)."""
        non_finite = non_finite_entry(shareable)
        if non_finite is not None:
            return {
                "action": REJECTED_NON_FINITE,
                "reason": f"update entry {non_finite!r} holds NaN or Inf values: rejected, not aggregated",
            }
        if not self._excluded:
            return None
        try:
            peer = fl_ctx.get_peer_context()
            site = peer.get_identity_name() if peer else shareable.get_peer_prop("__identity_name__", None)
            reason = self._excluded.get(site)
        except Exception:  # noqa: BLE001 - no site name: nothing to exclude by
            return None
        return None if reason is None else {"action": "excluded_from_aggregation", "reason": reason}

    def _excluded_result(self, shareable: Shareable, action: dict[str, str], fl_ctx: FLContext) -> Shareable:
        """The result with its weights emptied (FedAvg skips it); the meta says why. Fails closed to an empty DXO."""
        from nvflare.apis.dxo import DXO, DataKind

        try:
            original = from_shareable(shareable)
            kind, meta = original.data_kind, dict(original.meta or {})
        except Exception:  # noqa: BLE001 - not a DXO: replace it all the same
            kind, meta = DataKind.WEIGHT_DIFF, {}
        meta[POLICY_ACTION_KEY] = dict(action)
        DXO(data_kind=kind, data={}, meta=meta).update_shareable(shareable)
        try:
            self.log_warning(
                fl_ctx, f"MedPFL audit policy {action['action']}: update not aggregated ({action['reason']})"
            )
        except Exception:  # noqa: BLE001
            pass
        return shareable

    def _queue(self, shareable: Shareable, fl_ctx: FLContext, policy_action: dict[str, str] | None = None) -> None:
        worker = self._ensure_worker(fl_ctx)
        peer = fl_ctx.get_peer_context()
        site = peer.get_identity_name() if peer else shareable.get_peer_prop("__identity_name__", None)
        round_number = _round_of(shareable)
        if not self._plan.selects(site, round_number):  # recorded, so the report never counts it as lost
            worker.note(
                site=site,
                round_number=round_number,
                status=RecordStatus.NOT_AUDITED,
                reason="not selected by the audit plan (its every_n_rounds or sites)",
                meta={POLICY_ACTION_KEY: policy_action} if policy_action else None,
            )
            return
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            worker.note(
                site=site,
                round_number=round_number,
                status=RecordStatus.NOT_AUDITABLE,
                reason=not_auditable_reason(None, None, None),
            )
            return
        meta = dxo.meta if isinstance(dxo.meta, dict) else {}
        if policy_action is not None and policy_action["action"] == REJECTED_NON_FINITE:
            worker.note(
                site=site,
                round_number=round_number,
                status=RecordStatus.NOT_AUDITED,
                reason=policy_action["reason"],
                meta={POLICY_ACTION_KEY: policy_action},
            )
            return
        try:
            kept = validate_meta(meta, model=self._model)
        except InvalidMeta as error:  # untrusted meta: recorded, never allocated from
            worker.note(
                site=site,
                round_number=round_number,
                status=RecordStatus.NOT_AUDITED,
                reason=f"invalid meta ({error.problem}; {error.fix})",
                meta={POLICY_ACTION_KEY: policy_action} if policy_action else {},
            )
            return
        if policy_action is not None:
            kept[POLICY_ACTION_KEY] = policy_action
        reason = not_auditable_reason(dxo.data_kind, dxo.data, kept) or self._size_refusal(
            dxo.data, fl_ctx, round_number
        )
        if reason is not None:
            worker.note(
                site=site, round_number=round_number, status=RecordStatus.NOT_AUDITABLE, reason=reason, meta=kept
            )
            return
        job_id = fl_ctx.get_job_id()
        item = AuditItem(
            site=site,
            round=round_number,
            job_id=job_id,
            data_kind=dxo.data_kind,
            update=copy_arrays(dxo.data),
            global_weights=cached_global_weights(job_id, round_number),
            meta=kept,
            received_at=time.time(),
        )
        worker.submit(item)

    def _size_refusal(self, data: Any, fl_ctx: FLContext, round_number: int | None) -> str | None:
        """Why an update is too large to copy for the audit (more values than the global model it answers)."""
        weights = cached_global_weights(fl_ctx.get_job_id(), round_number)
        if not weights or not isinstance(data, dict):
            return None
        expected = sum(_values_in(v) for v in weights.values())
        received = sum(_values_in(v) for v in data.values())
        if received > 2 * expected + 1024:
            return (
                f"the update holds {received} values, far more than the {expected} of the global model it "
                "answers: not copied for the audit"
            )
        return None

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
                self.log_warning(
                    fl_ctx,
                    f"MedPFL audit policy exclude_site: {site}'s next updates will not be "
                    f"aggregated: {finding}; see the audit ledger",
                )
                if not self._sites_left(fl_ctx):
                    self._stop(
                        f"MedPFL audit policy exclude_site: every site is excluded (last: {finding}); "
                        "see the audit ledger",
                        fl_ctx,
                    )
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
    def _score_at_site(self, item: AuditItem, reconstructions, labels) -> dict[str, Any]:
        """Ask the item's site for scalar scores of the reconstructions of its update; with
        ``store_reconstructions``, also store the thumbnails. Runs on the attack thread.

        The request carries the digest of the update as received (`medpfl_app.audit.update_digest`, computed here,
        never in ``process()``): the site scores only an update it recorded sending, once.

        Raises:
            MedPFLError: The site's scores are not scalars (the worker records them unavailable).
        """
        from medpfl_app.audit.worker import unavailable_scores

        site, round_number = item.site, item.round
        originals = None
        try:
            digest = self._received_digest(item)
            if digest is None:
                scores = unavailable_scores("the update as received could not be digested for the score request")
            else:
                scores, originals = self._ask_site(site, round_number, reconstructions, labels, update_digest=digest)
        finally:  # the reconstructions are stored even when the site cannot be reached
            if self.store_reconstructions:
                self._store_thumbnails(site, round_number, reconstructions, originals)
        return scores

    def _received_digest(self, item: AuditItem) -> str | None:
        """`medpfl_app.audit.update_digest.update_digest` of the update as received; None (logged) if impossible."""
        from medpfl_app.audit.update_digest import update_digest

        try:
            return update_digest(item.update)
        except ValueError as error:
            self.logger.warning(f"MedPFL audit: cannot digest {item.site}'s round {item.round} update: {error}")
            return None

    def _store_thumbnails(self, site: str, round_number: int | None, reconstructions, originals) -> None:
        """Write the round's PNGs owner-only; a failure is logged, never raised (the scores still count)."""
        from medpfl_app.audit.thumbnail_store import store_round

        try:
            if self._thumbnail_dir is None or round_number is None:
                self.logger.warning(
                    f"MedPFL audit: no thumbnails for {site} round {round_number}: no run folder or no round number"
                )
                return
            store_round(self._thumbnail_dir, site, int(round_number), reconstructions, originals)
        except Exception as error:  # noqa: BLE001 - thumbnails must never cost the audit record
            self.logger.warning(f"MedPFL audit: could not store thumbnails for {site} round {round_number}: {error!r}")

    def _ask_site(
        self, site: str, round_number: int | None, reconstructions, labels, *, update_digest: str | None = None
    ):
        """``(scores, originals)``: the site's scalar scores and any synthetic demo originals it released.

        ``update_digest`` names the update (`medpfl_app.audit.update_digest`); a site refuses a request without
        the digest of an update it sent, and a second request for the same update. Its refusal reason is recorded
        as the reason the scores are unavailable.
        """
        from medpfl_app.audit.worker import unavailable_scores
        from medpfl_app.nvflare.site import scorer as sc

        engine = self._engine
        if engine is None:
            return unavailable_scores("the server engine is not available"), None
        request = Shareable()
        request.update(
            ScoreRequest(
                round=round_number,
                update_digest=update_digest,
                reconstructions=reconstructions,
                labels=labels,
                ssim_threshold=float(self.ssim_threshold),
                # only then: a server that stores nothing has no use for ground truth
                originals_wanted=bool(self.store_reconstructions),
            ).to_json()
        )
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
        refused = reply.get(sc.REPLY_REFUSED)
        if refused is not None:
            reason = str(refused)[:300]
            self.logger.warning(f"MedPFL audit: {site} refused to score round {round_number}: {reason}")
            return unavailable_scores(f"{site} refused the score request: {reason}"), None
        scores = reply.get(sc.REPLY_SCORES)
        if not isinstance(scores, dict):
            return unavailable_scores(f"{site} sent no scores"), None
        parsed = ScoreReply.from_json(scores)  # raises on anything but known scalar scores
        return parsed.to_json(), self._originals_from(site, round_number, reply, reconstructions)

    def _originals_from(self, site: str, round_number: int | None, reply: Shareable, reconstructions):
        """The reply's released originals, checked; None when not asked for, refused or malformed (logged)."""
        from medpfl_app.audit.release import accept_originals
        from medpfl_app.nvflare.site import scorer as sc

        payload = reply.get(sc.REPLY_ORIGINALS)
        if not self.store_reconstructions or payload is None:
            refused = reply.get(sc.REPLY_ORIGINALS_REFUSED)
            if self.store_reconstructions and refused:
                self.logger.info(
                    f"MedPFL audit: {site} released no originals for round {round_number}: {str(refused)[:300]}"
                )
            return None
        try:
            return accept_originals(payload, len(reconstructions))
        except Exception as error:  # noqa: BLE001 - a bad payload costs the originals, not the scores
            self.logger.warning(f"MedPFL audit: ignored the originals {site} sent for round {round_number}: {error!r}")
            return None
