"""What kind of update a site shares, and the worst-case facts assumed when its meta does not declare them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

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


#: The default assumptions (one shared, immutable instance).
WORST_CASE = WorstCaseAssumptions()
