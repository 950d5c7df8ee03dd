"""The thin NVFlare adapter shared by all MedPFL defense filters, and its fail-closed rules.

NVFlare's `DXOFilter.process` passes through anything it cannot read (a non-DXO payload, unlisted data kinds). A
privacy filter must not: `DefenseFilter` raises instead, so NVFlare's client runner replies
``TASK_RESULT_FILTER_ERROR`` and the raw update never leaves the site
(``nvflare/private/fed/client/client_runner.py``). What it lets through untouched: replies whose return code is not
OK (they carry no result), payload-free replies, ``METRICS`` DXOs (no parameters) and empty DXOs.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.dxo_filter import DXOFilter
from nvflare.apis.filter import FilterContextKey
from nvflare.apis.fl_constant import ReturnCode
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import ReservedHeaderKey, Shareable
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.defenses.base import Defense
from medpfl_app.defenses.update_arrays import DefenseOutput, check_update, copy_value, is_float, like, to_float64
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.filters.reference import TaskIdentity, recorded_reference

#: DXO meta key holding the list of defenses applied, in chain order (plain JSON values).
META_KEY = "medpfl_defenses"
DEFENDED_KINDS = (DataKind.WEIGHTS, DataKind.WEIGHT_DIFF)
PASS_THROUGH_KINDS = (DataKind.METRICS,)


def _difference(weights: dict[str, Any], reference: Mapping[str, Any], who: str) -> dict[str, Any]:
    diff: dict[str, Any] = {}
    for key, value in weights.items():
        if not is_float(value):
            diff[key] = copy_value(value)
            continue
        base = reference.get(key)
        if base is None or tuple(base.shape) != tuple(value.shape):
            raise MedPFLError(
                f"{who}: parameter {key!r} is not in the recorded global model (or has another shape), so its "
                "difference cannot be formed",
                fix="send WEIGHT_DIFF (params_transfer_type DIFF), or make the model match the global model",
            )
        diff[key] = like(to_float64(value) - to_float64(base), value)
    return diff


def _add_back(defended: dict[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: like(to_float64(reference[key]) + to_float64(value), value) if is_float(value) else value
        for key, value in defended.items()
    }


class DefenseFilter(DXOFilter):
    """Base for MedPFL client result filters: validate, defend, record in the meta, or fail closed.

    Subclasses build ``self._defense`` (a `Defense`) and ``self._rng`` in ``__init__`` from JSON-builtin arguments
    stored unchanged under attributes of the same names.
    """

    _defense: Defense
    _rng: np.random.Generator | None = None

    def __init__(self) -> None:
        # None: every data kind reaches process_dxo, which decides (defend / pass METRICS / refuse).
        DXOFilter.__init__(self, supported_data_kinds=None, data_kinds_to_filter=None)

    @property
    def defense(self) -> Defense:
        """The defense this filter applies (its registry key and parameters name it, e.g. in the pre-flight)."""
        return self._defense

    # NVFlare entry point -------------------------------------------------------------------------------------------
    def process(self, shareable: Shareable, fl_ctx: FLContext) -> Shareable:
        if shareable.get_return_code() != ReturnCode.OK:
            return shareable
        try:
            try:
                from_shareable(shareable)
            except ValueError:
                if any(key != ReservedHeaderKey.HEADERS for key in shareable):
                    raise MedPFLError(
                        f"{type(self).__name__}: the task result is not a DXO, so it cannot be defended",
                        fix="send results through the NVFlare Client API (FLModel) or a DXO",
                    ) from None
                return shareable
            return DXOFilter.process(self, shareable, fl_ctx)
        except MedPFLError as error:
            self._refuse(fl_ctx, error)
            raise
        except Exception as error:  # anything unexpected is still a refusal, never a raw release
            wrapped = MedPFLError(
                f"{type(self).__name__}: unexpected {type(error).__name__}: {error}",
                fix="report this to the MedPFL maintainers with the site log",
            )
            self._refuse(fl_ctx, wrapped)
            raise wrapped from error

    def _refuse(self, fl_ctx: FLContext, error: MedPFLError) -> None:
        self.log_error(fl_ctx, f"MedPFL: update NOT released (fail closed): {error.problem} | fix: {error.fix}")

    def process_dxo(self, dxo: DXO, shareable: Shareable, fl_ctx: FLContext) -> DXO | None:
        kind = dxo.data_kind
        if kind in PASS_THROUGH_KINDS:
            return None
        who = type(self).__name__
        if kind not in DEFENDED_KINDS:
            raise MedPFLError(
                f"{who}: cannot defend a DXO of data kind {kind!r} (supported: WEIGHTS, WEIGHT_DIFF; METRICS pass)",
                fix="send model parameters as WEIGHTS or WEIGHT_DIFF",
            )
        check_update(dxo.data, defense=who)
        reference = None
        if kind == DataKind.WEIGHTS and self._defense.needs_difference:
            reference = self._global_reference(shareable, fl_ctx)
        update = dxo.data if reference is None else _difference(dxo.data, reference, who)
        defended, record = self._defend(update)
        extra = self._account(shareable, fl_ctx)
        data = defended if reference is None else _add_back(defended, reference)
        # NVFlare copies filter_history from the old DXO to the new one itself: leave it out to avoid duplicates
        meta = {k: copy.deepcopy(v) for k, v in (dxo.meta or {}).items() if k != MetaKey.FILTER_HISTORY}
        history = list(meta.get(META_KEY, []))
        history.append(
            {
                "defense": self._defense.key,
                "filter": f"{type(self).__module__}.{who}",
                "guarantee": str(self._defense.guarantee),
                "params": self._defense.params(),
                "record": record,
                "data_kind": str(getattr(kind, "value", kind)),
                "applied_to": "difference to recorded global model" if reference is not None else "update as sent",
                "round": _plain(shareable.get_header(AppConstants.CURRENT_ROUND)),
                # "site" (privacy.json scope, cannot be disabled by the job) or "job" (the job's own config)
                "installed_by": self.get_prop(FilterContextKey.SOURCE, None),
                **extra,
            }
        )
        meta[META_KEY] = history
        self.log_info(fl_ctx, f"MedPFL applied {self._defense.key} ({self._defense.guarantee}) {extra or ''}".rstrip())
        return DXO(data_kind=kind, data=data, meta=meta)

    def _global_reference(self, shareable: Shareable, fl_ctx: FLContext) -> Mapping[str, Any]:
        """The global model `GlobalModelRecorder` put on this task's context; refuse without one (fail closed)."""
        who = f"{type(self).__name__} ({self._defense.key})"
        fix = (
            "send WEIGHT_DIFF (params_transfer_type DIFF), or add "
            "medpfl_app.nvflare.filters.reference.GlobalModelRecorder to the client task_data_filters (direction in)"
        )
        record = recorded_reference(fl_ctx)
        if record is None:
            raise MedPFLError(
                f"{who} must act on the difference to the global model, but the result is "
                "full WEIGHTS and no global model was recorded for this task",
                fix=fix,
            )
        task = TaskIdentity.of(fl_ctx, shareable)
        if not record.task.same_task(task):
            raise MedPFLError(
                f"{who} must act on the difference to the global model, but the global model on this context was "
                f"recorded for another task ({record.task}, this result: {task})",
                fix=fix,
            )
        return record.weights

    # hooks -------------------------------------------------------------------------------------------------------
    def _defend(self, update: dict[str, Any]) -> DefenseOutput:
        return self._defense.apply(update, seed=self._rng)

    def _account(self, shareable: Shareable, fl_ctx: FLContext) -> dict[str, Any]:
        """Charge any privacy cost after defending and before release; return plain JSON for the meta."""
        return {}


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def seeded_rng(seed: int | None, who: str) -> np.random.Generator:
    """One generator per filter, created once, so a seeded filter still draws fresh noise every round."""
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise MedPFLError(
            f"{who}: seed must be a non-negative int or null, got {seed!r}",
            fix="leave seed unset in production; use an int only in tests",
        )
    return np.random.default_rng(seed)
