"""Typed contracts for everything the audit sends across a process or writes to a file.

Each is a frozen dataclass (with `StrEnum` options) with one ``to_json`` / ``from_json`` and a schema version:
`TrainingFacts` (update meta, ``medpfl_facts_version``), `ScoreRequest` / `ScoreReply` (the auxiliary score channel,
`SCORE_SCHEMA`), `AuditRecord` (the ledger, ``medpfl.audit/2``), beside `medpfl_app.contracts.verdict.Verdict`. Readers
refuse what they do not understand with one `medpfl_app.errors.MedPFLError`. No NVFlare import.
"""

from medpfl_app.contracts.record import AUDIT_RECORD_SCHEMA, READABLE_SCHEMAS, AuditRecord, RecordStatus
from medpfl_app.contracts.score import SCORE_KEYS, SCORE_SCHEMA, ScoreReply, ScoreRequest, ScoreStatus
from medpfl_app.contracts.training_facts import FACT_KEYS, FACTS_VERSION, TrainingFacts

__all__ = [
    "AUDIT_RECORD_SCHEMA",
    "FACTS_VERSION",
    "FACT_KEYS",
    "READABLE_SCHEMAS",
    "SCORE_KEYS",
    "SCORE_SCHEMA",
    "AuditRecord",
    "RecordStatus",
    "ScoreReply",
    "ScoreRequest",
    "ScoreStatus",
    "TrainingFacts",
]
