"""The study presets: ``small`` (2 CPU cores, < 15 min), ``seed`` (the seed paper's grid with utility), ``full``."""

from __future__ import annotations

import itertools
from enum import StrEnum

from medpfl_app.errors import MedPFLError
from medpfl_app.experiments.study.config import (
    AuditBudget,
    CellConfig,
    DefenseKind,
    DefenseSetting,
    RunConfig,
    StudyConfig,
    WeightInit,
)


class Preset(StrEnum):
    """Named studies."""

    SMALL = "small"
    SEED = "seed"
    FULL = "full"


def _d(kind: DefenseKind, strength: float | None = None) -> DefenseSetting:
    return DefenseSetting(kind, strength)


#: The defenses the small preset sweeps on each network; strengths act on the weight difference (lr × gradient).
SMALL_DEFENSES: tuple[DefenseSetting, ...] = (
    _d(DefenseKind.NONE),
    _d(DefenseKind.LAPLACE, 1e-4),
    _d(DefenseKind.LAPLACE, 1e-3),
    _d(DefenseKind.LAPLACE, 1e-2),
    _d(DefenseKind.GAUSSIAN, 1e-3),
    _d(DefenseKind.CLIENT_DP, 1.0),
    _d(DefenseKind.DP_SGD, 1.0),
    _d(DefenseKind.TOP_K, 0.1),
    _d(DefenseKind.QUANTIZATION, 4),
)
FULL_DEFENSES: tuple[DefenseSetting, ...] = (
    *SMALL_DEFENSES,
    _d(DefenseKind.GAUSSIAN, 1e-2),
    _d(DefenseKind.CLIENT_DP, 0.1),
    _d(DefenseKind.CLIENT_DP, 0.3),
    _d(DefenseKind.CLIENT_DP, 3.0),
    _d(DefenseKind.DP_SGD, 0.5),
    _d(DefenseKind.DP_SGD, 2.0),
    _d(DefenseKind.TOP_K, 0.01),
    _d(DefenseKind.QUANTIZATION, 2),
    _d(DefenseKind.BN_LOCAL),
)
#: The seed paper's Laplace scales b = 1/r, r ∈ {100, 200, 300, 400} (`medpfl_app.experiments.grid.GridConfig`).
SEED_SCALES: tuple[float, ...] = (0.01, 0.005, 0.0033, 0.0025)


def small() -> StudyConfig:
    """Sized for 2 shared CPU cores (< 15 min): 32 px, 4 classes, 3 sites, 60 rounds, all round-0 updates audited.

    Two networks, both with the job's default initialisation: the seed paper's sigmoid LeNet, which leaks (the
    audit inverts its batch-1 update) but barely learns the task in 60 rounds, and the BatchNorm ``small_cnn``,
    which learns it but resists this attack budget. Each gets the defense sweep at its natural setting (LeNet:
    B = 1, S = 1; small_cnn: B = 4, S = 1); the LeNet also runs B ∈ {1, 4, 16} × S ∈ {1, 5} without a defense
    and with Laplace noise at B = 4 (where it still leaks); BN-local (``drop_bn_stats``) is compared with sharing
    BN statistics on small_cnn under the BN-prior attack and gradinv.
    """
    run = RunConfig(
        num_classes=4,
        sites=3,
        rounds=60,
        train_per_site=32,
        learning_rate=0.05,
        clip_norm=1.0,
        audited_sites=3,
        audit=AuditBudget(time_limit_s=10.0),
    )
    cells = [CellConfig("lenet_sigmoid", d, 1, 1) for d in SMALL_DEFENSES]
    cells += [
        CellConfig("lenet_sigmoid", _d(DefenseKind.NONE), b, s)
        for b, s in itertools.product((1, 4, 16), (1, 5))
        if (b, s) != (1, 1)
    ]
    cells += [CellConfig("lenet_sigmoid", _d(DefenseKind.LAPLACE, b), 4, 1) for b in (1e-4, 1e-3)]
    cells += [CellConfig("small_cnn", d, 4, 1) for d in SMALL_DEFENSES]
    cells += [
        CellConfig("small_cnn", _d(DefenseKind.NONE), 4, 1, attack="bn_prior"),
        CellConfig("small_cnn", _d(DefenseKind.BN_LOCAL), 4, 1, attack="bn_prior"),
        CellConfig("small_cnn", _d(DefenseKind.BN_LOCAL), 4, 1),
    ]
    return StudyConfig("small", run, tuple(cells))


def seed() -> StudyConfig:
    """The seed setting with utility: sigmoid LeNet, 32 px, 4 classes, batch 1, one step, Laplace b as in the grid.

    The seed paper's U(−0.5, 0.5) initialisation; every site's round-0 update is audited. lr = 1 makes a one-step weight difference equal to minus the gradient, so the Laplace b lands on the same
    quantity as in the seed paper (noise on the gradient).
    """
    run = RunConfig(num_classes=4, sites=3, rounds=30, train_per_site=16, learning_rate=1.0, audited_sites=3)
    defenses = (_d(DefenseKind.NONE), *(_d(DefenseKind.LAPLACE, b) for b in SEED_SCALES))
    cells = tuple(CellConfig("lenet_sigmoid", d, 1, 1, init=WeightInit.UNIFORM) for d in defenses)
    return StudyConfig("seed", run, cells)


def full() -> StudyConfig:
    """The whole sweep (hours on a workstation): every defense × B ∈ {1, 4, 16} × S ∈ {1, 5} × attack."""
    run = RunConfig(
        num_classes=4,
        sites=5,
        rounds=100,
        train_per_site=64,
        learning_rate=0.3,
        audited_sites=5,
        audited_rounds=(0, 50),
        audit=AuditBudget(time_limit_s=120.0),
    )
    cells = [
        CellConfig(network, d, b, s, attack=attack)
        for network, attack in (("lenet_sigmoid", "gradinv"), ("small_cnn", "bn_prior"))
        for d, b, s in itertools.product(FULL_DEFENSES, (1, 4, 16), (1, 5))
    ]
    return StudyConfig("full", run, tuple(cells))


BUILDERS = {Preset.SMALL: small, Preset.SEED: seed, Preset.FULL: full}


def preset(name: str) -> StudyConfig:
    """The study of preset ``name``."""
    try:
        return BUILDERS[Preset(name)]()
    except ValueError:
        raise MedPFLError(
            f"unknown study preset {name!r}", fix=f"use one of {', '.join(p.value for p in Preset)}"
        ) from None
