"""A site's risk factors, read from its declared settings alone (no attack): what will likely leak, and why.

Each factor names a change that would reduce the risk; `medpfl_app.audit.preflight.assessment` probes that change
with the same synthetic attack, so the advice carries a measured number, not only a rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from medpfl_app.audit.preflight.settings import ProbeSetting
from medpfl_app.contracts.preflight import DeclaredDefense, SiteRiskFacts

#: A class with fewer training images than this makes label recovery point at few patients.
FEW_IMAGES_PER_CLASS = 10
#: The batch size the advice suggests (the NVFlare leakage study's collapse point is at 4 or more; 16 leaves margin).
SAFER_BATCH_SIZE = 16
#: The client-level DP the advice suggests (clip L2 1.0, noise multiplier 1.0: ε ≈ 5 per release at δ = 1e-5).
SUGGESTED_CLIENT_DP = DeclaredDefense("client_dp", {"clip_norm": 1.0, "noise_multiplier": 1.0, "delta": 1e-5})
SUGGESTED_BN_LOCAL = DeclaredDefense("drop_bn_stats", {})


class Factor(StrEnum):
    """Risk factors a site can have before round 1."""

    BATCH_OF_ONE = "batch_of_one"
    ONE_LOCAL_STEP = "one_local_step"
    FEW_IMAGES_PER_CLASS = "few_images_per_class"
    SINGLE_IMAGE_CLASS = "single_image_class"
    BN_STATS_SHARED = "bn_stats_shared"
    NO_DEFENSE = "no_defense"
    HEURISTIC_DEFENSE_ONLY = "heuristic_defense_only"


class Change(StrEnum):
    """Changes the pre-flight can probe."""

    BATCH_16 = "batch_size_16"
    CLIENT_DP = "client_dp"
    BN_LOCAL = "bn_local"


@dataclass(frozen=True)
class RiskFactor:
    """One factor with its explanation and the change that addresses it (None: no probe-able change)."""

    factor: Factor
    text: str
    change: Change | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "factor": str(self.factor),
            "text": self.text,
            "change": None if self.change is None else str(self.change),
        }


#: What each change does to a probe setting and how it reads in advice.
CHANGE_TEXT = {
    Change.BATCH_16: f"train with batch size {SAFER_BATCH_SIZE}",
    Change.CLIENT_DP: "add client-level DP (ClientDPFilter, clip 1.0, noise multiplier 1.0: a formal (ε, δ) guarantee)",
    Change.BN_LOCAL: "keep BatchNorm statistics local (DropBatchNormStatsFilter first in the chain)",
}


def apply_change(setting: ProbeSetting, change: Change, facts: SiteRiskFacts) -> ProbeSetting:
    """The probe setting with ``change`` made."""
    if change is Change.BATCH_16:
        return setting.with_batch_size(SAFER_BATCH_SIZE, facts.num_train_images)
    if change is Change.CLIENT_DP:
        return setting.with_defense(SUGGESTED_CLIENT_DP)
    return setting.with_defense(SUGGESTED_BN_LOCAL, first=True)


def risk_factors(facts: SiteRiskFacts, setting: ProbeSetting, *, has_batchnorm: bool) -> tuple[RiskFactor, ...]:
    """Every factor that holds for this site, worst first."""
    found: list[RiskFactor] = []
    if facts.batch_size == 1:
        found.append(
            RiskFactor(
                Factor.BATCH_OF_ONE,
                "batch size 1: each local step's gradient is one image's, which gradient inversion (DLG, iDLG) "
                "reconstructs almost exactly",
                Change.BATCH_16,
            )
        )
    if facts.local_steps == 1:
        found.append(
            RiskFactor(
                Factor.ONE_LOCAL_STEP,
                "one local step per round: the update is a single gradient, the easiest case for the attacker",
                None if facts.batch_size == 1 else Change.BATCH_16,
            )
        )
    if facts.single_image_classes:
        found.append(
            RiskFactor(
                Factor.SINGLE_IMAGE_CLASS,
                f"{facts.single_image_classes} class(es) held by one training image: an update carrying that label "
                "is that image's, and label recovery points straight at it",
            )
        )
    elif facts.smallest_class < FEW_IMAGES_PER_CLASS:
        found.append(
            RiskFactor(
                Factor.FEW_IMAGES_PER_CLASS,
                f"the smallest class has {facts.smallest_class} training image(s) (fewer than "
                f"{FEW_IMAGES_PER_CLASS}): recovered labels narrow an update down to few patients",
            )
        )
    if has_batchnorm and not setting.bn_local:
        found.append(
            RiskFactor(
                Factor.BN_STATS_SHARED,
                "the network's BatchNorm running statistics leave the site with every update (per-batch means and "
                "variances of the images)",
                Change.BN_LOCAL,
            )
        )
    if not setting.defenses and setting.dp_sgd_noise_multiplier == 0:
        found.append(
            RiskFactor(Factor.NO_DEFENSE, "no defense in the job or the site's privacy scope", Change.CLIENT_DP)
        )
    elif not setting.formally_protected:
        found.append(
            RiskFactor(
                Factor.HEURISTIC_DEFENSE_ONLY,
                f"only heuristic defenses ({', '.join(setting.defense_keys)}): no formal guarantee, and naive noise "
                "does not reliably stop gradient inversion",
                Change.CLIENT_DP,
            )
        )
    return tuple(found)
