"""The audit's requests to a site: score the reconstructions of its update there, and store the thumbnails.

Runs on the attack thread. Ground truth stays at the site: the server sends the reconstructions of one update and
gets scalar scores back (`medpfl_app.contracts.score.ScoreReply`), plus, only from a site that opted in and trains
on the synthetic demo set, small originals for the report's thumbnails (`medpfl_app.audit.demo_originals`). The request
carries the digest of the update as received (`medpfl_app.audit.update_digest`): the site scores only an update
it recorded sending, once. Every way the round-trip can fail becomes scores marked unavailable with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from nvflare.apis.shareable import Shareable

from medpfl_app.audit.update_audit import AuditItem
from medpfl_app.contracts.score import SCORE_TOPIC, ScoreReply, ScoreRequest
from medpfl_app.nvflare.site.protocol import REPLY_ORIGINALS, REPLY_ORIGINALS_REFUSED, REPLY_REFUSED, REPLY_SCORES

#: ``ask(site, round, reconstructions, labels, update_digest=...) -> (scores, originals or None)``.
AskSite = Callable[..., tuple[dict[str, Any], Any]]


def score_at_site(
    item: AuditItem,
    reconstructions: Any,
    labels: Any,
    *,
    ask: AskSite,
    thumbnail_dir: str | None,
    store_reconstructions: bool,
    logger: logging.Logger,
) -> dict[str, Any]:
    """Ask the item's site for scalar scores of the reconstructions of its update; with
    ``store_reconstructions``, also store the thumbnails (even when the site cannot be reached).

    Raises:
        MedPFLError: The site's scores are not scalars (the worker records them unavailable).
    """
    from medpfl_app.audit.worker import unavailable_scores

    originals = None
    try:
        digest = received_digest(item, logger)
        if digest is None:
            scores = unavailable_scores("the update as received could not be digested for the score request")
        else:
            scores, originals = ask(item.site, item.round, reconstructions, labels, update_digest=digest)
    finally:  # the reconstructions are stored even when the site cannot be reached
        if store_reconstructions:
            store_thumbnails(thumbnail_dir, item.site, item.round, reconstructions, originals, logger)
    return scores


def received_digest(item: AuditItem, logger: logging.Logger) -> str | None:
    """`medpfl_app.audit.update_digest.update_digest` of the update as received; None (logged) if impossible."""
    from medpfl_app.audit.update_digest import update_digest

    try:
        return update_digest(item.update)
    except ValueError as error:
        logger.warning(f"MedPFL audit: cannot digest {item.site}'s round {item.round} update: {error}")
        return None


def store_thumbnails(
    thumbnail_dir: str | None,
    site: str,
    round_number: int | None,
    reconstructions: Any,
    originals: Any,
    logger: logging.Logger,
) -> None:
    """Write the round's PNGs owner-only; a failure is logged, never raised (the scores still count)."""
    from medpfl_app.audit.thumbnail_store import store_round

    try:
        if thumbnail_dir is None or round_number is None:
            logger.warning(
                f"MedPFL audit: no thumbnails for {site} round {round_number}: no run folder or no round number"
            )
            return
        store_round(thumbnail_dir, site, int(round_number), reconstructions, originals)
    except Exception as error:  # noqa: BLE001 - thumbnails must never cost the audit record
        logger.warning(f"MedPFL audit: could not store thumbnails for {site} round {round_number}: {error!r}")


def ask_site(
    engine: Any,
    site: str,
    round_number: int | None,
    reconstructions: Any,
    labels: Any,
    *,
    update_digest: str | None,
    ssim_threshold: float,
    originals_wanted: bool,
    timeout_s: float,
    logger: logging.Logger,
) -> tuple[dict[str, Any], Any]:
    """``(scores, originals)``: the site's scalar scores and any synthetic demo originals it released.

    ``update_digest`` names the update (`medpfl_app.audit.update_digest`); a site refuses a request without
    the digest of an update it sent, and a second request for the same update. Its refusal reason is recorded
    as the reason the scores are unavailable.
    """
    from medpfl_app.audit.worker import unavailable_scores

    if engine is None:
        return unavailable_scores("the server engine is not available"), None
    request = Shareable()
    request.update(
        ScoreRequest(
            round=round_number,
            update_digest=update_digest,
            reconstructions=reconstructions,
            labels=labels,
            ssim_threshold=float(ssim_threshold),
            # only then: a server that stores nothing has no use for ground truth
            originals_wanted=bool(originals_wanted),
        ).to_json()
    )
    with engine.new_context() as fl_ctx:
        replies = engine.send_aux_request(
            targets=[site], topic=SCORE_TOPIC, request=request, timeout=timeout_s, fl_ctx=fl_ctx
        )
    reply = (replies or {}).get(site)
    if reply is None:
        return unavailable_scores(f"no reply from {site} within {timeout_s:g} s (unreachable or not running)"), None
    code = reply.get_return_code()
    if code != "OK":
        return unavailable_scores(f"{site} answered {code} (no scorer component, or it timed out)"), None
    refused = reply.get(REPLY_REFUSED)
    if refused is not None:
        reason = str(refused)[:300]
        logger.warning(f"MedPFL audit: {site} refused to score round {round_number}: {reason}")
        return unavailable_scores(f"{site} refused the score request: {reason}"), None
    scores = reply.get(REPLY_SCORES)
    if not isinstance(scores, dict):
        return unavailable_scores(f"{site} sent no scores"), None
    parsed = ScoreReply.from_json(scores)  # raises on anything but known scalar scores
    originals = originals_from(reply, site, round_number, reconstructions, wanted=originals_wanted, logger=logger)
    return parsed.to_json(), originals


def originals_from(
    reply: Shareable,
    site: str,
    round_number: int | None,
    reconstructions: Any,
    *,
    wanted: bool,
    logger: logging.Logger,
) -> Any:
    """The reply's released originals, checked; None when not asked for, refused or malformed (logged)."""
    from medpfl_app.audit.demo_originals import accept_originals

    payload = reply.get(REPLY_ORIGINALS)
    if not wanted or payload is None:
        refused = reply.get(REPLY_ORIGINALS_REFUSED)
        if wanted and refused:
            logger.info(f"MedPFL audit: {site} released no originals for round {round_number}: {str(refused)[:300]}")
        return None
    try:
        return accept_originals(payload, len(reconstructions))
    except Exception as error:  # noqa: BLE001 - a bad payload costs the originals, not the scores
        logger.warning(f"MedPFL audit: ignored the originals {site} sent for round {round_number}: {error!r}")
        return None
