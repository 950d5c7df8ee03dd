"""Client-side NVFlare component: scores the server's reconstructions of this site's own update, at the site.

Configured in the client app's ``components`` (see `medpfl_app.jobs.spec.AUDIT_SITE_SCORER`). On ``START_RUN`` it
registers an auxiliary-message handler for `SCORE_TOPIC`; the server's audit sends the reconstructions of this
site's update of one round; the handler compares them with the images the site really used in that round
(`medpfl_app.audit.site_record`, filled by the training entry in this same process) and replies with scalar
scores only (`medpfl_app.audit.scoring.SCORE_KEYS`). At the end of the job it asks NVFlare to wait
(``NotReadyToEndRun``) until the last trained round has been scored or the server says its audit is done
(`RELEASE_TOPIC`, e.g. when the plan samples rounds), at most ``wait_at_end_s`` seconds, so the last round's
scores reach the ledger.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.fl_exception import NotReadyToEndRun
from nvflare.apis.shareable import Shareable, make_reply

SCORE_TOPIC = "medpfl.audit.score"
#: Sent by the server once its audit queue is drained at the end of the job: the site need not wait any longer.
RELEASE_TOPIC = "medpfl.audit.release"
REQUEST_RECONSTRUCTIONS = "reconstructions"
REQUEST_LABELS = "labels"
REQUEST_ROUND = "round"
REQUEST_THRESHOLD = "ssim_threshold"
REPLY_SCORES = "scores"


def score_request(site: str, request: Shareable) -> dict[str, Any]:
    """The scalar scores for one request, from this process's site record; never raises.

    Failures become ``{"status": "unavailable", "reason": ...}`` with a reason that names no file or sample.
    """
    import numpy as np
    import torch

    from medpfl_app.audit import site_record
    from medpfl_app.audit.scoring import score_reconstructions

    round_number = request.get(REQUEST_ROUND)
    try:
        samples = site_record.round_samples(site, int(round_number)) if round_number is not None else None
        dataset = site_record.training_data(site)
        if samples is None or dataset is None or not samples.positions:
            return {"status": "unavailable", "reason": f"the site has no record of its samples for round {round_number}"}
        items = [dataset[i] for i in range(len(dataset))]
        pool = torch.stack([torch.as_tensor(item["image"]).float() for item in items])
        labels = [int(torch.as_tensor(item["label"]).reshape(-1)[0]) for item in items]
        positions = list(samples.positions)
        recovered = request.get(REQUEST_LABELS)
        return score_reconstructions(
            np.asarray(request.get(REQUEST_RECONSTRUCTIONS), dtype=np.float32),
            pool[positions],
            used_positions=positions,
            pool=pool,
            recovered_labels=None if recovered is None else [int(v) for v in np.asarray(recovered).reshape(-1)],
            true_labels=[labels[p] for p in positions],
            ssim_threshold=float(request.get(REQUEST_THRESHOLD) or 0.9),
        )
    except Exception as error:  # noqa: BLE001 - the reply must carry a reason, not a traceback
        return {"status": "unavailable", "reason": f"site scoring failed: {type(error).__name__}"}


class AuditSiteScorer(FLComponent):
    """Answers the server audit's score requests for this site (scalars only) and holds the run end for them.

    Args:
        wait_at_end_s: At most this long, at the end of the job, the site keeps running until its last trained
            round has been scored (0: never wait). Also set ``end_run_readiness_timeout`` in the client config.
    """

    def __init__(self, wait_at_end_s: float = 120.0) -> None:
        super().__init__()
        self.wait_at_end_s = wait_at_end_s
        self._site: str | None = None
        self._scored_rounds: set[int] = set()
        self._lock = threading.Lock()
        self._end_check_started: float | None = None
        self._released = False

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == EventType.START_RUN:
            self._site = fl_ctx.get_identity_name()
            engine = fl_ctx.get_engine()
            engine.register_aux_message_handler(topic=SCORE_TOPIC, message_handle_func=self._on_request)
            engine.register_aux_message_handler(topic=RELEASE_TOPIC, message_handle_func=self._on_release)
        elif event_type == EventType.CHECK_END_RUN_READINESS:
            self._check_end(fl_ctx)

    def _on_request(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        site = self._site or fl_ctx.get_identity_name()
        scores = score_request(site, request)
        round_number = request.get(REQUEST_ROUND)
        with self._lock:
            if round_number is not None:
                self._scored_rounds.add(int(round_number))
        self.log_info(fl_ctx, f"MedPFL audit: scored the server's reconstructions of round {round_number}: "
                              f"{scores.get('status')}")
        reply = make_reply(ReturnCode.OK)
        reply[REPLY_SCORES] = scores
        return reply

    def _on_release(self, topic: str, request: Shareable, fl_ctx: FLContext) -> Shareable:
        self._released = True
        return make_reply(ReturnCode.OK)

    def _check_end(self, fl_ctx: FLContext) -> None:
        from medpfl_app.audit import site_record

        if not self._site or self.wait_at_end_s <= 0 or self._released:
            return
        rounds = site_record.recorded_rounds(self._site)
        with self._lock:
            done = not rounds or rounds[-1] in self._scored_rounds
        if done:
            return
        now = time.monotonic()
        if self._end_check_started is None:
            self._end_check_started = now
        if now - self._end_check_started < self.wait_at_end_s:
            raise NotReadyToEndRun(f"MedPFL audit: round {rounds[-1]} of {self._site} not scored yet")
