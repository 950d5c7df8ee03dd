"""The audit plan: which updates are attacked, by what, and at what budget (frozen, validated, plain JSON).

Cheap steps run first on every audited update (label recovery from the last layer, BatchNorm-statistics
exposure); then one optimisation attack with a fixed iteration budget, a wall-clock limit and early stopping on
the matching loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from medpfl_app.errors import MedPFLError


@dataclass(frozen=True, eq=False)
class AuditPlan:
    """What the audit worker does with each received update.

    Attributes:
        attack: Registered optimisation attack (``medpfl_app.attacks.ATTACKS``); ``none`` runs only the cheap steps.
        iterations: Optimiser steps of the attack (the fixed budget).
        restarts: Independent initialisations (best by matching loss).
        stop_loss: Early stopping once the matching loss is below this (0 disables it).
        time_limit_s: Wall-clock seconds one attack may use (None: iterations only). The attack stops after the
            step that crosses it and the record says ``stop_reason: time_limit``; it bounds how long the audit
            can hold the end of the run on a slow server.
        options: Further `MatchingConfig` fields for the attack (plain JSON), e.g. ``{"objective": "l2"}``.
        max_images: At most this many images are reconstructed per update. An update that covers more (large
            batch or many local steps) is attacked as ``max_images`` images against the update treated as one
            approximate gradient: a weaker, bounded attack, stated in the record's ``attack_budget``.
        max_local_steps: Above this many local steps the update is treated as one approximate gradient instead of
            unrolling the steps (unrolling memory and time grow with the steps).
        every_n_rounds: Audit rounds 0, n, 2n, … (1: every round).
        sites: Only these sites (empty: every site).
        score_timeout_s: How long the server waits for a site's scores over the auxiliary channel.
        seed: Seed of the attack's initialisation.
    """

    attack: str = "gradinv"
    iterations: int = 500
    restarts: int = 1
    stop_loss: float = 1e-10
    time_limit_s: float | None = 120.0
    #: Exact-gradient matching for one-step SGD updates (L2, unsigned Adam lr 0.1, constant step, no TV prior):
    #: on the demo's sigmoid LeNet at 32 px it reaches SSIM > 0.9999 on one image in 500 steps for every seed
    #: tried, where the cosine/signed/TV preset stalls near 0.6 and a TV prior dominates the tiny L2 loss.
    options: Mapping[str, Any] = field(
        default_factory=lambda: {"objective": "l2", "signed": False, "lr": 0.1, "tv": 0.0, "lr_decay": False}
    )
    max_images: int = 4
    max_local_steps: int = 1
    every_n_rounds: int = 1
    sites: tuple[str, ...] = ()
    score_timeout_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        from medpfl_app.attacks import ATTACKS

        if self.attack != "none" and self.attack not in ATTACKS.names():
            raise MedPFLError(
                f"unknown audit attack {self.attack!r}", fix=f"use 'none' or one of {', '.join(ATTACKS.names())}"
            )
        for label in ("iterations", "restarts", "max_images", "max_local_steps", "every_n_rounds"):
            value = getattr(self, label)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MedPFLError(f"audit plan {label} must be an integer >= 1, got {value!r}", fix=f"set {label} >= 1")
        if self.time_limit_s is not None and (isinstance(self.time_limit_s, bool) or not self.time_limit_s > 0):
            raise MedPFLError(
                f"audit plan time_limit_s must be > 0 seconds or null, got {self.time_limit_s!r}",
                fix="e.g. 120, or null for no wall-clock limit",
            )
        if not self.stop_loss >= 0:
            raise MedPFLError("audit plan stop_loss must be >= 0", fix="use 0 to disable early stopping")
        from medpfl_app.attacks import MatchingConfig

        known = {f.name for f in fields(MatchingConfig)} - {"iterations", "restarts", "stop_loss", "seed", "time_limit_s"}
        unknown = sorted(set(self.options) - known)
        if unknown:
            raise MedPFLError(f"unknown audit attack option(s) {unknown}", fix=f"use fields of MatchingConfig: {sorted(known)}")
        object.__setattr__(self, "options", dict(self.options))
        if not self.score_timeout_s > 0:
            raise MedPFLError("audit plan score_timeout_s must be > 0", fix="e.g. 30")
        object.__setattr__(self, "sites", tuple(self.sites))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AuditPlan:
        """A plan from plain JSON (a job's filter args); unknown keys are refused."""
        values = dict(values or {})
        known = set(asdict(cls()))
        unknown = sorted(set(values) - known)
        if unknown:
            raise MedPFLError(f"unknown audit plan key(s): {', '.join(unknown)}", fix=f"use {sorted(known)}")
        if "sites" in values:
            values["sites"] = tuple(values["sites"] or ())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["sites"] = list(self.sites)
        return values

    def selects(self, site: str | None, round_number: int | None) -> bool:
        """Whether the plan audits ``site``'s update of ``round_number`` (unknown round: audited)."""
        if self.sites and site not in self.sites:
            return False
        return round_number is None or int(round_number) % self.every_n_rounds == 0
