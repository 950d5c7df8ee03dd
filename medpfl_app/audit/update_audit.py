"""The audit of one received update, as pure functions: screening, then the attack ladder on the whole update.

No NVFlare import: `medpfl_app.nvflare.server.audit_filter` adapts these to filters. The attacker here is the honest-but-curious
server holding the update exactly as received (after every client-side defense), the global weights the site
started from and the training facts the site declared in the update meta.

What the filter checks before an audit (`not_auditable_reason`, `copy_arrays`) lives in
`medpfl_app.audit.received_update`, what a record states about its provenance (`config_hash`, `library_versions`,
`epsilon_so_far`) in `medpfl_app.audit.provenance`; both are re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from medpfl_app.audit.outcome_fields import (
    ladder_indicators,
    not_attacked_reason,
    planned_budget,
    screening_indicators,
    spent_budget,
)
from medpfl_app.audit.plan import AuditPlan
from medpfl_app.audit.provenance import config_hash, epsilon_so_far, library_versions
from medpfl_app.audit.received_update import copy_arrays, not_auditable_reason
from medpfl_app.errors import MedPFLError

if TYPE_CHECKING:
    import torch

    from medpfl_app.attacks.knowledge import AttackerKnowledge

__all__ = [
    "AuditItem",
    "AuditOutcome",
    "audit_update",
    "build_bare_network",
    "config_hash",
    "copy_arrays",
    "epsilon_so_far",
    "library_versions",
    "not_auditable_reason",
    "warm_up_audit",
]


@dataclass(frozen=True, eq=False)
class AuditItem:
    """One received update, copied out of the shareable so NVFlare may change or free the original.

    Attributes:
        site: Sending site.
        round: FedAvg round (shareable header).
        job_id: NVFlare job id.
        data_kind: DXO data kind (``WEIGHT_DIFF``, ``WEIGHTS``, ...).
        update: Name → NumPy array, as received.
        global_weights: Name → NumPy array the site started from (None when the cache had none for the round).
        meta: The update meta as `medpfl_app.audit.facts.validate_meta` checked and bounded it.
        received_at: ``time.time()`` when the filter saw it.
    """

    site: str
    round: int | None
    job_id: str | None
    data_kind: str | None
    update: Mapping[str, np.ndarray]
    global_weights: Mapping[str, np.ndarray] | None
    meta: Mapping[str, Any] = field(default_factory=dict)
    received_at: float = 0.0


@dataclass(frozen=True, eq=False)
class AuditOutcome:
    """What the server-side audit of one update produced.

    Attributes:
        server_indicators: Plain-JSON numbers the server can state without ground truth (screening, and the
            best ladder stage's ``attack_convergence``, ``attack_initial_loss``, ``attack_matching_loss``).
        attack_budget: The attack and budget actually used (plain JSON): ``stages_run``, ``iterations``,
            ``ladder_complete``, ``time_budget_s``, ``time_spent_s``, ``settle``, ``not_attacked`` ...
        threat_model: What the attacker knew or assumed (plain JSON).
        model: ``{"network", "num_classes", "config_hash", "num_parameters"}``.
        ladder: Each stage run (`medpfl_app.audit.ladder.StageResult.to_json`).
        reconstructions: ``(N, C, H, W)`` float32 in [0, 1], or None when no optimisation attack ran. Patient data:
            sent only to the site that produced the update, never written by the server.
        labels: Recovered labels per reconstruction (None with no attack).
    """

    server_indicators: dict[str, Any]
    attack_budget: dict[str, Any]
    threat_model: dict[str, Any]
    model: dict[str, Any]
    ladder: tuple[dict[str, Any], ...] = ()
    reconstructions: np.ndarray | None = None
    labels: np.ndarray | None = None


def build_bare_network(meta: Mapping[str, Any]) -> torch.nn.Module:
    """The site's network without the Lightning wrapper, from the declared facts (DP-SGD: GroupNorm variant)."""
    from medpfl_app.models.global_model import build_seeded_network

    return build_seeded_network(
        str(meta["network"]),
        in_channels=int(meta["in_channels"]),
        num_classes=int(meta["num_classes"]),
        image_size=int(meta["image_size"]),
        seed=0,  # weights come from the global model; the seed only fills the architecture
        dp_sgd=meta.get("dp_sgd") is not None,
    )


def audit_update(item: AuditItem, plan: AuditPlan) -> AuditOutcome:
    """Run the plan on one update: screening (labels, BN exposure), then the attack ladder on the whole update.

    Raises:
        MedPFLError: The update does not fit the declared network, or no global weights are known for it.
    """
    from medpfl_app.audit.ladder import attack_stage, run_ladder

    meta = dict(item.meta)
    if item.global_weights is None:
        raise MedPFLError(
            f"no global weights cached for round {item.round}: the audit cannot know what {item.site} started from",
            fix="add medpfl_app.nvflare.server.global_weights.GlobalWeightsCache as the server task-data filter on 'train'",
        )
    net = build_bare_network(meta)
    started = time.monotonic()
    knowledge = _attacker_knowledge(item, item.global_weights, net, meta)
    indicators = screening_indicators(knowledge)
    indicators["cheap_steps_s"] = round(time.monotonic() - started, 4)
    budget = planned_budget(plan)
    model_info = _model_info(meta, item, net)
    not_attacked = not_attacked_reason(plan, knowledge.images, knowledge.local_steps)
    if not_attacked is not None:
        budget["not_attacked"] = not_attacked
        return AuditOutcome(indicators, budget, knowledge.threat_model(), model_info)
    ladder = run_ladder(knowledge, plan, attack_stage(plan))
    indicators.update(ladder_indicators(ladder))
    budget.update(spent_budget(ladder))
    result = ladder.best
    return AuditOutcome(
        server_indicators=indicators,
        attack_budget=budget,
        threat_model=dict(result.threat_model),
        model=model_info,
        ladder=tuple(stage.to_json() for stage in ladder.stages),
        reconstructions=result.reconstructions.detach().float().clamp(0, 1).numpy(),
        labels=result.labels.detach().numpy().astype(np.int64),
    )


def _attacker_knowledge(
    item: AuditItem, global_weights: Mapping[str, np.ndarray], net: torch.nn.Module, meta: Mapping[str, Any]
) -> AttackerKnowledge:
    """What the server knows of this update: the weight difference (a full model becomes one), weights and facts."""
    from medpfl_app.attacks import UpdateKind, knowledge_from_update

    update = item.update
    if item.data_kind == "WEIGHTS":  # a FULL model: the update is the difference to what the site received
        update = {
            name: value - global_weights[name] if name in global_weights else value
            for name, value in item.update.items()
        }
    image_shape = (int(meta["in_channels"]), int(meta["image_size"]), int(meta["image_size"]))
    return knowledge_from_update(
        net,
        global_weights,
        update,
        meta,
        image_shape=image_shape,
        num_classes=int(meta["num_classes"]),
        kind=UpdateKind.WEIGHT_DIFF,
        prefix=meta.get("state_dict_prefix") or "auto",
    )


def _model_info(meta: Mapping[str, Any], item: AuditItem, net: torch.nn.Module) -> dict[str, Any]:
    """The record's model section: what the meta declares, the configuration hash and the parameter count."""
    return {
        "network": meta.get("network"),
        "num_classes": meta.get("num_classes"),  # the report's chance level for accuracy
        "config_hash": config_hash(meta, item.global_weights),
        "num_parameters": int(sum(p.numel() for p in net.parameters())),
    }


def warm_up_audit() -> float:
    """Import the attack stack and run a tiny attack once, in the process that will run audits.

    The first attack in a fresh process pays for imports and torch's lazy kernel set-up (seconds); measured as
    part of a real audit, that would inflate the screening probe's speed and make the ladder skip stages that fit.
    Returns the seconds it took.
    """
    import torch

    from medpfl_app.attacks import UpdateKind, build_attack
    from medpfl_app.attacks.knowledge import knowledge_from_update
    from medpfl_app.attacks.simulated_site import simulate_site_update
    from medpfl_app.models.global_model import build_seeded_network

    started = time.monotonic()
    net = build_seeded_network("lenet_sigmoid", in_channels=1, num_classes=2, image_size=16, seed=0, dp_sgd=False)
    site = simulate_site_update(
        net,
        torch.rand(1, 1, 16, 16),
        torch.zeros(1, dtype=torch.long),
        kind=UpdateKind.WEIGHT_DIFF,
        learning_rate=0.1,
        batch_size=1,
    )
    knowledge = knowledge_from_update(
        net, site.global_weights, site.update, site.meta, image_shape=(1, 16, 16), num_classes=2
    )
    build_attack("gradinv", iterations=2, restarts=1, objective="l2", signed=False).run(knowledge)
    return time.monotonic() - started
