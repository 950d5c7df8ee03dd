"""The audit's policy action: what happens to a site after a high-risk record, and to an update it keeps out.

``on_high_risk`` (see `medpfl_app.nvflare.server.audit_filter.AuditFilter`) is ``report`` (the ledger only),
``stop_job`` (end the run through NVFlare's fatal-error event) or ``exclude_site`` (the site's later updates reach
the workflow with their weights emptied, which FedAvg skips). The decision runs on the ledger thread, after the
record is durable; `HighRiskPolicy.action_for` runs in ``process()`` and only reads what that thread decided.
An update carrying NaN or Inf is kept out whatever the setting (`REJECTED_NON_FINITE`).
"""

from __future__ import annotations

from typing import Any

from nvflare.apis.dxo import from_shareable
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable

from medpfl_app.nvflare.server.arrival_record import POLICY_ACTION_KEY, REJECTED_NON_FINITE
from medpfl_app.nvflare.server.receiving import non_finite_entry, sender_of

HIGH_RISK_ACTIONS = ("report", "stop_job", "exclude_site")
#: Policy action on every later update of an excluded site.
EXCLUDED_FROM_AGGREGATION = "excluded_from_aggregation"


def check_high_risk_action(on_high_risk: str) -> None:
    """Refuse an unknown ``on_high_risk`` (at deployment, not silently mid-run).

    Raises:
        MedPFLError: Not one of `HIGH_RISK_ACTIONS`.
    """
    if on_high_risk not in HIGH_RISK_ACTIONS:
        from medpfl_app.errors import MedPFLError

        raise MedPFLError(f"unknown on_high_risk action {on_high_risk!r}", fix=f"use one of {HIGH_RISK_ACTIONS}")


def _rounded(value: Any) -> Any:
    """A score for a log line: 3 decimals when it is a number, else as it is (e.g. None when unscored)."""
    return round(value, 3) if isinstance(value, float) else value


def _finding(record: dict[str, Any]) -> str:
    """One sentence naming the site, round, attack and scores of a high-risk record."""
    scores = record.get("site_scores") or {}
    return (
        f"high privacy risk for {record.get('site')} in round {record.get('round')} "
        f"(attack {(record.get('attack_budget') or {}).get('attack')}, best SSIM {_rounded(scores.get('ssim_max'))}, "
        f"success rate {_rounded(scores.get('attack_success_rate'))})"
    )


class HighRiskPolicy:
    """The state of the job's policy action: which sites are excluded, and whether the job was stopped.

    Args:
        owner: The audit filter (its log and its fatal-error event are the policy's).
    """

    def __init__(self, owner: FLComponent) -> None:
        self._owner = owner
        self._stopped = False
        self._excluded: dict[str, str] = {}  # site -> why (set on the ledger thread, read in process())

    def action_for(self, shareable: Shareable, fl_ctx: FLContext) -> dict[str, str] | None:
        """What keeps this update out of aggregation: non-finite values, or the exclude_site policy (never raises)."""
        non_finite = non_finite_entry(shareable)
        if non_finite is not None:
            return {
                "action": REJECTED_NON_FINITE,
                "reason": f"update entry {non_finite!r} holds NaN or Inf values: rejected, not aggregated",
            }
        if not self._excluded:
            return None
        try:
            reason = self._excluded.get(sender_of(shareable, fl_ctx))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - no site name: nothing to exclude by
            return None
        return None if reason is None else {"action": EXCLUDED_FROM_AGGREGATION, "reason": reason}

    def act_on_record(self, record: dict[str, Any], *, on_high_risk: str, engine: Any) -> None:
        """Apply ``on_high_risk`` to a durable record (runs on the ledger thread)."""
        if on_high_risk == "report" or record.get("risk") != "high" or self._stopped or engine is None:
            return
        finding = _finding(record)
        if on_high_risk == "exclude_site":
            self._exclude(record.get("site"), finding, engine)
            return
        with engine.new_context() as fl_ctx:
            self._stop(f"MedPFL audit policy stop_job: {finding}; see the audit ledger", fl_ctx)

    def _exclude(self, site: Any, finding: str, engine: Any) -> None:
        if not isinstance(site, str) or site in self._excluded:
            return
        self._excluded = {**self._excluded, site: finding}  # replaced whole: process() reads it unlocked
        with engine.new_context() as fl_ctx:
            self._owner.log_warning(
                fl_ctx,
                f"MedPFL audit policy exclude_site: {site}'s next updates will not be "
                f"aggregated: {finding}; see the audit ledger",
            )
            if not self._sites_left(engine):
                self._stop(
                    f"MedPFL audit policy exclude_site: every site is excluded (last: {finding}); see the audit ledger",
                    fl_ctx,
                )

    def _sites_left(self, engine: Any) -> bool:
        """Whether a connected site is not excluded (unknown client list: assume yes)."""
        try:
            clients = [c.name for c in engine.get_clients()]
        except Exception:  # noqa: BLE001
            return True
        return not clients or any(name not in self._excluded for name in clients)

    def _stop(self, reason: str, fl_ctx: FLContext) -> None:
        self._stopped = True
        self._owner.log_error(fl_ctx, reason)
        self._owner.system_panic(reason, fl_ctx)


def excluded_result(owner: FLComponent, shareable: Shareable, action: dict[str, str], fl_ctx: FLContext) -> Shareable:
    """The result with its weights emptied (FedAvg skips it); the meta says why. Fails closed to an empty DXO."""
    from nvflare.apis.dxo import DXO, DataKind

    try:
        original = from_shareable(shareable)
        kind, meta = original.data_kind, dict(original.meta or {})
    except Exception:  # noqa: BLE001 - not a DXO: replace it all the same
        kind, meta = DataKind.WEIGHT_DIFF, {}
    meta[POLICY_ACTION_KEY] = dict(action)
    DXO(data_kind=kind, data={}, meta=meta).update_shareable(shareable)
    try:
        owner.log_warning(fl_ctx, f"MedPFL audit policy {action['action']}: update not aggregated ({action['reason']})")
    except Exception:  # noqa: BLE001
        pass
    return shareable
