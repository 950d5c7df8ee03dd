"""Up-front checks of `medpfl_app.attacks.knowledge.AttackerKnowledge`: one clear error before any attack runs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:
    from medpfl_app.attacks.knowledge import AttackerKnowledge


def validate_knowledge(k: AttackerKnowledge) -> None:
    """Raise `MedPFLError` on the first fact, tensor or label that does not fit the model or the threat model."""
    if not k.update:
        raise MedPFLError(
            "the update is empty: there is nothing to attack",
            fix="pass the site's update as a non-empty dict of parameter name -> array",
        )
    _check_training_facts(k)
    params = dict(k.model.named_parameters())
    state = k.model.state_dict()
    _check_update(k.update, params, type(k.model).__name__)
    _check_weights(k.weights, params, state)
    _check_bn_buffers(k.bn_running_stats or {}, state)
    _check_labels(k)


def _check_training_facts(k: AttackerKnowledge) -> None:
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


def _check_update(update: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], model_name: str) -> None:
    for name, value in update.items():
        if name not in params:
            raise MedPFLError(
                f"update tensor {name!r} is not a parameter of the {model_name} model",
                fix="build the knowledge with knowledge_from_update(..., prefix=...) to strip a prefix such as 'net.'",
            )
        if tuple(value.shape) != tuple(params[name].shape):
            raise MedPFLError(
                f"update tensor {name!r} has shape {tuple(value.shape)} but the model expects {tuple(params[name].shape)}",
                fix="attack with the same architecture (network, channels, classes, image size) the site trained",
            )
        if not torch.isfinite(value).all():
            raise MedPFLError(f"update tensor {name!r} contains NaN or Inf", fix="drop the corrupt update")


def _check_weights(
    weights: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]
) -> None:
    for name, value in weights.items():
        if name in state and tuple(value.shape) != tuple(state[name].shape):
            raise MedPFLError(
                f"weight {name!r} has shape {tuple(value.shape)} but the model expects {tuple(state[name].shape)}",
                fix="pass the global weights of the same architecture",
            )
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise MedPFLError(f"weight {name!r} contains NaN or Inf", fix="pass the finite global weights")
    missing = [name for name in params if name not in weights]
    if missing:
        raise MedPFLError(
            f"the weights before the update lack {len(missing)} parameters, e.g. {missing[0]!r}",
            fix="pass the full global model the site started from",
        )


def _check_bn_buffers(bn_running_stats: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    for name, value in bn_running_stats.items():
        if name not in state or tuple(value.shape) != tuple(state[name].shape):
            raise MedPFLError(f"BN buffer {name!r} does not match the model", fix="pass the model's own BN buffers")
        if not torch.isfinite(value).all():
            raise MedPFLError(f"BN buffer {name!r} contains NaN or Inf", fix="drop the corrupt update")


def _check_labels(k: AttackerKnowledge) -> None:
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
