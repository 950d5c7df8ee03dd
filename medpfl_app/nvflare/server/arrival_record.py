"""One ledger record per arrival: where the audit ledger lives, and the record of an update that is not audited.

Every update that reaches the audit filter ends up in the ledger exactly once, audited or not, so the report can
tell an update that was never audited from one that was lost. The audited ones are recorded by the worker
(`medpfl_app.audit.worker`); the others are noted here with the reason (`ArrivalNote`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext

from medpfl_app.audit.ledger import LEDGER_FILE
from medpfl_app.contracts.record import RecordStatus

RECORD_FOLDER = "medpfl"
#: Meta key (plain JSON, kept in the ledger record as ``policy_action``) on an update the policy kept out of FedAvg.
POLICY_ACTION_KEY = "medpfl_policy_action"
#: Policy action on an update carrying NaN or Inf: never aggregated, whatever the job's on_high_risk says.
REJECTED_NON_FINITE = "rejected_non_finite"


def ledger_path(fl_ctx: FLContext) -> str:
    """``<run dir>/medpfl/audit_ledger.jsonl`` of the current job (see `ReceivedUpdateRecorder`)."""
    run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
    return os.path.join(run_dir, RECORD_FOLDER, LEDGER_FILE)


def action_meta(policy_action: dict[str, str] | None) -> dict[str, Any] | None:
    """The meta that carries a policy action into the record (None without one)."""
    return {POLICY_ACTION_KEY: policy_action} if policy_action else None


@dataclass(frozen=True)
class ArrivalNote:
    """The record of an update that is not audited: its status, the reason, and the meta kept with it.

    Attributes:
        status: ``not_audited`` (refused or skipped) or ``not_auditable`` (nothing an attack could use).
        reason: One sentence for the ledger and the report.
        meta: The update's checked meta (None: none kept).
    """

    status: RecordStatus
    reason: str
    meta: dict[str, Any] | None = None


def note_arrival(worker: Any, site: str | None, round_number: int | None, note: ArrivalNote) -> None:
    """Hand the record of an update that is not audited to the worker's ledger thread."""
    worker.note(site=site, round_number=round_number, status=note.status, reason=note.reason, meta=note.meta)


def note_internal_error(
    owner: FLComponent,
    worker: Any,
    fl_ctx: FLContext,
    error: BaseException,
    *,
    round_number: int | None,
    policy_action: dict[str, str] | None,
) -> None:
    """Log a failure of the filter itself and still record the update (never raises: the site keeps its result)."""
    try:
        owner.log_warning(fl_ctx, f"MedPFL audit: could not queue the update: {error!r}")
        if worker is not None:
            peer = fl_ctx.get_peer_context()
            note = ArrivalNote(
                RecordStatus.NOT_AUDITED, f"internal error in the audit filter: {error!r}", action_meta(policy_action)
            )
            note_arrival(worker, peer.get_identity_name() if peer else None, round_number, note)
    except Exception:  # noqa: BLE001 - the filter must never raise into NVFlare
        pass
