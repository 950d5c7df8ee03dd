"""The risk policy behind the records' levels: its thresholds, in words, and how the audit applies them."""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from typing import Any

from medpfl_app.contracts.record import AuditRecord


def risk_policy(records: Sequence[AuditRecord] = ()) -> dict[str, Any] | None:
    """The risk thresholds behind the records' levels, and how the audit applies them.

    Returns:
        ``thresholds`` and their ``source``: the ``risk_policy`` the records carry when they all agree, else the
        defaults of `medpfl_app.audit.risk` (labelled as such); ``doc``: that module's description of the levels
        (empty when the module is not installed). ``None`` when neither records nor module say anything.
    """
    try:
        module = importlib.import_module("medpfl_app.audit.risk")
    except ImportError:
        module = None
    recorded = {json.dumps(dict(r.risk_policy), sort_keys=True) for r in records if r.risk_policy is not None}
    defaults = getattr(module, "RiskPolicy", None)
    if len(recorded) == 1:
        thresholds, source = json.loads(recorded.pop()), "as recorded with every audit record"
    elif defaults is not None and hasattr(defaults, "to_dict"):
        thresholds = defaults().to_dict()
        source = (
            "the policy's defaults (the records do not say which thresholds the job used)"
            if not recorded
            else "the policy's defaults (the records name different thresholds; each level is as recorded)"
        )
    elif module is None:
        return None
    else:
        thresholds, source = {}, ""
    doc = (module.__doc__ or "").replace("``", "").strip() if module is not None else ""
    return {"doc": doc, "thresholds": thresholds, "source": source}
