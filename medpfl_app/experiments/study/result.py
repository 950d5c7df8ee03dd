"""What one cell measured (frozen, one to/from JSON) and its flat table row."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from medpfl_app.contracts.verdict import RiskLevel
from medpfl_app.experiments.study.config import CellConfig, DefenseSetting

#: Worst first, as the audit orders its levels; a cell's level is the worst of its audited sites.
LEVEL_ORDER: tuple[str, ...] = tuple(level.value for level in RiskLevel)


@dataclass(frozen=True)
class SiteLeakage:
    """The audit of one received site update: verdict level and the site's scores (None: not measured)."""

    site: str
    round: int
    level: str
    ssim_max: float | None
    psnr_max: float | None
    attack_success_rate: float | None
    label_accuracy: float | None
    identifiability_excess: float | None
    convergence: str
    ladder_complete: bool
    audit_s: float
    #: Why the update was not attacked (the audit refused it, e.g. an attack that needs what the defense removed).
    note: str | None = None
    #: Mean SSIM over the scored reconstructions (None: not measured, or a cell stored before it was recorded).
    ssim_mean: float | None = None

    @classmethod
    def not_audited(cls, site: str, round_index: int, note: str, seconds: float) -> SiteLeakage:
        """An update the audit could not attack, with the reason (nothing measured)."""
        level = RiskLevel.NOT_AUDITED.value
        return cls(site, round_index, level, None, None, None, None, None, "none", False, seconds, note=note)


@dataclass(frozen=True)
class CellResult:
    """Utility, leakage and cost of one cell (``auc`` is None when the run did not report one)."""

    cell: CellConfig
    accuracy: float
    auc: float | None
    sites: tuple[SiteLeakage, ...]
    epsilon: float | None
    delta: float | None
    guarantee: str
    threat_model: str
    attack_budget: str
    train_s: float
    wall_s: float
    #: The `medpfl_app.experiments.study.config.Engine` value that ran the cell (older stored cells: in-process).
    engine: str = "in_process"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellResult:
        cell = dict(data["cell"])
        cell["defense"] = DefenseSetting(**cell["defense"])
        sites = tuple(SiteLeakage(**site) for site in data["sites"])
        return cls(**{**data, "cell": CellConfig(**cell), "sites": sites})

    @property
    def worst_ssim(self) -> float | None:
        values = [s.ssim_max for s in self.sites if s.ssim_max is not None]
        return max(values) if values else None

    @property
    def worst_level(self) -> str:
        levels = [s.level for s in self.sites]
        return min(levels, key=LEVEL_ORDER.index) if levels else RiskLevel.NOT_AUDITED.value

    def row(self) -> dict[str, Any]:
        """The flat table row (worst audited site for every leakage column)."""
        cell = self.cell

        def worst(name: str) -> float | None:
            values = [getattr(s, name) for s in self.sites if getattr(s, name) is not None]
            return max(values) if values else None

        return {
            "network": cell.network,
            "defense": cell.defense.kind.value,
            "strength": cell.defense.strength,
            "setting": cell.defense.label,
            "guarantee": self.guarantee,
            "batch_size": cell.batch_size,
            "local_steps": cell.local_steps,
            "attack": cell.attack,
            "attack_budget": self.attack_budget,
            "threat_model": self.threat_model,
            "accuracy": _round(self.accuracy),
            "auc": _round(self.auc),
            "verdict": self.worst_level,
            "site_verdicts": " ".join(f"{s.site}@r{s.round}:{s.level}" for s in self.sites),
            "ssim_max": _round(worst("ssim_max")),
            "psnr_max": _round(worst("psnr_max")),
            "asr": _round(worst("attack_success_rate")),
            "label_accuracy": _round(worst("label_accuracy")),
            "identifiability_excess": _round(worst("identifiability_excess")),
            "epsilon": _round(self.epsilon),
            "delta": self.delta,
            "wall_s": _round(self.wall_s, 1),
            "engine": self.engine,
        }


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None if value is None else value
    return round(value, digits)
