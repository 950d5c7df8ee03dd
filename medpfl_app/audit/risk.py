"""The risk policy: how one audit record's numbers become ``low`` / ``medium`` / ``high`` / ``unknown``.

A pure function of the record's site-side scores, server-side indicators and formal ε, so a compliance team can
re-derive every level from the ledger and change the thresholds without touching the audit.

Default policy (`RiskPolicy()`), applied in this order:

1. Site scores present (the site compared the reconstructions with the images it really used):
   ``high`` if the best reconstruction's SSIM ≥ ``ssim_high`` (0.6) or any image counts as reconstructed
   (attack success rate > 0, i.e. SSIM ≥ the success threshold) or identifiability ≥ ``identifiability_high`` (0.5);
   ``medium`` if the best SSIM ≥ ``ssim_medium`` (0.3) or the relative leakage against an uninformed prior
   ≥ ``relative_leakage_medium`` (0.5); else ``low``.
2. No site scores: server-side indicators only. ``high`` if the update is a single image with BatchNorm running
   statistics shared (the batch's statistics are exposed exactly); ``medium`` if labels were recovered or BN
   statistics were exposed; else ``unknown`` (the server cannot tell leakage without ground truth).
3. Only for a level from server indicators alone (step 2): a formal client-level or sample-level ε at or below
   ``epsilon_caps_at_medium`` (default 1.0) caps ``high`` at ``medium``, since exposed BN statistics of a noised
   update say less than the indicator assumes. A leak the site measured (step 1) is never lowered by any ε.

Records that were not audited or are not auditable are ``unknown``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from medpfl_app.errors import MedPFLError


@dataclass(frozen=True)
class RiskPolicy:
    """Thresholds of the risk policy (see the module docstring for how they are applied).

    Attributes:
        ssim_high: Best-image SSIM at or above which the risk is high.
        ssim_medium: Best-image SSIM at or above which the risk is at least medium.
        identifiability_high: Share of reconstructions whose nearest site image is the true one, at or above
            which the risk is high.
        relative_leakage_medium: Relative leakage vs an uninformed prior at or above which the risk is medium.
        epsilon_caps_at_medium: A formal ε at or below this caps a server-indicator-only high at medium (None: never).
    """

    ssim_high: float = 0.6
    ssim_medium: float = 0.3
    identifiability_high: float = 0.5
    relative_leakage_medium: float = 0.5
    epsilon_caps_at_medium: float | None = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ssim_medium <= self.ssim_high <= 1.0:
            raise MedPFLError(
                f"risk policy needs 0 <= ssim_medium <= ssim_high <= 1, got {self.ssim_medium} and {self.ssim_high}",
                fix="e.g. ssim_medium=0.3, ssim_high=0.6",
            )
        if not 0.0 <= self.identifiability_high <= 1.0:
            raise MedPFLError("identifiability_high must lie in [0, 1]", fix="e.g. 0.5")
        if self.epsilon_caps_at_medium is not None and not self.epsilon_caps_at_medium > 0:
            raise MedPFLError("epsilon_caps_at_medium must be > 0 or None", fix="e.g. 1.0, or None to never cap")

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
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def formal_epsilon(epsilon: Mapping[str, Any] | None) -> float | None:
    """The smallest formal ε stated (client-level or sample-level), or None when there is none."""
    values = [v for v in (_number(epsilon, "client_dp"), _number(epsilon, "dp_sgd")) if v is not None]
    return min(values) if values else None


def assess_risk(
    *,
    status: str,
    site_scores: Mapping[str, Any] | None,
    server_indicators: Mapping[str, Any] | None,
    epsilon: Mapping[str, Any] | None,
    policy: RiskPolicy = RiskPolicy(),
) -> str:
    """The risk level of one audit record under ``policy``.

    Args:
        status: The record's status (only ``audited`` records get a level other than ``unknown``).
        site_scores: The site's scalar scores (``status`` ``scored`` to be used).
        server_indicators: What the server alone measured.
        epsilon: ``{"client_dp", "dp_sgd", "delta"}``.
        policy: Thresholds.

    Returns:
        ``low``, ``medium``, ``high`` or ``unknown``.
    """
    if status != "audited":
        return "unknown"
    level = "unknown"
    if site_scores and site_scores.get("status") == "scored":
        ssim_max = _number(site_scores, "ssim_max")
        success = _number(site_scores, "attack_success_rate")
        ident = _number(site_scores, "identifiability")
        relative = _number(site_scores, "relative_leakage")
        if (
            (ssim_max is not None and ssim_max >= policy.ssim_high)
            or (success is not None and success > 0)
            or (ident is not None and ident >= policy.identifiability_high)
        ):
            level = "high"
        elif (ssim_max is not None and ssim_max >= policy.ssim_medium) or (
            relative is not None and relative >= policy.relative_leakage_medium
        ):
            level = "medium"
        else:
            level = "low"
    else:
        indicators = server_indicators or {}
        bn = indicators.get("bn_statistics_exposed") is True
        single = indicators.get("images_per_update") == 1
        if bn and single:
            level = "high"
        elif bn or indicators.get("labels_recovered"):
            level = "medium"
        eps = formal_epsilon(epsilon)
        capped = eps is not None and policy.epsilon_caps_at_medium is not None and eps <= policy.epsilon_caps_at_medium
        if level == "high" and capped:
            level = "medium"
    return level
