"""Client-side NVFlare component: scores the server's reconstructions of this site's own update, at the site.

Configured in the client app's ``components`` (see `medpfl_app.nvflare.jobs.spec.AUDIT_SITE_SCORER`). On
``START_RUN`` it registers handlers for the auxiliary topics `SCORE_TOPIC` and `RELEASE_TOPIC` on the client job's
cell (`medpfl_app.nvflare.site.cell_channel`); the server's audit sends the reconstructions of this site's update of
one round; the handler checks who asks and for what (`medpfl_app.nvflare.site.request_checks`: only the server,
only for an update this site sent, once, bounded), compares them with the images the site really used in that
round (`medpfl_app.nvflare.site.round_records`) and replies with scalar scores only
(`medpfl_app.nvflare.site.round_scoring`). At the end of the job it holds the run until the server says its audit
is done, at most ``wait_at_end_s`` seconds (`medpfl_app.nvflare.site.end_hold`), so the last round's scores of
every site reach the ledger. Originals for the report's thumbnails leave only from a site that opted in and trains
on the synthetic demo set (`medpfl_app.nvflare.site.originals`).

A refused request is logged at the site in one line and counted (`AuditSiteScorer.refusal_counts`); the reply
carries the short reason (`REPLY_REFUSED`, no path, no sample) beside scores marked unavailable, which the server
records as such. Nothing but the scalar scores (`medpfl_app.audit.scoring.check_scalars_only`) ever leaves.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable, make_reply

from medpfl_app.contracts.score import (  # the request's keys, re-exported for the server and the tests
    REQUEST_DIGEST,
    REQUEST_LABELS,
    REQUEST_ORIGINALS,
    REQUEST_RECONSTRUCTIONS,
    REQUEST_ROUND,
    REQUEST_THRESHOLD,
    SCORE_TOPIC,
    ScoreStatus,
)
from medpfl_app.nvflare.end_of_run import CHECK_WAIT_S
from medpfl_app.nvflare.site.cell_channel import answer_cell_request, find_cell, register_topics
from medpfl_app.nvflare.site.end_hold import SiteEndHold
from medpfl_app.nvflare.site.originals import DemoDataCheck, add_originals, release_originals
from medpfl_app.nvflare.site.protocol import (
    RELEASE_TOPIC,
    REPLY_ORIGINALS,
    REPLY_ORIGINALS_REFUSED,
    REPLY_REFUSED,
    REPLY_SCORES,
    SERVER_ROOT_CELL,
)
from medpfl_app.nvflare.site.request_checks import (
    MAX_LABEL,
    Refusal,
    check_update,
    quoted,
    replay_refusal,
    request_refusal,
    sender_refusal,
)
from medpfl_app.nvflare.site.round_records import SiteRounds
from medpfl_app.nvflare.site.round_scoring import RoundImages, refused_reply, score_request, scores_reply

__all__ = [
    "MAX_LABEL",
    "RELEASE_TOPIC",
    "REPLY_ORIGINALS",
    "REPLY_ORIGINALS_REFUSED",
    "REPLY_REFUSED",
    "REPLY_SCORES",
    "REQUEST_DIGEST",
    "REQUEST_LABELS",
    "REQUEST_ORIGINALS",
    "REQUEST_RECONSTRUCTIONS",
    "REQUEST_ROUND",
    "REQUEST_THRESHOLD",
    "SCORE_TOPIC",
    "SERVER_ROOT_CELL",
    "AuditSiteScorer",
    "Refusal",
    "RoundImages",
    "release_originals",
    "request_refusal",
    "score_request",
    "sender_refusal",
]


class AuditSiteScorer(FLComponent):
    """Answers the server audit's score requests for this site (scalars only) and holds the run end for them.

    Ground truth stays at the site. The one exception is ``release_demo_originals``: only when it is on, the
    server asks for originals, and this site's training data is recognisably the embedded synthetic demo set, the
    reply also carries small downsized originals (`medpfl_app.nvflare.site.originals`); else no image leaves.

    State is per job: on ``START_RUN`` it binds to this site's client run folder of the job (the round records of
    `medpfl_app.audit.round_samples` and `medpfl_app.nvflare.filters.sent_digest.SentUpdateDigest`) and keeps the
    images it loaded, the updates it scored and the requests it refused; nothing is process-global.

    Requests are answered only from the server, only for an update this site sent, once per update, and only
    when their arrays fit the site's own images, checked in that order before any image is loaded
    (`medpfl_app.nvflare.site.request_checks`): a refused request costs nothing and cannot use up the server's one.

    Args:
        wait_at_end_s: At most this long, at the end of the job, the site keeps running until its last trained
            round has been scored (0: never wait). Also set ``end_run_readiness_timeout`` in the client config.
        release_demo_originals: Allow releasing originals of synthetic demo data (default off; never for other
            data, whatever this says).
        original_max_size: Largest side, in pixels, of a released original (4 to 64).
        max_reconstructions: Reconstructions one request may carry at most, whatever the update declared (1 to
            4096).

    Raises:
        ValueError: ``original_max_size`` or ``max_reconstructions`` out of range.
    """

    def __init__(
        self,
        wait_at_end_s: float = 120.0,
        release_demo_originals: bool = False,
        original_max_size: int = 32,
        max_reconstructions: int = 256,
    ) -> None:
        super().__init__()
        if not _int_in(original_max_size, 4, 64):
            raise ValueError(f"original_max_size must be an integer in [4, 64], got {original_max_size!r}")
        if not _int_in(max_reconstructions, 1, 4096):
            raise ValueError(f"max_reconstructions must be an integer in [1, 4096], got {max_reconstructions!r}")
        self.max_reconstructions = max_reconstructions
        self.wait_at_end_s = wait_at_end_s
        self.release_demo_originals = bool(release_demo_originals)
        self.original_max_size = original_max_size
        self._demo_data = DemoDataCheck()
        self._rounds = SiteRounds(self.logger)  # this job at this site: its records and training images
        self._end = SiteEndHold(wait_at_end_s)
        self._lock = threading.Lock()
        #: Longest one readiness check waits inside the handler (see `medpfl_app.nvflare.end_of_run.CHECK_WAIT_S`).
        self.check_wait_s = CHECK_WAIT_S
        # Updates already scored, as (round, digest): the site answers once per update.
        self._answered: set[tuple[int, str]] = set()
        self._refusals: Counter[str] = Counter()
        self._engine: Any = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._start(fl_ctx)
        elif event_type == EventType.AFTER_TASK_EXECUTION:
            # The training script has just recorded the round it trained: load the images now, in the background,
            # so that the server's first score request does not wait for them.
            warm_up = threading.Thread(
                target=self._rounds.warm_up, args=(self._training_pool,), name="medpfl-scorer-warm-up", daemon=True
            )
            warm_up.start()
        elif event_type == EventType.CHECK_END_RUN_READINESS:
            self._check_end(fl_ctx)
        elif event_type == EventType.END_RUN:
            counts = self.refusal_counts()
            if counts:
                self.log_warning(
                    fl_ctx,
                    f"MedPFL audit: {self._rounds.site} refused {sum(counts.values())} score or "
                    f"release requests in this job: {counts}",
                )

    def refusal_counts(self) -> dict[str, int]:
        """Requests refused so far in this job, by `Refusal.kind`."""
        with self._lock:
            return dict(self._refusals)

    # --- binding and transport ------------------------------------------------------------------------------
    def _start(self, fl_ctx: FLContext) -> None:
        workspace = fl_ctx.get_workspace() or fl_ctx.get_engine().get_workspace()
        job_id = fl_ctx.get_job_id()
        self._bind(fl_ctx.get_identity_name(), job_id, Path(workspace.get_run_dir(job_id)))
        engine = fl_ctx.get_engine()
        self._engine = engine
        # Reached only if the cell handlers below could not be registered: it then refuses every request,
        # since NVFlare's aux dispatch gives no way to verify the sender.
        engine.register_aux_message_handler(topic=SCORE_TOPIC, message_handle_func=self._on_request)
        engine.register_aux_message_handler(topic=RELEASE_TOPIC, message_handle_func=self._on_release)
        self._register_on_cell(engine, fl_ctx)

    def _bind(self, site: str, job_id: str, run_dir: Path) -> None:
        """Serve ``site``'s records of ``job_id``, kept under the client's run folder ``run_dir``."""
        self._rounds.bind(site, job_id, run_dir)

    def _register_on_cell(self, engine: Any, fl_ctx: FLContext, wait_s: float = 10.0) -> None:
        """Handle `SCORE_TOPIC` and `RELEASE_TOPIC` on this client job's cell, where the sender's origin is known."""
        cell = find_cell(engine, wait_s)
        if cell is None:
            self.log_warning(
                fl_ctx,
                "MedPFL audit: no client job cell to receive score requests on: every score "
                "request will be refused (the sender cannot be verified)",
            )
            return
        register_topics(cell, (SCORE_TOPIC, RELEASE_TOPIC), self._on_cell_request)

    def _on_cell_request(self, message: Any) -> Any:
        """The cell's request callback (`medpfl_app.nvflare.site.cell_channel.answer_cell_request`)."""
        handlers = {RELEASE_TOPIC: self._on_release, SCORE_TOPIC: self._on_request}
        return answer_cell_request(
            message, self._engine, handlers, default_topic=SCORE_TOPIC, site=self._rounds.site, logger=self.logger
        )

    # --- the site's images ----------------------------------------------------------------------------------
    def _training_pool(self, training_set: Any) -> Any:
        """The site's training images for ``training_set``, loaded once (`SiteRounds.training_pool`)."""
        return self._rounds.training_pool(training_set)

    # --- requests -------------------------------------------------------------------------------------------
    def _on_request(self, topic: str, request: Shareable, fl_ctx: FLContext, *, origin: str | None = None) -> Shareable:
        """Score the server's reconstructions of this site's own update, once; refuse anything else.

        Args:
            topic: `SCORE_TOPIC`.
            request: The request (anything the sender put on the wire).
            fl_ctx: A context whose peer context is the request's (written by the sender).
            origin: The request's cellnet ``ORIGIN`` (None when it did not come through this job's cell: refused).
        """
        site = self._rounds.site or fl_ctx.get_identity_name()
        if not isinstance(request, Shareable):
            return self._refuse(Refusal("malformed", "refused: the request is not a Shareable"), origin, None)
        round_number = request.get(REQUEST_ROUND)
        peer = fl_ctx.get_peer_context()
        claimed = peer.get_identity_name() if peer is not None else None
        found = self._check_request(request, origin, round_number, claimed)
        if isinstance(found, Refusal):
            return self._refuse(found, origin, claimed, round_number)
        scores = score_request(found, request)
        self.log_info(
            fl_ctx,
            f"MedPFL audit: scored the server's reconstructions of round {round_number} (request "
            f"from cell {quoted(origin)}): {scores.get('status')}"
            + (f" ({scores.get('reason')})" if scores.get("status") != ScoreStatus.SCORED else ""),
        )
        reply = scores_reply(scores)  # only `SCORE_KEYS` leave the site
        if request.get(REQUEST_ORIGINALS):
            refusal = self._demo_data.refusal(site, allowed=self.release_demo_originals)
            released = release_originals(found, request, refusal, self.original_max_size)
            add_originals(reply, released, round_number, lambda line: self.log_info(fl_ctx, line))
        return reply

    def _check_request(self, request: Shareable, origin: Any, round_number: Any, claimed: Any) -> Any:
        """The round's images (or the reason there are none) for a first request from the server about an update
        this site sent; else the `Refusal`. The sender is checked before anything is read: it costs nothing."""
        refusal = sender_refusal(origin, claimed, self._rounds.job_id, None)
        if refusal is not None:
            return refusal
        checked = check_update(
            request,
            round_number,
            claimed,
            self._rounds,
            max_reconstructions=self.max_reconstructions,
            on_asked=self._end.note_asked,  # the server asked for this round: no need to wait for it
        )
        if isinstance(checked, Refusal):
            return checked
        record, digest = checked
        if isinstance(record, str):  # no record of the round's samples: nothing to compare with
            return record
        with self._lock:
            if (record.round, digest) in self._answered:
                return replay_refusal(record.round)
            self._answered.add((record.round, digest))
        return self._rounds.images_of(record, self._training_pool)

    def _refuse(self, refusal: Refusal, origin: Any, claimed: Any, round_number: Any = None) -> Shareable:
        """Log the refusal in one line, count it, and reply with the reason and unavailable scores."""
        with self._lock:
            self._refusals[refusal.kind] += 1
            count = sum(self._refusals.values())
        self.logger.warning(
            f"MedPFL audit: {self._rounds.site} refused a score request for round {quoted(round_number, 30)} from "
            f"cell {quoted(origin)} naming {quoted(claimed)}: {refusal.reason} [{refusal.kind}; {count} refused so far]"
        )
        return refused_reply(refusal.reason)

    # --- the end of the run ---------------------------------------------------------------------------------
    def _on_release(self, topic: str, request: Shareable, fl_ctx: FLContext, *, origin: str | None = None) -> Shareable:
        """The server's audit is done: stop holding the end of the run (only the server may say so)."""
        if sender_refusal(origin, None, self._rounds.job_id, None) is not None:
            with self._lock:
                self._refusals["not_server"] += 1
            self.logger.warning(
                f"MedPFL audit: {self._rounds.site} ignored a release from cell {quoted(origin)}: not the server"
            )
            return make_reply(ReturnCode.OK)
        self._end.release()
        return make_reply(ReturnCode.OK)

    def _check_end(self, fl_ctx: FLContext) -> None:
        """Hold the end of the run until the server releases the site (`medpfl_app.nvflare.site.end_hold`)."""
        self._end.check(
            fl_ctx,
            self,
            site=self._rounds.site,
            recorded_rounds=self._rounds.recorded_rounds if self._rounds.run_dir is not None else None,
            limit_s=self.wait_at_end_s,
            wait_s=self.check_wait_s,
        )


def _int_in(value: Any, low: int, high: int) -> bool:
    """Whether ``value`` is an integer (not a bool) in ``[low, high]``."""
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high
