"""Remember the global model a task brought in, so result filters can defend the weight *difference*.

Clipping, pruning and quantization must act on ``local − global``: applied to full weights they destroy the model
and void the client-level DP guarantee. NVFlare's Lightning/Client API integration often sends full ``WEIGHTS``, so
`GlobalModelRecorder` sits on the client's *task data* chain (direction ``in``), keeps the received global weights
in a small process-local store keyed by (job, site, task), and the result filters look them up. The global model
is public to the server, so releasing ``global + defend(local − global)`` is post-processing of the defended
difference: it costs no extra privacy.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, ReservedKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from medpfl_app.defenses._update import copy_value, is_float
from medpfl_app.errors import MedPFLError

ReferenceKey = tuple[str | None, str | None, str | None]

_LOCK = threading.Lock()
_STORE: OrderedDict[ReferenceKey, dict[str, Any]] = OrderedDict()
_CAPACITY = [4]


def reference_key(fl_ctx: FLContext, shareable: Shareable) -> ReferenceKey:
    """(job id, site, task id) of the task being processed; the same for its data and its result."""
    task_id = fl_ctx.get_prop(FLContextKey.TASK_ID) or shareable.get_header(ReservedKey.TASK_ID)
    return fl_ctx.get_job_id(), fl_ctx.get_identity_name() or None, task_id


def remember_reference(key: ReferenceKey, weights: dict[str, Any]) -> None:
    with _LOCK:
        _STORE[key] = {k: copy_value(v) for k, v in weights.items() if is_float(v)}
        _STORE.move_to_end(key)
        while len(_STORE) > _CAPACITY[0]:
            _STORE.popitem(last=False)


def lookup_reference(key: ReferenceKey) -> dict[str, Any] | None:
    with _LOCK:
        return _STORE.get(key)


def forget_references() -> None:
    """Empty the store (tests, or a site that wants the memory back)."""
    with _LOCK:
        _STORE.clear()


class GlobalModelRecorder(Filter):
    """Client task-data filter (``direction: in``) that remembers incoming global ``WEIGHTS``; passes data unchanged.

    Args:
        max_entries: How many tasks' global models to keep in memory (a model copy each), >= 1.
    """

    def __init__(self, max_entries: int = 4) -> None:
        super().__init__()
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise MedPFLError(
                f"GlobalModelRecorder: max_entries must be an int >= 1, got {max_entries!r}",
                fix="set max_entries to e.g. 4",
            )
        self.max_entries = max_entries

    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code() != ReturnCode.OK:
            return shareable
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return shareable
        if dxo.data_kind == DataKind.WEIGHTS and isinstance(dxo.data, dict):
            with _LOCK:
                _CAPACITY[0] = max(_CAPACITY[0], self.max_entries)
            remember_reference(reference_key(fl_ctx, shareable), dxo.data)
        return shareable
