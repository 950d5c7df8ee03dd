"""How the attack simulates a site's update (gradient, approximate, unrolled) and which tensors it must match."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import torch

from medpfl_app.attacks.knowledge import AttackerKnowledge, UpdateKind
from medpfl_app.errors import MedPFLError

UpdateMode = Literal["gradient", "approximate", "unrolled"]
Params = dict[str, torch.Tensor]


def resolve_mode(knowledge: AttackerKnowledge, requested: str) -> UpdateMode:
    """Pick how to simulate the update: a gradient is matched directly; a weight difference approximately or unrolled."""
    if knowledge.kind is UpdateKind.GRADIENT:
        return "gradient"
    if requested == "approximate":
        return "approximate"
    if requested == "unrolled":
        if knowledge.learning_rate is None:
            raise MedPFLError(
                "unrolled FedAvg inversion needs the site's learning rate, and the update's meta lacks it",
                fix="send 'learning_rate' in the update meta, or use update_mode='approximate'",
            )
        return "unrolled"
    if requested != "auto":
        raise MedPFLError(f"unknown update_mode {requested!r}", fix="use auto, approximate or unrolled")
    return "unrolled" if knowledge.learning_rate is not None and knowledge.local_steps > 1 else "approximate"


def target_update(knowledge: AttackerKnowledge, mode: UpdateMode) -> Params:
    """The tensors the simulation must match: the gradient, ``−Δ/(η·S)`` (approximate) or ``Δ`` (unrolled)."""
    if mode == "gradient" or mode == "unrolled":
        return {n: v.float() for n, v in knowledge.update.items()}
    scale = knowledge.local_steps * (knowledge.learning_rate or 1.0)
    return {n: -v.float() / scale for n, v in knowledge.update.items()}


def update_as_gradient(knowledge: AttackerKnowledge) -> Mapping[str, torch.Tensor]:
    """A gradient-like view of the update (for label recovery): the gradient itself or ``−Δ``."""
    if knowledge.kind is UpdateKind.GRADIENT:
        return knowledge.update
    return {n: -v for n, v in knowledge.update.items()}
