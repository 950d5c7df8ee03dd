"""The recipe and budget of a gradient-matching attack (`MatchingConfig`), validated when it is made."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from medpfl_app.attacks.labels import LabelMethod
from medpfl_app.errors import MedPFLError

Init = Literal["randn", "rand", "patterned", "prior"]


@dataclass(frozen=True)
class MatchingConfig:
    """Budget and recipe of a gradient-matching attack; every attack preset is one of these.

    Attributes:
        iterations: Optimiser steps. An Adam step is one matching-loss evaluation; an L-BFGS step runs up to
            ``lbfgs_max_iter`` quasi-Newton updates (torch's ``max_iter``, 20 in the DLG/iDLG/CPL code).
        lbfgs_max_iter: Quasi-Newton updates per L-BFGS step.
        line_search: L-BFGS step length: ``none`` (the fixed ``lr``, as the DLG/iDLG/CPL code) or ``strong_wolfe``
            (torch's strong-Wolfe line search: more evaluations per update, far fewer updates to converge).
        restarts: Independent initialisations, simulated together; the best by matching loss is returned.
        optimizer: ``lbfgs`` (DLG/iDLG/CPL) or ``adam`` (Inverting Gradients and later).
        lr: Step size.
        objective: ``l2`` (sum of squared differences relative to ``‖target‖²``) or ``cosine`` (1 − cosine
            similarity over the layers).
        signed: Step along the sign of the image gradient (Inverting Gradients).
        lr_decay: Multiply the step size by 0.1 at 3/8, 5/8 and 7/8 of the iterations.
        tv: Weight of the anisotropic total-variation prior.
        l2: Weight of the squared-norm image prior.
        bn: Weight of the BatchNorm-statistics term (needs BN buffers in the update).
        gradient_weight: Weight of the update-matching term (0 = BN statistics and priors only).
        box: Clamp images to [0, 1] after every step.
        init: ``randn`` N(0,1), ``rand`` U(0,1), ``patterned`` (CPL: a half-size random tile repeated 2×2),
            ``prior`` (a given image plus small noise).
        labels: ``auto`` (known labels if granted, else recovered), ``recover`` (always recover) or ``optimize``
            (DLG: soft labels optimised jointly).
        label_method: Method for label recovery (see `medpfl_app.attacks.labels.recover_labels`).
        top_layers: Match only the k update tensors with the largest norm (None = all).
        update_mode: For weight differences: ``auto``, ``approximate`` (−Δ/(η·S) as a gradient) or ``unrolled``
            (simulate the S local steps and match Δ).
        stop_loss: Stop once every restart's matching loss is below this and at least
            `~medpfl_app.attacks.convergence.MIN_REDUCTION` times below its value at the initialisation (0 disables
            early stopping). The loss is relative (see `matching_loss`), so the tolerance does not depend on the
            update's scale; the reduction condition keeps it meaningful where the initialisation already matches
            closely (random noise on a freshly initialised sigmoid LeNet: ~5e-6, below iDLG's 1e-6 after a
            five-fold reduction).
        time_limit_s: Stop once this many seconds of wall time were used (None: no limit). Checked between
            optimiser steps and before every evaluation of the matching loss inside a step (an L-BFGS step runs up
            to ``lbfgs_max_iter`` of them, more with a line search), so the limit is overrun by at most the one
            evaluation in progress when it passes. Every step runs at least one evaluation, and a run stopped by
            the limit is not re-scored after its last evaluation.
        batched: Simulate all restarts in one vectorised call (False runs them one after another; same results).
        seed: Seed of the initialisation.
    """

    iterations: int = 300
    lbfgs_max_iter: int = 1
    line_search: Literal["none", "strong_wolfe"] = "none"
    restarts: int = 1
    optimizer: Literal["lbfgs", "adam"] = "lbfgs"
    lr: float = 1.0
    objective: Literal["l2", "cosine"] = "l2"
    signed: bool = False
    lr_decay: bool = False
    tv: float = 0.0
    l2: float = 0.0
    bn: float = 0.0
    gradient_weight: float = 1.0
    box: bool = False
    init: Init = "randn"
    labels: Literal["auto", "recover", "optimize"] = "auto"
    label_method: LabelMethod = "auto"
    top_layers: int | None = None
    update_mode: Literal["auto", "approximate", "unrolled"] = "auto"
    stop_loss: float = 0.0
    time_limit_s: float | None = None
    batched: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        import numbers

        def is_number(value: object) -> bool:  # NumPy scalars too; a bool is not a number here
            return isinstance(value, numbers.Real) and not isinstance(value, bool)

        def is_whole(value: object) -> bool:
            return isinstance(value, numbers.Integral) and not isinstance(value, bool)

        max_seed = 2**63 - 1  # torch.Generator.manual_seed takes any non-negative int64
        for name in ("iterations", "restarts", "lbfgs_max_iter"):
            value = getattr(self, name)
            if not is_whole(value) or value < 1:
                raise MedPFLError(
                    f"attack {name} must be a whole number >= 1, got {value!r}",
                    fix=f"give the attack a positive budget (e.g. {name}=1)",
                )
        if self.top_layers is not None and (not is_whole(self.top_layers) or self.top_layers < 1):
            raise MedPFLError(
                f"top_layers must be a whole number >= 1 or None, got {self.top_layers!r}",
                fix="match the k update tensors with the largest norm with top_layers=k (k >= 1), or all with none",
            )
        if not is_whole(self.seed) or not 0 <= self.seed <= max_seed:
            raise MedPFLError(
                f"attack seed must be a whole number in [0, 2**63 - 1], got {self.seed!r}", fix="set e.g. seed=0"
            )
        if self.time_limit_s is not None and not (
            is_number(self.time_limit_s) and self.time_limit_s > 0 and math.isfinite(self.time_limit_s)
        ):
            raise MedPFLError(
                f"time_limit_s must be a positive, finite number of seconds, got {self.time_limit_s!r}",
                fix="set e.g. time_limit_s=60, or None for no limit",
            )
        if not (is_number(self.lr) and self.lr > 0 and math.isfinite(self.lr)):
            raise MedPFLError(f"attack lr must be a positive, finite number, got {self.lr!r}", fix="set e.g. lr=0.1")
        for name in ("tv", "l2", "bn", "gradient_weight", "stop_loss"):
            value = getattr(self, name)
            if not (is_number(value) and value >= 0 and math.isfinite(value)):  # NaN fails every comparison
                raise MedPFLError(f"{name} must be a finite number >= 0, got {value!r}", fix=f"set {name} >= 0, e.g. 0")
        choices = {
            "optimizer": ("lbfgs", "adam"),
            "line_search": ("none", "strong_wolfe"),
            "objective": ("l2", "cosine"),
            "init": ("randn", "rand", "patterned", "prior"),
            "labels": ("auto", "recover", "optimize"),
            "update_mode": ("auto", "approximate", "unrolled"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise MedPFLError(f"unknown {name} {getattr(self, name)!r}", fix=f"use one of: {', '.join(allowed)}")
