"""What the attacker (an honest-but-curious server) knows about one site update, validated up front.

The attacks see only this object: architecture and weights, the update and the facts its meta declares. Facts the
meta does not declare are filled from declared worst-case assumptions and listed in ``assumed`` so every leakage
number can say which threat model produced it.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from medpfl_app.errors import MedPFLError

Optimizer = Literal["sgd", "adam"]


class UpdateKind(str, enum.Enum):  # noqa: UP042 -- a StrEnum would change str(member), which callers print
    """How the shared update relates to the client's training."""

    GRADIENT = "gradient"  # one gradient of the mean loss on one batch (FedSGD)
    WEIGHT_DIFF = "weight_diff"  # weights after local training minus weights before (FedAvg)


@dataclass(frozen=True)
class WorstCaseAssumptions:
    """Facts assumed when the update's meta does not declare them; chosen to favour the attacker.

    One image per update is the most leak-prone case, and one local step keeps the update closest to a gradient, so
    the audit errs towards reporting more leakage, never less.
    """

    batch_size: int = 1
    local_steps: int = 1
    optimizer: Optimizer = "sgd"
    learning_rate: float | None = None  # unknown: only scale-free (cosine) matching of an approximate gradient


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
        _validate(self)
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


def _validate(k: AttackerKnowledge) -> None:
    if not k.update:
        raise MedPFLError(
            "the update is empty: there is nothing to attack",
            fix="pass the site's update as a non-empty dict of parameter name -> array",
        )
    for label, count in (("batch_size", k.batch_size), ("local_steps", k.local_steps), ("num_classes", k.num_classes)):
        if int(count) < 1:
            raise MedPFLError(f"{label} must be a positive integer, got {count!r}", fix=f"declare a positive {label}")
    if k.num_images is not None and k.num_images < 1:
        raise MedPFLError(f"num_images must be positive, got {k.num_images}", fix="declare num_train_images >= 1")
    if k.learning_rate is not None and not (np.isfinite(k.learning_rate) and k.learning_rate > 0):
        raise MedPFLError(
            f"learning_rate must be a positive finite number, got {k.learning_rate!r}",
            fix="declare the site's local learning rate (meta 'learning_rate') or leave it out",
        )
    if k.optimizer not in ("sgd", "adam"):
        raise MedPFLError(f"unsupported local optimizer {k.optimizer!r}", fix="declare optimizer 'sgd' or 'adam'")
    if len(k.image_shape) not in (3, 4) or min(k.image_shape) < 1:
        raise MedPFLError(
            f"image_shape must be (C, H, W) or (C, D, H, W), got {k.image_shape!r}", fix="pass e.g. (1, 32, 32)"
        )
    params = dict(k.model.named_parameters())
    state = k.model.state_dict()
    for name, value in k.update.items():
        if name not in params:
            raise MedPFLError(
                f"update tensor {name!r} is not a parameter of the {type(k.model).__name__} model",
                fix="build the knowledge with knowledge_from_update(..., prefix=...) to strip a prefix such as 'net.'",
            )
        if tuple(value.shape) != tuple(params[name].shape):
            raise MedPFLError(
                f"update tensor {name!r} has shape {tuple(value.shape)} but the model expects {tuple(params[name].shape)}",
                fix="attack with the same architecture (network, channels, classes, image size) the site trained",
            )
        if not torch.isfinite(value).all():
            raise MedPFLError(f"update tensor {name!r} contains NaN or Inf", fix="drop the corrupt update")
    for name, value in k.weights.items():
        if name in state and tuple(value.shape) != tuple(state[name].shape):
            raise MedPFLError(
                f"weight {name!r} has shape {tuple(value.shape)} but the model expects {tuple(state[name].shape)}",
                fix="pass the global weights of the same architecture",
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise MedPFLError(f"weight {name!r} contains NaN or Inf", fix="pass the finite global weights")
    missing = [name for name in params if name not in k.weights]
    if missing:
        raise MedPFLError(
            f"the weights before the update lack {len(missing)} parameters, e.g. {missing[0]!r}",
            fix="pass the full global model the site started from",
        )
    for name, value in (k.bn_running_stats or {}).items():
        if name not in state or tuple(value.shape) != tuple(state[name].shape):
            raise MedPFLError(f"BN buffer {name!r} does not match the model", fix="pass the model's own BN buffers")
        if not torch.isfinite(value).all():
            raise MedPFLError(f"BN buffer {name!r} contains NaN or Inf", fix="drop the corrupt update")
    if k.labels is not None and (
        k.labels.ndim != 1
        or k.labels.numel() != (k.num_images or k.batch_size)
        or k.labels.min() < 0
        or k.labels.max() >= k.num_classes
    ):
        raise MedPFLError(
            f"known labels {k.labels.tolist()} do not fit {k.num_images or k.batch_size} images of {k.num_classes} classes",
            fix="pass one label in [0, num_classes) per image",
        )


def _as_tensor(name: str, value: Any) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError) as error:
        raise MedPFLError(f"update entry {name!r} is not an array ({error})", fix="send numeric arrays") from None
    return tensor.detach().cpu().clone()


def strip_prefix(
    state: Mapping[str, Any], model_keys: set[str], prefix: str | None = "auto"
) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Rename ``state``'s keys to the bare network's names and set aside keys that belong to no network tensor.

    Args:
        state: Arrays keyed as sent, e.g. ``net.features.0.weight`` from a Lightning module's state_dict.
        model_keys: The bare network's state_dict keys.
        prefix: The prefix to strip; "auto" finds the one under which the most keys match; None or "" strips none.

    Returns:
        The renamed entries and the keys that were ignored.
    """
    if prefix == "auto":
        votes: dict[str, int] = {}
        for key in state:
            for model_key in model_keys:
                if key.endswith(model_key) and (len(key) == len(model_key) or key[-len(model_key) - 1] == "."):
                    candidate = key[: len(key) - len(model_key)]
                    votes[candidate] = votes.get(candidate, 0) + 1
        prefix = max(votes, key=lambda p: (votes[p], -len(p))) if votes else ""
    prefix = prefix or ""
    renamed: dict[str, Any] = {}
    ignored: list[str] = []
    for key, value in state.items():
        bare = key[len(prefix) :] if key.startswith(prefix) else None
        if bare is None or (bare not in model_keys and not prefix):
            ignored.append(key)
        elif bare not in model_keys:
            raise MedPFLError(
                f"update key {key!r} (prefix {prefix!r} stripped: {bare!r}) is not a tensor of the model",
                fix="attack with the architecture the site trained, or pass the right prefix",
            )
        else:
            renamed[bare] = value
    return renamed, tuple(ignored)


_META_FLOAT = ("learning_rate", "lr")


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
    assumptions: WorstCaseAssumptions = WorstCaseAssumptions(),
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
    model_keys = set(state)
    if not update:
        raise MedPFLError("the update is empty: there is nothing to attack", fix="pass the site's non-empty update")
    bare_update, ignored = strip_prefix(update, model_keys, prefix)
    bare_weights, _ = strip_prefix(global_weights, model_keys, prefix)
    tensors = {name: _as_tensor(name, value) for name, value in bare_update.items()}
    weights = {name: _as_tensor(name, value) for name, value in bare_weights.items()}
    for name, value in weights.items():
        if value.is_floating_point():
            weights[name] = value.float()
    params = {name for name, _ in model.named_parameters()}
    param_update = {name: value.float() for name, value in tensors.items() if name in params}
    buffer_update = {name: value for name, value in tensors.items() if name not in params}

    for key in require_meta:
        if meta.get(key) is None:
            raise MedPFLError(
                f"the update's meta lacks the required fact {key!r}",
                fix=f"have the site executor send {key!r} in the update meta, or drop it from require_meta",
            )
    assumed: list[str] = []

    def fact(keys: tuple[str, ...], default: Any, label: str) -> Any:
        for key in keys:
            if meta.get(key) is not None:
                return meta[key]
        assumed.append(label)
        return default

    steps_tracked = [
        int(value.reshape(-1)[0]) for name, value in buffer_update.items() if name.endswith("num_batches_tracked")
    ]
    default_steps = steps_tracked[0] if steps_tracked and kind is UpdateKind.WEIGHT_DIFF else assumptions.local_steps
    batch_size = int(fact(("batch_size",), assumptions.batch_size, "batch_size"))
    if kind is UpdateKind.GRADIENT:
        local_steps = 1
    elif meta.get("local_steps") is None and meta.get("NUM_STEPS_CURRENT_ROUND") is None and steps_tracked:
        local_steps = default_steps  # BN counted the steps: inferred, not assumed
    else:
        local_steps = int(fact(("local_steps", "NUM_STEPS_CURRENT_ROUND"), assumptions.local_steps, "local_steps"))
    learning_rate = fact(_META_FLOAT, assumptions.learning_rate, "learning_rate")
    optimizer = str(fact(("optimizer",), assumptions.optimizer, "optimizer")).lower()
    num_train = meta.get("num_train_images")
    num_images = batch_size if num_train is None else max(1, min(int(num_train), batch_size * local_steps))

    bn_stats: dict[str, torch.Tensor] = {}
    bn_included = meta.get("bn_buffers_included", True)
    if bn_included:
        for name, value in buffer_update.items():
            if name.endswith(("running_mean", "running_var")):
                if tuple(value.shape) != tuple(state[name].shape):
                    raise MedPFLError(
                        f"update buffer {name!r} has shape {tuple(value.shape)}, the model expects {tuple(state[name].shape)}",
                        fix="attack with the architecture the site trained",
                    )
                old = weights.get(name, state[name]).float()
                bn_stats[name] = old + value.float() if kind is UpdateKind.WEIGHT_DIFF else value.float()
    if num_classes is None:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise MedPFLError("cannot infer num_classes: the model has no linear layer", fix="pass num_classes")
        num_classes = linears[-1].out_features
    return AttackerKnowledge(
        model=model,
        weights=weights,
        update=param_update,
        kind=kind,
        image_shape=tuple(int(v) for v in image_shape),
        num_classes=int(num_classes),
        batch_size=batch_size,
        local_steps=local_steps,
        learning_rate=None if learning_rate is None else float(learning_rate),
        optimizer=optimizer,  # type: ignore[arg-type]
        num_images=num_images,
        labels=labels,
        bn_running_stats=bn_stats or None,
        bn_train_mode=bn_train_mode,
        assumed=tuple(assumed),
        ignored_keys=ignored,
    )


def knowledge_fields() -> list[str]:
    """Names of the `AttackerKnowledge` fields (for documentation and config checks)."""
    return [f.name for f in fields(AttackerKnowledge)]
