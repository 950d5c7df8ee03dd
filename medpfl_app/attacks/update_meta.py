"""The site's local-training facts read from an update's meta, or taken from declared worst-case assumptions."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from medpfl_app.attacks.shared_update import UpdateKind, WorstCaseAssumptions
from medpfl_app.errors import MedPFLError

#: Meta keys that may carry the site's local learning rate, in order of preference.
LEARNING_RATE_KEYS = ("learning_rate", "lr")


@dataclass(frozen=True)
class LocalTrainingFacts:
    """What the meta says (or the assumptions supply) about the site's local training.

    Attributes:
        batch_size: Images per local step.
        local_steps: Local steps behind the update (1 for a gradient).
        learning_rate: The learning rate as sent (converted to float by the caller), or None when unknown.
        optimizer: The local optimizer's name, lower case.
        num_images: Distinct images behind the update.
        assumed: Names of the facts taken from the assumptions, in the order they were read.
    """

    batch_size: int
    local_steps: int
    learning_rate: Any
    optimizer: str
    num_images: int
    assumed: tuple[str, ...]


def read_training_facts(
    meta: Mapping[str, Any],
    buffer_update: Mapping[str, torch.Tensor],
    kind: UpdateKind,
    assumptions: WorstCaseAssumptions,
    require_meta: tuple[str, ...],
) -> LocalTrainingFacts:
    """Read the local-training facts; raise when a ``require_meta`` fact is missing instead of assuming it.

    BatchNorm's ``num_batches_tracked`` in a weight difference counts the local steps: they are then inferred, not
    assumed, unless the meta declares them.
    """
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
    learning_rate = fact(LEARNING_RATE_KEYS, assumptions.learning_rate, "learning_rate")
    optimizer = str(fact(("optimizer",), assumptions.optimizer, "optimizer")).lower()
    num_train = meta.get("num_train_images")
    num_images = batch_size if num_train is None else max(1, min(int(num_train), batch_size * local_steps))
    return LocalTrainingFacts(batch_size, local_steps, learning_rate, optimizer, num_images, tuple(assumed))
