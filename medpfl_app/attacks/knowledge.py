"""What the attacker (an honest-but-curious server) knows about one site update, validated up front.

The attacks see only this object: architecture and weights, the update and the facts its meta declares. Facts the
meta does not declare are filled from declared worst-case assumptions and listed in ``assumed`` so every leakage
number can say which threat model produced it. The parts live beside it: `shared_update` (update kinds,
assumptions), `update_tensors` (names and tensors), `update_meta` (training facts), `knowledge_checks` (validation).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from medpfl_app.attacks.knowledge_checks import validate_knowledge
from medpfl_app.attacks.shared_update import WORST_CASE, Optimizer, UpdateKind, WorstCaseAssumptions
from medpfl_app.attacks.update_meta import read_training_facts
from medpfl_app.attacks.update_tensors import as_tensor, bn_running_stats_after, strip_prefix
from medpfl_app.errors import MedPFLError

__all__ = [
    "AttackerKnowledge",
    "Optimizer",
    "UpdateKind",
    "WorstCaseAssumptions",
    "knowledge_fields",
    "knowledge_from_update",
    "strip_prefix",
]


@dataclass(frozen=True, eq=False)
class AttackerKnowledge:
    """Everything an attack may use. Tensors are detached CPU float copies keyed by the bare network's names.

    Attributes:
        model: The architecture (weights are taken from ``weights``, never from the module).
        weights: Parameters and buffers before the update (the global model the site started from).
        update: The shared update for the parameters in it (a subset of the model's parameters is allowed).
        kind: Gradient or weight difference.
        image_shape: ``(C, H, W)`` of one training image.
        num_classes: Output classes of the model.
        batch_size: Images per local step.
        local_steps: Local optimisation steps behind a weight difference (1 for a gradient).
        learning_rate: Local learning rate η, or None when unknown.
        optimizer: The site's local optimizer.
        num_images: Distinct images behind the update; local steps cycle through them in batches of ``batch_size``.
        labels: The true labels when the threat model grants them, else None (they are then recovered).
        bn_running_stats: BatchNorm running statistics after the update (name → tensor), when the update carried them.
        bn_train_mode: Whether BatchNorm used batch statistics during the site's training.
        assumed: Names of the facts taken from `WorstCaseAssumptions` instead of the meta.
        ignored_keys: Update keys that belong to no network tensor (e.g. Lightning metric states).
    """

    model: nn.Module
    weights: Mapping[str, torch.Tensor]
    update: Mapping[str, torch.Tensor]
    kind: UpdateKind
    image_shape: tuple[int, ...]
    num_classes: int
    batch_size: int = 1
    local_steps: int = 1
    learning_rate: float | None = None
    optimizer: Optimizer = "sgd"
    num_images: int | None = None
    labels: torch.Tensor | None = None
    bn_running_stats: Mapping[str, torch.Tensor] | None = None
    bn_train_mode: bool = True
    assumed: tuple[str, ...] = ()
    ignored_keys: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        validate_knowledge(self)
        if self.num_images is None:
            object.__setattr__(self, "num_images", self.batch_size)

    @property
    def images(self) -> int:
        """Number of images the attack reconstructs."""
        return int(self.num_images or self.batch_size)

    def threat_model(self) -> dict[str, Any]:
        """A JSON-ready statement of what was known or assumed, attached to every result."""
        return {
            "attacker": "honest-but-curious server (knows architecture, weights before the update and the update)",
            "update_kind": self.kind.value,
            "image_shape": list(self.image_shape),
            "batch_size": self.batch_size,
            "local_steps": self.local_steps,
            "learning_rate": self.learning_rate,
            "optimizer": self.optimizer,
            "num_images": self.images,
            "labels_known": self.labels is not None,
            "bn_buffers_shared": bool(self.bn_running_stats),
            "bn_train_mode": self.bn_train_mode,
            "assumed_worst_case": list(self.assumed),
            "update_tensors": len(self.update),
        }


def knowledge_from_update(
    model: nn.Module,
    global_weights: Mapping[str, Any],
    update: Mapping[str, Any],
    meta: Mapping[str, Any] | None,
    *,
    image_shape: tuple[int, ...],
    num_classes: int | None = None,
    kind: UpdateKind = UpdateKind.WEIGHT_DIFF,
    prefix: str | None = "auto",
    labels: torch.Tensor | None = None,
    assumptions: WorstCaseAssumptions = WORST_CASE,
    require_meta: tuple[str, ...] = (),
    bn_train_mode: bool = True,
) -> AttackerKnowledge:
    """Build `AttackerKnowledge` from what an NVFlare server holds: weights, the received update and its meta.

    Args:
        model: The bare network (architecture); it is copied, never modified.
        global_weights: Name → array of the global model the site started from (prefix allowed).
        update: Name → array as received (prefix allowed; may hold BN buffers and ``num_batches_tracked``).
        meta: The update's plain-JSON meta: ``batch_size``, ``local_steps``, ``learning_rate``, ``optimizer``,
            ``num_train_images``, ``bn_buffers_included``, ``NUM_STEPS_CURRENT_ROUND``.
        image_shape: ``(C, H, W)`` of a training image.
        num_classes: Model outputs; read from the last linear layer when None.
        kind: Gradient or weight difference.
        prefix: Key prefix to strip (see `strip_prefix`).
        labels: True labels, only when the threat model grants them.
        assumptions: Values for facts the meta lacks (recorded in ``assumed``).
        require_meta: Meta facts that must be present (raises instead of assuming).
        bn_train_mode: Whether the site's BatchNorm layers ran in train mode.
    """
    meta = dict(meta or {})
    model = copy.deepcopy(model).cpu()
    state = model.state_dict()
    if not update:
        raise MedPFLError("the update is empty: there is nothing to attack", fix="pass the site's non-empty update")
    weights, param_update, buffer_update, ignored = _bare_tensors(model, global_weights, update, prefix)
    facts = read_training_facts(meta, buffer_update, kind, assumptions, require_meta)
    included = meta.get("bn_buffers_included", True)
    bn_stats = bn_running_stats_after(buffer_update, weights, state, kind) if included else {}
    return AttackerKnowledge(
        model=model,
        weights=weights,
        update=param_update,
        kind=kind,
        image_shape=tuple(int(v) for v in image_shape),
        num_classes=int(_output_classes(model) if num_classes is None else num_classes),
        batch_size=facts.batch_size,
        local_steps=facts.local_steps,
        learning_rate=None if facts.learning_rate is None else float(facts.learning_rate),
        optimizer=facts.optimizer,  # type: ignore[arg-type]
        num_images=facts.num_images,
        labels=labels,
        bn_running_stats=bn_stats or None,
        bn_train_mode=bn_train_mode,
        assumed=facts.assumed,
        ignored_keys=ignored,
    )


def _bare_tensors(
    model: nn.Module, global_weights: Mapping[str, Any], update: Mapping[str, Any], prefix: str | None
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[str, ...]]:
    """``(weights, parameter update, buffer update, ignored update keys)`` under the bare network's names.

    Floating-point weights and the parameter update become float32; buffers (BN statistics, step counters) keep
    their dtype.
    """
    model_keys = set(model.state_dict())
    bare_update, ignored = strip_prefix(update, model_keys, prefix)
    bare_weights, _ = strip_prefix(global_weights, model_keys, prefix)
    tensors = {name: as_tensor(name, value) for name, value in bare_update.items()}
    weights = {name: as_tensor(name, value) for name, value in bare_weights.items()}
    for name, value in weights.items():
        if value.is_floating_point():
            weights[name] = value.float()
    params = {name for name, _ in model.named_parameters()}
    param_update = {name: value.float() for name, value in tensors.items() if name in params}
    buffer_update = {name: value for name, value in tensors.items() if name not in params}
    return weights, param_update, buffer_update, ignored


def _output_classes(model: nn.Module) -> int:
    """Outputs of the model's last linear layer (its classes)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise MedPFLError("cannot infer num_classes: the model has no linear layer", fix="pass num_classes")
    return linears[-1].out_features


def knowledge_fields() -> list[str]:
    """Names of the `AttackerKnowledge` fields (for documentation and config checks)."""
    return [f.name for f in fields(AttackerKnowledge)]
