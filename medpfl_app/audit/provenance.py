"""What an audit record states about where its numbers come from: the training configuration and global weights
(a hash), the library versions, the formal ε the update itself declares and the site's empirical check of it.

The empirical ε lower bound (ε̂, `medpfl_app.defenses.epsilon_audit.EmpiricalEpsilon`) comes from the site and is
untrusted: it is parsed with ``EmpiricalEpsilon.from_json`` (refused: ``invalid``), its δ must be the δ of the
entry it sits in and its ``claimed_epsilon`` the per-release (client DP) or per-step (DP-SGD) ε the server itself
recomputes from the declared parameters (else ``mismatch``); only then is ε̂ compared with that recomputed ε, never
with the cumulative ε. A site's value can therefore only raise a flag (``exceeds_claim``); it never lowers a
level. The server does not rerun the site's canary test: its own run would test the server's copy of the
mechanism, not the one the site ran, so it could neither confirm nor refute the site's figure.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from medpfl_app.audit.facts import FACT_KEYS
from medpfl_app.contracts.record import EmpiricalStatus
from medpfl_app.defenses.accountant import epsilon_per_release
from medpfl_app.defenses.epsilon_audit import EmpiricalEpsilon
from medpfl_app.errors import MedPFLError

#: Relative tolerance between the site's ``claimed_epsilon`` / δ and the server's own values (float round trips).
CLAIM_TOLERANCE = 1e-6


def config_hash(meta: Mapping[str, Any], global_weights: Mapping[str, np.ndarray] | None) -> str:
    """SHA-256 over the declared training configuration and the global weights' names, shapes and bytes."""
    digest = hashlib.sha256()
    config = {key: meta.get(key) for key in FACT_KEYS if key not in ("torch_version", "num_images_seen", "dp_sgd")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    weights = global_weights or {}
    for name in sorted(weights):
        array = np.ascontiguousarray(weights[name])
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries the audit's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    import medpfl_app

    found: dict[str, str | None] = {"medpfl": getattr(medpfl_app, "__version__", None)}
    for label, dist in (("nvflare", "nvflare"), ("torch", "torch"), ("monai", "monai"), ("opacus", "opacus")):
        try:
            found[label] = version(dist)
        except PackageNotFoundError:
            found[label] = None
    return found


def _client_dp_entry(meta: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The last defense record that states a client-level ε (the one `epsilon_so_far` reports)."""
    found = None
    for entry in meta.get("medpfl_defenses") or []:
        if isinstance(entry, Mapping) and entry.get("epsilon_total") is not None:
            found = entry
    return found


def _entry_delta(entry: Mapping[str, Any]) -> Any:
    params = entry.get("params")
    return params.get("delta", entry.get("delta")) if isinstance(params, Mapping) else entry.get("delta")


def epsilon_so_far(meta: Mapping[str, Any]) -> dict[str, float | None]:
    """The formal ε this update states: client-level DP from the defense records, sample-level from DP-SGD facts."""
    client_dp = None
    delta = None
    for entry in meta.get("medpfl_defenses") or []:
        if isinstance(entry, Mapping) and entry.get("epsilon_total") is not None:
            client_dp = float(entry["epsilon_total"])
            found = _entry_delta(entry)
            delta = delta if found is None else found
    dp_sgd = None
    facts = meta.get("dp_sgd")
    if isinstance(facts, Mapping) and facts.get("epsilon") is not None:
        dp_sgd = float(facts["epsilon"])
        delta = facts.get("delta", delta)
    return {"client_dp": client_dp, "dp_sgd": dp_sgd, "delta": None if delta is None else float(delta)}


def empirical_epsilon(meta: Mapping[str, Any], epsilon: Mapping[str, Any]) -> dict[str, Any]:
    """The ``epsilon`` section's ε̂ keys for an update with a formal ε (``{}`` without one: such records stay as
    they were).

    Args:
        meta: The update's meta (``medpfl_defenses`` entries, ``dp_sgd`` facts), as the site sent it.
        epsilon: `epsilon_so_far` of the same meta.

    Returns:
        ``client_dp_empirical`` / ``dp_sgd_empirical`` (the site's ``EmpiricalEpsilon`` JSON, or None when absent
        or invalid) and ``empirical_status`` (`EmpiricalStatus` per mechanism, see the module docstring).
    """
    if epsilon.get("client_dp") is None and epsilon.get("dp_sgd") is None:
        return {}
    entry = _client_dp_entry(meta)
    client = _client_dp_check(entry) if entry is not None else (None, EmpiricalStatus.ABSENT)
    facts = meta.get("dp_sgd")
    has_sgd = isinstance(facts, Mapping) and facts.get("epsilon") is not None
    sgd = _dp_sgd_check(facts) if isinstance(facts, Mapping) and has_sgd else (None, EmpiricalStatus.ABSENT)
    return {
        "client_dp_empirical": None if client[0] is None else client[0].to_json(),
        "dp_sgd_empirical": None if sgd[0] is None else sgd[0].to_json(),
        "empirical_status": {"client_dp": str(client[1]), "dp_sgd": str(sgd[1])},
    }


Checked = tuple[EmpiricalEpsilon | None, EmpiricalStatus]


def _parse(raw: Any) -> EmpiricalEpsilon | None:
    """The site's ε̂, or None when it is not a valid `EmpiricalEpsilon` (never raises)."""
    try:
        return EmpiricalEpsilon.from_json(raw)
    except (MedPFLError, TypeError, ValueError, OverflowError):
        return None


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=CLAIM_TOLERANCE, abs_tol=1e-12)


def _compare(value: EmpiricalEpsilon, delta: Any, claim: float | None) -> Checked:
    """Check ε̂'s δ and claimed ε against the server's, then compare ε̂ with the server's claim."""
    found_delta = _positive(delta)
    if found_delta is None or claim is None or not _same(value.delta, found_delta):
        return value, EmpiricalStatus.MISMATCH
    if not _same(value.claimed_epsilon, claim):
        return value, EmpiricalStatus.MISMATCH
    exceeds = value.epsilon_lower > claim
    return value, EmpiricalStatus.EXCEEDS_CLAIM if exceeds else EmpiricalStatus.CONSISTENT


def _client_dp_check(entry: Mapping[str, Any]) -> Checked:
    raw = entry.get("epsilon_empirical")
    if raw is None:
        return None, EmpiricalStatus.ABSENT
    value = _parse(raw)
    if value is None:
        return None, EmpiricalStatus.INVALID
    params = entry.get("params")
    noise = _positive(params.get("noise_multiplier")) if isinstance(params, Mapping) else None
    delta = _entry_delta(entry)
    claim = _client_dp_claim(noise, delta)
    return _compare(value, delta, claim)


@functools.lru_cache(maxsize=256)
def _cached_release_epsilon(noise_multiplier: float, delta: float) -> float:
    return float(epsilon_per_release(noise_multiplier, delta))


def _client_dp_claim(noise_multiplier: float | None, delta: Any) -> float | None:
    """The server's own ε of one release at this noise multiplier and δ (None when they are not usable)."""
    found_delta = _positive(delta)
    if noise_multiplier is None or found_delta is None or found_delta >= 1:
        return None
    try:
        return _cached_release_epsilon(noise_multiplier, found_delta)
    except (MedPFLError, ValueError, ArithmeticError):
        return None


def _dp_sgd_check(facts: Mapping[str, Any]) -> Checked:
    raw = facts.get("epsilon_empirical")
    if raw is None:
        return None, EmpiricalStatus.ABSENT
    value = _parse(raw)
    if value is None:
        return None, EmpiricalStatus.INVALID
    claims = _dp_sgd_claims(facts)
    # the site's audit runs at q' = 1 / round(1 / q) (whole batches per epoch): either rate is the declared one
    claim = next((c for c in claims if _same(value.claimed_epsilon, c)), claims[0] if claims else None)
    return _compare(value, facts.get("delta"), claim)


@functools.lru_cache(maxsize=256)
def _cached_step_epsilon(noise: float, clip: float, delta: float, accountant: str, rate: float) -> float:
    from medpfl_app.defenses.dp_sgd import DPSGDConfig
    from medpfl_app.defenses.epsilon_audit_dp_sgd import per_step_epsilon

    if accountant not in ("rdp", "prv", "gdp"):
        raise MedPFLError(f"unknown DP-SGD accountant {accountant[:40]!r}", fix="declare rdp, prv or gdp")
    config = DPSGDConfig(noise_multiplier=noise, max_grad_norm=clip, delta=delta, accountant=accountant)  # type: ignore[arg-type]
    return per_step_epsilon(config, rate)


def _dp_sgd_claims(facts: Mapping[str, Any]) -> list[float]:
    """The server's own ε of one DP-SGD step from the declared facts, at q and at the audit's rounded q."""
    noise, clip = _positive(facts.get("noise_multiplier")), _positive(facts.get("max_grad_norm"))
    delta, rate = _positive(facts.get("delta")), _positive(facts.get("sample_rate"))
    accountant = facts.get("accountant")
    if noise is None or clip is None or delta is None or rate is None or not isinstance(accountant, str):
        return []
    if rate > 1 or delta >= 1:
        return []
    claims = []
    for q in dict.fromkeys((rate, 1.0 / max(1, round(1.0 / rate)))):
        try:
            claims.append(_cached_step_epsilon(noise, clip, delta, accountant, q))
        except (MedPFLError, ValueError, ArithmeticError, KeyError, TypeError):
            continue
    return claims
