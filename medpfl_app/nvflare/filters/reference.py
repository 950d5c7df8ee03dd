"""Hand the global model a task brought in to the result filters of that same task, so they defend the *difference*.

Clipping, pruning and quantization must act on ``local − global``: applied to full weights they destroy the model
and void the client-level DP guarantee. NVFlare's Lightning/Client API integration often sends full ``WEIGHTS``, so
`GlobalModelRecorder` sits on the client's *task data* chain (direction ``in``) and the result filters read what it
recorded. The global model is public to the server, so releasing ``global + defend(local − global)`` is
post-processing of the defended difference: it costs no extra privacy.

Where the recording lives: on the task's own `FLContext`, not in the filter and not in the module. NVFlare's client
runs one task with one context from start to end: ``ClientRunner.fetch_and_run_one_task`` (and the aux ``DO_TASK``
handler) pass a single ``fl_ctx`` to ``_process_task`` → ``_do_task``, which sets ``TASK_ID`` on it, applies the task
data filters, calls the executor and applies the task result filters, all with that ``fl_ctx``
(``nvflare/private/fed/client/client_runner.py``); the run loop makes a fresh context per task
(``with self.engine.new_context() as fl_ctx``). Site-scope (privacy.json) filters are applied by the same
``apply_filters(..., fl_ctx, ...)`` call as job filters (``nvflare/apis/utils/task_utils.py``), so they see it too.
A private, non-sticky property is never copied into another context (``FLContext._get_prop`` only consults the
context manager for sticky ones; ``FLContextManager.new_context`` copies only stickers), so the recording dies
with the task: nothing leaks into the next task or another job, and a filter object shared between jobs or sites
holds no state. The record also names its job, site, task and round, and is used only for a result of that very task.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
from nvflare.apis.dxo import DataKind, from_shareable
from nvflare.apis.filter import Filter
from nvflare.apis.fl_constant import FLContextKey, ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.defenses.update_arrays import copy_value, is_float
from medpfl_app.errors import MedPFLError

#: FLContext property holding the task's `GlobalReference` (private, non-sticky: it lives and dies with the task).
REFERENCE_PROP = "medpfl.filters.global_reference"


@dataclass(frozen=True)
class TaskIdentity:
    """Which task a payload belongs to, as seen by a filter: job, site, task id and (if sent) round."""

    job_id: str | None
    site: str | None
    task_id: str | None
    round: int | None

    @classmethod
    def of(cls, fl_ctx: FLContext, shareable: Shareable) -> TaskIdentity:
        task_id = fl_ctx.get_prop(FLContextKey.TASK_ID) or shareable.get_header(ReservedHeaderKey.TASK_ID)
        round_number = shareable.get_header(AppConstants.CURRENT_ROUND)
        return cls(
            job_id=fl_ctx.get_job_id(),
            site=fl_ctx.get_identity_name() or None,
            task_id=task_id,
            round=_as_round(round_number),
        )

    def same_task(self, other: TaskIdentity) -> bool:
        """Same job, site and task; rounds must agree where both payloads state one."""
        rounds_agree = self.round is None or other.round is None or self.round == other.round
        return (self.job_id, self.site, self.task_id) == (other.job_id, other.site, other.task_id) and rounds_agree


@dataclass(frozen=True)
class GlobalReference:
    """The global model one task received: read-only copies of its float arrays, and the task they belong to."""

    task: TaskIdentity
    weights: Mapping[str, Any]


def record_reference(fl_ctx: FLContext, shareable: Shareable, weights: Mapping[str, Any]) -> bool:
    """Put a copy of ``weights``' float arrays on this task's context; False if NVFlare refused the property."""
    arrays = {key: _read_only(copy_value(value)) for key, value in weights.items() if is_float(value)}
    record = GlobalReference(task=TaskIdentity.of(fl_ctx, shareable), weights=MappingProxyType(arrays))
    return bool(fl_ctx.set_prop(REFERENCE_PROP, record, private=True, sticky=False))


def forget_reference(fl_ctx: FLContext) -> None:
    """Drop whatever global model this context holds (the next result then needs a fresh recording)."""
    fl_ctx.remove_prop(REFERENCE_PROP)


def recorded_reference(fl_ctx: FLContext) -> GlobalReference | None:
    """The global model recorded on this context, if any (check `TaskIdentity.same_task` before using it)."""
    record = fl_ctx.get_prop(REFERENCE_PROP)
    return record if isinstance(record, GlobalReference) else None


def _as_round(value: Any) -> int | None:
    is_int = isinstance(value, int | np.integer) and not isinstance(value, bool)
    return int(value) if is_int else None


def _read_only(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value.flags.writeable = False
    return value


class GlobalModelRecorder(Filter):
    """Client task-data filter (``direction: in``) that records incoming global ``WEIGHTS``; passes data unchanged.

    Args:
        max_entries: Accepted for existing job configs and privacy policies, validated (int >= 1), otherwise
            unused: the recording travels with its task's context, so exactly one model copy per running task
            exists, and it is released when the task ends.
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
        # Whatever this context held before is not this task's global model.
        forget_reference(fl_ctx)
        if shareable.get_return_code() != ReturnCode.OK:
            return shareable
        try:
            dxo = from_shareable(shareable)
        except ValueError:
            return shareable
        if dxo.data_kind == DataKind.WEIGHTS and isinstance(dxo.data, dict):
            if not record_reference(fl_ctx, shareable, dxo.data):
                # Not fatal here: a WEIGHT_DIFF result needs no reference; a WEIGHTS result is refused later.
                self.log_warning(
                    fl_ctx, f"MedPFL: could not record the global model on the task context ({REFERENCE_PROP})"
                )
        return shareable
