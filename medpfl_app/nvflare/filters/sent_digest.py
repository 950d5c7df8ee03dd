"""Client task-result filter that records, site-locally, the digest of exactly what this site sends to the server.

The audit's site scorer (`medpfl_app.nvflare.site.scorer.AuditSiteScorer`) scores reconstructions only of an update
this site really sent: the server sends the digest of the update it received with its score request, and the
scorer compares it with what this filter recorded for that round. The filter must therefore see the update as it
leaves the site: `medpfl_app.nvflare.jobs.spec.audited` puts it LAST in the job's client result filter chain on ``train``;
NVFlare runs a site's ``privacy.json`` scope filters before the job's filters
(``nvflare/apis/utils/task_utils.py::get_filters``), so the last job filter sees the final update.

It never modifies the result (not even the DXO's ``filter_history``: it is a plain `Filter`, not a `DXOFilter`)
and never raises: a failure only costs this round's site scores (the scorer then refuses the request and says
why), never the site's contribution. The record (`medpfl_app.audit.round_samples.SentUpdate`) stays in the
client's run folder of the job, owner-only.
"""

from __future__ import annotations

from pathlib import Path

from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants


class SentUpdateDigest(Filter):
    """Record the round, digest, declared image count and server identity of each outgoing ``train`` result."""

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            self._record(shareable, fl_ctx)
        except Exception as error:  # noqa: BLE001 - bookkeeping must never cost the site its contribution
            try:
                self.log_warning(
                    fl_ctx,
                    f"MedPFL audit: could not record the digest of the update this site sends, "
                    f"so the audit cannot score it: {type(error).__name__}: {error}",
                )
            except Exception:  # noqa: BLE001
                pass
        return shareable

    def _record(self, shareable: Shareable, fl_ctx: FLContext) -> None:
        from medpfl_app.audit.round_samples import SentUpdate, write_sent_update
        from medpfl_app.audit.update_digest import declared_images, update_digest

        if shareable.get_return_code(ReturnCode.OK) != ReturnCode.OK:
            return  # no result leaves: nothing to score
        round_number = shareable.get_header(AppConstants.CURRENT_ROUND)
        if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 0:
            self.log_warning(
                fl_ctx,
                f"MedPFL audit: the outgoing result has no round header ({round_number!r}); its digest is not recorded",
            )
            return
        dxo = from_shareable(shareable)  # ValueError: not a DXO (logged by process)
        if not isinstance(dxo.data, dict):
            raise ValueError("the result's DXO carries no dict of arrays")
        peer = fl_ctx.get_peer_context()
        server = peer.get_identity_name() if peer is not None else None
        job_id = fl_ctx.get_job_id()
        workspace = fl_ctx.get_workspace() or fl_ctx.get_engine().get_workspace()
        record = SentUpdate(
            job_id=job_id,
            site=fl_ctx.get_identity_name(),
            round=int(round_number),
            digest=update_digest(dxo.data),
            declared_images=declared_images(dxo.meta),
            server_identity=str(server)[:200] if server else None,
        )
        write_sent_update(Path(workspace.get_run_dir(job_id)), record)
        self.log_info(fl_ctx, f"MedPFL audit: recorded the digest of the round {record.round} update this site sends")
