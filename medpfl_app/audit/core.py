"""The audit of one received update, as pure functions: what can be attacked, then the attack plan.

No NVFlare import: `medpfl_app.nvflare.server.audit_filter` adapts these to filters. The attacker here is the honest-but-curious
server holding the update exactly as received (after every client-side defense), the global weights the site
started from and the training facts the site declared in the update meta.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medpfl_app.audit.facts import FACT_KEYS, MODEL_KEYS
from medpfl_app.audit.plan import AuditPlan
from medpfl_app.errors import MedPFLError


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


def not_auditable_reason(data_kind: str | None, data: Any, meta: Mapping[str, Any] | None) -> str | None:
    """Why an update cannot be attacked (encrypted, non-numeric, empty), or None when it can.

    Args:
        data_kind: The DXO's data kind (None: the payload was not a DXO).
        data: The DXO's data dict.
        meta: The DXO's meta.
    """
    meta = meta or {}
    if data_kind is None:
        return "the result is not an NVFlare DXO (no model update to attack)"
    # Decided from the payload, never from what the meta claims: a site that labels a plaintext update as
    # encrypted (``processed_algorithm``) must not escape the audit while FedAvg aggregates it.
    if data_kind not in ("WEIGHT_DIFF", "WEIGHTS"):
        return f"data kind {data_kind!r} carries no model weights or weight differences"
    if not isinstance(data, Mapping) or not data:
        return "the update carries no model tensors"
    for name, value in data.items():
        if not isinstance(value, np.ndarray) and not hasattr(value, "numpy"):
            return f"update entry {name!r} is {type(value).__name__}, not a numeric array (encrypted or unknown format)"
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            algorithm = (
                f" (processed by {str(meta['processed_algorithm'])[:60]!r})" if meta.get("processed_algorithm") else ""
            )
            return f"update entry {name!r} has non-numeric dtype {array.dtype}{algorithm}: the server sees no plaintext"
    missing = [key for key in MODEL_KEYS if meta.get(key) is None]
    if missing:
        return f"the update meta lacks the model facts {', '.join(missing)}: the server cannot rebuild the network"
    return None


def copy_arrays(data: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A private copy of every array (torch tensors converted), so later in-place changes cannot reach the audit."""
    copied: dict[str, np.ndarray] = {}
    for name, value in data.items():
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        copied[str(name)] = np.array(value, copy=True)
    return copied


def config_hash(meta: Mapping[str, Any], global_weights: Mapping[str, np.ndarray] | None) -> str:
    """SHA-256 over the declared training configuration and the global weights' names, shapes and bytes."""
    digest = hashlib.sha256()
    config = {key: meta.get(key) for key in FACT_KEYS if key not in ("torch_version", "num_images_seen", "dp_sgd")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name in sorted(global_weights or {}):
        array = np.ascontiguousarray(global_weights[name])
        digest.update(f"{name}:{array.dtype}:{array.shape}".encode())
        digest.update(array.tobytes())
    return "sha256:" + digest.hexdigest()


def library_versions() -> dict[str, str | None]:
    """Versions of the libraries the audit's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    import medpfl_app

    found: dict[str, str | None] = {"medpfl": getattr(medpfl_app, "__version__", None)}
    for label, dist in (("nvflare", "nvflare"), ("torch", "torch"), ("monai", "monai"), ("opacus", "opacus")):
        try:
            found[label] = version(dist)
        except PackageNotFoundError:
            found[label] = None
    return found


def epsilon_so_far(meta: Mapping[str, Any]) -> dict[str, float | None]:
    """The formal ε this update states: client-level DP from the defense records, sample-level from DP-SGD facts."""
    client_dp = None
    delta = None
    for entry in meta.get("medpfl_defenses") or []:
        if isinstance(entry, Mapping) and entry.get("epsilon_total") is not None:
            client_dp = float(entry["epsilon_total"])
            params = entry.get("params") or {}
            delta = params.get("delta", entry.get("delta", delta))
    dp_sgd = None
    facts = meta.get("dp_sgd")
    if isinstance(facts, Mapping) and facts.get("epsilon") is not None:
        dp_sgd = float(facts["epsilon"])
        delta = facts.get("delta", delta)
    return {"client_dp": client_dp, "dp_sgd": dp_sgd, "delta": None if delta is None else float(delta)}


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


def build_bare_network(meta: Mapping[str, Any]):
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
    from medpfl_app.attacks import UpdateKind, knowledge_from_update, recover_labels_from_update
    from medpfl_app.audit.ladder import attack_stage, run_ladder

    meta = dict(item.meta)
    if item.global_weights is None:
        raise MedPFLError(
            f"no global weights cached for round {item.round}: the audit cannot know what {item.site} started from",
            fix="add medpfl_app.nvflare.server.audit_filter.GlobalWeightsCache as the server task-data filter on 'train'",
        )
    net = build_bare_network(meta)
    kind = UpdateKind.WEIGHT_DIFF
    update = item.update
    if item.data_kind == "WEIGHTS":  # a FULL model: the update is the difference to what the site received
        update = {
            name: value - item.global_weights[name] if name in item.global_weights else value
            for name, value in item.update.items()
        }
    image_shape = (int(meta["in_channels"]), int(meta["image_size"]), int(meta["image_size"]))
    started = time.monotonic()
    knowledge = knowledge_from_update(
        net,
        item.global_weights,
        update,
        meta,
        image_shape=image_shape,
        num_classes=int(meta["num_classes"]),
        kind=kind,
        prefix=meta.get("state_dict_prefix") or "auto",
    )
    images_declared = knowledge.images
    indicators: dict[str, Any] = {
        "images_per_update": images_declared,
        "local_steps": knowledge.local_steps,
        "update_norm": float(
            np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in _update_arrays(knowledge)))
        ),
        "bn_statistics_exposed": bool(knowledge.bn_running_stats),
        "bn_layers_exposed": len([k for k in (knowledge.bn_running_stats or {}) if k.endswith("running_mean")]),
    }
    # Screening: labels from the last layer (negated weight difference ≈ gradient direction), BN exposure above.
    try:
        gradient_like = {name: -value for name, value in knowledge.update.items()}
        labels = recover_labels_from_update(knowledge.model, gradient_like, images_declared)
        indicators["labels_recovered"] = True
        indicators["recovered_label_histogram"] = np.bincount(
            labels.numpy().astype(int), minlength=knowledge.num_classes
        ).tolist()
    except MedPFLError as error:
        indicators["labels_recovered"] = False
        indicators["label_recovery_error"] = error.problem if hasattr(error, "problem") else str(error)
    indicators["cheap_steps_s"] = round(time.monotonic() - started, 4)

    budget: dict[str, Any] = {
        "attack": plan.attack,
        "iterations": 0,
        "restarts": plan.restarts,
        "stages_run": 0,
        "time_budget_s": plan.time_limit_s,
        "time_limit_s": plan.time_limit_s,
        "escalations": plan.escalations,
        "escalation_factor": plan.escalation_factor,
        "max_images": plan.max_images,
        "max_local_steps": plan.max_local_steps,
        "stop_loss": plan.stop_loss,
        "options": dict(plan.options),
        "ladder_complete": False,
        "settle": None,
        "not_attacked": None,
    }
    model_info = _model_info(meta, item, net)
    not_attacked = _not_attacked(plan, images_declared, knowledge.local_steps)
    if not_attacked is not None:
        budget["not_attacked"] = not_attacked
        return AuditOutcome(indicators, budget, knowledge.threat_model(), model_info)
    ladder = run_ladder(knowledge, plan, attack_stage(plan))
    result, best = ladder.best, ladder.stages[ladder.best_stage]
    indicators.update(
        attack_convergence=str(best.convergence.status),
        attack_initial_loss=best.convergence.initial_loss,
        attack_matching_loss=float(result.matching_loss),
        attack_stopped_early=bool(result.stopped_early),
        attack_stop_reason=result.stop_reason,
        attack_wall_time_s=round(ladder.time_spent_s, 3),
        reconstructed_images=int(result.reconstructions.shape[0]),
        labels_source=result.labels_source,
    )
    budget.update(
        stages_run=len(ladder.stages),
        best_stage=ladder.best_stage,
        iterations=sum(stage.iterations for stage in ladder.stages),
        restarts=max(stage.restarts for stage in ladder.stages),
        evaluations=int(result.evaluations),
        update_mode=best.update_mode,
        wall_time_s=round(ladder.time_spent_s, 3),
        time_spent_s=round(ladder.time_spent_s, 3),
        stop_reason=ladder.final.stop_reason,
        ladder_complete=ladder.complete,
        settle=ladder.settle,
    )
    return AuditOutcome(
        server_indicators=indicators,
        attack_budget=budget,
        threat_model=dict(result.threat_model),
        model=model_info,
        ladder=tuple(stage.to_json() for stage in ladder.stages),
        reconstructions=result.reconstructions.detach().float().clamp(0, 1).numpy(),
        labels=result.labels.detach().numpy().astype(np.int64),
    )


def _not_attacked(plan: AuditPlan, images: int, local_steps: int) -> str | None:
    """Why the plan does not attack this whole update (None: it does)."""
    if plan.attack == "none":
        return "the audit plan runs no attack (attack: none)"
    if images > plan.max_images:
        return f"the update covers {images} images, above the plan's max_images {plan.max_images}"
    if local_steps > plan.max_local_steps:
        return f"the update covers {local_steps} local steps, above the plan's max_local_steps {plan.max_local_steps}"
    return None


def _update_arrays(knowledge) -> list[np.ndarray]:
    return [value.detach().double().numpy() for value in knowledge.update.values()]


def _model_info(meta: Mapping[str, Any], item: AuditItem, net) -> dict[str, Any]:
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
    from medpfl_app.attacks.site import simulate_site_update
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
