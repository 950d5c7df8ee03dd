"""The audit's verdict on one update: a level, the evidence behind it and what would settle it (typed contract).

A verdict must be true in both directions. ``low`` is only given with evidence that a serious attack failed
(the whole update was attacked and the attack ladder completed, converging or stalling, and the site still
measured no reconstruction); ``high`` only with evidence noise cannot produce (a reconstruction close to the true
image by SSIM, or correct labels plus identification significantly above chance). Everything else is
``inconclusive`` with what would settle it. Records that were not audited or cannot be audited say why.

No NVFlare import: the record writer (`medpfl_app.audit.worker`), the risk policy (`medpfl_app.audit.risk`) and
the reports (`medpfl_app.reports`) share this contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from medpfl_app.errors import MedPFLError

VERDICT_SCHEMA = "medpfl.verdict/1"


class RiskLevel(StrEnum):
    """Levels of an audit record, worst first."""

    HIGH = "high"
    MEDIUM = "medium"
    #: The attack converged on the server but the site's scores are missing: likely high, unconfirmed.
    UNSCORED = "unscored"
    INCONCLUSIVE = "inconclusive"
    LOW = "low"
    NOT_AUDITED = "not_audited"
    NOT_AUDITABLE = "not_auditable"

    @property
    def measured(self) -> bool:
        """Whether the level rests on a measurement of this update (high, medium, low)."""
        return self in (RiskLevel.HIGH, RiskLevel.MEDIUM, RiskLevel.LOW)


#: What each level means, in words a compliance officer reads (shown in every report).
LEVEL_MEANINGS: Mapping[RiskLevel, str] = {
    RiskLevel.HIGH: "images were reconstructed: the site measured a reconstruction close to a true image (SSIM at or "
    "above the policy's high threshold, or an image counted as a successful attack), or correct labels together "
    "with identification of the true images significantly above chance",
    RiskLevel.MEDIUM: "partial leakage: some structure (SSIM above the medium threshold) or identification above "
    "chance, measured by the site, but no image reconstructed",
    RiskLevel.UNSCORED: "the attack matched the update on the server, but the site's scores could not be obtained: "
    "high unless the site's scores show otherwise",
    RiskLevel.INCONCLUSIVE: "the audit cannot say: the attack did not converge within its budget, was run on a "
    "reduced problem, or the site's scores are missing; the record says what would settle it",
    RiskLevel.LOW: "a completed attack ladder on the whole update (matching it, or stalling at its best loss) did "
    "not reconstruct any image the site used: evidence under this attack and budget, not a guarantee against "
    "stronger attacks",
    RiskLevel.NOT_AUDITED: "the update was received but not attacked (queue full, invalid meta, internal error); "
    "the record names the cause",
    RiskLevel.NOT_AUDITABLE: "the update cannot be attacked (encrypted, non-numeric, no model weights)",
}


@dataclass(frozen=True)
class Verdict:
    """The level of one record with its evidence.

    Attributes:
        level: The risk level.
        evidence: One or two sentences: the numbers the level rests on (attack, stage, loss, SSIM ...).
        settle: For ``inconclusive`` and ``unscored``: what would settle it (e.g. "raise time_limit_s to 240 s");
            None otherwise.
    """

    level: RiskLevel
    evidence: str
    settle: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "level", RiskLevel(self.level))

    def to_json(self) -> dict[str, Any]:
        return {"schema": VERDICT_SCHEMA, "level": str(self.level), "evidence": self.evidence, "settle": self.settle}

    @classmethod
    def from_json(cls, values: Any) -> Verdict:
        """A verdict read back from a ledger record.

        Raises:
            MedPFLError: Not a verdict of a schema this version understands.
        """
        if not isinstance(values, Mapping) or values.get("schema") != VERDICT_SCHEMA:
            raise MedPFLError(
                f"not a {VERDICT_SCHEMA} verdict: {str(values)[:120]!r}",
                fix="re-render with the MedPFL version that wrote the ledger",
            )
        try:
            level = RiskLevel(cast(str, values.get("level")))  # anything else: ValueError below
        except ValueError as error:
            raise MedPFLError(f"unknown risk level {values.get('level')!r}", fix="use a known level") from error
        evidence = values.get("evidence")
        settle = values.get("settle")
        return cls(
            level=level,
            evidence=evidence if isinstance(evidence, str) else "",
            settle=settle if isinstance(settle, str) else None,
        )
