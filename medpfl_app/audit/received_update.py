"""What the server's filter does with a received update before the audit: decide whether it can be attacked, and
take a private copy of its arrays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medpfl_app.audit.facts import MODEL_KEYS


def not_auditable_reason(data_kind: str | None, data: Any, meta: Mapping[str, Any] | None) -> str | None:
    """Why an update cannot be attacked (encrypted, non-numeric, empty), or None when it can.

    Args:
        data_kind: The DXO's data kind (None: the payload was not a DXO).
        data: The DXO's data dict.
        meta: The DXO's meta.
    """
    meta = meta or {}
    if data_kind is None:
        return "the result is not an NVFlare DXO (no model update to attack)"
    # Decided from the payload, never from what the meta claims: a site that labels a plaintext update as
    # encrypted (``processed_algorithm``) must not escape the audit while FedAvg aggregates it.
    if data_kind not in ("WEIGHT_DIFF", "WEIGHTS"):
        return f"data kind {data_kind!r} carries no model weights or weight differences"
    if not isinstance(data, Mapping) or not data:
        return "the update carries no model tensors"
    for name, value in data.items():
        if not isinstance(value, np.ndarray) and not hasattr(value, "numpy"):
            return f"update entry {name!r} is {type(value).__name__}, not a numeric array (encrypted or unknown format)"
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            algorithm = (
                f" (processed by {str(meta['processed_algorithm'])[:60]!r})" if meta.get("processed_algorithm") else ""
            )
            return f"update entry {name!r} has non-numeric dtype {array.dtype}{algorithm}: the server sees no plaintext"
    missing = [key for key in MODEL_KEYS if meta.get(key) is None]
    if missing:
        return f"the update meta lacks the model facts {', '.join(missing)}: the server cannot rebuild the network"
    return None


def copy_arrays(data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A private copy of every array (torch tensors converted), so later in-place changes cannot reach the audit."""
    copied: dict[str, np.ndarray] = {}
    for name, value in data.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        copied[str(name)] = np.array(value, copy=True)
    return copied
