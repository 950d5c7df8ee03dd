"""Client-side NVFlare component: scores the server's reconstructions of this site's own update, at the site.

Configured in the client app's ``components`` (see `medpfl_app.jobs.spec.AUDIT_SITE_SCORER`). On ``START_RUN`` it
registers an auxiliary-message handler for `SCORE_TOPIC`; the server's audit sends the reconstructions of this
site's update of one round; the handler compares them with the images the site really used in that round
(`medpfl_app.audit.site_record`, filled by the training entry in this same process) and replies with scalar
scores only (`medpfl_app.audit.scoring.SCORE_KEYS`). At the end of the job it asks NVFlare to wait
(``NotReadyToEndRun``) until the last trained round has been scored or the server says its audit is done
(`RELEASE_TOPIC`, e.g. when the plan samples rounds), at most ``wait_at_end_s`` seconds, so the last round's
scores reach the ledger.

Originals for the report's thumbnails: only the site decides, and only for synthetic demo data. With
``release_demo_originals`` on (default off) and a server request that asks for them (`REQUEST_ORIGINALS`), the site
checks that its training data is the embedded synthetic demo set (`medpfl_app.audit.release.demo_data_refusal`,
from the demo's ``manifest.json``) and then adds small downsized originals, matched to the reconstructions, to the
scalar scores (`REPLY_ORIGINALS`). For any other data, or with the option off, it refuses: the reason is logged at
the site and sent as one short string (`REPLY_ORIGINALS_REFUSED`) beside the scalar scores, and no image leaves.
"""

from __future__ import annotations

import os
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
#: Set by a server that stores thumbnails: it would accept downsized originals (the site decides; demo data only).
REQUEST_ORIGINALS = "originals_wanted"
#: `medpfl_app.audit.release.ReleasedOriginals.to_payload`, only from a site that released synthetic demo originals.
REPLY_ORIGINALS = "demo_originals"
#: Why the site did not release originals (a short reason naming no path or sample); only when they were asked for.
REPLY_ORIGINALS_REFUSED = "originals_refused"


def _round_images(site: str, round_number: Any):
    """``(pool, labels, positions)`` of the site's images behind ``round_number``, or a reason string."""
    import torch

    from medpfl_app.audit import site_record

    samples = site_record.round_samples(site, int(round_number)) if round_number is not None else None
    dataset = site_record.training_data(site)
    if samples is None or dataset is None or not samples.positions:
        return f"the site has no record of its samples for round {round_number}"
    items = [dataset[i] for i in range(len(dataset))]
    pool = torch.stack([torch.as_tensor(item["image"]).float() for item in items])
    labels = [int(torch.as_tensor(item["label"]).reshape(-1)[0]) for item in items]
    return pool, labels, list(samples.positions)


def score_request(site: str, request: Shareable) -> dict[str, Any]:
    """The scalar scores for one request, from this process's site record; never raises.

    Failures become ``{"status": "unavailable", "reason": ...}`` with a reason that names no file or sample.
    """
    import numpy as np

    from medpfl_app.audit.scoring import score_reconstructions

    round_number = request.get(REQUEST_ROUND)
    try:
        found = _round_images(site, round_number)
        if isinstance(found, str):
            return {"status": "unavailable", "reason": found}
        pool, labels, positions = found
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


def release_originals(site: str, request: Shareable, refusal: str | None, max_size: int):
    """Downsized originals matched to the request's reconstructions, or the reason none are released.

    Args:
        site: This site.
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
    try:
        found = _round_images(site, request.get(REQUEST_ROUND))
        if isinstance(found, str):
            return found
        pool, _, positions = found
        reconstructions = np.asarray(request.get(REQUEST_RECONSTRUCTIONS), dtype=np.float32)
        return matched_originals(reconstructions, pool[positions], max_size=max_size)
    except Exception as error:  # noqa: BLE001 - a failed release costs the thumbnails, never the scores
        return f"matching the originals failed: {type(error).__name__}"


class AuditSiteScorer(FLComponent):
    """Answers the server audit's score requests for this site (scalars only) and holds the run end for them.

    Ground truth stays at the site. The one exception is ``release_demo_originals``: only when it is on, the
    server asks for originals, and this site's training data is recognisably the embedded synthetic demo set
    (``manifest.json`` of `medpfl_app.data.demo.generate_demo_dataset` stating ``"synthetic": true``, checked by
    `medpfl_app.audit.release.demo_data_refusal`), the reply also carries small downsized originals (at most
    ``original_max_size`` px, uint8) matched to the reconstructions, for the report's thumbnails. For any other
    data the site refuses, logs why, and replies with the scalar scores and the refusal reason only.

    Args:
        wait_at_end_s: At most this long, at the end of the job, the site keeps running until its last trained
            round has been scored (0: never wait). Also set ``end_run_readiness_timeout`` in the client config.
        release_demo_originals: Allow releasing originals of synthetic demo data (default off; never for other
            data, whatever this says).
        original_max_size: Largest side, in pixels, of a released original (4 to 64).

    Raises:
        ValueError: ``original_max_size`` out of range.
    """

    def __init__(
        self, wait_at_end_s: float = 120.0, release_demo_originals: bool = False, original_max_size: int = 32
    ) -> None:
        super().__init__()
        if isinstance(original_max_size, bool) or not isinstance(original_max_size, int) or not 4 <= original_max_size <= 64:
            raise ValueError(f"original_max_size must be an integer in [4, 64], got {original_max_size!r}")
        self.wait_at_end_s = wait_at_end_s
        self.release_demo_originals = bool(release_demo_originals)
        self.original_max_size = original_max_size
        self._data_refusal: str | None = None
        self._data_checked = False
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
        if request.get(REQUEST_ORIGINALS):
            released = release_originals(site, request, self._refusal(site), self.original_max_size)
            if isinstance(released, str):
                self.log_info(fl_ctx, f"MedPFL audit: originals of round {round_number} not released: {released}")
                reply[REPLY_ORIGINALS_REFUSED] = released
            else:
                self.log_info(fl_ctx, f"MedPFL audit: released {len(released.reconstruction_indices)} downsized "
                                      f"synthetic demo originals of round {round_number} for the report")
                reply[REPLY_ORIGINALS] = released.to_payload()
        return reply

    def _refusal(self, site: str) -> str | None:
        """Why this site releases no originals (None: option on and synthetic demo data); checked once."""
        if not self.release_demo_originals:
            return f"{site} does not release originals (release_demo_originals is off)"
        if not self._data_checked:
            from medpfl_app.audit.release import demo_data_refusal
            from medpfl_app.data import resolve_site_data

            try:
                # The same resolution as the training entry in this process (medpfl_app.training.site_entry).
                settings = resolve_site_data(site, workspace_dir=os.environ.get("MEDPFL_SITE_WORKSPACE"))
                self._data_refusal = demo_data_refusal(settings.datalist, site)
            except Exception as error:  # noqa: BLE001 - unknown data is never released
                self._data_refusal = f"{site} could not identify its training data ({type(error).__name__})"
            self._data_checked = True
        return self._data_refusal

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
