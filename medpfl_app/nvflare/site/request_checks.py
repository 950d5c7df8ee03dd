"""Who may ask a site's scorer, and for what: the checks on a score request, before any work.

A site may be malicious, and NVFlare routes auxiliary messages between clients, so another site can address this
site's scorer and, without these rules, use it as an oracle to rebuild this site's images from its scores.

1. **Only the server.** NVFlare's peer context of an auxiliary request (``fl_ctx.get_peer_context()``, the
   request's ``__peer_props__``) is written by the *sender* into the payload (``AuxRunner._send_to_cell``), so a
   client can claim any identity name there. The scorer therefore reads the cellnet ``ORIGIN`` header of the
   request (`medpfl_app.nvflare.site.cell_channel`): it must be the server's job cell (``server.<job id>``) or the
   server's root cell (``server``; the simulator's server sends from it). In secure mode (POC, production) the
   server's cell checks every message that passes through it: the sender's signed token must be bound to the
   message's origin (``FederatedServer._validate_auth_headers``,
   ``nvflare/private/fed/authenticator.py::validate_auth_headers``), and client-to-client messages must pass
   through the server (ad-hoc connections are off by default), so a client cannot send with the server's origin.
   In addition the peer identity name must equal the server identity this site saw on the task it trained, learnt
   over its own connection (`medpfl_app.nvflare.filters.sent_digest.SentUpdateDigest`; ``simulator_server`` in the
   simulator, the project name in POC and production). See `sender_refusal`.
2. **Only for an update this site sent.** The request carries the digest of the update the server received
   (`medpfl_app.audit.update_digest`); it must match the digest this site recorded when the update left it
   (`medpfl_app.audit.round_samples.SentUpdate`) for the same round.
3. **Once per update, bounded.** The reconstructions must be a float32 ``(N, C, H, W)`` array with the site's own
   image shape and at most as many images as the update declared; labels at most one per reconstruction, within
   the label range; all checked before any computation (`request_refusal`). A second request for the same update
   is refused.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nvflare.apis.shareable import Shareable

from medpfl_app.contracts.score import REQUEST_DIGEST, REQUEST_LABELS, REQUEST_RECONSTRUCTIONS, REQUEST_THRESHOLD
from medpfl_app.nvflare.site.protocol import SERVER_ROOT_CELL

#: Labels are class indices below this, whatever the site's data says (a bound on what a request may carry).
MAX_LABEL = 100_000


@dataclass(frozen=True)
class Refusal:
    """Why the scorer refuses a request.

    Attributes:
        kind: ``not_server``, ``no_update``, ``wrong_update``, ``malformed`` or ``replay`` (for the counts).
        reason: One short sentence for the reply and the log (names no path or sample).
    """

    kind: str
    reason: str


def quoted(value: Any, limit: int = 80) -> str:
    """A sender-controlled value for one log line: repr (no newline), truncated."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def round_refusal(round_number: Any) -> Refusal | None:
    """Whether the request's round is a plain non-negative integer (the sender writes it)."""
    if isinstance(round_number, bool) or not isinstance(round_number, numbers.Integral) or round_number < 0:
        return Refusal("malformed", "refused: the request names no valid round")
    return None


def replay_refusal(round_number: int) -> Refusal:
    """The refusal of a second request for an update already scored."""
    return Refusal(
        "replay", f"refused: the round {round_number} update was already scored (the site answers once per update)"
    )


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


def check_update(
    request: Shareable,
    round_number: Any,
    claimed: Any,
    rounds: Any,
    *,
    max_reconstructions: int,
    on_asked: Callable[[int], None],
) -> Any:
    """``(round record or reason, digest)`` for a server request about an update this site sent, else the
    `Refusal`. Reads only the two small site-local records, never an image.

    Args:
        request: The score request (a Shareable; its sender is already checked).
        round_number: The round the request names (the sender wrote it).
        claimed: The identity name in the request's peer context.
        rounds: This job's records at this site (`medpfl_app.nvflare.site.round_records.SiteRounds`).
        max_reconstructions: The scorer's own bound on reconstructions per request.
        on_asked: Called with the round once the server that assigned the task asked about it.
    """
    from medpfl_app.audit.update_digest import same_digest

    refusal = round_refusal(round_number)
    if refusal is not None:
        return refusal
    round_number = int(round_number)
    if not rounds.bound:
        return Refusal("no_update", "refused: the site's scorer has not started (no job)")
    sent = rounds.sent_update(round_number)
    if isinstance(sent, str):
        return Refusal("no_update", f"refused: {sent}")
    refusal = sender_refusal(SERVER_ROOT_CELL, claimed, rounds.job_id, sent.server_identity)
    if refusal is not None:
        return refusal
    on_asked(round_number)
    if not same_digest(request.get(REQUEST_DIGEST), sent.digest):
        return Refusal(
            "wrong_update",
            f"refused: the update digest does not match the update this site sent in round {round_number}",
        )
    record = rounds.round_record(round_number)
    if isinstance(record, str):
        return record, sent.digest
    data = record.training_set.data
    refusal = request_refusal(
        request,
        image_shape=(data.in_channels, data.image_size, data.image_size),
        max_images=min(max_reconstructions, sent.declared_images or len(record.positions)),
        num_classes=record.training_set.num_classes,
    )
    return refusal if refusal is not None else (record, sent.digest)
