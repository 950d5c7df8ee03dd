"""Server-side record of what each site's update carried when it arrived: the defense history and training facts.

A read-only task-result filter on ``train``: it never changes or blocks the update and never raises (a raising
server result filter drops the client's result, NVFlare pitfall 5). One JSON line per site per round is appended to
``<run dir>/medpfl/received_updates.jsonl``, which ``download_job`` delivers; it is how a job owner can check that the
sites' defenses really ran, and what `medpfl report` counts as *received* when it checks the audit's coverage (an
update received without an audit record is reported as lost). The line format and its reader live in
`medpfl_app.reports.sources` (``arrival_line`` / ``read_arrivals``), shared with the report.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.contracts.training_facts import RECORDED_FACT_KEYS
from medpfl_app.reports.sources import ARRIVALS_FILE, ARRIVALS_FOLDER, append_arrival

RECORD_FOLDER = ARRIVALS_FOLDER
RECORD_FILE = ARRIVALS_FILE
_META_KEYS_KEPT = ("filter_history", "medpfl_defenses", "NUM_STEPS_CURRENT_ROUND")


class ReceivedUpdateRecorder(Filter):
    """Append what arrived (site, round, data kind, defense history, training facts) to a JSONL file."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            self._record(shareable, fl_ctx)
        except Exception as error:  # a bookkeeping failure must never cost the site its contribution
            self.log_warning(fl_ctx, f"MedPFL: could not record the received update: {error!r}")
        return shareable

    def _record(self, shareable: Shareable, fl_ctx: FLContext) -> None:
        peer = fl_ctx.get_peer_context()
        record: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "site": peer.get_identity_name() if peer else None,
            "round": shareable.get_header(AppConstants.CURRENT_ROUND),
            "return_code": shareable.get_return_code(),
        }
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            record["data_kind"] = None
        else:
            meta = dxo.meta or {}
            record["data_kind"] = dxo.data_kind
            record["num_entries"] = len(dxo.data or {})
            record["entries"] = sorted(dxo.data or {})
            record.update({key: meta.get(key) for key in _META_KEYS_KEPT})
            record["training_facts"] = {key: meta.get(key) for key in RECORDED_FACT_KEYS if key in meta}
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        folder = os.path.join(run_dir, RECORD_FOLDER)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        # flush, no fsync: this runs under the server's workflow lock, and the durable compliance record is the
        # audit ledger (written off the hot path); this file is what arrived, closed (so in the OS) before the audit
        # filter queues the update, so a killed server keeps every line written so far
        with self._lock:
            append_arrival(os.path.join(folder, RECORD_FILE), record)
