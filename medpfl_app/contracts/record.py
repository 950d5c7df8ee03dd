"""One audit ledger record (typed contract, schema ``medpfl.audit/2``; ``medpfl.audit/1`` records stay readable).

`medpfl_app.audit.worker.build_record` builds an `AuditRecord` and hands its `to_json` to the ledger
(`medpfl_app.audit.ledger`, which stamps ``time`` and bounds what a site controls); readers get it back with
`AuditRecord.from_json`. The record's sections (model, threat model, scores, attack budget ...) stay plain JSON
mappings: they hold what sites and attacks reported, which the ledger may have had to sanitise. The reports read
every ledger line with `AuditRecord.from_json` (a line it refuses is shown as unreadable, with its reason) and hold
each number of a section to its valid range themselves (`medpfl_app.reports.record_numbers`). The ``epsilon``
section is ``{"client_dp", "dp_sgd", "delta"}`` (formal ε so far); records with a formal ε also carry
``client_dp_empirical`` / ``dp_sgd_empirical`` (an ``EmpiricalEpsilon`` JSON or null) and ``empirical_status``
(``{"client_dp": EmpiricalStatus, "dp_sgd": EmpiricalStatus}``); records without one are unchanged. Keys this version does not know
are ignored (a newer writer may add some within the same schema); a schema it does not know is refused.

Pure (no NVFlare, no torch).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from medpfl_app.contracts.verdict import RiskLevel, Verdict
from medpfl_app.errors import MedPFLError

AUDIT_RECORD_SCHEMA = "medpfl.audit/2"
LEGACY_RECORD_SCHEMA = "medpfl.audit/1"
#: Schemas a reader accepts (older runs' ledgers stay readable).
READABLE_SCHEMAS = (LEGACY_RECORD_SCHEMA, AUDIT_RECORD_SCHEMA)
#: Schema 1's risk for "not measured" (schema 2 says why, with a `RiskLevel`).
LEGACY_UNKNOWN_RISK = "unknown"
_LEGACY_RISKS = ("high", "medium", "low", LEGACY_UNKNOWN_RISK)
_SECTIONS = (
    "model",
    "versions",
    "threat_model",
    "epsilon",
    "server_indicators",
    "site_scores",
    "risk_policy",
    "attack_budget",
    "metric_settings",
    "training_facts",
    "policy_action",
)
_LISTS = ("defenses", "filter_history")


class RecordStatus(StrEnum):
    """Whether the audit attacked the update."""

    AUDITED = "audited"
    #: The audit could not run (queue full, invalid meta, internal error).
    NOT_AUDITED = "not_audited"
    #: The update cannot be attacked (encrypted, non-numeric, no model).
    NOT_AUDITABLE = "not_auditable"


class EmpiricalStatus(StrEnum):
    """How a site's empirical ε lower bound (ε̂) compares with the formal ε of one release (or DP-SGD step).

    Written by `medpfl_app.audit.provenance.empirical_epsilon` into the record's ``epsilon.empirical_status``
    (``{"client_dp": ..., "dp_sgd": ...}``); the site's value is untrusted, so it can only raise a flag.
    """

    #: ε̂ ≤ the claimed ε: no evidence against the claim (this does not prove it).
    CONSISTENT = "consistent"
    #: ε̂ > the claimed ε: at ε̂'s confidence the stated guarantee is false (defense or accounting broken).
    EXCEEDS_CLAIM = "exceeds_claim"
    #: The site sent something that is not a valid `EmpiricalEpsilon` (not used).
    INVALID = "invalid"
    #: A valid ε̂, but for another δ or another claimed ε than the server recomputes from the update's meta.
    MISMATCH = "mismatch"
    #: No ε̂ was sent (the check was off, or the mechanism is not in use).
    ABSENT = "absent"


STATUSES = tuple(str(status) for status in RecordStatus)
RISK_LEVELS = tuple(str(level) for level in RiskLevel)


@dataclass(frozen=True)
class AuditRecord:
    """One update's audit: who, when, what was attacked, what the site measured and the verdict.

    The fields are the record schema described in `medpfl_app.audit.ledger`; ``risk`` is a `RiskLevel` value (or
    ``unknown`` in a schema-1 record), ``verdict`` is None in schema-1 records (and in records written without one),
    ``time`` is None until the
    ledger stamps it, ``sanitized`` is set by the ledger when it had to alter a value a site controls. ``ladder`` and
    ``ladder_complete`` are None in records that do not carry them (schema 1: one attack, no ladder).
    """

    status: RecordStatus
    risk: str
    job_id: str | None = None
    site: str | None = None
    round: int | None = None
    reason: str | None = None
    verdict: Verdict | None = None
    model: Mapping[str, Any] | None = None
    versions: Mapping[str, Any] | None = None
    threat_model: Mapping[str, Any] | None = None
    defenses: tuple[Any, ...] = ()
    filter_history: tuple[Any, ...] = ()
    epsilon: Mapping[str, Any] | None = None
    server_indicators: Mapping[str, Any] | None = None
    site_scores: Mapping[str, Any] | None = None
    risk_policy: Mapping[str, Any] | None = None
    attack_budget: Mapping[str, Any] | None = None
    ladder: tuple[Mapping[str, Any], ...] | None = None
    ladder_complete: bool | None = None
    metric_settings: Mapping[str, Any] | None = None
    training_facts: Mapping[str, Any] | None = None
    policy_action: Mapping[str, Any] | None = None
    schema: str = AUDIT_RECORD_SCHEMA
    time: str | None = None
    sanitized: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RecordStatus(self.status))
        for name in _LISTS:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.ladder is not None:
            object.__setattr__(self, "ladder", tuple(self.ladder))

    def to_json(self) -> dict[str, Any]:
        """The ledger line's object (``time`` and ``sanitized`` only once the ledger set them)."""
        values: dict[str, Any] = {"schema": self.schema}
        if self.time is not None:
            values["time"] = self.time
        values.update(
            {
                "job_id": self.job_id,
                "site": self.site,
                "round": self.round,
                "status": str(self.status),
                "reason": self.reason,
                "model": _copy(self.model),
                "versions": _copy(self.versions),
                "threat_model": _copy(self.threat_model),
                "defenses": list(self.defenses),
                "filter_history": list(self.filter_history),
                "epsilon": _copy(self.epsilon),
                "server_indicators": _copy(self.server_indicators),
                "site_scores": _copy(self.site_scores),
                "risk": self.risk,
                "verdict": None if self.verdict is None else self.verdict.to_json(),
                "risk_policy": _copy(self.risk_policy),
                "attack_budget": _copy(self.attack_budget),
                "ladder": None if self.ladder is None else [dict(stage) for stage in self.ladder],
                "ladder_complete": self.ladder_complete,
                "metric_settings": _copy(self.metric_settings),
                "training_facts": _copy(self.training_facts),
                "policy_action": _copy(self.policy_action),
            }
        )
        if self.sanitized:
            values["sanitized"] = True
        return values

    @classmethod
    def from_json(cls, values: Any) -> AuditRecord:
        """A record read back from a ledger line.

        Raises:
            MedPFLError: Not a mapping, a schema this version does not read, a missing or unknown status or risk, a
                verdict that is not a verdict, or a field of the wrong type.
        """
        if not isinstance(values, Mapping):
            raise MedPFLError(
                f"an audit record is a {type(values).__name__}, not a JSON object",
                fix="pass the ledger the audit wrote",
            )
        schema = values.get("schema")
        if schema not in READABLE_SCHEMAS:
            raise MedPFLError(
                f"audit record schema {repr(schema)[:40]} is not one of {', '.join(READABLE_SCHEMAS)}",
                fix="read the ledger with the MedPFL version that wrote it",
            )
        status = values.get("status")
        if status not in STATUSES:
            raise MedPFLError(
                f"audit record status {status!r} is not one of {STATUSES}",
                fix="set status to audited, not_audited or not_auditable",
            )
        risks = _LEGACY_RISKS if schema == LEGACY_RECORD_SCHEMA else RISK_LEVELS
        if values.get("risk") not in risks:
            raise MedPFLError(f"audit record risk {values.get('risk')!r} is unknown", fix=f"use one of {risks}")
        verdict = values.get("verdict")
        parsed: dict[str, Any] = {
            "schema": schema,
            "status": RecordStatus(status),
            "risk": values["risk"],
            "verdict": None if verdict is None else Verdict.from_json(verdict),
        }
        for name, kinds in (("job_id", str), ("site", str), ("reason", str), ("time", str)):
            parsed[name] = _typed(values, name, kinds)
        parsed["round"] = _typed(values, "round", int)
        parsed["ladder_complete"] = _typed(values, "ladder_complete", bool)
        parsed["sanitized"] = bool(_typed(values, "sanitized", bool))
        for name in _SECTIONS:
            parsed[name] = _typed(values, name, Mapping)
        for name in _LISTS:
            parsed[name] = tuple(_typed(values, name, list) or ())
        ladder = _typed(values, "ladder", list)
        parsed["ladder"] = None if ladder is None else tuple(ladder)
        if not all(isinstance(stage, Mapping) for stage in parsed["ladder"] or ()):
            raise MedPFLError(
                "an audit record's ladder holds an entry that is not a stage",
                fix="read the ledger with the MedPFL version that wrote it",
            )
        return cls(**{field.name: parsed[field.name] for field in fields(cls)})


def _typed(values: Mapping[str, Any], name: str, kind: type) -> Any:
    """``values[name]`` when it is a ``kind`` (None when missing or null)."""
    value = values.get(name)
    if value is None:
        return None
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    raise MedPFLError(
        f"audit record field {name!r} is a {type(value).__name__}, not a {kind.__name__}",
        fix="read the ledger with the MedPFL version that wrote it",
    )


def _copy(section: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if section is None else dict(section)
