"""The global weights each round sent out, kept for the audit by the job's `GlobalWeightsCache` (no global state).

`GlobalWeightsCache` is a read-only server task-DATA filter (direction ``out``, task ``train``). The first time a
round's global model goes out it copies the arrays once (the payload is shared between clients: never touched in
place) into the `GlobalWeightsStore` it owns, keyed by (job id, round), and keeps the last few rounds, so the audit
knows what each site started from.

How the audit filter finds that store: NVFlare builds every filter of a job config as its own object and gives no
way to look a filter up (``engine.get_component`` only knows the config's ``components``; filter chains hold
separately built objects, ``nvflare/private/fed_json_config.py``), but it registers every filter as an event
handler of the job (``ServerJsonConfigurator._build_component``). So the audit filter fires `FIND_GLOBAL_WEIGHTS`
once when it starts, and the job's cache answers by putting its store on the event's context
(`find_global_weights`). Each job run builds its own filters, so each store holds one job's rounds.
"""

from __future__ import annotations

import threading
from typing import Any

from nvflare.apis.dxo import from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.audit.update_audit import copy_arrays

#: Rounds of global weights kept per job (the audit runs a little behind training).
KEEP_ROUNDS = 3
#: Event the audit filter fires to find the job's global-weights store.
FIND_GLOBAL_WEIGHTS = "medpfl.audit.find_global_weights"
#: Context property the cache answers with: its `GlobalWeightsStore`.
GLOBAL_WEIGHTS_STORE = "medpfl.audit.global_weights_store"


class GlobalWeightsStore:
    """Global weights by (job id, round), the last `KEEP_ROUNDS` rounds of each job; thread-safe.

    The arrays are copies owned by the store and read-only by convention: the audit reads them on its threads.
    """

    def __init__(self, keep_rounds: int = KEEP_ROUNDS) -> None:
        self._keep_rounds = keep_rounds
        self._lock = threading.Lock()
        self._weights: dict[tuple[str | None, int], dict[str, Any]] = {}

    def get(self, job_id: str | None, round_number: int | None) -> dict[str, Any] | None:
        """The global weights sent for ``round_number`` of ``job_id``, or None."""
        if round_number is None:
            return None
        with self._lock:
            return self._weights.get((job_id, int(round_number)))

    def put(self, job_id: str | None, round_number: int, arrays: dict[str, Any]) -> None:
        """Keep ``arrays`` as the global weights of ``round_number``; drop the job's older rounds."""
        with self._lock:
            self._weights[(job_id, int(round_number))] = arrays
            rounds = sorted(r for j, r in self._weights if j == job_id)
            for old in rounds[: -self._keep_rounds]:
                self._weights.pop((job_id, old), None)


class GlobalWeightsCache(Filter):
    """Read-only server task-data filter: copies each round's outgoing global weights once for the audit."""

    def __init__(self) -> None:
        super().__init__()
        self._store = GlobalWeightsStore()

    @property
    def store(self) -> GlobalWeightsStore:
        """The weights this cache kept (what the audit filter reads)."""
        return self._store

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type == FIND_GLOBAL_WEIGHTS:
            fl_ctx.set_prop(GLOBAL_WEIGHTS_STORE, self._store, private=True, sticky=False)

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        try:
            round_number = shareable.get_header(AppConstants.CURRENT_ROUND)
            job_id = fl_ctx.get_job_id()
            if round_number is not None and self._store.get(job_id, round_number) is None:
                dxo = from_shareable(shareable)
                if isinstance(dxo.data, dict) and dxo.data:
                    self._store.put(job_id, int(round_number), copy_arrays(dxo.data))
        except Exception as error:  # noqa: BLE001 - the cache must never stop a round
            self.log_warning(fl_ctx, f"MedPFL audit: could not cache the global weights: {error!r}")
        return shareable


def find_global_weights(finder: FLComponent, fl_ctx: FLContext) -> GlobalWeightsStore | None:
    """The store of the job's `GlobalWeightsCache`, asked for through `FIND_GLOBAL_WEIGHTS`; None without one.

    Never raises: without a cache the audit sees no global weights, and says so in each record it cannot make.
    """
    if fl_ctx.get_engine() is None:
        return None
    try:
        fl_ctx.set_prop(GLOBAL_WEIGHTS_STORE, None, private=True, sticky=False)
        finder.fire_event(FIND_GLOBAL_WEIGHTS, fl_ctx)
        store = fl_ctx.get_prop(GLOBAL_WEIGHTS_STORE)
        fl_ctx.remove_prop(GLOBAL_WEIGHTS_STORE)
    except Exception as error:  # noqa: BLE001 - the audit then runs without global weights
        finder.log_warning(fl_ctx, f"MedPFL audit: could not look for the global weights cache: {error!r}")
        return None
    return store if isinstance(store, GlobalWeightsStore) else None
