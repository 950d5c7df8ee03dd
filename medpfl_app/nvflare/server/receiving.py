"""What arrives at the audit filter, checked before anything is copied: round, sender, values, size and meta.

A site controls everything it sends back, so each check is cheap, never raises and never allocates from a claim:
the round header must be a plain integer, non-finite values keep an update out of aggregation, an update far
larger than the global model it answers is not copied, and the training facts in the meta are validated
(`medpfl_app.audit.facts.validate_meta`) before the audit plans anything from them. `check_arrival` returns either
the update to audit or the `ArrivalNote` recorded in its place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from nvflare.apis.dxo import DXO, from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from medpfl_app.audit.facts import InvalidMeta, ModelSpec, validate_meta
from medpfl_app.audit.update_audit import not_auditable_reason
from medpfl_app.contracts.record import RecordStatus
from medpfl_app.nvflare.server.arrival_record import (
    POLICY_ACTION_KEY,
    REJECTED_NON_FINITE,
    ArrivalNote,
    action_meta,
)

#: Why an update the audit plan does not select is recorded, not audited (so the report never counts it as lost).
NOT_SELECTED = "not selected by the audit plan (its every_n_rounds or sites)"


@dataclass(frozen=True)
class Accepted:
    """An update that passed every check: the DXO as received and the validated meta to audit it with."""

    dxo: DXO
    meta: dict[str, Any]


def round_of(shareable: Shareable) -> int | None:
    """The round header as an int (a site controls what it sends back: anything else is None)."""
    value = shareable.get_header(AppConstants.CURRENT_ROUND)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**9:
        return None
    return value


def sender_of(shareable: Shareable, fl_ctx: FLContext) -> str | None:
    """The sending site: the peer context NVFlare set, else the identity in the result's peer props."""
    peer = fl_ctx.get_peer_context()
    name = peer.get_identity_name() if peer else shareable.get_peer_prop("__identity_name__", None)
    return cast("str | None", name)


def values_in(value: Any) -> int:
    """Number of values in a NumPy array or torch tensor (0 for anything else)."""
    if hasattr(value, "numel"):
        return int(value.numel())
    size = getattr(value, "size", 0)
    return int(size) if isinstance(size, (int, np.integer)) else 0


def non_finite_entry(shareable: Shareable) -> str | None:
    """The name of the first floating-point update entry holding NaN or Inf, or None (never raises).

    One vectorised pass per array: the only per-update work `AuditFilter.process` does beyond the copy.
    """
    try:
        data = from_shareable(shareable).data
    except Exception:  # noqa: BLE001 - not a DXO: nothing numeric to check
        return None
    if not isinstance(data, dict):
        return None
    for name, value in data.items():
        array = value.detach().cpu().numpy() if hasattr(value, "detach") else value
        if isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            return str(name)[:200]
    return None


def size_refusal(data: Any, global_weights: dict[str, Any] | None) -> str | None:
    """Why an update is too large to copy for the audit (more values than the global model it answers)."""
    if not global_weights or not isinstance(data, dict):
        return None
    expected = sum(values_in(v) for v in global_weights.values())
    received = sum(values_in(v) for v in data.values())
    if received > 2 * expected + 1024:
        return (
            f"the update holds {received} values, far more than the {expected} of the global model it "
            "answers: not copied for the audit"
        )
    return None


def check_arrival(
    shareable: Shareable,
    *,
    selected: bool,
    model: ModelSpec | None,
    policy_action: dict[str, str] | None,
    global_weights: dict[str, Any] | None,
) -> Accepted | ArrivalNote:
    """The update to audit, or the note recorded instead (checks in order, the cheapest first).

    Args:
        shareable: The result as received.
        selected: Whether the audit plan selects this site and round.
        model: The job's model (None: the site's declared facts, bounds-checked).
        policy_action: What keeps the update out of aggregation (`medpfl_app.nvflare.server.policy_action`).
        global_weights: The global model the update answers (None: unknown, no size check).
    """
    if not selected:
        return ArrivalNote(RecordStatus.NOT_AUDITED, NOT_SELECTED, action_meta(policy_action))
    try:
        dxo = from_shareable(shareable)
    except ValueError:
        return ArrivalNote(RecordStatus.NOT_AUDITABLE, str(not_auditable_reason(None, None, None)))
    meta = dxo.meta if isinstance(dxo.meta, dict) else {}
    if policy_action is not None and policy_action["action"] == REJECTED_NON_FINITE:
        return ArrivalNote(RecordStatus.NOT_AUDITED, policy_action["reason"], action_meta(policy_action))
    try:
        kept = validate_meta(meta, model=model)
    except InvalidMeta as error:  # untrusted meta: recorded, never allocated from
        invalid = f"invalid meta ({error.problem}; {error.fix})"
        return ArrivalNote(RecordStatus.NOT_AUDITED, invalid, action_meta(policy_action) or {})
    if policy_action is not None:
        kept[POLICY_ACTION_KEY] = policy_action
    reason = not_auditable_reason(dxo.data_kind, dxo.data, kept) or size_refusal(dxo.data, global_weights)
    if reason is not None:
        return ArrivalNote(RecordStatus.NOT_AUDITABLE, reason, kept)
    return Accepted(dxo, kept)
