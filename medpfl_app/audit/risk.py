"""The risk policy: how one audit record's evidence becomes a `Verdict` (pure; re-derivable from the ledger).

A verdict must be true in both directions (`medpfl_app.contracts.verdict`). Default policy (`RiskPolicy()`), in order:

1. Not audited / not auditable records keep that level and their reason.
2. Site scores present (the site compared the reconstructions with the images it really used):
   ``high`` if the best reconstruction's SSIM ≥ ``ssim_high`` (0.6) or any image counts as reconstructed (attack
   success rate > 0, i.e. SSIM ≥ the success threshold), or if every label was recovered and identification is
   significantly above chance (p < ``significance``) with an excess over chance ≥ ``identifiability_high``: noise
   cannot produce any of these. ``medium`` if the best SSIM ≥ ``ssim_medium`` (0.3), the relative leakage against
   an uninformed prior ≥ ``relative_leakage_medium`` (0.5) or identification is significantly above chance.
   Otherwise the site measured no reconstruction: ``low`` only when the whole update was attacked and the ladder
   completed (a stage matched the update, or every escalation ran to its end) with the best attack settled
   (matched, or stalled at its best loss); else ``inconclusive`` with what would settle it.
3. No site scores: ``unscored`` when the attack matched the whole update (high unless the site's scores show
   otherwise), else ``inconclusive``. Server-side indicators (labels recovered, BatchNorm statistics exposed) are
   stated in the evidence, never turned into a level without ground truth.

A formal ε never lowers a level: it bounds what any attacker can learn in theory, the level says what this
attack did. A formal ε whose empirical check failed (`formal_epsilon`) is no guarantee at all.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from medpfl_app.attacks.convergence import Convergence
from medpfl_app.contracts.record import EmpiricalStatus, RecordStatus
from medpfl_app.contracts.score import ScoreStatus
from medpfl_app.contracts.verdict import RiskLevel, Verdict
from medpfl_app.errors import MedPFLError


@dataclass(frozen=True)
class RiskPolicy:
    """Thresholds of the risk policy (see the module docstring for how they are applied).

    Attributes:
        ssim_high: Best-image SSIM at or above which the risk is high.
        ssim_medium: Best-image SSIM at or above which the risk is at least medium.
        identifiability_high: Excess identification over chance (0: chance, 1: every image of the round
            identified) at or above which, with every label recovered and significance, the risk is high.
        significance: p-value below which identification counts as above chance.
        relative_leakage_medium: Relative leakage vs an uninformed prior at or above which the risk is medium.
    """

    ssim_high: float = 0.6
    ssim_medium: float = 0.3
    identifiability_high: float = 0.5
    significance: float = 0.01
    relative_leakage_medium: float = 0.5

    def __post_init__(self) -> None:
        for label in ("ssim_high", "ssim_medium", "identifiability_high", "significance", "relative_leakage_medium"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise MedPFLError(f"risk policy {label} must be a finite number, got {value!r}", fix="e.g. the default")
        if not 0.0 <= self.ssim_medium <= self.ssim_high <= 1.0:
            raise MedPFLError(
                f"risk policy needs 0 <= ssim_medium <= ssim_high <= 1, got {self.ssim_medium} and {self.ssim_high}",
                fix="e.g. ssim_medium=0.3, ssim_high=0.6",
            )
        if not 0.0 < self.identifiability_high <= 1.0:
            raise MedPFLError("identifiability_high must lie in (0, 1]", fix="e.g. 0.5")
        if not 0.0 < self.significance < 0.5:
            raise MedPFLError("significance must lie in (0, 0.5)", fix="e.g. 0.01")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> RiskPolicy:
        """A policy from plain JSON (a job's filter args); unknown keys are refused."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(asdict(cls())))
        if unknown:
            raise MedPFLError(f"unknown risk policy key(s): {', '.join(unknown)}", fix=f"use {sorted(asdict(cls()))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(mapping: Mapping[str, Any] | None, key: str) -> float | None:
    value = (mapping or {}).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def formal_epsilon(epsilon: Mapping[str, Any] | None) -> float | None:
    """The smallest formal ε stated (client-level or sample-level) that still counts as a guarantee, or None.

    A mechanism whose empirical check failed (``empirical_status`` ``exceeds_claim``: a canary test measured more
    leakage for one release than its ε allows) states no valid ε, so nothing may rest on its formal ε.
    """
    statuses = (epsilon or {}).get("empirical_status")
    failed = statuses if isinstance(statuses, Mapping) else {}
    values = [
        v
        for key in ("client_dp", "dp_sgd")
        if (v := _number(epsilon, key)) is not None and failed.get(key) != EmpiricalStatus.EXCEEDS_CLAIM
    ]
    return min(values) if values else None


@dataclass(frozen=True)
class AttackEvidence:
    """What the server's attack ladder established about one update (read from the record).

    Attributes:
        description: The attack, the problem it solved and the loss it reached, in one phrase.
        convergence: Status of the best stage (None: no attack ran).
        complete: The ladder completed.
        not_attacked: Why the whole update was not attacked (None: it was).
        settle: What would settle an unsettled ladder.
    """

    description: str
    convergence: Convergence | None
    complete: bool
    not_attacked: str | None = None
    settle: str | None = None

    @classmethod
    def from_record(cls, indicators: Mapping[str, Any], budget: Mapping[str, Any]) -> AttackEvidence:
        """Read the evidence the worker wrote into ``server_indicators`` and ``attack_budget``."""
        status = indicators.get("attack_convergence")
        try:
            convergence = Convergence(status) if status is not None else None
        except ValueError:
            convergence = None
        not_attacked = budget.get("not_attacked")
        description = (
            f"{budget.get('attack')} on the whole update ({indicators.get('images_per_update')} images, "
            f"{indicators.get('local_steps')} local steps), {budget.get('stages_run', 0)} ladder stage(s), "
            f"{budget.get('iterations', 0)} iterations: matching loss {_loss(indicators.get('attack_initial_loss'))} "
            f"→ {_loss(indicators.get('attack_matching_loss'))} ({status})"
            if convergence is not None
            else f"no attack ran ({not_attacked or 'no reconstruction'})"
        )
        return cls(
            description=description,
            convergence=convergence,
            complete=budget.get("ladder_complete") is True,
            not_attacked=not_attacked if isinstance(not_attacked, str) else None,
            settle=budget.get("settle") if isinstance(budget.get("settle"), str) else None,
        )


def _loss(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def assess_verdict(
    *,
    status: RecordStatus | str,
    reason: str | None,
    site_scores: Mapping[str, Any] | None,
    attack: AttackEvidence,
    policy: RiskPolicy = RiskPolicy(),
) -> Verdict:
    """The verdict on one audit record under ``policy`` (see the module docstring)."""
    if status == RecordStatus.NOT_AUDITABLE:
        return Verdict(RiskLevel.NOT_AUDITABLE, reason or "the update cannot be attacked")
    if status != RecordStatus.AUDITED:
        return Verdict(RiskLevel.NOT_AUDITED, reason or "the update was not audited")
    scores = site_scores or {}
    if scores.get("status") == ScoreStatus.SCORED:
        return _scored_verdict(scores, attack, policy)
    why = scores.get("reason") or "the site sent no scores"
    if attack.convergence is Convergence.MATCHED:
        return Verdict(
            RiskLevel.UNSCORED,
            f"{attack.description}: the attack found images that reproduce the update, but the site's scores are "
            f"missing ({why}); high unless the site's scores show otherwise",
            settle=f"obtain the site's scores ({why})",
        )
    settle = f"obtain the site's scores ({why})"
    if attack.settle or attack.not_attacked:
        settle += f" and {attack.settle or _cap_hint(attack.not_attacked)}"
    return Verdict(RiskLevel.INCONCLUSIVE, f"{attack.description}; no site scores: {why}", settle=settle)


def _scored_verdict(scores: Mapping[str, Any], attack: AttackEvidence, policy: RiskPolicy) -> Verdict:
    ssim_max = _number(scores, "ssim_max")
    success = _number(scores, "attack_success_rate")
    threshold = _number(scores, "ssim_threshold")
    labels = _number(scores, "label_accuracy")
    excess = _number(scores, "identifiability_excess")
    p_value = _number(scores, "identifiability_p_value")
    relative = _number(scores, "relative_leakage")
    identified = p_value is not None and p_value < policy.significance
    measured = (
        f"best SSIM {_fmt(ssim_max)}, attack success rate {_fmt(success)} (SSIM ≥ {_fmt(threshold)}), "
        f"label accuracy {_fmt(labels)}, identification excess over chance {_fmt(excess)} (p = {_fmt(p_value)})"
    )
    if ssim_max is not None and ssim_max >= policy.ssim_high or (success is not None and success > 0):
        return Verdict(
            RiskLevel.HIGH,
            f"the site measured a reconstruction close to a true image: {measured}; {attack.description}",
        )
    if labels == 1.0 and identified and excess is not None and excess >= policy.identifiability_high:
        return Verdict(
            RiskLevel.HIGH,
            f"every label recovered and the reconstructions identify their images "
            f"significantly above chance: {measured}; {attack.description}",
        )
    if (
        (ssim_max is not None and ssim_max >= policy.ssim_medium)
        or identified
        or (relative is not None and relative >= policy.relative_leakage_medium)
    ):
        return Verdict(
            RiskLevel.MEDIUM,
            f"partial leakage measured by the site: {measured}, relative leakage "
            f"{_fmt(relative)}; {attack.description}",
        )
    if attack.not_attacked:
        return Verdict(
            RiskLevel.INCONCLUSIVE,
            f"the whole update was not attacked: {attack.not_attacked}",
            settle=_cap_hint(attack.not_attacked),
        )
    if attack.complete and attack.convergence is not None and attack.convergence.settled:
        how = (
            "matched the update yet did not reconstruct the images"
            if attack.convergence is Convergence.MATCHED
            else "stalled at its best loss"
        )
        return Verdict(RiskLevel.LOW, f"the completed attack ladder {how}: {measured}; {attack.description}")
    return Verdict(
        RiskLevel.INCONCLUSIVE,
        f"no reconstruction measured, but the attack did not settle: {measured}; {attack.description}",
        settle=attack.settle or "run the attack ladder to completion (raise time_limit_s or iterations)",
    )


def _cap_hint(not_attacked: str | None) -> str:
    return f"raise max_images / max_local_steps in the audit plan ({not_attacked})" if not_attacked else ""


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"
