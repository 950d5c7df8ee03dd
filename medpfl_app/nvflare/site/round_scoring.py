"""Scoring at the site: the server's reconstructions of one round's update against the images that round used.

Pure apart from the reply it builds: the scores are `medpfl_app.audit.scoring.score_reconstructions`' scalars, and
every reply goes through the contract's reader (`medpfl_app.contracts.score.ScoreReply`), so nothing but the known
scalar scores ever leaves the site. When the site cannot score, the reply says why in one short sentence that names
no path or sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.shareable import Shareable, make_reply

from medpfl_app.contracts.score import ScoreReply, ScoreRequest
from medpfl_app.nvflare.site.protocol import REPLY_REFUSED, REPLY_SCORES


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


def scores_reply(scores: dict[str, Any]) -> Shareable:
    """An OK reply carrying ``scores`` through the contract's reader: only `SCORE_KEYS` with scalars leave."""
    reply = make_reply(ReturnCode.OK)
    reply[REPLY_SCORES] = ScoreReply.from_json(scores).to_json()
    return reply


def refused_reply(reason: str) -> Shareable:
    """An OK reply to a refused request: the short reason, and the scores marked unavailable with it."""
    reply = scores_reply(ScoreReply.unavailable(reason).to_json())
    reply[REPLY_REFUSED] = reason
    return reply
