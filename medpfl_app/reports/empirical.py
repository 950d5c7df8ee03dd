"""The empirical ε check of a record, in words: ε̂ next to the formal ε of one release, and the flag when ε̂ > ε.

The audit writes the site's ε̂ and its `EmpiricalStatus` into the record's ``epsilon`` section
(`medpfl_app.audit.provenance.empirical_epsilon`). The ledger is still untrusted input here: the value is parsed
again with ``EmpiricalEpsilon.from_json`` (refused: ``invalid``), an unknown status reads as ``invalid``, and a
parsed ε̂ above its own claimed ε is shown as ``exceeds_claim`` whatever the recorded status says: a ledger line can
raise the flag, never hide it. Records without these keys (no formal ε, or written before the check existed) show
nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medpfl_app.contracts.record import AuditRecord, EmpiricalStatus
from medpfl_app.defenses.epsilon_audit import EmpiricalEpsilon
from medpfl_app.errors import MedPFLError

#: (section key of the formal ε, key of ε̂, level in words, what one ε̂ covers).
MECHANISMS: tuple[tuple[str, str, str, str], ...] = (
    ("client_dp", "client_dp_empirical", "client-level", "release"),
    ("dp_sgd", "dp_sgd_empirical", "sample-level", "step"),
)
NO_EVIDENCE = "no evidence against the claim (this does not prove it)"


@dataclass(frozen=True)
class EmpiricalCheck:
    """One mechanism's empirical ε check in one record.

    Attributes:
        site, round: Where the record belongs (None when the record does not say).
        mechanism: ``client_dp`` or ``dp_sgd``.
        level: ``client-level`` or ``sample-level``.
        unit: What one ε̂ covers: ``release`` (client DP) or ``step`` (DP-SGD).
        status: The check's outcome.
        value: The site's ε̂ (None when absent or invalid).
    """

    site: str | None
    round: int | None
    mechanism: str
    level: str
    unit: str
    status: EmpiricalStatus
    value: EmpiricalEpsilon | None

    @property
    def failed(self) -> bool:
        """Whether ε̂ exceeds the claimed ε: the formal ε of this site is not a valid guarantee."""
        return self.status is EmpiricalStatus.EXCEEDS_CLAIM

    def measured_text(self) -> str:
        """``ε̂ ≥ 0.666 (95 %, 4000 trials) per release vs ε = 4.73 per release``."""
        if self.value is None:
            return ""
        v = self.value
        return (
            f"ε̂ ≥ {v.epsilon_lower:.3g} ({100 * v.confidence:g} %, {v.trials} trials) per {self.unit} "
            f"vs ε = {v.claimed_epsilon:.3g} per {self.unit}"
        )

    def looseness_text(self) -> str:
        """How far the formal ε sits above ε̂ (the bound's looseness), as a ratio."""
        if self.value is None:
            return ""
        if self.value.epsilon_lower <= 0:
            return "ε̂ = 0: the test found no leakage, so how loose ε is stays unknown"
        # the true ε lies in [ε̂, ε]: the accountant's ε overstates it by at most ε / ε̂
        ratio = self.value.claimed_epsilon / self.value.epsilon_lower
        return f"ε / ε̂ = {ratio:.3g}: the accountant's ε overstates the true ε by at most {ratio:.3g}×"

    def text(self) -> str:
        """The check in one phrase (shown next to the formal ε)."""
        if self.status is EmpiricalStatus.ABSENT:
            return f"{self.level} ε̂ not sent: no empirical check"
        if self.status is EmpiricalStatus.INVALID:
            return f"{self.level} ε̂ invalid: the site's value is not a valid empirical ε (not used)"
        if self.status is EmpiricalStatus.MISMATCH:
            return (
                f"{self.level} ε̂ not comparable: {self.measured_text()}, but its δ or claimed ε differs from the "
                "server's own recomputation from the declared parameters (not used)"
            )
        if self.failed:
            return f"{self.level} {self.measured_text()}: EMPIRICAL CHECK FAILED (ε̂ > ε)"
        return f"{self.level} {self.measured_text()} ({self.looseness_text()}): {NO_EVIDENCE}"

    def flag_text(self) -> str:
        """The failure, in full sentences (empty when the check did not fail)."""
        if not self.failed or self.value is None:
            return ""
        v = self.value
        return (
            f"Empirical privacy check FAILED for {self.site or 'an unnamed site'} in round {self.round}: a canary "
            f"test measured ε̂ = {v.epsilon_lower:.3g} for one {self.unit} ({100 * v.confidence:g} % confidence, "
            f"{v.trials} trials), above the ε = {v.claimed_epsilon:.3g} per {self.unit} the accountant charges at "
            f"δ = {v.delta:.0e}. At this confidence the stated guarantee is false: the defense or its accounting "
            "is broken."
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON of the check (the round report's ``empirical`` entries)."""
        return {
            "site": self.site,
            "round": self.round,
            "mechanism": self.mechanism,
            "status": str(self.status),
            "epsilon_empirical": None if self.value is None else self.value.to_json(),
            "claimed_epsilon_per_release": None if self.value is None else self.value.claimed_epsilon,
            "text": self.text(),
            "flag": self.flag_text() or None,
        }


def _status(recorded: Any, value: EmpiricalEpsilon | None, raw: Any) -> EmpiricalStatus:
    try:
        status = EmpiricalStatus(recorded)
    except ValueError:
        return EmpiricalStatus.INVALID
    if raw is not None and value is None:
        return EmpiricalStatus.INVALID
    if value is not None and value.exceeds_claim:
        return EmpiricalStatus.EXCEEDS_CLAIM  # the value itself disproves its claim: never hidden
    if value is None and status in (EmpiricalStatus.CONSISTENT, EmpiricalStatus.EXCEEDS_CLAIM):
        return EmpiricalStatus.INVALID  # a verdict on a value that is not there
    return status


def empirical_checks(record: AuditRecord) -> tuple[EmpiricalCheck, ...]:
    """The record's empirical checks, one per mechanism with a formal ε (none when the record carries no check)."""
    epsilon = record.epsilon if isinstance(record.epsilon, Mapping) else {}
    if "empirical_status" not in epsilon:
        return ()
    statuses = epsilon["empirical_status"] if isinstance(epsilon["empirical_status"], Mapping) else {}
    checks = []
    for formal, key, level, unit in MECHANISMS:
        if epsilon.get(formal) is None:
            continue
        raw = epsilon.get(key)
        try:
            value = None if raw is None else EmpiricalEpsilon.from_json(raw)
        except (MedPFLError, TypeError, ValueError, OverflowError):
            value = None
        status = _status(statuses.get(formal), value, raw)
        checks.append(EmpiricalCheck(record.site, record.round, formal, level, unit, status, value))
    return tuple(checks)
