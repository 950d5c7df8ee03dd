"""The auxiliary messages between the server's audit and a site's scorer: topics and the reply's keys.

The request's keys and `SCORE_TOPIC` are the contract's (`medpfl_app.contracts.score`); what a reply carries beside
the scalar scores, and the release message the server sends once its audit is done, are defined here, shared by
the site's scorer (`medpfl_app.nvflare.site.scorer`) and the server's requests
(`medpfl_app.nvflare.server.site_requests`).
"""

from __future__ import annotations

#: Sent by the server once its audit queue is drained at the end of the job: the site need not wait any longer.
RELEASE_TOPIC = "medpfl.audit.release"
#: The reply's `medpfl_app.contracts.score.ScoreReply` (``to_json``).
REPLY_SCORES = "scores"
#: Set on a refused request: the short reason (no path, no sample); the scores then say ``unavailable``.
REPLY_REFUSED = "refused"
#: `medpfl_app.audit.demo_originals.ReleasedOriginals.to_payload`, only from a site that released synthetic demo originals.
REPLY_ORIGINALS = "demo_originals"
#: Why the site did not release originals (a short reason naming no path or sample); only when they were asked for.
REPLY_ORIGINALS_REFUSED = "originals_refused"
#: The cell every NVFlare server request comes from: the server's root cell, or its job cell ``server.<job id>``.
SERVER_ROOT_CELL = "server"
