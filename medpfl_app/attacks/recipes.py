"""The published attacks as named presets of the shared engine, found through `ATTACKS`.

Each class fixes a recipe (see ``shared/notes/attacks.md`` §2) and accepts budget overrides; all run on any
``nn.Module`` classifier through `AttackerKnowledge`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch

from medpfl_app.attacks.engine import MatchingConfig, run_matching
from medpfl_app.attacks.knowledge import AttackerKnowledge
from medpfl_app.attacks.result import AttackResult
from medpfl_app.errors import MedPFLError
from medpfl_app.registry import Registry


class Attack:
    """A gradient-inversion attack: a name, a default recipe, and ``run(knowledge) -> AttackResult``.

    Args:
        config: A complete configuration; when None the preset's defaults are used.
        **overrides: Fields of `MatchingConfig` to change (e.g. ``iterations=100``).
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[MatchingConfig] = MatchingConfig()
    summary: ClassVar[str] = ""

    def __init__(self, config: MatchingConfig | None = None, **overrides: Any) -> None:
        base = config or self.defaults
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(MatchingConfig)})
        if unknown:
            raise MedPFLError(
                f"unknown attack option(s) {', '.join(unknown)} for {self.name!r}",
                fix=f"use fields of MatchingConfig: {', '.join(f.name for f in dataclasses.fields(MatchingConfig))}",
            )
        self.config = dataclasses.replace(base, **overrides)

    def check(self, knowledge: AttackerKnowledge) -> None:
        """Raise a `MedPFLError` when ``knowledge`` lacks what this attack needs."""

    def run(
        self, knowledge: AttackerKnowledge, *, prior: torch.Tensor | None = None, progress: bool = False
    ) -> AttackResult:
        """Reconstruct the images behind ``knowledge.update``."""
        self.check(knowledge)
        return run_matching(self.name, knowledge, self.config, prior=prior, progress=progress)


ATTACKS: Registry[type[Attack]] = Registry("attack")

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["init=randn", "iterations=50"]`` as typed `MatchingConfig` overrides (the CLI's ``--set``).

    Values are converted to the field's declared type (int, float, bool; ``none`` for optional fields; else text);
    NaN and infinities are refused here, and the config itself then checks ranges and allowed choices.
    """
    fields = {f.name: str(f.type) for f in dataclasses.fields(MatchingConfig)}
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise MedPFLError(f"recipe override {pair!r} is not KEY=VALUE", fix="write e.g. --set init=randn")
        if key not in fields:
            raise MedPFLError(f"unknown recipe field {key!r} in --set {pair}", fix=f"use one of: {', '.join(fields)}")
        declared = fields[key]  # e.g. "int", "float | None", "bool", "Literal[...]"
        kind = next((name for name in ("bool", "int", "float") if declared.split(" |")[0] == name), "text")
        try:
            if "None" in declared and text.lower() == "none":
                out[key] = None
            elif kind == "bool":
                if text.lower() not in _TRUE + _FALSE:
                    raise ValueError(text)
                out[key] = text.lower() in _TRUE
            elif kind == "int":
                out[key] = int(text)
            elif kind == "float":
                out[key] = float(text)
                if not math.isfinite(out[key]):
                    raise MedPFLError(
                        f"--set {pair}: {text!r} is not a finite number",
                        fix=f"give {key} a finite float (not nan or inf)" + (" or none" if "None" in declared else ""),
                    )
            else:
                out[key] = text
        except ValueError:
            expected = "true/false" if kind == "bool" else kind
            raise MedPFLError(
                f"--set {pair}: {text!r} is not a valid {expected}",
                fix=f"give {key} a {expected} value" + (" or none" if "None" in declared else ""),
            ) from None
    return out


def build_attack(name: str, **overrides: Any) -> Attack:
    """The attack registered as ``name`` with its preset recipe and ``overrides``."""
    return ATTACKS.get(name)(**overrides)


@ATTACKS.register("dlg")
class DLG(Attack):
    """Deep Leakage from Gradients (Zhu et al. 2019): image and soft label optimised jointly, L2 matching, L-BFGS."""

    name = "dlg"
    summary = "image + soft label jointly, L2 gradient matching, L-BFGS"
    defaults = MatchingConfig(
        iterations=300,
        lbfgs_max_iter=20,
        optimizer="lbfgs",
        lr=1.0,
        objective="l2",
        init="randn",
        labels="optimize",
        stop_loss=1e-6,
    )


@ATTACKS.register("idlg")
class IDLG(Attack):
    """Improved DLG (Zhao et al. 2020): the label from the last layer's gradient, then image-only L2 matching.

    The dummy image starts from U(0, 1), the range of the (un-normalised) images, rather than the N(0, 1) of the
    iDLG code: on the seed setting (sigmoid LeNet, 32², 20 demo images, ≤ 300 quasi-Newton updates) this lifted
    mean SSIM from 0.87 to 0.98 and the success rate from 70 % to 95 % (three seeds; ``benchmarks/RESULTS.md``).
    ``init="randn"`` restores the original.
    """

    name = "idlg"
    summary = "analytic label, then image-only L2 gradient matching, L-BFGS"
    defaults = MatchingConfig(
        iterations=300, lbfgs_max_iter=20, optimizer="lbfgs", lr=1.0, objective="l2", init="rand", stop_loss=1e-6
    )


@ATTACKS.register("cpl")
class CPL(Attack):
    """Wei et al. 2020: analytic label, patterned (tiled) initialisation, L2 matching, L-BFGS."""

    name = "cpl"
    summary = "analytic label, 2x2-tiled random init, L2 gradient matching, L-BFGS"
    defaults = MatchingConfig(
        iterations=300, lbfgs_max_iter=20, optimizer="lbfgs", lr=1.0, objective="l2", init="patterned", stop_loss=1e-6
    )


@ATTACKS.register("gradinv")
class InvertingGradients(Attack):
    """Inverting Gradients (Geiping et al. 2020): cosine matching, signed Adam, step decay, box, TV, restarts."""

    name = "gradinv"
    summary = "cosine matching, signed Adam with step decay, [0,1] box, TV prior, best of R restarts"
    defaults = MatchingConfig(
        iterations=1000,
        restarts=4,
        optimizer="adam",
        lr=0.1,
        objective="cosine",
        signed=True,
        lr_decay=True,
        tv=1e-4,
        box=True,
        init="rand",
    )


@ATTACKS.register("fedavg")
class FedAvgInversion(Attack):
    """FedAvg-update inversion: unroll the site's S local steps on dummy data and match the weight difference.

    ``update_mode='approximate'`` instead matches ``−Δ/(η·S)`` as if it were one gradient.
    """

    name = "fedavg"
    summary = "simulate S local steps (unrolled) and match the weight difference by cosine"
    defaults = dataclasses.replace(InvertingGradients.defaults, update_mode="unrolled")


@ATTACKS.register("fedavg_approx")
class FedAvgApproximate(Attack):
    """FedAvg-update inversion treating ``−Δ/(η·S)`` as one gradient (cheap; exact only for S = 1)."""

    name = "fedavg_approx"
    summary = "match -delta/(lr*steps) as an approximate gradient by cosine"
    defaults = dataclasses.replace(InvertingGradients.defaults, update_mode="approximate")


class _NeedsBN(Attack):
    def check(self, knowledge: AttackerKnowledge) -> None:
        if not knowledge.bn_running_stats:
            raise MedPFLError(
                f"attack {self.name!r} needs BatchNorm running statistics in the update, and it has none",
                fix="attack an update that shares BN buffers (meta bn_buffers_included) or choose another attack",
            )
        if not knowledge.bn_train_mode:
            raise MedPFLError(
                f"attack {self.name!r} needs BatchNorm in train mode (batch statistics)",
                fix="set bn_train_mode=True when the site trains with BN in train mode, or choose another attack",
            )


@ATTACKS.register("bn_prior")
class BNStatisticsPrior(_NeedsBN):
    """Hatamizadeh et al. 2023: update matching plus a term matching the BN batch statistics recovered from the
    running-buffer update, TV and L2 priors, Adam."""

    name = "bn_prior"
    summary = "cosine update matching + BN batch-statistics matching from shared running buffers + TV"
    defaults = MatchingConfig(
        iterations=1000,
        restarts=4,
        optimizer="adam",
        lr=0.1,
        objective="cosine",
        signed=True,
        lr_decay=True,
        tv=1e-4,
        l2=0.0,
        bn=0.1,
        box=True,
        init="rand",
    )


@ATTACKS.register("bn_only")
class BNStatisticsOnly(_NeedsBN):
    """What the BN buffers alone reveal: match only the recovered BN batch statistics (no update matching)."""

    name = "bn_only"
    summary = "match only the BN batch statistics recovered from shared running buffers (+ TV)"
    defaults = dataclasses.replace(BNStatisticsPrior.defaults, gradient_weight=0.0, bn=1.0)
