"""What a privacy–utility study runs: frozen, JSON-able configurations of the shared run and of each cell.

A *cell* is one point of the sweep (network × defense × strength × site batch size × local steps × attack); the
*run* holds what every cell of a study shares (image size, sites, rounds, audit budget, seed). A cell's identity in
the resumable store is the hash of both (`cell_key`), so a changed preset or option never reuses a stale result.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from medpfl_app.defenses import Defense, Guarantee, build_defense
from medpfl_app.errors import MedPFLError

#: Bump when what a cell computes changes meaning: older stored cells are then recomputed, never reused.
STUDY_SCHEMA = "medpfl.study/1"


class DefenseKind(StrEnum):
    """The defenses a study sweeps; each maps to one `medpfl_app.defenses` registry key (or none)."""

    NONE = "none"
    LAPLACE = "laplace_noise"
    GAUSSIAN = "gaussian_noise"
    CLIENT_DP = "client_dp"
    TOP_K = "top_k"
    QUANTIZATION = "uniform_quantization"
    BN_LOCAL = "drop_bn_stats"
    #: Sample-level DP-SGD in the site's training (Opacus), not a filter on the update.
    DP_SGD = "dp_sgd"


class Engine(StrEnum):
    """Where a cell's federation runs (part of the cell key: results of one engine are never reused for the other)."""

    #: FedAvg in this process with the same site training, defense objects and server audit code (fast).
    IN_PROCESS = "in_process"
    #: An exported NVFlare job run by the NVFlare simulator (`medpfl_app.nvflare.study_cells`, 1–2 min per cell).
    SIMULATOR = "simulator"


class WeightInit(StrEnum):
    """How the federation's initial global model is drawn."""

    #: The job's seeded default initialisation (`build_seeded_network`), as the NVFlare jobs start.
    JOB = "job"
    #: Every parameter U(−0.5, 0.5), the DLG/iDLG/seed-paper init of the sigmoid LeNet (PyTorch's default init
    #: saturates its sigmoids: it barely trains on the phantoms in the rounds a small study affords).
    UNIFORM = "uniform"


#: The one parameter each defense's strength sets (client DP also takes the run's clip norm).
STRENGTH_FIELD: dict[DefenseKind, str | None] = {
    DefenseKind.NONE: None,
    DefenseKind.LAPLACE: "scale",
    DefenseKind.GAUSSIAN: "sigma",
    DefenseKind.CLIENT_DP: "noise_multiplier",
    DefenseKind.TOP_K: "fraction",
    DefenseKind.QUANTIZATION: "bits",
    DefenseKind.BN_LOCAL: None,
    DefenseKind.DP_SGD: "noise_multiplier",
}


@dataclass(frozen=True)
class DefenseSetting:
    """One defense at one strength (the strength is None for ``none`` and ``drop_bn_stats``)."""

    kind: DefenseKind
    strength: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", DefenseKind(self.kind))
        needs = STRENGTH_FIELD[self.kind] is not None
        if needs != (self.strength is not None):
            want = f"a strength ({STRENGTH_FIELD[self.kind]})" if needs else "no strength"
            raise MedPFLError(f"defense {self.kind.value} takes {want}, got {self.strength!r}", fix=f"give {want}")

    def build(self, *, clip_norm: float) -> Defense | None:
        """The `medpfl_app.defenses` object the NVFlare filter of this defense applies (None: no defense)."""
        name = STRENGTH_FIELD[self.kind]
        if self.kind in (DefenseKind.NONE, DefenseKind.DP_SGD):  # DP-SGD acts in training, not on the update
            return None
        params: dict[str, Any] = {} if name is None else {name: self.strength}
        if self.kind is DefenseKind.QUANTIZATION:
            params["bits"] = int(params["bits"])
        if self.kind is DefenseKind.CLIENT_DP:
            params["clip_norm"] = clip_norm
        return build_defense(self.kind.value, **params)

    @property
    def guarantee(self) -> Guarantee | None:
        """The formal guarantee the defense declares (client DP) or heuristic; None without a defense."""
        if self.kind is DefenseKind.NONE:
            return None
        if self.kind is DefenseKind.DP_SGD:
            return Guarantee.SAMPLE_DP
        from medpfl_app.defenses import DEFENSES

        return DEFENSES.get(self.kind.value).guarantee

    @property
    def label(self) -> str:
        """Short human name, e.g. ``laplace_noise b=0.01``."""
        name = STRENGTH_FIELD[self.kind]
        short = {"scale": "b", "sigma": "σ", "noise_multiplier": "z", "fraction": "keep", "bits": "bits"}
        return self.kind.value if name is None else f"{self.kind.value} {short[name]}={self.strength:g}"


@dataclass(frozen=True)
class CellConfig:
    """One point of the sweep.

    Attributes:
        network: Registered network the federation trains (``lenet_sigmoid``, ``small_cnn``).
        defense: The client-side defense on every site update.
        batch_size: Images per local SGD step at a site.
        local_steps: Local SGD steps per round (a FedAvg weight difference).
        attack: Registered attack the audit plan runs (``medpfl_app.attacks.ATTACKS``).
        init: The initial global model's weights.
    """

    network: str
    defense: DefenseSetting
    batch_size: int
    local_steps: int
    attack: str = "gradinv"
    init: WeightInit = WeightInit.JOB

    def __post_init__(self) -> None:
        object.__setattr__(self, "init", WeightInit(self.init))
        for label in ("batch_size", "local_steps"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MedPFLError(f"study cell {label} must be an integer >= 1, got {value!r}", fix=f"set {label} >= 1")

    @property
    def dp_sgd(self) -> bool:
        """Whether the sites train with DP-SGD (the network is then the DP-compatible GroupNorm variant)."""
        return self.defense.kind is DefenseKind.DP_SGD

    @property
    def label(self) -> str:
        return f"{self.network}, {self.defense.label}, B={self.batch_size}, S={self.local_steps}, {self.attack}"


@dataclass(frozen=True)
class AuditBudget:
    """The audit plan's budget for every audited update (fields of `medpfl_app.audit.plan.AuditPlan`)."""

    iterations: int = 500
    restarts: int = 1
    time_limit_s: float = 10.0
    screening_iterations: int = 20
    escalations: int = 2

    def plan_overrides(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.iterations} it x {self.restarts} restart(s), {self.escalations} escalation(s), "
            f"{self.time_limit_s:g} s per update"
        )


@dataclass(frozen=True)
class RunConfig:
    """What every cell of a study shares.

    Attributes:
        image_size: Side of the phantom images.
        num_classes: Phantom classes (at most 4).
        sites: Sites K of the federation.
        rounds: FedAvg rounds.
        train_per_site: Phantoms each site trains on (its pool; identifiability is measured among them).
        val_images: Held-out phantoms for the global model's accuracy and AUC.
        learning_rate: Local SGD learning rate.
        clip_norm: Client-DP clip norm C of a whole update; DP-SGD's per-sample clip norm.
        delta: δ for which client-DP ε is reported.
        audited_sites: How many sites' updates are audited in each audited round (the first ones).
        audited_rounds: Rounds whose updates are audited (early rounds leak most).
        audit: The audit plan's budget.
        seed: Base seed of data, network, noise and attack.
        engine: Where each cell's federation runs.
    """

    image_size: int = 32
    num_classes: int = 4
    sites: int = 3
    rounds: int = 20
    train_per_site: int = 16
    val_images: int = 64
    learning_rate: float = 0.05
    clip_norm: float = 0.5
    delta: float = 1e-5
    audited_sites: int = 1
    audited_rounds: tuple[int, ...] = (0,)
    audit: AuditBudget = field(default_factory=AuditBudget)
    seed: int = 0
    engine: Engine = Engine.IN_PROCESS

    def __post_init__(self) -> None:
        object.__setattr__(self, "engine", Engine(self.engine))
        for label, low in (("image_size", 16), ("num_classes", 2), ("sites", 1), ("rounds", 1), ("val_images", 4)):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise MedPFLError(f"study {label} must be an integer >= {low}, got {value!r}", fix=f"set {label}")
        if self.num_classes > 4:
            raise MedPFLError("study num_classes must be at most 4 (phantom classes)", fix="use 2, 3 or 4")
        if not 1 <= self.audited_sites <= self.sites:
            raise MedPFLError(f"audited_sites must be in 1..{self.sites}", fix="audit at least one existing site")
        if any(r < 0 or r >= self.rounds for r in self.audited_rounds):
            raise MedPFLError(f"audited_rounds {self.audited_rounds} outside 0..{self.rounds - 1}", fix="fix them")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise MedPFLError(f"learning_rate must be > 0, got {self.learning_rate!r}", fix="e.g. 0.05")


@dataclass(frozen=True)
class StudyConfig:
    """A named study: the shared run and its cells, in order."""

    name: str
    run: RunConfig
    cells: tuple[CellConfig, ...]

    def to_json(self) -> dict[str, Any]:
        return {"schema": STUDY_SCHEMA, "name": self.name, "run": asdict(self.run), "cells": len(self.cells)}


def cell_key(run: RunConfig, cell: CellConfig) -> str:
    """The store key of ``cell`` under ``run``: SHA-256 over the schema and both configurations.

    The engine enters the key only when it is not the in-process default, so that cells stored before engines
    existed keep their keys while a simulator cell never matches an in-process one.
    """
    shared = asdict(run)
    if run.engine is Engine.IN_PROCESS:
        shared.pop("engine")
    payload = json.dumps({"schema": STUDY_SCHEMA, "run": shared, "cell": asdict(cell)}, sort_keys=True)
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()
