"""One site round on synthetic phantoms, as the server's audit would receive it (for the verdict battery and the
pre-flight probe).

The job's network with its default seeded weights is trained on seeded phantoms (`medpfl_app.data.phantoms`) with
plain SGD, the caller's defenses are applied to the weight difference, and the result is packed as the
`medpfl_app.audit.update_audit.AuditItem` the audit filter would hand its worker, together with the phantoms, so the
caller can score reconstructions against known images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medpfl_app.audit.update_audit import AuditItem

PREFIX = "net."
#: Defends an update: returns the new update and the ``medpfl_defenses`` meta entries it applied.
Defend = Callable[[dict[str, np.ndarray]], tuple[dict[str, np.ndarray], list[dict[str, Any]]]]


@dataclass(frozen=True)
class RoundShape:
    """The model and the site's round: network, input, classes, batch, steps, learning rate, images used."""

    network: str
    in_channels: int
    num_classes: int
    image_size: int
    batch_size: int
    local_steps: int
    learning_rate: float
    images: int
    pool_size: int


@dataclass(frozen=True, eq=False)
class SyntheticRound:
    """The audit item of the round, all the site's phantoms, the positions it trained on and every label."""

    item: AuditItem
    pool: torch.Tensor
    used_positions: tuple[int, ...]
    labels: tuple[int, ...]


def synthetic_round(
    shape: RoundShape, *, defend: Defend | None = None, site: str, job_id: str, seed: int = 0
) -> SyntheticRound:
    """Train, defend and pack one round (see the module docstring)."""
    from medpfl_app.attacks import UpdateKind
    from medpfl_app.attacks.simulated_site import simulate_site_update
    from medpfl_app.data.phantoms import generate_phantoms
    from medpfl_app.models.global_model import build_seeded_network

    labels = [i % shape.num_classes for i in range(shape.pool_size)]
    gray = torch.from_numpy(generate_phantoms(labels, seed=seed, image_size=shape.image_size))[:, None].float()
    pool = gray.repeat(1, shape.in_channels, 1, 1)
    used = tuple(range(shape.images))
    net = build_seeded_network(
        shape.network,
        in_channels=shape.in_channels,
        num_classes=shape.num_classes,
        image_size=shape.image_size,
        seed=0,
        dp_sgd=False,
    )
    site_update = simulate_site_update(
        net,
        pool[list(used)],
        torch.tensor([labels[i] for i in used]),
        kind=UpdateKind.WEIGHT_DIFF,
        local_steps=shape.local_steps,
        learning_rate=shape.learning_rate,
        batch_size=shape.batch_size,
    )
    update = {f"{PREFIX}{k}": v.numpy() for k, v in site_update.update.items()}
    applied: list[dict[str, Any]] = []
    if defend is not None:
        update, applied = defend(update)
    meta = {
        **site_update.meta,
        "network": shape.network,
        "image_size": shape.image_size,
        "in_channels": shape.in_channels,
        "num_classes": shape.num_classes,
        "state_dict_prefix": PREFIX,
        "medpfl_defenses": applied,
    }
    item = AuditItem(
        site=site,
        round=0,
        job_id=job_id,
        data_kind="WEIGHT_DIFF",
        update=update,
        global_weights={f"{PREFIX}{k}": v.numpy() for k, v in site_update.global_weights.items()},
        meta=meta,
    )
    return SyntheticRound(item, pool, used, tuple(labels))
