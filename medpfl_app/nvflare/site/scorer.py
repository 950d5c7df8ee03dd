"""Client-side NVFlare component: scores the server's reconstructions of this site's own update, at the site.

Configured in the client app's ``components`` (see `medpfl_app.nvflare.jobs.spec.AUDIT_SITE_SCORER`). On ``START_RUN`` it
registers handlers for the auxiliary topics `SCORE_TOPIC` and `RELEASE_TOPIC` on the client job's cell (see "Who
may ask" below); the server's audit sends the reconstructions of this site's update of one round; the handler
compares them with the images the site really used in that round and replies with scalar scores only
(`medpfl_app.audit.scoring.SCORE_KEYS`). At the end of the job it asks NVFlare to
wait (its "not ready to end run" property, `medpfl_app.nvflare.end_of_run`: no exception, so no traceback in the
logs) until the server says its audit is done (`RELEASE_TOPIC`, sent once the server's audit queue is drained), at
most ``wait_at_end_s`` seconds, so the last round's scores of every site reach the ledger (in NVFlare's simulator
the first site to end ends them all).

Which images a round used comes from the site-local record the training script writes before each update leaves
(`medpfl_app.audit.round_samples`, ``<client run dir>/medpfl/round_samples/round_<n>.json``), so scoring works
whether the script runs in this client job process or as an external process. The scorer loads the site's
training images itself, through the training script's own data resolution and transforms with the settings the
record names, and keeps them on the component for the rest of the job. When it cannot score, the reply says why
in one short sentence that names no path or sample (no record for that round, data not found, data changed, ...).

Who may ask, and for what (a site may be malicious; NVFlare routes auxiliary messages between clients, so
another site can address this scorer, and without these rules could use it as an oracle to rebuild this site's
images from its scores):

1. **Only the server.** NVFlare's peer context of an auxiliary request (``fl_ctx.get_peer_context()``, the
   request's ``__peer_props__``) is written by the *sender* into the payload (``AuxRunner._send_to_cell``), so a
   client can claim any identity name there. The scorer therefore registers its handler on the client job's cell
   (as NVFlare's own ``MetricRelay`` does) and reads the cellnet ``ORIGIN`` header of the request: it must be the
   server's job cell (``server.<job id>``) or the server's root cell (``server``; the simulator's server sends from
   it). In secure mode (POC, production) the server's cell checks every message that passes through it: the
   sender's signed token must be bound to the message's origin (``FederatedServer._validate_auth_headers``,
   ``nvflare/private/fed/authenticator.py::validate_auth_headers``), and client-to-client messages must pass
   through the server (ad-hoc connections are off by default), so a client cannot send with the server's origin.
   In addition the peer identity name must equal the server identity this site saw on the task it trained, learnt
   over its own connection (`medpfl_app.nvflare.filters.sent_digest.SentUpdateDigest`; ``simulator_server`` in the
   simulator, the project name in POC and production).
2. **Only for an update this site sent.** The request carries the digest of the update the server received
   (`medpfl_app.audit.update_digest`); it must match the digest this site recorded when the update left it
   (`medpfl_app.audit.round_samples.SentUpdate`) for the same round.
3. **Once per update, bounded.** The reconstructions must be a float32 ``(N, C, H, W)`` array with the site's own
   image shape and at most as many images as the update declared; labels at most one per reconstruction, within
   the label range; all checked before any computation. A second request for the same update is refused.

A refused request is logged at the site in one line and counted (`AuditSiteScorer.refusal_counts`); the reply
carries the short reason (`REPLY_REFUSED`, no path, no sample) beside scores marked unavailable, which the server
records as such. Nothing but the scalar scores (`medpfl_app.audit.scoring.check_scalars_only`) ever leaves.

Originals for the report's thumbnails: only the site decides, and only for synthetic demo data. With
``release_demo_originals`` on (default off) and a server request that asks for them (`REQUEST_ORIGINALS`), the site
checks that its training data is the embedded synthetic demo set (`medpfl_app.audit.release.demo_data_refusal`,
from the demo's ``manifest.json``) and then adds small downsized originals, matched to the reconstructions, to the
scalar scores (`REPLY_ORIGINALS`). For any other data, or with the option off, it refuses: the reason is logged at
the site and sent as one short string (`REPLY_ORIGINALS_REFUSED`) beside the scalar scores, and no image leaves.
"""

from __future__ import annotations

import numbers
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass
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
    ScoreReply,
    ScoreRequest,
    ScoreStatus,
)
from medpfl_app.nvflare.end_of_run import CHECK_WAIT_S, EndOfRunHold, hold_end_of_run

#: Sent by the server once its audit queue is drained at the end of the job: the site need not wait any longer.
RELEASE_TOPIC = "medpfl.audit.release"
#: The reply's `medpfl_app.contracts.score.ScoreReply` (``to_json``).
REPLY_SCORES = "scores"
#: Set on a refused request: the short reason (no path, no sample); the scores then say ``unavailable``.
REPLY_REFUSED = "refused"
#: The cell every NVFlare server request comes from: the server's root cell, or its job cell ``server.<job id>``.
SERVER_ROOT_CELL = "server"
#: Labels are class indices below this, whatever the site's data says (a bound on what a request may carry).
MAX_LABEL = 100_000
#: `medpfl_app.audit.release.ReleasedOriginals.to_payload`, only from a site that released synthetic demo originals.
REPLY_ORIGINALS = "demo_originals"
#: Why the site did not release originals (a short reason naming no path or sample); only when they were asked for.
REPLY_ORIGINALS_REFUSED = "originals_refused"


@dataclass(frozen=True)
class RoundImages:
    """The site's images behind one round's update (site-local, never sent).

    Attributes:
        pool: ``(P, C, H, W)`` all of the site's training images, as training saw them.
        labels: The label of each pool image.
        positions: The distinct pool positions the round trained on, in first-use order.
    """

    pool: Any
    labels: tuple[int, ...]
    positions: tuple[int, ...]


def score_request(found: RoundImages | str, request: Shareable) -> dict[str, Any]:
    """The scalar scores for one request against the round's images; never raises.

    Args:
        found: The round's images, or the reason the site has none (a short sentence naming no path or sample).
        request: The server's score request.

    Returns:
        `medpfl_app.audit.scoring.score_reconstructions`' scalars, or ``{"status": "unavailable", "reason": ...}``
        with a reason that names no file or sample.
    """
    from medpfl_app.audit.scoring import score_reconstructions

    if isinstance(found, str):
        return ScoreReply.unavailable(found).to_json()
    try:
        parsed = ScoreRequest.from_json(request)
        positions = list(found.positions)
        return score_reconstructions(
            parsed.reconstructions,
            found.pool[positions],
            used_positions=positions,
            pool=found.pool,
            recovered_labels=None if parsed.labels is None else [int(v) for v in parsed.labels],
            true_labels=[found.labels[p] for p in positions],
            ssim_threshold=parsed.ssim_threshold,
        )
    except Exception as error:  # noqa: BLE001 - the reply must carry a reason, not a traceback
        return ScoreReply.unavailable(f"site scoring failed: {type(error).__name__}").to_json()


def release_originals(found: RoundImages | str, request: Shareable, refusal: str | None, max_size: int):
    """Downsized originals matched to the request's reconstructions, or the reason none are released.

    Args:
        found: The round's images, or the reason the site has none.
        request: The server's score request.
        refusal: The site's verdict on its data (`medpfl_app.audit.release.demo_data_refusal`); None only for the
            synthetic demo set.
        max_size: Largest side of a released image.

    Returns:
        `medpfl_app.audit.release.ReleasedOriginals`, or a short reason string (no path, no sample).
    """
    import numpy as np

    from medpfl_app.audit.release import matched_originals

    if refusal is not None:
        return refusal
    if isinstance(found, str):
        return found
    try:
        reconstructions = np.asarray(request.get(REQUEST_RECONSTRUCTIONS), dtype=np.float32)
        return matched_originals(reconstructions, found.pool[list(found.positions)], max_size=max_size)
    except Exception as error:  # noqa: BLE001 - a failed release costs the thumbnails, never the scores
        return f"matching the originals failed: {type(error).__name__}"


@dataclass(frozen=True)
class Refusal:
    """Why the scorer refuses a request.

    Attributes:
        kind: ``not_server``, ``no_update``, ``wrong_update``, ``malformed`` or ``replay`` (for the counts).
        reason: One short sentence for the reply and the log (names no path or sample).
    """

    kind: str
    reason: str


def sender_refusal(origin: Any, claimed: Any, job_id: str | None, server_identity: str | None) -> Refusal | None:
    """Whether a request with cellnet ``origin`` and peer identity ``claimed`` comes from the server.

    Args:
        origin: The request's cellnet ``ORIGIN`` header (None when the request did not come through the cell).
        claimed: The identity name in the request's peer context (written by the sender).
        job_id: This job.
        server_identity: The server identity this site saw on the task it trained (None: unknown).

    Returns:
        None for the server, else the refusal.
    """
    allowed = {SERVER_ROOT_CELL} | ({f"{SERVER_ROOT_CELL}.{job_id}"} if job_id else set())
    if not isinstance(origin, str) or origin not in allowed:
        return Refusal("not_server", "refused: the request did not come from the server")
    if server_identity is not None and claimed != server_identity:
        return Refusal("not_server", "refused: the request does not name the server that assigned the task")
    return None


def request_refusal(
    request: Shareable, *, image_shape: tuple[int, int, int], max_images: int, num_classes: int | None
) -> Refusal | None:
    """Check a request's reconstructions, labels and threshold against the site's own images, before any work.

    Args:
        request: The score request.
        image_shape: ``(C, H, W)`` of the site's training images.
        max_images: The most reconstructions the update allows (the images it declared).
        num_classes: The site's label count (None: labels only bounded by `MAX_LABEL`).

    Returns:
        None when well-formed, else the refusal.
    """
    import numpy as np

    def malformed(what: str) -> Refusal:
        return Refusal("malformed", f"refused: {what}")

    recon = request.get(REQUEST_RECONSTRUCTIONS)
    if not isinstance(recon, np.ndarray) or recon.dtype != np.float32:
        return malformed("the reconstructions are not a float32 array")
    if recon.ndim != 4 or tuple(recon.shape[1:]) != tuple(image_shape):
        return malformed(f"the reconstructions do not have the site's image shape {tuple(image_shape)}")
    if not 1 <= recon.shape[0] <= max_images:
        return malformed(
            f"{recon.shape[0]} reconstructions, outside 1 to {max_images} (the images the update declared)"
        )
    labels = request.get(REQUEST_LABELS)
    if labels is not None:
        if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu" or labels.ndim != 1:
            return malformed("the labels are not a 1-D integer array")
        if labels.shape[0] != recon.shape[0]:
            return malformed("the labels do not match the reconstructions one to one")
        top = min(MAX_LABEL, num_classes) if num_classes else MAX_LABEL
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= top):
            return malformed(f"a label lies outside 0 to {top - 1}")
    threshold = request.get(REQUEST_THRESHOLD)
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0.0 < float(threshold) <= 1.0
    ):
        return malformed("the SSIM threshold is not a number in (0, 1]")
    return None


def _quoted(value: Any, limit: int = 80) -> str:
    """A sender-controlled value for one log line: repr (no newline), truncated."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AuditSiteScorer(FLComponent):
    """Answers the server audit's score requests for this site (scalars only) and holds the run end for them.

    Ground truth stays at the site. The one exception is ``release_demo_originals``: only when it is on, the
    server asks for originals, and this site's training data is recognisably the embedded synthetic demo set
    (``manifest.json`` of `medpfl_app.data.demo.generate_demo_dataset` stating ``"synthetic": true``, checked by
    `medpfl_app.audit.release.demo_data_refusal`), the reply also carries small downsized originals (at most
    ``original_max_size`` px, uint8) matched to the reconstructions, for the report's thumbnails. For any other
    data the site refuses, logs why, and replies with the scalar scores and the refusal reason only.

    State is per job: on ``START_RUN`` the component binds to this site's client run folder of the job, where the
    training script records each round's samples (`medpfl_app.audit.round_samples`) and the job's last result
    filter records each update sent (`medpfl_app.nvflare.filters.sent_digest.SentUpdateDigest`), and it keeps the site's
    training images it loaded, the updates it already scored and the requests it refused; nothing is shared
    through process-global state.

    Requests are answered only from the server, only for an update this site sent (matching round and digest),
    once per update, and only when their arrays fit the site's own images (see the module notes). The checks run
    in that order, before any image is loaded, so a refused request costs no computation and cannot use up the
    server's one request per update.

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
        if (
            isinstance(original_max_size, bool)
            or not isinstance(original_max_size, int)
            or not 4 <= original_max_size <= 64
        ):
            raise ValueError(f"original_max_size must be an integer in [4, 64], got {original_max_size!r}")
        if (
            isinstance(max_reconstructions, bool)
            or not isinstance(max_reconstructions, int)
            or not 1 <= max_reconstructions <= 4096
        ):
            raise ValueError(f"max_reconstructions must be an integer in [1, 4096], got {max_reconstructions!r}")
        self.max_reconstructions = max_reconstructions
        self.wait_at_end_s = wait_at_end_s
        self.release_demo_originals = bool(release_demo_originals)
        self.original_max_size = original_max_size
        self._data_refusal: str | None = None
        self._data_checked = False
        # This job at this site (set on START_RUN): where the training script's round records are.
        self._site: str | None = None
        self._job_id: str | None = None
        self._run_dir: Path | None = None
        # The site's training images, loaded once per training set (`round_samples.TrainingPool`).
        self._pool = None
        self._pool_lock = threading.Lock()
        self._scored_rounds: set[int] = set()
        self._lock = threading.Lock()
        self._hold = EndOfRunHold(wait_at_end_s)
        self._released = threading.Event()
        #: Longest one readiness check waits inside the handler (see `medpfl_app.nvflare.end_of_run.CHECK_WAIT_S`).
        self.check_wait_s = CHECK_WAIT_S
        # Updates already scored, as (round, digest): the site answers once per update.
        self._answered: set[tuple[int, str]] = set()
        self._refusals: Counter[str] = Counter()
        self._engine = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
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
        elif event_type == EventType.AFTER_TASK_EXECUTION:
            # The training script has just recorded the round it trained: load the images now, in the background,
            # so that the server's first score request does not wait for them.
            threading.Thread(target=self._warm_up, name="medpfl-scorer-warm-up", daemon=True).start()
        elif event_type == EventType.CHECK_END_RUN_READINESS:
            self._check_end(fl_ctx)
        elif event_type == EventType.END_RUN:
            counts = self.refusal_counts()
            if counts:
                self.log_warning(
                    fl_ctx,
                    f"MedPFL audit: {self._site} refused {sum(counts.values())} score or "
                    f"release requests in this job: {counts}",
                )

    def refusal_counts(self) -> dict[str, int]:
        """Requests refused so far in this job, by `Refusal.kind`."""
        with self._lock:
            return dict(self._refusals)

    def _register_on_cell(self, engine, fl_ctx: FLContext, wait_s: float = 10.0) -> None:
        """Handle `SCORE_TOPIC` and `RELEASE_TOPIC` on this client job's cell, where the sender's origin is known.

        An exact (channel, topic) registration takes precedence over the ``"*"`` topic through which NVFlare's
        command agent hands auxiliary messages to the aux runner (``Registry.find``), for streamed and plain
        messages alike (``Cell._register_request_cb``). Without a cell, every request is refused.
        """
        from nvflare.private.defs import CellChannel

        deadline = time.monotonic() + wait_s
        cell = engine.get_cell() if hasattr(engine, "get_cell") else None
        while cell is None and time.monotonic() < deadline and hasattr(engine, "get_cell"):
            time.sleep(0.1)
            cell = engine.get_cell()
        if cell is None:
            self.log_warning(
                fl_ctx,
                "MedPFL audit: no client job cell to receive score requests on: every score "
                "request will be refused (the sender cannot be verified)",
            )
            return
        for topic in (SCORE_TOPIC, RELEASE_TOPIC):
            cell.register_request_cb(channel=CellChannel.AUX_COMMUNICATION, topic=topic, cb=self._on_cell_request)

    def _on_cell_request(self, message):
        """The cell's request callback: NVFlare's aux dispatch (``CommandAgent._aux_communication`` and
        ``AuxRunner.dispatch``) plus the sender's cellnet origin, which the handlers check."""
        from nvflare.apis.utils.fl_context_utils import gen_new_peer_ctx
        from nvflare.fuel.f3.cellnet.defs import MessageHeaderKey
        from nvflare.fuel.f3.cellnet.defs import ReturnCode as CellReturnCode
        from nvflare.fuel.f3.cellnet.utils import new_cell_message

        origin = message.get_header(MessageHeaderKey.ORIGIN)
        topic = message.get_header(MessageHeaderKey.TOPIC)
        request = message.payload
        engine = self._engine
        if engine is None:
            return new_cell_message({MessageHeaderKey.RETURN_CODE: CellReturnCode.SERVICE_UNAVAILABLE})
        with engine.new_context() as fl_ctx:
            try:
                if isinstance(request, Shareable):
                    peer_props = request.get_peer_props()
                    if isinstance(peer_props, dict) and peer_props:
                        peer_ctx = FLContext()
                        peer_ctx.set_public_props(peer_props)
                        fl_ctx.set_peer_context(peer_ctx)
                if topic == RELEASE_TOPIC:
                    reply = self._on_release(topic, request, fl_ctx, origin=origin)
                else:
                    reply = self._on_request(SCORE_TOPIC, request, fl_ctx, origin=origin)
                if isinstance(request, Shareable) and request.get_cookie_jar():
                    reply.set_cookie_jar(request.get_cookie_jar())
            except Exception as error:  # noqa: BLE001 - one line at the site, a bare error code to the sender
                self.logger.warning(
                    f"MedPFL audit: {self._site} could not handle a {_quoted(topic, 40)} request "
                    f"from cell {_quoted(origin)}: {type(error).__name__}"
                )
                reply = make_reply(ReturnCode.EXECUTION_EXCEPTION)
            reply.set_peer_context(gen_new_peer_ctx(fl_ctx))
        return new_cell_message({MessageHeaderKey.RETURN_CODE: CellReturnCode.OK}, reply)

    def _bind(self, site: str, job_id: str, run_dir: Path) -> None:
        """Serve ``site``'s records of ``job_id``, kept under the client's run folder ``run_dir``."""
        self._site, self._job_id, self._run_dir = site, job_id, Path(run_dir)

    def _round_record(self, round_number: Any):
        """The training script's record of ``round_number`` (`RoundSamples`), or the reason there is none."""
        from medpfl_app.audit.round_samples import RoundSamplesUnavailable, read_round_samples

        if self._site is None or self._job_id is None or self._run_dir is None:
            return "the site's scorer has not started (no job)"
        try:
            return read_round_samples(self._run_dir, round_number, job_id=self._job_id, site=self._site)
        except RoundSamplesUnavailable as unavailable:
            self._log_unavailable(round_number, unavailable)
            return unavailable.reason

    def _images_of(self, record) -> RoundImages | str:
        """The site's images behind a round record, or the reason there are none (no path, no sample)."""
        from medpfl_app.audit.round_samples import RoundSamplesUnavailable

        try:
            pool = self._training_pool(record.training_set)
        except RoundSamplesUnavailable as unavailable:
            self._log_unavailable(record.round, unavailable)
            return unavailable.reason
        return RoundImages(pool=pool.images, labels=pool.labels, positions=record.positions)

    def _round_images(self, round_number: Any) -> RoundImages | str:
        """The site's images behind ``round_number``, or the reason there are none (no path, no sample)."""
        record = self._round_record(round_number)
        return record if isinstance(record, str) else self._images_of(record)

    def _log_unavailable(self, round_number: Any, unavailable) -> None:
        if unavailable.detail:
            self.logger.warning(
                f"MedPFL audit: {self._site} cannot score round {_quoted(round_number, 30)}: "
                f"{unavailable.reason} ({unavailable.detail})"
            )

    def _training_pool(self, training_set):
        """The site's training images for ``training_set``, loaded once and kept on this component.

        Raises:
            RoundSamplesUnavailable: The images cannot be loaded as training saw them.
        """
        from medpfl_app.audit.round_samples import load_training_pool

        with self._pool_lock:
            if self._pool is None or self._pool.training_set != training_set:
                # The same data resolution as the training script (medpfl_app.nvflare.site.client).
                self._pool = load_training_pool(
                    self._site, training_set, workspace_dir=os.environ.get("MEDPFL_SITE_WORKSPACE")
                )
            return self._pool

    def _warm_up(self) -> None:
        """Load the images of the latest recorded round, if not loaded yet; failures wait for a request."""
        from medpfl_app.audit.round_samples import recorded_rounds

        try:
            rounds = recorded_rounds(self._run_dir) if self._run_dir is not None else ()
            if rounds:
                self._round_images(rounds[-1])  # a reason (no images) is given again when a request asks
        except Exception as error:  # noqa: BLE001 - a background warm-up must never take the site down
            self.logger.warning(f"MedPFL audit: could not load the site's training images ahead: {error!r}")

    def _on_request(self, topic: str, request: Shareable, fl_ctx: FLContext, *, origin: str | None = None) -> Shareable:
        """Score the server's reconstructions of this site's own update, once; refuse anything else.

        Args:
            topic: `SCORE_TOPIC`.
            request: The request (anything the sender put on the wire).
            fl_ctx: A context whose peer context is the request's (written by the sender).
            origin: The request's cellnet ``ORIGIN`` (None when it did not come through this job's cell: refused).
        """
        site = self._site or fl_ctx.get_identity_name()
        if not isinstance(request, Shareable):
            return self._refuse(fl_ctx, Refusal("malformed", "refused: the request is not a Shareable"), origin, None)
        round_number = request.get(REQUEST_ROUND)
        peer = fl_ctx.get_peer_context()
        claimed = peer.get_identity_name() if peer is not None else None
        refusal = sender_refusal(origin, claimed, self._job_id, None)  # before anything is read: costs nothing
        if refusal is not None:
            return self._refuse(fl_ctx, refusal, origin, claimed, round_number)
        checked = self._check_update(request, round_number, claimed)
        if isinstance(checked, Refusal):
            return self._refuse(fl_ctx, checked, origin, claimed, round_number)
        record, digest = checked
        if isinstance(record, str):  # no record of the round's samples: nothing to compare with
            found: RoundImages | str = record
        else:
            refusal = None
            with self._lock:
                if (record.round, digest) in self._answered:
                    refusal = Refusal(
                        "replay",
                        f"refused: the round {record.round} update was already scored "
                        "(the site answers once per update)",
                    )
                else:
                    self._answered.add((record.round, digest))
            if refusal is not None:
                return self._refuse(fl_ctx, refusal, origin, claimed, round_number)
            found = self._images_of(record)
        scores = score_request(found, request)
        self.log_info(
            fl_ctx,
            f"MedPFL audit: scored the server's reconstructions of round {round_number} (request "
            f"from cell {_quoted(origin)}): {scores.get('status')}"
            + (f" ({scores.get('reason')})" if scores.get("status") != ScoreStatus.SCORED else ""),
        )
        reply = make_reply(ReturnCode.OK)
        reply[REPLY_SCORES] = ScoreReply.from_json(scores).to_json()  # only `SCORE_KEYS` leave the site
        if request.get(REQUEST_ORIGINALS):
            released = release_originals(found, request, self._refusal(site), self.original_max_size)
            if isinstance(released, str):
                self.log_info(fl_ctx, f"MedPFL audit: originals of round {round_number} not released: {released}")
                reply[REPLY_ORIGINALS_REFUSED] = released
            else:
                self.log_info(
                    fl_ctx,
                    f"MedPFL audit: released {len(released.reconstruction_indices)} downsized "
                    f"synthetic demo originals of round {round_number} for the report",
                )
                reply[REPLY_ORIGINALS] = released.to_payload()
        return reply

    def _check_update(self, request: Shareable, round_number: Any, claimed: Any):
        """``(round record or reason, digest)`` for a server request about an update this site sent, else the
        `Refusal`. Reads only the two small site-local records, never an image."""
        from medpfl_app.audit.round_samples import RoundSamplesUnavailable, read_sent_update
        from medpfl_app.audit.update_digest import same_digest

        if isinstance(round_number, bool) or not isinstance(round_number, numbers.Integral) or round_number < 0:
            return Refusal("malformed", "refused: the request names no valid round")
        round_number = int(round_number)
        if self._site is None or self._job_id is None or self._run_dir is None:
            return Refusal("no_update", "refused: the site's scorer has not started (no job)")
        try:
            sent = read_sent_update(self._run_dir, round_number, job_id=self._job_id, site=self._site)
        except RoundSamplesUnavailable as unavailable:
            self._log_unavailable(round_number, unavailable)
            return Refusal("no_update", f"refused: {unavailable.reason}")
        refusal = sender_refusal(SERVER_ROOT_CELL, claimed, self._job_id, sent.server_identity)
        if refusal is not None:
            return refusal
        with self._lock:
            self._scored_rounds.add(round_number)  # the server asked for this round: no need to wait for it
        digest = request.get(REQUEST_DIGEST)
        if not same_digest(digest, sent.digest):
            return Refusal(
                "wrong_update",
                f"refused: the update digest does not match the update this site sent in round {round_number}",
            )
        record = self._round_record(round_number)
        if isinstance(record, str):
            return record, sent.digest
        data = record.training_set.data
        limit = min(self.max_reconstructions, sent.declared_images or len(record.positions))
        refusal = request_refusal(
            request,
            image_shape=(data.in_channels, data.image_size, data.image_size),
            max_images=limit,
            num_classes=record.training_set.num_classes,
        )
        return refusal if refusal is not None else (record, sent.digest)

    def _refuse(
        self, fl_ctx: FLContext, refusal: Refusal, origin: Any, claimed: Any, round_number: Any = None
    ) -> Shareable:
        """Log the refusal in one line, count it, and reply with the reason and unavailable scores."""
        with self._lock:
            self._refusals[refusal.kind] += 1
            count = sum(self._refusals.values())
        self.logger.warning(
            f"MedPFL audit: {self._site} refused a score request for round {_quoted(round_number, 30)} from cell "
            f"{_quoted(origin)} naming {_quoted(claimed)}: {refusal.reason} [{refusal.kind}; {count} refused so far]"
        )
        reply = make_reply(ReturnCode.OK)
        # Through the contract's reader: only `SCORE_KEYS` with scalar values ever leave the site.
        reply[REPLY_SCORES] = ScoreReply.from_json(ScoreReply.unavailable(refusal.reason).to_json()).to_json()
        reply[REPLY_REFUSED] = refusal.reason
        return reply

    def _refusal(self, site: str) -> str | None:
        """Why this site releases no originals (None: option on and synthetic demo data); checked once."""
        if not self.release_demo_originals:
            return f"{site} does not release originals (release_demo_originals is off)"
        if not self._data_checked:
            from medpfl_app.audit.release import demo_data_refusal
            from medpfl_app.data import resolve_site_data

            try:
                # The same resolution as the training script (medpfl_app.nvflare.site.client).
                settings = resolve_site_data(site, workspace_dir=os.environ.get("MEDPFL_SITE_WORKSPACE"))
                self._data_refusal = demo_data_refusal(settings.datalist, site)
            except Exception as error:  # noqa: BLE001 - unknown data is never released
                self._data_refusal = f"{site} could not identify its training data ({type(error).__name__})"
            self._data_checked = True
        return self._data_refusal

    def _on_release(self, topic: str, request: Shareable, fl_ctx: FLContext, *, origin: str | None = None) -> Shareable:
        """The server's audit is done: stop holding the end of the run (only the server may say so)."""
        if sender_refusal(origin, None, self._job_id, None) is not None:
            with self._lock:
                self._refusals["not_server"] += 1
            self.logger.warning(
                f"MedPFL audit: {self._site} ignored a release from cell {_quoted(origin)}: not the server"
            )
            return make_reply(ReturnCode.OK)
        self._released.set()
        return make_reply(ReturnCode.OK)

    def _check_end(self, fl_ctx: FLContext) -> None:
        """Hold the end of the run until the server releases the site (its audit queue is drained), at most
        ``wait_at_end_s`` from the first check; a site that trained no round does not wait. Never raises: the
        wait is designed, so it is said once at INFO, and giving up at the bound once as a warning.

        Not only until this site's own last round is scored: in NVFlare's simulator the first site whose run ends
        ends every site's run, which would cut off the other sites' last scores.
        """
        from medpfl_app.audit.round_samples import recorded_rounds

        if not self._hold.started:
            self._hold.limit_s = self.wait_at_end_s  # as configured now, not at construction
        if self._run_dir is None or self._released.is_set() or self._hold.expired():
            return
        rounds = recorded_rounds(self._run_dir)
        if not rounds:
            return
        if self._hold.start():
            with self._lock:
                scored = rounds[-1] in self._scored_rounds
            self.log_info(
                fl_ctx,
                f"MedPFL audit: {self._site} holds the end of the run until the server's audit "
                f"is done (at most {self.wait_at_end_s:g} s)"
                + ("" if scored else f"; its round {rounds[-1]} is not scored yet"),
            )
        if self._released.wait(min(self.check_wait_s, self._hold.left_s())):
            self.log_info(
                fl_ctx, f"MedPFL audit: {self._site} released by the server after {self._hold.waited_s():.0f} s"
            )
            return
        if self._hold.expired():
            self.log_warning(
                fl_ctx,
                f"MedPFL audit: {self._site} stopped waiting for the server's audit after "
                f"{self.wait_at_end_s:g} s (wait_at_end_s); its last scores may be missing",
            )
            return
        hold_end_of_run(fl_ctx)
